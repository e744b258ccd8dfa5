// Package cacheaside puts a cache (usually Redis) beside a database with the
// cache-aside pattern, and gets the hard parts right: one load per key per
// fleet, invalidating writes that no in-flight load in any process can undo,
// negative caching, and reads that keep working when the cache fails.
//
// In the cache-aside pattern the application owns both stores. A read tries
// the cache first and, on a miss, reads the database and stores what it read
// in the cache for the next reader. A write goes to the database first and
// then deletes the cached copy. Wire a [UserService] to a [UserRepository]
// (your database) and a [CacheClient] (see [NewRedisCache] and
// [NewMemoryCache]):
//
//	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
//	svc := cacheaside.NewUserService(repo, cacheaside.NewRedisCache(rdb))
//	u, err := svc.GetUser(ctx, 42) // cache first, database on a miss
//	err = svc.UpdateUser(ctx, u)   // database first, then invalidate
//
// # Read path
//
// [UserService.GetUser] reads "user:<id>" from the cache. On a hit it decodes
// the caller's own copy and returns: one GET, nothing more. On a miss it
// joins the load of that key already running in this process, or starts
// one (golang.org/x/sync's singleflight). The load runs on a context
// detached from the caller's cancellation, bounded by its own timeout
// ([WithLoadTimeout]). Every waiter waits on its own context: one that
// gives up returns ctx.Err() at once and the others still get the user. A
// panic in the repository reaches every waiter as a [*PanicError] and frees
// the key.
//
// # Leases: one load per key per fleet, and no stale fill
//
// With a cache that implements [Leaser] (both built-in caches do), the load
// first places a lease in the key itself: a JSON string holding a random
// token unique to that call, with a short TTL ([WithLeaseTTL]), set only if
// the key is empty. Only the lease holder reads the repository, and its fill
// is a compare-and-swap on its own lease. Every write deletes the key and
// with it any lease, so a reader that loaded a row before a write can no
// longer write it back: its fill finds the lease gone and does nothing
// (counted in StaleFillsSkipped). The holder still returns what it read to
// its own caller, whose read overlapped the write.
//
// A load that finds another caller's lease, in this process or any other
// sharing the cache, waits for the value, polling with backoff, instead of
// reading the repository too; so a cold key under load costs one repository
// read per fleet. If the holder fails it releases its lease at once; if it
// dies, the lease expires and the next caller takes the key over. A load
// that has waited [WithLeaseWait] for one holder takes the key over from
// it: its lease replaces the holder's, which refuses the holder's fill. (It
// does not read the repository beside the lease: the holder's fill of an
// older read could land after it returned a newer row.)
//
// A holder whose fill is refused does not return what it read: its read
// may have come after a later write's commit while the cache still serves
// that write's predecessor (a write deletes the cache entry only after it
// commits), and one caller would see the new row and a later one the old.
// It looks at the key again instead, as a new caller would (counted in
// RefusedFillReloads). A caller never reads the repository beside a lease
// that could still be filled, nor returns a value read by a lease holder
// that lost its lease: that is what keeps every history linearizable
// (TestLinearizable checks it with porcupine).
//
// The guarantee this gives, checked by a randomized checker in the test
// suite against real Redis and Redis Cluster: no read returns a value older
// than the newest write acknowledged before the read began. That includes
// callers that join a shared load in this process after a write in another
// process was acknowledged: a result is only handed to callers that joined
// before the instant its freshness is known for (the fill, or the read that
// found it), and later ones look again.
//
// With a CacheClient that does not implement Leaser, fills are plain sets,
// and the protection described under "Write path" is per process only.
//
// A user that does not exist is reported as [ErrUserNotFound] and cached as
// a small marker for [DefaultNegativeTTL], so a flood of lookups for a
// missing ID reaches the repository once. Values are cached for
// [UserCacheTTL] less a random jitter of up to 10%, so keys written together
// do not expire together.
//
// A cache that fails never fails a read, and never costs one more than a
// time box (see "When things fail" below). An entry that is not a usable
// value of its key is treated as a miss, counted, and overwritten by the
// fill.
//
// # Write path
//
// [UserService.UpdateUser], CreateUser and DeleteUser validate their input
// (bad input is [ErrInvalidUser], and the repository is not called). Then,
// over a cache with compare-and-swap (Redis, the memory cache), the key's
// entry is replaced by a write-intent marker, the repository is written,
// and the marker and the related keys ("users:all", "user_posts:<id>",
// "user_stats:<id>"; see [WithRelatedKeys]) are deleted: one round trip to
// the cache before the write and one after. A reader that finds the marker
// does not fill: it reads the repository, whose value (old or new) is a
// right answer for a read that overlaps the write, and leaves the key to
// the writer; but if the marker says that its one write will leave its row
// (see below), the reader first waits for that row, polling as for a
// lease, for up to its process's mean load time, since the write usually
// ends sooner than a load would; no lease can be placed over the marker, so the old row
// cannot be loaded back while the write runs. Markers stack: a write that
// begins while another is in progress adds its token to the marker, and
// the key is deleted only when the last of them ends, so a write that ends
// first never leaves the other's commit unprotected. An update whose
// marker nobody shared leaves the row the repository stored in its place
// rather than deleting the key, with a repository that returns it
// ([UserUpdateReturner]; SQLRepository and MemoryRepository do): the next
// read is a hit. That row is the source's value until the next write's
// marker, since no write that began before this one can still be running,
// and any that began after it shared the marker. The marker expires with
// the load timeout if its writer dies. Before deleting, a write also moves the
// key to a new generation: a read that starts after the write returns
// never joins a load that started before it, and such a load's fill is
// dropped rather than writing the old row back. A failed delete is
// counted, logged and retried until it lands (see below); it does not fail
// the write, whose data is already durable. The retry of a write's end
// takes that write's token out of the marker, as the end would have. An
// [Aside.Invalidate], and any retried delete, leaves the marker of a write
// in progress, marked as shared: that write still ends it, and does not
// leave its own row, since the write you invalidate for may have changed
// the source after it. [Aside.Write] runs your own write the same way.
//
// Within one process, this generation also keeps a fill through a cache
// without leases from writing the old row back. Across processes that share
// a cache, that is the leases' work (see above).
//
// # When things fail
//
// A cache that turns a Redis incident into an outage is worse than no
// cache, so every failure has a bounded cost:
//
//   - Every cache call is time-boxed ([WithCacheTimeout], 100 ms by
//     default), whatever the go-redis client's own timeouts and retries are.
//     For a client that honours context deadlines (NewRedisCache arranges it
//     for plain and failover clients without touching the caller's client;
//     see [ContextBounded]) the call runs on the caller's goroutine; for any
//     other it runs on a pooled worker, and the caller stops waiting at the
//     box. The caller's own deadline holds on every path.
//   - A circuit breaker per cache shard ([WithCacheBreaker]; a Redis Cluster
//     master is a shard, see [Sharder]) opens after consecutive failures:
//     reads then go straight to the repository, still one load per key per
//     process, and writes queue their invalidations; after a cooldown one
//     probe closes it again. A write's marker alone is tried past an open
//     breaker (twice, each within the time box): other processes, whose
//     breakers may be closed, go on reading the shared cache.
//   - A circuit breaker on the repository's reads ([WithRepositoryBreaker])
//     keeps a failing database from seeing more than one probe per
//     cooldown; loads it refuses fail with [ErrRepositoryUnavailable].
//   - Fail-safe ([WithFailSafe]) keeps entries past their TTL and serves the
//     last value known for a key when its load fails. Entries carry their
//     own expiry: {"key":..., "expires":..., "value":...}, plain JSON that
//     an entry of an earlier version (the bare value) still reads as.
//   - A delete that fails is retried, with backoff and bounded memory, until
//     it lands, and the instance that wrote does not read the key from the
//     cache meanwhile. An [Outbox] repository ([NewSQLRepository] is one)
//     records each write's user in the same transaction, so that even a
//     crash between the commit and the delete is repaired by a drain.
//   - Nothing read from the cache is trusted: an entry must be the entity
//     asked for, under its own key, within [WithMaxValueSize], or it is a
//     miss; a lease without an expiry is no lease; the lock's scripts check
//     what they find before they change anything; and the library's own
//     keys live under "cacheaside:", where no entity name, ID or related
//     key can reach them.
//
// While another instance's delete is still waiting for its retry, that
// instance may serve the old row from the cache; the fault tests measure
// the window (tens of milliseconds), and it closes when the retry lands.
//
// # Local tier: memory speed, linearizable reads
//
// [WithLocalCache] keeps values in process memory, in front of the shared
// cache, on otter's W-TinyLFU cache: a hit costs no network call and a
// little over a bare otter lookup. Every history of reads and writes of a
// key, across all instances, stays linearizable: once any caller anywhere
// has seen a write's value, no caller anywhere sees the value it replaced.
// This is invalidation with leases, as in Chubby (Burrows, OSDI 2006) and
// Gray and Cheriton's leases (SOSP 1989), over an invalidation bus in the
// shared cache (Redis pub/sub; an in-process bus for the memory cache).
//
// Members. Every instance with a local tier is a member: it subscribes to
// the bus and holds a membership lease in the shared cache (a sorted set
// scored on the cache's clock, [WithLocalLease], 1 s by default). Every
// quarter lease it publishes a heartbeat; when its own heartbeat comes back
// through its subscription, which proves that the subscription delivers
// (and delivered everything published before it), it renews its lease. It
// serves from memory only until a quarter lease short of the lease, counted
// on its own monotonic clock from when it sent the renewal: the cache's
// clock can only end the lease later than that. If its subscription breaks
// (a reconnect may have lost messages) or its validity runs out, it stops
// serving from memory and empties its tier before it serves again.
//
// Writes. A write to key k, from any instance (but see below for writers
// without a tier), runs:
//
//  1. prepare: its own tier drops k; a write-intent marker replaces k's
//     entry in the shared cache; "prepare k" is published and the live
//     members read, in one atomic step; every member drops k, refuses to
//     fill k until this write is done (a key stays refused while any write
//     of it is between its prepare and its done), and acknowledges; the
//     writer waits for each counted member's acknowledgement, or for its
//     lease to run out on the cache's clock;
//  2. the write to the source;
//  3. done: the write's token leaves the marker (which is deleted, or
//     replaced by the row the write stored, once no other write's token
//     is left in it) and "done k" is published, in one round trip; every
//     member drops k again and may fill it again. Nobody waits for this:
//     from its prepare to its done a member holds nothing for k and fills
//     nothing, so a done that arrives late only delays its next fill of
//     k. (A write whose prepare was not acknowledged by every member, and
//     an Invalidate, which has no prepare, do wait for the done's
//     acknowledgements, as in step 1.) When the write left its row in the
//     shared cache, "done k" carries that row, and each member fills its
//     tier with it as it handles the message, under the rules of any fill
//     (below): no member then reads the shared cache for a row it was just
//     told. On a single Redis server (and the memory cache) the row is set
//     and the message published in one script, so the message says exactly
//     what k held when it was published; a Redis Cluster keeps k and the
//     bus on different nodes, so there the message carries no row.
//
// Why no member serves the old value after the new one was seen. The new
// value can be seen only after step 2 starts. By then every member that
// was live at step 1 has dropped k and refuses to fill it, or has lost its
// lease, and so its validity, before the writer went on. A member that
// joined after step 1 had no old value (its tier starts empty), and any
// read it starts finds the marker, not the old entry, in the shared cache;
// until step 3 no member fills k, and a fill is only ever a value read as a
// hit in the shared cache or stored there by the member's own lease (never
// a value loaded past a marker, or without filling). So while the write
// runs, k is served from the shared cache, which is linearizable on its own
// (leases, markers), or from the source. A fill that a member makes after
// the done arrived comes from a read that began after it (an older read's
// fill is refused: the done moved k's generation), so its read found the
// marker gone (or the write's own row in its place), that is the source
// changed; and a member that has not
// heard the done yet holds nothing for k. A row carried by "done k" is such
// a read: what k held as the message was published, taken as the member
// handles it, after every message published before it and before every
// one published after it; a later write's prepare therefore drops it
// before that write's acknowledgement, as for any fill. Two cases need
// more. A later write from the member itself does not wait for the
// member's own subscription: it may be acknowledged while an older row is
// still on its way to the member. So a member takes no row from the bus
// while a write or an Invalidate of k of its own has not come back to it
// through the bus. And the writer takes its own row only if nothing about
// k reached its tier since the script that left it ran (the bus may
// deliver a later write's prepare and done before the writer gets its
// reply; a row taken after them would be older than an acknowledged
// write).
//
// Writers without a tier, and members that join. Every writer places the
// marker, tier or not: a write that only deleted the old value after the
// source changed would leave it readable everywhere whenever that delete
// failed (the porcupine checker with connection resets found exactly
// that). A member that joins, or joins again after its lease lapsed,
// fills nothing for a grace (the load timeout and two leases) after its
// lease was first renewed. That covers a write that went on without its
// marker before any member was known, and a write whose prepare the member
// missed while it was cut off: such a write may still be waiting for the
// member's lease to run out (up to two leases) and then changing the
// source (the marker protects the key meanwhile, but a member that rejoins
// cannot tell which prepares it missed). This is the protocol's one
// assumption about time beyond the
// leases, and the markers make it too: a write is expected to change the
// source within the load timeout (a marker expires after it, and a member
// refuses to fill a prepared key for as long).
//
// Writers that cannot reach the bus. A write whose prepare cannot be
// published (the cache failed, or this instance is cut off from it), from
// an instance with a local tier of its own (even before its first
// announcement has counted anyone), or from one without that counted
// members at its last announcement, fails with
// [ErrCacheUnavailable] before it changes the source (counted in
// WritesRefused): the members it cannot tell would go on serving the value
// it replaced, and that is the one thing strict mode rules out. A fleet
// without members (no local tiers) keeps writing through a cache outage
// instead, as described under "When things fail".
//
// Acknowledgements travel in batches: a member queues one per message and
// sends every queued one in one round trip; a writer takes all that have
// arrived in one more.
//
// Invalidations that overtake a fill. A fill notes, when its read begins,
// the key's stripe generation and the tier's epoch; every invalidation
// bumps the generation and every emptying the epoch, under the stripe's
// lock (every stripe's lock, for an emptying), and the fill checks both and
// inserts under the same lock. A message about k that arrives while a read
// of k is on its way makes the fill a no-op. Members that join mid-write
// are covered above; a member's acknowledgement is sent only after it has
// dropped the key.
//
// The cost. A write waits for every member's acknowledgement of its
// prepare: a round trip through the bus in a healthy fleet, and up to one
// lease for a member cut off from the cache. A member cut off stops serving from memory
// within a lease. The local hit path reads no clock: a timer ends the
// tier's validity at its deadline, which assumes the process's timers fire
// within a quarter lease of their time (a process stopped longer than
// that, in a debugger or a throttled container, could serve from memory
// that much past its lease). [WithRelaxedLocalCache] drops the waiting:
// writers wait for nobody and members hold no lease, so a member serves a
// replaced value until the bus delivers the invalidation, or, if the bus
// breaks, until its validity runs out. It is never the default.
//
// # Warming, early refresh, adaptive TTL, Bloom filter, metrics
//
// [UserService.Warm] (and [Aside.Warm]) loads IDs ahead of reads in batches,
// one repository query and two cache round trips per batch, through leases,
// one instance at a time (see warm.go). [WithEarlyRefresh] refreshes hot
// entries before they expire, so that no reader waits for the database
// (refresh.go). [WithAdaptiveTTL] gives each entry a TTL by how its key is
// read and written (adaptive.go). [WithBloomFilter] keeps a Bloom filter of
// user IDs in the shared cache, so that reads of IDs that never existed do
// not reach the database, with no false negatives across the fleet
// (bloom.go). [WithRecorder] reports every read, load and write to a
// [Recorder], which the metrics module turns into Prometheus and
// OpenTelemetry metrics.
//
// # Errors and options
//
// Errors wrap this package's sentinels and the repository's own causes, so
// errors.Is works on both; each says "cacheaside:" once, followed by what
// the service was doing and what the layer beneath it reported. An option
// given a value out of its range (a TTL of zero, a jitter of 1, a nil
// logger) panics at once with a message that names it.
//
// # Distributed lock
//
// [RedisCache.AcquireLock] returns a [DistributedLock] for jobs that one
// instance of a fleet should run at a time, such as warming the cache. It
// extends itself while held, signals its loss, and carries a fencing token;
// read its documentation for what a Redis lock can and cannot promise.
//
// # Repositories
//
// [NewSQLRepository] is a [UserRepository] and [BatchUserRepository] over
// database/sql for PostgreSQL and SQLite; the package imports no driver, so
// bring your own (pgx's stdlib, modernc.org/sqlite). [NewMemoryRepository]
// keeps users in memory, for tests and examples.
//
// # Redis Cluster
//
// [NewRedisCache] works with a cluster client: every script touches one key
// (a lock and its fencing counter share a hash tag), and multi-key reads and
// deletes are pipelines that go-redis splits by slot, so nothing fails with
// CROSSSLOT.
//
// # Concurrency
//
// All methods are safe for concurrent use. Call [UserService.Close] (or
// [Aside.Close]) when done: it stops the background work, which is the
// retries of deletes that failed, the draining of an Outbox, and the pooled
// workers of a cache whose calls need them; each of those also ends on its
// own once idle. Each shared load runs on a goroutine of its own
// (singleflight's DoChan) that ends when the load returns, which
// [WithLoadTimeout] bounds for a repository that honours its context; batch
// lookups run on goroutines that end before [UserService.GetUsersBatch]
// returns; a held DistributedLock keeps one until Release. Every returned
// *User is the caller's own copy.
//
// # Other entities
//
// [Aside] is the same engine for any ID and value type, for caching products,
// sessions or anything else with its own namespace and TTL (see
// [NewAside]). It knows nothing of users: [UserService] is a thin client of
// it that validates users and names their keys.
package cacheaside

