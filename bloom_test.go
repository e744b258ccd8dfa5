package cacheaside

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// waitBloom waits until svc's filter is built and in use.
func waitBloom(t *testing.T, svc *UserService) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, ok, err := svc.bloom.store.bloomTest(context.Background(), svc.bloom.name, nil)
		return err == nil && ok
	}, 10*time.Second, 5*time.Millisecond, "the Bloom filter was never built")
}

// TestBloom_AbsentIDsRarelyReachTheDatabase: reads of random IDs that were
// never created reach the database about as often as the false-positive
// rate says, and never for an existing user is the answer "not found".
func TestBloom_AbsentIDsRarelyReachTheDatabase(t *testing.T) {
	const users, fp = 2000, 0.01
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		for i := range users {
			seedUser(t, repo, fmt.Sprintf("u%d", i))
		}
		svc := NewUserService(repo, b.fork(t), WithBloomFilter(users, fp))
		t.Cleanup(func() { svc.Close() })
		waitBloom(t, svc)

		reads := 100_000
		if b.name != "memory" {
			reads = 20_000 // a round trip or two each
		}
		gets := repo.gets.Load()
		seen := map[int]bool{}
		for range reads {
			id := users + 1 + rand.N(1_000_000_000)
			for seen[id] {
				id = users + 1 + rand.N(1_000_000_000)
			}
			seen[id] = true
			_, err := svc.GetUser(ctx, id)
			require.ErrorIs(t, err, ErrUserNotFound)
		}
		reached := repo.gets.Load() - gets
		t.Logf("%s: %d reads of absent IDs, %d reached the database (%.2f%%; false-positive rate %.0f%%)", b.name, reads, reached, 100*float64(reached)/float64(reads), 100*fp)
		require.LessOrEqual(t, float64(reached), 1.5*fp*float64(reads))
		require.Equal(t, int64(reads)-reached, svc.GetMetrics().BloomRejected)
		for id := 1; id <= users; id += 97 {
			got, err := svc.GetUser(ctx, id)
			require.NoError(t, err)
			require.Equal(t, id, got.ID)
		}
	})
}

// TestBloom_NoFalseNegatives: one instance creates users while seven others
// read each one as soon as its create returns; none is ever "not found".
// A rebuild runs in the middle of it.
func TestBloom_NoFalseNegatives(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		for i := range 100 {
			seedUser(t, repo, fmt.Sprintf("u%d", i))
		}
		svcs := make([]*UserService, 8)
		for i := range svcs {
			svcs[i] = NewUserService(repo, b.fork(t), WithBloomFilter(10_000, 0.01))
			t.Cleanup(func() { svcs[i].Close() })
		}
		waitBloom(t, svcs[0])

		created := make(chan int, 1000)
		var falseNeg atomic.Int64
		var wg sync.WaitGroup
		for r := 1; r < len(svcs); r++ {
			wg.Go(func() {
				for id := range created {
					if _, err := svcs[r].GetUser(ctx, id); err != nil {
						falseNeg.Add(1)
						t.Errorf("instance %d: user %d, created, read as %v", r, id, err)
					}
				}
			})
		}
		rebuilt := make(chan error, 1)
		for i := range 300 {
			if i == 100 {
				go func() { rebuilt <- svcs[3].RebuildBloomFilter(ctx) }()
			}
			u := &User{Name: fmt.Sprintf("new%d", i), Email: "n@example.com"}
			require.NoError(t, svcs[0].CreateUser(ctx, u))
			for range len(svcs) - 1 {
				created <- u.ID
			}
		}
		close(created)
		wg.Wait()
		require.NoError(t, <-rebuilt)
		require.Zero(t, falseNeg.Load())
		// Every user, created before, during or after the rebuild, passes
		// the rebuilt filter.
		for id := 1; id <= 400; id++ {
			require.True(t, svcs[5].bloom.mayExist(ctx, svcs[5].users.g, id), "user %d", id)
		}
	})
}

