package cacheaside

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/cacheaside/cacheaside/internal/membus"
	"github.com/cacheaside/cacheaside/internal/memcache"
)

var (
	_ CacheClient = (*MemoryCache)(nil)
	_ MultiGetter = (*MemoryCache)(nil)
	_ Sizer       = (*MemoryCache)(nil)
	_ Leaser      = (*MemoryCache)(nil)

	_ ContextBounded = (*MemoryCache)(nil)
)

// MemoryCache is a CacheClient that keeps JSON-encoded values in process
// memory with per-entry TTLs, for tests, examples and single-instance
// programs. It holds at most WithMaxEntries entries (DefaultMemoryEntries by
// default), evicting by otter's W-TinyLFU policy, and expired entries leave
// memory as it works; it leaves no goroutine running. Values are stored
// encoded, so readers never share memory with writers. It also implements
// MultiGetter, Sizer and Leaser (so fills are guarded by leases exactly as
// with Redis), and carries the invalidation bus of local tiers: services
// that share one MemoryCache behave as a fleet that shares Redis.
type MemoryCache struct {
	c      *memcache.Cache
	bus    *membus.Bus
	blooms memBloom
}

// DefaultMemoryEntries bounds a MemoryCache when WithMaxEntries does not.
const DefaultMemoryEntries = memcache.DefaultMaxEntries

// A MemoryOption configures a MemoryCache.
type MemoryOption func(*memoryOptions)

type memoryOptions struct {
	now        func() time.Time
	maxEntries int
}

// WithClock makes the cache read the time from now instead of time.Now, so
// tests can expire entries without sleeping. The clock must never go back.
// It panics if now is nil.
func WithClock(now func() time.Time) MemoryOption {
	if now == nil {
		badOption("WithClock", "nil", "the clock must not be nil")
	}
	return func(o *memoryOptions) { o.now = now }
}

// WithMaxEntries bounds the cache to about n entries; past that it evicts
// the entries least likely to be read again. The default is
// DefaultMemoryEntries. It panics if n is below 1.
func WithMaxEntries(n int) MemoryOption {
	if n < 1 {
		badOption("WithMaxEntries", n, "at least 1 entry is needed")
	}
	return func(o *memoryOptions) { o.maxEntries = n }
}

// NewMemoryCache returns an empty in-memory cache.
func NewMemoryCache(opts ...MemoryOption) *MemoryCache {
	o := memoryOptions{maxEntries: DefaultMemoryEntries}
	for _, opt := range opts {
		opt(&o)
	}
	return &MemoryCache{c: memcache.NewBounded(o.now, o.maxEntries), bus: membus.New(nil)}
}

// GetJSON decodes the value under key into dest, or returns ErrCacheMiss.
// An entry that does not decode into dest is reported as ErrDecode.
func (m *MemoryCache) GetJSON(ctx context.Context, key string, dest any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, ok := m.c.Get(key)
	if !ok {
		return ErrCacheMiss
	}
	return decodeJSON(key, b, dest)
}

// SetJSON stores the JSON encoding of value under key for ttl (no expiry
// when ttl <= 0).
func (m *MemoryCache) SetJSON(ctx context.Context, key string, value any, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := encodeJSON(value)
	if err != nil {
		return err
	}
	m.c.Set(key, b, ttl)
	return nil
}

// Delete removes keys.
func (m *MemoryCache) Delete(ctx context.Context, keys ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.c.Delete(keys...)
	return nil
}

// invalidate deletes keys, but leaves the markers of writes in progress,
// marked as shared (see markerKeeper).
func (m *MemoryCache) invalidate(ctx context.Context, keys []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, key := range keys {
		for {
			held, ok := m.c.Get(key)
			if !ok {
				break
			}
			var next []byte // nil: delete
			ttl := time.Duration(0)
			if isWriting(held) {
				toks, shared := markerTokens(held)
				if shared {
					break
				}
				next = markerOf(toks, true)
				ttl, _ = m.c.TTL(key)
			}
			if m.c.CompareAndSwap(key, held, next, ttl) {
				break
			}
		}
	}
	return nil
}

// GetMulti returns the encoded values under keys, aligned with keys, with
// nil for misses.
func (m *MemoryCache) GetMulti(ctx context.Context, keys []string) ([]json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return toRaw(m.c.GetMulti(keys)), nil
}

// SetNX stores val under key for ttl if the key is empty and returns nil;
// otherwise it returns what the key holds.
func (m *MemoryCache) SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	held, _ := m.c.SetNX(key, val, ttl, markerPrefix)
	return held, nil
}

