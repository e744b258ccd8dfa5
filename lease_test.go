package cacheaside

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// testLeaserContract checks what the service relies on from a Leaser.
func testLeaserContract(t *testing.T, b backend) {
	ctx := context.Background()
	l, ok := b.cache.(Leaser)
	require.True(t, ok, "%s must implement Leaser", b.name)

	lease1, lease2 := newLease(), newLease()
	require.NotEqual(t, lease1, lease2, "tokens are per call")
	held, err := l.SetNX(ctx, "k", lease1, time.Minute)
	require.NoError(t, err)
	require.Nil(t, held, "an empty key takes the lease")
	raw, _ := b.raw("k")
	require.Equal(t, string(lease1), raw)
	require.InDelta(t, float64(time.Minute), float64(b.ttl("k")), float64(2*time.Second))

	held, err = l.SetNX(ctx, "k", lease2, time.Minute)
	require.NoError(t, err)
	require.Equal(t, lease1, held, "a held key reports its holder and keeps it")

	swapped, err := l.CompareAndSwap(ctx, "k", lease2, []byte(`{"v":2}`), time.Hour)
	require.NoError(t, err)
	require.False(t, swapped, "a foreign lease cannot fill")
	swapped, err = l.CompareAndSwap(ctx, "k", lease1, []byte(`{"v":1}`), time.Hour)
	require.NoError(t, err)
	require.True(t, swapped)
	raw, _ = b.raw("k")
	require.Equal(t, `{"v":1}`, raw)
	require.InDelta(t, float64(time.Hour), float64(b.ttl("k")), float64(2*time.Second), "the fill carries its own TTL")

	held, err = l.SetNX(ctx, "k", lease2, time.Minute)
	require.NoError(t, err)
	require.Equal(t, `{"v":1}`, string(held), "a filled key answers the lease with its value")

	// An invalidation deletes the lease, and with it the holder's right to
	// fill.
	require.NoError(t, b.cache.Delete(ctx, "k"))
	_, _ = l.SetNX(ctx, "k", lease1, time.Minute)
	require.NoError(t, b.cache.Delete(ctx, "k"))
	swapped, err = l.CompareAndSwap(ctx, "k", lease1, []byte(`{"v":0}`), time.Hour)
	require.NoError(t, err)
	require.False(t, swapped, "a fill after the invalidation must be a no-op")
	_, ok = b.raw("k")
	require.False(t, ok)

	// A nil value releases the holder's own lease only.
	_, _ = l.SetNX(ctx, "k", lease1, time.Minute)
	swapped, _ = l.CompareAndSwap(ctx, "k", lease2, nil, 0)
	require.False(t, swapped)
	swapped, _ = l.CompareAndSwap(ctx, "k", lease1, nil, 0)
	require.True(t, swapped)
	_, ok = b.raw("k")
	require.False(t, ok)
}

func TestLeaser_Contract(t *testing.T) {
	forEachBackend(t, testLeaserContract)
}

// TestLease_StaleFillAcrossInstances is the cache-aside race across two
// instances that share one cache: a reader on one holds the old row inside
// the repository, a writer on the other updates and invalidates, the reader
// is released and tries its fill. Per-process generations cannot see the
// writer; the lease can.
func TestLease_StaleFillAcrossInstances(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "old")
		reader := NewUserService(repo, b.fork(t))
		writer := NewUserService(repo, b.fork(t))
		key := userCacheKey(u.ID)

		entered, release := holdFirstRead(repo)
		stale := getAsync(t, reader, u.ID)
		<-entered // the reader has the old row in hand
		raw, ok := b.raw(key)
		require.True(t, ok)
		require.True(t, isLease([]byte(raw)), "the reader's lease is in the key: %s", raw)

		require.NoError(t, writer.UpdateUser(ctx, &User{ID: u.ID, Name: "new", Email: u.Email}))
		close(release)
		require.Equal(t, "new", (<-stale).Name, "the holder lost its lease: it looks again, and loads the new row")
		require.Equal(t, int64(1), reader.GetMetrics().StaleFillsSkipped, "the reader's fill must be refused")
		require.Equal(t, int64(1), reader.GetMetrics().RefusedFillReloads)
		raw, _ = b.raw(key)
		require.NotContains(t, raw, `"old"`, "the old row must not be in the cache")

		third := NewUserService(repo, b.fork(t))
		for _, svc := range []*UserService{reader, writer, third, reader} {
			got, err := svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, "new", got.Name, "every instance serves the new row")
		}
		require.Equal(t, int64(2), repo.gets.Load(), "the first read after the race loads once; the rest hit")
	})
}

