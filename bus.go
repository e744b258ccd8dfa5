package cacheaside

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The invalidation bus carries, from writers to every process with a
// local tier, the news that a key is about to change and that it has
// changed, and it tells each such process whether it may still trust what
// it holds. It runs over the shared cache (Redis pub/sub and a sorted set
// of members; see internal/rediscache/bus.go), and the argument for why
// it keeps reads linearizable is in the package documentation.
//
// A member is a process whose local tier holds values. It subscribes to
// the bus, and every lease/4 it publishes a heartbeat. When its own
// heartbeat comes back through its subscription, which proves that the
// subscription delivers (and delivered everything published before it), a
// strict member renews its membership lease in the cache, on the cache's
// clock, and may then serve from memory until lease-margin after it sent
// the renewal, by its own clock. A member whose subscription breaks, or
// whose renewals stop landing, lets its validity run out, and then empties
// its tier before it serves from memory again.
//
// A writer announces "prepare" before it writes the source and "done"
// after it cleared the cache; each announcement publishes the message and
// reads the members whose lease is live, atomically. Every member drops
// the key on each message, refuses to fill it between the two, and
// acknowledges; a strict writer waits for every member it counted to
// acknowledge, or for that member's lease to run out on the cache's clock,
// before it goes on. A relaxed writer waits for nobody and relaxed members
// hold no lease: their staleness is bounded by the bus's delivery.

// busTransport is what a shared cache offers the bus. RedisCache and
// MemoryCache implement it.
type busTransport interface {
	busSubscribe(ctx context.Context) (busSub, error)
	busPublish(ctx context.Context, msg []byte) error
	// busAnnounce publishes msg and returns the cache's time and the live
	// members, in one step.
	busAnnounce(ctx context.Context, msg []byte) (time.Time, []busMember, error)
	busRenew(ctx context.Context, member string, lease time.Duration) error
	busLeave(ctx context.Context, member string) error
	// busExpiries returns the cache's time and when each member's lease
	// runs out (the zero time for none).
	busExpiries(ctx context.Context, members []string) (time.Time, []time.Time, error)
	// busAck records member's acknowledgement of each of writes, in one
	// round trip.
	busAck(ctx context.Context, writes []string, member string) error
	// busAwaitAcks returns the next members to acknowledge write, none if
	// none did within wait.
	busAwaitAcks(ctx context.Context, write string, wait time.Duration) ([]string, error)
	busDropAcks(ctx context.Context, write string) error
}

// busMember is a member and when its lease runs out, on the cache's clock.
type busMember struct {
	id      string
	expires time.Time
}

// busSub is a subscription to the bus.
type busSub interface {
	// next returns the next message; nil when wait passed without one; or
	// errBusGap when messages may have been lost, after which the
	// subscription is done.
	next(ctx context.Context, wait time.Duration) ([]byte, error)
	close()
}

var errBusGap = errors.New("cacheaside: bus messages may have been lost")

// Kinds of bus message.
const (
	msgPrepare = 'p' // a write to key is about to change the source
	msgDone    = 'd' // key changed (a write or an invalidation without a prepare): drop it, and acknowledge
	// msgCleared ends a write whose prepare every member acknowledged:
	// members drop key and may fill it again, and send no acknowledgement,
	// since nobody waits for one (see doc.go).
	msgCleared   = 'c'
	msgHeartbeat = 'h' // a member's heartbeat
)

// busMsg is one bus message: kind, an ID (the write's or the member's) and
// a key (for a heartbeat, its number), each after a newline: "k\nid\nkey".
// A key may itself hold newlines (string IDs are not escaped for them), so
// it runs to the end of the message.
//
// The end of a write that left its value in the cache may carry that
// value (see tier.heard): the cache publishes it in the same step as it
// sets the key, so it is what a read of the key would have returned when
// the message was published. Such a message has its kind in upper case and
// the key's length before the key, "K\nid\nlen\nkey" and the value, so
// that where the key ends is never a guess (see rowHeader).
type busMsg struct {
	kind byte
	id   string
	key  string
	val  []byte
}

func (m busMsg) encode() []byte {
	b := make([]byte, 0, 3+len(m.id)+len(m.key))
	b = append(b, m.kind, '\n')
	b = append(b, m.id...)
	b = append(b, '\n')
	return append(b, m.key...)
}

