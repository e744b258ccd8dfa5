package metrics

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/cacheaside/cacheaside"
)

// newProvider returns an SDK meter provider read by hand, shut down when
// the test ends.
func newProvider(t *testing.T) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		if err := mp.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return mp, reader
}

// collect reads every metric of this package's scope, by name.
func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	ms := make(map[string]metricdata.Metrics)
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != ScopeName {
			t.Errorf("scope %q, want %q", sm.Scope.Name, ScopeName)
		}
		for _, m := range sm.Metrics {
			ms[m.Name] = m
		}
	}
	return ms
}

// attrs is a set of string attributes from key, value pairs.
func attrs(kv ...string) attribute.Set {
	var kvs []attribute.KeyValue
	for i := 0; i+1 < len(kv); i += 2 {
		kvs = append(kvs, attribute.String(kv[i], kv[i+1]))
	}
	return attribute.NewSet(kvs...)
}

// histogram returns the data point of histogram name with exactly the
// attributes kv, failing the test if there is none.
func histogram(t *testing.T, ms map[string]metricdata.Metrics, name string, kv ...string) metricdata.HistogramDataPoint[float64] {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is a %T, want a float64 histogram", name, m.Data)
	}
	want := attrs(kv...)
	for _, dp := range h.DataPoints {
		if dp.Attributes.Equals(&want) {
			return dp
		}
	}
	t.Fatalf("%s has no data point with attributes %v", name, want.ToSlice())
	return metricdata.HistogramDataPoint[float64]{}
}

// observed returns the value of sum or gauge name with exactly the
// attributes kv, and whether there is one.
func observed(t *testing.T, ms map[string]metricdata.Metrics, name string, kv ...string) (float64, bool) {
	t.Helper()
	m, ok := ms[name]
	if !ok {
		return 0, false
	}
	want := attrs(kv...)
	find := func(set attribute.Set) bool { return set.Equals(&want) }
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		if !d.IsMonotonic {
			t.Errorf("%s is not monotonic", name)
		}
		for _, dp := range d.DataPoints {
			if find(dp.Attributes) {
				return float64(dp.Value), true
			}
		}
	case metricdata.Sum[float64]:
		if !d.IsMonotonic {
			t.Errorf("%s is not monotonic", name)
		}
		for _, dp := range d.DataPoints {
			if find(dp.Attributes) {
				return dp.Value, true
			}
		}
	case metricdata.Gauge[int64]:
		for _, dp := range d.DataPoints {
			if find(dp.Attributes) {
				return float64(dp.Value), true
			}
		}
	default:
		t.Fatalf("%s is a %T, want a sum or a gauge", name, m.Data)
	}
	return 0, false
}

// TestOTelRecorder_HistogramsByResult: after misses and hits, each
// histogram's data point per result counts exactly those, in seconds with
// the default buckets.
func TestOTelRecorder_HistogramsByResult(t *testing.T) {
	const misses, hits = 3, 5
	mp, reader := newProvider(t)
	rec, err := NewOTelRecorder(mp, WithService("users"))
	if err != nil {
		t.Fatal(err)
	}
	svc := newUsers(t, cacheaside.WithRecorder(rec))
	w := readMissesAndHits(t, svc, misses, hits)

	ms := collect(t, reader)
	for _, c := range []struct {
		name string
		kv   []string
		want int
	}{
		{"cacheaside.read.duration", []string{"cacheaside.result", "miss"}, w.misses},
		{"cacheaside.read.duration", []string{"cacheaside.result", "hit"}, w.hits},
		{"cacheaside.load.duration", []string{"cacheaside.result", "ok"}, w.found},
		{"cacheaside.load.duration", []string{"cacheaside.result", "not_found"}, w.absent},
		{"cacheaside.write.duration", []string{"cacheaside.operation", "create", "cacheaside.result", "ok"}, w.creates},
	} {
		kv := append([]string{"cacheaside.service", "users"}, c.kv...)
		dp := histogram(t, ms, c.name, kv...)
		if dp.Count != uint64(c.want) {
			t.Errorf("%s%v count = %d, want %d", c.name, kv, dp.Count, c.want)
		}
		if !slices.Equal(dp.Bounds, DefaultBuckets) {
			t.Errorf("%s bounds = %v, want DefaultBuckets", c.name, dp.Bounds)
		}
		if dp.Sum < 0 || dp.Sum > 10 {
			t.Errorf("%s%v sum = %v, want seconds", c.name, kv, dp.Sum)
		}
	}
	if dp := histogram(t, ms, "cacheaside.read.duration", "cacheaside.service", "users", "cacheaside.result", "miss"); dp.Sum <= 0 {
		t.Errorf("read.duration{result=miss} sum = %v, want > 0: a miss reads the repository", dp.Sum)
	}
	for _, name := range []string{"cacheaside.read.duration", "cacheaside.load.duration", "cacheaside.write.duration"} {
		if m := ms[name]; m.Unit != "s" || m.Description == "" {
			t.Errorf("%s: unit %q, description %q; want s and a description", name, m.Unit, m.Description)
		}
	}
	if n := len(ms["cacheaside.read.duration"].Data.(metricdata.Histogram[float64]).DataPoints); n != 2 {
		t.Errorf("cacheaside.read.duration has %d data points, want 2 (miss and hit)", n)
	}
}

