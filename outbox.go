package cacheaside

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// An Outbox is an optional interface of a UserRepository that records, in
// the same transaction as each write, which user the write changed: the
// transactional outbox pattern. It makes a write's invalidation survive a
// crash between the commit and the delete, which no retry in the crashed
// process can. NewSQLRepository implements it; NewUserService checks for it
// once.
//
// Each write records one Invalidation and reports its sequence number with
// RecordInvalidation, on the context the write was called with, once the
// transaction has committed. The service clears the record as soon as the
// write's own delete has landed. Records that nobody clears, because their
// writer crashed, are drained: every WithOutboxDrain interval one instance
// of the fleet (under a DistributedLock when the cache offers one, see
// Locker) deletes the keys of the records older than that interval and then
// clears them.
type Outbox interface {
	// PendingInvalidations returns up to limit records, oldest first, that
	// were recorded at least olderThan ago by the repository's own clock.
	PendingInvalidations(ctx context.Context, olderThan time.Duration, limit int) ([]Invalidation, error)
	// ClearInvalidations removes the records with the given sequence
	// numbers; numbers with no record are ignored.
	ClearInvalidations(ctx context.Context, seqs []int64) error
}

// An Invalidation is one record of an Outbox: its sequence number and the
// user whose write it records.
type Invalidation struct {
	Seq    int64
	UserID int
}

// A Locker is an optional interface of a CacheClient that hands out
// distributed locks, so that one instance of a fleet at a time does work
// such as draining an Outbox. RedisCache implements it.
type Locker interface {
	AcquireLock(ctx context.Context, name string, ttl time.Duration) (*DistributedLock, error)
}

// RecordInvalidation tells the UserService whose write runs under ctx that
// the write recorded its Invalidation under seq. An Outbox calls it after
// the write's transaction commits; under any other context it does nothing.
func RecordInvalidation(ctx context.Context, seq int64) {
	if r, ok := ctx.Value(seqRecorderKey{}).(*seqRecorder); ok {
		r.mu.Lock()
		r.seqs = append(r.seqs, seq)
		r.mu.Unlock()
	}
}

type seqRecorderKey struct{}

// seqRecorder collects the sequence numbers one write recorded.
type seqRecorder struct {
	mu   sync.Mutex // protects seqs
	seqs []int64
}

func (r *seqRecorder) take() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seqs
}

// DefaultOutboxDrain is how often an Outbox is drained, and how old a
// record must be to be drained.
const DefaultOutboxDrain = 10 * time.Second

// outboxBatch bounds the records one drain or one clear handles.
const outboxBatch = 500

// outboxDrainer clears and drains a UserService's Outbox.
type outboxDrainer struct {
	box   Outbox
	lock  Locker // nil: drain without a lock
	every time.Duration
	next  atomic.Int64 // when the next drain is due, Unix nanoseconds

	mu       sync.Mutex // protects toClear and clearing
	toClear  []int64
	clearing bool
}

// cleared queues records whose keys have been deleted, to be cleared in
// the background.
func (s *UserService) cleared(seqs []int64) {
	d := s.outbox
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.toClear) < 16*outboxBatch { // past that, the drain clears them
		d.toClear = append(d.toClear, seqs...)
	}
	if !d.clearing {
		d.clearing = s.users.bg.Go(s.clearOutbox)
	}
}

// clearOutbox clears the queued records until none is left.
func (s *UserService) clearOutbox(<-chan struct{}) {
	d := s.outbox
	for {
		d.mu.Lock()
		n := min(len(d.toClear), outboxBatch)
		batch := d.toClear[:n:n]
		d.toClear = d.toClear[n:]
		if n == 0 {
			d.clearing = false
		}
		d.mu.Unlock()
		if n == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.users.o.loadTimeout)
		if err := d.box.ClearInvalidations(ctx, batch); err != nil {
			s.users.log.Warn("cacheaside: clearing outbox records failed; the drain will clear them", "records", len(batch), "err", err)
		}
		cancel()
	}
}

// maybeDrain starts a drain of the outbox if one is due. It costs a read
// one atomic load when none is.
func (s *UserService) maybeDrain() {
	d := s.outbox
	if d == nil {
		return
	}
	now := time.Now().UnixNano()
	next := d.next.Load()
	if now < next || !d.next.CompareAndSwap(next, now+int64(d.every)) {
		return
	}
	s.users.bg.Go(s.drainOutbox)
}

// drainOutbox deletes the keys of the records older than the drain
// interval and clears the records whose user's key is gone, under the
// outbox lock when the cache has one.
func (s *UserService) drainOutbox(done <-chan struct{}) {
	d := s.outbox
	ctx, cancel := context.WithTimeout(context.Background(), s.users.o.loadTimeout)
	defer cancel()
	go func() { // Close ends the drain
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	if d.lock != nil {
		lctx, lcancel := context.WithTimeout(ctx, s.users.o.cacheTimeout)
		lock, err := d.lock.AcquireLock(lctx, "outbox", d.every)
		lcancel()
		if err != nil {
			return // another instance is draining, or the cache is down
		}
		defer func() {
			rctx, rcancel := context.WithTimeout(context.Background(), s.users.o.cacheTimeout)
			defer rcancel()
			_ = lock.Release(rctx)
		}()
	}
	recs, err := d.box.PendingInvalidations(ctx, d.every, outboxBatch)
	if err != nil || len(recs) == 0 {
		if err != nil {
			s.users.log.Warn("cacheaside: reading the outbox failed", "err", err)
		}
		return
	}
	var keys []string
	for _, r := range recs {
		keys = append(keys, userCacheKey(r.UserID))
		keys = append(keys, s.related(r.UserID)...)
	}
	failed, _ := s.users.g.del(ctx, keys)
	kept := make(map[string]bool, len(failed))
	for _, k := range failed {
		kept[k] = true
	}
	var seqs []int64
	for _, r := range recs {
		if !kept[userCacheKey(r.UserID)] {
			seqs = append(seqs, r.Seq)
		}
	}
	s.users.m.outboxDrained.Add(int64(len(seqs)))
	s.users.log.Info("cacheaside: drained invalidations left in the outbox", "records", len(recs), "deleted", len(seqs))
	if len(seqs) > 0 {
		if err := d.box.ClearInvalidations(ctx, seqs); err != nil {
			s.users.log.Warn("cacheaside: clearing drained outbox records failed", "err", err)
		}
	}
}
