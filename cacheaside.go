package cacheaside

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// UserService serves users from a cache in front of a UserRepository with
// the cache-aside pattern: reads try the cache, load misses once per key and
// fill the cache before returning; writes go to the repository first and
// then invalidate the user's keys. It is a thin client of an Aside: it
// validates input, names the keys, and passes the rest through.
//
// It is safe for concurrent use. Call Close when done with it: it stops
// the retries of invalidations that failed and the draining of an Outbox
// repository, the only work it does in the background.
type UserService struct {
	db      UserRepository
	users   *Aside[int, User]
	related func(id int) []string // keys a write invalidates besides user:<id>
	outbox  *outboxDrainer        // nil unless db implements Outbox
	bloom   *bloomFilter          // nil without WithBloomFilter
}

// NewUserService returns a service that reads users from cache before db.
// With no options it caches users for UserCacheTTL (less up to 10% jitter),
// caches "not found" for DefaultNegativeTTL, bounds each shared load by
// DefaultLoadTimeout and logs nothing.
//
// db is checked once for BatchUserRepository and cache for MultiGetter,
// Leaser and Sizer. A nil cache caches nothing (every read goes to db); with
// a nil db every method returns an error wrapping ErrNotConfigured. Options
// with a bad value panic (see Option).
func NewUserService(db UserRepository, cache CacheClient, opts ...UserOption) *UserService {
	uo := userOptions{options: defaultOptions(UserCacheTTL), related: defaultRelatedKeys, drain: DefaultOutboxDrain}
	for _, opt := range opts {
		opt.applyUser(&uo)
	}
	var load LoadFunc[int, User]
	if db != nil {
		load = db.GetUser
	}
	a := newAside(cache, userCacheKey, load, ErrUserNotFound, uo.options)
	a.name = "user"
	a.shallow = true // User holds no slices or maps: a value copy is a deep copy
	a.idOf = func(u *User) int { return u.ID }
	a.useIntKeys(userKeyPrefix)
	if b, ok := db.(BatchUserRepository); ok {
		a.loadMany = b.GetUsers
	}
	s := &UserService{db: db, users: a, related: uo.related}
	if box, ok := db.(Outbox); ok {
		s.outbox = &outboxDrainer{box: box, every: uo.drain}
		s.outbox.lock, _ = cache.(Locker)
		a.landed = s.cleared
	}
	if bs, ok := cache.(bloomStore); ok && uo.bloom != nil {
		s.bloom = newBloomFilter(bs, uo.bloom.expected, uo.bloom.fp)
		a.admit = func(ctx context.Context, id int) bool { return s.bloom.mayExist(ctx, a.g, id) }
	}
	a.start()
	s.buildBloomIfMissing()
	return s
}

// GetUser returns the user with the given ID, from the cache when it is
// there. On a miss, one load per ID runs at a time in this process and,
// with a Leaser cache, in the whole fleet: every concurrent caller waits for
// it on its own ctx, and the cache is filled before GetUser returns, so the
// next call is a hit.
//
// It returns ErrInvalidUser for an ID of zero or less (without touching the
// cache or the repository), ErrUserNotFound for an ID no user has, ctx.Err()
// when ctx ends first, and a *PanicError when the repository panicked.
// Cache failures are counted, logged and never returned. The *User is the
// caller's own copy.
func (s *UserService) GetUser(ctx context.Context, userID int) (*User, error) {
	if err := validateID(userID); err != nil {
		return nil, err
	}
	s.maybeDrain()
	return s.users.Get(ctx, userID)
}

// GetUsersBatch returns the users with the given IDs, aligned with userIDs,
// with nil for IDs that no user has. Cache hits come from one round trip
// when the cache implements MultiGetter; misses are loaded with one query
// when the repository implements BatchUserRepository, otherwise once per ID
// through the same shared loads as GetUser. Duplicate IDs are looked up once
// and each position gets its own copy.
//
// Any ID of zero or less fails the whole call with ErrInvalidUser before any
// I/O. Otherwise the error is nil unless a load failed for a reason other
// than "not found"; it then reads "batch load failed: N errors occurred" and
// wraps each cause, and the slice still holds the users that were read.
func (s *UserService) GetUsersBatch(ctx context.Context, userIDs []int) ([]*User, error) {
	for _, id := range userIDs {
		if err := validateID(id); err != nil {
			return nil, err
		}
	}
	s.maybeDrain()
	return s.users.GetMany(ctx, userIDs)
}

