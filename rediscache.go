package cacheaside

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cacheaside/cacheaside/internal/rediscache"
)

var (
	_ CacheClient    = (*RedisCache)(nil)
	_ MultiGetter    = (*RedisCache)(nil)
	_ Leaser         = (*RedisCache)(nil)
	_ Sharder        = (*RedisCache)(nil)
	_ Locker         = (*RedisCache)(nil)
	_ ContextBounded = (*RedisCache)(nil)
)

// RedisCache is a CacheClient over go-redis v9. It works with a plain
// client, a cluster client and a failover (sentinel) client alike: every
// command touches one key, and multi-key deletes and reads are pipelines
// that go-redis splits by slot, so nothing fails with CROSSSLOT. It also
// implements MultiGetter (MGET on a single node) and Leaser (two Lua
// scripts, each on one key), and offers a distributed lock (AcquireLock).
// Values are stored as plain JSON, so other programs can read them; a key
// being loaded holds a lease, a JSON string that starts with a NUL
// character.
//
// RedisCache holds no state beyond its configuration; closing the client is
// the caller's business.
type RedisCache struct {
	c *rediscache.Cache // nil when built without a client
}

// A RedisOption configures a RedisCache.
type RedisOption func(*redisOptions)

type redisOptions struct {
	prefix string
}

// WithKeyPrefix stores every key under prefix, so "user:7" becomes
// prefix+"user:7". Use it to share one Redis between applications or
// environments ("myapp:" or "{myapp}:" to pin all keys to one cluster slot).
func WithKeyPrefix(prefix string) RedisOption {
	return func(o *redisOptions) { o.prefix = prefix }
}

// NewRedisCache returns a cache that stores values through client. With a
// nil client every method returns an error wrapping ErrNotConfigured.
func NewRedisCache(client redis.UniversalClient, opts ...RedisOption) *RedisCache {
	var o redisOptions
	for _, opt := range opts {
		opt(&o)
	}
	if client == nil {
		return &RedisCache{}
	}
	return &RedisCache{c: rediscache.New(client, o.prefix)}
}

func (r *RedisCache) ready() error {
	if r == nil || r.c == nil {
		return fmt.Errorf("%w: nil Redis client", ErrNotConfigured)
	}
	return nil
}

// GetJSON decodes the value under key into dest. It returns ErrCacheMiss
// when the key is absent (go-redis's redis.Nil never escapes), ErrDecode
// when the value does not decode into dest, and the client's error, wrapped,
// when Redis cannot be reached.
func (r *RedisCache) GetJSON(ctx context.Context, key string, dest any) error {
	if err := r.ready(); err != nil {
		return err
	}
	b, ok, err := r.c.Get(ctx, key)
	if err != nil {
		if rediscache.IsWrongType(err) { // the key holds no value of ours
			err = fmt.Errorf("%w: %w", ErrDecode, err)
		}
		return wrapErr("redis GET "+key, err)
	}
	if !ok {
		return ErrCacheMiss
	}
	return decodeJSON(key, b, dest)
}

// SetJSON stores the JSON encoding of value under key for ttl; a ttl of zero
// or less stores it without expiry.
func (r *RedisCache) SetJSON(ctx context.Context, key string, value any, ttl time.Duration) error {
	if err := r.ready(); err != nil {
		return err
	}
	b, err := encodeJSON(value)
	if err != nil {
		return err
	}
	if err := r.c.Set(ctx, key, b, ttl); err != nil {
		return wrapErr("redis SET "+key, err)
	}
	return nil
}

// Delete removes keys in one round trip.
func (r *RedisCache) Delete(ctx context.Context, keys ...string) error {
	if err := r.ready(); err != nil {
		return err
	}
	if err := r.c.Delete(ctx, keys...); err != nil {
		return wrapErr("redis DEL", err)
	}
	return nil
}

// invalidate deletes keys, but leaves the markers of writes in progress,
// marked as shared (see markerKeeper).
func (r *RedisCache) invalidate(ctx context.Context, keys []string) error {
	if err := r.ready(); err != nil {
		return err
	}
	if err := r.c.Invalidate(ctx, keys, markers(writingPrefix)); err != nil {
		return wrapErr("redis invalidate", err)
	}
	return nil
}

