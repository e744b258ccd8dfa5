package cacheaside

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// gatedRepo holds every UpdateUser in the middle, before it changes the
// row, until the test lets it go: the test looks at the cache while a
// write is in progress.
type gatedRepo struct {
	*testRepo
	entered chan struct{}
	release chan struct{}
}

func newGatedRepo() *gatedRepo {
	return &gatedRepo{testRepo: newTestRepo(), entered: make(chan struct{}), release: make(chan struct{})}
}

func (r *gatedRepo) UpdateUser(ctx context.Context, u *User) error {
	r.entered <- struct{}{}
	<-r.release
	return r.testRepo.UpdateUser(ctx, u)
}

// midWrite starts an update of u to name on svc, runs during while the
// update is held before the row changes, and returns once it finished.
func midWrite(t *testing.T, svc *UserService, repo *gatedRepo, u *User, name string, during func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- svc.UpdateUser(context.Background(), &User{ID: u.ID, Name: name, Email: u.Email}) }()
	select {
	case <-repo.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the update never reached the repository")
	}
	during()
	close(repo.release)
	require.NoError(t, <-done)
	repo.release = make(chan struct{})
}

// TestWrite_AlwaysPlacesIntent: every write replaces the key with a
// write-intent marker before the source changes, whether or not the fleet
// has members with local tiers: a write that deleted the old value only
// afterwards would leave it readable everywhere if that delete failed.
func TestWrite_AlwaysPlacesIntent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := newGatedRepo()
		u := seedUser(t, repo, "v0")
		w := NewUserService(repo, b.fork(t), WithRelatedKeys(nil))
		t.Cleanup(func() { w.Close() })
		key := userCacheKey(u.ID)
		held := func() string {
			raw, _ := b.raw(key)
			return raw
		}
		for v := range 3 {
			if v == 2 { // and with a member counted
				m := newTierInstance(t, b, repo)
				serving(t, m)
			}
			_, err := w.GetUser(ctx, u.ID)
			require.NoError(t, err)
			midWrite(t, w, repo, u, "v"+itoa(int64(v+1)), func() {
				require.True(t, strings.HasPrefix(held(), writingPrefix), "write %d: the old value must be gone before the source changes, found %q", v+1, held())
			})
			got, err := w.GetUser(ctx, u.ID)
			require.NoError(t, err)
			require.Equal(t, "v"+itoa(int64(v+1)), got.Name)
		}
	})
}

// TestWrite_JoinerFillsNothingDuringItsGrace: a member that joins finds
// the old value in the shared cache while a write that went on without
// its marker may still be changing the source; it must not keep it in
// memory, or it could serve it after the write's new value was seen
// elsewhere. It fills nothing for its grace; with no grace, the same reads
// fill its tier, which shows what the grace keeps out.
func TestWrite_JoinerFillsNothingDuringItsGrace(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grace time.Duration
	}{{"grace", time.Minute}, {"no grace", time.Nanosecond}} {
		t.Run(tc.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, b backend) {
				ctx := context.Background()
				repo := newTestRepo()
				u := seedUser(t, repo, "v1")
				w := NewUserService(repo, b.fork(t), WithRelatedKeys(nil))
				t.Cleanup(func() { w.Close() })
				_, err := w.GetUser(ctx, u.ID) // v1 cached
				require.NoError(t, err)
				// The write that lost its marker: the source changes, the
				// shared cache still holds v1 until its delete lands.
				require.NoError(t, repo.UpdateUser(ctx, &User{ID: u.ID, Name: "v2", Email: u.Email}))

				joiner := newTierInstance(t, b, repo, withJoinGrace(tc.grace))
				require.Eventually(t, func() bool {
					return strings.HasPrefix(joiner.svc.GetMetrics().Membership, "joining") ||
						joiner.svc.GetMetrics().Membership == "serving"
				}, 10*time.Second, 5*time.Millisecond)
				for range 3 {
					got, err := joiner.svc.GetUser(ctx, u.ID)
					require.NoError(t, err)
					require.Equal(t, "v1", got.Name)
				}
				require.NoError(t, w.users.Invalidate(ctx, u.ID)) // the delete lands
				local := joiner.svc.GetMetrics().LocalHits
				if tc.grace == time.Minute {
					require.Zero(t, local, "a joiner in its grace served from memory")
					got, err := joiner.svc.GetUser(ctx, u.ID)
					require.NoError(t, err)
					require.Equal(t, "v2", got.Name)
				} else {
					require.Positive(t, local, "without a grace the joiner should have kept the old value: the test has no teeth")
				}
			})
		})
	}
}

