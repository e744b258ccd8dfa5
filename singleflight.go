package cacheaside

import (
	"context"
	"errors"
	"hash/maphash"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// A miss is loaded once per key in this process: every caller that misses
// while a load of its key runs joins that load (golang.org/x/sync's
// singleflight) and waits for it on its own context. The load itself runs
// on a context detached from its callers' cancellation, bounded by the load
// timeout. Two things keep a joined caller from being handed a value older
// than a write it should see:
//
//   - Writes in this process move their key to a new generation before they
//     delete it, and the generation is part of the flight's key: a read
//     that starts after a local write never joins a load that began before
//     it.
//   - A load records the instant up to which its result is known fresh
//     (when it found the value, or sent its fill). A caller that joined
//     later than that, after a write in another process perhaps, does not
//     take the result: it looks at the cache again (a rejoin).

// result is the outcome of one shared load.
type result[V any] struct {
	leader *byte // identifies the caller whose function ran
	val    V     // the value, when err is nil
	err    error
	// fresh is an instant before which every write was already visible to
	// the result: a caller that joined the flight before it may take the
	// result, one that joined later may be owed a newer value.
	fresh time.Time
	// stale is the last value known for the key, past its expiry: what
	// fail-safe answers with if the load fails.
	stale stale[V]
	// shared is set when val was in the shared cache (read there, or
	// stored there by this load's own lease) until exp: a value the local
	// tier may take.
	shared bool
	exp    time.Time
	loaded bool // the source was read for it
}

// maxRejoins bounds how many times a caller that joined a flight too late
// to trust its result looks again before it reads the source itself.
const maxRejoins = 2

// loadShared joins or leads the load of key for the key's current
// generation and waits for it on ctx. useCache is false when the cache just
// failed, or must not be read: the load then skips the cache (and, with
// leases, the fill). old is the stale value the caller found, if any.
func (a *Aside[K, V]) loadShared(ctx context.Context, id K, key string, useCache bool, old stale[V]) (*V, Result, error) {
	start := time.Now()
	for attempt := 0; ; attempt++ {
		s, gen := a.gens.of(key)
		tag := new(byte)
		ch := a.sf.DoChan(key+"\x00"+strconv.FormatUint(gen, 36), func() (any, error) {
			return a.lead(ctx, id, fill{key: key, s: s, gen: gen}, tag, useCache, old), nil
		})
		if a.onJoin != nil {
			a.onJoin(key)
		}
		var r *result[V]
		select {
		case <-ctx.Done():
			a.m.misses.Add(1)
			return nil, ResultMiss, ctx.Err()
		case c := <-ch:
			r = c.Val.(*result[V])
		}
		leader := r.leader == tag
		if !leader && !start.Before(r.fresh) && (r.err == nil || errors.Is(r.err, a.notFound)) {
			a.m.rejoins.Add(1)
			if attempt == maxRejoins {
				return a.loadAlone(ctx, id, key, useCache, old)
			}
			if useCache {
				at := time.Now()
				switch f, err := a.lookup(ctx, id, key); {
				case err != nil:
					a.m.misses.Add(1)
					return nil, ResultMiss, err
				case f.st == stHit:
					a.m.hits.Add(1)
					return f.v, ResultHit, nil
				case f.st == stAbsent:
					a.m.hits.Add(1)
					return nil, ResultHit, a.notFound
				case f.st == stStale:
					old = stale[V]{v: f.v, raw: f.raw, at: at}
				}
			}
			continue
		}
		res := ResultMiss
		if leader {
			a.m.misses.Add(1)
		} else {
			a.m.shared.Add(1)
			res = ResultShared
		}
		if leader && !r.loaded {
			res = ResultShared // another instance's load, through its lease
		}
		if r.err != nil {
			return nil, res, r.err
		}
		return a.copyOut(&r.val), res, nil
	}
}

// loadAlone loads key for one caller, on its own context, outside single
// flight: through the lease protocol when the cache may be used (a read of
// the source beside it could return a row that a holder's older read is
// about to put back in the cache), straight from the source otherwise.
func (a *Aside[K, V]) loadAlone(ctx context.Context, id K, key string, useCache bool, old stale[V]) (*V, Result, error) {
	a.m.misses.Add(1)
	r := &result[V]{stale: old}
	ctx, cancel := context.WithTimeout(ctx, a.o.loadTimeout)
	defer cancel()
	if useCache && a.g.leaser != nil {
		s, gen := a.gens.of(key)
		a.leaseLoad(ctx, id, fill{key: key, s: s, gen: gen}, r)
	} else {
		a.loadInto(ctx, id, fill{key: key}, r)
	}
	if r.err != nil {
		return nil, ResultMiss, r.err
	}
	return &r.val, ResultMiss, nil
}

// lead runs one shared load, on a context detached from the caller's, and
// turns a panic into a PanicError for every waiter, so the key is always
// freed. f says where the load stores what it reads; its mode is set here.
//
// With a Leaser it takes a lease on the key, or waits for the holder of
// another one (see leaseLoad). Without one it looks at the cache again,
// loads, and fills unless a write in this process intervened.
func (a *Aside[K, V]) lead(parent context.Context, id K, f fill, tag *byte, useCache bool, old stale[V]) (r *result[V]) {
	r = &result[V]{leader: tag, stale: old}
	defer func() {
		if p := recover(); p != nil {
			a.m.dbErrs.Add(1)
			r.err = &PanicError{Value: p, Stack: debug.Stack()}
			a.log.ErrorContext(parent, "cacheaside: loader panicked", "key", f.key, "panic", p)
		}
	}()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), a.o.loadTimeout)
	defer cancel()
	var tk tierTicket
	if a.tier != nil {
		tk = a.tier.begin(f.key)
	}

	switch {
	case a.g.leaser != nil && useCache:
		a.leaseLoad(ctx, id, f, r)
	case a.g.leaser != nil:
		// The cache failed or must not be read: read the source, leave the
		// cache alone.
		a.loadInto(ctx, id, f, r)
	default:
		// Single flight only merges calls that overlap: a flight that ended
		// just before this one may already have filled the key.
		if useCache {
			at := time.Now()
			switch found, _ := a.lookup(ctx, id, f.key); found.st {
			case stHit:
				r.val, r.fresh, r.shared, r.exp = *found.v, at, true, found.exp
				return r
			case stAbsent:
				r.err, r.fresh = a.notFound, at
				return r
			case stStale:
				r.stale = stale[V]{v: found.v, raw: found.raw, at: at}
			}
			f.mode = fillSet
		}
		a.loadInto(ctx, id, f, r)
	}
	if r.err == nil && r.shared {
		a.toTier(f.key, &r.val, r.exp, tk)
	}
	return r
}