// GetMulti returns the values under keys in one round trip, aligned with
// keys, with nil for misses.
func (r *RedisCache) GetMulti(ctx context.Context, keys []string) ([]json.RawMessage, error) {
	if err := r.ready(); err != nil {
		return nil, err
	}
	bs, err := r.c.GetMulti(ctx, keys)
	if err != nil {
		return nil, wrapErr("redis multi-get", err)
	}
	return toRaw(bs), nil
}

// SetNX stores val under key for ttl if the key is empty and returns nil;
// otherwise it returns what the key holds. It is one script run (SET NX GET
// PX, which Redis before 7.0 refuses as a single command).
func (r *RedisCache) SetNX(ctx context.Context, key string, val []byte, ttl time.Duration) ([]byte, error) {
	return r.setNX(ctx, key, val, ttl, false)
}

// setNXHeld is SetNX for a key that held a marker when last read: one
// round trip where SetNX, which tries the native SET NX GET first, would
// take two (see heldSetter).
func (r *RedisCache) setNXHeld(ctx context.Context, key string, val []byte, ttl time.Duration) ([]byte, error) {
	return r.setNX(ctx, key, val, ttl, true)
}

// setNX is SetNX, by the script alone when script is set.
func (r *RedisCache) setNX(ctx context.Context, key string, val []byte, ttl time.Duration, script bool) ([]byte, error) {
	if err := r.ready(); err != nil {
		return nil, err
	}
	place := r.c.SetNX
	if script {
		place = r.c.SetNXScript
	}
	held, _, err := place(ctx, key, val, ttl, markerPrefix)
	if err != nil {
		return nil, wrapErr("redis lease "+key, err)
	}
	return held, nil
}

// CompareAndSwap replaces key's value with val for ttl if the key holds
// exactly old, or deletes it when val is nil, and reports whether it did.
// It is one script run.
func (r *RedisCache) CompareAndSwap(ctx context.Context, key string, old, val []byte, ttl time.Duration) (bool, error) {
	if err := r.ready(); err != nil {
		return false, err
	}
	ok, err := r.c.CompareAndSwap(ctx, key, old, val, ttl)
	if err != nil {
		return false, wrapErr("redis compare-and-swap "+key, err)
	}
	return ok, nil
}

// Shard names the Redis Cluster master that holds key, for a cluster
// client, so that the service keeps a circuit breaker per master; for any
// other client, and while the cluster's layout is not known yet, it
// returns "". It never waits on the network.
func (r *RedisCache) Shard(key string) string {
	if r == nil || r.c == nil {
		return ""
	}
	return r.c.Shard(key)
}

// BoundedByContext reports whether each call returns by its context's
// deadline whatever Redis does, which lets the service make it on the
// caller's own goroutine. go-redis honours context deadlines on socket
// reads only with ContextTimeoutEnabled; for a plain or failover client
// built without it, the cache talks through a clone of the client (from its
// WithTimeout method) that shares its connection pool and timeouts and
// honours context deadlines, and leaves the client given to it untouched.
// That clone does not carry the client's hooks (go-redis v9.23's WithTimeout
// starts it with none), so hooks added to such a client, redisotel's
// tracing and metrics say, do not see the cache's commands: build the
// client with ContextTimeoutEnabled: true, and the cache uses it as it is.
// A cluster client has no such clone: build it with
// ContextTimeoutEnabled: true to make this true; otherwise each cache call
// is handed to a worker goroutine, which costs a hit a few microseconds.
func (r *RedisCache) BoundedByContext() bool { return r != nil && r.c != nil && r.c.Bounded() }

func (r *RedisCache) sharded() bool { return r != nil && r.c != nil && r.c.Cluster() }

// clearWrite deletes key unless it holds a write intent other than marker,
// and the related keys, in one script run (see writeClearer).
func (r *RedisCache) clearWrite(ctx context.Context, key string, marker []byte, prefix string, related []string) error {
	if err := r.ready(); err != nil {
		return err
	}
	if err := r.c.ClearWrite(ctx, key, marker, markers(prefix), related); err != nil {
		return wrapErr("redis end of write "+key, err)
	}
	return nil
}

