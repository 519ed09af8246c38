#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for tokengate's tests (CI and developers alike).
#
#   eval "$(.ci/postgres.sh start [--tls])"  # prints `export TOKENGATE_TEST_PG_URL=...` (and the CA with --tls)
#   .ci/postgres.sh stop                     # stops the cluster and removes its directory
#   .ci/postgres.sh run CMD...               # start --tls, run CMD with the exports, stop (CMD's exit code)
#
# `start` installs PostgreSQL with apt-get when no initdb is found (under /usr/lib/postgresql/*/bin or on PATH),
# runs `initdb` into a fresh directory, starts the server on a free port of 127.0.0.1 only (socket in that
# directory), and creates the role `tokengate` (a generated password, SCRAM over TCP) and its database
# `tokengate_test`; the role may create databases, so tests make one per test. With `--tls` the server also
# offers TLS with a certificate for 127.0.0.1/localhost from a CA made here (TOKENGATE_TEST_PG_CA).
# Durability is off (fsync, synchronous_commit, full_page_writes): nothing here must survive a crash.
# Both commands are idempotent: `start` on a running cluster prints its exports again.
# Only the export lines go to stdout; everything else goes to stderr.
# As root the cluster runs as `postgres` (made by the Debian package) or else a system user `tokengate-ci`:
# initdb and postgres refuse to run as root.
set -euo pipefail

STATE_DIR=${TOKENGATE_PG_DIR:-${TMPDIR:-/tmp}/tokengate-ci-pg}
ROLE=tokengate
DATABASE=tokengate_test

log() { echo "postgres.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# Where initdb, pg_ctl and psql live: the newest /usr/lib/postgresql/N/bin (Debian, Ubuntu), else PATH.
find_bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    done
    if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return 0; fi
    return 1
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# apt-get install PACKAGES, without the default cluster Debian would otherwise create and start on 5432.
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "no apt-get here: install PostgreSQL (initdb) by hand"
    log "installing $* with apt-get"
    as_root mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" |
        as_root tee /etc/postgresql-common/createcluster.d/tokengate-ci.conf >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# The unprivileged user that runs the cluster when this script runs as root; empty otherwise.
RUN_USER=""
pick_user() {
    [ "$(id -u)" -eq 0 ] || return 0
    if id postgres >/dev/null 2>&1; then
        RUN_USER=postgres
    else
        id tokengate-ci >/dev/null 2>&1 ||
            useradd --system --no-create-home --shell /usr/sbin/nologin tokengate-ci
        RUN_USER=tokengate-ci
    fi
}

as_user() {
    if [ -z "$RUN_USER" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$RUN_USER" -- "$@"
    else
        su -s /bin/sh "$RUN_USER" -c "$(printf '%q ' "$@")"
    fi
}

# A port nothing listens on (bash's /dev/tcp connect fails). The server's bind is the real test: start retries.
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
}

running() { [ -f "$STATE_DIR/data/postmaster.pid" ] && as_user "$BIN/pg_ctl" -D "$STATE_DIR/data" status >/dev/null 2>&1; }

make_certs() {
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    local d="$STATE_DIR/tls"
    mkdir -p "$d"
    printf '[req]\ndistinguished_name=dn\n[dn]\n[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$d/ca.cnf"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 7 -config "$d/ca.cnf" \
        -extensions ca -subj "/CN=tokengate test CA" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -config "$d/ca.cnf" \
        -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 7 \
        -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
    chmod 0600 "$d/server.key" "$d/ca.key"
    chmod 0644 "$d/ca.crt"
}

start() {
    local tls=0
    case "${1:-}" in --tls) tls=1 ;; "") ;; *) die "unknown option $1 (start [--tls])" ;; esac
    if running; then
        if grep -qx "tls=$tls" "$STATE_DIR/meta" 2>/dev/null; then
            log "already running"
            cat "$STATE_DIR/env"
            return
        fi
        log "running with another TLS setting; starting afresh"
    fi
    stop 2>/dev/null
    mkdir -p "$STATE_DIR"
    chmod 0711 "$STATE_DIR" # the CA certificate inside is read by the tests, whoever runs them
    [ -z "$RUN_USER" ] || chown "$RUN_USER" "$STATE_DIR"
    cd "$STATE_DIR" # the cluster's user may not be able to enter the caller's directory
    as_user "$BIN/initdb" -D "$STATE_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C --no-sync >"$STATE_DIR/initdb.log" 2>&1 ||
        { cat "$STATE_DIR/initdb.log" >&2; die "initdb failed"; }
    mkdir -m 0700 "$STATE_DIR/sock" # local connections are trusted: only the cluster's user (and root) get in
    local conf="$STATE_DIR/data/postgresql.conf"
    cat >>"$conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$STATE_DIR/sock'
