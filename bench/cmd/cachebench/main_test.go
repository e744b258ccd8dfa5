package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
)

// TestCachebench_AllStrategies runs the tool end to end on embedded
// defaults (or the servers in REDIS_ADDR and POSTGRES_DSN) with a small
// workload and checks every row.
func TestCachebench_AllStrategies(t *testing.T) {
	dir := t.TempDir()
	jsonPath, plotPath := filepath.Join(dir, "rows.json"), filepath.Join(dir, "db.svg")
	args := []string{"-users", "300", "-ops", "3000", "-concurrency", "8", "-instances", "3",
		"-json", jsonPath, "-plot", plotPath}
	if dsn := os.Getenv("POSTGRES_DSN"); dsn != "" {
		args = append(args, "-postgres", dsn)
	}
	var out, progress bytes.Buffer
	if err := realMain(context.Background(), args, &out, &progress); err != nil {
		t.Fatalf("cachebench: %v\n%s", err, progress.String())
	}
	t.Log("\n" + out.String())

	var rows []result
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rows); err != nil {
		t.Fatalf("-json output: %v", err)
	}
	if len(rows) != len(defaultStrategies()) {
		t.Fatalf("%d rows, want one per default strategy (%d)", len(rows), len(defaultStrategies()))
	}
	by := map[string]result{}
	for _, r := range rows {
		by[r.Strategy] = r
		if r.WriteP50us <= 0 || r.WriteP99us < r.WriteP50us || r.WriteP999us < r.WriteP99us {
			t.Errorf("%s: write percentiles out of order: %v %v %v", r.Strategy, r.WriteP50us, r.WriteP99us, r.WriteP999us)
		}
		if r.Ops != 3000 || r.Reads == 0 || r.Writes == 0 {
			t.Errorf("%s: ops %d (reads %d, writes %d), want 3000 with both kinds", r.Strategy, r.Ops, r.Reads, r.Writes)
		}
		if r.Errors != 0 {
			t.Errorf("%s: %d operations failed", r.Strategy, r.Errors)
		}
		if r.P50us <= 0 || r.P99us < r.P50us || r.P999us < r.P99us {
			t.Errorf("%s: percentiles out of order: %v %v %v", r.Strategy, r.P50us, r.P99us, r.P999us)
		}
		if !strings.Contains(out.String(), r.Strategy) {
			t.Errorf("the table has no %s row", r.Strategy)
		}
		if runtime.GOOS != "windows" && r.SelfCPUMsPer1k <= 0 {
			t.Errorf("%s: own CPU %v ms per 1k operations; the instances ran here", r.Strategy, r.SelfCPUMsPer1k)
		}
		if runtime.GOOS == "linux" && (r.CPUMsPer1k <= 0 || r.BusyPct <= 0 || r.BusyPct > 100) {
			t.Errorf("%s: machine CPU %v ms per 1k operations, busy %v%%; this process alone kept a CPU busy", r.Strategy, r.CPUMsPer1k, r.BusyPct)
		}
	}
	if nc := by["nocache"]; nc.DBQueries != nc.Ops || nc.HitRate != 0 || nc.StaleReads != 0 {
		t.Errorf("nocache: %d DB queries for %d ops, hit rate %v, stale %d: want one query per op, 0, 0", nc.DBQueries, nc.Ops, nc.HitRate, nc.StaleReads)
	}
	if lib := by["cacheaside"]; lib.StaleReads != 0 || lib.HitRate <= 0.2 {
		t.Errorf("cacheaside: %d stale reads, hit rate %.2f; want none, and a working cache", lib.StaleReads, lib.HitRate)
	}
	if by["cacheaside"].DBQueries >= by["nocache"].DBQueries/2 {
		t.Errorf("cacheaside made %d DB queries against nocache's %d", by["cacheaside"].DBQueries, by["nocache"].DBQueries)
	}
	if !strings.Contains(progress.String(), "running sturdyc") {
		t.Errorf("no progress on stderr: %q", progress.String())
	}
	for _, field := range []string{`"read_p50_us"`, `"write_p50_us"`, `"write_p99_us"`, `"write_p999_us"`} {
		if !bytes.Contains(b, []byte(field)) {
			t.Errorf("the JSON rows have no %s", field)
		}
	}
	if above, header := tableHeader(out.String()); above != "read read read write write write CPU ms own CPU" ||
		header != "strategy ops/s p50 p99 p99.9 p50 p99 p99.9 DB queries per 1k hit rate stale reads per 1k per 1k busy" {
		t.Errorf("table header %q over %q; want read and write latency columns", above, header)
	}

	svg, err := os.ReadFile(plotPath)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(svg))
	polylines := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			polylines++
		}
	}
	if polylines != len(rows) {
		t.Errorf("the chart has %d lines, want %d", polylines, len(rows))
	}
}