// TestWrite_IntentPastAnOpenBreaker: an instance whose breaker opened stops
// reading the cache, but other instances, whose breakers are closed, go on
// reading it; so its writes still place their marker, past the breaker,
// rather than leave the old value readable until their delete's retry.
func TestWrite_IntentPastAnOpenBreaker(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	repo := newGatedRepo()
	u := seedUser(t, repo, "v0")
	other := NewUserService(repo, NewRedisCache(redis.NewClient(&redis.Options{Addr: mr.Addr()})), WithRelatedKeys(nil))
	t.Cleanup(func() { other.Close() })
	_, err := other.GetUser(ctx, u.ID) // v0 cached
	require.NoError(t, err)

	w := NewUserService(repo, NewRedisCache(redis.NewClient(&redis.Options{Addr: mr.Addr()})), WithRelatedKeys(nil), WithCacheBreaker(1, time.Minute))
	t.Cleanup(func() { w.Close() })
	mr.SetError("LOADING") // one failure opens w's breaker
	_, _ = w.GetUser(ctx, u.ID)
	mr.SetError("")
	require.Equal(t, int64(1), w.GetMetrics().CacheBreakerOpens)

	midWrite(t, w, repo, u, "v1", func() {
		raw, _ := mr.Get(userCacheKey(u.ID))
		require.True(t, strings.HasPrefix(raw, writingPrefix), "the old value must be gone before the source changes, found %q", raw)
		got, err := other.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "v0", got.Name, "the source has not changed yet")
	})
	got, err := other.GetUser(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, "v1", got.Name, "another instance must not read the replaced row after the write returned")
}

// TestWrite_OverlappingWritesKeepTheMarker: a write that begins while
// another is in progress stacks its token on the marker, and the key holds
// a marker until the last of them ends, whichever ends first; neither
// leaves its value, since the marker was shared. (A marker that the first
// write to end deleted left the second's commit unprotected: a reader
// could fill the row it replaced, and the porcupine checker caught one.)
func TestWrite_OverlappingWritesKeepTheMarker(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		for _, firstEnds := range []bool{true, false} {
			ctx := context.Background()
			u, svc, key, w1, w2 := overlappingWrites(t, b)
			require.True(t, w1.alone)
			require.False(t, w2.alone, "w2 began over w1's marker")
			first, second := w1, w2
			if !firstEnds {
				first, second = w2, w1
			}
			v := *u
			svc.users.leaveValue(&first, key, &v)
			svc.users.leaveValue(&second, key, &v)
			require.NoError(t, svc.users.endWrite(ctx, key, first, nil, nil))
			raw, ok := b.raw(key)
			require.True(t, ok && isWriting([]byte(raw)), "the other write is still in progress: %q", raw)
			require.NoError(t, svc.users.endWrite(ctx, key, second, nil, nil))
			requireDeletedUnfilled(t, b, key, svc, "both writes ended over a shared marker")
		}
	})
}

