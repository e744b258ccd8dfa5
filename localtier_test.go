package cacheaside

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cacheaside/cacheaside/internal/faultproxy"
	"github.com/cacheaside/cacheaside/internal/redisproc"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// commandCounter counts the commands a go-redis client sends.
type commandCounter struct{ n atomic.Int64 }

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// tierInstance is a service with a local tier over its own client to a
// backend's storage, and a count of the commands its client sent (nil for
// the memory cache).
type tierInstance struct {
	svc  *UserService
	sent *commandCounter
}

// newTierInstance builds an instance over b with a local tier; on a Redis
// backend it has a client of its own.
func newTierInstance(t *testing.T, b backend, repo UserRepository, opts ...UserOption) tierInstance {
	t.Helper()
	opts = append([]UserOption{WithLocalCache(1000), WithLocalLease(300 * time.Millisecond), withJoinGrace(testJoinGrace), WithRelatedKeys(nil)}, opts...)
	var cache CacheClient
	var sent *commandCounter
	if rc, ok := b.fork(t).(*RedisCache); ok {
		sent = new(commandCounter)
		rc.c.Client().AddHook(sent)
		cache = rc
	} else {
		cache = b.cache
	}
	svc := NewUserService(repo, cache, opts...)
	t.Cleanup(func() { svc.Close() })
	return tierInstance{svc: svc, sent: sent}
}

// servingFleet builds n instances with local tiers over b and waits until
// each serves.
func servingFleet(t *testing.T, b backend, repo UserRepository, n int) []tierInstance {
	t.Helper()
	insts := make([]tierInstance, n)
	for i := range insts {
		insts[i] = newTierInstance(t, b, repo)
	}
	serving(t, insts...)
	return insts
}

// serving waits until every instance's tier may serve.
func serving(t *testing.T, insts ...tierInstance) {
	t.Helper()
	for _, in := range insts {
		require.Eventually(t, func() bool { return in.svc.GetMetrics().Membership == "serving" }, 10*time.Second, 5*time.Millisecond)
	}
}

// TestLocalTier_HitsFromMemory: once a value is in the local tier, reads of
// it send nothing to the cache, and each caller gets its own copy.
func TestLocalTier_HitsFromMemory(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "local")
		in := newTierInstance(t, b, repo)
		serving(t, in)
		_, err := in.svc.GetUser(ctx, u.ID) // miss: loaded, stored in Redis and in memory
		require.NoError(t, err)
		var before int64
		if in.sent != nil {
			before = in.sent.n.Load()
		}
		for range 100 {
			got, err := in.svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, "local", got.Name)
			got.Name = "mutated"
		}
		m := in.svc.GetMetrics()
		require.Equal(t, int64(100), m.LocalHits)
		require.Equal(t, int64(1), repo.gets.Load())
		if in.sent != nil {
			// The bus's own heartbeats and renewals go on meanwhile: a few.
			require.Less(t, in.sent.n.Load()-before, int64(20), "local hits must not reach Redis")
		}
		list, err := in.svc.GetUsersBatch(ctx, []int{u.ID, u.ID})
		require.NoError(t, err)
		require.Equal(t, "local", list[0].Name)
		require.NotSame(t, list[0], list[1])
		require.Equal(t, int64(101), in.svc.GetMetrics().LocalHits, "a repeated ID is read once")
	})
}

