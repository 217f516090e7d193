"""The Lua scripts of the shared flow timer store (:mod:`plugins.store_redis.timers`), one per batch call.

Every script is given one key, the store's base (``<prefix>:{flows}``), and names the others from
it, all under the one hash tag ``{flows}`` (one Cluster slot). A timer is a hash
``<base>:t:<id>`` (``f`` flow, ``n`` step, ``c`` customer, ``s`` subject, ``d`` due, ``p`` first
due once held, ``x`` fields, ``m`` message id, ``st`` state 0–4 as :class:`~engine.state.timers.TimerState`,
``r`` reason, ``o`` the host firing it, ``a`` when it ended); pending ones are in ``<base>:p:<flow>``
(sorted by due), firing ones in ``<base>:firing``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADOPT",
    "APPLY",
    "CLAIM",
    "FIRING",
    "LOOK",
    "NEXT_DUE",
    "OF_CUSTOMER",
    "RELEASE",
    "RESCHEDULE",
    "SETTLE",
    "TAKE",
]

_COMMON: Final = r"""
local B = KEYS[1]
local SEP = '\31'
local delta = {}
local function cnt(flow, state, n)
  local f = flow .. SEP .. state
  delta[f] = (delta[f] or 0) + n
end
local function flush()
  for f, n in pairs(delta) do
    if n ~= 0 then redis.call('HINCRBY', B .. ':counts', f, n) end
  end
end
local function who(c, s, f) return B .. ':who:' .. c .. SEP .. s .. SEP .. f end
-- a customer's index of timers, kept keep ms past the latest due time it holds (then it expires)
local function index(c, due, id, now, keep)
  local ck = B .. ':cust:' .. c
  redis.call('ZADD', ck, due, id)
  local want = math.floor((tonumber(due) - tonumber(now)) * 1000) + tonumber(keep)
  local ttl = redis.call('PTTL', ck)
  want = math.max(want, tonumber(keep))
  if ttl < want then redis.call('PEXPIRE', ck, want) end
end
local function row(id, tk)
  local h = redis.call('HMGET', tk, 'f', 'n', 'c', 's', 'd', 'x', 'm', 'p')
  return {tonumber(id), h[1], h[2], h[3], h[4], h[5], h[6] or '', h[7] or '', h[8] or ''}
end
"""

APPLY: Final = (
    _COMMON
    + r"""
