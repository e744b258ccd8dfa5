package cacheaside

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The seed's three tests, run against every cache adapter.

func TestUserService_CacheAside(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "alice")
		svc := NewUserService(repo, b.cache)

		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, int64(1), repo.gets.Load(), "first access must query the DB once")
		require.Equal(t, int64(1), svc.GetMetrics().CacheMisses)
		t.Log("First access - cache miss, loaded from DB")

		got2, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, int64(1), repo.gets.Load(), "second access must not query the DB")
		require.Equal(t, int64(1), svc.GetMetrics().CacheHits)
		t.Log("Second access - cache hit, served from cache")

		for _, g := range []*User{got, got2} {
			if g.ID != u.ID || g.Name != "alice" || g.Email != u.Email || !g.CreateAt.Equal(u.CreateAt) {
				t.Fatalf("GetUser(%d) = %+v, want %+v", u.ID, g, u)
			}
		}
		m := svc.GetMetrics()
		assert.InDelta(t, 0.5, m.HitRate, 1e-9)
		assert.InDelta(t, 0.5, m.MissRate, 1e-9)
		t.Logf("Cache hit rate: %.2f%%", m.HitRate*100)
	})
}

func TestUserService_SingleFlight(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "bob")
		gate := make(chan struct{})
		repo.setHook(func(context.Context, int) { <-gate })
		svc := NewUserService(repo, b.cache)

		const n = 10
		joined := awaitJoins(svc.users, n)
		var done sync.WaitGroup
		results := make([]*User, n)
		errs := make([]error, n)
		done.Add(n)
		for i := range n {
			go func() {
				defer done.Done()
				results[i], errs[i] = svc.GetUser(ctx, u.ID)
			}()
		}
		joined() // every caller waits on the one load
		close(gate)
		done.Wait()

		for i := range n {
			require.NoError(t, errs[i])
			require.Equal(t, "bob", results[i].Name)
			for j := range i {
				require.NotSame(t, results[i], results[j], "callers must get their own copies")
			}
		}
		require.Equal(t, int64(1), repo.gets.Load(), "concurrent misses must share one DB query")
		m := svc.GetMetrics()
		require.Equal(t, int64(1), m.CacheMisses)
		require.Equal(t, int64(n-1), m.SharedLoads)
		t.Logf("%d concurrent requests resulted in %d DB query", n, repo.gets.Load())
		t.Log("Single flight pattern working correctly")
	})
}

func TestUserService_UpdateInvalidation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		svc := NewUserService(repo, b.cache)
		u := &User{Name: "carol", Email: "carol@example.com"}
		require.NoError(t, svc.CreateUser(ctx, u))
		_, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		_, cached := b.raw(userCacheKey(u.ID))
		require.True(t, cached, "user must be cached after a read")
		t.Log("User created and cached")

		u.Name = "carol updated"
		require.NoError(t, svc.UpdateUser(ctx, u))
		_, cached = b.raw(userCacheKey(u.ID))
		require.False(t, cached, "update must invalidate the cache")
		t.Log("User updated, cache invalidated")

		before := repo.gets.Load()
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "carol updated", got.Name)
		require.Equal(t, before+1, repo.gets.Load(), "read after update must come from the DB")
		t.Log("Fresh data loaded from DB after update")
	})
}

func TestUserService_NotFoundIsCachedBriefly(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		svc := NewUserService(repo, b.cache, WithNegativeTTL(time.Minute), WithJitter(0))

		for i := range 5 {
			_, err := svc.GetUser(ctx, 77)
			if !errors.Is(err, ErrUserNotFound) || !errors.Is(err, ErrNotFound) {
				t.Fatalf("GetUser(77) #%d error = %v, want ErrUserNotFound", i, err)
			}
		}
		require.Equal(t, int64(1), repo.gets.Load(), "a flood of lookups for a missing ID must reach the DB once")
		require.Equal(t, time.Minute, b.ttl(userCacheKey(77)).Round(time.Second), "negative entry has its own TTL")
		require.Equal(t, int64(4), svc.GetMetrics().CacheHits)

		if b.advance != nil {
			b.advance(61 * time.Second)
			_, err := svc.GetUser(ctx, 77)
			require.ErrorIs(t, err, ErrUserNotFound)
			require.Equal(t, int64(2), repo.gets.Load(), "negative entry must expire")
		}

		// Creating the user clears the negative entry.
		u := &User{ID: 77, Name: "dave", Email: "dave@example.com"}
		require.NoError(t, svc.CreateUser(ctx, u))
		got, err := svc.GetUser(ctx, 77)
		require.NoError(t, err)
		require.Equal(t, "dave", got.Name)
	})
}

