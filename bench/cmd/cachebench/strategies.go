package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	gocache "github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
	"golang.org/x/sync/singleflight"

	"github.com/cacheaside/cacheaside"
)

// instance is one service process of a strategy: it reads and writes users
// through its own cache client.
type instance interface {
	Get(ctx context.Context, id int) (*cacheaside.User, error)
	Update(ctx context.Context, u *cacheaside.User) error
}

// strategy builds the instances of one caching approach over one database
// and one Redis; close releases what they hold.
type strategy struct {
	name string
	desc string
	// redis says the strategy's instances use Redis (and so can be
	// partitioned from it).
	redis bool
	// extra leaves the strategy out of the default list, to keep a run
	// with no flags under a minute: -all or -strategies runs it.
	extra bool
	// build returns n instances, each with a Redis client of its own made
	// by newClient, keys under prefix, values cached for ttl.
	build func(env strategyEnv) ([]instance, func())
}

type strategyEnv struct {
	repo cacheaside.UserRepository
	// newClient returns a Redis client for instance i (0 to n-1).
	newClient func(i int) redis.UniversalClient
	prefix    string
	ttl       time.Duration
	n         int
	users     int // the number of users: what a local tier sized to hold them all needs
}

var strategies = []strategy{
	{name: "nocache", desc: "every read goes to the database", build: buildNoCache},
	{name: "seed", desc: "the seed tutorial: async fill, per-process single flight, plain delete", redis: true, build: buildSeed},
	{name: "cacheaside", desc: "this library with its defaults", redis: true, build: buildLib(nil)},
	{name: "cacheaside-local", desc: "this library with a strict local tier, WithLocalCache(users)", redis: true, extra: true,
		build: buildLib(func(env strategyEnv) cacheaside.UserOption { return cacheaside.WithLocalCache(env.users) })},
	{name: "cacheaside-relaxed", desc: "this library with a relaxed local tier, WithRelaxedLocalCache(users)", redis: true, extra: true,
		build: buildLib(func(env strategyEnv) cacheaside.UserOption { return cacheaside.WithRelaxedLocalCache(env.users) })},
	{name: "cacheaside-early", desc: "this library with XFetch early refresh, WithEarlyRefresh(1)", redis: true, extra: true,
		build: buildLib(func(strategyEnv) cacheaside.UserOption { return cacheaside.WithEarlyRefresh(1) })},
	{name: "cacheaside-adaptive", desc: "this library with per-key TTLs, WithAdaptiveTTL(TTL/4, TTL*20)", redis: true, extra: true,
		build: buildLib(func(env strategyEnv) cacheaside.UserOption { return cacheaside.WithAdaptiveTTL(env.ttl/4, env.ttl*20) })},
	{name: "go-redis-cache", desc: "github.com/go-redis/cache/v9 Once + Delete, Redis only", redis: true, build: buildGoRedisCache(false)},
	{name: "go-redis-cache-local", desc: "github.com/go-redis/cache/v9 Once + Delete, with its local TinyLFU(users, TTL) in front of Redis",
		redis: true, extra: true, build: buildGoRedisCache(true)},
	{name: "sturdyc", desc: "github.com/viccon/sturdyc GetOrFetch + Delete, in-process per instance", build: buildSturdyc},
}

// defaultStrategies are the strategies a run without -strategies or -all
// runs.
func defaultStrategies() []strategy {
	var out []strategy
	for _, s := range strategies {
		if !s.extra {
			out = append(out, s)
		}
	}
	return out
}

func strategyByName(name string) (strategy, bool) {
	for _, s := range strategies {
		if s.name == name {
			return s, true
		}
	}
	return strategy{}, false
}

// noCache reads and writes the database directly.
type noCache struct{ repo cacheaside.UserRepository }

func (n noCache) Get(ctx context.Context, id int) (*cacheaside.User, error) {
	return n.repo.GetUser(ctx, id)
}

func (n noCache) Update(ctx context.Context, u *cacheaside.User) error {
	return n.repo.UpdateUser(ctx, u)
}

func buildNoCache(env strategyEnv) ([]instance, func()) {
	out := make([]instance, env.n)
	for i := range out {
		out[i] = noCache{env.repo}
	}
	return out, func() {}
}

