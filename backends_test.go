package cacheaside

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		reportSkipped()
		os.Exit(code) // Cleanup takes over goleak's own exit
	}))
}

// servers lists the real servers the tests can use, the variable that
// points at each, and an example value.
var servers = []struct{ env, what, example string }{
	{"REDIS_ADDR", "redis-server", "127.0.0.1:6379"},
	{"REDIS_CLUSTER_ADDRS", "a Redis Cluster", "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"},
	{"REDIS_SENTINEL_ADDR", "redis-sentinel", "127.0.0.1:26379"},
	{"POSTGRES_DSN", "PostgreSQL", "postgres://user@127.0.0.1:5432/db"},
}

// skips counts, per environment variable, the tests skipped for want of it.
var skips struct {
	mu sync.Mutex // protects n
	n  map[string]int
}

// reportSkipped says once, after every test, which servers the run lacked
// and how to add them. go test shows a passing package's output only with
// -v, so the line also goes straight to the terminal when there is one.
func reportSkipped() {
	skips.mu.Lock()
	defer skips.mu.Unlock()
	var ran, missing []string
	total := 0
	for _, s := range servers {
		if n := skips.n[s.env]; n > 0 {
			total += n
			missing = append(missing, fmt.Sprintf("%s (%d; set %s=%s)", s.what, n, s.env, s.example))
		} else if os.Getenv(s.env) != "" {
			ran = append(ran, s.what)
		}
	}
	if total == 0 {
		return
	}
	msg := fmt.Sprintf("cacheaside: tests ran on the memory cache, miniredis, SQLite%s; skipped %d that need %s. .ci/run starts every server.\n",
		strings.Join(append([]string{""}, ran...), ", "), total, strings.Join(missing, ", "))
	fmt.Print(msg)
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		fmt.Fprint(tty, msg)
		tty.Close()
	}
}

// backend is one CacheClient under test, with a side door to the storage
// behind it.
type backend struct {
	name   string
	cache  CacheClient
	prefix string // what the adapter puts before every key
	// raw reads what is stored under key, bypassing the adapter.
	raw func(key string) (string, bool)
	// setRaw stores val under key, bypassing the adapter.
	setRaw func(key, val string)
	// ttl reports the TTL of key.
	ttl func(key string) time.Duration
	// advance moves the backend's clock forward; nil when it cannot.
	advance func(d time.Duration)
	// fork returns another adapter over the same storage and prefix, with a
	// client of its own, as another instance of a fleet would have.
	fork func(t testing.TB) CacheClient
	// client reaches the Redis behind the adapter; nil for the memory cache.
	client redis.UniversalClient
}

// testClock is a settable clock for the memory cache.
type testClock struct {
	mu sync.Mutex // protects t
	t  time.Time
}

// inCI reports whether the tests run in CI, where a missing server is a
// failure rather than a skip.
func inCI() bool { return os.Getenv("CI") == "true" }

// serverEnv returns the environment variable that points the tests at a
// real server (what), skipping the test when it is unset, and failing it in
// CI, where .ci/run must have started the server.
func serverEnv(t testing.TB, name, what string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		if inCI() {
			t.Fatalf("%s is not set in CI: .ci/run must start %s", name, what)
		}
		skips.mu.Lock()
		if skips.n == nil {
			skips.n = make(map[string]int)
		}
		skips.n[name]++
		skips.mu.Unlock()
		t.Skipf("%s not set; skipping the tests against %s", name, what)
	}
	return v
}

// realRedis returns a client to the redis-server at REDIS_ADDR, skipping the
// test when it is unset (failing in CI).
func realRedis(t testing.TB) *redis.Client {
	t.Helper()
	addr := serverEnv(t, "REDIS_ADDR", "redis-server")
	c := redis.NewClient(&redis.Options{Addr: addr})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		t.Fatalf("redis-server at REDIS_ADDR=%s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// uniquePrefix returns a key prefix no other test run uses, so tests can
// share one real Redis.
func uniquePrefix(t testing.TB) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "cacheaside-test:" + hex.EncodeToString(b) + ":"
}

// cleanupPrefix deletes every key under prefix from c when the test ends,
// so tests leave a shared Redis as they found it. On a cluster it asks
// every master and deletes key by key.
func cleanupPrefix(t testing.TB, c redis.UniversalClient, prefix string) {
	t.Cleanup(func() {
		ctx := context.Background()
		clean := func(ctx context.Context, n redis.UniversalClient) error {
			keys, _ := n.Keys(ctx, prefix+"*").Result()
			for _, k := range keys {
				n.Del(ctx, k)
			}
			return nil
		}
		if cc, ok := c.(*redis.ClusterClient); ok {
			_ = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return clean(ctx, n) })
			return
		}
		_ = clean(ctx, c)
	})
}