// TestLocalTier_WriteVisibleEverywhere: an update acknowledged on one
// instance is visible at once on every other, which held the old row in
// memory, while reads run on them all along; no read that starts after the
// acknowledgement returns the old row.
func TestLocalTier_WriteVisibleEverywhere(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "v0")
		insts := servingFleet(t, b, repo, 3)
		for _, in := range insts {
			_, err := in.svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			_, err = in.svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Positive(t, in.svc.GetMetrics().LocalHits, "every instance holds the row in memory")
		}

		var acked atomic.Int64 // the version last acknowledged
		var stale atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, in := range insts[1:] {
			for range 4 {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
						}
						want := acked.Load()
						got, err := in.svc.GetUser(ctx, u.ID)
						if err != nil {
							t.Errorf("GetUser: %v", err)
							return
						}
						if version(got) < want {
							stale.Add(1)
						}
					}
				})
			}
		}
		for v := int64(1); v <= 20; v++ {
			require.NoError(t, insts[0].svc.UpdateUser(ctx, &User{ID: u.ID, Name: "v" + itoa(v), Email: u.Email}))
			acked.Store(v)
			time.Sleep(5 * time.Millisecond)
		}
		close(stop)
		wg.Wait()
		var local int64
		for _, in := range insts[1:] {
			local += in.svc.GetMetrics().LocalHits
		}
		t.Logf("%s: 20 writes under read load: %d stale reads, %d local hits", b.name, stale.Load(), local)
		require.Zero(t, stale.Load(), "a read that began after a write was acknowledged returned an older row")
		require.Greater(t, local, int64(100), "the readers were served from memory between writes")
	})
}

func itoa(v int64) string { return formatID(v) }

// version reads the version in a name "v<n>".
func version(u *User) int64 {
	var v int64
	for _, c := range u.Name[1:] {
		v = v*10 + int64(c-'0')
	}
	return v
}

// proxiedInstance is a service with a local tier whose connections to srv
// go through a fault-injecting proxy.
func proxiedInstance(t *testing.T, addr string, repo UserRepository, opts ...UserOption) (*UserService, *faultproxy.Proxy) {
	t.Helper()
	p, err := faultproxy.New(addr)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	c := redis.NewClient(&redis.Options{Addr: p.Addr()})
	opts = append([]UserOption{WithLocalCache(1000), withJoinGrace(testJoinGrace), WithRelatedKeys(nil)}, opts...)
	svc := NewUserService(repo, NewRedisCache(c), opts...)
	t.Cleanup(func() {
		svc.Close()
		c.Close()
	})
	return svc, p
}

// TestLocalTier_PartitionedMemberNeverServesOld: an instance cut off from
// Redis (a proxy that black-holes its connections) holds the old row in
// memory; a write elsewhere waits for it at most about one lease, and once
// the write is acknowledged the cut-off instance never serves its old copy.
// When the partition heals, it serves from memory again.
func TestLocalTier_PartitionedMemberNeverServesOld(t *testing.T) {
	srv := redisproc.Start(t, redisproc.Options{})
	ctx := context.Background()
	repo := newTestRepo()
	u := seedUser(t, repo, "v0")
	a, pa := proxiedInstance(t, srv.Addr(), repo)
	cut, pc := proxiedInstance(t, srv.Addr(), repo)
	_ = pa
	for _, s := range []*UserService{a, cut} {
		require.Eventually(t, func() bool { return s.GetMetrics().Membership == "serving" }, 10*time.Second, 5*time.Millisecond)
		for range 2 {
			_, err := s.GetUser(ctx, u.ID)
			require.NoError(t, err)
		}
	}
	require.Positive(t, cut.GetMetrics().LocalHits)

	pc.Blackhole()
	begin := time.Now()
	require.NoError(t, a.UpdateUser(ctx, &User{ID: u.ID, Name: "v1", Email: u.Email}))
	took := time.Since(begin)
	for range 20 {
		got, err := cut.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "v1", got.Name, "the cut-off instance served its old copy after the write was acknowledged")
	}
	m := a.GetMetrics()
	t.Logf("a write waited %v for an instance cut off from Redis (lease %v); writes that waited: %d", took.Round(time.Millisecond), DefaultLocalLease, m.WritesWaited)
	require.Less(t, took, 3*DefaultLocalLease, "the write must wait at most about one lease")
	require.Equal(t, int64(1), m.WritesWaited)

	require.NoError(t, pc.Pass())
	require.Eventually(t, func() bool { return cut.GetMetrics().Membership == "serving" }, 10*time.Second, 10*time.Millisecond,
		"the instance serves from memory again once it hears the bus")
	hits := cut.GetMetrics().LocalHits
	require.Eventually(t, func() bool { // once its cache breaker has closed again
		got, err := cut.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "v1", got.Name)
		return cut.GetMetrics().LocalHits > hits
	}, 10*time.Second, 10*time.Millisecond, "the healed instance serves from memory again")
}

