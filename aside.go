package cacheaside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"
)

// LoadFunc reads the value with the given ID from the source of truth. It
// reports a missing value with an error for which errors.Is(err,
// ErrNotFound) is true; returning (nil, nil) means the same.
type LoadFunc[K comparable, V any] func(ctx context.Context, id K) (*V, error)

// Aside is the cache-aside engine behind UserService, generic over the ID
// type K and the value type V, for caching any other entity the same way
// (see NewAside). Its methods are safe for concurrent use. The only
// goroutines it starts run shared loads: each ends when its load returns,
// which the load timeout bounds for a loader that honours its context.
type Aside[K comparable, V any] struct {
	cache    CacheClient
	multi    MultiGetter // nil when cache does not implement it
	leaser   Leaser      // nil when cache does not implement it
	sizer    Sizer       // nil when cache does not implement it
	load     LoadFunc[K, V]
	loadMany func(ctx context.Context, ids []K) ([]*V, error) // nil: load one by one
	key      func(K) string
	notFound error // returned for missing values; matches ErrNotFound
	shallow  bool  // a value copy of V is a deep copy
	o        options
	log      *slog.Logger

	sf      singleflight.Group
	seed    maphash.Seed
	stripes [numStripes]stripe
	m       counters
}

// numStripes is how many generation counters the keys share. Two keys in one
// stripe only cost each other an extra load or a skipped fill.
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

// absentMarker is what a cached "not found" answer holds: valid JSON that no
// sane encoding of a value produces.
var absentMarker = json.RawMessage(`"\u0000cacheaside:absent"`)

// NewAside returns an engine that caches values of type V under
// "<namespace>:<id>", loads misses with load, and is configured like a
// UserService (WithTTL sets the TTL; the default is UserCacheTTL). A nil
// cache caches nothing; a nil load makes every read fail with
// ErrNotConfigured.
//
// Each caller gets its own copy of a shared value, made by decoding its JSON
// encoding, so V may hold slices and maps safely.
func NewAside[K comparable, V any](cache CacheClient, namespace string, load LoadFunc[K, V], opts ...Option) *Aside[K, V] {
	o := defaultOptions(UserCacheTTL)
	for _, opt := range opts {
		opt(&o)
	}
	prefix := namespace + ":"
	return newAside(cache, func(id K) string { return prefix + formatID(id) }, load, ErrNotFound, o)
}

func newAside[K comparable, V any](cache CacheClient, key func(K) string, load LoadFunc[K, V], notFound error, o options) *Aside[K, V] {
	if cache == nil {
		cache = noCache{}
	}
	a := &Aside[K, V]{
		cache:    cache,
		load:     load,
		key:      key,
		notFound: notFound,
		o:        o,
		log:      o.logger,
		seed:     maphash.MakeSeed(),
	}
	a.multi, _ = cache.(MultiGetter)
	a.leaser, _ = cache.(Leaser)
	a.sizer, _ = cache.(Sizer)
	return a
}

// formatID renders an ID for a cache key without fmt on the common types.
func formatID[K comparable](id K) string {
	switch v := any(id).(type) {
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case string:
		return v
	default:
		return fmt.Sprint(v)
	}
}

// Key returns the cache key of id.
func (a *Aside[K, V]) Key(id K) string { return a.key(id) }

// Get returns the value with the given ID: from the cache when it is there,
// otherwise from one load shared by every concurrent caller in this process
// that asks for the same ID and, through a lease in the cache, by every
// other process that shares it (see the package documentation).
//
// A missing value is reported as ErrNotFound (ErrUserNotFound through a
// UserService) and cached for the negative TTL. A cache failure is never
// returned: the read falls back to the loader. If ctx ends while the caller
// waits, Get returns ctx.Err() at once and the load goes on for the others.
// The returned value is the caller's own copy.
func (a *Aside[K, V]) Get(ctx context.Context, id K) (*V, error) {
	start := time.Now()
	v, err := a.get(ctx, id, a.key(id))
	a.m.observe(time.Since(start))
	return v, err
}

