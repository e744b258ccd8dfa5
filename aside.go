package cacheaside

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// LoadFunc reads the value with the given ID from the source of truth. It
// reports a missing value with an error for which errors.Is(err,
// ErrNotFound) is true; returning (nil, nil) means the same.
type LoadFunc[K comparable, V any] func(ctx context.Context, id K) (*V, error)

// Aside is the cache-aside engine, generic over the ID type K and the value
// type V: it knows keys, values and loaders, and nothing of what they mean.
// UserService is a thin client of it for users; NewAside caches any other
// entity the same way.
//
// Its methods are safe for concurrent use. The goroutines it starts run
// shared loads, each ending when its load returns (which the load timeout
// bounds for a loader that honours its context), cache calls that outlive
// their time box, each ending when the client gives up by its own timeouts,
// and the retries of failed invalidations, which end when the last one
// lands or Close is called.
type Aside[K comparable, V any] struct {
	g     *guard       // every cache call goes through it
	sizer Sizer        // nil when the cache does not implement it
	rb    *repoBreaker // every repository read goes through it

	name     string // the namespace, for the names of locks
	key      func(K) string
	load     LoadFunc[K, V]
	loadMany func(ctx context.Context, ids []K) ([]*V, error) // nil: load one by one
	notFound error                                            // returned for missing values; matches ErrNotFound
	shallow  bool                                             // a value copy of V is a deep copy
	idOf     func(*V) K                                       // nil: values do not say their ID
	landed   func(seqs []int64)                               // told when outbox records' keys are deleted

	o         options
	log       *slog.Logger
	recording bool // o.recorder is not the no-op one

	bus   *bus      // nil unless the cache carries the invalidation bus
	adapt *adaptive // nil without WithAdaptiveTTL
	tier  *tier[V]  // nil without WithLocalCache

	sf         singleflight.Group
	refreshing sync.Map     // keys with an early refresh in flight
	refreshes  atomic.Int64 // early refreshes in flight
	gens       generations
	inv        pending
	bg         background
	onJoin     func(key string) // tests: called once a caller waits on a flight
	// admit, when set, says whether id may exist, on a cache miss: false
	// answers "not found" without a load (a Bloom filter).
	admit func(ctx context.Context, id K) bool
	now   func() time.Time // when entries expire; tests move it
	m     counters
}

// NewAside returns an engine that caches values of type V under
// "<namespace>:<id>" and loads misses with load. With no options it caches
// values for DefaultTTL (less up to 10% jitter), caches "not found" for
// DefaultNegativeTTL, bounds each shared load by DefaultLoadTimeout and each
// cache call by DefaultCacheTimeout. A nil cache caches nothing; a nil load
// makes every read fail with ErrNotConfigured. String IDs are escaped in
// keys: "%", ":", "{" and "}" become "%25", "%3A", "%7B" and "%7D".
//
// It panics if namespace is empty or "cacheaside", which the library keeps
// for itself, or if an option's value is bad (see Option).
//
// Each caller gets its own copy of a shared value, made by decoding its JSON
// encoding, so V may hold slices and maps safely.
func NewAside[K comparable, V any](cache CacheClient, namespace string, load LoadFunc[K, V], opts ...Option) *Aside[K, V] {
	checkNamespace(namespace)
	prefix := namespace + ":"
	a := newAside(cache, func(id K) string { return prefix + formatID(id) }, load, ErrNotFound, newOptions(DefaultTTL, opts))
	a.name = namespace
	a.useIntKeys(prefix)
	a.start()
	return a
}

