"""The Lua scripts the Redis coordinator runs: each touches keys of one hash tag (one Cluster slot).

Time is the server's (``TIME``): every worker, whatever its own clock, is measured by one clock.
Scripts run atomically, so a step (take a lease and grow its fence, book a request, claim a
request's recipients) is never seen half done by another worker.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CLAIM", "GCRA", "LEASE_RELEASE", "LEASE_RENEW", "LEASE_TAKE", "RELEASE_CLAIMS"]

LEASE_TAKE: Final = """
-- KEYS[1] lease hash, KEYS[2] fence counter; ARGV token, owner, host, pid, ttl_ms
local cur = redis.call('HMGET', KEYS[1], 'owner', 'host', 'pid', 'started', 'ttl')
if cur[1] then
  return {0, cur[1], cur[2], cur[3], cur[4], cur[5], redis.call('PTTL', KEYS[1])}
end
local fence = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'owner', ARGV[2], 'host', ARGV[3], 'pid', ARGV[4],
  'started', t[1] .. '.' .. string.format('%06d', tonumber(t[2])), 'ttl', ARGV[5], 'fence', fence)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, fence}
"""
"""Take the lease if free: ``{1, fence}``; else ``{0, owner, host, pid, started, ttl_ms, pttl}``."""

LEASE_RENEW: Final = """
-- KEYS[1] lease hash; ARGV token, ttl_ms
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
"""Extend the lease if it is still this token's: 1, else 0 (lost: expired or taken over)."""

LEASE_RELEASE: Final = """
-- KEYS[1] lease hash; ARGV token
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
"""Delete the lease if it is still this token's: 1, else 0 (the fence counter stays)."""

GCRA: Final = """
-- KEYS[1] the budget's theoretical arrival time (µs, server clock)
-- ARGV interval_us (per part), tolerance_us (burst), parts
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[3]) * interval
local wait = new_tat - tolerance - now
if wait > 0 then
  return math.ceil(wait)
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"""
"""Book ``parts`` (0) or, when over, book nothing and return the µs to wait: GCRA charged per request."""

CLAIM: Final = """
-- KEYS[1] the campaign's claims hash (recipient -> worker); ARGV worker, ttl_ms, recipients...
local owner = ARGV[1]
local out = {}
for i = 3, #ARGV do
  if redis.call('HSETNX', KEYS[1], ARGV[i], owner) == 1 then
    out[#out + 1] = 1
  elseif redis.call('HGET', KEYS[1], ARGV[i]) == owner then
    out[#out + 1] = 2
  else
    out[#out + 1] = 0
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return out
"""
"""Claim a whole request's recipients at once: per recipient 1 (new), 2 (this worker's), 0 (another's)."""

RELEASE_CLAIMS: Final = """
-- KEYS[1] the campaign's claims hash; ARGV worker, recipients...
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
"""
"""Give back this worker's claims on recipients whose request never left: how many."""
