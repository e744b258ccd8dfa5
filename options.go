package cacheaside

import (
	"fmt"
	"log/slog"
	"math"
	"time"
)

// Defaults used when no Option says otherwise.
const (
	// DefaultTTL is how long an Aside caches a loaded value when WithTTL
	// does not say otherwise. A UserService caches users for UserCacheTTL.
	DefaultTTL = time.Hour
	// DefaultNegativeTTL is how long a "not found" answer is cached.
	DefaultNegativeTTL = 30 * time.Second
	// DefaultJitter is the fraction of a TTL that is randomly taken off each
	// entry, so that keys written together do not expire together.
	DefaultJitter = 0.1
	// DefaultLoadTimeout bounds a shared load: the repository read and the
	// cache fill that follows it.
	DefaultLoadTimeout = 10 * time.Second
	// DefaultBatchConcurrency bounds the concurrent cache lookups and loads
	// of one batch read.
	DefaultBatchConcurrency = 16
	// DefaultLeaseTTL is how long a lease placed on a missing key lives if
	// its holder never fills or releases it (it crashed, say).
	DefaultLeaseTTL = 5 * time.Second
	// DefaultLeaseWait bounds how long a load waits for another caller's
	// lease to turn into a value before it reads the source itself.
	DefaultLeaseWait = DefaultLeaseTTL
	// DefaultCacheTimeout bounds every call to the cache: ample for a Redis
	// on the same network, whose round trips take well under a millisecond,
	// and short enough that a hung Redis costs a read little.
	DefaultCacheTimeout = 100 * time.Millisecond
	// DefaultBreakerFailures is how many consecutive failures open a
	// circuit breaker.
	DefaultBreakerFailures = 5
	// DefaultBreakerCooldown is how long an open circuit breaker stays open
	// before it lets one probe through.
	DefaultBreakerCooldown = time.Second
	// DefaultMaxValueSize bounds the encoded size of a cached entry, on
	// write and on read.
	DefaultMaxValueSize = 1 << 20
)

// An Option configures an Aside or a UserService.
//
// Every option checks its value when it is called and panics, with a
// message that names the option, when the value is out of range: a bad
// option is a programmer error, as a non-positive duration given to
// time.NewTicker is, and is never silently replaced by a default.
type Option func(*options)

// A UserOption configures a UserService: any Option, or an option that only
// a UserService understands, such as WithRelatedKeys.
type UserOption interface {
	applyUser(*userOptions)
}

func (o Option) applyUser(u *userOptions) { o(&u.options) }

// options are the engine's settings.
type options struct {
	ttl         time.Duration
	negTTL      time.Duration
	jitter      float64
	loadTimeout time.Duration
	batchConc   int
	leaseTTL    time.Duration
	leaseWait   time.Duration
	logger      *slog.Logger

	cacheTimeout time.Duration
	cacheBreaker breakerOptions
	repoBreaker  breakerOptions
	failSafe     time.Duration // how long past its expiry a value may be served; 0: never
	maxValueSize int

	local      int           // the local tier's size; 0: no local tier
	relaxed    bool          // writers do not wait for members' acknowledgements
	localLease time.Duration // a member's lease on the bus
	joinGrace  time.Duration // how long a member that (re)joins the bus fills nothing; 0: the load timeout and two leases

	recorder  Recorder // nil: none
	earlyBeta float64  // XFetch's beta; 0: no early refresh

	adaptMin, adaptMax time.Duration // WithAdaptiveTTL's range; 0: fixed TTL
}

// breakerOptions configure a circuit breaker.
type breakerOptions struct {
	failures int           // consecutive failures that open it
	cooldown time.Duration // how long it stays open before a probe
}

// userOptions are a UserService's settings: the engine's, and the user
// layer's own.
type userOptions struct {
	options
	related func(id int) []string
	drain   time.Duration // how often an Outbox is drained
	bloom   *bloomOption  // nil: no Bloom filter
}

// newOptions returns the defaults, with ttl as the TTL, after opts.
func newOptions(ttl time.Duration, opts []Option) options {
	o := defaultOptions(ttl)
	for _, opt := range opts {
		opt(&o)
	}
	return o
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

		cacheTimeout: DefaultCacheTimeout,
		cacheBreaker: breakerOptions{DefaultBreakerFailures, DefaultBreakerCooldown},
		repoBreaker:  breakerOptions{DefaultBreakerFailures, DefaultBreakerCooldown},
		maxValueSize: DefaultMaxValueSize,
		localLease:   DefaultLocalLease,
	}
}

