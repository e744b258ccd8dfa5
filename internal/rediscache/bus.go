package rediscache

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The invalidation bus of the root package's local tiers lives here as
// Redis commands: a pub/sub channel, a sorted set of the members whose
// local tiers hold values (scored by when their lease runs out, on the
// server's clock), and a list per write that members push their
// acknowledgements to. All of it is under the library's own namespace and
// one hash tag, so that on a cluster it lives in one slot and one script
// may publish and read the members at once.

// busTag is the hash tag of every bus key.
const busTag = "cacheaside:{bus}"

// BusChannel returns the channel the bus publishes on.
func (c *Cache) BusChannel() string { return c.prefix + busTag }

func (c *Cache) membersKey() string { return c.prefix + busTag + ":members" }

func (c *Cache) ackKey(write string) string { return c.prefix + busTag + ":ack:" + write }

// serverMillis turns the reply of TIME into Unix milliseconds.
const serverMillis = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// announce publishes ARGV[2] on channel ARGV[1] and returns the server's
// time and the members of KEYS[1] whose lease has not run out, with when it
// does, in one step: a member that registered before it sees the message,
// and one that registers after it is not counted.
var announce = redis.NewScript(serverMillis + `
local m = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
redis.call('PUBLISH', ARGV[1], ARGV[2])
return {now, m}`)

// renew sets member ARGV[1]'s lease in KEYS[1] to run out ARGV[2]
// milliseconds from now on the server's clock, and forgets members whose
// lease ran out long ago.
var renew = redis.NewScript(serverMillis + `
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 600000)
return now`)

// expiries returns the server's time and when the lease of each member in
// ARGV runs out (0 for none).
var expiries = redis.NewScript(serverMillis + `
local out = {now}
for i = 1, #ARGV do
  out[i + 1] = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]) or 0)
end
return out`)

// Member is a member of the bus and when its lease runs out, on the
// server's clock.
type Member struct {
	ID      string
	Expires time.Time
}

// Announce publishes msg on the bus and returns the members whose lease had
// not run out when it did, and the server's time then.
func (c *Cache) Announce(ctx context.Context, msg []byte) (time.Time, []Member, error) {
	return announced(announce.Run(ctx, c.c, []string{c.membersKey()}, c.BusChannel(), msg))
}

// Publish publishes msg on the bus.
func (c *Cache) Publish(ctx context.Context, msg []byte) error {
	return c.c.Publish(ctx, c.BusChannel(), msg).Err()
}

// Renew sets member id's lease to run out lease from now, on the server's
// clock.
func (c *Cache) Renew(ctx context.Context, id string, lease time.Duration) error {
	return renew.Run(ctx, c.c, []string{c.membersKey()}, id, ms(lease)).Err()
}

// Leave removes member id.
func (c *Cache) Leave(ctx context.Context, id string) error {
	return c.c.ZRem(ctx, c.membersKey(), id).Err()
}

// Expiries returns the server's time and when the lease of each member
// runs out (the zero time for a member that has none).
func (c *Cache) Expiries(ctx context.Context, ids []string) (time.Time, []time.Time, error) {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	res, err := expiries.Run(ctx, c.c, []string{c.membersKey()}, args...).Int64Slice()
	if err != nil {
		return time.Time{}, nil, err
	}
	if len(res) != len(ids)+1 {
		return time.Time{}, nil, errors.New("unexpected reply to the expiries script")
	}
	out := make([]time.Time, len(ids))
	for i, ms := range res[1:] {
		if ms > 0 {
			out[i] = time.UnixMilli(ms)
		}
	}
	return time.UnixMilli(res[0]), out, nil
}

// ackTTL bounds how long an acknowledgement list outlives its write.
const ackTTL = time.Minute

// Ack records that member acknowledged each of writes, in one round trip.
func (c *Cache) Ack(ctx context.Context, writes []string, member string) error {
	_, err := c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, w := range writes {
			key := c.ackKey(w)
			p.RPush(ctx, key, member)
			p.PExpire(ctx, key, ackTTL)
		}
		return nil
	})
	return err
}

