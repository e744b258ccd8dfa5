package cacheaside

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A write to the source of truth goes through three steps around the
// cache, so that once it is acknowledged no reader anywhere returns the
// value it replaced, even if the cache fails on the way:
//
//  1. Intent: the key's entry is replaced by a write-intent marker (a JSON
//     string, like a lease, that no value encodes to). No lease can be
//     placed over it and no fill can replace it; readers that find it read
//     the source without filling and without waiting (the source holds the
//     old value or the new one, both right for a read that overlaps the
//     write). The old value is gone from the cache before the source
//     changes, and a member of the bus that joins mid-write finds the
//     marker, not the old value, so it has nothing old to fill its tier
//     with (see doc.go).
//  2. The write itself.
//  3. The write's token is taken out of the marker, and the key is
//     deleted, with the related keys, once no other write's token is left
//     in it (markers stack; see stackMarker), or, for an update whose
//     marker nobody shared, set to the row the source stored (see
//     leaveValue). If the clear fails, it is retried until it lands, and
//     the marker expires by itself after the load timeout anyway: an empty
//     key, never the old value.
//
// Every write places the marker, with or without local tiers: a write that
// only deleted the old value after the source changed would leave it
// readable by every other process whenever that delete failed.
//
// If the intent cannot be placed (the cache stayed down for the cache
// timeout), the write goes on: the cache then holds the old value until
// step 3's delete lands, and until then this process reads the key from
// the source (see invalidation.go). With strict local tiers the write
// fails instead (see beginWrite).

// writingPrefix starts every write-intent marker; a random token follows.
const writingPrefix = markerPrefix + `writing:`

func isWriting(b []byte) bool { return bytes.HasPrefix(b, []byte(writingPrefix)) }

// isHeld reports whether b is a lease or a write intent: a key that some
// caller is working on, which holds no value to read.
func isHeld(b []byte) bool { return isLease(b) || isWriting(b) }

// Markers stack (see internal/rediscache's beginWrite and clearWrite, which
// the memory cache mirrors): a marker holds the token of every write in
// progress, and a "!" once more than one write shared it, so the key holds
// a marker for as long as any write that placed one runs, and a write may
// leave its own value in place of its marker only if nobody shared it.

// markerToken returns the token of a write's own marker.
func markerToken(marker []byte) string {
	return string(bytes.TrimSuffix(bytes.TrimPrefix(marker, []byte(writingPrefix)), []byte(`"`)))
}

// markerTokens returns the tokens a marker holds and whether it was shared.
func markerTokens(m []byte) (toks []string, shared bool) {
	body := markerToken(m)
	body, shared = strings.CutSuffix(body, "!")
	return strings.Split(body, ","), shared
}

// markerOf builds a marker of toks.
func markerOf(toks []string, shared bool) []byte {
	b := append([]byte(writingPrefix), strings.Join(toks, ",")...)
	if shared {
		b = append(b, '!')
	}
	return append(b, '"')
}

// stackMarker returns what a key that holds held becomes when the write
// whose own marker is marker begins: marker, or held with its token added.
func stackMarker(held, marker []byte) []byte {
	if !isWriting(held) {
		return marker
	}
	toks, _ := markerTokens(held)
	if slices.Contains(toks, markerToken(marker)) {
		return held // a retry
	}
	return markerOf(append(toks, markerToken(marker)), true)
}

// markerKeeper is what the adapters of this package offer to delete keys
// without wiping the markers of writes in progress: a key that holds one
// keeps it, marked as shared, with its expiry. Its writes still end it,
// and none of them leaves its own value in its place: the delete comes
// from a write they know nothing of (an Invalidate after a write of your
// own, a retried delete), which may have changed the source after them.
// A plain delete would end their protection early: a reader could load
// the row one of them is about to replace and fill it.
type markerKeeper interface {
	invalidate(ctx context.Context, keys []string) error
}

