package cacheaside

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/singleflight"

	"github.com/cacheaside/cacheaside/internal/faultproxy"
	"github.com/cacheaside/cacheaside/internal/redisproc"
)

// This file is a randomized consistency checker. Several service instances,
// each with its own cache client, share one cache and one database; readers
// and writers run concurrently on a few keys, with random delays injected
// in the repository and in every cache call. Every row carries a version
// that the database assigns at commit. The checker records the history of
// every operation on a global logical clock and then checks the property
// the library promises: no read returns a version older than the newest
// write acknowledged before that read began.
//
// The same checker runs against the seed's algorithm (seedService below:
// asynchronous fill, per-process single flight, plain delete), where it must
// find violations; that is what shows the checker can see the race at all.

// checkedService is what the checker drives.
type checkedService interface {
	GetUser(ctx context.Context, id int) (*User, error)
	UpdateUser(ctx context.Context, u *User) error
}

// seedService is the seed's algorithm as written: a cache read, on a miss
// a load shared by concurrent callers of this process, an asynchronous
// fill, and on a write a database update followed by a plain delete.
type seedService struct {
	db    UserRepository
	cache CacheClient
	sf    singleflight.Group
	fills sync.WaitGroup // the asynchronous fills, waited for by the test
}

func (s *seedService) GetUser(ctx context.Context, id int) (*User, error) {
	key := userCacheKey(id)
	var user User
	if err := s.cache.GetJSON(ctx, key, &user); err == nil {
		return &user, nil
	}
	v, err, _ := s.sf.Do(key, func() (any, error) { return s.db.GetUser(ctx, id) })
	if err != nil {
		return nil, err
	}
	user = *v.(*User)
	s.fills.Add(1)
	go func() {
		defer s.fills.Done()
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.cache.SetJSON(cctx, key, user, time.Hour)
	}()
	return &user, nil
}

func (s *seedService) UpdateUser(ctx context.Context, u *User) error {
	if err := s.db.UpdateUser(ctx, u); err != nil {
		return err
	}
	_ = s.cache.Delete(ctx, userCacheKey(u.ID))
	return nil
}

// versionedRepo is a database whose rows carry a version in Name ("v12"),
// assigned at commit, with random delays before a read and after it (the
// reader already holds the row, as with a slow reply).
type versionedRepo struct {
	mu       sync.Mutex // protects rows
	rows     map[int]User
	maxDelay time.Duration
}

func newVersionedRepo(keys int, maxDelay time.Duration) *versionedRepo {
	r := &versionedRepo{rows: make(map[int]User), maxDelay: maxDelay}
	for id := 1; id <= keys; id++ {
		r.rows[id] = User{ID: id, Name: "v0", Email: "u@example.com"}
	}
	return r
}

func (r *versionedRepo) pause() { time.Sleep(rand.N(r.maxDelay)) }

func (r *versionedRepo) GetUser(_ context.Context, id int) (*User, error) {
	r.pause()
	r.mu.Lock()
	u, ok := r.rows[id]
	r.mu.Unlock()
	r.pause()
	if !ok {
		return nil, ErrUserNotFound
	}
	return &u, nil
}

func (r *versionedRepo) GetUsers(_ context.Context, ids []int) ([]*User, error) {
	r.pause()
	out := make([]*User, len(ids))
	r.mu.Lock()
	for i, id := range ids {
		if u, ok := r.rows[id]; ok {
			out[i] = &u
		}
	}
	r.mu.Unlock()
	r.pause()
	return out, nil
}

func (r *versionedRepo) UpdateUser(_ context.Context, u *User) error {
	r.pause()
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.rows[u.ID]
	if !ok {
		return ErrUserNotFound
	}
	v, _ := strconv.Atoi(strings.TrimPrefix(old.Name, "v"))
	u.Name = "v" + strconv.Itoa(v+1) // the version this write committed
	r.rows[u.ID] = *u
	return nil
}

func (r *versionedRepo) CreateUser(context.Context, *User) error { return ErrInvalidUser }
func (r *versionedRepo) DeleteUser(context.Context, int) error   { return ErrInvalidUser }

