"""The Lua scripts the Redis store runs: every change of a binding is one of them, atomic in Redis.

Keys (``PREFIX`` is ``sipproxy:``; see ``redis_store.py`` for the layout):

- ``UPDATE``: one REGISTER's change to one address-of-record, compare-and-set
  per contact: each contact put or removed names the ``expires_at`` it had
  in the node's view ("" for none). Another node changed one of them first:
  nothing is written, and the reply is what the AOR holds now (a state).
  Otherwise the contacts are written, the AOR gets the next change number
  (the reply: an integer), its earliest expiry goes into the expiry set, and
  the change is published on the change feed.
- ``REAP``: removes bindings whose ``expires_at`` has passed, found through
  the expiry set, re-checked against the stored value (a binding refreshed
  in between has a later one and stays): nodes never delete each other's
  fresh contacts. Each AOR reaped is published like an update, with
  ``expired`` events.
- ``LOAD``: one page of a full load (``SCAN`` over the AOR keys): every AOR
  of the page as one JSON state, so that a node reads 100,000 bindings in a
  few hundred round trips and one ``json.loads`` per page.

A state, as published and replied, is JSON built by concatenation (values
are stored as ASCII JSON, so no Lua JSON library re-encodes their floats)::

    {"ok":true,"n":NODE,"s":SEQ,"a":AOR,"e":[[KIND,REASON,BINDING],...],"b":[BINDING,...]}

``BINDING`` is the stored value (``redis_codec.encode``), whose first
element is ``expires_at``, the one field the scripts read.
"""

from __future__ import annotations

__all__ = ["LOAD", "READ", "REAP", "UPDATE"]

_COMMON = r"""
local function expiry(value)
  return tonumber(string.match(value, '^%[([^,]+),'))
end
-- Write the AOR's change number and earliest expiry (or delete it when empty);
-- return its bindings' values.
local function settle(h, zset, seq)
  local flat = redis.call('HGETALL', h)
  local values, earliest = {}, nil
  for i = 1, #flat, 2 do
    if flat[i] ~= '' then
      local v = flat[i + 1]
      values[#values + 1] = v
      local at = expiry(v)
      if earliest == nil or at < earliest then earliest = at end
    end
  end
  if earliest == nil then
    redis.call('DEL', h)
    redis.call('ZREM', zset, h)
  else
    redis.call('HSET', h, '', seq)
    redis.call('ZADD', zset, earliest, h)
  end
  return values
end
local function state(ok, node, seq, aor, events, values)
  return '{"ok":' .. ok .. ',"n":' .. node .. ',"s":' .. seq .. ',"a":' .. aor .. ',"e":' .. events
    .. ',"b":[' .. table.concat(values, ',') .. ']}'
end
-- The stored value's expiry as written, or '' when there is none or it has passed.
local function live_token(h, contact, now)
  local old = redis.call('HGET', h, contact)
  if not old then return '' end
  local token = string.match(old, '^%[([^,]+),')
  if tonumber(token) <= now then return '' end
  return token
end
local function current(h)
  local flat = redis.call('HGETALL', h)
  local values, seq = {}, 0
  for i = 1, #flat, 2 do
    if flat[i] == '' then seq = tonumber(flat[i + 1]) else values[#values + 1] = flat[i + 1] end
  end
  return seq, values
end
"""

UPDATE = (
    _COMMON
    + r"""
-- KEYS: the AOR's hash, the expiry set, the change counter.
-- ARGV: channel, node (JSON), aor (JSON), events (JSON), now, number of puts,
--       then per put: contact, value, expected expiry; then per removal: contact, expected expiry.
-- A contact put must hold what the node saw ('' for nothing live); one removed must hold
-- that or nothing live (a binding already gone is removed all the same).
local h, zset = KEYS[1], KEYS[2]
local now = tonumber(ARGV[5])
local puts = tonumber(ARGV[6])
local refused = false
local i = 7
for _ = 1, puts do
  if live_token(h, ARGV[i], now) ~= ARGV[i + 2] then refused = true end
  i = i + 3
end
while i <= #ARGV do
  local token = live_token(h, ARGV[i], now)
  if token ~= '' and token ~= ARGV[i + 1] then refused = true end
  i = i + 2
end
if refused then
  local seq, values = current(h)
  return state('false', ARGV[2], seq, ARGV[3], '[]', values)
end
i = 7
for _ = 1, puts do
  redis.call('HSET', h, ARGV[i], ARGV[i + 1])
  i = i + 3
end
while i <= #ARGV do
  redis.call('HDEL', h, ARGV[i])
  i = i + 2
end
local seq = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[1], state('true', ARGV[2], seq, ARGV[3], ARGV[4], settle(h, zset, seq)))
return seq
"""
)

REAP = (
    _COMMON
    + r"""
-- KEYS: the expiry set, the change counter.
-- ARGV: channel, node (JSON), now, most AORs to reap, key prefix of the AOR hashes.
local zset = KEYS[1]
local due = redis.call('ZRANGEBYSCORE', zset, '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
local now = tonumber(ARGV[3])
local reaped = 0
for _, h in ipairs(due) do
  local flat = redis.call('HGETALL', h)
  local events = {}
  for i = 1, #flat, 2 do
    if flat[i] ~= '' and expiry(flat[i + 1]) <= now then
      redis.call('HDEL', h, flat[i])
      events[#events + 1] = '["expired","expired",' .. flat[i + 1] .. ']'
    end
  end
  if #events > 0 then
    local seq = redis.call('INCR', KEYS[2])
    local aor = cjson.encode(string.sub(h, #ARGV[5] + 1))
    local values = settle(h, zset, seq)
    redis.call('PUBLISH', ARGV[1], state('true', ARGV[2], seq, aor, '[' .. table.concat(events, ',') .. ']', values))
    reaped = reaped + #events
  else
    settle(h, zset, tonumber(redis.call('HGET', h, '') or '0'))
  end
end
return reaped
"""
)

LOAD = (
    _COMMON
    + r"""
-- ARGV: SCAN cursor, key pattern, page size.  Returns {next cursor, '[state,...]'}.
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', tonumber(ARGV[3]))
local states = {}
for _, h in ipairs(page[2]) do
  local seq, values = current(h)
  if #values > 0 then
    states[#states + 1] = '{"s":' .. seq .. ',"b":[' .. table.concat(values, ',') .. ']}'
  end
end
return {page[1], '[' .. table.concat(states, ',') .. ']'}
"""
)

READ = (
    _COMMON
    + r"""
-- KEYS: the AOR's hash.  ARGV: node (JSON), aor (JSON).  What the AOR holds, as a state without events.
local seq, values = current(KEYS[1])
return state('true', ARGV[1], seq, ARGV[2], '[]', values)
"""
)
