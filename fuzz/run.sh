#!/usr/bin/env bash
# Runs every cargo-fuzz target of tokengate for FUZZ_SECONDS seconds each and reports, per target, the
# executions, exec/s, coverage and whether anything was found. Exits non-zero if a target crashes (or fails
# to build). Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc take cargo-fuzz's -Z flags.
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_TARGETS    space-separated targets (default: all of `cargo fuzz list`)
#   FUZZ_SANITIZER  address (default; ASan works on stable x86_64 Linux) or none
#   FUZZ_NICE       niceness of the builds and runs (default 19: the machine is shared)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root" || exit 2

seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-address}"
niceness="${FUZZ_NICE:-19}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz is not installed. Install it with:" >&2
    echo "    cargo install cargo-fuzz --locked" >&2
    echo "(no nightly toolchain is needed: this script sets RUSTC_BOOTSTRAP=1)" >&2
    exit 2
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
fuzz=(nice -n "$niceness" cargo fuzz)

echo "== building targets (sanitizer: $sanitizer) =="
if ! "${fuzz[@]}" build --sanitizer "$sanitizer"; then
    echo "run.sh: build failed" >&2
    exit 2
fi

status=0
summary=()
for t in $targets; do
    corpus="$here/corpus/$t"
    artifacts="$here/artifacts/$t"
    log="$here/artifacts/$t.log"
    mkdir -p "$corpus" "$artifacts" "$here/seeds/$t"
    echo "== $t: ${seconds}s =="
    # The first corpus directory collects new inputs; seeds/ is read only.
    "${fuzz[@]}" run --sanitizer "$sanitizer" "$t" "$corpus" "$here/seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    last="$(grep -E '^#[0-9]+' "$log" | tail -1)"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
    corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")"
    found="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
    if [ "$rc" -eq 0 ] && [ -z "$found" ]; then
        verdict="nothing found"
    else
        verdict="FOUND (exit $rc)${found:+: $found}"
        status=1
        echo "--- $t: failure (full log: $log) ---"
        grep -E -A2 'panicked at|ERROR: AddressSanitizer' "$log" | head -20
        grep -E 'SUMMARY|Test unit written' "$log" | head -5
        [ -n "$found" ] && echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $sanitizer $t $found" \
            && echo "minimize:  RUSTC_BOOTSTRAP=1 cargo fuzz tmin --sanitizer $sanitizer $t $found"
    fi
    line="$t: runs=${runs:-?} exec/s=${rate:-?} cov=${cov:-?} ft=${ft:-?} corp=${corp:-?} -> $verdict"
    echo "$line"
    echo "   last libFuzzer line: ${last:-none} (log: $log)"
    summary+=("$line")
done

echo "== summary (${seconds}s per target, sanitizer $sanitizer) =="
printf '%s\n' "${summary[@]}"
exit "$status"
