package cacheaside

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Invalidations are never dropped on the floor. A write's delete that fails
// (the cache is down, hung, or its breaker is open) is queued and retried
// with backoff until it lands; until then this process does not read those
// keys from the cache, so it never serves the row its own write replaced.
// Another process may still serve it from the cache until the retry lands;
// an Outbox repository makes even a crash between the commit and the delete
// recoverable (see Outbox).
//
// The queue is bounded by maxPending keys; past that, new keys are dropped,
// counted (InvalidationsDropped) and logged as errors. The retries run on
// one goroutine, started when the first delete fails and ended when the
// queue is empty or the engine is closed.

// maxPending bounds the keys whose delete is waiting for a retry.
const maxPending = 100_000

// How the retries back off: from retryBackoffMin, doubling up to
// retryBackoffMax while nothing lands, with jitter. The maximum keeps the
// time from the cache's return to the last delete landing short: the
// breaker's cooldown, and a quarter of a second more.
const (
	retryBackoffMin = 25 * time.Millisecond
	retryBackoffMax = 250 * time.Millisecond
	retryBatch      = 512
)

// pending holds the deletes that failed.
type pending struct {
	n        atomic.Int64 // len(keys), read without the lock on every read
	mu       sync.Mutex   // protects keys, next and retrying
	keys     map[string]pendingKey
	next     uint64 // numbers the times a key was queued
	retrying bool
}

// pendingKey is one key waiting for its delete: the outbox records that
// wait for it, when it was last queued, and what is to be done. A retry
// that was sent before the key was queued again does not count for the
// later write.
//
// A write that failed to end takes its own marker out of the key, as its
// end would have (see clearWrite), rather than delete it: the key may hold
// other writes' tokens too. Any other delete leaves other writes' markers
// in place (see markerKeeper).
type pendingKey struct {
	seqs    []int64
	n       uint64
	markers [][]byte // writes whose end failed: their markers
	plain   bool     // a delete besides (an invalidation, a related key)
}

// isPending reports whether key's delete is waiting for a retry.
func (a *Aside[K, V]) isPending(key string) bool {
	if a.inv.n.Load() == 0 {
		return false
	}
	a.inv.mu.Lock()
	defer a.inv.mu.Unlock()
	_, ok := a.inv.keys[key]
	return ok
}

// queue adds keys whose delete failed, with the outbox records that wait
// for the first of them, and starts the retries if they are not running.
// A non-nil marker is that of a write whose end failed: the first key is
// its key, and its retry ends the write rather than delete the key.
func (a *Aside[K, V]) queue(keys []string, seqs []int64, marker []byte) {
	p := &a.inv
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys == nil {
		p.keys = make(map[string]pendingKey)
	}
	dropped := 0
	for i, k := range keys {
		pk, ok := p.keys[k]
		if !ok && len(p.keys) >= maxPending {
			dropped++
			continue
		}
		if i == 0 {
			pk.seqs = append(pk.seqs, seqs...)
		}
		if i == 0 && marker != nil {
			pk.markers = append(pk.markers, marker)
		} else {
			pk.plain = true
		}
		p.next++
		pk.n = p.next
		p.keys[k] = pk
	}
	p.n.Store(int64(len(p.keys)))
	if dropped > 0 {
		a.m.invalDropped.Add(int64(dropped))
		a.log.Error("cacheaside: too many invalidations waiting for the cache; these keys may be served stale until they expire", "dropped", dropped)
	}
	if !p.retrying && len(p.keys) > 0 {
		p.retrying = a.bg.Go(a.retry)
	}
}

// retry deletes the pending keys until none is left or the engine closes.
func (a *Aside[K, V]) retry(done <-chan struct{}) {
	p := &a.inv
	backoff := retryBackoffMin
	for {
		t := time.NewTimer(backoff/2 + rand.N(backoff))
		closing := false
		select {
		case <-done:
			closing = true // one last try, then give up
		case <-t.C:
		}
		t.Stop()
		p.mu.Lock()
		batch := make([]string, 0, min(len(p.keys), retryBatch))
		queued := make(map[string]uint64, cap(batch))
		ends := make(map[string][][]byte)
		var dels []string
		for k, pk := range p.keys {
			if len(batch) == retryBatch {
				break
			}
			batch = append(batch, k)
			queued[k] = pk.n
			if len(pk.markers) > 0 {
				ends[k] = slices.Clone(pk.markers)
			}
			if pk.plain {
				dels = append(dels, k)
			}
		}
		p.mu.Unlock()

		a.m.invalRetries.Add(1)
		// The deletes go in one call per shard, first, on a time box of
		// their own; the ends of writes, one call each, after them.
		ctx, cancel := context.WithTimeout(context.Background(), a.o.cacheTimeout)
		failed, _ := a.g.del(ctx, dels)
		cancel()
		down := false // after one end fails, the others wait for the next round
		for k, ms := range ends {
			for _, m := range ms {
				if down {
					break
				}
				ctx, cancel := context.WithTimeout(context.Background(), a.o.cacheTimeout)
				f, _ := a.g.clearWrite(ctx, k, m, nil)
				cancel()
				down = len(f) > 0
			}
			if down {
				failed = append(failed, k)
			}
		}

		p.mu.Lock()
		var seqs []int64
		still := make(map[string]bool, len(failed))
		for _, k := range failed {
			still[k] = true
		}
		for _, k := range batch {
			if pk := p.keys[k]; !still[k] && pk.n == queued[k] {
				seqs = append(seqs, pk.seqs...)
				delete(p.keys, k)
			}
		}
		p.n.Store(int64(len(p.keys)))
		left := len(p.keys)
		if left == 0 || closing {
			p.retrying = false
		}
		p.mu.Unlock()
		if len(seqs) > 0 && a.landed != nil {
			a.landed(seqs)
		}
		switch {
		case left == 0:
			return
		case closing:
			a.log.Error("cacheaside: closed with invalidations still waiting for the cache", "keys", left)
			return
		case len(failed) < len(batch):
			backoff = retryBackoffMin
		default:
			backoff = min(2*backoff, retryBackoffMax)
		}
	}
}

// background runs an engine's own goroutines: each gets a channel that is
// closed when the engine closes, and Close waits for all of them.
type background struct {
	mu     sync.Mutex // protects closed and done
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup
}

// Go runs f on a goroutine of its own and reports whether it did: after
// close, it does not.
func (b *background) Go(f func(done <-chan struct{})) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	if b.done == nil {
		b.done = make(chan struct{})
	}
	done := b.done
	b.wg.Go(func() { f(done) })
	return true
}

// close tells every goroutine to stop and waits until they have.
func (b *background) close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		if b.done != nil {
			close(b.done)
		}
	}
	b.mu.Unlock()
	b.wg.Wait()
}
