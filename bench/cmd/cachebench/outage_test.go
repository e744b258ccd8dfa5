package main

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
)

func TestWindow_Phase(t *testing.T) {
	base := time.Now()
	w := newWindow(base)
	at := func(d time.Duration) time.Time { return base.Add(d) }
	if p := w.phase(at(5 * time.Second)); p != phaseBefore {
		t.Errorf("before the black hole started: phase %v", p)
	}
	if s, e := w.bounds(); s != -1 || e != -1 {
		t.Errorf("bounds of a window not started: %v, %v", s, e)
	}
	w.markStart(at(time.Second))
	w.markEnd(at(2 * time.Second))
	for d, want := range map[time.Duration]phase{
		0: phaseBefore, 999 * time.Millisecond: phaseBefore,
		time.Second: phaseDuring, 1999 * time.Millisecond: phaseDuring,
		2 * time.Second: phaseAfter, time.Minute: phaseAfter,
	} {
		if p := w.phase(at(d)); p != want {
			t.Errorf("phase at %v = %v, want %v", d, p, want)
		}
	}
	if s, e := w.bounds(); s != time.Second || e != 2*time.Second {
		t.Errorf("bounds = %v, %v", s, e)
	}
	if w.label(at(1500*time.Millisecond)) == "" || w.label(at(0)) != "" || (*window)(nil).label(at(0)) != "" {
		t.Error("labels: want one during the black hole only")
	}
}

// fakeSwitch records when it was switched.
type fakeSwitch struct {
	mu     sync.Mutex
	calls  []string
	at     []time.Time
	closed atomic.Bool
}

func (f *fakeSwitch) note(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
	f.at = append(f.at, time.Now())
}
func (f *fakeSwitch) Blackhole()   { f.note("blackhole") }
func (f *fakeSwitch) Pass() error  { f.note("pass"); return nil }
func (f *fakeSwitch) Close() error { f.closed.Store(true); return nil }

func TestStartOutage(t *testing.T) {
	sw := &fakeSwitch{}
	base := time.Now()
	w := newWindow(base)
	stop := startOutage(sw, w, 100*time.Millisecond, 150*time.Millisecond, io.Discard)
	time.Sleep(400 * time.Millisecond)
	stop()
	if len(sw.calls) != 2 || sw.calls[0] != "blackhole" || sw.calls[1] != "pass" {
		t.Fatalf("calls %v, want blackhole, pass", sw.calls)
	}
	s, e := w.bounds()
	if s < 100*time.Millisecond || s > 180*time.Millisecond || e-s < 130*time.Millisecond || e-s > 260*time.Millisecond {
		t.Errorf("window %v to %v, want about 100ms to 250ms", s, e)
	}
	if sw.at[0].Sub(base) > s || sw.at[1].Sub(base) > e {
		t.Errorf("the window starts or ends before the switch returned: %v %v vs %v %v", sw.at[0].Sub(base), sw.at[1].Sub(base), s, e)
	}

	// Stopped during the black hole: it passes again at once.
	sw = &fakeSwitch{}
	w = newWindow(time.Now())
	stop = startOutage(sw, w, 10*time.Millisecond, time.Hour, io.Discard)
	time.Sleep(50 * time.Millisecond)
	stop()
	if len(sw.calls) != 2 || sw.calls[1] != "pass" {
		t.Errorf("stopped during the black hole: calls %v", sw.calls)
	}
	// Stopped before: it never switches.
	sw = &fakeSwitch{}
	stop = startOutage(sw, newWindow(time.Now()), time.Hour, time.Hour, io.Discard)
	stop()
	if len(sw.calls) != 0 {
		t.Errorf("stopped before the black hole: calls %v", sw.calls)
	}
}

