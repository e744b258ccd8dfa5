package main

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside"
)

// testRepo opens cachebench's users table on SQLite in a temporary file,
// or on the PostgreSQL at POSTGRES_DSN, seeded with n users.
func testRepo(t *testing.T, n int) *versionedRepo {
	t.Helper()
	ctx := context.Background()
	repo, _, closeDB, err := openDB(ctx, os.Getenv("POSTGRES_DSN"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeDB)
	if err := repo.seed(ctx, n); err != nil {
		t.Fatal(err)
	}
	return repo
}

// TestVersionedRepo_UpdateUser: the database assigns each update of a user
// the next version, writes it into the name it stores and returns, and
// keeps the rest of the row.
func TestVersionedRepo_UpdateUser(t *testing.T) {
	ctx := context.Background()
	repo := testRepo(t, 3)
	u, err := repo.GetUser(ctx, 2)
	if err != nil || version(u) != 0 || u.Email != userEmail(2) || u.CreateAt.IsZero() {
		t.Fatalf("GetUser(2) = %+v, %v; want version 0", u, err)
	}
	created := u.CreateAt
	for want := int64(1); want <= 3; want++ {
		w := &cacheaside.User{ID: 2, Name: "ignored v999", Email: "two@example.com"}
		if err := repo.UpdateUser(ctx, w); err != nil {
			t.Fatalf("UpdateUser: %v", err)
		}
		if w.Name != userName(2, want) || !w.CreateAt.Equal(created) {
			t.Errorf("UpdateUser wrote back %q, %v; want %q, %v", w.Name, w.CreateAt, userName(2, want), created)
		}
		got, err := repo.GetUser(ctx, 2)
		if err != nil || got.Name != userName(2, want) || got.Email != "two@example.com" {
			t.Errorf("GetUser(2) after update %d = %+v, %v", want, got, err)
		}
	}
	if u, _ := repo.GetUser(ctx, 1); version(u) != 0 {
		t.Errorf("user 1 moved to version %d with user 2's updates", version(u))
	}
	if err := repo.UpdateUser(ctx, &cacheaside.User{ID: 99, Email: "x@example.com"}); !errors.Is(err, cacheaside.ErrUserNotFound) {
		t.Errorf("UpdateUser(99) = %v, want ErrUserNotFound", err)
	}
	if _, err := repo.GetUser(ctx, 99); !errors.Is(err, cacheaside.ErrUserNotFound) {
		t.Errorf("GetUser(99) = %v, want ErrUserNotFound", err)
	}
}

// TestVersionedRepo_ConcurrentUpdates: concurrent updates of one user get
// distinct versions, 1 to n, in commit order: an update that returned
// before another began got the smaller version, and a read that begins
// after an update returned sees its version or a newer one.
func TestVersionedRepo_ConcurrentUpdates(t *testing.T) {
	ctx := context.Background()
	repo := testRepo(t, 1)
	const workers, each = 8, 10
	type op struct {
		start, end time.Time
		v, readV   int64
	}
	ops := make([][]op, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for range each {
				u := &cacheaside.User{ID: 1, Name: "pending", Email: userEmail(1)}
				o := op{start: time.Now()}
				if err := repo.UpdateUser(ctx, u); err != nil {
					t.Error(err)
					return
				}
				o.end, o.v = time.Now(), version(u)
				r, err := repo.GetUser(ctx, 1)
				if err != nil {
					t.Error(err)
					return
				}
				o.readV = version(r)
				ops[i] = append(ops[i], o)
			}
		})
	}
	wg.Wait()
	var all []op
	var versions []int64
	for _, o := range ops {
		all = append(all, o...)
	}
	for _, o := range all {
		versions = append(versions, o.v)
		if o.readV < o.v {
			t.Errorf("a read after the update that committed version %d saw version %d", o.v, o.readV)
		}
	}
	slices.Sort(versions)
	for i, v := range versions {
		if v != int64(i+1) {
			t.Fatalf("versions %v, want 1 to %d, each once", versions, workers*each)
		}
	}
	for _, a := range all {
		for _, b := range all {
			if a.end.Before(b.start) && a.v >= b.v {
				t.Errorf("an update that returned version %d before another began got version %d", a.v, b.v)
			}
		}
	}
	if u, _ := repo.GetUser(ctx, 1); version(u) != workers*each {
		t.Errorf("final version %d, want %d", version(u), workers*each)
	}
}