// badOption panics with a message that names the option and the value.
func badOption(option string, value any, want string) {
	panic(fmt.Sprintf("%s%s(%v): %s", prefix, option, value, want))
}

// WithTTL sets how long a loaded value stays cached (before jitter): the
// default is DefaultTTL for an Aside and UserCacheTTL for a UserService.
// It panics if ttl is not positive.
func WithTTL(ttl time.Duration) Option {
	if ttl <= 0 {
		badOption("WithTTL", ttl, "the TTL must be positive")
	}
	return func(o *options) { o.ttl = ttl }
}

// WithNegativeTTL sets how long a "not found" answer is cached, so that a
// flood of lookups for a missing ID does not reach the repository. Zero
// turns negative caching off; the default is DefaultNegativeTTL. It panics
// if ttl is negative.
func WithNegativeTTL(ttl time.Duration) Option {
	if ttl < 0 {
		badOption("WithNegativeTTL", ttl, "the TTL must be zero (off) or positive")
	}
	return func(o *options) { o.negTTL = ttl }
}

// WithJitter sets the fraction f of each TTL that is randomly taken off an
// entry: an entry written with TTL d lives between d*(1-f) and d. Zero
// turns jitter off; the default is DefaultJitter. It panics unless
// 0 <= f < 1.
func WithJitter(f float64) Option {
	if !(f >= 0 && f < 1) { // also rejects NaN
		badOption("WithJitter", f, "the fraction must be in [0, 1)")
	}
	return func(o *options) { o.jitter = f }
}

// WithLoadTimeout bounds a shared load. The load runs on a context detached
// from its callers' (it keeps their values, not their cancellation), so one
// caller giving up does not fail the others; this timeout is what stops it.
// The default is DefaultLoadTimeout. It panics if d is not positive.
func WithLoadTimeout(d time.Duration) Option {
	if d <= 0 {
		badOption("WithLoadTimeout", d, "the timeout must be positive")
	}
	return func(o *options) { o.loadTimeout = d }
}

// WithBatchConcurrency bounds how many lookups or loads one batch read
// runs at once when the cache or the repository has no batch method. The
// default is DefaultBatchConcurrency. It panics if n is below 1.
func WithBatchConcurrency(n int) Option {
	if n < 1 {
		badOption("WithBatchConcurrency", n, "at least 1 is needed")
	}
	return func(o *options) { o.batchConc = n }
}

// WithLeaseTTL sets how long a lease lives when its holder neither fills
// nor releases it, which is how long a key can stay blocked after a loader
// dies. Keep it above the time a load normally takes: a lease that expires
// under a slow load lets another caller load too, and the slow load's fill
// is then dropped. The default is DefaultLeaseTTL; it only matters with a
// cache that implements Leaser. It panics if d is below a millisecond, the
// resolution of a lease's expiry.
func WithLeaseTTL(d time.Duration) Option {
	if d < time.Millisecond {
		badOption("WithLeaseTTL", d, "the TTL must be at least 1ms")
	}
	return func(o *options) { o.leaseTTL = d }
}

// WithLeaseWait bounds how long a load waits for another caller's lease on
// the same key to turn into a value. After it, the load takes the key over:
// its own lease replaces the slow holder's (whose fill is then refused, so
// that holder looks at the key again), and it loads and fills as a holder. Zero makes
// loads never wait (each takes the key over at once); the default is
// DefaultLeaseWait. It panics if d is negative.
func WithLeaseWait(d time.Duration) Option {
	if d < 0 {
		badOption("WithLeaseWait", d, "the wait must be zero or positive")
	}
	return func(o *options) { o.leaseWait = d }
}

// WithAdaptiveTTL gives each entry a TTL between min and max by how its
// key is used (see adaptive.go): up to max for a key read often and
// written rarely, close to min for one written about as often as it is
// read, max for a key not seen before. It replaces the fixed TTL (WithTTL,
// or the service's default); the TTL is still jittered. It panics unless
// 0 < min <= max.
func WithAdaptiveTTL(min, max time.Duration) Option {
	if min <= 0 || max < min {
		badOption("WithAdaptiveTTL", fmt.Sprintf("%v, %v", min, max), "want 0 < min <= max")
	}
	return func(o *options) { o.adaptMin, o.adaptMax = min, max }
}

