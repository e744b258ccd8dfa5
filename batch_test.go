package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestUserService_GetUsersBatch(t *testing.T) {
	ctx := context.Background()
	for _, batchRepo := range []bool{true, false} {
		name := "batch repository"
		if !batchRepo {
			name = "single-row repository"
		}
		t.Run(name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, b backend) {
				repo := newTestRepo()
				var db UserRepository = repo
				if !batchRepo {
					db = singleRepo{repo}
				}
				fc := newFaultCache(b.cache)
				svc := NewUserService(db, multiFaultCache{fc})
				var ids []int
				for i := range 6 {
					ids = append(ids, seedUser(t, repo, "u"+string(rune('a'+i))).ID)
				}
				// Warm half of them.
				for _, id := range ids[:3] {
					_, err := svc.GetUser(ctx, id)
					require.NoError(t, err)
				}
				gets := repo.gets.Load()
				req := []int{ids[0], 9999, ids[3], ids[0], ids[4], ids[5], ids[1]}
				got, err := svc.GetUsersBatch(ctx, req)
				require.NoError(t, err)
				require.Len(t, got, len(req))
				for i, id := range req {
					if id == 9999 {
						require.Nil(t, got[i], "missing ID must give nil")
						continue
					}
					require.NotNil(t, got[i])
					require.Equal(t, id, got[i].ID)
				}
				require.NotSame(t, got[0], got[3], "duplicate IDs must get their own copies")
				require.Equal(t, int64(1), fc.multis.Load(), "hits must come from one multi-get")
				if batchRepo {
					require.Equal(t, int64(1), repo.batchGets.Load(), "misses must load in one query")
					require.Equal(t, gets, repo.gets.Load())
				} else {
					require.Equal(t, gets+4, repo.gets.Load(), "each miss loads once")
				}
				// Everything is cached now, including the absence of 9999.
				before := repo.gets.Load() + repo.batchGets.Load()
				got, err = svc.GetUsersBatch(ctx, req)
				require.NoError(t, err)
				require.Equal(t, before, repo.gets.Load()+repo.batchGets.Load())
				require.Nil(t, got[1])

				// A real failure is an error, with the users that loaded.
				require.NoError(t, svc.UpdateUser(ctx, &User{ID: ids[5], Name: "new", Email: "new@example.com"}))
				repo.setErr(errInjected)
				got, err = svc.GetUsersBatch(ctx, []int{ids[0], ids[5]})
				require.ErrorIs(t, err, errInjected)
				require.Contains(t, err.Error(), "batch load failed: 1 errors occurred")
				require.NotNil(t, got[0])
				require.Nil(t, got[1])
				repo.setErr(nil)

				empty, err := svc.GetUsersBatch(ctx, nil)
				require.NoError(t, err)
				require.Empty(t, empty)
			})
		})
	}
}

func TestUserService_GetUsersBatchWithoutMultiGet(t *testing.T) {
	ctx := context.Background()
	repo := newTestRepo()
	fc := newFaultCache(NewMemoryCache()) // hides GetMulti
	svc := NewUserService(singleRepo{repo}, fc)
	a := seedUser(t, repo, "a")
	bb := seedUser(t, repo, "b")
	got, err := svc.GetUsersBatch(ctx, []int{a.ID, bb.ID, 50})
	require.NoError(t, err)
	require.Equal(t, "a", got[0].Name)
	require.Equal(t, "b", got[1].Name)
	require.Nil(t, got[2])
	require.Equal(t, int64(3), fc.gets.Load()-3, "one lookup per ID, plus one inside each flight")
	m := svc.GetMetrics()
	require.Equal(t, int64(3), m.TotalRequests)
	require.Equal(t, int64(3), m.CacheMisses)

	// A cache that fails its multi-get falls back to the repository.
	fc2 := newFaultCache(NewMemoryCache())
	fc2.failGet.Store(true)
	svc2 := NewUserService(repo, multiFaultCache{fc2})
	got, err = svc2.GetUsersBatch(ctx, []int{a.ID, bb.ID})
	require.NoError(t, err)
	require.Equal(t, "b", got[1].Name)
	require.Equal(t, int64(1), svc2.GetMetrics().CacheErrors)
}

func TestUserService_GetUsersBatchFailureCountsIDs(t *testing.T) {
	tests := []struct {
		name   string
		db     func(*testRepo) UserRepository
		causes int // how often the cause appears in the message
	}{
		{"batch repository: one query, one cause", func(r *testRepo) UserRepository { return r }, 1},
		{"single-row repository: one cause per ID", func(r *testRepo) UserRepository { return singleRepo{r} }, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			repo := newTestRepo()
			for _, n := range []string{"a", "b", "c"} {
				seedUser(t, repo, n)
			}
			svc := NewUserService(tt.db(repo), NewMemoryCache())
			repo.setErr(errInjected)
			got, err := svc.GetUsersBatch(context.Background(), []int{1, 2, 3})
			require.ErrorIs(t, err, errInjected)
			require.Contains(t, err.Error(), "batch load failed: 3 errors occurred")
			require.Equal(t, tt.causes, strings.Count(err.Error(), errInjected.Error()))
			require.Equal(t, []*User{nil, nil, nil}, got)
		})
	}
}

func TestAside_BatchLoaderMiscount(t *testing.T) {
	a := newAside(NewMemoryCache(), func(id int) string { return fmt.Sprint(id) },
		func(context.Context, int) (*User, error) { return nil, errors.New("unused") }, ErrUserNotFound, defaultOptions(UserCacheTTL))
	a.loadMany = func(context.Context, []int) ([]*User, error) { return []*User{{ID: 1}}, nil } // one short
	_, err := a.GetMany(context.Background(), []int{1, 2})
	require.ErrorContains(t, err, "batch loader returned 1 values for 2 ids")
}

func TestSingleFlight_BatchLoaderPanic(t *testing.T) {
	svc := NewUserService(panicBatchRepo{newTestRepo()}, NewMemoryCache())
	_, err := svc.GetUsersBatch(context.Background(), []int{1, 2})
	var pe *PanicError
	require.ErrorAs(t, err, &pe)
}

type panicBatchRepo struct{ *testRepo }
