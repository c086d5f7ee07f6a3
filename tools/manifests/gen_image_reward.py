#!/usr/bin/env python3
"""Writes weights-manifest/ImageReward-v1.0.json: every tensor of ImageReward v1.0's state dict (the names and
shapes `ImageReward.pt` holds, i.e. what `ImageReward.load` loads into), taken from the `image-reward`
package's own constructor (ImageReward(med_config=v1.0's med_config.json)) with its random initialisation
(about 2 GB of memory, ~30 s); nothing is downloaded (bert-base-uncased's tokenizer is not needed for the shapes).

Usage: /work/venvs/imagereward/bin/python tools/manifests/gen_image_reward.py
(the venv of tools/golden/requirements-imagereward.txt)
"""
import json
import os
import sys
import tempfile
import types

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "convert"))
import imagereward_to_safetensors as conv  # noqa: E402

_sp = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(os.path.join(p, "ImageReward"))][0]
for _name, _sub in [("ImageReward", ""), ("ImageReward.models", "models")]:
    _m = types.ModuleType(_name)
    _m.__path__ = [os.path.join(_sp, "ImageReward", _sub)]
    sys.modules[_name] = _m
import ImageReward.ImageReward as irmod  # noqa: E402
from ImageReward.models.BLIP import blip_pretrain as bpmod  # noqa: E402


def main():
    bpmod.init_tokenizer = lambda: None  # the tokenizer holds no tensors
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(conv.MED_CONFIG_V1, f)
        med = f.name
    model = irmod.ImageReward(med_config=med, device="cpu")
    os.remove(med)
    sd = model.state_dict()
    out = {
        "name": "ImageReward-v1.0",
        "repo": "THUDM/ImageReward",
        "config": {"model_type": "image_reward", "vision_config": conv.vision_config(sd),
                   "text_config": dict(conv.MED_CONFIG_V1, encoder_width=1024),
                   "reward_mean": conv.REWARD_MEAN, "reward_std": conv.REWARD_STD, "max_length": conv.MAX_LENGTH},
        "tensors": [[k, list(v.shape)] for k, v in sd.items()],
        "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in sd.items() if v.dtype != torch.float32},
    }
    path = os.path.join(ROOT, "weights-manifest", "ImageReward-v1.0.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    n = sum(v.numel() for v in sd.values() if v.is_floating_point())
    print(f"{path}: {len(sd)} tensors, {n} parameters (F32 in ImageReward.pt unless listed in dtypes)")


if __name__ == "__main__":
    main()
