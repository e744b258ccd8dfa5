package metrics_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/cacheaside/cacheaside"
	"github.com/cacheaside/cacheaside/metrics"
)

// A UserService exports its histograms (the recorder) and its counters
// (the collector) on /metrics, for Prometheus to scrape.
func Example_prometheus() {
	ctx := context.Background()

	// The recorder must exist before the service, which calls it; the
	// collector reads the service's snapshot at each scrape. Both carry
	// the same service name.
	rec := metrics.NewPrometheusRecorder(metrics.WithService("users"))
	svc := cacheaside.NewUserService(cacheaside.NewMemoryRepository(), cacheaside.NewMemoryCache(),
		cacheaside.WithRecorder(rec))
	defer svc.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(rec, metrics.NewPrometheusCollector(svc.GetMetrics, metrics.WithService("users")))

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	u := &cacheaside.User{Name: "Ann", Email: "ann@example.com"}
	if err := svc.CreateUser(ctx, u); err != nil {
		fmt.Println(err)
		return
	}
	for range 3 {
		_, _ = svc.GetUser(ctx, u.ID) // a miss, then two hits
	}
	_, _ = svc.GetUser(ctx, 404) // a miss, which finds nothing

	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, prefix := range []string{
			`cacheaside_reads_total{result="hit"`,
			`cacheaside_reads_total{result="miss"`,
			`cacheaside_read_duration_seconds_count{result="hit"`,
			`cacheaside_read_duration_seconds_count{result="miss"`,
			`cacheaside_load_duration_seconds_count{result="ok"`,
			`cacheaside_load_duration_seconds_count{result="not_found"`,
			`cacheaside_repository_loads_total`,
			`cacheaside_write_duration_seconds_count`,
		} {
			if strings.HasPrefix(line, prefix) {
				fmt.Println(line)
			}
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Println(err)
	}
	// Output:
	// cacheaside_load_duration_seconds_count{result="not_found",service="users"} 1
	// cacheaside_load_duration_seconds_count{result="ok",service="users"} 1
	// cacheaside_read_duration_seconds_count{result="hit",service="users"} 2
	// cacheaside_read_duration_seconds_count{result="miss",service="users"} 2
	// cacheaside_reads_total{result="hit",service="users"} 2
	// cacheaside_reads_total{result="miss",service="users"} 2
	// cacheaside_repository_loads_total{service="users"} 2
	// cacheaside_write_duration_seconds_count{op="create",result="ok",service="users"} 1
}

// A UserService records into OpenTelemetry instruments. A program passes
// its SDK's meter provider (or otel.GetMeterProvider()); here a manual
// reader collects what an exporter would.
func Example_openTelemetry() {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(ctx)

	rec, err := metrics.NewOTelRecorder(provider, metrics.WithService("users"))
	if err != nil {
		fmt.Println(err)
		return
	}
	svc := cacheaside.NewUserService(cacheaside.NewMemoryRepository(), cacheaside.NewMemoryCache(),
		cacheaside.WithRecorder(rec))
	defer svc.Close()
	reg, err := metrics.RegisterOTelSnapshot(provider, svc.GetMetrics, metrics.WithService("users"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer reg.Unregister() // stops the observations

	u := &cacheaside.User{Name: "Bo", Email: "bo@example.com"}
	if err := svc.CreateUser(ctx, u); err != nil {
		fmt.Println(err)
		return
	}
	for range 4 {
		_, _ = svc.GetUser(ctx, u.ID) // a miss, then three hits
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		fmt.Println(err)
		return
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Histogram[float64]:
				if m.Name != "cacheaside.read.duration" {
					continue
				}
				for _, dp := range d.DataPoints {
					result, _ := dp.Attributes.Value("cacheaside.result")
					fmt.Printf("%s (%s) result=%s: count %d\n", m.Name, m.Unit, result.AsString(), dp.Count)
				}
			case metricdata.Sum[int64]:
				if m.Name != "cacheaside.reads" {
					continue
				}
				for _, dp := range d.DataPoints {
					if result, _ := dp.Attributes.Value("cacheaside.result"); dp.Value > 0 {
						fmt.Printf("%s (%s) result=%s: %d\n", m.Name, m.Unit, result.AsString(), dp.Value)
					}
				}
			}
		}
	}
	// Unordered output:
	// cacheaside.read.duration (s) result=miss: count 1
	// cacheaside.read.duration (s) result=hit: count 3
	// cacheaside.reads ({read}) result=miss: 1
	// cacheaside.reads ({read}) result=hit: 3
}
