package cacheaside

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"golang.org/x/sync/errgroup"
)

// GetMany returns the values with the given IDs, aligned with ids, with nil
// for IDs that have no value. Hits come from one MultiGetter round trip when
// the cache implements it; misses are loaded once each through the same
// shared loads as Get, or with one batch read when the source offers one.
// A batch read takes a lease on each key it loads, like a single load, and
// waits for keys that another load holds a lease on instead of reading them
// (it is not merged with single loads of this process that hold none yet).
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
	uniq, pos := dedupe(ids)
	b := &batch[K, V]{
		ids:    uniq,
		keys:   make([]string, len(uniq)),
		vals:   make([]*V, len(uniq)),
		states: make([]state, len(uniq)),
	}
	for i, id := range uniq {
		b.keys[i] = a.key(id)
	}
	a.m.requests.Add(int64(len(uniq)))

	missing := a.lookupMany(ctx, b)
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
			v = a.clone(v)
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
	ids    []K
	keys   []string
	vals   []*V
	states []state
	// failed counts the IDs that could not be read; causes says why (one
	// failed batch read is one cause for all of its IDs).
	failed int
	causes []error
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
// indexes of the misses.
func (a *Aside[K, V]) lookupMany(ctx context.Context, b *batch[K, V]) []int {
	if a.multi != nil {
		raws, err := a.multi.GetMulti(ctx, b.keys)
		if err == nil && len(raws) != len(b.keys) {
			err = fmt.Errorf("GetMulti returned %d values for %d keys", len(raws), len(b.keys))
		}
		switch {
		case err == nil:
			for i, raw := range raws {
				if raw != nil {
					b.vals[i], b.states[i] = a.decode(ctx, b.keys[i], raw, true)
				}
			}
		case ctx.Err() != nil:
		default:
			for i := range b.states {
				b.states[i] = stFailed
			}
			a.cacheFailed(ctx, len(b.keys), err)
		}
	} else {
		g := new(errgroup.Group)
		g.SetLimit(a.o.batchConc)
		for i, k := range b.keys {
			g.Go(func() error {
				b.vals[i], _, b.states[i], _ = a.lookup(ctx, k)
				return nil
			})
		}
		_ = g.Wait()
	}
	var missing []int
	for i, st := range b.states {
		if st == stMiss || st == stFailed {
			missing = append(missing, i)
		} else {
			a.m.hits.Add(1)
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
			v, err := a.loadShared(ctx, b.ids[j], b.keys[j], b.states[j] != stFailed)
			if err != nil && !errors.Is(err, a.notFound) {
				errs[j] = err
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
	}
	if a.leaser != nil {
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
	start := time.Now()
	got, err := a.safeLoadMany(ctx, ids)
	a.m.recordLoad(time.Since(start))
	if err == nil && len(got) != len(ids) {
		err = fmt.Errorf("batch loader returned %d values for %d ids", len(got), len(ids))
	}
	if err != nil {
		a.m.dbErrs.Add(1)
		for _, f := range fills {
			a.release(ctx, f)
		}
		b.failed += len(ids)
		b.causes = append(b.causes, wrapErr(fmt.Sprintf("batch load of %d keys", len(ids)), err))
		return rest
	}
	for n, j := range missing {
		v := got[n]
		if v == nil {
			a.storeAbsent(ctx, fills[n])
			continue
		}
		b.vals[j] = v
		if raw, err := json.Marshal(v); err == nil {
			a.store(ctx, fills[n], raw, a.o.ttl)
		} else {
			a.release(ctx, fills[n])
		}
	}
	return rest
}

// leaseBatch takes a lease on each key to be loaded, concurrently. It
// returns the keys to load with the fill of each, and the keys under
// another caller's lease; keys found to hold a value are served from it.
func (a *Aside[K, V]) leaseBatch(ctx context.Context, b *batch[K, V], missing []int, fills []fill) (load []int, loadFills []fill, foreign []int) {
	type attempt struct {
		out  leaseOutcome
		v    *V
		held []byte
		err  error
	}
	tries := make([]attempt, len(missing))
	g := new(errgroup.Group)
	g.SetLimit(a.o.batchConc)
	for n, j := range missing {
		if b.states[j] == stFailed { // the cache just failed: leave it alone
			fills[n].mode = fillNone
			continue
		}
		fills[n].mode, fills[n].expect = fillSwap, newLease()
		g.Go(func() error {
			t := &tries[n]
			t.out, t.v, t.held, t.err = a.takeLease(ctx, fills[n].key, fills[n].expect)
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
			case leaseForeign:
				foreign = append(foreign, j)
				continue
			case leaseValue:
				b.vals[j] = t.v
				a.m.hits.Add(1)
				continue
			case leaseBad:
				f.expect = t.held // replace it if it is still there
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
