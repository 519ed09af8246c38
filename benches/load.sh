#!/usr/bin/env bash
# Load comparison on loopback: what does tokengate cost per request, next to nginx doing the same job?
#
# Contenders (all behind / in front of the same upstream: nginx, 1 worker, `return 200` with a 3-byte body):
#   direct      wrk → upstream                                  (the ceiling)
#   nginx-auth  wrk → nginx (1 worker): map $http_authorization with TOKENS entries, 401 when unknown,
#               Authorization cleared, x-user-id + X-Forwarded-For set, keep-alive upstream pool → upstream
#   tg-bearer   wrk → tokengate (threads = 1), bearer route, database with TOKENS tokens → upstream
#   tg-none     the same gateway process, route with auth = "none"  (bearer/none = the cost of auth)
#   tg-limited  the same gateway process, bearer route with a per-token `rate_limit` (1000000/s) set high
#               enough never to trigger (limited/bearer = the cost of a limit; target within 3 %)
#   tg-1        tokengate, bearer route, database with 1 token       (index size: 1 token ...
#   tg-big      tokengate, bearer route, database with BIG_TOKENS     ... vs BIG_TOKENS; BIG_TOKENS=0 skips)
# Every contender gets the same request bytes (wrk_bearer.lua: Authorization round-robin over
# WRK_TOKENS real tokens of its database; direct and tg-none ignore it).
#
# Rounds are interleaved (round 1: every contender, round 2: every contender, ... with the starting
# contender rotated) so that machine drift hits all alike; the table shows medians over rounds.
#
# CPU pinning (machines with ≥ 2 cores): the proxy under test and the upstream share SERVER_CPU (default 0),
# wrk runs alone on WRK_CPU (default 1). Sharing makes requests/s a measure of the total CPU a request costs
# on the server side (proxy + upstream), which is what a proxy in front of an API costs on one box, and keeps
# wrk from ever competing with what it measures. On one core nothing is pinned (numbers then are rough).
#
# Usage: benches/load.sh                 (ROUNDS=5 DURATION=10 TOKENS=100000 BIG_TOKENS=1000000)
#        ROUNDS=2 DURATION=3 TOKENS=10000 BIG_TOKENS=100000 benches/load.sh     (a quick check)
# Other knobs: CONNS (32), WRK_TOKENS (1024), SERVER_CPU, WRK_CPU, UPSTREAM_CPU, BASE_PORT (18080),
#              BENCH_DIR (/tmp/tokengate-bench; seeded databases are cached there), FRESH=1 (re-seed),
#              WRITE_MD=0 (do not touch BENCHMARKS.md), NOTE="..." (a remark stored with the results),
#              ACCESS_LOG=off|plain|json (default plain, tokengate's shipped default: tokengate logs each request
#              to a file, nginx-auth writes its buffered `combined` log; off: neither logs),
#              LOG_AB=1 (adds nginx-nolog, tg-nolog and tg-json: the same proxies with the log off, and
#              tokengate's JSON log, measured in the same interleaved rounds; see benches/access_log.sh).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
TOKENS=${TOKENS:-100000}
BIG_TOKENS=${BIG_TOKENS:-1000000}
CONNS=${CONNS:-32}
WRK_TOKENS=${WRK_TOKENS:-1024}
SERVER_CPU=${SERVER_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
UPSTREAM_CPU=${UPSTREAM_CPU:-$SERVER_CPU}
BASE_PORT=${BASE_PORT:-18080}
WRITE_MD=${WRITE_MD:-1}
NOTE=${NOTE:-}
ACCESS_LOG=${ACCESS_LOG:-plain}
export ACCESS_LOG
LOG_AB=${LOG_AB:-0}

UPSTREAM_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
NGINX_NOLOG_PORT=$((BASE_PORT + 3))
TG_PORT=$((BASE_PORT + 10))   # admin on +1
TG1_PORT=$((BASE_PORT + 12))  # admin on +1
TGBIG_PORT=$((BASE_PORT + 14)) # admin on +1

need_tool nginx nginx-light
need_tool wrk wrk
need_tool curl curl
need_tool bc bc
need_tool cargo "a Rust toolchain (https://rustup.rs)"
[ "$NPROC" -ge 2 ] && need_tool taskset util-linux

bench_init
RUN="$BENCH_DIR/load-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"
log "work directory: $RUN"
MACHINE=$(machine_line)

build_release

# ---- token databases -------------------------------------------------------------------------------------
# The main database keeps every plaintext: nginx's map needs them all.
DB_MAIN=$(seeded_db "$TOKENS" "$TOKENS")
DB_ONE=$(seeded_db 1 1)
if [ "$BIG_TOKENS" -gt 0 ]; then DB_BIG=$(seeded_db "$BIG_TOKENS" "$WRK_TOKENS"); fi

# ---- upstream: nginx, one worker, a fixed 3-byte body ----------------------------------------------------
mkdir -p "$RUN/upstream" "$RUN/nginx-auth"
{
    nginx_common upstream
    cat <<CONF
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location / { return 200 "ok\n"; }
    }
}
CONF
} >"$RUN/upstream/nginx.conf"
spawn "$RUN/upstream.log" $(pin "$UPSTREAM_CPU") nginx -p "$RUN/upstream" -c "$RUN/upstream/nginx.conf" -e "$RUN/upstream.error.log"
UPSTREAM_PID=$SPAWNED
# The process whose CPU time each contender is charged (its master's children are counted too: nginx's worker).
declare -A CPU_PID=([direct]=$UPSTREAM_PID)
wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 10 "$UPSTREAM_PID" || die "upstream nginx did not start ($RUN/upstream.log)"

