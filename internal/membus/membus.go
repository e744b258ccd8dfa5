// Package membus is the invalidation bus of the root package's local tiers
// for caches that live in one process: what the Redis bus does with
// pub/sub, a sorted set of members and acknowledgement lists, done with
// channels and maps, on an injectable clock. It is the storage behind the
// root package's MemoryCache bus, so that several services sharing one
// MemoryCache form a fleet in tests.
package membus

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Bus is one bus. The zero value is not usable; call New. It is safe for
// concurrent use.
type Bus struct {
	now func() time.Time

	mu      sync.Mutex // protects subs, members and acks
	subs    map[*Sub]struct{}
	members map[string]time.Time // member -> when its lease runs out
	acks    map[string]chan string
}

// New returns a bus that reads the time from now, or time.Now when nil.
func New(now func() time.Time) *Bus {
	if now == nil {
		now = time.Now
	}
	return &Bus{now: now, subs: make(map[*Sub]struct{}), members: make(map[string]time.Time), acks: make(map[string]chan string)}
}

// subBuffer bounds the messages a subscriber may lag behind; a subscriber
// that falls further behind loses its subscription (it sees ErrGap), as a
// Redis client whose output buffer overflows is disconnected.
const subBuffer = 1 << 14

// ErrGap reports that a subscriber may have missed messages.
var ErrGap = errors.New("membus: messages may have been lost")

// Sub is a subscription. Messages arrive in the order they were published.
type Sub struct {
	b    *Bus
	ch   chan []byte
	once sync.Once
	gap  chan struct{} // closed when messages were lost
}

// Subscribe returns a new subscription.
func (b *Bus) Subscribe() *Sub {
	s := &Sub{b: b, ch: make(chan []byte, subBuffer), gap: make(chan struct{})}
	b.mu.Lock()
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s
}

// Next returns the next message, nil when wait passed without one, or
// ErrGap, after which the subscription receives nothing more.
func (s *Sub) Next(ctx context.Context, wait time.Duration) ([]byte, error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case m := <-s.ch:
		return m, nil
	case <-s.gap:
		return nil, ErrGap
	case <-t.C:
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close ends the subscription.
func (s *Sub) Close() {
	s.b.mu.Lock()
	delete(s.b.subs, s)
	s.b.mu.Unlock()
}

// Publish delivers msg to every subscriber.
func (b *Bus) Publish(msg []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.publishLocked(msg)
}

func (b *Bus) publishLocked(msg []byte) {
	for s := range b.subs {
		select {
		case s.ch <- msg:
		default: // too far behind: disconnect it
			delete(b.subs, s)
			s.once.Do(func() { close(s.gap) })
		}
	}
}

// Member is a member and when its lease runs out.
type Member struct {
	ID      string
	Expires time.Time
}

// Announce publishes msg and returns the time and the members whose lease
// had not run out, in one step.
func (b *Bus) Announce(msg []byte) (time.Time, []Member) {
	return b.AnnounceAfter(func() []byte { return msg })
}

// AnnounceAfter is Announce of the message step returns, with step run
// in the same step: nothing else is published between the two.
func (b *Bus) AnnounceAfter(step func() []byte) (time.Time, []Member) {
	b.mu.Lock()
	defer b.mu.Unlock()
	msg := step()
	now := b.now()
	var live []Member
	for id, exp := range b.members {
		if exp.After(now) {
			live = append(live, Member{ID: id, Expires: exp})
		}
	}
	b.publishLocked(msg)
	return now, live
}

// Renew sets id's lease to run out lease from now.
func (b *Bus) Renew(id string, lease time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	b.members[id] = now.Add(lease)
	for m, exp := range b.members {
		if exp.Before(now.Add(-10 * time.Minute)) {
			delete(b.members, m)
		}
	}
}

// Leave removes id.
func (b *Bus) Leave(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.members, id)
}

// Expiries returns the time and when each member's lease runs out (the
// zero time for one that has none).
func (b *Bus) Expiries(ids []string) (time.Time, []time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]time.Time, len(ids))
	for i, id := range ids {
		out[i] = b.members[id]
	}
	return b.now(), out
}

// ackBuffer bounds the acknowledgements one write can hold.
const ackBuffer = 1024

func (b *Bus) ackChan(write string) chan string {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch, ok := b.acks[write]
	if !ok {
		ch = make(chan string, ackBuffer)
		b.acks[write] = ch
	}
	return ch
}

// Ack records that member acknowledged write.
func (b *Bus) Ack(write, member string) {
	select {
	case b.ackChan(write) <- member:
	default:
	}
}

// AwaitAcks waits up to wait for the next acknowledgements of write and
// returns their members, none when none came.
func (b *Bus) AwaitAcks(ctx context.Context, write string, wait time.Duration) ([]string, error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	ch := b.ackChan(write)
	select {
	case m := <-ch:
		got := []string{m}
		for {
			select {
			case m := <-ch:
				got = append(got, m)
			default:
				return got, nil
			}
		}
	case <-t.C:
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// DropAcks forgets write's acknowledgements.
func (b *Bus) DropAcks(write string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.acks, write)
}
