package memcache

import (
	"bytes"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a test clock; tests move it between calls, never during one.
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

// TestCache_CopiesEveryWay covers the paths that TestCache_CopiesInAndOut
// does not: GetMulti, SetNX (in, and the held value out) and CompareAndSwap.
func TestCache_CopiesEveryWay(t *testing.T) {
	c := New(nil)

	lease := []byte("lease-1")
	if _, ok := c.SetNX("k", lease, time.Minute, "lease"); !ok {
		t.Fatal("SetNX on an empty key failed")
	}
	lease[0] = 'X'
	held, ok := c.SetNX("k", []byte("lease-2"), time.Minute, "lease")
	if ok || string(held) != "lease-1" {
		t.Fatalf("SetNX on a held key = %q, %v, want lease-1, false", held, ok)
	}
	held[0] = 'Y'

	val := []byte("value")
	if !c.CompareAndSwap("k", []byte("lease-1"), val, 0) {
		t.Fatal("CompareAndSwap by the holder failed")
	}
	val[0] = 'Z'
	multi := c.GetMulti([]string{"k"})
	multi[0][1] = 'W'
	if got, _ := c.Get("k"); string(got) != "value" {
		t.Fatalf("Get(k) = %q after caller mutations, want value", got)
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

// TestCache_ExpiredEntriesAreRemoved checks that expired entries leave
// memory, not only sight: otter's maintenance, run by the next write, drops
// them. (It replaces the old map's sweep test.) The clock starts at the Unix
// epoch, where the clock reads 0 nanoseconds.
func TestCache_ExpiredEntriesAreRemoved(t *testing.T) {
	clk := &clock{t: time.Unix(0, 0)}
	c := New(clk.now)
	const n = 1023
	for i := range n {
		c.Set("k"+strconv.Itoa(i), []byte("x"), time.Second)
	}
	if got := c.Len(); got != n {
		t.Fatalf("Len() = %d, want %d", got, n)
	}
	if got := c.EstimatedLen(); got != n {
		t.Fatalf("EstimatedLen() = %d, want %d", got, n)
	}
	clk.t = clk.t.Add(time.Hour)
	c.Set("last", []byte("x"), 0)
	c.m.CleanUp()
	if got := c.EstimatedLen(); got != 1 {
		t.Fatalf("EstimatedLen() after expiry, a write and CleanUp = %d, want 1", got)
	}
	if got := c.Len(); got != 1 {
		t.Fatalf("Len() = %d, want 1", got)
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

func TestNewBounded_PanicsOnBadMaxEntries(t *testing.T) {
	for _, tt := range []struct {
		name string
		max  int
	}{
		{name: "zero", max: 0},
		{name: "negative", max: -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil {
					t.Fatalf("NewBounded(nil, %d) did not panic", tt.max)
				}
				if msg := fmt.Sprint(r); !bytes.Contains([]byte(msg), []byte("maxEntries")) {
					t.Fatalf("NewBounded(nil, %d) panicked with %q, want it to name maxEntries", tt.max, msg)
				}
			}()
			NewBounded(nil, tt.max)
		})
	}
}

func TestNewBounded_BoundHolds(t *testing.T) {
	const maxEntries = 1000
	c := NewBounded(nil, maxEntries)
	peak := 0
	for i := range 10 * maxEntries {
		c.Set("key-"+strconv.Itoa(i), []byte("value"), 0)
		peak = max(peak, c.m.EstimatedSize())
	}
	// otter may exceed the bound while a write's eviction is pending, but
	// only by what its write buffer holds, never by the 10x inserted.
	if peak > 2*maxEntries {
		t.Fatalf("peak EstimatedSize() = %d, want at most %d (bound %d, %d inserted)", peak, 2*maxEntries, maxEntries, 10*maxEntries)
	}
	c.m.CleanUp()
	if got := c.m.EstimatedSize(); got > maxEntries {
		t.Fatalf("EstimatedSize() after CleanUp = %d, want at most %d", got, maxEntries)
	}
	if got := c.EstimatedLen(); got > maxEntries {
		t.Fatalf("EstimatedLen() after CleanUp = %d, want at most %d", got, maxEntries)
	}
	if got := c.Len(); got > maxEntries || got < maxEntries/2 {
		t.Fatalf("Len() = %d, want between %d and %d", got, maxEntries/2, maxEntries)
	}
	t.Logf("bound %d, inserted %d: peak %d, after CleanUp %d", maxEntries, 10*maxEntries, peak, c.m.EstimatedSize())
}

// TestCache_PerEntryTTL checks that each entry expires at its own time on
// the injected clock, and that no operation sees an expired entry.
func TestCache_PerEntryTTL(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	c := NewBounded(clk.now, 100)
	c.Set("short", []byte("s"), time.Minute)
	c.Set("long", []byte("l"), time.Hour)
	c.Set("never", []byte("n"), 0)

	type want struct {
		key     string
		present bool
		ttl     time.Duration
	}
	check := func(step string, wantLen int, wants ...want) {
		t.Helper()
		keys := make([]string, len(wants))
		for i, w := range wants {
			keys[i] = w.key
		}
		multi := c.GetMulti(keys)
		for i, w := range wants {
			if _, ok := c.Get(w.key); ok != w.present {
				t.Errorf("%s: Get(%s) found = %v, want %v", step, w.key, ok, w.present)
			}
			if (multi[i] != nil) != w.present {
				t.Errorf("%s: GetMulti()[%s] = %q, want present = %v", step, w.key, multi[i], w.present)
			}
			if d, ok := c.TTL(w.key); ok != w.present || d != w.ttl {
				t.Errorf("%s: TTL(%s) = %v, %v, want %v, %v", step, w.key, d, ok, w.ttl, w.present)
			}
		}
		if n := c.Len(); n != wantLen {
			t.Errorf("%s: Len() = %d, want %d", step, n, wantLen)
		}
	}

	check("at once", 3,
		want{"short", true, time.Minute}, want{"long", true, time.Hour}, want{"never", true, 0})
	clk.t = clk.t.Add(time.Minute - time.Nanosecond)
	check("1ns before short expires", 3,
		want{"short", true, time.Nanosecond}, want{"long", true, time.Hour - time.Minute + time.Nanosecond}, want{"never", true, 0})
	clk.t = clk.t.Add(time.Nanosecond)
	check("when short expires", 2,
		want{"short", false, 0}, want{"long", true, time.Hour - time.Minute}, want{"never", true, 0})
	clk.t = clk.t.Add(time.Hour - time.Minute)
	check("when long expires", 1,
		want{"short", false, 0}, want{"long", false, 0}, want{"never", true, 0})

	// Writes see expired entries as absent too.
	if c.CompareAndSwap("long", []byte("l"), []byte("x"), 0) {
		t.Error("CompareAndSwap over an expired value succeeded")
	}
	if old, ok := c.SetNX("long", []byte("l2"), time.Minute, "lease"); !ok || old != nil {
		t.Errorf("SetNX over an expired value = %q, %v, want nil, true", old, ok)
	}
}

// TestCache_WriteResetsTTL checks that every write sets the entry's TTL
// anew, whether it lengthens it, shortens it or removes it.
func TestCache_WriteResetsTTL(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	c := New(clk.now)
	for _, tt := range []struct {
		name    string
		ttl     time.Duration
		wantTTL time.Duration
	}{
		{name: "first", ttl: time.Minute, wantTTL: time.Minute},
		{name: "longer", ttl: time.Hour, wantTTL: time.Hour},
		{name: "shorter", ttl: time.Second, wantTTL: time.Second},
		{name: "never", ttl: 0, wantTTL: 0},
		{name: "again", ttl: 10 * time.Second, wantTTL: 10 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c.Set("k", []byte(tt.name), tt.ttl)
			if got, ok := c.Get("k"); !ok || string(got) != tt.name {
				t.Fatalf("Get(k) = %q, %v, want %s, true", got, ok, tt.name)
			}
			if d, ok := c.TTL("k"); !ok || d != tt.wantTTL {
				t.Fatalf("TTL(k) = %v, %v, want %v, true", d, ok, tt.wantTTL)
			}
		})
	}
	clk.t = clk.t.Add(10 * time.Second)
	if _, ok := c.Get("k"); ok {
		t.Fatal("Get(k) after its last TTL: found")
	}
}

// TestCache_SetNXRace checks that of many concurrent SetNX calls on one key
// exactly one wins, and every loser is shown the winner's value.
func TestCache_SetNXRace(t *testing.T) {
	const n = 64
	for round := range 20 {
		c := New(nil)
		key := "k" + strconv.Itoa(round)
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			wins  atomic.Int32
			held  = make([][]byte, n)
		)
		for i := range n {
			wg.Go(func() {
				<-start
				old, ok := c.SetNX(key, []byte("lease-"+strconv.Itoa(i)), time.Minute, "lease")
				if ok {
					wins.Add(1)
				}
				held[i] = old
			})
		}
		close(start)
		wg.Wait()
		if got := wins.Load(); got != 1 {
			t.Fatalf("round %d: %d SetNX calls won, want 1", round, got)
		}
		winner, _ := c.Get(key)
		for i, h := range held {
			if h != nil && !bytes.Equal(h, winner) {
				t.Fatalf("round %d: loser %d was shown %q, want the winner's %q", round, i, h, winner)
			}
		}
	}
}

// TestCache_CompareAndSwapRace checks that of many concurrent swaps from the
// same old value exactly one succeeds, for a replacement and for a release.
func TestCache_CompareAndSwapRace(t *testing.T) {
	const n = 64
	for _, tt := range []struct {
		name    string
		release bool
	}{
		{name: "replace"},
		{name: "release", release: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for round := range 20 {
				c := New(nil)
				c.Set("k", []byte("v0"), time.Minute)
				var (
					wg    sync.WaitGroup
					start = make(chan struct{})
					wins  atomic.Int32
					won   atomic.Int32
				)
				for i := range n {
					wg.Go(func() {
						<-start
						var b []byte
						if !tt.release {
							b = []byte("v" + strconv.Itoa(i+1))
						}
						if c.CompareAndSwap("k", []byte("v0"), b, time.Minute) {
							wins.Add(1)
							won.Store(int32(i + 1))
						}
					})
				}
				close(start)
				wg.Wait()
				if got := wins.Load(); got != 1 {
					t.Fatalf("round %d: %d swaps succeeded, want 1", round, got)
				}
				got, ok := c.Get("k")
				switch {
				case tt.release && ok:
					t.Fatalf("round %d: Get(k) = %q after the release, want a miss", round, got)
				case !tt.release && string(got) != "v"+strconv.Itoa(int(won.Load())):
					t.Fatalf("round %d: Get(k) = %q, want the winner's v%d", round, got, won.Load())
				}
			}
		})
	}
}

