package cacheaside

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
)

// benchRedis returns a client to REDIS_ADDR, or to an in-process miniredis
// when it is unset (ratios against miniredis mean little: it is not the
// server users run).
func benchRedis(b *testing.B) (redis.UniversalClient, string) {
	b.Helper()
	if os.Getenv("REDIS_ADDR") != "" {
		return realRedis(b), "redis-server"
	}
	mr := miniredis.RunT(b)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	b.Cleanup(func() { c.Close() })
	return c, "miniredis"
}

// hitFixture is a service over Redis with one cached user, and the raw key
// of a copy of the user stored as a hand-written cache would store it: its
// bare JSON, for the baseline to read.
func hitFixture(b *testing.B) (svc *UserService, rdb redis.UniversalClient, rawKey string, id int) {
	rdb, _ = benchRedis(b)
	prefix := uniquePrefix(b)
	cleanupPrefix(b, rdb, prefix)
	repo := NewMemoryRepository()
	u := &User{Name: "Benchmark User", Email: "bench@example.com"}
	if err := repo.CreateUser(context.Background(), u); err != nil {
		b.Fatal(err)
	}
	svc = NewUserService(repo, NewRedisCache(rdb, WithKeyPrefix(prefix)))
	b.Cleanup(func() { svc.Close() })
	if _, err := svc.GetUser(context.Background(), u.ID); err != nil { // warm
		b.Fatal(err)
	}
	plain, _ := json.Marshal(u)
	rawKey = prefix + "plain:" + userCacheKey(u.ID)
	if err := rdb.Set(context.Background(), rawKey, plain, 0).Err(); err != nil {
		b.Fatal(err)
	}
	return svc, rdb, rawKey, u.ID
}