// writePlacer is what the adapters of this package offer to place a
// write's marker stacked on any marker already there; it reports whether
// key held no other write's marker.
type writePlacer interface {
	placeWriteMarker(ctx context.Context, key string, marker []byte, ttl time.Duration) (alone bool, err error)
}

// newWriteMarker returns a write's own marker: a random token, which ends
// with "+" for a write that means to leave its value in place of the
// marker (see willFill).
func newWriteMarker(fills bool) []byte {
	b := make([]byte, 0, len(writingPrefix)+34)
	b = append(b, writingPrefix...)
	b = strconv.AppendUint(b, rand.Uint64()|1<<63, 16)
	b = strconv.AppendUint(b, rand.Uint64()|1<<63, 16)
	if fills {
		b = append(b, '+')
	}
	return append(b, '"')
}

// willFill reports whether held is the marker of one write, never shared,
// that means to leave its value in place of the marker when it ends: a
// reader may then wait for that value rather than read the source (see
// leaseLoad).
func willFill(held []byte) bool {
	if !isWriting(held) {
		return false
	}
	toks, shared := markerTokens(held)
	return !shared && len(toks) == 1 && strings.HasSuffix(toks[0], "+")
}

// writeOp is one write in progress: its ID on the bus, and the intent it
// placed in the cache, if any.
type writeOp struct {
	id     string
	marker []byte
	// down: without a tier, the cache answered neither the write's first
	// step nor its retry (time-outs, or an open breaker); its delete goes
	// straight to the retry queue rather than making the write wait on the
	// silent cache again.
	down bool
	// prepared: a strict bus, the marker placed, and every member counted
	// by the prepare acknowledged it or lost its lease. The write's end is
	// then announced without waiting for anyone (msgCleared).
	prepared bool
	// alone: the marker was placed at the first attempt, over no other
	// write's marker, so no write of the key that began before this one
	// can still be running. Only such a write may leave its own value in
	// the cache (fill).
	alone bool
	// fill, when set, is the entry the write leaves in place of its
	// marker, for fillTTL: the value as the source stored it (see
	// writeThrough).
	fill    []byte
	fillTTL time.Duration
}

// writeAnnouncer is what the adapters of this package offer to begin and
// end a write in one round trip each: the write intent (or its clearing)
// and the bus announcement together. Each half reports its own error.
type writeAnnouncer interface {
	// beginWriteAnnounced also reports whether key held no other write's
	// marker before (false when it cannot tell).
	beginWriteAnnounced(ctx context.Context, key string, marker []byte, ttl time.Duration, msg []byte) (markErr error, alone bool, members []busMember, annErr error)
	// endWriteAnnounced, given fill, sets a key that still holds exactly
	// marker to fill for fillTTL instead of deleting it.
	// The announcement is then rowMsg followed by fill where the cache can
	// publish it in the same step as it sets the key, msg otherwise.
	endWriteAnnounced(ctx context.Context, key string, marker []byte, prefix string, related []string, fill []byte, fillTTL time.Duration, msg, rowMsg []byte) (clearErr error, filled bool, members []busMember, annErr error)
}

// beginWrite starts a write to key: this process's local tier drops the
// key, a write-intent marker replaces its entry, and, with a strict bus,
// every member is told and has dropped the key (or lost its lease) before
// it returns. The write may then change the source, unless beginWrite
// returned an error: in a fleet with strict members, a write that could
// not tell them (the cache failed) must not change the source, or a member
// would go on serving the value it replaced.
func (a *Aside[K, V]) beginWrite(ctx context.Context, key string) (writeOp, error) {
	return a.beginWriteAs(ctx, key, false)
}

