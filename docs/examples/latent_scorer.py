#!/usr/bin/env python3
"""A worked example of an external scorer for `ecad-native search --quality external:CMD`.

The search runs `CMD <folder>` once per candidate schedule. The folder holds:

  manifest.json            {"candidate": 12, "candidate_name": "cand_00012",
                            "latent_shape": [1, 4, 32, 32], "tensor": "latents",
                            "samples": [{"index": 0, "prompt_index": 0, "seed": 0,
                                         "file": "sample_0000.safetensors"}, ...]}
  sample_0000.safetensors  the final latents of sample 0 (tensor "latents", f32, [1, C, h, w])
  ...

The scorer prints one JSON object on stdout: {"scores": [s_0, s_1, ...]}, one score per sample in
manifest order, higher is better (as ImageReward). The search minimises minus their mean.

This example needs only the Python standard library. Its "score" is a toy: the negative mean
absolute difference between horizontally adjacent latent values (a smoothness proxy). A real
scorer would decode the latents with the VAE and run ImageReward / CLIP on the images.
"""
import json
import os
import struct
import sys


def read_safetensors(path):
    """Returns {name: (shape, [floats])} for the F32 tensors of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        a, b = info["data_offsets"]
        count = (b - a) // 4
        out[name] = (info["shape"], struct.unpack(f"<{count}f", body[a:b]))
    return out


def score(shape, x):
    _, c, h, w = shape
    total, n = 0.0, 0
    for ch in range(c):
        for i in range(h):
            row = ch * h * w + i * w
            for j in range(w - 1):
                total += abs(x[row + j + 1] - x[row + j])
                n += 1
    return -total / max(n, 1)


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: latent_scorer.py CANDIDATE_FOLDER")
    folder = sys.argv[1]
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    scores = []
    for s in manifest["samples"]:
        tensors = read_safetensors(os.path.join(folder, s["file"]))
        shape, x = tensors[manifest["tensor"]]
        scores.append(score(shape, x))
    print(json.dumps({"scores": scores}))


if __name__ == "__main__":
    main()
