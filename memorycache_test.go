package cacheaside

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestMemoryCache_Contract(t *testing.T) {
	testCacheContract(t, memoryBackend(t))
}

func TestMemoryCache_ExpiryAndContext(t *testing.T) {
	b := memoryBackend(t)
	mc := b.cache.(*MemoryCache)
	ctx := context.Background()
	require.NoError(t, mc.SetJSON(ctx, "a", 1, time.Second))
	require.Equal(t, int64(1), mc.Len())
	b.advance(time.Second)
	var n int
	require.ErrorIs(t, mc.GetJSON(ctx, "a", &n), ErrCacheMiss)
	require.Equal(t, int64(0), mc.Len())

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, mc.GetJSON(cctx, "a", &n), context.Canceled)
	require.ErrorIs(t, mc.SetJSON(cctx, "a", 1, 0), context.Canceled)
	require.ErrorIs(t, mc.Delete(cctx, "a"), context.Canceled)
	_, err := mc.GetMulti(cctx, []string{"a"})
	require.ErrorIs(t, err, context.Canceled)
}

// TestMemoryCache_Bounded: a memory cache holds about its bound, however
// many keys it is given.
func TestMemoryCache_Bounded(t *testing.T) {
	ctx := context.Background()
	mc := NewMemoryCache(WithMaxEntries(100))
	for i := range 5000 {
		require.NoError(t, mc.SetJSON(ctx, "k"+strconv.Itoa(i), i, time.Hour))
	}
	require.LessOrEqual(t, mc.Len(), int64(150), "the cache must stay near its bound")
	require.Panics(t, func() { WithMaxEntries(0) })
}
