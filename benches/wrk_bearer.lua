-- wrk script for benches/load.sh and benches/profile.sh.
--
-- Sends `Authorization: Bearer <token>` round-robin over the first TG_WRK_TOKENS (default 1024) lines of
-- TG_TOKENS_FILE. The requests are formatted once per thread in init(), so request() costs wrk almost
-- nothing and wrk (one thread, its own core) is never the bottleneck. Without TG_TOKENS_FILE it sends
-- plain GETs. done() prints one machine-readable RESULT line that load.sh parses.

local reqs = {}
local n = 0
local idx = 0

function init(args)
   local path = os.getenv("TG_TOKENS_FILE")
   local max = tonumber(os.getenv("TG_WRK_TOKENS") or "1024")
   if path and path ~= "" then
      for line in io.lines(path) do
         if n >= max then break end
         if #line > 0 then
            n = n + 1
            wrk.headers["Authorization"] = "Bearer " .. line
            reqs[n] = wrk.format()
         end
      end
   end
   if n == 0 then
      n = 1
      reqs[1] = wrk.format()
   end
end

function request()
   idx = idx % n + 1
   return reqs[idx]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d connect_err=%d read_err=%d write_err=%d status_err=%d timeouts=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
      e.connect, e.read, e.write, e.status, e.timeout))
end
