package cacheaside

import (
	"context"
	"fmt"
	"time"

	"github.com/cacheaside/cacheaside/internal/memrepo"
)

var (
	_ UserRepository      = (*MemoryRepository)(nil)
	_ BatchUserRepository = (*MemoryRepository)(nil)
)

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
		return nil, ErrUserNotFound
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
	want := user.ID
	if want == 0 {
		want = r.s.Reserve()
	}
	if err := BeforeUserVisible(ctx, want); err != nil {
		return err
	}
	id, ok := r.s.Insert(want, func(id int) User {
		u := *user
		u.ID = id
		return u
	})
	if !ok {
		return ErrUserExists
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
		return ErrUserNotFound
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
		return ErrUserNotFound
	}
	return nil
}

// Len reports how many users the repository holds.
func (r *MemoryRepository) Len() int { return r.s.Len() }

// ListUserIDs calls fn with every user's ID, in batches of up to 10,000
// (see UserIDLister).
func (r *MemoryRepository) ListUserIDs(ctx context.Context, fn func(ids []int) error) error {
	ids := r.s.IDs()
	for lo := 0; lo < len(ids); lo += 10_000 {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(ids[lo:min(lo+10_000, len(ids))]); err != nil {
			return err
		}
	}
	return nil
}
