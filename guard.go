package cacheaside

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// Every call the engine makes to the cache goes through a guard, which
// keeps a sick cache cheap:
//
//   - A time box (WithCacheTimeout) bounds the caller's wait, whatever the
//     client's own settings: go-redis ignores context deadlines on socket
//     reads unless ContextTimeoutEnabled is set, and retries a timed-out
//     read up to MaxRetries times. The call runs on a goroutine of its own
//     with a context that carries the box's deadline; the caller stops
//     waiting when the box ends, and the goroutine ends when the client
//     gives up by its own timeouts. At most maxStragglers such goroutines
//     may outlive their box at once: past that, calls fail at once.
//   - A circuit breaker (sony/gobreaker) per shard of the cache: a
//     Redis Cluster master is a shard (see Sharder), any other cache is
//     one. Consecutive failures or time-outs open it; while it is open no
//     call is sent to that shard, and after a cooldown one probe is let
//     through to close it again.
//
// A miss, an entry that does not decode and the end of the caller's own
// context are not failures.

// maxStragglers bounds the cache calls that may outlive their time box at
// once, that is the goroutines a hung cache can hold.
const maxStragglers = 1024

// ErrCacheUnavailable reports a cache call that was not sent or not waited
// for: the shard's circuit breaker was open, the call outlived its time
// box, or too many calls already had; and a write refused because, in a
// fleet with local tiers, it could not tell them before changing the source.
var ErrCacheUnavailable = errors.New("cacheaside: cache unavailable")

// A Sharder is an optional interface of a CacheClient spread over servers
// that fail independently, such as a Redis Cluster: Shard names the server
// that holds key. The service keeps a circuit breaker per shard, so that a
// dead server only sends its own keys to the repository. NewRedisCache
// implements it for cluster clients.
type Sharder interface {
	Shard(key string) string
}

// A ContextBounded CacheClient promises that each of its calls returns by
// the deadline of its context, whatever the server does: BoundedByContext
// reports whether it keeps that promise. The service makes calls to such a
// cache on the caller's own goroutine, under a context that carries the
// time box; to any other cache it hands each call to a worker goroutine, so
// that it can stop waiting at the time box even if the call goes on.
// NewMemoryCache's calls never wait, and NewRedisCache keeps the promise
// for every go-redis client it can (see RedisCache.BoundedByContext).
type ContextBounded interface {
	BoundedByContext() bool
}

// inProcess marks the caches that live in this process (the memory cache,
// no cache): their calls cannot hang on a network, and need no time box.
type inProcess interface{ inProcess() }

// guard time-boxes and breaks the calls to one cache.
type guard struct {
	c       CacheClient
	multi   MultiGetter  // nil when c does not implement it
	leaser  Leaser       // nil when c does not implement it
	sharder Sharder      // nil when c does not implement it
	clearer writeClearer // nil when c does not implement it
	keeper  markerKeeper // nil when c does not implement it
	inProc  bool         // c lives in this process and cannot hang on a network
	inline  bool         // c's calls return by their context's deadline
	timeout time.Duration
	st      gobreaker.Settings
	log     *slog.Logger
	m       *counters

	mu       sync.Mutex // protects breakers
	breakers map[string]*gobreaker.TwoStepCircuitBreaker[struct{}]
	open     atomic.Int64 // shards whose breaker is not closed

	stragglers atomic.Int64 // calls running past their time box
	w          workers
}

func newGuard(c CacheClient, o options, m *counters) *guard {
	g := &guard{c: c, timeout: o.cacheTimeout, log: o.logger, m: m,
		breakers: make(map[string]*gobreaker.TwoStepCircuitBreaker[struct{}]),
		w:        workers{jobs: make(chan func()), quit: make(chan struct{})}}
	g.multi, _ = c.(MultiGetter)
	g.leaser, _ = c.(Leaser)
	g.sharder, _ = c.(Sharder)
	if s, ok := c.(interface{ sharded() bool }); ok && !s.sharded() {
		g.sharder = nil // one server: one shard
	}
	g.clearer, _ = c.(writeClearer)
	g.keeper, _ = c.(markerKeeper)
	_, g.inProc = c.(inProcess)
	if b, ok := c.(ContextBounded); ok {
		g.inline = b.BoundedByContext()
	}
	g.st = breakerSettings("cache", o.cacheBreaker, g.log, func(from, to gobreaker.State) {
		switch {
		case to == gobreaker.StateOpen:
			m.cacheBreakerOpens.Add(1)
			if from == gobreaker.StateClosed {
				g.open.Add(1)
			}
		case to == gobreaker.StateClosed:
			g.open.Add(-1)
		}
	})
	return g
}

