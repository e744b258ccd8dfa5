package cacheaside

import (
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestEarlyRefresh_HotKeyNeverWaits: a hot key read every millisecond of a
// fake clock, whose load takes 100 ms of it, through ten expiries of a
// one-second TTL. With early refresh no read after the first waits for the
// database: each expiry is met by a refresh in the background. Without
// it, the same run makes a reader wait at every expiry, which shows that
// the test can fail.
func TestEarlyRefresh_HotKeyNeverWaits(t *testing.T) {
	const ttl, load, step = time.Second, 100 * time.Millisecond, time.Millisecond
	for _, tc := range []struct {
		name string
		opts []UserOption
	}{
		{"early refresh", []UserOption{WithEarlyRefresh(1)}},
		{"fixed expiry", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, b backend) {
				ctx := context.Background()
				clk := &testClock{t: time.Unix(1_800_000_000, 0)}
				repo := newTestRepo()
				u := seedUser(t, repo, "hot")
				repo.setHook(func(context.Context, int) { clk.Add(load) })
				rec := new(fakeRecorder)
				svc := NewUserService(repo, b.fork(t), append([]UserOption{WithTTL(ttl), WithRecorder(rec)}, tc.opts...)...)
				svc.users.now = clk.Now
				t.Cleanup(func() { svc.Close() })

				end := clk.Now().Add(10*ttl + ttl/2)
				for clk.Now().Before(end) {
					got, err := svc.GetUser(ctx, u.ID)
					require.NoError(t, err)
					require.Equal(t, "hot", got.Name)
					// A refresh takes its load's time on the fake clock (the
					// hook adds it); the readers' clock does not run ahead of
					// it on a busy machine.
					for svc.users.refreshes.Load() > 0 {
						time.Sleep(50 * time.Microsecond)
					}
					clk.Add(step)
				}
				svc.Close() // waits for refreshes in flight
				reads, _, _ := rec.take()
				waited := 0
				for _, r := range reads {
					if r == ResultMiss || r == ResultShared {
						waited++
					}
				}
				m := svc.GetMetrics()
				t.Logf("%s: %d reads, %d waited for the database, %d loads, %d early refreshes", b.name, len(reads), waited, m.DatabaseLoads, m.EarlyRefreshes)
				if tc.opts == nil {
					require.GreaterOrEqual(t, waited, 10, "without early refresh every expiry makes a reader wait")
					return
				}
				require.Equal(t, 1, waited, "only the first read may wait for the database")
				require.GreaterOrEqual(t, m.EarlyRefreshes, int64(10), "one refresh per expiry at least")
				require.LessOrEqual(t, m.DatabaseLoads, int64(25), "about one load per expiry, not one per read")
			})
		})
	}
}

// TestEarlyRefresh_NeverUndoesAWrite: a refresh that read the old row
// before a write must not store it after the write: its compare-and-swap
// finds the key changed. Without a write, the same refresh lands.
func TestEarlyRefresh_NeverUndoesAWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "old")
		svc := NewUserService(repo, b.fork(t), WithEarlyRefresh(1))
		t.Cleanup(func() { svc.Close() })
		writer := NewUserService(repo, b.fork(t))
		t.Cleanup(func() { writer.Close() })
		key := userCacheKey(u.ID)
		_, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)

		raw, ok := b.raw(key)
		require.True(t, ok)
		svc.users.refresh(ctx, u.ID, key, json.RawMessage(raw))
		require.Equal(t, int64(1), svc.GetMetrics().EarlyRefreshes, "a refresh with nothing in its way lands")

		raw, _ = b.raw(key)
		entered, release := holdFirstRead(repo) // the refresh's read is held
		done := make(chan struct{})
		go func() {
			defer close(done)
			svc.users.refresh(ctx, u.ID, key, json.RawMessage(raw))
		}()
		awaitEntered(t, entered) // the refresh has the old row in hand
		require.NoError(t, writer.UpdateUser(ctx, &User{ID: u.ID, Name: "new", Email: u.Email}))
		close(release)
		<-done
		require.Equal(t, int64(1), svc.GetMetrics().EarlyRefreshes, "the refresh must not land after the write")
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "new", got.Name)
	})
}

// TestXFetch_Probability: the rule refreshes with probability
// exp(-(exp-now)/(delta*beta)).
func TestXFetch_Probability(t *testing.T) {
	now := time.Unix(0, 0)
	for _, tc := range []struct {
		left, delta time.Duration
		beta        float64
	}{{100 * time.Millisecond, 100 * time.Millisecond, 1}, {300 * time.Millisecond, 100 * time.Millisecond, 1}, {300 * time.Millisecond, 100 * time.Millisecond, 3}} {
		const n = 200_000
		hits := 0
		for range n {
			if xfetch(now, now.Add(tc.left), tc.delta, tc.beta) {
				hits++
			}
		}
		want := math.Exp(-float64(tc.left) / (float64(tc.delta) * tc.beta))
		require.InDelta(t, want, float64(hits)/n, 0.01, "left %v, delta %v, beta %v", tc.left, tc.delta, tc.beta)
	}
	require.False(t, xfetch(now, time.Time{}, time.Second, 1), "an entry without expiry is never refreshed")
	require.False(t, xfetch(now, now.Add(time.Hour), 0, 1), "an entry without a load time is never refreshed")
	require.True(t, xfetch(now, now.Add(-time.Second), time.Millisecond, 1), "an expired entry is always refreshed")
}
