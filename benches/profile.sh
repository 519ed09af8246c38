#!/usr/bin/env bash
# Profiles the gateway under wrk load (bearer route, threads = 1, TOKENS tokens):
#
#   perf       `perf record` (cpu-clock sampling, DWARF call graphs) of the gateway while wrk runs;
#              prints the flat profile and the share of CPU time per area (our code, pingora, tokio,
#              allocator, sha2, kernel, ...) and CPU-µs per request. Works without hardware counters.
#   callgrind  the gateway under `valgrind --tool=callgrind`, instrumentation switched on only while wrk
#              runs (--instr-atstart=no + callgrind_control -i on/off); prints instructions per request (user space only) split the same way, and the top
#              functions by self and inclusive cost.
#
# Usage: benches/profile.sh [perf|callgrind|both]      (default both)
# Knobs: TOKENS (100000; callgrind uses CG_TOKENS=1000 since loading under valgrind is slow), DURATION (10),
#        CONNS (32; callgrind uses 4), SERVER_CPU (0), WRK_CPU (1), BASE_PORT (18280), BENCH_DIR.
# Output files are kept in $BENCH_DIR/profile-*/.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MODE=${1:-both}
TOKENS=${TOKENS:-100000}
CG_TOKENS=${CG_TOKENS:-1000}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
BASE_PORT=${BASE_PORT:-18280}
UPSTREAM_PORT=$((BASE_PORT + 1))
PORT=$((BASE_PORT + 2))
ADMIN=$((BASE_PORT + 3))

need_tool nginx nginx-light
need_tool wrk wrk
need_tool curl curl
case $MODE in
perf | both) need_tool perf linux-perf ;;
esac
case $MODE in
callgrind | both) need_tool valgrind valgrind ;;
esac

bench_init
RUN="$BENCH_DIR/profile-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN/upstream"
log "work directory: $RUN"
build_release

# The upstream: nginx, one worker, `return 200`.
start_upstream "$SERVER_CPU"

# run_wrk TOKENS_FILE SECONDS CONNS: load on the bearer route; prints the RESULT line.
run_wrk() {
    TG_TOKENS_FILE=$1 $(pin "$WRK_CPU") wrk -t1 -c"$3" -d"$2s" --timeout 5s -s "$REPO/benches/wrk_bearer.lua" \
        "http://127.0.0.1:$PORT/bearer/hives/7" | grep '^RESULT'
}
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }

# area: maps a symbol (and its DSO) to the part of the stack it belongs to. Order matters.
AREA_AWK='
function area(sym, dso) {
    if (dso ~ /kernel/ || sym ~ /^\[k\]/) return "kernel";
    if (sym ~ /tokengate::/) return "tokengate (our code)";
    if (sym ~ /pingora/) return "pingora";
    if (sym ~ /tokio|mio::/) return "tokio/mio";
    if (sym ~ /sha2|Sha256|sha256/) return "sha2";
    if (sym ~ /papaya|seize/) return "papaya index";
    if (sym ~ /prometheus/) return "prometheus";
    if (sym ~ /malloc|free|realloc|calloc|alloc::|_int_|tcache|__rust_(alloc|dealloc|realloc)/) return "allocator";
    if (sym ~ /httparse|http::|bytes::/) return "http/httparse/bytes";
    if (sym ~ /mem(cpy|move|set|cmp)|str(len|cmp)/) return "libc mem*";
    if (dso ~ /libc/) return "libc other";
    return "other (std, core, ...)";
}'

