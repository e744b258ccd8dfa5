package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Warming loads values into the cache before anyone asks for them: after a
// deploy that emptied the cache, or ahead of a known burst. It goes through
// the same lease protocol as a read, so it never overwrites a write:
//
//  1. IDs are taken in batches (DefaultWarmBatch); for each batch, one
//     round trip places a lease on every key that is empty (keys that hold
//     a value are left alone and counted as cached, keys another caller or
//     a write holds are left to it and counted as busy);
//  2. one repository query reads the batch's leased IDs (the repository's
//     batch read when it has one, else one read per ID, bounded);
//  3. one round trip fills every leased key by compare-and-swap against its
//     lease: a write since step 1 removed or refused the lease, and that
//     fill does nothing.
//
// Batches run WithBatchConcurrency at a time. Over a cache that hands out
// distributed locks (RedisCache), one instance of the fleet warms a
// namespace at a time: Warm waits for the lock "warm:<namespace>" until ctx
// ends. Progress is logged about once a second, and the result is counted
// in a WarmStats.

// DefaultWarmBatch is how many IDs a warm reads with one repository query.
const DefaultWarmBatch = 500

// warmLockTTL is the warm lock's TTL; the lock is extended while held.
const warmLockTTL = 10 * time.Second

// WarmStats counts what a warm did with the IDs it was given.
type WarmStats struct {
	Requested int           // distinct IDs asked for
	Loaded    int           // read from the source and stored in the cache
	NotFound  int           // absent from the source, cached as "not found"
	Cached    int           // already in the cache, left alone
	Busy      int           // held by another caller's load or a write, left to it
	Refused   int           // read, but a write came first: not stored
	Failed    int           // not read or not stored because something failed
	Duration  time.Duration // how long the warm took, lock wait included
}

func (s *WarmStats) add(o WarmStats) {
	s.Loaded += o.Loaded
	s.NotFound += o.NotFound
	s.Cached += o.Cached
	s.Busy += o.Busy
	s.Refused += o.Refused
	s.Failed += o.Failed
}

// done is how many IDs the warm has dealt with.
func (s WarmStats) done() int {
	return s.Loaded + s.NotFound + s.Cached + s.Busy + s.Refused + s.Failed
}

// A WarmError reports a warm that did not do all it was asked: what it
// did, and why not the rest. errors.Is sees through it to the causes (the
// repository's error, ErrCacheUnavailable, ErrLockTimeout, ctx.Err()).
type WarmError struct {
	Stats WarmStats
	Err   error
}

func (e *WarmError) Error() string {
	return fmt.Sprintf("%swarm: %d of %d IDs loaded, %d failed: %s", prefix, e.Stats.Loaded, e.Stats.Requested, e.Stats.Failed, unprefixed(e.Err))
}

func (e *WarmError) Unwrap() error { return e.Err }

// batchLeaser is what the adapters of this package offer to place and fill
// many leases in one round trip each.
type batchLeaser interface {
	// setNXMany is SetNX for each key: held[i] is nil where leases[i] was
	// placed; errs[i] reports a key whose command failed.
	setNXMany(ctx context.Context, keys []string, leases [][]byte, ttl time.Duration) (held [][]byte, errs []error, err error)
	// casMany is Leaser.CompareAndSwap for each key, from leases[i] to
	// vals[i] for ttls[i].
	casMany(ctx context.Context, keys []string, leases, vals [][]byte, ttls []time.Duration) (ok []bool, errs []error, err error)
}