// TestBloom_RebuildShedsDeletedUsers: a deleted user stays in the filter
// until a rebuild, after which reads of its ID stop reaching the database.
func TestBloom_RebuildShedsDeletedUsers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "gone")
		svc := NewUserService(repo, b.fork(t), WithBloomFilter(1000, 0.001), WithNegativeTTL(time.Millisecond))
		t.Cleanup(func() { svc.Close() })
		waitBloom(t, svc)
		require.NoError(t, svc.DeleteUser(ctx, u.ID))
		require.True(t, svc.bloom.mayExist(ctx, svc.users.g, u.ID), "a filter cannot forget")
		require.NoError(t, svc.RebuildBloomFilter(ctx))
		require.False(t, svc.bloom.mayExist(ctx, svc.users.g, u.ID), "the rebuild sheds it")
		gets := repo.gets.Load()
		_, err := svc.GetUser(ctx, u.ID)
		require.ErrorIs(t, err, ErrUserNotFound)
		require.Equal(t, gets, repo.gets.Load())
	})
}

// TestBloom_ReadsGoOnWithoutIt: until a filter is built, and when the cache
// holding it fails, reads go to the database as usual.
func TestBloom_ReadsGoOnWithoutIt(t *testing.T) {
	ctx := context.Background()
	repo := newTestRepo()
	u := seedUser(t, repo, "x")
	fc := newFaultCache(NewMemoryCache())
	svc := NewUserService(repo, fc, WithBloomFilter(1000, 0.01))
	t.Cleanup(func() { svc.Close() })
	require.Nil(t, svc.bloom, "a cache that cannot hold the filter: no filter")
	got, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, "x", got.Name)

	mc := NewMemoryCache()
	unbuilt := NewUserService(bloomlessRepo{repo}, mc, WithBloomFilter(1000, 0.01))
	t.Cleanup(func() { unbuilt.Close() })
	gets := repo.gets.Load()
	_, err = unbuilt.GetUser(ctx, 12345)
	require.ErrorIs(t, err, ErrUserNotFound)
	require.Equal(t, gets+1, repo.gets.Load(), "no filter in use: the database answers")
	require.ErrorIs(t, unbuilt.RebuildBloomFilter(ctx), ErrNotConfigured)
}

// bloomlessRepo hides the repository's UserIDLister.
type bloomlessRepo struct{ UserRepository }

// TestBloom_AddedBeforeTheUserIsVisible: MemoryRepository and
// SQLRepository hand the new ID to the filter before the insert commits,
// so no reader anywhere can find the user before the filter has it.
func TestBloom_AddedBeforeTheUserIsVisible(t *testing.T) {
	check := func(t *testing.T, repo UserRepository) {
		ctx := context.Background()
		svc := NewUserService(repo, NewMemoryCache(), WithBloomFilter(1000, 0.01))
		t.Cleanup(func() { svc.Close() })
		waitBloom(t, svc) // the background build is done with the store
		var visible []bool
		var mu sync.Mutex
		// Observe through BeforeUserVisible itself: wrap the filter's add.
		orig := svc.bloom.store
		svc.bloom.store = &visibilityStore{bloomStore: orig, check: func(id int) {
			_, err := repo.GetUser(context.Background(), id)
			mu.Lock()
			visible = append(visible, err == nil)
			mu.Unlock()
		}, f: svc.bloom}
		u := &User{Name: "fresh", Email: "f@example.com"}
		require.NoError(t, svc.CreateUser(ctx, u))
		mu.Lock()
		defer mu.Unlock()
		require.GreaterOrEqual(t, len(visible), 2, "an add before the commit and one after")
		require.False(t, visible[0], "the first add must come before the user is visible")
		require.True(t, svc.bloom.mayExist(ctx, svc.users.g, u.ID))
	}
	t.Run("memory", func(t *testing.T) { check(t, NewMemoryRepository()) })
	t.Run("postgresql", func(t *testing.T) {
		db := openPostgres(t)
		table := "users_bloom_" + fmt.Sprint(rand.N(1_000_000))
		repo, err := NewSQLRepository(context.Background(), db, PostgreSQL, WithTable(table))
		require.NoError(t, err)
		t.Cleanup(func() { db.Exec(`DROP TABLE IF EXISTS ` + table + `, ` + table + `_outbox`) })
		check(t, repo)
	})
}

// visibilityStore calls check with the ID behind each add.
type visibilityStore struct {
	bloomStore
	check func(id int)
	f     *bloomFilter
}

func (v *visibilityStore) bloomAdd(ctx context.Context, name string, pos []uint64) (int64, error) {
	for id := 1; id < 10_000; id++ { // find the ID these positions are for
		if fmt.Sprint(v.f.positions(id)) == fmt.Sprint(pos) {
			v.check(id)
			break
		}
	}
	return v.bloomStore.bloomAdd(ctx, name, pos)
}
