package main

import (
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cacheaside/cacheaside"
)

// The outage scenario puts a fault-injection proxy
// (internal/faultproxy) between each strategy's instances and Redis, one
// proxy per strategy run, and black-holes it for a while in the middle of
// the measured phase: connections stay open but nothing gets through, no
// reset, no FIN, which is what a network partition or a hung server looks
// like to a client. Then the proxy passes again (closing the black-holed
// connections) and the run measures how each strategy recovers.

// faultSwitch is the part of a *faultproxy.Proxy a run drives.
type faultSwitch interface {
	Blackhole()
	Pass() error
	Close() error
}

// phase says where in the outage schedule an operation began.
type phase int

const (
	phaseBefore phase = iota // Redis reachable, before the black hole
	phaseDuring              // Redis black-holed
	phaseAfter               // Redis reachable again
)

// window is when Redis was black-holed during a measured phase, as the
// proxy switched: it starts when Blackhole has returned and ends when Pass
// has returned. Times are offsets from base; -1 means not yet.
type window struct {
	base       time.Time
	start, end atomic.Int64
}

func newWindow(base time.Time) *window {
	w := &window{base: base}
	w.start.Store(-1)
	w.end.Store(-1)
	return w
}

func (w *window) markStart(t time.Time) { w.start.Store(int64(t.Sub(w.base))) }
func (w *window) markEnd(t time.Time)   { w.end.Store(int64(t.Sub(w.base))) }

// bounds returns the window's start and end offsets, each -1 if not yet
// reached.
func (w *window) bounds() (start, end time.Duration) {
	return time.Duration(w.start.Load()), time.Duration(w.end.Load())
}

// offset is t's offset from the window's base.
func (w *window) offset(t time.Time) time.Duration { return t.Sub(w.base) }

// phase places an operation that began at t.
func (w *window) phase(t time.Time) phase {
	d := int64(t.Sub(w.base))
	if e := w.end.Load(); e >= 0 && d >= e {
		return phaseAfter
	}
	if s := w.start.Load(); s >= 0 && d >= s {
		return phaseDuring
	}
	return phaseBefore
}

// label tags a progress line printed at t; a nil window has none.
func (w *window) label(t time.Time) string {
	if w == nil {
		return ""
	}
	switch w.phase(t) {
	case phaseDuring:
		return "  [redis black-holed]"
	case phaseAfter:
		return "  [redis back]"
	}
	return ""
}