// CompareAndSwap replaces key's value with val for ttl if the key holds
// exactly old, or deletes it when val is nil, and reports whether it did.
func (m *MemoryCache) CompareAndSwap(ctx context.Context, key string, old, val []byte, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	return m.c.CompareAndSwap(key, old, val, ttl), nil
}

func (m *MemoryCache) inProcess() {}

// clearWrite deletes key unless it holds a write intent other than marker,
// and the related keys (see writeClearer). Each key's delete is atomic.
func (m *MemoryCache) clearWrite(ctx context.Context, key string, marker []byte, prefix string, related []string) error {
	_, err := m.clearOrFill(ctx, key, marker, prefix, related, nil, 0)
	return err
}

// clearOrFill is clearWrite that, given fill, sets a key that still holds
// exactly marker to fill for ttl instead of deleting it, and reports
// whether it did.
func (m *MemoryCache) clearOrFill(ctx context.Context, key string, marker []byte, prefix string, related []string, fill []byte, ttl time.Duration) (filled bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	mine := markerToken(marker)
	for {
		held, ok := m.c.Get(key)
		if !ok {
			break
		}
		var next []byte // nil: delete
		nextTTL := ttl
		if bytes.HasPrefix(held, []byte(prefix)) {
			toks, shared := markerTokens(held)
			rest := slices.DeleteFunc(slices.Clone(toks), func(t string) bool { return t == mine })
			switch {
			case len(rest) == len(toks): // another write's marker: it ends it
				m.c.Delete(related...)
				return false, nil
			case len(rest) > 0:
				next = markerOf(rest, true)
				nextTTL, _ = m.c.TTL(key)
			case !shared && fill != nil:
				next = fill
			}
		}
		if m.c.CompareAndSwap(key, held, next, nextTTL) {
			filled = next != nil && !isWriting(next)
			break
		}
	}
	m.c.Delete(related...)
	return filled, nil
}

// BoundedByContext reports true: the memory cache never waits (see
// ContextBounded).
func (m *MemoryCache) BoundedByContext() bool { return true }

// Len reports how many unexpired entries the cache holds. It counts them,
// which takes time in proportion to the size of the cache.
func (m *MemoryCache) Len() int64 { return int64(m.c.Len()) }

// The invalidation bus (see bus.go), within this process: services that
// share a MemoryCache share its bus, as a fleet shares Redis.

func (m *MemoryCache) busSubscribe(context.Context) (busSub, error) {
	return memSub{m.bus.Subscribe()}, nil
}

// memSub is a subscription to a MemoryCache's bus.
type memSub struct{ s *membus.Sub }

func (s memSub) next(ctx context.Context, wait time.Duration) ([]byte, error) {
	msg, err := s.s.Next(ctx, wait)
	if errors.Is(err, membus.ErrGap) {
		return nil, errBusGap
	}
	return msg, err
}

func (s memSub) close() { s.s.Close() }

func (m *MemoryCache) busPublish(_ context.Context, msg []byte) error {
	m.bus.Publish(msg)
	return nil
}

func (m *MemoryCache) busAnnounce(_ context.Context, msg []byte) (time.Time, []busMember, error) {
	now, ms := m.bus.Announce(msg)
	return now, memBusMembers(ms), nil
}

func memBusMembers(ms []membus.Member) []busMember {
	out := make([]busMember, len(ms))
	for i, mm := range ms {
		out[i] = busMember{id: mm.ID, expires: mm.Expires}
	}
	return out
}

func (m *MemoryCache) busRenew(_ context.Context, member string, lease time.Duration) error {
	m.bus.Renew(member, lease)
	return nil
}

func (m *MemoryCache) busLeave(_ context.Context, member string) error {
	m.bus.Leave(member)
	return nil
}

func (m *MemoryCache) busExpiries(_ context.Context, members []string) (time.Time, []time.Time, error) {
	now, exps := m.bus.Expiries(members)
	return now, exps, nil
}

func (m *MemoryCache) busAck(_ context.Context, writes []string, member string) error {
	for _, w := range writes {
		m.bus.Ack(w, member)
	}
	return nil
}

func (m *MemoryCache) busAwaitAcks(ctx context.Context, write string, wait time.Duration) ([]string, error) {
	return m.bus.AwaitAcks(ctx, write, wait)
}

func (m *MemoryCache) busDropAcks(_ context.Context, write string) error {
	m.bus.DropAcks(write)
	return nil
}