// seedInstance is the seed tutorial's algorithm as written: read the cache;
// on a miss load once per key in this process (singleflight) and fill the
// cache from a goroutine; on a write update the database, then delete.
type seedInstance struct {
	repo  cacheaside.UserRepository
	cache cacheaside.CacheClient
	ttl   time.Duration
	sf    singleflight.Group
	fills *sync.WaitGroup
}

func (s *seedInstance) Get(ctx context.Context, id int) (*cacheaside.User, error) {
	key := fmt.Sprintf("user:%d", id)
	var u cacheaside.User
	if err := s.cache.GetJSON(ctx, key, &u); err == nil {
		return &u, nil
	}
	v, err, _ := s.sf.Do(key, func() (any, error) { return s.repo.GetUser(ctx, id) })
	if err != nil {
		return nil, err
	}
	u = *v.(*cacheaside.User)
	s.fills.Add(1)
	go func() {
		defer s.fills.Done()
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.cache.SetJSON(cctx, key, u, s.ttl)
	}()
	return &u, nil
}

func (s *seedInstance) Update(ctx context.Context, u *cacheaside.User) error {
	if err := s.repo.UpdateUser(ctx, u); err != nil {
		return err
	}
	_ = s.cache.Delete(ctx, fmt.Sprintf("user:%d", u.ID))
	return nil
}

func buildSeed(env strategyEnv) ([]instance, func()) {
	var fills sync.WaitGroup
	insts, closeClients := perClient(env, func(c redis.UniversalClient) instance {
		return &seedInstance{repo: env.repo, ttl: env.ttl, fills: &fills,
			cache: cacheaside.NewRedisCache(c, cacheaside.WithKeyPrefix(env.prefix))}
	})
	return insts, func() {
		fills.Wait()
		closeClients()
	}
}

// libInstance is this library with its defaults, the run's TTL, and the
// option of its strategy, if any (a local tier, early refresh, adaptive
// TTLs).
type libInstance struct{ svc *cacheaside.UserService }

func (l libInstance) Get(ctx context.Context, id int) (*cacheaside.User, error) {
	return l.svc.GetUser(ctx, id)
}

func (l libInstance) Update(ctx context.Context, u *cacheaside.User) error {
	return l.svc.UpdateUser(ctx, u)
}

// serving reports whether the instance's local tier, if it has one, serves
// reads from memory now.
func (l libInstance) serving() bool {
	m := l.svc.GetMetrics().Membership
	return m == "" || m == "serving"
}

// libMetrics sums the library's own counters over a strategy's instances,
// or returns "" for other strategies.
func libMetrics(insts []instance) string {
	m := libCounters(insts)
	if m == nil {
		return ""
	}
	s := fmt.Sprintf("cache misses %d, database loads %d, shared loads %d, lease waits %d, lease wait timeouts %d, rejoins %d, stale fills refused %d, early refreshes %d, updates that left their row %d",
		m.CacheMisses, m.DatabaseLoads, m.SharedLoads, m.LeaseWaits, m.LeaseWaitTimeouts, m.Rejoins, m.StaleFillsSkipped, m.EarlyRefreshes, m.WriteFills)
	if m.Membership != nil || m.LocalHits+m.BusInvalidations+m.WritesWaited+m.WritesRefused > 0 {
		s += fmt.Sprintf("; local tier: local hits %d, local misses %d, bus invalidations %d, bus acks %d, writes that waited %d (%s in all), writes refused %d, membership at the end: %s",
			m.LocalHits, m.LocalMisses, m.BusInvalidations, m.BusAcks, m.WritesWaited,
			time.Duration(m.WriteWaitSeconds*float64(time.Second)).Round(time.Millisecond), m.WritesRefused, strings.Join(m.Membership, "; "))
	}
	return s
}

// buildLib builds the library's instances, with the option opt returns
// (a local tier, early refresh, adaptive TTLs) after WithTTL(env.ttl),
// unless opt is nil. Every instance of a run uses the same options, as the
// library requires of a fleet.
func buildLib(opt func(env strategyEnv) cacheaside.UserOption) func(env strategyEnv) ([]instance, func()) {
	return func(env strategyEnv) ([]instance, func()) {
		insts, closeClients := perClient(env, func(c redis.UniversalClient) instance {
			opts := []cacheaside.UserOption{cacheaside.WithTTL(env.ttl)}
			if opt != nil {
				opts = append(opts, opt(env))
			}
			return libInstance{cacheaside.NewUserService(env.repo,
				cacheaside.NewRedisCache(c, cacheaside.WithKeyPrefix(env.prefix)), opts...)}
		})
		return insts, func() {
			for _, in := range insts {
				_ = in.(libInstance).svc.Close() // stops the retries of failed invalidations and the bus
			}
			closeClients()
		}
	}
}