// clusterAddrs returns the seed nodes of the real Redis Cluster at
// REDIS_CLUSTER_ADDRS (comma-separated), skipping the test when it is unset
// (failing in CI).
func clusterAddrs(t testing.TB) []string {
	t.Helper()
	return strings.Split(serverEnv(t, "REDIS_CLUSTER_ADDRS", "a Redis Cluster"), ",")
}

// realCluster returns a new cluster client to the cluster at
// REDIS_CLUSTER_ADDRS, closed when the test ends.
func realCluster(t testing.TB) *redis.ClusterClient {
	t.Helper()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: clusterAddrs(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return n.Ping(ctx).Err() })
	if err != nil {
		c.Close()
		t.Fatalf("Redis Cluster at REDIS_CLUSTER_ADDRS: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func memoryBackend(t testing.TB) backend {
	clk := &testClock{t: time.Unix(1_700_000_000, 0)}
	mc := NewMemoryCache(WithClock(clk.Now))
	return backend{
		name:  "memory",
		cache: mc,
		raw: func(key string) (string, bool) {
			b, ok := mc.c.Get(key)
			return string(b), ok
		},
		setRaw: func(key, val string) { mc.c.Set(key, []byte(val), 0) },
		ttl: func(key string) time.Duration {
			d, _ := mc.c.TTL(key)
			return d
		},
		advance: clk.Add,
		fork:    func(testing.TB) CacheClient { return mc },
	}
}

func miniredisBackend(t testing.TB) backend {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { c.Close() })
	return backend{
		name:   "miniredis",
		client: c,
		cache:  NewRedisCache(c, WithKeyPrefix("app:")),
		prefix: "app:",
		raw: func(key string) (string, bool) {
			v, err := mr.Get("app:" + key)
			return v, err == nil
		},
		setRaw:  func(key, val string) { mr.Set("app:"+key, val) },
		ttl:     func(key string) time.Duration { return mr.TTL("app:" + key) },
		advance: mr.FastForward,
		fork: func(t testing.TB) CacheClient {
			c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { c.Close() })
			return NewRedisCache(c, WithKeyPrefix("app:"))
		},
	}
}

func realRedisBackend(t testing.TB) backend {
	return serverBackend(t, "redis-server", realRedis(t), uniquePrefix(t),
		func(t testing.TB) redis.UniversalClient { return realRedis(t) })
}

func clusterBackend(t testing.TB) backend {
	// Braces in the prefix would pin every key to one slot; this one lets
	// keys spread over the three masters.
	prefix := strings.NewReplacer("{", "", "}", "").Replace(uniquePrefix(t))
	return serverBackend(t, "redis-cluster", realCluster(t), prefix,
		func(t testing.TB) redis.UniversalClient { return realCluster(t) })
}

// serverBackend is a backend on a real Redis deployment reached through c,
// with its keys under prefix; newClient gives each fork a client of its own.
func serverBackend(t testing.TB, name string, c redis.UniversalClient, prefix string, newClient func(testing.TB) redis.UniversalClient) backend {
	ctx := context.Background()
	cleanupPrefix(t, c, prefix)
	return backend{
		name:   name,
		client: c,
		cache:  NewRedisCache(c, WithKeyPrefix(prefix)),
		prefix: prefix,
		raw: func(key string) (string, bool) {
			v, err := c.Get(ctx, prefix+key).Result()
			return v, err == nil
		},
		setRaw: func(key, val string) { c.Set(ctx, prefix+key, val, 0) },
		ttl: func(key string) time.Duration {
			d, _ := c.PTTL(ctx, prefix+key).Result()
			return d
		},
		fork: func(t testing.TB) CacheClient { return NewRedisCache(newClient(t), WithKeyPrefix(prefix)) },
	}
}

// forEachBackend runs fn once per cache adapter: memory, miniredis, the
// real redis-server at REDIS_ADDR and the real Redis Cluster at
// REDIS_CLUSTER_ADDRS.
func forEachBackend(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Helper()
	forEachBackendMaker(t, func(t *testing.T, mk func(testing.TB) backend) { fn(t, mk(t)) })
}

// forEachBackendMaker is forEachBackend for tests that need more than one
// independent backend of each kind: mk makes a new one per call.
func forEachBackendMaker(t *testing.T, fn func(t *testing.T, mk func(testing.TB) backend)) {
	t.Helper()
	for _, mk := range []struct {
		name string
		new  func(testing.TB) backend
	}{
		{"memory", memoryBackend},
		{"miniredis", miniredisBackend},
		{"redis-server", realRedisBackend},
		{"redis-cluster", clusterBackend},
	} {
		t.Run(mk.name, func(t *testing.T) {
			fn(t, mk.new)
		})
	}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
