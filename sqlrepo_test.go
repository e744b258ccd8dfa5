package cacheaside

import (
	"context"
	"database/sql"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the PostgreSQL driver users would bring
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite" // the embedded SQLite driver users would bring
)

// sqlBackend is a SQLRepository on a fresh table.
type sqlBackend struct {
	name string
	repo *SQLRepository
}

// openSQLite opens a SQLite file in a temporary directory.
func openSQLite(t testing.TB) *sql.DB {
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "users.db") + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)"
	db, err := sql.Open("sqlite", dsn)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// openPostgres opens the PostgreSQL at POSTGRES_DSN, skipping the test when
// it is unset (failing in CI).
func openPostgres(t testing.TB) *sql.DB {
	t.Helper()
	dsn := serverEnv(t, "POSTGRES_DSN", "PostgreSQL")
	db, err := sql.Open("pgx", dsn)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("PostgreSQL at POSTGRES_DSN: %v", err)
	}
	return db
}

func forEachSQLBackend(t *testing.T, fn func(t *testing.T, b sqlBackend)) {
	t.Run("sqlite", func(t *testing.T) {
		repo, err := NewSQLRepository(context.Background(), openSQLite(t), SQLite)
		require.NoError(t, err)
		fn(t, sqlBackend{name: "sqlite", repo: repo})
	})
	t.Run("postgresql", func(t *testing.T) {
		db := openPostgres(t)
		// A table of its own, so tests can share one server.
		table := "users_" + strings.NewReplacer("cacheaside-test:", "", ":", "").Replace(uniquePrefix(t))
		repo, err := NewSQLRepository(context.Background(), db, PostgreSQL, WithTable(table))
		require.NoError(t, err)
		t.Cleanup(func() { db.Exec(`DROP TABLE IF EXISTS ` + table + `, ` + table + `_outbox`) })
		fn(t, sqlBackend{name: "postgresql", repo: repo})
	})
}

func TestSQLRepository_CRUD(t *testing.T) {
	forEachSQLBackend(t, func(t *testing.T, b sqlBackend) {
		ctx := context.Background()
		r := b.repo
		ann := &User{Name: "Ann", Email: "ann@example.com"}
		require.NoError(t, r.CreateUser(ctx, ann))
		require.Positive(t, ann.ID, "the database assigns the ID")
		require.False(t, ann.CreateAt.IsZero(), "created_at is assigned")
		require.Equal(t, time.UTC, ann.CreateAt.Location())
		require.Equal(t, ann.CreateAt, ann.CreateAt.Truncate(time.Microsecond))

		got, err := r.GetUser(ctx, ann.ID)
		require.NoError(t, err)
		require.Equal(t, *ann, *got, "what was created is what is read")

		// An explicit ID, then automatic ones that must not collide with it.
		explicit := &User{ID: 1000, Name: "Ten", Email: "ten@example.com", CreateAt: time.Date(2020, 2, 3, 4, 5, 6, 789123000, time.UTC)}
		require.NoError(t, r.CreateUser(ctx, explicit))
		got, err = r.GetUser(ctx, 1000)
		require.NoError(t, err)
		require.True(t, explicit.CreateAt.Equal(got.CreateAt), "created_at round-trips to the microsecond: %v vs %v", explicit.CreateAt, got.CreateAt)
		err = r.CreateUser(ctx, &User{ID: 1000, Name: "Dup", Email: "dup@example.com"})
		require.ErrorIs(t, err, ErrUserExists)
		next := &User{Name: "Next", Email: "next@example.com"}
		require.NoError(t, r.CreateUser(ctx, next))
		require.NotEqual(t, 1000, next.ID)
		got, _ = r.GetUser(ctx, 1000)
		require.Equal(t, "Ten", got.Name, "a failed insert changes nothing")

		upd := &User{ID: ann.ID, Name: "Ann B", Email: "annb@example.com", CreateAt: time.Unix(1, 0)}
		require.NoError(t, r.UpdateUser(ctx, upd))
		require.True(t, ann.CreateAt.Equal(upd.CreateAt), "update writes the stored created_at back")
		got, _ = r.GetUser(ctx, ann.ID)
		require.Equal(t, "Ann B", got.Name)
		require.True(t, ann.CreateAt.Equal(got.CreateAt), "created_at never changes")
		require.ErrorIs(t, r.UpdateUser(ctx, &User{ID: 999999, Name: "x", Email: "x@example.com"}), ErrUserNotFound)

		require.NoError(t, r.DeleteUser(ctx, ann.ID))
		_, err = r.GetUser(ctx, ann.ID)
		require.ErrorIs(t, err, ErrUserNotFound)
		require.ErrorIs(t, err, ErrNotFound)
		require.ErrorIs(t, r.DeleteUser(ctx, ann.ID), ErrUserNotFound)
	})
}

