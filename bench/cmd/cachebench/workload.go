package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cacheaside/cacheaside"
)

// config is one invocation's workload.
type config struct {
	scenario    string
	users       int
	zipf        float64
	writes      float64 // fraction of operations that are writes
	hot         float64 // fraction of reads that go to user 1 (stampede)
	instances   int
	concurrency int
	duration    time.Duration
	warmup      time.Duration
	ops         int64 // when > 0, measure this many operations instead of duration
	ttl         time.Duration
	dbLatency   latency
	// outageAt and outage place the Redis black hole of the outage
	// scenario in the measured phase: it starts outageAt after the
	// measured phase begins and lasts outage (outage 0: no outage).
	outageAt, outage time.Duration
	// abandonAfter is how long after the end of a timed phase the
	// operations still running are waited for; past it they are
	// abandoned and counted as failed.
	abandonAfter time.Duration
	// partition is how many instances of each Redis-backed strategy are
	// cut off from Redis (black-holed) for the whole measured phase.
	partition int
}

// bucket is the resolution of the DB-queries timeline.
const bucket = 100 * time.Millisecond

// world is the state every strategy shares: the database, and per user
// the newest version acknowledged to a writer. The database assigns the
// versions (see versionedRepo), so writes of one user run concurrently
// and version order is commit order.
type world struct {
	repo *countingRepo
	// acked holds, per user, the newest version acknowledged to a writer,
	// shifted left by one, with the low bit set if an instance cut off from
	// Redis (-partition) wrote it.
	acked []atomic.Int64
}

func newWorld(repo *countingRepo, users int) *world {
	return &world{repo: repo, acked: make([]atomic.Int64, users+1)}
}

// ack records that a write of user id committed version v and was
// acknowledged, by a partitioned instance or not; the newest version wins.
func (w *world) ack(id int, v int64, partitioned bool) {
	n := v << 1
	if partitioned {
		n |= 1
	}
	for {
		old := w.acked[id].Load()
		if old>>1 >= v || w.acked[id].CompareAndSwap(old, n) {
			return
		}
	}
}

// newest returns the newest version of user id acknowledged to a writer
// (0 before any write), and whether a partitioned instance wrote it.
func (w *world) newest(id int) (v int64, byPartitioned bool) {
	n := w.acked[id].Load()
	return n >> 1, n&1 == 1
}

func userName(id int, version int64) string { return fmt.Sprintf("user %d v%d", id, version) }
func userEmail(id int) string               { return fmt.Sprintf("user%d@example.com", id) }

// version reads the version a row carries in its name.
func version(u *cacheaside.User) int64 {
	i := strings.LastIndex(u.Name, " v")
	if i < 0 {
		return -1
	}
	v, err := strconv.ParseInt(u.Name[i+2:], 10, 64)
	if err != nil {
		return -1
	}
	return v
}