// TestLease_FleetStampede is 8 instances, each with its own client, and 25
// goroutines each on one cold key with an 80 ms database: one DB query in
// all, every caller gets the user.
func TestLease_FleetStampede(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "hot")
		const instances, perInstance = 8, 25
		svcs := make([]*UserService, instances)
		// The load holds on until another instance waits on its lease (at
		// most 5 s), and 80 ms more: with a fixed delay alone, a loaded
		// machine once ran every other instance's first read after the
		// fill, and nobody had to wait.
		repo.setHook(func(context.Context, int) {
			for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
				var waits int64
				for _, svc := range svcs {
					waits += svc.GetMetrics().LeaseWaits
				}
				if waits > 0 {
					break
				}
			}
			time.Sleep(80 * time.Millisecond)
		})
		for i := range svcs {
			// 200 callers at once on a race-instrumented miniredis can take
			// longer than the default time box, which is not what this test
			// is about.
			svcs[i] = NewUserService(repo, b.fork(t), WithCacheTimeout(5*time.Second))
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		var ok, failed atomic.Int64
		for _, svc := range svcs {
			for range perInstance {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					got, err := svc.GetUser(ctx, u.ID)
					if err == nil && got.Name == "hot" {
						ok.Add(1)
					} else {
						failed.Add(1)
						t.Errorf("GetUser: %v, %v", got, err)
					}
				}()
			}
		}
		close(start)
		wg.Wait()
		require.Equal(t, int64(instances*perInstance), ok.Load())
		require.Equal(t, int64(1), repo.gets.Load(), "a fleet-wide stampede must reach the database once")
		var waits, loads int64
		for _, svc := range svcs {
			m := svc.GetMetrics()
			waits += m.LeaseWaits
			loads += m.DatabaseLoads
			require.Zero(t, m.LeaseWaitTimeouts)
		}
		require.Equal(t, int64(1), loads)
		require.GreaterOrEqual(t, waits, int64(1), "the other instances waited on the lease")
		t.Logf("%d instances x %d goroutines on one cold key: %d DB query, %d instances waited on the lease",
			instances, perInstance, repo.gets.Load(), waits)
	})
}

// TestLease_DeadHolderIsTakenOver places a lease whose holder never comes
// back: the next reader waits for it to expire, takes the key over, loads
// and fills.
func TestLease_DeadHolderIsTakenOver(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "lazarus")
		key := userCacheKey(u.ID)
		_, err := b.cache.(Leaser).SetNX(ctx, key, newLease(), 150*time.Millisecond)
		require.NoError(t, err)

		svc := NewUserService(repo, b.fork(t))
		done := make(chan error, 1)
		go func() {
			got, err := svc.GetUser(ctx, u.ID)
			if err == nil && got.Name != "lazarus" {
				err = errInjected
			}
			done <- err
		}()
		require.NoError(t, awaitAdvancing(b, done))
		m := svc.GetMetrics()
		require.Equal(t, int64(1), m.LeaseWaits)
		require.Zero(t, m.LeaseWaitTimeouts)
		require.Equal(t, int64(1), repo.gets.Load())
		raw, ok := b.raw(key)
		require.True(t, ok)
		require.Contains(t, raw, `"name":"lazarus"`, "the reader that took over fills the key")
	})
}

