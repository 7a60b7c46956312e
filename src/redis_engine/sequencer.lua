-- floodgate's sequencing script: gives each event of a batch the next `seq` of its user's
-- stream, appends it to the user's Redis stream, and publishes the whole batch as one message
-- (format: src/redis_engine/wire.rs). Redis runs a script alone, so every node's batches get
-- their seqs, and are published, in one order: subscribers see each user's events in `seq`
-- order with no gap.
--
-- KEYS: per event, its user's meta hash (`epoch`, `seq`) and its stream.
-- ARGV: channel, stream length to keep, the epoch a new stream starts with (16 hex digits),
--       then per event: user, ts (8 bytes LE), flags (1 byte), body.
-- Returns: per event, its seq and its epoch.
local channel = ARGV[1]
local keep = ARGV[2]
local new_epoch = ARGV[3]
local n = (#ARGV - 3) / 4
local parts = { struct.pack('<BI2', 1, n) }
local out = {}
for i = 1, n do
  local meta, log = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 3 + 4 * (i - 1)
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
return out
