package cacheaside

import (
	"context"
	"encoding/json"
	"time"
)

// CacheClient is the cache the service reads first and fills on a miss,
// usually Redis. The package provides NewRedisCache and NewMemoryCache;
// any other store can be used by implementing these three methods.
//
// GetJSON decodes the value under key into dest and returns ErrCacheMiss
// (possibly wrapped) when the key holds nothing. Any other error, including
// a timeout or a closed connection, is treated by the service as a cache
// failure: it is counted and the read falls back to the repository.
//
// SetJSON stores the JSON encoding of value under key for ttl; a ttl of zero
// or less means no expiry. Delete removes keys and ignores those that are
// absent.
//
// The service always passes a *json.RawMessage as dest and a json.RawMessage
// as value, so it can tell cached values from its own markers before
// decoding; implementations built on encoding/json handle both without
// special cases.
type CacheClient interface {
	GetJSON(ctx context.Context, key string, dest any) error
	SetJSON(ctx context.Context, key string, value any, ttl time.Duration) error
	Delete(ctx context.Context, keys ...string) error
}

// MultiGetter is an optional interface that a CacheClient may implement to
// fetch many keys in one round trip (MGET, or a pipeline on a cluster).
// The service checks for it once, at construction; without it,
// GetUsersBatch looks keys up one at a time, concurrently.
//
// GetMulti returns a slice aligned with keys; a nil element is a miss.
type MultiGetter interface {
	GetMulti(ctx context.Context, keys []string) ([]json.RawMessage, error)
}

// Sizer is an optional interface that a CacheClient may implement to report
// how many entries it holds. When the cache implements it,
// ServiceMetrics.CacheSize is filled in; otherwise it is -1.
type Sizer interface {
	Len() int64
}

// Leaser is an optional interface that a CacheClient implements to hold
// leases in its keys, which is what keeps a fill from writing an old value
// back after an invalidation, across every process that shares the cache.
// NewRedisCache and NewMemoryCache implement it; without it the service
// protects fills within its own process only (see the package
// documentation).
//
// SetNX atomically stores val under key for ttl (always positive) if the key
// is empty and returns nil; otherwise it leaves the key alone and returns
// what it holds. CompareAndSwap atomically replaces key's value with val,
// for ttl (no expiry when ttl <= 0), if the key holds exactly old, and
// reports whether it did; a nil val deletes the key instead. Values are the
// raw bytes the service stores, as a *json.RawMessage would read them.
//
// Every marker the service stores in place of a value (a JSON string that
// starts with a NUL character and "cacheaside:") has an expiry, but for a
// cached "not found"; SetNX should treat a key that holds such a marker
// without an expiry as empty, so that one planted by hand cannot stall the
// key's readers. Both built-in caches do.
type Leaser interface {
	SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) (held []byte, err error)
	CompareAndSwap(ctx context.Context, key string, old, val []byte, ttl time.Duration) (bool, error)
}

// noCache is the cache of a service built with a nil CacheClient: every
// read misses and every write succeeds.
type noCache struct{}

func (noCache) GetJSON(context.Context, string, any) error                { return ErrCacheMiss }
func (noCache) SetJSON(context.Context, string, any, time.Duration) error { return nil }
func (noCache) Delete(context.Context, ...string) error                   { return nil }
func (noCache) inProcess()                                                {}
