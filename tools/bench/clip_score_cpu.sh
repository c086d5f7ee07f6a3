#!/usr/bin/env bash
# The CLIP score scorer at openai/clip-vit-base-patch32's sizes (random weights, 151 M parameters)
# through transformers' CLIPModel (PyTorch) and through ecad-native, one after the other in the
# same run on this machine: the same weights (written by the PyTorch side, read by the engine), the
# same N synthetic 256x256 images, the same prompt (text features once), the same batch. Prints
# both JSON lines, the ratio and the largest score difference between the two.
# Needs the venv of tools/golden/requirements.txt (PYTHON=path/to/python), ~2 GB of memory and
# ~700 MB of disk under $TMPDIR.
#   tools/bench/clip_score_cpu.sh [N] [BATCH] [REPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-64}
BATCH=${2:-32}
REPS=${3:-3}
PY=${PYTHON:-/work/golden-venv/bin/python}
THREADS=$(nproc)
cargo build --release --bin ecad-native -q
B=./target/release/ecad-native
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" tools/bench/clip_score_torch.py --out "$tmp" --n "$N" --batch "$BATCH" --reps "$REPS" \
    --threads "$THREADS" 2>/dev/null | tail -1 | tee "$tmp/torch.json"
# The engine's pass: `score --throughput` (one warm-up batch, then every image once), REPS runs.
: >"$tmp/ours.jsonl"
for _ in $(seq "$REPS"); do
    RAYON_NUM_THREADS=$THREADS $B score --metric clip-score --weights "$tmp" --throughput "$N" \
        --batch "$BATCH" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' \
        >>"$tmp/ours.jsonl"
done
tail -1 "$tmp/ours.jsonl"
# The same images as PNG files through `score --images`: the scores against PyTorch's.
RAYON_NUM_THREADS=$THREADS $B score --metric clip-score --weights "$tmp" --images "$tmp/png" \
    --prompts "$tmp/prompts.txt" --batch "$BATCH" >"$tmp/ours_scores.json"
python3 - "$tmp/ours.jsonl" "$tmp/torch.json" "$tmp/ours_scores.json" "$tmp/torch_scores.json" <<'PYEOF'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
t = json.load(open(sys.argv[2]))
ours = json.load(open(sys.argv[3]))
ref = json.load(open(sys.argv[4]))
rates = sorted(r["images_per_s"] for r in runs)
med = rates[len(rates) // 2]
got = [im["score"] for im in ours["images"]]
assert len(got) == len(ref) and min(ref) > 0, "the PyTorch scores are clamped to 0: nothing compared"
diff = max(abs(a - b) for a, b in zip(got, ref))
print(f"ecad-native: {med:.2f} img/s (median of {len(rates)} runs: {', '.join(f'{r:.2f}' for r in rates)}); "
      f"PyTorch: {t['images_per_s']:.2f} img/s (median of {t['reps']}); ratio {med / t['images_per_s']:.2f}x; "
      f"max |score diff| {diff:.2e} over {len(got)} images (scores {min(ref):.3f}..{max(ref):.3f})")
PYEOF
