package cacheaside

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateUser(t *testing.T) {
	ok := func(u User) *User { return &u }
	tests := []struct {
		name  string
		user  *User
		newID bool
		want  error
	}{
		{"valid new", ok(User{Name: "Ann", Email: "ann@example.com"}), true, nil},
		{"valid existing", ok(User{ID: 3, Name: "Ann", Email: "ann.b+tag@mail.example.co.uk"}), false, nil},
		{"unicode name", ok(User{ID: 3, Name: "Zoë 山田 🙂", Email: "z@example.com"}), false, nil},
		{"SQL metacharacters", ok(User{ID: 3, Name: `Robert'); DROP TABLE users;--`, Email: "r@example.com"}), false, nil},
		{"nil", nil, true, ErrInvalidUser},
		{"zero id on update", ok(User{Name: "Ann", Email: "ann@example.com"}), false, ErrInvalidUser},
		{"negative id", ok(User{ID: -1, Name: "Ann", Email: "ann@example.com"}), true, ErrInvalidUser},
		{"blank name", ok(User{ID: 1, Name: "\t ", Email: "ann@example.com"}), false, ErrInvalidUser},
		{"NUL in name", ok(User{ID: 1, Name: "Ann\x00", Email: "ann@example.com"}), false, ErrInvalidUser},
		{"invalid UTF-8 name", ok(User{ID: 1, Name: "\xc3\x28", Email: "ann@example.com"}), false, ErrInvalidUser},
		{"no at", ok(User{ID: 1, Name: "Ann", Email: "ann.example.com"}), false, ErrInvalidUser},
		{"no domain dot", ok(User{ID: 1, Name: "Ann", Email: "ann@localhost"}), false, ErrInvalidUser},
		{"trailing dot", ok(User{ID: 1, Name: "Ann", Email: "ann@example."}), false, ErrInvalidUser},
		{"display name", ok(User{ID: 1, Name: "Ann", Email: "Ann <ann@example.com>"}), false, ErrInvalidUser},
		{"spaces", ok(User{ID: 1, Name: "Ann", Email: " ann@example.com"}), false, ErrInvalidUser},
		{"too long", ok(User{ID: 1, Name: "Ann", Email: strings.Repeat("a", 250) + "@e.com"}), false, ErrInvalidUser},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateUser(tt.user, tt.newID)
			if tt.want == nil && err != nil {
				t.Fatalf("validateUser(%+v) = %v, want nil", tt.user, err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("validateUser(%+v) = %v, want %v", tt.user, err, tt.want)
			}
		})
	}
}

func TestCacheKeys(t *testing.T) {
	if got := userCacheKey(42); got != "user:42" {
		t.Fatalf("userCacheKey(42) = %q, want user:42", got)
	}
	if got := allUsersCacheKey(); got != "users:all" {
		t.Fatalf("allUsersCacheKey() = %q, want users:all", got)
	}
	if err := validateID(0); !errors.Is(err, ErrInvalidUser) {
		t.Fatalf("validateID(0) = %v, want ErrInvalidUser", err)
	}
}
