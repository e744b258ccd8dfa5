package cacheaside

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testCacheContract checks what the service relies on from any CacheClient.
func testCacheContract(t *testing.T, b backend) {
	ctx := context.Background()
	c := b.cache

	var u User
	err := c.GetJSON(ctx, "user:1", &u)
	require.ErrorIs(t, err, ErrCacheMiss, "a miss is ErrCacheMiss")

	in := User{ID: 1, Name: "Ünïcode ' \" ; --", Email: "a@example.com", CreateAt: time.Date(2026, 11, 25, 1, 2, 3, 456000, time.UTC)}
	require.NoError(t, c.SetJSON(ctx, "user:1", in, time.Minute))
	require.NoError(t, c.GetJSON(ctx, "user:1", &u))
	require.Equal(t, in.Name, u.Name)
	require.True(t, in.CreateAt.Equal(u.CreateAt))
	raw, ok := b.raw("user:1")
	require.True(t, ok)
	require.True(t, json.Valid([]byte(raw)) && strings.HasPrefix(raw, `{"id":1`), "values are stored as plain JSON: %s", raw)
	require.InDelta(t, float64(time.Minute), float64(b.ttl("user:1")), float64(2*time.Second))

	// The service's own calls: raw messages in and out, untouched.
	require.NoError(t, c.SetJSON(ctx, "k", json.RawMessage(`{"a":1}`), 0))
	var rm json.RawMessage
	require.NoError(t, c.GetJSON(ctx, "k", &rm))
	require.JSONEq(t, `{"a":1}`, string(rm))

	b.setRaw("bad", "{oops")
	err = c.GetJSON(ctx, "bad", &u)
	require.ErrorIs(t, err, ErrDecode)

	if mg, ok := c.(MultiGetter); ok {
		got, err := mg.GetMulti(ctx, []string{"user:1", "absent", "k"})
		require.NoError(t, err)
		require.Len(t, got, 3)
		require.NotNil(t, got[0])
		require.Nil(t, got[1])
		require.JSONEq(t, `{"a":1}`, string(got[2]))
		empty, err := mg.GetMulti(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, empty)
	}

	require.NoError(t, c.Delete(ctx, "user:1", "k", "never-there"))
	require.ErrorIs(t, c.GetJSON(ctx, "user:1", &u), ErrCacheMiss)
	require.ErrorIs(t, c.GetJSON(ctx, "k", &rm), ErrCacheMiss)
	require.NoError(t, c.Delete(ctx))

	// Values that cannot be encoded are an error, not a panic.
	require.Error(t, c.SetJSON(ctx, "fn", func() {}, 0))
}

func TestNoCache(t *testing.T) {
	ctx := context.Background()
	var c CacheClient = noCache{}
	var v any
	require.ErrorIs(t, c.GetJSON(ctx, "k", &v), ErrCacheMiss)
	require.NoError(t, c.SetJSON(ctx, "k", 1, time.Second))
	require.ErrorIs(t, c.GetJSON(ctx, "k", &v), ErrCacheMiss, "noCache stores nothing")
	require.NoError(t, c.Delete(ctx, "k"))
}
