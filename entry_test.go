package cacheaside

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestUserService_UndecodableEntryIsAMiss(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "hank")
		svc := NewUserService(repo, b.cache)
		for i, garbage := range []string{"{not json", `{"id":"seven"}`, `[1,2]`} {
			b.setRaw(userCacheKey(u.ID), garbage)
			got, err := svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, "hank", got.Name)
			require.Equal(t, int64(i+1), svc.GetMetrics().DecodeErrors)
			raw, ok := b.raw(userCacheKey(u.ID))
			require.True(t, ok)
			require.Contains(t, raw, `"name":"hank"`, "the fill must overwrite the bad entry")
		}
	})
}

// TestEntry_NothingReadIsTrusted: what another process, another version or
// someone else planted under a key never reaches a caller as data: another
// user's row, an empty object, a null, an entry of another key, an entry
// over the size limit. Each is a miss, counted, and repaired by the fill;
// batch reads treat them the same way.
func TestEntry_NothingReadIsTrusted(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		var u *User
		for range 11 {
			u = seedUser(t, repo, "eleven")
		}
		svc := NewUserService(repo, b.cache, WithMaxValueSize(4096))
		key := userCacheKey(u.ID)
		planted := []string{
			`{"id":9999,"name":"intruder","email":"i@example.com"}`,
			`{}`,
			`null`,
			`{"key":"user:12","expires":0,"value":{"id":11,"name":"wrong key"}}`,
			`{"key":"user:11","expires":0,"value":null}`,
			`{"key":"user:11","expires":0,"value":{"id":11,"name":"` + strings.Repeat("x", 5000) + `"}}`,
		}
		for i, bad := range planted {
			for _, batch := range []bool{false, true} {
				b.setRaw(key, bad)
				var got *User
				var err error
				if batch {
					var list []*User
					list, err = svc.GetUsersBatch(ctx, []int{u.ID})
					got = list[0]
				} else {
					got, err = svc.GetUser(ctx, u.ID)
				}
				require.NoError(t, err)
				require.Equal(t, u.ID, got.ID, "planted %d (%.40s) reached a caller", i, bad)
				require.Equal(t, "eleven", got.Name, "planted %d (%.40s) reached a caller", i, bad)
				raw, _ := b.raw(key)
				require.Contains(t, raw, `"name":"eleven"`, "the fill must repair planted %d", i)
			}
		}
		require.Equal(t, int64(2*len(planted)), svc.GetMetrics().DecodeErrors)
	})
}

// TestEntry_PlainValuesStillRead: an entry written by an earlier version
// (the bare JSON of the value) or by another program reads as a hit.
func TestEntry_PlainValuesStillRead(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "legacy")
		b.setRaw(userCacheKey(u.ID), `{"id":1,"name":"from the old version","email":"legacy@example.com","created_at":"2020-01-01T00:00:00Z"}`)
		svc := NewUserService(repo, b.cache)
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "from the old version", got.Name)
		require.Zero(t, repo.gets.Load())
		require.Equal(t, int64(1), svc.GetMetrics().CacheHits)
	})
}

// TestEntry_OversizeValuesAreNotCached: a value whose entry exceeds the
// size limit is returned but not stored.
func TestEntry_OversizeValuesAreNotCached(t *testing.T) {
	b := memoryBackend(t)
	ctx := context.Background()
	repo := newTestRepo()
	u := seedUser(t, repo, strings.Repeat("n", 500))
	svc := NewUserService(repo, b.cache, WithMaxValueSize(256))
	got, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, u.Name, got.Name)
	_, ok := b.raw(userCacheKey(u.ID))
	require.False(t, ok, "an oversize entry must not be cached (nor its lease left behind)")
	require.Equal(t, int64(1), svc.GetMetrics().CacheWriteErrors)
}

// FuzzEntryParse feeds the entry decoder whatever a cache could hold: it
// must never panic, and whatever it accepts as a value must be user 11.
func FuzzEntryParse(f *testing.F) {
	for _, seed := range []string{
		`{"key":"user:11","expires":1700000000000,"value":{"id":11,"name":"a"}}`,
		`{"id":11,"name":"plain"}`, `{}`, `null`, `"` + "\\u0000cacheaside:absent" + `"`,
		string(newLease()), `{"key":"user:11","value":null}`, `[`, `{"key":5}`,
	} {
		f.Add([]byte(seed))
	}
	a := NewUserService(nil, nil).users
	f.Fuzz(func(t *testing.T, raw []byte) {
		v, _, _, err := a.parse(11, "user:11", raw)
		if err == nil && v != nil && v.ID != 11 {
			t.Fatalf("parse(%q) accepted user %d for key user:11", raw, v.ID)
		}
		f := a.decode(context.Background(), 11, "user:11", raw, false)
		if f.st == stHit && (v == nil || v.ID != 11 || f.v.ID != 11) {
			t.Fatalf("decode(%q) = hit without user 11", raw)
		}
	})
}

// TestEntry_KeyOfAnotherType: a key that holds a hash, not a string, is no
// value: a read is a miss, counted, and the fill replaces it.
func TestEntry_KeyOfAnotherType(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		if b.client == nil {
			t.Skip("a Redis type")
		}
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "typed")
		require.NoError(t, b.client.HSet(ctx, b.prefix+userCacheKey(u.ID), "f", "v").Err())
		svc := NewUserService(repo, b.cache)
		for range 2 {
			got, err := svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, "typed", got.Name)
		}
		m := svc.GetMetrics()
		require.Equal(t, int64(1), m.DecodeErrors)
		require.Equal(t, int64(1), m.CacheHits, "the fill replaced the hash")
		require.Zero(t, m.CacheErrors, "a key of another type is not a failing cache")
	})
}