func TestUserService_DeleteClearsAndCachesAbsence(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		svc := NewUserService(repo, b.cache)
		u := seedUser(t, repo, "erin")
		_, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.NoError(t, svc.DeleteUser(ctx, u.ID))
		_, err = svc.GetUser(ctx, u.ID)
		require.ErrorIs(t, err, ErrUserNotFound)
		err = svc.DeleteUser(ctx, u.ID)
		require.ErrorIs(t, err, ErrUserNotFound, "deleting twice reports not found")
		err = svc.UpdateUser(ctx, &User{ID: 999, Name: "x", Email: "x@example.com"})
		require.ErrorIs(t, err, ErrUserNotFound)
		err = svc.CreateUser(ctx, &User{ID: 999, Name: "x", Email: "x@example.com"})
		require.NoError(t, err)
		err = svc.CreateUser(ctx, &User{ID: 999, Name: "y", Email: "y@example.com"})
		require.ErrorIs(t, err, ErrUserExists)
		got, err := svc.GetUser(ctx, 999)
		require.NoError(t, err)
		require.Equal(t, "x", got.Name, "a refused create must not change the user")
	})
}

func TestUserService_RedisDown(t *testing.T) {
	ctx := context.Background()
	b := miniredisBackend(t)
	repo := newTestRepo()
	u := seedUser(t, repo, "gina")
	svc := NewUserService(repo, b.cache)
	defer svc.Close()
	_, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err)

	// Stop the server under the service: reads must keep working.
	rc := b.cache.(*RedisCache)
	rc.c.Client().(interface{ Close() error }).Close()
	got, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, "gina", got.Name)
	m := svc.GetMetrics()
	require.GreaterOrEqual(t, m.CacheErrors, int64(1))
	require.Equal(t, int64(2), repo.gets.Load())
	require.NoError(t, svc.UpdateUser(ctx, u))
	require.Equal(t, int64(1), svc.GetMetrics().CacheInvalidationErrors)
}

func TestUserService_BadInput(t *testing.T) {
	long := strings.Repeat("x", 300) + "@example.com"
	tests := []struct {
		name string
		call func(*UserService) error
	}{
		{"GetUser zero id", func(s *UserService) error { _, err := s.GetUser(context.Background(), 0); return err }},
		{"GetUser negative id", func(s *UserService) error { _, err := s.GetUser(context.Background(), -3); return err }},
		{"GetUsersBatch bad id", func(s *UserService) error {
			_, err := s.GetUsersBatch(context.Background(), []int{1, 0})
			return err
		}},
		{"CreateUser nil", func(s *UserService) error { return s.CreateUser(context.Background(), nil) }},
		{"CreateUser negative id", func(s *UserService) error {
			return s.CreateUser(context.Background(), &User{ID: -1, Name: "a", Email: "a@example.com"})
		}},
		{"CreateUser empty name", func(s *UserService) error {
			return s.CreateUser(context.Background(), &User{Name: "  ", Email: "a@example.com"})
		}},
		{"CreateUser invalid UTF-8", func(s *UserService) error {
			return s.CreateUser(context.Background(), &User{Name: "a\xff", Email: "a@example.com"})
		}},
		{"CreateUser malformed email", func(s *UserService) error {
			return s.CreateUser(context.Background(), &User{Name: "a", Email: "not-an-email"})
		}},
		{"CreateUser email with display name", func(s *UserService) error {
			return s.CreateUser(context.Background(), &User{Name: "a", Email: "A <a@example.com>"})
		}},
		{"CreateUser overlong email", func(s *UserService) error {
			return s.CreateUser(context.Background(), &User{Name: "a", Email: long})
		}},
		{"UpdateUser nil", func(s *UserService) error { return s.UpdateUser(context.Background(), nil) }},
		{"UpdateUser zero id", func(s *UserService) error {
			return s.UpdateUser(context.Background(), &User{Name: "a", Email: "a@example.com"})
		}},
		{"UpdateUser empty email", func(s *UserService) error {
			return s.UpdateUser(context.Background(), &User{ID: 1, Name: "a"})
		}},
		{"DeleteUser zero id", func(s *UserService) error { return s.DeleteUser(context.Background(), 0) }},
	}
	forEachBackend(t, func(t *testing.T, b backend) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				repo := newTestRepo()
				u := seedUser(t, repo, "ivy")
				fc := newFaultCache(b.cache)
				svc := NewUserService(repo, fc)
				err := tt.call(svc)
				if !errors.Is(err, ErrInvalidUser) {
					t.Fatalf("error = %v, want ErrInvalidUser", err)
				}
				if g, w := repo.gets.Load()+repo.batchGets.Load(), int64(0); g != w {
					t.Fatalf("repository reads = %d, want %d", g, w)
				}
				if repo.writes.Load() != 1 { // the seed write only
					t.Fatalf("repository writes = %d, want none beyond the seed", repo.writes.Load()-1)
				}
				if fc.gets.Load()+fc.sets.Load()+fc.dels.Load() != 0 {
					t.Fatal("bad input reached the cache")
				}
				stored, _ := repo.MemoryRepository.GetUser(context.Background(), u.ID)
				if *stored != *u {
					t.Fatalf("stored user = %+v after bad input, want %+v", stored, u)
				}
			})
		}
	})
}

