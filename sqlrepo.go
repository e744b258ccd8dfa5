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
	_ Outbox              = (*SQLRepository)(nil)
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

// SQLRepository is a UserRepository, BatchUserRepository and Outbox over
// database/sql, for PostgreSQL and SQLite. It imports no driver: open the
// *sql.DB with the driver of your choice and pass it in.
//
// Users live in one table (default "users") with the columns id (an
// auto-assigned 64-bit key), name, email and created_at; NewSQLRepository
// creates it if absent. Every query is parameterised, so names and emails
// round-trip exactly whatever they hold. Its methods are safe for
// concurrent use, as *sql.DB is.
//
// Every write also records, in the same transaction, the ID of the user it
// changed in the outbox table "<table>_outbox" (seq, user_id, recorded_at),
// so that a UserService can delete the user's cache keys even if the
// process that wrote crashed before it could (see Outbox). On PostgreSQL
// the write and its record are one statement.
type SQLRepository struct {
	db      *sql.DB
	dialect Dialect
	table   string
	outbox  string
	q       sqlQueries
}

type sqlQueries struct {
	get, insertAuto, insertID, update, del, syncSeq string
	record                                          string // SQLite: the outbox record of a write
	pending, clear                                  string
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
// With SQLite, mind what database/sql's pool does. An in-memory database
// opened as sql.Open("sqlite", ":memory:") is a different, empty database
// on each pooled connection, so the table created here is missing on the
// others and concurrent reads fail with "no such table": use a file
// ("file:/path/users.db"), a shared in-memory database
// ("file::memory:?cache=shared"), or a single connection
// (db.SetMaxOpenConns(1)). And connections that meet a write in progress
// fail at once with SQLITE_BUSY unless the database has a busy timeout: with
// modernc.org/sqlite, add "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)"
// to the file name (a UserService writes the outbox in the background).
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
	r := &SQLRepository{db: db, dialect: dialect, table: o.table, outbox: o.table + "_outbox"}
	if !identRE.MatchString(r.outbox) {
		return nil, fmt.Errorf("%w: table name %q leaves no room for its outbox %q", ErrInvalidArgument, o.table, r.outbox)
	}
	t, ob := r.table, r.outbox
	var create []string
	switch dialect {
	case PostgreSQL:
		create = []string{`CREATE TABLE IF NOT EXISTS ` + t + ` (
			id BIGSERIAL PRIMARY KEY,
			name TEXT NOT NULL,
			email TEXT NOT NULL,
			created_at TIMESTAMPTZ NOT NULL)`, `CREATE TABLE IF NOT EXISTS ` + ob + ` (
			seq BIGSERIAL PRIMARY KEY,
			user_id BIGINT NOT NULL,
			recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())`}
		// Each write and its outbox record are one statement: a CTE that
		// writes, then records the ID of the row it wrote, if any.
		logged := func(write, returning, result string) string {
			return `WITH w AS (` + write + ` RETURNING id` + returning + `), o AS (INSERT INTO ` + ob +
				` (user_id) SELECT id FROM w RETURNING seq) SELECT ` + result + `o.seq FROM w, o`
		}
		r.q = sqlQueries{
			get:        `SELECT id, name, email, created_at FROM ` + t + ` WHERE id = $1`,
			insertAuto: logged(`INSERT INTO `+t+` (name, email, created_at) VALUES ($1, $2, $3)`, ``, `w.id, `),
			insertID:   logged(`INSERT INTO `+t+` (id, name, email, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`, ``, `w.id, `),
			update:     logged(`UPDATE `+t+` SET name = $1, email = $2 WHERE id = $3`, `, created_at`, `w.created_at, `),
			del:        logged(`DELETE FROM `+t+` WHERE id = $1`, ``, ``),
			// An explicit ID does not move the sequence; move it past the
			// largest ID so that later automatic IDs do not collide.
			syncSeq: `SELECT setval(pg_get_serial_sequence('` + t + `', 'id'), GREATEST((SELECT MAX(id) FROM ` + t + `), 1))`,
			pending: `SELECT seq, user_id FROM ` + ob + ` WHERE recorded_at <= now() - $1 * interval '1 microsecond' ORDER BY seq LIMIT $2`,
			clear:   `DELETE FROM ` + ob + ` WHERE seq = ANY($1)`,
		}
	case SQLite:
		create = []string{`CREATE TABLE IF NOT EXISTS ` + t + ` (
			id INTEGER PRIMARY KEY AUTOINCREMENT,
			name TEXT NOT NULL,
			email TEXT NOT NULL,
			created_at INTEGER NOT NULL)`, `CREATE TABLE IF NOT EXISTS ` + ob + ` (
			seq INTEGER PRIMARY KEY AUTOINCREMENT,
			user_id INTEGER NOT NULL,
			recorded_at INTEGER NOT NULL)`}
		r.q = sqlQueries{
			get:        `SELECT id, name, email, created_at FROM ` + t + ` WHERE id = ?`,
			insertAuto: `INSERT INTO ` + t + ` (name, email, created_at) VALUES (?, ?, ?) RETURNING id`,
			insertID:   `INSERT INTO ` + t + ` (id, name, email, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING id`,
			update:     `UPDATE ` + t + ` SET name = ?, email = ? WHERE id = ? RETURNING created_at`,
			del:        `DELETE FROM ` + t + ` WHERE id = ? RETURNING id`,
			record:     `INSERT INTO ` + ob + ` (user_id, recorded_at) VALUES (?, ?) RETURNING seq`,
			pending:    `SELECT seq, user_id FROM ` + ob + ` WHERE recorded_at <= ? ORDER BY seq LIMIT ?`,
		}
	default:
		return nil, fmt.Errorf("%w: unknown SQL dialect %v", ErrInvalidArgument, dialect)
	}
	for _, stmt := range create {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return nil, wrapErr("CREATE TABLE", err)
		}
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
		err = r.write(ctx, r.q.insertAuto, []any{user.Name, user.Email, r.timeArg(created)}, &id, &id)
	} else {
		err = r.write(ctx, r.q.insertID, []any{user.ID, user.Name, user.Email, r.timeArg(created)}, &id, &id)
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
	id := int64(user.ID)
	var ts timeScan
	err := r.write(ctx, r.q.update, []any{user.Name, user.Email, user.ID}, &id, &ts)
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
	uid := int64(id)
	var got int64
	err := r.write(ctx, r.q.del, []any{id}, &uid, sqliteOnly(r, &got)...)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrUserNotFound
	}
	if err != nil {
		return wrapErr("DELETE "+r.table, err)
	}
	return nil
}

