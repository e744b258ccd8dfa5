package cacheaside

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// lockBackend gives each test instance a RedisCache with a client of its
// own over one Redis, and a raw client to tamper with it.
type lockBackend struct {
	// realTime is false for miniredis, whose keys expire only when the test
	// moves its clock.
	realTime bool
	newCache func(t testing.TB) *RedisCache
	raw      redis.UniversalClient
	prefix   string
}

// forEachLockBackend runs fn on every Redis backend of forEachBackend.
func forEachLockBackend(t *testing.T, fn func(t *testing.T, lb lockBackend)) {
	forEachBackend(t, func(t *testing.T, b backend) {
		if b.client == nil {
			t.Skip("the lock is a Redis feature")
		}
		fn(t, lockBackend{realTime: b.advance == nil, raw: b.client, prefix: b.prefix,
			newCache: func(t testing.TB) *RedisCache { return b.fork(t).(*RedisCache) }})
	})
}

func (lb lockBackend) lockKey(name string) string {
	k, _ := NewRedisCache(lb.raw, WithKeyPrefix(lb.prefix)).c.LockKeys(name)
	return k
}

func TestLock_MutualExclusionAndFencing(t *testing.T) {
	forEachLockBackend(t, func(t *testing.T, lb lockBackend) {
		ctx := context.Background()
		const clients, perClient = 4, 5
		var inside, maxInside atomic.Int32
		var mu sync.Mutex
		var tokens []int64 // in the order the holders got the lock
		var wg sync.WaitGroup
		for range clients {
			rc := lb.newCache(t)
			for range perClient {
				wg.Add(1)
				go func() {
					defer wg.Done()
					actx, cancel := context.WithTimeout(ctx, 20*time.Second)
					defer cancel()
					l, err := rc.AcquireLock(actx, "job{1}", time.Second)
					if err != nil {
						t.Errorf("AcquireLock: %v", err)
						return
					}
					n := inside.Add(1)
					for {
						m := maxInside.Load()
						if n <= m || maxInside.CompareAndSwap(m, n) {
							break
						}
					}
					mu.Lock()
					tokens = append(tokens, l.FencingToken())
					mu.Unlock()
					time.Sleep(2 * time.Millisecond)
					inside.Add(-1)
					if err := l.Release(ctx); err != nil {
						t.Errorf("Release: %v", err)
					}
				}()
			}
		}
		wg.Wait()
		require.Equal(t, int32(1), maxInside.Load(), "two holders at once")
		require.Len(t, tokens, clients*perClient)
		for i := 1; i < len(tokens); i++ {
			require.Greater(t, tokens[i], tokens[i-1], "fencing tokens must strictly increase: %v", tokens)
		}
	})
}

func TestLock_AcquireTimesOut(t *testing.T) {
	forEachLockBackend(t, func(t *testing.T, lb lockBackend) {
		ctx := context.Background()
		holder, err := lb.newCache(t).AcquireLock(ctx, "busy", time.Minute)
		require.NoError(t, err)
		defer holder.Release(ctx)

		tctx, cancel := context.WithTimeout(ctx, 60*time.Millisecond)
		defer cancel()
		begin := time.Now()
		l, err := lb.newCache(t).AcquireLock(tctx, "busy", time.Minute)
		require.Nil(t, l)
		require.ErrorIs(t, err, ErrLockTimeout)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.GreaterOrEqual(t, time.Since(begin), 60*time.Millisecond, "acquire retries until its context ends")
	})
}

func TestLock_AutoExtension(t *testing.T) {
	forEachLockBackend(t, func(t *testing.T, lb lockBackend) {
		if !lb.realTime {
			t.Skip("miniredis keys do not expire in real time")
		}
		ctx := context.Background()
		l, err := lb.newCache(t).AcquireLock(ctx, "long-job", 150*time.Millisecond)
		require.NoError(t, err)
		// Work for more than three TTLs; a rival keeps trying meanwhile.
		rival := lb.newCache(t)
		for range 5 {
			time.Sleep(100 * time.Millisecond)
			tctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
			_, err := rival.AcquireLock(tctx, "long-job", time.Second)
			cancel()
			require.ErrorIs(t, err, ErrLockTimeout, "the lock expired under its holder")
		}
		select {
		case <-l.Done():
			t.Fatalf("lock reported lost while extended: %v", l.Err())
		default:
		}
		require.NoError(t, l.Err())
		require.NoError(t, l.Release(ctx))
		<-l.Done()
		require.ErrorIs(t, l.Err(), ErrLockNotHeld)
		n, err := lb.raw.Exists(ctx, lb.lockKey("long-job")).Result()
		require.NoError(t, err)
		require.Zero(t, n, "release deletes the lock")
	})
}

