-- One endpoint class of bench/mixed_bench.py, paced to a fixed schedule (open loop).
--
--   MIXED_OUT=out.txt wrk -tN -cN -d<s> -s bench/lua/mixed.lua http://host:port -- data
--
-- Thread i reads data-i.lua: its slice of the class's requests (items i, i + N, ...).
--
-- Every wrk thread owns exactly one connection, so delay() -> request() -> response() run
-- strictly in turn and each response belongs to the request just sent. Thread i of N sends
-- its k-th request at t0 + (i + k * N) / rate (CLOCK_MONOTONIC, read through LuaJIT's ffi,
-- shared by every wrk process of a run). Latency is measured from that scheduled time, or
-- from the actual send when the timer fired early: a slow answer delays the thread's next
-- request, and that wait is counted (coordinated omission corrected as wrk2 does).
-- wrk's own histogram (done()) measures from the actual send: the service time.
--
-- A data file returns {rate=, threads=, t0=, seconds=, count=, tokens={...}, items={...}}, each
-- item {kind, method, path, token index or nil, body or nil}. Class "booking" answers every
-- 201 with a PATCH that cancels the new appointment (the id is read from the body), class
-- "auth" every signed-in 200 with a refresh of the new refresh token, as the next request
-- of the same schedule.
--
-- Each answer is written as `kind status latency_us due_us service_us retry_after lag_us`:
-- latency from the scheduled time, due time from t0, service time from the actual send,
-- 1 when the answer carried a Retry-After header, and the load generator's own lag: how
-- much later than both its schedule and the previous answer on its connection the request
-- left (the thread's timer fired late: wrk waiting for a core, not the server). The same
-- wait for a core delays reading each answer, so it is counted in every latency too.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } mixed_timespec;
int clock_gettime(int clk_id, mixed_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local clock = ffi.new("mixed_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

-- Main state: number the threads and keep them for done().
local threads = {}

function setup(thread)
  thread:set("index", #threads)
  threads[#threads + 1] = thread
end

-- Thread state. `rows` is global so done() can read it with thread:get().
local cfg, raw, auth, step_us, t0_us
local k, m = 0, 0
local prepared, kind, scheduled, sent, idle
local free_at = 0 -- when the previous answer on this thread's connection was read
local cancel_id, cancel_auth, refresh_token
rows = {}

function init(args)
  cfg = dofile(args[1] .. "-" .. index .. ".lua")
  step_us = 1000000 / cfg.rate
  t0_us = cfg.t0 * 1000000
  auth = {}
  for i, token in ipairs(cfg.tokens) do
    auth[i] = "Bearer " .. token
  end
  idle = wrk.format("GET", "/health/live")
  raw = {}
  for i, item in ipairs(cfg.items) do
    local headers = { Authorization = auth[item[4]] }
    if item[5] then
      headers["Content-Type"] = "application/json"
    end
    raw[i] = wrk.format(item[2], item[3], headers, item[5])
  end
end

local function next_item()
  local i = m % #raw + 1
  m = m + 1
  return i
end

function delay()
  local j = index + k * cfg.threads
  scheduled = t0_us + j * step_us
  k = k + 1
  if j >= cfg.count then
    -- The schedule is over. Until wrk stops, ask for /health/live every 2 s (not
    -- recorded): an idle connection is closed by uvicorn after 5 s, which wrk counts as a
    -- read error although every request was answered.
    kind = "idle"
    prepared = idle
    return 2000
  end
  if cancel_id then
    kind = "cancel"
    prepared = wrk.format("PATCH", "/api/appointments/" .. cancel_id, {
      Authorization = cancel_auth,
      ["Content-Type"] = "application/json",
    }, '{"status":"cancelled"}')
    cancel_id = nil
  elseif refresh_token then
    kind = "refresh"
    prepared = wrk.format("POST", "/api/auth/refresh", {
      ["Content-Type"] = "application/json",
    }, '{"refresh_token":"' .. refresh_token .. '"}')
    refresh_token = nil
  else
    local i = next_item()
    kind = cfg.items[i][1]
    prepared = raw[i]
    cancel_auth = auth[cfg.items[i][4]]
  end
  local wait_ms = (scheduled - now_us()) / 1000
  if wait_ms <= 0 then
    return 0
  end
  return math.floor(wait_ms)
end

function request()
  if not prepared then
    -- wrk calls request() once to check the script, before any delay(): send nothing real.
    return wrk.format("GET", "/health/live")
  end
  sent = now_us()
  return prepared
end

function response(status, headers, body)
  local finished = now_us()
  if not sent or kind == "idle" then
    sent = nil
    free_at = finished
    return
  end
  local start = scheduled < sent and scheduled or sent
  local ready = scheduled > free_at and scheduled or free_at
  local lag = sent > ready and sent - ready or 0
  free_at = finished
  -- A refusal must say when to come back: 1 when it carries Retry-After.
  local retry = (headers["retry-after"] or headers["Retry-After"]) and 1 or 0
  rows[#rows + 1] = string.format("%s %d %.1f %.0f %.1f %d %.1f", kind, status,
    finished - start, scheduled - t0_us, finished - sent, retry, lag)
  if kind == "book" and status == 201 then
    cancel_id = string.match(body, '"id":%s*(%d+)')
  elseif kind == "sign-in" and status == 200 then
    refresh_token = string.match(body, '"refresh_token":%s*"([^"]+)"')
  end
  sent = nil
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("MIXED_OUT"), "w"))
  local e = summary.errors
  out:write(string.format("summary %d %d %d %d %d %d %d\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  for _, p in ipairs({ 50, 90, 95, 99, 99.9 }) do
    out:write(string.format("wrk %g %d\n", p, latency:percentile(p)))
  end
  out:write(string.format("wrk 100 %d\n", latency.max))
  for _, thread in ipairs(threads) do
    for _, row in ipairs(thread:get("rows")) do
      out:write(row, "\n")
    end
  end
  out:close()
end
