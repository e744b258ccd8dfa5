package cacheaside

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRepoBreaker_ProtectsAFailingDatabase: consecutive failed loads open
// the breaker; while it is open, loads fail at once with an error that
// says so, and the repository sees at most one probe per cooldown.
func TestRepoBreaker_ProtectsAFailingDatabase(t *testing.T) {
	ctx := context.Background()
	repo := newTestRepo()
	for i := range 20 {
		seedUser(t, repo, "u"+strings.Repeat("x", i))
	}
	svc := NewUserService(repo, nil, WithRepositoryBreaker(3, 200*time.Millisecond))
	defer svc.Close()
	repo.setErr(errInjected)
	for id := 1; id <= 3; id++ {
		_, err := svc.GetUser(ctx, id)
		require.ErrorIs(t, err, errInjected)
	}
	require.Equal(t, int64(3), repo.gets.Load())

	var wg sync.WaitGroup
	for id := 1; id <= 20; id++ {
		wg.Go(func() {
			_, err := svc.GetUser(ctx, id)
			if !errors.Is(err, ErrRepositoryUnavailable) || !strings.Contains(err.Error(), "circuit breaker open") {
				t.Errorf("GetUser(%d) with the breaker open = %v, want ErrRepositoryUnavailable", id, err)
			}
		})
	}
	wg.Wait()
	m := svc.GetMetrics()
	require.Equal(t, int64(3), repo.gets.Load(), "no load may reach the repository while the breaker is open")
	require.Equal(t, "open", m.RepositoryBreakerState)
	require.Equal(t, int64(1), m.RepositoryBreakerOpens)
	require.Equal(t, int64(20), m.RepositoryCallsRejected)

	// After the cooldown one probe goes through; it fails, and the breaker
	// opens again.
	time.Sleep(250 * time.Millisecond)
	for id := 1; id <= 20; id++ {
		_, _ = svc.GetUser(ctx, id)
	}
	require.Equal(t, int64(4), repo.gets.Load(), "one probe per cooldown")

	repo.setErr(nil)
	require.Eventually(t, func() bool {
		_, err := svc.GetUser(ctx, 5)
		return err == nil
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, "closed", svc.GetMetrics().RepositoryBreakerState)
}

// TestRepoBreaker_NotFoundAndPanicsAreNotFailures: missing users and a
// loader that panics are answers or bugs, not an outage.
func TestRepoBreaker_NotFoundAndPanicsAreNotFailures(t *testing.T) {
	ctx := context.Background()
	repo := newTestRepo()
	seedUser(t, repo, "a")
	svc := NewUserService(repo, nil, WithRepositoryBreaker(2, time.Minute))
	defer svc.Close()
	for id := 100; id < 110; id++ {
		_, err := svc.GetUser(ctx, id)
		require.ErrorIs(t, err, ErrUserNotFound)
	}
	repo.setHook(func(context.Context, int) { panic("bug") })
	for range 5 {
		_, err := svc.GetUser(ctx, 1)
		var pe *PanicError
		require.ErrorAs(t, err, &pe)
	}
	require.Equal(t, "closed", svc.GetMetrics().RepositoryBreakerState)
}
