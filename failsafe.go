package cacheaside

import (
	"context"
	"encoding/json"
	"time"
)

// Fail-safe (WithFailSafe) serves the last value known for a key when its
// load fails, for up to maxStale past the value's expiry. For that, an
// entry lives maxStale longer in the cache than it stays fresh: its own
// "expires" says when it stops being fresh, and a read past that instant
// loads again, keeping the entry at hand. If the load fails, the stale
// value answers, and the stale entry is put back where the load's lease
// was, so that the next reader, here or in another process, can serve it
// too.
//
// This never serves a value older than an acknowledged write: every
// acknowledged write deleted the entry (or, while its delete is pending,
// this process does not read the key from the cache), and while the
// repository fails, no write can be acknowledged.

// stale is a value past its expiry, the entry it was read from, and when
// the read that found it was sent.
type stale[V any] struct {
	v   *V
	raw json.RawMessage
	at  time.Time
}

// failSafe answers r with its stale value, if it has one and fail-safe is
// on, after the load failed with err, and reports whether it did.
func (a *Aside[K, V]) failSafe(ctx context.Context, key string, r *result[V], err error) bool {
	if a.o.failSafe <= 0 || r.stale.v == nil {
		return false
	}
	// Only callers that began before the entry was seen in the cache may
	// take it: any write acknowledged before then had already deleted it.
	r.val, r.err, r.fresh = *r.stale.v, nil, r.stale.at
	a.m.failSafeServed.Add(1)
	a.log.WarnContext(ctx, "cacheaside: load failed; serving the last known value (fail-safe)", "key", key, "err", err)
	return true
}

// restoreTTL is how long a stale entry put back into the cache may stay:
// until fail-safe may no longer serve it.
func (a *Aside[K, V]) restoreTTL(key string, raw json.RawMessage) time.Duration {
	var e entry[struct{}]
	if json.Unmarshal(raw, &e) != nil || e.Key != key || e.Expires == 0 {
		return 0
	}
	return time.UnixMilli(e.Expires).Add(a.o.failSafe).Sub(a.now())
}