// breakerSettings configures a breaker that opens after b.failures
// consecutive failures, stays open for b.cooldown, then lets one probe
// through; it logs every change of state and reports it to changed.
func breakerSettings(what string, b breakerOptions, log *slog.Logger, changed func(from, to gobreaker.State)) gobreaker.Settings {
	return gobreaker.Settings{
		Name:        what,
		MaxRequests: 1,
		Timeout:     b.cooldown,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= uint32(b.failures) },
		OnStateChange: func(name string, from, to gobreaker.State) {
			level := slog.LevelWarn
			if to == gobreaker.StateClosed {
				level = slog.LevelInfo
			}
			log.Log(context.Background(), level, "cacheaside: circuit breaker "+to.String(), "breaker", name, "from", from.String())
			changed(from, to)
		},
		IsExcluded: func(err error) bool { return errors.Is(err, errCallerGone) },
	}
}

// errCallerGone marks a call whose caller's context ended first: neither a
// success nor a failure of the cache.
var errCallerGone = errors.New("caller gone")

// errBreakerOpen is what a call the circuit breaker turned away returns.
var errBreakerOpen = fmt.Errorf("%w: circuit breaker open", ErrCacheUnavailable)

func (g *guard) shard(key string) string {
	if g.sharder == nil {
		return ""
	}
	return g.sharder.Shard(key)
}

func (g *guard) breaker(shard string) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	g.mu.Lock()
	defer g.mu.Unlock()
	b, ok := g.breakers[shard]
	if !ok {
		st := g.st
		if shard != "" {
			st.Name = "cache " + shard
		}
		b = gobreaker.NewTwoStepCircuitBreaker[struct{}](st)
		g.breakers[shard] = b
	}
	return b
}

// ticket is a call the breaker let through: its context, which carries
// the time box (none for an in-process cache), and how to report it.
type ticket struct {
	ctx    context.Context
	cancel context.CancelFunc
	done   func(error)
}

// enter asks the shard's breaker for a call, time-boxed to box. A call
// made past the breaker runs even when the breaker would turn it away,
// and then does not report to it.
func (g *guard) enter(ctx context.Context, shard string, box time.Duration, past bool) (ticket, error) {
	done, err := g.breaker(shard).Allow()
	switch {
	case err != nil && past:
		done = func(error) {}
	case err != nil:
		g.m.cacheRejected.Add(1)
		return ticket{}, errBreakerOpen
	}
	if g.stragglers.Load() >= maxStragglers {
		done(ErrCacheUnavailable)
		g.m.cacheRejected.Add(1)
		return ticket{}, fmt.Errorf("%w: %d calls already outlived their time box", ErrCacheUnavailable, maxStragglers)
	}
	t := ticket{ctx: ctx, cancel: func() {}, done: done}
	if !g.inProc {
		t.ctx, t.cancel = context.WithTimeout(ctx, box)
	}
	return t, nil
}

// leave reports how a call made on the caller's goroutine went, and
// returns its error, or a time-out if the box, not the caller, ended it.
func (g *guard) leave(ctx context.Context, t ticket, err error) error {
	boxed := t.ctx.Err() != nil && ctx.Err() == nil // the box ended, not the caller's context
	t.cancel()
	out := g.outcome(ctx, err)
	if boxed && out != nil && !errors.Is(out, errCallerGone) {
		return g.timedOut(t.done)
	}
	t.done(out)
	return err
}

// direct reports whether calls run on the caller's goroutine: the cache
// cannot hang, or its calls return by their context's deadline.
func (g *guard) direct() bool { return g.inProc || g.inline }

// do runs op against the shard within the time box, and reports how it
// went to the shard's breaker. When do returns an error, op may still be
// running: the caller must not read what op writes, except under a lock
// that op holds too.
func (g *guard) do(ctx context.Context, shard string, op func(ctx context.Context) error) error {
	return g.doWithin(ctx, shard, g.timeout, op)
}

// doWithin is do with a time box of its own, for the rare calls that may
// take longer than a read should wait.
func (g *guard) doWithin(ctx context.Context, shard string, box time.Duration, op func(ctx context.Context) error) error {
	return g.call(ctx, shard, box, false, op)
}

// doPast is doWithin past the breaker (see enter), for the steps a write
// must not skip just because reads stopped asking the cache: its
// write-intent marker, without which other processes, whose breakers may
// be closed, would go on reading the value it replaces.
func (g *guard) doPast(ctx context.Context, shard string, box time.Duration, op func(ctx context.Context) error) error {
	return g.call(ctx, shard, box, true, op)
}

