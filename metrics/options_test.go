package metrics

import (
	"math"
	"slices"
	"testing"
)

// wantPanic fails the test unless f panics with the message want.
func wantPanic(t *testing.T, want string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		got := recover()
		if got == nil {
			t.Errorf("no panic, want %q", want)
			return
		}
		if got != want {
			t.Errorf("panic %q, want %q", got, want)
		}
	}()
	f()
}

// TestOptions_BadValuesPanic: a bad option value panics at once, with a
// message that names the option and the value.
func TestOptions_BadValuesPanic(t *testing.T) {
	for _, c := range []struct {
		want string
		f    func()
	}{
		{`cacheaside/metrics: WithService(""): the name must not be empty`, func() { WithService("") }},
		{`cacheaside/metrics: WithBuckets([]): at least one bound is needed`, func() { WithBuckets() }},
		{`cacheaside/metrics: WithBuckets([0.1 0.1]): the bounds must be strictly increasing`, func() { WithBuckets(0.1, 0.1) }},
		{`cacheaside/metrics: WithBuckets([1 0.5]): the bounds must be strictly increasing`, func() { WithBuckets(1, 0.5) }},
		{`cacheaside/metrics: WithBuckets([0 1]): the bounds must be positive`, func() { WithBuckets(0, 1) }},
		{`cacheaside/metrics: WithBuckets([-1]): the bounds must be positive`, func() { WithBuckets(-1) }},
		{`cacheaside/metrics: WithBuckets([NaN]): the bounds must be finite`, func() { WithBuckets(math.NaN()) }},
		{`cacheaside/metrics: WithBuckets([1 +Inf]): the bounds must be finite`, func() { WithBuckets(1, math.Inf(1)) }},
		{`cacheaside/metrics: NewOTelRecorder(nil): the meter provider must not be nil`, func() { _, _ = NewOTelRecorder(nil) }},
	} {
		wantPanic(t, c.want, c.f)
	}
}

// TestOptions_Defaults: without options there is no service and the
// buckets are DefaultBuckets, which are what their documentation says.
func TestOptions_Defaults(t *testing.T) {
	c := newConfig(nil)
	if c.service != "" {
		t.Errorf("service = %q, want none", c.service)
	}
	if !slices.Equal(c.buckets, DefaultBuckets) {
		t.Errorf("buckets = %v, want DefaultBuckets", c.buckets)
	}
	if first, last := DefaultBuckets[0], DefaultBuckets[len(DefaultBuckets)-1]; first != 50e-6 || last != 10 {
		t.Errorf("DefaultBuckets run from %v to %v, want 50µs to 10s", first, last)
	}
	if !slices.IsSorted(DefaultBuckets) || len(slices.Compact(slices.Clone(DefaultBuckets))) != len(DefaultBuckets) {
		t.Errorf("DefaultBuckets are not strictly increasing: %v", DefaultBuckets)
	}
	WithBuckets(DefaultBuckets...) // they pass the option's own checks
}

// TestWithBuckets_KeepsItsOwnCopy: changing the slice given to WithBuckets
// afterwards changes nothing.
func TestWithBuckets_KeepsItsOwnCopy(t *testing.T) {
	b := []float64{0.1, 1}
	opt := WithBuckets(b...)
	b[0] = 0.5
	if c := newConfig([]Option{opt}); !slices.Equal(c.buckets, []float64{0.1, 1}) {
		t.Errorf("buckets = %v, want [0.1 1]", c.buckets)
	}
}

// TestWithService_LastWins: the last WithService names the service.
func TestWithService_LastWins(t *testing.T) {
	if c := newConfig([]Option{WithService("a"), WithService("b")}); c.service != "b" {
		t.Errorf("service = %q, want b", c.service)
	}
}