func TestUserService_CallersOwnTheirCopies(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "jack")
		svc := NewUserService(repo, b.cache)
		first, err := svc.GetUser(ctx, u.ID) // miss
		require.NoError(t, err)
		first.Name = "mutated"
		second, err := svc.GetUser(ctx, u.ID) // hit
		require.NoError(t, err)
		require.Equal(t, "jack", second.Name)
		second.Email = "mutated@example.com"
		third, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, u.Email, third.Email)
		stored, _ := repo.MemoryRepository.GetUser(ctx, u.ID)
		require.Equal(t, "jack", stored.Name, "mutating a result must not reach the repository")
	})
}

func TestUserService_RelatedKeys(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "kate")
		svc := NewUserService(repo, b.cache)
		related := defaultRelatedKeys(u.ID)
		require.Equal(t, []string{"users:all", "user_posts:1", "user_stats:1"}, related)
		for _, k := range related {
			b.setRaw(k, `"x"`)
		}
		require.NoError(t, svc.UpdateUser(ctx, u))
		for _, k := range related {
			_, ok := b.raw(k)
			require.False(t, ok, "related key %s survives an update", k)
		}

		custom := NewUserService(repo, b.cache, WithRelatedKeys(func(id int) []string { return []string{"team:9"} }))
		b.setRaw("team:9", `"x"`)
		b.setRaw("users:all", `"x"`)
		require.NoError(t, custom.DeleteUser(ctx, u.ID))
		_, ok := b.raw("team:9")
		require.False(t, ok, "custom related key survives a delete")
		_, ok = b.raw("users:all")
		require.True(t, ok, "custom related keys replace the defaults")
	})
}

func TestUserService_Metrics(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		repo.setHook(func(context.Context, int) { time.Sleep(2 * time.Millisecond) })
		svc := NewUserService(repo, b.cache)
		u := seedUser(t, repo, "lena")
		for range 4 {
			_, err := svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
		}
		m := svc.GetMetrics()
		require.Equal(t, int64(4), m.TotalRequests)
		require.Equal(t, int64(3), m.CacheHits)
		require.Equal(t, int64(1), m.CacheMisses)
		require.Equal(t, int64(1), m.DatabaseLoads)
		require.InDelta(t, 0.75, m.HitRate, 1e-9)
		require.InDelta(t, 0.25, m.MissRate, 1e-9)
		require.GreaterOrEqual(t, m.LoadTime, 2*time.Millisecond)
		require.Greater(t, m.AvgResponseTime, time.Duration(0))
		require.Greater(t, m.P99ResponseTime, m.P50ResponseTime, "the miss is slower than the hits")
		require.GreaterOrEqual(t, m.P99ResponseTime, 2*time.Millisecond)
		if _, ok := b.cache.(Sizer); ok {
			require.Equal(t, int64(1), m.CacheSize)
		} else {
			require.Equal(t, int64(-1), m.CacheSize, "a cache that cannot tell its size reports -1")
		}
	})
}

func TestUserService_NotConfigured(t *testing.T) {
	ctx := context.Background()
	svc := NewUserService(nil, NewMemoryCache())
	_, err := svc.GetUser(ctx, 1)
	require.ErrorIs(t, err, ErrNotConfigured)
	_, err = svc.GetUsersBatch(ctx, []int{1})
	require.ErrorIs(t, err, ErrNotConfigured)
	require.ErrorIs(t, svc.CreateUser(ctx, &User{Name: "a", Email: "a@example.com"}), ErrNotConfigured)
	require.ErrorIs(t, svc.UpdateUser(ctx, &User{ID: 1, Name: "a", Email: "a@example.com"}), ErrNotConfigured)
	require.ErrorIs(t, svc.DeleteUser(ctx, 1), ErrNotConfigured)

	// A nil cache caches nothing but serves everything.
	repo := newTestRepo()
	u := seedUser(t, repo, "mia")
	nc := NewUserService(repo, nil)
	for range 2 {
		got, err := nc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "mia", got.Name)
	}
	require.Equal(t, int64(2), repo.gets.Load())

	// A nil Redis client fails its operations, and the service falls back.
	rs := NewUserService(repo, NewRedisCache(nil))
	got, err := rs.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, "mia", got.Name)
	require.Equal(t, int64(1), rs.GetMetrics().CacheErrors)
}

func TestUserService_RepositoryErrors(t *testing.T) {
	ctx := context.Background()
	repo := newTestRepo()
	u := seedUser(t, repo, "nora")
	svc := NewUserService(repo, NewMemoryCache())
	repo.setErr(errInjected)
	_, err := svc.GetUser(ctx, u.ID)
	require.ErrorIs(t, err, errInjected)
	require.NotErrorIs(t, err, ErrUserNotFound)
	require.Equal(t, int64(1), svc.GetMetrics().DatabaseErrors)
	repo.setErr(nil)
	got, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err, "a failed load must not be cached")
	require.Equal(t, "nora", got.Name)
}