// sqliteOnly returns dest on SQLite, whose delete returns the ID it
// deleted, and nothing on PostgreSQL, whose logged delete returns only the
// outbox record.
func sqliteOnly(r *SQLRepository, dest ...any) []any {
	if r.dialect == SQLite {
		return dest
	}
	return nil
}

// write runs one write statement that returns a row, scanned into dest, and
// records the change of the user *id in the outbox in the same
// transaction; it reports sql.ErrNoRows, recording nothing, when the
// statement wrote no row. On PostgreSQL the statement records the change
// itself and returns the record's number after dest; on SQLite a second
// statement in a transaction records it. Once committed, the record is
// reported to the UserService that made the write (RecordInvalidation).
func (r *SQLRepository) write(ctx context.Context, stmt string, args []any, id *int64, dest ...any) error {
	var seq int64
	_, announce := ctx.Value(createHookKey{}).(*createHook) // a create with a Bloom filter
	if r.dialect == PostgreSQL && !announce {
		if err := r.db.QueryRowContext(ctx, stmt, args...).Scan(append(dest, &seq)...); err != nil {
			return err
		}
		RecordInvalidation(ctx, seq)
		return nil
	}
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // a no-op after Commit
	if r.dialect == PostgreSQL {
		if err := tx.QueryRowContext(ctx, stmt, args...).Scan(append(dest, &seq)...); err != nil {
			return err
		}
	} else {
		if err := tx.QueryRowContext(ctx, stmt, args...).Scan(dest...); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, r.q.record, *id, time.Now().UnixMicro()).Scan(&seq); err != nil {
			return err
		}
	}
	if announce { // the new user's ID, before it is visible
		if err := BeforeUserVisible(ctx, int(*id)); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	RecordInvalidation(ctx, seq)
	return nil
}

// PendingInvalidations returns up to limit outbox records, oldest first,
// recorded at least olderThan ago by the database's clock (the process's,
// for SQLite, which runs in it).
func (r *SQLRepository) PendingInvalidations(ctx context.Context, olderThan time.Duration, limit int) ([]Invalidation, error) {
	var rows *sql.Rows
	var err error
	if r.dialect == PostgreSQL {
		rows, err = r.db.QueryContext(ctx, r.q.pending, olderThan.Microseconds(), limit)
	} else {
		rows, err = r.db.QueryContext(ctx, r.q.pending, time.Now().Add(-olderThan).UnixMicro(), limit)
	}
	if err != nil {
		return nil, wrapErr("SELECT "+r.outbox, err)
	}
	defer rows.Close()
	var out []Invalidation
	for rows.Next() {
		var inv Invalidation
		if err := rows.Scan(&inv.Seq, &inv.UserID); err != nil {
			return nil, wrapErr("SELECT "+r.outbox, err)
		}
		out = append(out, inv)
	}
	if err := rows.Err(); err != nil {
		return nil, wrapErr("SELECT "+r.outbox, err)
	}
	return out, nil
}

// ClearInvalidations deletes the outbox records with the given sequence
// numbers.
func (r *SQLRepository) ClearInvalidations(ctx context.Context, seqs []int64) error {
	for lo := 0; lo < len(seqs); lo += sqlBatchChunk {
		chunk := seqs[lo:min(lo+sqlBatchChunk, len(seqs))]
		var err error
		if r.dialect == PostgreSQL {
			_, err = r.db.ExecContext(ctx, r.q.clear, chunk)
		} else {
			args := make([]any, len(chunk))
			for i, s := range chunk {
				args[i] = s
			}
			_, err = r.db.ExecContext(ctx, `DELETE FROM `+r.outbox+` WHERE seq IN (?`+strings.Repeat(", ?", len(chunk)-1)+`)`, args...)
		}
		if err != nil {
			return wrapErr("DELETE "+r.outbox, err)
		}
	}
	return nil
}

// ListUserIDs calls fn with every user's ID, in ascending batches of up to
// 10,000, one query each (see UserIDLister).
func (r *SQLRepository) ListUserIDs(ctx context.Context, fn func(ids []int) error) error {
	q := `SELECT id FROM ` + r.table + ` WHERE id > ? ORDER BY id LIMIT 10000`
	if r.dialect == PostgreSQL {
		q = `SELECT id FROM ` + r.table + ` WHERE id > $1 ORDER BY id LIMIT 10000`
	}
	after := 0
	for {
		rows, err := r.db.QueryContext(ctx, q, after)
		if err != nil {
			return wrapErr("SELECT "+r.table, err)
		}
		ids := make([]int, 0, 10_000)
		for rows.Next() {
			var id int
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return wrapErr("SELECT "+r.table, err)
			}
			ids = append(ids, id)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return wrapErr("SELECT "+r.table, err)
		}
		if len(ids) == 0 {
			return nil
		}
		if err := fn(ids); err != nil {
			return err
		}
		after = ids[len(ids)-1]
	}
}
