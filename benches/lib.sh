# Shared helpers for benches/load.sh, benches/capacity.sh and benches/profile.sh. Sourced, not run.
#
# Everything listens on 127.0.0.1 only. Every process started through `spawn` is recorded and stopped by
# `cleanup` (installed as an EXIT trap by `bench_init`), by its own pid — never by name.

# Repository root and the work directory (seeded databases are cached there between runs).
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/tokengate-bench}
# TG_BIN=...: another build of the gateway (an A/B of two builds: copy one aside, point TG_BIN at it).
TG_BIN=${TG_BIN:-$REPO/target/release/tokengate}
SEED_BIN="$REPO/target/release/examples/seed_tokens"
NPROC=$(nproc)

PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need_tool CMD PACKAGE: fails with an install hint when CMD is missing.
need_tool() {
    command -v "$1" >/dev/null 2>&1 ||
        die "'$1' is not installed; on Debian/Ubuntu: apt-get install -y $2"
}

# Stops every process we started: SIGTERM, then SIGKILL after 3 s.
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 30); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    PIDS=()
}

bench_init() {
    mkdir -p "$BENCH_DIR"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# pin CPU: prints a `taskset -c CPU` prefix when the machine has more than one core and CPU is set.
pin() {
    if [ "$NPROC" -ge 2 ] && [ -n "${1:-}" ] && command -v taskset >/dev/null; then
        echo "taskset -c $1"
    fi
}

# spawn LOGFILE CMD...: starts CMD in the background, records its pid in PIDS and in $SPAWNED.
spawn() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    SPAWNED=$!
    PIDS+=("$SPAWNED")
}

# stop PID: stops one process we started (SIGTERM, then SIGKILL after 3 s) and waits for it.
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# wait_http URL SECONDS [PID]: waits until URL answers (any HTTP status); fails if PID dies first.
wait_http() {
    local url=$1 secs=$2 pid=${3:-}
    local deadline=$((SECONDS + secs))
    while [ $SECONDS -lt $deadline ]; do
        if curl -sk -o /dev/null --max-time 1 "$url"; then return 0; fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.05
    done
    return 1
}

# build_release: the gateway and the seeding example, release profile (SKIP_BUILD=1: use what is built).
build_release() {
    if [ "${SKIP_BUILD:-0}" = 1 ]; then
        [ -x "$TG_BIN" ] && [ -x "$SEED_BIN" ] || die "SKIP_BUILD=1 but $TG_BIN or $SEED_BIN is missing"
        log "SKIP_BUILD=1: using the existing release binaries"
        return
    fi
    log "building release binaries (cargo build --release --bin tokengate --example seed_tokens)"
    (cd "$REPO" && cargo build --release --quiet --bin tokengate --example seed_tokens)
}