// TestLease_WaitBound: a reader that waits out WithLeaseWait takes the key
// over from the slow holder: its lease replaces the holder's, and it loads
// and fills, so the holder's fill will be refused.
func TestLease_WaitBound(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "patient")
		key := userCacheKey(u.ID)
		foreign := newLease()
		_, err := b.cache.(Leaser).SetNX(ctx, key, foreign, time.Minute)
		require.NoError(t, err)

		svc := NewUserService(repo, b.fork(t), WithLeaseWait(50*time.Millisecond))
		begin := time.Now()
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "patient", got.Name)
		require.GreaterOrEqual(t, time.Since(begin), 50*time.Millisecond)
		m := svc.GetMetrics()
		require.Equal(t, int64(1), m.LeaseWaitTimeouts)
		require.Equal(t, int64(1), repo.gets.Load())
		raw, _ := b.raw(key)
		require.Contains(t, raw, `"name":"patient"`, "the reader that took the key over fills it")
		ok, err := b.cache.(Leaser).CompareAndSwap(ctx, key, foreign, []byte(`{"stale":true}`), time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "the slow holder's fill must be refused")

		_, err = b.cache.(Leaser).CompareAndSwap(ctx, key, []byte(raw), foreign, time.Minute)
		require.NoError(t, err)
		noWait := NewUserService(repo, b.fork(t), WithLeaseWait(0))
		_, err = noWait.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, int64(1), noWait.GetMetrics().LeaseWaitTimeouts)
		raw, _ = b.raw(key)
		require.Contains(t, raw, `"name":"patient"`, "with no wait, the key is taken over at once")
	})
}

// TestLease_FailedLoadReleases: a holder whose read fails removes its lease
// at once, so the next reader does not wait for it to expire.
func TestLease_FailedLoadReleases(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "flaky")
		svc := NewUserService(repo, b.cache)
		repo.setErr(errInjected)
		_, err := svc.GetUser(ctx, u.ID)
		require.ErrorIs(t, err, errInjected)
		_, ok := b.raw(userCacheKey(u.ID))
		require.False(t, ok, "the failed holder's lease must be gone")

		repo.setErr(nil)
		other := NewUserService(repo, b.fork(t), WithLeaseWait(time.Minute))
		got, err := other.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "flaky", got.Name)
		require.Zero(t, other.GetMetrics().LeaseWaits)
	})
}

// TestLease_BatchWaitsForForeignLease: a batch read takes leases on its
// misses, loads the ones it holds with one batch query, and waits for the
// key another instance is loading instead of querying it too.
func TestLease_BatchWaitsForForeignLease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		a := seedUser(t, repo, "ada")
		c := seedUser(t, repo, "cy")
		other := b.cache.(Leaser)
		foreign := newLease()
		_, err := other.SetNX(ctx, userCacheKey(c.ID), foreign, time.Minute)
		require.NoError(t, err)
		go func() {
			time.Sleep(50 * time.Millisecond) // the other instance's load
			_, _ = other.CompareAndSwap(ctx, userCacheKey(c.ID), foreign,
				[]byte(`{"id":`+strconv.Itoa(c.ID)+`,"name":"cy","email":"cy@example.com"}`), time.Minute)
		}()

		svc := NewUserService(repo, b.fork(t))
		got, err := svc.GetUsersBatch(ctx, []int{a.ID, c.ID, 99})
		require.NoError(t, err)
		require.Equal(t, "ada", got[0].Name)
		require.Equal(t, "cy", got[1].Name)
		require.Nil(t, got[2])
		require.Equal(t, int64(1), repo.batchGets.Load(), "the leased misses load in one batch")
		require.Zero(t, repo.gets.Load(), "the foreign-leased key is waited for, not queried")
		require.Equal(t, int64(1), svc.GetMetrics().LeaseWaits)
		raw, _ := b.raw(userCacheKey(a.ID))
		require.Contains(t, raw, `"name":"ada"`)
		raw, _ = b.raw(userCacheKey(99))
		require.Equal(t, string(absentMarker), raw)
	})
}