// CreateUser validates user, creates it in the repository, which assigns
// user.ID when it is 0 and user.CreateAt when it is zero, and then removes
// any cached entry for the new ID (such as a cached "not found") and the
// related keys.
//
// It returns ErrInvalidUser for a nil user, a negative ID, an empty name or a
// malformed email, without calling the repository, and the repository's
// error (ErrUserExists for a taken ID) wrapped otherwise.
func (s *UserService) CreateUser(ctx context.Context, user *User) error {
	if err := validateUser(user, true); err != nil {
		return err
	}
	return s.write(ctx, "create user", func() int { return user.ID }, func(ctx context.Context, db UserRepository) error {
		if s.bloom == nil {
			return db.CreateUser(ctx, user)
		}
		return s.createFiltered(ctx, db, user)
	})
}

// createFiltered creates user with a Bloom filter in use: the ID goes into
// the filter before the user is visible (see bloom.go).
func (s *UserService) createFiltered(ctx context.Context, db UserRepository, user *User) error {
	h := &createHook{f: s.bloom, g: s.users.g}
	if user.ID > 0 { // known before the insert
		if err := h.announce(ctx, user.ID); err != nil {
			return err
		}
	}
	if err := db.CreateUser(context.WithValue(ctx, createHookKey{}, h), user); err != nil {
		return err
	}
	h.mu.Lock()
	announced := len(h.ids) > 0
	h.mu.Unlock()
	if !announced { // a repository that does not call BeforeUserVisible
		if _, err := s.bloom.add(ctx, s.users.g, user.ID); err != nil {
			return fmt.Errorf("user %d was created, but %w", user.ID, err)
		}
		return nil
	}
	// A build that began since the add may have listed the users before
	// this insert committed: add the ID again. If that fails, the filter in
	// use has the ID, and only such a build could lack it.
	if _, err := s.bloom.add(ctx, s.users.g, user.ID); err != nil {
		s.users.log.ErrorContext(ctx, "cacheaside: a created user may be missing from the Bloom filter being built; rebuild it", "id", user.ID, "err", err)
	}
	return nil
}

// UpdateUser validates user, writes it to the repository first and then
// invalidates "user:<id>" and the related keys (see WithRelatedKeys). A read
// that starts after UpdateUser returns sees the new row: it never joins a
// load that started before the write, and such a load does not fill the
// cache. A failed invalidation is counted and logged but does not fail the
// update (the write is already durable).
//
// With a repository that implements UserUpdateReturner (SQLRepository and
// MemoryRepository do), the row as the repository stored it takes the place
// of "user:<id>" instead of a delete, when no other write of the user
// overlapped this one: the next read is a hit rather than a load (counted
// in WriteFills).
//
// It returns ErrInvalidUser for bad input without calling the repository,
// and ErrUserNotFound (wrapped) when no user has the ID.
func (s *UserService) UpdateUser(ctx context.Context, user *User) error {
	if err := validateUser(user, false); err != nil {
		return err
	}
	id := user.ID
	var stored *User
	return s.write(ctx, "update user "+strconv.Itoa(id), func() int { return id }, func(ctx context.Context, db UserRepository) error {
		if update := updateReturning(db); update != nil {
			u, err := update(ctx, user)
			stored = u
			return err
		}
		return db.UpdateUser(ctx, user)
	}, func() *User { return stored })
}

