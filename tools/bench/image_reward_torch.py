#!/usr/bin/env python3
"""The PyTorch side of the ImageReward scorer's CPU comparison (tools/bench/image_reward_cpu.sh).

Builds ImageReward v1.0 at its real size (ViT-L/16 at 224, BERT-base with cross-attention, the MLP head)
with the `image-reward` package's own constructor and random weights for every tensor (seeded; the scheme of
tools/golden/gen_image_reward.py), writes it with tools/convert/imagereward_to_safetensors.py to OUT (1.8 GB,
plus the small test vocabulary), and times the package's forward (`ImageReward.score_gard`, i.e. `score`
after tokenising and preprocessing) on random normalised images. It also writes OUT/bench_io.safetensors
(pixels, ids, mask and the package's scores) so the engine's run can check its scores on the same real-sized
model.

Usage (the venv of tools/golden/requirements-imagereward.txt):
    python tools/bench/image_reward_torch.py --out /tmp/ir-bench --batch 4 --reps 3 --threads 2
Prints one JSON line.
"""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "golden"))
import gen_image_reward as g  # noqa: E402  (also registers the package's model modules)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from safetensors.torch import save_file

    vocab = os.path.join(g.OUT, "tokenizer", "vocab.txt")
    tok = g.package_tokenizer(vocab)
    saved = g.bpmod.init_tokenizer
    g.bpmod.init_tokenizer = lambda: tok
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(g.conv.MED_CONFIG_V1, f)
        med = f.name
    t0 = time.time()
    model = g.irmod.ImageReward(med_config=med, device="cpu").eval()
    g.bpmod.init_tokenizer = saved
    os.remove(med)
    g.randomize(model, torch.Generator().manual_seed(14))
    build_s = time.time() - t0
    g.conv.convert_state_dict(model.state_dict(), a.out, g.conv.MED_CONFIG_V1, vocab)

    gen = torch.Generator().manual_seed(15)
    b = a.batch
    pixels = torch.randn((b, 3, 224, 224), generator=gen)
    prompts = [g.PROMPTS[i % 2] for i in range(b)]
    t = tok(prompts, padding="max_length", truncation=True, max_length=g.MAX_LEN, return_tensors="pt")
    times = []
    with torch.inference_mode():
        scores = model.score_gard(t.input_ids, t.attention_mask, pixels)  # warm-up
        for _ in range(a.reps):
            t1 = time.perf_counter()
            scores = model.score_gard(t.input_ids, t.attention_mask, pixels)
            times.append(time.perf_counter() - t1)
    save_file({"pixels": pixels.contiguous(), "input_ids": t.input_ids.contiguous(),
               "attention_mask": t.attention_mask.contiguous(), "score": scores[:, 0].float().contiguous()},
              os.path.join(a.out, "bench_io.safetensors"))
    times.sort()
    med_s = times[len(times) // 2]
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "batch": b, "reps": a.reps, "median_s": med_s, "images_per_s": b / med_s,
                      "build_s": build_s, "scores": scores[:, 0].tolist()}))


if __name__ == "__main__":
    main()