// tableHeader returns the main table's two header lines, their fields
// separated by single spaces.
func tableHeader(out string) (above, header string) {
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if f := strings.Fields(l); i > 0 && len(f) > 1 && f[0] == "strategy" && f[1] == "ops/s" {
			return strings.Join(strings.Fields(lines[i-1]), " "), strings.Join(f, " ")
		}
	}
	return "", ""
}

// testArgs adds the servers in REDIS_ADDR and POSTGRES_DSN, if set, to
// args (REDIS_ADDR is read by the tool itself).
func testArgs(args ...string) []string {
	if dsn := os.Getenv("POSTGRES_DSN"); dsn != "" {
		args = append(args, "-postgres", dsn)
	}
	return args
}

// runJSON runs cachebench with args and returns its table and its rows.
func runJSON(t *testing.T, args ...string) (string, []result) {
	t.Helper()
	jsonPath := filepath.Join(t.TempDir(), "rows.json")
	var out, progress bytes.Buffer
	if err := realMain(context.Background(), append(args, "-json", jsonPath), &out, &progress); err != nil {
		t.Fatalf("cachebench %v: %v\n%s", args, err, progress.String())
	}
	t.Log("\n" + out.String())
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rows []result
	if err := json.Unmarshal(b, &rows); err != nil {
		t.Fatalf("-json output: %v", err)
	}
	return out.String(), rows
}

// TestCachebench_LocalTiers runs the local-tier strategies end to end:
// the strict library tier answers reads from memory and serves no stale
// read; every row has its write latencies; the library rows carry their
// local-tier counters, in the JSON and in the notes.
func TestCachebench_LocalTiers(t *testing.T) {
	out, rows := runJSON(t, testArgs("-users", "200", "-ops", "2000", "-concurrency", "8", "-instances", "3",
		"-strategies", "cacheaside-local,cacheaside-relaxed,go-redis-cache-local")...)
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3", len(rows))
	}
	by := map[string]result{}
	for _, r := range rows {
		by[r.Strategy] = r
		if r.Errors != 0 || r.Reads == 0 || r.Writes == 0 {
			t.Errorf("%s: %d failed, %d reads, %d writes; want none failed, some of both", r.Strategy, r.Errors, r.Reads, r.Writes)
		}
		if r.WriteP50us <= 0 || r.WriteP99us < r.WriteP50us {
			t.Errorf("%s: write p50 %v, p99 %v", r.Strategy, r.WriteP50us, r.WriteP99us)
		}
		if lib := strings.HasPrefix(r.Strategy, "cacheaside"); (r.Library != nil) != lib {
			t.Errorf("%s: library counters %+v", r.Strategy, r.Library)
		}
	}
	strict := by["cacheaside-local"]
	if strict.StaleReads != 0 {
		t.Errorf("cacheaside-local: %d stale reads, want none", strict.StaleReads)
	}
	if l := strict.Library; l == nil || l.LocalHits == 0 || l.BusInvalidations == 0 || len(l.Membership) != 3 {
		t.Errorf("cacheaside-local: library counters %+v; want local hits, bus invalidations and 3 members", l)
	}
	if l := by["cacheaside-relaxed"].Library; l == nil || l.LocalHits == 0 {
		t.Errorf("cacheaside-relaxed: library counters %+v; want local hits", l)
	}
	for _, s := range []string{"cacheaside-local (its own metrics", "local hits", "bus invalidations", "writes that waited"} {
		if !strings.Contains(out, s) {
			t.Errorf("the notes have no %q", s)
		}
	}
}

