// Package rediscache stores byte values in Redis through go-redis v9.
//
// It is the storage behind the root package's RedisCache and works with any
// redis.UniversalClient: a plain client, a cluster client or a failover
// (sentinel) client. Every command touches one key, and multi-key work is
// sent as a pipeline of single-key commands, which go-redis splits by slot on
// a cluster, so nothing fails with CROSSSLOT. A miss is reported as ok ==
// false, never as redis.Nil.
package rediscache

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cache is a prefixed view of one Redis deployment. It is safe for
// concurrent use; it holds no state of its own beyond its configuration.
type Cache struct {
	c       redis.UniversalClient // the client, or a clone of it (see New)
	user    redis.UniversalClient // the client as it was given
	prefix  string
	cluster bool
	single  bool // a plain or failover client: one server holds every key
	bounded bool // every call returns by its context's deadline

	noSetNXGet atomic.Bool // the server refused SET NX GET (before Redis 7.0)
	noBitfield atomic.Bool // the server has no BITFIELD (miniredis): Bloom filters by GETBIT and SETBIT
}

// New returns a cache that stores every key under prefix on c.
//
// go-redis ignores a context's deadline on socket reads unless the client
// was built with ContextTimeoutEnabled. For a plain or failover client
// built without it, the cache talks through a clone made by WithTimeout,
// which shares the client's connection pool and timeouts and differs only
// in honouring context deadlines; the caller's client is left as it is. A
// cluster client has no such clone: its calls honour their context's
// deadline only if it was built with ContextTimeoutEnabled (see Bounded).
func New(c redis.UniversalClient, prefix string) *Cache {
	cc := &Cache{c: c, user: c, prefix: prefix}
	switch x := c.(type) {
	case *redis.Client:
		if o := x.Options(); !o.ContextTimeoutEnabled {
			b := x.WithTimeout(o.ReadTimeout)
			b.Options().ContextTimeoutEnabled = true // the clone's own copy of the options
			b.Options().WriteTimeout = o.WriteTimeout
			cc.c = b
		}
		cc.bounded, cc.single = true, true
	case *redis.ClusterClient:
		cc.cluster = true
		cc.bounded = x.Options().ContextTimeoutEnabled
	}
	return cc
}

// Client returns the client the cache was given.
func (c *Cache) Client() redis.UniversalClient { return c.user }

// Bounded reports whether every call of the cache returns by its context's
// deadline, whatever the server does: true for a plain or failover client,
// and for a cluster client built with ContextTimeoutEnabled.
func (c *Cache) Bounded() bool { return c.bounded }

// Get returns the value under key and whether it was there.
func (c *Cache) Get(ctx context.Context, key string) ([]byte, bool, error) {
	b, err := c.c.Get(ctx, c.prefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return b, true, nil
}

// mgetChunk caps the keys of one MGET, so that a huge batch does not hold
// the server in one long command.
const mgetChunk = 512

// GetMulti returns the values under keys in one round trip, aligned with
// keys; a nil element is a miss. On a single-node deployment it sends
// pipelined MGETs of at most mgetChunk keys; on a cluster, a pipeline of
// GETs that go-redis groups by node.
func (c *Cache) GetMulti(ctx context.Context, keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	if !c.cluster {
		var cmds []*redis.SliceCmd
		_, err := c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for lo := 0; lo < len(keys); lo += mgetChunk {
				chunk := keys[lo:min(lo+mgetChunk, len(keys))]
				full := make([]string, len(chunk))
				for i, k := range chunk {
					full[i] = c.prefix + k
				}
				cmds = append(cmds, p.MGet(ctx, full...))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		i := 0
		for _, cmd := range cmds {
			for _, v := range cmd.Val() {
				if s, ok := v.(string); ok {
					out[i] = []byte(s)
				}
				i++
			}
		}
		return out, nil
	}
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Get(ctx, c.prefix+k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	for i, cmd := range cmds {
		b, err := cmd.Bytes()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			return nil, err
		default:
			out[i] = b
		}
	}
	return out, nil
}

// Set stores b under key. A ttl of zero or less means no expiry (go-redis's
// KeepTTL is never sent).
func (c *Cache) Set(ctx context.Context, key string, b []byte, ttl time.Duration) error {
	if ttl < 0 {
		ttl = 0
	}
	return c.c.Set(ctx, c.prefix+key, b, ttl).Err()
}

// Delete removes keys. One key is one DEL; several are a pipeline of DELs,
// one per key, so that keys in different cluster slots never meet in one
// command.
func (c *Cache) Delete(ctx context.Context, keys ...string) error {
	switch len(keys) {
	case 0:
		return nil
	case 1:
		return c.c.Del(ctx, c.prefix+keys[0]).Err()
	}
	_, err := c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Del(ctx, c.prefix+k)
		}
		return nil
	})
	return err
}

// IsWrongType reports whether err is Redis's reply to a command on a key
// that holds another type of value.
func IsWrongType(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "WRONGTYPE")
}

// known is a context that is already done: a cluster client given it
// answers from the layout it knows, and fails at once if it knows none.
var known = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// Shard returns the address of the cluster master that holds key, or ""
// for a client that is not a cluster client, or while the cluster's layout
// is not known. It never waits on the network.
func (c *Cache) Shard(key string) string {
	cc, ok := c.c.(*redis.ClusterClient)
	if !ok {
		return ""
	}
	n, err := cc.MasterForKey(known, c.prefix+key)
	if err != nil {
		return ""
	}
	return n.Options().Addr
}
