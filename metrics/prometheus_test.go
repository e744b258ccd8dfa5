package metrics

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cacheaside/cacheaside"
)

// scrape GETs url and parses the text exposition it answers.
func scrape(t *testing.T, client *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("GET %s: Content-Type %q, want the text format", url, ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return mfs
}

// gather gathers reg.
func gather(t *testing.T, reg prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	got, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	mfs := make(map[string]*dto.MetricFamily, len(got))
	for _, mf := range got {
		mfs[mf.GetName()] = mf
	}
	return mfs
}

// seriesOf returns the series of family name whose labels include labels
// (name=value pairs), and fails the test unless there is exactly one.
func seriesOf(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
	t.Helper()
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	var found []*dto.Metric
	for _, m := range mf.GetMetric() {
		if hasLabels(m, labels) {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d series, want 1", name, labels, len(found))
	}
	return found[0]
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
			return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
		}) {
			return false
		}
	}
	return true
}

// value is the value of a counter or gauge series, or the count of a
// histogram series.
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	m := seriesOf(t, mfs, name, labels...)
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	t.Fatalf("%s%v: neither a counter, a gauge nor a histogram", name, labels)
	return 0
}

// TestPrometheus_ScrapeOverHTTP: after misses and hits, a scrape of
// /metrics over HTTP has exactly those counts, in the collector's
// counters and in the recorder's histograms, every series labelled with
// the service.
func TestPrometheus_ScrapeOverHTTP(t *testing.T) {
	const misses, hits = 4, 7
	rec := NewPrometheusRecorder(WithService("users"))
	svc := newUsers(t, cacheaside.WithRecorder(rec))
	reg := prometheus.NewRegistry()
	reg.MustRegister(rec, NewPrometheusCollector(svc.GetMetrics, WithService("users")))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	// Before any read, the read and load series exist at 0.
	mfs := scrape(t, srv.Client(), srv.URL+"/metrics")
	for _, r := range readResults {
		if got := value(t, mfs, "cacheaside_read_duration_seconds", "result", string(r)); got != 0 {
			t.Errorf("before any read, read_duration{result=%s} count = %v, want 0", r, got)
		}
	}
	if got := value(t, mfs, "cacheaside_reads_total", "result", "miss"); got != 0 {
		t.Errorf("before any read, reads_total{result=miss} = %v, want 0", got)
	}

	w := readMissesAndHits(t, svc, misses, hits)
	mfs = scrape(t, srv.Client(), srv.URL+"/metrics")
	for _, c := range []struct {
		name   string
		labels []string
		want   int
	}{
		{"cacheaside_reads_total", []string{"result", "miss"}, w.misses},
		{"cacheaside_reads_total", []string{"result", "hit"}, w.hits},
		{"cacheaside_reads_total", []string{"result", "shared"}, 0},
		{"cacheaside_reads_total", []string{"result", "local_hit"}, 0},
		{"cacheaside_repository_loads_total", nil, w.found + w.absent},
		{"cacheaside_repository_errors_total", nil, 0},
		{"cacheaside_cache_errors_total", []string{"op", "read"}, 0},
		{"cacheaside_cache_entries", nil, w.found + w.absent}, // each user, and the cached "not found"
		{"cacheaside_repository_breaker_state", []string{"state", "closed"}, 1},
		{"cacheaside_repository_breaker_state", []string{"state", "open"}, 0},
		{"cacheaside_read_duration_seconds", []string{"result", "miss"}, w.misses},
		{"cacheaside_read_duration_seconds", []string{"result", "hit"}, w.hits},
		{"cacheaside_read_duration_seconds", []string{"result", "error"}, 0},
		{"cacheaside_load_duration_seconds", []string{"result", "ok"}, w.found},
		{"cacheaside_load_duration_seconds", []string{"result", "not_found"}, w.absent},
		{"cacheaside_write_duration_seconds", []string{"op", "create", "result", "ok"}, w.creates},
	} {
		labels := append([]string{"service", "users"}, c.labels...)
		if got := value(t, mfs, c.name, labels...); got != float64(c.want) {
			t.Errorf("%s%v = %v, want %d", c.name, labels, got, c.want)
		}
	}

	// Every series says whose it is, and the histograms have the
	// default buckets.
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "cacheaside_") {
			continue // promhttp's own, with HandlerOpts.Registry
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, []string{"service", "users"}) {
				t.Errorf("%s%v has no label service=users", name, m.GetLabel())
			}
		}
	}
	h := seriesOf(t, mfs, "cacheaside_read_duration_seconds", "result", "hit").GetHistogram()
	var bounds []float64
	for _, b := range h.GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
	}
	bounds = slices.DeleteFunc(bounds, func(b float64) bool { return math.IsInf(b, 1) }) // the text format has it, a registry leaves it out
	if !slices.Equal(bounds, DefaultBuckets) {
		t.Errorf("read histogram bounds = %v, want %v", bounds, DefaultBuckets)
	}
	// A read by the local tier never happened, so a read's sum is the time
	// of real calls: positive for misses.
	if s := seriesOf(t, mfs, "cacheaside_read_duration_seconds", "result", "miss").GetHistogram().GetSampleSum(); s <= 0 {
		t.Errorf("read_duration{result=miss} sum = %v, want > 0", s)
	}
}

