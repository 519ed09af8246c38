#!/usr/bin/env bash
# TLS comparison on loopback: tokengate's own TLS listener next to nginx doing the same job over TLS, with
# the same certificate (ECDSA P-256, made here with openssl) and the same upstream.
#
# Contenders, each one worker pinned to SERVER_CPU with the upstream; wrk / curl alone on WRK_CPU:
#   nginx-tls   nginx 1 worker: TLS 1.2/1.3, the bearer map of load.sh (TOKENS entries), keep-alive pool
#   tg-tls      tokengate threads = 1, [tls] listener, bearer route, the same TOKENS tokens
# Measurements (rounds interleaved, starting contender rotated; medians reported):
#   keepalive   wrk -c CONNS, keep-alive: requests/s, p50/p99/p99.9
#   handshake   wrk -c HS_CONNS with `Connection: close`: every request is a new TCP connection and a full
#               TLS handshake (wrk's OpenSSL client does not resume sessions): new connections/s
#   upload      curl -T of a UPLOAD_MIB file (Content-Length) over TLS: MiB/s; nginx with
#               proxy_request_buffering off, client_max_body_size 0
#
# Usage: benches/tls.sh            (ROUNDS=3 DURATION=10 TOKENS=100000 UPLOAD_MIB=1024)
#        ROUNDS=1 DURATION=3 TOKENS=1000 UPLOAD_MIB=256 benches/tls.sh     (a quick check)
# Other knobs: CONNS (32), HS_CONNS (16), SERVER_CPU (0), WRK_CPU (1), BASE_PORT (19080), WRITE_MD=0.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
TOKENS=${TOKENS:-100000}
UPLOAD_MIB=${UPLOAD_MIB:-1024}
CONNS=${CONNS:-32}
HS_CONNS=${HS_CONNS:-16}
WRK_TOKENS=${WRK_TOKENS:-1024}
SERVER_CPU=${SERVER_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
BASE_PORT=${BASE_PORT:-19080}
WRITE_MD=${WRITE_MD:-1}

UPSTREAM_PORT=$((BASE_PORT + 1))
ECHO_PORT=$((BASE_PORT + 3)) # reads every upload byte (nginx's `return 200` would answer before the body)
NGINX_PORT=$((BASE_PORT + 2))
TG_PORT=$((BASE_PORT + 10)) # admin +1, TLS +2
TG_TLS_PORT=$((BASE_PORT + 12))

need_tool nginx nginx-light
need_tool wrk wrk
need_tool curl curl
need_tool openssl openssl
need_tool bc bc
[ "$NPROC" -ge 2 ] && need_tool taskset util-linux

bench_init
RUN="$BENCH_DIR/tls-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"
log "work directory: $RUN"
MACHINE=$(machine_line)
build_release
DB=$(seeded_db "$TOKENS" "$TOKENS")
TOKENS_FILE="$BENCH_DIR/tokens-$TOKENS.txt"

# ---- one certificate for both ----------------------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$RUN/server.key" -out "$RUN/server.pem" 2>/dev/null
chmod 600 "$RUN/server.key"

mkdir -p "$RUN/upstream" "$RUN/nginx-tls"
{
    nginx_common upstream
    cat <<CONF
http {
    access_log off;
    keepalive_requests 1000000;
    client_max_body_size 0;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location / { return 200 "ok\n"; }
    }
}
CONF
} >"$RUN/upstream/nginx.conf"
spawn "$RUN/upstream.log" $(pin "$SERVER_CPU") nginx -p "$RUN/upstream" -c "$RUN/upstream/nginx.conf" -e "$RUN/upstream.error.log"
wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 10 "$SPAWNED" || die "upstream nginx did not start"
(cd "$REPO" && cargo build --release --quiet --example echo_upstream)
spawn "$RUN/echo.log" $(pin "$SERVER_CPU") "$REPO/target/release/examples/echo_upstream" --listen "127.0.0.1:$ECHO_PORT" --name upload
wait_http "http://127.0.0.1:$ECHO_PORT/" 10 "$SPAWNED" || die "echo upstream did not start"