// delayCache puts a random delay before and after every cache call (the
// call has happened on the server; its reply is slow), and passes the
// optional interfaces through.
type delayCache struct {
	c        CacheClient
	maxDelay time.Duration
}

func (d delayCache) pause() { time.Sleep(rand.N(d.maxDelay)) }

func (d delayCache) GetJSON(ctx context.Context, key string, dest any) error {
	d.pause()
	defer d.pause()
	return d.c.GetJSON(ctx, key, dest)
}

func (d delayCache) SetJSON(ctx context.Context, key string, v any, ttl time.Duration) error {
	d.pause()
	defer d.pause()
	return d.c.SetJSON(ctx, key, v, ttl)
}

func (d delayCache) Delete(ctx context.Context, keys ...string) error {
	d.pause()
	defer d.pause()
	return d.c.Delete(ctx, keys...)
}

func (d delayCache) GetMulti(ctx context.Context, keys []string) ([]json.RawMessage, error) {
	d.pause()
	defer d.pause()
	return d.c.(MultiGetter).GetMulti(ctx, keys)
}

func (d delayCache) SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) ([]byte, error) {
	d.pause()
	defer d.pause()
	return d.c.(Leaser).SetNX(ctx, key, val, ttl)
}

func (d delayCache) CompareAndSwap(ctx context.Context, key string, old, val []byte, ttl time.Duration) (bool, error) {
	d.pause()
	defer d.pause()
	return d.c.(Leaser).CompareAndSwap(ctx, key, old, val, ttl)
}

// event is one operation in the recorded history. begin and end come from
// one logical clock shared by every worker, so "acknowledged before the
// read began" is end < begin.
type event struct {
	write      bool
	key        int
	version    int
	begin, end int64
	at         time.Time // wall time: when a read began, when a write was acknowledged
}

type checkResult struct {
	ops                       int // operations issued: read calls and writes
	reads, writes, violations int // reads counts each value a read returned
	example                   string
	// window is the longest a stale read came after the first write it
	// missed was acknowledged.
	window time.Duration
}

type checkConfig struct {
	instances, keys, readers, writers, ops int
	repoDelay, cacheDelay                  time.Duration
}

var defaultCheck = checkConfig{
	instances: 4, keys: 4, readers: 12, writers: 4, ops: 4000,
	repoDelay: 2 * time.Millisecond, cacheDelay: 500 * time.Microsecond,
}

// runChecker drives services (one per instance) with the configured load
// and checks the history.
func runChecker(t *testing.T, cfg checkConfig, svcs []checkedService) checkResult {
	t.Helper()
	ctx := context.Background()
	var clock atomic.Int64
	var mu sync.Mutex
	var history []event
	record := func(evs []event) {
		mu.Lock()
		history = append(history, evs...)
		mu.Unlock()
	}
	perWorker := cfg.ops / (cfg.readers + cfg.writers)
	worker := func(write bool, n int) {
		var evs []event
		defer func() { record(evs) }()
		for range perWorker {
			svc := svcs[rand.N(len(svcs))]
			id := 1 + rand.N(cfg.keys)
			begin, beginAt := clock.Add(1), time.Now()
			if write {
				u := &User{ID: id, Name: "w", Email: "u@example.com"}
				if err := svc.UpdateUser(ctx, u); err != nil {
					t.Errorf("UpdateUser: %v", err)
					return
				}
				v, _ := strconv.Atoi(strings.TrimPrefix(u.Name, "v"))
				evs = append(evs, event{write: true, key: id, version: v, begin: begin, end: clock.Add(1), at: time.Now()})
				continue
			}
			if bs, ok := svc.(*UserService); ok && n%4 == 0 { // some reads are batches
				ids := make([]int, cfg.keys)
				for i := range ids {
					ids[i] = i + 1
				}
				got, err := bs.GetUsersBatch(ctx, ids)
				end := clock.Add(1)
				if err != nil {
					t.Errorf("GetUsersBatch: %v", err)
					return
				}
				for i, u := range got {
					v, _ := strconv.Atoi(strings.TrimPrefix(u.Name, "v"))
					evs = append(evs, event{key: ids[i], version: v, begin: begin, end: end, at: beginAt})
				}
				n++
				continue
			}
			u, err := svc.GetUser(ctx, id)
			end := clock.Add(1)
			if err != nil {
				t.Errorf("GetUser: %v", err)
				return
			}
			v, _ := strconv.Atoi(strings.TrimPrefix(u.Name, "v"))
			evs = append(evs, event{key: id, version: v, begin: begin, end: end, at: beginAt})
			n++
		}
	}
	var wg sync.WaitGroup
	for i := range cfg.readers + cfg.writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			worker(i < cfg.writers, i)
		}()
	}
	wg.Wait()
	res := check(history)
	res.ops = perWorker * (cfg.readers + cfg.writers)
	return res
}

