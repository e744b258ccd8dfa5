package cacheaside

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/cacheaside/cacheaside/internal/latency"
)

// ServiceMetrics is a point-in-time copy of a service's counters. It is a
// plain value: copying it is safe and it does not change after GetMetrics
// returns.
//
// Every valid read (one GetUser call, or one distinct ID of a GetUsersBatch
// call) counts once in TotalRequests and exactly once in CacheHits,
// CacheMisses or SharedLoads, so HitRate + MissRate is 1 once any request
// was made.
type ServiceMetrics struct {
	// TotalRequests counts reads with a valid ID.
	TotalRequests int64
	// CacheHits counts reads answered by the cache, including cached
	// "not found" answers.
	CacheHits int64
	// CacheMisses counts reads that missed the cache and led a load (or gave
	// up waiting for one).
	CacheMisses int64
	// SharedLoads counts reads that missed the cache and were answered by a
	// load another caller led: each is a repository query saved.
	SharedLoads int64
	// DatabaseLoads counts repository reads: single loads and batch loads
	// each count once.
	DatabaseLoads int64
	// CacheErrors counts cache reads that failed (other than a miss) and fell
	// back to the repository.
	CacheErrors int64
	// CacheWriteErrors counts fills that failed.
	CacheWriteErrors int64
	// CacheInvalidationErrors counts invalidations whose delete failed; the
	// write itself succeeded, and the delete is retried until it lands.
	CacheInvalidationErrors int64
	// DatabaseErrors counts repository reads that failed for a reason other
	// than "not found".
	DatabaseErrors int64
	// DecodeErrors counts cached entries that were not a usable value of
	// their key: undecodable, over WithMaxValueSize, stored under another
	// key, or another entity than the one asked for. Each was treated as a
	// miss and overwritten by the next fill.
	DecodeErrors int64
	// StaleFillsSkipped counts fills dropped because a write to the same key
	// happened while the value was being loaded: the key's generation in
	// this process moved, or its lease was gone when the fill came.
	StaleFillsSkipped int64
	// LeaseWaits counts loads that found another caller's lease on their key
	// (in this process or another) and waited for its value.
	LeaseWaits int64
	// LeaseWaitTimeouts counts loads that waited WithLeaseWait for another
	// caller's lease and then read the source themselves.
	LeaseWaitTimeouts int64
	// RefusedFillReloads counts lease holders whose fill was refused (a
	// write removed the lease while they read) and that looked at the key
	// again instead of returning what they read.
	RefusedFillReloads int64
	// WriteFills counts updates that left the row the repository stored in
	// the cache in place of their marker, rather than deleting the key
	// (see UserUpdateReturner).
	WriteFills int64
	// BloomRejected counts reads answered "not found" by the Bloom filter
	// (WithBloomFilter) without a load.
	BloomRejected int64
	// WritesRefused counts writes that failed before they changed the
	// source because the local tiers' bus could not be told (see
	// ErrCacheUnavailable).
	WritesRefused int64
	// EarlyRefreshes counts entries replaced by an early refresh before
	// they expired (WithEarlyRefresh).
	EarlyRefreshes int64
	// Rejoins counts reads that joined a shared load too late to be sure
	// its result included every earlier write, and looked again.
	Rejoins int64

	// CacheTimeouts counts cache calls that outlived their time box
	// (WithCacheTimeout); the caller stopped waiting for them.
	CacheTimeouts int64
	// CacheCallsRejected counts cache calls that were not sent because
	// their shard's circuit breaker was open.
	CacheCallsRejected int64
	// CacheBreakerOpens counts the times a cache circuit breaker opened.
	CacheBreakerOpens int64
	// CacheShardsUnavailable is how many shards of the cache (the whole
	// cache, unless it is sharded) have a circuit breaker that is open or
	// half-open now.
	CacheShardsUnavailable int64
	// RepositoryBreakerState is the state of the repository's circuit
	// breaker now: "closed", "open" or "half-open".
	RepositoryBreakerState string
	// RepositoryBreakerOpens counts the times it opened.
	RepositoryBreakerOpens int64
	// RepositoryCallsRejected counts loads it refused.
	RepositoryCallsRejected int64
	// FailSafeServed counts reads answered, after their load failed, with
	// the last value known for the key (WithFailSafe).
	FailSafeServed int64
	// PendingInvalidations is how many keys now wait for a delete that
	// failed to be retried.
	PendingInvalidations int64
	// InvalidationRetries counts the retries of failed deletes.
	InvalidationRetries int64
	// InvalidationsDropped counts keys whose failed delete could not be
	// queued for a retry because too many were waiting.
	InvalidationsDropped int64
	// OutboxDrained counts outbox records whose keys a drain deleted: writes
	// whose writer did not clear them itself, having crashed, say.
	OutboxDrained int64

	// LocalHits counts reads answered by the local tier (WithLocalCache),
	// without a network call; they are cache hits too. LocalMisses counts
	// reads the local tier could not answer.
	LocalHits, LocalMisses int64
	// LocalSize is about how many values the local tier holds.
	LocalSize int64
	// BusInvalidations counts the invalidations this process received on
	// the bus; BusAcks the acknowledgements it sent.
	BusInvalidations, BusAcks int64
	// WritesWaited counts writes that waited for a member that neither
	// acknowledged nor lost its lease at once (a member cut off from the
	// cache, say), and WriteWaitTime is how long they waited in all.
	WritesWaited  int64
	WriteWaitTime time.Duration
	// Membership is this process's standing on the bus: "serving" while its
	// local tier may answer reads, "not serving (...)" otherwise, "" without
	// a local tier.
	Membership string

	// HitRate is CacheHits / TotalRequests, from 0 to 1.
	HitRate float64
	// MissRate is (CacheMisses + SharedLoads) / TotalRequests, from 0 to 1:
	// every read the cache did not answer, whether it read the repository
	// itself or waited for another caller's read. DatabaseLoads says how
	// many repository reads those misses cost.
	MissRate float64

	// AvgResponseTime is an exponential moving average of the response time
	// of reads (each new sample weighs 0.1). The response-time figures leave
	// out the reads a local tier answered (LocalHits), which are not timed.
	AvgResponseTime time.Duration
	// P50ResponseTime and P99ResponseTime are read response-time
	// percentiles since the service started, accurate to within 12.5%.
	P50ResponseTime time.Duration
	P99ResponseTime time.Duration
	// LoadTime is the mean duration of a repository read.
	LoadTime time.Duration

	// CacheSize is the number of entries in the cache, or -1 when the cache
	// does not implement Sizer.
	CacheSize int64
}

