#!/usr/bin/env bash
# Propagation and fleet capacity on loopback, with a throw-away PostgreSQL cluster (.ci/postgres.sh):
#   fleet      3 gateways on one PostgreSQL database: ROUNDS rounds of create (admin API of node i) → 200
#              on the other nodes, revoke (admin API of node i+1) → 401 on the other nodes
#              (examples/propagation.rs; ≥ 200 revokes across 3 nodes by default)
#   same-host  1 gateway on SQLite: `token create` → 200 and `token revoke` → 401, timed from the CLI's exit
#   quota      2 gateways on PostgreSQL (usage_flush_interval QUOTA_FLUSH), one token with a quota of QUOTA
#              per day, wrk at full speed against both nodes at once: accepted in total vs the quota (the
#              overshoot a shared quota allows: each node sees the others' use one flush late)
#   capacity   BIG_TOKENS tokens in PostgreSQL: start-up (index load) and RSS of one gateway, and a revoke
#              honoured fleet-wide while wrk loads the nodes (BIG_TOKENS=0 skips)
#
# Usage: benches/fleet.sh            (ROUNDS=200 BIG_TOKENS=1000000)
#        ROUNDS=20 BIG_TOKENS=0 benches/fleet.sh       (a quick check)
# Other knobs: BASE_PORT (21080), WRITE_MD=0.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${ROUNDS:-200}
BIG_TOKENS=${BIG_TOKENS:-1000000}
BASE_PORT=${BASE_PORT:-21080}
WRITE_MD=${WRITE_MD:-1}
QUOTA=${QUOTA:-100000}
QUOTA_FLUSH=${QUOTA_FLUSH:-1s}
need_tool curl curl
need_tool wrk wrk

bench_init
RUN="$BENCH_DIR/fleet-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RUN"
log "work directory: $RUN"
MACHINE=$(machine_line)
build_release
(cd "$REPO" && cargo build --release --quiet --example propagation --example echo_upstream)
PROBE="$REPO/target/release/examples/propagation"
ECHO="$REPO/target/release/examples/echo_upstream"

export TOKENGATE_PG_DIR="$RUN/pg"
eval "$(bash "$REPO/.ci/postgres.sh" start)"
trap 'bash "$REPO/.ci/postgres.sh" stop; cleanup' EXIT
PG_URL=$TOKENGATE_TEST_PG_URL

spawn "$RUN/upstream.log" "$ECHO" --listen "127.0.0.1:$BASE_PORT" --name api
wait_http "http://127.0.0.1:$BASE_PORT/" 10 "$SPAWNED" || die "upstream did not start"

# node NAME PORT STORE_KEY STORE_VALUE: a gateway config (bearer route /bearer) on PORT, admin on PORT+1.
node_config() {
    cat >"$RUN/$1.toml" <<CONF
[gateway]
listen = "127.0.0.1:$2"
threads = 1
sync_interval = "100ms"
[store]
$3 = "$4"
[admin]
listen = "127.0.0.1:$(($2 + 1))"
[throttle]
max_failures = 0
[[routes]]
name = "bearer"
path_prefix = "/bearer"
upstream = "127.0.0.1:$BASE_PORT"
CONF
}
start_node() { # NAME PORT
    RUST_LOG=${RUST_LOG:-warn} spawn "$RUN/$1.log" "$TG_BIN" serve -c "$RUN/$1.toml"
    wait_http "http://127.0.0.1:$(($2 + 1))/healthz" 300 "$SPAWNED" || die "$1 did not start ($RUN/$1.log)"
}

# ---- fleet -----------------------------------------------------------------------------------------------
NODES=()
for i in 1 2 3; do
    port=$((BASE_PORT + 10 * i))
    node_config "node$i" "$port" url "$PG_URL"
    NODES+=(--node "127.0.0.1:$((port + 1)),127.0.0.1:$port")
done
"$TG_BIN" -c "$RUN/node1.toml" store migrate >/dev/null
ADMIN=$("$TG_BIN" -c "$RUN/node1.toml" token create --user ops --label bench --scope admin 2>/dev/null)
for i in 1 2 3; do start_node "node$i" $((BASE_PORT + 10 * i)); done
log "fleet: $ROUNDS rounds over 3 nodes"
FLEET=$("$PROBE" "${NODES[@]}" --admin-token "$ADMIN" --rounds "$ROUNDS" | tee "$RUN/fleet.out" | grep '^RESULT')