if [ "$MODE" = perf ] || [ "$MODE" = both ]; then
    db=$(seeded_db "$TOKENS" 1024)
    gateway_config "$RUN/gw.toml" "127.0.0.1:$PORT" "127.0.0.1:$ADMIN" "$db" "127.0.0.1:$UPSTREAM_PORT" 1
    RUST_LOG=warn spawn "$RUN/gw.log" $(pin "$SERVER_CPU") "$TG_BIN" serve -c "$RUN/gw.toml"
    gw=$SPAWNED
    wait_http "http://127.0.0.1:$ADMIN/healthz" 300 "$gw" || die "gateway did not start"
    run_wrk "$BENCH_DIR/tokens-$TOKENS.txt" 2 "$CONNS" >/dev/null # warm-up
    log "perf: recording the gateway for ${DURATION}s under wrk -c$CONNS"
    perf record -q -e cpu-clock -F 999 --call-graph dwarf,8192 -p "$gw" -o "$RUN/perf.data" -- sleep "$((DURATION + 1))" \
        2>"$RUN/perf-record.log" &
    perf_pid=$!
    sleep 0.5
    result=$(run_wrk "$BENCH_DIR/tokens-$TOKENS.txt" "$DURATION" "$CONNS")
    wait "$perf_pid" || die "perf record failed: $(cat "$RUN/perf-record.log")"
    stop "$gw"
    requests=$(field requests "$result")
    log "perf: $requests requests ($(field rps "$result") req/s); analysing"
    perf report -i "$RUN/perf.data" --no-children --sort dso,sym --stdio -g none --percent-limit 0.4 2>/dev/null |
        grep -v '^$' | grep -v '^#' | grep '%' | sed 's/ \{2,\}/  /g' >"$RUN/perf-flat.txt" || true
    # Samples per symbol (no call graph) for the area split; 999 Hz → ~1 ms of CPU per sample.
    perf report -i "$RUN/perf.data" --no-children --sort dso,sym --stdio -g none -F overhead,sample,dso,sym 2>/dev/null |
        grep -v '^#' | grep '%' >"$RUN/perf-samples.txt" || true
    echo
    echo "== perf: top of the flat profile (self time; gateway process, all threads) =="
    head -40 "$RUN/perf-flat.txt"
    echo
    echo "== perf: CPU time by area, and CPU-µs per request ($requests requests) =="
    awk -v req="$requests" "$AREA_AWK"'
        { pct = $1; sub(/%/, "", pct); samples = $2; dso = $3; $1 = $2 = $3 = ""; sym = $0
          a = area(sym, dso); s[a] += samples; total += samples }
        END { for (a in s) printf "%-26s %6.1f %%  %7.2f µs/request\n", a, 100 * s[a] / total, s[a] * 1001.0 / req
              printf "%-26s %6.1f %%  %7.2f µs/request\n", "TOTAL", 100, total * 1001.0 / req }' "$RUN/perf-samples.txt" |
        sort -t'%' -k1,1 -rn -k2 | tee "$RUN/perf-areas.txt"
    echo
    echo "== perf: our code (tokengate::), self time =="
    grep 'tokengate::' "$RUN/perf-flat.txt" | head -20 || echo "(below the 0.4 % limit)"
    # Callers of the allocator, to find allocation hot spots in our code.
    perf report -i "$RUN/perf.data" --no-children --stdio -G --percent-limit 1 --symbol-filter=malloc 2>/dev/null |
        grep -v '^$' | head -80 >"$RUN/perf-malloc-callers.txt" || true
    log "perf: files in $RUN (perf-flat.txt, perf-areas.txt, perf-malloc-callers.txt; perf report -i $RUN/perf.data)"
fi

