// Command cachebench runs one workload against several caching strategies
// in one invocation, on the same database and Redis, and prints a row per
// strategy: throughput, read and write latency percentiles, database
// queries, hit rate, and stale reads (reads that returned a version older
// than the newest write acknowledged before the read began).
//
// Versions come from the database: cachebench's own users table has a
// version column, and an update moves it on and writes it into the name in
// one statement (see repo.go), so writes of one user run concurrently and
// the version a write reports is the one it committed.
//
// Strategies: nocache, seed (the textbook cache-aside), cacheaside (this
// library), go-redis-cache and sturdyc run by default; cacheaside-local
// (WithLocalCache), cacheaside-relaxed (WithRelaxedLocalCache),
// cacheaside-early (WithEarlyRefresh(1): XFetch early refresh),
// cacheaside-adaptive (WithAdaptiveTTL(TTL/4, TTL*20): per-key TTLs, TTL
// being -ttl or the scenario's) and go-redis-cache-local (go-redis/cache
// with its local TinyLFU) run with -all or when -strategies names them,
// which keeps a run with no flags under a minute.
//
// When every database call is delayed by 2 ms or more (-db-latency 2ms,
// 2ms-5ms; the stampede scenario's 20ms), the table adds the reads that
// waited for the database: those that spent at least half that least
// delay while a database read was under way, as a read that led a load,
// or joined one, does and a cache hit does not. The library's rows add
// its own counters in a note (cache misses, shared loads, early
// refreshes, ...).
//
// With -partition N, the first N instances of each Redis-backed strategy
// reach Redis through a proxy black-holed for the whole measured phase
// (see partition.go); a second table tells their operations from the
// healthy instances'.
//
// The outage scenario reaches Redis through a fault-injection proxy of
// each strategy's own (internal/faultproxy) and black-holes it for
// -outage in the middle of the measured phase: see outage.go for what it
// adds to the rows.
//
// No operation can hang a run: operations still running -abandon-after
// (30 s) past the end of a timed phase are abandoned, counted as failed
// (and in the "abandoned" JSON field), and in the outage scenario the
// proxy is closed to make them return.
//
// With no flags it runs on embedded defaults: SQLite (modernc.org/sqlite)
// in a temporary file, and the redis-server at REDIS_ADDR or
// 127.0.0.1:6379 if one answers, else an in-process miniredis. Point it at
// real servers with -redis and -postgres.
//
//	go run ./cmd/cachebench                                   # zipf, about 40 s
//	go run ./cmd/cachebench -scenario stampede -plot db.svg
//	go run ./cmd/cachebench -scenario stampede -strategies seed,cacheaside,cacheaside-early,go-redis-cache,sturdyc
//	go run ./cmd/cachebench -scenario zipf -ttl 1s -duration 10s -strategies cacheaside,cacheaside-adaptive
//	go run ./cmd/cachebench -scenario outage -outage 3s -plot outage.svg  # about 1 min
//	go run ./cmd/cachebench -redis 127.0.0.1:6379 -postgres postgres://... -db-latency 1ms-3ms -json out.json
//	go run ./cmd/cachebench -all -partition 1 -duration 10s              # about 2 min
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/redis/go-redis/v9"
	_ "modernc.org/sqlite"

	"github.com/cacheaside/cacheaside/internal/faultproxy"
)

func main() {
	if err := realMain(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "cachebench:", err)
		os.Exit(1)
	}
}

