-- wrk script: POST batch bodies (Amplitude /batch, Segment /v1/batch), every event its own id.
--
--   wrk -t2 -c64 -d8s --latency -s bench/batch.lua URL -- TEMPLATE_FILE [AUTHORIZATION]
--
-- TEMPLATE_FILE (written by bench/batch_ingest.py) holds one JSON body in which the marker "@R@"
-- stands in every event id (insert_id / messageId; the user ids carry it too). Each request replaces
-- every marker with "<thread>-<request number in that thread>", and each event id also ends in the
-- event's own index in the body, so within a run no two events share an id: duplicates are impossible
-- by construction (the benchmark also reads the server's duplicate counter). AUTHORIZATION, when
-- given, is sent as the Authorization header (Segment's HTTP Basic write key).
--
-- At the end one line "WRKJSON {...}" carries the figures for the benchmark to read, in the shape of
-- bench/webhooks.lua ("repeats" and "warmups" are always 0 here: no request is ever sent twice).

local next_id = 0
local MARKER = "@R@"

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
end

function init(args)
   local file = assert(io.open(args[1], "rb"))
   template = file:read("*a")
   file:close()
   headers = { ["Content-Type"] = "application/json" }
   if args[2] and args[2] ~= "" then
      headers["Authorization"] = args[2]
   end
   sent = 0
end

function request()
   sent = sent + 1
   local body = template:gsub(MARKER, tid .. "-" .. sent)
   return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests": %d, "duration_us": %d, "repeats": 0, "warmups": 0, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p99.9": %d, "max": %d, "mean": %.1f}}\n',
      summary.requests, summary.duration,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean))
end