// WithEarlyRefresh refreshes entries before they expire, by the XFetch
// rule with the given beta (Vattani et al., VLDB 2015; see refresh.go): a
// read that finds a fresh entry refreshes it in the background, with a
// probability that grows as its expiry nears and with how long its load
// took, once per key per fleet, while the entry keeps being served. A hot
// key then never makes a reader wait for the source after its first load.
// beta 1 is the paper's optimum for a single reader; larger values refresh
// earlier. It needs a cache with compare-and-swap (a Leaser; both built-in
// caches are), and does nothing over any other. It panics unless beta is
// positive and finite.
func WithEarlyRefresh(beta float64) Option {
	if !(beta > 0) || math.IsInf(beta, 0) {
		badOption("WithEarlyRefresh", beta, "beta must be positive and finite")
	}
	return func(o *options) { o.earlyBeta = beta }
}

// WithRecorder sends every read, load and write, with its result and
// duration, to r (see Recorder), in addition to the counters of
// GetMetrics. With r, local hits are timed too (two clock reads each). It
// panics if r is nil.
func WithRecorder(r Recorder) Option {
	if r == nil {
		badOption("WithRecorder", r, "the recorder must not be nil")
	}
	return func(o *options) { o.recorder = r }
}

// WithLogger sends the service's logs (cache failures, fills that failed,
// invalidations that failed) to l. The default discards them. It panics if
// l is nil.
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		badOption("WithLogger", l, "the logger must not be nil")
	}
	return func(o *options) { o.logger = l }
}

// WithCacheTimeout bounds every call to the cache, whatever the client's
// own timeouts and retries are: a caller never waits longer for the cache,
// and a call that takes longer counts as a failure of the cache (see
// WithCacheBreaker). The default is DefaultCacheTimeout. It panics if d is
// not positive.
func WithCacheTimeout(d time.Duration) Option {
	if d <= 0 {
		badOption("WithCacheTimeout", d, "the timeout must be positive")
	}
	return func(o *options) { o.cacheTimeout = d }
}

// WithCacheBreaker sets the circuit breaker kept for each shard of the
// cache: failures consecutive failures or time-outs open it; while it is
// open no call goes to the shard but a write's marker (reads go to the
// repository, writes queue their invalidations), and after cooldown one
// probe is let through, whose
// success closes it. The defaults are DefaultBreakerFailures and
// DefaultBreakerCooldown. It panics if failures is below 1 or cooldown is
// not positive.
func WithCacheBreaker(failures int, cooldown time.Duration) Option {
	checkBreaker("WithCacheBreaker", failures, cooldown)
	return func(o *options) { o.cacheBreaker = breakerOptions{failures, cooldown} }
}

// WithRepositoryBreaker sets the circuit breaker on the repository's reads:
// failures consecutive failed loads (a missing value is not a failure) open
// it; while it is open, loads fail at once with an error that matches
// ErrRepositoryUnavailable, or are answered by fail-safe (WithFailSafe),
// and after cooldown one probe is let through. Writes are never held back.
// The defaults are DefaultBreakerFailures and DefaultBreakerCooldown. It
// panics if failures is below 1 or cooldown is not positive.
func WithRepositoryBreaker(failures int, cooldown time.Duration) Option {
	checkBreaker("WithRepositoryBreaker", failures, cooldown)
	return func(o *options) { o.repoBreaker = breakerOptions{failures, cooldown} }
}

func checkBreaker(option string, failures int, cooldown time.Duration) {
	if failures < 1 {
		badOption(option, failures, "at least 1 failure must open the breaker")
	}
	if cooldown <= 0 {
		badOption(option, cooldown, "the cooldown must be positive")
	}
}

// WithFailSafe keeps every cached value for maxStale past its expiry and,
// when a load fails (the repository errs, times out, or its breaker is
// open), serves the last value known for the key instead of the error, for
// up to maxStale past its expiry. Each such read is counted
// (FailSafeServed) and logged. This serves no value older than an
// acknowledged write: every acknowledged write deleted the entry, and while
// the repository fails no write is acknowledged. Zero, the default, turns
// fail-safe off; it panics if maxStale is negative.
func WithFailSafe(maxStale time.Duration) Option {
	if maxStale < 0 {
		badOption("WithFailSafe", maxStale, "the staleness bound must be zero (off) or positive")
	}
	return func(o *options) { o.failSafe = maxStale }
}