// beginWriteAs is beginWrite for a write that means to leave its value in
// place of its marker if it can (see leaveValue), when fills is set: its
// marker says so, and readers that find it wait for the value (willFill).
func (a *Aside[K, V]) beginWriteAs(ctx context.Context, key string, fills bool) (writeOp, error) {
	w := writeOp{id: randomID()}
	wa, ok := a.g.c.(writeAnnouncer)
	if !ok || a.bus == nil {
		fills = false // its end could not leave the value (see endWrite)
	}
	if a.tier != nil {
		a.tier.ownWrite(key, msgPrepare, w.id)
	}
	if !ok || a.g.leaser == nil || a.bus == nil || !a.bus.strict {
		w.marker, w.alone, _ = a.placeIntent(ctx, key, fills)
		if a.bus != nil && a.bus.strict {
			w.prepared = a.bus.announce(ctx, msgPrepare, w.id, key) && w.marker != nil
		}
		return w, nil
	}
	marker := newWriteMarker(fills)
	msg := busMsg{kind: msgPrepare, id: w.id, key: key}.encode()
	// A write that cannot announce itself may fail (below), so it is given
	// up to a lease, not a read's time box, per attempt, and attempts go
	// on for two boxes (a cold connection, a reset): both halves may be
	// sent twice, which members and the marker take in their stride.
	mustTell := a.tier != nil || a.bus.members.Load()
	box := a.o.cacheTimeout
	if mustTell {
		box = max(box, a.bus.lease)
	}
	var (
		markErr        error
		members        []busMember
		annErr         error
		deadline       = time.Now().Add(2 * box)
		shard          = a.g.shard(key)
		uncancelledCtx = context.WithoutCancel(ctx)
	)
	for attempt := 0; ; attempt++ {
		var res announced
		var alone atomic.Bool
		markErr = a.g.doPast(uncancelledCtx, shard, box, func(ctx context.Context) error {
			markErr, al, members, annErr := wa.beginWriteAnnounced(ctx, key, marker, a.o.loadTimeout, msg)
			alone.Store(al)
			res.set(members, annErr)
			return markErr
		})
		members, annErr = res.get(markErr)
		// A second attempt may find the first one's marker, which may
		// have replaced another write's.
		w.alone = attempt == 0 && markErr == nil && alone.Load()
		if (markErr == nil && annErr == nil) || !mustTell || !time.Now().Before(deadline) {
			break
		}
	}
	if markErr == nil {
		w.marker = marker
	} else {
		var err error
		w.marker, _, err = a.placeIntent(ctx, key, false) // one more try: a reset is not an outage
		w.down = w.marker == nil && !mustTell && errors.Is(err, ErrCacheUnavailable)
	}
	// A writer with a tier of its own is in a fleet of members, whether or
	// not its last announcement counted any (none yet, at its first
	// write); one without refuses when it counted members.
	if err := cmp.Or(annErr, markErr); (annErr != nil || w.marker == nil) && mustTell {
		a.refuseWrite(ctx, key, w)
		return w, fmt.Errorf("%w: a write must reach the local tiers' bus before it changes the source: %w", ErrCacheUnavailable, err)
	}
	w.prepared = a.bus.settle(ctx, ackID(w.id, msgPrepare), members, annErr) && w.marker != nil
	return w, nil
}

// refuseWrite undoes what beginWrite did for a write that will not run:
// this process's tier may fill key again, and the marker, if placed, goes
// (it would expire anyway).
func (a *Aside[K, V]) refuseWrite(ctx context.Context, key string, w writeOp) {
	a.m.writesRefused.Add(1)
	a.log.ErrorContext(ctx, "cacheaside: write refused: the local tiers could not be told", "key", key)
	if a.tier != nil {
		a.tier.invalidate(key, msgDone, w.id)
		a.tier.forget(key, w.id)
	}
	if w.marker != nil && a.g.clearer != nil {
		_, _ = a.g.clearWrite(context.WithoutCancel(ctx), key, w.marker, nil)
	}
}

// announced is what an announcement made inside a guarded call returned;
// the call may outlive its time box, hence the lock.
type announced struct {
	mu      sync.Mutex // protects the rest
	done    bool
	members []busMember
	err     error
}

