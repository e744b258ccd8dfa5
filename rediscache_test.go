package cacheaside

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestRedisCache_Contract(t *testing.T) {
	t.Run("miniredis", func(t *testing.T) { testCacheContract(t, miniredisBackend(t)) })
	t.Run("redis-server", func(t *testing.T) { testCacheContract(t, realRedisBackend(t)) })
}

func TestRedisCache_NilClient(t *testing.T) {
	ctx := context.Background()
	c := NewRedisCache(nil)
	var v any
	require.ErrorIs(t, c.GetJSON(ctx, "k", &v), ErrNotConfigured)
	require.ErrorIs(t, c.SetJSON(ctx, "k", 1, 0), ErrNotConfigured)
	require.ErrorIs(t, c.Delete(ctx, "k"), ErrNotConfigured)
	_, err := c.GetMulti(ctx, []string{"k"})
	require.ErrorIs(t, err, ErrNotConfigured)
}

func TestRedisCache_ServerDownIsAnError(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	c := NewRedisCache(rdb)
	mr.Close()
	var v any
	err := c.GetJSON(ctx, "k", &v)
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrCacheMiss, "a dead server is not a miss")
	require.Error(t, c.SetJSON(ctx, "k", 1, 0))
	require.Error(t, c.Delete(ctx, "a", "b"))
	_, err = c.GetMulti(ctx, []string{"a"})
	require.Error(t, err)
}

// TestRedisCache_UniversalClients runs the service through the other
// go-redis client kinds: a UniversalClient built from options, and a
// cluster client (miniredis answers CLUSTER SLOTS as a one-node cluster).
func TestRedisCache_UniversalClients(t *testing.T) {
	mr := miniredis.RunT(t)
	clients := map[string]redis.UniversalClient{
		"universal": redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{mr.Addr()}}),
		"cluster":   redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{mr.Addr()}}),
	}
	for name, rdb := range clients {
		t.Run(name, func(t *testing.T) {
			t.Cleanup(func() { rdb.Close() })
			ctx := context.Background()
			repo := newTestRepo()
			a := seedUser(t, repo, "ann")
			b := seedUser(t, repo, "ben")
			svc := NewUserService(repo, NewRedisCache(rdb, WithKeyPrefix(name+":")))
			for range 2 {
				got, err := svc.GetUsersBatch(ctx, []int{a.ID, b.ID, 77})
				require.NoError(t, err)
				require.Equal(t, "ben", got[1].Name)
				require.Nil(t, got[2])
			}
			require.Equal(t, int64(3), svc.GetMetrics().CacheHits)
			require.NoError(t, svc.UpdateUser(ctx, &User{ID: a.ID, Name: "ann2", Email: a.Email}))
			require.False(t, mr.Exists(name+":user:1"))
			require.False(t, mr.Exists(name+":users:all"))
			got, err := svc.GetUser(ctx, a.ID)
			require.NoError(t, err)
			require.Equal(t, "ann2", got.Name)
		})
	}
}

// TestRedisCache_Sentinel runs the service through a failover client that
// finds the master through a real redis-sentinel (REDIS_SENTINEL_ADDR, with
// the master named in REDIS_SENTINEL_MASTER, "mymaster" by default).
func TestRedisCache_Sentinel(t *testing.T) {
	addr := serverEnv(t, "REDIS_SENTINEL_ADDR", "redis-sentinel")
	master := os.Getenv("REDIS_SENTINEL_MASTER")
	if master == "" {
		master = "mymaster"
	}
	rdb := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: master, SentinelAddrs: []string{addr}})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	prefix := uniquePrefix(t)
	cleanupPrefix(t, rdb, prefix)
	repo := newTestRepo()
	u := seedUser(t, repo, "sentinel")
	svc := NewUserService(repo, NewRedisCache(rdb, WithKeyPrefix(prefix)))
	for range 2 {
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "sentinel", got.Name)
	}
	m := svc.GetMetrics()
	require.Equal(t, int64(1), m.CacheHits)
	require.Zero(t, m.CacheErrors)
	n, err := rdb.Exists(ctx, prefix+userCacheKey(u.ID)).Result()
	require.NoError(t, err)
	require.Equal(t, int64(1), n, "the value is stored on the master the sentinel names")
}

// TestRedisCache_HooksSeeCommandsWithContextTimeout: with a client built
// with ContextTimeoutEnabled, the cache uses it as it is, so the hooks
// added to it (tracing, metrics) see the cache's commands, as its
// documentation promises.
func TestRedisCache_HooksSeeCommandsWithContextTimeout(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	names := new(commandNames)
	rdb.AddHook(names)
	repo := newTestRepo()
	u := seedUser(t, repo, "hooked")
	svc := NewUserService(repo, NewRedisCache(rdb))
	_, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.True(t, NewRedisCache(rdb).BoundedByContext())
	require.Positive(t, names.count("get"), "the service's GET went past the client's hook: %v", names.names)
}