// WithMaxValueSize bounds the encoded size, in bytes, of a cached entry: a
// value that encodes to more is returned but not cached, and an entry found
// larger in the cache is treated as corrupt (a miss, counted, overwritten).
// The default is DefaultMaxValueSize. It panics if n is below 64.
func WithMaxValueSize(n int) Option {
	if n < 64 {
		badOption("WithMaxValueSize", n, "at least 64 bytes are needed")
	}
	return func(o *options) { o.maxValueSize = n }
}

// WithLocalCache keeps up to maxEntries values in process memory, in front
// of the shared cache (otter's W-TinyLFU cache): a read it answers costs no
// network call and returns the caller's own copy. It keeps reads
// linearizable across every instance sharing the cache: once any caller
// anywhere has seen a write's value, no caller anywhere sees the value it
// replaced. For that, every write waits until each instance with a local
// tier has dropped the key, or has lost its membership lease (up to about
// WithLocalLease, for an instance cut off from the cache), and an instance
// serves from memory only while its lease is live and its bus subscription
// delivers. The package documentation has the argument.
//
// The cache must carry the invalidation bus: NewRedisCache and
// NewMemoryCache do; with any other cache NewAside and NewUserService
// panic. Every instance of a fleet must use the same mode, strict (this
// option) or relaxed (WithRelaxedLocalCache); an instance without a local
// tier writes in the fleet's mode too. It panics if maxEntries is below 1.
func WithLocalCache(maxEntries int) Option {
	if maxEntries < 1 {
		badOption("WithLocalCache", maxEntries, "at least 1 entry is needed")
	}
	return func(o *options) { o.local, o.relaxed = maxEntries, false }
}

// WithRelaxedLocalCache is WithLocalCache for fleets that prefer fast
// writes to strict reads: writers do not wait for any instance to
// acknowledge, and an instance may serve a value from memory for as long
// as the bus takes to deliver the write's invalidation (its staleness
// bound, measured in the README), and, if the bus breaks, until its
// validity runs out, within WithLocalLease. It is never the default.
// Every instance of a fleet must use it, or none. It panics if maxEntries
// is below 1.
func WithRelaxedLocalCache(maxEntries int) Option {
	if maxEntries < 1 {
		badOption("WithRelaxedLocalCache", maxEntries, "at least 1 entry is needed")
	}
	return func(o *options) { o.local, o.relaxed = maxEntries, true }
}

// WithLocalLease sets how long an instance's membership lease on the
// invalidation bus lasts; it is renewed every quarter of that. It bounds
// how long a write waits for an instance that went silent, and how soon an
// instance cut off from the cache stops serving from memory. The default
// is DefaultLocalLease. It panics if d is below 100ms.
func WithLocalLease(d time.Duration) Option {
	if d < 100*time.Millisecond {
		badOption("WithLocalLease", d, "the lease must be at least 100ms")
	}
	return func(o *options) { o.localLease = d }
}

// WithRelatedKeys sets the keys that a write to user id invalidates besides
// "user:<id>", for a UserService. The default is "users:all",
// "user_posts:<id>" and "user_stats:<id>"; a nil fn invalidates the user's
// own key only.
func WithRelatedKeys(fn func(id int) []string) UserOption {
	if fn == nil {
		fn = func(int) []string { return nil }
	}
	return relatedKeys(fn)
}

type relatedKeys func(id int) []string

func (r relatedKeys) applyUser(u *userOptions) { u.related = r }

// WithOutboxDrain sets how often a UserService over an Outbox repository
// drains it, and how old a record must be to be drained: younger records
// belong to writes whose own delete may still land. The default is
// DefaultOutboxDrain. It panics if every is below a second.
func WithOutboxDrain(every time.Duration) UserOption {
	if every < time.Second {
		badOption("WithOutboxDrain", every, "the interval must be at least 1s")
	}
	return outboxDrain(every)
}

type outboxDrain time.Duration

func (d outboxDrain) applyUser(u *userOptions) { u.drain = time.Duration(d) }
