// Package memcache is a bounded in-process byte cache with per-entry expiry.
//
// It is the storage behind the root package's MemoryCache. It is built on
// [otter.Cache]: entries are evicted by otter's W-TinyLFU policy once the
// cache holds more than its maximum number of entries, and each entry expires
// after the TTL it was written with, measured on the clock the cache was
// given. Values are copied on the way in and on the way out, so no caller can
// change what another caller reads.
//
// # Time
//
// Expiry follows the clock passed to [New] or [NewBounded]: otter reads its
// time from it, so an entry stops being visible (to Get, GetMulti, TTL, Len,
// SetNX and CompareAndSwap) as soon as the clock reaches its expiry, and a
// test can expire entries by moving the clock instead of sleeping. Expired
// entries are removed from memory during otter's maintenance, which runs on
// the goroutines that write to the cache and, now and then, on those that
// read it.
//
// # Goroutines
//
// A Cache leaves no goroutine running, so it needs no Close. Maintenance runs
// on the calling goroutine (a synchronous otter Executor). otter starts one
// goroutine per cache with expiry to clean it up once a second; the clock
// given to otter delivers no ticks, which otter documents as "no periodic
// clean-ups", and that goroutine returns as soon as it has asked for them.
package memcache

import (
	"fmt"
	"math"
	"time"

	"github.com/maypok86/otter/v2"
)

// DefaultMaxEntries is the bound of a cache made by [New]: 1<<20 entries.
// At a few hundred bytes per value that is a few hundred megabytes.
const DefaultMaxEntries = 1 << 20

// item is what the cache stores under a key: the caller's bytes, copied, and
// the ttl they were written with, which the expiry calculator reads.
type item struct {
	b   []byte
	ttl time.Duration // <= 0: never expires
}

// Cache maps keys to byte slices, holding at most about a fixed number of
// entries. The zero value is not usable; call New or NewBounded. A Cache is
// safe for concurrent use.
type Cache struct {
	// m holds the entries. It is safe for concurrent use and guards itself:
	// reads take no lock, and a write locks one bucket of m's hash table
	// (and, now and then, otter's eviction lock to run maintenance).
	m *otter.Cache[string, item]
}

// New returns an empty cache bounded at DefaultMaxEntries entries that reads
// the time from now, or from the system's monotonic clock when now is nil.
// See NewBounded.
func New(now func() time.Time) *Cache {
	return NewBounded(now, DefaultMaxEntries)
}

// NewBounded returns an empty cache that holds at most about maxEntries
// entries and reads the time from now, or from the system's monotonic clock
// when now is nil. It panics if maxEntries is less than 1.
//
// Past maxEntries, each write may evict the entries least likely to be read
// again (otter's W-TinyLFU policy), so the cache may also evict before the
// bound is reached, and may exceed it briefly while a write's eviction is
// pending: until the next read or write of the cache runs it.
//
// now must not go backwards and must return times between the years 1678
// and 2262, whose Unix time in nanoseconds fits in an int64. It is called on
// every operation, sometimes while a bucket of the cache is locked, so it
// must be cheap and must not call the cache.
func NewBounded(now func() time.Time, maxEntries int) *Cache {
	if maxEntries < 1 {
		panic(fmt.Sprintf("memcache: NewBounded: maxEntries = %d, want at least 1", maxEntries))
	}
	m := otter.Must(&otter.Options[string, item]{
		MaximumSize:      maxEntries,
		ExpiryCalculator: otter.ExpiryWritingFunc(expiresAfter),
		Clock:            newNanoClock(now),
		// Maintenance runs on the goroutine that calls the cache, not on a
		// new goroutine per pass. This is safe because no function that the
		// cache runs under its locks (the Compute functions, the expiry
		// calculator, the clock) calls the cache back.
		Executor: func(fn func()) { fn() },
	})
	return &Cache{m: m}
}

// expiresAfter is the expiry calculator: an entry lives for the ttl it was
// written with, from that write, and reads do not extend it.
func expiresAfter(e otter.Entry[string, item]) time.Duration {
	if e.Value.ttl <= 0 {
		return math.MaxInt64 // otter's "never"
	}
	return e.Value.ttl
}

// nanoClock is the otter.Clock of a Cache: it reads the cache's clock and
// never ticks.
type nanoClock struct {
	now func() time.Time // nil: start plus the monotonic time since start

	start     time.Time
	startNano int64
}

func newNanoClock(now func() time.Time) *nanoClock {
	start := time.Now()
	return &nanoClock{now: now, start: start, startNano: start.UnixNano()}
}

