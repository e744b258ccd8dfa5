package cacheaside

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
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
// Its methods are safe for concurrent use. The only goroutines it starts
// run shared loads: each ends when its load returns, which the load timeout
// bounds for a loader that honours its context.
type Aside[K comparable, V any] struct {
	cache  CacheClient
	multi  MultiGetter // nil when cache does not implement it
	leaser Leaser      // nil when cache does not implement it
	sizer  Sizer       // nil when cache does not implement it

	key      func(K) string
	load     LoadFunc[K, V]
	loadMany func(ctx context.Context, ids []K) ([]*V, error) // nil: load one by one
	notFound error                                            // returned for missing values; matches ErrNotFound
	shallow  bool                                             // a value copy of V is a deep copy

	o   options
	log *slog.Logger

	sf     singleflight.Group
	gens   generations
	onJoin func(key string) // tests: called once a caller waits on a flight
	m      counters
}

// NewAside returns an engine that caches values of type V under
// "<namespace>:<id>" and loads misses with load. With no options it caches
// values for DefaultTTL (less up to 10% jitter), caches "not found" for
// DefaultNegativeTTL and bounds each shared load by DefaultLoadTimeout. A
// nil cache caches nothing; a nil load makes every read fail with
// ErrNotConfigured.
//
// Each caller gets its own copy of a shared value, made by decoding its JSON
// encoding, so V may hold slices and maps safely.
func NewAside[K comparable, V any](cache CacheClient, namespace string, load LoadFunc[K, V], opts ...Option) *Aside[K, V] {
	prefix := namespace + ":"
	return newAside(cache, func(id K) string { return prefix + formatID(id) }, load, ErrNotFound, newOptions(DefaultTTL, opts))
}

func newAside[K comparable, V any](cache CacheClient, key func(K) string, load LoadFunc[K, V], notFound error, o options) *Aside[K, V] {
	if cache == nil {
		cache = noCache{}
	}
	a := &Aside[K, V]{
		cache:    cache,
		key:      key,
		load:     load,
		notFound: notFound,
		o:        o,
		log:      o.logger,
	}
	a.gens.init()
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
// The returned value is the caller's own copy.
func (a *Aside[K, V]) Get(ctx context.Context, id K) (*V, error) {
	if err := a.ready(); err != nil {
		return nil, err
	}
	start := time.Now()
	v, err := a.get(ctx, id, a.key(id))
	a.m.observe(time.Since(start))
	return v, err
}

func (a *Aside[K, V]) get(ctx context.Context, id K, key string) (*V, error) {
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

// Invalidate removes the cached value of id and the given related keys. Call
// it after every write to the source of truth, once the write is durable.
//
// A read that starts after Invalidate returns never sees a value loaded
// before it was called, and a load in flight during the call, in any
// process, does not fill the cache (with a cache that implements Leaser;
// without one, in this process only; see the package documentation). The
// delete runs on a context detached from ctx's cancellation, bounded by the
// load timeout, so a caller that goes away after its write still clears the
// cache. A failed delete is counted, logged and returned.
func (a *Aside[K, V]) Invalidate(ctx context.Context, id K, related ...string) error {
	return a.invalidate(ctx, a.key(id), related)
}

func (a *Aside[K, V]) invalidate(ctx context.Context, key string, related []string) error {
	a.gens.bump(key)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.o.loadTimeout)
	defer cancel()
	keys := make([]string, 0, 1+len(related))
	keys = append(keys, key)
	keys = append(keys, related...)
	if err := a.cache.Delete(ctx, keys...); err != nil {
		a.m.invalErrs.Add(1)
		a.log.ErrorContext(ctx, "cacheaside: cache invalidation failed", "keys", keys, "err", err)
		return wrapErr("invalidate "+key, err)
	}
	return nil
}

// Metrics returns a snapshot of the engine's counters.
func (a *Aside[K, V]) Metrics() ServiceMetrics {
	size := int64(-1)
	if a.sizer != nil {
		size = a.sizer.Len()
	}
	return a.m.snapshot(size)
}

// cacheFailed counts and logs a cache read that failed; the caller falls
// back to the repository. what names the key or keys.
func (a *Aside[K, V]) cacheFailed(ctx context.Context, what any, err error) {
	a.m.cacheErrs.Add(1)
	a.log.WarnContext(ctx, "cacheaside: cache error, falling back to the repository", "key", what, "err", err)
}

// copyOut returns the caller's own copy of a shared value: decoded afresh
// from its encoding, unless a value copy of V is already a deep one.
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
