package cacheaside

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestUserService_TTLJitter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		fc := newFaultCache(b.cache)
		svc := NewUserService(repo, fc)
		seen := map[time.Duration]bool{}
		for i := range 50 {
			u := seedUser(t, repo, "user"+string(rune('a'+i%26)))
			_, err := svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			ttl, ok := fc.ttlOf(userCacheKey(u.ID))
			require.True(t, ok)
			if ttl < 54*time.Minute || ttl > UserCacheTTL {
				t.Fatalf("fill TTL = %v, want within [54m, 1h]", ttl)
			}
			if stored := b.ttl(userCacheKey(u.ID)); stored > ttl || stored < ttl-2*time.Second {
				t.Fatalf("stored TTL = %v, want the %v the service asked for", stored, ttl)
			}
			seen[ttl] = true
		}
		require.Greater(t, len(seen), 40, "TTLs of keys written together must differ")

		_, err := svc.GetUser(ctx, 10_000)
		require.ErrorIs(t, err, ErrUserNotFound)
		neg, _ := fc.ttlOf(userCacheKey(10_000))
		if neg > DefaultNegativeTTL || neg < DefaultNegativeTTL*9/10 {
			t.Fatalf("negative TTL = %v, want about %v", neg, DefaultNegativeTTL)
		}
	})

	repo := newTestRepo()
	seedUser(t, repo, "zed")
	fc := newFaultCache(NewMemoryCache())
	svc := NewUserService(repo, fc, WithTTL(5*time.Minute), WithJitter(0))
	_, err := svc.GetUser(context.Background(), 1)
	require.NoError(t, err)
	ttl, _ := fc.ttlOf(userCacheKey(1))
	require.Equal(t, 5*time.Minute, ttl, "WithTTL and WithJitter(0) give an exact TTL")
}

func TestJitterBounds(t *testing.T) {
	a := NewAside[int, User](nil, "x", nil, WithJitter(0.2))
	for range 1000 {
		d := a.jitter(time.Hour)
		if d < 48*time.Minute || d > time.Hour {
			t.Fatalf("jitter(1h) = %v, want within [48m, 1h]", d)
		}
	}
	if d := a.jitter(time.Nanosecond); d != time.Millisecond {
		t.Fatalf("jitter(1ns) = %v, want the 1ms floor", d)
	}
}