// DeleteUser deletes the user from the repository and then invalidates its
// keys like UpdateUser. It returns ErrInvalidUser for an ID of zero or less
// and ErrUserNotFound (wrapped) when no user has the ID.
func (s *UserService) DeleteUser(ctx context.Context, userID int) error {
	if err := validateID(userID); err != nil {
		return err
	}
	return s.write(ctx, "delete user "+strconv.Itoa(userID), func() int { return userID }, func(ctx context.Context, db UserRepository) error {
		return db.DeleteUser(ctx, userID)
	})
}

// write runs one repository write between a write intent on the user's
// key (see write.go) and the delete of the user's keys, failed write or
// not: a write that failed may still have been applied, and an extra delete
// only costs a miss. id reports the user's ID before and after the write (a
// create learns it from the repository). A failed delete is counted, logged
// and retried by the engine, and not returned: the write's data is already
// durable. With an Outbox, the records the write made are cleared once its
// delete has landed.
//
// stored, when given, returns the row as the repository stored it, which
// the write leaves in the cache if it can (see Aside.leaveValue).
func (s *UserService) write(ctx context.Context, op string, id func() int, do func(ctx context.Context, db UserRepository) error, stored ...func() *User) (err error) {
	if s.db == nil {
		return fmt.Errorf("%w: nil UserRepository", ErrNotConfigured)
	}
	s.maybeDrain()
	if s.users.recording {
		start := time.Now()
		defer func() {
			res := ResultOK
			if err != nil {
				res = ResultError
			}
			s.users.o.recorder.RecordWrite(ctx, strings.Fields(op)[0], res, time.Since(start))
		}()
	}
	wctx := ctx
	var rec *seqRecorder
	if s.outbox != nil {
		rec = new(seqRecorder)
		wctx = context.WithValue(ctx, seqRecorderKey{}, rec)
	}
	key := ""
	w := writeOp{id: randomID()}
	if before := id(); before > 0 { // a create with no ID yet has no entry to protect
		key = userCacheKey(before)
		if w, err = s.users.beginWriteAs(ctx, key, len(stored) > 0 && updateReturning(s.db) != nil); err != nil {
			return wrapErr(op, err)
		}
	}
	err = do(wctx, s.db)
	var seqs []int64
	if rec != nil {
		seqs = rec.take()
	}
	switch after := id(); {
	case after > 0 && userCacheKey(after) == key:
		if err == nil && len(stored) > 0 {
			if v := stored[0](); v != nil {
				s.users.leaveValue(&w, key, v)
			}
		}
		_ = s.users.endWrite(ctx, key, w, s.related(after), seqs)
	case after > 0:
		_ = s.users.invalidate(ctx, userCacheKey(after), s.related(after), seqs)
	case len(seqs) > 0:
		s.cleared(seqs)
	}
	if err != nil {
		return wrapErr(op, err)
	}
	return nil
}

// Warm loads the users with the given IDs into the cache ahead of reads:
// in batches of DefaultWarmBatch, each with one repository query (with a
// BatchUserRepository) and one cache round trip to place leases and one
// to fill, WithBatchConcurrency batches at a time, one instance of the
// fleet at a time (see Aside.Warm). Users already cached are left alone,
// and a warm never overwrites a write made meanwhile. Progress is logged
// about once a second. It returns nil when every ID was dealt with, and
// otherwise a *WarmError with the counts; an invalid ID is an error
// wrapping ErrInvalidUser, before anything is read.
func (s *UserService) Warm(ctx context.Context, userIDs []int) error {
	for _, id := range userIDs {
		if err := validateID(id); err != nil {
			return wrapErr("warm", err)
		}
	}
	_, err := s.users.Warm(ctx, userIDs)
	return err
}

// Close stops the service's background work: the retries of
// invalidations that failed (after one last attempt; those that still fail
// are logged, and an Outbox repository keeps their records for a drain)
// and the draining of an Outbox. It waits for that work to end. The
// service keeps serving after Close, without retries or drains.
func (s *UserService) Close() error {
	return s.users.Close()
}

// GetMetrics returns a snapshot of the service's counters.
func (s *UserService) GetMetrics() ServiceMetrics {
	return s.users.Metrics()
}