if [ "$MODE" = callgrind ] || [ "$MODE" = both ]; then
    need_tool callgrind_control valgrind
    db=$(seeded_db "$CG_TOKENS" 1024)
    gateway_config "$RUN/cg.toml" "127.0.0.1:$PORT" "127.0.0.1:$ADMIN" "$db" "127.0.0.1:$UPSTREAM_PORT" 1
    log "callgrind: starting the gateway under valgrind (slow)"
    RUST_LOG=warn spawn "$RUN/cg-gw.log" $(pin "$SERVER_CPU") valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$RUN/callgrind.out" "$TG_BIN" serve -c "$RUN/cg.toml"
    cg=$SPAWNED
    wait_http "http://127.0.0.1:$ADMIN/healthz" 600 "$cg" || die "gateway under valgrind did not start ($RUN/cg-gw.log)"
    run_wrk "$BENCH_DIR/tokens-$CG_TOKENS.txt" 2 4 >/dev/null # warm-up (pools, lazy statics)
    callgrind_control -i on "$cg" >/dev/null
    result=$(run_wrk "$BENCH_DIR/tokens-$CG_TOKENS.txt" "$DURATION" 4)
    callgrind_control -i off "$cg" >/dev/null
    callgrind_control -d "$cg" >/dev/null
    sleep 1
    stop "$cg"
    requests=$(field requests "$result")
    # The on-demand dump (callgrind.out.1) holds the load; the file written at exit holds nothing.
    out="$RUN/callgrind.out.1"
    [ -s "$out" ] || die "no callgrind dump in $RUN"
    log "callgrind: $requests requests measured; analysing $out"
    callgrind_annotate --inclusive=no --auto=no --threshold=100 "$out" 2>/dev/null >"$RUN/cg-self.txt"
    callgrind_annotate --inclusive=yes --auto=no "$out" 2>/dev/null >"$RUN/cg-incl.txt"
    total=$(awk '/PROGRAM TOTALS/ { gsub(/,/, "", $1); print $1; exit }' "$RUN/cg-self.txt")
    echo
    echo "== callgrind: $total instructions for $requests requests = $((total / requests)) instructions/request (user space) =="
    echo
    echo "== callgrind: instructions by area (self cost, attributed by the source file the code came from) =="
    # Lines look like `1,234 ( 0.50%)  FILE:FUNCTION [OBJECT]`; code inlined from a crate counts for that crate.
    awk -v req="$requests" "$AREA_AWK"'
        /PROGRAM TOTALS/ { next }
        /^ *[0-9,]+ \( *[0-9.]+%\)  / {
            ir = $1; gsub(/,/, "", ir); rest = $0; sub(/^ *[0-9,]+ \( *[0-9.]+%\)  /, "", rest)
            file = rest; sub(/:.*/, "", file); func_ = rest; sub(/^[^:]*:/, "", func_)
            if (file ~ /^\.\/malloc/) a = "allocator"
            else if (file ~ /^\.\/string/) a = "libc mem*"
            else if (file ~ /^\.\//) a = "libc other"
            else if (file ~ /\/src\/[a-z_]+\.rs$/ && file !~ /registry|rustc/) a = "tokengate (our code)"
            else if (file ~ /registry/) {
                crate = file; sub(/.*registry\/src\/[^\/]+\//, "", crate); sub(/-[0-9][^\/]*\/.*/, "", crate)
                if (crate ~ /^pingora/) a = "pingora"
                else if (crate ~ /^(tokio|mio)/) a = "tokio/mio"
                else if (crate ~ /^(http|httparse|bytes)$/) a = "http/httparse/bytes"
                else if (crate ~ /^(sha2|papaya|seize|prometheus)$/) a = area(crate, "")
                else if (crate ~ /sqlite/) a = "sqlite (sync/usage threads)"
                else a = "crate " crate
            } else a = area(func_, "")
            s[a] += ir; total += ir }
        END { for (a in s) printf "%-30s %6.1f %%  %8.0f Ir/request\n", a, 100 * s[a] / total, s[a] / req }' "$RUN/cg-self.txt" |
        sort -t'%' -k1,1 -rn -k2 | tee "$RUN/cg-areas.txt"
    echo
    echo "== callgrind: who calls memcpy (top callers; per request) =="
    callgrind_annotate --inclusive=no --tree=caller --auto=no --threshold=100 "$out" 2>/dev/null |
        awk 'NF == 0 { blk = ""; next } /\*  .*memmove-vec-unaligned-erms/ { printf "%s", blk; exit } { blk = blk $0 "\n" }' |
        awk '/^ *[0-9,]+ \( *[0-9.]+%\)  </ { x = $1; gsub(/,/, "", x); print x "\t" $0 }' | sort -rn | tail -n +1 | head -5 | cut -f2 | cut -c1-200
    echo
    echo "== callgrind: top functions by self cost =="
    awk '/^-+$/ { sep++; next } sep >= 3 && NF' "$RUN/cg-self.txt" | head -30
    echo
    echo "== callgrind: our code (tokengate::), inclusive =="
    grep 'tokengate::' "$RUN/cg-incl.txt" | head -25 || true
    log "callgrind: files in $RUN (cg-self.txt, cg-incl.txt; callgrind_annotate $out)"
fi