// scenarioDefaults are what a scenario changes unless a flag says
// otherwise.
var scenarioDefaults = map[string]struct {
	writes, hot float64
	ttl         time.Duration
	warmup      time.Duration
	duration    time.Duration // 0: the -duration flag's default
	dbLatency   string
	outage      bool // black-hole Redis for -outage in the measured phase
	about       string
}{
	"zipf":      {writes: 0.05, ttl: time.Minute, warmup: time.Second, about: "steady Zipf-skewed reads with 5% writes, after a 1 s warm-up"},
	"stampede":  {writes: 0, hot: 1, ttl: time.Second, warmup: time.Second, dbLatency: "20ms", about: "every read on one hot key whose entry expires every second (TTL 1 s), 20 ms database"},
	"coldstart": {writes: 0, ttl: time.Hour, about: "an empty cache under full Zipf load from the first request, no writes"},
	"outage": {writes: 0.05, ttl: time.Minute, warmup: time.Second, duration: 10 * time.Second, dbLatency: "1ms", outage: true,
		about: "Zipf reads with 5% writes, 1 ms database; Redis black-holed through a proxy in the middle of the measured phase"},
}

// scenarioNames lists the scenarios for messages.
const scenarioNames = "zipf, stampede, coldstart, outage"

// defaultOutageAt is when the outage starts into the measured phase,
// unless -outage-at says otherwise or -duration is too short for it.
const defaultOutageAt = 3 * time.Second

func realMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cachebench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		scenario    = fs.String("scenario", "zipf", "workload: "+scenarioNames)
		redisAddr   = fs.String("redis", "", "Redis address (host:port, or several comma-separated for a cluster); default REDIS_ADDR, then 127.0.0.1:6379 if it answers, else in-process miniredis")
		pgDSN       = fs.String("postgres", "", "PostgreSQL DSN (pgx); default: SQLite in a temporary file")
		users       = fs.Int("users", 10_000, "users in the table")
		zipf        = fs.Float64("zipf", 1.1, "Zipf skew s (> 1; larger is more skewed)")
		writes      = fs.Float64("writes", -1, "fraction of operations that are writes (default per scenario)")
		instances   = fs.Int("instances", 4, "service instances, each with its own Redis client")
		concurrency = fs.Int("concurrency", 32, "concurrent workers, spread over the instances")
		duration    = fs.Duration("duration", 5*time.Second, "measured time per strategy (default 10s for outage)")
		ops         = fs.Int64("ops", 0, "measure this many operations per strategy instead of -duration")
		ttl         = fs.Duration("ttl", 0, "cache TTL (default per scenario); cacheaside-adaptive's TTLs range from a quarter of it to 20 times it")
		dbLatency   = fs.String("db-latency", "", "delay added to every database call: 2ms, 1ms-5ms (uniform) or exp:2ms (default per scenario: none, 20ms for stampede, 1ms for outage)")
		only        = fs.String("strategies", "", "comma-separated strategies to run (default: "+strategyNames(defaultStrategies())+"; see -all)")
		all         = fs.Bool("all", false, "run every strategy: the default ones and "+strategyNames(extraStrategies()))
		jsonOut     = fs.String("json", "", "write the rows as JSON to this file (- for stdout)")
		plotOut     = fs.String("plot", "", "write an SVG chart of database queries per second over time to this file")
		outage      = fs.Duration("outage", 3*time.Second, "outage scenario: how long Redis is black-holed")
		outageAt    = fs.Duration("outage-at", 0, "outage scenario: when the black hole starts into the measured phase (default 3s, or half of what -duration leaves besides -outage if less)")
		abandon     = fs.Duration("abandon-after", 30*time.Second, "abandon, and count as failed, operations still running this long after the end of a timed phase")
		cpuProfile  = fs.String("cpuprofile", "", "write a CPU profile of the whole run (go tool pprof) to this file")
		partition   = fs.Int("partition", 0, "cut this many instances (the first ones) of each Redis-backed strategy off from Redis for the whole measured phase (a black-holing proxy); reads and writes still go to every instance")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	def, ok := scenarioDefaults[*scenario]
	if !ok {
		return fmt.Errorf("unknown -scenario %q (%s)", *scenario, scenarioNames)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg := config{scenario: *scenario, users: *users, zipf: *zipf, writes: def.writes, hot: def.hot,
		instances: *instances, concurrency: *concurrency, duration: *duration, warmup: def.warmup,
		ops: *ops, ttl: def.ttl, abandonAfter: *abandon}
	if def.duration > 0 && !set["duration"] {
		cfg.duration = def.duration
	}
	if def.outage {
		cfg.outage, cfg.outageAt = *outage, *outageAt
		if !set["outage-at"] {
			cfg.outageAt = min(defaultOutageAt, (cfg.duration-cfg.outage)/2)
		}
	} else if set["outage"] || set["outage-at"] {
		return errors.New("-outage and -outage-at apply to -scenario outage only")
	}
	if *writes >= 0 {
		cfg.writes = *writes
	}
	if *ttl > 0 {
		cfg.ttl = *ttl
	}
	lat := def.dbLatency
	if *dbLatency != "" {
		lat = *dbLatency
	}
	var err error
	if cfg.dbLatency, err = parseLatency(lat); err != nil {
		return err
	}
	switch {
	case cfg.users < 2:
		return errors.New("-users must be at least 2")
	case cfg.zipf <= 1:
		return errors.New("-zipf must be greater than 1")
	case cfg.writes > 1:
		return errors.New("-writes must be a fraction between 0 and 1")
	case cfg.instances < 1 || cfg.concurrency < 1:
		return errors.New("-instances and -concurrency must be at least 1")
	case cfg.ops <= 0 && cfg.duration <= 0:
		return errors.New("-duration must be positive (or give -ops)")
	case cfg.abandonAfter <= 0:
		return errors.New("-abandon-after must be positive")
	case def.outage && cfg.ops > 0:
		return errors.New("-ops does not go with -scenario outage, whose schedule is timed: give -duration")
	case *partition < 0 || *partition >= cfg.instances:
		return fmt.Errorf("-partition %d: want from 0 to -instances - 1 (%d), to leave a healthy instance", *partition, cfg.instances-1)
	case *partition > 0 && def.outage:
		return errors.New("-partition does not go with -scenario outage, which black-holes every instance's Redis itself")
	case def.outage && (cfg.outage <= 0 || cfg.outageAt < 0 || cfg.outageAt+cfg.outage >= cfg.duration):
		return fmt.Errorf("-outage-at %s + -outage %s must be positive and end before -duration %s, to leave time to measure the recovery",
			cfg.outageAt, cfg.outage, cfg.duration)
	}
	cfg.partition = *partition
	selected := defaultStrategies()
	if *all {
		selected = strategies
	}
	if *only != "" && *all {
		return errors.New("-strategies and -all do not go together")
	}
	if *only != "" {
		selected = nil
		for _, name := range strings.Split(*only, ",") {
			s, ok := strategyByName(strings.TrimSpace(name))
			if !ok {
				return fmt.Errorf("unknown strategy %q (%s)", name, strategyNames(strategies))
			}
			selected = append(selected, s)
		}
	}

	newClient, redisDesc, redisSingle, closeRedis, err := openRedis(ctx, *redisAddr, cfg.ttl)
	if err != nil {
		return err
	}
	defer closeRedis()
	if cfg.outage > 0 && redisSingle == "" {
		return errors.New("-scenario outage needs a single Redis server, not a cluster")
	}
	if cfg.partition > 0 && redisSingle == "" {
		return errors.New("-partition needs a single Redis server, not a cluster")
	}
	repo, dbDesc, closeDB, err := openDB(ctx, *pgDSN)
	if err != nil {
		return err
	}
	defer closeDB()
	fmt.Fprintf(stderr, "seeding %d users...\n", cfg.users)
	if err := repo.seed(ctx, cfg.users); err != nil {
		return err
	}
	counting := newCountingRepo(repo, cfg.dbLatency)
	w := newWorld(counting, cfg.users)

	fmt.Fprintf(stdout, "cachebench: scenario %s (%s)\n", cfg.scenario, def.about)
	fmt.Fprintf(stdout, "machine: %s, %d CPUs, %s; %s\n", cpuModel(), runtime.NumCPU(), runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH)
	fmt.Fprintf(stdout, "redis: %s; database: %s; added database latency: %s\n", redisDesc, dbDesc, cfg.dbLatency)
	measure := cfg.duration.String()
	if cfg.ops > 0 {
		measure = fmt.Sprintf("%d operations", cfg.ops)
	}
	fmt.Fprintf(stdout, "users %d, zipf s=%.2f, writes %.0f%%, instances %d, concurrency %d, TTL %s, measured %s per strategy\n",
		cfg.users, cfg.zipf, cfg.writes*100, cfg.instances, cfg.concurrency, cfg.ttl, measure)
	if cfg.outage > 0 {
		fmt.Fprintf(stdout, "outage: each strategy reaches Redis through a proxy of its own (go-redis clients with default options), black-holed from %s to %s of the measured phase; operations still running %s after its end are abandoned and counted as failed\n",
			cfg.outageAt, cfg.outageAt+cfg.outage, cfg.abandonAfter)
	}
	if cfg.partition > 0 {
		fmt.Fprintf(stdout, "partition: the first %d of %d instances of each Redis-backed strategy reach Redis through a proxy of the run's own, black-holed for the whole measured phase (healthy during the warm-up)\n",
			cfg.partition, cfg.instances)
	}
	fmt.Fprintln(stdout)

	runID := fmt.Sprintf("%x", time.Now().UnixNano())
	var rows []result
	var notes []string
	for _, s := range selected {
		prefix := "cachebench:" + runID + ":" + s.name + ":"
		env := strategyEnv{repo: counting, newClient: func(int) redis.UniversalClient { return newClient() },
			prefix: prefix, ttl: cfg.ttl, n: cfg.instances, users: cfg.users}
		goroutines := runtime.NumGoroutine()
		var sw, part faultSwitch
		if cfg.outage > 0 || (cfg.partition > 0 && s.redis) {
			px, err := faultproxy.New(redisSingle)
			if err != nil {
				return err
			}
			addr := px.Addr()
			// Default options, as users have them: no timeouts of our own.
			proxied := func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: addr}) }
			if cfg.outage > 0 {
				env.newClient = func(int) redis.UniversalClient { return proxied() }
				sw = px
			} else {
				env.newClient = func(i int) redis.UniversalClient {
					if i < cfg.partition {
						return proxied()
					}
					return newClient()
				}
				part = px
			}
		}
		insts, closeInsts := s.build(env)
		fmt.Fprintf(stderr, "running %s\n", s.name)
		row := run(ctx, cfg, w, s.name, insts, sw, part, stderr)
		row.Library = libCounters(insts)
		if m := libMetrics(insts); m != "" {
			notes = append(notes, s.name+" (its own metrics, warm-up included): "+m)
		}
		if part != nil {
			if err := part.Pass(); err != nil { // heal, so that the instances close promptly
				fmt.Fprintf(stderr, "  %s: the partition proxy did not pass again: %v\n", s.name, err)
			}
			sw = part
		}
		closeInsts()
		if row.Library != nil {
			row.Library.PendingAfterClose = pendingInvalidations(insts)
		}
		if sw != nil {
			_ = sw.Close()
			if left := settle(goroutines, 5*time.Second); left > goroutines {
				fmt.Fprintf(stderr, "  %s: %d goroutines still running after its teardown, %d before it was built\n", s.name, left, goroutines)
			}
		}
		cleanRedis(ctx, newClient, prefix)
		rows = append(rows, row)
	}

	printTable(stdout, rows)
	printOutageTable(stdout, rows)
	printPartitionTable(stdout, rows)
	for _, n := range notes {
		fmt.Fprintln(stdout, n)
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(rows, "", "  ")
		b = append(b, '\n')
		if *jsonOut == "-" {
			_, _ = stdout.Write(b)
		} else if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if *plotOut != "" {
		title := fmt.Sprintf("cachebench %s: database queries per second (%d instances, %d workers, db latency %s)",
			cfg.scenario, cfg.instances, cfg.concurrency, cfg.dbLatency)
		if err := os.WriteFile(*plotOut, plotSVG(title, rows), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "\nchart: %s\n", *plotOut)
	}
	return nil
}