# ---- nginx doing tokengate's job -------------------------------------------------------------------------
# With ACCESS_LOG other than off, both nginx-auth and tokengate write an access log line per request to a
# file (nginx buffered, 64 KiB / 200 ms, like tokengate's writer thread); the upstream never logs.
log "writing the nginx map ($TOKENS entries)"
{
    nginx_common nginx-auth
    echo "http {"
    echo "    $(nginx_access_log nginx-auth)"
    nginx_bearer_map nginx-auth "$BENCH_DIR/tokens-$TOKENS.txt"
    echo "    server {"
    echo "        listen 127.0.0.1:$NGINX_PORT;"
    nginx_bearer_location http
    echo "    }"
    echo "}"
} >"$RUN/nginx-auth/nginx.conf"
spawn "$RUN/nginx-auth.log" $(pin "$SERVER_CPU") nginx -p "$RUN/nginx-auth" -c "$RUN/nginx-auth/nginx.conf" -e "$RUN/nginx-auth.error.log"
NGINX_PID=$SPAWNED
CPU_PID[nginx-auth]=$NGINX_PID
wait_http "http://127.0.0.1:$NGINX_PORT/" 120 "$NGINX_PID" || die "nginx-auth did not start ($RUN/nginx-auth.error.log)"
if [ "$LOG_AB" = 1 ]; then
    # The same nginx with its access log off (LOG_AB): what the log costs nginx.
    mkdir -p "$RUN/nginx-nolog"
    sed -e "s|^    access_log .*|    access_log off;|" -e "s|listen 127.0.0.1:$NGINX_PORT;|listen 127.0.0.1:$NGINX_NOLOG_PORT;|" \
        -e "s|$RUN/nginx-auth.pid|$RUN/nginx-nolog.pid|" -e "s|$RUN/nginx-auth.error.log|$RUN/nginx-nolog.error.log|" \
        "$RUN/nginx-auth/nginx.conf" >"$RUN/nginx-nolog/nginx.conf"
    spawn "$RUN/nginx-nolog.log" $(pin "$SERVER_CPU") nginx -p "$RUN/nginx-nolog" -c "$RUN/nginx-nolog/nginx.conf" -e "$RUN/nginx-nolog.error.log"
    CPU_PID[nginx-nolog]=$SPAWNED
    wait_http "http://127.0.0.1:$NGINX_NOLOG_PORT/" 120 "$SPAWNED" || die "nginx-nolog did not start ($RUN/nginx-nolog.error.log)"
fi

