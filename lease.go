package cacheaside

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strconv"
	"time"
)

// Leases are what make a fill safe across every process that shares the
// cache (Nishtala et al., "Scaling Memcache at Facebook", NSDI 2013, 3.2.1).
// A load that misses places a lease holding a random token, unique to the
// call, in the key itself; the lease is placed before the source is read.
// Its fill is a compare-and-swap on that exact lease, and every invalidation
// deletes the key, lease and all. So a fill lands only if no invalidation
// happened between the lease and the fill, which means the value it carries
// was read after every write acknowledged before the fill was sent. Callers
// that find someone else's lease wait for its value instead of loading.

// How a waiter polls a key that another caller's lease holds: from about
// leaseBackoffMin between polls, growing by half up to leaseBackoffMax, with
// jitter, and from leaseBackoffMin again whenever the holder changes.
const (
	leaseBackoffMin = 500 * time.Microsecond
	leaseBackoffMax = 8 * time.Millisecond
)

// leasePrefix starts every lease: a JSON string, like absentMarker, that
// no value encodes to. The lease goes on with a random token per call.
const leasePrefix = `"\u0000cacheaside:lease:`

func isLease(b []byte) bool { return bytes.HasPrefix(b, []byte(leasePrefix)) }

// newLease returns a lease with a fresh random token of 126 bits, from
// math/rand/v2's ChaCha8 source: tokens need to be unique, not secret.
func newLease() []byte {
	b := make([]byte, 0, len(leasePrefix)+33)
	b = append(b, leasePrefix...)
	b = strconv.AppendUint(b, rand.Uint64()|1<<63, 16)
	b = strconv.AppendUint(b, rand.Uint64()|1<<63, 16)
	return append(b, '"')
}

// leaseOutcome is what an attempt to place a lease found.
type leaseOutcome int

const (
	leaseTaken   leaseOutcome = iota // the key was empty: the lease is ours
	leaseForeign                     // another caller's lease holds the key
	leaseValue                       // the key holds a value or "not found"
	leaseBad                         // the key holds something undecodable
	leaseFailed                      // the cache failed
)

// takeLease tries to place lease on key. With leaseValue it returns the
// value (nil for a cached "not found"), and with leaseForeign or leaseBad
// what the key holds.
func (a *Aside[K, V]) takeLease(ctx context.Context, key string, lease []byte) (leaseOutcome, *V, []byte, error) {
	held, err := a.leaser.SetNX(ctx, key, lease, a.o.leaseTTL)
	switch {
	case err != nil:
		return leaseFailed, nil, nil, err
	case held == nil:
		return leaseTaken, nil, nil, nil
	case isLease(held):
		return leaseForeign, nil, held, nil
	}
	switch v, st := a.decode(ctx, key, held, false); st {
	case stHit:
		return leaseValue, v, held, nil
	case stAbsent:
		return leaseValue, nil, held, nil
	}
	return leaseBad, nil, held, nil
}

// leaseLoad places a lease on f.key and loads, or waits for the holder of
// another caller's lease to fill the key, polling with backoff. It takes the
// key over when the other lease ends without a value (its holder failed or
// died and the lease expired), and after waiting WithLeaseWait it loads
// without filling.
func (a *Aside[K, V]) leaseLoad(ctx context.Context, id K, f fill, r *result[V]) {
	lease := newLease()
	deadline := time.Now().Add(a.o.leaseWait)
	backoff := leaseBackoffMin
	waited := false
	var seen []byte // the foreign lease the backoff has grown on
	for {
		at := time.Now()
		out, v, held, err := a.takeLease(ctx, f.key, lease)
		switch {
		case out == leaseFailed && ctx.Err() != nil:
			r.err = wrapErr("load "+f.key, ctx.Err())
			return
		case out == leaseFailed:
			a.cacheFailed(ctx, f.key, err)
			a.loadInto(ctx, id, f, r)
			return
		case out == leaseTaken:
			f.mode, f.expect = fillSwap, lease
			a.loadInto(ctx, id, f, r)
			return
		case out == leaseValue:
			r.fresh = at
			if v == nil {
				r.err = a.notFound
			} else {
				r.val, r.raw = *v, held
			}
			return
		case out == leaseBad:
			// Load, and replace the bad entry if it is still there.
			f.mode, f.expect = fillSwap, held
			a.loadInto(ctx, id, f, r)
			return
		}
		if !bytes.Equal(held, seen) {
			// A new holder: the key made progress (a fill, or a delete that
			// beat it), so poll at the start of the backoff again.
			seen, backoff = held, leaseBackoffMin
		}
		if !waited {
			waited = true
			a.m.leaseWaits.Add(1)
		}
		left := time.Until(deadline)
		if left <= 0 {
			a.m.leaseTimeouts.Add(1)
			a.log.WarnContext(ctx, "cacheaside: gave up waiting for another caller's lease; loading without filling", "key", f.key)
			a.loadInto(ctx, id, f, r)
			return
		}
		t := time.NewTimer(min(backoff/2+rand.N(backoff), left))
		select {
		case <-ctx.Done():
			t.Stop()
			r.err = wrapErr("load "+f.key, ctx.Err())
			return
		case <-t.C:
		}
		backoff = min(backoff*3/2, leaseBackoffMax)
	}
}

// release removes a load's own lease after a failed read, on a short
// context of its own, since the load's may have ended.
func (a *Aside[K, V]) release(ctx context.Context, f fill) {
	if f.mode != fillSwap || !isLease(f.expect) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if _, err := a.leaser.CompareAndSwap(ctx, f.key, f.expect, nil, 0); err != nil {
		a.log.WarnContext(ctx, "cacheaside: lease release failed; it will expire", "key", f.key, "err", err)
	}
}
