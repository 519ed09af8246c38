#!/usr/bin/env bash
# The verify listener against the gateway's own proxying, and what delegating costs nginx.
#
# Contenders (one tokengate process, threads = 1, TOKENS tokens; the upstream: nginx, 1 worker, `return 200`):
#   tg-verify     wrk → tokengate's verify listener: GET /verify, X-Forwarded-Uri /bearer/hives/7 (an answer,
#                 no upstream)
#   tg-bearer     wrk → tokengate's gateway listener, bearer route → upstream (a proxied request)
#   nginx-map     wrk → nginx (1 worker) checking the token itself with a map of TOKENS entries → upstream
#   nginx-authreq wrk → nginx (1 worker) with auth_request → tokengate's verify listener, then → upstream
# Targets (issue 26): tg-verify ≥ 2 × tg-bearer requests/s on one core; nginx-authreq / nginx-map is the cost
# of delegating the check. Besides wrk's requests/s (which a busy or slow load generator caps), the tokengate
# process's own CPU time per request is read from /proc around each tokengate run: requests per CPU-second
# of tokengate is the "on one core" figure that does not depend on what else shares the machine.
#
# Like benches/load.sh: wrk -t1 -cCONNS alone on WRK_CPU, everything else on SERVER_CPU (so requests/s is the
# total server-side CPU a request costs), rounds interleaved with the starting contender rotated, medians.
#
# Usage: benches/verify.sh                (ROUNDS=3 DURATION=10 TOKENS=100000)
#        ROUNDS=2 DURATION=3 TOKENS=10000 benches/verify.sh     (a quick check)
# Knobs: CONNS (32), WRK_TOKENS (1024), SERVER_CPU (0), WRK_CPU (1), BASE_PORT (18180), WRITE_MD=0, NOTE="...".
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
TOKENS=${TOKENS:-100000}
CONNS=${CONNS:-32}
WRK_TOKENS=${WRK_TOKENS:-1024}
SERVER_CPU=${SERVER_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
BASE_PORT=${BASE_PORT:-18180}
WRITE_MD=${WRITE_MD:-1}
NOTE=${NOTE:-}

UPSTREAM_PORT=$((BASE_PORT + 1))
MAP_PORT=$((BASE_PORT + 2))
AUTHREQ_PORT=$((BASE_PORT + 3))
TG_PORT=$((BASE_PORT + 10))    # admin on +1
VERIFY_PORT=$((BASE_PORT + 12))

need_tool nginx nginx-light
need_tool wrk wrk
need_tool curl curl
need_tool bc bc
[ "$NPROC" -ge 2 ] && need_tool taskset util-linux

bench_init
RUN="$BENCH_DIR/verify-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN/upstream" "$RUN/nginx-map" "$RUN/nginx-authreq"
log "work directory: $RUN"
MACHINE=$(machine_line)
build_release
DB=$(seeded_db "$TOKENS" "$TOKENS")
TOKENS_FILE="$BENCH_DIR/tokens-$TOKENS.txt"

nginx_head() {
    cat <<CONF
worker_processes 1;
daemon off;
pid $RUN/$1.pid;
error_log $RUN/$1.error.log warn;
events { worker_connections 4096; }
CONF
}
start_nginx() { # NAME PORT
    spawn "$RUN/$1.log" $(pin "$SERVER_CPU") nginx -p "$RUN/$1" -c "$RUN/$1/nginx.conf" -e "$RUN/$1.error.log"
    wait_http "http://127.0.0.1:$2/" 120 "$SPAWNED" || die "$1 did not start ($RUN/$1.error.log)"
}

# ---- upstream ----------------------------------------------------------------------------------------------
{
    nginx_head upstream
    cat <<CONF
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 "ok\n"; } }
}
CONF
} >"$RUN/upstream/nginx.conf"
start_nginx upstream "$UPSTREAM_PORT"

# ---- tokengate: gateway and verify listener in one process ------------------------------------------------
gateway_config "$RUN/tg.toml" "127.0.0.1:$TG_PORT" "127.0.0.1:$((TG_PORT + 1))" "$DB" "127.0.0.1:$UPSTREAM_PORT" 1
cat >>"$RUN/tg.toml" <<CONF