func newAside[K comparable, V any](cache CacheClient, key func(K) string, load LoadFunc[K, V], notFound error, o options) *Aside[K, V] {
	if cache == nil {
		cache = noCache{}
	}
	a := &Aside[K, V]{
		key:       key,
		load:      load,
		notFound:  notFound,
		o:         o,
		log:       o.logger,
		recording: o.recorder != nil,
		now:       time.Now,
	}
	a.g = newGuard(cache, o, &a.m)
	a.rb = newRepoBreaker(o, &a.m)
	a.sizer, _ = cache.(Sizer)
	a.gens.init()
	if o.adaptMax > 0 {
		a.adapt = newAdaptive(o.adaptMin, o.adaptMax)
	}
	if t, ok := cache.(busTransport); ok {
		a.bus = newBus(t, !o.relaxed, o.localLease, o, &a.m, nil)
	}
	if o.local > 0 {
		if a.bus == nil {
			badOption("WithLocalCache", o.local, "the cache must carry the invalidation bus, as NewRedisCache and NewMemoryCache do")
		}
		a.tier = newTier[V](o.local, o.loadTimeout, "")
		a.tier.bus, a.bus.h = a.bus, a.tier
		a.tier.decode = a.tierValue
	}
	return a
}

// start starts the engine's background work, once it is configured.
func (a *Aside[K, V]) start() {
	if a.tier != nil {
		a.bus.start(&a.bg)
	}
}

// useIntKeys records that, for an integer K, key(id) is prefix and id in
// decimal, which lets the local tier hold values under their IDs.
func (a *Aside[K, V]) useIntKeys(prefix string) {
	var zero K
	switch any(zero).(type) {
	case int, int64:
	default:
		return
	}
	if a.tier != nil {
		a.tier.prefix = prefix
	}
}

// Key returns the cache key of id.
func (a *Aside[K, V]) Key(id K) string { return a.key(id) }

// ready reports ErrNotConfigured for an engine built without a loader.
func (a *Aside[K, V]) ready() error {
	if a.load == nil {
		return fmt.Errorf("%w: no loader", ErrNotConfigured)
	}
	return nil
}

// Get returns the value with the given ID: from the cache when it is there,
// otherwise from one load shared by every concurrent caller in this process
// that asks for the same ID and, through a lease in the cache, by every
// other process that shares it (see the package documentation).
//
// A missing value is reported as ErrNotFound (ErrUserNotFound through a
// UserService) and cached for the negative TTL. A cache failure is never
// returned: the read falls back to the loader. If ctx ends while the caller
// waits, Get returns ctx.Err() at once and the load goes on for the others.
// A load refused by the repository's circuit breaker fails with an error
// that matches ErrRepositoryUnavailable, unless fail-safe answers it. The
// returned value is the caller's own copy.
func (a *Aside[K, V]) Get(ctx context.Context, id K) (*V, error) {
	if err := a.ready(); err != nil {
		return nil, err
	}
	if a.tier != nil {
		// A local hit is not timed, unless a Recorder wants it: reading the
		// clock twice more would double its cost. The response-time figures
		// cover the other reads.
		var start time.Time
		if a.recording {
			start = time.Now()
		}
		if v, ok := a.localGet(id); ok {
			a.m.localHits.Add(1) // a request and a hit too (see snapshot)
			out := &v
			if !a.shallow {
				out = a.copyOut(&v)
			}
			if a.recording {
				a.o.recorder.RecordRead(ctx, ResultLocalHit, time.Since(start))
			}
			return out, nil
		}
	}
	key := a.key(id)
	if a.adapt != nil {
		a.adapt.reads.add(key)
	}
	start := time.Now()
	v, res, err := a.get(ctx, id, key)
	d := time.Since(start)
	a.m.observe(d)
	if a.recording {
		if err != nil && !errors.Is(err, a.notFound) {
			res = ResultError
		}
		a.o.recorder.RecordRead(ctx, res, d)
	}
	return v, err
}

