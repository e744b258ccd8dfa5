package cacheaside

import (
	"context"
	"time"
)

// A Recorder receives every read, load and write as it ends, so that a
// metrics system can keep latency histograms and counters by result, which
// the snapshot of GetMetrics (a few percentiles, no buckets) cannot give.
// The module github.com/cacheaside/cacheaside/metrics has one for
// Prometheus and one for OpenTelemetry; it lives in a module of its own so
// that neither reaches a program that does not import it. Set one with
// [WithRecorder].
//
// A Recorder's methods are called on the request path, concurrently, and
// must be safe for that and return quickly. ctx is the caller's context
// (for exemplars and baggage); it may be done already.
type Recorder interface {
	// RecordRead is called once per read: per Get, and per ID of a
	// GetMany, which all report the batch's duration.
	RecordRead(ctx context.Context, result Result, d time.Duration)
	// RecordLoad is called once per read of the source of truth, with
	// ResultOK, ResultNotFound, ResultError or ResultRejected (the
	// repository's circuit breaker refused it).
	RecordLoad(ctx context.Context, result Result, d time.Duration)
	// RecordWrite is called once per write through a UserService (op is
	// "create", "update" or "delete") or Aside.Write (op "write"), with
	// ResultOK or ResultError; d includes the cache's share of the write,
	// and any wait for local tiers' acknowledgements.
	RecordWrite(ctx context.Context, op string, result Result, d time.Duration)
}

// Result is how a read, load or write ended, as a Recorder is told. Its
// values are short lower-case words, meant as a metric label's values.
type Result string

// The results a Recorder is given.
const (
	// ResultLocalHit: a read answered from the local tier.
	ResultLocalHit Result = "local_hit"
	// ResultHit: a read answered from the shared cache, including a cached
	// "not found".
	ResultHit Result = "hit"
	// ResultMiss: a read that loaded from the source itself.
	ResultMiss Result = "miss"
	// ResultShared: a read answered by another caller's load, in this
	// process (single flight) or another (a lease).
	ResultShared Result = "shared"
	// ResultFiltered: a read answered "not found" by a Bloom filter
	// (WithBloomFilter), without a load.
	ResultFiltered Result = "filtered"
	// ResultError: a read or a write that failed, or a load that failed
	// with anything but "not found".
	ResultError Result = "error"
	// ResultOK: a load that found the value, or a write that succeeded.
	ResultOK Result = "ok"
	// ResultNotFound: a load that found nothing.
	ResultNotFound Result = "not_found"
	// ResultRejected: a load that the repository's circuit breaker refused.
	ResultRejected Result = "rejected"
)
