package cacheaside

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// blockingRepo returns a testRepo whose reads, once they hold the row,
// report on entered and wait for release.
func blockingRepo() (repo *testRepo, entered chan int, release chan struct{}) {
	repo = newTestRepo()
	entered = make(chan int, 16)
	release = make(chan struct{})
	repo.setHook(func(_ context.Context, id int) {
		entered <- id
		<-release
	})
	return repo, entered, release
}

// awaitJoins makes a's callers report when they wait on a flight, and
// returns a function that blocks until n of them have. Call it before the
// callers start.
func awaitJoins[K comparable, V any](a *Aside[K, V], n int) (wait func()) {
	var joined atomic.Int64
	all := make(chan struct{})
	a.onJoin = func(string) {
		if joined.Add(1) == int64(n) {
			close(all)
		}
	}
	return func() { <-all }
}

func TestSingleFlight_CallerCancelsOthersStillServed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		repo, entered, release := blockingRepo()
		u := seedUser(t, repo, "olga")
		svc := NewUserService(repo, b.cache)

		// The leader's own context is cancelled while the load runs.
		leaderCtx, cancelLeader := context.WithCancel(context.Background())
		leaderErr := make(chan error, 1)
		go func() {
			_, err := svc.GetUser(leaderCtx, u.ID)
			leaderErr <- err
		}()
		<-entered

		waiter := make(chan *User, 1)
		go func() {
			got, err := svc.GetUser(context.Background(), u.ID)
			if err != nil {
				t.Errorf("GetUser(%d) for the waiter: %v", u.ID, err)
			}
			waiter <- got
		}()

		cancelLeader()
		select {
		case err := <-leaderErr:
			require.ErrorIs(t, err, context.Canceled)
		case <-time.After(5 * time.Second):
			t.Fatal("a cancelled caller did not return while the load was blocked")
		}

		close(release)
		got := <-waiter
		require.NotNil(t, got)
		require.Equal(t, "olga", got.Name)
		require.Equal(t, int64(1), repo.gets.Load(), "the load must survive its leader's cancellation")
		_, cached := b.raw(userCacheKey(u.ID))
		require.True(t, cached, "the shared load must still fill the cache")
	})
}

func TestSingleFlight_DeadlineWhileWaiting(t *testing.T) {
	repo, entered, release := blockingRepo()
	defer close(release)
	u := seedUser(t, repo, "pia")
	svc := NewUserService(repo, NewMemoryCache())
	go func() { _, _ = svc.GetUser(context.Background(), u.ID) }()
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := svc.GetUser(ctx, u.ID)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestSingleFlight_PanicReachesEveryWaiter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		repo := newTestRepo()
		u := seedUser(t, repo, "quinn")
		gate := make(chan struct{})
		entered := make(chan struct{}, 1)
		repo.setHook(func(context.Context, int) {
			entered <- struct{}{}
			<-gate
			panic(errInjected)
		})
		svc := NewUserService(repo, b.cache)

		const n = 5
		joined := awaitJoins(svc.users, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[0] = svc.GetUser(context.Background(), u.ID) }()
		<-entered
		for i := 1; i < n; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); _, errs[i] = svc.GetUser(context.Background(), u.ID) }()
		}
		joined()
		close(gate)
		wg.Wait()
		for i, err := range errs {
			var pe *PanicError
			if !errors.As(err, &pe) {
				t.Fatalf("caller %d error = %v, want *PanicError", i, err)
			}
			require.ErrorIs(t, err, errInjected, "panic(err) must unwrap to err")
			require.Contains(t, string(pe.Stack), "testRepo")
		}
		require.Equal(t, int64(1), svc.GetMetrics().DatabaseErrors)
		_, held := b.raw(userCacheKey(u.ID))
		require.False(t, held, "a panicking holder's lease must be released")

		// The key is free again.
		repo.setHook(nil)
		got, err := svc.GetUser(context.Background(), u.ID)
		require.NoError(t, err)
		require.Equal(t, "quinn", got.Name)
	})
}

func (panicBatchRepo) GetUsers(context.Context, []int) ([]*User, error) { panic("boom") }

