// Package cacheaside puts a cache (usually Redis) beside a database with the
// cache-aside pattern, and gets the hard parts right: one load per key under
// concurrency, invalidating writes that no in-flight load can undo, negative
// caching, and reads that keep working when the cache fails.
//
// Wire a [UserService] to a [UserRepository] (your database) and a
// [CacheClient] (see [NewRedisCache] and [NewMemoryCache]):
//
//	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
//	svc := cacheaside.NewUserService(repo, cacheaside.NewRedisCache(rdb))
//	u, err := svc.GetUser(ctx, 42) // cache first, database on a miss
//	err = svc.UpdateUser(ctx, u)   // database first, then invalidate
//
// # Read path
//
// [UserService.GetUser] reads "user:<id>" from the cache. On a hit it decodes
// the caller's own copy and returns. On a miss it joins the load of that key
// already running in this process, or starts one (golang.org/x/sync's
// singleflight). The load runs on a context detached from the caller's
// cancellation, bounded by its own timeout ([WithLoadTimeout]); it looks at
// the cache once more, reads the repository, and writes the value to the
// cache before any waiter returns, so the next read is a hit. Every waiter
// waits on its own context: one that gives up returns ctx.Err() at once and
// the others still get the user. A panic in the repository reaches every
// waiter as a [*PanicError] and frees the key.
//
// A user that does not exist is reported as [ErrUserNotFound] and cached as
// a small marker for [DefaultNegativeTTL], so a flood of lookups for a
// missing ID reaches the repository once. Values are cached for
// [UserCacheTTL] less a random jitter of up to 10%, so keys written together
// do not expire together.
//
// A cache that fails (Redis down, a timeout) never fails a read: the read
// falls back to the repository and the failure is counted in
// [ServiceMetrics]. An entry that does not decode is treated as a miss,
// counted as a decode error, and overwritten by the fill.
//
// # Write path
//
// [UserService.UpdateUser], CreateUser and DeleteUser validate their input
// (bad input is [ErrInvalidUser], and the repository is not called), write
// the repository first, then delete "user:<id>" and the related keys
// ("users:all", "user_posts:<id>", "user_stats:<id>"; see
// [WithRelatedKeys]). Before deleting, a write moves the key to a new
// generation: a read that starts after the write returns never joins a load
// that started before it, and such a load's fill is dropped rather than
// writing the old row back. A failed delete is counted and logged; it does
// not fail the write, whose data is already durable.
//
// Within one process this closes the race in which a slow reader writes a
// row it read before an update back into the cache. Across processes that
// share one Redis, the generation lives in each process only, so a reader in
// another process can still fill an old row between the writer's delete and
// its own fill; leases in the cache itself close that case.
//
// # Concurrency
//
// All methods are safe for concurrent use, and there is nothing to close.
// The service keeps no background goroutine: each shared load runs on a
// goroutine of its own (singleflight's DoChan) that ends when the load
// returns, which [WithLoadTimeout] bounds for a repository that honours its
// context; batch lookups run on goroutines that end before
// [UserService.GetUsersBatch] returns. Every returned *User is the caller's
// own copy.
//
// # Other entities
//
// [Aside] is the same engine for any ID and value type, for caching products,
// sessions or anything else with its own namespace and TTL (see
// [NewAside]).
package cacheaside
