#!/usr/bin/env bash
# HTTP/2 comparison on loopback (issue 28): tokengate's TLS listener speaking h2 next to nginx's http2 doing the
# same job, with the same certificate (ECDSA P-256, made here), the same bearer `map` as load.sh / tls.sh
# (TOKENS entries) and the same HTTP/1.1 keep-alive upstream; and HTTP/2 vs HTTP/1.1 on the same gateway.
#
# Contenders, each one worker pinned to SERVER_CPU with the upstream; h2load (nghttp2-client) alone on WRK_CPU:
#   nginx-h2   nginx 1 worker, `listen ... ssl http2` (or `http2 on;` from nginx 1.25.1), bearer map, keep-alive pool
#   tg-h2      tokengate threads = 1, [tls] listener (ALPN h2 by default), bearer route, the same TOKENS tokens
#   tg-h1      the same gateway process over TLS HTTP/1.1 (h2load --h1), 100 connections × 1 request: the same
#              100 requests in flight as either HTTP/2 shape (HTTP/1.1 does not multiplex; h2load --h1 -m 10
#              would pipeline, which no real client does)
# Shapes: -c 10 -m 10 (10 connections × 10 concurrent streams) and -c 100 -m 1.
# Each run: h2load -t1 -D DURATION --warm-up-time WARMUP, one `authorization: Bearer <token>` (h2load sends one
# header set: the first seeded token, for every contender; tokengate's max_in_flight_per_token is lifted),
# per-request latencies from --log-file → p50/p99/p99.9 (nearest rank).
# A run with failed/errored/timed-out requests or any non-2xx status is recorded as errors, and the script
# then exits 1 (and does not touch BENCHMARKS.md). Rounds interleaved, starting contender rotated; medians.
#
# Usage: benches/http2.sh            (ROUNDS=3 DURATION=10 TOKENS=100000)
#        SKIP_BUILD=1 ROUNDS=1 DURATION=3 TOKENS=1000 WRITE_MD=0 benches/http2.sh     (a quick check)
# Other knobs: WARMUP (1, seconds), SERVER_CPU (0), WRK_CPU (1), BASE_PORT (19480), WRITE_MD=0,
#              ACCESS_LOG=off|plain|json (default plain, as tls.sh), KEEP_RUN=1 (keep the work directory).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
TOKENS=${TOKENS:-100000}
SERVER_CPU=${SERVER_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
BASE_PORT=${BASE_PORT:-19480}
WRITE_MD=${WRITE_MD:-1}
KEEP_RUN=${KEEP_RUN:-0}
ACCESS_LOG=${ACCESS_LOG:-plain}
export ACCESS_LOG

UPSTREAM_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
TG_PORT=$((BASE_PORT + 10)) # admin +1, TLS +2
TG_TLS_PORT=$((BASE_PORT + 12))

need_tool nginx nginx-light
need_tool h2load nghttp2-client
need_tool curl curl
need_tool openssl openssl
need_tool bc bc
[ "$NPROC" -ge 2 ] && need_tool taskset util-linux
nginx -V 2>&1 | grep -q -- --with-http_v2_module || die "this nginx has no http_v2 module (nginx-light lacks it; apt-get install -y nginx)"

bench_init
RUN="$BENCH_DIR/http2-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"
FAILED=1 # cleared once the table is printed without errors; a failed run keeps its work directory
trap 'cleanup; if [ "$FAILED" = 0 ] && [ "$KEEP_RUN" != 1 ]; then rm -rf "$RUN"; else log "work directory kept: $RUN"; fi' EXIT
log "work directory: $RUN"
MACHINE=$(machine_line)
build_release
DB=$(seeded_db "$TOKENS" "$TOKENS")
TOKENS_FILE="$BENCH_DIR/tokens-$TOKENS.txt"
TOKEN=$(head -1 "$TOKENS_FILE")

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$RUN/server.key" -out "$RUN/server.pem" 2>/dev/null
chmod 600 "$RUN/server.key"

# ---- upstream and nginx-h2 (configuration as tls.sh's, plus http2) ---------------------------------------
mkdir -p "$RUN/upstream" "$RUN/nginx-h2"
{
    nginx_common upstream
    echo "http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 \"ok\n\"; } } }"
} >"$RUN/upstream/nginx.conf"
spawn "$RUN/upstream.log" $(pin "$SERVER_CPU") nginx -p "$RUN/upstream" -c "$RUN/upstream/nginx.conf" -e "$RUN/upstream.error.log"
wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 10 "$SPAWNED" || die "upstream nginx did not start"

NGINX_VERSION=$(nginx -v 2>&1 | sed 's|.*nginx/||')
if [ "$(printf '%s\n1.25.1\n' "$NGINX_VERSION" | sort -V | head -1)" = 1.25.1 ]; then
    NGINX_LISTEN="listen 127.0.0.1:$NGINX_PORT ssl; http2 on;"
else
    NGINX_LISTEN="listen 127.0.0.1:$NGINX_PORT ssl http2;" # `http2 on;` is 1.25.1+
fi
{
    nginx_common nginx-h2
    echo "http {"
    echo "    $(nginx_access_log nginx-h2)"
    nginx_bearer_map nginx-h2 "$TOKENS_FILE"
    cat <<CONF
    server {
        $NGINX_LISTEN
        ssl_certificate $RUN/server.pem;
        ssl_certificate_key $RUN/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
CONF
    nginx_bearer_location https
    echo "    }"
    echo "}"
} >"$RUN/nginx-h2/nginx.conf"
spawn "$RUN/nginx-h2.log" $(pin "$SERVER_CPU") nginx -p "$RUN/nginx-h2" -c "$RUN/nginx-h2/nginx.conf" -e "$RUN/nginx-h2.error.log"
wait_http "https://127.0.0.1:$NGINX_PORT/" 120 "$SPAWNED" || die "nginx-h2 did not start ($RUN/nginx-h2.error.log)"

# ---- tokengate: one thread, TLS listener with the default ALPN (h2, http/1.1) -----------------------------
gateway_config "$RUN/tg.toml" "127.0.0.1:$TG_PORT" "127.0.0.1:$((TG_PORT + 1))" "$DB" "127.0.0.1:$UPSTREAM_PORT" 1
# Every h2load request carries the same token: lift the per-token in-flight cap (32: 100 in flight would get
# 429 concurrency_limited), as gateway_config lifts the per-address one. nginx has neither.
sed -i 's/^max_connections_per_address = .*/&\nmax_in_flight_per_token = 100000/' "$RUN/tg.toml"
printf '\n[tls]\nlisten = "127.0.0.1:%s"\n[[tls.certificates]]\ncert = "%s"\nkey = "%s"\n' \
    "$TG_TLS_PORT" "$RUN/server.pem" "$RUN/server.key" >>"$RUN/tg.toml"
"$TG_BIN" check-config -c "$RUN/tg.toml" >/dev/null || die "tokengate TLS configuration rejected"
RUST_LOG=warn spawn "$RUN/tg.log" $(pin "$SERVER_CPU") "$TG_BIN" serve -c "$RUN/tg.toml"
TG_PID=$SPAWNED
wait_http "http://127.0.0.1:$((TG_PORT + 1))/healthz" 300 "$TG_PID" || die "tokengate did not start ($RUN/tg.log)"

# name|url|h2load protocol options|expected ALPN
NGINX_URL="https://127.0.0.1:$NGINX_PORT/bearer/hives/7"
TG_URL="https://127.0.0.1:$TG_TLS_PORT/bearer/hives/7"
for c in "nginx-h2|$NGINX_URL|--http2|2" "tg-h2|$TG_URL|--http2|2" "tg-h1|$TG_URL|--http1.1|1.1"; do
    IFS='|' read -r name url opt want <<<"$c"
    got=$(curl -sk "$opt" -o /dev/null -w '%{http_code} %{http_version}' -H "Authorization: Bearer $TOKEN" "$url")
    [ "$got" = "200 $want" ] || die "$name answered '$got' instead of '200 $want' at $url"
    got=$(curl -sk "$opt" -o /dev/null -w '%{http_code}' -H "Authorization: Bearer not-a-token" "$url")
    [ "$got" = 401 ] || die "$name answered $got instead of 401 to an unknown token"
done

# run_h2load NAME URL CLIENTS STREAMS SECONDS [EXTRA...]: one h2load run; prints
# "rps p50_us p99_us p999_us errors" (errors: failed, errored, timed out or not 2xx).
run_h2load() {
    local name=$1 url=$2 c=$3 m=$4 secs=$5
    shift 5
    local out="$RUN/h2load-$name-c$c-m$m.last" lat="$RUN/h2load-$name-c$c-m$m.log" alpn
    $(pin "$WRK_CPU") h2load -t1 -c "$c" -m "$m" -D "$secs" --warm-up-time "$WARMUP" \
        -H "authorization: Bearer $TOKEN" --log-file "$lat" "$@" "$url" >"$out" 2>&1 ||
        die "h2load failed against $name (c=$c m=$m): $(tail -5 "$out")"
    alpn=$(sed -n 's/^Application protocol: //p' "$out" | head -1)
    case "$name" in *-h2) [ "$alpn" = h2 ] ;; *-h1) [ "$alpn" = http/1.1 ] ;; esac ||
        die "$name negotiated '${alpn:-nothing}' ($out)"
    grep -q '^finished in' "$out" || die "no result from h2load against $name ($out)"
    local rps errors
    rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$out")
    # h2load's "failed" counts network errors, timeouts and statuses ≥ 400; 3xx counts as success: add it.
    errors=$(awk '/^requests:/ { e += $10 } /^status codes:/ { e += $5 } END { print e + 0 }' "$out")
    if [ "$errors" -gt 0 ] || ! kill -0 "$TG_PID" 2>/dev/null; then
        cp "$out" "$RUN/failed-$name-c$c-m$m-$(date +%H%M%S).txt"
        log "ERRORS against $name (c=$c m=$m): $(grep -E '^(requests|status codes):' "$out" | tr '\n' ' ')"
        kill -0 "$TG_PID" 2>/dev/null || die "tokengate died ($RUN/tg.log): $(tail -5 "$RUN/tg.log")"
    fi
    # Per-request log: start (µs since epoch), status, latency (µs). Nearest-rank percentiles.
    printf '%s %s %s\n' "$rps" "$(cut -f3 "$lat" | sort -n | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "0 0 0"; exit }
        split("0.5 0.99 0.999", q, " ")
        for (i = 1; i <= 3; i++) { r = int(q[i] * NR + 0.999999); if (r < 1) r = 1; printf "%s%s", a[r], (i < 3 ? " " : "") }
    }')" "$errors"
    rm -f "$lat"
}