func (a *Aside[K, V]) get(ctx context.Context, id K, key string) (*V, error) {
	if a.load == nil {
		return nil, fmt.Errorf("%w: no loader", ErrNotConfigured)
	}
	a.m.requests.Add(1)
	v, _, st, err := a.lookup(ctx, key)
	if err != nil {
		a.m.misses.Add(1)
		return nil, err
	}
	switch st {
	case stHit:
		a.m.hits.Add(1)
		return v, nil
	case stAbsent:
		a.m.hits.Add(1)
		return nil, a.notFound
	}
	return a.loadShared(ctx, id, key, st == stMiss)
}

type state int

const (
	stMiss   state = iota // nothing usable: empty, a lease, or undecodable
	stHit                 // a value
	stAbsent              // a cached "not found"
	stFailed              // the cache failed
)

// lookup reads key from the cache. Cache failures are counted and reported
// as stFailed, undecodable entries and leases as misses; only the end of
// ctx is an error.
func (a *Aside[K, V]) lookup(ctx context.Context, key string) (*V, json.RawMessage, state, error) {
	var raw json.RawMessage
	err := a.cache.GetJSON(ctx, key, &raw)
	if err != nil {
		if errors.Is(err, ErrCacheMiss) {
			return nil, nil, stMiss, nil
		}
		if cerr := ctx.Err(); cerr != nil {
			return nil, nil, stMiss, cerr
		}
		if isDecodeError(err) {
			a.m.decodeErrs.Add(1)
			a.log.WarnContext(ctx, "cacheaside: undecodable cache entry, treated as a miss", "key", key, "err", err)
			return nil, nil, stMiss, nil
		}
		a.m.cacheErrs.Add(1)
		a.log.WarnContext(ctx, "cacheaside: cache error, falling back to the repository", "key", key, "err", err)
		return nil, nil, stFailed, nil
	}
	v, st := a.decode(ctx, key, raw, true)
	return v, raw, st, nil
}

// decode turns what a key holds into a value, a cached "not found", or a
// miss (a lease, or an entry that does not decode, which is counted and
// logged when report is set; a second look at the same key does not).
func (a *Aside[K, V]) decode(ctx context.Context, key string, raw json.RawMessage, report bool) (*V, state) {
	if len(raw) > 0 && raw[0] == '"' {
		switch {
		case bytes.Equal(raw, absentMarker):
			return nil, stAbsent
		case isLease(raw):
			return nil, stMiss
		}
	}
	v := new(V)
	if err := json.Unmarshal(raw, v); err != nil {
		if !report {
			return nil, stMiss
		}
		a.m.decodeErrs.Add(1)
		a.log.WarnContext(ctx, "cacheaside: undecodable cache entry, treated as a miss", "key", key, "err", err)
		return nil, stMiss
	}
	return v, stHit
}

func isDecodeError(err error) bool {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	return errors.Is(err, ErrDecode) || errors.As(err, &se) || errors.As(err, &te)
}

// flight is the outcome of one shared load.
type flight[V any] struct {
	leader *byte           // identifies the caller whose function ran
	val    V               // the value, when err is nil
	raw    json.RawMessage // its JSON encoding, when known
	err    error
	// fresh is an instant before which every write was already visible to
	// the result: a caller that joined the flight before it may take the
	// result, one that joined later may be owed a newer value.
	fresh time.Time
}

// maxRejoins bounds how many times a caller that joined a flight too late
// to trust its result looks again before it reads the source itself.
const maxRejoins = 2

// loadShared joins or leads the load of key for the key's current
// generation and waits for it on ctx. useCache is false when the cache just
// failed: the load then skips the cache (and, with leases, the fill).
//
// A caller that joined a flight after the flight's result stopped being
// known fresh (see flight.fresh) does not take it: it looks at the cache
// again and, at most maxRejoins times, joins the next flight, and then
// reads the source on its own. This is what keeps a read that starts after
// a write in another process from being handed a value loaded before it.
func (a *Aside[K, V]) loadShared(ctx context.Context, id K, key string, useCache bool) (*V, error) {
	start := time.Now()
	for attempt := 0; ; attempt++ {
		s := a.stripeOf(key)
		gen := s.gen.Load()
		tag := new(byte)
		ch := a.sf.DoChan(key+"\x00"+strconv.FormatUint(gen, 36), func() (any, error) {
			return a.flight(ctx, id, key, s, gen, tag, useCache), nil
		})
		var f *flight[V]
		select {
		case <-ctx.Done():
			a.m.misses.Add(1)
			return nil, ctx.Err()
		case r := <-ch:
			f = r.Val.(*flight[V])
		}
		leader := f.leader == tag
		if !leader && !start.Before(f.fresh) && (f.err == nil || errors.Is(f.err, a.notFound)) {
			a.m.rejoins.Add(1)
			if attempt == maxRejoins {
				return a.loadAlone(ctx, id, key)
			}
			if useCache {
				switch v, _, st, err := a.lookup(ctx, key); {
				case err != nil:
					a.m.misses.Add(1)
					return nil, err
				case st == stHit:
					a.m.hits.Add(1)
					return v, nil
				case st == stAbsent:
					a.m.hits.Add(1)
					return nil, a.notFound
				}
			}
			continue
		}
		if leader {
			a.m.misses.Add(1)
		} else {
			a.m.shared.Add(1)
		}
		if f.err != nil {
			return nil, f.err
		}
		return a.copyOut(f.val, f.raw), nil
	}
}