// TestWrite_UpdateLeavesTheStoredRow: an update through a repository that
// returns the row it stored leaves that row in the cache in place of its
// marker, so another instance's next read is a hit; without such a
// repository, the key is deleted as before.
func TestWrite_UpdateLeavesTheStoredRow(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		repo := NewMemoryRepository()
		u := seedUser(t, repo, "v0")
		writer := NewUserService(repo, b.fork(t))
		reader := NewUserService(repo, b.fork(t))
		t.Cleanup(func() { writer.Close(); reader.Close() })
		_, err := reader.GetUser(ctx, u.ID)
		require.NoError(t, err)
		upd := &User{ID: u.ID, Name: "v1", Email: "u@example.com"}
		require.NoError(t, writer.UpdateUser(ctx, upd))
		require.Equal(t, int64(1), writer.GetMetrics().WriteFills)
		raw, ok := b.raw(userCacheKey(u.ID))
		require.True(t, ok)
		require.Contains(t, raw, `"name":"v1"`)
		loads := reader.GetMetrics().DatabaseLoads
		got, err := reader.GetUser(ctx, u.ID)
		require.NoError(t, err)
		require.Equal(t, "v1", got.Name)
		require.Equal(t, u.CreateAt.UnixMicro(), got.CreateAt.UnixMicro(), "the stored row, not the caller's")
		require.Equal(t, loads, reader.GetMetrics().DatabaseLoads, "a hit")

		plain := newTestRepo() // embeds a MemoryRepository, overrides UpdateUser: no write-through
		p := seedUser(t, plain, "p0")
		svc := NewUserService(plain, b.fork(t))
		t.Cleanup(func() { svc.Close() })
		_, err = svc.GetUser(ctx, p.ID)
		require.NoError(t, err)
		require.NoError(t, svc.UpdateUser(ctx, &User{ID: p.ID, Name: "p1", Email: "u@example.com"}))
		_, ok = b.raw(userCacheKey(p.ID))
		require.False(t, ok, "deleted")
		require.Zero(t, svc.GetMetrics().WriteFills)
	})
}

// gatedReturner returns the rows it stores, and holds every update in the
// middle, before it changes the row, until the test lets it go.
type gatedReturner struct {
	*MemoryRepository
	entered, release chan struct{}
}

func (r gatedReturner) UpdateUserReturning(ctx context.Context, u *User) (*User, error) {
	close(r.entered)
	<-r.release
	return returnsStored(r.MemoryRepository.UpdateUser)(ctx, u)
}

// slowReads reads through to a MemoryRepository after a pause, and counts
// its reads.
type slowReads struct {
	*MemoryRepository
	pause time.Duration
	gets  *atomic.Int64
}

func (r slowReads) GetUser(ctx context.Context, id int) (*User, error) {
	r.gets.Add(1)
	time.Sleep(r.pause)
	return r.MemoryRepository.GetUser(ctx, id)
}

// TestWrite_ReaderWaitsForTheWritesValue: a reader that finds the marker of
// an update that will leave its row waits for that row, for up to its mean
// load time, rather than reading the repository: it returns the new row
// and the repository is not read.
func TestWrite_ReaderWaitsForTheWritesValue(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		data := NewMemoryRepository()
		u := seedUser(t, data, "v0")
		var gets atomic.Int64
		reader := NewUserService(slowReads{data, 200 * time.Millisecond, &gets}, b.fork(t))
		gate := gatedReturner{data, make(chan struct{}), make(chan struct{})}
		writer := NewUserService(gate, b.fork(t))
		t.Cleanup(func() { reader.Close(); writer.Close() })
		_, err := reader.GetUser(ctx, u.ID) // a load of 200 ms: the reader's mean
		require.NoError(t, err)
		require.Equal(t, int64(1), gets.Load())

		wrote := make(chan error, 1)
		go func() { wrote <- writer.UpdateUser(ctx, &User{ID: u.ID, Name: "v1", Email: "u@example.com"}) }()
		<-gate.entered
		raw, _ := b.raw(userCacheKey(u.ID))
		require.True(t, willFill([]byte(raw)), "the marker says the write will leave its row: %q", raw)
		got := getAsync(t, reader, u.ID)
		require.Eventually(t, func() bool { return reader.GetMetrics().LeaseWaits == 1 }, 5*time.Second, time.Millisecond)
		close(gate.release)
		require.NoError(t, <-wrote)
		v := <-got
		require.NotNil(t, v)
		require.Equal(t, "v1", v.Name)
		require.Equal(t, int64(1), gets.Load(), "the reader waited for the write's row, and read nothing")
		require.Equal(t, int64(1), writer.GetMetrics().WriteFills)
	})
}

