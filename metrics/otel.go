package metrics

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/cacheaside/cacheaside"
)

// ScopeName is the instrumentation scope of the OpenTelemetry instruments
// of this package: the name of the Meter they are created with, by which
// an SDK's views can select them.
const ScopeName = "github.com/cacheaside/cacheaside/metrics"

// writeOps are the ops a write is recorded with: a UserService's and an
// Aside's.
var writeOps = []string{"create", "update", "delete", "write"}

// writeKey is an op and a result, which a write is recorded with.
type writeKey struct {
	op     string
	result cacheaside.Result
}

// An OTelRecorder is a cacheaside.Recorder that records the durations of
// reads, loads and writes, in seconds, in three OpenTelemetry
// Float64Histogram instruments:
//
//	cacheaside.read.duration   attribute cacheaside.result
//	cacheaside.load.duration   attribute cacheaside.result
//	cacheaside.write.duration  attributes cacheaside.operation, cacheaside.result
//
// with unit "s" and, with WithService, the attribute cacheaside.service.
// The count of each histogram data point is the number of reads, loads or
// writes with its attributes.
//
// Give it to the service with cacheaside.WithRecorder. Its methods are
// safe for concurrent use; they pass the caller's context on to the
// instruments (for exemplars) and build no attribute set for the results
// and ops cacheaside defines.
type OTelRecorder struct {
	read, load, write metric.Float64Histogram
	service           []attribute.KeyValue // the attributes every measurement has
	// reads, loads and writes hold the options (the attribute set) of
	// each known result, and op.
	reads, loads map[cacheaside.Result][]metric.RecordOption
	writes       map[writeKey][]metric.RecordOption
}

var _ cacheaside.Recorder = (*OTelRecorder)(nil)

// NewOTelRecorder creates the recorder's instruments with the Meter of
// provider named ScopeName; their explicit bucket boundaries are those of
// WithBuckets (DefaultBuckets by default), as advice that the SDK's views
// may override. It returns an error if provider refuses an instrument, and
// panics if provider is nil.
//
// The library code only needs the OpenTelemetry API: pass the global
// provider (otel.GetMeterProvider()) or your SDK's.
func NewOTelRecorder(provider metric.MeterProvider, opts ...Option) (*OTelRecorder, error) {
	if provider == nil {
		badOption("NewOTelRecorder", "nil", "the meter provider must not be nil")
	}
	c := newConfig(opts)
	meter := provider.Meter(ScopeName)
	hist := func(name, desc string) (metric.Float64Histogram, error) {
		h, err := meter.Float64Histogram(name,
			metric.WithUnit("s"),
			metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(c.buckets...))
		if err != nil {
			err = fmt.Errorf("%sinstrument %s: %w", prefix, name, err)
		}
		return h, err
	}
	r := &OTelRecorder{service: c.otelAttrs()}
	var err1, err2, err3 error
	r.read, err1 = hist("cacheaside.read.duration", "Duration of reads (one per Get, or per ID of a batch read, which all take the batch's time), by result: local_hit, hit, miss, shared or error.")
	r.load, err2 = hist("cacheaside.load.duration", "Duration of reads of the repository, by result: ok, not_found, error or rejected (by its circuit breaker).")
	r.write, err3 = hist("cacheaside.write.duration", "Duration of writes, cache invalidation included, by operation (create, update, delete; write for an Aside) and result: ok or error.")
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, err
	}
	r.reads = make(map[cacheaside.Result][]metric.RecordOption, len(readResults))
	for _, res := range readResults {
		r.reads[res] = r.options(res, "")
	}
	r.loads = make(map[cacheaside.Result][]metric.RecordOption, len(loadResults))
	for _, res := range loadResults {
		r.loads[res] = r.options(res, "")
	}
	r.writes = make(map[writeKey][]metric.RecordOption, 2*len(writeOps))
	for _, op := range writeOps {
		for _, res := range []cacheaside.Result{cacheaside.ResultOK, cacheaside.ResultError} {
			r.writes[writeKey{op, res}] = r.options(res, op)
		}
	}
	return r, nil
}

// options are the record options of a measurement with result and, unless
// it is "", op.
func (r *OTelRecorder) options(result cacheaside.Result, op string) []metric.RecordOption {
	kvs := append(make([]attribute.KeyValue, 0, len(r.service)+2), r.service...)
	kvs = append(kvs, attribute.String(otelKey("result"), string(result)))
	if op != "" {
		kvs = append(kvs, attribute.String(otelKey("op"), op))
	}
	return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(kvs...))}
}