func (r *announced) set(members []busMember, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done, r.members, r.err = true, members, err
}

// get returns what the announcement returned, or, if it never returned,
// callErr (or a time-out).
func (r *announced) get(callErr error) ([]busMember, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.done:
		return r.members, r.err
	case callErr != nil:
		return nil, callErr
	}
	return nil, ErrCacheUnavailable
}

// placeIntent places a write-intent marker on key and returns it, or nil
// and why if it could not (the cache has no compare-and-swap, or failed).
// alone is true if the marker went on at the first attempt over no other
// write's marker (see writeOp.alone); fills is newWriteMarker's.
func (a *Aside[K, V]) placeIntent(ctx context.Context, key string, fills bool) (marker []byte, alone bool, err error) {
	if a.g.leaser == nil {
		return nil, false, nil
	}
	mine := newWriteMarker(fills) // the calls, which may outlive this one, read it; never the result
	ctx = context.WithoutCancel(ctx)
	// A connection reset costs one attempt, not the intent: attempts go on
	// for the cache timeout, and one that times out uses it up, so a dead
	// cache costs the write one time box here.
	deadline := time.Now().Add(a.o.cacheTimeout)
	for attempt := 0; attempt == 0 || time.Now().Before(deadline); attempt++ {
		var first atomic.Bool
		firstTry := attempt == 0
		err = a.g.doPast(ctx, a.g.shard(key), a.o.cacheTimeout, func(ctx context.Context) error {
			if wp, ok := a.g.c.(writePlacer); ok {
				al, err := wp.placeWriteMarker(ctx, key, mine, a.o.loadTimeout)
				first.Store(al && firstTry)
				return err
			}
			return a.g.c.SetJSON(ctx, key, mine, a.o.loadTimeout)
		})
		if err == nil {
			return mine, first.Load(), nil
		}
		if !time.Now().Before(deadline) {
			break
		}
		time.Sleep(min(time.Duration(attempt+1)*5*time.Millisecond, time.Until(deadline)))
	}
	a.log.WarnContext(ctx, "cacheaside: write intent not placed; the write goes on, and its delete is retried until it lands", "key", key, "err", err)
	return nil, false, err
}

// endWrite ends a write to key: it deletes key (unless another writer's
// marker holds it) and the related keys, tells a.landed about seqs once
// key's delete has landed, and tells the members, waiting for them with a
// strict bus. w is what beginWrite returned.
func (a *Aside[K, V]) endWrite(ctx context.Context, key string, w writeOp, related []string, seqs []int64) error {
	if w.marker == nil || a.g.clearer == nil {
		return a.invalidateAs(ctx, w, key, related, seqs)
	}
	a.gens.bump(key)
	if a.adapt != nil {
		a.adapt.writes.add(key)
	}
	keys := a.deletable(ctx, related)
	wa, ok := a.g.c.(writeAnnouncer)
	if !ok || a.bus == nil {
		failed, err := a.g.clearWrite(context.WithoutCancel(ctx), key, w.marker, keys)
		err = a.afterDelete(ctx, key, w.marker, seqs, failed, err)
		a.tellDone(ctx, w, key)
		return err
	}
	inline := keys
	if a.g.sharder != nil { // the related keys may live on other shards
		inline = nil
	}
	bm := busMsg{kind: w.doneKind(), id: w.id, key: key}
	msg, rowMsg := bm.encode(), bm.rowHeader()
	fill := w.fill // set by leaveValue only for a write that may leave it
	var res announced
	var filled atomic.Bool
	cctx := context.WithoutCancel(ctx)
	var tk tierTicket
	if a.tier != nil {
		tk = a.tier.begin(key) // for the value the write may leave (see tier.endOwn)
	}
	clearErr := a.g.do(cctx, a.g.shard(key), func(ctx context.Context) error {
		clearErr, f, members, annErr := wa.endWriteAnnounced(ctx, key, w.marker, writingPrefix, inline, fill, w.fillTTL, msg, rowMsg)
		filled.Store(f)
		res.set(members, annErr)
		return clearErr
	})
	if clearErr == nil && filled.Load() {
		a.m.writeFills.Add(1)
	}
	var failed []string
	if clearErr != nil {
		failed = append([]string{key}, inline...)
	}
	if len(inline) < len(keys) {
		f, derr := a.g.del(cctx, keys)
		failed = append(failed, f...)
		if clearErr == nil {
			clearErr = derr
		}
	}
	var mine []byte
	if clearErr != nil {
		mine = w.marker // the key's own clear failed, not just a related key's
	}
	err := a.afterDelete(ctx, key, mine, seqs, failed, clearErr)
	if a.tier != nil {
		var left []byte
		if clearErr == nil && filled.Load() {
			left = fill
		}
		a.tier.endOwn(key, w.id, left, tk)
	}
	members, annErr := res.get(clearErr)
	if w.prepared {
		a.bus.note(members, annErr)
	} else {
		a.bus.settle(ctx, ackID(w.id, msgDone), members, annErr)
	}
	return err
}

