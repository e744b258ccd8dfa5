package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/cacheaside/cacheaside/internal/rediscache"
)

// DistributedLock is a lock held in Redis, for work that one instance of a
// fleet should do at a time: warming a cache, running a scheduled job. Get
// one from [RedisCache.AcquireLock] and give it back with Release.
//
// While it is held, a goroutine extends it every ttl/3 with a script that
// checks the owner first. If an extension finds the lock gone or owned by
// someone else, or extensions fail for a whole ttl, the lock is lost: Done
// is closed and Err says so. Release stops the goroutine; it is the only way
// to stop it while the lock is held, so always call Release.
//
// It is an efficiency lock, not a correctness one (Martin Kleppmann, "How to
// do distributed locking", 2016): a holder that pauses longer than the ttl
// (a GC pause, a stalled network) can go on believing it holds a lock that
// has already passed to another instance, and Done can only report the loss
// after the fact. When two holders at once would corrupt data, pass
// FencingToken to the system being written and have it reject tokens older
// than the newest it has seen.
type DistributedLock struct {
	c     *rediscache.Cache
	name  string
	owner string
	ttl   time.Duration
	fence int64

	done     chan struct{} // closed on loss or release
	stop     chan struct{} // closed to stop the extender
	stopped  chan struct{} // closed when the extender has returned
	stopOnce sync.Once

	mu       sync.Mutex // protects released and err
	released bool
	err      error
}

// lockBackoffMax caps the wait between two attempts to take a busy lock.
const lockBackoffMax = 100 * time.Millisecond

// AcquireLock takes the lock named name for ttl, retrying while someone
// else holds it until ctx ends; it then fails with an error for which
// errors.Is(err, ErrLockTimeout) is true (and, if Redis failed meanwhile,
// that error too). Each acquisition gets its own random owner value and a
// fencing token higher than any the lock issued before (one higher, unless
// its counter was found damaged and restarted from the server's clock).
//
// The lock lives under "cacheaside:lock:{name}" (after the key prefix), in
// the namespace the library keeps for itself, so no cached entity and no
// invalidation can reach it; its fencing counter, which never expires,
// lives beside it in the same cluster slot. A lock key without an expiry
// (every lock has one) does not count as held. ttl must be at least 3ms.
func (r *RedisCache) AcquireLock(ctx context.Context, name string, ttl time.Duration) (*DistributedLock, error) {
	if err := r.ready(); err != nil {
		return nil, err
	}
	if ttl < 3*time.Millisecond {
		return nil, fmt.Errorf("%w: lock ttl %v is below 3ms", ErrInvalidArgument, ttl)
	}
	owner := strconv.FormatUint(rand.Uint64(), 36) + strconv.FormatUint(rand.Uint64(), 36)
	backoff := 5 * time.Millisecond
	var lastErr error
	for {
		fence, left, ok, err := r.c.AcquireLock(ctx, name, owner, ttl)
		if err == nil && ok {
			l := &DistributedLock{
				c: r.c, name: name, owner: owner, ttl: ttl, fence: fence,
				done: make(chan struct{}), stop: make(chan struct{}), stopped: make(chan struct{}),
			}
			go l.extend()
			return l, nil
		}
		if err != nil {
			lastErr = err
		}
		wait := backoff/2 + rand.N(backoff)
		if err == nil && left > 0 {
			wait = min(wait, left)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if lastErr != nil && !errors.Is(lastErr, ctx.Err()) {
				return nil, fmt.Errorf("%w: %q: %w (last Redis error: %w)", ErrLockTimeout, name, ctx.Err(), lastErr)
			}
			return nil, fmt.Errorf("%w: %q: %w", ErrLockTimeout, name, ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, lockBackoffMax)
	}
}

// extend keeps the lock alive until Release stops it or the lock is lost.
func (l *DistributedLock) extend() {
	defer close(l.stopped)
	every := l.ttl / 3
	t := time.NewTicker(every)
	defer t.Stop()
	validUntil := time.Now().Add(l.ttl) // no later than the lock's own expiry
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), every)
		ok, err := l.c.ExtendLock(ctx, l.name, l.owner, l.ttl)
		cancel()
		switch {
		case err == nil && ok:
			validUntil = sent.Add(l.ttl)
		case err == nil:
			l.lose("the key is gone or owned by someone else")
			return
		case !time.Now().Before(validUntil):
			l.lose("extensions failed for a whole ttl: " + err.Error())
			return
		}
	}
}

func (l *DistributedLock) lose(why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = fmt.Errorf("%w: lock %q lost: %s", ErrLockNotHeld, l.name, why)
		close(l.done)
	}
}

// Release gives the lock back: it stops the extensions and deletes the
// lock if this acquisition still owns it. If the lock expired or passed to
// another owner meanwhile, Release deletes nothing and returns an error for
// which errors.Is(err, ErrLockNotHeld) is true. Releasing again after that
// is a no-op that returns nil. If Redis cannot be reached, Release returns
// the error and may be called again; the lock expires after its ttl anyway.
func (l *DistributedLock) Release(ctx context.Context) error {
	l.mu.Lock()
	released := l.released
	l.mu.Unlock()
	if released {
		return nil
	}
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.stopped

	ok, err := l.c.ReleaseLock(ctx, l.name, l.owner)
	if err != nil {
		return wrapErr(fmt.Sprintf("release lock %q", l.name), err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return nil
	}
	l.released = true
	if l.err == nil {
		l.err = fmt.Errorf("%w: lock %q released", ErrLockNotHeld, l.name)
		close(l.done)
	}
	if !ok {
		return fmt.Errorf("%w: lock %q expired or is held by another owner; nothing deleted", ErrLockNotHeld, l.name)
	}
	return nil
}

// FencingToken returns the token of this acquisition: every acquisition of
// the same lock name gets a strictly greater one (Redis INCR, in the same
// script as the acquisition).
func (l *DistributedLock) FencingToken() int64 { return l.fence }

// Name returns the name the lock was acquired under.
func (l *DistributedLock) Name() string { return l.name }

// Done returns a channel that is closed when the lock is lost or released.
func (l *DistributedLock) Done() <-chan struct{} { return l.done }

// Err returns nil while the lock is held, and after Done is closed an
// error for which errors.Is(err, ErrLockNotHeld) is true, saying whether the
// lock was lost or released.
func (l *DistributedLock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}
