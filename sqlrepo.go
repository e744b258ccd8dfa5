package cacheaside

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

var (
	_ UserRepository      = (*SQLRepository)(nil)
	_ BatchUserRepository = (*SQLRepository)(nil)
)

// Dialect names the SQL flavour a SQLRepository speaks.
type Dialect int

const (
	// PostgreSQL is spoken through any database/sql driver for it, such as
	// github.com/jackc/pgx/v5/stdlib ("pgx").
	PostgreSQL Dialect = iota + 1
	// SQLite is spoken through any database/sql driver for SQLite 3.35 or
	// later, such as the pure-Go modernc.org/sqlite ("sqlite").
	SQLite
)

func (d Dialect) String() string {
	switch d {
	case PostgreSQL:
		return "postgresql"
	case SQLite:
		return "sqlite"
	}
	return "dialect(" + strconv.Itoa(int(d)) + ")"
}

// SQLRepository is a UserRepository and BatchUserRepository over
// database/sql, for PostgreSQL and SQLite. It imports no driver: open the
// *sql.DB with the driver of your choice and pass it in.
//
// Users live in one table (default "users") with the columns id (an
// auto-assigned 64-bit key), name, email and created_at; NewSQLRepository
// creates it if absent. Every query is parameterised, so names and emails
// round-trip exactly whatever they hold. Its methods are safe for
// concurrent use, as *sql.DB is.
type SQLRepository struct {
	db      *sql.DB
	dialect Dialect
	table   string
	q       sqlQueries
}

type sqlQueries struct {
	get, insertAuto, insertID, update, del, syncSeq string
}

// A SQLOption configures a SQLRepository.
type SQLOption func(*sqlOptions)

type sqlOptions struct {
	table string
}