func TestWindowStats(t *testing.T) {
	base := time.Now()
	w := newWindow(base)
	w.markStart(base.Add(time.Second))
	w.markEnd(base.Add(2 * time.Second))
	var a, b windowStats
	rec := func(ws *windowStats, off time.Duration, o outcome) {
		o.start = base.Add(off)
		ws.add(w, o)
	}
	rec(&a, 500*time.Millisecond, outcome{kind: opRead, lat: time.Hour, stale: true}) // before: no latency kept, but it overlaps
	rec(&a, 100*time.Millisecond, outcome{kind: opRead, lat: 800 * time.Millisecond}) // before, ended before the black hole
	for i := range 99 {
		rec(&a, 1500*time.Millisecond, outcome{kind: opRead, lat: time.Duration(i) * time.Millisecond})
	}
	rec(&b, 1600*time.Millisecond, outcome{kind: opRead, lat: 5 * time.Second, err: errors.New("boom")})
	rec(&b, 1700*time.Millisecond, outcome{kind: opWrite, err: errors.New("boom")})
	rec(&a, 2100*time.Millisecond, outcome{kind: opRead, lat: time.Millisecond, stale: true})
	rec(&b, 2600*time.Millisecond, outcome{kind: opRead, lat: 3 * time.Millisecond, stale: true})
	rec(&b, 2700*time.Millisecond, outcome{kind: opRead, lat: 2 * time.Millisecond})
	a.merge(&b)

	// 100 ms buckets: 10 before, 10 during, 10 after, at 100, 1000, 50 a second.
	timeline := make([]float64, 30)
	for i := range timeline {
		timeline[i] = []float64{100, 1000, 50}[i/10]
	}
	r := a.result(w, timeline, 100*time.Millisecond)
	want := outageResult{StartS: 1, EndS: 2, ReadsDuring: 100, FailedReadsDuring: 1, WritesDuring: 1, FailedWritesDuring: 1,
		MaxOverlapUs: float64(time.Hour.Microseconds()),
		P50DuringUs:  50_000, P99DuringUs: 5_000_000, MaxDuringUs: 5_000_000,
		ReadsAfter: 3, StaleAfter: 2, LastStaleAfterS: 2.6, P99AfterUs: 3000, MaxAfterUs: 3000,
		DBPerSecBefore: 100, DBPerSecDuring: 1000, DBPerSecAfter: 50}
	if *r != want {
		t.Errorf("result\n got %+v\nwant %+v", *r, want)
	}
	if a.ph[phaseBefore].stale != 1 || a.ph[phaseBefore].reads != 2 || len(a.ph[phaseBefore].lat) != 0 {
		t.Errorf("before: %+v", a.ph[phaseBefore])
	}
}

func TestMeanBuckets(t *testing.T) {
	tl := []float64{1, 2, 3, 4, 5}
	b := 100 * time.Millisecond
	for _, c := range []struct {
		from, to time.Duration
		want     float64
	}{
		{0, 500 * time.Millisecond, 3},
		{150 * time.Millisecond, 450 * time.Millisecond, 3.5}, // buckets 2 and 3 lie wholly inside
		{0, time.Hour, 3},
		{250 * time.Millisecond, 280 * time.Millisecond, 0},
		{-1, time.Second, 0},
		{0, -1, 0},
	} {
		if got := meanBuckets(tl, b, c.from, c.to); got != c.want {
			t.Errorf("meanBuckets(%v, %v) = %v, want %v", c.from, c.to, got, c.want)
		}
	}
}

// hangingInstance blocks every operation until release is closed, or
// its context ends if honorCtx.
type hangingInstance struct {
	release  chan struct{}
	honorCtx bool
}