# ---- same host (SQLite + CLI) ----------------------------------------------------------------------------
port=$((BASE_PORT + 50))
node_config single "$port" path "$RUN/single.db"
start_node single "$port"
log "same host: $ROUNDS CLI creates and revokes"
SAME=$("$PROBE" --node "127.0.0.1:$((port + 1)),127.0.0.1:$port" --cli "$TG_BIN -c $RUN/single.toml" \
    --rounds "$ROUNDS" | tee "$RUN/same.out" | grep '^RESULT')

# ---- quota: one token, two nodes at full speed --------------------------------------------------------------
QPORTS=($((BASE_PORT + 70)) $((BASE_PORT + 80)))
for k in 0 1; do
    node_config "quota$k" "${QPORTS[$k]}" url "$PG_URL"
    sed -i "s/^sync_interval = .*/&\nusage_flush_interval = \"$QUOTA_FLUSH\"/" "$RUN/quota$k.toml"
    start_node "quota$k" "${QPORTS[$k]}"
done
qtok=$("$TG_BIN" -c "$RUN/quota0.toml" token create --user quota --label "quota bench" --quota "$QUOTA/day" 2>/dev/null)
free=$("$TG_BIN" -c "$RUN/quota0.toml" token create --user quota --label "no quota" 2>/dev/null)
sleep 1
# Each node's accept rate with the same client, measured alone first (what one flush interval is worth).
rates=()
for k in 0 1; do
    out=$(wrk -t1 -c16 -d3s -H "Authorization: Bearer $free" "http://127.0.0.1:${QPORTS[$k]}/bearer/q")
    rates+=("$(awk '/Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")")
done
for k in 0 1; do
    spawn "$RUN/wrk-quota$k.log" wrk -t1 -c16 -d10s -H "Authorization: Bearer $qtok" "http://127.0.0.1:${QPORTS[$k]}/bearer/q"
    WRKQ[$k]=$SPAWNED
done
wait "${WRKQ[0]}" "${WRKQ[1]}" || true
accepted=()
for k in 0 1; do
    total=$(awk '/requests in/ { print $1 }' "$RUN/wrk-quota$k.log")
    non2xx=$(awk '/Non-2xx/ { print $NF }' "$RUN/wrk-quota$k.log")
    accepted+=($((total - ${non2xx:-0})))
done
sum=$((accepted[0] + accepted[1]))
over=$((sum - QUOTA))
flush_s=$(sed 's/ms$/\/1000/; s/s$//' <<<"$QUOTA_FLUSH" | bc -l)
bound=$(printf '%.0f' "$(echo "$flush_s * (${rates[0]} + ${rates[1]})" | bc -l)")
log "quota: ${accepted[0]} + ${accepted[1]} = $sum accepted of $QUOTA (overshoot $over; one flush interval of the other node, summed: ≤ $bound)"
echo "quota of $QUOTA/day on one token, wrk -c16 at full speed against 2 nodes at once for 10 s, usage_flush_interval $QUOTA_FLUSH: node 1 accepted ${accepted[0]}, node 2 ${accepted[1]}, $sum in total → overshoot $over ($(echo "scale=2; $over * 100 / $QUOTA" | bc -l) % of the quota); the bound, one flush interval of the other node's traffic per node (each node alone: ${rates[0]} and ${rates[1]} req/s), is $bound" >"$RUN/quota.out"

