package metrics

import (
	"fmt"
	"math"
	"slices"
)

// DefaultBuckets are the upper bounds, in seconds, of the buckets of the
// duration histograms, unless WithBuckets says otherwise: 50µs, 100µs,
// 250µs, 500µs, 1ms, 2.5ms, 5ms, 10ms, 25ms, 50ms, 100ms, 250ms, 500ms,
// 1s, 2.5s, 5s and 10s (and +Inf, which Prometheus adds and OpenTelemetry
// implies).
//
// They follow a 1-2.5-5 progression per decade across the durations a
// cache sees: a read answered by a local tier takes microseconds and lands
// in the first bucket; a read answered by Redis on the same network takes
// 100µs to 1ms; a load from a database takes milliseconds to hundreds of
// milliseconds; and 10s is cacheaside.DefaultLoadTimeout, the longest a
// shared load runs by default. The default cache time box
// (cacheaside.DefaultCacheTimeout, 100ms) is a bound, so reads held up by a
// failing cache pile up in the 100ms bucket rather than past it.
var DefaultBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// An Option configures the recorders and the snapshot exporters of this
// package: NewPrometheusRecorder, NewPrometheusCollector, NewOTelRecorder
// and RegisterOTelSnapshot. Every constructor accepts every Option; one
// that does not apply to it (WithBuckets for a snapshot exporter) is
// ignored.
//
// Like the options of cacheaside, every Option checks its value when it is
// called and panics, with a message that names the option, when the value
// is out of range.
type Option func(*config)

// config is what the options set.
type config struct {
	service string    // "": no service label
	buckets []float64 // histogram bounds, in seconds
}

func newConfig(opts []Option) config {
	c := config{buckets: slices.Clone(DefaultBuckets)}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// WithService names the service whose metrics are exported: every series
// gets the label service="name" in Prometheus and the attribute
// cacheaside.service="name" in OpenTelemetry. It is what lets two services
// share one Prometheus registry: without it, the second one's metrics
// collide with the first one's and its registration fails. Give the
// recorder and the snapshot exporter of one service the same name. It
// panics if name is empty.
//
// With Prometheus, prometheus.WrapRegistererWith(prometheus.Labels{"service":
// name}, reg) has the same effect. With OpenTelemetry, the resource's
// service.name tells processes apart; cacheaside.service tells apart the
// services of one process.
func WithService(name string) Option {
	if name == "" {
		badOption("WithService", fmt.Sprintf("%q", name), "the name must not be empty")
	}
	return func(c *config) { c.service = name }
}

// WithBuckets sets the upper bounds, in seconds, of the buckets of the
// duration histograms of a recorder (the default is DefaultBuckets). It
// panics unless there is at least one bound and the bounds are finite,
// positive and strictly increasing; the +Inf bucket is implied.
func WithBuckets(bounds ...float64) Option {
	if len(bounds) == 0 {
		badOption("WithBuckets", bounds, "at least one bound is needed")
	}
	for i, b := range bounds {
		switch {
		case math.IsNaN(b) || math.IsInf(b, 0):
			badOption("WithBuckets", bounds, "the bounds must be finite")
		case b <= 0:
			badOption("WithBuckets", bounds, "the bounds must be positive")
		case i > 0 && b <= bounds[i-1]:
			badOption("WithBuckets", bounds, "the bounds must be strictly increasing")
		}
	}
	bounds = slices.Clone(bounds) // the caller keeps its slice
	return func(c *config) { c.buckets = bounds }
}

// prefix starts every panic message of this package.
const prefix = "cacheaside/metrics: "

// badOption panics with a message that names the option and the value.
func badOption(option string, value any, want string) {
	panic(fmt.Sprintf("%s%s(%v): %s", prefix, option, value, want))
}