// TestSingleFlight_ReadAfterWrite holds a reader inside the repository with
// the old row in hand, runs an update to completion, and checks that a read
// that starts after the update neither joins the old load nor sees its fill.
func TestSingleFlight_ReadAfterWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "old")
		svc := NewUserService(repo, b.cache)

		entered, release := holdFirstRead(repo) // hold only the first, stale reader
		stale := getAsync(t, svc, u.ID)
		<-entered // the reader holds the old row

		require.NoError(t, svc.UpdateUser(ctx, &User{ID: u.ID, Name: "new", Email: u.Email}))

		// A read that starts after the write returned must not wait for the
		// old load (it is still blocked) and must see the new row.
		freshCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		fresh, err := svc.GetUser(freshCtx, u.ID)
		require.NoError(t, err, "a read after the write must not wait for the load that began before it")
		require.Equal(t, "new", fresh.Name)

		close(release)
		again := <-stale
		require.Equal(t, "new", again.Name, "a holder whose fill was refused looks again instead of returning the row it read")
		require.Equal(t, int64(1), svc.GetMetrics().RefusedFillReloads)

		// The old load's fill must have been dropped or overwritten.
		for range 3 {
			got, err := svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, "new", got.Name, "a stale fill survived the write")
		}
		raw, ok := b.raw(userCacheKey(u.ID))
		require.True(t, ok)
		require.Contains(t, raw, `"name":"new"`)
		require.Equal(t, int64(1), svc.GetMetrics().StaleFillsSkipped)
	})
}

func TestSingleFlight_SharedResultIsCopied(t *testing.T) {
	repo, entered, release := blockingRepo()
	u := seedUser(t, repo, "rosa")
	svc := NewUserService(repo, NewMemoryCache())
	joined := awaitJoins(svc.users, 2)
	res := make(chan *User, 2)
	for range 2 {
		go func() {
			got, err := svc.GetUser(context.Background(), u.ID)
			if err != nil {
				t.Errorf("GetUser: %v", err)
			}
			res <- got
		}()
	}
	<-entered
	joined()
	close(release)
	a, b := <-res, <-res
	require.NotSame(t, a, b)
	a.Name = "changed"
	require.Equal(t, "rosa", b.Name)
	require.Equal(t, int64(1), repo.gets.Load())
}

func TestSingleFlight_LoadTimeout(t *testing.T) {
	repo := newTestRepo()
	u := seedUser(t, repo, "sam")
	repo.setHook(func(ctx context.Context, _ int) { <-ctx.Done() })
	repo.setErr(nil)
	svc := NewUserService(ctxErrRepo{repo}, NewMemoryCache(), WithLoadTimeout(30*time.Millisecond))
	start := time.Now()
	_, err := svc.GetUser(context.Background(), u.ID)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Equal(t, int64(1), svc.GetMetrics().DatabaseErrors)
}

// ctxErrRepo returns the context's error once the hook returns, as a driver
// does when its query is cancelled.
type ctxErrRepo struct{ *testRepo }

func (r ctxErrRepo) GetUser(ctx context.Context, id int) (*User, error) {
	u, err := r.testRepo.GetUser(ctx, id)
	if cerr := ctx.Err(); cerr != nil {
		return nil, cerr
	}
	return u, err
}

type ctxKey struct{}

func TestSingleFlight_LoadKeepsContextValues(t *testing.T) {
	repo := newTestRepo()
	u := seedUser(t, repo, "tess")
	seen := make(chan any, 1)
	repo.setHook(func(ctx context.Context, _ int) { seen <- ctx.Value(ctxKey{}) })
	svc := NewUserService(repo, NewMemoryCache())
	ctx := context.WithValue(context.Background(), ctxKey{}, "trace-42")
	_, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, "trace-42", <-seen)
}

// TestSingleFlight_LateJoinerLooksAgain: a caller that joins a flight after
// a write in another process was acknowledged does not get the row the
// flight read before the write: the leader's fill is refused, so it looks
// at the cache again and loads the new row, for itself and the late caller.
func TestSingleFlight_LateJoinerLooksAgain(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "old")
		reader := NewUserService(repo, b.fork(t))
		writer := NewUserService(repo, b.fork(t))
		joined := make(chan struct{}, 8)
		reader.users.onJoin = func(string) { joined <- struct{}{} }
		entered, release := holdFirstRead(repo)

		first := getAsync(t, reader, u.ID)
		<-entered // the flight holds the old row
		<-joined
		require.NoError(t, writer.UpdateUser(ctx, &User{ID: u.ID, Name: "new", Email: u.Email}))

		late := getAsync(t, reader, u.ID)
		<-joined // the late reader waits on the old flight
		close(release)
		require.Equal(t, "new", (<-first).Name, "the flight's leader overlapped the write: its fill was refused, so it looked again")
		require.Equal(t, "new", (<-late).Name, "a caller that began after the write must not get the old row")
		m := reader.GetMetrics()
		require.Equal(t, int64(1), m.RefusedFillReloads, "the leader looked again")
		require.Equal(t, int64(1), m.StaleFillsSkipped)
	})
}