// get reads id, and reports how: ResultHit, ResultMiss or ResultShared.
func (a *Aside[K, V]) get(ctx context.Context, id K, key string) (*V, Result, error) {
	a.m.requests.Add(1)
	var tk tierTicket
	if a.tier != nil {
		a.m.localMisses.Add(1)
		tk = a.tier.begin(key)
	}
	if a.isPending(key) {
		// This process's own write to key has not reached the cache yet.
		return a.loadShared(ctx, id, key, false, stale[V]{})
	}
	at := time.Now()
	f, err := a.lookup(ctx, id, key)
	if err != nil {
		a.m.misses.Add(1)
		return nil, ResultMiss, err
	}
	switch f.st {
	case stHit:
		a.m.hits.Add(1)
		a.maybeRefresh(ctx, id, key, f)
		a.toTier(key, f.v, f.exp, tk)
		return f.v, ResultHit, nil
	case stAbsent:
		a.m.hits.Add(1)
		return nil, ResultHit, a.notFound
	case stStale:
		return a.loadShared(ctx, id, key, true, stale[V]{v: f.v, raw: f.raw, at: at})
	}
	if a.admit != nil && !a.admit(ctx, id) {
		a.m.bloomRejected.Add(1)
		return nil, ResultFiltered, a.notFound
	}
	return a.loadShared(ctx, id, key, f.st == stMiss, stale[V]{})
}

// toTier offers v, read as the fresh value of key until exp, to the local
// tier, which takes it only if nothing changed since tk (see localtier.go).
// The tier keeps its own copy.
func (a *Aside[K, V]) toTier(key string, v *V, exp time.Time, tk tierTicket) {
	if a.tier == nil || v == nil {
		return
	}
	a.tier.fill(key, *a.copyOut(v), a.tierExpiry(exp), tk)
}

// tierExpiry is when a value read as fresh until exp (zero: no expiry
// known) leaves the local tier.
func (a *Aside[K, V]) tierExpiry(exp time.Time) time.Time {
	if exp.IsZero() {
		exp = a.now().Add(a.o.ttl)
	}
	if a.o.earlyBeta > 0 {
		// Leave the tier in time to refresh from the shared cache.
		if m := a.m.loads.Load(); m > 0 {
			mean := float64(a.m.loadNanos.Load() / m)
			exp = exp.Add(-time.Duration(mean * a.o.earlyBeta * -math.Log(1-rand.Float64())))
		}
	}
	return exp
}

// tierValue reads raw, an entry of key that a write left in the shared
// cache, for the local tier (see tier.heard): a fresh value and when it
// leaves the tier. Anything else (an entry past its expiry, one that does
// not decode as a value of key) is not taken.
func (a *Aside[K, V]) tierValue(key string, raw []byte) (V, time.Time, bool) {
	var zero V
	v, exp, _, err := a.parseEntry(key, raw)
	if err != nil || v == nil || (!exp.IsZero() && !a.now().Before(exp)) {
		return zero, time.Time{}, false
	}
	return *v, a.tierExpiry(exp), true
}

// Invalidate removes the cached value of id and the given related keys. Call
// it after every write to the source of truth, once the write is durable.
//
// A read that starts after Invalidate returns never sees a value loaded
// before it was called, and a load in flight during the call, in any
// process, does not fill the cache (with a cache that implements Leaser;
// without one, in this process only; see the package documentation). The
// delete is bounded by the cache time box. A delete that fails is counted,
// logged and returned, and retried until it lands; meanwhile this process
// reads id from the repository. Related keys in the library's own
// namespace ("cacheaside:...") are never deleted. A key that holds the
// marker of a write in progress (see Write) keeps it, marked so that the
// write deletes the key when it ends rather than leave its own value: your
// write may have changed the source after that one.
func (a *Aside[K, V]) Invalidate(ctx context.Context, id K, related ...string) error {
	return a.invalidate(ctx, a.key(id), related, nil)
}

// invalidate deletes key and related, and tells a.landed about seqs once
// key's delete has landed.
func (a *Aside[K, V]) invalidate(ctx context.Context, key string, related []string, seqs []int64) error {
	return a.invalidateAs(ctx, writeOp{id: randomID()}, key, related, seqs)
}

