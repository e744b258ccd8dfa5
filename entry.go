package cacheaside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"time"
)

// What a key in the cache holds, as the engine reads it:
//
//   - an entry: the JSON object {"key":..., "expires":..., "delta":...,
//     "value":...}, the key it was stored under, when it stops being fresh
//     (Unix milliseconds), how long the load that read it took
//     (microseconds; early refresh scales by it, see refresh.go), and the
//     value's own JSON encoding;
//   - a plain JSON value, as an earlier version of this package or another
//     program stored it, read as a value with no expiry of its own;
//   - a marker for a cached "not found", or a lease (see lease.go): JSON
//     strings that start with a NUL character, which no value encodes to.
//
// Nothing read from the cache is trusted: another process, another version
// or someone else wrote it. An entry larger than WithMaxValueSize, one that
// does not decode, one stored under another key, a null, and a value that
// is not the entity asked for are all corrupt: a miss, counted in
// DecodeErrors, and overwritten by the next fill.

// absentMarker is what a cached "not found" answer holds.
var absentMarker = json.RawMessage(`"\u0000cacheaside:absent"`)

// entry is a value as it is stored.
type entry[V any] struct {
	Key     string `json:"key"`
	Expires int64  `json:"expires"`         // Unix milliseconds; 0: none
	Delta   int64  `json:"delta,omitempty"` // the load's duration, in microseconds
	Value   *V     `json:"value"`
}

// state is what a lookup found.
type state int

const (
	stMiss    state = iota // nothing usable: empty, a lease, or corrupt
	stHit                  // a fresh value
	stAbsent               // a cached "not found"
	stStale                // a value past its expiry, still within fail-safe
	stCorrupt              // something that is not a value of this key
	stFailed               // the cache failed
	stLocal                // answered by the local tier
)

// encode returns the entry to store for v under key, fresh for ttl from now,
// read by a load that took delta.
func (a *Aside[K, V]) encode(key string, v *V, ttl, delta time.Duration) (json.RawMessage, error) {
	return json.Marshal(entry[V]{Key: key, Expires: a.now().Add(ttl).UnixMilli(), Delta: delta.Microseconds(), Value: v})
}

// found is what a key held, as a lookup read it.
type found[V any] struct {
	st  state
	v   *V              // with stHit and stStale
	exp time.Time       // when v stops being fresh; zero: it has no expiry of its own
	raw json.RawMessage // the entry as it was read
	// delta is how long the load that read v took (zero: unknown).
	delta time.Duration
}

// lookup reads key from the cache. Cache failures are counted and reported
// as stFailed, corrupt entries and leases as misses; only the end of ctx is
// an error.
func (a *Aside[K, V]) lookup(ctx context.Context, id K, key string) (found[V], error) {
	raw, err := a.g.get(ctx, key)
	if err != nil {
		if errors.Is(err, ErrCacheMiss) {
			return found[V]{st: stMiss}, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return found[V]{st: stMiss}, cerr
		}
		if isDecodeError(err) {
			a.corrupt(ctx, key, err)
			return found[V]{st: stMiss}, nil
		}
		a.cacheFailed(ctx, key, err)
		return found[V]{st: stFailed}, nil
	}
	f := a.decode(ctx, id, key, raw, true)
	if f.st == stCorrupt {
		f.st = stMiss
	}
	return f, nil
}

// decode turns what key holds into a value, a cached "not found", a stale
// value (past its expiry, within fail-safe), a miss (a lease, a write in
// progress, or a value past its expiry) or stCorrupt, which is counted and
// logged when report is set (a second look at the same key does not).
func (a *Aside[K, V]) decode(ctx context.Context, id K, key string, raw json.RawMessage, report bool) found[V] {
	v, exp, delta, err := a.parse(id, key, raw)
	switch {
	case errors.Is(err, errAbsent):
		return found[V]{st: stAbsent, raw: raw}
	case errors.Is(err, errLease):
		return found[V]{st: stMiss, raw: raw}
	case err != nil:
		if report {
			a.corrupt(ctx, key, err)
		}
		return found[V]{st: stCorrupt, raw: raw}
	}
	f := found[V]{st: stHit, v: v, exp: exp, raw: raw, delta: delta}
	if exp.IsZero() {
		return f
	}
	switch now := a.now(); {
	case now.Before(exp):
	case a.o.failSafe > 0 && now.Before(exp.Add(a.o.failSafe)):
		f.st = stStale
	default:
		return found[V]{st: stMiss, raw: raw}
	}
	return f
}

var (
	errAbsent = errors.New("a cached not-found")
	errLease  = errors.New("a lease")
)

// parse decodes raw as key's entry and checks it: its size, its key, and
// that its value is the entity id names. A zero expiry means none.
func (a *Aside[K, V]) parse(id K, key string, raw json.RawMessage) (*V, time.Time, time.Duration, error) {
	v, exp, delta, err := a.parseEntry(key, raw)
	if err == nil && a.idOf != nil && a.idOf(v) != id {
		return nil, time.Time{}, 0, errors.New("the value of another ID")
	}
	return v, exp, delta, err
}

// parseEntry is parse without the check of the value's ID.
func (a *Aside[K, V]) parseEntry(key string, raw json.RawMessage) (*V, time.Time, time.Duration, error) {
	if len(raw) > a.o.maxValueSize {
		return nil, time.Time{}, 0, errors.New("larger than WithMaxValueSize")
	}
	if len(raw) > 0 && raw[0] == '"' {
		switch {
		case bytes.Equal(raw, absentMarker):
			return nil, time.Time{}, 0, errAbsent
		case isHeld(raw): // a lease, or a write in progress
			return nil, time.Time{}, 0, errLease
		}
	}
	var e entry[V]
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, time.Time{}, 0, err
	}
	var exp time.Time
	switch {
	case e.Value != nil && e.Key == key:
		if e.Expires > 0 {
			exp = time.UnixMilli(e.Expires)
		}
	case e.Value != nil || e.Key != "":
		return nil, time.Time{}, 0, errors.New("an entry of another key")
	default: // a plain value
		e.Value = new(V)
		if err := json.Unmarshal(raw, e.Value); err != nil {
			return nil, time.Time{}, 0, err
		}
		if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			return nil, time.Time{}, 0, errors.New("null")
		}
	}
	return e.Value, exp, time.Duration(max(e.Delta, 0)) * time.Microsecond, nil
}

// corrupt counts and logs an entry that is not a usable value of its key.
func (a *Aside[K, V]) corrupt(ctx context.Context, key string, err error) {
	a.m.decodeErrs.Add(1)
	a.log.WarnContext(ctx, "cacheaside: corrupt cache entry, treated as a miss", "key", key, "err", err)
}

func isDecodeError(err error) bool {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	return errors.Is(err, ErrDecode) || errors.As(err, &se) || errors.As(err, &te)
}
