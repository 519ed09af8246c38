#!/usr/bin/env bash
# Capacity: what holding many tokens costs the gateway.
#
#   1. For each size in SIZES (default 1000 100000 1000000 tokens): start `tokengate serve` on a seeded
#      database and measure the start-up time (exec until /healthz answers, polled every 10 ms), the index
#      load time the gateway logs, and VmRSS from /proc once /healthz answers (and again 2 s later).
#   2. With the largest size and sqlite3 installed: every token given its own rate limit and quota, the
#      same VmRSS (+2 s) measured again: what limits cost per idle token.
#   3. Revocation latency with the largest size: a running gateway holds a token; `tokengate token revoke`
#      runs; a poller sends the token every 5 ms over one keep-alive connection until the gateway answers
#      401. Reported: CLI run time, and time from starting the CLI until the first 401.
#
# No upstream is needed: the route points at a closed loopback port, so an accepted token gets 502 and a
# refused one 401. Seeded databases are cached in BENCH_DIR (see lib.sh); the revocation test works on a
# copy. Results replace the "capacity" section of BENCHMARKS.md (WRITE_MD=0 to skip).
#
# Start-up is measured with the machine's cores by default (a restarting gateway has them; the index load
# overlaps SQLite reads and index building on two threads); STARTUP_CPU=0 pins it to one core instead. The
# revocation gateway is pinned to SERVER_CPU.
#
# Usage: benches/capacity.sh          SIZES="1000 100000" benches/capacity.sh     REVOKES=3 (repeats)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZES=${SIZES:-1000 100000 1000000}
REVOKES=${REVOKES:-3}
BASE_PORT=${BASE_PORT:-18180}
SERVER_CPU=${SERVER_CPU:-0}
STARTUP_CPU=${STARTUP_CPU:-}
WRITE_MD=${WRITE_MD:-1}
NOTE=${NOTE:-}
PORT=$((BASE_PORT + 1))
ADMIN=$((BASE_PORT + 2))
DEAD_UPSTREAM="127.0.0.1:$((BASE_PORT + 9))" # nothing listens here

need_tool curl curl
need_tool python3 python3
need_tool cargo "a Rust toolchain (https://rustup.rs)"

bench_init
RUN="$BENCH_DIR/capacity-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"
log "work directory: $RUN"
MACHINE=$(machine_line)
build_release

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ---- 1. start-up time and memory per size ----------------------------------------------------------------
TABLE="$RUN/table.md"
{
    echo "| tokens | start-up (exec → /healthz) | index load (logged) | VmRSS at start | VmRSS +2 s | RSS per token |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
} >"$TABLE"
for n in $SIZES; do
    db=$(seeded_db "$n" 1)
    gateway_config "$RUN/gw-$n.toml" "127.0.0.1:$PORT" "127.0.0.1:$ADMIN" "$db" "$DEAD_UPSTREAM" 1
    sync # the seeding's writes should not slow the start we measure
    t0=$(now_ms)
    RUST_LOG=info spawn "$RUN/gw-$n.log" $(pin "$STARTUP_CPU") "$TG_BIN" serve -c "$RUN/gw-$n.toml"
    pid=$SPAWNED
    until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/healthz"; do
        kill -0 "$pid" 2>/dev/null || die "gateway with $n tokens exited ($RUN/gw-$n.log)"
        [ $(($(now_ms) - t0)) -lt 300000 ] || die "gateway with $n tokens not up after 300 s"
        sleep 0.01
    done
    startup=$(($(now_ms) - t0))
    rss0=$(vmrss "$pid")
    sleep 2
    rss2=$(vmrss "$pid")
    load=$(sed -n 's/.*index: loaded [0-9]* tokens from .* in \(.*\)$/\1/p' "$RUN/gw-$n.log" | head -1)
    printf '| %d | %d ms | %s | %d MiB | %d MiB | %s |\n' "$n" "$startup" "${load:-?}" $((rss0 / 1024)) $((rss2 / 1024)) \
        "$([ "$n" -ge 1000 ] && echo "$((rss2 * 1024 / n)) B" || echo -)" >>"$TABLE"
    log "$n tokens: start-up ${startup} ms (index load ${load:-?}), VmRSS ${rss0} KiB → ${rss2} KiB"
    stop "$pid"
done

# ---- 2. what a limit costs: the largest size again, every token with its own rate limit and quota --------
n=$(tr ' ' '\n' <<<"$SIZES" | sort -n | tail -1)
src=$(seeded_db "$n" 1)
sqlite3_copy() { cp "$1" "$2"; [ -f "$1-wal" ] && cp "$1-wal" "$2-wal"; true; }
if command -v sqlite3 >/dev/null && [ "$n" -ge 1000 ]; then
    db="$RUN/limited.db"
    sqlite3_copy "$src" "$db"
    gateway_config "$RUN/limited.toml" "127.0.0.1:$PORT" "127.0.0.1:$ADMIN" "$db" "$DEAD_UPSTREAM" 1
    "$TG_BIN" store migrate -c "$RUN/limited.toml" >/dev/null
    sqlite3 "$db" "UPDATE tokens SET rate_limit = '100/s', quota = '1000000/month'"
    RUST_LOG=info spawn "$RUN/limited-gw.log" "$TG_BIN" serve -c "$RUN/limited.toml"
    pid=$SPAWNED
    wait_http "http://127.0.0.1:$ADMIN/healthz" 300 "$pid" || die "gateway with limited tokens did not start"
    sleep 2
    rss_limited=$(vmrss "$pid")
    stop "$pid"
    rss_plain=$(awk -F'|' -v n="$n" '$2 + 0 == n { gsub(/[^0-9]/, "", $6); print $6 }' "$TABLE")
    {
        echo
        echo "Every one of the $n tokens with its own \`rate_limit = 100/s\` and \`quota = 1000000/month\`" \
            "(idle): VmRSS +2 s $((rss_limited / 1024)) MiB against ${rss_plain} MiB without," \
            "$(((rss_limited / 1024 - rss_plain) * 1048576 / n)) B per token for its limits."
    } >>"$TABLE"
    log "limited tokens: VmRSS $rss_limited KiB (without limits: $rss_plain MiB)"
