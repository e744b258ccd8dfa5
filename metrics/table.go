package metrics

import (
	"fmt"
	"strings"

	"github.com/cacheaside/cacheaside"
)

// snap is the snapshot the table reads, so that its rows fit on a line.
type snap = cacheaside.ServiceMetrics

// kind is what a family of the snapshot is.
type kind int

const (
	// counter only goes up while the service lives.
	counter kind = iota
	// gauge is a value now: it goes up and down.
	gauge
)

// A row maps a snapshot (cacheaside.ServiceMetrics) to one series of one
// exported metric. Rows that share a name are one family (one metric, told
// apart by label); they must be next to each other and agree on kind,
// unit and label, and only the first one carries the help.
//
// From a row's name, unit and kind both exporters derive their names (see
// promName and otelName): name "cache.errors", a counter with unit
// "{error}", is cacheaside_cache_errors_total in Prometheus and
// cacheaside.cache.errors in OpenTelemetry. A negative value (CacheSize
// when the cache cannot count) is not exported.
type row struct {
	name  string // after "cacheaside.", dot-separated: "cache.errors"
	kind  kind
	unit  string // UCUM, as OpenTelemetry has it: "s", "1" or an annotation such as "{read}"
	label string // the label that tells the family's series apart; "" for none
	value string // this series' value of label
	get   func(m *snap) float64
	help  string // the family's help: on its first row only
}