func TestSQLRepository_GetUsers(t *testing.T) {
	forEachSQLBackend(t, func(t *testing.T, b sqlBackend) {
		ctx := context.Background()
		r := b.repo
		var ids []int
		for i := range 1200 { // more than two chunks
			u := &User{Name: "user" + string(rune('a'+i%26)), Email: "u@example.com"}
			require.NoError(t, r.CreateUser(ctx, u))
			ids = append(ids, u.ID)
		}
		ask := append([]int{ids[5], -1, ids[5], 987654321}, ids...)
		got, err := r.GetUsers(ctx, ask)
		require.NoError(t, err)
		require.Len(t, got, len(ask))
		require.Equal(t, ids[5], got[0].ID)
		require.Nil(t, got[1])
		require.Equal(t, ids[5], got[2].ID)
		require.NotSame(t, got[0], got[2], "a repeated ID gets its own copy")
		require.Nil(t, got[3])
		for i, id := range ids {
			require.Equal(t, id, got[4+i].ID)
		}
		empty, err := r.GetUsers(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, empty)
	})
}

// TestSQLRepository_HostileInput: SQL metacharacters, very long strings and
// unicode round-trip exactly; what a text column cannot hold is refused
// with ErrInvalidUser and nothing is written.
func TestSQLRepository_HostileInput(t *testing.T) {
	forEachSQLBackend(t, func(t *testing.T, b sqlBackend) {
		ctx := context.Background()
		r := b.repo
		names := []string{
			`Robert'); DROP TABLE users;--`,
			`" OR 1=1 --`,
			`back\slash \' \" %_ $1 ? :name`,
			"Zoë 山田 😀 عربي \u202ereversed\u202c e\u0301",
			strings.Repeat("long", 25_000),
			"tab\tnew\nline",
		}
		for _, name := range names {
			u := &User{Name: name, Email: "odd@example.com"}
			require.NoError(t, r.CreateUser(ctx, u), "%.40q", name)
			got, err := r.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, name, got.Name, "names round-trip exactly")
			list, err := r.GetUsers(ctx, []int{u.ID})
			require.NoError(t, err)
			require.Equal(t, name, list[0].Name)
		}
		before, err := r.GetUsers(ctx, []int{1})
		require.NoError(t, err)
		for _, bad := range []*User{
			nil,
			{Name: "nul\x00byte", Email: "a@example.com"},
			{Name: "bad \xff utf8", Email: "a@example.com"},
			{ID: -1, Name: "neg", Email: "a@example.com"},
		} {
			require.ErrorIs(t, r.CreateUser(ctx, bad), ErrInvalidUser)
		}
		require.ErrorIs(t, r.UpdateUser(ctx, &User{ID: 1, Name: "nul\x00", Email: "a@example.com"}), ErrInvalidUser)
		after, _ := r.GetUsers(ctx, []int{1})
		require.Equal(t, before, after, "refused input wrote nothing")
		var n int
		require.NoError(t, r.DB().QueryRowContext(ctx, `SELECT COUNT(*) FROM `+r.Table()).Scan(&n))
		require.Equal(t, len(names), n)
	})
}