// TestOTelRecorder_BucketsAndUnknownResults: WithBuckets sets the
// boundaries, and results and ops this package does not know get their
// own data points.
func TestOTelRecorder_BucketsAndUnknownResults(t *testing.T) {
	mp, reader := newProvider(t)
	rec, err := NewOTelRecorder(mp, WithBuckets(0.001, 0.01))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rec.RecordLoad(ctx, cacheaside.ResultOK, 5*time.Millisecond)
	rec.RecordRead(ctx, "early_refresh", time.Millisecond)
	rec.RecordLoad(ctx, "bloom_rejected", time.Millisecond)
	rec.RecordWrite(ctx, "upsert", cacheaside.ResultError, time.Millisecond)
	ms := collect(t, reader)
	dp := histogram(t, ms, "cacheaside.load.duration", "cacheaside.result", "ok")
	if !slices.Equal(dp.Bounds, []float64{0.001, 0.01}) || !slices.Equal(dp.BucketCounts, []uint64{0, 1, 0}) {
		t.Errorf("bounds %v counts %v, want [0.001 0.01] and [0 1 0]", dp.Bounds, dp.BucketCounts)
	}
	histogram(t, ms, "cacheaside.read.duration", "cacheaside.result", "early_refresh")
	histogram(t, ms, "cacheaside.load.duration", "cacheaside.result", "bloom_rejected")
	histogram(t, ms, "cacheaside.write.duration", "cacheaside.operation", "upsert", "cacheaside.result", "error")
}

// TestRegisterOTelSnapshot_ObservesAndUnregisters: the observable
// instruments report the snapshot at each collection, and nothing once
// the registration is undone.
func TestRegisterOTelSnapshot_ObservesAndUnregisters(t *testing.T) {
	const misses, hits = 4, 6
	mp, reader := newProvider(t)
	svc := newUsers(t)
	reg, err := RegisterOTelSnapshot(mp, svc.GetMetrics, WithService("users"))
	if err != nil {
		t.Fatal(err)
	}
	w := readMissesAndHits(t, svc, misses, hits)

	ms := collect(t, reader)
	for _, c := range []struct {
		name string
		kv   []string
		want float64
	}{
		{"cacheaside.reads", []string{"cacheaside.result", "miss"}, float64(w.misses)},
		{"cacheaside.reads", []string{"cacheaside.result", "hit"}, float64(w.hits)},
		{"cacheaside.reads", []string{"cacheaside.result", "shared"}, 0},
		{"cacheaside.repository.loads", nil, float64(w.found + w.absent)},
		{"cacheaside.cache.errors", []string{"cacheaside.operation", "fill"}, 0},
		{"cacheaside.cache.entries", nil, float64(w.found + w.absent)},
		{"cacheaside.repository.breaker.state", []string{"cacheaside.state", "closed"}, 1},
		{"cacheaside.repository.breaker.state", []string{"cacheaside.state", "open"}, 0},
		{"cacheaside.writes.wait_time", nil, 0},
	} {
		kv := append([]string{"cacheaside.service", "users"}, c.kv...)
		got, ok := observed(t, ms, c.name, kv...)
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (found: %v), want %v", c.name, kv, got, ok, c.want)
		}
	}
	for _, c := range []struct{ name, unit string }{
		{"cacheaside.reads", "{read}"}, {"cacheaside.writes.wait_time", "s"}, {"cacheaside.repository.breaker.state", "1"},
	} {
		if m := ms[c.name]; m.Unit != c.unit || m.Description == "" {
			t.Errorf("%s: unit %q, description %q; want %s and a description", c.name, m.Unit, m.Description, c.unit)
		}
	}
	if len(ms) != len(families) {
		t.Errorf("%d metrics collected, want %d (one per family)", len(ms), len(families))
	}

	if err := reg.Unregister(); err != nil {
		t.Fatalf("Unregister: %v", err)
	}
	if _, ok := observed(t, collect(t, reader), "cacheaside.reads", "cacheaside.service", "users", "cacheaside.result", "miss"); ok {
		t.Error("cacheaside.reads is still observed after Unregister")
	}
}