// loadAlone reads the source for one caller, on its own context, and leaves
// the cache alone.
func (a *Aside[K, V]) loadAlone(ctx context.Context, id K, key string) (*V, error) {
	a.m.misses.Add(1)
	f := &flight[V]{}
	ctx, cancel := context.WithTimeout(ctx, a.o.loadTimeout)
	defer cancel()
	a.loadInto(ctx, id, key, f, nil, 0, fillNone, nil)
	if f.err != nil {
		return nil, f.err
	}
	return &f.val, nil
}

// flight runs one shared load and turns a panic into a PanicError for
// every waiter, so the key is always freed. It runs on a context detached
// from the caller's.
//
// With a Leaser it takes a lease on the key, or waits for the holder of
// another one (see leaseLoad). Without one it looks at the cache again,
// loads, and fills unless a write in this process intervened.
func (a *Aside[K, V]) flight(parent context.Context, id K, key string, s *stripe, gen uint64, tag *byte, useCache bool) (f *flight[V]) {
	f = &flight[V]{leader: tag}
	defer func() {
		if p := recover(); p != nil {
			a.m.dbErrs.Add(1)
			f.err = &PanicError{Value: p, Stack: debug.Stack()}
			a.log.ErrorContext(parent, "cacheaside: loader panicked", "key", key, "panic", p)
		}
	}()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), a.o.loadTimeout)
	defer cancel()

	switch {
	case a.leaser != nil && useCache:
		a.leaseLoad(ctx, id, key, s, gen, f)
	case a.leaser != nil:
		// The cache just failed: read the source, leave the cache alone.
		a.loadInto(ctx, id, key, f, s, gen, fillNone, nil)
	default:
		// Single flight only merges calls that overlap: a flight that ended
		// just before this one may already have filled the key.
		if useCache {
			at := time.Now()
			switch v, raw, st, _ := a.lookup(ctx, key); st {
			case stHit:
				f.val, f.raw, f.fresh = *v, raw, at
				return f
			case stAbsent:
				f.err, f.fresh = a.notFound, at
				return f
			}
		}
		a.loadInto(ctx, id, key, f, s, gen, fillSet, nil)
	}
	return f
}

// fillMode says how a load stores what it read.
type fillMode int

const (
	fillNone fillMode = iota // leave the cache alone
	fillSet                  // SetJSON, unless this process wrote the key meanwhile
	fillSwap                 // CompareAndSwap against the lease (or entry) it expects
)

// loadInto reads id from the source into f and stores the result as mode
// says. With fillSwap, expect is what the key must still hold; when the
// read fails, a lease in expect is released so that waiters take over at
// once.
func (a *Aside[K, V]) loadInto(ctx context.Context, id K, key string, f *flight[V], s *stripe, gen uint64, mode fillMode, expect []byte) {
	returned := false
	defer func() {
		if !returned { // the loader panicked: let waiters take over now
			a.release(ctx, key, mode, expect)
		}
	}()
	f.fresh = time.Now()
	v, err := a.load(ctx, id)
	returned = true
	a.m.recordLoad(time.Since(f.fresh))
	switch {
	case err == nil && v != nil:
		f.val = *v
		raw, merr := json.Marshal(v)
		if merr != nil {
			a.m.writeErrs.Add(1)
			a.log.ErrorContext(ctx, "cacheaside: value cannot be encoded, not cached", "key", key, "err", merr)
			a.release(ctx, key, mode, expect)
			return
		}
		f.raw = raw
		a.store(ctx, key, raw, a.o.ttl, s, gen, f, mode, expect)
	case err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, a.notFound):
		f.err = a.notFound
		if a.o.negTTL > 0 {
			a.store(ctx, key, absentMarker, a.o.negTTL, s, gen, f, mode, expect)
		} else {
			a.release(ctx, key, mode, expect)
		}
	default:
		a.m.dbErrs.Add(1)
		f.err = fmt.Errorf("cacheaside: load %s: %w", key, err)
		a.release(ctx, key, mode, expect)
	}
}