// TestPrometheus_Lint: promlint finds nothing to say about either
// collector, fresh or after reads and writes of every op.
func TestPrometheus_Lint(t *testing.T) {
	for _, service := range []string{"", "users"} {
		var opts []Option
		if service != "" {
			opts = append(opts, WithService(service))
		}
		rec := NewPrometheusRecorder(opts...)
		svc := newUsers(t, cacheaside.WithRecorder(rec))
		col := NewPrometheusCollector(svc.GetMetrics, opts...)
		lint := func(when string) {
			t.Helper()
			for name, c := range map[string]prometheus.Collector{"recorder": rec, "collector": col} {
				problems, err := testutil.CollectAndLint(c)
				if err != nil {
					t.Fatalf("service %q, %s, %s: CollectAndLint: %v", service, when, name, err)
				}
				for _, p := range problems {
					t.Errorf("service %q, %s, %s: %s: %s", service, when, name, p.Metric, p.Text)
				}
			}
		}
		lint("fresh")

		readMissesAndHits(t, svc, 2, 1)
		ctx := context.Background()
		u := &cacheaside.User{Name: "Lin", Email: "lin@example.com"}
		if err := svc.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
		u.Name = "Lint"
		if err := svc.UpdateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
		if err := svc.DeleteUser(ctx, u.ID); err != nil {
			t.Fatal(err)
		}
		if err := svc.DeleteUser(ctx, u.ID); err == nil {
			t.Fatal("deleting a deleted user succeeded")
		}
		rec.RecordRead(ctx, "a_result_to_come", time.Millisecond)
		lint("after reads and writes")

		// CollectAndLint checks each collector alone; the registry of a
		// program has both.
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(rec, col)
		problems, err := testutil.GatherAndLint(reg)
		if err != nil {
			t.Fatalf("GatherAndLint: %v", err)
		}
		for _, p := range problems {
			t.Errorf("service %q, registry: %s: %s", service, p.Metric, p.Text)
		}
		if got := value(t, gather(t, reg), "cacheaside_write_duration_seconds", "op", "delete", "result", "error"); got != 1 {
			t.Errorf("write_duration{op=delete,result=error} count = %v, want 1", got)
		}
	}
}

// TestPrometheus_TwoServicesOneRegistry: the recorders and collectors of
// two services with different names register side by side in one
// registry, and each service's series count its own reads only.
func TestPrometheus_TwoServicesOneRegistry(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	svcs := make(map[string]*cacheaside.UserService)
	for _, name := range []string{"users", "admins"} {
		rec := NewPrometheusRecorder(WithService(name))
		svc := newUsers(t, cacheaside.WithRecorder(rec))
		for _, c := range []prometheus.Collector{rec, NewPrometheusCollector(svc.GetMetrics, WithService(name))} {
			if err := reg.Register(c); err != nil {
				t.Fatalf("Register(%s): %v", name, err)
			}
		}
		svcs[name] = svc
	}
	readMissesAndHits(t, svcs["users"], 3, 2)
	readMissesAndHits(t, svcs["admins"], 2, 5)

	mfs := gather(t, reg)
	for _, c := range []struct {
		service      string
		misses, hits float64
	}{{"users", 3, 2}, {"admins", 2, 5}} {
		if got := value(t, mfs, "cacheaside_reads_total", "service", c.service, "result", "miss"); got != c.misses {
			t.Errorf("reads_total{service=%s,result=miss} = %v, want %v", c.service, got, c.misses)
		}
		if got := value(t, mfs, "cacheaside_read_duration_seconds", "service", c.service, "result", "hit"); got != c.hits {
			t.Errorf("read_duration{service=%s,result=hit} count = %v, want %v", c.service, got, c.hits)
		}
	}
	if n := len(mfs["cacheaside_reads_total"].GetMetric()); n != 2*4 {
		t.Errorf("reads_total has %d series, want 8 (4 results of 2 services)", n)
	}
}