// call runs op within box, through the shard's breaker or past it.
func (g *guard) call(ctx context.Context, shard string, box time.Duration, past bool, op func(ctx context.Context) error) error {
	t, err := g.enter(ctx, shard, box, past)
	if err != nil {
		return err
	}
	if g.direct() {
		return g.leave(ctx, t, op(t.ctx))
	}
	c := &call{done: make(chan error, 1)}
	g.w.run(func() {
		err := op(t.ctx)
		c.done <- err
		if !c.state.CompareAndSwap(running, finished) { // abandoned
			g.stragglers.Add(-1)
		}
		t.cancel()
	})
	select {
	case err := <-c.done:
		t.cancel()
		t.done(g.outcome(ctx, err))
		return err
	case <-t.ctx.Done():
	}
	if !c.state.CompareAndSwap(running, abandoned) {
		// It finished as the box ended: take its answer.
		err := <-c.done
		t.done(g.outcome(ctx, err))
		return err
	}
	g.stragglers.Add(1)
	if err := ctx.Err(); err != nil {
		t.done(errCallerGone)
		return err
	}
	return g.timedOut(t.done)
}

// timedOut counts a call that outlived its time box as a failure.
func (g *guard) timedOut(done func(error)) error {
	g.m.cacheTimeouts.Add(1)
	done(ErrCacheUnavailable)
	return fmt.Errorf("%w: no answer within %v", ErrCacheUnavailable, g.timeout)
}

// outcome is what a call's error means to the breaker.
func (g *guard) outcome(ctx context.Context, err error) error {
	switch {
	case err == nil, errors.Is(err, ErrCacheMiss), isDecodeError(err):
		return nil
	case ctx.Err() != nil:
		return errCallerGone
	}
	return err
}

// call is one time-boxed cache call.
type call struct {
	done  chan error
	state atomic.Int32
}

const (
	running int32 = iota
	finished
	abandoned
)