// TestLocalTier_RedisRestartEmptiesTiers: a restart of Redis drops every
// bus subscription, and every local tier is emptied before it serves
// again.
func TestLocalTier_RedisRestartEmptiesTiers(t *testing.T) {
	srv := redisproc.Start(t, redisproc.Options{})
	ctx := context.Background()
	repo := newTestRepo()
	u := seedUser(t, repo, "kept")
	s, _ := proxiedInstance(t, srv.Addr(), repo)
	require.Eventually(t, func() bool { return s.GetMetrics().Membership == "serving" }, 10*time.Second, 5*time.Millisecond)
	for range 2 {
		_, err := s.GetUser(ctx, u.ID)
		require.NoError(t, err)
	}
	require.Equal(t, int64(1), s.GetMetrics().LocalSize)
	srv.Kill()
	require.Eventually(t, func() bool { return s.GetMetrics().LocalSize == 0 }, 10*time.Second, 5*time.Millisecond,
		"a lost subscription empties the tier")
	require.NoError(t, repo.MemoryRepository.UpdateUser(ctx, &User{ID: u.ID, Name: "changed while Redis was down", Email: u.Email}))
	srv.Restart()
	require.Eventually(t, func() bool {
		got, err := s.GetUser(ctx, u.ID)
		return err == nil && got.Name == "changed while Redis was down"
	}, 10*time.Second, 10*time.Millisecond)
}

// TestLocalTier_RelaxedStalenessIsBounded: in relaxed mode writes wait for
// nobody, and another instance may serve the old row from memory until the
// bus delivers the invalidation: the test measures how long.
func TestLocalTier_RelaxedStalenessIsBounded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "v0")
		relaxed := WithRelaxedLocalCache(1000)
		w, r := newTierInstance(t, b, repo, relaxed), newTierInstance(t, b, repo, relaxed)
		serving(t, w, r)
		var worst time.Duration
		for v := int64(1); v <= 20; v++ {
			for range 2 {
				_, err := r.svc.GetUser(ctx, u.ID)
				require.NoError(t, err)
			}
			require.NoError(t, w.svc.UpdateUser(ctx, &User{ID: u.ID, Name: "v" + itoa(v), Email: u.Email}))
			acked := time.Now()
			for {
				got, err := r.svc.GetUser(ctx, u.ID)
				require.NoError(t, err)
				if version(got) == v {
					break
				}
				require.Less(t, time.Since(acked), 2*time.Second, "the old row outlived the bus's delivery")
			}
			worst = max(worst, time.Since(acked))
		}
		t.Logf("%s, relaxed: the old row was served at most %v after the write was acknowledged", b.name, worst)
		require.Zero(t, w.svc.GetMetrics().WritesWaited)
	})
}