// goRedisCache is github.com/go-redis/cache/v9 as its README shows it:
// Once loads a miss under a per-process singleflight and sets it; a write
// updates the database and deletes the key (from Redis, and from the
// writing instance's local cache if it has one). With a local TinyLFU in
// front (go-redis-cache-local), the other instances keep the old value in
// theirs until it expires, as go-redis/cache has no invalidation between
// instances.
type goRedisCache struct {
	repo   cacheaside.UserRepository
	c      *gocache.Cache
	prefix string
	ttl    time.Duration
}

func (g goRedisCache) Get(ctx context.Context, id int) (*cacheaside.User, error) {
	var u cacheaside.User
	err := g.c.Once(&gocache.Item{
		Ctx:   ctx,
		Key:   fmt.Sprintf("%suser:%d", g.prefix, id),
		Value: &u,
		TTL:   g.ttl,
		Do:    func(*gocache.Item) (any, error) { return g.repo.GetUser(ctx, id) },
	})
	if err != nil {
		return nil, err
	}
	return &u, nil
}

func (g goRedisCache) Update(ctx context.Context, u *cacheaside.User) error {
	if err := g.repo.UpdateUser(ctx, u); err != nil {
		return err
	}
	_ = g.c.Delete(ctx, fmt.Sprintf("%suser:%d", g.prefix, u.ID))
	return nil
}

// buildGoRedisCache builds go-redis/cache instances, with a local TinyLFU
// of env.users entries and the run's TTL each if local.
func buildGoRedisCache(local bool) func(env strategyEnv) ([]instance, func()) {
	return func(env strategyEnv) ([]instance, func()) {
		return perClient(env, func(c redis.UniversalClient) instance {
			o := &gocache.Options{Redis: c}
			if local {
				o.LocalCache = gocache.NewTinyLFU(env.users, env.ttl)
			}
			return goRedisCache{repo: env.repo, prefix: env.prefix, ttl: env.ttl, c: gocache.New(o)}
		})
	}
}

// sturdyInstance is github.com/viccon/sturdyc: an in-process cache per
// instance with per-key in-flight tracking; a write updates the database
// and deletes the key from the writing instance's cache (the others keep
// theirs until it expires: that is what an in-process cache does).
type sturdyInstance struct {
	repo cacheaside.UserRepository
	c    *sturdyc.Client[cacheaside.User]
}

func (s sturdyInstance) Get(ctx context.Context, id int) (*cacheaside.User, error) {
	u, err := s.c.GetOrFetch(ctx, fmt.Sprintf("user:%d", id), func(ctx context.Context) (cacheaside.User, error) {
		u, err := s.repo.GetUser(ctx, id)
		if errors.Is(err, cacheaside.ErrUserNotFound) {
			return cacheaside.User{}, sturdyc.ErrNotFound
		}
		if err != nil {
			return cacheaside.User{}, err
		}
		return *u, nil
	})
	if err != nil {
		return nil, err
	}
	return &u, nil
}

func (s sturdyInstance) Update(ctx context.Context, u *cacheaside.User) error {
	if err := s.repo.UpdateUser(ctx, u); err != nil {
		return err
	}
	s.c.Delete(fmt.Sprintf("user:%d", u.ID))
	return nil
}

func buildSturdyc(env strategyEnv) ([]instance, func()) {
	out := make([]instance, env.n)
	for i := range out {
		out[i] = sturdyInstance{repo: env.repo,
			c: sturdyc.New[cacheaside.User](1_000_000, 16, env.ttl, 10, sturdyc.WithNoContinuousEvictions())}
	}
	return out, func() {}
}

// perClient builds env.n instances with mk, each over a Redis client of
// its own, and returns them with a function that closes the clients.
func perClient(env strategyEnv, mk func(c redis.UniversalClient) instance) ([]instance, func()) {
	clients := make([]redis.UniversalClient, env.n)
	insts := make([]instance, env.n)
	for i := range insts {
		clients[i] = env.newClient(i)
		insts[i] = mk(clients[i])
	}
	return insts, func() {
		for _, c := range clients {
			c.Close()
		}
	}
}
