package cacheaside

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestInvalidation_RetriedUntilItLands: a delete that fails is retried
// until it lands. Meanwhile the writer's instance reads the key from the
// repository, never the cache, and the other instances may see the old row
// until the retry lands, and never after.
func TestInvalidation_RetriedUntilItLands(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "old")
		fc := newFaultCache(b.fork(t))
		writer := NewUserService(repo, fc, WithRelatedKeys(nil))
		other := NewUserService(repo, b.fork(t), WithRelatedKeys(nil))
		defer writer.Close()
		defer other.Close()
		_, err := writer.GetUser(ctx, u.ID)
		require.NoError(t, err)

		fc.failDel.Store(true)
		require.NoError(t, writer.UpdateUser(ctx, &User{ID: u.ID, Name: "new", Email: u.Email}), "a failed delete must not fail the write")
		m := writer.GetMetrics()
		require.Equal(t, int64(1), m.CacheInvalidationErrors)
		require.Equal(t, int64(1), m.PendingInvalidations)

		gets := fc.gets.Load()
		got, err := writer.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "new", got.Name, "the writer must never serve the row its own write replaced")
		require.Equal(t, gets, fc.gets.Load(), "the writer must not read a key whose delete is pending")
		got, err = other.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "old", got.Name, "until the retry lands, another instance may see the old row")

		fc.failDel.Store(false)
		require.Eventually(t, func() bool { return writer.GetMetrics().PendingInvalidations == 0 }, 5*time.Second, 5*time.Millisecond)
		require.Positive(t, writer.GetMetrics().InvalidationRetries)
		for _, svc := range []*UserService{other, writer} {
			got, err = svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, "new", got.Name, "once the retry landed, every instance serves the new row")
		}
	})
}

// gatedDelCache holds its first Delete until released, and reports each
// Delete that returned.
type gatedDelCache struct {
	CacheClient
	entered, release chan struct{}
	returned         chan int
	n                int
}

func (g *gatedDelCache) Delete(ctx context.Context, keys ...string) error {
	g.n++
	if g.n == 1 {
		close(g.entered)
		<-g.release
	}
	err := g.CacheClient.Delete(ctx, keys...)
	g.returned <- g.n
	return err
}

// TestInvalidation_LaterWriteIsNotAcknowledgedByAnEarlierRetry: a key
// queued again, by a later write, while a retry of it is in flight stays
// queued when that retry lands: the retry was sent before the later write's
// commit and may not cover it. A retry sent afterwards clears it.
func TestInvalidation_LaterWriteIsNotAcknowledgedByAnEarlierRetry(t *testing.T) {
	g := &gatedDelCache{CacheClient: NewMemoryCache(), entered: make(chan struct{}), release: make(chan struct{}), returned: make(chan int, 4)}
	a := NewAside(g, "p", func(context.Context, int) (*product, error) { return nil, ErrNotFound })
	defer a.Close()
	landed := make(chan []int64, 4)
	a.landed = func(seqs []int64) { landed <- seqs }
	a.queue([]string{"p:1"}, []int64{1}, nil) // an earlier write's failed delete
	<-g.entered                               // its retry is in flight
	a.queue([]string{"p:1"}, []int64{2}, nil) // a later write's failed delete
	close(g.release)
	require.Equal(t, 1, <-g.returned)
	select {
	case n := <-g.returned:
		require.Equal(t, 2, n)
	case <-time.After(5 * time.Second):
		t.Fatal("the key queued by the later write was not retried again")
	}
	require.Equal(t, []int64{1, 2}, <-landed, "both writes' records are cleared, once, after the second retry")
	require.Zero(t, a.inv.n.Load())
}

// TestInvalidation_CloseStopsTheRetries: Close ends the retries after one
// last attempt, and the service keeps serving.
func TestInvalidation_CloseStopsTheRetries(t *testing.T) {
	ctx := context.Background()
	repo := newTestRepo()
	u := seedUser(t, repo, "x")
	fc := newFaultCache(NewMemoryCache())
	svc := NewUserService(repo, fc)
	fc.failDel.Store(true)
	require.NoError(t, svc.UpdateUser(ctx, u))
	require.Positive(t, svc.GetMetrics().PendingInvalidations)
	require.NoError(t, svc.Close())
	dels := fc.dels.Load()
	time.Sleep(50 * time.Millisecond)
	require.Equal(t, dels, fc.dels.Load(), "no retry after Close")
	_, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err)
}