func strategyNames(list []strategy) string {
	var names []string
	for _, s := range list {
		names = append(names, s.name)
	}
	return strings.Join(names, ",")
}

// extraStrategies are the strategies only -all or -strategies runs.
func extraStrategies() []strategy {
	var out []strategy
	for _, s := range strategies {
		if s.extra {
			out = append(out, s)
		}
	}
	return out
}

// printTable prints the main table: a row per strategy, and a column of
// the reads that waited for the database when the run counts them (see
// result.ReadsWaitedDB).
func printTable(w io.Writer, rows []result) {
	waited := len(rows) > 0 && rows[0].ReadsWaitedDB != nil
	above, header := "", ""
	if waited {
		above, header = fmt.Sprintf(" %15s", "reads that"), fmt.Sprintf(" %15s", "waited for DB")
	}
	fmt.Fprintf(w, "%-20s %9s %9s %9s %9s %9s %9s %9s %11s %8s %8s %12s %9s %9s %6s%s\n",
		"", "", "read", "read", "read", "write", "write", "write", "", "", "", "", "CPU ms", "own CPU", "", above)
	fmt.Fprintf(w, "%-20s %9s %9s %9s %9s %9s %9s %9s %11s %8s %8s %12s %9s %9s %6s%s\n",
		"strategy", "ops/s", "p50", "p99", "p99.9", "p50", "p99", "p99.9", "DB queries", "per 1k", "hit rate", "stale reads", "per 1k", "per 1k", "busy", header)
	for _, r := range rows {
		col := ""
		if waited && r.ReadsWaitedDB != nil {
			col = fmt.Sprintf(" %15s", fmt.Sprintf("%d (%.2f%%)", *r.ReadsWaitedDB, 100*float64(*r.ReadsWaitedDB)/float64(max(1, r.Reads+r.FailedReads))))
		}
		machine, busy := "-", "-"
		if r.BusyPct > 0 {
			machine, busy = fmt.Sprintf("%.1f", r.CPUMsPer1k), fmt.Sprintf("%.0f%%", r.BusyPct)
		}
		fmt.Fprintf(w, "%-20s %9.0f %9s %9s %9s %9s %9s %9s %11d %8.2f %7.1f%% %12s %9s %9.1f %6s%s\n",
			r.Strategy, r.OpsPerSec, us(r.P50us), us(r.P99us), us(r.P999us),
			wus(r.Writes+r.FailedWrites, r.WriteP50us), wus(r.Writes+r.FailedWrites, r.WriteP99us), wus(r.Writes+r.FailedWrites, r.WriteP999us),
			r.DBQueries, r.DBPer1k, r.HitRate*100, fmt.Sprintf("%d (%.2f%%)", r.StaleReads, r.StaleRate*100), machine, r.SelfCPUMsPer1k, busy, col)
	}
	fmt.Fprintln(w, "CPU ms per 1k: the whole machine's busy CPU time per 1,000 operations of the measured phase (Linux; Redis and the database count when they run here);\n"+
		"own CPU per 1k: this process's (the instances' and the harness's); busy: the machine's CPUs, in all. Near 100% busy, ops/s measures CPU per operation")
	if waited {
		fmt.Fprintf(w, "reads that waited for DB: reads of the measured phase that spent %s or more (half the least added database latency)\n"+
			"while a database read was under way: they led a query or joined one (a cache hit takes a Redis round trip); the library counts its own in its note\n",
			us(rows[0].DBWaitUs))
	}
	for _, r := range rows {
		if r.Errors > 0 {
			fmt.Fprintf(w, "%s: %d operations failed (%d reads, %d writes", r.Strategy, r.Errors, r.FailedReads, r.FailedWrites)
			if r.Abandoned > 0 {
				fmt.Fprintf(w, "; %d of them abandoned", r.Abandoned)
			}
			fmt.Fprintln(w, ")")
		}
	}
}

