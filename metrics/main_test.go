package metrics

import (
	"context"
	"fmt"
	"testing"

	"go.uber.org/goleak"

	"github.com/cacheaside/cacheaside"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newUsers returns a UserService over in-memory stores with opts, closed
// when the test ends.
func newUsers(t *testing.T, opts ...cacheaside.UserOption) *cacheaside.UserService {
	t.Helper()
	svc := cacheaside.NewUserService(cacheaside.NewMemoryRepository(), cacheaside.NewMemoryCache(), opts...)
	t.Cleanup(func() { svc.Close() })
	return svc
}

// workload is what readMissesAndHits did, as the metrics should tell it.
type workload struct {
	creates       int // writes with op "create", all ok
	misses, hits  int // reads, by result
	found, absent int // loads with result ok and not_found
}

// readMissesAndHits creates users and reads them so that, on a fresh
// service, exactly misses reads miss (one of them for a user that does not
// exist) and hits reads hit; misses must be at least 2.
func readMissesAndHits(t *testing.T, svc *cacheaside.UserService, misses, hits int) workload {
	t.Helper()
	if misses < 2 {
		t.Fatalf("readMissesAndHits: misses = %d, want at least 2", misses)
	}
	ctx := context.Background()
	w := workload{creates: misses - 1, misses: misses, hits: hits, found: misses - 1, absent: 1}
	ids := make([]int, 0, misses-1)
	for i := range misses - 1 {
		u := &cacheaside.User{Name: fmt.Sprintf("user%d", i), Email: fmt.Sprintf("user%d@example.com", i)}
		if err := svc.CreateUser(ctx, u); err != nil {
			t.Fatalf("CreateUser: %v", err)
		}
		ids = append(ids, u.ID)
	}
	for _, id := range ids { // each first read misses
		if _, err := svc.GetUser(ctx, id); err != nil {
			t.Fatalf("GetUser(%d): %v", id, err)
		}
	}
	if _, err := svc.GetUser(ctx, 1_000_000); err == nil { // a miss; the "not found" is cached
		t.Fatal("GetUser(1000000): found a user that does not exist")
	}
	for i := range hits {
		if _, err := svc.GetUser(ctx, ids[i%len(ids)]); err != nil {
			t.Fatalf("GetUser: %v", err)
		}
	}
	if m := svc.GetMetrics(); m.CacheMisses != int64(misses) || m.CacheHits != int64(hits) {
		t.Fatalf("the service counted %d misses and %d hits, want %d and %d", m.CacheMisses, m.CacheHits, misses, hits)
	}
	return w
}