// store writes raw under key as mode says, and on success moves f.fresh up
// to the moment the write was sent.
//
// fillSet writes unless the key's stripe moved past gen: a write in this
// process since the load began. fillSwap needs no such check: it lands only
// if the key still holds the lease (or entry) the load expected, which every
// invalidation since the lease was placed would have deleted, and the lease
// was placed before the read began. So until the swap was sent, no write can
// have been acknowledged that the value does not include.
func (a *Aside[K, V]) store(ctx context.Context, key string, raw json.RawMessage, ttl time.Duration, s *stripe, gen uint64, f *flight[V], mode fillMode, expect []byte) {
	var err error
	at := time.Now()
	switch mode {
	case fillNone:
		return
	case fillSet:
		s.mu.RLock()
		defer s.mu.RUnlock()
		if s.gen.Load() != gen {
			a.m.staleFills.Add(1)
			return
		}
		at = time.Now()
		err = a.cache.SetJSON(ctx, key, raw, a.jitter(ttl))
	case fillSwap:
		var ok bool
		ok, err = a.leaser.CompareAndSwap(ctx, key, expect, raw, a.jitter(ttl))
		if err == nil && !ok {
			a.m.staleFills.Add(1)
			return
		}
	}
	if err != nil {
		a.m.writeErrs.Add(1)
		a.log.WarnContext(ctx, "cacheaside: cache fill failed", "key", key, "err", err)
		return
	}
	f.fresh = at
}

// jitter takes a random fraction, up to the configured jitter, off ttl.
func (a *Aside[K, V]) jitter(ttl time.Duration) time.Duration {
	if a.o.jitter <= 0 || ttl <= 0 {
		return ttl
	}
	d := ttl - time.Duration(rand.Float64()*a.o.jitter*float64(ttl))
	return max(d, time.Millisecond)
}

// copyOut returns the caller's own copy of a shared value.
func (a *Aside[K, V]) copyOut(v V, raw json.RawMessage) *V {
	if !a.shallow && raw != nil {
		c := new(V)
		if json.Unmarshal(raw, c) == nil {
			return c
		}
	}
	return &v
}

// clone returns a copy of *v that shares nothing with it.
func (a *Aside[K, V]) clone(v *V) *V {
	var raw json.RawMessage
	if !a.shallow {
		raw, _ = json.Marshal(v)
	}
	return a.copyOut(*v, raw)
}

func (a *Aside[K, V]) stripeOf(key string) *stripe {
	return &a.stripes[maphash.String(a.seed, key)%numStripes]
}

// Invalidate removes the cached value of id and the given related keys. Call
// it after every write to the source of truth, once the write is durable.
//
// A read that starts after Invalidate returns never sees a value loaded
// before it was called, and a load in flight during the call, in any
// process, does not fill the cache (with a cache that implements Leaser;
// without one, in this process only; see the package documentation). The
// delete runs on a context detached from ctx's cancellation, bounded by the
// load timeout, so a caller that goes away after its write still clears the
// cache. A failed delete is counted and logged and returned.
func (a *Aside[K, V]) Invalidate(ctx context.Context, id K, related ...string) error {
	return a.invalidate(ctx, a.key(id), related)
}