unix_socket_permissions = 0700
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    if [ "$tls" = 1 ]; then
        make_certs
        cat >>"$conf" <<EOF
ssl = on
ssl_cert_file = '$STATE_DIR/tls/server.crt'
ssl_key_file = '$STATE_DIR/tls/server.key'
EOF
    fi
    [ -z "$RUN_USER" ] || chown -R "$RUN_USER" "$STATE_DIR"
    local port try
    for try in 1 2 3 4 5; do
        port=$(free_port)
        if as_user "$BIN/pg_ctl" -D "$STATE_DIR/data" -l "$STATE_DIR/server.log" -o "-p $port" -w -t 60 \
            start >/dev/null; then
            break
        fi
        grep -q "could not bind" "$STATE_DIR/server.log" 2>/dev/null || { cat "$STATE_DIR/server.log" >&2; die "the server did not start"; }
        [ "$try" = 5 ] && die "no free port after 5 tries"
    done
    local password
    password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    # Through stdin, so that the password never shows in a process list.
    as_user "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$STATE_DIR/sock" -p "$port" -U postgres -d postgres >&2 <<EOF
CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$password';
CREATE DATABASE $DATABASE OWNER $ROLE;
EOF
    {
        echo "export TOKENGATE_TEST_PG_URL=postgres://$ROLE:$password@127.0.0.1:$port/$DATABASE"
        [ "$tls" = 0 ] || echo "export TOKENGATE_TEST_PG_CA=$STATE_DIR/tls/ca.crt"
    } >"$STATE_DIR/env"
    echo "tls=$tls" >"$STATE_DIR/meta"
    chmod 0600 "$STATE_DIR/env"
    log "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, data in $STATE_DIR"
    cat "$STATE_DIR/env"
}

stop() {
    [ -d "$STATE_DIR" ] || return 0
    if [ -f "$STATE_DIR/data/postmaster.pid" ]; then
        as_user "$BIN/pg_ctl" -D "$STATE_DIR/data" -m immediate -w stop >/dev/null 2>&1 ||
            kill -9 "$(head -n1 "$STATE_DIR/data/postmaster.pid")" 2>/dev/null || true
    fi
    rm -rf "$STATE_DIR"
    log "stopped; removed $STATE_DIR"
}

pick_user
case "${1:-}" in
start)
    BIN=$(find_bindir) || { apt_install postgresql; BIN=$(find_bindir) || die "initdb still not found"; }
    shift
    start "$@"
    ;;
stop)
    BIN=$(find_bindir) || BIN=/nonexistent
    stop
    ;;
run)
    shift
    [ $# -gt 0 ] || die "usage: $0 run CMD..."
    BIN=$(find_bindir) || { apt_install postgresql; BIN=$(find_bindir) || die "initdb still not found"; }
    # A cluster of this run's own, whatever else runs on the machine.
    [ -n "${TOKENGATE_PG_DIR:-}" ] || STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tokengate-pg-run.XXXXXX")
    trap stop EXIT
    eval "$(start --tls)"
    export CI=${CI:-true} # the PostgreSQL tests fail rather than skip without their cluster
    set +e
    "$@"
    code=$?
    set -e
    exit "$code"
    ;;
*) die "usage: $0 start [--tls] | stop | run CMD..." ;;
esac
