package memcache

import (
	"bytes"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestCache_SetGetExpire(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := New(clk.now)
	c.Set("a", []byte("1"), time.Minute)
	c.Set("b", []byte("2"), 0)
	if got, ok := c.Get("a"); !ok || string(got) != "1" {
		t.Fatalf("Get(a) = %q, %v, want 1, true", got, ok)
	}
	if d, ok := c.TTL("a"); !ok || d != time.Minute {
		t.Fatalf("TTL(a) = %v, %v, want 1m, true", d, ok)
	}
	clk.t = clk.t.Add(time.Minute)
	if _, ok := c.Get("a"); ok {
		t.Fatal("Get(a) after its TTL: found, want expired")
	}
	if got, ok := c.Get("b"); !ok || string(got) != "2" {
		t.Fatalf("Get(b) = %q, %v, want 2, true (no expiry)", got, ok)
	}
	if n := c.Len(); n != 1 {
		t.Fatalf("Len() = %d, want 1", n)
	}
}

func TestCache_CopiesInAndOut(t *testing.T) {
	c := New(nil)
	in := []byte("abc")
	c.Set("k", in, 0)
	in[0] = 'X'
	out, _ := c.Get("k")
	out[1] = 'Y'
	again, _ := c.Get("k")
	if !bytes.Equal(again, []byte("abc")) {
		t.Fatalf("Get(k) = %q after caller mutations, want abc", again)
	}
}

func TestCache_GetMultiAndDelete(t *testing.T) {
	c := New(nil)
	c.Set("a", []byte("1"), 0)
	c.Set("c", []byte("3"), 0)
	got := c.GetMulti([]string{"a", "b", "c"})
	if string(got[0]) != "1" || got[1] != nil || string(got[2]) != "3" {
		t.Fatalf("GetMulti = %q, want [1 nil 3]", got)
	}
	c.Delete("a", "missing")
	if _, ok := c.Get("a"); ok {
		t.Fatal("Get(a) after Delete: found")
	}
}

func TestCache_SweepDropsExpired(t *testing.T) {
	clk := &clock{t: time.Unix(0, 0)}
	c := New(clk.now)
	for i := 0; i < sweepEvery-1; i++ {
		c.Set(string(rune('a'+i%26))+string(rune(i)), []byte("x"), time.Second)
	}
	clk.t = clk.t.Add(time.Hour)
	c.Set("last", []byte("x"), 0) // the sweepEvery-th write sweeps
	c.mu.Lock()
	n := len(c.m)
	c.mu.Unlock()
	if n != 1 {
		t.Fatalf("entries after sweep = %d, want 1", n)
	}
}
