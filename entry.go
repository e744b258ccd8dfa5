package cacheaside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
)

// What a key in the cache holds, as the engine reads it: the JSON encoding
// of a value; a marker for a cached "not found"; a lease (see lease.go); or
// something else, which is treated as a miss and overwritten by the next
// fill. The markers are JSON strings that start with a NUL character, which
// no sane encoding of a value produces, so every entry stays valid JSON for
// any other reader of the cache.

// absentMarker is what a cached "not found" answer holds.
var absentMarker = json.RawMessage(`"\u0000cacheaside:absent"`)

// state is what a lookup found.
type state int

const (
	stMiss   state = iota // nothing usable: empty, a lease, or undecodable
	stHit                 // a value
	stAbsent              // a cached "not found"
	stFailed              // the cache failed
)

// lookup reads key from the cache. Cache failures are counted and reported
// as stFailed, undecodable entries and leases as misses; only the end of
// ctx is an error.
func (a *Aside[K, V]) lookup(ctx context.Context, key string) (*V, json.RawMessage, state, error) {
	var raw json.RawMessage
	err := a.cache.GetJSON(ctx, key, &raw)
	if err != nil {
		if errors.Is(err, ErrCacheMiss) {
			return nil, nil, stMiss, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return nil, nil, stMiss, cerr
		}
		if isDecodeError(err) {
			a.undecodable(ctx, key, err)
			return nil, nil, stMiss, nil
		}
		a.cacheFailed(ctx, key, err)
		return nil, nil, stFailed, nil
	}
	v, st := a.decode(ctx, key, raw, true)
	return v, raw, st, nil
}

// decode turns what a key holds into a value, a cached "not found", or a
// miss (a lease, or an entry that does not decode, which is counted and
// logged when report is set; a second look at the same key does not).
func (a *Aside[K, V]) decode(ctx context.Context, key string, raw json.RawMessage, report bool) (*V, state) {
	if len(raw) > 0 && raw[0] == '"' {
		switch {
		case bytes.Equal(raw, absentMarker):
			return nil, stAbsent
		case isLease(raw):
			return nil, stMiss
		}
	}
	v := new(V)
	if err := json.Unmarshal(raw, v); err != nil {
		if report {
			a.undecodable(ctx, key, err)
		}
		return nil, stMiss
	}
	return v, stHit
}

// undecodable counts and logs an entry that does not decode.
func (a *Aside[K, V]) undecodable(ctx context.Context, key string, err error) {
	a.m.decodeErrs.Add(1)
	a.log.WarnContext(ctx, "cacheaside: undecodable cache entry, treated as a miss", "key", key, "err", err)
}

func isDecodeError(err error) bool {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	return errors.Is(err, ErrDecode) || errors.As(err, &se) || errors.As(err, &te)
}