# shape|contender|url|extra h2load options
RUNS=(
    "10x10|nginx-h2|$NGINX_URL|"
    "10x10|tg-h2|$TG_URL|"
    "100x1|nginx-h2|$NGINX_URL|"
    "100x1|tg-h2|$TG_URL|"
    "100x1|tg-h1|$TG_URL|--h1"
)
RESULTS="$RUN/results.tsv"
printf 'round\tshape\tcontender\trps\tp50_us\tp99_us\tp999_us\terrors\n' >"$RESULTS"
n=${#RUNS[@]}
for round in $(seq 1 "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
        IFS='|' read -r shape name url extra <<<"${RUNS[$(((k + round - 1) % n))]}"
        run_h2load "$name" "$url" "${shape%x*}" "${shape#*x}" "$DURATION" $extra >"$RUN/last" # not $(...): die must end the script
        read -r rps p50 p99 p999 errors <"$RUN/last"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$shape" "$name" "$rps" "$p50" "$p99" "$p999" "$errors" >>"$RESULTS"
        log "round $round $shape $name: $rps/s p50 $p50 µs p99 $p99 µs p99.9 $p999 µs errors $errors"
    done
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
med() { awk -F'\t' -v s="$1" -v c="$2" -v f="$3" 'NR > 1 && $2 == s && $3 == c { print $f }' "$RESULTS" | median; }
ms() { printf '%.2f' "$(echo "$1 / 1000" | bc -l)"; }
TABLE="$RUN/table.md"
ERRORS=$(awk -F'\t' 'NR > 1 { e += $8 } END { print e + 0 }' "$RESULTS")
{
    echo "| shape | contender | requests/s | p50 ms | p99 ms | p99.9 ms | tokengate / nginx-h2 |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
    for shape in 10x10 100x1; do
        label="${shape%x*} conns × ${shape#*x} stream$([ "${shape#*x}" = 1 ] || echo s)"
        nr=$(med "$shape" nginx-h2 4)
        np99=$(med "$shape" nginx-h2 6)
        for name in nginx-h2 tg-h2 tg-h1; do
            awk -F'\t' -v s="$shape" -v c="$name" 'NR > 1 && $2 == s && $3 == c { f = 1 } END { exit !f }' "$RESULTS" || continue
            r=$(med "$shape" "$name" 4)
            if [ "$name" = nginx-h2 ]; then ratio="—"; else
                ratio=$(printf 'req/s **%.3f**, p99 %.2f' "$(echo "$r / $nr" | bc -l)" "$(echo "$(med "$shape" "$name" 6) / $np99" | bc -l)")
            fi
            printf '| %s | %s | %.0f | %s | %s | %s | %s |\n' "$label" "$name" "$r" "$(ms "$(med "$shape" "$name" 5)")" \
                "$(ms "$(med "$shape" "$name" 6)")" "$(ms "$(med "$shape" "$name" 7)")" "$ratio"
        done
    done
    echo
    for shape in 10x10 100x1; do
        rr=$(echo "$(med "$shape" tg-h2 4) >= $(med "$shape" nginx-h2 4)" | bc)
        pp=$(echo "$(med "$shape" tg-h2 6) <= $(med "$shape" nginx-h2 6)" | bc)
        printf '%s × %s, issue 28 targets for tg-h2: requests/s ≥ 1.0× nginx-h2 %s, p99 ≤ nginx-h2 %s.\n' "${shape%x*}" \
            "${shape#*x}" "$([ "$rr" = 1 ] && echo met || echo "**not met**")" "$([ "$pp" = 1 ] && echo met || echo "**not met**")"
    done
    printf 'HTTP/2 vs HTTP/1.1 on the same gateway (100 connections × 1): tg-h2 / tg-h1 requests/s %.3f, p99 %.2f.\n' \
        "$(echo "$(med 100x1 tg-h2 4) / $(med 100x1 tg-h1 4)" | bc -l)" "$(echo "$(med 100x1 tg-h2 6) / $(med 100x1 tg-h1 6)" | bc -l)"
    echo "Failed, errored, timed-out or non-2xx requests over all runs: $ERRORS$(awk -F'\t' \
        'NR > 1 && $8 > 0 { printf "%s%s %s round %s: %s", (s ? "; " : " ("), $2, $3, $1, $8; s = 1 } END { if (s) printf ")" }' "$RESULTS")."
} >"$TABLE"
cat "$TABLE"
[ "$ERRORS" = 0 ] || die "$ERRORS requests failed or were not 2xx: see $RUN/failed-* and $RUN/tg.log"
FAILED=0

if [ "$WRITE_MD" = 1 ]; then
    SECTION="$RUN/section.md"
    {
        echo "### HTTP/2 comparison — $(date -u +%Y-%m-%d)"
        echo
        echo "Machine: $MACHINE, $(h2load --version | head -1)."
        echo
        echo "Settings: ROUNDS=$ROUNDS × DURATION=${DURATION}s (after ${WARMUP}s warm-up), interleaved; h2load -t1 on CPU" \
            "$WRK_CPU, servers and upstream on CPU $SERVER_CPU; one ECDSA P-256 certificate; $TOKENS tokens in the" \
            "gateway's store and nginx's map, every request with the same one; tokengate threads = 1 with rustls" \
            "(ring), nginx $NGINX_VERSION 1 worker with $(openssl version | awk '{print $1, $2}'); access logs: $ACCESS_LOG." \
            "tg-h1 is the same gateway over TLS HTTP/1.1, 100 connections × 1 request (the same requests in flight as" \
            "10 × 10). Latency percentiles from h2load's per-request log; ratios: tokengate / nginx-h2 in the same shape."
        echo
        cat "$TABLE"
    } >"$SECTION"
    section=http2
    [ "$ACCESS_LOG" = plain ] || section="http2-log-$ACCESS_LOG"
    replace_section "$REPO/BENCHMARKS.md" "$section" "$SECTION"
    log "BENCHMARKS.md: $section section updated"
fi