// AwaitAcks waits up to wait for the next acknowledgements of write and
// returns the members that sent them, none when none came: the first by a
// blocking pop, the others that arrived with it by one more (LPOP with a
// count, Redis 6.2 and later).
func (c *Cache) AwaitAcks(ctx context.Context, write string, wait time.Duration) ([]string, error) {
	first, err := c.awaitAck(ctx, write, wait)
	if err != nil || first == "" {
		return nil, err
	}
	more, err := c.c.LPopCount(ctx, c.ackKey(write), 64).Result()
	if err != nil { // empty, or a server before 6.2: the loop asks again
		more = nil
	}
	return append([]string{first}, more...), nil
}

// awaitAck waits up to wait for the next acknowledgement of write and
// returns the member that sent it, or "" when none came.
//
// The timeout goes to the server in fractional seconds (Redis 6 and
// later), which go-redis's BLPop would round up to a whole second.
func (c *Cache) awaitAck(ctx context.Context, write string, wait time.Duration) (string, error) {
	secs := strconv.FormatFloat(max(wait, time.Millisecond).Seconds(), 'f', 3, 64)
	res, err := c.c.Do(ctx, "BLPOP", c.ackKey(write), secs).StringSlice()
	if err != nil && !errors.Is(err, redis.Nil) && strings.Contains(err.Error(), "timeout is not") {
		// Redis 5 and older: whole seconds only.
		res, err = c.c.BLPop(ctx, max(wait, time.Second), c.ackKey(write)).Result()
	}
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if len(res) != 2 {
		return "", errors.New("unexpected reply to BLPOP")
	}
	return res[1], nil
}

// DropAcks deletes what is left of write's acknowledgements.
func (c *Cache) DropAcks(ctx context.Context, write string) error {
	return c.c.Del(ctx, c.ackKey(write)).Err()
}

// Subscribe subscribes to the bus on the client the cache was given.
func (c *Cache) Subscribe(ctx context.Context) *redis.PubSub {
	return c.user.Subscribe(ctx, c.BusChannel())
}

// beginWriteAnnounce is beginWrite (KEYS[1], ARGV[1] to ARGV[3]) and
// announce (members KEYS[2], channel ARGV[4], message ARGV[5]) in one
// script, for a server that holds both keys (not a cluster). It returns
// what the key held, the server's time and the live members.
var beginWriteAnnounce = redis.NewScript(beginWriteBody + serverMillis + `
local m = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES')
redis.call('PUBLISH', ARGV[4], ARGV[5])
return {old, now, m}`)

// endWriteAnnounce is clearWrite (KEYS[1] to KEYS[#KEYS-1], ARGV[1] to
// ARGV[4]) and announce (members KEYS[#KEYS], channel ARGV[5], message
// ARGV[6]) in one script, for a server that holds every key (not a
// cluster). When the key was set to ARGV[3], the message published is
// ARGV[7] followed by ARGV[3] instead: nothing else can be published
// between the two, so a subscriber may take it for a read of the key. It
// returns clearWrite's reply, the server's time and the live members.
var endWriteAnnounce = redis.NewScript(`local last = #KEYS - 1` + clearWriteBody + serverMillis + `
local m = redis.call('ZRANGEBYSCORE', KEYS[#KEYS], '(' .. now, '+inf', 'WITHSCORES')
local msg = ARGV[6]
if ret == 2 then msg = ARGV[7] .. ARGV[3] end
redis.call('PUBLISH', ARGV[5], msg)
return {ret, now, m}`)