// The invalidation bus (see bus.go), over Redis pub/sub.

func (r *RedisCache) busSubscribe(ctx context.Context) (busSub, error) {
	if err := r.ready(); err != nil {
		return nil, err
	}
	ps := r.c.Subscribe(ctx)
	if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
		ps.Close()
		return nil, err
	}
	return redisSub{ps}, nil
}

// redisSub is a subscription to the bus on Redis.
type redisSub struct{ ps *redis.PubSub }

func (s redisSub) next(ctx context.Context, wait time.Duration) ([]byte, error) {
	msg, err := s.ps.ReceiveTimeout(ctx, max(wait, time.Millisecond))
	if err != nil {
		var ne net.Error
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case errors.As(err, &ne) && ne.Timeout():
			return nil, nil // nothing within wait
		}
		return nil, fmt.Errorf("%w: %w", errBusGap, err)
	}
	switch m := msg.(type) {
	case *redis.Message:
		return []byte(m.Payload), nil
	case *redis.Subscription: // a new subscription after a reconnect
		return nil, errBusGap
	}
	return nil, nil
}

func (s redisSub) close() { s.ps.Close() }

func (r *RedisCache) busPublish(ctx context.Context, msg []byte) error {
	if err := r.ready(); err != nil {
		return err
	}
	return r.c.Publish(ctx, msg)
}

func (r *RedisCache) busAnnounce(ctx context.Context, msg []byte) (time.Time, []busMember, error) {
	if err := r.ready(); err != nil {
		return time.Time{}, nil, err
	}
	now, ms, err := r.c.Announce(ctx, msg)
	return now, busMembers(ms), err
}

func (r *RedisCache) busRenew(ctx context.Context, member string, lease time.Duration) error {
	if err := r.ready(); err != nil {
		return err
	}
	return r.c.Renew(ctx, member, lease)
}

func (r *RedisCache) busLeave(ctx context.Context, member string) error {
	if err := r.ready(); err != nil {
		return err
	}
	return r.c.Leave(ctx, member)
}

func (r *RedisCache) busExpiries(ctx context.Context, members []string) (time.Time, []time.Time, error) {
	if err := r.ready(); err != nil {
		return time.Time{}, nil, err
	}
	return r.c.Expiries(ctx, members)
}

func (r *RedisCache) busAck(ctx context.Context, writes []string, member string) error {
	if err := r.ready(); err != nil {
		return err
	}
	return r.c.Ack(ctx, writes, member)
}

func (r *RedisCache) busAwaitAcks(ctx context.Context, write string, wait time.Duration) ([]string, error) {
	if err := r.ready(); err != nil {
		return nil, err
	}
	return r.c.AwaitAcks(ctx, write, wait)
}

func (r *RedisCache) busDropAcks(ctx context.Context, write string) error {
	if err := r.ready(); err != nil {
		return err
	}
	return r.c.DropAcks(ctx, write)
}

// beginWriteAnnounced places marker under key and announces msg on the bus,
// in one round trip (see writeAnnouncer).
func (r *RedisCache) beginWriteAnnounced(ctx context.Context, key string, marker []byte, ttl time.Duration, msg []byte) (error, bool, []busMember, error) {
	if err := r.ready(); err != nil {
		return err, false, nil, err
	}
	markErr, prev, _, ms, annErr := r.c.BeginWrite(ctx, key, marker, markers(writingPrefix), ttl, msg)
	return markErr, !isWriting(prev), busMembers(ms), annErr
}

// placeWriteMarker places a write's marker (see writePlacer).
func (r *RedisCache) placeWriteMarker(ctx context.Context, key string, marker []byte, ttl time.Duration) (bool, error) {
	if err := r.ready(); err != nil {
		return false, err
	}
	prev, err := r.c.PlaceWrite(ctx, key, marker, markers(writingPrefix), ttl)
	if err != nil {
		return false, wrapErr("redis write intent "+key, err)
	}
	return !isWriting(prev), nil
}