// TestPrometheus_SameNameCollides: two collectors with the same name (or
// none) cannot share a registry: the second registration fails, as the
// documentation of WithService says, rather than exporting a mix.
func TestPrometheus_SameNameCollides(t *testing.T) {
	snapshot := func() cacheaside.ServiceMetrics { return cacheaside.ServiceMetrics{} }
	for _, opts := range [][]Option{nil, {WithService("users")}} {
		for name, newC := range map[string]func() prometheus.Collector{
			"recorder":  func() prometheus.Collector { return NewPrometheusRecorder(opts...) },
			"collector": func() prometheus.Collector { return NewPrometheusCollector(snapshot, opts...) },
		} {
			reg := prometheus.NewRegistry()
			reg.MustRegister(newC())
			var are prometheus.AlreadyRegisteredError
			if err := reg.Register(newC()); !errors.As(err, &are) {
				t.Errorf("%s registered twice with options %d: err = %v, want an AlreadyRegisteredError", name, len(opts), err)
			}
		}
	}
}

// TestPrometheusCollector_Snapshot: each kind of row is exported as it
// should be: a counter's value, a duration in seconds, an enum gauge with
// 1 for the current state only, and no series for a size not known.
func TestPrometheusCollector_Snapshot(t *testing.T) {
	m := cacheaside.ServiceMetrics{
		CacheHits: 10, LocalHits: 4, CacheMisses: 3, SharedLoads: 2,
		CacheWriteErrors:       5,
		WriteWaitTime:          1500 * time.Millisecond,
		RepositoryBreakerState: "half-open",
		Membership:             "not serving (waiting for its lease)",
		CacheSize:              -1,
		PendingInvalidations:   6,
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewPrometheusCollector(func() cacheaside.ServiceMetrics { return m }))
	mfs := gather(t, reg)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"cacheaside_reads_total", []string{"result", "local_hit"}, 4},
		{"cacheaside_reads_total", []string{"result", "hit"}, 6}, // CacheHits counts local hits too
		{"cacheaside_reads_total", []string{"result", "miss"}, 3},
		{"cacheaside_reads_total", []string{"result", "shared"}, 2},
		{"cacheaside_cache_errors_total", []string{"op", "fill"}, 5},
		{"cacheaside_cache_errors_total", []string{"op", "read"}, 0},
		{"cacheaside_writes_wait_time_seconds_total", nil, 1.5},
		{"cacheaside_repository_breaker_state", []string{"state", "half-open"}, 1},
		{"cacheaside_repository_breaker_state", []string{"state", "closed"}, 0},
		{"cacheaside_repository_breaker_state", []string{"state", "open"}, 0},
		{"cacheaside_membership_state", []string{"state", "not_serving"}, 1},
		{"cacheaside_membership_state", []string{"state", "serving"}, 0},
		{"cacheaside_invalidations_pending", nil, 6},
	} {
		if got := value(t, mfs, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if mf, ok := mfs["cacheaside_cache_entries"]; ok {
		t.Errorf("cacheaside_cache_entries exported for CacheSize -1: %v", mf)
	}
	if mfs["cacheaside_invalidations_pending"].GetType() != dto.MetricType_GAUGE {
		t.Error("cacheaside_invalidations_pending is not a gauge")
	}
	if mfs["cacheaside_reads_total"].GetType() != dto.MetricType_COUNTER {
		t.Error("cacheaside_reads_total is not a counter")
	}

	m.CacheSize = 12
	if got := value(t, gather(t, reg), "cacheaside_cache_entries"); got != 12 {
		t.Errorf("cacheaside_cache_entries = %v, want 12 (the snapshot is read at each scrape)", got)
	}
}

// TestPrometheusCollector_Aside: an Aside's Metrics fits as well as a
// UserService's GetMetrics.
func TestPrometheusCollector_Aside(t *testing.T) {
	type item struct{ N int }
	rec := NewPrometheusRecorder(WithService("items"))
	a := cacheaside.NewAside(cacheaside.NewMemoryCache(), "item", func(_ context.Context, id int) (*item, error) {
		return &item{N: id}, nil
	}, cacheaside.WithRecorder(rec))
	t.Cleanup(func() { a.Close() })
	ctx := context.Background()
	for range 3 {
		if _, err := a.Get(ctx, 7); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(rec, NewPrometheusCollector(a.Metrics, WithService("items")))
	mfs := gather(t, reg)
	if got := value(t, mfs, "cacheaside_reads_total", "result", "hit"); got != 2 {
		t.Errorf("reads_total{result=hit} = %v, want 2", got)
	}
	if got := value(t, mfs, "cacheaside_read_duration_seconds", "result", "miss"); got != 1 {
		t.Errorf("read_duration{result=miss} count = %v, want 1", got)
	}
}

// TestPrometheusRecorder_Buckets: WithBuckets sets the bounds, and a
// duration lands in the first bucket that holds it.
func TestPrometheusRecorder_Buckets(t *testing.T) {
	rec := NewPrometheusRecorder(WithBuckets(0.001, 0.01))
	rec.RecordLoad(context.Background(), cacheaside.ResultOK, 5*time.Millisecond)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(rec)
	h := seriesOf(t, gather(t, reg), "cacheaside_load_duration_seconds", "result", "ok").GetHistogram()
	var got []string
	for _, b := range h.GetBucket() {
		got = append(got, fmt.Sprintf("%g:%d", b.GetUpperBound(), b.GetCumulativeCount()))
	}
	if want := []string{"0.001:0", "0.01:1"}; !slices.Equal(got, want) {
		t.Errorf("buckets (bound:cumulative count) = %v, want %v", got, want)
	}
	if s := h.GetSampleSum(); s != 0.005 {
		t.Errorf("sum = %v, want 0.005 (seconds)", s)
	}
}

// TestPrometheusRecorder_UnknownResult: a result or an op this package
// does not know yet still gets its own series.
func TestPrometheusRecorder_UnknownResult(t *testing.T) {
	rec := NewPrometheusRecorder()
	ctx := context.Background()
	rec.RecordRead(ctx, "early_refresh", time.Millisecond)
	rec.RecordLoad(ctx, "bloom_rejected", time.Millisecond)
	rec.RecordWrite(ctx, "upsert", cacheaside.ResultOK, time.Millisecond)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(rec)
	mfs := gather(t, reg)
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"cacheaside_read_duration_seconds", []string{"result", "early_refresh"}},
		{"cacheaside_load_duration_seconds", []string{"result", "bloom_rejected"}},
		{"cacheaside_write_duration_seconds", []string{"op", "upsert", "result", "ok"}},
	} {
		if got := value(t, mfs, c.name, c.labels...); got != 1 {
			t.Errorf("%s%v count = %v, want 1", c.name, c.labels, got)
		}
	}
}

// TestPrometheusRecorder_NoAllocs: recording a read, a load or a write of
// a known result allocates nothing, as the documentation says.
func TestPrometheusRecorder_NoAllocs(t *testing.T) {
	rec := NewPrometheusRecorder(WithService("users"))
	ctx := context.Background()
	rec.RecordWrite(ctx, "update", cacheaside.ResultOK, time.Millisecond) // the series is created at its first write
	if n := testing.AllocsPerRun(100, func() {
		rec.RecordRead(ctx, cacheaside.ResultHit, time.Millisecond)
		rec.RecordLoad(ctx, cacheaside.ResultOK, time.Millisecond)
		rec.RecordWrite(ctx, "update", cacheaside.ResultOK, time.Millisecond)
	}); n != 0 {
		t.Errorf("recording allocates %v times, want 0", n)
	}
}

// TestNewPrometheusCollector_NilPanics: a nil snapshot function is a
// programmer error, said at once with the constructor's name.
func TestNewPrometheusCollector_NilPanics(t *testing.T) {
	wantPanic(t, "cacheaside/metrics: NewPrometheusCollector(nil): the snapshot function must not be nil", func() {
		NewPrometheusCollector(nil)
	})
}
