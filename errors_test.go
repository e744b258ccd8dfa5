package cacheaside

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestErrors(t *testing.T) {
	for _, err := range []error{ErrCacheMiss, ErrNotFound, ErrUserNotFound, ErrUserExists, ErrInvalidUser, ErrLockTimeout, ErrDecode, ErrNotConfigured} {
		if !strings.HasPrefix(err.Error(), "cacheaside: ") {
			t.Errorf("%q lacks the cacheaside: prefix", err)
		}
	}
	wrapped := fmt.Errorf("repo: %w", ErrUserNotFound)
	if !errors.Is(wrapped, ErrUserNotFound) || !errors.Is(wrapped, ErrNotFound) {
		t.Fatal("a wrapped ErrUserNotFound must match ErrUserNotFound and ErrNotFound")
	}
	if errors.Is(ErrNotFound, ErrUserNotFound) {
		t.Fatal("ErrNotFound must not match the narrower ErrUserNotFound")
	}
	pe := &PanicError{Value: "boom", Stack: []byte("stack")}
	if !strings.Contains(pe.Error(), "boom") || pe.Unwrap() != nil {
		t.Fatalf("PanicError = %q, unwrap %v", pe.Error(), pe.Unwrap())
	}
}
