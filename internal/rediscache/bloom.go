package rediscache

import (
	"context"
	"errors"
	"strings"

	"github.com/redis/go-redis/v9"
)

// A Bloom filter of the root package lives in three keys under one hash
// tag: the filter in use (a bitmap whose bit 0 says that it is built; the
// filter's bits start at 1), the filter being built ("...:next"), and an
// epoch counter that every build moves at its start and at its end.

func (c *Cache) bloomKeys(name string) []string {
	cur := c.prefix + "cacheaside:bloom:{" + name + "}"
	return []string{cur, cur + ":next", cur + ":epoch"}
}

// bloomAdd sets bits ARGV in the filter in use and in the one being built,
// if any, and returns the epoch.
var bloomAdd = redis.NewScript(`
local building = redis.call('EXISTS', KEYS[2]) == 1
for i = 1, #ARGV do
  redis.call('SETBIT', KEYS[1], ARGV[i], 1)
  if building then redis.call('SETBIT', KEYS[2], ARGV[i], 1) end
end
return tonumber(redis.call('GET', KEYS[3]) or 0)`)

// bloomBegin starts a build: an empty filter to build (bit 0 clear), and
// the epoch moved.
var bloomBegin = redis.NewScript(`
redis.call('DEL', KEYS[2])
redis.call('SETBIT', KEYS[2], 0, 0)
return redis.call('INCR', KEYS[3])`)

// bloomCommit puts the built filter in use and moves the epoch; it fails
// if the build was started over meanwhile (ARGV[1] is the epoch the build
// began with).
var bloomCommit = redis.NewScript(`
if tonumber(redis.call('GET', KEYS[3]) or 0) ~= tonumber(ARGV[1]) or redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('SETBIT', KEYS[2], 0, 1)
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('INCR', KEYS[3])
return 1`)

// bloomTest is BloomTest for servers without BITFIELD: 1 when every bit is
// set, 0 when one is not, -1 when the filter is not built.
var bloomTest = redis.NewScript(`
if redis.call('GETBIT', KEYS[1], 0) == 0 then return -1 end
for i = 1, #ARGV do
  if redis.call('GETBIT', KEYS[1], ARGV[i]) == 0 then return 0 end
end
return 1`)

// BloomTest reports whether every bit in pos (the filter's own positions,
// from 0) is set in name's filter; ok is false when no built filter is in
// use. One BITFIELD command (a script on a server without BITFIELD).
func (c *Cache) BloomTest(ctx context.Context, name string, pos []uint64) (present, ok bool, err error) {
	if c.noBitfield.Load() {
		args := make([]any, len(pos))
		for i, p := range pos {
			args[i] = p + 1
		}
		n, err := bloomTest.Run(ctx, c.c, c.bloomKeys(name)[:1], args...).Int()
		return n == 1, n >= 0, err
	}
	args := make([]any, 0, 3*(len(pos)+1))
	args = append(args, "GET", "u1", 0)
	for _, p := range pos {
		args = append(args, "GET", "u1", p+1)
	}
	bits, err := c.c.BitField(ctx, c.bloomKeys(name)[0], args...).Result()
	if err != nil && isUnknownCommand(err) {
		c.noBitfield.Store(true)
		return c.BloomTest(ctx, name, pos)
	}
	if err != nil {
		return false, false, err
	}
	if len(bits) != len(pos)+1 {
		return false, false, errors.New("unexpected reply to BITFIELD")
	}
	if bits[0] == 0 {
		return false, false, nil
	}
	for _, b := range bits[1:] {
		if b == 0 {
			return false, true, nil
		}
	}
	return true, true, nil
}

// BloomAdd sets pos in name's filter in use and in the one being built,
// and returns the epoch.
func (c *Cache) BloomAdd(ctx context.Context, name string, pos []uint64) (int64, error) {
	args := make([]any, len(pos))
	for i, p := range pos {
		args[i] = p + 1
	}
	return bloomAdd.Run(ctx, c.c, c.bloomKeys(name), args...).Int64()
}

// BloomBegin starts a build of name's filter and returns its epoch.
func (c *Cache) BloomBegin(ctx context.Context, name string) (int64, error) {
	return bloomBegin.Run(ctx, c.c, c.bloomKeys(name)).Int64()
}

// BloomLoad sets the positions of many items in the filter being built,
// in one round trip.
func (c *Cache) BloomLoad(ctx context.Context, name string, items [][]uint64) error {
	next := c.bloomKeys(name)[1]
	if c.noBitfield.Load() {
		_, err := c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, pos := range items {
				for _, q := range pos {
					p.SetBit(ctx, next, int64(q+1), 1)
				}
			}
			return nil
		})
		return err
	}
	_, err := c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		args := make([]any, 0, 3*64)
		flush := func() {
			if len(args) > 0 {
				p.BitField(ctx, next, args...)
				args = make([]any, 0, 3*64)
			}
		}
		for _, pos := range items {
			for _, q := range pos {
				args = append(args, "SET", "u1", q+1, 1)
			}
			if len(args) >= 4*1024 {
				flush()
			}
		}
		flush()
		return nil
	})
	if err != nil && isUnknownCommand(err) {
		c.noBitfield.Store(true)
		return c.BloomLoad(ctx, name, items)
	}
	return err
}

// BloomCommit puts the filter built since epoch in use, and reports false
// if another build started meanwhile.
func (c *Cache) BloomCommit(ctx context.Context, name string, epoch int64) (bool, error) {
	n, err := bloomCommit.Run(ctx, c.c, c.bloomKeys(name), epoch).Int()
	return n == 1, err
}

// isUnknownCommand reports whether err is a server refusing a command it
// does not know.
func isUnknownCommand(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.Contains(strings.ToLower(re.Error()), "unknown command")
}
