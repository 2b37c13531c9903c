-- wrk script: POST pre-signed Customer.io webhooks, every request its own event.
--
--   wrk -t2 -c64 -d8s --latency -s bench/webhooks.lua URL -- REQUESTS_FILE THREADS [RATE CONNECTIONS]
--
-- REQUESTS_FILE (written by bench/webhook_ingest.py) holds one request per line:
-- "<X-CIO-Timestamp>\t<X-CIO-Signature>\t<JSON body>". Thread k of THREADS takes lines k, k+THREADS, ...
-- so no two threads send the same event; a thread that runs out starts its share again and counts
-- those requests as repeats (the server answers them 200 "duplicate" without inserting).
--
-- RATE > 0 paces the run at RATE requests/s in all: each thread keeps a schedule of send slots
-- THREADS/RATE seconds apart and `delay()` holds every request until its slot (clock_gettime through
-- LuaJIT's ffi). A slot already past is not made up later, so a server that cannot keep up shows as an
-- achieved rate below RATE. wrk sends the first request of every connection without asking `delay()`;
-- so that CONNECTIONS requests do not land at once, those first requests are a GET of /healthz
-- ("warm-ups", counted apart). wrk's latency runs from the moment a request is written.
--
-- At the end one line "WRKJSON {...}" carries the figures for the benchmark to read.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } loopwire_timespec;
int clock_gettime(int clock_id, loopwire_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local clock = ffi.new("loopwire_timespec")

local function now_ms()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
   return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   local count = tonumber(args[2])
   local rate = tonumber(args[3] or "0")
   local connections = tonumber(args[4] or "0")
   queue = {}
   local line_no = 0
   for line in io.lines(path) do
      if line_no % count == tid then
         local ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
         queue[#queue + 1] = wrk.format("POST", nil, {
            ["Content-Type"] = "application/json",
            ["X-CIO-Timestamp"] = ts,
            ["X-CIO-Signature"] = sig,
         }, body)
      end
      line_no = line_no + 1
   end
   index = 0
   sent = 0
   share = #queue
   warmups = 0
   warmups_left = 0
   if rate > 0 then
      warmups_left = math.floor(connections / count)
      warmup_request = wrk.format("GET", "/healthz", {}, nil)
      local interval = count * 1000 / rate
      local slot = now_ms()
      delay = function()
         local now = now_ms()
         slot = slot + interval
         if slot < now then
            slot = now
         end
         return math.floor(slot - now + 0.5)
      end
   end
end

function request()
   if warmups_left > 0 then
      warmups_left = warmups_left - 1
      warmups = warmups + 1
      return warmup_request
   end
   index = index + 1
   if index > share then
      index = 1
   end
   sent = sent + 1
   return queue[index]
end

function done(summary, latency, requests)
   local repeats = 0
   local warm = 0
   for _, thread in ipairs(threads) do
      local over = thread:get("sent") - thread:get("share")
      if over > 0 then
         repeats = repeats + over
      end
      warm = warm + thread:get("warmups")
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests": %d, "duration_us": %d, "repeats": %d, "warmups": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p99.9": %d, "max": %d, "mean": %.1f}}\n',
      summary.requests, summary.duration, repeats, warm,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean))
end
