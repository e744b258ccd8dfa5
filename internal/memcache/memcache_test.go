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

func TestCache_SetNXAndCompareAndSwap(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := New(clk.now)
	if old, ok := c.SetNX("k", []byte("lease1"), time.Second, "lease"); !ok || old != nil {
		t.Fatalf("SetNX on empty key = %q, %v, want nil, true", old, ok)
	}
	if old, ok := c.SetNX("k", []byte("lease2"), time.Second, "lease"); ok || string(old) != "lease1" {
		t.Fatalf("SetNX on held key = %q, %v, want lease1, false", old, ok)
	}
	if c.CompareAndSwap("k", []byte("lease2"), []byte("v2"), time.Minute) {
		t.Fatal("CompareAndSwap with a foreign lease succeeded")
	}
	if !c.CompareAndSwap("k", []byte("lease1"), []byte("v1"), time.Minute) {
		t.Fatal("CompareAndSwap with the holder's lease failed")
	}
	if got, _ := c.Get("k"); string(got) != "v1" {
		t.Fatalf("after the swap Get = %q, want v1", got)
	}
	if d, _ := c.TTL("k"); d != time.Minute {
		t.Fatalf("TTL after the swap = %v, want the fill's 1m", d)
	}
	// A lease that expired is gone: the next SetNX takes the key over and
	// the old holder's swap fails.
	c.Delete("k")
	c.SetNX("k", []byte("lease3"), time.Second, "lease")
	clk.t = clk.t.Add(time.Second)
	if _, ok := c.SetNX("k", []byte("lease4"), time.Second, "lease"); !ok {
		t.Fatal("SetNX over an expired lease failed")
	}
	if c.CompareAndSwap("k", []byte("lease3"), []byte("old"), time.Minute) {
		t.Fatal("CompareAndSwap by an expired holder succeeded")
	}
	// A nil value releases.
	if !c.CompareAndSwap("k", []byte("lease4"), nil, 0) {
		t.Fatal("release by the holder failed")
	}
	if _, ok := c.Get("k"); ok {
		t.Fatal("key still present after release")
	}
	if c.CompareAndSwap("missing", nil, []byte("x"), 0) {
		t.Fatal("CompareAndSwap on an absent key succeeded")
	}
	// A lease never lives for ever: one without an expiry counts as empty,
	// while any other value without one is kept.
	c.Set("k", []byte("lease-planted"), 0)
	if old, ok := c.SetNX("k", []byte("lease5"), time.Second, "lease"); !ok || old != nil {
		t.Fatalf("SetNX over a lease without expiry = %q, %v, want nil, true", old, ok)
	}
	c.Set("v", []byte("value"), 0)
	if old, ok := c.SetNX("v", []byte("lease6"), time.Second, "lease"); ok || string(old) != "value" {
		t.Fatalf("SetNX over a value without expiry = %q, %v, want value, false", old, ok)
	}
}
