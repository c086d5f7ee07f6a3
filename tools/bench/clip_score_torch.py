#!/usr/bin/env python3
"""The PyTorch side of the CLIP score scorer's CPU comparison (tools/bench/clip_score_cpu.sh).

Builds transformers' CLIPModel at openai/clip-vit-base-patch32's sizes (tools/bench/clip_vit_b32/config.json:
ViT-B/32 at 224 px, the 12-layer 512-wide text tower, projection 512) with seeded random weights for every
tensor (the scheme of tools/golden/gen_clip_score.py `randomize`), writes it with `save_pretrained` to OUT
(605 MB, plus the bench folder's small tokenizer), so the engine reads the very same weights. Then times what
the engine's `score --throughput` times, on the same N synthetic 256x256 images (cli/score.rs
`synthetic_image`: a gradient plus hash noise, salted per image) against one prompt whose text features are
computed once: the PIL image processor (CLIPImageProcessorPil: bicubic resize to 224, centre crop, rescale,
normalise), `get_image_features`, and `100 * max(cos, 0)`, in batches of BATCH. Reports the median over
REPS passes after one warm-up pass. It also writes OUT/png/*.png and OUT/prompts.txt (the same images and
prompt) and OUT/torch_scores.json, so the engine's `score --images` can be compared score by score.

Usage (the venv of tools/golden/requirements.txt: torch 2.15, transformers 5.24, pillow):
    python tools/bench/clip_score_torch.py --out /tmp/clip-bench --n 64 --batch 32 --reps 3 --threads 2
Prints one JSON line.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG_DIR = os.path.join(ROOT, "tools", "bench", "clip_vit_b32")
PROMPT = "a photograph of an astronaut riding a horse"  # cli/score.rs `time_scorer`
sys.path.insert(0, os.path.join(ROOT, "tools", "golden"))
sys.dont_write_bytecode = True
import gen_clip_score as g  # noqa: E402  (sets 1 thread and deterministic algorithms: reset below)


def synthetic_image(w: int, h: int, salt: int) -> np.ndarray:
    """cli/score.rs `synthetic_image(w, h, salt)`, [h, w, 3] uint8."""
    y, x, c = np.meshgrid(np.arange(h, dtype=np.uint64), np.arange(w, dtype=np.uint64),
                          np.arange(3, dtype=np.uint64), indexing="ij")
    m = np.uint64(0xFFFFFFFF)
    cs = c + np.uint64(3 * salt)
    hs = ((x * np.uint64(73856093)) ^ (y * np.uint64(19349663)) ^ (cs * np.uint64(83492791))) & m
    hs = (hs * np.uint64(2654435761)) & m
    v = (x * np.uint64(255)) // np.uint64(max(w - 1, 1)) + (y * np.uint64(127)) // np.uint64(max(h - 1, 1)) \
        + (hs >> np.uint64(25)) + np.uint64(60) * c
    return (v % np.uint64(256)).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(a.threads)
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    t0 = time.time()
    cfg = CLIPConfig.from_pretrained(CONFIG_DIR)
    torch.manual_seed(14)
    model = CLIPModel(cfg).eval()
    g.randomize(model, torch.Generator().manual_seed(14))
    tok = CLIPTokenizer.from_pretrained(CONFIG_DIR)
    proc = CLIPImageProcessorPil()
    images = [Image.fromarray(synthetic_image(256, 256, k), "RGB") for k in range(a.n)]
    with torch.inference_mode():
        # Random towers give a cosine of either sign, the same for similar images: flip the text
        # projection when it is negative, so the scores are not all clamped to 0 and the
        # comparison with the engine's scores means something.
        t = tok([PROMPT], return_tensors="pt")
        txt = model.get_text_features(t["input_ids"], t["attention_mask"]).pooler_output
        pv = proc(images=images[:1], return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=pv).pooler_output
        if float((img * txt).sum()) < 0:
            model.text_projection.weight.neg_()
    build_s = time.time() - t0
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(CONFIG_DIR, f), a.out)
    png = os.path.join(a.out, "png")
    os.makedirs(png, exist_ok=True)
    for k, im in enumerate(images):
        im.save(os.path.join(png, f"{k:05d}.png"))
    with open(os.path.join(a.out, "prompts.txt"), "w") as f:
        f.write("".join(PROMPT + "\n" for _ in images))

    with torch.inference_mode():
        t = tok([PROMPT], return_tensors="pt")
        txt = model.get_text_features(t["input_ids"], t["attention_mask"]).pooler_output
        txt = txt / txt.norm(dim=-1, keepdim=True)

        def one_pass():
            out = []
            for i in range(0, len(images), a.batch):
                pv = proc(images=images[i:i + a.batch], return_tensors="pt")["pixel_values"]
                img = model.get_image_features(pixel_values=pv).pooler_output
                img = img / img.norm(dim=-1, keepdim=True)
                out.append((100 * (img * txt).sum(-1)).clamp(min=0))
            return torch.cat(out)

        one_pass()  # warm-up
        times = []
        for _ in range(a.reps):
            t1 = time.perf_counter()
            scores = one_pass()
            times.append(time.perf_counter() - t1)
    with open(os.path.join(a.out, "torch_scores.json"), "w") as f:
        json.dump(scores.double().tolist(), f)
    times.sort()
    med_s = times[len(times) // 2]
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "images": a.n, "batch": a.batch, "reps": a.reps, "median_s": med_s,
                      "images_per_s": a.n / med_s, "times_s": times, "build_s": build_s}))


if __name__ == "__main__":
    main()