// NowNano returns the Unix time in nanoseconds.
func (c *nanoClock) NowNano() int64 {
	if c.now != nil {
		return c.now().UnixNano()
	}
	// time.Since reads the monotonic clock, so expiry does not move when
	// the wall clock is set.
	return c.startNano + int64(time.Since(c.start))
}

// Tick returns nil: otter then does without periodic clean-ups, and the
// goroutine it starts for them returns at once.
func (c *nanoClock) Tick(time.Duration) <-chan time.Time { return nil }

// Get returns a copy of the value stored under key and whether it was there
// and unexpired. An empty value is returned as nil with true.
func (c *Cache) Get(key string) ([]byte, bool) {
	it, ok := c.m.GetIfPresent(key)
	if !ok {
		return nil, false
	}
	return clone(it.b), true
}

// GetMulti returns copies of the values under keys, aligned with keys; a nil
// element is a miss (or an empty value). The keys are read one by one, not
// as one snapshot.
func (c *Cache) GetMulti(keys []string) [][]byte {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		if it, ok := c.m.GetIfPresent(k); ok {
			out[i] = clone(it.b)
		}
	}
	return out
}

// Set stores a copy of b under key. A ttl of zero or less means the entry
// never expires, though it may still be evicted for size.
func (c *Cache) Set(key string, b []byte, ttl time.Duration) {
	c.m.Set(key, item{b: clone(b), ttl: ttl})
}

// Delete removes keys; keys that are absent are ignored.
func (c *Cache) Delete(keys ...string) {
	for _, k := range keys {
		c.m.Invalidate(k)
	}
}

// Len reports how many unexpired entries the cache holds. It visits every
// entry without locking the cache, so it costs time in proportion to the
// number of entries (about 0.25s for 1<<20 entries); EstimatedLen is the
// constant-time alternative. Without concurrent writes the count is exact;
// with them, it may mix moments of the walk.
func (c *Cache) Len() int {
	n := 0
	for range c.m.Keys() { // Keys skips expired entries
		n++
	}
	return n
}

// EstimatedLen returns about how many entries the cache holds, in constant
// time. Unlike Len it may count entries that have expired but have not been
// removed yet, and, for a moment after a write, entries about to be evicted.
func (c *Cache) EstimatedLen() int {
	return c.m.EstimatedSize()
}

// TTL reports the time left before key expires, zero for an entry that never
// expires, and false when key is absent or expired. Unlike Get it does not
// count as a use of the entry for eviction.
func (c *Cache) TTL(key string) (time.Duration, bool) {
	e, ok := c.m.GetEntryQuietly(key)
	if !ok {
		return 0, false
	}
	if e.Value.ttl <= 0 {
		return 0, true
	}
	return e.ExpiresAfter(), true
}

// SetNX stores a copy of b under key for ttl if key holds nothing (or only
// an expired entry, or a value that starts with leasePrefix and never
// expires) and returns nil and true. Otherwise it leaves the entry alone and
// returns a copy of what key holds and false. The check and the write are
// one atomic step: of concurrent SetNX calls on an empty key, one wins.
func (c *Cache) SetNX(key string, b []byte, ttl time.Duration, leasePrefix string) ([]byte, bool) {
	next := item{b: clone(b), ttl: ttl}
	won := false
	held, _ := c.m.Compute(key, func(cur item, found bool) (item, otter.ComputeOp) {
		// found is false for an expired entry, which Compute treats as absent.
		if found && (cur.ttl > 0 || !hasPrefix(cur.b, leasePrefix)) {
			won = false
			return cur, otter.CancelOp
		}
		won = true
		return next, otter.WriteOp
	})
	if won {
		return nil, true
	}
	return clone(held.b), false
}

// CompareAndSwap replaces the value under key with a copy of b, for ttl, if
// key holds exactly old and is unexpired, and reports whether it did. A nil
// b deletes the entry instead. The comparison and the change are one atomic
// step: of concurrent swaps from the same old value, one succeeds.
func (c *Cache) CompareAndSwap(key string, old, b []byte, ttl time.Duration) bool {
	var next item
	if b != nil {
		next = item{b: clone(b), ttl: ttl}
	}
	swapped := false
	// ComputeIfPresent does not call the function for an absent or expired
	// entry.
	c.m.ComputeIfPresent(key, func(cur item) (item, otter.ComputeOp) {
		if string(cur.b) != string(old) {
			swapped = false
			return cur, otter.CancelOp
		}
		swapped = true
		if b == nil {
			return cur, otter.InvalidateOp
		}
		return next, otter.WriteOp
	})
	return swapped
}

// hasPrefix reports whether b starts with prefix, without allocating.
func hasPrefix(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && string(b[:len(prefix)]) == prefix
}

func clone(b []byte) []byte {
	return append([]byte(nil), b...)
}