func (a *Aside[K, V]) invalidate(ctx context.Context, key string, related []string) error {
	s := a.stripeOf(key)
	s.mu.Lock()
	s.gen.Add(1)
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.o.loadTimeout)
	defer cancel()
	keys := make([]string, 0, 1+len(related))
	keys = append(keys, key)
	keys = append(keys, related...)
	if err := a.cache.Delete(ctx, keys...); err != nil {
		a.m.invalErrs.Add(1)
		a.log.ErrorContext(ctx, "cacheaside: cache invalidation failed", "keys", keys, "err", err)
		return fmt.Errorf("cacheaside: invalidate %s: %w", key, err)
	}
	return nil
}

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
	if a.load == nil {
		return nil, fmt.Errorf("%w: no loader", ErrNotConfigured)
	}
	out := make([]*V, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	// Distinct IDs, and where each input position finds its value.
	first := make(map[K]int, len(ids))
	uniq := make([]K, 0, len(ids))
	pos := make([]int, len(ids))
	for i, id := range ids {
		j, ok := first[id]
		if !ok {
			j = len(uniq)
			first[id] = j
			uniq = append(uniq, id)
		}
		pos[i] = j
	}
	keys := make([]string, len(uniq))
	for i, id := range uniq {
		keys[i] = a.key(id)
	}
	a.m.requests.Add(int64(len(uniq)))

	vals := make([]*V, len(uniq))
	states := make([]state, len(uniq))
	missing := a.lookupMany(ctx, keys, vals, states)
	if err := ctx.Err(); err != nil {
		a.m.misses.Add(int64(len(missing)))
		return out, err
	}
	// failed counts the IDs that could not be read; causes says why (one
	// failed batch read is one cause for all of its IDs).
	var failed int
	var causes []error
	if len(missing) > 0 && a.loadMany != nil {
		missing, failed, causes = a.loadBatch(ctx, uniq, keys, missing, states, vals)
	}
	if len(missing) > 0 {
		errs := make([]error, len(uniq))
		g := new(errgroup.Group)
		g.SetLimit(a.o.batchConc)
		for _, j := range missing {
			g.Go(func() error {
				v, err := a.loadShared(ctx, uniq[j], keys[j], states[j] != stFailed)
				if err != nil && !errors.Is(err, a.notFound) {
					errs[j] = err
				}
				vals[j] = v
				return nil
			})
		}
		_ = g.Wait()
		for _, err := range errs {
			if err != nil {
				failed++
				causes = append(causes, err)
			}
		}
	}

	used := make([]bool, len(uniq))
	for i, j := range pos {
		v := vals[j]
		if v == nil {
			continue
		}
		if used[j] { // a repeated ID gets its own copy
			v = a.clone(v)
		}
		used[j] = true
		out[i] = v
	}
	if failed > 0 {
		return out, fmt.Errorf("cacheaside: batch load failed: %d errors occurred: %w", failed, errors.Join(causes...))
	}
	return out, nil
}

// lookupMany fills vals with the hits among keys, counts them, and returns
// the indexes of the misses.
func (a *Aside[K, V]) lookupMany(ctx context.Context, keys []string, vals []*V, states []state) []int {
	if a.multi != nil {
		raws, err := a.multi.GetMulti(ctx, keys)
		switch {
		case err == nil && len(raws) == len(keys):
			for i, raw := range raws {
				if raw != nil {
					vals[i], states[i] = a.decode(ctx, keys[i], raw, true)
				}
			}
		case ctx.Err() != nil:
		default:
			for i := range states {
				states[i] = stFailed
			}
			if err == nil {
				err = fmt.Errorf("GetMulti returned %d values for %d keys", len(raws), len(keys))
			}
			a.m.cacheErrs.Add(1)
			a.log.WarnContext(ctx, "cacheaside: cache error, falling back to the repository", "keys", len(keys), "err", err)
		}
	} else {
		g := new(errgroup.Group)
		g.SetLimit(a.o.batchConc)
		for i, k := range keys {
			g.Go(func() error {
				vals[i], _, states[i], _ = a.lookup(ctx, k)
				return nil
			})
		}
		_ = g.Wait()
	}
	var missing []int
	for i, st := range states {
		if st == stMiss || st == stFailed {
			missing = append(missing, i)
		} else {
			a.m.hits.Add(1)
		}
	}
	return missing
}