// counters are a service's live metrics. They are updated with atomics and
// never copied (vet's copylocks guards the atomic types).
type counters struct {
	requests, hits, misses, shared  atomic.Int64
	loads, loadNanos                atomic.Int64
	cacheErrs, writeErrs, invalErrs atomic.Int64
	dbErrs, decodeErrs, staleFills  atomic.Int64
	leaseWaits, leaseTimeouts       atomic.Int64
	rejoins, refusedReloads         atomic.Int64
	writeFills                      atomic.Int64
	earlyRefreshes, writesRefused   atomic.Int64
	bloomRejected                   atomic.Int64
	cacheTimeouts, cacheRejected    atomic.Int64
	cacheBreakerOpens               atomic.Int64
	repoBreakerOpens, repoRejected  atomic.Int64
	repoBreakerState                atomic.Int32 // a gobreaker.State
	failSafeServed                  atomic.Int64
	invalRetries, invalDropped      atomic.Int64
	outboxDrained                   atomic.Int64
	localHits, localMisses          atomic.Int64
	busInvalidations, busAcks       atomic.Int64
	writesWaited, writeWaitNanos    atomic.Int64
	ema                             atomic.Int64 // nanoseconds
	hist                            latency.Histogram
}

// observe records one response time in the histogram and the moving
// average.
func (c *counters) observe(d time.Duration) {
	c.hist.Observe(d)
	for {
		old := c.ema.Load()
		next := int64(d)
		if old != 0 {
			next = int64(math.Round(float64(old)*0.9 + float64(d)*0.1))
		}
		if c.ema.CompareAndSwap(old, next) {
			return
		}
	}
}

func (c *counters) recordLoad(d time.Duration) {
	c.loads.Add(1)
	c.loadNanos.Add(int64(d))
}

func (c *counters) snapshot(size int64) ServiceMetrics {
	m := ServiceMetrics{
		TotalRequests:           c.requests.Load(),
		CacheHits:               c.hits.Load(),
		CacheMisses:             c.misses.Load(),
		SharedLoads:             c.shared.Load(),
		DatabaseLoads:           c.loads.Load(),
		CacheErrors:             c.cacheErrs.Load(),
		CacheWriteErrors:        c.writeErrs.Load(),
		CacheInvalidationErrors: c.invalErrs.Load(),
		DatabaseErrors:          c.dbErrs.Load(),
		DecodeErrors:            c.decodeErrs.Load(),
		StaleFillsSkipped:       c.staleFills.Load(),
		LeaseWaits:              c.leaseWaits.Load(),
		LeaseWaitTimeouts:       c.leaseTimeouts.Load(),
		Rejoins:                 c.rejoins.Load(),
		RefusedFillReloads:      c.refusedReloads.Load(),
		WriteFills:              c.writeFills.Load(),
		EarlyRefreshes:          c.earlyRefreshes.Load(),
		WritesRefused:           c.writesRefused.Load(),
		BloomRejected:           c.bloomRejected.Load(),
		CacheTimeouts:           c.cacheTimeouts.Load(),
		CacheCallsRejected:      c.cacheRejected.Load(),
		CacheBreakerOpens:       c.cacheBreakerOpens.Load(),
		RepositoryBreakerState:  gobreaker.State(c.repoBreakerState.Load()).String(),
		RepositoryBreakerOpens:  c.repoBreakerOpens.Load(),
		RepositoryCallsRejected: c.repoRejected.Load(),
		FailSafeServed:          c.failSafeServed.Load(),
		InvalidationRetries:     c.invalRetries.Load(),
		InvalidationsDropped:    c.invalDropped.Load(),
		OutboxDrained:           c.outboxDrained.Load(),
		LocalHits:               c.localHits.Load(),
		LocalMisses:             c.localMisses.Load(),
		BusInvalidations:        c.busInvalidations.Load(),
		BusAcks:                 c.busAcks.Load(),
		WritesWaited:            c.writesWaited.Load(),
		WriteWaitTime:           time.Duration(c.writeWaitNanos.Load()),
		AvgResponseTime:         time.Duration(c.ema.Load()),
		P50ResponseTime:         c.hist.Quantile(0.50),
		P99ResponseTime:         c.hist.Quantile(0.99),
		CacheSize:               size,
	}
	// A local hit counts only once, in localHits: it is a request and a
	// hit too.
	m.TotalRequests += m.LocalHits
	m.CacheHits += m.LocalHits
	if m.TotalRequests > 0 {
		m.HitRate = float64(m.CacheHits) / float64(m.TotalRequests)
		m.MissRate = float64(m.CacheMisses+m.SharedLoads) / float64(m.TotalRequests)
	}
	if m.DatabaseLoads > 0 {
		m.LoadTime = time.Duration(c.loadNanos.Load() / m.DatabaseLoads)
	}
	return m
}