// TestCache_ConcurrentUse mixes every operation on a small cache from many
// goroutines, for the race detector and otter's maintenance under eviction.
func TestCache_ConcurrentUse(t *testing.T) {
	c := NewBounded(nil, 64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := "k" + strconv.Itoa((g*7+i)%200)
				switch i % 6 {
				case 0:
					c.Set(k, []byte(k), time.Duration(i%3)*time.Second)
				case 1:
					c.Get(k)
				case 2:
					c.GetMulti([]string{k, "other"})
				case 3:
					c.SetNX(k, []byte("lease"), time.Second, "lease")
				case 4:
					c.CompareAndSwap(k, []byte("lease"), []byte(k), time.Minute)
				case 5:
					c.Delete(k)
					c.TTL(k)
				}
			}
		})
	}
	wg.Wait()
	if n := c.Len(); n > 2*64 {
		t.Fatalf("Len() = %d after the run, want about 64 at most", n)
	}
}

// TestCache_StartsNoGoroutine checks that caches that are used and never
// closed leave no goroutine behind.
func TestCache_StartsNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	clk := &clock{t: time.Unix(1000, 0)}
	for i := range 100 {
		c := NewBounded(clk.now, 10)
		for j := range 50 {
			c.Set(strconv.Itoa(j), []byte("x"), time.Duration(j%2)*time.Second)
		}
		c.Get("1")
		c.SetNX("lease", []byte("lease"), time.Second, "lease")
		clk.t = clk.t.Add(time.Duration(i) * time.Second)
		c.Len()
	}
}

func BenchmarkGet(b *testing.B) {
	c := New(nil)
	v := bytes.Repeat([]byte("x"), 200)
	c.Set("user:42", v, time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.Get("user:42"); !ok {
			b.Fatal("Get missed")
		}
	}
}

// BenchmarkGetParallel reads one present key from every P: without a global
// lock it scales with the number of cores.
func BenchmarkGetParallel(b *testing.B) {
	c := New(nil)
	v := bytes.Repeat([]byte("x"), 200)
	c.Set("user:42", v, time.Hour)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := c.Get("user:42"); !ok {
				b.Error("Get missed")
				return
			}
		}
	})
}

func BenchmarkSetGet(b *testing.B) {
	c := New(nil)
	v := bytes.Repeat([]byte("x"), 200)
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "user:" + strconv.Itoa(i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := keys[i%len(keys)]
		i++
		c.Set(k, v, time.Hour)
		if _, ok := c.Get(k); !ok {
			b.Fatal("Get missed")
		}
	}
}
