-- The shared budget's acquire (budget.rs): KEYS leases, queue, tickets,
-- seq; ARGV limit, lease ttl (ms), then this server's tickets, oldest first.
-- Queues the tickets not yet queued (refreshing every one's expiry) and
-- turns into a lease each of ours that stands within the first `free`
-- places of the shared queue. Returns the ids granted. Time is Redis'.
-- Redis before 5 must be told to replicate effects (TIME then writes).
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(dead) do redis.call('ZREM', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local mine = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  mine[id] = true
  if not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), id)
  end
  redis.call('ZADD', KEYS[3], now + ttl, id)
end
local granted = {}
local free = limit - redis.call('ZCARD', KEYS[1])
if free > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, free - 1)) do
    if mine[id] then
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZREM', KEYS[3], id)
      redis.call('ZADD', KEYS[1], now + ttl, id)
      granted[#granted + 1] = id
    end
  end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl * 2) end
return granted