// Warm loads the values with the given IDs into the cache, in batches,
// through leases (see above), and returns what it did. The error is nil
// when every ID was dealt with; otherwise it is a *WarmError. Over a cache
// without leases (a CacheClient that is not a Leaser), Warm fills with
// plain sets, guarded only against writes of this process.
func (a *Aside[K, V]) Warm(ctx context.Context, ids []K) (WarmStats, error) {
	start := time.Now()
	uniq, _ := dedupe(ids)
	st := WarmStats{Requested: len(uniq)}
	fail := func(err error) (WarmStats, error) {
		st.Duration = time.Since(start)
		return st, &WarmError{Stats: st, Err: err}
	}
	if err := a.ready(); err != nil {
		return fail(err)
	}
	if len(uniq) == 0 {
		return st, nil
	}
	if lk, ok := a.g.c.(Locker); ok {
		lock, err := lk.AcquireLock(ctx, "warm:"+a.name, warmLockTTL)
		if err != nil {
			return fail(err)
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.o.cacheTimeout)
			defer cancel()
			_ = lock.Release(rctx)
		}()
	}

	var (
		mu       sync.Mutex // protects st, causes and lastLog
		causes   []error
		lastLog  = time.Now()
		g, gctx  = errgroup.WithContext(ctx)
		progress = func(b WarmStats, err error) {
			mu.Lock()
			defer mu.Unlock()
			st.add(b)
			if err != nil && len(causes) < 8 {
				causes = append(causes, err)
			}
			if time.Since(lastLog) >= time.Second {
				lastLog = time.Now()
				a.log.InfoContext(ctx, "cacheaside: warming", "done", st.done(), "of", st.Requested, "loaded", st.Loaded, "failed", st.Failed)
			}
		}
	)
	g.SetLimit(a.o.batchConc)
	for lo := 0; lo < len(uniq); lo += DefaultWarmBatch {
		batch := uniq[lo:min(lo+DefaultWarmBatch, len(uniq))]
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				progress(WarmStats{Failed: len(batch)}, err)
				return nil
			}
			progress(a.warmBatch(gctx, batch))
			return nil
		})
	}
	_ = g.Wait()
	st.Duration = time.Since(start)
	a.log.InfoContext(ctx, "cacheaside: warm done", "requested", st.Requested, "loaded", st.Loaded, "not_found", st.NotFound,
		"cached", st.Cached, "busy", st.Busy, "refused", st.Refused, "failed", st.Failed, "took", st.Duration)
	if err := ctx.Err(); err != nil && st.done() < st.Requested {
		causes = append(causes, err)
	}
	if st.Failed > 0 || len(causes) > 0 {
		return st, &WarmError{Stats: st, Err: errors.Join(causes...)}
	}
	return st, nil
}

