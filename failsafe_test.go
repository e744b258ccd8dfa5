package cacheaside

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFailSafe_ServesTheLastKnownValue: once a value's TTL has passed, a
// read loads again; if the load fails, the last value known answers, on
// this instance and on another one, until the repository is back or the
// staleness bound has passed.
func TestFailSafe_ServesTheLastKnownValue(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		clk := &testClock{t: time.Now()}
		repo := newTestRepo()
		u := seedUser(t, repo, "kept")
		opts := []UserOption{WithTTL(time.Minute), WithJitter(0), WithFailSafe(time.Hour), WithRepositoryBreaker(100, time.Second)}
		a := NewUserService(repo, b.fork(t), opts...)
		other := NewUserService(repo, b.fork(t), opts...)
		for _, s := range []*UserService{a, other} {
			s.users.now = clk.Now
			defer s.Close()
		}
		_, err := a.GetUser(ctx, u.ID)
		require.NoError(t, err)
		ttl := b.ttl(userCacheKey(u.ID))
		require.InDelta(t, float64(time.Hour+time.Minute), float64(ttl), float64(2*time.Second), "the entry outlives its TTL by the staleness bound")

		// The entries' own expiry follows the service's clock; the cache's
		// physical expiry, where the test can move it, follows too.
		move := func(d time.Duration) {
			clk.Add(d)
			if b.advance != nil {
				b.advance(d)
			}
		}
		move(2 * time.Minute)
		repo.setErr(errInjected)
		for _, s := range []*UserService{a, other, a} {
			got, err := s.GetUser(ctx, u.ID)
			require.NoError(t, err, "a failed load must be answered by the last value known")
			require.Equal(t, "kept", got.Name)
		}
		require.Equal(t, int64(2), a.GetMetrics().FailSafeServed)
		require.Equal(t, int64(1), other.GetMetrics().FailSafeServed)
		raw, ok := b.raw(userCacheKey(u.ID))
		require.True(t, ok)
		require.Contains(t, raw, `"name":"kept"`, "the stale entry is put back for the next reader")

		repo.setErr(nil)
		require.NoError(t, repo.MemoryRepository.UpdateUser(ctx, &User{ID: u.ID, Name: "fresh", Email: u.Email}))
		got, err := a.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "fresh", got.Name, "a working repository answers again")

		move(3 * time.Hour) // past the staleness bound: gone for good
		repo.setErr(errInjected)
		_, err = other.GetUser(ctx, u.ID)
		require.ErrorIs(t, err, errInjected)
	})
}

// TestFailSafe_Off: without WithFailSafe a failed load is an error, and an
// entry lives exactly its TTL.
func TestFailSafe_Off(t *testing.T) {
	b := memoryBackend(t)
	ctx := context.Background()
	clk := &testClock{t: time.Now()}
	repo := newTestRepo()
	u := seedUser(t, repo, "gone")
	svc := NewUserService(repo, b.cache, WithTTL(time.Minute), WithJitter(0))
	svc.users.now = clk.Now
	_, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, time.Minute, b.ttl(userCacheKey(u.ID)))
	clk.Add(2 * time.Minute)
	repo.setErr(errInjected)
	_, err = svc.GetUser(ctx, u.ID)
	require.ErrorIs(t, err, errInjected)
	require.Zero(t, svc.GetMetrics().FailSafeServed)
}

// TestFailSafe_NeverOverAWrite: a write deletes the entry, so fail-safe
// has nothing old to serve afterwards: a read after an acknowledged write
// never gets the row the write replaced, even when the repository then
// fails.
func TestFailSafe_NeverOverAWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "before")
		svc := NewUserService(repo, b.fork(t), WithFailSafe(time.Hour))
		defer svc.Close()
		_, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.NoError(t, svc.UpdateUser(ctx, &User{ID: u.ID, Name: "after", Email: u.Email}))
		repo.setErr(errInjected)
		got, err := svc.GetUser(ctx, u.ID)
		require.ErrorIs(t, err, errInjected)
		require.Nil(t, got)
	})
}

// TestFailSafe_Batch: a batch read whose batch query fails answers each
// key it has a stale value for, and fails the others.
func TestFailSafe_Batch(t *testing.T) {
	b := memoryBackend(t)
	ctx := context.Background()
	clk := &testClock{t: time.Now()}
	repo := newTestRepo()
	a, c := seedUser(t, repo, "a"), seedUser(t, repo, "c")
	svc := NewUserService(repo, b.cache, WithTTL(time.Minute), WithFailSafe(time.Hour))
	svc.users.now = clk.Now
	defer svc.Close()
	_, err := svc.GetUser(ctx, a.ID)
	require.NoError(t, err)
	clk.Add(2 * time.Minute)
	b.advance(2 * time.Minute)
	repo.setErr(errInjected)
	got, err := svc.GetUsersBatch(ctx, []int{a.ID, c.ID})
	require.ErrorIs(t, err, errInjected)
	require.Contains(t, err.Error(), "batch load failed: 1 errors occurred")
	require.Equal(t, "a", got[0].Name, "the stale value answers its key")
	require.Nil(t, got[1])
	require.Equal(t, int64(1), svc.GetMetrics().FailSafeServed)
}
