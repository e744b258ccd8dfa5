// Package memcache is an in-process byte cache with per-entry expiry.
//
// It is the storage behind the root package's MemoryCache. Values are copied
// on the way in and on the way out, so no caller can change what another
// caller reads. Expired entries are dropped when they are read and, in bulk,
// every sweepEvery writes; the cache starts no goroutine.
package memcache

import (
	"strings"
	"sync"
	"time"
)

// sweepEvery is how many writes pass between two sweeps of expired entries.
const sweepEvery = 1024

type entry struct {
	b   []byte
	exp time.Time // zero: never expires
}

// Cache maps keys to byte slices. The zero value is not usable; call New.
// A Cache is safe for concurrent use.
type Cache struct {
	now func() time.Time

	mu     sync.Mutex // protects m and writes
	m      map[string]entry
	writes int
}

// New returns an empty cache that reads the time from now, or from time.Now
// when now is nil.
func New(now func() time.Time) *Cache {
	if now == nil {
		now = time.Now
	}
	return &Cache{now: now, m: make(map[string]entry)}
}

// Get returns a copy of the value stored under key and whether it was there
// and unexpired.
func (c *Cache) Get(key string) ([]byte, bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok {
		return nil, false
	}
	if e.expired(now) {
		delete(c.m, key)
		return nil, false
	}
	return clone(e.b), true
}

// GetMulti returns copies of the values under keys, aligned with keys; a nil
// element is a miss.
func (c *Cache) GetMulti(keys []string) [][]byte {
	now := c.now()
	out := make([][]byte, len(keys))
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, k := range keys {
		e, ok := c.m[k]
		if !ok {
			continue
		}
		if e.expired(now) {
			delete(c.m, k)
			continue
		}
		out[i] = clone(e.b)
	}
	return out
}

// Set stores a copy of b under key. A ttl of zero or less means the entry
// never expires.
func (c *Cache) Set(key string, b []byte, ttl time.Duration) {
	now := c.now()
	e := newEntry(b, ttl, now)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[key] = e
	c.writes++
	if c.writes%sweepEvery == 0 {
		for k, e := range c.m {
			if e.expired(now) {
				delete(c.m, k)
			}
		}
	}
}

// Delete removes keys; keys that are absent are ignored.
func (c *Cache) Delete(keys ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range keys {
		delete(c.m, k)
	}
}

// Len reports how many unexpired entries the cache holds.
func (c *Cache) Len() int {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, e := range c.m {
		if !e.expired(now) {
			n++
		}
	}
	return n
}

// TTL reports the time left before key expires, zero for an entry that never
// expires, and false when key is absent or expired.
func (c *Cache) TTL(key string) (time.Duration, bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || e.expired(now) {
		return 0, false
	}
	if e.exp.IsZero() {
		return 0, true
	}
	return e.exp.Sub(now), true
}

func (e entry) expired(now time.Time) bool {
	return !e.exp.IsZero() && !now.Before(e.exp)
}

func clone(b []byte) []byte {
	return append([]byte(nil), b...)
}

// SetNX stores a copy of b under key for ttl if key holds nothing (or only
// an expired entry, or a value that starts with leasePrefix and never
// expires) and returns nil and true. Otherwise it leaves the entry alone and
// returns a copy of what key holds and false.
func (c *Cache) SetNX(key string, b []byte, ttl time.Duration, leasePrefix string) ([]byte, bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok && !e.expired(now) && (!e.exp.IsZero() || !strings.HasPrefix(string(e.b), leasePrefix)) {
		return clone(e.b), false
	}
	c.m[key] = newEntry(b, ttl, now)
	return nil, true
}

// CompareAndSwap replaces the value under key with a copy of b, for ttl, if
// key holds exactly old and is unexpired, and reports whether it did. A nil
// b deletes the entry instead.
func (c *Cache) CompareAndSwap(key string, old, b []byte, ttl time.Duration) bool {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || e.expired(now) || string(e.b) != string(old) {
		return false
	}
	if b == nil {
		delete(c.m, key)
		return true
	}
	c.m[key] = newEntry(b, ttl, now)
	return true
}

func newEntry(b []byte, ttl time.Duration, now time.Time) entry {
	e := entry{b: clone(b)}
	if ttl > 0 {
		e.exp = now.Add(ttl)
	}
	return e
}
