package cacheaside

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/bits-and-blooms/bitset"
	"github.com/bits-and-blooms/bloom/v3"
)

// A Bloom filter of user IDs ([WithBloomFilter]) answers "no such user"
// for an ID that was never created without asking the database: negative
// caching stops repeated lookups of one missing ID, the filter stops a scan
// of random missing IDs (cache penetration). It never answers "no" for a
// user that exists:
//
//   - It lives in the shared cache (a Redis bitmap read with one BITFIELD
//     command; a bitmap in process for the memory cache), so every instance
//     sees every create at once. Its size and number of hashes come from
//     bits-and-blooms/bloom's EstimateParameters, and the bit positions from
//     its Locations, and they are part of the filter's name: instances
//     configured alike share one filter.
//   - A create puts its ID in the filter before the user becomes visible:
//     the repository calls BeforeUserVisible (MemoryRepository and
//     SQLRepository do, inside the insert's transaction); for a repository
//     that does not, the service adds the ID before CreateUser returns. If
//     the ID cannot be added, the create fails with ErrCacheUnavailable.
//   - The filter is built from the repository (a UserIDLister) by one
//     instance at a time, under the distributed lock "bloom:user", into a
//     filter of its own that replaces the one in use when it is complete;
//     creates meanwhile go into both. A build starts at NewUserService when
//     no filter is in use, and RebuildBloomFilter starts one on demand
//     (deleted IDs stay in a filter until it is rebuilt). Until a filter is
//     in use, reads go on without it.
//   - A create adds its ID again once its insert has committed, so a build
//     that began after the first add, and listed the users before the
//     insert committed, still gets it (a build's start and end are ordered
//     against adds by an epoch in the shared cache).
//   - A read consults the filter only on a cache miss, which costs that
//     miss one round trip. If the filter cannot be read, the read goes on
//     without it.

// A UserIDLister is an optional interface of a UserRepository that lists
// every user's ID, to build a Bloom filter from. MemoryRepository and
// SQLRepository implement it.
type UserIDLister interface {
	// ListUserIDs calls fn with the IDs of every user, in batches, until
	// all are listed or fn returns an error, which it returns.
	ListUserIDs(ctx context.Context, fn func(ids []int) error) error
}

// bloomStore is what the adapters of this package offer to keep a Bloom
// filter in the shared cache (see internal/rediscache/bloom.go).
type bloomStore interface {
	bloomTest(ctx context.Context, name string, pos []uint64) (present, ok bool, err error)
	bloomAdd(ctx context.Context, name string, pos []uint64) (epoch int64, err error)
	bloomBegin(ctx context.Context, name string) (epoch int64, err error)
	bloomLoad(ctx context.Context, name string, items [][]uint64) error
	bloomCommit(ctx context.Context, name string, epoch int64) (bool, error)
}

// bloomLockTTL is the build lock's TTL; the lock is extended while held.
const bloomLockTTL = 30 * time.Second

// bloomFilter is a service's view of its filter.
type bloomFilter struct {
	store    bloomStore
	name     string
	m, k     uint
	building chan struct{} // one build at a time in this process
}

func newBloomFilter(store bloomStore, expected uint, fp float64) *bloomFilter {
	m, k := bloom.EstimateParameters(expected, fp)
	return &bloomFilter{store: store, m: m, k: k, name: fmt.Sprintf("user:m%d:k%d", m, k), building: make(chan struct{}, 1)}
}

// positions returns id's bit positions in the filter.
func (f *bloomFilter) positions(id int) []uint64 {
	locs := bloom.Locations(strconv.AppendInt(nil, int64(id), 10), f.k)
	for i := range locs {
		locs[i] %= uint64(f.m)
	}
	return locs
}