-- ARGV: now, event id ttl (ms), plans (JSON): per event [id, customer, subject,
--   [[flow, steps | false], ...],
--   [[flow, at, limit, since, keep (ms), expired, [[step, due, fields], ...]], ...]]
-- Answers (JSON) per event [duplicate, cancelled, started, running, limited, scheduled, expired]
-- (an empty list is encoded {}).
local now = ARGV[1]
local evttl = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local plans = cjson.decode(ARGV[4])
local out = {}
for _, p in ipairs(plans) do
  local cust, subj = p[2], p[3]
  if not redis.call('SET', B .. ':ev:' .. p[1], now, 'NX', 'PX', evttl) then
    table.insert(out, {1, 0, {}, {}, {}, 0, 0})
  else
    local cancelled = 0
    for _, c in ipairs(p[4]) do
      local flow, steps = c[1], c[2]
      local wk = who(cust, subj, flow)
      for _, id in ipairs(redis.call('SMEMBERS', wk)) do
        local tk = B .. ':t:' .. id
        local h = redis.call('HMGET', tk, 'st', 'n', 'm')
        -- pending, or taken by a host and not handed to a gateway yet (no message id): the cancel
        -- wins (CLAIM, RELEASE and RESCHEDULE then find it ended, as a SQLite claim would)
        local taken = h[1] == '1' and (not h[3] or h[3] == '')
        if h[1] == '0' or taken then
          local hit = (steps == false)
          if not hit then
            for _, sn in ipairs(steps) do
              if tostring(sn) == h[2] then hit = true break end
            end
          end
          if hit then
            if taken then
              redis.call('ZREM', B .. ':firing', id)
              redis.call('HDEL', tk, 'o')
            else
              redis.call('ZREM', B .. ':p:' .. flow, id)
            end
            redis.call('HSET', tk, 'st', '3', 'r', 'cancelled', 'a', now)
            redis.call('PEXPIRE', tk, keep)
            redis.call('SREM', wk, id)
            cnt(flow, taken and 1 or 0, -1)
            cnt(flow, 3, 1)
            cancelled = cancelled + 1
          end
        end
      end
    end
    local started, running, limited, scheduled, expired = {}, {}, {}, 0, 0
    for _, s in ipairs(p[5]) do
      local flow, at, limit, since, skeep, exp, timers = s[1], s[2], s[3], s[4], s[5], s[6], s[7]
      local wk = who(cust, subj, flow)
      local sk = B .. ':starts:' .. flow .. SEP .. cust
      if redis.call('SCARD', wk) > 0 then
        table.insert(running, flow)
      elseif limit > 0 and redis.call('ZCOUNT', sk, since, '+inf') >= limit then
        table.insert(limited, flow)
      else
        if limit > 0 then
          redis.call('ZADD', sk, at, redis.call('INCR', B .. ':seq'))
          redis.call('PEXPIRE', sk, skeep)
        end
        for _, t in ipairs(timers) do
          local id = redis.call('INCR', B .. ':seq')
          local tk = B .. ':t:' .. id
          redis.call('HSET', tk, 'f', flow, 'n', t[1], 'c', cust, 's', subj, 'd', t[2], 'x', t[3], 'st', '0')
          redis.call('ZADD', B .. ':p:' .. flow, t[2], id)
          redis.call('SADD', wk, id)
          index(cust, t[2], id, now, keep)
        end
        if #timers > 0 then cnt(flow, 0, #timers) end
        redis.call('SADD', B .. ':flows', flow)
        table.insert(started, flow)
        scheduled = scheduled + #timers
        expired = expired + exp
      end
    end
    table.insert(out, {0, cancelled, started, running, limited, scheduled, expired})
  end
end
flush()
return cjson.encode(out)
"""
)

TAKE: Final = (
    _COMMON
    + r"""
