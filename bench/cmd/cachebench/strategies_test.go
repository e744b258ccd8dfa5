package main

import (
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// TestCachebench_EarlyRefresh runs the stampede scenario (one hot key, TTL
// 1 s) with the library's defaults and with early refresh: with it, the
// hot key is refreshed before it expires, so fewer reads wait for the
// database (none, once the first load is done, barring a refresh that
// loses the race with the expiry), and the library counts its early
// refreshes. The database takes 40 ms rather than the scenario's 20 ms:
// a read counts as waiting for it when it spent 20 ms while a database
// read was under way, which a cache hit slowed down by a loaded machine
// (or the race detector) during an early refresh seldom does.
func TestCachebench_EarlyRefresh(t *testing.T) {
	out, rows := runJSON(t, testArgs("-scenario", "stampede", "-users", "100", "-duration", "2s", "-db-latency", "40ms",
		"-instances", "4", "-concurrency", "16", "-strategies", "cacheaside,cacheaside-early")...)
	if len(rows) != 2 || rows[0].Strategy != "cacheaside" || rows[1].Strategy != "cacheaside-early" {
		t.Fatalf("rows %+v; want cacheaside and cacheaside-early", rows)
	}
	for _, r := range rows {
		if r.Errors != 0 || r.Reads == 0 || r.StaleReads != 0 {
			t.Errorf("%s: %d failed, %d reads, %d stale; want none failed, some reads, none stale", r.Strategy, r.Errors, r.Reads, r.StaleReads)
		}
		if r.ReadsWaitedDB == nil || r.DBWaitUs != 20_000 {
			t.Fatalf("%s: reads that waited for the database %v, threshold %vµs; want a count, at 20ms (half the 40ms database)",
				r.Strategy, r.ReadsWaitedDB, r.DBWaitUs)
		}
		if r.Library == nil {
			t.Fatalf("%s: no library counters", r.Strategy)
		}
	}
	lib, early := rows[0], rows[1]
	t.Logf("reads that waited for the database: cacheaside %d, cacheaside-early %d; early refreshes %d",
		*lib.ReadsWaitedDB, *early.ReadsWaitedDB, early.Library.EarlyRefreshes)
	// Two seconds measured after a one-second warm-up: the hot key
	// expires at least once in them, and every worker waits for its load.
	if *lib.ReadsWaitedDB == 0 {
		t.Errorf("cacheaside: no read waited for the database; the hot key should have expired in the measured phase")
	}
	if *early.ReadsWaitedDB >= *lib.ReadsWaitedDB {
		t.Errorf("cacheaside-early: %d reads waited for the database, cacheaside %d; early refresh should spare most of them",
			*early.ReadsWaitedDB, *lib.ReadsWaitedDB)
	}
	if early.Library.EarlyRefreshes == 0 {
		t.Errorf("cacheaside-early: no early refresh (counters %+v)", early.Library)
	}
	if lib.Library.EarlyRefreshes != 0 {
		t.Errorf("cacheaside: %d early refreshes without WithEarlyRefresh", lib.Library.EarlyRefreshes)
	}
	for _, s := range []string{"reads that", "waited for DB", "spent 20.00ms or more", "early refreshes", "cache misses"} {
		if !strings.Contains(out, s) {
			t.Errorf("the output has no %q", s)
		}
	}
}

// TestCachebench_AdaptiveTTL runs the Zipf scenario with a short TTL with
// the library's defaults and with adaptive TTLs (from a quarter of the TTL
// to 20 times it): both run, and neither serves a stale read. That
// adaptive TTLs save database queries is what the tool measures; in so
// short a run it is only logged.
func TestCachebench_AdaptiveTTL(t *testing.T) {
	out, rows := runJSON(t, testArgs("-scenario", "zipf", "-ttl", "500ms", "-users", "300", "-duration", "2s",
		"-instances", "2", "-concurrency", "8", "-strategies", "cacheaside,cacheaside-adaptive")...)
	if len(rows) != 2 || rows[0].Strategy != "cacheaside" || rows[1].Strategy != "cacheaside-adaptive" {
		t.Fatalf("rows %+v; want cacheaside and cacheaside-adaptive", rows)
	}
	for _, r := range rows {
		if r.Errors != 0 || r.Reads == 0 || r.Writes == 0 {
			t.Errorf("%s: %d failed, %d reads, %d writes; want none failed, some of both", r.Strategy, r.Errors, r.Reads, r.Writes)
		}
		if r.StaleReads != 0 {
			t.Errorf("%s: %d stale reads, want none", r.Strategy, r.StaleReads)
		}
		if r.Library == nil || r.Library.DatabaseLoads == 0 {
			t.Errorf("%s: library counters %+v; want some database loads", r.Strategy, r.Library)
		}
		if r.ReadsWaitedDB != nil {
			t.Errorf("%s: %d reads counted as waiting for the database with no database latency", r.Strategy, *r.ReadsWaitedDB)
		}
	}
	t.Logf("DB queries per 1k requests: cacheaside %.2f, cacheaside-adaptive %.2f", rows[0].DBPer1k, rows[1].DBPer1k)
	if !strings.Contains(out, "TTL 500ms") {
		t.Errorf("the header does not show -ttl 500ms:\n%s", out)
	}
	if strings.Contains(out, "waited for DB") {
		t.Errorf("the table has a column of reads that waited for the database with no database latency:\n%s", out)
	}
}

func TestLatency_WaitThreshold(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "0": 0, "exp:2ms": 0, "1ms": 0, "1ms-5ms": 0, "20ms": 10 * time.Millisecond, "2ms-6ms": time.Millisecond} {
		l, err := parseLatency(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.waitThreshold(); got != want {
			t.Errorf("parseLatency(%q).waitThreshold() = %v, want %v", in, got, want)
		}
	}
}

// TestExpireOnClock: miniredis's TTLs run down with the clock, finely
// enough for a short TTL: a key lives about as long as its TTL.
func TestExpireOnClock(t *testing.T) {
	mr := miniredis.RunT(t)
	stop := expireOnClock(mr, time.Second) // 10 ms ticks
	defer stop()
	time.Sleep(5 * time.Millisecond) // into a tick
	if err := mr.Set("k", "v"); err != nil {
		t.Fatal(err)
	}
	mr.SetTTL("k", 300*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	if !mr.Exists("k") {
		t.Fatal("a key with a 300ms TTL expired within 200ms")
	}
	deadline := time.Now().Add(2 * time.Second)
	for mr.Exists("k") {
		if time.Now().After(deadline) {
			t.Fatal("a key with a 300ms TTL still there after 2s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWaitedForDB(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	db := []span{{at(100), at(120)}, {at(10), at(30)}, {at(25), at(40)}, {at(200), at(205)}, {at(210), at(215)}}
	reads := []span{
		{at(0), at(50)},    // 30ms under the merged 10-40: counts
		{at(32), at(45)},   // 8ms under 10-40: too little
		{at(105), at(130)}, // 15ms under 100-120: counts
		{at(50), at(99)},   // no database read under way: a slow hit
		{at(198), at(220)}, // 10ms under two reads: counts
		{at(300), at(400)}, // after every database read
	}
	if n := waitedForDB(reads, db, 10*time.Millisecond); n != 3 {
		t.Errorf("waitedForDB = %d, want 3", n)
	}
	if n := waitedForDB(reads, nil, 10*time.Millisecond); n != 0 {
		t.Errorf("waitedForDB with no database read = %d, want 0", n)
	}
}