func TestLock_ForeignReleaseRefused(t *testing.T) {
	forEachLockBackend(t, func(t *testing.T, lb lockBackend) {
		ctx := context.Background()
		first, err := lb.newCache(t).AcquireLock(ctx, "shared", time.Minute)
		require.NoError(t, err)
		// The lock passes to someone else behind the first holder's back (it
		// expired during a long pause, say).
		require.NoError(t, lb.raw.Del(ctx, lb.lockKey("shared")).Err())
		second, err := lb.newCache(t).AcquireLock(ctx, "shared", time.Minute)
		require.NoError(t, err)
		require.Greater(t, second.FencingToken(), first.FencingToken())

		err = first.Release(ctx)
		require.ErrorIs(t, err, ErrLockNotHeld)
		require.Contains(t, err.Error(), "shared")
		n, _ := lb.raw.Exists(ctx, lb.lockKey("shared")).Result()
		require.Equal(t, int64(1), n, "a refused release deletes nothing")
		require.NoError(t, first.Release(ctx), "releasing again is a no-op")

		require.NoError(t, second.Release(ctx))
		require.NoError(t, second.Release(ctx), "releasing twice is a no-op")
	})
}

func TestLock_LossIsSignalled(t *testing.T) {
	forEachLockBackend(t, func(t *testing.T, lb lockBackend) {
		ctx := context.Background()
		l, err := lb.newCache(t).AcquireLock(ctx, "fragile", 60*time.Millisecond)
		require.NoError(t, err)
		require.NoError(t, lb.raw.Del(ctx, lb.lockKey("fragile")).Err())
		select {
		case <-l.Done():
		case <-time.After(2 * time.Second):
			t.Fatal("the holder was not told its lock was deleted")
		}
		require.ErrorIs(t, l.Err(), ErrLockNotHeld)
		require.Contains(t, l.Err().Error(), "lost")
		require.ErrorIs(t, l.Release(ctx), ErrLockNotHeld)
	})
}

func TestLock_BadInput(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer c.Close()
	rc := NewRedisCache(c)
	for _, ttl := range []time.Duration{0, -time.Second, time.Millisecond} {
		_, err := rc.AcquireLock(ctx, "x", ttl)
		require.ErrorIs(t, err, ErrInvalidArgument, "ttl %v", ttl)
	}
	_, err := NewRedisCache(nil).AcquireLock(ctx, "x", time.Second)
	require.ErrorIs(t, err, ErrNotConfigured)

	// Names that would break a hash tag still keep the lock and its fence
	// in one slot.
	for _, name := range []string{"", "a{b}c", "}", "{", "ünï"} {
		lk, fk := rc.c.LockKeys(name)
		require.Equal(t, redisSlot(lk), redisSlot(fk), "name %q: %s and %s", name, lk, fk)
		l, err := rc.AcquireLock(ctx, name, time.Second)
		require.NoError(t, err, "name %q", name)
		require.NoError(t, l.Release(ctx))
	}
	require.False(t, errors.Is(ErrLockNotHeld, ErrLockTimeout))
}

// redisSlot is the hash tag a cluster uses to place key: the part inside
// the first {...} when it is not empty, else the whole key.
func redisSlot(key string) string {
	for i := 0; i < len(key); i++ {
		if key[i] == '{' {
			for j := i + 1; j < len(key); j++ {
				if key[j] == '}' {
					if j > i+1 {
						return key[i+1 : j]
					}
					return key
				}
			}
			return key
		}
	}
	return key
}

// TestLock_PlantedValuesNeverStallIt: whatever sits in the lock's keys, the
// lock can be taken and its fencing tokens keep increasing: a broken
// fencing counter (not a number, a huge number, another type), a lock key
// without an expiry, and a lock key of another type.
func TestLock_PlantedValuesNeverStallIt(t *testing.T) {
	forEachLockBackend(t, func(t *testing.T, lb lockBackend) {
		ctx := context.Background()
		rc := lb.newCache(t)
		lockKey, fenceKey := rc.c.LockKeys("job")
		take := func() int64 {
			t.Helper()
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			l, err := rc.AcquireLock(actx, "job", time.Minute)
			require.NoError(t, err, "the lock must stay acquirable")
			require.NoError(t, l.Release(ctx))
			return l.FencingToken()
		}
		last := take()
		plants := []struct {
			name  string
			plant func()
		}{
			{"fence not a number", func() { lb.raw.Set(ctx, fenceKey, "garbage", 0) }},
			{"fence too large", func() { lb.raw.Set(ctx, fenceKey, "99999999999999999999", 0) }},
			{"fence a fraction", func() { lb.raw.Set(ctx, fenceKey, "12.5", 0) }},
			{"fence of another type", func() { lb.raw.Del(ctx, fenceKey); lb.raw.HSet(ctx, fenceKey, "f", "1") }},
			{"lock without expiry", func() { lb.raw.Set(ctx, lockKey, "someone", 0) }},
			{"lock of another type", func() { lb.raw.RPush(ctx, lockKey, "x") }},
		}
		for _, p := range plants {
			p.plant()
			token := take()
			require.Greater(t, token, last, "%s: the fencing token must still increase", p.name)
			last = token
		}
	})
}
