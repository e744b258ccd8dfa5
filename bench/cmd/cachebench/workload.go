package main

import (
	"context"
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
}

// bucket is the resolution of the DB-queries timeline.
const bucket = 100 * time.Millisecond

// world is the state every strategy shares: the database, the versions
// acknowledged per user, and the per-user write locks that make the
// version order the commit order.
type world struct {
	repo  *countingRepo
	locks []sync.Mutex
	next  []int64        // the version the next write of a user commits; under locks
	acked []atomic.Int64 // the newest version acknowledged to a writer
}

func newWorld(repo *countingRepo, users int) *world {
	return &world{
		repo:  repo,
		locks: make([]sync.Mutex, users+1),
		next:  make([]int64, users+1),
		acked: make([]atomic.Int64, users+1),
	}
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
	Strategy    string    `json:"strategy"`
	Scenario    string    `json:"scenario"`
	Seconds     float64   `json:"seconds"`
	Ops         int64     `json:"ops"`
	Reads       int64     `json:"reads"`
	Writes      int64     `json:"writes"`
	Errors      int64     `json:"errors"`
	OpsPerSec   float64   `json:"ops_per_sec"`
	P50us       float64   `json:"read_p50_us"`
	P99us       float64   `json:"read_p99_us"`
	P999us      float64   `json:"read_p999_us"`
	DBQueries   int64     `json:"db_queries"`
	DBPer1k     float64   `json:"db_queries_per_1k_requests"`
	HitRate     float64   `json:"hit_rate"`
	StaleReads  int64     `json:"stale_reads"`
	StaleRate   float64   `json:"stale_read_rate"`
	BucketMS    int       `json:"timeline_bucket_ms"`
	DBPerSecond []float64 `json:"db_queries_per_second"`
}

// workerStats is what one worker counted.
type workerStats struct {
	reads, writes, errs, stale int64
	lat                        []time.Duration
}

// run drives one strategy's instances with cfg's workload: an unmeasured
// warm-up, then the measured phase. Progress goes to progress once a second.
func run(ctx context.Context, cfg config, w *world, name string, insts []instance, progress io.Writer) result {
	if cfg.warmup > 0 {
		drive(ctx, cfg, w, insts, time.Now().Add(cfg.warmup), 0, nil)
	}
	w.repo.startTimeline(time.Now())
	startQ := w.repo.queries.Load()
	startR := w.repo.reads.Load()

	var opsDone atomic.Int64
	stop := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Add(1)
	begin := time.Now()
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
				fmt.Fprintf(progress, "  %-15s %4.0fs  %8.0f ops/s  %8.0f DB queries/s\n",
					name, now.Sub(begin).Seconds(), float64(ops-lastOps)/dt, float64(q-lastQ)/dt)
				lastOps, lastQ, lastT = ops, q, now
			}
		}
	}()
	var deadline time.Time
	if cfg.ops <= 0 {
		deadline = begin.Add(cfg.duration)
	}
	stats := drive(ctx, cfg, w, insts, deadline, cfg.ops, &opsDone)
	elapsed := time.Since(begin)
	close(stop)
	pwg.Wait()

	res := result{Strategy: name, Scenario: cfg.scenario, Seconds: elapsed.Seconds(), BucketMS: int(bucket / time.Millisecond)}
	var lat []time.Duration
	for _, s := range stats {
		res.Reads += s.reads
		res.Writes += s.writes
		res.Errors += s.errs
		res.StaleReads += s.stale
		lat = append(lat, s.lat...)
	}
	res.Ops = res.Reads + res.Writes
	res.OpsPerSec = float64(res.Ops) / elapsed.Seconds()
	slices.Sort(lat)
	res.P50us, res.P99us, res.P999us = pct(lat, 0.50), pct(lat, 0.99), pct(lat, 0.999)
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
	return res
}

func pct(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(int(q*float64(len(sorted))), len(sorted)-1)
	return float64(sorted[i].Nanoseconds()) / 1e3
}

// drive runs cfg.concurrency workers spread over the instances until the
// deadline or until ops operations (when ops > 0).
func drive(ctx context.Context, cfg config, w *world, insts []instance, deadline time.Time, ops int64, done *atomic.Int64) []*workerStats {
	if done == nil {
		done = new(atomic.Int64)
	}
	stats := make([]*workerStats, cfg.concurrency)
	var wg sync.WaitGroup
	for i := range cfg.concurrency {
		st := &workerStats{}
		stats[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst := insts[i%len(insts)]
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(i)))
			zipf := rand.NewZipf(rng, cfg.zipf, 1, uint64(cfg.users-1))
			for n := 0; ; n++ {
				if ops > 0 {
					if done.Add(1) > ops {
						return
					}
				} else {
					if n%16 == 0 && !time.Now().Before(deadline) {
						return
					}
					done.Add(1)
				}
				id := 1 + int(zipf.Uint64())
				if cfg.hot > 0 && rng.Float64() < cfg.hot {
					id = 1
				}
				if cfg.writes > 0 && rng.Float64() < cfg.writes {
					write(ctx, w, inst, id, st)
					continue
				}
				read(ctx, w, inst, id, st)
			}
		}()
	}
	wg.Wait()
	return stats
}

func write(ctx context.Context, w *world, inst instance, id int, st *workerStats) {
	w.locks[id].Lock()
	defer w.locks[id].Unlock()
	v := w.next[id] + 1
	u := &cacheaside.User{ID: id, Name: userName(id, v), Email: userEmail(id)}
	if err := inst.Update(ctx, u); err != nil {
		st.errs++
		return
	}
	w.next[id] = v
	w.acked[id].Store(v)
	st.writes++
}

func read(ctx context.Context, w *world, inst instance, id int, st *workerStats) {
	before := w.acked[id].Load()
	t0 := time.Now()
	u, err := inst.Get(ctx, id)
	st.lat = append(st.lat, time.Since(t0))
	if err != nil {
		st.errs++
		return
	}
	st.reads++
	if version(u) < before {
		st.stale++
	}
}

// countingRepo puts the configured latency in front of every database call
// and counts the queries, overall and per timeline bucket.
type countingRepo struct {
	inner   cacheaside.UserRepository
	batch   cacheaside.BatchUserRepository
	lat     latency
	queries atomic.Int64
	reads   atomic.Int64

	mu      sync.Mutex // protects start and buckets
	start   time.Time
	buckets []atomic.Int64
}

func newCountingRepo(inner cacheaside.UserRepository, lat latency) *countingRepo {
	b, _ := inner.(cacheaside.BatchUserRepository)
	return &countingRepo{inner: inner, batch: b, lat: lat}
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
	r.lat.sleep()
	return r.inner.GetUser(ctx, id)
}

func (r *countingRepo) GetUsers(ctx context.Context, ids []int) ([]*cacheaside.User, error) {
	r.count(true)
	r.lat.sleep()
	return r.batch.GetUsers(ctx, ids)
}

func (r *countingRepo) CreateUser(ctx context.Context, u *cacheaside.User) error {
	return r.inner.CreateUser(ctx, u) // seeding: not counted, no latency
}

func (r *countingRepo) UpdateUser(ctx context.Context, u *cacheaside.User) error {
	r.count(false)
	r.lat.sleep()
	return r.inner.UpdateUser(ctx, u)
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