// BeginWrite places marker under key for ttl, adding its token to a
// marker already there (see beginWrite), and announces msg, in one round
// trip: one script on a single server, a pipeline of two on a cluster
// (whose client sends it to the two slots' nodes at once). It returns the
// error of each half, what key held before (nil for nothing), and the
// announcement's result.
func (c *Cache) BeginWrite(ctx context.Context, key string, marker []byte, m Markers, ttl time.Duration, msg []byte) (markErr error, prev []byte, now time.Time, members []Member, annErr error) {
	if c.single {
		res, err := beginWriteAnnounce.Run(ctx, c.c, []string{c.prefix + key, c.membersKey()}, marker, ms(ttl), m.Intent, c.BusChannel(), msg).Slice()
		if err != nil {
			return err, nil, time.Time{}, nil, err
		}
		if len(res) != 3 {
			err = errors.New("unexpected reply to the begin-write script")
			return err, nil, time.Time{}, nil, err
		}
		if s, ok := res[0].(string); ok {
			prev = []byte(s)
		}
		now, members, annErr = announcedReply(res[1:])
		return nil, prev, now, members, annErr
	}
	var set, ann *redis.Cmd
	_, _ = c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		set = beginWrite.Eval(ctx, p, []string{c.prefix + key}, marker, ms(ttl), m.Intent)
		ann = announce.Eval(ctx, p, []string{c.membersKey()}, c.BusChannel(), msg)
		return nil
	})
	now, members, annErr = announced(ann)
	text, markErr := set.Text()
	if errors.Is(markErr, redis.Nil) { // the key held nothing
		return nil, nil, now, members, annErr
	}
	return markErr, []byte(text), now, members, annErr
}

// EndWrite ends a write to key (see ClearWrite) and announces msg, in one
// round trip: one script on a single server, a pipeline on a cluster,
// where the related keys are deleted by commands of their own.
//
// With fill, a key that still holds exactly mine is given fill, for
// fillTTL, instead of being deleted (the writer's own value, as the source
// stored it), and filled reports it. On a single server the announcement
// is then rowMsg followed by fill (see endWriteAnnounce).
func (c *Cache) EndWrite(ctx context.Context, key string, mine []byte, m Markers, related []string, fill []byte, fillTTL time.Duration, msg, rowMsg []byte) (clearErr error, filled bool, now time.Time, members []Member, annErr error) {
	keys := []string{c.prefix + key}
	if !c.cluster {
		for _, k := range related {
			keys = append(keys, c.prefix+k)
		}
	}
	if c.single {
		keys = append(keys, c.membersKey())
		res, err := endWriteAnnounce.Run(ctx, c.c, keys, mine, m.Intent, fill, ms(fillTTL), c.BusChannel(), msg, rowMsg).Slice()
		if err != nil {
			return err, false, time.Time{}, nil, err
		}
		if len(res) != 3 {
			err = errors.New("unexpected reply to the end-write script")
			return err, false, time.Time{}, nil, err
		}
		n, _ := res[0].(int64)
		now, members, annErr = announcedReply(res[1:])
		return nil, n == 2, now, members, annErr
	}
	var clear []redis.Cmder
	var ann *redis.Cmd
	_, _ = c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		clear = append(clear, clearWrite.Eval(ctx, p, keys, mine, m.Intent, fill, ms(fillTTL)))
		if c.cluster {
			for _, k := range related {
				clear = append(clear, p.Del(ctx, c.prefix+k))
			}
		}
		ann = announce.Eval(ctx, p, []string{c.membersKey()}, c.BusChannel(), msg)
		return nil
	})
	for _, cmd := range clear {
		if err := cmd.Err(); err != nil {
			clearErr = err
			break
		}
	}
	if clearErr == nil {
		n, _ := clear[0].(*redis.Cmd).Int()
		filled = n == 2
	}
	now, members, annErr = announced(ann)
	return clearErr, filled, now, members, annErr
}

// announced reads the reply of the announce script.
func announced(cmd *redis.Cmd) (time.Time, []Member, error) {
	res, err := cmd.Slice()
	if err != nil {
		return time.Time{}, nil, err
	}
	return announcedReply(res)
}

// announcedReply reads the server's time and the members from the end of
// a script's reply.
func announcedReply(res []any) (time.Time, []Member, error) {
	if len(res) != 2 {
		return time.Time{}, nil, errors.New("unexpected reply to the announce script")
	}
	now, _ := res[0].(int64)
	flat, _ := res[1].([]any)
	members := make([]Member, 0, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		id, _ := flat[i].(string)
		score, _ := flat[i+1].(string)
		ms, _ := strconv.ParseFloat(score, 64)
		members = append(members, Member{ID: id, Expires: time.UnixMilli(int64(ms))})
	}
	return time.UnixMilli(now), members, nil
}