// rowKind is the kind of a message of kind that carries a value.
func rowKind(kind byte) byte { return kind - 'a' + 'A' }

// rowHeader is the message that ends a write and carries its value, less
// the value, which the cache appends when it set the key to it.
func (m busMsg) rowHeader() []byte {
	n := strconv.Itoa(len(m.key))
	b := make([]byte, 0, 4+len(m.id)+len(n)+len(m.key))
	b = append(b, rowKind(m.kind), '\n')
	b = append(b, m.id...)
	b = append(b, '\n')
	b = append(b, n...)
	b = append(b, '\n')
	return append(b, m.key...)
}

func decodeBusMsg(b []byte) (busMsg, bool) {
	if len(b) < 2 || b[1] != '\n' {
		return busMsg{}, false
	}
	id, rest, ok := bytes.Cut(b[2:], []byte{'\n'})
	if !ok {
		return busMsg{}, false
	}
	kind := b[0]
	if kind != rowKind(msgDone) && kind != rowKind(msgCleared) {
		return busMsg{kind: kind, id: string(id), key: string(rest)}, true
	}
	n, rest, ok := bytes.Cut(rest, []byte{'\n'})
	if !ok {
		return busMsg{}, false
	}
	klen, err := strconv.Atoi(string(n))
	if err != nil || klen < 0 || klen > len(rest) {
		return busMsg{}, false
	}
	return busMsg{kind: kind - 'A' + 'a', id: string(id), key: string(rest[:klen]), val: rest[klen:]}, true
}

// busHandler is what the bus tells about: a message about a key (with the
// value a write left in the cache, if it carries one), and a tier that can
// no longer be trusted.
type busHandler interface {
	heard(key string, kind byte, write string, raw []byte)
	flush()
}

// A member's validity is a deadline on its monotonic clock, a quarter of a
// lease short of its lease, which the cache's clock ends (see heard). A
// local hit reads no clock: a timer clears the tier's "serving" flag at the
// deadline. That assumes the process's timers fire within a quarter of a
// lease (250 ms with the default lease) of their time; a process stopped
// longer than that (a debugger, a throttled container) could serve from
// memory that much past its lease. Fills check the clock itself.

// Defaults of the bus.
const (
	// DefaultLocalLease is how long a member's membership lease lasts: how
	// long a write can wait for a member that went silent, and about how
	// long after it lost the cache a member stops serving from memory.
	DefaultLocalLease = time.Second
)

// bus is one engine's connection to the invalidation bus.
type bus struct {
	t       busTransport
	member  string // this process's member ID
	lease   time.Duration
	margin  time.Duration // taken off a lease for clock drift and delays
	strict  bool
	timeout time.Duration // bounds each call to the cache
	log     *slog.Logger
	m       *counters
	h       busHandler

	validUntil atomic.Int64 // until when the tier may serve, on the mono clock
	lapsed     atomic.Bool  // validity ran out since the tier was last emptied
	// serving is validUntil as a flag that a timer clears at validUntil,
	// so that a local hit reads no clock; coarse is the mono clock as of
	// the last heartbeat, for the entries' own expiry.
	serving atomic.Bool
	coarse  atomic.Int64
	members atomic.Bool // the last announcement counted members besides this one
	// fillAfter is when, on the mono clock, a member that (re)joined may
	// fill its tier again: grace after its lease was renewed.
	fillAfter atomic.Int64
	grace     time.Duration

	out chan func(context.Context)

	ackMu    sync.Mutex  // protects acks
	acks     []queuedAck // acknowledgements to send
	ackReady chan struct{}

	mu    sync.Mutex  // serializes distrust, extend and expire; protects sub and timer
	sub   uint64      // numbers the subscriptions: a renewal counts only for its own
	timer *time.Timer // clears serving at validUntil
}

func newBus(t busTransport, strict bool, lease time.Duration, o options, m *counters, h busHandler) *bus {
	return &bus{
		t: t, member: randomID(), lease: lease, margin: lease / 4,
		strict: strict, timeout: o.cacheTimeout, log: o.logger, m: m, h: h,
		out:      make(chan func(context.Context), 1024),
		ackReady: make(chan struct{}, 1),
		grace:    cmp.Or(o.joinGrace, o.loadTimeout+2*lease), // see doc.go
	}
}

func randomID() string {
	return strconv.FormatUint(rand.Uint64(), 36) + strconv.FormatUint(rand.Uint64(), 36)
}