// invalidateAs is invalidate for the write w, which it names on the bus.
// For a write that found the cache down, the deletes go straight to the
// retry queue and nothing is announced: both would wait on the silent
// cache.
func (a *Aside[K, V]) invalidateAs(ctx context.Context, w writeOp, key string, related []string, seqs []int64) error {
	a.gens.bump(key)
	if a.adapt != nil {
		a.adapt.writes.add(key)
	}
	keys := append([]string{key}, a.deletable(ctx, related)...)
	if w.down {
		return a.afterDelete(ctx, key, nil, seqs, keys, ErrCacheUnavailable)
	}
	failed, err := a.g.del(context.WithoutCancel(ctx), keys)
	err = a.afterDelete(ctx, key, nil, seqs, failed, err)
	a.tellDone(ctx, w, key)
	return err
}

// deletable returns the related keys an invalidation may delete: those
// outside the library's own namespace.
func (a *Aside[K, V]) deletable(ctx context.Context, related []string) []string {
	keys := make([]string, 0, len(related))
	for _, k := range related {
		if isReserved(k) {
			a.log.ErrorContext(ctx, "cacheaside: a related key in the library's own namespace is never deleted", "key", k)
			continue
		}
		keys = append(keys, k)
	}
	return keys
}

// afterDelete queues the keys whose delete failed for a retry, and tells
// a.landed about seqs once key's delete has landed. marker, if not nil, is
// that of the write whose end this was: a retry of key ends that write
// (see pendingKey).
func (a *Aside[K, V]) afterDelete(ctx context.Context, key string, marker []byte, seqs []int64, failed []string, err error) error {
	if len(failed) == 0 {
		a.landedNow(seqs)
		return nil
	}
	a.m.invalErrs.Add(1)
	a.log.ErrorContext(ctx, "cacheaside: cache invalidation failed; retrying until it lands", "keys", failed, "err", err)
	if failed[0] != key {
		a.landedNow(seqs)
		seqs, marker = nil, nil
	}
	a.queue(failed, seqs, marker)
	return wrapErr("invalidate "+key, err)
}

func (a *Aside[K, V]) landedNow(seqs []int64) {
	if len(seqs) > 0 && a.landed != nil {
		a.landed(seqs)
	}
}

// Close stops the engine's background work: it makes one last attempt at
// the invalidations still waiting for the cache, and logs those that did
// not land. The engine keeps serving reads and writes after Close, but a
// delete that fails is then no longer retried.
func (a *Aside[K, V]) Close() error {
	a.bg.close()
	a.g.w.close()
	return nil
}

// Metrics returns a snapshot of the engine's counters.
func (a *Aside[K, V]) Metrics() ServiceMetrics {
	size := int64(-1)
	if a.sizer != nil {
		size = a.sizer.Len()
	}
	m := a.m.snapshot(size)
	m.PendingInvalidations = a.inv.n.Load()
	m.CacheShardsUnavailable = a.g.open.Load()
	if a.tier != nil {
		m.LocalSize = int64(a.tier.len())
		m.Membership = a.bus.state()
	}
	return m
}

// cacheFailed counts and logs a cache read that failed; the caller falls
// back to the repository. what names the key or keys.
func (a *Aside[K, V]) cacheFailed(ctx context.Context, what any, err error) {
	a.m.cacheErrs.Add(1)
	a.log.WarnContext(ctx, "cacheaside: cache error, falling back to the repository", "key", what, "err", err)
}

// copyOut returns the caller's own copy of a shared value: a value copy
// when that is a deep one, a copy through its JSON encoding otherwise.
func (a *Aside[K, V]) copyOut(v *V) *V {
	c := *v
	if a.shallow {
		return &c
	}
	if raw, err := json.Marshal(v); err == nil {
		d := new(V)
		if json.Unmarshal(raw, d) == nil {
			return d
		}
	}
	return &c
}
