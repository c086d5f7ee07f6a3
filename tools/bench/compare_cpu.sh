#!/usr/bin/env bash
# One PixArt-XL-2 forward at 256 px (random weights, batch 2 = one CFG step, text 120) through
# ecad-native and through diffusers/PyTorch on this machine, one after the other; prints both
# medians and the ratio. Needs the tools/golden virtualenv (PYTHON=path/to/python).
#   tools/bench/compare_cpu.sh [REPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${1:-5}
PY=${PYTHON:-python3}
cargo build --release -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
./target/release/ecad-native bench --arch xl2-256 --forward --reps "$REPS" --json "$tmp/ours.json" >/dev/null 2>&1
ours=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["median_ms"])' "$tmp/ours.json")
theirs=$("$PY" tools/bench/torch_forward.py --reps "$REPS" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])')
"$PY" - "$ours" "$theirs" <<'PYEOF'
import sys
ours, theirs = map(float, sys.argv[1:])
print(f"ecad-native: {ours:.1f} ms   diffusers/PyTorch: {theirs:.1f} ms   speedup {theirs / ours:.2f}x")
PYEOF