// WithTable stores users in the named table instead of "users". The name
// must be a plain SQL identifier (letters, digits and underscores, not
// starting with a digit), optionally qualified by a schema ("app.users").
func WithTable(name string) SQLOption {
	return func(o *sqlOptions) { o.table = name }
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$`)

// sqlBatchChunk caps the IDs of one batch query, well under SQLite's
// variable limit.
const sqlBatchChunk = 500

// NewSQLRepository returns a repository over db in the given dialect and
// creates its table if absent. It returns ErrNotConfigured for a nil db,
// ErrInvalidArgument for an unknown dialect or a bad table name, and the
// database's error, wrapped, if the table cannot be created.
//
// With SQLite, mind what database/sql's pool does to an in-memory database:
// sql.Open("sqlite", ":memory:") gives each pooled connection its own
// empty database, so the table created here is missing on the others and
// concurrent reads fail with "no such table". Use a file
// ("file:/path/users.db"), a shared in-memory database
// ("file::memory:?cache=shared"), or a single connection
// (db.SetMaxOpenConns(1)).
func NewSQLRepository(ctx context.Context, db *sql.DB, dialect Dialect, opts ...SQLOption) (*SQLRepository, error) {
	o := sqlOptions{table: "users"}
	for _, opt := range opts {
		opt(&o)
	}
	if db == nil {
		return nil, fmt.Errorf("%w: nil *sql.DB", ErrNotConfigured)
	}
	if !identRE.MatchString(o.table) {
		return nil, fmt.Errorf("%w: table name %q is not a plain SQL identifier", ErrInvalidArgument, o.table)
	}
	r := &SQLRepository{db: db, dialect: dialect, table: o.table}
	t := o.table
	var create string
	switch dialect {
	case PostgreSQL:
		create = `CREATE TABLE IF NOT EXISTS ` + t + ` (
			id BIGSERIAL PRIMARY KEY,
			name TEXT NOT NULL,
			email TEXT NOT NULL,
			created_at TIMESTAMPTZ NOT NULL)`
		r.q = sqlQueries{
			get:        `SELECT id, name, email, created_at FROM ` + t + ` WHERE id = $1`,
			insertAuto: `INSERT INTO ` + t + ` (name, email, created_at) VALUES ($1, $2, $3) RETURNING id`,
			insertID:   `INSERT INTO ` + t + ` (id, name, email, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING RETURNING id`,
			update:     `UPDATE ` + t + ` SET name = $1, email = $2 WHERE id = $3 RETURNING created_at`,
			del:        `DELETE FROM ` + t + ` WHERE id = $1`,
			// An explicit ID does not move the sequence; move it past the
			// largest ID so that later automatic IDs do not collide.
			syncSeq: `SELECT setval(pg_get_serial_sequence('` + t + `', 'id'), GREATEST((SELECT MAX(id) FROM ` + t + `), 1))`,
		}
	case SQLite:
		create = `CREATE TABLE IF NOT EXISTS ` + t + ` (
			id INTEGER PRIMARY KEY AUTOINCREMENT,
			name TEXT NOT NULL,
			email TEXT NOT NULL,
			created_at INTEGER NOT NULL)`
		r.q = sqlQueries{
			get:        `SELECT id, name, email, created_at FROM ` + t + ` WHERE id = ?`,
			insertAuto: `INSERT INTO ` + t + ` (name, email, created_at) VALUES (?, ?, ?) RETURNING id`,
			insertID:   `INSERT INTO ` + t + ` (id, name, email, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING id`,
			update:     `UPDATE ` + t + ` SET name = ?, email = ? WHERE id = ? RETURNING created_at`,
			del:        `DELETE FROM ` + t + ` WHERE id = ?`,
		}
	default:
		return nil, fmt.Errorf("%w: unknown SQL dialect %v", ErrInvalidArgument, dialect)
	}
	if _, err := db.ExecContext(ctx, create); err != nil {
		return nil, wrapErr("CREATE TABLE "+t, err)
	}
	return r, nil
}

// DB returns the database the repository runs on.
func (r *SQLRepository) DB() *sql.DB { return r.db }

// Dialect returns the dialect the repository speaks.
func (r *SQLRepository) Dialect() Dialect { return r.dialect }

// Table returns the table the users are stored in.
func (r *SQLRepository) Table() string { return r.table }

// timeArg is how created_at is written: a timestamp on PostgreSQL, Unix
// microseconds on SQLite, whose drivers disagree on timestamp formats.
func (r *SQLRepository) timeArg(t time.Time) any {
	if r.dialect == SQLite {
		return t.UnixMicro()
	}
	return t
}

// timeScan is a scan destination for created_at in either form.
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
// ErrUserNotFound.
func (r *SQLRepository) GetUser(ctx context.Context, id int) (*User, error) {
	var u User
	var ts timeScan
	err := r.db.QueryRowContext(ctx, r.q.get, id).Scan(&u.ID, &u.Name, &u.Email, &ts)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrUserNotFound
	}
	if err != nil {
		return nil, wrapErr("SELECT "+r.table, err)
	}
	u.CreateAt = ts.t
	return &u, nil
}

// GetUsers returns the users with the given IDs, aligned with ids, with nil
// for IDs that no user has. It sends one query per 500 IDs: WHERE id =
// ANY($1) on PostgreSQL, WHERE id IN (?, ...) on SQLite.
func (r *SQLRepository) GetUsers(ctx context.Context, ids []int) ([]*User, error) {
	out := make([]*User, len(ids))
	at := make(map[int][]int, len(ids)) // id -> positions in ids
	for i, id := range ids {
		at[id] = append(at[id], i)
	}
	uniq := make([]int64, 0, len(at))
	for id := range at {
		uniq = append(uniq, int64(id))
	}
	for lo := 0; lo < len(uniq); lo += sqlBatchChunk {
		chunk := uniq[lo:min(lo+sqlBatchChunk, len(uniq))]
		var query string
		var args []any
		if r.dialect == PostgreSQL {
			query = `SELECT id, name, email, created_at FROM ` + r.table + ` WHERE id = ANY($1)`
			args = []any{chunk}
		} else {
			query = `SELECT id, name, email, created_at FROM ` + r.table + ` WHERE id IN (?` + strings.Repeat(", ?", len(chunk)-1) + `)`
			args = make([]any, len(chunk))
			for i, id := range chunk {
				args[i] = id
			}
		}
		if err := r.scanInto(ctx, query, args, at, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (r *SQLRepository) scanInto(ctx context.Context, query string, args []any, at map[int][]int, out []*User) error {
	rows, err := r.db.QueryContext(ctx, query, args...)
	if err != nil {
		return wrapErr("SELECT "+r.table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var u User
		var ts timeScan
		if err := rows.Scan(&u.ID, &u.Name, &u.Email, &ts); err != nil {
			return wrapErr("SELECT "+r.table, err)
		}
		u.CreateAt = ts.t
		for n, i := range at[u.ID] {
			if n == 0 {
				out[i] = &u
			} else {
				c := u
				out[i] = &c
			}
		}
	}
	if err := rows.Err(); err != nil {
		return wrapErr("SELECT "+r.table, err)
	}
	return nil
}

// checkStored rejects what a SQL text column cannot hold exactly.
func checkStored(u *User) error {
	if u == nil {
		return fmt.Errorf("%w: nil user", ErrInvalidUser)
	}
	if u.ID < 0 {
		return fmt.Errorf("%w: negative id %d", ErrInvalidUser, u.ID)
	}
	for _, f := range []struct{ name, v string }{{"name", u.Name}, {"email", u.Email}} {
		if strings.IndexByte(f.v, 0) >= 0 {
			return fmt.Errorf("%w: %s contains a NUL character", ErrInvalidUser, f.name)
		}
		if !utf8.ValidString(f.v) {
			return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidUser, f.name)
		}
	}
	return nil
}

// CreateUser inserts user. An ID of 0 is assigned by the database and
// written back into user, as is CreateAt when it is zero (UTC, microsecond
// precision). It returns ErrUserExists for an ID that is taken and
// ErrInvalidUser for a nil user, a negative ID, or a name or email that
// holds a NUL character or invalid UTF-8.
func (r *SQLRepository) CreateUser(ctx context.Context, user *User) error {
	if err := checkStored(user); err != nil {
		return err
	}
	created := user.CreateAt
	if created.IsZero() {
		created = time.Now()
	}
	created = created.UTC().Truncate(time.Microsecond)
	var id int64
	var err error
	if user.ID == 0 {
		err = r.db.QueryRowContext(ctx, r.q.insertAuto, user.Name, user.Email, r.timeArg(created)).Scan(&id)
	} else {
		err = r.db.QueryRowContext(ctx, r.q.insertID, user.ID, user.Name, user.Email, r.timeArg(created)).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrUserExists
		}
		if err == nil && r.q.syncSeq != "" {
			if _, serr := r.db.ExecContext(ctx, r.q.syncSeq); serr != nil {
				return wrapErr(fmt.Sprintf("user %d inserted, but the ID sequence of %s could not be moved", id, r.table), serr)
			}
		}
	}
	if err != nil {
		return wrapErr("INSERT "+r.table, err)
	}
	user.ID = int(id)
	user.CreateAt = created
	return nil
}

// UpdateUser replaces the name and email of the user with user.ID and writes
// the stored CreateAt back into user; CreateAt itself never changes. It
// returns ErrUserNotFound when no user has the ID, and ErrInvalidUser as
// CreateUser does.
func (r *SQLRepository) UpdateUser(ctx context.Context, user *User) error {
	if err := checkStored(user); err != nil {
		return err
	}
	var ts timeScan
	err := r.db.QueryRowContext(ctx, r.q.update, user.Name, user.Email, user.ID).Scan(&ts)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrUserNotFound
	}
	if err != nil {
		return wrapErr("UPDATE "+r.table, err)
	}
	user.CreateAt = ts.t
	return nil
}

// DeleteUser removes the user with the given ID, or returns ErrUserNotFound.
func (r *SQLRepository) DeleteUser(ctx context.Context, id int) error {
	res, err := r.db.ExecContext(ctx, r.q.del, id)
	if err != nil {
		return wrapErr("DELETE "+r.table, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return ErrUserNotFound
	}
	return nil
}
