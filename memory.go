package cacheaside

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cacheaside/cacheaside/internal/memcache"
	"github.com/cacheaside/cacheaside/internal/memrepo"
)

var (
	_ CacheClient         = (*MemoryCache)(nil)
	_ MultiGetter         = (*MemoryCache)(nil)
	_ Sizer               = (*MemoryCache)(nil)
	_ Leaser              = (*MemoryCache)(nil)
	_ UserRepository      = (*MemoryRepository)(nil)
	_ BatchUserRepository = (*MemoryRepository)(nil)
)

// MemoryCache is a CacheClient that keeps JSON-encoded values in process
// memory with per-entry TTLs, for tests, examples and single-instance
// programs. Values are stored encoded, so readers never share memory with
// writers. It also implements MultiGetter, Sizer and Leaser (so fills are
// guarded by leases exactly as with Redis), and starts no
// goroutine: expired entries are dropped as they are met and swept every
// 1,024 writes.
type MemoryCache struct {
	c *memcache.Cache
}

// A MemoryOption configures a MemoryCache.
type MemoryOption func(*memoryOptions)

type memoryOptions struct {
	now func() time.Time
}

// WithClock makes the cache read the time from now instead of time.Now, so
// tests can expire entries without sleeping.
func WithClock(now func() time.Time) MemoryOption {
	return func(o *memoryOptions) { o.now = now }
}

// NewMemoryCache returns an empty in-memory cache.
func NewMemoryCache(opts ...MemoryOption) *MemoryCache {
	var o memoryOptions
	for _, opt := range opts {
		opt(&o)
	}
	return &MemoryCache{c: memcache.New(o.now)}
}

// GetJSON decodes the value under key into dest, or returns ErrCacheMiss.
// An entry that does not decode into dest is reported as ErrDecode.
func (m *MemoryCache) GetJSON(ctx context.Context, key string, dest any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, ok := m.c.Get(key)
	if !ok {
		return ErrCacheMiss
	}
	return decodeJSON(key, b, dest)
}

// SetJSON stores the JSON encoding of value under key for ttl (no expiry
// when ttl <= 0).
func (m *MemoryCache) SetJSON(ctx context.Context, key string, value any, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := encodeJSON(value)
	if err != nil {
		return err
	}
	m.c.Set(key, b, ttl)
	return nil
}

// Delete removes keys.
func (m *MemoryCache) Delete(ctx context.Context, keys ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.c.Delete(keys...)
	return nil
}

// GetMulti returns the encoded values under keys, aligned with keys, with
// nil for misses.
func (m *MemoryCache) GetMulti(ctx context.Context, keys []string) ([]json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return toRaw(m.c.GetMulti(keys)), nil
}

// SetNX stores val under key for ttl if the key is empty and returns nil;
// otherwise it returns what the key holds.
func (m *MemoryCache) SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	held, _ := m.c.SetNX(key, val, ttl)
	return held, nil
}

// CompareAndSwap replaces key's value with val for ttl if the key holds
// exactly old, or deletes it when val is nil, and reports whether it did.
func (m *MemoryCache) CompareAndSwap(ctx context.Context, key string, old, val []byte, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	return m.c.CompareAndSwap(key, old, val, ttl), nil
}

// Len reports how many unexpired entries the cache holds.
func (m *MemoryCache) Len() int64 { return int64(m.c.Len()) }

// MemoryRepository is a UserRepository that keeps users in process memory,
// for tests, examples and the quickstart. It assigns IDs from 1 upwards and
// implements BatchUserRepository. Every call returns its own copy.
type MemoryRepository struct {
	s   *memrepo.Store[User]
	now func() time.Time
}

// NewMemoryRepository returns an empty repository.
func NewMemoryRepository() *MemoryRepository {
	return &MemoryRepository{s: memrepo.New[User](), now: time.Now}
}

// GetUser returns the user with the given ID, or ErrUserNotFound.
func (r *MemoryRepository) GetUser(ctx context.Context, id int) (*User, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	u, ok := r.s.Get(id)
	if !ok {
		return nil, fmt.Errorf("%w: id %d", ErrUserNotFound, id)
	}
	return &u, nil
}

// GetUsers returns the users with the given IDs, aligned with ids, with nil
// for IDs that no user has.
func (r *MemoryRepository) GetUsers(ctx context.Context, ids []int) ([]*User, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	vals, found := r.s.GetMany(ids)
	out := make([]*User, len(ids))
	for i := range vals {
		if found[i] {
			out[i] = &vals[i]
		}
	}
	return out, nil
}

// CreateUser stores a copy of user, assigning user.ID when it is 0 and
// user.CreateAt (UTC, microsecond precision, as a SQL timestamp keeps it)
// when it is zero. It returns ErrUserExists for an ID that is taken and
// ErrInvalidUser for a nil user or a negative ID.
func (r *MemoryRepository) CreateUser(ctx context.Context, user *User) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if user == nil || user.ID < 0 {
		return fmt.Errorf("%w: nil user or negative id", ErrInvalidUser)
	}
	if user.CreateAt.IsZero() {
		user.CreateAt = r.now().UTC().Truncate(time.Microsecond)
	}
	id, ok := r.s.Insert(user.ID, func(id int) User {
		u := *user
		u.ID = id
		return u
	})
	if !ok {
		return fmt.Errorf("%w: id %d", ErrUserExists, id)
	}
	user.ID = id
	return nil
}

// UpdateUser replaces the name and email of the user with user.ID and writes
// the stored CreateAt back into user; CreateAt itself never changes. It
// returns ErrUserNotFound when no user has the ID.
func (r *MemoryRepository) UpdateUser(ctx context.Context, user *User) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if user == nil {
		return fmt.Errorf("%w: nil user", ErrInvalidUser)
	}
	var created time.Time
	ok := r.s.Update(user.ID, func(old User) User {
		created = old.CreateAt
		u := *user
		u.CreateAt = old.CreateAt
		return u
	})
	if !ok {
		return fmt.Errorf("%w: id %d", ErrUserNotFound, user.ID)
	}
	user.CreateAt = created
	return nil
}

// DeleteUser removes the user with the given ID, or returns ErrUserNotFound.
func (r *MemoryRepository) DeleteUser(ctx context.Context, id int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !r.s.Delete(id) {
		return fmt.Errorf("%w: id %d", ErrUserNotFound, id)
	}
	return nil
}

// Len reports how many users the repository holds.
func (r *MemoryRepository) Len() int { return r.s.Len() }
