package cacheaside

import (
	"hash/maphash"
	"strconv"
	"strings"
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
	c      *otter.Cache[uint64, tierEntry[V]] // by tierKey
	seed   maphash.Seed
	prefix string // with int IDs: every key is prefix and the ID in decimal
	bus    *bus
	gens   generations   // bumped by every invalidation of a key
	epoch  atomic.Uint64 // bumped by every flush, with every stripe locked

	mu sync.Mutex // protects blocked
	// blocked holds the keys between a write's prepare and its done: per
	// key, per write, until when. A key stays blocked while any write of
	// it is, so that the done of one of two overlapping writes does not
	// let the tier fill before the other's.
	blocked map[string]map[string]time.Time
	hold    time.Duration // how long a prepare blocks a key without its done
	// own holds, per key, this process's own writes and invalidations of
	// it whose messages the bus has not brought back yet, until when (hold).
	// A value that a write elsewhere left (see heard) may be older than
	// one of them, which was acknowledged without waiting for this
	// process's own subscription: none is taken meanwhile.
	own map[string]map[string]time.Time

	// decode reads a cache entry of key as a value and when it stops
	// being fresh, for heard and endOwn; nil leaves such values to the
	// next read.
	decode func(key string, raw []byte) (V, time.Time, bool)
}

// The tier holds a key under a number: the ID itself for an engine whose
// IDs are integers, so that a local hit builds no key; a 64-bit hash of the
// key otherwise, in which case the entry keeps the key itself and a lookup
// compares it, so that two keys whose hashes collide never answer for each
// other, they only take each other's place.

// tierEntry is a value, its key, and when it stops being fresh, on the
// mono clock.
type tierEntry[V any] struct {
	key string
	v   V
	exp int64
}

// tierTicket is what a read notes when it begins, to fill the tier with
// what it reads only if nothing changed meanwhile.
type tierTicket struct {
	s     *stripe
	gen   uint64
	epoch uint64
	early bool // the read began within a joining member's grace
}

func newTier[V any](maxEntries int, hold time.Duration, prefix string) *tier[V] {
	t := &tier[V]{
		prefix:  prefix,
		c:       otter.Must(&otter.Options[uint64, tierEntry[V]]{MaximumSize: maxEntries}),
		seed:    maphash.MakeSeed(),
		blocked: make(map[string]map[string]time.Time),
		own:     make(map[string]map[string]time.Time),
		hold:    hold,
	}
	t.gens.init()
	return t
}