// BeforeUserVisible tells the UserService whose CreateUser runs under ctx
// the ID of the user being created, before the user becomes visible to
// readers: a repository that assigns IDs calls it once the ID is known and
// before the insert commits, and aborts the create if it returns an error.
// The service puts the ID in its Bloom filter (WithBloomFilter) there.
// Under any other context it does nothing and returns nil.
func BeforeUserVisible(ctx context.Context, id int) error {
	if h, ok := ctx.Value(createHookKey{}).(*createHook); ok {
		return h.announce(ctx, id)
	}
	return nil
}

type createHookKey struct{}

// createHook is a create's link to the filter.
type createHook struct {
	f   *bloomFilter
	g   *guard
	mu  sync.Mutex // protects ids
	ids []int      // announced
}

func (h *createHook) announce(ctx context.Context, id int) error {
	if _, err := h.f.add(ctx, h.g, id); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ids = append(h.ids, id)
	return nil
}

// add puts id in the filter and returns the filter's epoch.
func (f *bloomFilter) add(ctx context.Context, g *guard, id int) (int64, error) {
	var epoch int64
	err := g.doWithin(context.WithoutCancel(ctx), "", max(g.timeout, time.Second), func(ctx context.Context) error {
		e, err := f.store.bloomAdd(ctx, f.name, f.positions(id))
		epoch = e
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%w: the user could not be added to the Bloom filter: %w", ErrCacheUnavailable, err)
	}
	return epoch, nil
}

// mayExist reports whether id may exist: false only when the filter is in
// use and says that it does not.
func (f *bloomFilter) mayExist(ctx context.Context, g *guard, id int) bool {
	var present, ok bool
	err := g.do(ctx, "", func(ctx context.Context) error {
		p, o, err := f.store.bloomTest(ctx, f.name, f.positions(id))
		present, ok = p, o
		return err
	})
	return err != nil || !ok || present
}

// WithBloomFilter keeps a Bloom filter of user IDs in the shared cache,
// sized for expectedUsers at falsePositiveRate, so that reads of IDs that
// were never created are answered "not found" without the database (see
// bloom.go). Every instance of a fleet must use the same values. It needs
// a cache that can hold the filter (NewRedisCache, NewMemoryCache; with any
// other, reads go on without it) and, to build it, a repository that is a
// UserIDLister. It panics unless expectedUsers is positive and
// falsePositiveRate is in (0, 1).
func WithBloomFilter(expectedUsers uint, falsePositiveRate float64) UserOption {
	if expectedUsers == 0 {
		badOption("WithBloomFilter", expectedUsers, "expectedUsers must be positive")
	}
	if !(falsePositiveRate > 0 && falsePositiveRate < 1) {
		badOption("WithBloomFilter", falsePositiveRate, "falsePositiveRate must be in (0, 1)")
	}
	return bloomOption{expected: expectedUsers, fp: falsePositiveRate}
}

type bloomOption struct {
	expected uint
	fp       float64
}

func (o bloomOption) applyUser(u *userOptions) { u.bloom = &o }

// RebuildBloomFilter builds the Bloom filter (WithBloomFilter) anew from
// the repository, which sheds the IDs of deleted users, and puts it in use
// once complete; reads and creates go on meanwhile. Over a cache with
// distributed locks one instance builds at a time: RebuildBloomFilter
// waits for the lock until ctx ends. It fails with ErrNotConfigured
// without a filter or a UserIDLister repository.
func (s *UserService) RebuildBloomFilter(ctx context.Context) error {
	f := s.bloom
	lister, ok := s.db.(UserIDLister)
	if f == nil || !ok {
		return fmt.Errorf("%w: a Bloom filter needs WithBloomFilter, a cache that holds it and a UserIDLister repository", ErrNotConfigured)
	}
	select { // builds in this process take turns, whatever the cache
	case f.building <- struct{}{}:
		defer func() { <-f.building }()
	case <-ctx.Done():
		return wrapErr("bloom filter build", ctx.Err())
	}
	if lk, ok := s.users.g.c.(Locker); ok {
		lock, err := lk.AcquireLock(ctx, "bloom:user", bloomLockTTL)
		if err != nil {
			return wrapErr("bloom filter build", err)
		}
		defer func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.users.o.cacheTimeout)
			defer cancel()
			_ = lock.Release(rctx)
		}()
	}
	start := time.Now()
	epoch, err := f.store.bloomBegin(ctx, f.name)
	if err != nil {
		return wrapErr("bloom filter build", err)
	}
	n := 0
	err = lister.ListUserIDs(ctx, func(ids []int) error {
		items := make([][]uint64, len(ids))
		for i, id := range ids {
			items[i] = f.positions(id)
		}
		n += len(ids)
		return f.store.bloomLoad(ctx, f.name, items)
	})
	if err != nil {
		return wrapErr("bloom filter build", err)
	}
	switch ok, err := f.store.bloomCommit(ctx, f.name, epoch); {
	case err != nil:
		return wrapErr("bloom filter build", err)
	case !ok:
		return wrapErr("bloom filter build", errors.New("another build started meanwhile"))
	}
	s.users.log.InfoContext(ctx, "cacheaside: Bloom filter built", "users", n, "bits", f.m, "hashes", f.k, "took", time.Since(start))
	return nil
}