// valid reports whether the tier may serve at now, on the mono clock.
func (b *bus) valid(now int64) bool { return now < b.validUntil.Load() }

// monoStart anchors mono.
var monoStart = time.Now()

// mono reads the monotonic clock, in nanoseconds since the process
// started: one clock read, where time.Now takes two, which matters on the
// path of a local hit.
func mono() int64 { return int64(time.Since(monoStart)) }

// start runs the bus's two goroutines, which end when done is closed.
func (b *bus) start(bg *background) {
	bg.Go(b.receive)
	bg.Go(b.send)
}

// send makes the bus's outbound calls, in order, each bounded by the cache
// time box.
func (b *bus) send(done <-chan struct{}) {
	for {
		select {
		case <-done:
			if b.strict {
				ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
				_ = b.t.busLeave(ctx, b.member)
				cancel()
			}
			return
		case f := <-b.out:
			ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
			f(ctx)
			cancel()
		case <-b.ackReady:
			b.sendAcks()
		}
	}
}

// queuedAck is an acknowledgement waiting to be sent, and how many times
// sending it failed.
type queuedAck struct {
	id    string
	tries int
}

// How acknowledgements that fail to send are retried: up to maxAckTries
// sends in all, ackRetryDelay apart. A writer waits for an acknowledgement
// until the member's lease runs out, which a member that can still renew
// it never lets happen: without a retry, one connection reset costs the
// writer two leases.
const (
	maxAckTries   = 4
	ackRetryDelay = 10 * time.Millisecond
)

// queueAck queues this member's acknowledgement filed under ack; the
// sender sends every queued one in one round trip.
func (b *bus) queueAck(ack string) {
	b.ackMu.Lock()
	b.acks = append(b.acks, queuedAck{id: ack})
	b.ackMu.Unlock()
	b.wakeSender()
}

// wakeSender tells the sender that acknowledgements are queued.
func (b *bus) wakeSender() {
	select {
	case b.ackReady <- struct{}{}:
	default: // the sender has been told already
	}
}

// sendAcks sends the queued acknowledgements; those that fail are queued
// again, up to maxAckTries sends in all.
func (b *bus) sendAcks() {
	b.ackMu.Lock()
	acks := b.acks
	b.acks = nil
	b.ackMu.Unlock()
	if len(acks) == 0 {
		return
	}
	ids := make([]string, len(acks))
	for i, a := range acks {
		ids[i] = a.id
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	if b.t.busAck(ctx, ids, b.member) == nil {
		b.m.busAcks.Add(int64(len(acks)))
		return
	}
	again := acks[:0]
	for _, a := range acks {
		if a.tries++; a.tries < maxAckTries {
			again = append(again, a)
		}
	}
	if len(again) == 0 {
		return
	}
	b.ackMu.Lock()
	b.acks = append(again, b.acks...)
	b.ackMu.Unlock()
	time.AfterFunc(ackRetryDelay, b.wakeSender)
}

// enqueue hands f to the sender, or gives up when the engine closes.
func (b *bus) enqueue(done <-chan struct{}, f func(context.Context)) bool {
	select {
	case b.out <- f:
		return true
	case <-done:
		return false
	}
}

// receive keeps a subscription and handles what it delivers, until done is
// closed.
func (b *bus) receive(done <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // done ends the subscription's waits
		<-done
		cancel()
	}()
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		sub, err := b.t.busSubscribe(ctx)
		if err != nil {
			b.log.Warn("cacheaside: bus subscription failed; the local tier does not serve meanwhile", "err", err)
			select {
			case <-time.After(backoff/2 + rand.N(backoff)):
			case <-done:
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		err = b.serve(ctx, done, sub)
		sub.close()
		b.distrust()
		if ctx.Err() != nil {
			b.stop()
		}
		if ctx.Err() == nil {
			b.log.Warn("cacheaside: bus subscription lost; the local tier was emptied", "err", err)
		}
	}
}

// distrust stops the tier from serving and empties it; renewals heard on
// the subscription that ended no longer count.
func (b *bus) distrust() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sub++
	b.serving.Store(false)
	b.validUntil.Store(0)
	b.h.flush()
	b.lapsed.Store(false)
}

