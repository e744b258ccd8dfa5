package metrics

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cacheaside/cacheaside"
)

// fakeRecorder keeps what it is told, as "read:result", "load:result" and
// "write:op:result" strings.
type fakeRecorder struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeRecorder) add(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fakeRecorder) RecordRead(_ context.Context, r cacheaside.Result, d time.Duration) {
	f.add(fmt.Sprintf("read:%s:%v", r, d))
}

func (f *fakeRecorder) RecordLoad(_ context.Context, r cacheaside.Result, d time.Duration) {
	f.add(fmt.Sprintf("load:%s:%v", r, d))
}

func (f *fakeRecorder) RecordWrite(_ context.Context, op string, r cacheaside.Result, d time.Duration) {
	f.add(fmt.Sprintf("write:%s:%s:%v", op, r, d))
}

func (f *fakeRecorder) took() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// TestMulti_FansOut: every call reaches every recorder, with its
// arguments, in order; nested Multis are flattened.
func TestMulti_FansOut(t *testing.T) {
	a, b, c := new(fakeRecorder), new(fakeRecorder), new(fakeRecorder)
	m := Multi(a, Multi(b, c))
	if n := len(m.(multi)); n != 3 {
		t.Errorf("Multi(a, Multi(b, c)) holds %d recorders, want 3", n)
	}
	ctx := context.Background()
	m.RecordRead(ctx, cacheaside.ResultHit, time.Millisecond)
	m.RecordLoad(ctx, cacheaside.ResultNotFound, 2*time.Millisecond)
	m.RecordWrite(ctx, "update", cacheaside.ResultError, 3*time.Millisecond)
	want := []string{"read:hit:1ms", "load:not_found:2ms", "write:update:error:3ms"}
	for name, r := range map[string]*fakeRecorder{"a": a, "b": b, "c": c} {
		if got := r.took(); !slices.Equal(got, want) {
			t.Errorf("recorder %s was told %v, want %v", name, got, want)
		}
	}
}

// TestMulti_One: Multi of one recorder is that recorder.
func TestMulti_One(t *testing.T) {
	a := new(fakeRecorder)
	if got := Multi(a); got != cacheaside.Recorder(a) {
		t.Errorf("Multi(a) = %v, want a itself", got)
	}
}

// TestMulti_KeepsItsOwnList: changing the slice given to Multi afterwards
// changes nothing.
func TestMulti_KeepsItsOwnList(t *testing.T) {
	a, b := new(fakeRecorder), new(fakeRecorder)
	list := []cacheaside.Recorder{a, a}
	m := Multi(list...)
	list[1] = b
	m.RecordRead(context.Background(), cacheaside.ResultMiss, 0)
	if len(a.took()) != 2 || len(b.took()) != 0 {
		t.Errorf("a was told %v and b %v; want a twice, b never", a.took(), b.took())
	}
}

// TestMulti_BadArgumentsPanic: no recorder, or a nil one, is a programmer
// error.
func TestMulti_BadArgumentsPanic(t *testing.T) {
	wantPanic(t, "cacheaside/metrics: Multi(): at least one recorder is needed", func() { Multi() })
	wantPanic(t, "cacheaside/metrics: Multi(recorder 1): the recorders must not be nil", func() {
		Multi(new(fakeRecorder), nil)
	})
}

// TestMulti_FeedsPrometheusAndOTel: one service feeds both recorders
// through Multi, and each counts every read.
func TestMulti_FeedsPrometheusAndOTel(t *testing.T) {
	mp, reader := newProvider(t)
	otelRec, err := NewOTelRecorder(mp)
	if err != nil {
		t.Fatal(err)
	}
	promRec := NewPrometheusRecorder()
	svc := newUsers(t, cacheaside.WithRecorder(Multi(promRec, otelRec)))
	w := readMissesAndHits(t, svc, 2, 3)

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(promRec)
	mfs := gather(t, reg)
	ms := collect(t, reader)
	for _, c := range []struct {
		result string
		want   int
	}{{"miss", w.misses}, {"hit", w.hits}} {
		if got := value(t, mfs, "cacheaside_read_duration_seconds", "result", c.result); got != float64(c.want) {
			t.Errorf("Prometheus: read_duration{result=%s} count = %v, want %d", c.result, got, c.want)
		}
		if got := histogram(t, ms, "cacheaside.read.duration", "cacheaside.result", c.result).Count; got != uint64(c.want) {
			t.Errorf("OpenTelemetry: read.duration{result=%s} count = %d, want %d", c.result, got, c.want)
		}
	}
}
