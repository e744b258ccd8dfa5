package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cacheaside/cacheaside"
)

// versionedRepo is cachebench's users table, on SQLite or PostgreSQL: the
// library's columns plus version BIGINT, which the database moves on every
// update. An update is one statement,
//
//	UPDATE cachebench_users SET version = version + 1,
//	  name = 'user ' || id || ' v' || (version + 1), email = ... WHERE id = ...
//	  RETURNING version, name, created_at
//
// so the version a write committed is the one the database assigned under
// its row lock (PostgreSQL) or its write lock (SQLite): concurrent updates
// of one user get distinct versions, in commit order, and the name every
// strategy reads carries it (see version).
type versionedRepo struct {
	db       *sql.DB
	postgres bool
	q        struct{ get, insert, update, del string }
}

var _ cacheaside.UserRepository = (*versionedRepo)(nil)

// repoTable is the table versionedRepo keeps its users in.
const repoTable = "cachebench_users"

// newVersionedRepo creates a fresh users table on db (dropping one left by
// an earlier run on PostgreSQL) and returns the repository over it.
func newVersionedRepo(ctx context.Context, db *sql.DB, postgres bool) (*versionedRepo, error) {
	r := &versionedRepo{db: db, postgres: postgres}
	var create string
	if postgres {
		create = `CREATE TABLE ` + repoTable + ` (id BIGINT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
			created_at TIMESTAMPTZ NOT NULL, version BIGINT NOT NULL DEFAULT 0)`
		r.q.get = `SELECT id, name, email, created_at FROM ` + repoTable + ` WHERE id = $1`
		r.q.insert = `INSERT INTO ` + repoTable + ` (id, name, email, created_at, version) VALUES ($1, $2, $3, $4, 0)`
		r.q.update = `UPDATE ` + repoTable + ` SET version = version + 1, name = 'user ' || id || ' v' || (version + 1), email = $1
			WHERE id = $2 RETURNING version, name, created_at`
		r.q.del = `DELETE FROM ` + repoTable + ` WHERE id = $1`
		if _, err := db.ExecContext(ctx, `DROP TABLE IF EXISTS `+repoTable); err != nil {
			return nil, err
		}
	} else {
		create = `CREATE TABLE ` + repoTable + ` (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
			created_at INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 0)`
		r.q.get = `SELECT id, name, email, created_at FROM ` + repoTable + ` WHERE id = ?`
		r.q.insert = `INSERT INTO ` + repoTable + ` (id, name, email, created_at, version) VALUES (?, ?, ?, ?, 0)`
		r.q.update = `UPDATE ` + repoTable + ` SET version = version + 1, name = 'user ' || id || ' v' || (version + 1), email = ?
			WHERE id = ? RETURNING version, name, created_at`
		r.q.del = `DELETE FROM ` + repoTable + ` WHERE id = ?`
	}
	if _, err := db.ExecContext(ctx, create); err != nil {
		return nil, fmt.Errorf("create %s: %w", repoTable, err)
	}
	return r, nil
}

// timeArg is how created_at is written: a timestamp on PostgreSQL, Unix
// microseconds on SQLite.
func (r *versionedRepo) timeArg(t time.Time) any {
	if r.postgres {
		return t
	}
	return t.UnixMicro()
}

// timeScan scans created_at in either form.
type timeScan struct{ t time.Time }

func (s *timeScan) Scan(v any) error {
	switch x := v.(type) {
	case time.Time:
		s.t = x.UTC()
	case int64:
		s.t = time.UnixMicro(x).UTC()
	default:
		return fmt.Errorf("created_at: unexpected %T", v)
	}
	return nil
}

// GetUser returns the user with the given ID, or an error wrapping
// cacheaside.ErrUserNotFound.
func (r *versionedRepo) GetUser(ctx context.Context, id int) (*cacheaside.User, error) {
	var u cacheaside.User
	var ts timeScan
	err := r.db.QueryRowContext(ctx, r.q.get, id).Scan(&u.ID, &u.Name, &u.Email, &ts)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, cacheaside.ErrUserNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("select user %d: %w", id, err)
	}
	u.CreateAt = ts.t
	return &u, nil
}