// TestLease_LeaseIsNeverServed: a GET that finds a lease treats it as a
// miss, for single and batch reads alike, and never counts it as a decode
// error.
func TestLease_LeaseIsNeverServed(t *testing.T) {
	b := miniredisBackend(t)
	ctx := context.Background()
	repo := newTestRepo()
	u := seedUser(t, repo, "x")
	lease := newLease()
	require.True(t, strings.HasPrefix(string(lease), `"\u0000cacheaside:lease:`))
	require.NoError(t, b.client.Set(ctx, b.prefix+userCacheKey(u.ID), lease, time.Minute).Err())
	svc := NewUserService(repo, b.cache, WithLeaseWait(0))
	got, err := svc.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, "x", got.Name)
	list, err := svc.GetUsersBatch(ctx, []int{u.ID})
	require.NoError(t, err)
	require.Equal(t, "x", list[0].Name)
	m := svc.GetMetrics()
	require.Zero(t, m.DecodeErrors)
	require.Equal(t, int64(1), repo.gets.Load(), "the lease was taken over and the value read once")
}

// TestLease_SlowHolderLosesItsLease: a holder slower than the lease TTL
// loses the key to the next reader, which loads and fills; the slow
// holder's fill is refused and it still answers its own caller.
func TestLease_SlowHolderLosesItsLease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "tortoise")
		key := userCacheKey(u.ID)
		entered, release := holdFirstRead(repo)
		slow := NewUserService(repo, b.fork(t), WithLeaseTTL(100*time.Millisecond))
		fast := NewUserService(repo, b.fork(t))

		slowDone := make(chan error, 1)
		go func() {
			got, err := slow.GetUser(ctx, u.ID)
			if err == nil && got.Name != "tortoise" {
				err = errInjected
			}
			slowDone <- err
		}()
		<-entered
		fastDone := make(chan error, 1)
		go func() {
			_, err := fast.GetUser(ctx, u.ID)
			fastDone <- err
		}()
		// Until the lease expires and the fast reader takes the key over.
		require.NoError(t, awaitAdvancing(b, fastDone))
		close(release)
		require.NoError(t, <-slowDone)
		require.Equal(t, int64(1), slow.GetMetrics().StaleFillsSkipped, "the slow holder's fill must be refused")
		require.Equal(t, int64(1), fast.GetMetrics().LeaseWaits)
		require.Equal(t, int64(2), repo.gets.Load())
		raw, ok := b.raw(key)
		require.True(t, ok)
		require.Contains(t, raw, `"name":"tortoise"`, "the reader that took over filled the key")
	})
}

// TestLease_WithoutExpiryIsNoLease: a lease-shaped value planted without an
// expiry (every lease has one) would stall every reader of the key for the
// lease wait, for ever; the cache treats the key as empty instead, and the
// first reader loads and fills it at once.
func TestLease_WithoutExpiryIsNoLease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "unstuck")
		key := userCacheKey(u.ID)
		b.setRaw(key, string(newLease())) // no expiry
		svc := NewUserService(repo, b.fork(t), WithLeaseWait(time.Minute))
		begin := time.Now()
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "unstuck", got.Name)
		require.Less(t, time.Since(begin), time.Second, "the planted lease stalled the read")
		m := svc.GetMetrics()
		require.Zero(t, m.LeaseWaits)
		raw, _ := b.raw(key)
		require.Contains(t, raw, `"name":"unstuck"`, "the reader filled the key")
	})
}

// holdBeforeRead is a repository whose first read waits, before it reads,
// until the test lets it go.
type holdBeforeRead struct {
	*testRepo
	once             sync.Once
	entered, release chan struct{}
}

func (r *holdBeforeRead) GetUser(ctx context.Context, id int) (*User, error) {
	r.once.Do(func() {
		close(r.entered)
		<-r.release
	})
	return r.testRepo.GetUser(ctx, id)
}