func (h hangingInstance) wait(ctx context.Context) error {
	if h.honorCtx {
		select {
		case <-h.release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	<-h.release
	return errors.New("released")
}

func (h hangingInstance) Get(ctx context.Context, id int) (*cacheaside.User, error) {
	if err := h.wait(ctx); err != nil {
		return nil, err
	}
	return &cacheaside.User{ID: id, Name: userName(id, 0)}, nil
}

func (h hangingInstance) Update(ctx context.Context, u *cacheaside.User) error { return h.wait(ctx) }

// TestDrive_Abandons: operations that hang past the end of a timed phase
// are abandoned and counted as failed, unblock is called, and drive
// returns without waiting for them.
func TestDrive_Abandons(t *testing.T) {
	release := make(chan struct{})
	inst := hangingInstance{release: release}
	cfg := config{users: 100, zipf: 1.1, writes: 0.5, concurrency: 6, abandonAfter: 100 * time.Millisecond}
	w := newWorld(newCountingRepo(cacheaside.NewMemoryRepository(), latency{}), cfg.users)
	var unblocked atomic.Bool
	start := time.Now()
	stats, abandoned := drive(context.Background(), cfg, w, []instance{inst}, driveOpts{
		deadline: start.Add(50 * time.Millisecond),
		unblock:  func() { unblocked.Store(true); close(release) },
		progress: io.Discard,
	})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("drive took %v", d)
	}
	if abandoned != int64(cfg.concurrency) || !unblocked.Load() {
		t.Errorf("abandoned %d, unblocked %v; want %d, true", abandoned, unblocked.Load(), cfg.concurrency)
	}
	var reads, writes, errs, ok int64
	for _, s := range stats {
		s.mu.Lock()
		reads, writes, errs, ok = reads+s.readErrs, writes+s.writeErrs, errs+s.errs, ok+s.reads+s.writes
		for _, l := range s.lat {
			if l < 100*time.Millisecond {
				t.Errorf("an abandoned read's latency is %v, want what it had run", l)
			}
		}
		s.mu.Unlock()
	}
	if errs != int64(cfg.concurrency) || reads+writes != errs || ok != 0 {
		t.Errorf("failed %d (%d reads, %d writes), succeeded %d; want %d failed, none succeeded", errs, reads, writes, ok, cfg.concurrency)
	}

	// A phase whose operations end in time abandons nothing.
	release = make(chan struct{})
	close(release)
	_, abandoned = drive(context.Background(), cfg, w, []instance{hangingInstance{release: release}},
		driveOpts{deadline: time.Now().Add(20 * time.Millisecond)})
	if abandoned != 0 {
		t.Errorf("abandoned %d operations that ended", abandoned)
	}
}

// TestDrive_AbandonCancels: abandoned operations see their context end,
// so an instance that honours it returns even without unblock.
func TestDrive_AbandonCancels(t *testing.T) {
	inst := hangingInstance{release: make(chan struct{}), honorCtx: true}
	cfg := config{users: 100, zipf: 1.1, concurrency: 3, abandonAfter: 50 * time.Millisecond}
	w := newWorld(newCountingRepo(cacheaside.NewMemoryRepository(), latency{}), cfg.users)
	before := time.Now()
	_, abandoned := drive(context.Background(), cfg, w, []instance{inst}, driveOpts{deadline: time.Now().Add(20 * time.Millisecond)})
	if abandoned != 3 || time.Since(before) > time.Second {
		t.Errorf("abandoned %d in %v, want 3 at once", abandoned, time.Since(before))
	}
}

// fastInstance answers at once: reads return version 0, writes commit
// version 1, as versionedRepo would name them.
type fastInstance struct{}

func (fastInstance) Get(ctx context.Context, id int) (*cacheaside.User, error) {
	return &cacheaside.User{ID: id, Name: userName(id, 0)}, nil
}

func (fastInstance) Update(ctx context.Context, u *cacheaside.User) error {
	u.Name = userName(u.ID, 1)
	return nil
}

// TestRun_Partition: with -partition 1, run black-holes the switch when
// the measured phase begins and tells the partitioned instance's
// operations from the others'; operations it abandons are failed, and the
// time spent waiting for them is not measured time.
func TestRun_Partition(t *testing.T) {
	hung := hangingInstance{release: make(chan struct{}), honorCtx: true}
	cfg := config{scenario: "zipf", users: 50, zipf: 1.1, writes: 0.3, concurrency: 4, partition: 1,
		duration: 200 * time.Millisecond, abandonAfter: 300 * time.Millisecond}
	w := newWorld(newCountingRepo(cacheaside.NewMemoryRepository(), latency{}), cfg.users)
	sw := &fakeSwitch{}
	res := run(context.Background(), cfg, w, "test", []instance{hung, fastInstance{}}, nil, sw, io.Discard)
	if len(sw.calls) != 1 || sw.calls[0] != "blackhole" || !sw.closed.Load() {
		t.Errorf("switch calls %v, closed %v; want one blackhole, then closed to free the abandoned operations", sw.calls, sw.closed.Load())
	}
	p := res.Partition
	if p == nil || p.Instances != 1 {
		t.Fatalf("partition result %+v", p)
	}
	if p.Partitioned.Reads+p.Partitioned.Writes != 0 || p.Partitioned.FailedReads+p.Partitioned.FailedWrites != 2 {
		t.Errorf("partitioned: %+v; want its 2 workers' operations abandoned, none counted", p.Partitioned)
	}
	if p.Healthy.Reads == 0 || p.Healthy.Writes == 0 || p.Healthy.FailedReads+p.Healthy.FailedWrites != 0 || p.Healthy.StaleReads == 0 {
		t.Errorf("healthy: %+v; want reads and writes, none failed, and stale reads (version 0 after version 1)", p.Healthy)
	}
	if res.Abandoned != 2 || res.Seconds != 0.2 {
		t.Errorf("abandoned %d, measured %.2fs; want 2, 0.2s (-duration: the wait for the abandoned ones excluded)", res.Abandoned, res.Seconds)
	}
	if n := res.OpsPerSec * res.Seconds; n <= 0 || n > float64(res.Ops)+0.5 {
		t.Errorf("%.0f ops/s over %.2fs for %d operations", res.OpsPerSec, res.Seconds, res.Ops)
	}
	if res.WriteP50us <= 0 {
		t.Errorf("write p50 %v", res.WriteP50us)
	}
}
