package cacheaside

import (
	"encoding/json"
	"fmt"
)

// encodeJSON returns the bytes to store for value: a json.RawMessage as it
// is (the service's own values are already encoded), anything else through
// encoding/json.
func encodeJSON(value any) ([]byte, error) {
	switch v := value.(type) {
	case json.RawMessage:
		return v, nil
	case *json.RawMessage:
		if v != nil {
			return *v, nil
		}
	}
	b, err := json.Marshal(value)
	if err != nil {
		return nil, fmt.Errorf("cacheaside: encode value: %w", err)
	}
	return b, nil
}

// decodeJSON decodes stored bytes into dest. A *json.RawMessage receives the
// bytes as they are; any other dest goes through encoding/json, and a
// failure is reported as ErrDecode.
func decodeJSON(key string, b []byte, dest any) error {
	if raw, ok := dest.(*json.RawMessage); ok {
		*raw = b
		return nil
	}
	if err := json.Unmarshal(b, dest); err != nil {
		return fmt.Errorf("%w: key %q: %w", ErrDecode, key, err)
	}
	return nil
}

func toRaw(bs [][]byte) []json.RawMessage {
	out := make([]json.RawMessage, len(bs))
	for i, b := range bs {
		if b != nil {
			out[i] = b
		}
	}
	return out
}
