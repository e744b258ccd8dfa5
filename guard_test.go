package cacheaside

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// hungCache is a cache whose calls block, ignoring their context, until it
// is released: a Redis that stopped answering, behind a client that does
// not honour context deadlines (go-redis's default).
type hungCache struct {
	CacheClient
	hung    atomic.Bool
	release chan struct{}
	calls   atomic.Int64
}

func newHungCache(c CacheClient) *hungCache {
	return &hungCache{CacheClient: c, release: make(chan struct{})}
}

func (h *hungCache) wait() {
	h.calls.Add(1)
	if h.hung.Load() {
		<-h.release
	}
}

func (h *hungCache) GetJSON(ctx context.Context, key string, dest any) error {
	h.wait()
	return h.CacheClient.GetJSON(ctx, key, dest)
}

func (h *hungCache) SetJSON(ctx context.Context, key string, v any, ttl time.Duration) error {
	h.wait()
	return h.CacheClient.SetJSON(ctx, key, v, ttl)
}

func (h *hungCache) Delete(ctx context.Context, keys ...string) error {
	h.wait()
	return h.CacheClient.Delete(ctx, keys...)
}

func (h *hungCache) SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) ([]byte, error) {
	h.wait()
	return h.CacheClient.(Leaser).SetNX(ctx, key, val, ttl)
}

func (h *hungCache) CompareAndSwap(ctx context.Context, key string, old, val []byte, ttl time.Duration) (bool, error) {
	h.wait()
	return h.CacheClient.(Leaser).CompareAndSwap(ctx, key, old, val, ttl)
}

// TestGuard_TimeBoxBoundsAHungCache: a cache that hangs costs a read at
// most its time box; the read is answered by the repository, the write
// returns, and the calls left hanging end once the cache answers.
func TestGuard_TimeBoxBoundsAHungCache(t *testing.T) {
	ctx := context.Background()
	repo := newTestRepo()
	u := seedUser(t, repo, "patient")
	hc := newHungCache(NewMemoryCache())
	svc := NewUserService(repo, hc, WithCacheTimeout(50*time.Millisecond))
	defer svc.Close()
	_, err := svc.GetUser(ctx, u.ID) // cached
	require.NoError(t, err)

	hc.hung.Store(true)
	begin := time.Now()
	got, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err, "a hung cache must not fail a read")
	require.Equal(t, "patient", got.Name)
	require.Less(t, time.Since(begin), 2*time.Second, "the read waited on the hung cache")
	begin = time.Now()
	require.NoError(t, svc.UpdateUser(ctx, &User{ID: u.ID, Name: "patient2", Email: u.Email}))
	require.Less(t, time.Since(begin), 2*time.Second, "the write waited on the hung cache")
	m := svc.GetMetrics()
	require.GreaterOrEqual(t, m.CacheTimeouts, int64(2))
	require.Equal(t, int64(4), m.PendingInvalidations, "the write's deletes (its key and 3 related keys) wait for a retry")

	close(hc.release) // the stragglers end; goleak checks it
}

// TestGuard_CallerDeadlineHolds: with a time box longer than the caller's
// deadline, a read of a hung cache returns at the deadline.
func TestGuard_CallerDeadlineHolds(t *testing.T) {
	repo := newTestRepo()
	u := seedUser(t, repo, "quick")
	hc := newHungCache(NewMemoryCache())
	defer close(hc.release)
	svc := NewUserService(repo, hc, WithCacheTimeout(time.Minute))
	defer svc.Close()
	hc.hung.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	_, err := svc.GetUser(ctx, u.ID)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(begin), time.Second, "the caller's deadline did not hold")
	require.Zero(t, svc.GetMetrics().CacheTimeouts, "the caller's own deadline is not the cache's fault")
}

// TestGuard_BreakerOpensAndRecovers: consecutive failures open the breaker,
// after which no call reaches the cache and reads go to the repository;
// after the cooldown a probe that succeeds closes it again.
func TestGuard_BreakerOpensAndRecovers(t *testing.T) {
	ctx := context.Background()
	repo := newTestRepo()
	u := seedUser(t, repo, "breaker")
	fc := newFaultCache(NewMemoryCache())
	svc := NewUserService(repo, fc, WithCacheBreaker(3, 50*time.Millisecond))
	defer svc.Close()
	_, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err)

	before := fc.gets.Load()
	fc.failGet.Store(true)
	for range 10 {
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "breaker", got.Name)
	}
	m := svc.GetMetrics()
	require.Equal(t, int64(1), m.CacheBreakerOpens)
	require.Equal(t, int64(1), m.CacheShardsUnavailable)
	require.Positive(t, m.CacheCallsRejected, "calls must be refused while the breaker is open")
	require.Equal(t, before+3, fc.gets.Load(), "no call may reach the cache once the breaker opened")

	fc.failGet.Store(false)
	require.Eventually(t, func() bool {
		_, err := svc.GetUser(ctx, u.ID)
		return err == nil && svc.GetMetrics().CacheShardsUnavailable == 0
	}, 5*time.Second, 10*time.Millisecond, "a successful probe must close the breaker")
	hits := svc.GetMetrics().CacheHits
	_, err = svc.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, hits+1, svc.GetMetrics().CacheHits, "reads hit again")
}

