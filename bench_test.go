package cacheaside

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
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
// the user is stored under.
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
	if _, err := svc.GetUser(context.Background(), u.ID); err != nil { // warm
		b.Fatal(err)
	}
	return svc, rdb, prefix + userCacheKey(u.ID), u.ID
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

// BenchmarkGetUserHitRatio interleaves the raw baseline and the service's
// hit in one loop, so that both see the same server load, and reports the
// ratio of their mean times (goal: at most 1.15).
func BenchmarkGetUserHitRatio(b *testing.B) {
	ctx := context.Background()
	svc, rdb, key, id := hitFixture(b)
	var raw, lib time.Duration
	for b.Loop() {
		t0 := time.Now()
		rawGet(ctx, b, rdb, key)
		t1 := time.Now()
		if _, err := svc.GetUser(ctx, id); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		raw += t1.Sub(t0)
		lib += t2.Sub(t1)
	}
	n := float64(b.N)
	b.ReportMetric(float64(raw.Nanoseconds())/n, "raw-ns/op")
	b.ReportMetric(float64(lib.Nanoseconds())/n, "cacheaside-ns/op")
	b.ReportMetric(float64(lib)/float64(raw), "ratio")
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
		repo, id := sqliteBenchRepo(b)
		rdb, _ := benchRedis(b)
		prefix := uniquePrefix(b)
		cleanupPrefix(b, rdb, prefix)
		svc := NewUserService(repo, NewRedisCache(rdb, WithKeyPrefix(prefix)))
		b.ReportAllocs()
		for b.Loop() {
			_ = svc.users.invalidate(ctx, userCacheKey(id), nil)
			if _, err := svc.GetUser(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkGetUserMissOverhead interleaves a bare SQLite read with a full
// miss (invalidate, lookup, lease, the same read, fill) and reports what
// the cache adds to a miss, in microseconds.
func BenchmarkGetUserMissOverhead(b *testing.B) {
	ctx := context.Background()
	repo, id := sqliteBenchRepo(b)
	rdb, _ := benchRedis(b)
	prefix := uniquePrefix(b)
	cleanupPrefix(b, rdb, prefix)
	svc := NewUserService(repo, NewRedisCache(rdb, WithKeyPrefix(prefix)))
	var bare, miss time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := repo.GetUser(ctx, id); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		_ = svc.users.invalidate(ctx, userCacheKey(id), nil)
		if _, err := svc.GetUser(ctx, id); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		bare += t1.Sub(t0)
		miss += t2.Sub(t1)
	}
	n := float64(b.N)
	b.ReportMetric(float64(bare.Microseconds())/n, "bare-read-µs")
	b.ReportMetric(float64(miss.Microseconds())/n, "miss-µs")
	b.ReportMetric(float64((miss-bare).Microseconds())/n, "overhead-µs")
}

// BenchmarkGetUsersBatchRatio interleaves one GetUsersBatch of 100 hits with
// 100 sequential GetUser hits of the same users and reports how many times
// cheaper the batch is per user (goal: at least 10).
func BenchmarkGetUsersBatchRatio(b *testing.B) {
	ctx := context.Background()
	svc, ids := batchFixture(b)
	var batch, seq time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := svc.GetUsersBatch(ctx, ids); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		for _, id := range ids {
			if _, err := svc.GetUser(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
		t2 := time.Now()
		batch += t1.Sub(t0)
		seq += t2.Sub(t1)
	}
	n := float64(b.N)
	b.ReportMetric(float64(batch.Microseconds())/n, "batch-µs")
	b.ReportMetric(float64(seq.Microseconds())/n, "sequential-µs")
	b.ReportMetric(float64(seq)/float64(batch), "x-cheaper")
}