[verify]
listen = "127.0.0.1:$VERIFY_PORT"
trusted_proxies = ["127.0.0.1/32"]
CONF
"$TG_BIN" check-config -c "$RUN/tg.toml" >/dev/null || die "this tokengate does not take [verify]"
RUST_LOG=warn spawn "$RUN/tg.log" $(pin "$SERVER_CPU") "$TG_BIN" serve -c "$RUN/tg.toml"
TG_PID=$SPAWNED
wait_http "http://127.0.0.1:$((TG_PORT + 1))/healthz" 300 "$SPAWNED" || die "tokengate did not start ($RUN/tg.log)"

# ---- nginx alone, the token map (as in benches/load.sh) ---------------------------------------------------
awk '{ printf "\"Bearer %s\" user%d;\n", $0, NR % 1000 }' "$TOKENS_FILE" >"$RUN/nginx-map/tokens.map"
{
    nginx_head nginx-map
    cat <<CONF
http {
    access_log off;
    keepalive_requests 1000000;
    map_hash_bucket_size 1024;
    map_hash_max_size $((TOKENS * 2 + 1024));
    map \$http_authorization \$user_id { default ""; include $RUN/nginx-map/tokens.map; }
    upstream api { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$MAP_PORT;
        location / {
            if (\$user_id = "") { return 401; }
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header x-user-id \$user_id;
        }
    }
}
CONF
} >"$RUN/nginx-map/nginx.conf"
start_nginx nginx-map "$MAP_PORT"

