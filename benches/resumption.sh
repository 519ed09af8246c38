#!/usr/bin/env bash
# TLS for battery devices (issue 27), tokengate next to nginx on the same certificate (ECDSA P-256, one
# certificate in the chain) and the same upstream, each one worker pinned to SERVER_CPU, the clients on
# WRK_CPU:
#   bytes       what the server sends in a full and in a resumed handshake (openssl s_client's "SSL
#               handshake has read N bytes"), TLS 1.3 and 1.2: the device's radio cost
#   handshakes  openssl s_time -new (full handshakes) and -reuse (resumed) for SECONDS: connections/s;
#               nginx resumes with a shared ticket key file (ssl_session_ticket_key), tokengate with its
#               store-shared keys
#   records     wrk keep-alive requests/s for a 64 KiB response over TLS, tokengate with
#               max_fragment_size = 4096 against without (the price of small records)
# Rounds are interleaved (ROUNDS, medians). Access logs: off for all (this is about the handshake).
#
# Usage: benches/resumption.sh        (ROUNDS=3 SECONDS_EACH=5)
#        ROUNDS=1 SECONDS_EACH=2 WRITE_MD=0 benches/resumption.sh     (a quick check)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-5}
SERVER_CPU=${SERVER_CPU:-0}
WRK_CPU=${WRK_CPU:-1}
BASE_PORT=${BASE_PORT:-19280}
WRITE_MD=${WRITE_MD:-1}
UPSTREAM_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
TG_PORT=$((BASE_PORT + 10))     # admin +1
TG_TLS_PORT=$((BASE_PORT + 12))
TGF_PORT=$((BASE_PORT + 20))    # max_fragment_size = 4096; admin +1
TGF_TLS_PORT=$((BASE_PORT + 22))

need_tool nginx nginx-light
need_tool openssl openssl
need_tool wrk wrk
need_tool curl curl
[ "$NPROC" -ge 2 ] && need_tool taskset util-linux

bench_init
RUN="$BENCH_DIR/resumption-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN/upstream" "$RUN/nginx"
log "work directory: $RUN"
MACHINE=$(machine_line)
build_release
DB="$RUN/tokens.db"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$RUN/server.key" -out "$RUN/server.pem" 2>/dev/null
chmod 600 "$RUN/server.key"
openssl rand 80 >"$RUN/ticket.key" # nginx's shared ticket key file (what every node would get a copy of)
head -c 65536 /dev/urandom >"$RUN/upstream/big"

cat >"$RUN/upstream/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN/upstream.pid;
error_log $RUN/upstream.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        location /big { alias $RUN/upstream/big; }
        location / { return 200 "ok\n"; }
    }
}
CONF
spawn "$RUN/upstream.log" $(pin "$SERVER_CPU") nginx -p "$RUN/upstream" -c "$RUN/upstream/nginx.conf" -e "$RUN/upstream.error.log"
wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 10 "$SPAWNED" || die "upstream nginx did not start"

