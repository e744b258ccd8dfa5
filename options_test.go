package cacheaside

import (
	"log/slog"
	"testing"
	"time"
)

func TestOptions(t *testing.T) {
	l := slog.New(slog.DiscardHandler)
	tests := []struct {
		name  string
		opts  []Option
		check func(o options) bool
	}{
		{"defaults", nil, func(o options) bool {
			return o.ttl == UserCacheTTL && o.negTTL == DefaultNegativeTTL && o.jitter == DefaultJitter &&
				o.loadTimeout == DefaultLoadTimeout && o.batchConc == DefaultBatchConcurrency && len(o.related(1)) == 3
		}},
		{"ttl", []Option{WithTTL(time.Minute)}, func(o options) bool { return o.ttl == time.Minute }},
		{"ttl ignores zero", []Option{WithTTL(0)}, func(o options) bool { return o.ttl == UserCacheTTL }},
		{"negative ttl off", []Option{WithNegativeTTL(0)}, func(o options) bool { return o.negTTL == 0 }},
		{"negative ttl ignores <0", []Option{WithNegativeTTL(-1)}, func(o options) bool { return o.negTTL == DefaultNegativeTTL }},
		{"jitter clamped high", []Option{WithJitter(3)}, func(o options) bool { return o.jitter == 0.5 }},
		{"jitter clamped low", []Option{WithJitter(-1)}, func(o options) bool { return o.jitter == 0 }},
		{"load timeout", []Option{WithLoadTimeout(time.Second)}, func(o options) bool { return o.loadTimeout == time.Second }},
		{"load timeout ignores 0", []Option{WithLoadTimeout(0)}, func(o options) bool { return o.loadTimeout == DefaultLoadTimeout }},
		{"batch concurrency", []Option{WithBatchConcurrency(3)}, func(o options) bool { return o.batchConc == 3 }},
		{"batch concurrency ignores 0", []Option{WithBatchConcurrency(0)}, func(o options) bool { return o.batchConc == DefaultBatchConcurrency }},
		{"logger", []Option{WithLogger(l)}, func(o options) bool { return o.logger == l }},
		{"nil logger ignored", []Option{WithLogger(nil)}, func(o options) bool { return o.logger != nil }},
		{"nil related keys", []Option{WithRelatedKeys(nil)}, func(o options) bool { return len(o.related(1)) == 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := defaultOptions(UserCacheTTL)
			for _, opt := range tt.opts {
				opt(&o)
			}
			if !tt.check(o) {
				t.Fatalf("options after %s = %+v", tt.name, o)
			}
		})
	}
}

func TestJitterBounds(t *testing.T) {
	a := NewAside[int, User](nil, "x", nil, WithJitter(0.2))
	for range 1000 {
		d := a.jitter(time.Hour)
		if d < 48*time.Minute || d > time.Hour {
			t.Fatalf("jitter(1h) = %v, want within [48m, 1h]", d)
		}
	}
	if d := a.jitter(time.Nanosecond); d != time.Millisecond {
		t.Fatalf("jitter(1ns) = %v, want the 1ms floor", d)
	}
}