// get reads key's raw entry.
func (g *guard) get(ctx context.Context, key string) (json.RawMessage, error) {
	var raw json.RawMessage
	if g.direct() { // the hit path: no closure, no hand-off
		t, err := g.enter(ctx, g.shard(key), g.timeout, false)
		if err != nil {
			return nil, err
		}
		if err := g.leave(ctx, t, g.c.GetJSON(t.ctx, key, &raw)); err != nil {
			return nil, err
		}
		return raw, nil
	}
	err := g.do(ctx, g.shard(key), func(ctx context.Context) error {
		var r json.RawMessage
		err := g.c.GetJSON(ctx, key, &r)
		raw = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return raw, nil
}

// set stores raw under key for ttl.
func (g *guard) set(ctx context.Context, key string, raw json.RawMessage, ttl time.Duration) error {
	return g.do(ctx, g.shard(key), func(ctx context.Context) error { return g.c.SetJSON(ctx, key, raw, ttl) })
}

// heldSetter is what a Leaser may offer for a key that held a marker
// when it was last read: SetNX in fewer round trips for that case.
type heldSetter interface {
	setNXHeld(ctx context.Context, key string, val []byte, ttl time.Duration) ([]byte, error)
}

// setNX places val under an empty key; see Leaser. wasHeld says that the
// key held a marker when last read (see heldSetter).
func (g *guard) setNX(ctx context.Context, key string, val []byte, ttl time.Duration, wasHeld bool) ([]byte, error) {
	place := g.leaser.SetNX
	if hs, ok := g.leaser.(heldSetter); ok && wasHeld {
		place = hs.setNXHeld
	}
	var held []byte
	err := g.do(ctx, g.shard(key), func(ctx context.Context) error {
		h, err := place(ctx, key, val, ttl)
		held = h
		return err
	})
	if err != nil { // the call may still be running: do not read held
		return nil, err
	}
	return held, nil
}

// cas swaps key's value from old to val; see Leaser.
func (g *guard) cas(ctx context.Context, key string, old, val []byte, ttl time.Duration) (bool, error) {
	var ok bool
	err := g.do(ctx, g.shard(key), func(ctx context.Context) error {
		s, err := g.leaser.CompareAndSwap(ctx, key, old, val, ttl)
		ok = s
		return err
	})
	if err != nil { // the call may still be running: do not read ok
		return false, err
	}
	return ok, nil
}

// byShard groups the indexes of keys by shard, in order of first
// appearance.
func (g *guard) byShard(keys []string) (shards []string, groups [][]int) {
	if g.sharder == nil {
		all := make([]int, len(keys))
		for i := range all {
			all[i] = i
		}
		return []string{""}, [][]int{all}
	}
	at := make(map[string]int)
	for i, k := range keys {
		sh := g.shard(k)
		n, ok := at[sh]
		if !ok {
			n = len(shards)
			at[sh] = n
			shards = append(shards, sh)
			groups = append(groups, nil)
		}
		groups[n] = append(groups[n], i)
	}
	return shards, groups
}

// eachShard runs op once per shard of keys, concurrently, with the keys of
// that shard, and returns for each key the error of its shard's call.
func (g *guard) eachShard(ctx context.Context, keys []string, op func(ctx context.Context, idx []int, keys []string) error) []error {
	shards, groups := g.byShard(keys)
	errs := make([]error, len(keys))
	run := func(n int) {
		idx := groups[n]
		sub := make([]string, len(idx))
		for j, i := range idx {
			sub[j] = keys[i]
		}
		if err := g.do(ctx, shards[n], func(ctx context.Context) error { return op(ctx, idx, sub) }); err != nil {
			for _, i := range idx {
				errs[i] = err
			}
		}
	}
	if len(shards) == 1 {
		run(0)
		return errs
	}
	var wg sync.WaitGroup
	for n := range shards {
		wg.Go(func() { run(n) })
	}
	wg.Wait()
	return errs
}

// getMulti reads many keys, one call per shard. errs[i] is the error of
// key i's shard, whose keys are then unread.
func (g *guard) getMulti(ctx context.Context, keys []string) (raws []json.RawMessage, errs []error) {
	out := make([]json.RawMessage, len(keys))
	var mu sync.Mutex // protects out against a call that outlived its box
	errs = g.eachShard(ctx, keys, func(ctx context.Context, idx []int, sub []string) error {
		r, err := g.multi.GetMulti(ctx, sub)
		if err == nil && len(r) != len(sub) {
			err = fmt.Errorf("GetMulti returned %d values for %d keys", len(r), len(sub))
		}
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for j, i := range idx {
			out[i] = r[j]
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	raws = make([]json.RawMessage, len(keys))
	for i := range out {
		if errs[i] == nil {
			raws[i] = out[i]
		}
	}
	return raws, errs
}

// del deletes keys, one call per shard, and returns those it could not.
// With a cache that implements markerKeeper, a key that holds the marker of
// a write in progress keeps it (see markerKeeper).
func (g *guard) del(ctx context.Context, keys []string) (failed []string, err error) {
	errs := g.eachShard(ctx, keys, func(ctx context.Context, _ []int, sub []string) error {
		if g.keeper != nil {
			return g.keeper.invalidate(ctx, sub)
		}
		return g.c.Delete(ctx, sub...)
	})
	for i, e := range errs {
		if e != nil {
			failed = append(failed, keys[i])
			if err == nil {
				err = e
			}
		}
	}
	return failed, err
}

// workers run the time-boxed calls on goroutines that outlive one call, so
// that a call costs a hand-off to a waiting goroutine rather than a new
// goroutine whose stack grows through the client's code each time (on a
// loopback Redis, about a third of a hit). A call that finds no worker
// waiting starts one. A worker that has waited idleWorker for its next call
// ends, and close ends them all once their calls return; after close,
// every call runs on a goroutine of its own that ends with it.
type workers struct {
	jobs chan func()   // unbuffered: a send succeeds only if a worker waits
	quit chan struct{} // closed by close
	once sync.Once
}

// idleWorker is how long a worker waits for its next call before it ends.
const idleWorker = 100 * time.Millisecond

func (w *workers) run(f func()) {
	select {
	case w.jobs <- f:
	default:
		go w.work(f)
	}
}

func (w *workers) work(f func()) {
	idle := time.NewTimer(idleWorker)
	defer idle.Stop()
	for {
		f()
		idle.Reset(idleWorker)
		select {
		case f = <-w.jobs:
		case <-idle.C:
			return
		case <-w.quit:
			return
		}
	}
}

func (w *workers) close() { w.once.Do(func() { close(w.quit) }) }

// writeClearer is what the adapters of this package offer to end a write
// in one call: delete key unless it holds a write-intent marker other than
// marker (a marker is a value that starts with prefix), and delete related.
type writeClearer interface {
	clearWrite(ctx context.Context, key string, marker []byte, prefix string, related []string) error
}

// clearWrite ends a write to key; see writeClearer. It returns the keys it
// could not clear.
func (g *guard) clearWrite(ctx context.Context, key string, marker []byte, related []string) (failed []string, err error) {
	if g.sharder == nil {
		if err := g.do(ctx, "", func(ctx context.Context) error {
			return g.clearer.clearWrite(ctx, key, marker, writingPrefix, related)
		}); err != nil {
			return append([]string{key}, related...), err
		}
		return nil, nil
	}
	// On a sharded cache the related keys may live elsewhere.
	if err = g.do(ctx, g.shard(key), func(ctx context.Context) error {
		return g.clearer.clearWrite(ctx, key, marker, writingPrefix, nil)
	}); err != nil {
		failed = append(failed, key)
	}
	if len(related) > 0 {
		f, derr := g.del(ctx, related)
		failed = append(failed, f...)
		if err == nil {
			err = derr
		}
	}
	return failed, err
}
