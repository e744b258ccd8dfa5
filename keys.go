package cacheaside

import (
	"fmt"
	"strconv"
	"strings"
)

// Keys. An entity's key is "<namespace>:<id>". What the library keeps for
// itself (locks and their fencing counters, and later the keys of its own
// protocols) lives under reservedPrefix, which no namespace may start with
// and no invalidation may delete, so no entity name or ID reaches it. IDs
// are escaped so that they cannot leave their namespace (a ":") or pick a
// Redis Cluster slot for their key (a "{...}" hash tag).

// reservedPrefix starts every key the library keeps for itself.
const reservedPrefix = "cacheaside:"

// isReserved reports whether key is in the library's own namespace.
func isReserved(key string) bool { return strings.HasPrefix(key, reservedPrefix) }

// checkNamespace panics unless namespace may hold entities.
func checkNamespace(namespace string) {
	switch {
	case namespace == "":
		badOption("NewAside", `""`, "the namespace must not be empty")
	case isReserved(namespace + ":"):
		badOption("NewAside", strconv.Quote(namespace), "the namespace "+strconv.Quote(strings.TrimSuffix(reservedPrefix, ":"))+" is the library's own")
	}
}

// idEscaper escapes what would let an ID leave its namespace or choose its
// cluster slot.
var idEscaper = strings.NewReplacer("%", "%25", ":", "%3A", "{", "%7B", "}", "%7D")

// formatID renders an ID for a cache key: numbers as they are, anything
// else through fmt with the characters of idEscaper escaped.
func formatID[K comparable](id K) string {
	switch v := any(id).(type) {
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case string:
		return idEscaper.Replace(v)
	default:
		return idEscaper.Replace(fmt.Sprint(v))
	}
}
