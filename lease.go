package cacheaside

import (
	"bytes"
	"context"
	"encoding/json"
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
//
// A key that holds a corrupt entry or a stale one (past its expiry, kept
// for fail-safe) is taken over the same way: the lease replaces exactly
// what was read, by compare-and-swap, so a write that deleted it meanwhile
// makes the takeover fail and the load look again. A lease always expires:
// a lease-shaped value without an expiry is no lease, and the cache treats
// the key as empty (see Leaser).

// How a waiter polls a key that another caller's lease holds: from about
// leaseBackoffMin between polls, growing by half up to leaseBackoffMax, with
// jitter, and from leaseBackoffMin again whenever the holder changes.
const (
	leaseBackoffMin = 500 * time.Microsecond
	leaseBackoffMax = 8 * time.Millisecond
)

// markerPrefix starts every marker this package stores in a key in place
// of a value: a JSON string that no value encodes to (see entry.go). Every
// marker but a cached "not found" always has an expiry.
const markerPrefix = `"\u0000cacheaside:`

// leasePrefix starts every lease. The lease goes on with a random token
// per call.
const leasePrefix = markerPrefix + `lease:`

func isLease(b []byte) bool { return bytes.HasPrefix(b, []byte(leasePrefix)) }

// newLease returns a lease with a fresh random token of 126 bits, from
// math/rand/v2's ChaCha8 source (tokens need to be unique, not secret),
// and when it was made (Unix microseconds, base 36), which tells a waiter
// how long its holder has been loading.
func newLease() []byte {
	b := make([]byte, 0, len(leasePrefix)+45)
	b = append(b, leasePrefix...)
	b = strconv.AppendUint(b, rand.Uint64()|1<<63, 16)
	b = strconv.AppendUint(b, rand.Uint64()|1<<63, 16)
	b = append(b, '@')
	b = strconv.AppendInt(b, time.Now().UnixMicro(), 36)
	return append(b, '"')
}

// leaseAge returns how long ago lease was made, by this machine's clock,
// or false for a lease that does not say (made by another version) or
// says nonsense.
func leaseAge(lease []byte, now time.Time) (time.Duration, bool) {
	i := bytes.LastIndexByte(lease, '@')
	if i < 0 || len(lease) < i+3 {
		return 0, false
	}
	us, err := strconv.ParseInt(string(lease[i+1:len(lease)-1]), 36, 64)
	if err != nil {
		return 0, false
	}
	age := now.Sub(time.UnixMicro(us))
	if age < 0 || age > time.Minute { // clocks apart: ignore it
		return 0, false
	}
	return age, true
}

// leaseOutcome is what an attempt to place a lease found.
type leaseOutcome int

const (
	leaseTaken   leaseOutcome = iota // the lease is ours
	leaseForeign                     // another caller's lease holds the key
	leaseValue                       // the key holds a fresh value or "not found"
	leaseMoved                       // the key changed while we took it over
	leaseWriting                     // a write is in progress: read the source, do not fill
	leaseFailed                      // the cache failed
)

// leaseTry is what takeLease found.
type leaseTry[V any] struct {
	out   leaseOutcome
	v     *V              // leaseValue: the value, nil for "not found"
	exp   time.Time       // leaseValue: when v stops being fresh
	held  []byte          // leaseForeign: the other lease; leaseWriting: the marker
	stale stale[V]        // leaseTaken: the stale entry the lease replaced
	bad   json.RawMessage // leaseTaken: the corrupt entry the lease replaced
	err   error           // leaseFailed
}

// takeLease tries to place lease on key: on an empty key, or over a stale
// or corrupt entry, which it replaces by compare-and-swap.
func (a *Aside[K, V]) takeLease(ctx context.Context, id K, key string, lease []byte) leaseTry[V] {
	return a.takeLeaseAs(ctx, id, key, lease, false)
}

// takeLeaseAs is takeLease, told whether key held a marker when last read
// (a waiter polling), which some caches answer in fewer round trips.
func (a *Aside[K, V]) takeLeaseAs(ctx context.Context, id K, key string, lease []byte, wasHeld bool) leaseTry[V] {
	at := time.Now()
	held, err := a.g.setNX(ctx, key, lease, a.o.leaseTTL, wasHeld)
	switch {
	case err != nil:
		return leaseTry[V]{out: leaseFailed, err: err}
	case held == nil:
		return leaseTry[V]{out: leaseTaken}
	case isWriting(held):
		return leaseTry[V]{out: leaseWriting, held: held}
	case isLease(held):
		return leaseTry[V]{out: leaseForeign, held: held}
	}
	t := leaseTry[V]{out: leaseTaken}
	f := a.decode(ctx, id, key, held, false)
	switch f.st {
	case stHit:
		return leaseTry[V]{out: leaseValue, v: f.v, exp: f.exp}
	case stAbsent:
		return leaseTry[V]{out: leaseValue}
	case stStale:
		t.stale = stale[V]{v: f.v, raw: held, at: at}
	default: // corrupt, or past its expiry
		t.bad = held
	}
	switch ok, err := a.g.cas(ctx, key, held, lease, a.o.leaseTTL); {
	case err != nil:
		return leaseTry[V]{out: leaseFailed, err: err}
	case !ok:
		return leaseTry[V]{out: leaseMoved}
	}
	return t
}

// leaseLoad places a lease on f.key and loads, or waits for the holder of
// another caller's lease to fill the key, polling with backoff. It takes the
// key over when the other lease ends without a value (its holder failed or
// died and the lease expired), or when the holder is slower than
// WithLeaseWait.
//
// A holder whose fill is refused (a write removed its lease while it read)
// does not return what it read: its read may have come after a later
// write's commit, while the cache still serves that write's predecessor
// (a write deletes the cache entry only after it commits), and returning
// it would let one caller see the new row and a later one the old. It
// looks at the key again instead, as a new caller would.
func (a *Aside[K, V]) leaseLoad(ctx context.Context, id K, f fill, r *result[V]) {
	deadline := time.Now().Add(a.o.leaseWait)
	backoff := leaseBackoffMin
	waited := false
	var seen []byte          // the foreign lease (or marker) the backoff has grown on
	var first time.Duration  // how long seen's holder should still take, if known
	var writeUntil time.Time // when waiting for a write's value gives way to a read of the source
	for {
		lease := newLease()
		at := time.Now()
		t := a.takeLeaseAs(ctx, id, f.key, lease, seen != nil)
		switch {
		case t.out == leaseFailed && ctx.Err() != nil:
			r.err = wrapErr("load "+f.key, ctx.Err())
			return
		case t.out == leaseFailed:
			a.cacheFailed(ctx, f.key, t.err)
			a.loadInto(ctx, id, f, r)
			return
		case t.out == leaseWriting:
			if willFill(t.held) {
				if writeUntil.IsZero() {
					writeUntil = time.Now().Add(a.writeWait())
				}
				if time.Now().Before(writeUntil) {
					break // wait for the value the write will leave, as for a lease's
				}
			}
			// The write's intent replaced the old value: read the source,
			// which holds the old value or the new one, both right for a
			// read that overlaps the write, and leave the cache to the
			// writer.
			a.loadInto(ctx, id, f, r)
			return
		case t.out == leaseTaken:
			if t.stale.v != nil {
				r.stale, f.restore = t.stale, t.stale.raw
			}
			if a.holdAndLoad(ctx, id, f, lease, r) {
				return
			}
			seen, backoff = nil, leaseBackoffMin
			continue
		case t.out == leaseValue:
			r.fresh = at
			if t.v == nil {
				r.err = a.notFound
			} else {
				r.val, r.shared, r.exp = *t.v, true, t.exp
			}
			return
		}
		// Another caller's lease, or a key that changed under the
		// takeover (a new holder too): wait for the holder's value.
		if !bytes.Equal(t.held, seen) {
			// A new holder: the key made progress (a fill, or a delete that
			// beat it), so poll at the start of the backoff again, or when
			// its load should end, if that is later.
			seen, backoff = t.held, leaseBackoffMin
			first = a.expectedLoadLeft(seen)
		}
		if !waited {
			waited = true
			a.m.leaseWaits.Add(1)
		}
		left := time.Until(deadline)
		if isWriting(seen) {
			left = min(left, time.Until(writeUntil))
			if left <= 0 { // the write takes longer than a load: read the source
				a.loadInto(ctx, id, f, r)
				return
			}
		}
		if left <= 0 {
			// The holder is slow: take the key over. Reading the source
			// beside its lease would not do: the holder's fill of an older
			// read could land after this caller returned a newer row.
			a.m.leaseTimeouts.Add(1)
			ok, err := a.g.cas(ctx, f.key, seen, lease, a.o.leaseTTL)
			switch {
			case err != nil:
				a.cacheFailed(ctx, f.key, err)
				a.loadInto(ctx, id, f, r)
				return
			case ok:
				a.log.WarnContext(ctx, "cacheaside: took a key over from a lease holder slower than WithLeaseWait", "key", f.key)
				if a.holdAndLoad(ctx, id, f, lease, r) {
					return
				}
			}
			deadline = time.Now().Add(a.o.leaseWait) // the key moved on: wait for it again
			seen = nil
			continue
		}
		wait := backoff/2 + rand.N(backoff)
		if first > wait {
			wait = first + rand.N(backoff/2)
		}
		first = 0
		t2 := time.NewTimer(min(wait, left))
		select {
		case <-ctx.Done():
			t2.Stop()
			r.err = wrapErr("load "+f.key, ctx.Err())
			return
		case <-t2.C:
		}
		backoff = min(backoff*3/2, leaseBackoffMax)
	}
}

// holdAndLoad loads as the holder of lease and fills under it. It reports
// false, leaving r as it found it, when the fill was refused: the caller
// looks at the key again (see leaseLoad).
func (a *Aside[K, V]) holdAndLoad(ctx context.Context, id K, f fill, lease []byte, r *result[V]) bool {
	lost := false
	f.mode, f.expect, f.lost = fillSwap, lease, &lost
	before := *r
	a.loadInto(ctx, id, f, r)
	if !lost || ctx.Err() != nil {
		return true
	}
	a.m.refusedReloads.Add(1)
	*r = before
	r.loaded = true
	return false
}

// writeWait is how long a reader that finds the marker of a write that
// will leave its value (willFill) waits for that value before it reads the
// source itself: this process's mean load time, at least a millisecond, at
// most WithLeaseWait. Waiting costs no query, and the write usually ends
// sooner than a load would; one that does not (a write waiting for a
// member cut off from the cache, say) costs the reader one load's time.
func (a *Aside[K, V]) writeWait() time.Duration {
	d := time.Millisecond
	if n := a.m.loads.Load(); n > 0 {
		d = max(d, time.Duration(a.m.loadNanos.Load()/n))
	}
	return min(d, a.o.leaseWait)
}

// expectedLoadLeft estimates how long the holder of lease has left to
// load: this process's mean load time less the lease's age, or zero.
func (a *Aside[K, V]) expectedLoadLeft(lease []byte) time.Duration {
	n := a.m.loads.Load()
	if n == 0 {
		return 0
	}
	age, ok := leaseAge(lease, time.Now())
	if !ok {
		return 0
	}
	return max(time.Duration(a.m.loadNanos.Load()/n)-age, 0)
}

// release gives up a load's own lease after a failed read, on a short
// context of its own, since the load's may have ended: it puts back the
// stale entry the lease replaced, while fail-safe may still serve it, or
// deletes the lease.
func (a *Aside[K, V]) release(ctx context.Context, f fill) {
	if f.mode != fillSwap || !isLease(f.expect) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.o.cacheTimeout)
	defer cancel()
	var back json.RawMessage
	var ttl time.Duration
	if f.restore != nil {
		if ttl = a.restoreTTL(f.key, f.restore); ttl > 0 {
			back = f.restore
		}
	}
	if _, err := a.g.cas(ctx, f.key, f.expect, back, ttl); err != nil {
		// Left in place, the lease would hold every reader of the key, in
		// every process, until it expires: delete the key instead, as soon
		// as the cache answers again.
		a.log.WarnContext(ctx, "cacheaside: lease release failed; the key will be deleted once the cache answers", "key", f.key, "err", err)
		a.queue([]string{f.key}, nil, nil)
	}
}
