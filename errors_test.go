package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestErrors(t *testing.T) {
	for _, err := range []error{ErrCacheMiss, ErrNotFound, ErrUserNotFound, ErrUserExists, ErrInvalidUser, ErrLockTimeout, ErrLockNotHeld, ErrInvalidArgument, ErrDecode, ErrNotConfigured} {
		if !strings.HasPrefix(err.Error(), "cacheaside: ") {
			t.Errorf("%q lacks the cacheaside: prefix", err)
		}
	}
	wrapped := fmt.Errorf("repo: %w", ErrUserNotFound)
	if !errors.Is(wrapped, ErrUserNotFound) || !errors.Is(wrapped, ErrNotFound) {
		t.Fatal("a wrapped ErrUserNotFound must match ErrUserNotFound and ErrNotFound")
	}
	if errors.Is(ErrNotFound, ErrUserNotFound) {
		t.Fatal("ErrNotFound must not match the narrower ErrUserNotFound")
	}
	pe := &PanicError{Value: "boom", Stack: []byte("stack")}
	if !strings.Contains(pe.Error(), "boom") || pe.Unwrap() != nil {
		t.Fatalf("PanicError = %q, unwrap %v", pe.Error(), pe.Unwrap())
	}
}

// saidOnce fails the test unless err says "cacheaside:" exactly once, at
// its start, and matches every one of wants with errors.Is.
func saidOnce(t *testing.T, err error, wants ...error) {
	t.Helper()
	require.Error(t, err)
	msg := err.Error()
	if !strings.HasPrefix(msg, "cacheaside: ") || strings.Count(msg, "cacheaside:") != 1 {
		t.Fatalf("error %q must say \"cacheaside:\" once, at its start", msg)
	}
	for _, want := range wants {
		if !errors.Is(err, want) {
			t.Fatalf("error %q does not match %v", msg, want)
		}
	}
}

// TestErrors_SaidOnce: errors that cross the service, the engine and an
// adapter of this package say "cacheaside:" once, and still match their
// sentinels and their cause.
func TestErrors_SaidOnce(t *testing.T) {
	ctx := context.Background()

	t.Run("sql", func(t *testing.T) {
		db := openSQLite(t)
		repo, err := NewSQLRepository(ctx, db, SQLite)
		require.NoError(t, err)
		svc := NewUserService(repo, NewMemoryCache())
		// Its outbox drain must end before the database's directory is
		// removed: a connection it still held could otherwise write there
		// as RemoveAll runs ("directory not empty", once in a -race run).
		t.Cleanup(func() { svc.Close() })
		u := &User{Name: "Ann", Email: "ann@example.com"}
		require.NoError(t, svc.CreateUser(ctx, u))

		err = svc.UpdateUser(ctx, &User{ID: 99, Name: "x", Email: "x@example.com"})
		saidOnce(t, err, ErrUserNotFound, ErrNotFound)
		require.Equal(t, "cacheaside: update user 99: user not found", err.Error())
		saidOnce(t, svc.CreateUser(ctx, &User{ID: u.ID, Name: "y", Email: "y@example.com"}), ErrUserExists)

		require.NoError(t, db.Close())
		_, err = svc.GetUser(ctx, 5)
		saidOnce(t, err)
		require.Equal(t, "cacheaside: load user:5: SELECT users: sql: database is closed", err.Error())
		err = svc.UpdateUser(ctx, &User{ID: 5, Name: "x", Email: "x@example.com"})
		saidOnce(t, err)
		require.Equal(t, "cacheaside: update user 5: UPDATE users: sql: database is closed", err.Error())
		saidOnce(t, svc.DeleteUser(ctx, 5))
		saidOnce(t, svc.CreateUser(ctx, &User{Name: "z", Email: "z@example.com"}))
		_, err = svc.GetUsersBatch(ctx, []int{6, 7})
		saidOnce(t, err)
		_, err = repo.GetUser(ctx, 5)
		saidOnce(t, err)
	})

	t.Run("memory", func(t *testing.T) {
		repo := newTestRepo()
		svc := NewUserService(repo, NewMemoryCache())
		err := svc.DeleteUser(ctx, 3)
		saidOnce(t, err, ErrUserNotFound)
		require.Equal(t, "cacheaside: delete user 3: user not found", err.Error())
		_, err = svc.GetUser(ctx, 3)
		saidOnce(t, err, ErrUserNotFound)

		seedUser(t, repo, "a")
		repo.setErr(fmt.Errorf("replica lag: %w", errInjected))
		_, err = svc.GetUser(ctx, 1)
		saidOnce(t, err, errInjected)
		for _, db := range []UserRepository{repo, singleRepo{repo}} {
			_, err = NewUserService(db, NewMemoryCache()).GetUsersBatch(ctx, []int{1, 2})
			saidOnce(t, err, errInjected)
		}
		// Someone else's repository that wraps this package's sentinels.
		repo.setErr(fmt.Errorf("shard 2: %w", ErrUserNotFound))
		_, err = NewUserService(repo, nil).GetUser(ctx, 1)
		saidOnce(t, err, ErrUserNotFound)

		repo.setErr(nil)
		repo.setHook(func(context.Context, int) { panic(ErrUserExists) })
		_, err = NewUserService(repo, NewMemoryCache()).GetUser(ctx, 1)
		var pe *PanicError
		require.ErrorAs(t, err, &pe)
		saidOnce(t, errors.New(strings.SplitN(err.Error(), "\n", 2)[0]))
		require.ErrorIs(t, err, ErrUserExists)
	})

	t.Run("redis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
		t.Cleanup(func() { rdb.Close() })
		cache := NewRedisCache(rdb)
		lock, err := cache.AcquireLock(ctx, "job", time.Second)
		require.NoError(t, err)
		short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
		defer cancel()
		_, err = cache.AcquireLock(short, "job", time.Second)
		saidOnce(t, err, ErrLockTimeout, context.DeadlineExceeded)
		_, err = cache.AcquireLock(ctx, "job", time.Millisecond)
		saidOnce(t, err, ErrInvalidArgument)
		require.NoError(t, lock.Release(ctx))
		saidOnce(t, lock.Err(), ErrLockNotHeld)

		a := NewAside(cache, "product", func(context.Context, int) (*product, error) { return nil, ErrNotFound })
		defer a.Close()
		mr.Close()
		err = a.Invalidate(ctx, 5)
		saidOnce(t, err)
		require.True(t, strings.HasPrefix(err.Error(), "cacheaside: invalidate product:5: "), err.Error())
		var v any
		saidOnce(t, cache.GetJSON(ctx, "k", &v))
		_, err = NewRedisCache(nil).GetMulti(ctx, []string{"k"})
		saidOnce(t, err, ErrNotConfigured)
	})
}