// buildBloomIfMissing builds the filter in the background when none is in
// use, unless another instance holds the build lock. Close stops it.
func (s *UserService) buildBloomIfMissing() {
	if s.bloom == nil {
		return
	}
	if _, ok := s.db.(UserIDLister); !ok {
		return
	}
	s.users.bg.Go(func(done <-chan struct{}) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-done:
				cancel()
			case <-ctx.Done():
			}
		}()
		tctx, tcancel := context.WithTimeout(ctx, s.users.o.cacheTimeout)
		_, inUse, err := s.bloom.store.bloomTest(tctx, s.bloom.name, nil)
		tcancel()
		if err != nil || inUse {
			return
		}
		lctx, lcancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer lcancel()
		if lk, ok := s.users.g.c.(Locker); ok { // someone building already?
			lock, err := lk.AcquireLock(lctx, "bloom:user:start", time.Second)
			if err != nil {
				return
			}
			defer lock.Release(context.WithoutCancel(ctx))
		}
		if err := s.RebuildBloomFilter(ctx); err != nil && ctx.Err() == nil {
			s.users.log.Warn("cacheaside: Bloom filter build failed; reads go on without it", "err", err)
		}
	})
}

// memBloom is the memory cache's filters.
type memBloom struct {
	mu    sync.Mutex
	sets  map[string]*memBloomSet
	epoch map[string]int64
}

type memBloomSet struct {
	cur, next *bitset.BitSet
	built     bool
}

func (b *memBloom) set(name string) *memBloomSet {
	if b.sets == nil {
		b.sets, b.epoch = map[string]*memBloomSet{}, map[string]int64{}
	}
	s := b.sets[name]
	if s == nil {
		s = &memBloomSet{cur: bitset.New(0)}
		b.sets[name] = s
	}
	return s
}

func (b *memBloom) test(name string, pos []uint64) (bool, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.set(name)
	if !s.built {
		return false, false
	}
	for _, p := range pos {
		if !s.cur.Test(uint(p)) {
			return false, true
		}
	}
	return true, true
}

func (b *memBloom) add(name string, pos []uint64) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.set(name)
	for _, p := range pos {
		s.cur.Set(uint(p))
		if s.next != nil {
			s.next.Set(uint(p))
		}
	}
	return b.epoch[name]
}

func (b *memBloom) begin(name string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.set(name).next = bitset.New(0)
	b.epoch[name]++
	return b.epoch[name]
}

func (b *memBloom) load(name string, items [][]uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.set(name)
	if s.next == nil {
		return
	}
	for _, pos := range items {
		for _, p := range pos {
			s.next.Set(uint(p))
		}
	}
}

func (b *memBloom) commit(name string, epoch int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.set(name)
	if b.epoch[name] != epoch || s.next == nil {
		return false
	}
	s.cur, s.next, s.built = s.next, nil, true
	b.epoch[name]++
	return true
}
