"""The Lua scripts the Redis coordinator runs: each touches keys of one hash tag (one Cluster slot).

Time is the server's (``TIME``): every worker, whatever its own clock, is measured by one clock.
Scripts run atomically, so a step (take a lease and grow its fence, book a request, claim a
request's recipients) is never seen half done by another worker.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CAP_REFUND",
    "CAP_RESERVE",
    "CHECK",
    "CLAIM",
    "GCRA",
    "LEASE_RELEASE",
    "LEASE_RENEW",
    "LEASE_TAKE",
    "OPTOUT_BUCKETS",
    "OPTOUT_CHECK",
    "OPTOUT_UPLOAD",
    "PUBLISH_RANGES",
    "RELEASE_CLAIMS",
    "RENEW_RANGE",
]

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
-- KEYS[2] (optional) the budget's slow-down: f (share of the rate), at (µs), climb (share per µs)
-- ARGV interval_us (per part), tolerance_us (burst), parts
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
if KEYS[2] then
  local slow = redis.call('HMGET', KEYS[2], 'f', 'at', 'climb')
  if slow[1] then
    local f = tonumber(slow[1]) + (now - tonumber(slow[2])) * tonumber(slow[3])
    if f < 1 then
      interval = interval / f
      tolerance = tolerance / f
    end
  end
end
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

SLOW_DOWN: Final = """
-- KEYS[1] the budget's slow-down hash (same hash tag as the budget)
-- ARGV factor, floor, climb (share of the rate per µs), hold_us
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local climb = tonumber(ARGV[3])
local f = 1
local slow = redis.call('HMGET', KEYS[1], 'f', 'at', 'climb')
if slow[1] then
  local since = now - tonumber(slow[2])
  f = tonumber(slow[1]) + since * tonumber(slow[3])
  if f > 1 then f = 1 end
  if since < tonumber(ARGV[4]) then
    return string.format('%.6f', -f)
  end
end
f = f * tonumber(ARGV[1])
if f < tonumber(ARGV[2]) then f = tonumber(ARGV[2]) end
redis.call('HSET', KEYS[1], 'f', string.format('%.6f', f), 'at', string.format('%.0f', now), 'climb', ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil((1 - f) / climb / 1000) + 1000)
return string.format('%.6f', f)
"""
"""The receiver said "too fast": cut the budget's rate to ``factor`` of what it is now (not below
``floor``), at most once per ``hold_us`` (the answers to requests sent before a cut come after it),
then let it climb back by ``climb`` of the rate per µs: the share of the rate now, as text,
negative when held (not cut by this call)."""

OPTOUT_BUCKETS: Final = 100_000
"""The shared opt-outs' buckets: a number key is split at its last five digits — ``13800138000``
is the member ``138001`` of the set ``<base>:38000`` — so members are integers and Redis keeps
each bucket as a compact intset (4 bytes a member for Chinese mobiles, whose prefix fits 32 bits)
while it holds up to ``set-max-intset-entries`` (512) members: ~100 a bucket at 10M numbers.
Splitting the decimal text (not ``k % 65536``) keeps the check to two ``string.sub`` in Lua."""

_SHARED_LUA: Final = """
local function in_shared(base, r)
  if #r <= 5 then return false end
  return redis.call('SISMEMBER', base .. ':' .. string.sub(r, -5), string.sub(r, 1, -6)) == 1
