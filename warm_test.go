package cacheaside

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// gatedBatchRepo holds its first batch read, after it has read the rows,
// until the test lets it go.
type gatedBatchRepo struct {
	*testRepo
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (r *gatedBatchRepo) GetUsers(ctx context.Context, ids []int) ([]*User, error) {
	got, err := r.testRepo.GetUsers(ctx, ids)
	r.once.Do(func() {
		close(r.entered)
		<-r.release
	})
	return got, err
}

// TestWarm_LoadsEveryUser: a warm reads the users in batches, one query
// each, caches the missing ones as "not found", leaves cached ones alone,
// and every read afterwards is a hit.
func TestWarm_LoadsEveryUser(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		var ids []int
		for i := range 1200 {
			ids = append(ids, seedUser(t, repo, fmt.Sprintf("w%d", i)).ID)
		}
		svc := NewUserService(repo, b.fork(t))
		t.Cleanup(func() { svc.Close() })
		_, err := svc.GetUser(ctx, ids[0]) // already cached: left alone
		require.NoError(t, err)
		gets := repo.gets.Load()

		missing := []int{990001, 990002}
		st, err := svc.users.Warm(ctx, append(append(ids, missing...), ids[:10]...))
		require.NoError(t, err)
		require.Equal(t, WarmStats{Requested: 1202, Loaded: 1199, NotFound: 2, Cached: 1, Duration: st.Duration}, st)
		require.Equal(t, int64(3), repo.batchGets.Load(), "one query per batch of %d", DefaultWarmBatch)
		require.Equal(t, gets, repo.gets.Load(), "no single reads")

		for _, id := range ids {
			got, err := svc.GetUser(ctx, id)
			require.NoError(t, err)
			require.Equal(t, id, got.ID)
		}
		for _, id := range missing {
			_, err := svc.GetUser(ctx, id)
			require.ErrorIs(t, err, ErrUserNotFound)
		}
		require.Equal(t, gets, repo.gets.Load(), "every read after the warm is a hit")
		require.ErrorIs(t, svc.Warm(ctx, []int{1, -2}), ErrInvalidUser)
	})
}

// TestWarm_NeverOverwritesAWrite: a warm that read a user before a write
// to it must not store that row after the write: its fill is refused, and
// the next read loads the new row.
func TestWarm_NeverOverwritesAWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := &gatedBatchRepo{testRepo: newTestRepo(), entered: make(chan struct{}), release: make(chan struct{})}
		u := seedUser(t, repo, "old")
		other := seedUser(t, repo, "other")
		svc := NewUserService(repo, b.fork(t))
		writer := NewUserService(repo, b.fork(t))
		for _, s := range []*UserService{svc, writer} {
			t.Cleanup(func() { s.Close() })
		}
		done := make(chan error, 1)
		var st WarmStats
		go func() {
			var err error
			st, err = svc.users.Warm(ctx, []int{u.ID, other.ID})
			done <- err
		}()
		awaitEntered(t, repo.entered) // the warm holds the old row
		require.NoError(t, writer.UpdateUser(ctx, &User{ID: u.ID, Name: "new", Email: u.Email}))
		close(repo.release)
		require.NoError(t, <-done)
		require.Equal(t, 1, st.Refused, "the warm's fill of the written user must be refused")
		require.Equal(t, 1, st.Loaded)
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "new", got.Name)
	})
}

// TestWarm_OneInstanceAtATime: over Redis, a warm holds the namespace's
// warm lock; a second one waits for it, and gives up with ErrLockTimeout
// when its context ends first.
func TestWarm_OneInstanceAtATime(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		if _, ok := b.cache.(Locker); !ok {
			t.Skip("the memory cache has no distributed lock")
		}
		ctx := context.Background()
		repo := &gatedBatchRepo{testRepo: newTestRepo(), entered: make(chan struct{}), release: make(chan struct{})}
		u := seedUser(t, repo, "u")
		first := NewUserService(repo, b.fork(t))
		second := NewUserService(repo, b.fork(t))
		for _, s := range []*UserService{first, second} {
			t.Cleanup(func() { s.Close() })
		}
		done := make(chan error, 1)
		go func() { done <- first.Warm(ctx, []int{u.ID}) }()
		awaitEntered(t, repo.entered)
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		err := second.Warm(short, []int{u.ID})
		require.ErrorIs(t, err, ErrLockTimeout)
		var we *WarmError
		require.ErrorAs(t, err, &we)
		require.Zero(t, we.Stats.Loaded)
		require.True(t, strings.HasPrefix(err.Error(), "cacheaside: warm:"), err.Error())
		close(repo.release)
		require.NoError(t, <-done)
		require.NoError(t, second.Warm(ctx, []int{u.ID}), "free again once the first is done")
	})
}

// TestWarm_FailedReadIsReported: a repository that fails makes the warm
// return a *WarmError with the count and the cause, and frees the leases.
func TestWarm_FailedReadIsReported(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "u")
		svc := NewUserService(repo, b.fork(t))
		t.Cleanup(func() { svc.Close() })
		cause := fmt.Errorf("db down")
		repo.setErr(cause)
		err := svc.Warm(ctx, []int{u.ID})
		require.ErrorIs(t, err, cause)
		var we *WarmError
		require.ErrorAs(t, err, &we)
		require.Equal(t, 1, we.Stats.Failed)
		_, leased := b.raw(userCacheKey(u.ID))
		require.False(t, leased, "the warm's lease must be released")
		repo.setErr(nil)
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "u", got.Name)
	})
}

func awaitEntered(t *testing.T, entered <-chan struct{}) {
	t.Helper()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the warm never read the repository")
	}
}
