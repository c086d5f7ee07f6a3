#!/usr/bin/env bash
# The GPU check, for a GPU machine without cargo: runs the CUDA parity tests and the forward
# benchmark from binaries built on the development machine, and prints a short table last.
# Prepare here (then carry target/gpu-check with the working tree):
#   scripts/gpu-check.sh --prepare
# Run there:
#   scripts/gpu-check.sh            (logs into ${OUT:-/tmp}/gpu-check.log)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    cargo build --release --bin ecad-native
    bins=$(cargo test --release --no-run --test cuda_parity --message-format=json 2>/dev/null \
           | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])')
    mkdir -p target/gpu-check
    cp target/release/ecad-native $bins target/gpu-check/
    ls -la target/gpu-check
    exit 0
fi
LOG=${OUT:-/tmp}/gpu-check.log
export ECAD_REPO_ROOT=$PWD
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    echo "== CUDA parity (kernels vs CPU, forward vs diffusers fixtures)"
    for t in target/gpu-check/cuda_parity-*; do timeout 300 "$t" --nocapture --test-threads 1; done
    echo "== forward benchmark, PixArt-XL-2 256 px and 1024 px, CFG batch 2 (f32)"
    timeout 200 target/gpu-check/ecad-native bench --device cuda --arch xl2-256 --forward --reps 10 --warmup 3
    timeout 200 target/gpu-check/ecad-native bench --device cuda --arch xl2-1024 --forward --reps 5 --warmup 2
} 2>&1 | tee "$LOG"
echo "== summary"
grep -E "rel L2|median|test result|SKIPPED|panicked" "$LOG" | tail -40