// TestRegisterOTelSnapshot_Values: a duration is observed in seconds as a
// float, states as 1 and 0, and a size that is not known not at all.
func TestRegisterOTelSnapshot_Values(t *testing.T) {
	mp, reader := newProvider(t)
	m := cacheaside.ServiceMetrics{
		CacheHits: 10, LocalHits: 4,
		WriteWaitTime:          1500 * time.Millisecond,
		RepositoryBreakerState: "open",
		Membership:             "serving",
		CacheSize:              -1,
	}
	reg, err := RegisterOTelSnapshot(mp, func() cacheaside.ServiceMetrics { return m })
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	ms := collect(t, reader)
	for _, c := range []struct {
		name string
		kv   []string
		want float64
	}{
		{"cacheaside.reads", []string{"cacheaside.result", "hit"}, 6},
		{"cacheaside.reads", []string{"cacheaside.result", "local_hit"}, 4},
		{"cacheaside.writes.wait_time", nil, 1.5},
		{"cacheaside.repository.breaker.state", []string{"cacheaside.state", "open"}, 1},
		{"cacheaside.repository.breaker.state", []string{"cacheaside.state", "closed"}, 0},
		{"cacheaside.membership.state", []string{"cacheaside.state", "serving"}, 1},
	} {
		if got, ok := observed(t, ms, c.name, c.kv...); !ok || got != c.want {
			t.Errorf("%s%v = %v (found: %v), want %v", c.name, c.kv, got, ok, c.want)
		}
	}
	if _, ok := ms["cacheaside.writes.wait_time"].Data.(metricdata.Sum[float64]); !ok {
		t.Errorf("cacheaside.writes.wait_time is a %T, want a float64 sum", ms["cacheaside.writes.wait_time"].Data)
	}
	if m, ok := ms["cacheaside.cache.entries"]; ok && len(m.Data.(metricdata.Gauge[int64]).DataPoints) > 0 {
		t.Errorf("cacheaside.cache.entries observed for CacheSize -1: %v", m.Data)
	}
}

// TestRegisterOTelSnapshot_TwoServices: two services observed through one
// provider each get their own data points.
func TestRegisterOTelSnapshot_TwoServices(t *testing.T) {
	mp, reader := newProvider(t)
	for name, hits := range map[string]int64{"users": 3, "admins": 5} {
		reg, err := RegisterOTelSnapshot(mp, func() cacheaside.ServiceMetrics {
			return cacheaside.ServiceMetrics{CacheHits: hits, RepositoryBreakerState: "closed"}
		}, WithService(name))
		if err != nil {
			t.Fatalf("RegisterOTelSnapshot(%s): %v", name, err)
		}
		defer reg.Unregister()
	}
	ms := collect(t, reader)
	for name, want := range map[string]float64{"users": 3, "admins": 5} {
		if got, ok := observed(t, ms, "cacheaside.reads", "cacheaside.service", name, "cacheaside.result", "hit"); !ok || got != want {
			t.Errorf("cacheaside.reads{service=%s,result=hit} = %v (found: %v), want %v", name, got, ok, want)
		}
	}
}

// TestRegisterOTelSnapshot_NilPanics: nil arguments are programmer
// errors, said at once.
func TestRegisterOTelSnapshot_NilPanics(t *testing.T) {
	mp, _ := newProvider(t)
	wantPanic(t, "cacheaside/metrics: RegisterOTelSnapshot(nil): the meter provider must not be nil", func() {
		_, _ = RegisterOTelSnapshot(nil, func() cacheaside.ServiceMetrics { return cacheaside.ServiceMetrics{} })
	})
	wantPanic(t, "cacheaside/metrics: RegisterOTelSnapshot(nil): the snapshot function must not be nil", func() {
		_, _ = RegisterOTelSnapshot(mp, nil)
	})
}