// settle waits up to timeout for the number of goroutines to fall to n and
// returns the number it last saw.
func settle(n int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		g := runtime.NumGoroutine()
		if g <= n || time.Now().After(deadline) {
			return g
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wus formats a write latency percentile, "-" if there were no writes.
func wus(writes int64, v float64) string {
	if writes == 0 {
		return "-"
	}
	return us(v)
}

func us(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.2fms", v/1000)
	case v < 10:
		return fmt.Sprintf("%.1fµs", v)
	default:
		return fmt.Sprintf("%.0fµs", v)
	}
}

// openRedis returns a factory of clients to one Redis deployment, a
// description of it, its address if it is a single server ("" for a
// cluster), and a function that releases it. ttl, the run's, sets how
// finely an in-process miniredis counts its TTLs down (see expireOnClock).
func openRedis(ctx context.Context, addr string, ttl time.Duration) (func() redis.UniversalClient, string, string, func(), error) {
	if addr == "" {
		addr = os.Getenv("REDIS_ADDR")
	}
	if addr == "" {
		probe := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
		pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		if probe.Ping(pctx).Err() == nil {
			addr = "127.0.0.1:6379"
		}
		cancel()
		probe.Close()
	}
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, "", "", nil, err
		}
		stop := expireOnClock(mr, ttl)
		return func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: mr.Addr()}) },
			"miniredis (in-process)", mr.Addr(), func() { stop(); mr.Close() }, nil
	}
	addrs := strings.Split(addr, ",")
	newClient := func() redis.UniversalClient {
		if len(addrs) > 1 {
			return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		}
		return redis.NewClient(&redis.Options{Addr: addr})
	}
	c := newClient()
	defer c.Close()
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return nil, "", "", nil, fmt.Errorf("redis at %s: %w", addr, err)
	}
	ver := "unknown version"
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			ver = "redis-server " + v
		}
	}
	single := addr
	if len(addrs) > 1 {
		single = ""
	}
	return newClient, ver + " at " + addr, single, func() {}, nil
}