cat >"$RUN/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN/nginx.pid;
error_log $RUN/nginx.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream api { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $RUN/server.pem;
        ssl_certificate_key $RUN/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        ssl_session_ticket_key $RUN/ticket.key;
        ssl_session_timeout 24h;
        location / {
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
spawn "$RUN/nginx.log" $(pin "$SERVER_CPU") nginx -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -e "$RUN/nginx.error.log"
wait_http "https://127.0.0.1:$NGINX_PORT/" 30 "$SPAWNED" || die "nginx did not start ($RUN/nginx.error.log)"

# start_tg NAME PORT TLS_PORT [EXTRA_TLS_LINE]: a gateway with a public route to the upstream.
start_tg() {
    local name=$1 port=$2 tls_port=$3
    ACCESS_LOG=off gateway_config "$RUN/$name.toml" "127.0.0.1:$port" "127.0.0.1:$((port + 1))" "$DB" "127.0.0.1:$UPSTREAM_PORT" 1
    cat >>"$RUN/$name.toml" <<CONF

[tls]
listen = "127.0.0.1:$tls_port"
${4:-}
[[tls.certificates]]
cert = "$RUN/server.pem"
key = "$RUN/server.key"
CONF
    "$TG_BIN" check-config -c "$RUN/$name.toml" >/dev/null || die "$name: configuration rejected"
    RUST_LOG=warn spawn "$RUN/$name.log" $(pin "$SERVER_CPU") "$TG_BIN" serve -c "$RUN/$name.toml"
    wait_http "http://127.0.0.1:$((port + 1))/healthz" 120 "$SPAWNED" || die "$name did not start ($RUN/$name.log)"
}
start_tg tg "$TG_PORT" "$TG_TLS_PORT"
start_tg tgf "$TGF_PORT" "$TGF_TLS_PORT" "max_fragment_size = 4096"

RESULTS="$RUN/results.tsv"
printf 'round\tcontender\tmeasure\tvalue\n' >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

# handshake_bytes NAME PORT VERSION: bytes the server sent in a full and in a resumed handshake.
handshake_bytes() {
    local name=$1 port=$2 version=$3 sess="$RUN/sess-$1$3.pem" full resumed
    full=$(printf 'GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
        openssl s_client -connect "127.0.0.1:$port" -servername localhost "$version" -ign_eof -sess_out "$sess" 2>&1 |
        sed -n 's/^SSL handshake has read \([0-9]*\) bytes.*/\1/p' | head -1)
    resumed=$(printf 'GET /public/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
        openssl s_client -connect "127.0.0.1:$port" -servername localhost "$version" -ign_eof -sess_in "$sess" 2>&1 |
        tee "$RUN/resumed-$name$version.txt" | sed -n 's/^SSL handshake has read \([0-9]*\) bytes.*/\1/p' | head -1)
    grep -q '^Reused,' "$RUN/resumed-$name$version.txt" || resumed="not resumed"
    echo "$full|$resumed"
}

# s_time NAME PORT MODE: handshakes per wall-clock second (MODE -new: full, -reuse: resumed) over
# SECONDS_EACH, TLS 1.2 (s_time's -reuse resumes a TLS 1.2 session; with TLS 1.3 it does not wait for the
# ticket). s_time's own "connections/user sec" divides by the client's CPU time, not by time passed.
s_time() {
    local start end n
    start=$EPOCHREALTIME
    n=$($(pin "$WRK_CPU") openssl s_time -connect "127.0.0.1:$2" "$3" -time "$SECONDS_EACH" -tls1_2 2>/dev/null |
        sed -n 's/^\([0-9]*\) connections in .* real seconds.*/\1/p' | tail -1)
    end=$EPOCHREALTIME
    echo "${n:-0} / ($end - $start)" | bc -l
}
# closed_count PORT: tokengate's handshakes the client closed midway.
closed_count() {
    curl -s "http://127.0.0.1:$(($1 + 1))/metrics" |
        awk '/^tokengate_tls_handshake_failed_total\{reason="closed"/ { n += $2 } END { print n + 0 }'
}
# resumed_count PORT: tokengate's resumed handshakes so far (its admin listener is PORT + 1).
resumed_count() {
    curl -s "http://127.0.0.1:$(($1 + 1))/metrics" |
        awk '/^tokengate_tls_handshakes_total\{kind="resumed"/ { n += $2 } END { print n + 0 }'
}

log "handshake bytes"
declare -A BYTES
for v in -tls1_3 -tls1_2; do
    BYTES[nginx$v]=$(handshake_bytes nginx "$NGINX_PORT" "$v")
    BYTES[tg$v]=$(handshake_bytes tg "$TG_TLS_PORT" "$v")
done

for round in $(seq 1 "$ROUNDS"); do
    for c in "nginx|$NGINX_PORT" "tg|$TG_TLS_PORT"; do
        IFS='|' read -r name port <<<"$c"
        record "$round" "$name" full "$(s_time "$name" "$port" -new)"
        record "$round" "$name" resumed "$(s_time "$name" "$port" -reuse)"
    done
    for c in "tg|$TG_TLS_PORT" "tgf|$TGF_TLS_PORT"; do
        IFS='|' read -r name port <<<"$c"
        $(pin "$WRK_CPU") wrk -t1 -c16 -d"${SECONDS_EACH}s" "https://127.0.0.1:$port/public/big" >"$RUN/wrk-$name.last" 2>&1
        record "$round" "$name" big_rps "$(sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p' "$RUN/wrk-$name.last")"
    done
    log "round $round/$ROUNDS: $(awk -F'\t' -v r="$round" '$1 == r { printf "%s %s %s; ", $2, $3, $4 }' "$RESULTS")"
done

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
m() { awk -F'\t' -v c="$1" -v k="$2" 'NR > 1 && $2 == c && $3 == k { print $4 }' "$RESULTS" | median; }
TABLE="$RUN/table.md"
{
    echo "| | nginx (shared ticket key file) | tokengate (keys in the store) | tokengate / nginx |"
    echo "| --- | ---: | ---: | ---: |"
    for k in full resumed; do
        printf '| %s handshakes/s (TLS 1.2, openssl s_time) | %.0f | %.0f | %.2f |\n' "$k" "$(m nginx "$k")" "$(m tg "$k")" \
            "$(echo "$(m tg "$k") / $(m nginx "$k")" | bc -l)"
    done
    for v in -tls1_3 -tls1_2; do
        for i in 1 2; do
            kind=$([ "$i" = 1 ] && echo full || echo resumed)
            printf '| bytes the server sends, %s handshake, TLS %s | %s | %s | |\n' "$kind" "$(tr _ . <<<"${v#-tls}")" \
                "$(cut -d'|' -f"$i" <<<"${BYTES[nginx$v]}")" "$(cut -d'|' -f"$i" <<<"${BYTES[tg$v]}")"
        done
    done
    echo
    echo "- tokengate counted $(resumed_count "$TG_PORT") completed resumed handshakes and $(closed_count "$TG_PORT") closed by" \
        "the client mid-handshake: s_time closes each connection as soon as its own Finished is sent, so the server" \
        "mostly sees a reset before it reads that Finished (the same for both servers; s_time's rows measure how fast" \
        "each server answers a resumption, not a completed exchange)."
    printf -- '- 64 KiB responses over TLS, keep-alive (wrk -c16): max_fragment_size = 4096 %.0f req/s, without %.0f req/s → %.3f×\n' \
        "$(m tgf big_rps)" "$(m tg big_rps)" "$(echo "$(m tgf big_rps) / $(m tg big_rps)" | bc -l)"
} >"$TABLE"
cat "$TABLE"

if [ "$WRITE_MD" = 1 ]; then
    SECTION="$RUN/section.md"
    {
        echo "### TLS for battery devices: resumption and record size — $(date -u +%Y-%m-%d)"
        echo
        echo "Machine: $MACHINE."
        echo
        echo "Settings: ROUNDS=$ROUNDS × ${SECONDS_EACH}s, interleaved, medians; one worker each on CPU $SERVER_CPU with the" \
            "upstream, the clients (openssl s_time, wrk) on CPU $WRK_CPU; one ECDSA P-256 certificate; access logs off."
        echo
        cat "$TABLE"
    } >"$SECTION"
    replace_section "$REPO/BENCHMARKS.md" resumption "$SECTION"
    log "BENCHMARKS.md: resumption section updated"
fi