// generations order fills against invalidations within this process. Keys
// share numStripes counters; two keys in one stripe only cost each other an
// extra load or a skipped fill.
// The zero value is not usable: init sets the seed.
type generations struct {
	seed    maphash.Seed
	stripes [numStripes]stripe
}

// numStripes is how many generation counters the keys share.
const numStripes = 256

// stripe orders fills against invalidations for the keys that hash to it.
// A write bumps gen under mu held exclusively; a fill holds mu shared and
// writes only if gen has not moved since its load began. So once a write's
// bump is done, no fill of a value loaded before it can land, and any fill
// that landed before the bump is removed by the write's delete.
type stripe struct {
	mu  sync.RWMutex  // held shared by fills, exclusively to bump gen
	gen atomic.Uint64 // bumped by every invalidation of a key in the stripe
	_   [32]byte      // pad the 32 bytes above to a 64-byte cache line
}

func (g *generations) init() { g.seed = maphash.MakeSeed() }

// of returns key's stripe and its current generation.
func (g *generations) of(key string) (*stripe, uint64) {
	s := &g.stripes[maphash.String(g.seed, key)%numStripes]
	return s, s.gen.Load()
}

// bump moves key to a new generation.
func (g *generations) bump(key string) {
	s, _ := g.of(key)
	s.mu.Lock()
	s.gen.Add(1)
	s.mu.Unlock()
}
