package cacheaside_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	_ "modernc.org/sqlite"

	"github.com/cacheaside/cacheaside"
)

func ExampleNewUserService() {
	ctx := context.Background()
	repo := cacheaside.NewMemoryRepository() // your database in production
	svc := cacheaside.NewUserService(repo, cacheaside.NewMemoryCache())

	u := &cacheaside.User{Name: "Ann", Email: "ann@example.com"}
	if err := svc.CreateUser(ctx, u); err != nil {
		fmt.Println(err)
		return
	}
	got, _ := svc.GetUser(ctx, u.ID) // miss: loaded from the repository
	got, _ = svc.GetUser(ctx, u.ID)  // hit: served from the cache
	m := svc.GetMetrics()
	fmt.Printf("user %d is %s; hits=%d misses=%d hit rate %.0f%%\n",
		got.ID, got.Name, m.CacheHits, m.CacheMisses, m.HitRate*100)
	// Output: user 1 is Ann; hits=1 misses=1 hit rate 50%
}

// slowRepo counts reads and makes each one take a while, like a loaded
// database.
type slowRepo struct {
	*cacheaside.MemoryRepository
	reads atomic.Int64
}

func (r *slowRepo) GetUser(ctx context.Context, id int) (*cacheaside.User, error) {
	r.reads.Add(1)
	time.Sleep(50 * time.Millisecond)
	return r.MemoryRepository.GetUser(ctx, id)
}

func ExampleUserService_GetUser() {
	ctx := context.Background()
	repo := &slowRepo{MemoryRepository: cacheaside.NewMemoryRepository()}
	u := &cacheaside.User{Name: "Bo", Email: "bo@example.com"}
	_ = repo.CreateUser(ctx, u)
	svc := cacheaside.NewUserService(repo, cacheaside.NewMemoryCache())

	// Ten concurrent misses for one user share one database read.
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := svc.GetUser(ctx, u.ID); err != nil {
				fmt.Println(err)
			}
		}()
	}
	wg.Wait()
	fmt.Println("database reads:", repo.reads.Load())

	// A missing user is a typed error, and the answer is cached briefly.
	_, err := svc.GetUser(ctx, 404)
	fmt.Println(errors.Is(err, cacheaside.ErrUserNotFound))
	// Output:
	// database reads: 1
	// true
}

func ExampleUserService_UpdateUser() {
	ctx := context.Background()
	svc := cacheaside.NewUserService(cacheaside.NewMemoryRepository(), cacheaside.NewMemoryCache())
	u := &cacheaside.User{Name: "Cy", Email: "cy@example.com"}
	_ = svc.CreateUser(ctx, u)
	_, _ = svc.GetUser(ctx, u.ID) // now cached

	u.Name = "Cyrus"
	_ = svc.UpdateUser(ctx, u) // database first, then the cache entry is deleted
	got, _ := svc.GetUser(ctx, u.ID)
	fmt.Println(got.Name)

	err := svc.UpdateUser(ctx, &cacheaside.User{ID: u.ID, Name: "", Email: "cy@example.com"})
	fmt.Println(errors.Is(err, cacheaside.ErrInvalidUser), err)
	// Output:
	// Cyrus
	// true cacheaside: invalid user: empty name
}

func ExampleUserService_GetUsersBatch() {
	ctx := context.Background()
	repo := cacheaside.NewMemoryRepository()
	for _, name := range []string{"Di", "Ed"} {
		_ = repo.CreateUser(ctx, &cacheaside.User{Name: name, Email: name + "@example.com"})
	}
	svc := cacheaside.NewUserService(repo, cacheaside.NewMemoryCache())
	users, err := svc.GetUsersBatch(ctx, []int{2, 99, 1})
	fmt.Println(err)
	for _, u := range users {
		if u == nil {
			fmt.Println("<none>")
			continue
		}
		fmt.Println(u.ID, u.Name)
	}
	// Output:
	// <nil>
	// 2 Ed
	// <none>
	// 1 Di
}