// TestLease_RefusedHolderLooksAgain: a holder whose lease a write removed,
// and whose read comes only after a later write committed, neither fills
// nor returns that read: it looks at the key again, finds the later
// write's marker, and answers from the source, as every other reader does
// meanwhile.
func TestLease_RefusedHolderLooksAgain(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := &holdBeforeRead{testRepo: newTestRepo(), entered: make(chan struct{}), release: make(chan struct{})}
		u := seedUser(t, repo.testRepo, "v0")
		holder := NewUserService(repo, b.fork(t))
		writer := NewUserService(repo.testRepo, b.fork(t))
		reader := NewUserService(repo.testRepo, b.fork(t))
		for _, s := range []*UserService{holder, writer, reader} {
			t.Cleanup(func() { s.Close() })
		}
		held := getAsync(t, holder, u.ID)
		awaitEntered(t, repo.entered) // the holder has its lease, and has not read yet
		require.NoError(t, writer.UpdateUser(ctx, &User{ID: u.ID, Name: "v1", Email: u.Email}))
		got, err := reader.GetUser(ctx, u.ID) // loads v1 under a lease of its own, and fills
		require.NoError(t, err)
		require.Equal(t, "v1", got.Name)

		committed, finish := make(chan struct{}), make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- writer.users.Write(ctx, u.ID, func(ctx context.Context) error {
				err := repo.testRepo.UpdateUser(ctx, &User{ID: u.ID, Name: "v2", Email: u.Email})
				close(committed)
				<-finish // committed, not yet deleted from the cache
				return err
			})
		}()
		<-committed
		close(repo.release) // the holder reads v2 now
		require.Equal(t, "v2", (<-held).Name, "the holder lost its lease: it answers from the source past the marker")
		require.Equal(t, int64(1), holder.GetMetrics().RefusedFillReloads)
		raw, _ := b.raw(userCacheKey(u.ID))
		require.True(t, strings.HasPrefix(raw, writingPrefix), "the second write's marker, not the holder's read, holds the key: %q", raw)
		got, err = reader.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "v2", got.Name)

		close(finish)
		require.NoError(t, <-done)
		got, err = holder.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "v2", got.Name)
	})
}

// commandNames records the names of the commands a go-redis client sends,
// with "set nx get" for the native lease command.
type commandNames struct {
	mu    sync.Mutex
	names []string
}

func (c *commandNames) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *commandNames) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name := cmd.Name()
		if name == "set" && strings.Contains(strings.ToLower(fmt.Sprint(cmd.Args())), " nx get ") {
			name = "set nx get"
		}
		c.mu.Lock()
		c.names = append(c.names, name)
		c.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (c *commandNames) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (c *commandNames) count(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.names {
		if s == name {
			n++
		}
	}
	return n
}

// TestLease_PollIsOneRoundTrip: a waiter polling another caller's lease
// asks with the lease script alone, one round trip per poll; only its
// first look uses the native SET NX GET, which answers a held key with
// nothing the script would not have to read again.
func TestLease_PollIsOneRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		if b.client == nil {
			t.Skip("the memory cache has no round trips")
		}
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "polled")
		key := userCacheKey(u.ID)
		require.NoError(t, b.client.Set(ctx, b.prefix+key, newLease(), time.Minute).Err())
		go func() { // the holder dies; its lease goes
			time.Sleep(40 * time.Millisecond)
			b.client.Del(ctx, b.prefix+key)
		}()
		// ContextTimeoutEnabled: the cache then uses the client as it is,
		// hooks and all, rather than a clone (see rediscache.New).
		var c redis.UniversalClient
		switch x := b.client.(type) {
		case *redis.Client:
			o := *x.Options()
			o.ContextTimeoutEnabled = true
			c = redis.NewClient(&o)
		case *redis.ClusterClient:
			o := *x.Options()
			o.ContextTimeoutEnabled = true
			c = redis.NewClusterClient(&o)
		}
		t.Cleanup(func() { c.Close() })
		names := new(commandNames)
		c.AddHook(names)
		svc := NewUserService(repo, NewRedisCache(c, WithKeyPrefix(b.prefix)))
		got, err := svc.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "polled", got.Name)
		require.Equal(t, int64(1), svc.GetMetrics().LeaseWaits)
		scripts := names.count("evalsha") + names.count("eval")
		require.GreaterOrEqual(t, scripts, 3, "polls, the final take and the fill: %v", names.names)
		require.LessOrEqual(t, names.count("set nx get"), 1, "every poll but the first must be the script alone: %v", names.names)
	})
}
