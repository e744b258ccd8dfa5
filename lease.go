package cacheaside

import (
	"bytes"
	"context"
	"fmt"
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

// leaseLoad places a lease on key and loads, or waits for the holder of
// another caller's lease to fill the key, polling with backoff. It takes the
// key over when the other lease ends without a value (its holder failed or
// died and the lease expired), and after waiting WithLeaseWait it loads
// without filling.
func (a *Aside[K, V]) leaseLoad(ctx context.Context, id K, key string, s *stripe, gen uint64, f *flight[V]) {
	lease := newLease()
	deadline := time.Now().Add(a.o.leaseWait)
	backoff := leaseBackoffMin
	waited := false
	var seen []byte // the foreign lease the backoff has grown on
	for {
		at := time.Now()
		held, err := a.leaser.SetNX(ctx, key, lease, a.o.leaseTTL)
		switch {
		case err != nil && ctx.Err() != nil:
			f.err = fmt.Errorf("cacheaside: load %s: %w", key, ctx.Err())
			return
		case err != nil:
			a.m.cacheErrs.Add(1)
			a.log.WarnContext(ctx, "cacheaside: cache error, falling back to the repository", "key", key, "err", err)
			a.loadInto(ctx, id, key, f, s, gen, fillNone, nil)
			return
		case held == nil:
			a.loadInto(ctx, id, key, f, s, gen, fillSwap, lease)
			return
		case !isLease(held):
			switch v, st := a.decode(ctx, key, held, false); st {
			case stHit:
				f.val, f.raw, f.fresh = *v, held, at
				return
			case stAbsent:
				f.err, f.fresh = a.notFound, at
				return
			}
			// Undecodable: load, and replace it if it is still there.
			a.loadInto(ctx, id, key, f, s, gen, fillSwap, held)
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
			a.log.WarnContext(ctx, "cacheaside: gave up waiting for another caller's lease; loading without filling", "key", key)
			a.loadInto(ctx, id, key, f, s, gen, fillNone, nil)
			return
		}
		t := time.NewTimer(min(backoff/2+rand.N(backoff), left))
		select {
		case <-ctx.Done():
			t.Stop()
			f.err = fmt.Errorf("cacheaside: load %s: %w", key, ctx.Err())
			return
		case <-t.C:
		}
		backoff = min(backoff*3/2, leaseBackoffMax)
	}
}

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

// release removes this load's own lease after a failed read, on a short
// context of its own, since the load's may have ended.
func (a *Aside[K, V]) release(ctx context.Context, key string, mode fillMode, expect []byte) {
	if mode != fillSwap || !isLease(expect) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if _, err := a.leaser.CompareAndSwap(ctx, key, expect, nil, 0); err != nil {
		a.log.WarnContext(ctx, "cacheaside: lease release failed; it will expire", "key", key, "err", err)
	}
}
