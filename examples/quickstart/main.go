// Command quickstart tells the cache-aside story on embedded defaults: an in-memory user table that answers in about 20 ms, like a
// loaded database, behind an in-process Redis (miniredis). Pass -redis to
// use a real redis-server instead.
//
//	go run ./examples/quickstart
//	go run ./examples/quickstart -redis localhost:6379
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/cacheaside/cacheaside"
)

// slowDB is the in-memory repository with a fixed delay on every read, and
// a count of the reads that reached it.
type slowDB struct {
	*cacheaside.MemoryRepository
	latency time.Duration
	queries atomic.Int64
}

func (d *slowDB) GetUser(ctx context.Context, id int) (*cacheaside.User, error) {
	d.queries.Add(1)
	select {
	case <-time.After(d.latency):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return d.MemoryRepository.GetUser(ctx, id)
}

func main() {
	addr := flag.String("redis", "", "address of a redis-server to use instead of the in-process one")
	latency := flag.Duration("db-latency", 20*time.Millisecond, "delay added to every database read")
	flag.Parse()
	if err := run(os.Stdout, *addr, *latency); err != nil {
		log.Fatal(err)
	}
}

func run(w io.Writer, addr string, latency time.Duration) error {
	ctx := context.Background()
	where := "redis-server at " + addr
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		addr, where = mr.Addr(), "in-process Redis (miniredis)"
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis at %s: %w", addr, err)
	}
	prefix := fmt.Sprintf("quickstart:%d:", os.Getpid())
	defer func() {
		if keys, _ := rdb.Keys(ctx, prefix+"*").Result(); len(keys) > 0 {
			rdb.Del(ctx, keys...)
		}
	}()

	db := &slowDB{MemoryRepository: cacheaside.NewMemoryRepository(), latency: latency}
	svc := cacheaside.NewUserService(db, cacheaside.NewRedisCache(rdb, cacheaside.WithKeyPrefix(prefix)),
		// The default time box (100 ms) suits a Redis on the same network; a
		// laptop busy compiling can keep miniredis waiting longer than that,
		// and the story's counts would then show it falling back.
		cacheaside.WithCacheTimeout(time.Second))
	defer svc.Close()
	fmt.Fprintf(w, "cache-aside quickstart: %s, database reads take %v\n\n", where, latency)

	alice := &cacheaside.User{Name: "Alice", Email: "alice@example.com"}
	if err := svc.CreateUser(ctx, alice); err != nil {
		return err
	}

	// 1. Miss, then hit.
	start := time.Now()
	u, err := svc.GetUser(ctx, alice.ID)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "1. first read of user %d (%s): cache miss, loaded from the database in %v\n", u.ID, u.Name, time.Since(start).Round(time.Microsecond))
	start = time.Now()
	if _, err := svc.GetUser(ctx, alice.ID); err != nil {
		return err
	}
	fmt.Fprintf(w, "2. second read: cache hit, served from Redis in %v\n", time.Since(start).Round(time.Microsecond))

	// 2. Ten concurrent requests for a cold key share one database query.
	bob := &cacheaside.User{Name: "Bob", Email: "bob@example.com"}
	if err := svc.CreateUser(ctx, bob); err != nil {
		return err
	}
	before := db.queries.Load()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := svc.GetUser(ctx, bob.ID); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	fmt.Fprintf(w, "3. 10 concurrent requests for user %d resulted in %d database query (%d failed)\n", bob.ID, db.queries.Load()-before, failed.Load())

	// 3. Update: database first, then invalidation, then a fresh read.
	alice.Name = "Alice Liddell"
	if err := svc.UpdateUser(ctx, alice); err != nil {
		return err
	}
	n, _ := rdb.Exists(ctx, fmt.Sprintf("%suser:%d", prefix, alice.ID)).Result()
	fmt.Fprintf(w, "4. user %d updated in the database; cache entry present afterwards: %v\n", alice.ID, n == 1)
	before = db.queries.Load()
	u, err = svc.GetUser(ctx, alice.ID)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "5. next read: %q, fresh from the database (%d query)\n", u.Name, db.queries.Load()-before)

	// 4. A missing user is a typed error, cached briefly.
	before = db.queries.Load()
	for range 100 {
		if _, err := svc.GetUser(ctx, 404); err != nil && !errors.Is(err, cacheaside.ErrUserNotFound) {
			return err
		}
	}
	fmt.Fprintf(w, "6. 100 reads of missing user 404: %d database query\n\n", db.queries.Load()-before)

	m := svc.GetMetrics()
	fmt.Fprintln(w, "metrics:")
	fmt.Fprintf(w, "  %d reads: %d answered by the cache (hit rate %.2f%%), %d missed it (%.2f%%)\n",
		m.TotalRequests, m.CacheHits, m.HitRate*100, m.CacheMisses+m.SharedLoads, m.MissRate*100)
	fmt.Fprintf(w, "  of the %d misses, %d read the database and %d waited for one of those reads: %d database queries in all\n",
		m.CacheMisses+m.SharedLoads, m.CacheMisses, m.SharedLoads, m.DatabaseLoads)
	fmt.Fprintf(w, "  response time: avg %v  p50 %v  p99 %v;  a database read took %v on average\n",
		m.AvgResponseTime.Round(time.Microsecond), m.P50ResponseTime.Round(time.Microsecond),
		m.P99ResponseTime.Round(time.Microsecond), m.LoadTime.Round(time.Microsecond))
	fmt.Fprintf(w, "  errors: cache reads %d  cache fills %d  invalidations %d  database %d  undecodable entries %d\n",
		m.CacheErrors, m.CacheWriteErrors, m.CacheInvalidationErrors, m.DatabaseErrors, m.DecodeErrors)
	return nil
}