// table is the mapping from the snapshot to exported metrics, for both
// exporters: a new field of cacheaside.ServiceMetrics is one more row here
// (TestTable_EveryFieldExported fails until it has one, or is listed in
// notExported).
var table = []row{
	// Reads, by result: the results sum to the reads with a valid ID (TotalRequests).
	{"reads", counter, "{read}", "result", "local_hit", func(m *snap) float64 { return float64(m.LocalHits) }, "Reads with a valid ID, by result: local_hit (answered by the local tier), hit (answered by the shared cache, cached not-found answers included), miss (loaded from the repository), shared (answered by another caller's load)."},
	{"reads", counter, "{read}", "result", "hit", func(m *snap) float64 { return float64(m.CacheHits - m.LocalHits) }, ""},
	{"reads", counter, "{read}", "result", "miss", func(m *snap) float64 { return float64(m.CacheMisses) }, ""},
	{"reads", counter, "{read}", "result", "shared", func(m *snap) float64 { return float64(m.SharedLoads) }, ""},
	{"rejoins", counter, "{read}", "", "", func(m *snap) float64 { return float64(m.Rejoins) }, "Reads that joined a shared load too late to be sure it saw every earlier write, and looked again."},
	{"fail_safe.served", counter, "{read}", "", "", func(m *snap) float64 { return float64(m.FailSafeServed) }, "Reads answered with the last value known for their key after their load failed (WithFailSafe)."},

	// The repository.
	{"repository.loads", counter, "{load}", "", "", func(m *snap) float64 { return float64(m.DatabaseLoads) }, "Reads of the repository; a batch read counts once."},
	{"repository.errors", counter, "{error}", "", "", func(m *snap) float64 { return float64(m.DatabaseErrors) }, "Reads of the repository that failed with anything but not found."},

	// The shared cache.
	{"cache.errors", counter, "{error}", "op", "read", func(m *snap) float64 { return float64(m.CacheErrors) }, "Cache calls that failed, by op: read (the read fell back to the repository), fill (the loaded value was not cached), invalidate (a delete after a write; it is retried until it lands)."},
	{"cache.errors", counter, "{error}", "op", "fill", func(m *snap) float64 { return float64(m.CacheWriteErrors) }, ""},
	{"cache.errors", counter, "{error}", "op", "invalidate", func(m *snap) float64 { return float64(m.CacheInvalidationErrors) }, ""},
	{"cache.decode_errors", counter, "{entry}", "", "", func(m *snap) float64 { return float64(m.DecodeErrors) }, "Cached entries that were not a usable value of their key; each was treated as a miss."},
	{"cache.timeouts", counter, "{call}", "", "", func(m *snap) float64 { return float64(m.CacheTimeouts) }, "Cache calls that outlived their time box (WithCacheTimeout)."},
	{"cache.shards_unavailable", gauge, "{shard}", "", "", func(m *snap) float64 { return float64(m.CacheShardsUnavailable) }, "Shards of the cache whose circuit breaker is open or half-open now."},
	{"cache.entries", gauge, "{entry}", "", "", func(m *snap) float64 { return float64(m.CacheSize) }, "Entries in the cache now; absent when the cache cannot count them."},
	{"stale_fills_skipped", counter, "{fill}", "", "", func(m *snap) float64 { return float64(m.StaleFillsSkipped) }, "Fills dropped because a write to their key happened while the value was being loaded."},
	{"early_refreshes", counter, "{entry}", "", "", func(m *snap) float64 { return float64(m.EarlyRefreshes) }, "Entries replaced by an early refresh before they expired (WithEarlyRefresh)."},
	{"writes_refused", counter, "{write}", "", "", func(m *snap) float64 { return float64(m.WritesRefused) }, "Writes refused before they changed the source because the local tiers could not be told."},
	{"bloom_rejected", counter, "{read}", "", "", func(m *snap) float64 { return float64(m.BloomRejected) }, "Reads answered \"not found\" by the Bloom filter, without a load (WithBloomFilter)."},

	// Leases.
	{"lease.waits", counter, "{wait}", "", "", func(m *snap) float64 { return float64(m.LeaseWaits) }, "Loads that found another caller's lease on their key and waited for its value."},
	{"lease.wait_timeouts", counter, "{wait}", "", "", func(m *snap) float64 { return float64(m.LeaseWaitTimeouts) }, "Waits for another caller's lease that ran out (WithLeaseWait) and read the repository."},
	{"lease.refused_reloads", counter, "{load}", "", "", func(m *snap) float64 { return float64(m.RefusedFillReloads) }, "Lease holders whose fill was refused and that looked at the key again instead of returning what they read."},
	{"write.fills", counter, "{write}", "", "", func(m *snap) float64 { return float64(m.WriteFills) }, "Updates that left the row the repository stored in the cache in place of their marker."},

	// Circuit breakers.
	{"breaker.opens", counter, "{transition}", "breaker", "cache", func(m *snap) float64 { return float64(m.CacheBreakerOpens) }, "Times a circuit breaker opened, by breaker: cache (any shard's) or repository."},
	{"breaker.opens", counter, "{transition}", "breaker", "repository", func(m *snap) float64 { return float64(m.RepositoryBreakerOpens) }, ""},
	{"breaker.rejected_calls", counter, "{call}", "breaker", "cache", func(m *snap) float64 { return float64(m.CacheCallsRejected) }, "Calls not made because a circuit breaker was open, by breaker: cache or repository."},
	{"breaker.rejected_calls", counter, "{call}", "breaker", "repository", func(m *snap) float64 { return float64(m.RepositoryCallsRejected) }, ""},
	{"repository.breaker.state", gauge, "1", "state", "closed", func(m *snap) float64 { return is(m.RepositoryBreakerState == "closed") }, "State of the repository's circuit breaker: 1 for the state it is in, 0 for the others."},
	{"repository.breaker.state", gauge, "1", "state", "open", func(m *snap) float64 { return is(m.RepositoryBreakerState == "open") }, ""},
	{"repository.breaker.state", gauge, "1", "state", "half-open", func(m *snap) float64 { return is(m.RepositoryBreakerState == "half-open") }, ""},

	// Invalidations.
	{"invalidations.pending", gauge, "{key}", "", "", func(m *snap) float64 { return float64(m.PendingInvalidations) }, "Keys whose failed delete waits to be retried now."},
	{"invalidations.retries", counter, "{retry}", "", "", func(m *snap) float64 { return float64(m.InvalidationRetries) }, "Retries of deletes that failed."},
	{"invalidations.dropped", counter, "{key}", "", "", func(m *snap) float64 { return float64(m.InvalidationsDropped) }, "Keys whose failed delete could not be queued for a retry because too many were waiting."},
	{"outbox.drained", counter, "{record}", "", "", func(m *snap) float64 { return float64(m.OutboxDrained) }, "Outbox records whose keys a drain deleted."},

	// The local tier and its bus (WithLocalCache).
	{"local.misses", counter, "{read}", "", "", func(m *snap) float64 { return float64(m.LocalMisses) }, "Reads the local tier could not answer."},
	{"local.entries", gauge, "{entry}", "", "", func(m *snap) float64 { return float64(m.LocalSize) }, "Values the local tier holds now, about."},
	{"bus.invalidations", counter, "{message}", "", "", func(m *snap) float64 { return float64(m.BusInvalidations) }, "Invalidations this process received on the bus."},
	{"bus.acks", counter, "{message}", "", "", func(m *snap) float64 { return float64(m.BusAcks) }, "Acknowledgements this process sent on the bus."},
	{"writes.waited", counter, "{write}", "", "", func(m *snap) float64 { return float64(m.WritesWaited) }, "Writes that waited for a member that neither acknowledged nor lost its lease at once."},
	{"writes.wait_time", counter, "s", "", "", func(m *snap) float64 { return m.WriteWaitTime.Seconds() }, "Time spent by the writes that waited for a member, in all."},
	{"membership.state", gauge, "1", "state", "serving", func(m *snap) float64 { return is(m.Membership == "serving") }, "Standing of this process on the bus: 1 for serving (its local tier may answer reads) or not_serving, 0 for the other; both 0 without a local tier."},
	{"membership.state", gauge, "1", "state", "not_serving", func(m *snap) float64 { return is(strings.HasPrefix(m.Membership, "not serving")) }, ""},
}