// check finds every read that returned a version older than the newest
// write to its key acknowledged before the read began.
func check(history []event) checkResult {
	var res checkResult
	writes := make(map[int][]event)
	for _, e := range history {
		if e.write {
			writes[e.key] = append(writes[e.key], e)
			res.writes++
		}
	}
	for _, ws := range writes {
		slices.SortFunc(ws, func(a, b event) int { return int(a.end - b.end) })
	}
	for _, r := range history {
		if r.write {
			continue
		}
		res.reads++
		newest := 0
		var missed time.Time // when the first write the read missed was acknowledged
		for _, w := range writes[r.key] {
			if w.end >= r.begin {
				break
			}
			newest = max(newest, w.version)
			if w.version > r.version && missed.IsZero() {
				missed = w.at
			}
		}
		if r.version < newest {
			res.violations++
			res.window = max(res.window, r.at.Sub(missed))
			if res.example == "" {
				res.example = fmt.Sprintf("key %d: read at %d returned v%d, but v%d was acknowledged before it began", r.key, r.begin, r.version, newest)
			}
		}
	}
	return res
}

func TestCheck_FindsAStaleRead(t *testing.T) {
	h := []event{
		{write: true, key: 1, version: 1, begin: 1, end: 2},
		{key: 1, version: 0, begin: 3, end: 4}, // stale: v1 was acknowledged at 2
		{key: 1, version: 1, begin: 5, end: 6},
		{key: 1, version: 0, begin: 1, end: 7}, // overlapped the write: fine
		{write: true, key: 2, version: 1, begin: 8, end: 9},
	}
	res := check(h)
	if res.violations != 1 || res.reads != 3 || res.writes != 2 {
		t.Fatalf("check = %+v, want 1 violation in 3 reads and 2 writes", res)
	}
}

// TestConsistency_NoStaleReads runs the checker against this library and
// against the seed's algorithm on every backend. CONSISTENCY_OPS sets the
// operations per run (default 4,000).
func TestConsistency_NoStaleReads(t *testing.T) {
	cfg := defaultCheck
	if n, err := strconv.Atoi(os.Getenv("CONSISTENCY_OPS")); err == nil && n > 0 {
		cfg.ops = n
	}
	if testing.Short() {
		cfg.ops = 1000
	}
	forEachBackendMaker(t, func(t *testing.T, mk func(testing.TB) backend) {
		ours := mk(t)
		repo := newVersionedRepo(cfg.keys, cfg.repoDelay)
		svcs := make([]checkedService, cfg.instances)
		for i := range svcs {
			svcs[i] = NewUserService(repo, delayCache{c: ours.fork(t), maxDelay: cfg.cacheDelay},
				WithRelatedKeys(nil), WithCacheTimeout(5*time.Second))
		}
		lib := runChecker(t, cfg, svcs)

		base := mk(t)
		repo = newVersionedRepo(cfg.keys, cfg.repoDelay)
		seeds := make([]*seedService, cfg.instances)
		for i := range svcs {
			seeds[i] = &seedService{db: repo, cache: delayCache{c: base.fork(t), maxDelay: cfg.cacheDelay}}
			svcs[i] = seeds[i]
		}
		seed := runChecker(t, cfg, svcs)
		for _, s := range seeds {
			s.fills.Wait()
		}

		t.Logf("consistency checker on %s, %d instances, %d keys: cacheaside: %d violations in %d operations (%d values read, %d writes)",
			ours.name, cfg.instances, cfg.keys, lib.violations, lib.ops, lib.reads, lib.writes)
		t.Logf("consistency checker on %s, %d instances, %d keys: seed's algorithm: %d violations in %d operations (%d values read, %d writes); first: %s",
			base.name, cfg.instances, cfg.keys, seed.violations, seed.ops, seed.reads, seed.writes, seed.example)
		if lib.violations != 0 {
			t.Errorf("cacheaside served %d stale reads; first: %s", lib.violations, lib.example)
		}
		if seed.violations == 0 {
			t.Errorf("the checker found no stale read in the seed's algorithm over %d operations: it has no teeth", seed.reads+seed.writes)
		}
	})
}

