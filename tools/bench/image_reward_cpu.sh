#!/usr/bin/env bash
# The ImageReward v1.0 scorer at its real size (random weights) through the image-reward package
# (PyTorch) and through ecad-native, one after the other in the same run on this machine; prints
# both JSON lines and the ratio. Needs the venv of tools/golden/requirements-imagereward.txt
# (PYTHON=path/to/python) and ~6 GB of memory and 2 GB of disk under $TMPDIR.
#   tools/bench/image_reward_cpu.sh [BATCH] [REPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
BATCH=${1:-4}
REPS=${2:-3}
PY=${PYTHON:-/work/venvs/imagereward/bin/python}
THREADS=$(nproc)
cargo build --example image_reward_bench -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" tools/bench/image_reward_torch.py --out "$tmp" --batch "$BATCH" --reps "$REPS" --threads "$THREADS" \
    2>/dev/null | tail -1 | tee "$tmp/torch.json"
RAYON_NUM_THREADS=$THREADS ./target/debug/examples/image_reward_bench "$tmp" "$REPS" | tee "$tmp/ours.json"
python3 - "$tmp/ours.json" "$tmp/torch.json" <<'PYEOF'
import json, sys
o, t = (json.load(open(p)) for p in sys.argv[1:])
print(f"ecad-native: {o['images_per_s']:.3f} img/s batched, {o['per_image_images_per_s']:.3f} img/s one at a time; "
      f"PyTorch: {t['images_per_s']:.3f} img/s; ratio {o['images_per_s'] / t['images_per_s']:.2f}x; "
      f"max |score diff| {o['max_abs_vs_pytorch']:.2e}")
PYEOF