// TestLocalTier_PartitionedWriterIsRefused: an instance cut off from Redis
// cannot tell the members about a write, so it must not make it: the
// write fails with ErrCacheUnavailable before it reaches the database, and
// the members, which still hold the row in memory, hold the right one. A
// writer without a local tier that has counted members is held to the
// same rule. When the partition heals, writes go through again.
func TestLocalTier_PartitionedWriterIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []UserOption
	}{{"writer with a tier", nil}, {"writer without a tier", []UserOption{withoutLocalCache()}}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redisproc.Start(t, redisproc.Options{})
			ctx := context.Background()
			repo := newTestRepo()
			u := seedUser(t, repo, "v0")
			member, _ := proxiedInstance(t, srv.Addr(), repo)
			writer, pw := proxiedInstance(t, srv.Addr(), repo, tc.opts...)
			require.Eventually(t, func() bool { return member.GetMetrics().Membership == "serving" }, 10*time.Second, 5*time.Millisecond)
			// A write while healthy: the writer counts the member.
			require.NoError(t, writer.UpdateUser(ctx, &User{ID: u.ID, Name: "v1", Email: u.Email}))
			// The member holds v1 in memory (once the write's end, which
			// nobody waits for, has reached it: until then it fills
			// nothing for the key).
			require.Eventually(t, func() bool {
				got, err := member.GetUser(ctx, u.ID)
				require.NoError(t, err)
				require.Equal(t, "v1", got.Name)
				return member.GetMetrics().LocalHits > 0
			}, 5*time.Second, 5*time.Millisecond)

			pw.Blackhole()
			err := writer.UpdateUser(ctx, &User{ID: u.ID, Name: "v2", Email: u.Email})
			require.ErrorIs(t, err, ErrCacheUnavailable)
			row, rerr := repo.MemoryRepository.GetUser(ctx, u.ID)
			require.NoError(t, rerr)
			require.Equal(t, "v1", row.Name, "a refused write must not reach the database")
			got, err := member.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, "v1", got.Name)
			require.Equal(t, int64(1), writer.GetMetrics().WritesRefused)

			require.NoError(t, pw.Pass())
			require.Eventually(t, func() bool {
				return writer.UpdateUser(ctx, &User{ID: u.ID, Name: "v3", Email: u.Email}) == nil
			}, 10*time.Second, 50*time.Millisecond, "writes go through once the partition heals")
			require.Eventually(t, func() bool {
				got, err := member.GetUser(ctx, u.ID)
				return err == nil && got.Name == "v3"
			}, 5*time.Second, 5*time.Millisecond)
		})
	}
}

// withoutLocalCache turns the local tier off again.
func withoutLocalCache() Option { return func(o *options) { o.local = 0 } }

// TestTier_OverlappingWritesBlockUntilBothAreDone: a key stays closed to
// fills while any write of it is between its prepare and its done, so the
// done of one of two overlapping writes does not reopen it.
func TestTier_OverlappingWritesBlockUntilBothAreDone(t *testing.T) {
	tr := newTier[User](10, time.Minute, "")
	tr.invalidate("user:1", msgPrepare, "w1")
	tr.invalidate("user:1", msgPrepare, "w2")
	tr.invalidate("user:1", msgDone, "w1")
	require.True(t, tr.isBlocked("user:1"), "w2 is still between its prepare and its done")
	tr.invalidate("user:1", msgDone, "other") // an Invalidate: no prepare to end
	require.True(t, tr.isBlocked("user:1"))
	tr.invalidate("user:1", msgCleared, "w2")
	require.False(t, tr.isBlocked("user:1"))

	short := newTier[User](10, time.Millisecond, "")
	short.invalidate("user:2", msgPrepare, "lost") // its done never comes
	require.Eventually(t, func() bool { return !short.isBlocked("user:2") }, time.Second, time.Millisecond)
	require.Empty(t, short.blocked, "a hold that ran out is forgotten")
}

// TestLocalTier_HealthyWritesWaitOnlyForPrepares: in a healthy fleet, each
// member acknowledges each write's prepare once and nothing else, and no
// write waits for a member's lease to run out. (The acknowledgements of a
// write's prepare and of its done once shared one list, whose delayed
// cleanup could take the done's: writes then waited twice the lease.)
func TestLocalTier_HealthyWritesWaitOnlyForPrepares(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newTestRepo()
		u := seedUser(t, repo, "v0")
		insts := servingFleet(t, b, repo, 3)
		before := make([]int64, len(insts))
		for i, in := range insts {
			before[i] = in.svc.GetMetrics().BusAcks
		}
		const writes = 50
		for n := range writes {
			for _, in := range insts[1:] { // the others hold the row in memory
				_, err := in.svc.GetUser(ctx, u.ID)
				require.NoError(t, err)
			}
			upd := *u
			upd.Name = "v" + strconv.Itoa(n+1)
			require.NoError(t, insts[0].svc.UpdateUser(ctx, &upd))
			for _, in := range insts[1:] {
				got, err := in.svc.GetUser(ctx, u.ID)
				require.NoError(t, err)
				require.Equal(t, upd.Name, got.Name)
			}
		}
		m := insts[0].svc.GetMetrics()
		require.Zero(t, m.WritesWaited, "a healthy member's acknowledgement was lost")
		require.Zero(t, m.WritesRefused)
		for i, in := range insts[1:] {
			acks := in.svc.GetMetrics().BusAcks - before[i+1]
			require.Equal(t, int64(writes), acks, "member %d: one acknowledgement per write, of its prepare", i+1)
		}
	})
}