# seeded_db N: prints the path of a database holding N tokens and a file with up to KEEP of their
# plaintexts (same name, .txt). Cached in BENCH_DIR (reused when it kept at least KEEP); FRESH=1 re-creates it.
seeded_db() {
    local n=$1 keep=${2:-1024}
    local db="$BENCH_DIR/tokens-$n.db" txt="$BENCH_DIR/tokens-$n.txt"
    local stamp="$BENCH_DIR/tokens-$n.keep-$keep.ok" have=-1 f
    for f in "$BENCH_DIR/tokens-$n".keep-*.ok; do # reuse a database that kept at least as many plaintexts
        [ -f "$f" ] || continue
        f=${f##*.keep-}
        have=${f%.ok}
    done
    if [ "${FRESH:-0}" = 1 ] || [ "$have" -lt "$keep" ]; then
        rm -f "$db" "$db-wal" "$db-shm" "$txt" "$BENCH_DIR/tokens-$n".keep-*.ok
        log "seeding $n tokens into $db (keeping $keep plaintexts)"
        "$SEED_BIN" --db "$db" --count "$n" --users 1000 --write-tokens "$txt" --keep "$keep" \
            2>"$BENCH_DIR/seed-$n.log" >&2
        touch "$stamp"
    fi
    echo "$db"
}

# gateway_config FILE LISTEN ADMIN DB UPSTREAM THREADS: writes a bench configuration with a bearer route
# (/bearer) and a public route (/public, auth = "none") to the same upstream. ACCESS_LOG (off | plain |
# json, default plain: the shipped default) sets `[log] access`, written next to FILE; a tree whose configuration has no `[log]`
# table gets the file without it (and a warning).
gateway_config() {
    cat >"$1" <<CONF
# written by benches/lib.sh
[gateway]
listen = "$2"
threads = $6
grace_period = "1s"
# The load generator is one address (127.0.0.1), with up to 1,000 connections.
max_connections_per_address = 100000

[store]
path = "$4"

[admin]
listen = "$3"

[[routes]]
name = "bearer"
path_prefix = "/bearer"
upstream = "$5"

[[routes]]
name = "public"
path_prefix = "/public"
upstream = "$5"
auth = "none"
CONF
    cp "$1" "$1.base"
    cat >>"$1" <<CONF

[log]
access = "${ACCESS_LOG:-plain}"
access_path = "${1%.toml}-access.log"
CONF
    if ! "$TG_BIN" check-config -c "$1" >/dev/null 2>"$1.check"; then
        log "warning: this tokengate does not take the [log] table ($(tail -1 "$1.check")); access log left at its default"
        cp "$1.base" "$1"
        "$TG_BIN" check-config -c "$1" >/dev/null || die "bench configuration $1 rejected"
    fi
    rm -f "$1.base" "$1.check"
}

# vmrss PID: resident set size in KiB.
vmrss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# machine_line: one line describing the machine and versions, for BENCHMARKS.md.
machine_line() {
    local cpu pingora rustc
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    pingora=$(awk '/^name = "pingora-proxy"$/ {getline; print $3; exit}' "$REPO/Cargo.lock" | tr -d '"')
    rustc=$(rustc -V 2>/dev/null | awk '{print $2}')
    echo "$(date -u +%Y-%m-%dT%H:%MZ), ${NPROC} cores (${cpu:-unknown CPU}), $(uname -r)," \
        "tokengate $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo '+dirty-src')," \
        "pingora ${pingora:-?}, rustc ${rustc:-?}, $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')," \
        "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# replace_section FILE NAME CONTENT_FILE: replaces the text between `<!-- NAME:begin -->` and
# `<!-- NAME:end -->` in FILE with CONTENT_FILE (appends the marked section when the markers are absent).
replace_section() {
    local file=$1 name=$2 content=$3
    local begin="<!-- $name:begin -->" end="<!-- $name:end -->"
    touch "$file"
    if grep -qF "$begin" "$file" && grep -qF "$end" "$file"; then
        awk -v b="$begin" -v e="$end" -v c="$content" '
            $0 == b { print; while ((getline line < c) > 0) print line; skip = 1; next }
            $0 == e { skip = 0 }
            !skip { print }' "$file" >"$file.tmp" && mv "$file.tmp" "$file"
    else
        { echo; echo "$begin"; cat "$content"; echo "$end"; } >>"$file"
    fi
}

# start_upstream CPU: the upstream the benches forward to: nginx, one worker, `return 200 "ok\n"`, access log
# off, on 127.0.0.1:UPSTREAM_PORT, pinned to CPU; its files in RUN/upstream. Sets UPSTREAM_PID.
start_upstream() {
    mkdir -p "$RUN/upstream"
    cat >"$RUN/upstream/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN/upstream.pid;
error_log $RUN/upstream.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 "ok\n"; } }
}
CONF
    spawn "$RUN/upstream.log" $(pin "$1") nginx -p "$RUN/upstream" -c "$RUN/upstream/nginx.conf" -e "$RUN/upstream.error.log"
    UPSTREAM_PID=$SPAWNED
    wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 10 "$UPSTREAM_PID" || die "upstream nginx did not start ($RUN/upstream.log)"
}

# ---- nginx, configured as the benches compare it (one worker; RUN, TOKENS and UPSTREAM_PORT set) ------------
# nginx_common NAME: the top of an nginx.conf: one worker, in the foreground, pid and error log in RUN.
nginx_common() {
    cat <<CONF
worker_processes 1;
daemon off;
master_process on;
pid $RUN/$1.pid;
error_log $RUN/$1.error.log warn;
events { worker_connections 4096; }
CONF
}

# nginx_access_log NAME: nginx's access log as the benches give it: its buffered `combined` log (64 KiB /
# 200 ms, like tokengate's writer thread) to RUN/NAME-access.log, or off when ACCESS_LOG=off.
nginx_access_log() {
    if [ "${ACCESS_LOG:-plain}" = off ]; then
        echo "access_log off;"
    else
        echo "access_log $RUN/$1-access.log combined buffer=64k flush=200ms;"
    fi
}

# nginx_bearer_map NAME TOKENS_FILE: writes RUN/NAME/tokens.map, one entry per token ("Bearer <token>" → a user
# id), and prints the http block's lines that use it: the map of $http_authorization to $user_id and `upstream
# api` (UPSTREAM_PORT, kept alive). nginx's map matches case-insensitively (a token with its letters' case
# changed is accepted too) and only one exact "Bearer " spelling: a performance stand-in, not an equivalent
# check. The bucket size keeps the hash build quick at 1M entries.
nginx_bearer_map() {
    awk '{ printf "\"Bearer %s\" user%d;\n", $0, NR % 1000 }' "$2" >"$RUN/$1/tokens.map"
    cat <<CONF
    keepalive_requests 1000000;
    map_hash_bucket_size 1024;
    map_hash_max_size $((TOKENS * 2 + 1024));
    map \$http_authorization \$user_id {
        default "";
        include $RUN/$1/tokens.map;
    }
    upstream api {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
    }
CONF
}

# nginx_bearer_location PROTO: `location /` doing tokengate's job: 401 without a known bearer, else to `api`
# with the credential removed and x-user-id, X-Forwarded-For and X-Forwarded-Proto (PROTO) set.
nginx_bearer_location() {
    cat <<CONF
        location / {
            if (\$user_id = "") { return 401; }
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header x-user-id \$user_id;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto $1;
        }
CONF
}