// CreateUser inserts u at version 0 under its own ID (which must be set),
// with the name u carries.
func (r *versionedRepo) CreateUser(ctx context.Context, u *cacheaside.User) error {
	if u.ID <= 0 {
		return fmt.Errorf("%w: cachebench's users need an ID", cacheaside.ErrInvalidUser)
	}
	if u.CreateAt.IsZero() {
		u.CreateAt = time.Now().UTC().Truncate(time.Microsecond)
	}
	if _, err := r.db.ExecContext(ctx, r.q.insert, u.ID, u.Name, u.Email, r.timeArg(u.CreateAt)); err != nil {
		return fmt.Errorf("insert user %d: %w", u.ID, err)
	}
	return nil
}

// UpdateUser stores u.Email and moves the user's version on by one, in one
// statement. It ignores u.Name: the database sets the name to encode the
// version it assigned, and UpdateUser writes that name (and the stored
// CreateAt) back into u, as CreateUser implementations write back an ID.
func (r *versionedRepo) UpdateUser(ctx context.Context, u *cacheaside.User) error {
	var v int64
	var name string
	var ts timeScan
	err := r.db.QueryRowContext(ctx, r.q.update, u.Email, u.ID).Scan(&v, &name, &ts)
	if errors.Is(err, sql.ErrNoRows) {
		return cacheaside.ErrUserNotFound
	}
	if err != nil {
		return fmt.Errorf("update user %d: %w", u.ID, err)
	}
	u.Name, u.CreateAt = name, ts.t
	return nil
}

// UpdateUserReturning is UpdateUser that returns the row as stored, with
// the version the update committed in its name (cacheaside's
// UserUpdateReturner).
func (r *versionedRepo) UpdateUserReturning(ctx context.Context, u *cacheaside.User) (*cacheaside.User, error) {
	if err := r.UpdateUser(ctx, u); err != nil {
		return nil, err
	}
	stored := *u
	return &stored, nil
}

// DeleteUser removes the user with the given ID.
func (r *versionedRepo) DeleteUser(ctx context.Context, id int) error {
	res, err := r.db.ExecContext(ctx, r.q.del, id)
	if err != nil {
		return fmt.Errorf("delete user %d: %w", id, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return cacheaside.ErrUserNotFound
	}
	return nil
}

// seed inserts users 1..n at version 0 in one transaction.
func (r *versionedRepo) seed(ctx context.Context, n int) error {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, r.q.insert)
	if err != nil {
		return err
	}
	defer stmt.Close()
	created := r.timeArg(time.Now().UTC().Truncate(time.Microsecond))
	for id := 1; id <= n; id++ {
		if _, err := stmt.ExecContext(ctx, id, userName(id, 0), userEmail(id), created); err != nil {
			return fmt.Errorf("seed user %d: %w", id, err)
		}
	}
	return tx.Commit()
}

// openDB opens PostgreSQL at dsn, or SQLite in a temporary file, with a
// fresh users table, and describes it.
func openDB(ctx context.Context, dsn string) (*versionedRepo, string, func(), error) {
	if dsn == "" {
		dir, err := os.MkdirTemp("", "cachebench-")
		if err != nil {
			return nil, "", nil, err
		}
		db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "users.db")+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)")
		if err != nil {
			os.RemoveAll(dir)
			return nil, "", nil, err
		}
		closeFn := func() { db.Close(); os.RemoveAll(dir) }
		var ver string
		_ = db.QueryRowContext(ctx, "SELECT sqlite_version()").Scan(&ver)
		repo, err := newVersionedRepo(ctx, db, false)
		if err != nil {
			closeFn()
			return nil, "", nil, err
		}
		return repo, "SQLite " + ver + " (modernc.org/sqlite, embedded, temporary file)", closeFn, nil
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, "", nil, err
	}
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	var ver string
	if err := db.QueryRowContext(ctx, "SHOW server_version").Scan(&ver); err != nil {
		db.Close()
		return nil, "", nil, fmt.Errorf("postgres: %w", err)
	}
	repo, err := newVersionedRepo(ctx, db, true)
	if err != nil {
		db.Close()
		return nil, "", nil, err
	}
	return repo, "PostgreSQL " + ver + " (pgx)", func() {
		_, _ = db.ExecContext(context.Background(), "DROP TABLE IF EXISTS "+repoTable)
		db.Close()
	}, nil
}