// startOutage black-holes sw at offset at from win.base, for d, and passes
// again, recording what it did in win. The returned stop ends the schedule
// early if it has not run its course (passing again if it had
// black-holed) and returns once the schedule is over.
func startOutage(sw faultSwitch, win *window, at, d time.Duration, progress io.Writer) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(time.Until(win.base.Add(at)))
		defer t.Stop()
		select {
		case <-quit:
			return
		case <-t.C:
		}
		sw.Blackhole()
		win.markStart(time.Now())
		t.Reset(time.Until(win.base.Add(at + d)))
		select {
		case <-quit:
		case <-t.C:
		}
		err := sw.Pass()
		win.markEnd(time.Now())
		if err != nil {
			fmt.Fprintf(progress, "  outage: the proxy did not pass again: %v\n", err)
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// phaseStats counts the operations that began in one phase.
type phaseStats struct {
	reads, failedReads, stale int64 // reads counts the failed ones too
	writes, failedWrites      int64 // writes counts the failed ones too
	lat                       []time.Duration
	lastStale                 time.Duration // when the last stale read began, from the window's base; -1 if none
}

// windowStats is a worker's operations by the phase they began in, and
// the longest read that overlapped the black hole, wherever it began.
type windowStats struct {
	ph         [3]phaseStats
	maxOverlap time.Duration
}

// add counts o against win. It keeps read latencies for the black hole
// and after it only.
func (ws *windowStats) add(win *window, o outcome) {
	p, off := win.phase(o.start), win.offset(o.start)
	ps := &ws.ph[p]
	switch o.kind {
	case opRead:
		if s, e := win.bounds(); s >= 0 && off+o.lat > s && (e < 0 || off < e) {
			ws.maxOverlap = max(ws.maxOverlap, o.lat)
		}
		ps.reads++
		if o.err != nil {
			ps.failedReads++
		} else if o.stale {
			if ps.stale == 0 || off > ps.lastStale {
				ps.lastStale = off
			}
			ps.stale++
		}
		if p != phaseBefore {
			ps.lat = append(ps.lat, o.lat)
		}
	case opWrite:
		ps.writes++
		if o.err != nil {
			ps.failedWrites++
		}
	}
}

func (ws *windowStats) merge(o *windowStats) {
	ws.maxOverlap = max(ws.maxOverlap, o.maxOverlap)
	for i := range ws.ph {
		a, b := &ws.ph[i], &o.ph[i]
		if b.stale > 0 && (a.stale == 0 || b.lastStale > a.lastStale) {
			a.lastStale = b.lastStale
		}
		a.reads += b.reads
		a.failedReads += b.failedReads
		a.stale += b.stale
		a.writes += b.writes
		a.failedWrites += b.failedWrites
		a.lat = append(a.lat, b.lat...)
	}
}

// outageResult is what the outage scenario adds to a row. "During" counts
// the operations that began while Redis was black-holed, "after recovery"
// those that began once it passed again.
type outageResult struct {
	StartS float64 `json:"blackhole_start_s"` // into the measured phase
	EndS   float64 `json:"blackhole_end_s"`

	ReadsDuring        int64   `json:"reads_during"` // failed ones included
	FailedReadsDuring  int64   `json:"failed_reads_during"`
	WritesDuring       int64   `json:"writes_during"` // failed ones included
	FailedWritesDuring int64   `json:"failed_writes_during"`
	StaleDuring        int64   `json:"stale_reads_during"`
	P50DuringUs        float64 `json:"read_p50_during_us"`
	P99DuringUs        float64 `json:"read_p99_during_us"`
	MaxDuringUs        float64 `json:"read_max_during_us"`
	// MaxOverlapUs is the longest read in flight at some time during the
	// black hole, wherever it began: a read that began just before it
	// and hung shows here, not in the "during" percentiles.
	MaxOverlapUs float64 `json:"read_max_overlapping_us"`

	ReadsAfter       int64 `json:"reads_after_recovery"` // failed ones included
	FailedReadsAfter int64 `json:"failed_reads_after_recovery"`
	StaleAfter       int64 `json:"stale_reads_after_recovery"`
	// LastStaleAfterS is when the last stale read after recovery began,
	// in seconds into the measured phase.
	LastStaleAfterS float64 `json:"last_stale_read_after_recovery_s,omitempty"`
	P99AfterUs      float64 `json:"read_p99_after_recovery_us"`
	MaxAfterUs      float64 `json:"read_max_after_recovery_us"`

	// Mean database queries per second over the whole timeline buckets
	// before, during and after the black hole.
	DBPerSecBefore float64 `json:"db_queries_per_second_before"`
	DBPerSecDuring float64 `json:"db_queries_per_second_during"`
	DBPerSecAfter  float64 `json:"db_queries_per_second_after"`
}

// result sums ws up against win and the run's timeline of DB queries per
// second in buckets of width b.
func (ws *windowStats) result(win *window, timeline []float64, b time.Duration) *outageResult {
	start, end := win.bounds()
	during, after := &ws.ph[phaseDuring], &ws.ph[phaseAfter]
	r := &outageResult{
		StartS: start.Seconds(), EndS: end.Seconds(),
		ReadsDuring: during.reads, FailedReadsDuring: during.failedReads,
		WritesDuring: during.writes, FailedWritesDuring: during.failedWrites,
		StaleDuring: during.stale, MaxOverlapUs: float64(ws.maxOverlap.Nanoseconds()) / 1e3,
		ReadsAfter: after.reads, FailedReadsAfter: after.failedReads, StaleAfter: after.stale,
	}
	if after.stale > 0 {
		r.LastStaleAfterS = after.lastStale.Seconds()
	}
	slices.Sort(during.lat)
	slices.Sort(after.lat)
	r.P50DuringUs, r.P99DuringUs, r.MaxDuringUs = pct(during.lat, 0.5), pct(during.lat, 0.99), pct(during.lat, 1)
	r.P99AfterUs, r.MaxAfterUs = pct(after.lat, 0.99), pct(after.lat, 1)
	r.DBPerSecBefore = meanBuckets(timeline, b, 0, start)
	r.DBPerSecDuring = meanBuckets(timeline, b, start, end)
	r.DBPerSecAfter = meanBuckets(timeline, b, end, time.Duration(len(timeline))*b)
	return r
}

// meanBuckets is the mean of the timeline buckets (of width b) that lie
// wholly within [from, to); 0 if none does or a bound is unset (-1).
func meanBuckets(timeline []float64, b time.Duration, from, to time.Duration) float64 {
	if from < 0 || to < 0 {
		return 0
	}
	first := int((from + b - 1) / b) // the first bucket starting at or after from
	last := min(int(to/b), len(timeline))
	if first >= last {
		return 0
	}
	sum := 0.0
	for _, v := range timeline[first:last] {
		sum += v
	}
	return sum / float64(last-first)
}

// libraryCounters is the library's own view of a strategy run, summed
// over its instances and counted since they were built (warm-up
// included), except where a field says otherwise.
type libraryCounters struct {
	// CacheMisses counts the reads that missed the cache and led their
	// process's load (which may have waited for another process's lease),
	// SharedLoads those answered by a load another caller of their process
	// led: together, the reads that waited for the database, by the
	// library's count.
	CacheMisses       int64 `json:"cache_misses"`
	DatabaseLoads     int64 `json:"database_loads"`
	SharedLoads       int64 `json:"shared_loads"`
	LeaseWaits        int64 `json:"lease_waits"`
	LeaseWaitTimeouts int64 `json:"lease_wait_timeouts"`
	Rejoins           int64 `json:"rejoins"`
	StaleFillsSkipped int64 `json:"stale_fills_skipped"`
	// WriteFills counts updates that left the stored row in the cache.
	WriteFills int64 `json:"write_fills"`
	// EarlyRefreshes counts the entries an early refresh replaced before
	// they expired (cacheaside-early).
	EarlyRefreshes     int64 `json:"early_refreshes"`
	CacheErrors        int64 `json:"cache_errors"`
	CacheWriteErrors   int64 `json:"cache_write_errors"`
	CacheTimeouts      int64 `json:"cache_timeouts"`
	CacheCallsRejected int64 `json:"cache_calls_rejected"`
	CacheBreakerOpens  int64 `json:"cache_breaker_opens"`
	// CacheShardsUnavailable is summed over the instances at the end of
	// the measured phase.
	CacheShardsUnavailable  int64 `json:"cache_shards_unavailable_at_end"`
	CacheInvalidationErrors int64 `json:"cache_invalidation_errors"`
	InvalidationRetries     int64 `json:"invalidation_retries"`
	InvalidationsDropped    int64 `json:"invalidations_dropped"`
	// PendingInvalidations is summed over the instances at the end of the
	// measured phase; PendingAfterClose once they were closed.
	PendingInvalidations int64 `json:"pending_invalidations_at_end"`
	PendingAfterClose    int64 `json:"pending_invalidations_after_close"`
	FailSafeServed       int64 `json:"fail_safe_served"`
	DatabaseErrors       int64 `json:"database_errors"`
	// RepositoryBreakerOpens counts the openings of the repository's
	// breaker (it should stay closed: the database never fails here).
	RepositoryBreakerOpens int64 `json:"repository_breaker_opens"`

	// The local tier (cacheaside-local, cacheaside-relaxed): reads it
	// answered and missed, invalidations received on the bus and
	// acknowledgements sent, writes that waited for a member that neither
	// acknowledged nor lost its lease at once and how long they waited in
	// all. Membership is each instance's standing on the bus at the end
	// of the measured phase, by instance ("instance 1: serving"); absent
	// without a local tier.
	LocalHits        int64 `json:"local_hits"`
	LocalMisses      int64 `json:"local_misses"`
	BusInvalidations int64 `json:"bus_invalidations"`
	BusAcks          int64 `json:"bus_acks"`
	WritesWaited     int64 `json:"writes_waited"`
	// WritesRefused counts the writes that failed, before they changed
	// the database, because the bus could not be told (strict tier only:
	// an instance cut off from Redis, -partition).
	WritesRefused    int64    `json:"writes_refused"`
	WriteWaitSeconds float64  `json:"write_wait_seconds"`
	Membership       []string `json:"membership,omitempty"`
}

// libCounters sums the library's counters over a strategy's instances, or
// returns nil for other strategies.
func libCounters(insts []instance) *libraryCounters {
	var c libraryCounters
	found := false
	for i, in := range insts {
		l, ok := in.(libInstance)
		if !ok {
			continue
		}
		found = true
		m := l.svc.GetMetrics()
		c.add(m)
		if m.Membership != "" {
			c.Membership = append(c.Membership, fmt.Sprintf("instance %d: %s", i+1, m.Membership))
		}
	}
	if !found {
		return nil
	}
	return &c
}

func (c *libraryCounters) add(m cacheaside.ServiceMetrics) {
	c.CacheMisses += m.CacheMisses
	c.DatabaseLoads += m.DatabaseLoads
	c.SharedLoads += m.SharedLoads
	c.LeaseWaits += m.LeaseWaits
	c.LeaseWaitTimeouts += m.LeaseWaitTimeouts
	c.Rejoins += m.Rejoins
	c.StaleFillsSkipped += m.StaleFillsSkipped
	c.WriteFills += m.WriteFills
	c.EarlyRefreshes += m.EarlyRefreshes
	c.CacheErrors += m.CacheErrors
	c.CacheWriteErrors += m.CacheWriteErrors
	c.CacheTimeouts += m.CacheTimeouts
	c.CacheCallsRejected += m.CacheCallsRejected
	c.CacheBreakerOpens += m.CacheBreakerOpens
	c.CacheShardsUnavailable += m.CacheShardsUnavailable
	c.CacheInvalidationErrors += m.CacheInvalidationErrors
	c.InvalidationRetries += m.InvalidationRetries
	c.InvalidationsDropped += m.InvalidationsDropped
	c.PendingInvalidations += m.PendingInvalidations
	c.FailSafeServed += m.FailSafeServed
	c.DatabaseErrors += m.DatabaseErrors
	c.RepositoryBreakerOpens += m.RepositoryBreakerOpens
	c.LocalHits += m.LocalHits
	c.LocalMisses += m.LocalMisses
	c.BusInvalidations += m.BusInvalidations
	c.BusAcks += m.BusAcks
	c.WritesWaited += m.WritesWaited
	c.WritesRefused += m.WritesRefused
	c.WriteWaitSeconds += m.WriteWaitTime.Seconds()
}

// pendingInvalidations sums the library's pending invalidations over a
// strategy's instances.
func pendingInvalidations(insts []instance) int64 {
	var n int64
	for _, in := range insts {
		if l, ok := in.(libInstance); ok {
			n += l.svc.GetMetrics().PendingInvalidations
		}
	}
	return n
}

// printOutageTable prints what the outage scenario adds to the rows.
func printOutageTable(w io.Writer, rows []result) {
	var win *outageResult
	for _, r := range rows {
		if r.Outage != nil {
			win = r.Outage
			break
		}
	}
	if win == nil {
		return
	}
	fmt.Fprintf(w, "\nredis black-holed from %.1fs to %.1fs of the measured phase (first row). \"during\": reads that began then; \"longest overlap\": the longest read\nin flight at some time during it, wherever it began; \"after recovery\": reads that began once Redis passed again; DB q/s: mean per phase\n",
		win.StartS, win.EndS)
	fmt.Fprintf(w, "%-20s %7s %7s %8s %10s %10s %10s %8s %8s %8s %11s %7s %20s\n",
		"strategy", "failed", "failed", "reads", "read p99", "read max", "longest", "DB q/s", "DB q/s", "DB q/s", "stale reads", "stale", "read p99 / max")
	fmt.Fprintf(w, "%-20s %7s %7s %8s %10s %10s %10s %8s %8s %8s %11s %7s %20s\n",
		"", "reads", "writes", "during", "during", "during", "overlap", "before", "during", "after", "after recov", "total", "after recovery")
	for _, r := range rows {
		o := r.Outage
		if o == nil {
			continue
		}
		p99, mx := "-", "-"
		if o.ReadsDuring > 0 {
			p99, mx = us(o.P99DuringUs), us(o.MaxDuringUs)
		}
		fmt.Fprintf(w, "%-20s %7d %7d %8d %10s %10s %10s %8.0f %8.0f %8.0f %11d %7d %20s\n",
			r.Strategy, r.FailedReads, r.FailedWrites, o.ReadsDuring, p99, mx, us(o.MaxOverlapUs),
			o.DBPerSecBefore, o.DBPerSecDuring, o.DBPerSecAfter, o.StaleAfter, r.StaleReads,
			us(o.P99AfterUs)+" / "+us(o.MaxAfterUs))
	}
	for _, r := range rows {
		if o := r.Outage; o != nil && o.StaleAfter > 0 {
			fmt.Fprintf(w, "%s: the last stale read after recovery began %.2fs after Redis came back\n", r.Strategy, o.LastStaleAfterS-o.EndS)
		}
	}
	for _, r := range rows {
		if l := r.Library; l != nil {
			fmt.Fprintf(w, "%s (library counters, warm-up included): cache breaker opens %d, cache timeouts %d, calls rejected by the breaker %d, cache errors %d, invalidation errors %d, invalidation retries %d, invalidations dropped %d, pending invalidations at the end %d (after Close %d)\n",
				r.Strategy, l.CacheBreakerOpens, l.CacheTimeouts, l.CacheCallsRejected, l.CacheErrors,
				l.CacheInvalidationErrors, l.InvalidationRetries, l.InvalidationsDropped, l.PendingInvalidations, l.PendingAfterClose)
		}
	}
}
