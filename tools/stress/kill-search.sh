#!/usr/bin/env bash
# Kill-safety stress of `ecad-native search` (docs/RELIABILITY.md, "Kill safety"): runs the demo
# search of tests/search.rs once uninterrupted, then TRIALS times kills it with SIGKILL at a
# random moment (uniform over the uninterrupted run's wall time), and resumes it with --resume,
# killed again at random with probability 1/2, until it finishes. Every finished run's outputs
# must be byte-identical to the uninterrupted run's (the same files: a temporary file a kill left
# behind counts as a difference), and every resume must accept the checkpoint it finds. Prints
# one line per trial and a summary; a differing trial's folder is kept under $KEEP (/tmp).
#   tools/stress/kill-search.sh [TRIALS] (default 30); BIN=path/to/ecad-native
set -euo pipefail
trials=${1:-30}
bin=${BIN:-target/debug/ecad-native}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ECAD_DEVICE=cpu
args=(search --population 12 --generations 10 --steps 4 --prompts 1 --seeds-per-prompt 1
      --seed 7 --seed-from heuristics)
files="archive.json front.json front.csv front.svg stats.csv"
same() { # same DIR_A DIR_B
    for f in $files; do cmp -s "$1/$f" "$2/$f" || return 1; done
    diff -rq "$1/front" "$2/front" >/dev/null || return 1
    # no temporary file of a killed write left anywhere
    [ -z "$(find "$2" -name '.*.tmp*' -print -quit)" ]
}
t0=$(date +%s.%N)
"$bin" "${args[@]}" --out "$work/ref" >/dev/null 2>&1
t1=$(date +%s.%N)
# Kill moments are drawn from the first WINDOW_PCT % (90) of the uninterrupted run's time, so
# that most land before the end even when later runs are faster.
ms=$(python3 -c "print(int(($t1-$t0)*1000*${WINDOW_PCT:-90}/100))")
echo "uninterrupted run: $(python3 -c "print(int(($t1-$t0)*1000))") ms; kill window ${ms} ms"
kills=0 resumes=0 refused=0 bad=0
for i in $(seq 1 "$trials"); do
    out="$work/t$i"
    at=$((RANDOM % ms))
    "$bin" "${args[@]}" --out "$out" >/dev/null 2>&1 & pid=$!
    sleep "$(python3 -c "print($at/1000)")"
    kill -9 "$pid" 2>/dev/null && kills=$((kills+1)) || true
    wait "$pid" 2>/dev/null || true
    gens=""
    while :; do
        g=$(python3 -c "import json,sys;print(json.load(open('$out/checkpoint.json'))['state']['generation'])" 2>/dev/null || echo none)
        gens="$gens $g"
        if [ -f "$out/checkpoint.json" ]; then extra=(--resume); else extra=(); fi
        "$bin" "${args[@]}" --out "$out" "${extra[@]}" >"$work/log" 2>&1 & pid=$!
        if [ $((RANDOM % 2)) = 0 ]; then
            sleep "$(python3 -c "print($((RANDOM % ms))/1000)")"
            if kill -9 "$pid" 2>/dev/null; then kills=$((kills+1)); wait "$pid" 2>/dev/null || true; continue; fi
        fi
        if wait "$pid"; then resumes=$((resumes+1)); break; fi
        refused=$((refused+1)); echo "trial $i: a resume failed: $(tail -1 "$work/log")"; break
    done
    if same "$work/ref" "$out"; then
        verdict=identical
    else
        verdict="DIFFERENT: $(diff -rq "$work/ref" "$out" 2>&1 | grep -v 'checkpoint.json\|sharing.csv\|eval' | tr '\n' ';') kept in ${KEEP:-/tmp}/kill-search-t$i"
        cp -r "$out" "${KEEP:-/tmp}/kill-search-t$i"
        bad=$((bad+1))
    fi
    echo "trial $i: killed at ${at} ms; checkpoint generations seen:$gens; $verdict"
done
echo "summary: $trials trials, $kills SIGKILLs, $resumes finished runs, $refused failed resumes, $bad with different outputs"
[ "$bad" = 0 ] && [ "$refused" = 0 ]