// TestCachebench_Partition: with one instance of three cut off from
// Redis for the measured phase, the run completes, the partition table
// tells the instances apart, the strict library's partitioned instance
// serves no stale read, and refuses its writes (it cannot tell the bus:
// they fail with ErrCacheUnavailable before they change the database,
// counted in WritesRefused).
func TestCachebench_Partition(t *testing.T) {
	out, rows := runJSON(t, testArgs("-users", "200", "-duration", "2500ms", "-concurrency", "6", "-instances", "3",
		"-partition", "1", "-strategies", "nocache,cacheaside,cacheaside-local")...)
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3", len(rows))
	}
	for _, r := range rows {
		if r.Strategy == "nocache" {
			if r.Partition != nil {
				t.Errorf("nocache, which has no Redis, was partitioned: %+v", r.Partition)
			}
			continue
		}
		p := r.Partition
		if p == nil {
			t.Fatalf("%s: no partition results", r.Strategy)
		}
		partWrites := p.Partitioned.Writes // acknowledged, or for the strict tier refused
		if r.Strategy == "cacheaside-local" {
			partWrites = p.Partitioned.FailedWrites
			if l := r.Library; l == nil || l.WritesRefused < p.Partitioned.FailedWrites || p.Healthy.FailedWrites != 0 {
				t.Errorf("cacheaside-local: %d writes failed on the partitioned instance, %d on the healthy ones, library counters %+v; want every failure a refusal, on the partitioned instance",
					p.Partitioned.FailedWrites, p.Healthy.FailedWrites, l)
			}
		}
		if p.Instances != 1 || p.Partitioned.Reads == 0 || partWrites == 0 || p.Healthy.Reads == 0 || p.Healthy.Writes == 0 {
			t.Errorf("%s: partition %+v; want operations on both sides", r.Strategy, p)
		}
		if p.Partitioned.FailedReads != 0 || r.Abandoned != 0 {
			t.Errorf("%s: %d failed reads on the partitioned instance, %d operations abandoned", r.Strategy, p.Partitioned.FailedReads, r.Abandoned)
		}
		if p.Partitioned.Reads+p.Healthy.Reads != r.Reads || p.Partitioned.Writes+p.Healthy.Writes != r.Writes {
			t.Errorf("%s: the sides do not add up to the row: %+v vs %d reads, %d writes", r.Strategy, p, r.Reads, r.Writes)
		}
	}
	// The strict library's partitioned instance serves no stale read, nor
	// do the healthy ones, except after a write the partitioned instance
	// made: that writer reaches the database but cannot invalidate Redis or
	// tell the other members, so they keep the old value until its retried
	// delete lands after the partition (the library's behaviour today,
	// reported; tighten this to StaleReads == 0 once its writes cannot
	// leave that behind).
	strict := rows[2]
	sp := strict.Partition
	if sp.Partitioned.StaleReads != 0 || sp.Healthy.StaleReads != sp.Healthy.StaleAfterPartitionedWrite {
		t.Errorf("cacheaside-local: %d stale reads on the partitioned instance, %d on the healthy ones (%d after a partitioned write); want none but those",
			sp.Partitioned.StaleReads, sp.Healthy.StaleReads, sp.Healthy.StaleAfterPartitionedWrite)
	}
	if strict.StaleReads != 0 {
		t.Logf("cacheaside-local: %d stale reads, all after a write by the partitioned instance", strict.StaleReads)
	}
	if m := strict.Library.Membership; len(m) != 3 || strings.Contains(m[0], ": serving") {
		t.Errorf("cacheaside-local: membership %q; want the partitioned instance 1 not serving", m)
	}
	for _, s := range []string{"partitioned instances", "healthy instances", "(no Redis: not partitioned)", "black-holed for the whole measured phase"} {
		if !strings.Contains(out, s) {
			t.Errorf("the output has no %q", s)
		}
	}
}

func TestWorld_Ack(t *testing.T) {
	w := newWorld(nil, 3)
	if v, p := w.newest(2); v != 0 || p {
		t.Errorf("newest before any write = %d, %v; want 0, false", v, p)
	}
	w.ack(2, 5, true)
	w.ack(2, 3, false) // acknowledged later, committed earlier: no effect
	if v, p := w.newest(2); v != 5 || !p {
		t.Errorf("newest = %d, %v; want 5, true", v, p)
	}
	w.ack(2, 6, false)
	if v, p := w.newest(2); v != 6 || p {
		t.Errorf("newest = %d, %v; want 6, false", v, p)
	}
}

