#!/usr/bin/env bash
# Upstream pools on loopback:
#   throughput  one tokengate (threads = 1), bearer routes: /one (`upstream`: one nginx), /two (`upstreams`:
#               two servers that are two ports of that nginx, round robin: what the pool costs the gateway)
#               and /procs (two nginx processes: what two upstream processes taking turns on one core add).
#               ROUNDS interleaved rounds of DURATION s with wrk -c$CONNS each; paired ratios to /one per
#               round (target for /two: within 3 %).
#   failover    /fo over two single-process nginx upstreams; wrk -c$CONNS loads it for 6 s and one upstream
#               is killed with -9 after 2 s: requests failed (non-2xx and socket errors, from wrk). Beside
#               it, one keep-alive client sends requests back to back and times each: the worst request
#               after the kill (the one that met the refused connect and was diverted) against its p50.
#
# Usage: benches/pools.sh      (ROUNDS=5 DURATION=10)      ROUNDS=2 DURATION=3 benches/pools.sh (quick)
# Knobs: CONNS (32), SERVER_CPU (0), WRK_CPU (1), BASE_PORT (22080), WRITE_MD=0.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
BASE_PORT=${BASE_PORT:-22080}
WRITE_MD=${WRITE_MD:-1}
need_tool nginx nginx-light
need_tool wrk wrk
need_tool curl curl
need_tool python3 python3
need_tool bc bc

bench_init
RUN="$BENCH_DIR/pools-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"
log "work directory: $RUN"
MACHINE=$(machine_line)
build_release

# upstream NAME PORT: an nginx answering 200 "ok" (one process, so that kill -9 takes it down whole).
# upstream NAME PORT [PORT2]: with PORT2, the same process listens on a second port too.
upstream() {
    mkdir -p "$RUN/$1"
    cat >"$RUN/$1/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
pid $RUN/$1/nginx.pid;
error_log $RUN/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$2 reuseport;${3:+ listen 127.0.0.1:$3 reuseport;} location / { return 200 "ok\n"; } }
}
CONF
    spawn "$RUN/$1.log" $(pin "$SERVER_CPU") nginx -p "$RUN/$1" -c "$RUN/$1/nginx.conf" -e "$RUN/$1/error.log"
    wait_http "http://127.0.0.1:$2/" 10 "$SPAWNED" || die "upstream $1 did not start"
}
P1=$((BASE_PORT + 1)) P2=$((BASE_PORT + 2)) F1=$((BASE_PORT + 3)) F2=$((BASE_PORT + 4)) P3=$((BASE_PORT + 5))
upstream u1 "$P1" "$P3"
upstream u2 "$P2"
upstream f1 "$F1"
F1_PID=$SPAWNED
upstream f2 "$F2"

GW=$((BASE_PORT + 10))
cat >"$RUN/gw.toml" <<CONF
[gateway]
listen = "127.0.0.1:$GW"
threads = 1
[store]
path = "$RUN/tokens.db"
[admin]
listen = "127.0.0.1:$((GW + 1))"
[log]
access = "off"
[[routes]]
name = "one"
path_prefix = "/one"
upstream = "127.0.0.1:$P1"
[[routes]]
name = "two"
path_prefix = "/two"
upstreams = ["127.0.0.1:$P1", "127.0.0.1:$P3"]
[[routes]]
name = "procs"
path_prefix = "/procs"
upstreams = ["127.0.0.1:$P1", "127.0.0.1:$P2"]
[[routes]]
name = "fo"
path_prefix = "/fo"
upstreams = ["127.0.0.1:$F1", "127.0.0.1:$F2"]
CONF
TOKEN=$("$TG_BIN" token create -c "$RUN/gw.toml" --user bench --label pools 2>/dev/null)
RUST_LOG=warn spawn "$RUN/gw.log" $(pin "$SERVER_CPU") "$TG_BIN" serve -c "$RUN/gw.toml"
wait_http "http://127.0.0.1:$((GW + 1))/healthz" 30 "$SPAWNED" || die "tokengate did not start"
echo "$TOKEN" >"$RUN/token.txt"

run_wrk() { # NAME PATH SECONDS
    TG_TOKENS_FILE="$RUN/token.txt" $(pin "$WRK_CPU") wrk -t1 -c"$CONNS" -d"$3s" --timeout 2s \
        -s "$REPO/benches/wrk_bearer.lua" "http://127.0.0.1:$GW$2" >"$RUN/wrk-$1.last" 2>&1 || die "wrk failed: $1"
    grep '^RESULT' "$RUN/wrk-$1.last"
}
get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }

# ---- throughput ------------------------------------------------------------------------------------------
for p in /one/x /two/x /procs/x; do run_wrk warm "$p" 2 >/dev/null; done
RESULTS="$RUN/results.tsv"
printf 'round\tcontender\trps\tp99_us\terrors\n' >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    order=(one two procs)
    [ $((round % 2)) = 0 ] && order=(procs two one)
    for c in "${order[@]}"; do
        line=$(run_wrk "$c" "/$c/x" "$DURATION")
        errors=$(($(get status_err "$line") + $(get connect_err "$line") + $(get read_err "$line") + $(get timeouts "$line")))
        printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$(get rps "$line")" "$(get p99_us "$line")" "$errors" >>"$RESULTS"
        log "round $round $c: $(get rps "$line") req/s, p99 $(get p99_us "$line") µs, errors $errors"
    done
