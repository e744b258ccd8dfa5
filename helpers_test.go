package cacheaside

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
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

// testRepo wraps a MemoryRepository, counts calls and lets a test delay,
// block, fail or panic the reads. The row is read before the hook runs, so
// a hook that blocks holds a reader that already has the row in hand, as a
// slow database reply would.
type testRepo struct {
	*MemoryRepository
	gets, batchGets, writes atomic.Int64

	mu   sync.Mutex // protects hook and err
	hook func(ctx context.Context, id int)
	err  error
}

func newTestRepo() *testRepo { return &testRepo{MemoryRepository: NewMemoryRepository()} }

func (r *testRepo) setHook(h func(ctx context.Context, id int)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hook = h
}

func (r *testRepo) setErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

func (r *testRepo) state() (func(context.Context, int), error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hook, r.err
}

func (r *testRepo) GetUser(ctx context.Context, id int) (*User, error) {
	r.gets.Add(1)
	u, err := r.MemoryRepository.GetUser(ctx, id)
	hook, ferr := r.state()
	if hook != nil {
		hook(ctx, id)
	}
	if ferr != nil {
		return nil, ferr
	}
	return u, err
}

func (r *testRepo) GetUsers(ctx context.Context, ids []int) ([]*User, error) {
	r.batchGets.Add(1)
	if _, ferr := r.state(); ferr != nil {
		return nil, ferr
	}
	return r.MemoryRepository.GetUsers(ctx, ids)
}

func (r *testRepo) CreateUser(ctx context.Context, u *User) error {
	r.writes.Add(1)
	return r.MemoryRepository.CreateUser(ctx, u)
}

func (r *testRepo) UpdateUser(ctx context.Context, u *User) error {
	r.writes.Add(1)
	return r.MemoryRepository.UpdateUser(ctx, u)
}

func (r *testRepo) DeleteUser(ctx context.Context, id int) error {
	r.writes.Add(1)
	return r.MemoryRepository.DeleteUser(ctx, id)
}

// holdFirstRead makes the first read of repo, once it holds the row, close
// entered and wait for release to be closed; later reads pass through.
func holdFirstRead(repo *testRepo) (entered, release chan struct{}) {
	entered, release = make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	repo.setHook(func(context.Context, int) {
		if first.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
	})
	return entered, release
}

// awaitAdvancing waits for done and returns what it delivers, moving the
// backend's clock forward meanwhile: miniredis and the memory cache expire
// keys only on their own clocks.
func awaitAdvancing(b backend, done <-chan error) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			if b.advance != nil {
				b.advance(20 * time.Millisecond)
			}
		}
	}
}

// singleRepo hides the batch method of a testRepo.
type singleRepo struct{ r *testRepo }

func (s singleRepo) GetUser(ctx context.Context, id int) (*User, error) { return s.r.GetUser(ctx, id) }
func (s singleRepo) CreateUser(ctx context.Context, u *User) error      { return s.r.CreateUser(ctx, u) }
func (s singleRepo) UpdateUser(ctx context.Context, u *User) error      { return s.r.UpdateUser(ctx, u) }
func (s singleRepo) DeleteUser(ctx context.Context, id int) error       { return s.r.DeleteUser(ctx, id) }

// errInjected is the failure that faultCache and testRepo inject.
var errInjected = errors.New("injected failure")

// faultCache wraps a CacheClient, counts calls, records TTLs, and fails
// operations on demand.
type faultCache struct {
	CacheClient
	failGet, failSet, failDel atomic.Bool
	gets, sets, dels, multis  atomic.Int64

	mu   sync.Mutex // protects ttls
	ttls map[string]time.Duration
}

func newFaultCache(c CacheClient) *faultCache {
	return &faultCache{CacheClient: c, ttls: make(map[string]time.Duration)}
}

func (f *faultCache) GetJSON(ctx context.Context, key string, dest any) error {
	f.gets.Add(1)
	if f.failGet.Load() {
		return errInjected
	}
	return f.CacheClient.GetJSON(ctx, key, dest)
}

func (f *faultCache) SetJSON(ctx context.Context, key string, v any, ttl time.Duration) error {
	f.sets.Add(1)
	f.mu.Lock()
	f.ttls[key] = ttl
	f.mu.Unlock()
	if f.failSet.Load() {
		return errInjected
	}
	return f.CacheClient.SetJSON(ctx, key, v, ttl)
}

func (f *faultCache) Delete(ctx context.Context, keys ...string) error {
	f.dels.Add(1)
	if f.failDel.Load() {
		return errInjected
	}
	return f.CacheClient.Delete(ctx, keys...)
}

func (f *faultCache) ttlOf(key string) (time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.ttls[key]
	return d, ok
}

// multiFaultCache is a faultCache that also passes GetMulti through.
type multiFaultCache struct{ *faultCache }

func (m multiFaultCache) GetMulti(ctx context.Context, keys []string) ([]json.RawMessage, error) {
	m.multis.Add(1)
	if m.failGet.Load() {
		return nil, errInjected
	}
	return m.CacheClient.(MultiGetter).GetMulti(ctx, keys)
}

// seedUser creates a valid user in repo and returns it.
func seedUser(t testing.TB, repo UserRepository, name string) *User {
	t.Helper()
	u := &User{Name: name, Email: name + "@example.com"}
	if err := repo.CreateUser(context.Background(), u); err != nil {
		t.Fatalf("CreateUser(%s): %v", name, err)
	}
	return u
}
