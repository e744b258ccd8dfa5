package cacheaside

import (
	"context"
	"fmt"
	"net/mail"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// User is the entity a UserService caches. It is stored in the cache as its
// JSON encoding, so any other reader of the cache sees ordinary JSON.
type User struct {
	ID       int       `json:"id" db:"id"`
	Name     string    `json:"name" db:"name"`
	Email    string    `json:"email" db:"email"`
	CreateAt time.Time `json:"created_at" db:"created_at"`
}

// UserRepository is the source of truth for users, typically a SQL table.
//
// Implementations report a missing user with an error for which
// errors.Is(err, ErrUserNotFound) is true (wrapping it is fine), from
// GetUser, UpdateUser and DeleteUser alike. CreateUser assigns the ID when
// user.ID is 0 and CreateAt when it is the zero time, writing both back into
// *user, and reports ErrUserExists for an ID that is taken. The service
// validates input before it calls the repository, and never passes a nil
// user.
type UserRepository interface {
	GetUser(ctx context.Context, id int) (*User, error)
	CreateUser(ctx context.Context, user *User) error
	UpdateUser(ctx context.Context, user *User) error
	DeleteUser(ctx context.Context, id int) error
}

// BatchUserRepository is an optional interface that a UserRepository may
// implement to read many users in one query (WHERE id = ANY($1), say).
// NewUserService checks for it once; when present, GetUsersBatch loads all
// of a batch's cache misses with one call instead of one call per ID.
//
// GetUsers returns a slice aligned with ids, with nil where no user exists;
// a missing user is not an error.
type BatchUserRepository interface {
	GetUsers(ctx context.Context, ids []int) ([]*User, error)
}

// UserUpdateReturner is an optional interface that a UserRepository may
// implement to return the user as it stored it (UPDATE ... RETURNING, say).
// UpdateUser checks for it; with it, UpdateUser leaves that row in the cache
// in place of the write's marker, rather than deleting the key, so the next
// read is a hit instead of a load. The row must be exactly what GetUser
// would return after the update, and it must carry the ID it was updated
// under. SQLRepository and MemoryRepository do the same without such a
// method: a type that embeds one of them and overrides UpdateUser (to
// trace or audit writes, say) would otherwise have its UpdateUser bypassed
// by a promoted UpdateUserReturning. A type of your own that implements
// this interface must keep the two methods in step itself.
type UserUpdateReturner interface {
	UpdateUserReturning(ctx context.Context, user *User) (*User, error)
}

// updateReturning returns db's way to update a user and return the row as
// stored, or nil if it has none (see UserUpdateReturner).
func updateReturning(db UserRepository) func(ctx context.Context, user *User) (*User, error) {
	switch r := db.(type) {
	case UserUpdateReturner:
		return r.UpdateUserReturning
	case *SQLRepository: // its UpdateUser sets CreateAt from the row
		return returnsStored(r.UpdateUser)
	case *MemoryRepository: // likewise, from the stored user
		return returnsStored(r.UpdateUser)
	}
	return nil
}

// returnsStored turns an UpdateUser that leaves the user as stored in its
// argument into one that returns a copy of it. The built-in repositories
// offer theirs this way, not by a method, so that a type that embeds one
// and overrides UpdateUser (to trace or audit writes, say) is never
// bypassed by a promoted method (see UserUpdateReturner).
func returnsStored(update func(ctx context.Context, user *User) error) func(ctx context.Context, user *User) (*User, error) {
	return func(ctx context.Context, user *User) (*User, error) {
		if err := update(ctx, user); err != nil {
			return nil, err
		}
		stored := *user
		return &stored, nil
	}
}

// UserCacheTTL is how long a UserService caches a user when WithTTL does
// not say otherwise.
const UserCacheTTL = 1 * time.Hour

// userKeyPrefix starts the cache key of every user.
const userKeyPrefix = "user:"

// userCacheKey returns the cache key of a user, "user:<id>".
func userCacheKey(id int) string { return userKeyPrefix + strconv.Itoa(id) }

// allUsersCacheKey returns the cache key of the list of all users.
func allUsersCacheKey() string { return "users:all" }

// defaultRelatedKeys returns the keys that a write to user id invalidates
// besides the user's own key: the list of all users, and the user's posts
// and statistics.
func defaultRelatedKeys(id int) []string {
	s := strconv.Itoa(id)
	return []string{allUsersCacheKey(), "user_posts:" + s, "user_stats:" + s}
}

// validateID reports ErrInvalidUser for an ID of zero or less.
func validateID(id int) error {
	if id <= 0 {
		return fmt.Errorf("%w: id %d is not positive", ErrInvalidUser, id)
	}
	return nil
}

// validateUser checks what a write needs: a name, a well-formed email, valid
// UTF-8 (JSON would silently replace invalid bytes, so they could not round
// trip), and an ID that is positive, or zero when newID allows the
// repository to assign one.
func validateUser(u *User, newID bool) error {
	if u == nil {
		return fmt.Errorf("%w: nil user", ErrInvalidUser)
	}
	if u.ID < 0 || (u.ID == 0 && !newID) {
		return fmt.Errorf("%w: id %d is not positive", ErrInvalidUser, u.ID)
	}
	if strings.TrimSpace(u.Name) == "" {
		return fmt.Errorf("%w: empty name", ErrInvalidUser)
	}
	if !utf8.ValidString(u.Name) {
		return fmt.Errorf("%w: name is not valid UTF-8", ErrInvalidUser)
	}
	if strings.IndexByte(u.Name, 0) >= 0 {
		return fmt.Errorf("%w: name contains a NUL character, which SQL text columns cannot hold", ErrInvalidUser)
	}
	if !validEmail(u.Email) {
		return fmt.Errorf("%w: malformed email %q", ErrInvalidUser, u.Email)
	}
	return nil
}

// validEmail accepts a bare RFC 5322 address with a dotted domain, such as
// "ann@example.com", and rejects display names, angle brackets and
// surrounding space.
func validEmail(s string) bool {
	if s == "" || len(s) > 254 || !utf8.ValidString(s) {
		return false
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Name != "" || a.Address != s {
		return false
	}
	at := strings.LastIndexByte(s, '@')
	domain := s[at+1:]
	return at > 0 && strings.Contains(domain, ".") && !strings.HasPrefix(domain, ".") && !strings.HasSuffix(domain, ".")
}