// endWriteAnnounced ends a write to key (see writeClearer) and announces
// msg on the bus, in one round trip (see writeAnnouncer).
func (r *RedisCache) endWriteAnnounced(ctx context.Context, key string, marker []byte, prefix string, related []string, fill []byte, fillTTL time.Duration, msg, rowMsg []byte) (error, bool, []busMember, error) {
	if err := r.ready(); err != nil {
		return err, false, nil, err
	}
	clearErr, filled, _, ms, annErr := r.c.EndWrite(ctx, key, marker, markers(prefix), related, fill, fillTTL, msg, rowMsg)
	return clearErr, filled, busMembers(ms), annErr
}

func busMembers(ms []rediscache.Member) []busMember {
	out := make([]busMember, len(ms))
	for i, m := range ms {
		out[i] = busMember{id: m.ID, expires: m.Expires}
	}
	return out
}

// markers names the root package's markers for the adapter, with intent
// the prefix of write intents.
func markers(intent string) rediscache.Markers {
	return rediscache.Markers{Intent: intent, Lease: leasePrefix}
}

// claimRefresh claims key's early refresh for the fleet (see
// refreshClaimer).
func (r *RedisCache) claimRefresh(ctx context.Context, key string, token []byte, ttl time.Duration) (bool, error) {
	if err := r.ready(); err != nil {
		return false, err
	}
	ok, err := r.c.ClaimRefresh(ctx, key, token, ttl)
	if err != nil {
		return false, wrapErr("redis refresh claim "+key, err)
	}
	return ok, nil
}

// dropRefresh drops a claim of claimRefresh.
func (r *RedisCache) dropRefresh(ctx context.Context, key string, token []byte) error {
	if err := r.ready(); err != nil {
		return err
	}
	if err := r.c.DropRefresh(ctx, key, token); err != nil {
		return wrapErr("redis refresh claim "+key, err)
	}
	return nil
}

// setNXMany places leases on many keys in one round trip (see
// batchLeaser).
func (r *RedisCache) setNXMany(ctx context.Context, keys []string, leases [][]byte, ttl time.Duration) ([][]byte, []error, error) {
	if err := r.ready(); err != nil {
		return nil, nil, err
	}
	held, errs, err := r.c.SetNXMany(ctx, keys, leases, ttl, markerPrefix)
	if err != nil {
		return nil, nil, wrapErr("redis leases", err)
	}
	return held, errs, nil
}

// casMany swaps many keys from their leases to their values in one round
// trip (see batchLeaser).
func (r *RedisCache) casMany(ctx context.Context, keys []string, leases, vals [][]byte, ttls []time.Duration) ([]bool, []error, error) {
	if err := r.ready(); err != nil {
		return nil, nil, err
	}
	ok, errs, err := r.c.CompareAndSwapMany(ctx, keys, leases, vals, ttls)
	if err != nil {
		return nil, nil, wrapErr("redis lease fills", err)
	}
	return ok, errs, nil
}

func (r *RedisCache) bloomTest(ctx context.Context, name string, pos []uint64) (bool, bool, error) {
	if err := r.ready(); err != nil {
		return false, false, err
	}
	return r.c.BloomTest(ctx, name, pos)
}

func (r *RedisCache) bloomAdd(ctx context.Context, name string, pos []uint64) (int64, error) {
	if err := r.ready(); err != nil {
		return 0, err
	}
	return r.c.BloomAdd(ctx, name, pos)
}

func (r *RedisCache) bloomBegin(ctx context.Context, name string) (int64, error) {
	if err := r.ready(); err != nil {
		return 0, err
	}
	return r.c.BloomBegin(ctx, name)
}

func (r *RedisCache) bloomLoad(ctx context.Context, name string, items [][]uint64) error {
	if err := r.ready(); err != nil {
		return err
	}
	return r.c.BloomLoad(ctx, name, items)
}

func (r *RedisCache) bloomCommit(ctx context.Context, name string, epoch int64) (bool, error) {
	if err := r.ready(); err != nil {
		return false, err
	}
	return r.c.BloomCommit(ctx, name, epoch)
}