// TestCachebench_Scenarios: a stampede on a hot key with a slow database
// reaches the database far less through cacheaside than through the
// per-process strategies, and a cold start runs.
func TestCachebench_Scenarios(t *testing.T) {
	var out bytes.Buffer
	err := realMain(context.Background(), []string{"-scenario", "stampede", "-users", "100", "-duration", "1500ms",
		"-ttl", "200ms", "-db-latency", "20ms", "-instances", "4", "-concurrency", "16",
		"-strategies", "seed,cacheaside", "-json", "-"}, &out, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out.String())
	s := out.String()
	var rows []result
	if err := json.Unmarshal([]byte(s[strings.Index(s, "\n[")+1:]), &rows); err != nil {
		t.Fatalf("JSON rows: %v", err)
	}
	seed, lib := rows[0], rows[1]
	if lib.StaleReads != 0 {
		t.Errorf("cacheaside served %d stale reads", lib.StaleReads)
	}
	if lib.DBPer1k >= seed.DBPer1k {
		t.Errorf("stampede: cacheaside %.1f DB queries per 1k requests, seed %.1f; the lease should beat per-process single flight", lib.DBPer1k, seed.DBPer1k)
	}

	out.Reset()
	err = realMain(context.Background(), []string{"-scenario", "coldstart", "-users", "200", "-ops", "1000",
		"-strategies", "cacheaside"}, &out, new(bytes.Buffer))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "scenario coldstart") {
		t.Errorf("coldstart header missing:\n%s", out.String())
	}
}

func TestCachebench_BadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-scenario", "bogus"},
		{"-zipf", "1"},
		{"-db-latency", "soon"},
		{"-db-latency", "5ms-1ms"},
		{"-strategies", "memcached"},
		{"-users", "1"},
		{"-writes", "2"},
		{"-instances", "0"},
		{"-partition", "4"}, // as many as -instances: none left healthy
		{"-partition", "-1"},
		{"-partition", "1", "-scenario", "outage"},
		{"-all", "-strategies", "seed"},
		{"-nosuchflag"},
	} {
		err := realMain(context.Background(), args, new(bytes.Buffer), new(bytes.Buffer))
		if err == nil {
			t.Errorf("cachebench %v: no error", args)
		}
	}
}

func TestParseLatency(t *testing.T) {
	for in, want := range map[string]string{"": "", "0": "", "2ms": "fixed", "1ms-5ms": "uniform", "exp:3ms": "exp"} {
		l, err := parseLatency(in)
		if err != nil || l.kind != want {
			t.Errorf("parseLatency(%q) = %+v, %v; want kind %q", in, l, err, want)
		}
	}
	l, _ := parseLatency("2ms-4ms")
	for range 100 {
		start := time.Now()
		l.sleep()
		if d := time.Since(start); d < 2*time.Millisecond {
			t.Fatalf("uniform 2ms-4ms slept %v", d)
		}
	}
}

func TestVersion(t *testing.T) {
	if v := version(&cacheaside.User{Name: userName(7, 42)}); v != 42 {
		t.Errorf("version = %d, want 42", v)
	}
	if v := version(&cacheaside.User{Name: "nobody"}); v != -1 {
		t.Errorf("version of an unversioned row = %d, want -1", v)
	}
}

