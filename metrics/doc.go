// Package metrics exports the metrics of a cacheaside service to
// Prometheus (github.com/prometheus/client_golang) and to OpenTelemetry
// (go.opentelemetry.io/otel/metric). It is a module of its own, so that a
// program that does not import it does not get either dependency.
//
// A service has two sources of metrics, and each system gets an exporter
// for each:
//
//   - Every read, load and write, with its result and its duration, as it
//     ends: a cacheaside.Recorder, set with cacheaside.WithRecorder, is
//     told. [PrometheusRecorder] and [OTelRecorder] keep duration
//     histograms by result from them.
//   - The service's counters, as a snapshot (cacheaside.ServiceMetrics)
//     that GetMetrics (UserService) or Metrics (Aside) returns.
//     [PrometheusCollector] reads it at each scrape, and the callback that
//     [RegisterOTelSnapshot] registers at each collection.
//
// A service takes one Recorder: [Multi] fans one out to several, to feed
// Prometheus and OpenTelemetry at once.
//
// # Wiring
//
// With Prometheus:
//
//	rec := metrics.NewPrometheusRecorder(metrics.WithService("users"))
//	svc := cacheaside.NewUserService(repo, cache, cacheaside.WithRecorder(rec))
//	defer svc.Close()
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(rec, metrics.NewPrometheusCollector(svc.GetMetrics, metrics.WithService("users")))
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// With OpenTelemetry (provider is the SDK's MeterProvider, or
// otel.GetMeterProvider()):
//
//	rec, err := metrics.NewOTelRecorder(provider, metrics.WithService("users"))
//	svc := cacheaside.NewUserService(repo, cache, cacheaside.WithRecorder(rec))
//	reg, err := metrics.RegisterOTelSnapshot(provider, svc.GetMetrics, metrics.WithService("users"))
//	defer reg.Unregister()
//
// The library code of this package uses the OpenTelemetry API only; the
// SDK is the program's choice.
//
// # Names, units and labels
//
// Both sides export the same metrics under the names of their system.
// Prometheus names are snake_case and begin with "cacheaside_"; they end
// with the base unit (_seconds) and, for a counter, with _total; where the
// outcomes of one thing form a family, a label (result, op, breaker,
// state) tells its series apart rather than one metric per outcome.
// OpenTelemetry names are dot-separated, begin with "cacheaside." and say
// neither unit nor kind: the unit is the instrument's metadata ("s" for
// seconds, "1" for a state, an annotation such as "{read}" for a count),
// and the Prometheus label x is the attribute cacheaside.x (op is
// cacheaside.operation). Durations are in seconds everywhere.
//
// [WithService] adds the label service (the attribute cacheaside.service)
// to every series. Two services exported to one Prometheus registry must
// each have their own name: without one, the second one's registration
// fails with a prometheus.AlreadyRegisteredError. Give the recorder and
// the snapshot exporter of one service the same name.
//
// # Cardinality
//
// Every label has a small fixed set of values, listed below, so the
// number of series is bounded and does not grow with keys, users or
// errors: a recorder exports at most 5 read, 4 load and 8 write series
// (times the buckets of each histogram), and a snapshot exporter about 40
// series, per service. A result or an op that a later cacheaside adds gets
// its own series when it is first recorded.
//
// # Duration histograms (recorders)
//
// Each histogram's _count (Prometheus) or data point count
// (OpenTelemetry) is the number of reads, loads or writes with its
// labels: there is no separate counter of them. Their buckets are
// [DefaultBuckets] (50µs to 10s), unless [WithBuckets] says otherwise.
//
//	Prometheus                          OpenTelemetry               labels
//	cacheaside_read_duration_seconds    cacheaside.read.duration    result: local_hit, hit, miss, shared, error
//	cacheaside_load_duration_seconds    cacheaside.load.duration    result: ok, not_found, error, rejected
//	cacheaside_write_duration_seconds   cacheaside.write.duration   op: create, update, delete (UserService) or write (Aside); result: ok, error
//
// A read is one Get, or one ID of a batch read (each ID of a batch is
// recorded with the batch's duration). Its result is local_hit (answered
// by the local tier), hit (answered by the shared cache, a cached "not
// found" included), miss (this caller loaded it from the repository),
// shared (another caller's load answered it, in this process or another)
// or error. A load is one read of the repository: ok (found), not_found,
// error, or rejected by the repository's circuit breaker. A write's
// duration includes the cache's share of it and any wait for local tiers'
// acknowledgements.
//
// The read and load series of every result exist from the start, at 0; a
// write series appears at the first write of its op.
//
// # Snapshot counters and gauges
//
// A counter (Prometheus counter, OpenTelemetry observable counter) only
// goes up while the service lives and starts at 0 with it; a gauge is a
// value now. Each is a field of cacheaside.ServiceMetrics, whose
// documentation says more.
//
//	Prometheus                                  OpenTelemetry                        kind     unit          labels          ServiceMetrics
//	cacheaside_reads_total                      cacheaside.reads                     counter  {read}        result: local_hit, hit, miss, shared
//	                                                                                                        local_hit: LocalHits; hit: CacheHits - LocalHits; miss: CacheMisses; shared: SharedLoads
//	cacheaside_rejoins_total                    cacheaside.rejoins                   counter  {read}                        Rejoins
//	cacheaside_fail_safe_served_total           cacheaside.fail_safe.served          counter  {read}                        FailSafeServed
//	cacheaside_repository_loads_total           cacheaside.repository.loads          counter  {load}                        DatabaseLoads
//	cacheaside_repository_errors_total          cacheaside.repository.errors         counter  {error}                       DatabaseErrors
//	cacheaside_cache_errors_total               cacheaside.cache.errors              counter  {error}       op: read, fill, invalidate
//	                                                                                                        read: CacheErrors; fill: CacheWriteErrors; invalidate: CacheInvalidationErrors
//	cacheaside_cache_decode_errors_total        cacheaside.cache.decode_errors       counter  {entry}                       DecodeErrors
//	cacheaside_cache_timeouts_total             cacheaside.cache.timeouts            counter  {call}                        CacheTimeouts
//	cacheaside_cache_shards_unavailable         cacheaside.cache.shards_unavailable  gauge    {shard}                       CacheShardsUnavailable
//	cacheaside_cache_entries                    cacheaside.cache.entries             gauge    {entry}                       CacheSize (absent when the cache cannot count)
//	cacheaside_stale_fills_skipped_total        cacheaside.stale_fills_skipped       counter  {fill}                        StaleFillsSkipped
//	cacheaside_early_refreshes_total            cacheaside.early_refreshes           counter  {entry}                       EarlyRefreshes
//	cacheaside_writes_refused_total             cacheaside.writes_refused            counter  {write}                       WritesRefused
//	cacheaside_bloom_rejected_total             cacheaside.bloom_rejected            counter  {read}                        BloomRejected
//	cacheaside_lease_waits_total                cacheaside.lease.waits               counter  {wait}                        LeaseWaits
//	cacheaside_lease_wait_timeouts_total        cacheaside.lease.wait_timeouts       counter  {wait}                        LeaseWaitTimeouts
//	cacheaside_lease_refused_reloads_total      cacheaside.lease.refused_reloads     counter  {load}                        RefusedFillReloads
//	cacheaside_write_fills_total                cacheaside.write.fills               counter  {write}                       WriteFills
//	cacheaside_breaker_opens_total              cacheaside.breaker.opens             counter  {transition}  breaker: cache, repository
//	                                                                                                        cache: CacheBreakerOpens; repository: RepositoryBreakerOpens
//	cacheaside_breaker_rejected_calls_total     cacheaside.breaker.rejected_calls    counter  {call}        breaker: cache, repository
//	                                                                                                        cache: CacheCallsRejected; repository: RepositoryCallsRejected
//	cacheaside_repository_breaker_state         cacheaside.repository.breaker.state  gauge    1             state: closed, open, half-open
//	                                                                                                        RepositoryBreakerState: 1 for the state it is in, 0 for the others
//	cacheaside_invalidations_pending            cacheaside.invalidations.pending     gauge    {key}                         PendingInvalidations
//	cacheaside_invalidations_retries_total      cacheaside.invalidations.retries     counter  {retry}                       InvalidationRetries
//	cacheaside_invalidations_dropped_total      cacheaside.invalidations.dropped     counter  {key}                         InvalidationsDropped
//	cacheaside_outbox_drained_total             cacheaside.outbox.drained            counter  {record}                      OutboxDrained
//	cacheaside_local_misses_total               cacheaside.local.misses              counter  {read}                        LocalMisses
//	cacheaside_local_entries                    cacheaside.local.entries             gauge    {entry}                       LocalSize
//	cacheaside_bus_invalidations_total          cacheaside.bus.invalidations         counter  {message}                     BusInvalidations
//	cacheaside_bus_acks_total                   cacheaside.bus.acks                  counter  {message}                     BusAcks
//	cacheaside_writes_waited_total              cacheaside.writes.waited             counter  {write}                       WritesWaited
//	cacheaside_writes_wait_time_seconds_total   cacheaside.writes.wait_time          counter  s                             WriteWaitTime, in seconds
//	cacheaside_membership_state                 cacheaside.membership.state          gauge    1             state: serving, not_serving
//	                                                                                                        Membership: 1 for the standing it has, 0 for the other; both 0 without a local tier
//
// The series of cacheaside_reads_total sum to the reads with a valid ID
// (TotalRequests), each counted once: a local hit is not counted again as
// a hit. Some fields are not exported, because the monitoring system
// derives them better: TotalRequests (the sum above), HitRate and
// MissRate (ratios since the start; compute them from rates of
// cacheaside_reads_total), and AvgResponseTime, P50ResponseTime,
// P99ResponseTime and LoadTime (a moving average, percentiles and a mean
// since the start, which cannot be aggregated across processes; use a
// recorder's histograms).
//
// A field added to cacheaside.ServiceMetrics is one more row of the table
// in table.go, which both exporters read.
//
// # Concurrency and lifetime
//
// Nothing in this package starts a goroutine. A recorder's methods are
// safe for concurrent use, run on the service's request path and return
// at once; the snapshot exporters call the snapshot function on the
// goroutine that scrapes or collects. A PrometheusCollector lives as long
// as it is registered (prometheus.Registry.Unregister removes it); the
// callback of RegisterOTelSnapshot until its Registration is unregistered.
//
// A bad argument (an empty service name, buckets that are not positive
// and strictly increasing, a nil provider or snapshot function) is a
// programmer error: the option or constructor panics with a message that
// names it, as the options of cacheaside do.
package metrics
