#!/usr/bin/env bash
# The latency tail next to nginx: benches/load.sh with the three contenders that matter (direct, nginx-auth,
# tg-bearer) at 32 and at 1,000 keep-alive connections, wrk and oha (fixed rate, corrected for coordinated
# omission) interleaved in each run. Writes the "tail-32" and "tail-1000" sections of BENCHMARKS.md.
# Pinning as in the issue that asked for it: each proxy (one worker) alone on SERVER_CPU (0), wrk, oha and
# the upstream on WRK_CPU (1); UPSTREAM_CPU=0 puts the upstream next to the proxies as load.sh does.
#
# Usage: benches/tail.sh            (ROUNDS=5 DURATION=10 OHA_SECONDS=10)
#        ROUNDS=2 DURATION=3 OHA_SECONDS=3 benches/tail.sh      (a quick check)
set -euo pipefail
here=$(dirname "$0")
export UPSTREAM_CPU=${UPSTREAM_CPU:-${WRK_CPU:-1}}
for conns in ${TAIL_CONNS:-32 1000}; do
    CONNS=$conns ONLY="direct nginx-auth tg-bearer ${TAIL_EXTRA:-}" BIG_TOKENS=0 SECTION_NAME="tail-$conns" \
        SECTION_TITLE="Latency tail, $conns connections" bash "$here/load.sh"
    SKIP_BUILD=1
    export SKIP_BUILD
done