// warmBatch warms one batch of IDs.
func (a *Aside[K, V]) warmBatch(ctx context.Context, ids []K) (WarmStats, error) {
	var st WarmStats
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = a.key(id)
	}
	ctx, cancel := context.WithTimeout(ctx, a.o.loadTimeout)
	defer cancel()

	// 1. Leases on the empty keys.
	bl, pipelined := a.g.c.(batchLeaser)
	leases := make([][]byte, len(ids))
	for i := range leases {
		leases[i] = newLease()
	}
	var load []int // indexes of the IDs to read
	switch {
	case pipelined:
		held, errs, err := bl.setNXMany(ctx, keys, leases, a.o.leaseTTL)
		if err != nil {
			a.cacheFailed(ctx, keys[0], err)
			return WarmStats{Failed: len(ids)}, err
		}
		for i := range ids {
			switch {
			case errs[i] != nil:
				st.Failed++
			case held[i] == nil:
				load = append(load, i)
			case isHeld(held[i]):
				st.Busy++
			default:
				st.Cached++
			}
		}
	case a.g.leaser != nil:
		for i, id := range ids {
			switch t := a.takeLease(ctx, id, keys[i], leases[i]); t.out {
			case leaseTaken:
				load = append(load, i)
			case leaseValue:
				st.Cached++
			case leaseFailed:
				st.Failed++
			default:
				st.Busy++
			}
		}
	default:
		for i := range ids {
			load = append(load, i)
			leases[i] = nil
		}
	}
	if len(load) == 0 {
		return st, nil
	}

	// 2. One read of the source.
	want := make([]K, len(load))
	for n, i := range load {
		want[n] = ids[i]
	}
	began := a.now()
	vals, err := a.warmRead(ctx, want)
	delta := a.now().Sub(began)
	if err != nil {
		a.releaseAll(ctx, keys, leases, load)
		st.Failed += len(load)
		return st, wrapErr(fmt.Sprintf("warm read of %d IDs", len(load)), err)
	}

	// 3. Fills, by compare-and-swap on the leases.
	fkeys := make([]string, 0, len(load))
	flease := make([][]byte, 0, len(load))
	fvals := make([][]byte, 0, len(load))
	fttls := make([]time.Duration, 0, len(load))
	absent := make([]bool, 0, len(load))
	for n, i := range load {
		var raw []byte
		var ttl time.Duration
		if vals[n] == nil {
			if a.o.negTTL <= 0 {
				st.NotFound++
				a.releaseAll(ctx, keys, leases, []int{i})
				continue
			}
			raw, ttl = absentMarker, a.jitter(a.o.negTTL)
		} else {
			ttl = a.jitter(a.ttlFor(keys[i]))
			raw, err = a.encode(keys[i], vals[n], ttl, delta)
			if err != nil || len(raw) > a.o.maxValueSize {
				st.Failed++
				a.releaseAll(ctx, keys, leases, []int{i})
				continue
			}
			ttl += a.o.failSafe
		}
		fkeys, flease, fvals, fttls = append(fkeys, keys[i]), append(flease, leases[i]), append(fvals, raw), append(fttls, ttl)
		absent = append(absent, vals[n] == nil)
	}
	count := func(n int, ok bool, err error) {
		switch {
		case err != nil:
			st.Failed++
		case !ok:
			st.Refused++
		case absent[n]:
			st.NotFound++
		default:
			st.Loaded++
		}
	}
	switch {
	case pipelined && len(fkeys) > 0:
		ok, errs, err := bl.casMany(ctx, fkeys, flease, fvals, fttls)
		if err != nil {
			st.Failed += len(fkeys)
			return st, wrapErr("warm fill", err)
		}
		for n := range fkeys {
			count(n, ok[n], errs[n])
		}
	default:
		for n, k := range fkeys {
			f := fill{key: k, mode: fillSwap, expect: flease[n]}
			if flease[n] == nil {
				s, gen := a.gens.of(k)
				f = fill{key: k, mode: fillSet, s: s, gen: gen}
			}
			_, ok := a.store(ctx, f, fvals[n], fttls[n])
			count(n, ok, nil)
		}
	}
	return st, nil
}

// warmRead reads ids from the source: with the batch loader in one query,
// else one read per ID, WithBatchConcurrency at a time. A value is nil for
// an ID the source does not have.
func (a *Aside[K, V]) warmRead(ctx context.Context, ids []K) ([]*V, error) {
	if a.loadMany != nil {
		var got []*V
		err := a.callRepo(ctx, func() (err error) {
			got, err = a.safeLoadMany(ctx, ids)
			if err == nil && len(got) != len(ids) {
				err = fmt.Errorf("batch loader returned %d values for %d ids", len(got), len(ids))
			}
			return err
		})
		return got, err
	}
	got := make([]*V, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(a.o.batchConc)
	for i, id := range ids {
		g.Go(func() error {
			v, err := a.loadOne(gctx, id)
			if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, a.notFound) {
				return err
			}
			got[i] = v
			return nil
		})
	}
	return got, g.Wait()
}

// releaseAll gives back the leases of the keys at the given indexes.
func (a *Aside[K, V]) releaseAll(ctx context.Context, keys []string, leases [][]byte, idx []int) {
	for _, i := range idx {
		if leases[i] != nil {
			a.release(ctx, fill{key: keys[i], mode: fillSwap, expect: leases[i]})
		}
	}
}