// TestCachebench_Outage runs the outage scenario end to end with every
// strategy behind a proxy of its own, on embedded defaults (or the
// servers in REDIS_ADDR and POSTGRES_DSN), and checks that the library
// rode it out: no failed read, no stale read once Redis came back, and
// its breaker opened. One instance: across instances the library only
// narrows the window in which another instance's failed invalidation can
// be served stale (its retry lands after the cache comes back), so that
// is measured by the tool, not asserted here.
func TestCachebench_Outage(t *testing.T) {
	dir := t.TempDir()
	jsonPath, plotPath := filepath.Join(dir, "rows.json"), filepath.Join(dir, "db.svg")
	args := []string{"-scenario", "outage", "-users", "200", "-duration", "3s", "-outage", "1s",
		"-instances", "1", "-concurrency", "8", "-json", jsonPath, "-plot", plotPath}
	if dsn := os.Getenv("POSTGRES_DSN"); dsn != "" {
		args = append(args, "-postgres", dsn)
	}
	before := runtime.NumGoroutine()
	var out, progress bytes.Buffer
	if err := realMain(context.Background(), args, &out, &progress); err != nil {
		t.Fatalf("cachebench: %v\n%s", err, progress.String())
	}
	t.Log("\n" + out.String())

	var rows []result
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rows); err != nil {
		t.Fatalf("-json output: %v", err)
	}
	if len(rows) != len(defaultStrategies()) {
		t.Fatalf("%d rows, want one per default strategy (%d)", len(rows), len(defaultStrategies()))
	}
	for _, r := range rows {
		o := r.Outage
		if o == nil {
			t.Fatalf("%s: no outage results", r.Strategy)
		}
		// -duration 3s -outage 1s: the black hole starts 1s in.
		if o.StartS < 0.9 || o.StartS > 1.3 || o.EndS-o.StartS < 0.95 || o.EndS-o.StartS > 1.3 {
			t.Errorf("%s: black hole from %.2fs to %.2fs, want about 1s to 2s", r.Strategy, o.StartS, o.EndS)
		}
		if o.ReadsDuring == 0 && r.Strategy != "seed" && r.Strategy != "go-redis-cache" {
			t.Errorf("%s: no read began during the black hole", r.Strategy)
		}
		if o.ReadsAfter == 0 {
			t.Errorf("%s: no read began after recovery", r.Strategy)
		}
		if r.Abandoned != 0 {
			t.Errorf("%s: %d operations abandoned", r.Strategy, r.Abandoned)
		}
		if (r.Library != nil) != (r.Strategy == "cacheaside") {
			t.Errorf("%s: library counters %+v", r.Strategy, r.Library)
		}
	}
	by := map[string]result{}
	for _, r := range rows {
		by[r.Strategy] = r
	}
	lib := by["cacheaside"]
	if lib.FailedReads != 0 || lib.FailedWrites != 0 || lib.Outage.StaleAfter != 0 || lib.StaleReads != 0 {
		t.Errorf("cacheaside: %d failed reads, %d failed writes, %d stale reads after recovery (%d in all); want none",
			lib.FailedReads, lib.FailedWrites, lib.Outage.StaleAfter, lib.StaleReads)
	}
	if lib.Library.CacheBreakerOpens == 0 || lib.Library.PendingInvalidations != 0 {
		t.Errorf("cacheaside: breaker opened %d times, %d invalidations still pending at the end; want some, none",
			lib.Library.CacheBreakerOpens, lib.Library.PendingInvalidations)
	}
	// The breaker keeps reads from waiting on the hung cache beyond a few
	// time boxes (100 ms each).
	if lib.Outage.P99DuringUs > 500_000 {
		t.Errorf("cacheaside: read p99 %.0fµs during the black hole", lib.Outage.P99DuringUs)
	}
	if nc := by["nocache"]; nc.Outage.DBPerSecDuring == 0 || nc.FailedReads != 0 {
		t.Errorf("nocache: %v DB queries/s during the black hole, %d failed reads", nc.Outage.DBPerSecDuring, nc.FailedReads)
	}

	for _, col := range []string{"failed", "read p99", "during", "stale reads", "after recov", "DB q/s", "redis black-holed from",
		"cache breaker opens", "pending invalidations at the end"} {
		if !strings.Contains(out.String(), col) {
			t.Errorf("the tables have no %q", col)
		}
	}
	for _, field := range []string{`"failed_reads"`, `"failed_writes"`, `"read_p99_during_us"`, `"stale_reads_after_recovery"`,
		`"db_queries"`, `"cache_breaker_opens"`, `"cache_timeouts"`, `"pending_invalidations_at_end"`, `"invalidation_retries"`} {
		if !bytes.Contains(b, []byte(field)) {
			t.Errorf("the JSON rows have no %s", field)
		}
	}
	if !strings.Contains(progress.String(), "[redis black-holed]") {
		t.Errorf("the progress does not show the black hole:\n%s", progress.String())
	}

	svg, err := os.ReadFile(plotPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(svg, []byte(`class="outage"`)) {
		t.Error("the chart does not mark the black hole")
	}
	if err := xml.Unmarshal(svg, new(any)); err != nil {
		t.Errorf("the chart is not XML: %v", err)
	}

	// Every proxy is closed and every client with it: nothing the run
	// started is left running (a little slack for the runtime's own).
	if left := settle(before+2, 10*time.Second); left > before+2 {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after the run, %d before:\n%s", left, before, buf[:runtime.Stack(buf, true)])
	}
}

// TestCachebench_OutageOnlyBreaksRedis: in the other scenarios no proxy
// is placed, and the outage flags are refused.
func TestCachebench_OutageFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-outage", "1s"},
		{"-scenario", "stampede", "-outage-at", "1s"},
		{"-scenario", "outage", "-ops", "100"},
		{"-scenario", "outage", "-duration", "3s", "-outage", "3s"},
		{"-scenario", "outage", "-outage", "0s"},
		{"-scenario", "outage", "-outage-at", "8s"}, // 8s + 3s > 10s
		{"-abandon-after", "0s"},
	} {
		if err := realMain(context.Background(), args, new(bytes.Buffer), new(bytes.Buffer)); err == nil {
			t.Errorf("cachebench %v: no error", args)
		}
	}
}
