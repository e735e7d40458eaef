-- The shared budget's renewal (budget.rs): KEYS leases; ARGV lease ttl
-- (ms), then lease ids. Pushes each live lease's expiry a TTL out and
-- returns the ids that had already expired (their server renewed too late).
-- Redis before 5 must be told to replicate effects (TIME then writes).
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return lost