// How the source is laid out, one concept per file, each with its test:
//
//	aside.go         the engine's public surface: Aside, Get, Invalidate
//	entry.go         what a cache key holds and how a lookup reads it
//	singleflight.go  shared loads, write generations, late joiners
//	fill.go          a load and the fill that stores its result
//	lease.go         the lease protocol: one load per key per fleet
//	batch.go         GetMany: multi-get, batch loads, batch leases
//	options.go       Option and UserOption
//	errors.go        sentinels and how errors are worded
//	metrics.go       counters and the ServiceMetrics snapshot
//	cache.go         CacheClient and its optional upgrades
//	cacheaside.go    UserService, the user layer over the engine
//	user.go          User, UserRepository, keys and validation
//	memorycache.go, rediscache.go, lock.go, memoryrepo.go, sqlrepo.go:
//	                 one file per adapter; the mechanism (Redis commands
//	                 and scripts, the byte store) lives under internal/,
//	                 as do the fault-injection helpers of the tests
//	                 (internal/faultproxy, internal/redisproc).
//	guard.go         time box and circuit breaker around every cache call
//	repobreaker.go   the circuit breaker on the repository's reads
//	failsafe.go      serving the last value known when a load fails
//	invalidation.go  deletes that failed, retried until they land
//	outbox.go        the transactional outbox and its drain
//	keys.go          how IDs become keys; the library's own namespace
//
//	write.go         write intents, and the write path around the bus
//	bus.go           the invalidation bus: members, leases, announcements
//	localtier.go     the local tier
//
//	bloom.go         the fleet-wide Bloom filter of user IDs
//	warm.go          warming: batched leases, one query per batch
//	refresh.go       early refresh (XFetch)
//	adaptive.go      adaptive TTLs from count-min sketches
//	recorder.go      the Recorder that metrics export feeds on
//
// Metrics export (Prometheus, OpenTelemetry) lives in the module
// github.com/cacheaside/cacheaside/metrics, like bench/, so that its
// dependencies reach only those who import it.
