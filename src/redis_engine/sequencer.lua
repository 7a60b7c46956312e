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
-- Retention: the log keeps at most `max_bytes` of messages and nothing older than `max_age`
-- (by the entry id's time, Redis's clock), trimmed from its oldest end as each batch is
-- appended (never the batch just appended), at most 64 entries per run so one run stays
-- short; a user's index keeps about its last `keep_index` entries and expires `max_age` after
-- its last batch (its entries point into the log, which no longer has those batches then).
--
-- KEYS: the node's key, the log (a stream: one entry per batch, field `m` the message, field
--       `v` the id of the entry before it, so a reader can tell it missed none, field `g` the
--       log's generation), the log's last id (a string), the log's generation (a string, set
--       when the log starts: a reader that finds another one knows the log it read is gone,
--       even where the new log's ids are not past its position), the log's size (a string:
--       the bytes of the messages it holds), the log's entries' sizes (a list, oldest first:
--       "<id> <bytes>" per entry), then per user of the batch, in order of first
--       appearance, its meta hash (`epoch`, `seq`; `need`: the last seq that needs an ack;
--       `acked`: the highest seq a client acked in this epoch) and its index (a stream: entry
--       `<first seq>-0` per batch, field `b` the log entry id).
-- ARGV: the log's bytes to keep at most, index entries to keep, the epoch a new stream starts
--       with (16 hex digits), the batch's number, how long the node's key lives (s), the
--       number of entries, the entries section (wire.rs), the users: per user u8 length, the
--       id, u32 its number of events (acks not counted), u32 the number (from 1) of the last
--       of them that needs an ack (0: none), u64 the highest seq a client acked in the batch
--       (0: none) and that ack's epoch (16 hex digits); the generation a new log starts with
--       (16 hex digits); the node's id (16 hex digits, field `n` of the entry, so a node
--       knows its own batches); the log's age to keep at most (ms).
-- Returns: per user, the seq of its first event in the batch (0: only acks) and its epoch.
local node, log, last_id, generation = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local size_key, sizes_key = KEYS[5], KEYS[6]
local max_bytes, keep_index = tonumber(ARGV[1]), ARGV[2]
local new_epoch, batch, node_ttl = ARGV[3], ARGV[4], ARGV[5]
local n_events, events, users_blob, new_generation = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local node_id, max_age_ms = ARGV[10], tonumber(ARGV[11])
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
  local count, needing, acked = struct.unpack('<I4I4I8', users_blob, at + 1 + len)
  local ack_epoch = string.sub(users_blob, at + 1 + len + 16, at + len + 32)
  at = at + 1 + len + 32
  local meta = KEYS[5 + 2 * i]
  local first, epoch = 0, '0000000000000000'
  -- Few calls per user (each costs more than the work it asks for): the stream's epoch and
  -- ack together, its seq moved on, then one write of what changed.
  local state = redis.call('HMGET', meta, 'epoch', 'acked')
  local stream_epoch, changes = state[1], {}
  if count > 0 then
    local top = redis.call('HINCRBY', meta, 'seq', count)
    if not stream_epoch then
      -- A new stream (a sync may have given it its epoch already).
      stream_epoch = new_epoch
      changes[#changes + 1] = 'epoch'
      changes[#changes + 1] = new_epoch
    end
    epoch = stream_epoch
    first = top - count + 1
    if needing > 0 then
      -- The stream's last event that needs an ack: a node that never received it can tell
      -- from `need` > `acked` that it must read unacked events from Redis.
      changes[#changes + 1] = 'need'
      changes[#changes + 1] = first + needing - 1
    end
  end
  if acked > 0 and stream_epoch == ack_epoch and acked > tonumber(state[2] or '0') then
    changes[#changes + 1] = 'acked'
    changes[#changes + 1] = acked
  end
  if #changes > 0 then
    redis.call('HSET', meta, unpack(changes))
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
  redis.call('SET', size_key, 0)
  redis.call('DEL', sizes_key)
end
local id = redis.call('XADD', log, '*', 'm', message, 'v', prev, 'g', gen, 'n', node_id)
redis.call('SET', last_id, id)
local size = redis.call('INCRBY', size_key, #message)

-- Trimming: the oldest entries while the log is over its bytes or they are over its age. Their
-- ids and sizes are in a list beside the log, so the loop never reads a message.
redis.call('RPUSH', sizes_key, id .. ' ' .. #message)
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - max_age_ms
local removed, first_kept = 0, nil
while removed < 64 do
  local head = redis.call('LINDEX', sizes_key, 0)
  if not head then
    break
  end
  local oldest, ms, bytes = string.match(head, '^((%d+)-%d+) (%d+)$')
  if oldest == id or (size <= max_bytes and tonumber(ms) >= cutoff) then
    first_kept = oldest
    break
  end
  redis.call('LPOP', sizes_key)
  size = size - tonumber(bytes)
  removed = removed + 1
end
if removed > 0 then
  -- Up to the first entry kept (or, after 64, the next one the list names).
  first_kept = first_kept or string.match(redis.call('LINDEX', sizes_key, 0), '^(%S+)')
  redis.call('XTRIM', log, 'MINID', first_kept)
  redis.call('SET', size_key, size)
end

for u = 1, i do
  if firsts[u] > 0 then
    local index = KEYS[6 + 2 * u]
    redis.call('XADD', index, 'MAXLEN', '~', keep_index, firsts[u] .. '-0', 'b', id)
    redis.call('PEXPIRE', index, max_age_ms)
  end
end
redis.call('HSET', node, 'batch', batch, 'answer', cmsgpack.pack(out))
redis.call('EXPIRE', node, node_ttl)
return out
