package rediscache

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// setNX stores ARGV[1] under KEYS[1] for ARGV[2] milliseconds if the key is
// empty and returns false; otherwise it returns what the key holds. A key
// that holds a lease (a value that starts with ARGV[3]) without an expiry
// counts as empty, and so does a key of another type than a string, which
// is deleted: neither holds anything the cache could use. It is SET NX GET
// PX, written as a script so that it also runs on Redis before 7.0, which
// refuses NX and GET together.
var setNX = redis.NewScript(`
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'string' then
  local v = redis.call('GET', KEYS[1])
  if string.sub(v, 1, string.len(ARGV[3])) ~= ARGV[3] or redis.call('PTTL', KEYS[1]) >= 0 then
    return v
  end
elseif t ~= 'none' then
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false`)

// compareAndSwap replaces KEYS[1]'s value with ARGV[2] (for ARGV[3]
// milliseconds, none when 0) if it is exactly ARGV[1], or deletes it when
// ARGV[4] is "del". It returns 1 when it changed the key.
var compareAndSwap = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[4] == 'del' then
  redis.call('DEL', KEYS[1])
elseif tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1`)

// SetNX stores b under key for ttl if key is empty and returns nil and
// true; otherwise it returns what key holds and false. A value that starts
// with leasePrefix and has no expiry, and a key of another type, count as
// empty. On Redis 7 and later, the native SET NX GET PX, and the script
// as well when it finds a marker (whose expiry only the script reads) or a
// key of another type; before 7.0, which refuses NX with GET, the script.
func (c *Cache) SetNX(ctx context.Context, key string, b []byte, ttl time.Duration, leasePrefix string) ([]byte, bool, error) {
	if !c.noSetNXGet.Load() {
		held, set, err := c.setNXGet(ctx, key, b, ttl, leasePrefix)
		if !errors.Is(err, errUseScript) {
			return held, set, err
		}
	}
	return c.SetNXScript(ctx, key, b, ttl, leasePrefix)
}

// errUseScript says that the native SET NX GET cannot answer: the server
// refused it, or the key holds what only the script handles.
var errUseScript = errors.New("use the script")

func (c *Cache) setNXGet(ctx context.Context, key string, b []byte, ttl time.Duration, leasePrefix string) ([]byte, bool, error) {
	text, err := c.c.Do(ctx, "set", c.prefix+key, b, "nx", "get", "px", ms(ttl)).Text()
	held := []byte(text)
	switch {
	case errors.Is(err, redis.Nil):
		return nil, true, nil // the key was empty: the lease is placed
	case IsWrongType(err):
		return nil, false, errUseScript
	case err != nil && isSyntaxError(err):
		c.noSetNXGet.Store(true) // Redis before 7.0
		return nil, false, errUseScript
	case err != nil:
		return nil, false, err
	}
	if strings.HasPrefix(text, leasePrefix) {
		// A marker: only the script tells one without an expiry, which
		// counts as empty. A second round trip, for waiters only.
		return nil, false, errUseScript
	}
	return held, false, nil
}

// isSyntaxError reports whether err is Redis refusing a command's form.
func isSyntaxError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "ERR")
}

// SetNXScript is SetNX by the script alone: one round trip for a key
// that likely holds a marker (a waiter polling another caller's lease),
// where the native command would need the script after it.
func (c *Cache) SetNXScript(ctx context.Context, key string, b []byte, ttl time.Duration, leasePrefix string) ([]byte, bool, error) {
	v, err := setNX.Run(ctx, c.c, []string{c.prefix + key}, b, ms(ttl), leasePrefix).Text()
	if errors.Is(err, redis.Nil) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return []byte(v), false, nil
}

// CompareAndSwap replaces key's value with b, for ttl (none when ttl <= 0),
// if key holds exactly old, and reports whether it did. A nil b deletes the
// key instead. One round trip.
func (c *Cache) CompareAndSwap(ctx context.Context, key string, old, b []byte, ttl time.Duration) (bool, error) {
	mode := "set"
	if b == nil {
		mode = "del"
	}
	n, err := compareAndSwap.Run(ctx, c.c, []string{c.prefix + key}, old, b, ms(ttl), mode).Int()
	return n == 1, err
}

// ms renders a TTL in whole milliseconds, at least 1 for a positive ttl and
// 0 for none.
func ms(ttl time.Duration) int64 {
	if ttl <= 0 {
		return 0
	}
	return max(ttl.Milliseconds(), 1)
}

// Write-intent markers stack. A marker is the intent prefix, the tokens of
// the writes in progress joined by commas, a "!" once more than one write
// shared it, and a closing quote: "<prefix>T1", "<prefix>T1,T2!". A write
// that begins over another's marker adds its token (beginWrite); one that
// ends takes its own out and deletes the key only when no token is left
// (clearWrite). So the key holds a marker for as long as any write that
// placed one is in progress, and a write may leave its own value in place
// of the marker only if nobody else ever shared it.

// beginWrite places the marker of the write whose own marker is ARGV[1]
// (the prefix ARGV[3], its token, a closing quote) on KEYS[1] for ARGV[2]
// milliseconds, adding its token to a marker already there (unless it is
// there: a retry). A key of another type is deleted first. It returns what
// the key held before, or false.
var beginWrite = redis.NewScript(beginWriteBody + `return old`)

// beginWriteBody is beginWrite without its reply: what the key held is
// left in old.
const beginWriteBody = `
local p = ARGV[3]
local tok = string.sub(ARGV[1], #p + 1, -2)
local t = redis.call('TYPE', KEYS[1])['ok']
local old = false
if t == 'string' then
  old = redis.call('GET', KEYS[1])
elseif t ~= 'none' then
  redis.call('DEL', KEYS[1])
end
local new = ARGV[1]
if old and string.sub(old, 1, #p) == p then
  new = old
  local body = string.sub(old, #p + 1, -2)
  if string.sub(body, -1) == '!' then body = string.sub(body, 1, -2) end
  local here = false
  for x in string.gmatch(body, '[^,]+') do
    if x == tok then here = true end
  end
  if not here then new = p .. body .. ',' .. tok .. '!"' end
end
redis.call('SET', KEYS[1], new, 'PX', ARGV[2])
`

// clearWrite ends the write whose own marker is ARGV[1] (see beginWrite;
// ARGV[2] is the intent prefix): if KEYS[1] holds a marker with its token,
// the token is taken out, and the key is deleted when none is left, or,
// given ARGV[3], set to ARGV[3] for ARGV[4] milliseconds if the marker was
// never shared (the script then returns 2); a marker without its token is
// another write's, and stays; anything else is deleted. Every other key it
// is given is deleted.
var clearWrite = redis.NewScript(`local last = #KEYS` + clearWriteBody + `return ret`)

// clearWriteBody is clearWrite without its reply, which it leaves in ret;
// the related keys are KEYS[2] to KEYS[last].
const clearWriteBody = `
local p = ARGV[2]
local tok = string.sub(ARGV[1], #p + 1, -2)
local ret = 1
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'string' then
  local v = redis.call('GET', KEYS[1])
  if string.sub(v, 1, #p) == p then
    local body = string.sub(v, #p + 1, -2)
    local shared = string.sub(body, -1) == '!'
    if shared then body = string.sub(body, 1, -2) end
    local rest = {}
    local mine = false
    for x in string.gmatch(body, '[^,]+') do
      if x == tok then mine = true else table.insert(rest, x) end
    end
    if mine and #rest > 0 then
      local ttl = redis.call('PTTL', KEYS[1])
      local nv = p .. table.concat(rest, ',') .. '!"'
      if ttl > 0 then redis.call('SET', KEYS[1], nv, 'PX', ttl) elseif ttl == -1 then redis.call('SET', KEYS[1], nv) else redis.call('DEL', KEYS[1]) end
    elseif mine and not shared and ARGV[3] and ARGV[3] ~= '' then
      redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
      ret = 2
    elseif mine then
      redis.call('DEL', KEYS[1])
    end
  else
    redis.call('DEL', KEYS[1])
  end
elseif t ~= 'none' then
  redis.call('DEL', KEYS[1])
end
for i = 2, last do redis.call('DEL', KEYS[i]) end
`

// invalidate deletes each of KEYS, except that one that holds a write's
// marker (a value that starts with ARGV[1]) keeps it, marked as shared
// (see beginWrite), with its expiry: the writes in progress still end it,
// and none of them leaves its own value in its place.
var invalidate = redis.NewScript(`
local p = ARGV[1]
for i = 1, #KEYS do
  local k = KEYS[i]
  local v = false
  if redis.call('TYPE', k)['ok'] == 'string' then v = redis.call('GET', k) end
  if v and string.sub(v, 1, #p) == p then
    if string.sub(v, -2) ~= '!"' then
      local ttl = redis.call('PTTL', k)
      local nv = string.sub(v, 1, -2) .. '!"'
      if ttl > 0 then redis.call('SET', k, nv, 'PX', ttl) elseif ttl == -1 then redis.call('SET', k, nv) else redis.call('DEL', k) end
    end
  else
    redis.call('DEL', k)
  end
end
return 1`)

// Invalidate deletes keys, except that a key that holds a write's marker
// keeps it, marked as shared (see invalidate): one script on a single
// server, a pipeline of one per key on a cluster.
func (c *Cache) Invalidate(ctx context.Context, keys []string, m Markers) error {
	if len(keys) == 0 {
		return nil
	}
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = c.prefix + k
	}
	if !c.cluster {
		return invalidate.Run(ctx, c.c, full, m.Intent).Err()
	}
	cmds, err := c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range full {
			invalidate.Eval(ctx, p, []string{k}, m.Intent)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return err
		}
	}
	return nil
}

// PlaceWrite places the marker of a write on key for ttl, adding its token
// to a marker already there (see beginWrite), and returns what key held
// before (nil for nothing).
func (c *Cache) PlaceWrite(ctx context.Context, key string, marker []byte, m Markers, ttl time.Duration) ([]byte, error) {
	v, err := beginWrite.Run(ctx, c.c, []string{c.prefix + key}, marker, ms(ttl), m.Intent).Text()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	return []byte(v), err
}

// Markers are the prefixes of what the root package stores besides
// values: write intents and leases.
type Markers struct {
	Intent, Lease string
}

// ClearWrite ends a write to key: it takes its token out of key's marker
// and deletes the key once none is left (see clearWrite), and deletes
// related, in one script run. On a cluster, related must be in key's slot.
func (c *Cache) ClearWrite(ctx context.Context, key string, mine []byte, m Markers, related []string) error {
	keys := make([]string, 0, 1+len(related))
	keys = append(keys, c.prefix+key)
	for _, k := range related {
		keys = append(keys, c.prefix+k)
	}
	return clearWrite.Run(ctx, c.c, keys, mine, m.Intent).Err()
}

// Cluster reports whether the cache talks to a Redis Cluster.
func (c *Cache) Cluster() bool { return c.cluster }

// SideKey returns a key of the library's own about key: in the library's
// namespace, under kind, in key's cluster slot, ending with suffix; ok is
// false if no such key can be named (key's hash tag is malformed).
func (c *Cache) SideKey(kind, key, suffix string) (string, bool) {
	full := c.prefix + key
	tag := full
	if i := strings.IndexByte(full, '{'); i >= 0 {
		if j := strings.IndexByte(full[i+1:], '}'); j > 0 {
			tag = full[i+1 : i+1+j]
		}
	}
	if strings.ContainsAny(tag, "{}") {
		return "", false
	}
	// With a tag in c.prefix, the prefix's tag decides the slot of both.
	return c.prefix + "cacheaside:" + kind + ":{" + tag + "}:" + suffix, true
}

// ClaimRefresh places token as the claim on refreshing key for ttl unless
// one is there, and reports whether it did. A key whose claim cannot be
// named is always claimed.
func (c *Cache) ClaimRefresh(ctx context.Context, key string, token []byte, ttl time.Duration) (bool, error) {
	k, ok := c.SideKey("refresh", key, "")
	if !ok {
		return true, nil
	}
	return c.c.SetNX(ctx, k, token, ttl).Result()
}

// DropRefresh removes the claim on refreshing key if it is still token.
func (c *Cache) DropRefresh(ctx context.Context, key string, token []byte) error {
	k, ok := c.SideKey("refresh", key, "")
	if !ok {
		return nil
	}
	return compareAndSwap.Run(ctx, c.c, []string{k}, token, "", 0, "del").Err()
}

// SetNXMany is SetNX (by the script) for each key, in one pipeline: held[i]
// is nil where vals[i] was placed, and what keys[i] holds otherwise. A key
// whose command failed gets a non-nil errs[i].
func (c *Cache) SetNXMany(ctx context.Context, keys []string, vals [][]byte, ttl time.Duration, leasePrefix string) (held [][]byte, errs []error, err error) {
	cmds, err := c.pipelineScript(ctx, len(keys), func(p redis.Pipeliner, i int) *redis.Cmd {
		return setNX.EvalSha(ctx, p, []string{c.prefix + keys[i]}, vals[i], ms(ttl), leasePrefix)
	}, setNX)
	if err != nil {
		return nil, nil, err
	}
	held, errs = make([][]byte, len(keys)), make([]error, len(keys))
	for i, cmd := range cmds {
		v, err := cmd.Text()
		switch {
		case errors.Is(err, redis.Nil):
		case err != nil:
			errs[i] = err
		default:
			held[i] = []byte(v)
		}
	}
	return held, errs, nil
}

// CompareAndSwapMany is CompareAndSwap for each key (from leases[i] to
// vals[i], for ttls[i]), in one pipeline: ok[i] reports whether keys[i]
// changed, errs[i] what failed.
func (c *Cache) CompareAndSwapMany(ctx context.Context, keys []string, leases, vals [][]byte, ttls []time.Duration) (ok []bool, errs []error, err error) {
	cmds, err := c.pipelineScript(ctx, len(keys), func(p redis.Pipeliner, i int) *redis.Cmd {
		return compareAndSwap.EvalSha(ctx, p, []string{c.prefix + keys[i]}, leases[i], vals[i], ms(ttls[i]), "set")
	}, compareAndSwap)
	if err != nil {
		return nil, nil, err
	}
	ok, errs = make([]bool, len(keys)), make([]error, len(keys))
	for i, cmd := range cmds {
		n, err := cmd.Int()
		ok[i], errs[i] = n == 1, err
	}
	return ok, errs, nil
}

// pipelineScript sends n EVALSHA commands, built by cmd, in one pipeline.
// The commands the server refused because it did not know their script
// (it restarted, or never saw it) are sent again, once, after the scripts
// are loaded: only those, since the others ran. It fails only when no
// command got an answer.
func (c *Cache) pipelineScript(ctx context.Context, n int, cmd func(p redis.Pipeliner, i int) *redis.Cmd, scripts ...*redis.Script) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, n)
	send := func(idx []int) error {
		_, err := c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range idx {
				cmds[i] = cmd(p, i)
			}
			return nil
		})
		if errors.Is(err, redis.Nil) { // a command's empty reply, not a failure
			err = nil
		}
		return err
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	err := send(all)
	var again []int
	for i, cm := range cmds {
		if cm != nil && cm.Err() != nil && redis.HasErrorPrefix(cm.Err(), "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		for _, sc := range scripts {
			if lerr := sc.Load(ctx, c.c).Err(); lerr != nil {
				return nil, lerr
			}
		}
		err = send(again)
	}
	if err != nil {
		for _, cm := range cmds {
			if cm != nil && (cm.Err() == nil || errors.Is(cm.Err(), redis.Nil)) {
				return cmds, nil
			}
		}
		return nil, err
	}
	return cmds, nil
}