// TestLocalTier_WrittenValueReachesMembers: an update that leaves its row in
// the shared cache hands it to every member with the message that ends it,
// so the first read of it on each member is a local hit that reaches
// neither Redis nor the repository. On a Redis Cluster the message carries
// no value (the key and the bus live on different nodes, so nothing makes
// the two one step), and the writer's own row is dropped when the message
// comes back to it: every instance then reads the row from Redis.
func TestLocalTier_WrittenValueReachesMembers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := NewMemoryRepository() // returns the row it stored
		u := seedUser(t, repo, "v0")
		insts := servingFleet(t, b, repo, 3)
		loads := func() (n int64) {
			for _, in := range insts {
				n += in.svc.GetMetrics().DatabaseLoads
			}
			return n
		}
		for _, in := range insts {
			_, err := in.svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
		}
		before := loads()
		require.NoError(t, insts[0].svc.UpdateUser(ctx, &User{ID: u.ID, Name: "v1", Email: u.Email}))
		require.Equal(t, int64(1), insts[0].svc.GetMetrics().WriteFills, "the update left its row in the cache")

		// localRead reads u on in and reports whether it was a local hit of
		// the new row.
		localRead := func(in tierInstance) bool {
			before := in.svc.GetMetrics().LocalHits
			got, err := in.svc.GetUser(ctx, u.ID)
			require.NoError(t, err)
			return got.Name == "v1" && in.svc.GetMetrics().LocalHits == before+1
		}
		if b.name == "redis-cluster" {
			return
		}
		for i, in := range insts {
			// The writer keeps the row it left, or, if its own messages
			// were still on their way, takes it from the bus like the
			// others.
			require.Eventually(t, func() bool {
				return in.svc.GetMetrics().LocalSize == 1
			}, 5*time.Second, time.Millisecond, "instance %d holds the row", i)
			var sent int64
			if in.sent != nil {
				sent = in.sent.n.Load()
			}
			require.True(t, localRead(in), "instance %d serves the new row from memory", i)
			if in.sent != nil {
				require.Less(t, in.sent.n.Load()-sent, int64(3), "instance %d read nothing from Redis (a heartbeat may go out)", i)
			}
		}
		require.Equal(t, before, loads(), "nobody read the repository")
	})
}

