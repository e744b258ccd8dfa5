package cacheaside

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// Adaptive TTL ([WithAdaptiveTTL]) gives each entry a TTL between min and
// max by how its key has been used in this process lately:
//
//	ttl = min + (max - min) * reads / (reads + adaptiveWeight*writes)
//
// so a key read often and written rarely lives up to max (fewer expiries
// of hot rows, fewer loads), and a key written about as often as it is read
// lives close to min (its entry would be deleted by the next write anyway,
// so a long TTL only holds memory). A key never seen before gets max. Reads
// and writes are counted in two count-min sketches (four rows of 4,096
// counters each, 32 KiB each), which are halved every ten times their
// width of events, so the counts follow the workload. Writes never wait
// for a TTL: they delete the entry, whatever its TTL. The TTL is still
// jittered (WithJitter).

// ttlFor returns the TTL (before jitter) of key's next entry.
func (a *Aside[K, V]) ttlFor(key string) time.Duration {
	if a.adapt != nil {
		return a.adapt.ttl(key)
	}
	return a.o.ttl
}

// adaptiveWeight is how many reads a write weighs: a key read ten times
// per write gets the middle of the range.
const adaptiveWeight = 10

// adaptive is the state of adaptive TTLs.
type adaptive struct {
	min, max      time.Duration
	reads, writes sketch
}

func newAdaptive(min, max time.Duration) *adaptive {
	a := &adaptive{min: min, max: max}
	a.reads.init()
	a.writes.init()
	return a
}

// ttl returns the TTL for key's next entry.
func (ad *adaptive) ttl(key string) time.Duration {
	r, w := ad.reads.estimate(key), ad.writes.estimate(key)
	if r+w == 0 {
		return ad.max
	}
	share := float64(r) / (float64(r) + adaptiveWeight*float64(w))
	return ad.min + time.Duration(share*float64(ad.max-ad.min))
}

const (
	sketchRows  = 4
	sketchWidth = 4096 // a power of two
)

// sketch is a count-min sketch with periodic halving (as TinyLFU's).
type sketch struct {
	seed  maphash.Seed
	cells [sketchRows][sketchWidth]atomic.Uint32
	added atomic.Int64
	mu    sync.Mutex // serializes halvings
}

func (s *sketch) init() { s.seed = maphash.MakeSeed() }

// index returns key's cell in each row.
func (s *sketch) index(key string) [sketchRows]uint32 {
	h := maphash.String(s.seed, key)
	var idx [sketchRows]uint32
	for r := range idx {
		idx[r] = uint32(h>>(16*r)) & (sketchWidth - 1)
		h = h*0x9E3779B97F4A7C15 + uint64(r) // spread the rows apart
	}
	return idx
}

// add counts one event of key.
func (s *sketch) add(key string) {
	for r, i := range s.index(key) {
		s.cells[r][i].Add(1)
	}
	if s.added.Add(1)%(10*sketchWidth) == 0 {
		s.halve()
	}
}

// estimate returns about how many events of key were counted lately.
func (s *sketch) estimate(key string) uint32 {
	est := ^uint32(0)
	for r, i := range s.index(key) {
		est = min(est, s.cells[r][i].Load())
	}
	return est
}

// halve divides every counter by two. An event counted meanwhile may be
// lost: the counts are estimates.
func (s *sketch) halve() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for r := range s.cells {
		for i := range s.cells[r] {
			c := &s.cells[r][i]
			c.Store(c.Load() / 2)
		}
	}
}