done
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v c="$1" -v k="$2" 'NR > 1 && $2 == c { print $k }' "$RESULTS"; }
ratio_to_one() {
    awk -F'\t' -v c="$1" 'NR > 1 && $2 == "one" { o[$1] = $3 } NR > 1 && $2 == c { t[$1] = $3 }
        END { for (r in o) if (o[r] > 0) print t[r] / o[r] }' "$RESULTS" | median
}
paired=$(ratio_to_one two)
procs=$(ratio_to_one procs)

# ---- failover ----------------------------------------------------------------------------------------------
log "failover: wrk -c$CONNS for 6 s on /fo, server 1 killed after 2 s"
TG_TOKENS_FILE="$RUN/token.txt" $(pin "$WRK_CPU") wrk -t1 -c"$CONNS" -d6s --timeout 2s \
    -s "$REPO/benches/wrk_bearer.lua" "http://127.0.0.1:$GW/fo/x" >"$RUN/wrk-failover.log" 2>&1 &
WRK_PID=$!
python3 - "$GW" "$TOKEN" "$F1_PID" >"$RUN/probe.out" <<'PY'
import http.client, os, signal, sys, time
port, token, victim = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
before, after, failed = [], [], 0
t0 = time.monotonic()
killed = None
while time.monotonic() - t0 < 6:
    if killed is None and time.monotonic() - t0 > 2:
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
    s = time.monotonic()
    try:
        conn.request("GET", "/fo/x", headers={"Authorization": "Bearer " + token})
        r = conn.getresponse(); r.read()
        ok = r.status == 200
    except Exception:
        ok = False
        conn.close(); conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    d = (time.monotonic() - s) * 1e6
    if not ok:
        failed += 1
    (after if killed else before).append(d)
before.sort()
p50 = before[len(before) // 2]
worst = max(after[:2000])  # the requests right after the kill
print(f"probe_requests={len(before) + len(after)} probe_failed={failed} p50_us={p50:.0f} worst_after_kill_us={worst:.0f}")
PY
wait "$WRK_PID" || true
total=$(awk '/requests in/ { print $1 }' "$RUN/wrk-failover.log")
non2xx=$(awk '/Non-2xx/ { print $NF }' "$RUN/wrk-failover.log")
sockerr=$(awk -F'[ ,]+' '/Socket errors/ { print $4 + $6 + $8 + $10 }' "$RUN/wrk-failover.log")
PROBE=$(cat "$RUN/probe.out")
log "failover: wrk $total requests, ${non2xx:-0} non-2xx, ${sockerr:-0} socket errors; probe: $PROBE"
pget() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$PROBE"; }

TABLE="$RUN/table.md"
{
    echo "| contender | median req/s | best round | p99 ms (median) | errors |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for c in one two procs; do
        case $c in
            one) desc='`upstream`: one server (nginx)' ;;
            two) desc='`upstreams`: two servers (two ports of one nginx), round robin' ;;
            procs) desc='`upstreams`: two servers (two nginx processes on the one server core), round robin' ;;
        esac
        printf '| %s | %.0f | %.0f | %.2f | %d |\n' "$desc" \
            "$(col $c 3 | median)" "$(col $c 3 | sort -g | tail -1)" "$(echo "$(col $c 4 | median) / 1000" | bc -l)" \
            "$(col $c 5 | paste -sd+ | bc)"
    done
    echo
    echo "- two servers / one, per round (paired): **$(printf '%.3f' "$paired")**" \
        "(target ≥ 0.97: $([ "$(echo "$paired >= 0.97" | bc -l)" = 1 ] && echo met || echo NOT met));" \
        "two nginx processes / one: $(printf '%.3f' "$procs") (the upstreams' own cost: two processes taking turns" \
        "on one core)"
    echo "- failover, one of two servers killed with -9 under wrk -c$CONNS: **$(( ${non2xx:-0} + ${sockerr:-0} )) failed**" \
        "of $total requests (non-2xx ${non2xx:-0}, socket errors ${sockerr:-0});" \
        "a sequential keep-alive client beside it: $(pget probe_failed) failed of $(pget probe_requests)," \
        "p50 $(pget p50_us) µs, worst request after the kill $(pget worst_after_kill_us) µs (the divert: refused" \
        "connect, server out of rotation, request sent to the other)"
} >"$TABLE"
cat "$TABLE"

if [ "$WRITE_MD" = 1 ]; then
    SECTION="$RUN/section.md"
    {
        echo "### Upstream pools — $(date -u +%Y-%m-%d)"
        echo
        echo "Machine: $MACHINE."
        echo
        echo "tokengate threads = 1 and the nginx upstreams (return 200, single process) on CPU $SERVER_CPU, wrk" \
            "-t1 -c$CONNS on CPU $WRK_CPU; ROUNDS=$ROUNDS × ${DURATION}s, alternating order (benches/pools.sh)."
        echo
        cat "$TABLE"
    } >"$SECTION"
    replace_section "$REPO/BENCHMARKS.md" pools "$SECTION"
    log "BENCHMARKS.md: pools section updated"
fi
