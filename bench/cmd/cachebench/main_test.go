package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
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
	if len(rows) != len(strategies) {
		t.Fatalf("%d rows, want one per strategy (%d)", len(rows), len(strategies))
	}
	by := map[string]result{}
	for _, r := range rows {
		by[r.Strategy] = r
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
	if polylines != len(strategies) {
		t.Errorf("the chart has %d lines, want %d", polylines, len(strategies))
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