fi

# ---- 3. revocation latency at the largest size -----------------------------------------------------------
db="$RUN/revoke.db"
sqlite3_copy "$src" "$db"
gateway_config "$RUN/revoke.toml" "127.0.0.1:$PORT" "127.0.0.1:$ADMIN" "$db" "$DEAD_UPSTREAM" 1
RUST_LOG=warn spawn "$RUN/revoke-gw.log" $(pin "$SERVER_CPU") "$TG_BIN" serve -c "$RUN/revoke.toml"
pid=$SPAWNED
wait_http "http://127.0.0.1:$ADMIN/healthz" 300 "$pid" || die "gateway for the revocation test did not start"

# The seeded database's first tokens have ids 1, 2, ... in order; tokens-N.txt holds the first plaintext
# (id 1). For repeats, fresh tokens are created through the CLI (the gateway syncs them within 100 ms).
REVOKE_LOG="$RUN/revoke.tsv"
: >"$REVOKE_LOG"
for i in $(seq 1 "$REVOKES"); do
    if [ "$i" = 1 ]; then
        id=1
        token=$(head -1 "$BENCH_DIR/tokens-$n.txt")
    else
        json=$("$TG_BIN" token create -c "$RUN/revoke.toml" --user bench --label "revoke $i" --json 2>/dev/null)
        id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$json")
        token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$json")
    fi
    # The poller: waits until the token is accepted, starts the CLI revoke, polls every 5 ms until 401.
    python3 - "$PORT" "$token" "$TG_BIN" "$RUN/revoke.toml" "$id" >>"$REVOKE_LOG" <<'PY'
import http.client, subprocess, sys, time
port, token, binary, config, tid = sys.argv[1:6]
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=2)
def status():
    global conn
    try:
        conn.request("GET", "/bearer/x", headers={"Authorization": "Bearer " + token})
        r = conn.getresponse(); r.read()
        if r.getheader("connection", "").lower() == "close":
            conn.close(); conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=2)
        return r.status
    except (http.client.HTTPException, OSError):
        conn.close(); conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=2)
        return 0
deadline = time.monotonic() + 10
while status() == 401:  # a token created just now may not be synced yet
    if time.monotonic() > deadline: sys.exit("token never accepted")
    time.sleep(0.01)
t0 = time.monotonic()
subprocess.run([binary, "token", "revoke", tid, "-c", config], check=True, capture_output=True)
t1 = time.monotonic()
polls = 0
while status() != 401:
    polls += 1
    if time.monotonic() - t0 > 10: sys.exit("not revoked after 10 s")
    time.sleep(0.005)
t2 = time.monotonic()
print(f"{tid}\t{(t1 - t0) * 1000:.0f}\t{(t2 - t0) * 1000:.0f}\t{(t2 - t1) * 1000:.0f}\t{polls}")
PY
    log "revoke $i (token $id): $(tail -1 "$REVOKE_LOG" | awk -F'\t' '{print "CLI " $2 " ms, first 401 after " $3 " ms (" $4 " ms after the CLI returned)"}')"
done
rss=$(vmrss "$pid")
stop "$pid"

{
    echo
    echo "Revocation with $n tokens held (gateway \`sync_interval\` = 100 ms, VmRSS $((rss / 1024)) MiB):"
    echo
    echo "| revoke | CLI run time | CLI start → first 401 | CLI return → first 401 |"
    echo "| ---: | ---: | ---: | ---: |"
    awk -F'\t' '{ printf "| token %s | %s ms | %s ms | %s ms |\n", $1, $2, $3, $4 }' "$REVOKE_LOG"
} >>"$TABLE"
cat "$TABLE"

if [ "$WRITE_MD" = 1 ]; then
    SECTION="$RUN/section.md"
    {
        echo "### Capacity — $(date -u +%Y-%m-%d)"
        echo
        echo "Machine: $MACHINE."
        echo
        echo "Gateway \`threads = 1\`; start-up $([ -n "$STARTUP_CPU" ] && echo "pinned to CPU $STARTUP_CPU" || echo "on all $NPROC cores"), revocation pinned to CPU $SERVER_CPU; databases seeded by \`examples/seed_tokens.rs\`" \
            "(1000 users, no scopes, no expiry); page cache warm (the databases were just written or read)."
        [ -n "$NOTE" ] && { echo; echo "Note: $NOTE"; }
        echo
        cat "$TABLE"
    } >"$SECTION"
    replace_section "$REPO/BENCHMARKS.md" capacity "$SECTION"
    log "BENCHMARKS.md: capacity section updated"
fi