// beginWriteAnnounced places marker under key and announces msg on the bus
// (see writeAnnouncer).
func (m *MemoryCache) beginWriteAnnounced(ctx context.Context, key string, marker []byte, ttl time.Duration, msg []byte) (error, bool, []busMember, error) {
	if err := ctx.Err(); err != nil {
		return err, false, nil, err
	}
	prev := m.placeWrite(key, marker, ttl)
	_, ms, annErr := m.busAnnounce(ctx, msg)
	return nil, !isWriting(prev), ms, annErr
}

// placeWrite places a write's marker on key for ttl, adding its token to a
// marker already there (see stackMarker), and returns what key held.
func (m *MemoryCache) placeWrite(key string, marker []byte, ttl time.Duration) (prev []byte) {
	for {
		held, ok := m.c.Get(key)
		if !ok {
			if _, placed := m.c.SetNX(key, marker, ttl, markerPrefix); placed {
				return nil
			}
			continue
		}
		if m.c.CompareAndSwap(key, held, stackMarker(held, marker), ttl) {
			return held
		}
	}
}

// placeWriteMarker places a write's marker (see writePlacer).
func (m *MemoryCache) placeWriteMarker(ctx context.Context, key string, marker []byte, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	return !isWriting(m.placeWrite(key, marker, ttl)), nil
}

// endWriteAnnounced ends a write to key (see writeClearer) and announces
// msg on the bus (see writeAnnouncer).
//
// The clear and the announcement are one step on the bus: a value the
// write leaves in the cache rides on the message (see busMsg), as with
// Redis.
func (m *MemoryCache) endWriteAnnounced(ctx context.Context, key string, marker []byte, prefix string, related []string, fill []byte, fillTTL time.Duration, msg, rowMsg []byte) (error, bool, []busMember, error) {
	var (
		filled   bool
		clearErr error
	)
	_, ms := m.bus.AnnounceAfter(func() []byte {
		filled, clearErr = m.clearOrFill(ctx, key, marker, prefix, related, fill, fillTTL)
		if !filled {
			return msg
		}
		return append(append(make([]byte, 0, len(rowMsg)+len(fill)), rowMsg...), fill...)
	})
	return clearErr, filled, memBusMembers(ms), nil
}

// claimRefresh claims key's early refresh (see refreshClaimer).
func (m *MemoryCache) claimRefresh(ctx context.Context, key string, token []byte, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	_, placed := m.c.SetNX("cacheaside:refresh:"+key, token, ttl, markerPrefix)
	return placed, nil
}

// dropRefresh drops a claim of claimRefresh.
func (m *MemoryCache) dropRefresh(ctx context.Context, key string, token []byte) error {
	m.c.CompareAndSwap("cacheaside:refresh:"+key, token, nil, 0)
	return nil
}

// setNXMany places leases on many keys (see batchLeaser).
func (m *MemoryCache) setNXMany(ctx context.Context, keys []string, leases [][]byte, ttl time.Duration) ([][]byte, []error, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	held := make([][]byte, len(keys))
	for i, k := range keys {
		held[i], _ = m.c.SetNX(k, leases[i], ttl, markerPrefix)
	}
	return held, make([]error, len(keys)), nil
}

// casMany swaps many keys from their leases to their values (see
// batchLeaser).
func (m *MemoryCache) casMany(ctx context.Context, keys []string, leases, vals [][]byte, ttls []time.Duration) ([]bool, []error, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	ok := make([]bool, len(keys))
	for i, k := range keys {
		ok[i] = m.c.CompareAndSwap(k, leases[i], vals[i], ttls[i])
	}
	return ok, make([]error, len(keys)), nil
}

func (m *MemoryCache) bloomTest(ctx context.Context, name string, pos []uint64) (bool, bool, error) {
	if err := ctx.Err(); err != nil {
		return false, false, err
	}
	p, ok := m.blooms.test(name, pos)
	return p, ok, nil
}

func (m *MemoryCache) bloomAdd(_ context.Context, name string, pos []uint64) (int64, error) {
	return m.blooms.add(name, pos), nil
}

func (m *MemoryCache) bloomBegin(_ context.Context, name string) (int64, error) {
	return m.blooms.begin(name), nil
}

func (m *MemoryCache) bloomLoad(_ context.Context, name string, items [][]uint64) error {
	m.blooms.load(name, items)
	return nil
}

func (m *MemoryCache) bloomCommit(_ context.Context, name string, epoch int64) (bool, error) {
	return m.blooms.commit(name, epoch), nil
}
