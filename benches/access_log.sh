#!/usr/bin/env bash
# What the access log costs, next to what nginx's costs (issue 29): benches/load.sh with LOG_AB=1, so one
# interleaved run measures, on the same machine state,
#   nginx-auth   nginx (1 worker) with its buffered `combined` log (buffer=64k flush=200ms) to a file
#   nginx-nolog  the same nginx, access_log off
#   tg-bearer    tokengate (threads = 1) with its shipped default: the `plain` log, to a file
#   tg-json      the same with the JSON log
#   tg-nolog     the same with the log off
# (plus tg-before with TG_BEFORE=/path/to/another/tokengate, e.g. the build before a change: an A/B step)
# at 32 and at 1,000 keep-alive connections, in the arrangement the issue measured: the proxies on
# SERVER_CPU (0), wrk and the upstream on WRK_CPU (1). Sections access-log-32 and access-log-1000.
#
# Usage: benches/access_log.sh                     (ROUNDS=5 DURATION=10; about 25 minutes with oha)
#        ROUNDS=2 DURATION=3 OHA=0 benches/access_log.sh     (a quick check)
#        TG_BEFORE=/tmp/tokengate-before LOG_CONNS=32 benches/access_log.sh
set -euo pipefail
here=$(dirname "$0")
extra=""
[ -n "${TG_BEFORE:-}" ] && extra="tg-before"
for conns in ${LOG_CONNS:-32 1000}; do
    UPSTREAM_CPU=${WRK_CPU:-1} CONNS=$conns LOG_AB=1 ACCESS_LOG=plain BIG_TOKENS=0 \
        ONLY="nginx-auth nginx-nolog tg-bearer tg-json tg-nolog $extra" \
        SECTION_NAME="access-log-$conns" SECTION_TITLE="The access log's cost, $conns connections" \
        bash "$here/load.sh"
    SKIP_BUILD=1
    export SKIP_BUILD
done
