#!/usr/bin/env bash
# What the access log costs in instructions per request (issue 29), tokengate next to nginx, counted by
# callgrind (user space, every thread of the process, the writer thread included): a count that does not
# move with the machine, where requests/s on this shared machine moves by ±3 % between two identical
# processes and by more between rounds, so a 1-2 % step cannot be seen in it.
#
# Each server runs alone under valgrind, pinned to SERVER_CPU: tokengate (threads = 1) with its log off,
# `plain` and `json`; nginx (one process) with its log off and with its buffered `combined` log (buffer=64k
# flush=200ms), the map of TOKENS bearer tokens and the same upstream as benches/load.sh. wrk (CONNS
# keep-alive connections, on WRK_CPU) loads the bearer route; only the load is counted (callgrind_control
# -i on/off after a warm-up). What the kernel does (the write(2) of the lines included) is not counted.
#
# With CACHE_SIM=1, callgrind also simulates this machine's caches per core (48 KiB L1d, 2 MiB L2 as the
# last level) and the table adds the misses a request: instruction-cache misses (code fetched from L2 again)
# and last-level write misses (memory written that was not in L2), what the instruction count cannot see.
#
# Usage: benches/log_instructions.sh         (about 3 minutes; DURATION=6 CONNS=4 TOKENS=1000)
#        WRITE_MD=0 benches/log_instructions.sh      (print the table, leave BENCHMARKS.md alone)
#        CACHE_SIM=1 WRITE_MD=0 benches/log_instructions.sh   (with the simulated cache misses; slower)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-6}
CONNS=${CONNS:-4}
TOKENS=${TOKENS:-1000}
SERVER_CPU=${SERVER_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
BASE_PORT=${BASE_PORT:-18380}
WRITE_MD=${WRITE_MD:-1}
CACHE_SIM=${CACHE_SIM:-0}
SIM=()
if [ "$CACHE_SIM" = 1 ]; then SIM=(--cache-sim=yes --D1=49152,12,64 --LL=2097152,16,64); fi
UPSTREAM_PORT=$((BASE_PORT + 1))
PORT=$((BASE_PORT + 2))
ADMIN=$((BASE_PORT + 3))
need_tool nginx nginx-light
need_tool wrk wrk
need_tool curl curl
need_tool callgrind_control valgrind
bench_init
RUN="$BENCH_DIR/log-instructions-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN/upstream" "$RUN/nginx"
log "work directory: $RUN"
build_release
MACHINE=$(machine_line)

start_upstream "$WRK_CPU"
db=$(seeded_db "$TOKENS" 1024)

# measure NAME CMD...: CMD under callgrind; prints "NAME<TAB>requests<TAB>instructions per request".
measure() {
    local name=$1
    shift
    RUST_LOG=warn spawn "$RUN/$name.log" $(pin "$SERVER_CPU") valgrind --tool=callgrind "${SIM[@]}" --instr-atstart=no \
        --callgrind-out-file="$RUN/$name.cg" "$@"
    local pid=$SPAWNED
    wait_http "http://127.0.0.1:$PORT/" 600 "$pid" || die "$name did not start under valgrind ($RUN/$name.log)"
    local url="http://127.0.0.1:$PORT/bearer/hives/7" tokens="$BENCH_DIR/tokens-$TOKENS.txt"
    TG_TOKENS_FILE=$tokens $(pin "$WRK_CPU") wrk -t1 -c"$CONNS" -d2s --timeout 5s -s "$REPO/benches/wrk_bearer.lua" "$url" >/dev/null
    callgrind_control -i on "$pid" >/dev/null
    local result
    result=$(TG_TOKENS_FILE=$tokens $(pin "$WRK_CPU") wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s \
        -s "$REPO/benches/wrk_bearer.lua" "$url" | grep '^RESULT')
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    stop "$pid"
    local requests bad total
    requests=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$result")
    bad=$(sed -n 's/.* status_err=\([0-9]*\).*/\1/p' <<<"$result")
    [ "${bad:-0}" = 0 ] || die "$name answered $bad requests with a status other than 2xx"
    # The on-demand dump (NAME.cg.1) holds the load; the file written at exit holds nothing.
    [ -s "$RUN/$name.cg.1" ] || die "no callgrind dump for $name in $RUN"
    # PROGRAM TOTALS: Ir first; with the cache simulation also Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw.
    local totals
    totals=$(callgrind_annotate --auto=no "$RUN/$name.cg.1" 2>/dev/null |
        awk '/PROGRAM TOTALS/ && !t { gsub(/,/, ""); gsub(/\([^)]*\)/, ""); t = $0 } END { print t }')
    total=$(awk '{ print $1 }' <<<"$totals")
    log "$name: $requests requests, $((total / requests)) instructions a request"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$requests" "$((total / requests))" \
        "$(awk -v r="$requests" 'NF >= 9 { printf "%.1f", $4 / r }' <<<"$totals")" \
        "$(awk -v r="$requests" 'NF >= 9 { printf "%.2f", $9 / r }' <<<"$totals")"
}

RESULTS="$RUN/results.tsv"
: >"$RESULTS"
for format in off plain json; do
    ACCESS_LOG=$format gateway_config "$RUN/tg-$format.toml" "127.0.0.1:$PORT" "127.0.0.1:$ADMIN" "$db" "127.0.0.1:$UPSTREAM_PORT" 1
    measure "tg-$format" "$TG_BIN" serve -c "$RUN/tg-$format.toml" >>"$RESULTS"
done
for format in off plain; do
    mkdir -p "$RUN/nginx-$format"
    {
        nginx_common "nginx-$format" | sed 's/^master_process on;/master_process off;/'
        echo "http {"
        echo "    $(ACCESS_LOG=$format nginx_access_log "nginx-$format")"
        nginx_bearer_map "nginx-$format" "$BENCH_DIR/tokens-$TOKENS.txt"
        echo "    server {"
        echo "        listen 127.0.0.1:$PORT;"
        nginx_bearer_location http
        echo "    }"
        echo "}"
    } >"$RUN/nginx-$format/nginx.conf"
    measure "nginx-$format" nginx -p "$RUN/nginx-$format" -c "$RUN/nginx-$format/nginx.conf" \
        -e "$RUN/nginx-$format.error.log" >>"$RESULTS"
done

get() { awk -F'\t' -v n="$1" '$1 == n { print $3 }' "$RESULTS"; }
TABLE="$RUN/table.md"
{
    sim_head="" sim_rule=""
    if [ "$CACHE_SIM" = 1 ]; then
        sim_head=" L1 instruction misses a request | L2 write misses a request |" sim_rule=" ---: | ---: |"
    fi
    echo "| server | log | requests counted | instructions a request | the log's instructions a request | the log's share |$sim_head"
    echo "| --- | --- | ---: | ---: | ---: | ---: |$sim_rule"
    for row in "tg-off|tokengate|off" "tg-plain|tokengate|plain (shipped default)" "tg-json|tokengate|json" \
        "nginx-off|nginx|off" "nginx-plain|nginx|buffered combined"; do
        IFS='|' read -r name server what <<<"$row"
        base=$(get "${name%%-*}-off")
        n=$(get "$name")
        sim=""
        if [ "$CACHE_SIM" = 1 ]; then
            sim=" $(awk -F'\t' -v n="$name" '$1 == n { print $4 " | " $5 " |" }' "$RESULTS")"
        fi
        printf '| %s | %s | %s | %s | %s | %s |%s\n' "$server" "$what" \
            "$(awk -F'\t' -v n="$name" '$1 == n { print $2 }' "$RESULTS")" "$n" "$((n - base))" \
            "$(echo "($n - $base) * 100 / $base" | bc -l | xargs printf '%.1f %%')" "$sim"
    done
} >"$TABLE"
cat "$TABLE"

if [ "$WRITE_MD" = 1 ]; then
    SECTION="$RUN/section.md"
    {
        echo "### The access log's cost in instructions — $(date -u +%Y-%m-%d)"
        echo
        echo "Machine: $MACHINE."
        echo
        echo "Settings: \`benches/log_instructions.sh\`: each server alone under callgrind (user space, every thread)," \
            "wrk -c$CONNS for ${DURATION}s after a 2 s warm-up, $TOKENS tokens; tokengate threads = 1, nginx one process;" \
            "the kernel's side (the write(2) of the lines) is not counted."
        echo
        cat "$TABLE"
    } >"$SECTION"
    replace_section "$REPO/BENCHMARKS.md" "log-instructions" "$SECTION"
    log "BENCHMARKS.md: log-instructions section updated"
fi