// shardedCache is a memory cache whose keys live on two shards, "odd" and
// "even" by the last digit of the key, and whose "odd" shard can be made
// to fail: a Redis Cluster with one master down.
type shardedCache struct {
	*MemoryCache
	oddDown atomic.Bool
	oddHits atomic.Int64
}

func (s *shardedCache) Shard(key string) string {
	if (key[len(key)-1]-'0')%2 == 1 {
		return "odd"
	}
	return "even"
}

func (s *shardedCache) fail(keys ...string) error {
	for _, k := range keys {
		if s.Shard(k) == "odd" {
			if s.oddDown.Load() {
				return errInjected
			}
			s.oddHits.Add(1)
		}
	}
	return nil
}

func (s *shardedCache) GetJSON(ctx context.Context, key string, dest any) error {
	if err := s.fail(key); err != nil {
		return err
	}
	return s.MemoryCache.GetJSON(ctx, key, dest)
}

func (s *shardedCache) GetMulti(ctx context.Context, keys []string) ([]json.RawMessage, error) {
	if err := s.fail(keys...); err != nil {
		return nil, err
	}
	return s.MemoryCache.GetMulti(ctx, keys)
}

func (s *shardedCache) Delete(ctx context.Context, keys ...string) error {
	if err := s.fail(keys...); err != nil {
		return err
	}
	return s.MemoryCache.Delete(ctx, keys...)
}

func (s *shardedCache) SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) ([]byte, error) {
	if err := s.fail(key); err != nil {
		return nil, err
	}
	return s.MemoryCache.SetNX(ctx, key, val, ttl)
}

// TestGuard_ShardFailsAlone: on a sharded cache, a shard that fails opens
// only its own breaker: keys on the other shard stay hits, in single and
// batch reads, and deletes of the other shard's keys land.
func TestGuard_ShardFailsAlone(t *testing.T) {
	ctx := context.Background()
	repo := newTestRepo()
	for i := range 4 {
		seedUser(t, repo, "u"+strings.Repeat("x", i))
	}
	sc := &shardedCache{MemoryCache: NewMemoryCache()}
	svc := NewUserService(repo, sc, WithRelatedKeys(nil))
	defer svc.Close()
	_, err := svc.GetUsersBatch(ctx, []int{1, 2, 3, 4})
	require.NoError(t, err)

	sc.oddDown.Store(true)
	for range 10 {
		got, err := svc.GetUsersBatch(ctx, []int{1, 2, 3, 4})
		require.NoError(t, err)
		for i, u := range got {
			require.Equal(t, i+1, u.ID)
		}
		for _, id := range []int{1, 2, 3, 4} {
			_, err := svc.GetUser(ctx, id)
			require.NoError(t, err)
		}
	}
	m := svc.GetMetrics()
	require.Equal(t, int64(1), m.CacheShardsUnavailable, "only the odd shard's breaker opens")
	before := m.CacheHits
	gets := repo.gets.Load() + repo.batchGets.Load()
	for _, id := range []int{2, 4} {
		_, err := svc.GetUser(ctx, id)
		require.NoError(t, err)
	}
	require.Equal(t, before+2, svc.GetMetrics().CacheHits, "keys on the healthy shard stay hits")
	require.Equal(t, gets, repo.gets.Load()+repo.batchGets.Load())

	require.NoError(t, svc.UpdateUser(ctx, &User{ID: 2, Name: "two", Email: "two@example.com"}))
	require.NoError(t, svc.UpdateUser(ctx, &User{ID: 3, Name: "three", Email: "three@example.com"}))
	require.Equal(t, int64(1), svc.GetMetrics().PendingInvalidations, "only the failed shard's delete waits")
	got, err := svc.GetUser(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, "two", got.Name)
}

// TestGuard_StragglersEnd: calls abandoned at their time box end when the
// cache answers, and the guard forgets them.
func TestGuard_StragglersEnd(t *testing.T) {
	hc := newHungCache(NewMemoryCache())
	var m counters
	o := defaultOptions(time.Minute)
	o.cacheTimeout = 10 * time.Millisecond
	g := newGuard(hc, o, &m)
	hc.hung.Store(true)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			_, err := g.get(context.Background(), "k")
			require.ErrorIs(t, err, ErrCacheUnavailable)
		})
	}
	wg.Wait()
	require.Equal(t, int64(8), g.stragglers.Load())
	close(hc.release)
	require.Eventually(t, func() bool { return g.stragglers.Load() == 0 }, 5*time.Second, time.Millisecond)
}
