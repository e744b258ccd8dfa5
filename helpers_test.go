package cacheaside

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

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

// getAsync reads user id through svc on a goroutine of its own and
// delivers what it read; a failed read fails the test.
func getAsync(t *testing.T, svc *UserService, id int) <-chan *User {
	ch := make(chan *User, 1)
	go func() {
		got, err := svc.GetUser(context.Background(), id)
		if err != nil {
			t.Errorf("GetUser(%d): %v", id, err)
		}
		ch <- got
	}()
	return ch
}

// testJoinGrace is how long a member that joins the bus fills nothing, in
// tests: it must outlast a write that missed it, whose prepare may wait two
// of the tests' 300 ms leases before the write changes the source (see
// doc.go; with 150 ms, TestLinearizable_WithFaults failed about once in 25
// runs), and still not slow the tests down much.
const testJoinGrace = 800 * time.Millisecond

// withJoinGrace sets how long a member that (re)joins the bus fills
// nothing (the load timeout by default).
func withJoinGrace(d time.Duration) Option { return func(o *options) { o.joinGrace = d } }

// every runs f every d until stop is closed.
func every(stop <-chan struct{}, d time.Duration, f func()) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(d):
			f()
		}
	}
}