// tierKey returns the number key is held under, and false for a key that
// is not one of the engine's.
func (t *tier[V]) tierKey(key string) (uint64, bool) {
	if t.prefix == "" {
		return maphash.String(t.seed, key), true
	}
	rest, ok := strings.CutPrefix(key, t.prefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	return uint64(n), err == nil
}

// get returns the value of key if the tier may serve it now.
func (t *tier[V]) get(key string) (V, bool) {
	k, ok := t.tierKey(key)
	if !ok {
		var zero V
		return zero, false
	}
	return t.at(k, key)
}

// at returns the value held under k, for key (with int IDs, key is not
// needed and may be ""). It reads no clock: the bus's serving flag stands
// for the tier's validity, and the mono clock as of the last heartbeat for
// the entry's own expiry, which may therefore be overrun by up to a
// quarter of a lease.
func (t *tier[V]) at(k uint64, key string) (V, bool) {
	var zero V
	if !t.bus.serving.Load() {
		return zero, false
	}
	e, ok := t.c.GetIfPresent(k)
	if !ok || t.bus.coarse.Load() >= e.exp || (t.prefix == "" && e.key != key) {
		return zero, false
	}
	return e.v, true
}

// begin notes, before a read of key starts, what must not change until
// its value may fill the tier.
func (t *tier[V]) begin(key string) tierTicket {
	s, gen := t.gens.of(key)
	return tierTicket{s: s, gen: gen, epoch: t.epoch.Load(), early: !t.bus.filling(mono())}
}

// fill stores v for key until exp, unless anything about key or the tier
// changed since tk was noted.
func (t *tier[V]) fill(key string, v V, exp time.Time, tk tierTicket) {
	tk.s.mu.RLock()
	defer tk.s.mu.RUnlock()
	t.fillLocked(key, v, exp, tk)
}

// fillLocked is fill, with tk's stripe locked.
func (t *tier[V]) fillLocked(key string, v V, exp time.Time, tk tierTicket) {
	now := mono()
	k, ok := t.tierKey(key)
	if !ok || tk.early || tk.s.gen.Load() != tk.gen || t.epoch.Load() != tk.epoch || !t.bus.valid(now) || t.isBlocked(key) {
		return
	}
	t.c.Set(k, tierEntry[V]{key: key, v: v, exp: now + int64(time.Until(exp))})
}

// heard handles a bus message of kind about key from write: it drops the
// key (see invalidate), and, for the end of a write, counts this
// process's own write or invalidation as heard back and takes raw, the
// value the write left, if the message carries one.
//
// The bus delivers that message after every message published before it
// and before every one published after it, so raw is taken as a read of
// the key that began as the message arrived: under the same rules as any
// fill (see fill), with a ticket noted after the message's own
// invalidation; a write of the key that is still between its prepare and
// its done, in particular, keeps it out. Every member thus holds a written
// value without reading the shared cache for it. One more rule: none is
// taken while a write or invalidation of the key by this process is not
// yet heard back. Such a write did not wait for this process's own
// subscription, so it may have been acknowledged, its end applied to this
// tier (see endOwn), while messages published before it, and the older
// values they carry, are still on their way here.
func (t *tier[V]) heard(key string, kind byte, write string, raw []byte) {
	t.invalidate(key, kind, write)
	if kind == msgPrepare {
		return
	}
	if t.pendingOwn(key, write) || raw == nil || t.decode == nil {
		return
	}
	v, exp, ok := t.decode(key, raw)
	if !ok {
		return
	}
	t.fill(key, v, exp, t.begin(key))
}

// ownWrite applies this process's own message of kind about key from
// write to its tier, as the bus will deliver it to the others, and notes
// that the bus has yet to bring it back (see heard).
func (t *tier[V]) ownWrite(key string, kind byte, write string) {
	t.mu.Lock()
	mark(t.own, key, write, time.Now().Add(t.hold))
	t.mu.Unlock()
	t.invalidate(key, kind, write)
}

// forget drops the note of ownWrite for a write that never ran.
func (t *tier[V]) forget(key, write string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	unmark(t.own, key, write)
}

// mark notes write against key in m until until; unmark forgets it.
func mark(m map[string]map[string]time.Time, key, write string, until time.Time) {
	ws := m[key]
	if ws == nil {
		ws = make(map[string]time.Time, 1)
		m[key] = ws
	}
	ws[write] = until
}

func unmark(m map[string]map[string]time.Time, key, write string) {
	if ws := m[key]; ws != nil {
		delete(ws, write)
		if len(ws) == 0 {
			delete(m, key)
		}
	}
}

// pendingOwn counts write's message about key as heard back, and reports
// whether any of this process's own writes or invalidations of key is
// still not heard back, forgetting those whose hold ran out.
func (t *tier[V]) pendingOwn(key, write string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ws, ok := t.own[key]
	if !ok {
		return false
	}
	delete(ws, write)
	return pruned(t.own, key, ws)
}

// pruned forgets the writes in ws (m[key]) whose time has passed, and
// reports whether any is left.
func pruned(m map[string]map[string]time.Time, key string, ws map[string]time.Time) bool {
	now := time.Now()
	for w, until := range ws {
		if now.After(until) {
			delete(ws, w)
		}
	}
	if len(ws) == 0 {
		delete(m, key)
		return false
	}
	return true
}

// endOwn ends this process's own write of key in its tier, as the bus
// message of its end would (see invalidate), and, given raw, the entry the
// write left in the shared cache, fills the tier with it if nothing about
// key arrived since tk, noted before the cache step that left it. A value
// taken later could be older than a write that began and ended in
// between: the bus may deliver both of its messages before this process's
// writer gets here.
//
// If the write no longer blocks the key, the bus delivered the message of
// its end first, which did all this at the right moment (or the tier was
// emptied, or the write outlived its hold, as its marker did): nothing is
// left to do.
func (t *tier[V]) endOwn(key, write string, raw []byte, tk tierTicket) {
	var v V
	var exp time.Time
	ok := raw != nil && t.decode != nil
	if ok {
		v, exp, ok = t.decode(key, raw)
	}
	tk.s.mu.Lock()
	defer tk.s.mu.Unlock()
	t.mu.Lock()
	_, own := t.blocked[key][write]
	t.mu.Unlock()
	if !own {
		return
	}
	t.invalidateLocked(tk.s, key, msgDone, write)
	if ok {
		tk.gen++ // its own end, above
		t.fillLocked(key, v, exp, tk)
	}
}

// isBlocked reports whether a write of key is between its prepare and its
// done, forgetting the writes whose hold has run out.
func (t *tier[V]) isBlocked(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ws, ok := t.blocked[key]
	if !ok {
		return false
	}
	return pruned(t.blocked, key, ws)
}

// invalidate drops key, and after the prepare of write refuses to fill it
// until that write's done (or hold, if the done never comes).
func (t *tier[V]) invalidate(key string, kind byte, write string) {
	s, _ := t.gens.of(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	t.invalidateLocked(s, key, kind, write)
}

// invalidateLocked is invalidate, with key's stripe s locked.
func (t *tier[V]) invalidateLocked(s *stripe, key string, kind byte, write string) {
	s.gen.Add(1)
	if k, ok := t.tierKey(key); ok {
		t.c.Invalidate(k)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if kind == msgPrepare {
		mark(t.blocked, key, write, time.Now().Add(t.hold))
		return
	}
	unmark(t.blocked, key, write)
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

// localGet looks id up in the local tier. With integer IDs the ID is the
// tier's key, and the lookup builds nothing.
func (a *Aside[K, V]) localGet(id K) (V, bool) {
	if a.tier.prefix != "" {
		switch v := any(id).(type) {
		case int:
			return a.tier.at(uint64(v), "")
		case int64:
			return a.tier.at(uint64(v), "")
		}
	}
	return a.tier.get(a.key(id))
}