# ---- capacity: BIG_TOKENS in PostgreSQL ------------------------------------------------------------------
if [ "$BIG_TOKENS" -gt 0 ]; then
    log "seeding $BIG_TOKENS tokens into PostgreSQL"
    "$SEED_BIN" --db "$PG_URL" --count "$BIG_TOKENS" --users 1000 --write-tokens "$RUN/big.txt" --keep 16 \
        >"$RUN/seed.log" 2>&1
    port=$((BASE_PORT + 60))
    node_config big "$port" url "$PG_URL"
    t0=$(date +%s%N)
    RUST_LOG=info start_node big "$port"
    startup_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    load=$(grep -o 'loaded [0-9]* tokens from [^ ]* in [0-9.]*[a-zµ]*' "$RUN/big.log" | sed 's/ from [^ ]*//' || true)
    rss=$(vmrss "$SPAWNED")
    log "big: $startup_ms ms to /healthz ($load), RSS $rss KiB"
    # A revoke honoured on all four nodes while wrk loads node 1 and the big node with another token.
    tok=$(sed -n 1p "$RUN/big.txt")
    victim=$(sed -n 2p "$RUN/big.txt")
    spawn "$RUN/wrk1.log" wrk -t1 -c16 -d15s -H "Authorization: Bearer $tok" "http://127.0.0.1:$((BASE_PORT + 10))/bearer/load"
    spawn "$RUN/wrk2.log" wrk -t1 -c16 -d15s -H "Authorization: Bearer $tok" "http://127.0.0.1:$port/bearer/load"
    sleep 3
    # Seed i belongs to user(i % 1000): the second kept plaintext (i = 1) is user1's first token.
    vid=$(curl -s -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$((BASE_PORT + 11))/api/tokens?user=user1" |
        grep -o '"id":[0-9]*' | awk -F: 'NR == 1 { print $2 }')
    [ -n "$vid" ] || die "no token of user1 found through the admin API"
    t0=$(date +%s%N)
    curl -s -o /dev/null -X DELETE -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$((BASE_PORT + 11))/api/tokens/$vid"
    worst=0
    for p in $((BASE_PORT + 10)) $((BASE_PORT + 20)) $((BASE_PORT + 30)) $port; do
        until [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $victim" "http://127.0.0.1:$p/bearer/x")" = 401 ]; do
            [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt 10 ] || die "node on $p still accepts the revoked token after 10 s"
        done
        d=$(( ($(date +%s%N) - t0) / 1000000 ))
        [ "$d" -gt "$worst" ] && worst=$d
    done
    log "big: revoke of token $vid honoured by all 4 nodes within $worst ms under load"
    echo "start-up to /healthz $startup_ms ms ($load), RSS $((rss / 1024)) MiB; a revoke through node 1's API honoured by all 4 nodes (2 of them under wrk load) within $worst ms (curl-polled, so an upper bound)" >"$RUN/big.out"
fi

get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }
TABLE="$RUN/table.md"
{
    echo "| measurement | p50 ms | p99 ms | max ms | samples |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    echo "| fleet (3 nodes, PostgreSQL): create via one node's API → 200 on each other node | $(get create_to_200_p50_ms "$FLEET") | $(get create_to_200_p99_ms "$FLEET") | $(get create_to_200_max_ms "$FLEET") | $((ROUNDS * 2)) |"
    echo "| fleet (3 nodes, PostgreSQL): revoke via another node's API → 401 on each other node | $(get revoke_to_401_p50_ms "$FLEET") | $(get revoke_to_401_p99_ms "$FLEET") | $(get revoke_to_401_max_ms "$FLEET") | $((ROUNDS * 2)) |"
    echo "| same host (SQLite): \`token create\` exits → 200 | $(get create_to_200_p50_ms "$SAME") | $(get create_to_200_p99_ms "$SAME") | $(get create_to_200_max_ms "$SAME") | $ROUNDS |"
    echo "| same host (SQLite): \`token revoke\` exits → 401 | $(get revoke_to_401_p50_ms "$SAME") | $(get revoke_to_401_p99_ms "$SAME") | $(get revoke_to_401_max_ms "$SAME") | $ROUNDS |"
    echo
    echo "Shared quota: $(cat "$RUN/quota.out")."
    if [ -f "$RUN/big.out" ]; then
        echo
        echo "Capacity, $BIG_TOKENS tokens in PostgreSQL: $(cat "$RUN/big.out")."
    fi
} >"$TABLE"
cat "$TABLE"

if [ "$WRITE_MD" = 1 ]; then
    SECTION="$RUN/section.md"
    {
        echo "### Propagation — $(date -u +%Y-%m-%d)"
        echo
        echo "Machine: $MACHINE. PostgreSQL $(postgres --version 2>/dev/null | awk '{print $3}') on loopback" \
            "(throw-away cluster, fsync off); gateways with threads = 1, sync_interval 100 ms; polls back to back" \
            "on a keep-alive connection per node (examples/propagation.rs)."
        echo
        cat "$TABLE"
    } >"$SECTION"
    replace_section "$REPO/BENCHMARKS.md" fleet "$SECTION"
    log "BENCHMARKS.md: fleet section updated"
fi