// RecordRead records d, in seconds, in cacheaside.read.duration.
func (r *OTelRecorder) RecordRead(ctx context.Context, result cacheaside.Result, d time.Duration) {
	opts, ok := r.reads[result]
	if !ok {
		opts = r.options(result, "")
	}
	r.read.Record(ctx, d.Seconds(), opts...)
}

// RecordLoad records d, in seconds, in cacheaside.load.duration.
func (r *OTelRecorder) RecordLoad(ctx context.Context, result cacheaside.Result, d time.Duration) {
	opts, ok := r.loads[result]
	if !ok {
		opts = r.options(result, "")
	}
	r.load.Record(ctx, d.Seconds(), opts...)
}

// RecordWrite records d, in seconds, in cacheaside.write.duration.
func (r *OTelRecorder) RecordWrite(ctx context.Context, op string, result cacheaside.Result, d time.Duration) {
	opts, ok := r.writes[writeKey{op, result}]
	if !ok {
		opts = r.options(result, op)
	}
	r.write.Record(ctx, d.Seconds(), opts...)
}

// RegisterOTelSnapshot creates, with the Meter of provider named
// ScopeName, an asynchronous instrument for each metric of the snapshot
// (the package documentation lists them: observable counters for
// counters, observable gauges for gauges), and registers one callback that
// calls snapshot and observes them all at each collection. snapshot is
// the service's GetMetrics method for a UserService, or Metrics for an
// Aside. With WithService, every measurement has the attribute
// cacheaside.service.
//
// The callback runs when the SDK's reader collects, on the reader's
// goroutine; none is started here. Unregister the returned Registration to
// stop the observations (when the service is closed, say). It returns an
// error if provider refuses an instrument or the callback, and panics if
// provider or snapshot is nil.
func RegisterOTelSnapshot(provider metric.MeterProvider, snapshot func() cacheaside.ServiceMetrics, opts ...Option) (metric.Registration, error) {
	if provider == nil {
		badOption("RegisterOTelSnapshot", "nil", "the meter provider must not be nil")
	}
	if snapshot == nil {
		badOption("RegisterOTelSnapshot", "nil", "the snapshot function must not be nil")
	}
	c := newConfig(opts)
	meter := provider.Meter(ScopeName)
	service := c.otelAttrs()

	type otelSeries struct {
		get  func(m *snap) float64
		opts []metric.ObserveOption
	}
	type instrument struct {
		f64    metric.Float64Observable // for values in seconds
		i64    metric.Int64Observable   // for the others, which are whole
		series []otelSeries
	}
	insts := make([]instrument, len(families))
	observables := make([]metric.Observable, len(families))
	var errs []error
	for i, f := range families {
		name := otelName(f)
		in := &insts[i]
		var err error
		switch {
		case f.unit == "s" && f.kind == counter:
			in.f64, err = meter.Float64ObservableCounter(name, metric.WithUnit(f.unit), metric.WithDescription(f.help))
		case f.unit == "s":
			in.f64, err = meter.Float64ObservableGauge(name, metric.WithUnit(f.unit), metric.WithDescription(f.help))
		case f.kind == counter:
			in.i64, err = meter.Int64ObservableCounter(name, metric.WithUnit(f.unit), metric.WithDescription(f.help))
		default:
			in.i64, err = meter.Int64ObservableGauge(name, metric.WithUnit(f.unit), metric.WithDescription(f.help))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%sinstrument %s: %w", prefix, name, err))
			continue
		}
		if in.f64 != nil {
			observables[i] = in.f64
		} else {
			observables[i] = in.i64
		}
		for _, s := range f.series {
			kvs := append([]attribute.KeyValue(nil), service...)
			if f.label != "" {
				kvs = append(kvs, attribute.String(otelKey(f.label), s.value))
			}
			in.series = append(in.series, otelSeries{s.get, []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(kvs...))}})
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	reg, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		m := snapshot()
		for _, in := range insts {
			for _, s := range in.series {
				v := s.get(&m)
				switch {
				case v < 0:
					// Not known: CacheSize is -1 when the cache cannot count.
				case in.f64 != nil:
					o.ObserveFloat64(in.f64, v, s.opts...)
				default:
					o.ObserveInt64(in.i64, int64(v), s.opts...)
				}
			}
		}
		return nil
	}, observables...)
	if err != nil {
		return nil, fmt.Errorf("%sregister callback: %w", prefix, err)
	}
	return reg, nil
}

// otelAttrs are the attributes every measurement of an OpenTelemetry
// exporter has.
func (c config) otelAttrs() []attribute.KeyValue {
	if c.service == "" {
		return nil
	}
	return []attribute.KeyValue{attribute.String(otelKey("service"), c.service)}
}