-- ARGV: now, limit, host, lease (ms). Moves up to limit due pending timers of flows not paused,
-- earliest first, to firing, owned by host (its lease renewed); answers their rows (JSON: one
-- string parses much faster in the client than a nested array reply).
local now, limit, me = ARGV[1], tonumber(ARGV[2]), ARGV[3]
redis.call('SET', B .. ':host:' .. me, now, 'PX', ARGV[4])
local cand = {}
for _, f in ipairs(redis.call('SMEMBERS', B .. ':flows')) do
  if redis.call('HEXISTS', B .. ':paused', f) == 0 then
    local r = redis.call('ZRANGEBYSCORE', B .. ':p:' .. f, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
    for i = 1, #r, 2 do table.insert(cand, {tonumber(r[i + 1]), tonumber(r[i]), f}) end
  end
end
table.sort(cand, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
local out = {}
for i = 1, math.min(limit, #cand) do
  local id, f = cand[i][2], cand[i][3]
  local tk = B .. ':t:' .. id
  redis.call('ZREM', B .. ':p:' .. f, id)
  redis.call('ZADD', B .. ':firing', now, id)
  redis.call('HSET', tk, 'st', '1', 'o', me)
  cnt(f, 0, -1)
  cnt(f, 1, 1)
  table.insert(out, row(id, tk))
end
flush()
if #out == 0 then return '[]' end
return cjson.encode(out)
"""
)

CLAIM: Final = (
    _COMMON
    + r"""
-- ARGV: host, then (timer id, message id) pairs: each still firing, this host's and without a
-- message id gets it; answers the ids claimed.
local me = ARGV[1]
local out = {}
for i = 2, #ARGV, 2 do
  local tk = B .. ':t:' .. ARGV[i]
  local h = redis.call('HMGET', tk, 'st', 'o', 'm')
  if h[1] == '1' and h[2] == me and (not h[3] or h[3] == '') then
    redis.call('HSET', tk, 'm', ARGV[i + 1])
    table.insert(out, tonumber(ARGV[i]))
  end
end
flush()
return out
"""
)

RELEASE: Final = (
    _COMMON
    + r"""
-- ARGV: host, then timer ids taken and not claimed: pending again.
local me = ARGV[1]
for i = 2, #ARGV do
  local id = ARGV[i]
  local tk = B .. ':t:' .. id
  local h = redis.call('HMGET', tk, 'st', 'o', 'm', 'f', 'd')
  if h[1] == '1' and h[2] == me and (not h[3] or h[3] == '') then
    redis.call('HSET', tk, 'st', '0')
    redis.call('HDEL', tk, 'o')
    redis.call('ZREM', B .. ':firing', id)
    redis.call('ZADD', B .. ':p:' .. h[4], h[5], id)
    cnt(h[4], 1, -1)
    cnt(h[4], 0, 1)
  end
end
flush()
return 0
"""
)

SETTLE: Final = (
    _COMMON
    + r"""
-- ARGV: now, state, keep (ms), host, then (timer id, reason) pairs: each pending, or firing as this
-- host's (not one another host adopted meanwhile), ends in state (its hash kept keep ms for look-ups).
local now, state, keep, me = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  local tk = B .. ':t:' .. id
  local h = redis.call('HMGET', tk, 'st', 'f', 'c', 's', 'o')
  if h[1] == '0' or (h[1] == '1' and h[5] == me) then
    if h[1] == '0' then
      redis.call('ZREM', B .. ':p:' .. h[2], id)
    else
      redis.call('ZREM', B .. ':firing', id)
    end
    redis.call('HSET', tk, 'st', state, 'r', ARGV[i + 1], 'a', now)
    redis.call('PEXPIRE', tk, keep)
    redis.call('SREM', who(h[3], h[4], h[2]), id)
    cnt(h[2], h[1], -1)
    cnt(h[2], state, 1)
  end
end
flush()
return 0
"""
)

RESCHEDULE: Final = (
    _COMMON
    + r"""
-- ARGV: host, now, keep (ms), then (timer id, due, reason) triples: pending, or firing as this
-- host's (not one another host adopted meanwhile) → pending at due, message id forgotten, its
-- first due time kept.
local me, now, keep = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV, 3 do
  local id, due = ARGV[i], ARGV[i + 1]
  local tk = B .. ':t:' .. id
  local h = redis.call('HMGET', tk, 'st', 'f', 'c', 'd', 'p', 'o')
  if h[1] == '0' or (h[1] == '1' and h[6] == me) then
    if h[1] == '1' then
      redis.call('ZREM', B .. ':firing', id)
      cnt(h[2], 1, -1)
      cnt(h[2], 0, 1)
    end
    if not h[5] or h[5] == '' then redis.call('HSET', tk, 'p', h[4]) end
    redis.call('HSET', tk, 'st', '0', 'd', due, 'r', ARGV[i + 2], 'm', '')
    redis.call('HDEL', tk, 'o')
    redis.call('ZADD', B .. ':p:' .. h[2], due, id)
    index(h[3], due, id, now, keep)
  end
end
flush()
return 0
"""
)

FIRING: Final = (
    _COMMON
    + r"""
-- ARGV: host, after, limit: the host's firing timers by id past after.
local me, after, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = {}
for _, id in ipairs(redis.call('ZRANGE', B .. ':firing', 0, -1)) do
  local n = tonumber(id)
  if n > after and redis.call('HGET', B .. ':t:' .. id, 'o') == me then table.insert(ids, n) end
end
table.sort(ids)
local out = {}
for i = 1, math.min(limit, #ids) do table.insert(out, row(ids[i], B .. ':t:' .. ids[i])) end
flush()
if #out == 0 then return '[]' end
return cjson.encode(out)
"""
)

ADOPT: Final = (
    _COMMON
    + r"""
-- ARGV: now, host, keep (ms), limit. Firing timers of other hosts whose lease ran out: without a
-- message id (never handed to a gateway) pending again; with one ended fired,
-- 'unknown:fired_by_dead_host' (it may have gone: never sent again blind). Answers {again, unknown}.
local now, me, keep, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local alive = {}
local again, unknown = 0, 0
for _, id in ipairs(redis.call('ZRANGE', B .. ':firing', 0, -1)) do
  local tk = B .. ':t:' .. id
  local h = redis.call('HMGET', tk, 'o', 'm', 'f', 'c', 's', 'd', 'st')
  if not h[1] or h[7] ~= '1' then
    redis.call('ZREM', B .. ':firing', id)
  elseif h[1] ~= me then
    if alive[h[1]] == nil then alive[h[1]] = redis.call('EXISTS', B .. ':host:' .. h[1]) == 1 end
    if not alive[h[1]] then
      redis.call('ZREM', B .. ':firing', id)
      redis.call('HDEL', tk, 'o')
      cnt(h[3], 1, -1)
      if not h[2] or h[2] == '' then
        redis.call('HSET', tk, 'st', '0')
        redis.call('ZADD', B .. ':p:' .. h[3], h[6], id)
        cnt(h[3], 0, 1)
        again = again + 1
      else
        redis.call('HSET', tk, 'st', '2', 'r', 'unknown:fired_by_dead_host', 'a', now)
        redis.call('PEXPIRE', tk, keep)
        redis.call('SREM', who(h[4], h[5], h[3]), id)
        cnt(h[3], 2, 1)
        unknown = unknown + 1
      end
      if again + unknown >= limit then break end
    end
  end
end
flush()
return {again, unknown}
"""
)

NEXT_DUE: Final = (
    _COMMON
    + r"""
-- The earliest due time of a pending timer of a flow not paused ('' if none).
local best = nil
for _, f in ipairs(redis.call('SMEMBERS', B .. ':flows')) do
  if redis.call('HEXISTS', B .. ':paused', f) == 0 then
    local r = redis.call('ZRANGE', B .. ':p:' .. f, 0, 0, 'WITHSCORES')
    if r[2] and (best == nil or tonumber(r[2]) < tonumber(best)) then best = r[2] end
  end
end
flush()
return best or ''
"""
)

LOOK: Final = (
    _COMMON
    + r"""
-- ARGV: now. Answers {pending, late}: all flows' pending timers, and those already due.
local pending, late = 0, 0
for _, f in ipairs(redis.call('SMEMBERS', B .. ':flows')) do
  pending = pending + redis.call('ZCARD', B .. ':p:' .. f)
  late = late + redis.call('ZCOUNT', B .. ':p:' .. f, '-inf', ARGV[1])
end
flush()
return {pending, late}
"""
)

OF_CUSTOMER: Final = (
    _COMMON
    + r"""
-- ARGV: customer, limit. The customer's timers, the latest due first (forgotten ones dropped from
-- the customer's index).
local ck = B .. ':cust:' .. ARGV[1]
local limit = tonumber(ARGV[2])
local out = {}
for _, id in ipairs(redis.call('ZREVRANGE', ck, 0, limit * 2)) do
  local h = redis.call('HMGET', B .. ':t:' .. id, 'f', 'n', 's', 'd', 'st', 'm', 'r')
  if not h[1] then
    redis.call('ZREM', ck, id)
  elseif #out < limit then
    table.insert(out, {tonumber(id), h[1], h[2], h[3], h[4], h[5], h[6] or '', h[7] or ''})
  end
end
flush()
return out
"""
)
