package cacheaside

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"time"
)

// A load reads the source and stores what it read in the cache (a fill),
// or a "not found" marker; a read that fails stores nothing, or, with
// fail-safe, answers with the last value known (see failsafe.go). How the
// fill is written decides whether it can write an old value back over a
// newer write (see fillMode).

// fillMode says how a load stores what it read.
type fillMode int

const (
	fillNone fillMode = iota // leave the cache alone
	fillSet                  // SetJSON, unless this process wrote the key meanwhile
	fillSwap                 // CompareAndSwap against the lease (or entry) it expects
)

// fill is where and how one load stores what it read.
type fill struct {
	key    string
	mode   fillMode
	s      *stripe // fillSet: the key's stripe ...
	gen    uint64  // ... and its generation when the load began
	expect []byte  // fillSwap: what the key must still hold
	// restore is the stale entry the load's lease replaced: a load that
	// fails puts it back, so that fail-safe can still serve it.
	restore json.RawMessage
	// delta is how long the read of the source took, on the engine's
	// clock (see WithEarlyRefresh).
	delta time.Duration
	// lost, when set, is told that a fillSwap was refused: the lease was
	// gone (see holdAndLoad).
	lost *bool
}

// loadInto reads id from the source into r and stores the result as f
// says. When the read fails, the load's lease is released (or the stale
// entry it replaced restored) so that waiters take over at once.
func (a *Aside[K, V]) loadInto(ctx context.Context, id K, f fill, r *result[V]) {
	returned := false
	defer func() {
		if !returned { // the loader panicked: let waiters take over now
			a.release(ctx, f)
		}
	}()
	r.fresh = time.Now()
	r.loaded = true
	began := a.now()
	v, err := a.loadOne(ctx, id)
	f.delta = a.now().Sub(began)
	returned = true
	switch {
	case err == nil && v != nil:
		r.val = *v
		if at, exp, ok := a.storeValue(ctx, f, v); ok {
			r.fresh = at
			r.shared, r.exp = f.mode == fillSwap, exp // in the cache, under this load's own lease
		}
	case err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, a.notFound):
		r.err = a.notFound
		if at, ok := a.storeAbsent(ctx, f); ok {
			r.fresh = at
		}
	case a.failSafe(ctx, f.key, r, err):
		a.release(ctx, f)
	default:
		r.err = wrapErr("load "+f.key, err)
		a.release(ctx, f)
	}
}

// storeValue caches v as f says, for the TTL less jitter; with fail-safe
// the entry lives that much longer in the cache than it stays fresh. A
// value whose entry exceeds WithMaxValueSize is not cached. It reports when
// the write was sent, when the value stops being fresh, and whether it was
// stored.
func (a *Aside[K, V]) storeValue(ctx context.Context, f fill, v *V) (at, exp time.Time, ok bool) {
	ttl := a.jitter(a.ttlFor(f.key))
	exp = a.now().Add(ttl)
	raw, err := a.encode(f.key, v, ttl, f.delta)
	if err == nil && len(raw) > a.o.maxValueSize {
		err = errors.New("the entry is larger than WithMaxValueSize")
	}
	if err != nil {
		a.m.writeErrs.Add(1)
		a.log.ErrorContext(ctx, "cacheaside: value not cached", "key", f.key, "err", err)
		a.release(ctx, f)
		return time.Time{}, exp, false
	}
	at, ok = a.store(ctx, f, raw, ttl+a.o.failSafe)
	return at, exp, ok
}

// storeAbsent caches a "not found" answer for the negative TTL, or, with
// negative caching off, releases the load's lease.
func (a *Aside[K, V]) storeAbsent(ctx context.Context, f fill) (time.Time, bool) {
	if a.o.negTTL <= 0 {
		a.release(ctx, f)
		return time.Time{}, false
	}
	return a.store(ctx, f, absentMarker, a.jitter(a.o.negTTL))
}

// store writes raw under f.key for ttl as f.mode says, and reports whether
// it did and when the write was sent.
//
// fillSet writes unless the key's stripe moved past f.gen: a write in this
// process since the load began. fillSwap needs no such check: it lands only
// if the key still holds what the load expected (its own lease), which
// every invalidation since the lease was placed would have deleted, and the
// lease was placed before the read began. So until the swap was sent, no
// write can have been acknowledged that the value does not include.
func (a *Aside[K, V]) store(ctx context.Context, f fill, raw json.RawMessage, ttl time.Duration) (time.Time, bool) {
	var err error
	at := time.Now()
	switch f.mode {
	case fillNone:
		return at, false
	case fillSet:
		f.s.mu.RLock()
		defer f.s.mu.RUnlock()
		if f.s.gen.Load() != f.gen {
			a.m.staleFills.Add(1)
			return at, false
		}
		at = time.Now()
		err = a.g.set(ctx, f.key, raw, ttl)
	case fillSwap:
		var ok bool
		ok, err = a.g.cas(ctx, f.key, f.expect, raw, ttl)
		if err == nil && !ok {
			a.m.staleFills.Add(1)
			if f.lost != nil {
				*f.lost = true
			}
			return at, false
		}
	}
	if err != nil {
		a.m.writeErrs.Add(1)
		a.log.WarnContext(ctx, "cacheaside: cache fill failed", "key", f.key, "err", err)
		a.release(ctx, f) // the fill may not have landed: give the lease back
		return at, false
	}
	return at, true
}

// jitter takes a random fraction, up to the configured jitter, off ttl.
func (a *Aside[K, V]) jitter(ttl time.Duration) time.Duration {
	if a.o.jitter <= 0 || ttl <= 0 {
		return ttl
	}
	d := ttl - time.Duration(rand.Float64()*a.o.jitter*float64(ttl))
	return max(d, time.Millisecond)
}