// Example_redis runs the service on go-redis against an in-process Redis
// (miniredis); point the client at your redis-server in production.
func Example_redis() {
	mr, err := miniredis.Run()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	ctx := context.Background()
	repo := cacheaside.NewMemoryRepository()
	svc := cacheaside.NewUserService(repo, cacheaside.NewRedisCache(rdb, cacheaside.WithKeyPrefix("myapp:")))

	u := &cacheaside.User{Name: "Flo", Email: "flo@example.com", CreateAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	_ = svc.CreateUser(ctx, u)
	_, _ = svc.GetUser(ctx, u.ID)

	// The entry is JSON: the key it belongs to, when it stops being fresh
	// (Unix milliseconds), and the user.
	stored, _ := mr.Get("myapp:user:1")
	var entry struct {
		Key     string          `json:"key"`
		Expires int64           `json:"expires"`
		Value   json.RawMessage `json:"value"`
	}
	_ = json.Unmarshal([]byte(stored), &entry)
	fmt.Println(entry.Key, string(entry.Value))
	fresh := time.Until(time.UnixMilli(entry.Expires))
	fmt.Println(fresh > 50*time.Minute && fresh <= cacheaside.UserCacheTTL, mr.TTL("myapp:user:1") <= cacheaside.UserCacheTTL)
	// Output:
	// user:1 {"id":1,"name":"Flo","email":"flo@example.com","created_at":"2026-01-02T03:04:05Z"}
	// true true
}

// Product is another entity, cached with its own namespace and TTL by the
// same engine as users.
type Product struct {
	ID    int      `json:"id"`
	Title string   `json:"title"`
	Tags  []string `json:"tags"`
}

func ExampleNewAside() {
	ctx := context.Background()
	catalog := map[int]Product{7: {ID: 7, Title: "Teapot", Tags: []string{"kitchen"}}}
	var loads atomic.Int64
	load := func(ctx context.Context, id int) (*Product, error) {
		loads.Add(1)
		p, ok := catalog[id]
		if !ok {
			return nil, fmt.Errorf("product %d: %w", id, cacheaside.ErrNotFound)
		}
		return &p, nil
	}
	products := cacheaside.NewAside(cacheaside.NewMemoryCache(), "product", load,
		cacheaside.WithTTL(30*time.Minute)) // products change more often than users

	p, _ := products.Get(ctx, 7)
	p.Tags[0] = "changed by the caller" // callers own their copies
	p, _ = products.Get(ctx, 7)
	fmt.Println(products.Key(7), p.Title, p.Tags, "loads:", loads.Load())

	_ = products.Invalidate(ctx, 7) // after writing product 7 to the database
	_, err := products.Get(ctx, 8)
	fmt.Println(errors.Is(err, cacheaside.ErrNotFound), "loads:", loads.Load())
	// Output:
	// product:7 Teapot [kitchen] loads: 1
	// true loads: 2
}

func ExampleUserService_GetMetrics() {
	ctx := context.Background()
	svc := cacheaside.NewUserService(cacheaside.NewMemoryRepository(), cacheaside.NewMemoryCache())
	u := &cacheaside.User{Name: "Gus", Email: "gus@example.com"}
	_ = svc.CreateUser(ctx, u)
	for range 4 {
		_, _ = svc.GetUser(ctx, u.ID)
	}
	m := svc.GetMetrics()
	fmt.Printf("requests=%d hits=%d misses=%d db loads=%d hit rate=%.2f cache size=%d\n",
		m.TotalRequests, m.CacheHits, m.CacheMisses, m.DatabaseLoads, m.HitRate, m.CacheSize)
	// Output: requests=4 hits=3 misses=1 db loads=1 hit rate=0.75 cache size=1
}

func ExampleRedisCache_AcquireLock() {
	mr, err := miniredis.Run()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	cache := cacheaside.NewRedisCache(rdb, cacheaside.WithKeyPrefix("myapp:"))

	// One instance warms the cache; the others find the lock taken.
	lock, err := cache.AcquireLock(ctx, "warm-users", 30*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("warming with fencing token", lock.FencingToken())

	busy, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err = cache.AcquireLock(busy, "warm-users", 30*time.Second)
	fmt.Println("second instance timed out:", errors.Is(err, cacheaside.ErrLockTimeout))

	fmt.Println("release:", lock.Release(ctx))
	fmt.Println("release again:", lock.Release(ctx))
	next, _ := cache.AcquireLock(ctx, "warm-users", 30*time.Second)
	fmt.Println("next fencing token", next.FencingToken())
	_ = next.Release(ctx)
	// Output:
	// warming with fencing token 1
	// second instance timed out: true
	// release: <nil>
	// release again: <nil>
	// next fencing token 2
}

// Two instances of a service share one Redis. A read on the first holds the
// old row when the second writes; the first one's fill is refused, so it
// looks again and returns the new row, and both serve the new row.
func Example_fleet() {
	mr, err := miniredis.Run()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mr.Close()
	ctx := context.Background()
	repo := cacheaside.NewMemoryRepository()
	_ = repo.CreateUser(ctx, &cacheaside.User{Name: "old", Email: "u@example.com"})

	// A repository whose first read is held until the write is done.
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	slow := heldRepo{MemoryRepository: repo, hook: func() { once.Do(func() { close(held); <-release }) }}

	newInstance := func(r cacheaside.UserRepository) (*cacheaside.UserService, func()) {
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		return cacheaside.NewUserService(r, cacheaside.NewRedisCache(rdb)), func() { rdb.Close() }
	}
	a, closeA := newInstance(slow)
	defer closeA()
	b, closeB := newInstance(repo)
	defer closeB()

	done := make(chan string)
	go func() {
		u, _ := a.GetUser(ctx, 1)
		done <- u.Name
	}()
	<-held
	_ = b.UpdateUser(ctx, &cacheaside.User{ID: 1, Name: "new", Email: "u@example.com"})
	close(release)
	fmt.Println("the overlapping read returns", <-done)
	fmt.Println("stale fills refused:", a.GetMetrics().StaleFillsSkipped)
	ua, _ := a.GetUser(ctx, 1)
	ub, _ := b.GetUser(ctx, 1)
	fmt.Println("instance a serves", ua.Name, "and instance b serves", ub.Name)
	// Output:
	// the overlapping read returns new
	// stale fills refused: 1
	// instance a serves new and instance b serves new
}

// heldRepo runs hook after each read, with the row already in hand.
type heldRepo struct {
	*cacheaside.MemoryRepository
	hook func()
}

func (s heldRepo) GetUser(ctx context.Context, id int) (*cacheaside.User, error) {
	u, err := s.MemoryRepository.GetUser(ctx, id)
	s.hook()
	return u, err
}

func ExampleNewSQLRepository() {
	ctx := context.Background()
	// Any database/sql driver: here the pure-Go SQLite (import _
	// "modernc.org/sqlite"); for PostgreSQL, pgx's stdlib ("pgx") with
	// cacheaside.PostgreSQL. A file, not ":memory:": database/sql pools
	// connections, and each would get an empty in-memory database of its
	// own. A busy timeout and WAL, so that concurrent connections wait for
	// each other instead of failing with SQLITE_BUSY.
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "users.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer db.Close()
	repo, err := cacheaside.NewSQLRepository(ctx, db, cacheaside.SQLite) // creates the users table
	if err != nil {
		fmt.Println(err)
		return
	}
	svc := cacheaside.NewUserService(repo, cacheaside.NewMemoryCache())
	defer svc.Close() // it drains the repository's outbox in the background

	u := &cacheaside.User{Name: "O'Brien; --", Email: "ob@example.com"}
	_ = svc.CreateUser(ctx, u) // the database assigns the ID
	got, err := svc.GetUser(ctx, u.ID)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(got.ID, got.Name)
	users, _ := svc.GetUsersBatch(ctx, []int{u.ID, 99}) // misses: one IN (...) query
	fmt.Println(users[0].Name, users[1] == nil)
	_, err = svc.GetUser(ctx, 99)
	fmt.Println(errors.Is(err, cacheaside.ErrUserNotFound))
	// Output:
	// 1 O'Brien; --
	// O'Brien; -- true
	// true
}

// flakyRepo is a repository whose reads can be made to fail, like a
// database that went down.
type flakyRepo struct {
	*cacheaside.MemoryRepository
	down atomic.Bool
}

func (r *flakyRepo) GetUser(ctx context.Context, id int) (*cacheaside.User, error) {
	if r.down.Load() {
		return nil, errors.New("connection refused")
	}
	return r.MemoryRepository.GetUser(ctx, id)
}

// With fail-safe, a read whose load fails is answered by the last value
// known for the key, for up to the staleness bound past its expiry.
func ExampleWithFailSafe() {
	ctx := context.Background()
	repo := &flakyRepo{MemoryRepository: cacheaside.NewMemoryRepository()}
	_ = repo.CreateUser(ctx, &cacheaside.User{Name: "Ida", Email: "ida@example.com"})
	svc := cacheaside.NewUserService(repo, cacheaside.NewMemoryCache(),
		cacheaside.WithTTL(50*time.Millisecond), cacheaside.WithFailSafe(time.Hour))
	defer svc.Close()

	_, _ = svc.GetUser(ctx, 1)        // cached for 50 ms, kept for an hour more
	time.Sleep(60 * time.Millisecond) // the entry is past its TTL...
	repo.down.Store(true)             // ...and the database is down
	u, err := svc.GetUser(ctx, 1)
	fmt.Println(u.Name, err, "served by fail-safe:", svc.GetMetrics().FailSafeServed)

	_, err = svc.GetUser(ctx, 2) // nothing known about user 2
	fmt.Println(err)
	// Output:
	// Ida <nil> served by fail-safe: 1
	// cacheaside: load user:2: connection refused
}

// A local tier serves repeated reads from process memory, and a write on
// any instance is seen at once by every other (see the package
// documentation, "Local tier").
func ExampleWithLocalCache() {
	ctx := context.Background()
	repo := cacheaside.NewMemoryRepository()
	_ = repo.CreateUser(ctx, &cacheaside.User{Name: "Lu", Email: "lu@example.com"})
	shared := cacheaside.NewMemoryCache() // Redis in production
	a := cacheaside.NewUserService(repo, shared, cacheaside.WithLocalCache(10_000))
	b := cacheaside.NewUserService(repo, shared, cacheaside.WithLocalCache(10_000))
	defer a.Close()
	defer b.Close()
	for a.GetMetrics().Membership != "serving" || b.GetMetrics().Membership != "serving" {
		time.Sleep(10 * time.Millisecond) // each joins the invalidation bus
	}
	for range 3 {
		_, _ = a.GetUser(ctx, 1)
	}
	_ = b.UpdateUser(ctx, &cacheaside.User{ID: 1, Name: "Lou", Email: "lu@example.com"})
	u, _ := a.GetUser(ctx, 1)
	fmt.Println(u.Name, "local hits before the write:", a.GetMetrics().LocalHits)
	// Output: Lou local hits before the write: 2
}

// Early refresh reloads a hot entry in the background before it expires,
// so that readers keep being served while it does.
func ExampleWithEarlyRefresh() {
	ctx := context.Background()
	repo := &slowRepo{MemoryRepository: cacheaside.NewMemoryRepository()}
	_ = repo.CreateUser(ctx, &cacheaside.User{Name: "Hot", Email: "hot@example.com"})
	svc := cacheaside.NewUserService(repo, cacheaside.NewMemoryCache(),
		cacheaside.WithTTL(300*time.Millisecond), cacheaside.WithJitter(0), cacheaside.WithEarlyRefresh(1))
	defer svc.Close()
	deadline := time.Now().Add(time.Second) // more than three TTLs
	for time.Now().Before(deadline) {
		_, _ = svc.GetUser(ctx, 1)
		time.Sleep(time.Millisecond)
	}
	m := svc.GetMetrics()
	fmt.Println("readers that waited for the database:", m.CacheMisses, "early refreshes:", m.EarlyRefreshes > 0)
	// Output: readers that waited for the database: 1 early refreshes: true
}

// Adaptive TTL keeps keys that are read often and written rarely longer.
func ExampleWithAdaptiveTTL() {
	ctx := context.Background()
	repo := cacheaside.NewMemoryRepository()
	_ = repo.CreateUser(ctx, &cacheaside.User{Name: "Read", Email: "r@example.com"})
	_ = repo.CreateUser(ctx, &cacheaside.User{Name: "Churn", Email: "c@example.com"})
	mr, err := miniredis.Run() // a redis-server in production
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	svc := cacheaside.NewUserService(repo, cacheaside.NewRedisCache(rdb),
		cacheaside.WithAdaptiveTTL(time.Minute, 24*time.Hour), cacheaside.WithJitter(0))
	defer svc.Close()
	for range 20 {
		_, _ = svc.GetUser(ctx, 1)
		_, _ = svc.GetUser(ctx, 2)
		_ = svc.UpdateUser(ctx, &cacheaside.User{ID: 2, Name: "Churn", Email: "c@example.com"})
	}
	_, _ = svc.GetUser(ctx, 2)
	fmt.Println("read only:", mr.TTL("user:1") > 20*time.Hour, "written after every read:", mr.TTL("user:2") < 4*time.Hour)
	// Output: read only: true written after every read: true
}

// A Bloom filter in the shared cache answers for IDs that never existed,
// so a scan of random IDs does not reach the database.
func ExampleWithBloomFilter() {
	ctx := context.Background()
	repo := &slowRepo{MemoryRepository: cacheaside.NewMemoryRepository()}
	for i := range 100 {
		_ = repo.CreateUser(ctx, &cacheaside.User{Name: fmt.Sprint("u", i), Email: "u@example.com"})
	}
	svc := cacheaside.NewUserService(repo, cacheaside.NewMemoryCache(), cacheaside.WithBloomFilter(1000, 0.001))
	defer svc.Close()
	if err := svc.RebuildBloomFilter(ctx); err != nil { // NewUserService starts one in the background too
		fmt.Println(err)
		return
	}
	for id := 1_000_000; id < 1_000_100; id++ {
		_, _ = svc.GetUser(ctx, id)
	}
	u := &cacheaside.User{Name: "New", Email: "new@example.com"}
	_ = svc.CreateUser(ctx, u)
	got, err := svc.GetUser(ctx, u.ID)
	fmt.Println("database reads for 100 absent IDs:", repo.reads.Load()-1, "; created:", got.Name, err)
	// Output: database reads for 100 absent IDs: 0 ; created: New <nil>
}

// Warm loads users ahead of reads, in batches, one query per batch.
func ExampleUserService_Warm() {
	ctx := context.Background()
	repo := cacheaside.NewMemoryRepository()
	ids := make([]int, 0, 1000)
	for i := range 1000 {
		u := &cacheaside.User{Name: fmt.Sprint("u", i), Email: "u@example.com"}
		_ = repo.CreateUser(ctx, u)
		ids = append(ids, u.ID)
	}
	svc := cacheaside.NewUserService(repo, cacheaside.NewMemoryCache())
	defer svc.Close()
	if err := svc.Warm(ctx, ids); err != nil {
		fmt.Println(err)
		return
	}
	for _, id := range ids {
		_, _ = svc.GetUser(ctx, id)
	}
	m := svc.GetMetrics()
	fmt.Println("hits:", m.CacheHits, "misses:", m.CacheMisses)
	// Output: hits: 1000 misses: 0
}

// A Recorder sees every read with its result and duration; the metrics
// module turns that into Prometheus or OpenTelemetry metrics.
func ExampleWithRecorder() {
	ctx := context.Background()
	repo := cacheaside.NewMemoryRepository()
	_ = repo.CreateUser(ctx, &cacheaside.User{Name: "Rec", Email: "rec@example.com"})
	rec := &countingRecorder{}
	svc := cacheaside.NewUserService(repo, cacheaside.NewMemoryCache(), cacheaside.WithRecorder(rec))
	defer svc.Close()
	for range 3 {
		_, _ = svc.GetUser(ctx, 1)
	}
	_, _ = svc.GetUser(ctx, 99)
	fmt.Println(rec.String())
	// Output: reads: hit=2 miss=2; loads: not_found=1 ok=1
}

// countingRecorder counts results.
type countingRecorder struct {
	mu           sync.Mutex
	reads, loads map[cacheaside.Result]int
}

func (c *countingRecorder) RecordRead(_ context.Context, r cacheaside.Result, _ time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.reads == nil {
		c.reads = map[cacheaside.Result]int{}
	}
	c.reads[r]++
}

func (c *countingRecorder) RecordLoad(_ context.Context, r cacheaside.Result, _ time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loads == nil {
		c.loads = map[cacheaside.Result]int{}
	}
	c.loads[r]++
}

func (c *countingRecorder) RecordWrite(context.Context, string, cacheaside.Result, time.Duration) {}

func (c *countingRecorder) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("reads: hit=%d miss=%d; loads: not_found=%d ok=%d",
		c.reads[cacheaside.ResultHit], c.reads[cacheaside.ResultMiss], c.loads[cacheaside.ResultNotFound], c.loads[cacheaside.ResultOK])
}
