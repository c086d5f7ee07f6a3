#!/usr/bin/env bash
# A bounded fuzz run for CI (issue 16): every target of fuzz/ for ECAD_CI_FUZZ_SECONDS (60) each,
# where a nightly toolchain and cargo-fuzz are installed. A clean CI machine has neither: the
# step says so and is skipped; tests/fuzz_corpus.rs already replays the seed corpus and every
# recorded crash on stable. New corpus entries go to a temporary folder, so the checkout is not
# changed; a crash fails the step, its input saved under fuzz/artifacts/<target>/ (commit it with
# the fix). The fuzz build takes about 15 minutes from cold on 2 cores (a few with a warm
# fuzz/target), so it runs under ECAD_CI_FUZZ_BUILD_SECONDS (300), and a build that does not
# finish skips the step rather than failing it; it is also skipped when CI has already run for
# ECAD_CI_FUZZ_START_BEFORE seconds (1080; .ci/run passes CI_ELAPSED), to keep CI under 30
# minutes. ECAD_CI_FUZZ=off skips it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${ECAD_CI_FUZZ:-auto}" = off ]; then
    echo "skipped: ECAD_CI_FUZZ=off"
elif ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "skipped: no nightly toolchain with cargo-fuzz (cargo install cargo-fuzz)"
elif [ "${CI_ELAPSED:-0}" -gt "${ECAD_CI_FUZZ_START_BEFORE:-1080}" ]; then
    echo "skipped: CI has run ${CI_ELAPSED} s already (ECAD_CI_FUZZ_START_BEFORE)"
else
    fuzz_secs=${ECAD_CI_FUZZ_SECONDS:-60}
    build_limit=${ECAD_CI_FUZZ_BUILD_SECONDS:-300}
    rc=0
    (cd fuzz && timeout "$build_limit" cargo +nightly fuzz build) || rc=$?
    if [ "$rc" = 124 ]; then
        echo "skipped: the fuzz build did not finish in ${build_limit} s"
    elif [ "$rc" != 0 ]; then
        echo "the fuzz build failed (exit $rc)"
        exit 1
    else
        fuzz_tmp=$(mktemp -d)
        trap 'rm -rf "$fuzz_tmp"' EXIT
        for t in $(cd fuzz && cargo +nightly fuzz list); do
            mkdir -p "$fuzz_tmp/$t"
            echo "-- $t: ${fuzz_secs} s"
            if ! (cd fuzz && cargo +nightly fuzz run "$t" "$fuzz_tmp/$t" "corpus/$t" -- \
                -max_total_time="$fuzz_secs" -rss_limit_mb=4096 -timeout=30 \
                -print_final_stats=1) >"$fuzz_tmp/$t.log" 2>&1; then
                tail -n 60 "$fuzz_tmp/$t.log"
                echo "fuzz target $t failed: commit the input saved under fuzz/artifacts/$t/ with the fix"
                exit 1
            fi
            grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$fuzz_tmp/$t.log" || true
        done
    fi
fi
