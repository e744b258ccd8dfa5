package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// GetMany returns the values with the given IDs, aligned with ids, with nil
// for IDs that have no value. Hits come from one MultiGetter round trip
// (one per shard on a sharded cache) when the cache implements it; misses
// are loaded once each through the same shared loads as Get, or with one
// batch read when the source offers one. A batch read takes a lease on each
// key it loads, like a single load, and waits for keys that another load
// holds a lease on instead of reading them (it is not merged with single
// loads of this process that hold none yet).
//
// The error is nil unless a lookup or load failed for a reason other than
// "not found"; it then says how many failed and wraps each cause, and the
// slice still holds every value that was read.
func (a *Aside[K, V]) GetMany(ctx context.Context, ids []K) ([]*V, error) {
	if err := a.ready(); err != nil {
		return nil, err
	}
	out := make([]*V, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	start := time.Now()
	uniq, pos := dedupe(ids)
	b := &batch[K, V]{
		ids:    uniq,
		keys:   make([]string, len(uniq)),
		vals:   make([]*V, len(uniq)),
		states: make([]state, len(uniq)),
		stale:  make([]stale[V], len(uniq)),
	}
	for i, id := range uniq {
		b.keys[i] = a.key(id)
		if a.adapt != nil {
			a.adapt.reads.add(b.keys[i])
		}
	}
	a.m.requests.Add(int64(len(uniq)))
	if a.tier != nil {
		b.tickets = make([]tierTicket, len(uniq))
		for i, k := range b.keys {
			if v, ok := a.tier.get(k); ok {
				b.vals[i], b.states[i] = a.copyOut(&v), stLocal
				a.m.localHits.Add(1)
				a.m.requests.Add(-1) // counted as a local hit alone (see snapshot)
				continue
			}
			a.m.localMisses.Add(1)
			b.tickets[i] = a.tier.begin(k)
		}
	}

	missing := a.lookupMany(ctx, b)
	if a.admit != nil { // a Bloom filter answers for IDs that never existed
		kept := missing[:0]
		for _, j := range missing {
			if b.states[j] != stFailed && !a.admit(ctx, b.ids[j]) {
				a.m.bloomRejected.Add(1)
				continue
			}
			kept = append(kept, j)
		}
		missing = kept
	}
	if a.recording {
		b.results = make([]Result, len(uniq))
		for i := range b.results {
			b.results[i] = ResultHit
			if b.states[i] == stLocal {
				b.results[i] = ResultLocalHit
			}
		}
		for _, j := range missing {
			b.results[j] = ResultMiss
		}
		defer a.recordBatch(ctx, b, start)
	}
	if err := ctx.Err(); err != nil {
		a.m.misses.Add(int64(len(missing)))
		return out, err
	}
	if len(missing) > 0 && a.loadMany != nil {
		missing = a.loadBatch(ctx, b, missing)
	}
	a.loadEach(ctx, b, missing)

	used := make([]bool, len(uniq))
	for i, j := range pos {
		v := b.vals[j]
		if v == nil {
			continue
		}
		if used[j] { // a repeated ID gets its own copy
			v = a.copyOut(v)
		}
		used[j] = true
		out[i] = v
	}
	if b.failed > 0 {
		return out, &batchError{failed: b.failed, causes: b.causes}
	}
	return out, nil
}

// batch is one GetMany call's distinct IDs and what is known of each.
type batch[K comparable, V any] struct {
	ids     []K
	keys    []string
	vals    []*V
	states  []state
	stale   []stale[V]   // values past their expiry, for fail-safe
	tickets []tierTicket // with a local tier: what each read noted as it began
	// failed counts the IDs that could not be read; causes says why (one
	// failed batch read is one cause for all of its IDs).
	failed int
	causes []error
	// results says how each ID was read, for a Recorder; nil without one.
	results []Result
}

// recordBatch tells the Recorder how each ID of b was read.
func (a *Aside[K, V]) recordBatch(ctx context.Context, b *batch[K, V], start time.Time) {
	d := time.Since(start)
	for _, res := range b.results {
		a.o.recorder.RecordRead(ctx, res, d)
	}
}

// dedupe returns the distinct ids in order of first appearance, and for
// each input position the index of its ID among them.
func dedupe[K comparable](ids []K) (uniq []K, pos []int) {
	first := make(map[K]int, len(ids))
	uniq = make([]K, 0, len(ids))
	pos = make([]int, len(ids))
	for i, id := range ids {
		j, ok := first[id]
		if !ok {
			j = len(uniq)
			first[id] = j
			uniq = append(uniq, id)
		}
		pos[i] = j
	}
	return uniq, pos
}

// lookupMany fills b.vals with the hits, counts them, and returns the
// indexes of the misses. Keys whose own write is still waiting for the
// cache are not read from it.
func (a *Aside[K, V]) lookupMany(ctx context.Context, b *batch[K, V]) []int {
	var ask []int // the keys to read from the cache
	for i, k := range b.keys {
		switch {
		case b.states[i] == stLocal:
		case a.isPending(k):
			b.states[i] = stFailed
		default:
			ask = append(ask, i)
		}
	}
	at := time.Now()
	found := func(i int, f found[V]) {
		switch f.st {
		case stStale:
			b.stale[i] = stale[V]{v: f.v, raw: f.raw, at: at}
		case stHit:
			b.vals[i] = f.v
			a.maybeRefresh(ctx, b.ids[i], b.keys[i], f)
			if a.tier != nil {
				a.toTier(b.keys[i], f.v, f.exp, b.tickets[i])
			}
		}
		b.states[i] = f.st
	}
	if a.g.multi != nil && len(ask) > 0 {
		keys := make([]string, len(ask))
		for n, i := range ask {
			keys[n] = b.keys[i]
		}
		raws, errs := a.g.getMulti(ctx, keys)
		var failed error
		for n, i := range ask {
			switch {
			case errs[n] != nil:
				b.states[i], failed = stFailed, errs[n]
			case raws[n] != nil:
				found(i, a.decode(ctx, b.ids[i], b.keys[i], raws[n], true))
			}
		}
		if failed != nil && ctx.Err() == nil {
			a.cacheFailed(ctx, len(keys), failed)
		}
	} else {
		var mu sync.Mutex // protects the tier's tickets and the batch's slices
		g := new(errgroup.Group)
		g.SetLimit(a.o.batchConc)
		for _, i := range ask {
			g.Go(func() error {
				f, _ := a.lookup(ctx, b.ids[i], b.keys[i])
				mu.Lock()
				defer mu.Unlock()
				found(i, f)
				return nil
			})
		}
		_ = g.Wait()
	}
	var missing []int
	for i, st := range b.states {
		switch st {
		case stLocal: // counted as a local hit
		case stHit, stAbsent:
			a.m.hits.Add(1)
		default:
			missing = append(missing, i)
		}
	}
	return missing
}

// loadEach loads the missing IDs one by one, concurrently, through the same
// shared loads as Get.
func (a *Aside[K, V]) loadEach(ctx context.Context, b *batch[K, V], missing []int) {
	if len(missing) == 0 {
		return
	}
	errs := make([]error, len(b.ids))
	g := new(errgroup.Group)
	g.SetLimit(a.o.batchConc)
	for _, j := range missing {
		g.Go(func() error {
			v, res, err := a.loadShared(ctx, b.ids[j], b.keys[j], b.states[j] != stFailed, b.stale[j])
			if err != nil && !errors.Is(err, a.notFound) {
				errs[j], res = err, ResultError
			}
			if b.results != nil {
				b.results[j] = res
			}
			b.vals[j] = v
			return nil
		})
	}
	_ = g.Wait()
	for _, err := range errs {
		if err != nil {
			b.failed++
			b.causes = append(b.causes, err)
		}
	}
}

// loadBatch loads the missing IDs with one batch read and fills the cache
// with what it found, and with "not found" markers for the rest. With a
// Leaser it first takes a lease on each key and fills by compare-and-swap
// on its own leases, as a single load does. It returns the keys that it
// left to be loaded one by one: those under another caller's lease, to be
// waited for.
func (a *Aside[K, V]) loadBatch(ctx context.Context, b *batch[K, V], missing []int) (rest []int) {
	ctx, cancel := context.WithTimeout(ctx, a.o.loadTimeout)
	defer cancel()
	fills := make([]fill, len(missing))
	for n, j := range missing {
		s, gen := a.gens.of(b.keys[j])
		fills[n] = fill{key: b.keys[j], mode: fillSet, s: s, gen: gen}
		if b.states[j] == stFailed { // the cache failed or must not be read
			fills[n].mode = fillNone
		}
	}
	if a.g.leaser != nil {
		missing, fills, rest = a.leaseBatch(ctx, b, missing, fills)
	}
	if len(missing) == 0 {
		return rest
	}

	a.m.misses.Add(int64(len(missing)))
	ids := make([]K, len(missing))
	for n, j := range missing {
		ids[n] = b.ids[j]
	}
	var got []*V
	began := a.now()
	err := a.callRepo(ctx, func() (err error) {
		got, err = a.safeLoadMany(ctx, ids)
		if err == nil && len(got) != len(ids) {
			err = fmt.Errorf("batch loader returned %d values for %d ids", len(got), len(ids))
		}
		return err
	})
	if err != nil {
		a.failBatch(ctx, b, missing, fills, err)
		return rest
	}
	delta := a.now().Sub(began)
	for n, j := range missing {
		v := got[n]
		if v == nil {
			a.storeAbsent(ctx, fills[n])
			continue
		}
		b.vals[j] = v
		fills[n].delta = delta
		if _, exp, ok := a.storeValue(ctx, fills[n], v); ok && fills[n].mode == fillSwap && a.tier != nil {
			a.toTier(fills[n].key, v, exp, b.tickets[j])
		}
	}
	return rest
}

// failBatch answers the keys of a failed batch read with their stale
// values where fail-safe has them, and counts the others as failed.
func (a *Aside[K, V]) failBatch(ctx context.Context, b *batch[K, V], missing []int, fills []fill, err error) {
	failed := 0
	for n, j := range missing {
		r := &result[V]{stale: b.stale[j]}
		if a.failSafe(ctx, fills[n].key, r, err) {
			b.vals[j] = &r.val
		} else {
			failed++
			if b.results != nil {
				b.results[j] = ResultError
			}
		}
		a.release(ctx, fills[n])
	}
	if failed > 0 {
		b.failed += failed
		b.causes = append(b.causes, wrapErr(fmt.Sprintf("batch load of %d keys", len(missing)), err))
	}
}

// leaseBatch takes a lease on each key to be loaded, concurrently. It
// returns the keys to load with the fill of each, and the keys under
// another caller's lease; keys found to hold a value are served from it.
func (a *Aside[K, V]) leaseBatch(ctx context.Context, b *batch[K, V], missing []int, fills []fill) (load []int, loadFills []fill, foreign []int) {
	tries := make([]leaseTry[V], len(missing))
	g := new(errgroup.Group)
	g.SetLimit(a.o.batchConc)
	for n, j := range missing {
		if fills[n].mode == fillNone {
			continue
		}
		fills[n].mode, fills[n].expect = fillSwap, newLease()
		g.Go(func() error {
			tries[n] = a.takeLease(ctx, b.ids[j], fills[n].key, fills[n].expect)
			return nil
		})
	}
	_ = g.Wait()
	for n, j := range missing {
		f := fills[n]
		if f.mode == fillSwap {
			switch t := tries[n]; t.out {
			case leaseFailed:
				a.cacheFailed(ctx, f.key, t.err)
				f.mode, f.expect = fillNone, nil
			case leaseWriting: // read it with the others, do not fill
				f.mode, f.expect = fillNone, nil
			case leaseForeign, leaseMoved:
				foreign = append(foreign, j)
				continue
			case leaseValue:
				b.vals[j] = t.v
				a.m.hits.Add(1)
				if a.tier != nil {
					a.toTier(f.key, t.v, t.exp, b.tickets[j])
				}
				continue
			case leaseTaken:
				if t.stale.v != nil {
					b.stale[j], f.restore = t.stale, t.stale.raw
				}
			}
		}
		load = append(load, j)
		loadFills = append(loadFills, f)
	}
	return load, loadFills, foreign
}

func (a *Aside[K, V]) safeLoadMany(ctx context.Context, ids []K) (vs []*V, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return a.loadMany(ctx, ids)
}