# ---- tokengate instances ---------------------------------------------------------------------------------
# start_gateway NAME PORT DB: one worker thread, pinned to SERVER_CPU (its sync/usage/clock threads too).
# With a fourth argument "limited", the gateway also gets a /limited route with a per-token rate limit.
# A sixth argument sets its access log format instead of ACCESS_LOG.
start_gateway() {
    local name=$1 port=$2 db=$3
    ACCESS_LOG=${6:-$ACCESS_LOG} gateway_config "$RUN/$name.toml" "127.0.0.1:$port" "127.0.0.1:$((port + 1))" "$db" "127.0.0.1:$UPSTREAM_PORT" 1
    if [ "${4:-}" = limited ]; then
        cat >>"$RUN/$name.toml" <<CONF

[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "127.0.0.1:$UPSTREAM_PORT"
rate_limit = "1000000/s"
CONF
        "$TG_BIN" check-config -c "$RUN/$name.toml" >/dev/null || die "this tokengate does not take rate_limit"
    fi
    if [ "${4:-}" = steal ]; then
        sed -i '/^\[gateway\]$/a work_stealing = true' "$RUN/$name.toml"
    fi
    RUST_LOG=warn spawn "$RUN/$name.log" $(pin "$SERVER_CPU") "${5:-$TG_BIN}" serve -c "$RUN/$name.toml"
    wait_http "http://127.0.0.1:$((port + 1))/healthz" 300 "$SPAWNED" || die "$name did not start ($RUN/$name.log)"
    log "$name up (pid $SPAWNED, $(vmrss "$SPAWNED") KiB RSS)"
    GATEWAY_PID[$name]=$SPAWNED
}
declare -A GATEWAY_PID
start_gateway tg "$TG_PORT" "$DB_MAIN" limited
start_gateway tg1 "$TG1_PORT" "$DB_ONE"
if [ "$BIG_TOKENS" -gt 0 ]; then start_gateway tgbig "$TGBIG_PORT" "$DB_BIG"; fi
# A/B contenders for the latency-tail work: TG_STEAL=1 adds tg-steal (work_stealing = true: one shared
# stealing runtime instead of one FIFO runtime per thread); TG_BEFORE=/path/to/tokengate adds tg-before
# (another build, e.g. the commit before a change, on the same database and settings).
TGSTEAL_PORT=$((BASE_PORT + 16)) TGBEFORE_PORT=$((BASE_PORT + 18))
if [ "${TG_STEAL:-0}" = 1 ]; then start_gateway tgsteal "$TGSTEAL_PORT" "$DB_MAIN" steal; fi
# TG_BEFORE_DB: the database tg-before serves (default the main one; an older build refuses a newer schema,
# so give it a copy at its schema version). TG_BEFORE_LOG: its access log format (default ACCESS_LOG), e.g.
# json to A/B a change of the JSON format against tg-json.
if [ -n "${TG_BEFORE:-}" ]; then start_gateway tgbefore "$TGBEFORE_PORT" "${TG_BEFORE_DB:-$DB_MAIN}" "" "$TG_BEFORE" "${TG_BEFORE_LOG:-}"; fi
# LOG_AB=1: the same gateway with its access log off, and with the JSON log.
TGNOLOG_PORT=$((BASE_PORT + 20)) TGJSON_PORT=$((BASE_PORT + 22))
if [ "$LOG_AB" = 1 ]; then
    start_gateway tgnolog "$TGNOLOG_PORT" "$DB_MAIN" "" "$TG_BIN" off
    start_gateway tgjson "$TGJSON_PORT" "$DB_MAIN" "" "$TG_BIN" json
fi

# ---- contenders: name|url|tokens file|description -------------------------------------------------------
CONTENDERS=(
    "direct|http://127.0.0.1:$UPSTREAM_PORT/bearer/hives/7|$BENCH_DIR/tokens-$TOKENS.txt|wrk → upstream nginx"
    "nginx-auth|http://127.0.0.1:$NGINX_PORT/bearer/hives/7|$BENCH_DIR/tokens-$TOKENS.txt|nginx 1 worker, map of $TOKENS tokens"
    "tg-bearer|http://127.0.0.1:$TG_PORT/bearer/hives/7|$BENCH_DIR/tokens-$TOKENS.txt|tokengate threads=1, bearer, $TOKENS tokens"
    "tg-none|http://127.0.0.1:$TG_PORT/public/hives/7|$BENCH_DIR/tokens-$TOKENS.txt|tokengate threads=1, auth=none"
    "tg-limited|http://127.0.0.1:$TG_PORT/limited/hives/7|$BENCH_DIR/tokens-$TOKENS.txt|tokengate threads=1, bearer + rate_limit 1000000/s per token"
    "tg-1|http://127.0.0.1:$TG1_PORT/bearer/hives/7|$BENCH_DIR/tokens-1.txt|tokengate threads=1, bearer, 1 token"
)
if [ "${TG_STEAL:-0}" = 1 ]; then
    CONTENDERS+=("tg-steal|http://127.0.0.1:$TGSTEAL_PORT/bearer/hives/7|$BENCH_DIR/tokens-$TOKENS.txt|tokengate threads=1, work_stealing = true")
fi
if [ -n "${TG_BEFORE:-}" ]; then
    CONTENDERS+=("tg-before|http://127.0.0.1:$TGBEFORE_PORT/bearer/hives/7|$BENCH_DIR/tokens-$TOKENS.txt|tokengate threads=1, build $TG_BEFORE")
fi
if [ "$LOG_AB" = 1 ]; then
    CONTENDERS+=(
        "nginx-nolog|http://127.0.0.1:$NGINX_NOLOG_PORT/bearer/hives/7|$BENCH_DIR/tokens-$TOKENS.txt|nginx-auth with access_log off"
        "tg-nolog|http://127.0.0.1:$TGNOLOG_PORT/bearer/hives/7|$BENCH_DIR/tokens-$TOKENS.txt|tokengate threads=1, bearer, access log off"
        "tg-json|http://127.0.0.1:$TGJSON_PORT/bearer/hives/7|$BENCH_DIR/tokens-$TOKENS.txt|tokengate threads=1, bearer, access log json"
    )
fi
if [ "$BIG_TOKENS" -gt 0 ]; then
    CONTENDERS+=("tg-big|http://127.0.0.1:$TGBIG_PORT/bearer/hives/7|$BENCH_DIR/tokens-$BIG_TOKENS.txt|tokengate threads=1, bearer, $BIG_TOKENS tokens")
fi

# Which gateway process serves which contender.
for c in tg-bearer:tg tg-none:tg tg-limited:tg tg-1:tg1 tg-big:tgbig tg-steal:tgsteal tg-before:tgbefore \
    tg-nolog:tgnolog tg-json:tgjson; do
    if [ -n "${GATEWAY_PID[${c##*:}]:-}" ]; then CPU_PID[${c%%:*}]=${GATEWAY_PID[${c##*:}]}; fi
done
# cpu_ticks PID: the CPU time (user + system, every thread, in clock ticks) PID and its children have used:
# what a contender spent, whatever else the machine did meanwhile (time stolen by the hypervisor or spent
# waiting for the core is not in it), so CPU per request measures a cost with less noise than requests/s.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() {
    local p t=0
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        # Fields 14 and 15 (utime, stime), counted after the command name's closing parenthesis.
        t=$((t + $( (sed 's/.*) //' /proc/"$p"/stat 2>/dev/null || true) | awk '{ s = $12 + $13 } END { print s + 0 }')))
    done
    echo "$t"
}

# ONLY="nginx-auth tg-bearer ...": measure just these contenders.
if [ -n "${ONLY:-}" ]; then
    kept=()
    for c in "${CONTENDERS[@]}"; do
        [[ " $ONLY " == *" ${c%%|*} "* ]] && kept+=("$c")
    done
    CONTENDERS=("${kept[@]}")
fi

# Every contender must answer 200 before we measure it (a 401 would make a fast, meaningless number).
for c in "${CONTENDERS[@]}"; do
    IFS='|' read -r name url tokens _ <<<"$c"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(head -1 "$tokens")" "$url")
    [ "$code" = 200 ] || die "$name answered $code instead of 200 at $url"
done

# run_wrk NAME URL TOKENS SECONDS: one wrk run; prints the RESULT line.
run_wrk() {
    TG_TOKENS_FILE=$3 TG_WRK_TOKENS=$WRK_TOKENS $(pin "$WRK_CPU") \
        wrk -t1 -c"$CONNS" -d"$4s" --timeout 2s -s "$REPO/benches/wrk_bearer.lua" "$2" >"$RUN/wrk-$1.last" 2>&1 ||
        die "wrk failed against $1: $(cat "$RUN/wrk-$1.last")"
    grep '^RESULT' "$RUN/wrk-$1.last" || die "no RESULT line from wrk against $1"
}

log "warm-up: 2 s per contender"
for c in "${CONTENDERS[@]}"; do
    IFS='|' read -r name url tokens _ <<<"$c"
    run_wrk "$name" "$url" "$tokens" 2 >/dev/null
done

RESULTS="$RUN/results.tsv"
printf 'round\tcontender\trps\tp50_us\tp99_us\terrors\tp999_us\tcpu_us_per_req\n' >"$RESULTS"
n=${#CONTENDERS[@]}
for round in $(seq 1 "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
        IFS='|' read -r name url tokens _ <<<"${CONTENDERS[$(((k + round - 1) % n))]}"
        ticks=$(cpu_ticks "${CPU_PID[$name]}")
        line=$(run_wrk "$name" "$url" "$tokens" "$DURATION")
        ticks=$(($(cpu_ticks "${CPU_PID[$name]}") - ticks))
        get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
        errors=$(($(get connect_err) + $(get read_err) + $(get write_err) + $(get status_err) + $(get timeouts)))
        cpu=$(echo "$ticks * 1000000 / $CLK_TCK / ($(get rps) * $DURATION)" | bc -l | xargs printf '%.3f')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$(get rps)" "$(get p50_us)" "$(get p99_us)" "$errors" "$(get p999_us)" "$cpu" >>"$RESULTS"
        log "round $round/$ROUNDS $name: $(get rps) req/s, p50 $(get p50_us) µs, p99 $(get p99_us) µs, p99.9 $(get p999_us) µs, errors $errors, CPU $cpu µs/req"
    done
done

# ---- a second load generator, corrected for coordinated omission ------------------------------------------
# oha at a fixed rate (OHA_LOAD of the slowest proxy's wrk median) with --latency-correction: each request's
# latency counts from when it should have been sent, so a stall shows up in the tail instead of hiding in
# fewer requests. OHA=0 skips it; without oha installed (cargo install oha) it is skipped with a note.
OHA=${OHA:-1}
OHA_SECONDS=${OHA_SECONDS:-10}
OHA_LOAD=${OHA_LOAD:-0.8}
# oha is heavier than wrk: on one core of this kind of machine its own p99 against the bare upstream is
# 0.8 ms at 20k req/s, 1.5 ms at 30k and 6 ms at 40k, so above ~20k it measures itself. OHA_MAX caps the rate.
OHA_MAX=${OHA_MAX:-20000}
OHA_RESULTS="$RUN/oha.tsv"
printf 'round\tcontender\trps\tp50_us\tp99_us\tp999_us\tnon200\n' >"$OHA_RESULTS"
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v c="$1" -v k="$2" 'NR > 1 && $2 == c { print $k }' "$RESULTS"; }
OHA_RATE=""
if [ "$OHA" = 1 ] && command -v oha >/dev/null; then
    slowest=$(for c in "${CONTENDERS[@]}"; do n=${c%%|*}; [ "$n" = direct ] || col "$n" 3 | median; done | sort -g | head -1)
    OHA_RATE=$(printf '%.0f' "$(echo "$slowest * $OHA_LOAD" | bc -l)")
    [ "$OHA_RATE" -gt "$OHA_MAX" ] && OHA_RATE=$OHA_MAX
    log "oha: $OHA_SECONDS s per contender at $OHA_RATE req/s (c=$CONNS), ROUNDS=$ROUNDS interleaved"
    for round in $(seq 1 "$ROUNDS"); do
        for k in $(seq 0 $((n - 1))); do
            IFS='|' read -r name url tokens _ <<<"${CONTENDERS[$(((k + round - 1) % n))]}"
            $(pin "$WRK_CPU") oha -c "$CONNS" -q "$OHA_RATE" -z "${OHA_SECONDS}s" --latency-correction --no-tui \
                --output-format json -H "Authorization: Bearer $(head -1 "$tokens")" "$url" >"$RUN/oha-$name.json" 2>/dev/null ||
                die "oha failed against $name"
            python3 - "$RUN/oha-$name.json" "$round" "$name" >>"$OHA_RESULTS" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution") or {}
# Requests still in flight when the time is up are "aborted due to deadline": not errors.
errors = {k: v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k}
bad = sum(v for k, v in codes.items() if k != "200") + sum(errors.values())
us = lambda x: (x or 0) * 1e6
print(f"{sys.argv[2]}\t{sys.argv[3]}\t{d['summary']['requestsPerSec']:.0f}\t{us(p['p50']):.0f}\t{us(p['p99']):.0f}\t{us(p['p99.9']):.0f}\t{bad}")
PY
            log "oha round $round $name: $(tail -1 "$OHA_RESULTS" | cut -f3-7 | tr '\t' ' ') (rps p50 p99 p99.9 µs, non-200)"
        done
    done
elif [ "$OHA" = 1 ]; then
    log "oha is not installed (cargo install oha): the corrected latency table is skipped"
fi

# ---- access log lines dropped (a logging gateway must keep every line at the bench's rate) ----------------
DROPPED=""
if [ "$ACCESS_LOG" != off ] || [ "$LOG_AB" = 1 ]; then
    for g in "tg-bearer:$TG_PORT" "tg-json:$TGJSON_PORT" "tg-before:$TGBEFORE_PORT"; do
        name=${g%%:*} port=${g##*:}
        # A gateway this run did not start answers nothing (and must not end the run under set -e).
        d=$( (curl -s --max-time 5 "http://127.0.0.1:$((port + 1))/metrics" 2>/dev/null || true) |
            awk '/^tokengate_access_log_dropped_total / { print $2 }')
        if [ -n "$d" ]; then DROPPED="$DROPPED${DROPPED:+, }$name $d"; fi
    done
    log "access log lines dropped: ${DROPPED:-none measured}"
fi

# ---- the gateways' peak memory (VmHWM): what the run cost each in RSS, access log rings included -----------
PEAK=""
for c in "${CONTENDERS[@]}"; do
    name=${c%%|*}
    case $name in tg-*) ;; *) continue ;; esac
    pid=${CPU_PID[$name]:-}
    if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
        PEAK="$PEAK${PEAK:+, }$name $(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status") MiB"
    fi
done

# ---- summary ---------------------------------------------------------------------------------------------
has() { local c; for c in "${CONTENDERS[@]}"; do [ "${c%%|*}" = "$1" ] && return 0; done; return 1; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v c="$1" -v k="$2" 'NR > 1 && $2 == c { print $k }' "$RESULTS"; }
declare -A RPS BEST
TABLE="$RUN/table.md"
{
    echo "| contender | setup | median req/s | best round req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | errors/non-2xx (all rounds) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for c in "${CONTENDERS[@]}"; do
        IFS='|' read -r name _ _ desc <<<"$c"
        RPS[$name]=$(col "$name" 3 | median)
        BEST[$name]=$(col "$name" 3 | sort -g | tail -1)
        printf '| %s | %s | %.0f | %.0f | %.2f | %.2f | %.2f | %.2f | %d |\n' "$name" "$desc" "${RPS[$name]}" "${BEST[$name]}" \
            "$(echo "$(col "$name" 4 | median) / 1000" | bc -l)" "$(echo "$(col "$name" 5 | median) / 1000" | bc -l)" \
            "$(echo "$(col "$name" 7 | median) / 1000" | bc -l)" "$(col "$name" 8 | median)" "$(col "$name" 6 | paste -sd+ | bc)"
    done
    ratio() { printf '%.3f' "$(echo "${RPS[$1]} / ${RPS[$2]}" | bc -l)"; }
    lat() { echo "$(col "$1" "$2" | median) / $(col "$3" "$2" | median)" | bc -l | xargs printf '%.2f'; }
    echo
    echo "Ratios of medians (p50/p99: medians over rounds; on a busy machine compare the best-round column too):"
    echo
    echo "- tokengate / nginx (bearer, $TOKENS tokens): **$(ratio tg-bearer nginx-auth)** × the requests/s;" \
        "latency tokengate / nginx: p50 $(lat tg-bearer 4 nginx-auth), p99 **$(lat tg-bearer 5 nginx-auth)**," \
        "p99.9 $(lat tg-bearer 7 nginx-auth)"
    if has direct; then
        echo "- tokengate / direct: $(ratio tg-bearer direct); nginx / direct: $(ratio nginx-auth direct)"
    fi
    if has tg-nolog && has nginx-nolog; then
        # The log's cost: each round's figure with the log over the same server's without it in that
        # round (paired: the two ran seconds apart, so the machine's drift between rounds, ±10 % here,
        # cancels), median over rounds. COLUMN 3 is requests/s, 8 CPU per request (1.05 = the log adds
        # 5 % to a request). A ratio of the medians over all rounds mixes rounds of different speed.
        paired() {
            awk -F'\t' -v c="$1" -v a="$2" -v b="$3" 'NR > 1 && $2 == a { x[$1] = $c } NR > 1 && $2 == b { y[$1] = $c }
                END { for (r in x) if (y[r] > 0) print x[r] / y[r] }' "$RESULTS" | median | xargs printf '%.3f'
        }
        echo "- the access log's cost in requests/s (with / without, paired per round, median): tokengate $ACCESS_LOG" \
            "**$(paired 3 tg-bearer tg-nolog)**$(has tg-json && echo ", tokengate json **$(paired 3 tg-json tg-nolog)**");" \
            "nginx buffered combined **$(paired 3 nginx-auth nginx-nolog)**; ratio of the medians: tokengate" \
            "$(ratio tg-bearer tg-nolog), nginx $(ratio nginx-auth nginx-nolog); p99 with / without: tokengate" \
            "$(lat tg-bearer 5 tg-nolog), nginx $(lat nginx-auth 5 nginx-nolog)"
        echo "- the access log's cost in CPU per request (with / without, paired per round, median): tokengate" \
            "$ACCESS_LOG **$(paired 8 tg-bearer tg-nolog)**$(has tg-json && echo ", tokengate json **$(paired 8 tg-json tg-nolog)**");" \
            "nginx buffered combined **$(paired 8 nginx-auth nginx-nolog)**"
    fi
    if has tg-json; then
        echo "- tokengate json / nginx (both logging): $(ratio tg-json nginx-auth) × the requests/s; p99 $(lat tg-json 5 nginx-auth)," \
            "p99.9 $(lat tg-json 7 nginx-auth)"
    fi
    if [ -n "$DROPPED" ]; then
        echo "- access log lines dropped over the whole run (\`tokengate_access_log_dropped_total\`): $DROPPED"
    fi
    if [ -n "$PEAK" ]; then
        echo "- peak RSS of each gateway process after the run (VmHWM; tg-bearer, tg-none and tg-limited are one process): $PEAK"
    fi
    for ab in tg-steal tg-before; do
        if has "$ab"; then
            echo "- tg-bearer / $ab (this build's defaults against the other): $(ratio tg-bearer "$ab") × the requests/s;" \
                "latency p50 $(lat tg-bearer 4 "$ab"), p99 **$(lat tg-bearer 5 "$ab")**, p99.9 $(lat tg-bearer 7 "$ab")"
        fi
    done
    if [ -n "$OHA_RATE" ]; then
        echo
        echo "Corrected for coordinated omission (oha -c$CONNS at a fixed $OHA_RATE req/s, --latency-correction," \
            "${OHA_SECONDS}s per contender per round; medians over rounds):"
        echo
        echo "| contender | req/s | p50 ms | p99 ms | p99.9 ms | non-200 |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: |"
        ocol() { awk -F'\t' -v c="$1" -v k="$2" 'NR > 1 && $2 == c { print $k }' "$OHA_RESULTS"; }
        for c in "${CONTENDERS[@]}"; do
            name=${c%%|*}
            printf '| %s | %.0f | %.2f | %.2f | %.2f | %d |\n' "$name" "$(ocol "$name" 3 | median)" \
                "$(echo "$(ocol "$name" 4 | median) / 1000" | bc -l)" "$(echo "$(ocol "$name" 5 | median) / 1000" | bc -l)" \
                "$(echo "$(ocol "$name" 6 | median) / 1000" | bc -l)" "$(ocol "$name" 7 | paste -sd+ | bc)"
        done
    fi
    if ! has tg-none; then
        exit_summary=1
    fi
} >"$TABLE"
if [ -z "${exit_summary:-}" ]; then {
    auth=$(ratio tg-bearer tg-none)
    verdict=$(echo "$auth >= 0.95" | bc -l)
    echo "- bearer / none (the cost of auth): **$auth** → auth costs $(echo "scale=1; (1 - $auth) * 100 / 1" | bc -l) %" \
        "of requests/s; target ≤ 5 %: $([ "$verdict" = 1 ] && echo met || echo NOT met)"
    # Paired: tg-bearer and tg-none are one process measured back to back in every round, so the median of
    # the per-round ratios cancels drift between rounds that the ratio of medians keeps.
    paired=$(awk -F'\t' 'NR > 1 && $2 == "tg-bearer" { b[$1] = $3 } NR > 1 && $2 == "tg-none" { n[$1] = $3 }
        END { for (r in b) if (n[r] > 0) print b[r] / n[r] }' "$RESULTS" | median)
    echo "- bearer / none per round (paired; median of the round ratios): $(printf '%.3f' "$paired")" \
        "→ auth costs $(echo "scale=1; (1 - $paired) * 100 / 1" | bc -l) %"
    limited=$(awk -F'\t' 'NR > 1 && $2 == "tg-bearer" { b[$1] = $3 } NR > 1 && $2 == "tg-limited" { l[$1] = $3 }
        END { for (r in b) if (l[r] > 0) print l[r] / b[r] }' "$RESULTS" | median)
    verdict=$(echo "$limited >= 0.97" | bc -l)
    echo "- limited / bearer per round (paired; a per-token rate limit that never triggers):" \
        "**$(printf '%.3f' "$limited")** → the limit costs $(echo "scale=1; (1 - $limited) * 100 / 1" | bc -l) %;" \
        "target ≤ 3 %: $([ "$verdict" = 1 ] && echo met || echo NOT met)"
    if [ "$BIG_TOKENS" -gt 0 ]; then
        echo "- $BIG_TOKENS tokens / 1 token (tokengate bearer, requests/s): $(ratio tg-big tg-1)"
    fi
} >>"$TABLE"; fi
cat "$TABLE"

if [ "$WRITE_MD" = 1 ]; then
    SECTION="$RUN/section.md"
    {
        echo "### ${SECTION_TITLE:-Load comparison} — $(date -u +%Y-%m-%d)"
        echo
        echo "Machine: $MACHINE."
        echo
        echo "Settings: ROUNDS=$ROUNDS × DURATION=${DURATION}s per contender, interleaved; wrk -t1 -c$CONNS" \
            "(pinned to CPU $WRK_CPU), the proxies on CPU $SERVER_CPU, the upstream on CPU $UPSTREAM_CPU; $WRK_TOKENS tokens round-robin;" \
            "upstream nginx \`return 200\` (3-byte body); access logs: $ACCESS_LOG."
        [ -n "$NOTE" ] && { echo; echo "Note: $NOTE"; }
        echo
        cat "$TABLE"
        echo
        echo "Raw per-round results: \`$RESULTS\` (not kept in the repository)."
    } >"$SECTION"
    replace_section "$REPO/BENCHMARKS.md" "${SECTION_NAME:-load}" "$SECTION"
    log "BENCHMARKS.md: ${SECTION_NAME:-load} section updated"
fi