// TestConsistency_WithFaults runs the checker against a redis-server of its
// own while Redis is paused and resumed and one instance's connections are
// reset again and again. A write whose delete failed may be seen stale by
// another instance until the retry lands: the test reports how many such
// reads there were and the longest window. Once every pending invalidation
// has landed, every instance reads the newest version of every key.
func TestConsistency_WithFaults(t *testing.T) {
	srv := redisproc.Start(t, redisproc.Options{})
	cfg := defaultCheck
	if testing.Short() {
		cfg.ops = 1000
	}
	repo := newVersionedRepo(cfg.keys, cfg.repoDelay)
	svcs := make([]checkedService, cfg.instances)
	users := make([]*UserService, cfg.instances)
	proxies := make([]*faultproxy.Proxy, cfg.instances)
	for i := range svcs {
		p, err := faultproxy.New(srv.Addr())
		require.NoError(t, err)
		t.Cleanup(func() { p.Close() })
		c := redis.NewClient(&redis.Options{Addr: p.Addr()})
		t.Cleanup(func() { c.Close() })
		users[i] = NewUserService(repo, delayCache{c: NewRedisCache(c), maxDelay: cfg.cacheDelay}, WithRelatedKeys(nil))
		t.Cleanup(func() { users[i].Close() })
		svcs[i], proxies[i] = users[i], p
	}

	stop := make(chan struct{})
	var faults sync.WaitGroup
	var pauses, resets atomic.Int64
	faults.Go(func() { // Redis stalls for 150 ms every 400 ms
		for {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			srv.Pause()
			pauses.Add(1)
			time.Sleep(150 * time.Millisecond)
			srv.Resume()
		}
	})
	faults.Go(func() { // instance 0's connections are reset every 30 ms
		every(stop, 30*time.Millisecond, func() {
			proxies[0].ResetAll()
			resets.Add(1)
		})
	})
	res := runChecker(t, cfg, svcs)
	close(stop)
	faults.Wait()

	var retries, pausesOpened int64
	for _, u := range users {
		require.Eventually(t, func() bool { return u.GetMetrics().PendingInvalidations == 0 }, 10*time.Second, 10*time.Millisecond)
		m := u.GetMetrics()
		retries += m.InvalidationRetries
		pausesOpened += m.CacheBreakerOpens
	}
	t.Logf("checker with faults (%d pauses of Redis, %d resets of instance 0's connections): %d stale reads in %d operations (%d values read, %d writes), longest window %v; %d invalidation retries, %d breaker openings; first: %s",
		pauses.Load(), resets.Load(), res.violations, res.ops, res.reads, res.writes, res.window.Round(time.Millisecond), retries, pausesOpened, res.example)

	// Every pending invalidation has landed: no instance serves an old
	// version any more.
	ctx := context.Background()
	for i, u := range users {
		for id := 1; id <= cfg.keys; id++ {
			want, err := repo.GetUser(ctx, id)
			require.NoError(t, err)
			got, err := u.GetUser(ctx, id)
			require.NoError(t, err)
			require.Equal(t, want.Name, got.Name, "instance %d serves an old version of user %d after every invalidation landed", i, id)
		}
	}
}