# ACCESS_LOG (plain by default, as shipped): tokengate logs each request to a file, nginx writes its buffered
# `combined` log; off: neither logs.
ACCESS_LOG=${ACCESS_LOG:-plain}
export ACCESS_LOG
{
    nginx_common nginx-tls
    echo "http {"
    echo "    $(nginx_access_log nginx-tls)"
    nginx_bearer_map nginx-tls "$TOKENS_FILE"
    cat <<CONF
    client_max_body_size 0;
    upstream upload {
        server 127.0.0.1:$ECHO_PORT;
        keepalive 8;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $RUN/server.pem;
        ssl_certificate_key $RUN/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location /upload {
            if (\$user_id = "") { return 401; }
            proxy_pass http://upload;
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header x-user-id \$user_id;
        }
CONF
    nginx_bearer_location https
    echo "    }"
    echo "}"
} >"$RUN/nginx-tls/nginx.conf"
spawn "$RUN/nginx-tls.log" $(pin "$SERVER_CPU") nginx -p "$RUN/nginx-tls" -c "$RUN/nginx-tls/nginx.conf" -e "$RUN/nginx-tls.error.log"
wait_http "https://127.0.0.1:$NGINX_PORT/" 120 "$SPAWNED" || die "nginx-tls did not start ($RUN/nginx-tls.error.log)"

gateway_config "$RUN/tg.toml" "127.0.0.1:$TG_PORT" "127.0.0.1:$((TG_PORT + 1))" "$DB" "127.0.0.1:$UPSTREAM_PORT" 1
cat >>"$RUN/tg.toml" <<CONF

[[routes]]
name = "upload"
path_prefix = "/upload"
upstream = "127.0.0.1:$ECHO_PORT"

[tls]
listen = "127.0.0.1:$TG_TLS_PORT"
[[tls.certificates]]
cert = "$RUN/server.pem"
key = "$RUN/server.key"
CONF
"$TG_BIN" check-config -c "$RUN/tg.toml" >/dev/null || die "tokengate TLS configuration rejected"
RUST_LOG=warn spawn "$RUN/tg.log" $(pin "$SERVER_CPU") "$TG_BIN" serve -c "$RUN/tg.toml"
wait_http "http://127.0.0.1:$((TG_PORT + 1))/healthz" 300 "$SPAWNED" || die "tokengate did not start ($RUN/tg.log)"

CONTENDERS=(
    "nginx-tls|https://127.0.0.1:$NGINX_PORT/bearer/hives/7"
    "tg-tls|https://127.0.0.1:$TG_TLS_PORT/bearer/hives/7"
)
for c in "${CONTENDERS[@]}"; do
    IFS='|' read -r name url <<<"$c"
    code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(head -1 "$TOKENS_FILE")" "$url")
    [ "$code" = 200 ] || die "$name answered $code instead of 200 at $url"
done

# run_wrk NAME URL SECONDS CONNS [EXTRA...]: one wrk run; prints its RESULT line.
run_wrk() {
    local name=$1 url=$2 secs=$3 conns=$4
    shift 4
    TG_TOKENS_FILE=$TOKENS_FILE TG_WRK_TOKENS=$WRK_TOKENS $(pin "$WRK_CPU") \
        wrk -t1 -c"$conns" -d"${secs}s" --timeout 2s -s "$REPO/benches/wrk_bearer.lua" "$@" "$url" \
        >"$RUN/wrk-$name.last" 2>&1 || die "wrk failed against $name: $(cat "$RUN/wrk-$name.last")"
    grep '^RESULT' "$RUN/wrk-$name.last" || die "no RESULT line from wrk against $name"
}

UPLOAD="$BENCH_DIR/upload-${UPLOAD_MIB}MiB.bin"
[ -f "$UPLOAD" ] && [ "$(stat -c %s "$UPLOAD")" = $((UPLOAD_MIB * 1048576)) ] ||
    head -c $((UPLOAD_MIB * 1048576)) /dev/urandom >"$UPLOAD"
# upload NAME URL: prints MiB/s of one curl -T over TLS.
upload() {
    local out
    out=$($(pin "$WRK_CPU") curl -sk -o "$RUN/upload-$1.json" -w '%{http_code} %{time_total}' -T "$UPLOAD" \
        -H "Authorization: Bearer $(head -1 "$TOKENS_FILE")" "$2") || die "upload to $1 failed"
    [ "${out%% *}" = 200 ] || die "upload to $1 answered ${out%% *}"
    grep -q "\"body_bytes\":$((UPLOAD_MIB * 1048576))" "$RUN/upload-$1.json" || die "the upstream did not get every byte from $1"
    echo "$UPLOAD_MIB / ${out##* }" | bc -l
}

log "warm-up"
for c in "${CONTENDERS[@]}"; do
    IFS='|' read -r name url <<<"$c"
    run_wrk "$name" "$url" 2 "$CONNS" >/dev/null
done

RESULTS="$RUN/results.tsv"
printf 'round\tkind\tcontender\tvalue\tp50_us\tp99_us\tp999_us\terrors\n' >"$RESULTS"
get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }
record() { # round kind name RESULT-line
    local e=$(($(get connect_err "$4") + $(get read_err "$4") + $(get write_err "$4") + $(get status_err "$4") + $(get timeouts "$4")))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(get rps "$4")" "$(get p50_us "$4")" \
        "$(get p99_us "$4")" "$(get p999_us "$4")" "$e" >>"$RESULTS"
    log "round $1 $2 $3: $(get rps "$4")/s p50 $(get p50_us "$4") µs p99 $(get p99_us "$4") µs errors $e"
}
n=${#CONTENDERS[@]}
for round in $(seq 1 "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
        IFS='|' read -r name url <<<"${CONTENDERS[$(((k + round - 1) % n))]}"
        record "$round" keepalive "$name" "$(run_wrk "$name" "$url" "$DURATION" "$CONNS")"
        record "$round" handshake "$name" "$(run_wrk "$name" "$url" "$DURATION" "$HS_CONNS" -H "Connection: close")"
        mibs=$(upload "$name" "${url%/bearer/hives/7}/upload/clip.bin")
        printf '%s\tupload\t%s\t%s\t0\t0\t0\t0\n' "$round" "$name" "$mibs" >>"$RESULTS"
        log "round $round upload $name: $(printf '%.0f' "$mibs") MiB/s"
    done
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v k="$1" -v c="$2" -v f="$3" 'NR > 1 && $2 == k && $3 == c { print $f }' "$RESULTS"; }
ms() { printf '%.2f' "$(echo "$1 / 1000" | bc -l)"; }
TABLE="$RUN/table.md"
{
    echo "| measurement | nginx-tls | tg-tls | tokengate / nginx |"
    echo "| --- | ---: | ---: | ---: |"
    for kind in keepalive handshake upload; do
        a=$(col "$kind" nginx-tls 4 | median)
        b=$(col "$kind" tg-tls 4 | median)
        unit=$([ "$kind" = upload ] && echo "MiB/s" || echo "/s")
        label=$(case $kind in keepalive) echo "keep-alive requests/s (c=$CONNS)";; handshake) echo "new TLS connections/s, one request each (c=$HS_CONNS)";; upload) echo "${UPLOAD_MIB} MiB upload, MiB/s";; esac)
        printf '| %s | %.0f | %.0f | **%.3f** |\n' "$label" "$a" "$b" "$(echo "$b / $a" | bc -l)"
        if [ "$kind" != upload ]; then
            for p in 5:p50 6:p99 7:p99.9; do
                f=${p%%:*}
                printf '| … %s latency, ms | %s | %s | %.2f |\n' "${p##*:}" "$(ms "$(col "$kind" nginx-tls "$f" | median)")" \
                    "$(ms "$(col "$kind" tg-tls "$f" | median)")" \
                    "$(echo "$(col "$kind" tg-tls "$f" | median) / $(col "$kind" nginx-tls "$f" | median)" | bc -l)"
            done
        fi
    done
    echo
    echo "Errors/non-2xx over all rounds: nginx-tls $(col keepalive nginx-tls 8 | paste -sd+ | bc) + $(col handshake nginx-tls 8 | paste -sd+ | bc)," \
        "tg-tls $(col keepalive tg-tls 8 | paste -sd+ | bc) + $(col handshake tg-tls 8 | paste -sd+ | bc) (keep-alive + handshake runs)."
} >"$TABLE"
cat "$TABLE"

if [ "$WRITE_MD" = 1 ]; then
    SECTION="$RUN/section.md"
    {
        echo "### TLS comparison — $(date -u +%Y-%m-%d)"
        echo
        echo "Machine: $MACHINE."
        echo
        echo "Settings: ROUNDS=$ROUNDS × DURATION=${DURATION}s, interleaved; one ECDSA P-256 certificate for both;" \
            "servers and upstream on CPU $SERVER_CPU, wrk/curl on CPU $WRK_CPU; $TOKENS tokens; tokengate with rustls" \
            "(ring), nginx with $(openssl version | awk '{print $1, $2}'); access logs: $ACCESS_LOG."
        echo
        cat "$TABLE"
    } >"$SECTION"
    replace_section "$REPO/BENCHMARKS.md" tls "$SECTION"
    log "BENCHMARKS.md: tls section updated"
fi
