package cacheaside

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestKeys_FormatID(t *testing.T) {
	type sku struct{ A, B int }
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"int", formatID(42), "42"},
		{"int64", formatID(int64(-7)), "-7"},
		{"string", formatID("tea-1"), "tea-1"},
		{"colon cannot leave the namespace", formatID("a:b"), "a%3Ab"},
		{"braces cannot pick a slot", formatID("{x}"), "%7Bx%7D"},
		{"escapes are escaped", formatID("100%3A"), "100%253A"},
		{"struct", formatID(sku{1, 2}), "%7B1 2%7D"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("formatID = %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestKeys_ReservedNamespace(t *testing.T) {
	for _, ns := range []string{"", "cacheaside"} {
		func() {
			defer func() {
				p, _ := recover().(string)
				if !strings.HasPrefix(p, "cacheaside: NewAside(") {
					t.Fatalf("NewAside(%q) panic = %q, want one naming NewAside", ns, p)
				}
			}()
			NewAside[int, product](nil, ns, nil)
		}()
	}
	require.NotPanics(t, func() { NewAside[int, product](nil, "cacheaside_products", nil) })
}

// TestKeys_NoEntityReachesALock: no entity name, ID or related key can
// delete the library's own keys.
func TestKeys_NoEntityReachesALock(t *testing.T) {
	forEachLockBackend(t, func(t *testing.T, lb lockBackend) {
		ctx := context.Background()
		rc := lb.newCache(t)
		lock, err := rc.AcquireLock(ctx, "job", time.Minute)
		require.NoError(t, err)
		defer lock.Release(ctx)
		lockKey := lb.lockKey("job")
		require.True(t, strings.HasPrefix(strings.TrimPrefix(lockKey, lb.prefix), reservedPrefix), lockKey)

		lockNS := NewAside(rc, "lock", func(context.Context, string) (*product, error) { return nil, ErrNotFound })
		_ = lockNS.Invalidate(ctx, "{job}")
		aside := NewAside(rc, "p", func(context.Context, string) (*product, error) { return nil, ErrNotFound })
		_ = aside.Invalidate(ctx, "x", strings.TrimPrefix(lockKey, lb.prefix), "cacheaside:lock:{job}")
		svc := NewUserService(NewMemoryRepository(), rc, WithRelatedKeys(func(int) []string { return []string{"cacheaside:lock:{job}"} }))
		_ = svc.DeleteUser(ctx, 1)
		require.NoError(t, lock.Err(), "the lock must still be held")
		n, err := lb.raw.Exists(ctx, lockKey).Result()
		require.NoError(t, err)
		require.Equal(t, int64(1), n, "an invalidation deleted the lock")
	})
}
