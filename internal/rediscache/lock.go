package rediscache

import (
	"context"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// acquireLock sets KEYS[1] to the owner ARGV[1] for ARGV[2] milliseconds if
// it is free, and returns {1, token}: the fencing counter KEYS[2], plus one.
// When the lock is held it returns {0, PTTL KEYS[1]}. It checks everything
// before it changes anything, so that no stored value can leave the lock
// half-taken: a lock key without an expiry, or of another type, holds no
// lock (every lock expires); a fencing counter that is not a whole number
// below 2^53 restarts from the server's clock in microseconds, above any
// token it could have issued.
var acquireLock = redis.NewScript(`
local lt = redis.call('TYPE', KEYS[1])['ok']
if lt == 'string' and redis.call('PTTL', KEYS[1]) >= 0 then
  return {0, redis.call('PTTL', KEYS[1])}
end
local n = 0
local ft = redis.call('TYPE', KEYS[2])['ok']
if ft ~= 'none' then
  local f = nil
  if ft == 'string' then f = tonumber(redis.call('GET', KEYS[2])) end
  if f and f >= 0 and f == math.floor(f) and f < 9007199254740000 then
    n = f
  else
    local now = redis.call('TIME')
    n = tonumber(now[1]) * 1000000 + tonumber(now[2])
  end
end
n = n + 1
if lt ~= 'none' then redis.call('DEL', KEYS[1]) end
if ft ~= 'none' and ft ~= 'string' then redis.call('DEL', KEYS[2]) end
redis.call('SET', KEYS[2], string.format('%d', n))
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, n}`)

// extendLock resets KEYS[1]'s expiry to ARGV[2] milliseconds if ARGV[1]
// still owns it, and returns 1; otherwise 0.
var extendLock = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)

// releaseLock deletes KEYS[1] if ARGV[1] owns it, and returns 1; otherwise
// it deletes nothing and returns 0.
var releaseLock = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// LockKeys returns the Redis keys of the lock named name and of its fencing
// counter, in the namespace the library keeps for itself ("cacheaside:").
// Both carry the same hash tag, so a cluster keeps them in one slot and one
// script may touch both.
func (c *Cache) LockKeys(name string) (lock, fence string) {
	tag := name
	if tag == "" || strings.ContainsAny(tag, "{}") {
		// Braces in the name would end the hash tag early, and an empty tag
		// hashes the whole key: use a digest of the name instead.
		tag = digest(name)
	}
	base := c.prefix + "cacheaside:lock:{" + tag + "}"
	if tag != name {
		base += ":" + name
	}
	return base, base + ":fence"
}

// AcquireLock takes the lock for owner for ttl if it is free. It returns the
// fencing token and true on success, or the time the current holder has left
// and false.
func (c *Cache) AcquireLock(ctx context.Context, name, owner string, ttl time.Duration) (int64, time.Duration, bool, error) {
	lock, fence := c.LockKeys(name)
	res, err := acquireLock.Run(ctx, c.c, []string{lock, fence}, owner, ms(ttl)).Int64Slice()
	if err != nil {
		return 0, 0, false, err
	}
	if len(res) != 2 {
		return 0, 0, false, redis.Nil
	}
	if res[0] == 1 {
		return res[1], 0, true, nil
	}
	return 0, time.Duration(max(res[1], 0)) * time.Millisecond, false, nil
}

// ExtendLock resets the lock's expiry to ttl if owner holds it and reports
// whether it did.
func (c *Cache) ExtendLock(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	lock, _ := c.LockKeys(name)
	n, err := extendLock.Run(ctx, c.c, []string{lock}, owner, ms(ttl)).Int()
	return n == 1, err
}

// ReleaseLock deletes the lock if owner holds it and reports whether it did.
func (c *Cache) ReleaseLock(ctx context.Context, name, owner string) (bool, error) {
	lock, _ := c.LockKeys(name)
	n, err := releaseLock.Run(ctx, c.c, []string{lock}, owner).Int()
	return n == 1, err
}

// digest is a short, stable hexadecimal digest of s.
func digest(s string) string {
	h := fnv.New64a()
	h.Write([]byte(s))
	return strconv.FormatUint(h.Sum64(), 16)
}
