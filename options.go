package cacheaside

import (
	"log/slog"
	"time"
)

// Defaults used when no Option says otherwise.
const (
	// DefaultNegativeTTL is how long a "not found" answer is cached.
	DefaultNegativeTTL = 30 * time.Second
	// DefaultJitter is the fraction of a TTL that is randomly taken off each
	// entry, so that keys written together do not expire together.
	DefaultJitter = 0.1
	// DefaultLoadTimeout bounds a shared load: the repository read and the
	// cache fill that follows it.
	DefaultLoadTimeout = 10 * time.Second
	// DefaultBatchConcurrency bounds the concurrent cache lookups and loads
	// of one GetUsersBatch call.
	DefaultBatchConcurrency = 16
	// DefaultLeaseTTL is how long a lease placed on a missing key lives if
	// its holder never fills or releases it (it crashed, say).
	DefaultLeaseTTL = 5 * time.Second
	// DefaultLeaseWait bounds how long a load waits for another caller's
	// lease to turn into a value before it reads the source itself.
	DefaultLeaseWait = DefaultLeaseTTL
)

// An Option configures a UserService or an Aside. Options that make no sense
// for one of them (WithRelatedKeys for an Aside) are ignored by it.
type Option func(*options)

type options struct {
	ttl         time.Duration
	negTTL      time.Duration
	jitter      float64
	loadTimeout time.Duration
	batchConc   int
	leaseTTL    time.Duration
	leaseWait   time.Duration
	logger      *slog.Logger
	related     func(id int) []string
}

func defaultOptions(ttl time.Duration) options {
	return options{
		ttl:         ttl,
		negTTL:      DefaultNegativeTTL,
		jitter:      DefaultJitter,
		loadTimeout: DefaultLoadTimeout,
		batchConc:   DefaultBatchConcurrency,
		leaseTTL:    DefaultLeaseTTL,
		leaseWait:   DefaultLeaseWait,
		logger:      slog.New(slog.DiscardHandler),
		related:     defaultRelatedKeys,
	}
}

// WithTTL sets how long a loaded value stays cached (before jitter). The
// default is UserCacheTTL for a UserService. A ttl of zero or less is
// ignored.
func WithTTL(ttl time.Duration) Option {
	return func(o *options) {
		if ttl > 0 {
			o.ttl = ttl
		}
	}
}

// WithNegativeTTL sets how long a "not found" answer is cached, so that a
// flood of lookups for a missing ID does not reach the repository. Zero
// turns negative caching off; the default is DefaultNegativeTTL.
func WithNegativeTTL(ttl time.Duration) Option {
	return func(o *options) {
		if ttl >= 0 {
			o.negTTL = ttl
		}
	}
}

// WithJitter sets the fraction (0..0.5) of each TTL that is randomly taken
// off an entry; an entry written with TTL d lives between d*(1-f) and d.
// Zero turns jitter off. Values outside 0..0.5 are clamped.
func WithJitter(f float64) Option {
	return func(o *options) {
		o.jitter = min(max(f, 0), 0.5)
	}
}

// WithLoadTimeout bounds a shared load. The load runs on a context detached
// from its callers' (it keeps their values, not their cancellation), so one
// caller giving up does not fail the others; this timeout is what stops it.
// A timeout of zero or less is ignored.
func WithLoadTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.loadTimeout = d
		}
	}
}

// WithBatchConcurrency bounds how many lookups or loads one GetUsersBatch
// call runs at once when the cache or the repository has no batch method.
// Values below 1 are ignored.
func WithBatchConcurrency(n int) Option {
	return func(o *options) {
		if n >= 1 {
			o.batchConc = n
		}
	}
}

// WithLeaseTTL sets how long a lease lives when its holder neither fills
// nor releases it, which is how long a key can stay blocked after a loader
// dies. Keep it above the time a load normally takes: a lease that expires
// under a slow load lets another caller load too, and the slow load's fill
// is then dropped. Values of zero or less are ignored. It only matters with
// a cache that implements Leaser.
func WithLeaseTTL(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.leaseTTL = d
		}
	}
}

// WithLeaseWait bounds how long a load waits for another caller's lease on
// the same key to turn into a value. After it, the load reads the source
// itself and returns what it read without filling the cache. Zero makes
// loads never wait (each reads the source at once, still without filling);
// negative values are ignored.
func WithLeaseWait(d time.Duration) Option {
	return func(o *options) {
		if d >= 0 {
			o.leaseWait = d
		}
	}
}

// WithLogger sends the service's logs (cache failures, fills that failed,
// invalidations that failed) to l. The default discards them. A nil l is
// ignored.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithRelatedKeys sets the keys that a write to user id invalidates besides
// "user:<id>". The default is the seed's "users:all", "user_posts:<id>" and
// "user_stats:<id>"; a nil fn invalidates the user's own key only.
func WithRelatedKeys(fn func(id int) []string) Option {
	return func(o *options) {
		if fn == nil {
			fn = func(int) []string { return nil }
		}
		o.related = fn
	}
}
