package cacheaside

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"time"
)

// A load reads the source and stores what it read in the cache (a fill),
// or a "not found" marker; a read that fails stores nothing. How the fill
// is written decides whether it can write an old value back over a newer
// write (see fillMode).

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
}

// loadInto reads id from the source into r and stores the result as f
// says. When the read fails, a lease in f.expect is released so that
// waiters take over at once.
func (a *Aside[K, V]) loadInto(ctx context.Context, id K, f fill, r *result[V]) {
	returned := false
	defer func() {
		if !returned { // the loader panicked: let waiters take over now
			a.release(ctx, f)
		}
	}()
	r.fresh = time.Now()
	v, err := a.load(ctx, id)
	returned = true
	a.m.recordLoad(time.Since(r.fresh))
	switch {
	case err == nil && v != nil:
		r.val = *v
		raw, merr := json.Marshal(v)
		if merr != nil {
			a.m.writeErrs.Add(1)
			a.log.ErrorContext(ctx, "cacheaside: value cannot be encoded, not cached", "key", f.key, "err", merr)
			a.release(ctx, f)
			return
		}
		r.raw = raw
		if at, ok := a.store(ctx, f, raw, a.o.ttl); ok {
			r.fresh = at
		}
	case err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, a.notFound):
		r.err = a.notFound
		if at, ok := a.storeAbsent(ctx, f); ok {
			r.fresh = at
		}
	default:
		a.m.dbErrs.Add(1)
		r.err = wrapErr("load "+f.key, err)
		a.release(ctx, f)
	}
}

// storeAbsent caches a "not found" answer for the negative TTL, or, with
// negative caching off, releases the load's lease.
func (a *Aside[K, V]) storeAbsent(ctx context.Context, f fill) (time.Time, bool) {
	if a.o.negTTL <= 0 {
		a.release(ctx, f)
		return time.Time{}, false
	}
	return a.store(ctx, f, absentMarker, a.o.negTTL)
}

// store writes raw under f.key as f.mode says, and reports whether it did
// and when the write was sent.
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
		err = a.cache.SetJSON(ctx, f.key, raw, a.jitter(ttl))
	case fillSwap:
		var ok bool
		ok, err = a.leaser.CompareAndSwap(ctx, f.key, f.expect, raw, a.jitter(ttl))
		if err == nil && !ok {
			a.m.staleFills.Add(1)
			return at, false
		}
	}
	if err != nil {
		a.m.writeErrs.Add(1)
		a.log.WarnContext(ctx, "cacheaside: cache fill failed", "key", f.key, "err", err)
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
