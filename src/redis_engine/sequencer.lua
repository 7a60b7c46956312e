-- floodgate's sequencing script: gives each event of a batch the next `seq` of its user's
-- stream, appends it to the user's Redis stream, and publishes the whole batch as one message
-- (format: src/redis_engine/wire.rs). Redis runs a script alone, so every node's batches get
-- their seqs, and are published, in one order: subscribers see each user's events in `seq`
-- order with no gap.
--
-- Exactly once: a node submits one batch at a time, numbered. The node's key keeps the number
-- and the answer of its last batch that ran; the same batch submitted again (its first
-- answer was lost with a connection) gets that answer and runs no second time.
--
-- KEYS: the node's key, then per event its user's meta hash (`epoch`, `seq`) and its stream.
-- ARGV: channel, stream length to keep, the epoch a new stream starts with (16 hex digits),
--       the batch's number, how long the node's key lives (s), then per event: user, ts
--       (8 bytes LE), flags (1 byte), body.
-- Returns: per event, its seq and its epoch.
local node = KEYS[1]
local channel, keep, new_epoch = ARGV[1], ARGV[2], ARGV[3]
local batch, node_ttl = ARGV[4], ARGV[5]
local last = redis.call('HMGET', node, 'batch', 'answer')
if last[1] == batch then
  return cmsgpack.unpack(last[2])
end
local n = (#ARGV - 5) / 4
local parts = { struct.pack('<BI2', 1, n) }
local out = {}
for i = 1, n do
  local meta, log = KEYS[2 * i], KEYS[2 * i + 1]
  local a = 5 + 4 * (i - 1)
  local user, ts, flags, body = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  redis.call('HSETNX', meta, 'epoch', new_epoch)
  local epoch = redis.call('HGET', meta, 'epoch')
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  redis.call('XADD', log, 'MAXLEN', '~', keep, seq .. '-0', 't', ts, 'f', flags, 'b', body)
  parts[#parts + 1] = struct.pack('<B', #user) .. user .. epoch .. struct.pack('<I8', seq)
    .. ts .. flags .. struct.pack('<I4', #body) .. body
  out[#out + 1] = seq
  out[#out + 1] = epoch
end
redis.call('PUBLISH', channel, table.concat(parts))
redis.call('HSET', node, 'batch', batch, 'answer', cmsgpack.pack(out))
redis.call('EXPIRE', node, node_ttl)
return out