// expireOnClock makes mr's TTLs run down with the clock, as Redis's do
// (miniredis only counts them down when told to): the stampede scenario's
// 1 s TTL and the leases an outage leaves behind must expire. It moves
// mr's clock forward by the time elapsed, in ticks; miniredis's own
// ClockTTL would do it on every command, at a cost that grows with the
// number of keys. A key set during a tick loses the whole tick at its end,
// so it may expire up to a tick early: ticks are ttl/100 (10 ms for the
// stampede's 1 s TTL; the early refresh of cacheaside-early must come
// before the key is gone), from 1 ms to 100 ms, and at least 50 times as
// long as the last FastForward took (it sorts every key, under miniredis's
// lock), so that they hold the server less than 2% of the time. The
// returned function stops it.
func expireOnClock(mr *miniredis.Miniredis, ttl time.Duration) (stop func()) {
	const coarsest = 100 * time.Millisecond
	finest := min(max(ttl/100, time.Millisecond), coarsest)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(finest)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-quit:
				return
			case now := <-t.C:
				mr.FastForward(now.Sub(last))
				last = now
				t.Reset(min(max(finest, 50*time.Since(now)), coarsest))
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// cleanRedis deletes the keys a strategy left under prefix.
func cleanRedis(ctx context.Context, newClient func() redis.UniversalClient, prefix string) {
	c := newClient()
	defer c.Close()
	del := func(ctx context.Context, n redis.UniversalClient) error {
		iter := n.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			n.Del(ctx, iter.Val())
		}
		return nil
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		_ = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return del(ctx, n) })
		return
	}
	_ = del(ctx, c)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return runtime.GOARCH
}