// TestTier_ValuesFromWritesFollowTheRules: a value a write left is taken
// by the tier under the rules of any fill: not while another write of the
// key is between its prepare and its done; not while a write of this
// process's own is not heard back from the bus (it was acknowledged
// without waiting for this process's subscription, which may still bring
// older values); and, for the writer's own value, not after anything else
// about the key arrived since the write ended in the cache (the bus may
// deliver a later write's prepare and done before the writer takes it).
func TestTier_ValuesFromWritesFollowTheRules(t *testing.T) {
	tr := newTier[User](10, time.Minute, "")
	b := &bus{}
	b.validUntil.Store(mono() + int64(time.Hour))
	b.serving.Store(true)
	tr.bus = b
	tr.decode = func(key string, raw []byte) (User, time.Time, bool) {
		return User{Name: string(raw)}, time.Now().Add(time.Minute), true
	}
	const key = "user:1"
	held := func() string {
		v, ok := tr.get(key)
		if !ok {
			return ""
		}
		return v.Name
	}

	tr.ownWrite(key, msgPrepare, "w1") // this process writes
	tk := tr.begin(key)
	tr.endOwn(key, "w1", []byte("v1"), tk)
	require.Equal(t, "v1", held(), "nothing arrived meanwhile: the writer keeps its value")
	tr.heard(key, msgPrepare, "w1", nil) // its messages come back
	tr.heard(key, msgCleared, "w1", []byte("v1"))
	require.Equal(t, "v1", held())

	tr.ownWrite(key, msgPrepare, "w2")
	tk = tr.begin(key) // w2 ends in the cache here
	tr.heard(key, msgPrepare, "w2", nil)
	tr.heard(key, msgCleared, "w2", []byte("v2")) // the bus brings its end back first,
	tr.heard(key, msgPrepare, "w3", nil)          // then another process's w3, whole
	tr.heard(key, msgCleared, "w3", []byte("v3"))
	tr.endOwn(key, "w2", []byte("v2"), tk)
	require.Equal(t, "v3", held(), "the bus did the writer's end: it takes nothing older")

	tr.ownWrite(key, msgPrepare, "w4")
	tk = tr.begin(key)
	tr.heard(key, msgPrepare, "w4", nil)
	tr.heard(key, msgDone, "x", nil) // an Invalidate elsewhere, published before w4's end
	tr.endOwn(key, "w4", []byte("v4"), tk)
	require.Empty(t, held(), "something about the key arrived since the ticket: the writer takes nothing")
	require.False(t, tr.isBlocked(key), "w4's end unblocks the key")
	tr.heard(key, msgCleared, "w4", []byte("v4"))
	require.Equal(t, "v4", held())

	tr.heard(key, msgPrepare, "w5", nil)
	tr.heard(key, msgCleared, "w6", []byte("v6"))
	require.Empty(t, held(), "w5 is between its prepare and its done")
	tr.heard(key, msgCleared, "w5", []byte("v5"))
	require.Equal(t, "v5", held())

	// Another process's w8 prepared here and ended in the cache with v8;
	// its done is late. This process's own w9 runs meanwhile (it waits for
	// nobody: no other member) and is acknowledged with v9.
	tr.heard(key, msgPrepare, "w8", nil)
	tr.ownWrite(key, msgPrepare, "w9")
	tk = tr.begin(key)
	tr.endOwn(key, "w9", []byte("v9"), tk)
	tr.heard(key, msgDone, "w8", []byte("v8"))
	require.Empty(t, held(), "v8 is older than this process's acknowledged w9")
	tr.heard(key, msgPrepare, "w9", nil)
	tr.heard(key, msgCleared, "w9", []byte("v9"))
	require.Equal(t, "v9", held())

	tr.ownWrite(key, msgDone, "x") // an Invalidate here
	tr.heard(key, msgDone, "w10", []byte("v10"))
	require.Empty(t, held(), "the Invalidate is not heard back yet")
	tr.heard(key, msgDone, "x", nil)
	tr.heard(key, msgDone, "w11", []byte("v11"))
	require.Equal(t, "v11", held())
}

// TestBusMsg_KeysWithNewlines: a key may hold newlines (string IDs are not
// escaped for them); every message decodes to its own key, and a message
// that carries a value keeps the value apart from the key.
func TestBusMsg_KeysWithNewlines(t *testing.T) {
	for _, key := range []string{"p:1", "p:a\nb", "p:\n", "p:"} {
		for _, kind := range []byte{msgPrepare, msgDone, msgCleared} {
			m := busMsg{kind: kind, id: "w1", key: key}
			got, ok := decodeBusMsg(m.encode())
			require.True(t, ok)
			require.Equal(t, m, got)
		}
		for _, kind := range []byte{msgDone, msgCleared} {
			m := busMsg{kind: kind, id: "w1", key: key}
			row := []byte("{\"v\":1}\nmore")
			got, ok := decodeBusMsg(append(m.rowHeader(), row...))
			require.True(t, ok)
			m.val = row
			require.Equal(t, m, got)
		}
	}
	_, ok := decodeBusMsg([]byte("D\nw1\n99\nshort"))
	require.False(t, ok, "a key longer than the message")
}
