"""Times diffusers' PixArtTransformer2DModel (PixArt-XL-2 architecture, random weights, float32)
on the CPU for one CFG forward (batch 2), as `ecad-native bench --forward` does. Prints one JSON line.

Usage: python tools/bench/torch_forward.py [--sample-size 32] [--reps 3] [--warmup 1] [--threads N]
Needs the tools/golden requirements (torch, diffusers).
"""
import argparse
import json
import statistics
import time

import torch
from diffusers import PixArtTransformer2DModel

ap = argparse.ArgumentParser()
ap.add_argument("--sample-size", type=int, default=32)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--warmup", type=int, default=1)
ap.add_argument("--text-len", type=int, default=120)
ap.add_argument("--threads", type=int, default=0)
a = ap.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)

torch.manual_seed(0)
m = PixArtTransformer2DModel(
    sample_size=a.sample_size, num_layers=28, attention_head_dim=72, in_channels=4, out_channels=8,
    patch_size=2, caption_channels=4096, num_attention_heads=16, cross_attention_dim=1152,
    norm_type="ada_norm_single", use_additional_conditions=a.sample_size == 128,
).eval()
B, L, S = 2, a.text_len, a.sample_size
x = torch.randn(B, 4, S, S)
y = torch.randn(B, L, 4096)
mask = torch.zeros(B, L)
mask[0, :1] = 1
mask[1, : L // 3] = 1
t = torch.tensor([500, 500])
added = {"resolution": None, "aspect_ratio": None}
if a.sample_size == 128:
    added = {"resolution": torch.tensor([[S * 8.0, S * 8.0]] * B), "aspect_ratio": torch.tensor([[1.0]] * B)}
times = []
with torch.inference_mode():
    for r in range(a.warmup + a.reps):
        t0 = time.perf_counter()
        m(x, encoder_hidden_states=y, encoder_attention_mask=mask, timestep=t, added_cond_kwargs=added)
        dt = (time.perf_counter() - t0) * 1e3
        if r >= a.warmup:
            times.append(dt)
print(json.dumps({"impl": "diffusers", "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "sample_size": S, "batch": B, "median_ms": statistics.median(times), "timings_ms": times}))
