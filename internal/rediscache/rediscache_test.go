package rediscache

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newCache(t *testing.T, prefix string) (*Cache, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { c.Close() })
	return New(c, prefix), mr
}

func TestCache_PrefixTTLAndMiss(t *testing.T) {
	ctx := context.Background()
	c, mr := newCache(t, "app:")
	if _, ok, err := c.Get(ctx, "k"); ok || err != nil {
		t.Fatalf("Get(k) on empty = ok %v, err %v, want false, nil", ok, err)
	}
	if err := c.Set(ctx, "k", []byte("v"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if got, _ := mr.Get("app:k"); got != "v" {
		t.Fatalf("raw app:k = %q, want v", got)
	}
	if ttl := mr.TTL("app:k"); ttl != time.Minute {
		t.Fatalf("TTL(app:k) = %v, want 1m", ttl)
	}
	if err := c.Set(ctx, "n", []byte("v"), -time.Second); err != nil {
		t.Fatal(err)
	}
	if ttl := mr.TTL("app:n"); ttl != 0 {
		t.Fatalf("TTL after a negative ttl = %v, want none", ttl)
	}
	b, ok, err := c.Get(ctx, "k")
	if err != nil || !ok || string(b) != "v" {
		t.Fatalf("Get(k) = %q, %v, %v, want v, true, nil", b, ok, err)
	}
}

func TestCache_GetMultiDelete(t *testing.T) {
	ctx := context.Background()
	c, mr := newCache(t, "")
	mr.Set("a", "1")
	mr.Set("c", "3")
	got, err := c.GetMulti(ctx, []string{"a", "b", "c"})
	if err != nil || string(got[0]) != "1" || got[1] != nil || string(got[2]) != "3" {
		t.Fatalf("GetMulti = %q, %v, want [1 nil 3], nil", got, err)
	}
	if err := c.Delete(ctx, "a", "c", "zz"); err != nil {
		t.Fatal(err)
	}
	if mr.Exists("a") || mr.Exists("c") {
		t.Fatal("keys survive Delete")
	}
}

func TestCache_GetMultiChunks(t *testing.T) {
	ctx := context.Background()
	c, mr := newCache(t, "p:")
	keys := make([]string, 2*mgetChunk+7)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
		if i%3 == 0 {
			mr.Set("p:"+keys[i], keys[i])
		}
	}
	got, err := c.GetMulti(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		if i%3 == 0 && string(b) != keys[i] || i%3 != 0 && b != nil {
			t.Fatalf("GetMulti[%d] = %q across chunks, want %q only for multiples of 3", i, b, keys[i])
		}
	}
}

func TestCache_ErrorsSurface(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rc := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rc.Close() })
	c := New(rc, "")
	mr.Close()
	if _, _, err := c.Get(ctx, "k"); err == nil {
		t.Fatal("Get with Redis down: nil error")
	}
	if _, err := c.GetMulti(ctx, []string{"a"}); err == nil {
		t.Fatal("GetMulti with Redis down: nil error")
	}
	if err := c.Delete(ctx, "a", "b"); err == nil {
		t.Fatal("Delete with Redis down: nil error")
	}
}