end
"""
"""``in_shared(base, r)``: whether the number key ``r`` is in the shared opt-outs under ``base``
(its bucket's set; a recipient that is not a number key never is: its prefix is no integer, which
an intset cannot hold)."""

_CAPS_LUA: Final = """local owner = ARGV[1]
local adopt = ARGV[3]
local recipients, tags = {}, {}
for r in string.gmatch(ARGV[4], '[^\\31]+') do recipients[#recipients + 1] = r end
if ARGV[5] ~= '' then
  for t in string.gmatch(ARGV[5], '[^\\31]+') do tags[#tags + 1] = t end
end
local verdicts = nil
if ARGV[6] == 'v' then verdicts = ARGV[7] end
local now = nil
if not verdicts then now = tonumber(ARGV[6] or '') end
local caps, texts, same = {}, {}, 0
if now then
  same = tonumber(ARGV[7])
  if same > 0 then
    for h in string.gmatch(ARGV[8], '[^\\31]+') do texts[#texts + 1] = h end
  end
  local j = 9
  while ARGV[j] do
    caps[#caps + 1] = {ARGV[j], tonumber(ARGV[j + 1]), ARGV[j + 2], ARGV[j + 3]}
    j = j + 4
  end
end
local function held(r, i)
  if same > 0 and redis.call('EXISTS', capbase .. ':' .. r .. ':text:' .. texts[i]) == 1 then
    return '6'
  end
  for _, w in ipairs(caps) do
    local key = capbase .. ':' .. r .. ':' .. w[3]
    if w[1] == 'd' then
      if tonumber(redis.call('GET', key) or '0') >= w[2] then return '5' end
    else
      redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.0f', now - tonumber(w[4])))
      if redis.call('ZCARD', key) >= w[2] then return '5' end
    end
  end
  return nil
end
local function count(r, i, member)
  if same > 0 then
    redis.call('SET', capbase .. ':' .. r .. ':text:' .. texts[i], '1', 'PX', same)
  end
  for _, w in ipairs(caps) do
    local key = capbase .. ':' .. r .. ':' .. w[3]
    if w[1] == 'd' then
      redis.call('INCR', key)
      redis.call('PEXPIREAT', key, w[4])
    else
      redis.call('ZADD', key, string.format('%.0f', now), member)
      redis.call('PEXPIRE', key, w[4])
    end
  end
end
"""
"""The claim and check scripts' common part: their arguments parsed, a recipient's caps checked
(``held``) and counted (``count``) under ``capbase`` (standalone Redis)."""

CLAIM: Final = (
    """
-- KEYS[1] the campaign's claims hash (recipient -> worker[|tag]), KEYS[2] its opt-out set,
-- KEYS[3] the base of the opt-out buckets every campaign shares (KEYS[2] again on a Cluster, where
--   OPTOUT_CHECK ran before, or for a transactional campaign: not checked),
-- KEYS[4] (with caps) the base of the kind's cap counters: <base>:<recipient>:<window bucket>
-- ARGV owner, ttl_ms, adopt, recipients and tags each joined by \\x1f (tags may be ''),
--   ['v', one verdict per recipient of CAP_RESERVE (a Cluster): '1' free, '5' capped, '6' same
--    content — used only for recipients nobody claimed yet] or
--   [now_ms, same-content window ms (0: none), text hashes joined by \\x1f (one per recipient),
--    then per cap window: 'd' (calendar day) or 'r' (rolling), limit, bucket,
--    expire-at ms (day) or period ms (rolling)]
local capbase = KEYS[4]
local shared = nil
if KEYS[3] ~= KEYS[2] then shared = KEYS[3] end
"""
    + _CAPS_LUA
    + _SHARED_LUA
    + """
local out = {}
for i = 1, #recipients do
  local r = recipients[i]
  local v = owner
  if tags[i] then v = owner .. '|' .. tags[i] end
  local why = nil
  if redis.call('SISMEMBER', KEYS[2], r) == 1 or (shared and in_shared(shared, r)) then
    why = '4'
  elseif now and redis.call('HEXISTS', KEYS[1], r) == 0 then
    why = held(r, i)
  elseif verdicts then
    local c = string.sub(verdicts, i, i)
    if c ~= '1' and redis.call('HEXISTS', KEYS[1], r) == 0 then why = c end
  end
  if why then
    out[i] = why
  elseif redis.call('HSETNX', KEYS[1], r, v) == 1 then
    if now then count(r, i, string.sub(redis.sha1hex(KEYS[1] .. '|' .. v), 1, 16)) end
    out[i] = '1'
  else
    local cur = redis.call('HGET', KEYS[1], r)
    if cur == v then
      out[i] = '2'
    elseif adopt ~= '' and (cur == adopt or (tags[i] and cur == adopt .. '|' .. tags[i])) then
      redis.call('HSET', KEYS[1], r, v)
      out[i] = '3'
    else
      out[i] = '0'
    end
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return table.concat(out)
"""
)
"""Claim a whole request's recipients at once: one digit per recipient, 1 (new), 2 (this worker's, same
tag), 3 (adopted from the dead worker ``adopt``: its claim under the same tag — the same row — or
untagged), 0 (another's, or this worker's or the dead one's under another tag: the same number on
another row, which that row's record settles), 4 (opted out since the campaign started: in its opt-
out set or the one every campaign shares; not claimed), 5 (capped: a recipient nobody claimed yet
whose count in a cap window already reached the limit; not claimed, not counted), 6 (the same text —
its hash — went to the recipient within the same-content window; not claimed). A new claim also
records its text's hash for the window (``SET … PX``). Every new claim (1) adds one to each cap
window's count in the same step — a calendar day's counter (``INCR``, dropped at the next local
midnight) or a rolling period's sorted set of send times (trimmed to the period before each check;
each member the first 16 hex digits of the SHA-1 of the campaign's claims key and the claim, short
enough for Redis's compact listpack encoding: ~80 bytes a number against ~1 KB with the claim
written out) — so two workers can never both take a number's last place. A claim asked again (2) or
adopted (3) counts nothing more: its first claim counted it. Recipients and tags travel as one
argument each (one string to pack and parse, not hundreds).

The cap counters are the kind's (``marketing``, ``transactional``), shared by every campaign, so
they carry the kind's hash tag, not the campaign's: this one script touches two tags, which a
standalone Redis (or Valkey) runs. On a Redis Cluster the caps are checked and counted first by
:data:`CAP_RESERVE` on the kind's slots, and this script is given its verdicts (``'v'``): a
recipient nobody claimed yet that a verdict holds back answers 5 or 6, every other is claimed as
without caps (a claim of this worker's or the dead one's stands whatever the verdict)."""

_CLUSTER_CAPS_HEAD = """
local base = KEYS[1]
local who = ARGV[1] .. '|' .. ARGV[2]
local recipients, tags, texts, caps = {}, {}, {}, {}
for r in string.gmatch(ARGV[3], '[^\\31]+') do recipients[#recipients + 1] = r end
if ARGV[4] ~= '' then
  for t in string.gmatch(ARGV[4], '[^\\31]+') do tags[#tags + 1] = t end
end
local now = tonumber(ARGV[5])
local same = tonumber(ARGV[6])
if same > 0 then
  for h in string.gmatch(ARGV[7], '[^\\31]+') do texts[#texts + 1] = h end
end
local j = 9
while ARGV[j] do
  caps[#caps + 1] = {ARGV[j], tonumber(ARGV[j + 1]), ARGV[j + 2], ARGV[j + 3]}
  j = j + 4
end
local function member(i)
  local v = who
  if tags[i] then v = who .. '|' .. tags[i] end
  return string.sub(redis.sha1hex(v), 1, 16)
end
"""

CAP_RESERVE: Final = (
    """
-- KEYS[1] the base of one shard of the kind's cap counters: <base>:<recipient>:<window bucket>
-- ARGV the campaign's claims key, owner, recipients and tags each joined by \\x1f (tags may be ''),
--   now_ms, same-content window ms (0: none), text hashes joined by \\x1f (one per recipient, or ''),
--   '' (unused), then per cap window: 'd' (calendar day) or 'r' (rolling), limit, bucket,
--   expire-at ms (day) or period ms (rolling)"""
    + _CLUSTER_CAPS_HEAD
    + """
local out = {}
for i = 1, #recipients do
  local r = recipients[i]
  local m = member(i)
  local why = nil
  local tkey = nil
  if same > 0 then
    tkey = base .. ':' .. r .. ':text:' .. texts[i]
    local cur = redis.call('GET', tkey)
    if cur and cur ~= m then why = -6 end
  end
  if not why then
    for _, w in ipairs(caps) do
      local key = base .. ':' .. r .. ':' .. w[3]
      if w[1] == 'd' then
        if redis.call('HEXISTS', key, m) == 0 and redis.call('HLEN', key) >= w[2] then why = -5 break end
      else
        redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.0f', now - tonumber(w[4])))
        if not redis.call('ZSCORE', key, m) and redis.call('ZCARD', key) >= w[2] then why = -5 break end
      end
    end
  end
  if why then
    out[i] = why
  else
    local mask, bit = 0, 1
    if same > 0 and redis.call('SET', tkey, m, 'PX', same, 'NX') then mask = 1 end
    for _, w in ipairs(caps) do
      bit = bit * 2
      local key = base .. ':' .. r .. ':' .. w[3]
      if w[1] == 'd' then
        if redis.call('HSETNX', key, m, '1') == 1 then
          redis.call('PEXPIREAT', key, w[4])
          mask = mask + bit
        end
      elseif redis.call('ZADD', key, 'NX', string.format('%.0f', now), m) == 1 then
        redis.call('PEXPIRE', key, w[4])
        mask = mask + bit
      end
    end
    out[i] = mask
  end
end
return out
"""
)
"""Check and count a request's recipients against the kind's caps on one Cluster slot (the first
step of a claim with caps on a Cluster, before :data:`CLAIM` on the campaign's slot). Each count
is a *reservation* named by the claim it is for (``member``: 16 hex digits of the SHA-1 of the
campaign's claims key, the worker and the row, as the standalone script's rolling members): a
calendar day is a hash of them (its count ``HLEN``), a rolling period a sorted set, a text's key
holds it as its value. One integer per recipient: -5 (a window is full of others' reservations),
-6 (another claim sent the same text within the window), else a bit mask of what this call newly
counted (bit 0 the text, bit k the k-th window; 0: every count was already this claim's — a retry
after a lost answer or a failed claim counts nothing twice)."""

CAP_REFUND: Final = (
    """
-- KEYS[1] the base of one shard of the kind's cap counters
-- ARGV as CAP_RESERVE's, but ARGV[8]: one bit mask per recipient joined by \\x1f (what to give back)"""
    + _CLUSTER_CAPS_HEAD
    + """
local masks = {}
for x in string.gmatch(ARGV[8], '[^\\31]+') do masks[#masks + 1] = tonumber(x) end
local n = 0
for i = 1, #recipients do
  local r = recipients[i]
  local m = member(i)
  local mask = masks[i]
  if same > 0 and mask % 2 == 1 then
    local tkey = base .. ':' .. r .. ':text:' .. texts[i]
    if redis.call('GET', tkey) == m then n = n + redis.call('DEL', tkey) end
  end
  local bit = 1
  for _, w in ipairs(caps) do
    bit = bit * 2
    if math.floor(mask / bit) % 2 == 1 then
      local key = base .. ':' .. r .. ':' .. w[3]
      if w[1] == 'd' then
        n = n + redis.call('HDEL', key, m)
      else
        n = n + redis.call('ZREM', key, m)
      end
    end
  end
end
return n
"""
)
"""Give back reservations of :data:`CAP_RESERVE` whose claim did not follow (the third step on a
Cluster): per recipient the bit mask of the counts to remove (this claim's member only): how many
were removed."""

CHECK: Final = (
    """
-- No claim kept (an API message: the same number may get many): opt-outs, caps and windows only.
-- KEYS[1] the stream's own opt-out set, KEYS[2] the base of the opt-out buckets every campaign
-- shares (KEYS[1] again on a Cluster), KEYS[3] (with caps) the base of the kind's cap counters
-- ARGV owner, opt-outs checked ('1') or not ('0'), '', recipients and tags joined by \\x1f,
--   [caps as CLAIM's]
local capbase = KEYS[3]
local shared = nil
if KEYS[2] ~= KEYS[1] then shared = KEYS[2] end
"""
    + _CAPS_LUA
    + _SHARED_LUA
    + """
local optouts = ARGV[2] == '1'
local out = {}
for i = 1, #recipients do
  local r = recipients[i]
  local why = nil
  if optouts and (redis.call('SISMEMBER', KEYS[1], r) == 1 or (shared and in_shared(shared, r))) then
    why = '4'
  elseif now then
    why = held(r, i)
  end
  if why then
    out[i] = why
  else
    local member = redis.sha1hex(KEYS[1] .. '|' .. owner .. '|' .. (tags[i] or ''))
    if now then count(r, i, string.sub(member, 1, 16)) end
    out[i] = '1'
  end
end
return table.concat(out)
"""
)
"""Check one request of messages that keep no claim (``pigeon serve``'s API messages: a number may get
many): one digit per recipient, 4 (opted out: in the stream's or the shared opt-out set, when asked),
5 (capped), 6 (same content) or 1 (may go: counted in every cap window and its text recorded, as a
new claim of :data:`CLAIM` is). The rolling windows' members hash the stream, the worker and the
message's row, so two messages to one number count twice."""

OPTOUT_CHECK: Final = (
    """
-- KEYS[1] the base of one shard of the shared opt-out buckets (a Cluster: one hash tag)
-- ARGV recipients joined by \\x1f"""
    + _SHARED_LUA
    + """
local out = {}
for r in string.gmatch(ARGV[1], '[^\\31]+') do
  if in_shared(KEYS[1], r) then out[#out + 1] = '4' else out[#out + 1] = '1' end
end
return table.concat(out)
"""
)
"""On a Cluster, before the claim (or the API's check): which of a request's recipients in one
shard of the shared opt-outs are in it: one digit per recipient, 4 (opted out) or 1."""

OPTOUT_UPLOAD: Final = """
-- KEYS[1] the base of the shared opt-out buckets (on a Cluster: one shard's)
-- ARGV[1] one line per number, sorted by bucket: its bucket (its last five digits), spaces, its
--   member (its other digits)
local n, cur, ms = 0, nil, {}
local function flush()
  for j = 1, #ms, 4000 do
    n = n + redis.call('SADD', KEYS[1] .. ':' .. cur, unpack(ms, j, math.min(j + 3999, #ms)))
  end
  ms = {}
end
for b, m in string.gmatch(ARGV[1], '(%d+) +(%d+)') do
  if b ~= cur then
    if cur then flush() end
    cur = b
  end
  ms[#ms + 1] = m
end
if cur then flush() end
return n
"""
"""Add one batch of opt-outs to the shared buckets, sorted by bucket (one ``SADD`` per bucket, not
per number; one argument, cheap to pack): how many were new. Idempotent: a batch sent again adds
nothing."""

RELEASE_CLAIMS: Final = """
-- KEYS[1] the campaign's claims hash; ARGV worker, recipients...
local n = 0
local mine = ARGV[1] .. '|'
for i = 2, #ARGV do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and (cur == ARGV[1] or string.sub(cur, 1, #mine) == mine) then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
"""
"""Give back this worker's claims on recipients whose request never left: how many."""

PUBLISH_RANGES: Final = """
-- KEYS[1] the campaign's ranges stream, KEYS[2] its published marker; ARGV group, meta, ranges...
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'r', ARGV[i])
end
redis.call('SET', KEYS[2], ARGV[2])
return #ARGV - 2
"""
"""Publish a campaign's ranges once (the stream, its consumer group and the marker, at once): how
many, or 0 when another worker published them first."""

RENEW_RANGE: Final = """
-- KEYS[1] the campaign's ranges stream, KEYS[2] its progress hash (range index -> 'row|byte')
-- ARGV group, worker, entry id[, range index, next row, its first byte]
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
if ARGV[4] then
  local cur = redis.call('HGET', KEYS[2], ARGV[4])
  if not cur or tonumber(string.match(cur, '^(%d+)|')) < tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[2], ARGV[4], ARGV[5] .. '|' .. ARGV[6])
  end
end
return 1
"""
"""Reset a range's idle time if this worker still holds it: 1, else 0 (another reclaimed it, or done).
With a row: record it as where the range resumes (its rows before are settled in the holder's
ledger) — only forward, and only by the range's holder."""
