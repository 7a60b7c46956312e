-- floodgate's sync script: where `user`'s stream was when a node's subscriber had read the log
-- through a given entry. The node's memory then matches Redis from that point of the log on,
-- because everything after it reaches the node through the log in order.
--
-- KEYS: the user's meta hash (`epoch`, `seq`) and index (a stream: entry `<first seq>-0` per
--       batch with events of the user, field `b` the log entry id).
-- ARGV: the last log entry id the subscriber has read ("0-0" for none), the epoch a stream
--       that does not exist yet starts with (16 hex digits).
-- Returns: the stream's epoch and its last seq as of that entry, then (as of now) the last seq
-- that needs an ack and the highest seq a client acked (0: none).
-- (`seq` as of the entry: the node gets everything after it from the log.)
local meta, index = KEYS[1], KEYS[2]
local position, new_epoch = ARGV[1], ARGV[2]

-- Stream ids are `<ms>-<n>`, both below 2^53 in practice (Lua numbers are doubles).
local function parse(id)
  local ms, n = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(n)
end
local pms, pn = parse(position)
local function after_position(id)
  local ms, n = parse(id)
  return ms > pms or (ms == pms and n > pn)
end

redis.call('HSETNX', meta, 'epoch', new_epoch)
local epoch = redis.call('HGET', meta, 'epoch')
local seq = tonumber(redis.call('HGET', meta, 'seq') or '0')
-- The index's newest entries whose batch the subscriber has not read yet: the stream stood
-- just before the first of them. (Few: the subscriber is at most a moment behind.)
local upto = '+'
while true do
  local entries = redis.call('XREVRANGE', index, upto, '-', 'COUNT', 64)
  local done = #entries < 64
  for _, e in ipairs(entries) do
    if not after_position(e[2][2]) then
      done = true
      break
    end
    seq = parse(e[1]) - 1
  end
  if done then
    break
  end
  upto = '(' .. entries[#entries][1]
end
local need, acked = unpack(redis.call('HMGET', meta, 'need', 'acked'))
return {epoch, seq, tonumber(need or '0'), tonumber(acked or '0')}