func rawGet(ctx context.Context, b *testing.B, rdb redis.UniversalClient, key string) {
	bs, err := rdb.Get(ctx, key).Bytes()
	if err != nil {
		b.Fatal(err)
	}
	var u User
	if err := json.Unmarshal(bs, &u); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkGetUserHit measures a cache hit through the service against the
// baseline a hand-written cache read costs: a raw go-redis GET plus
// json.Unmarshal of the same bytes, on the same server in the same run.
// Compare the two with benchstat.
func BenchmarkGetUserHit(b *testing.B) {
	ctx := context.Background()
	b.Run("raw-get-unmarshal", func(b *testing.B) {
		_, rdb, key, _ := hitFixture(b)
		b.ReportAllocs()
		for b.Loop() {
			rawGet(ctx, b, rdb, key)
		}
	})
	b.Run("cacheaside", func(b *testing.B) {
		svc, _, _, id := hitFixture(b)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := svc.GetUser(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// interleave runs first and then second once per benchmark iteration, so
// that both see the same server load, and returns the mean time of each in
// nanoseconds.
func interleave(b *testing.B, first, second func()) (ns1, ns2 float64) {
	var d1, d2 time.Duration
	for b.Loop() {
		t0 := time.Now()
		first()
		t1 := time.Now()
		second()
		d1 += t1.Sub(t0)
		d2 += time.Since(t1)
	}
	return float64(d1) / float64(b.N), float64(d2) / float64(b.N)
}

// BenchmarkGetUserHitRatio interleaves the raw baseline and the service's
// hit in one loop, so that both see the same server load, and reports the
// ratio of their mean times (goal: at most 1.15).
func BenchmarkGetUserHitRatio(b *testing.B) {
	ctx := context.Background()
	svc, rdb, key, id := hitFixture(b)
	raw, lib := interleave(b,
		func() { rawGet(ctx, b, rdb, key) },
		func() {
			if _, err := svc.GetUser(ctx, id); err != nil {
				b.Fatal(err)
			}
		})
	b.ReportMetric(raw, "raw-ns/op")
	b.ReportMetric(lib, "cacheaside-ns/op")
	b.ReportMetric(lib/raw, "ratio")
}

// batchFixture is a service over Redis with 100 cached users.
func batchFixture(b *testing.B) (*UserService, []int) {
	ctx := context.Background()
	rdb, _ := benchRedis(b)
	prefix := uniquePrefix(b)
	cleanupPrefix(b, rdb, prefix)
	repo := NewMemoryRepository()
	ids := make([]int, 100)
	for i := range ids {
		u := &User{Name: "User", Email: "u@example.com"}
		if err := repo.CreateUser(ctx, u); err != nil {
			b.Fatal(err)
		}
		ids[i] = u.ID
	}
	svc := NewUserService(repo, NewRedisCache(rdb, WithKeyPrefix(prefix)))
	if _, err := svc.GetUsersBatch(ctx, ids); err != nil {
		b.Fatal(err)
	}
	return svc, ids
}

// BenchmarkGetUsersBatch compares 100 hits read with one GetUsersBatch call
// against the same 100 hits read with sequential GetUser calls; ns/op is
// per 100 users.
func BenchmarkGetUsersBatch(b *testing.B) {
	ctx := context.Background()
	svc, ids := batchFixture(b)
	b.Run("batch-100", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := svc.GetUsersBatch(ctx, ids); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sequential-100", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, id := range ids {
				if _, err := svc.GetUser(ctx, id); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// sqliteBenchRepo is a SQLRepository on an embedded SQLite file holding
// one user: the realistic bare read the miss path wraps.
func sqliteBenchRepo(b *testing.B) (*SQLRepository, int) {
	repo, err := NewSQLRepository(context.Background(), openSQLite(b), SQLite)
	if err != nil {
		b.Fatal(err)
	}
	u := &User{Name: "Miss User", Email: "miss@example.com"}
	if err := repo.CreateUser(context.Background(), u); err != nil {
		b.Fatal(err)
	}
	return repo, u.ID
}

// missFixture is a service over Redis and a SQLite repository holding one
// user, and a function that makes the service miss on it: it invalidates
// the user (one DEL) and reads it back.
func missFixture(b *testing.B) (repo *SQLRepository, id int, miss func()) {
	ctx := context.Background()
	repo, id = sqliteBenchRepo(b)
	rdb, _ := benchRedis(b)
	prefix := uniquePrefix(b)
	cleanupPrefix(b, rdb, prefix)
	svc := NewUserService(repo, NewRedisCache(rdb, WithKeyPrefix(prefix)))
	return repo, id, func() {
		_ = svc.users.invalidate(ctx, userCacheKey(id), nil, nil)
		if _, err := svc.GetUser(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGetUserMiss measures the miss path (lookup, lease, SQLite read,
// compare-and-swap fill) against the bare SQLite read it wraps. Each
// iteration of the cacheaside case invalidates the key first (one DEL, part
// of its time), so every GetUser misses.
func BenchmarkGetUserMiss(b *testing.B) {
	ctx := context.Background()
	b.Run("sqlite-repository", func(b *testing.B) {
		repo, id := sqliteBenchRepo(b)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := repo.GetUser(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cacheaside", func(b *testing.B) {
		_, _, miss := missFixture(b)
		b.ReportAllocs()
		for b.Loop() {
			miss()
		}
	})
}

// BenchmarkGetUserMissOverhead interleaves a bare SQLite read with a full
// miss (invalidate, lookup, lease, the same read, fill) and reports what
// the cache adds to a miss, in microseconds.
func BenchmarkGetUserMissOverhead(b *testing.B) {
	ctx := context.Background()
	repo, id, miss := missFixture(b)
	bare, full := interleave(b,
		func() {
			if _, err := repo.GetUser(ctx, id); err != nil {
				b.Fatal(err)
			}
		},
		miss)
	b.ReportMetric(bare/1e3, "bare-read-µs")
	b.ReportMetric(full/1e3, "miss-µs")
	b.ReportMetric((full-bare)/1e3, "overhead-µs")
}

// BenchmarkGetUsersBatchRatio interleaves one GetUsersBatch of 100 hits with
// 100 sequential GetUser hits of the same users and reports how many times
// cheaper the batch is per user (goal: at least 10).
func BenchmarkGetUsersBatchRatio(b *testing.B) {
	ctx := context.Background()
	svc, ids := batchFixture(b)
	batch, seq := interleave(b,
		func() {
			if _, err := svc.GetUsersBatch(ctx, ids); err != nil {
				b.Fatal(err)
			}
		},
		func() {
			for _, id := range ids {
				if _, err := svc.GetUser(ctx, id); err != nil {
					b.Fatal(err)
				}
			}
		})
	b.ReportMetric(batch/1e3, "batch-µs")
	b.ReportMetric(seq/1e3, "sequential-µs")
	b.ReportMetric(seq/batch, "x-cheaper")
}

// BenchmarkLocalHitRatio interleaves the floor of a local hit, a bare otter
// GetIfPresent plus the copy of the struct it holds, with a read that the
// local tier answers through GetUser, and reports the ratio of their mean
// times (goal: at most 1.5) and that the tier sent nothing to the cache.
func BenchmarkLocalHitRatio(b *testing.B) {
	ctx := context.Background()
	repo := NewMemoryRepository()
	u := &User{Name: "Benchmark User", Email: "bench@example.com"}
	if err := repo.CreateUser(ctx, u); err != nil {
		b.Fatal(err)
	}
	svc := NewUserService(repo, NewMemoryCache(), WithLocalCache(1000), withJoinGrace(testJoinGrace))
	b.Cleanup(func() { svc.Close() })
	for svc.GetMetrics().Membership != "serving" {
		time.Sleep(time.Millisecond)
	}
	for range 2 {
		if _, err := svc.GetUser(ctx, u.ID); err != nil {
			b.Fatal(err)
		}
	}
	floor := otter.Must(&otter.Options[string, User]{MaximumSize: 1000})
	floor.Set(userCacheKey(u.ID), *u)
	key := userCacheKey(u.ID)
	var sink *User
	before := svc.GetMetrics().LocalHits
	// Each side runs 64 times between two clock reads: a read of the clock
	// costs about as much as what is measured.
	const batch = 64
	bare, lib := interleave(b,
		func() {
			for range batch {
				v, ok := floor.GetIfPresent(key)
				if !ok {
					b.Fatal("floor miss")
				}
				sink = &v
			}
		},
		func() {
			for range batch {
				got, err := svc.GetUser(ctx, u.ID)
				if err != nil {
					b.Fatal(err)
				}
				sink = got
			}
		})
	_ = sink
	if hits := svc.GetMetrics().LocalHits - before; hits != int64(b.N*batch) {
		b.Fatalf("%d of %d reads were local hits", hits, b.N*batch)
	}
	b.ReportMetric(bare/batch, "otter-ns/op")
	b.ReportMetric(lib/batch, "local-hit-ns/op")
	b.ReportMetric(lib/bare, "ratio")
}

// BenchmarkWarm100k warms 100,000 users held in PostgreSQL into Redis
// (both real servers: REDIS_ADDR, POSTGRES_DSN), and, in the same
// iteration, does what a warm-up without Warm does: every user read once
// with GetUser, 16 at a time. It reports the seconds each took and the
// ratio.
func BenchmarkWarm100k(b *testing.B) {
	const users = 100_000
	ctx := context.Background()
	db := openPostgres(b)
	table := "users_warm_" + strconv.Itoa(int(time.Now().UnixNano()%1_000_000))
	repo, err := NewSQLRepository(ctx, db, PostgreSQL, WithTable(table))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Exec(`DROP TABLE IF EXISTS ` + table + `, ` + table + `_outbox`) })
	if _, err := db.ExecContext(ctx, `INSERT INTO `+table+` (name, email, created_at)
		SELECT 'user ' || g, 'u' || g || '@example.com', now() FROM generate_series(1, $1) g`, users); err != nil {
		b.Fatal(err)
	}
	ids := make([]int, users)
	for i := range ids {
		ids[i] = i + 1
	}
	rdb := realRedis(b)
	var warmSecs, naiveSecs float64
	for i := 0; i < b.N; i++ {
		prefix := uniquePrefix(b)
		cleanupPrefix(b, rdb, prefix)
		svc := NewUserService(repo, NewRedisCache(rdb, WithKeyPrefix(prefix)))
		start := time.Now()
		if err := svc.Warm(ctx, ids); err != nil {
			b.Fatal(err)
		}
		warmSecs += time.Since(start).Seconds()
		if m := svc.GetMetrics(); m.DatabaseLoads > int64(users/DefaultWarmBatch+1) {
			b.Fatalf("%d repository reads for %d users", m.DatabaseLoads, users)
		}
		svc.Close()

		prefix = uniquePrefix(b)
		cleanupPrefix(b, rdb, prefix)
		naive := NewUserService(repo, NewRedisCache(rdb, WithKeyPrefix(prefix)))
		start = time.Now()
		g := new(errgroup.Group)
		g.SetLimit(16)
		for _, id := range ids {
			g.Go(func() error { _, err := naive.GetUser(ctx, id); return err })
		}
		if err := g.Wait(); err != nil {
			b.Fatal(err)
		}
		naiveSecs += time.Since(start).Seconds()
		naive.Close()
	}
	b.ReportMetric(warmSecs/float64(b.N), "warm-s")
	b.ReportMetric(naiveSecs/float64(b.N), "naive-s")
	b.ReportMetric(naiveSecs/warmSecs, "speedup")
	b.ReportMetric(float64(users)*float64(b.N)/warmSecs, "users/s")
}