// expire clears serving once validUntil has passed. A timer runs it at
// validUntil; the receive loop runs it too, at every turn.
func (b *bus) expire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if v := b.validUntil.Load(); v != 0 && mono() >= v {
		b.serving.Store(false)
		b.lapsed.Store(true) // writers may have counted us out: empty the tier before serving again
	}
}

// subscription returns the number of the current subscription.
func (b *bus) subscription() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sub
}

// serve handles one subscription's messages until it breaks or ctx ends.
func (b *bus) serve(ctx context.Context, done <-chan struct{}, sub busSub) error {
	current := b.subscription()
	every := b.lease / 4
	var n int64
	sent := make(map[int64]int64) // heartbeats in flight: when each was sent, on the mono clock
	next := time.Now()
	for {
		if now := time.Now(); !now.Before(next) {
			n++
			sent[n] = mono()
			for k := range sent {
				if k < n-8 {
					delete(sent, k)
				}
			}
			msg := busMsg{kind: msgHeartbeat, id: b.member, key: strconv.FormatInt(n, 10)}.encode()
			if !b.enqueue(done, func(ctx context.Context) { _ = b.t.busPublish(ctx, msg) }) {
				return ctx.Err()
			}
			next = now.Add(every)
		}
		raw, err := sub.next(ctx, time.Until(next))
		if err != nil {
			return err
		}
		b.coarse.Store(mono())
		b.expire()
		if raw == nil {
			continue
		}
		msg, ok := decodeBusMsg(raw)
		if !ok {
			continue
		}
		switch msg.kind {
		case msgHeartbeat:
			if msg.id != b.member {
				continue
			}
			k, _ := strconv.ParseInt(msg.key, 10, 64)
			at, ok := sent[k]
			if !ok {
				continue
			}
			delete(sent, k)
			b.heard(done, at, current)
		case msgPrepare, msgDone, msgCleared:
			b.m.busInvalidations.Add(1)
			b.h.heard(msg.key, msg.kind, msg.id, msg.val)
			if b.strict && msg.kind != msgCleared {
				b.queueAck(ackID(msg.id, msg.kind))
			}
		}
	}
}

// heard extends the tier's validity after the member's heartbeat sent at
// (on the mono clock) came back on subscription sub: at once for a relaxed
// member (everything published before at has arrived), after renewing its
// lease for a strict one.
func (b *bus) heard(done <-chan struct{}, at int64, sub uint64) {
	if !b.strict {
		b.extend(at+int64(b.lease-b.margin), sub)
		return
	}
	b.enqueue(done, func(ctx context.Context) {
		sentAt := mono()
		if err := b.t.busRenew(ctx, b.member, b.lease); err != nil {
			return // validity runs out on its own
		}
		b.extend(sentAt+int64(b.lease-b.margin), sub)
	})
}

// extend moves the tier's validity to until (on the mono clock), if
// subscription sub is still the current one, emptying the tier first if
// validity ran out since it was last emptied.
func (b *bus) extend(until int64, sub uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if sub != b.sub {
		return
	}
	now := mono()
	if b.lapsed.Load() || b.validUntil.Load() == 0 {
		// (Re)joining: a write that went on without its marker (its
		// cache calls failed, before any member was known) may still be
		// changing the source; fill nothing until it is done. The grace
		// starts before the tier is emptied: a read that notes the new
		// epoch (see tier.begin) then sees the grace too.
		if b.strict {
			b.fillAfter.Store(now + int64(b.grace))
		}
		b.h.flush()
		b.lapsed.Store(false)
	}
	if until <= b.validUntil.Load() || until <= now {
		return
	}
	b.validUntil.Store(until)
	b.coarse.Store(now)
	b.serving.Store(true)
	if b.timer == nil {
		b.timer = time.AfterFunc(time.Duration(until-now), b.expire)
	} else {
		b.timer.Reset(time.Duration(until - now))
	}
}

// stop stops the expiry timer and stops serving.
func (b *bus) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.timer != nil {
		b.timer.Stop()
	}
	b.serving.Store(false)
}

// announce tells every member that key is about to change (kind
// msgPrepare) or has changed (msgDone, msgCleared); for msgPrepare and
// msgDone a strict bus waits until each member counted then has
// acknowledged or lost its lease, bounded by twice the lease, and reports
// whether every one did.
func (b *bus) announce(ctx context.Context, kind byte, write, key string) bool {
	msg := busMsg{kind: kind, id: write, key: key}.encode()
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.timeout)
	_, members, err := b.t.busAnnounce(actx, msg)
	cancel()
	if kind == msgCleared {
		b.note(members, err)
		return err == nil
	}
	return b.settle(ctx, ackID(write, kind), members, err)
}

