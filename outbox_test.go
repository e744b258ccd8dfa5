package cacheaside

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func outboxRows(t *testing.T, r *SQLRepository) int {
	t.Helper()
	var n int
	require.NoError(t, r.DB().QueryRowContext(context.Background(), `SELECT COUNT(*) FROM `+r.Table()+`_outbox`).Scan(&n))
	return n
}

// TestOutbox_WritesRecordAndWritersClear: every write through the SQL
// repository records its user in the outbox in the same transaction; a
// write made through a UserService clears its record once its delete has
// landed, and a write made behind the service's back stays recorded.
func TestOutbox_WritesRecordAndWritersClear(t *testing.T) {
	forEachSQLBackend(t, func(t *testing.T, b sqlBackend) {
		ctx := context.Background()
		svc := NewUserService(b.repo, miniredisBackend(t).cache)
		defer svc.Close()
		u := &User{Name: "Ann", Email: "ann@example.com"}
		require.NoError(t, svc.CreateUser(ctx, u))
		require.NoError(t, svc.UpdateUser(ctx, &User{ID: u.ID, Name: "Ann B", Email: u.Email}))
		require.NoError(t, svc.DeleteUser(ctx, u.ID))
		require.Eventually(t, func() bool { return outboxRows(t, b.repo) == 0 }, 5*time.Second, 10*time.Millisecond,
			"the writer clears its records once its deletes landed")

		v := &User{Name: "Bo", Email: "bo@example.com"}
		require.NoError(t, b.repo.CreateUser(ctx, v))
		require.NoError(t, b.repo.UpdateUser(ctx, &User{ID: v.ID, Name: "Bo B", Email: v.Email}))
		require.NoError(t, b.repo.DeleteUser(ctx, v.ID))
		require.Equal(t, 3, outboxRows(t, b.repo), "each write records itself")
		require.ErrorIs(t, b.repo.UpdateUser(ctx, &User{ID: v.ID, Name: "x", Email: "x@example.com"}), ErrUserNotFound)
		require.ErrorIs(t, b.repo.DeleteUser(ctx, v.ID), ErrUserNotFound)
		require.Equal(t, 3, outboxRows(t, b.repo), "a write that changed nothing records nothing")

		recs, err := b.repo.PendingInvalidations(ctx, 0, 10)
		require.NoError(t, err)
		require.Len(t, recs, 3)
		require.Equal(t, v.ID, recs[0].UserID)
		require.Less(t, recs[0].Seq, recs[2].Seq)
		recs, err = b.repo.PendingInvalidations(ctx, time.Hour, 10)
		require.NoError(t, err)
		require.Empty(t, recs, "records younger than olderThan are left to their writers")
	})
}

// TestOutbox_DrainRecoversACrashedWriter: a writer that committed and then
// died before its delete left the old row in the cache; the outbox drain of
// a live instance deletes it, and clears the record.
func TestOutbox_DrainRecoversACrashedWriter(t *testing.T) {
	forEachSQLBackend(t, func(t *testing.T, b sqlBackend) {
		ctx := context.Background()
		cache := miniredisBackend(t).cache
		// Records are drained once older than the interval: 3 s leaves the
		// test time to look at the cache before the drain, on a busy machine.
		svc := NewUserService(b.repo, cache, WithOutboxDrain(3*time.Second))
		defer svc.Close()
		u := &User{Name: "old", Email: "u@example.com"}
		require.NoError(t, svc.CreateUser(ctx, u))
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "old", got.Name)

		// The crashed writer: committed, recorded, never deleted.
		require.NoError(t, b.repo.UpdateUser(ctx, &User{ID: u.ID, Name: "new", Email: u.Email}))
		got, err = svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "old", got.Name, "the cache still holds the row the crashed write replaced")

		require.Eventually(t, func() bool {
			got, err := svc.GetUser(ctx, u.ID)
			return err == nil && got.Name == "new"
		}, 10*time.Second, 50*time.Millisecond, "the drain must delete what the crashed writer left")
		require.Eventually(t, func() bool { return outboxRows(t, b.repo) == 0 }, 5*time.Second, 10*time.Millisecond)
		require.Positive(t, svc.GetMetrics().OutboxDrained)
	})
}

// TestOutbox_RecordOutlivesAFailedDelete: while a write's delete waits for
// its retry, its record stays in the outbox; once the retry lands, it goes.
func TestOutbox_RecordOutlivesAFailedDelete(t *testing.T) {
	ctx := context.Background()
	repo, err := NewSQLRepository(ctx, openSQLite(t), SQLite)
	require.NoError(t, err)
	fc := newFaultCache(NewMemoryCache())
	svc := NewUserService(repo, fc, WithRelatedKeys(nil))
	defer svc.Close()
	u := &User{Name: "a", Email: "a@example.com"}
	require.NoError(t, svc.CreateUser(ctx, u))
	require.Eventually(t, func() bool { return outboxRows(t, repo) == 0 }, 5*time.Second, 10*time.Millisecond)

	fc.failDel.Store(true)
	require.NoError(t, svc.UpdateUser(ctx, &User{ID: u.ID, Name: "b", Email: u.Email}))
	time.Sleep(100 * time.Millisecond) // retries fail meanwhile
	require.Equal(t, 1, outboxRows(t, repo), "the record waits for the delete")
	fc.failDel.Store(false)
	require.Eventually(t, func() bool { return outboxRows(t, repo) == 0 }, 5*time.Second, 10*time.Millisecond)
}

// TestOutbox_RecordInvalidationOutsideAWrite does nothing.
func TestOutbox_RecordInvalidationOutsideAWrite(t *testing.T) {
	require.NotPanics(t, func() { RecordInvalidation(context.Background(), 7) })
	r := new(seqRecorder)
	ctx := context.WithValue(context.Background(), seqRecorderKey{}, r)
	RecordInvalidation(ctx, 7)
	RecordInvalidation(ctx, 9)
	require.Equal(t, []int64{7, 9}, r.take())
}