# ---- nginx delegating to tokengate (the README's auth_request snippet, with keep-alive pools) -------------
{
    nginx_head nginx-authreq
    cat <<CONF
http {
    access_log off;
    keepalive_requests 1000000;
    upstream api { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
    upstream tokengate { server 127.0.0.1:$VERIFY_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$AUTHREQ_PORT;
        location = /_tokengate {
            internal;
            proxy_pass http://tokengate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Forwarded-Uri \$request_uri;
            proxy_set_header X-Forwarded-Method \$request_method;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-For \$remote_addr;
        }
        location / {
            auth_request /_tokengate;
            auth_request_set \$tg_user \$upstream_http_x_user_id;
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header x-user-id \$tg_user;
        }
    }
}
CONF
} >"$RUN/nginx-authreq/nginx.conf"
start_nginx nginx-authreq "$AUTHREQ_PORT"

# ---- contenders: name|url|extra wrk header|description ----------------------------------------------------
CONTENDERS=(
    "tg-verify|http://127.0.0.1:$VERIFY_PORT/verify|X-Forwarded-Uri: /bearer/hives/7|tokengate verify listener, threads=1 (an answer, no upstream)"
    "tg-bearer|http://127.0.0.1:$TG_PORT/bearer/hives/7||tokengate gateway, threads=1, bearer → upstream"
    "nginx-map|http://127.0.0.1:$MAP_PORT/bearer/hives/7||nginx 1 worker, map of $TOKENS tokens → upstream"
    "nginx-authreq|http://127.0.0.1:$AUTHREQ_PORT/bearer/hives/7||nginx 1 worker, auth_request → tokengate verify → upstream"
)
for c in "${CONTENDERS[@]}"; do
    IFS='|' read -r name url header _ <<<"$c"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(head -1 "$TOKENS_FILE")" \
        ${header:+-H "$header"} "$url")
    [ "$code" = 200 ] || die "$name answered $code instead of 200 at $url"
done

run_wrk() { # NAME URL HEADER SECONDS
    TG_TOKENS_FILE=$TOKENS_FILE TG_WRK_TOKENS=$WRK_TOKENS $(pin "$WRK_CPU") \
        wrk -t1 -c"$CONNS" -d"$4s" --timeout 2s ${3:+-H "$3"} -s "$REPO/benches/wrk_bearer.lua" "$2" \
        >"$RUN/wrk-$1.last" 2>&1 || die "wrk failed against $1: $(cat "$RUN/wrk-$1.last")"
    grep '^RESULT' "$RUN/wrk-$1.last" || die "no RESULT line from wrk against $1"
}

RESULTS="$RUN/results.tsv"
echo -e "round\tcontender\trps\tp50_us\tp99_us\terrors\tp999_us\ttg_cpu_ticks\trequests" >"$RESULTS"
for c in "${CONTENDERS[@]}"; do # warm-up
    IFS='|' read -r name url header _ <<<"$c"
    run_wrk "$name" "$url" "$header" 2 >/dev/null
done
n=${#CONTENDERS[@]}
for round in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
        IFS='|' read -r name url header _ <<<"${CONTENDERS[$(((i + round) % n))]}"
        cpu0=$(awk '{ print $14 + $15 }' "/proc/$TG_PID/stat")
        line=$(run_wrk "$name" "$url" "$header" "$DURATION")
        cpu1=$(awk '{ print $14 + $15 }' "/proc/$TG_PID/stat")
        get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
        errs=$(($(get connect_err) + $(get read_err) + $(get write_err) + $(get status_err) + $(get timeouts)))
        echo -e "$round\t$name\t$(get rps)\t$(get p50_us)\t$(get p99_us)\t$errs\t$(get p999_us)\t$((cpu1 - cpu0))\t$(get requests)" >>"$RESULTS"
        log "round $round $name: $(get rps) req/s, p50 $(get p50_us) µs, p99 $(get p99_us) µs, errors $errs"
    done
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v c="$1" -v k="$2" 'NR > 1 && $2 == c { print $k }' "$RESULTS"; }
declare -A RPS
TABLE="$RUN/table.md"
{
    echo "| contender | setup | median req/s | best round req/s | p50 ms | p99 ms | errors/non-2xx (all rounds) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    for c in "${CONTENDERS[@]}"; do
        IFS='|' read -r name _ _ desc <<<"$c"
        RPS[$name]=$(col "$name" 3 | median)
        printf '| %s | %s | %.0f | %.0f | %.2f | %.2f | %d |\n' "$name" "$desc" "${RPS[$name]}" \
            "$(col "$name" 3 | sort -g | tail -1)" "$(echo "$(col "$name" 4 | median) / 1000" | bc -l)" \
            "$(echo "$(col "$name" 5 | median) / 1000" | bc -l)" "$(col "$name" 6 | paste -sd+ | bc)"
    done
    ratio() { printf '%.2f' "$(echo "${RPS[$1]} / ${RPS[$2]}" | bc -l)"; }
    echo
    v=$(ratio tg-verify tg-bearer)
    echo "- verify answers / proxied requests (tokengate, one core): **$v** ×; target ≥ 2: $([ "$(echo "$v >= 2" | bc -l)" = 1 ] && echo met || echo NOT met)"
    echo "- nginx + auth_request → tokengate / nginx alone with its map: **$(ratio nginx-authreq nginx-map)** × the requests/s (the cost of delegating)"
    hz=$(getconf CLK_TCK)
    per_cpu() { awk -F'\t' -v c="$1" -v hz="$hz" 'NR > 1 && $2 == c && $8 > 0 { print $9 * hz / $8 }' "$RESULTS" | median; }
    pv=$(per_cpu tg-verify) pb=$(per_cpu tg-bearer)
    cr=$(echo "$pv / $pb" | bc -l)
    printf -- "- tokengate's own CPU (from /proc): %.0f verify answers vs %.0f proxied requests per CPU-second (medians over rounds): **%.2f** ×; target ≥ 2: %s\n" \
        "$pv" "$pb" "$cr" "$([ "$(echo "$cr >= 2" | bc -l)" = 1 ] && echo met || echo NOT met)"
} >"$TABLE"
cat "$TABLE"

if [ "$WRITE_MD" = 1 ]; then
    SECTION="$RUN/section.md"
    {
        echo "### Verify listener — $(date -u +%Y-%m-%d)"
        echo
        echo "Machine: $MACHINE."
        echo
        echo "Settings: ROUNDS=$ROUNDS × DURATION=${DURATION}s per contender, interleaved; wrk -t1 -c$CONNS (CPU $WRK_CPU)," \
            "servers on CPU $SERVER_CPU; $WRK_TOKENS of $TOKENS tokens round-robin; \`benches/verify.sh\`."
        [ -n "$NOTE" ] && { echo; echo "Note: $NOTE"; }
        echo
        cat "$TABLE"
    } >"$SECTION"
    replace_section "$REPO/BENCHMARKS.md" verify "$SECTION"
    log "BENCHMARKS.md: verify section updated"
fi