// ackID names the acknowledgements of one announcement of write, of kind
// msgPrepare or msgDone. The two announcements of a write file theirs
// apart, so that the drop of what is left of the first's, which runs in
// the background, can never take the second's.
func ackID(write string, kind byte) string { return write + "." + string(rune(kind)) }

// note records whether an announcement that succeeded counted members
// besides this one.
func (b *bus) note(members []busMember, err error) {
	if err != nil {
		return
	}
	others := false
	for _, m := range members {
		others = others || m.id != b.member
	}
	b.members.Store(others)
}

// settle does what a writer does after an announcement, whose
// acknowledgements are filed under ack, that counted members, or failed
// with err: a strict bus waits until each member has acknowledged or lost
// its lease. It reports whether each did (and false after a failed
// announcement).
func (b *bus) settle(ctx context.Context, ack string, members []busMember, err error) bool {
	ctx = context.WithoutCancel(ctx)
	if err != nil {
		// Members that missed it may still serve the old value until their
		// validity runs out, within a lease: a strict writer that knows of
		// members waits that out. A fleet without local tiers waits for
		// nothing.
		b.log.Warn("cacheaside: bus announcement failed", "write", ack, "err", err)
		if b.strict && b.members.Load() {
			b.waitOut(ctx)
		}
		return false
	}
	if !b.strict {
		return true
	}
	pending := make(map[string]time.Time, len(members))
	for _, m := range members {
		if m.id != b.member { // this process invalidated its own tier first
			pending[m.id] = m.expires
		}
	}
	b.members.Store(len(pending) > 0)
	if len(pending) == 0 {
		return true
	}
	return b.await(ctx, ack, pending)
}

// await waits for the acknowledgements filed under ack from pending, or
// for their leases to run out, and reports whether every one did.
func (b *bus) await(ctx context.Context, ack string, pending map[string]time.Time) bool {
	begin := time.Now()
	deadline := begin.Add(2 * b.lease)
	silent := false
	for len(pending) > 0 && time.Now().Before(deadline) {
		wait := min(b.lease/10, time.Until(deadline))
		actx, cancel := context.WithTimeout(ctx, wait+b.timeout)
		ms, err := b.t.busAwaitAcks(actx, ack, wait)
		cancel()
		if err == nil && len(ms) > 0 {
			for _, m := range ms {
				delete(pending, m)
			}
			continue
		}
		// Nothing came: drop the members whose lease ran out.
		silent = true
		ids := make([]string, 0, len(pending))
		for id := range pending {
			ids = append(ids, id)
		}
		ectx, cancel := context.WithTimeout(ctx, b.timeout)
		now, exps, err := b.t.busExpiries(ectx, ids)
		cancel()
		if err != nil {
			continue
		}
		for i, id := range ids {
			if !exps[i].After(now) {
				delete(pending, id)
			}
		}
	}
	if len(pending) > 0 {
		b.log.Error("cacheaside: members neither acknowledged a write nor lost their lease", "members", len(pending))
	}
	if silent {
		b.m.writesWaited.Add(1)
		b.m.writeWaitNanos.Add(int64(time.Since(begin)))
	}
	go func() { // best effort: the list expires anyway
		dctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		defer cancel()
		_ = b.t.busDropAcks(dctx, ack)
	}()
	return len(pending) == 0
}

// filling reports whether, at now on the mono clock, the tier may fill.
func (b *bus) filling(now int64) bool { return now >= b.fillAfter.Load() }

// waitOut waits until every member that could have missed an announcement
// has lost its validity: one lease.
func (b *bus) waitOut(ctx context.Context) {
	b.m.writesWaited.Add(1)
	begin := time.Now()
	t := time.NewTimer(b.lease)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	b.m.writeWaitNanos.Add(int64(time.Since(begin)))
}

// state names the bus's view of this member, for the metrics.
func (b *bus) state() string {
	switch now := mono(); {
	case b.valid(now) && !b.filling(now):
		return "joining (serves from memory once its grace ends)"
	case b.valid(now):
		return "serving"
	case b.strict:
		return "not serving (waiting for its lease)"
	default:
		return "not serving (waiting for the bus)"
	}
}