// notExported lists the fields of cacheaside.ServiceMetrics that are not
// exported, and why: each is derived from exported ones, or is better
// computed by the monitoring system from a recorder's histograms.
var notExported = map[string]string{
	"TotalRequests":   "the sum of cacheaside_reads_total over result",
	"HitRate":         "a ratio since start: compute it from rates of cacheaside_reads_total",
	"MissRate":        "a ratio since start: compute it from rates of cacheaside_reads_total",
	"AvgResponseTime": "a moving average: use the read duration histogram of a recorder",
	"P50ResponseTime": "a percentile since start, which cannot be aggregated: use the read duration histogram",
	"P99ResponseTime": "a percentile since start, which cannot be aggregated: use the read duration histogram",
	"LoadTime":        "a mean since start: use the load duration histogram of a recorder",
}

// is is 1 for true and 0 for false.
func is(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// A family is one exported metric: the rows of the table that share a
// name.
type family struct {
	name, unit, label, help string
	kind                    kind
	series                  []series
}

// A series is one value of a family's label, and how to read it.
type series struct {
	value string
	get   func(m *snap) float64
}

// families are the table's rows, grouped.
var families = group(table)

// group turns rows into families, and panics if the rows break a rule of
// the table.
func group(rows []row) []family {
	var fs []family
	seen := make(map[string]bool)
	for i, r := range rows {
		if i > 0 && r.name == rows[i-1].name {
			f := &fs[len(fs)-1]
			switch {
			case r.kind != f.kind || r.unit != f.unit || r.label != f.label:
				panic(fmt.Sprintf("%stable row %d (%s): kind, unit or label differ from the family's first row", prefix, i, r.name))
			case r.label == "":
				panic(fmt.Sprintf("%stable row %d (%s): a family of more than one row needs a label", prefix, i, r.name))
			case r.help != "":
				panic(fmt.Sprintf("%stable row %d (%s): only a family's first row has help", prefix, i, r.name))
			}
			for _, s := range f.series {
				if s.value == r.value {
					panic(fmt.Sprintf("%stable row %d (%s): %s=%q twice", prefix, i, r.name, r.label, r.value))
				}
			}
			f.series = append(f.series, series{r.value, r.get})
			continue
		}
		switch {
		case seen[r.name]:
			panic(fmt.Sprintf("%stable row %d (%s): the rows of a family must be next to each other", prefix, i, r.name))
		case r.help == "":
			panic(fmt.Sprintf("%stable row %d (%s): a family's first row needs help", prefix, i, r.name))
		case (r.label == "") != (r.value == ""):
			panic(fmt.Sprintf("%stable row %d (%s): a label needs a value and a value a label", prefix, i, r.name))
		}
		seen[r.name] = true
		fs = append(fs, family{
			name: r.name, unit: r.unit, label: r.label, help: r.help, kind: r.kind,
			series: []series{{r.value, r.get}},
		})
	}
	return fs
}

// promName is the Prometheus name of a family: "cacheaside_", its name
// with underscores for dots, "_seconds" if it is in seconds, and "_total"
// if it is a counter.
func promName(f family) string {
	n := "cacheaside_" + strings.ReplaceAll(f.name, ".", "_")
	if f.unit == "s" {
		n += "_seconds"
	}
	if f.kind == counter {
		n += "_total"
	}
	return n
}

// otelName is the OpenTelemetry name of a family: "cacheaside." and its
// name; the unit is metadata, not part of the name.
func otelName(f family) string { return "cacheaside." + f.name }

// otelKey is the OpenTelemetry attribute key of a label: "cacheaside."
// and the label, spelled out ("op" is "operation").
func otelKey(label string) string {
	if label == "op" {
		label = "operation"
	}
	return "cacheaside." + label
}
