package cacheaside

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"time"
)

// Early refresh ([WithEarlyRefresh]) is the XFetch rule of Vattani,
// Chierichetti and Lowenstein ("Optimal Probabilistic Cache Stampede
// Prevention", VLDB 2015): a read that finds a fresh entry, which expires at
// exp and whose load took delta, refreshes it when
//
//	now + delta * beta * -ln(U) >= exp,   U uniform in (0, 1]
//
// so the chance grows as the expiry nears, sooner for a value that is slow
// to load, and a hot key is refreshed, with high probability, before it
// expires: no reader waits for its load. The refresh runs in the
// background, on a context detached from the reader's and bounded by the
// load timeout, while the entry keeps being served:
//
//   - one refresh per key per process (a set of keys in flight), and per
//     fleet: a claim beside the key ("cacheaside:refresh:" and the key,
//     in its cluster slot), placed if absent for a lease TTL and dropped
//     when the refresh ends;
//   - at most maxRefreshes at once per process; a read that would start
//     one more does not;
//   - the new entry replaces the one the reader found only if the key
//     still holds exactly it (compare-and-swap): a write since then deleted
//     or refused it, and the refresh is dropped, so it never undoes a
//     write;
//   - a failed read of the source leaves the entry as it is.
//
// The local tier keeps a value until its entry's expiry less the same kind
// of margin (the process's mean load time times beta times -ln U), so that
// an instance that serves a hot key from memory reads it from the shared
// cache, and may refresh it, before it expires there.

// maxRefreshes bounds the early refreshes that run at once in a process.
const maxRefreshes = 64

// refreshClaimer is what the adapters of this package offer for the
// fleet-wide claim on a key's early refresh.
type refreshClaimer interface {
	// claimRefresh places token as the claim on refreshing key, for ttl,
	// unless a claim is there, and reports whether it did.
	claimRefresh(ctx context.Context, key string, token []byte, ttl time.Duration) (bool, error)
	// dropRefresh removes the claim on key if it is still token.
	dropRefresh(ctx context.Context, key string, token []byte) error
}

// xfetch reports whether a read at now of an entry that expires at exp,
// and whose load took delta, should refresh it early.
func xfetch(now, exp time.Time, delta time.Duration, beta float64) bool {
	if exp.IsZero() || delta <= 0 || beta <= 0 {
		return false
	}
	gap := float64(delta) * beta * -math.Log(1-rand.Float64())
	return !now.Add(time.Duration(min(gap, float64(math.MaxInt64/2)))).Before(exp)
}

// maybeRefresh refreshes the entry f of key in the background if XFetch
// says so.
func (a *Aside[K, V]) maybeRefresh(ctx context.Context, id K, key string, f found[V]) {
	if a.o.earlyBeta <= 0 || f.st != stHit || a.g.leaser == nil {
		return
	}
	if !xfetch(a.now(), f.exp, f.delta, a.o.earlyBeta) {
		return
	}
	if _, busy := a.refreshing.LoadOrStore(key, struct{}{}); busy {
		return
	}
	if a.refreshes.Add(1) > maxRefreshes {
		a.refreshes.Add(-1)
		a.refreshing.Delete(key)
		return
	}
	raw := append(json.RawMessage(nil), f.raw...)
	parent := context.WithoutCancel(ctx)
	if !a.bg.Go(func(done <-chan struct{}) {
		defer a.refreshing.Delete(key)
		defer a.refreshes.Add(-1)
		ctx, cancel := context.WithTimeout(parent, a.o.loadTimeout)
		defer cancel() // which also ends the watcher below
		go func() {    // Close ends the refresh
			select {
			case <-done:
				cancel()
			case <-ctx.Done():
			}
		}()
		a.refresh(ctx, id, key, raw)
	}) {
		a.refreshes.Add(-1)
		a.refreshing.Delete(key)
	}
}

// refresh reloads id and replaces raw, key's entry, with the result,
// unless the key changed meanwhile or another process holds the claim.
func (a *Aside[K, V]) refresh(ctx context.Context, id K, key string, raw json.RawMessage) {
	claim := newLease()
	if rc, ok := a.g.c.(refreshClaimer); ok {
		var won bool
		err := a.g.do(ctx, a.g.shard(key), func(ctx context.Context) error {
			w, err := rc.claimRefresh(ctx, key, claim, a.o.leaseTTL)
			won = w
			return err
		})
		if err != nil || !won {
			return
		}
		defer func() {
			_ = a.g.do(context.WithoutCancel(ctx), a.g.shard(key), func(ctx context.Context) error {
				return rc.dropRefresh(ctx, key, claim)
			})
		}()
	}
	began := a.now()
	v, err := a.loadOne(ctx, id)
	f := fill{key: key, delta: a.now().Sub(began)}
	var next json.RawMessage
	var ttl time.Duration
	switch {
	case err == nil && v != nil:
		ttl = a.jitter(a.ttlFor(key))
		next, err = a.encode(key, v, ttl, f.delta)
		if err != nil || len(next) > a.o.maxValueSize {
			return
		}
		ttl += a.o.failSafe
	case (err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, a.notFound)) && a.o.negTTL > 0:
		next, ttl = absentMarker, a.jitter(a.o.negTTL)
	default:
		a.log.WarnContext(ctx, "cacheaside: early refresh failed; the entry is served until it expires", "key", key, "err", err)
		return
	}
	if ok, err := a.g.cas(ctx, key, raw, next, ttl); err == nil && ok {
		a.m.earlyRefreshes.Add(1)
	}
}
