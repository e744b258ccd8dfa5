package cacheaside

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
)

// The local tier (WithLocalCache) keeps values in process memory, in front
// of the shared cache, on otter's W-TinyLFU cache: a hit costs no network
// call. What it holds is kept right by the invalidation bus (bus.go):
//
//   - It serves only while the bus vouches for it (bus.valid): its member
//     lease is live by its own clock, with a margin, and its subscription
//     delivers. When that lapses, it is emptied before it serves again.
//   - It is filled only with values that were in the shared cache, read
//     as a hit or stored by this process's own lease (never a value read
//     past a write intent, or loaded without filling), and only if
//     nothing about the key arrived on the bus since the read began, the
//     tier was not emptied meanwhile, and no write of the key is between
//     its prepare and its done. The check and the insert happen under the
//     key's stripe lock, which every invalidation takes too: an
//     invalidation cannot slip between them.
//   - Every bus message about a key drops it, under the same lock, before
//     the member acknowledges.

// tier is an engine's local tier.
type tier[V any] struct {
	c     *otter.Cache[string, tierEntry[V]]
	bus   *bus
	gens  generations   // bumped by every invalidation of a key
	epoch atomic.Uint64 // bumped by every flush, with every stripe locked

	mu      sync.Mutex           // protects blocked
	blocked map[string]time.Time // keys between a write's prepare and done, until when
	hold    time.Duration        // how long a prepare blocks a key without its done
}

// tierEntry is a value and when it stops being fresh, in Unix nanoseconds.
type tierEntry[V any] struct {
	v   V
	exp int64
}

// tierTicket is what a read notes when it begins, to fill the tier with
// what it reads only if nothing changed meanwhile.
type tierTicket struct {
	s     *stripe
	gen   uint64
	epoch uint64
}

func newTier[V any](maxEntries int, hold time.Duration) *tier[V] {
	t := &tier[V]{
		c:       otter.Must(&otter.Options[string, tierEntry[V]]{MaximumSize: maxEntries}),
		blocked: make(map[string]time.Time),
		hold:    hold,
	}
	t.gens.init()
	return t
}

// get returns the value of key if the tier may serve it now.
func (t *tier[V]) get(key string) (V, bool) {
	now := time.Now()
	if !t.bus.valid(now) {
		var zero V
		return zero, false
	}
	e, ok := t.c.GetIfPresent(key)
	if !ok || now.UnixNano() >= e.exp {
		var zero V
		return zero, false
	}
	return e.v, true
}

// begin notes, before a read of key starts, what must not change until
// its value may fill the tier.
func (t *tier[V]) begin(key string) tierTicket {
	s, gen := t.gens.of(key)
	return tierTicket{s: s, gen: gen, epoch: t.epoch.Load()}
}

// fill stores v for key until exp, unless anything about key or the tier
// changed since tk was noted.
func (t *tier[V]) fill(key string, v V, exp time.Time, tk tierTicket) {
	tk.s.mu.RLock()
	defer tk.s.mu.RUnlock()
	if tk.s.gen.Load() != tk.gen || t.epoch.Load() != tk.epoch || !t.bus.valid(time.Now()) || t.isBlocked(key) {
		return
	}
	t.c.Set(key, tierEntry[V]{v: v, exp: exp.UnixNano()})
}

func (t *tier[V]) isBlocked(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	until, ok := t.blocked[key]
	if ok && time.Now().After(until) {
		delete(t.blocked, key)
		return false
	}
	return ok
}

// invalidate drops key, and after a prepare refuses to fill it until the
// write's done (or hold, if the done never comes).
func (t *tier[V]) invalidate(key string, kind byte) {
	s, _ := t.gens.of(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen.Add(1)
	t.c.Invalidate(key)
	t.mu.Lock()
	defer t.mu.Unlock()
	if kind == msgPrepare {
		t.blocked[key] = time.Now().Add(t.hold)
	} else {
		delete(t.blocked, key)
	}
}

// flush empties the tier. It holds every stripe, so that no fill that
// began before it can land after it.
func (t *tier[V]) flush() {
	for i := range t.gens.stripes {
		t.gens.stripes[i].mu.Lock()
	}
	t.epoch.Add(1)
	t.c.InvalidateAll()
	for i := range t.gens.stripes {
		t.gens.stripes[i].mu.Unlock()
	}
	t.mu.Lock()
	clear(t.blocked)
	t.mu.Unlock()
}

// len reports about how many values the tier holds.
func (t *tier[V]) len() int { return t.c.EstimatedSize() }