// result is one strategy's row.
type result struct {
	Strategy string `json:"strategy"`
	Scenario string `json:"scenario"`
	// Seconds is the measured phase: -duration, or with -ops the time
	// they took. OpsPerSec divides by it the operations that succeeded
	// within it (with -duration, those that ended by its end; the few
	// that ended later still count in Ops and everywhere else).
	Seconds     float64 `json:"seconds"`
	Ops         int64   `json:"ops"`
	Reads       int64   `json:"reads"`
	Writes      int64   `json:"writes"`
	Errors      int64   `json:"errors"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	P50us       float64 `json:"read_p50_us"`
	P99us       float64 `json:"read_p99_us"`
	P999us      float64 `json:"read_p999_us"`
	WriteP50us  float64 `json:"write_p50_us"` // failed writes included, as failed reads are in the read percentiles
	WriteP99us  float64 `json:"write_p99_us"`
	WriteP999us float64 `json:"write_p999_us"`
	DBQueries   int64   `json:"db_queries"`
	DBPer1k     float64 `json:"db_queries_per_1k_requests"`
	HitRate     float64 `json:"hit_rate"`
	StaleReads  int64   `json:"stale_reads"`
	StaleRate   float64 `json:"stale_read_rate"`
	// CPU time per 1,000 operations of the measured phase (see cpu.go):
	// the whole machine's busy time (absent where /proc/stat is not) and
	// this process's own, and how busy the machine was.
	CPUMsPer1k     float64 `json:"cpu_ms_per_1k_ops,omitempty"`
	SelfCPUMsPer1k float64 `json:"self_cpu_ms_per_1k_ops"`
	BusyPct        float64 `json:"machine_busy_pct,omitempty"`
	// ReadsWaitedDB counts the reads of the measured phase (failed ones
	// included) that spent at least DBWaitUs, half the least delay the
	// run adds to a database call, while a database read was under way:
	// the reads that waited for a database query, their own or one they
	// joined in its first half, where a cache hit costs a Redis round trip
	// (see waitThreshold). Both are absent when that least delay is under
	// 2 ms (-db-latency none, exp:, 1ms), too close to a round trip.
	ReadsWaitedDB *int64  `json:"reads_waited_for_db,omitempty"`
	DBWaitUs      float64 `json:"db_wait_threshold_us,omitempty"`
	BucketMS      int     `json:"timeline_bucket_ms"`
	// WarmupSeconds is how long the unmeasured warm-up ran: the
	// scenario's, or longer until every local tier served.
	WarmupSeconds float64   `json:"warmup_seconds"`
	DBPerSecond   []float64 `json:"db_queries_per_second"`

	// FailedReads and FailedWrites split Errors: operations that returned
	// an error, and those abandoned still running (see Abandoned).
	FailedReads  int64 `json:"failed_reads"`
	FailedWrites int64 `json:"failed_writes"`
	// Abandoned counts operations still running -abandon-after past the
	// end of the measured phase; they count as failed.
	Abandoned int64 `json:"abandoned,omitempty"`
	// Outage is the outage scenario's view of the run; Partition splits
	// the run between the instances cut off from Redis and the others
	// (-partition, Redis-backed strategies only); Library is the
	// library's own counters, on its rows only.
	Outage    *outageResult    `json:"outage,omitempty"`
	Partition *partitionResult `json:"partition,omitempty"`
	Library   *libraryCounters `json:"library,omitempty"`
}

// opKind is what a worker is doing.
type opKind int32

const (
	opNone opKind = iota
	opRead
	opWrite
)

// outcome is one finished operation.
type outcome struct {
	kind  opKind
	start time.Time
	lat   time.Duration
	err   error
	stale bool // a read that returned a version older than one acknowledged before it began
	// staleByPartitioned: the newest write acknowledged before the stale
	// read began came from a partitioned instance.
	staleByPartitioned bool
}

// workerStats is what one worker counted. The worker records each
// operation under mu, which is contended only when drive abandons the
// worker: from then on the worker records nothing and stops.
type workerStats struct {
	mu                         sync.Mutex
	reads, writes, errs, stale int64
	readErrs, writeErrs        int64
	staleByPartitioned         int64
	lat, wlat                  []time.Duration // read and write latencies
	win                        windowStats
	deadline                   time.Time     // the end of a timed phase, or zero
	inWindow                   int64         // operations that succeeded and ended by deadline
	partitioned                bool          // its instance is cut off from Redis (-partition)
	waitAt                     time.Duration // keep the reads that took this long or more in slow; 0: none
	slow                       []span        // the reads that took waitAt or more (failed ones included)
	abandoned                  bool
	inflight                   atomic.Int32 // the opKind of the operation running, if any
	inflightStart              atomic.Int64 // when it began, in nanoseconds since epoch
	stopped                    atomic.Bool  // set with abandoned: start no more operations
}

// epoch is the origin of workerStats.inflightStart, so that the times it
// holds keep their monotonic reading.
var epoch = time.Now()

// begin notes that the worker starts an operation of kind k at t.
func (st *workerStats) begin(k opKind, t time.Time) {
	st.inflightStart.Store(int64(t.Sub(epoch)))
	st.inflight.Store(int32(k))
}

// record counts o, unless the worker was abandoned; it reports whether
// the worker may go on.
func (st *workerStats) record(o outcome, win *window) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.inflight.Store(int32(opNone))
	if st.abandoned {
		return false
	}
	if o.err == nil && !st.deadline.IsZero() && !o.start.Add(o.lat).After(st.deadline) {
		st.inWindow++
	}
	switch o.kind {
	case opRead:
		st.lat = append(st.lat, o.lat)
		if st.waitAt > 0 && o.lat >= st.waitAt {
			st.slow = append(st.slow, span{o.start, o.start.Add(o.lat)})
		}
		if o.err != nil {
			st.errs++
			st.readErrs++
		} else {
			st.reads++
			if o.stale {
				st.stale++
				if o.staleByPartitioned {
					st.staleByPartitioned++
				}
			}
		}
	case opWrite:
		st.wlat = append(st.wlat, o.lat)
		if o.err != nil {
			st.errs++
			st.writeErrs++
		} else {
			st.writes++
		}
	}
	if win != nil {
		st.win.add(win, o)
	}
	return true
}

// abandon stops st's counting and counts the operation it is running, if
// any, as failed, with the time it has run so far as its latency. It
// reports whether there was one.
func (st *workerStats) abandon(win *window, now time.Time) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.abandoned {
		return false
	}
	st.abandoned = true
	st.stopped.Store(true)
	k := opKind(st.inflight.Load())
	if k == opNone {
		return false
	}
	start := epoch.Add(time.Duration(st.inflightStart.Load()))
	o := outcome{kind: k, start: start, lat: now.Sub(start), err: errAbandoned}
	st.errs++
	if k == opRead {
		st.readErrs++
		st.lat = append(st.lat, o.lat)
	} else {
		st.writeErrs++
		st.wlat = append(st.wlat, o.lat)
	}
	if win != nil {
		st.win.add(win, o)
	}
	return true
}

var errAbandoned = errors.New("abandoned: still running after -abandon-after")

// run drives one strategy's instances with cfg's workload: an unmeasured
// warm-up, then the measured phase. Progress goes to progress once a second.
// With sw (the outage scenario), Redis is black-holed through sw for
// cfg.outage from cfg.outageAt into the measured phase, and passes again
// after; sw is also closed if operations have to be abandoned, to free
// them. With part (-partition), the first cfg.partition instances reach
// Redis through part, which run black-holes when the measured phase
// begins; the caller heals it once it has read the instances' state.
func run(ctx context.Context, cfg config, w *world, name string, insts []instance, sw, part faultSwitch, progress io.Writer) result {
	unblock := closer(sw)
	if part != nil {
		unblock = closer(part)
	}
	var warm time.Duration
	if cfg.warmup > 0 {
		start := time.Now()
		warmup := func(d time.Duration) {
			stats, ab := drive(ctx, cfg, w, insts, driveOpts{deadline: time.Now().Add(d), unblock: unblock, progress: progress})
			if ab > 0 || failed(stats) > 0 {
				fmt.Fprintf(progress, "  %-20s warm-up: %d operations failed, %d abandoned\n", name, failed(stats), ab)
			}
		}
		warmup(cfg.warmup)
		// A local tier may not serve until a while after it joined: the
		// warm-up goes on until every instance's does.
		for !allServing(insts) && time.Since(start) < maxLocalWarmup {
			warmup(250 * time.Millisecond)
		}
		warm = time.Since(start)
		if !allServing(insts) {
			fmt.Fprintf(progress, "  %-20s warm-up: the local tiers do not all serve after %s; measuring anyway\n", name, warm.Round(time.Millisecond))
		} else if warm > cfg.warmup+time.Second {
			fmt.Fprintf(progress, "  %-20s warm-up: the local tiers all serve after %s\n", name, warm.Round(time.Millisecond))
		}
	}
	partitioned, label := 0, ""
	if part != nil && cfg.partition > 0 {
		partitioned = min(cfg.partition, len(insts))
		label = fmt.Sprintf("  [%d of %d instances partitioned]", partitioned, len(insts))
		part.Blackhole()
	}
	w.repo.startTimeline(time.Now())
	waitAt := cfg.dbLatency.waitThreshold()
	if waitAt > 0 {
		w.repo.startSpans()
	}
	startQ := w.repo.queries.Load()
	startR := w.repo.reads.Load()

	var opsDone atomic.Int64
	stop := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Add(1)
	begin := time.Now()
	cpuBegin := readCPU()
	cpuEnd := make(chan cpuTimes, 1)
	var win *window
	stopOutage := func() {}
	if sw != nil && cfg.outage > 0 {
		win = newWindow(begin)
		stopOutage = startOutage(sw, win, cfg.outageAt, cfg.outage, progress)
	}
	go func() { // progress, once a second, until stop
		defer pwg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		lastOps, lastQ, lastT := int64(0), startQ, begin
		for {
			select {
			case <-stop:
				return
			case now := <-t.C:
				ops, q := opsDone.Load(), w.repo.queries.Load()
				dt := now.Sub(lastT).Seconds()
				fmt.Fprintf(progress, "  %-20s %4.0fs  %8.0f ops/s  %8.0f DB queries/s%s%s\n",
					name, now.Sub(begin).Seconds(), float64(ops-lastOps)/dt, float64(q-lastQ)/dt, win.label(now), label)
				lastOps, lastQ, lastT = ops, q, now
			}
		}
	}()
	var deadline time.Time
	var cpuTimer *time.Timer
	if cfg.ops <= 0 {
		deadline = begin.Add(cfg.duration)
		// The operations still running at the deadline do not count
		// (OpsPerSec), and nor does the CPU spent after it.
		cpuTimer = time.AfterFunc(cfg.duration, func() { cpuEnd <- readCPU() })
	}
	stats, abandoned := drive(ctx, cfg, w, insts, driveOpts{deadline: deadline, ops: cfg.ops, done: &opsDone,
		win: win, partitioned: partitioned, waitAt: waitAt, unblock: unblock, progress: progress})
	elapsed := time.Since(begin)
	if cfg.ops <= 0 {
		// A timed phase lasts -duration: the time spent waiting for the
		// operations still running at its end (or for those abandoned) is
		// not measured time.
		elapsed = deadline.Sub(begin)
	}
	stopOutage()
	close(stop)
	pwg.Wait()

	res := result{Strategy: name, Scenario: cfg.scenario, Seconds: elapsed.Seconds(), BucketMS: int(bucket / time.Millisecond),
		Abandoned: abandoned, WarmupSeconds: warm.Seconds()}
	all := summarize(stats, func(*workerStats) bool { return true })
	res.Reads, res.Writes, res.Errors = all.reads, all.writes, all.errs
	res.FailedReads, res.FailedWrites, res.StaleReads = all.readErrs, all.writeErrs, all.stale
	res.Ops = res.Reads + res.Writes
	res.OpsPerSec = float64(res.Ops) / elapsed.Seconds()
	if cfg.ops <= 0 {
		res.OpsPerSec = float64(all.inWindow) / elapsed.Seconds()
	}
	res.P50us, res.P99us, res.P999us = pct(all.lat, 0.50), pct(all.lat, 0.99), pct(all.lat, 0.999)
	res.WriteP50us, res.WriteP99us, res.WriteP999us = pct(all.wlat, 0.50), pct(all.wlat, 0.99), pct(all.wlat, 0.999)
	cpuOps, cpuAt := res.Ops, cpuTimes{}
	switch {
	case cpuTimer == nil:
		cpuAt = readCPU()
	case cpuTimer.Stop(): // the phase ended early (its context did)
		cpuOps, cpuAt = all.inWindow, readCPU()
	default:
		cpuOps, cpuAt = all.inWindow, <-cpuEnd
	}
	res.setCPU(cpuBegin, cpuAt, cpuOps)
	if waitAt > 0 {
		n := waitedForDB(all.slow, w.repo.stopSpans(), waitAt)
		res.ReadsWaitedDB, res.DBWaitUs = &n, float64(waitAt.Nanoseconds())/1e3
	}
	res.DBQueries = w.repo.queries.Load() - startQ
	if res.Ops > 0 {
		res.DBPer1k = float64(res.DBQueries) * 1000 / float64(res.Ops)
	}
	if res.Reads > 0 {
		dbReads := w.repo.reads.Load() - startR
		res.HitRate = max(0, 1-float64(dbReads)/float64(res.Reads))
		res.StaleRate = float64(res.StaleReads) / float64(res.Reads)
	}
	res.DBPerSecond = w.repo.timeline(elapsed)
	if win != nil {
		res.Outage = all.win.result(win, res.DBPerSecond, bucket)
	}
	if partitioned > 0 {
		res.Partition = &partitionResult{Instances: partitioned,
			Partitioned: summarize(stats, func(s *workerStats) bool { return s.partitioned }).group(),
			Healthy:     summarize(stats, func(s *workerStats) bool { return !s.partitioned }).group()}
	}
	return res
}

// summary is what the workers that keep pass counted, merged, with their
// latencies sorted.
type summary struct {
	reads, writes, errs, stale int64
	readErrs, writeErrs        int64
	staleByPartitioned         int64
	inWindow                   int64
	lat, wlat                  []time.Duration
	slow                       []span
	win                        windowStats
}

func summarize(stats []*workerStats, keep func(*workerStats) bool) summary {
	var m summary
	for _, s := range stats {
		if !keep(s) {
			continue
		}
		s.mu.Lock()
		m.reads += s.reads
		m.writes += s.writes
		m.errs += s.errs
		m.readErrs += s.readErrs
		m.writeErrs += s.writeErrs
		m.stale += s.stale
		m.staleByPartitioned += s.staleByPartitioned
		m.inWindow += s.inWindow
		m.lat = append(m.lat, s.lat...)
		m.wlat = append(m.wlat, s.wlat...)
		m.slow = append(m.slow, s.slow...)
		m.win.merge(&s.win)
		s.mu.Unlock()
	}
	slices.Sort(m.lat)
	slices.Sort(m.wlat)
	return m
}

// maxLocalWarmup bounds the warm-up that waits for local tiers to serve.
const maxLocalWarmup = 30 * time.Second

// servingReporter is an instance that can say whether its local tier
// serves reads from memory; instances without one are taken as serving.
type servingReporter interface {
	serving() bool
}

func allServing(insts []instance) bool {
	for _, in := range insts {
		if s, ok := in.(servingReporter); ok && !s.serving() {
			return false
		}
	}
	return true
}

// closer returns a function that closes sw, or nil when there is no sw.
func closer(sw faultSwitch) func() {
	if sw == nil {
		return nil
	}
	return func() { _ = sw.Close() }
}

func failed(stats []*workerStats) int64 {
	var n int64
	for _, s := range stats {
		s.mu.Lock()
		n += s.errs
		s.mu.Unlock()
	}
	return n
}

func pct(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(int(q*float64(len(sorted))), len(sorted)-1)
	return float64(sorted[i].Nanoseconds()) / 1e3
}

// driveOpts says how long one phase of drive runs and what it records.
type driveOpts struct {
	deadline time.Time     // end of a timed phase
	ops      int64         // when > 0, run this many operations instead
	done     *atomic.Int64 // counts the operations started; may be nil
	win      *window       // the outage window, or nil
	// partitioned is how many instances, the first ones, are cut off from
	// Redis (-partition): their workers' operations are told apart.
	partitioned int
	// waitAt, if positive, makes the workers keep the reads that take
	// that long or more (workerStats.slow).
	waitAt time.Duration
	// unblock, if not nil, is called when operations are abandoned, to
	// make them return (the outage scenario closes its proxy).
	unblock  func()
	progress io.Writer
}

// stragglerWait is how long drive waits, after abandoning operations and
// calling unblock, for their workers to return before it gives up on them.
const stragglerWait = 10 * time.Second

// drive runs cfg.concurrency workers spread over the instances until the
// deadline or until o.ops operations (when o.ops > 0).
//
// A timed phase does not wait forever for an operation that hangs: workers
// still running cfg.abandonAfter past the deadline are abandoned. Each
// operation they were running counts as failed (a read with the time it
// had run as its latency), they record nothing more, the context of
// their operations is canceled and o.unblock is called; drive returns
// once they have, or stragglerWait later, saying on o.progress if some
// are still stuck. It returns the workers' stats and how many operations
// it abandoned.
func drive(ctx context.Context, cfg config, w *world, insts []instance, o driveOpts) ([]*workerStats, int64) {
	done := o.done
	if done == nil {
		done = new(atomic.Int64)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stats := make([]*workerStats, cfg.concurrency)
	var wg sync.WaitGroup
	for i := range cfg.concurrency {
		st := &workerStats{partitioned: i%len(insts) < o.partitioned, deadline: o.deadline, waitAt: o.waitAt}
		stats[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst := insts[i%len(insts)]
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(i)))
			zipf := rand.NewZipf(rng, cfg.zipf, 1, uint64(cfg.users-1))
			for !st.stopped.Load() {
				if o.ops > 0 {
					if done.Add(1) > o.ops {
						return
					}
				} else {
					if !time.Now().Before(o.deadline) { // every time: an operation may take seconds
						return
					}
					done.Add(1)
				}
				id := 1 + int(zipf.Uint64())
				if cfg.hot > 0 && rng.Float64() < cfg.hot {
					id = 1
				}
				var out outcome
				if cfg.writes > 0 && rng.Float64() < cfg.writes {
					out = write(ctx, w, inst, id, st)
				} else {
					out = read(ctx, w, inst, id, st)
				}
				if !st.record(out, o.win) {
					return
				}
			}
		}()
	}
	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()
	if o.ops > 0 || cfg.abandonAfter <= 0 {
		<-finished
		return stats, 0
	}
	t := time.NewTimer(time.Until(o.deadline.Add(cfg.abandonAfter)))
	defer t.Stop()
	select {
	case <-finished:
		return stats, 0
	case <-t.C:
	}
	now := time.Now()
	var abandoned int64
	for _, st := range stats {
		if st.abandon(o.win, now) {
			abandoned++
		}
	}
	cancel()
	if o.unblock != nil {
		o.unblock()
	}
	if o.progress != nil && abandoned > 0 {
		fmt.Fprintf(o.progress, "  abandoned %d operations still running %s after the end of the phase\n", abandoned, cfg.abandonAfter)
	}
	t.Reset(stragglerWait)
	select {
	case <-finished:
	case <-t.C:
		stuck := 0
		for _, st := range stats {
			if opKind(st.inflight.Load()) != opNone {
				stuck++
			}
		}
		if o.progress != nil {
			fmt.Fprintf(o.progress, "  %d abandoned workers still stuck %s later; leaving them\n", stuck, stragglerWait)
		}
	}
	return stats, abandoned
}

// write updates user id through inst. The database assigns the version
// the write commits and inst's repository writes it back into the user's
// name (see versionedRepo.UpdateUser); once the write is acknowledged, it
// is the newest version a read that begins later may return.
func write(ctx context.Context, w *world, inst instance, id int, st *workerStats) outcome {
	t0 := time.Now()
	st.begin(opWrite, t0)
	u := &cacheaside.User{ID: id, Name: "user " + strconv.Itoa(id) + " (version set by the database)", Email: userEmail(id)}
	err := inst.Update(ctx, u)
	out := outcome{kind: opWrite, start: t0, lat: time.Since(t0), err: err}
	if err != nil {
		return out
	}
	v := version(u)
	if v < 1 {
		out.err = fmt.Errorf("update of user %d acknowledged without the version the database assigned (name %q)", id, u.Name)
		return out
	}
	w.ack(id, v, st.partitioned)
	return out
}

func read(ctx context.Context, w *world, inst instance, id int, st *workerStats) outcome {
	before, byPartitioned := w.newest(id)
	t0 := time.Now()
	st.begin(opRead, t0)
	u, err := inst.Get(ctx, id)
	out := outcome{kind: opRead, start: t0, lat: time.Since(t0), err: err}
	if err == nil && version(u) < before {
		out.stale, out.staleByPartitioned = true, byPartitioned
	}
	return out
}

// countingRepo puts the configured latency in front of every database call
// and counts the queries, overall and per timeline bucket.
type countingRepo struct {
	inner   cacheaside.UserRepository
	lat     latency
	queries atomic.Int64
	reads   atomic.Int64

	mu      sync.Mutex // protects start and buckets
	start   time.Time
	buckets []atomic.Int64

	smu      sync.Mutex // protects spanning and spans
	spanning bool
	spans    []span // database reads, as they ended, while spanning
}

// span is when an operation ran.
type span struct{ start, end time.Time }

// startSpans makes r keep the span of every database read that ends from
// now on, until stopSpans returns them.
func (r *countingRepo) startSpans() {
	r.smu.Lock()
	defer r.smu.Unlock()
	r.spanning, r.spans = true, nil
}

func (r *countingRepo) stopSpans() []span {
	r.smu.Lock()
	defer r.smu.Unlock()
	out := r.spans
	r.spanning, r.spans = false, nil
	return out
}

// endSpan keeps a database read that began at start and ends now, if r
// keeps them.
func (r *countingRepo) endSpan(start time.Time) {
	end := time.Now()
	r.smu.Lock()
	defer r.smu.Unlock()
	if r.spanning {
		r.spans = append(r.spans, span{start, end})
	}
}

// waitedForDB counts the reads that spent at least at while one of the
// database reads db was under way: at least at of the read's span lies
// in the union of db's.
func waitedForDB(reads, db []span, at time.Duration) int64 {
	slices.SortFunc(db, func(a, b span) int { return a.start.Compare(b.start) })
	var union []span // disjoint, in order
	for _, d := range db {
		if n := len(union); n > 0 && !d.start.After(union[n-1].end) {
			if d.end.After(union[n-1].end) {
				union[n-1].end = d.end
			}
			continue
		}
		union = append(union, d)
	}
	var n int64
	for _, rd := range reads {
		// The first interval of the union that ends after the read began.
		i, _ := slices.BinarySearchFunc(union, rd.start, func(u span, t time.Time) int {
			if u.end.After(t) {
				return 1
			}
			return -1
		})
		var in time.Duration
		for ; i < len(union) && union[i].start.Before(rd.end); i++ {
			from, to := union[i].start, union[i].end
			if rd.start.After(from) {
				from = rd.start
			}
			if rd.end.Before(to) {
				to = rd.end
			}
			in += to.Sub(from)
		}
		if in >= at {
			n++
		}
	}
	return n
}

func newCountingRepo(inner cacheaside.UserRepository, lat latency) *countingRepo {
	return &countingRepo{inner: inner, lat: lat}
}

func (r *countingRepo) startTimeline(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.start = t
	r.buckets = make([]atomic.Int64, 36_000) // an hour of 100 ms buckets
}

func (r *countingRepo) count(read bool) {
	r.queries.Add(1)
	if read {
		r.reads.Add(1)
	}
	r.mu.Lock()
	start, buckets := r.start, r.buckets
	r.mu.Unlock()
	if buckets != nil {
		if i := int(time.Since(start) / bucket); i < len(buckets) {
			buckets[i].Add(1)
		}
	}
}

// timeline returns DB queries per second for each bucket of the measured
// phase.
func (r *countingRepo) timeline(d time.Duration) []float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := min(int(d/bucket), len(r.buckets)) // whole buckets only
	out := make([]float64, n)
	for i := range out {
		out[i] = float64(r.buckets[i].Load()) * float64(time.Second/bucket)
	}
	r.buckets = nil
	return out
}

func (r *countingRepo) GetUser(ctx context.Context, id int) (*cacheaside.User, error) {
	r.count(true)
	defer r.endSpan(time.Now())
	r.lat.sleep()
	return r.inner.GetUser(ctx, id)
}

func (r *countingRepo) CreateUser(ctx context.Context, u *cacheaside.User) error {
	return r.inner.CreateUser(ctx, u) // seeding: not counted, no latency
}

func (r *countingRepo) UpdateUser(ctx context.Context, u *cacheaside.User) error {
	r.count(false)
	r.lat.sleep()
	return r.inner.UpdateUser(ctx, u)
}

// UpdateUserReturning is UpdateUser returning the row as stored, when the
// inner repository can (cacheaside's UserUpdateReturner).
func (r *countingRepo) UpdateUserReturning(ctx context.Context, u *cacheaside.User) (*cacheaside.User, error) {
	ret, ok := r.inner.(cacheaside.UserUpdateReturner)
	if !ok {
		return nil, r.UpdateUser(ctx, u)
	}
	r.count(false)
	r.lat.sleep()
	return ret.UpdateUserReturning(ctx, u)
}

func (r *countingRepo) DeleteUser(ctx context.Context, id int) error {
	r.count(false)
	r.lat.sleep()
	return r.inner.DeleteUser(ctx, id)
}

// latency is the delay added to every database call: fixed ("2ms"),
// uniform over a range ("1ms-5ms") or exponential around a mean
// ("exp:2ms").
type latency struct {
	kind     string // "", "fixed", "uniform", "exp"
	lo, hi   time.Duration
	original string
}

func parseLatency(s string) (latency, error) {
	l := latency{original: s}
	switch {
	case s == "" || s == "0":
		return l, nil
	case strings.HasPrefix(s, "exp:"):
		d, err := time.ParseDuration(s[4:])
		if err != nil || d <= 0 {
			return l, fmt.Errorf("-db-latency %q: want exp:<mean duration>", s)
		}
		l.kind, l.lo = "exp", d
	case strings.Contains(s, "-"):
		a, b, _ := strings.Cut(s, "-")
		lo, err1 := time.ParseDuration(a)
		hi, err2 := time.ParseDuration(b)
		if err1 != nil || err2 != nil || lo < 0 || hi < lo {
			return l, fmt.Errorf("-db-latency %q: want <min>-<max>, such as 1ms-5ms", s)
		}
		l.kind, l.lo, l.hi = "uniform", lo, hi
	default:
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return l, fmt.Errorf("-db-latency %q: want a duration such as 2ms", s)
		}
		l.kind, l.lo = "fixed", d
	}
	return l, nil
}

func (l latency) String() string {
	if l.kind == "" {
		return "none"
	}
	return l.original
}

// waitThreshold is how long a read must spend while a database read is
// under way to count as one that waited for the database
// (result.ReadsWaitedDB): half the least delay l adds to a database call,
// which every read that led a load spends, as does every read that joined
// one in its first half (one that joined a load about to end is missed).
// It is 0, and nothing is counted, when that least delay is under 2 ms
// (none, exp:, 1ms): a cache hit's Redis round trip on a loaded machine
// would come too close to it.
func (l latency) waitThreshold() time.Duration {
	if (l.kind == "fixed" || l.kind == "uniform") && l.lo >= 2*time.Millisecond {
		return l.lo / 2
	}
	return 0
}

func (l latency) sleep() {
	switch l.kind {
	case "fixed":
		time.Sleep(l.lo)
	case "uniform":
		time.Sleep(l.lo + rand.N(l.hi-l.lo+1))
	case "exp":
		time.Sleep(time.Duration(rand.ExpFloat64() * float64(l.lo)))
	}
}
