package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cacheaside/cacheaside"
)

// The results a read and a load can have, whose histogram series a
// PrometheusRecorder creates up front, so that they are exported (as 0)
// before the first read or load with that result.
var (
	readResults = []cacheaside.Result{
		cacheaside.ResultLocalHit, cacheaside.ResultHit, cacheaside.ResultMiss,
		cacheaside.ResultShared, cacheaside.ResultError,
	}
	loadResults = []cacheaside.Result{
		cacheaside.ResultOK, cacheaside.ResultNotFound, cacheaside.ResultError,
		cacheaside.ResultRejected,
	}
)

// A PrometheusRecorder is a cacheaside.Recorder that keeps a Prometheus
// histogram of the durations of reads, loads and writes, by result:
//
//	cacheaside_read_duration_seconds{result}
//	cacheaside_load_duration_seconds{result}
//	cacheaside_write_duration_seconds{op,result}
//
// Each histogram's _count is the number of reads, loads or writes with
// that result, so there is no separate counter of them. The read and load
// series of every result exist from the start, at 0; a write series
// appears at the first write of its op.
//
// It is a prometheus.Collector: register it, and give it to the service
// with cacheaside.WithRecorder. Its methods are safe for concurrent use;
// once a series exists, recording in it does not allocate. They do not
// use the caller's context (no exemplars).
type PrometheusRecorder struct {
	read, load, write *prometheus.HistogramVec
	// reads and loads hold the observer of each known result, so that
	// the request path does not hash label values.
	reads, loads map[cacheaside.Result]prometheus.Observer
}

var (
	_ cacheaside.Recorder  = (*PrometheusRecorder)(nil)
	_ prometheus.Collector = (*PrometheusRecorder)(nil)
)

// NewPrometheusRecorder returns a recorder whose histograms have the
// buckets of WithBuckets (DefaultBuckets by default) and, with
// WithService, the label service.
func NewPrometheusRecorder(opts ...Option) *PrometheusRecorder {
	c := newConfig(opts)
	hist := func(what, help string, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace:   "cacheaside",
			Name:        what + "_duration_seconds",
			Help:        help,
			ConstLabels: c.constLabels(),
			Buckets:     c.buckets,
		}, labels)
	}
	r := &PrometheusRecorder{
		read: hist("read", "Duration of reads (one per Get, or per ID of a batch read, which all take the batch's time), by result: local_hit, hit, miss, shared or error.", "result"),
		load: hist("load", "Duration of reads of the repository, by result: ok, not_found, error or rejected (by its circuit breaker).", "result"),
		write: hist("write", "Duration of writes, cache invalidation included, by op (create, update, delete; write for an Aside) and result: ok or error.",
			"op", "result"),
		reads: make(map[cacheaside.Result]prometheus.Observer, len(readResults)),
		loads: make(map[cacheaside.Result]prometheus.Observer, len(loadResults)),
	}
	for _, res := range readResults {
		r.reads[res] = r.read.WithLabelValues(string(res))
	}
	for _, res := range loadResults {
		r.loads[res] = r.load.WithLabelValues(string(res))
	}
	return r
}

// RecordRead observes d in cacheaside_read_duration_seconds{result}.
func (r *PrometheusRecorder) RecordRead(_ context.Context, result cacheaside.Result, d time.Duration) {
	observe(r.read, r.reads, result, d)
}

// RecordLoad observes d in cacheaside_load_duration_seconds{result}.
func (r *PrometheusRecorder) RecordLoad(_ context.Context, result cacheaside.Result, d time.Duration) {
	observe(r.load, r.loads, result, d)
}

// RecordWrite observes d in cacheaside_write_duration_seconds{op,result}.
func (r *PrometheusRecorder) RecordWrite(_ context.Context, op string, result cacheaside.Result, d time.Duration) {
	r.write.WithLabelValues(op, string(result)).Observe(d.Seconds())
}

// observe observes d in the series of result: its observer in known, or
// a new series of vec for a result this package does not know.
func observe(vec *prometheus.HistogramVec, known map[cacheaside.Result]prometheus.Observer, result cacheaside.Result, d time.Duration) {
	o, ok := known[result]
	if !ok {
		o = vec.WithLabelValues(string(result))
	}
	o.Observe(d.Seconds())
}

// Describe sends the descriptors of the three histograms; it implements
// prometheus.Collector.
func (r *PrometheusRecorder) Describe(ch chan<- *prometheus.Desc) {
	r.read.Describe(ch)
	r.load.Describe(ch)
	r.write.Describe(ch)
}

// Collect sends the series of the three histograms; it implements
// prometheus.Collector.
func (r *PrometheusRecorder) Collect(ch chan<- prometheus.Metric) {
	r.read.Collect(ch)
	r.load.Collect(ch)
	r.write.Collect(ch)
}

// A PrometheusCollector is a prometheus.Collector that exports, at each
// scrape, a snapshot of a service's counters (cacheaside.ServiceMetrics)
// as Prometheus counters and gauges; the package documentation lists
// them. Register it in a prometheus.Registry; it keeps no state of its
// own and starts no goroutine.
type PrometheusCollector struct {
	snapshot func() cacheaside.ServiceMetrics
	descs    []*prometheus.Desc // one per family, in the order of families
}

var _ prometheus.Collector = (*PrometheusCollector)(nil)

// NewPrometheusCollector returns a collector that calls snapshot at each
// scrape: the service's GetMetrics method for a UserService, or Metrics
// for an Aside. With WithService, every series has the label service.
// It panics if snapshot is nil.
func NewPrometheusCollector(snapshot func() cacheaside.ServiceMetrics, opts ...Option) *PrometheusCollector {
	if snapshot == nil {
		badOption("NewPrometheusCollector", "nil", "the snapshot function must not be nil")
	}
	c := newConfig(opts)
	col := &PrometheusCollector{snapshot: snapshot, descs: make([]*prometheus.Desc, len(families))}
	for i, f := range families {
		var labels []string
		if f.label != "" {
			labels = []string{f.label}
		}
		col.descs[i] = prometheus.NewDesc(promName(f), f.help, labels, c.constLabels())
	}
	return col
}

// Describe sends the descriptor of every metric of the snapshot; it
// implements prometheus.Collector.
func (c *PrometheusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect takes a snapshot and sends its series; it implements
// prometheus.Collector.
func (c *PrometheusCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.snapshot()
	for i, f := range families {
		vt := prometheus.CounterValue
		if f.kind == gauge {
			vt = prometheus.GaugeValue
		}
		for _, s := range f.series {
			v := s.get(&m)
			if v < 0 {
				continue // not known: CacheSize is -1 when the cache cannot count
			}
			if f.label == "" {
				ch <- prometheus.MustNewConstMetric(c.descs[i], vt, v)
			} else {
				ch <- prometheus.MustNewConstMetric(c.descs[i], vt, v, s.value)
			}
		}
	}
}

// constLabels are the labels every series of a Prometheus exporter has.
func (c config) constLabels() prometheus.Labels {
	if c.service == "" {
		return nil
	}
	return prometheus.Labels{"service": c.service}
}