// TestWrite_InvalidateKeepsAWriteInProgress: an Invalidate (a write of
// your own) of a key whose write is in progress leaves that write's
// marker, marked as shared: readers still find the key held, and the write
// does not leave its row at its end, since the other write may have
// changed the source after it. A plain delete used to end the marker's
// protection early.
func TestWrite_InvalidateKeepsAWriteInProgress(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		u, svcs := writeFixture(t, b, 2)
		writer, other, key := svcs[0], svcs[1], userCacheKey(u.ID)
		w, err := writer.users.beginWrite(ctx, key)
		require.NoError(t, err)
		require.True(t, w.alone)
		require.NoError(t, other.users.Invalidate(ctx, u.ID))
		raw, ok := b.raw(key)
		require.True(t, ok && isWriting([]byte(raw)), "the write's marker is still there: %q", raw)
		toks, shared := markerTokens([]byte(raw))
		require.True(t, shared, "the marker is marked as shared")
		require.Equal(t, []string{markerToken(w.marker)}, toks)

		v := *u
		v.Name = "v1"
		writer.users.leaveValue(&w, key, &v)
		require.NoError(t, writer.users.endWrite(ctx, key, w, nil, nil))
		requireDeletedUnfilled(t, b, key, writer, "the write ended over a shared marker")
	})
}

// TestWrite_RetriedEndTakesOutOnlyItsOwnToken: the retry of a write's end
// that failed takes that write's token out of the key's marker, as the end
// would have, rather than delete the key: another write that shares the
// marker keeps it.
func TestWrite_RetriedEndTakesOutOnlyItsOwnToken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		_, svc, key, w1, w2 := overlappingWrites(t, b)
		svc.users.queue([]string{key}, nil, w1.marker) // w1's end failed
		require.Eventually(t, func() bool { return svc.users.inv.n.Load() == 0 }, 5*time.Second, 5*time.Millisecond, "the retry landed")
		raw, ok := b.raw(key)
		require.True(t, ok && isWriting([]byte(raw)), "w2 is still in progress: %q", raw)
		toks, _ := markerTokens([]byte(raw))
		require.Equal(t, []string{markerToken(w2.marker)}, toks, "only w1's token was taken out")
		require.NoError(t, svc.users.endWrite(ctx, key, w2, nil, nil))
		_, ok = b.raw(key)
		require.False(t, ok)
	})
}

// writeFixture seeds user "v0" in a repository that returns the rows it
// stores, and builds n services over it, each with its own client to b.
func writeFixture(t *testing.T, b backend, n int) (*User, []*UserService) {
	t.Helper()
	repo := NewMemoryRepository()
	u := seedUser(t, repo, "v0")
	svcs := make([]*UserService, n)
	for i := range svcs {
		svc := NewUserService(repo, b.fork(t))
		t.Cleanup(func() { svc.Close() })
		svcs[i] = svc
	}
	return u, svcs
}

// requireDeletedUnfilled checks that key is gone from b and that svc's
// writes left no value: why says why it should be so.
func requireDeletedUnfilled(t *testing.T, b backend, key string, svc *UserService, why string) {
	t.Helper()
	_, ok := b.raw(key)
	require.False(t, ok, "%s: the key is deleted", why)
	require.Zero(t, svc.GetMetrics().WriteFills, "%s: no value is left", why)
}

// overlappingWrites begins two writes of one user through one service, the
// second over the first's marker.
func overlappingWrites(t *testing.T, b backend) (u *User, svc *UserService, key string, w1, w2 writeOp) {
	t.Helper()
	u, svcs := writeFixture(t, b, 1)
	svc, key = svcs[0], userCacheKey(u.ID)
	var err error
	w1, err = svc.users.beginWrite(context.Background(), key)
	require.NoError(t, err)
	w2, err = svc.users.beginWrite(context.Background(), key)
	require.NoError(t, err)
	return u, svc, key, w1, w2
}