// doneKind is the kind of the message that ends w: msgCleared, which
// nobody acknowledges, after a prepare every member acknowledged (between
// the two a member holds nothing for the key and fills nothing, so it has
// nothing to drop that a reader could see; see doc.go), msgDone otherwise.
func (w writeOp) doneKind() byte {
	if w.prepared {
		return msgCleared
	}
	return msgDone
}

// leaveValue makes the write w leave v, as the source stored it under key,
// in the cache at its end, in place of its marker (write-through). It is
// only done where it is safe: the write placed its marker over no other
// write's, at its first attempt (w.alone), and the key still holds that
// marker when the write ends (the compare is in the same step as the
// fill). Then no write that began before this one can still change the
// source, and any that began after it replaced the marker, so v is the
// source's value until the next write's marker. v must carry key's ID; an
// entry larger than WithMaxValueSize is not left.
func (a *Aside[K, V]) leaveValue(w *writeOp, key string, v *V) {
	if !w.alone || w.marker == nil || (a.idOf != nil && a.key(a.idOf(v)) != key) {
		return
	}
	ttl := a.jitter(a.ttlFor(key))
	raw, err := a.encode(key, v, ttl, 0)
	if err != nil || len(raw) > a.o.maxValueSize {
		return
	}
	w.fill, w.fillTTL = raw, ttl+a.o.failSafe
}

// tellDone drops key from this process's local tier and tells the members
// that the write w changed it.
func (a *Aside[K, V]) tellDone(ctx context.Context, w writeOp, key string) {
	if a.tier != nil {
		a.tier.ownWrite(key, msgDone, w.id)
	}
	if a.bus != nil {
		a.bus.announce(ctx, w.doneKind(), w.id, key)
	}
}

// Write runs write, which changes the value of id in the source of truth,
// and keeps the cache right around it: the key's entry is replaced by a
// write-intent marker before write runs, so that no reader can load the
// old value back meanwhile, and deleted with the related keys after it,
// whether write failed or not (a write that failed may still have been
// applied). The error is write's. Prefer it to calling Invalidate after your
// own write: with Invalidate alone, a delete that fails leaves the old
// value readable by other processes until its retry lands.
func (a *Aside[K, V]) Write(ctx context.Context, id K, write func(ctx context.Context) error, related ...string) error {
	start := time.Now()
	key := a.key(id)
	w, err := a.beginWrite(ctx, key)
	if err == nil {
		err = write(ctx)
		_ = a.endWrite(ctx, key, w, related, nil) // counted, logged and retried
	}
	if a.recording {
		res := ResultOK
		if err != nil {
			res = ResultError
		}
		a.o.recorder.RecordWrite(ctx, "write", res, time.Since(start))
	}
	return err
}
