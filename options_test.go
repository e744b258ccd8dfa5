package cacheaside

import (
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestOptions(t *testing.T) {
	l := slog.New(slog.DiscardHandler)
	tests := []struct {
		name  string
		opts  []UserOption
		check func(o userOptions) bool
	}{
		{"defaults", nil, func(o userOptions) bool {
			return o.ttl == UserCacheTTL && o.negTTL == DefaultNegativeTTL && o.jitter == DefaultJitter &&
				o.loadTimeout == DefaultLoadTimeout && o.batchConc == DefaultBatchConcurrency &&
				o.leaseTTL == DefaultLeaseTTL && o.leaseWait == DefaultLeaseWait && len(o.related(1)) == 3
		}},
		{"ttl", []UserOption{WithTTL(time.Minute)}, func(o userOptions) bool { return o.ttl == time.Minute }},
		{"negative ttl off", []UserOption{WithNegativeTTL(0)}, func(o userOptions) bool { return o.negTTL == 0 }},
		{"jitter", []UserOption{WithJitter(0.9)}, func(o userOptions) bool { return o.jitter == 0.9 }},
		{"jitter off", []UserOption{WithJitter(0)}, func(o userOptions) bool { return o.jitter == 0 }},
		{"load timeout", []UserOption{WithLoadTimeout(time.Second)}, func(o userOptions) bool { return o.loadTimeout == time.Second }},
		{"batch concurrency", []UserOption{WithBatchConcurrency(3)}, func(o userOptions) bool { return o.batchConc == 3 }},
		{"lease ttl", []UserOption{WithLeaseTTL(time.Millisecond)}, func(o userOptions) bool { return o.leaseTTL == time.Millisecond }},
		{"lease wait off", []UserOption{WithLeaseWait(0)}, func(o userOptions) bool { return o.leaseWait == 0 }},
		{"logger", []UserOption{WithLogger(l)}, func(o userOptions) bool { return o.logger == l }},
		{"related keys", []UserOption{WithRelatedKeys(func(int) []string { return []string{"a"} })},
			func(o userOptions) bool { return len(o.related(1)) == 1 }},
		{"nil related keys: own key only", []UserOption{WithRelatedKeys(nil)}, func(o userOptions) bool { return len(o.related(1)) == 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := userOptions{options: defaultOptions(UserCacheTTL), related: defaultRelatedKeys}
			for _, opt := range tt.opts {
				opt.applyUser(&o)
			}
			if !tt.check(o) {
				t.Fatalf("options after %s = %+v", tt.name, o)
			}
		})
	}
}

// TestOptions_BadValuesPanic: a bad option value is a programmer error,
// reported at once with the option's name, never replaced by a default.
func TestOptions_BadValuesPanic(t *testing.T) {
	tests := []struct {
		option string
		make   func()
	}{
		{"WithTTL", func() { WithTTL(0) }},
		{"WithTTL", func() { WithTTL(-time.Second) }},
		{"WithNegativeTTL", func() { WithNegativeTTL(-1) }},
		{"WithJitter", func() { WithJitter(-0.1) }},
		{"WithJitter", func() { WithJitter(1) }},
		{"WithJitter", func() { WithJitter(math.NaN()) }},
		{"WithLoadTimeout", func() { WithLoadTimeout(0) }},
		{"WithBatchConcurrency", func() { WithBatchConcurrency(0) }},
		{"WithLeaseTTL", func() { WithLeaseTTL(0) }},
		{"WithLeaseTTL", func() { WithLeaseTTL(time.Microsecond) }},
		{"WithLeaseWait", func() { WithLeaseWait(-time.Millisecond) }},
		{"WithLogger", func() { WithLogger(nil) }},
		{"WithRecorder", func() { WithRecorder(nil) }},
		{"WithAdaptiveTTL", func() { WithAdaptiveTTL(0, time.Minute) }},
		{"WithAdaptiveTTL", func() { WithAdaptiveTTL(time.Minute, time.Second) }},
		{"WithEarlyRefresh", func() { WithEarlyRefresh(0) }},
		{"WithEarlyRefresh", func() { WithEarlyRefresh(math.Inf(1)) }},
		{"WithEarlyRefresh", func() { WithEarlyRefresh(math.NaN()) }},
		{"WithClock", func() { WithClock(nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.option, func(t *testing.T) {
			defer func() {
				p := recover()
				msg, ok := p.(string)
				if !ok || !strings.HasPrefix(msg, "cacheaside: "+tt.option+"(") {
					t.Fatalf("panic = %v, want a message naming %s", p, tt.option)
				}
			}()
			tt.make()
		})
	}
}

func TestOptions_AsideDefaultsKnowNothingOfUsers(t *testing.T) {
	a := NewAside[int, product](nil, "p", nil)
	require.Equal(t, DefaultTTL, a.o.ttl)
	svc := NewUserService(NewMemoryRepository(), nil)
	require.Equal(t, UserCacheTTL, svc.users.o.ttl)
}
