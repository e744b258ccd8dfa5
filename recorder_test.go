package cacheaside

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeRecorder keeps what it is told.
type fakeRecorder struct {
	mu     sync.Mutex
	reads  []Result
	loads  []Result
	writes []string
	durs   []time.Duration
}

func (f *fakeRecorder) RecordRead(_ context.Context, r Result, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads, f.durs = append(f.reads, r), append(f.durs, d)
}

func (f *fakeRecorder) RecordLoad(_ context.Context, r Result, _ time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loads = append(f.loads, r)
}

func (f *fakeRecorder) RecordWrite(_ context.Context, op string, r Result, _ time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = append(f.writes, op+":"+string(r))
}

// take returns what was recorded and forgets it.
func (f *fakeRecorder) take() (reads, loads []Result, writes []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	reads, loads, writes = f.reads, f.loads, f.writes
	f.reads, f.loads, f.writes, f.durs = nil, nil, nil, nil
	return reads, loads, writes
}

// TestRecorder_ToldEveryOutcome: each read, load and write reaches the
// Recorder once, with the result the counters agree with.
func TestRecorder_ToldEveryOutcome(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "rec")
		rec := new(fakeRecorder)
		svc := NewUserService(repo, b.fork(t), WithRecorder(rec), WithRepositoryBreaker(2, time.Minute))
		t.Cleanup(func() { svc.Close() })

		_, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		_, err = svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		_, err = svc.GetUser(ctx, 999)
		require.ErrorIs(t, err, ErrUserNotFound)
		reads, loads, _ := rec.take()
		require.Equal(t, []Result{ResultMiss, ResultHit, ResultMiss}, reads)
		require.Equal(t, []Result{ResultOK, ResultNotFound}, loads)

		// Concurrent misses: one loads, the others share it.
		u2 := seedUser(t, repo, "rec2")
		entered, release := holdFirstRead(repo)
		joined := make(chan struct{}, 2)
		svc.users.onJoin = func(string) { joined <- struct{}{} }
		first := getAsync(t, svc, u2.ID)
		<-entered
		<-joined // the leader's own
		second := getAsync(t, svc, u2.ID)
		<-joined
		close(release)
		<-first
		<-second
		svc.users.onJoin = nil
		reads, _, _ = rec.take()
		require.ElementsMatch(t, []Result{ResultMiss, ResultShared}, reads)

		require.NoError(t, svc.UpdateUser(ctx, &User{ID: u.ID, Name: "rec-new", Email: u.Email}))
		require.ErrorIs(t, svc.DeleteUser(ctx, 12345), ErrUserNotFound)
		_, _, writes := rec.take()
		require.Equal(t, []string{"update:ok", "delete:error"}, writes)

		// A batch: one result per distinct ID.
		_, err = svc.GetUser(ctx, u2.ID) // cached
		require.NoError(t, err)
		rec.take()
		_, err = svc.GetUsersBatch(ctx, []int{u2.ID, u.ID, u2.ID})
		require.NoError(t, err)
		reads, _, _ = rec.take()
		require.ElementsMatch(t, []Result{ResultHit, ResultMiss}, reads)

		// A failing database: the read and the load fail, then the
		// breaker refuses the load.
		repo.setHook(nil)
		u3 := seedUser(t, repo, "rec3")
		repo.setErr(errors.New("db down"))
		for range 3 {
			_, err = svc.GetUser(ctx, u3.ID)
			require.Error(t, err)
		}
		reads, loads, _ = rec.take()
		require.Equal(t, []Result{ResultError, ResultError, ResultError}, reads)
		require.Equal(t, []Result{ResultError, ResultError, ResultRejected}, loads)

		_, err = svc.GetUsersBatch(ctx, []int{u3.ID})
		require.ErrorIs(t, err, ErrRepositoryUnavailable)
		reads, _, _ = rec.take()
		require.Equal(t, []Result{ResultError}, reads)
	})
}

// TestRecorder_LocalHitsAreTimed: with a Recorder, a local hit is reported
// as such, with a duration.
func TestRecorder_LocalHitsAreTimed(t *testing.T) {
	repo := newTestRepo()
	u := seedUser(t, repo, "local")
	rec := new(fakeRecorder)
	svc := NewUserService(repo, NewMemoryCache(), WithLocalCache(100), withJoinGrace(testJoinGrace), WithRecorder(rec))
	t.Cleanup(func() { svc.Close() })
	require.Eventually(t, func() bool { return svc.GetMetrics().Membership == "serving" }, 10*time.Second, 5*time.Millisecond)
	ctx := context.Background()
	for range 3 {
		_, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
	}
	rec.mu.Lock()
	for _, d := range rec.durs {
		require.Positive(t, d)
	}
	rec.mu.Unlock()
	reads, _, _ := rec.take()
	require.Equal(t, []Result{ResultMiss, ResultLocalHit, ResultLocalHit}, reads)
}