func TestSQLRepository_BadConfig(t *testing.T) {
	ctx := context.Background()
	_, err := NewSQLRepository(ctx, nil, SQLite)
	require.ErrorIs(t, err, ErrNotConfigured)
	db := openSQLite(t)
	_, err = NewSQLRepository(ctx, db, Dialect(99))
	require.ErrorIs(t, err, ErrInvalidArgument)
	for _, table := range []string{"", "users; DROP TABLE x", "1users", `"users"`, "a.b.c"} {
		_, err = NewSQLRepository(ctx, db, SQLite, WithTable(table))
		require.ErrorIs(t, err, ErrInvalidArgument, "table %q", table)
	}
	r, err := NewSQLRepository(ctx, db, SQLite, WithTable("people"))
	require.NoError(t, err)
	require.Equal(t, "people", r.Table())
	_, err = NewSQLRepository(ctx, db, SQLite, WithTable("people"))
	require.NoError(t, err, "an existing table is reused")
	require.Equal(t, "sqlite", SQLite.String())
	require.Equal(t, "postgresql", PostgreSQL.String())
}

// TestSQLRepository_BehindTheService runs the service over the SQL
// repository: batch misses go to the repository's batch read, and writes
// invalidate.
func TestSQLRepository_BehindTheService(t *testing.T) {
	forEachSQLBackend(t, func(t *testing.T, b sqlBackend) {
		ctx := context.Background()
		svc := NewUserService(b.repo, miniredisBackend(t).cache)
		require.NotNil(t, svc.users.loadMany, "the service must use the repository's batch read")
		a := &User{Name: "Ann", Email: "ann@example.com"}
		c := &User{Name: "Cy", Email: "cy@example.com"}
		require.NoError(t, svc.CreateUser(ctx, a))
		require.NoError(t, svc.CreateUser(ctx, c))
		got, err := svc.GetUsersBatch(ctx, []int{a.ID, c.ID, 424242})
		require.NoError(t, err)
		require.Equal(t, "Ann", got[0].Name)
		require.Equal(t, "Cy", got[1].Name)
		require.Nil(t, got[2])
		require.Equal(t, int64(1), svc.GetMetrics().DatabaseLoads, "one batch query for three misses")

		require.NoError(t, svc.UpdateUser(ctx, &User{ID: a.ID, Name: "Ann 2", Email: a.Email}))
		u, err := svc.GetUser(ctx, a.ID)
		require.NoError(t, err)
		require.Equal(t, "Ann 2", u.Name)
		require.True(t, a.CreateAt.Equal(u.CreateAt))
		_, err = svc.GetUser(ctx, 424242)
		require.ErrorIs(t, err, ErrUserNotFound)
	})
}

// TestRootImportsNoSQLDriver: users bring their own driver; the library
// itself must not pull one in.
func TestRootImportsNoSQLDriver(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command(gobin, "list", "-deps", ".").Output()
	require.NoError(t, err)
	for _, dep := range strings.Fields(string(out)) {
		require.False(t, strings.HasPrefix(dep, "github.com/jackc/") || strings.HasPrefix(dep, "modernc.org/") ||
			strings.Contains(dep, "sqlite") || strings.Contains(dep, "lib/pq"),
			"the root package imports a SQL driver: %s", dep)
	}
}

// TestSQLRepository_UpdateReturnsTheStoredRow: what an update returns is
// exactly what a read returns after it, CreateAt included, which the
// caller's user does not carry: it is what UpdateUser leaves in the cache.
func TestSQLRepository_UpdateReturnsTheStoredRow(t *testing.T) {
	forEachSQLBackend(t, func(t *testing.T, b sqlBackend) {
		ctx := context.Background()
		u := &User{Name: "before", Email: "b@example.com"}
		require.NoError(t, b.repo.CreateUser(ctx, u))
		stored, err := updateReturning(b.repo)(ctx, &User{ID: u.ID, Name: "after", Email: "a@example.com"})
		require.NoError(t, err)
		got, err := b.repo.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, got.ID, stored.ID)
		require.Equal(t, got.Name, stored.Name)
		require.Equal(t, got.Email, stored.Email)
		require.True(t, got.CreateAt.Equal(stored.CreateAt), "%v != %v", got.CreateAt, stored.CreateAt)
		_, err = updateReturning(b.repo)(ctx, &User{ID: u.ID + 1000, Name: "x", Email: "x@example.com"})
		require.ErrorIs(t, err, ErrUserNotFound)
	})
}
