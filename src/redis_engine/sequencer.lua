-- floodgate's sequencing script: gives each event of a batch the next `seq` of its user's
-- stream and appends the batch to the log as one message (format: src/redis_engine/wire.rs).
-- Redis runs a script alone, so every node's batches get their seqs, and enter the log, in one
-- order: every node reads the log and sees each user's events in `seq` order with no gap.
--
-- The work here is per batch and per user of the batch, none per event: the message lists each
-- user with the seq of its first event in the batch, and the events section is the node's
-- bytes unchanged (each event names its user by number; its seq is its user's next).
--
-- Exactly once: a node submits one batch at a time, numbered. The node's key keeps the number
-- and the answer of its last batch that ran; the same batch submitted again (its first answer
-- was lost with a connection) gets that answer and runs no second time.
--
-- KEYS: the node's key, the log (a stream: one entry per batch, field `m` the message, field
--       `v` the id of the entry before it, so a reader can tell it missed none, field `g` the
--       log's generation), the log's last id (a string), the log's generation (a string, set
--       when the log starts: a reader that finds another one knows the log it read is gone,
--       even where the new log's ids are not past its position), then per user of the batch,
--       in order of first appearance, its meta hash (`epoch`, `seq`) and its index (a stream:
--       entry `<first seq>-0` per batch, field `b` the log entry id).
-- ARGV: log entries to keep, index entries to keep, the epoch a new stream starts with (16
--       hex digits), the batch's number, how long the node's key lives (s), the number of
--       entries, the entries section (wire.rs), the users: per user u8 length, the id, u32
--       its number of events (acks not counted); the generation a new log starts with (16
--       hex digits); the node's id (16 hex digits, field `n` of the entry, so a node knows
--       its own batches).
-- Returns: per user, the seq of its first event in the batch (0: only acks) and its epoch.
local node, log, last_id, generation = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local keep_log, keep_index = ARGV[1], ARGV[2]
local new_epoch, batch, node_ttl = ARGV[3], ARGV[4], ARGV[5]
local n_events, events, users_blob, new_generation = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local node_id = ARGV[10]
local last = redis.call('HMGET', node, 'batch', 'answer')
if last[1] == batch then
  return cmsgpack.unpack(last[2])
end
local header = {}
local out = {}
local firsts = {}
local at, i = 1, 0
while at <= #users_blob do
  i = i + 1
  local len = string.byte(users_blob, at)
  local user = string.sub(users_blob, at + 1, at + len)
  local count = struct.unpack('<I4', users_blob, at + 1 + len)
  at = at + 1 + len + 4
  local meta = KEYS[3 + 2 * i]
  local first, epoch = 0, '0000000000000000'
  if count > 0 then
    local top = redis.call('HINCRBY', meta, 'seq', count)
    if top == count then
      redis.call('HSETNX', meta, 'epoch', new_epoch)
    end
    epoch = redis.call('HGET', meta, 'epoch')
    first = top - count + 1
  end
  -- A user with only acks in the batch: no seq, no position, no index entry.
  firsts[i] = first
  header[i] = struct.pack('<B', len) .. user .. epoch .. struct.pack('<I8', first)
  out[#out + 1] = first
  out[#out + 1] = epoch
end
local message = struct.pack('<BI2', 3, i) .. table.concat(header)
  .. struct.pack('<I2', n_events) .. events
local prev = redis.call('GET', last_id) or '0-0'
local gen = redis.call('GET', generation)
if not gen then
  gen = new_generation
  redis.call('SET', generation, gen)
end
local id = redis.call('XADD', log, 'MAXLEN', '~', keep_log, '*', 'm', message, 'v', prev, 'g', gen,
  'n', node_id)
redis.call('SET', last_id, id)
for u = 1, i do
  if firsts[u] > 0 then
    redis.call('XADD', KEYS[4 + 2 * u], 'MAXLEN', '~', keep_index, firsts[u] .. '-0', 'b', id)
  end
end
redis.call('HSET', node, 'batch', batch, 'answer', cmsgpack.pack(out))
redis.call('EXPIRE', node, node_ttl)
return out