// loadBatch loads the missing IDs with one batch read and fills the cache
// with what it found, and with "not found" markers for the rest.
//
// With a Leaser it first takes a lease on each key, concurrently, and fills
// by compare-and-swap on its own leases, as a single load does. A key that
// turns out to hold a value is served from it; keys under another caller's
// lease are returned in rest, to be waited for one by one. failed and
// causes report a failed batch read.
func (a *Aside[K, V]) loadBatch(ctx context.Context, uniq []K, keys []string, missing []int, states []state, vals []*V) (rest []int, failed int, causes []error) {
	lctx, cancel := context.WithTimeout(ctx, a.o.loadTimeout)
	defer cancel()
	type job struct {
		j      int
		gen    uint64
		mode   fillMode
		expect []byte
	}
	jobs := make([]job, len(missing))
	for n, j := range missing {
		jb := job{j: j, gen: a.stripeOf(keys[j]).gen.Load(), mode: fillSet}
		if a.leaser != nil {
			jb.mode = fillSwap
			if states[j] == stFailed { // the cache just failed: leave it alone
				jb.mode = fillNone
			}
		}
		jobs[n] = jb
	}
	if a.leaser != nil {
		held := make([][]byte, len(jobs))
		errs := make([]error, len(jobs))
		g := new(errgroup.Group)
		g.SetLimit(a.o.batchConc)
		for n := range jobs {
			if jobs[n].mode != fillSwap {
				continue
			}
			jobs[n].expect = newLease()
			g.Go(func() error {
				held[n], errs[n] = a.leaser.SetNX(lctx, keys[jobs[n].j], jobs[n].expect, a.o.leaseTTL)
				return nil
			})
		}
		_ = g.Wait()
		kept := jobs[:0]
		for n, jb := range jobs {
			switch {
			case jb.mode != fillSwap || held[n] == nil && errs[n] == nil:
			case errs[n] != nil:
				a.m.cacheErrs.Add(1)
				a.log.WarnContext(ctx, "cacheaside: cache error, falling back to the repository", "key", keys[jb.j], "err", errs[n])
				jb.mode, jb.expect = fillNone, nil
			case isLease(held[n]):
				rest = append(rest, jb.j)
				continue
			default:
				v, st := a.decode(ctx, keys[jb.j], held[n], false)
				if st == stHit || st == stAbsent {
					vals[jb.j] = v
					a.m.hits.Add(1)
					continue
				}
				jb.expect = held[n] // undecodable: replace it if still there
			}
			kept = append(kept, jb)
		}
		jobs = kept
	}
	if len(jobs) == 0 {
		return rest, 0, nil
	}

	a.m.misses.Add(int64(len(jobs)))
	ids := make([]K, len(jobs))
	for n, jb := range jobs {
		ids[n] = uniq[jb.j]
	}
	start := time.Now()
	got, err := a.safeLoadMany(lctx, ids)
	a.m.recordLoad(time.Since(start))
	if err == nil && len(got) != len(ids) {
		err = fmt.Errorf("batch loader returned %d values for %d ids", len(got), len(ids))
	}
	if err != nil {
		a.m.dbErrs.Add(1)
		for _, jb := range jobs {
			a.release(lctx, keys[jb.j], jb.mode, jb.expect)
		}
		return rest, len(jobs), []error{fmt.Errorf("cacheaside: batch load of %d keys: %w", len(ids), err)}
	}
	var scratch flight[V] // only one caller sees these values
	for n, jb := range jobs {
		key, s := keys[jb.j], a.stripeOf(keys[jb.j])
		switch v := got[n]; {
		case v != nil:
			vals[jb.j] = v
			raw, err := json.Marshal(v)
			if err != nil {
				a.release(lctx, key, jb.mode, jb.expect)
				continue
			}
			a.store(lctx, key, raw, a.o.ttl, s, jb.gen, &scratch, jb.mode, jb.expect)
		case a.o.negTTL > 0:
			a.store(lctx, key, absentMarker, a.o.negTTL, s, jb.gen, &scratch, jb.mode, jb.expect)
		default:
			a.release(lctx, key, jb.mode, jb.expect)
		}
	}
	return rest, 0, nil
}

func (a *Aside[K, V]) safeLoadMany(ctx context.Context, ids []K) (vs []*V, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return a.loadMany(ctx, ids)
}

// Metrics returns a snapshot of the engine's counters.
func (a *Aside[K, V]) Metrics() ServiceMetrics {
	size := int64(-1)
	if a.sizer != nil {
		size = a.sizer.Len()
	}
	return a.m.snapshot(size)
}

// noCache is the cache of a service built with a nil CacheClient: every
// read misses and every write succeeds.
type noCache struct{}

func (noCache) GetJSON(context.Context, string, any) error                { return ErrCacheMiss }
func (noCache) SetJSON(context.Context, string, any, time.Duration) error { return nil }
func (noCache) Delete(context.Context, ...string) error                   { return nil }
