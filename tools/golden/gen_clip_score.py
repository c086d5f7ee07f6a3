#!/usr/bin/env python3
"""Golden fixtures for the CLIP score (src/metrics): image preprocessing, CLIPModel image and text
features, and torchmetrics' per-pair score, on a tiny random CLIPModel.

Usage (from anywhere):
    /work/golden-venv/bin/python tools/golden/gen_clip_score.py [--out tests/fixtures]

Needs the golden venv (torch 2.15.0, transformers 5.24.0) plus torchvision 0.29.2 and torchmetrics 1.9.0
(installed with --no-deps; they change no pin: see tools/golden/README.md).

Writes <out>/clip_score/:
  model/          a CLIP model folder in transformers' layout, as `save_pretrained` writes it: config.json,
                  model.safetensors (every tensor random, none zero), the tokenizer (the small byte-level BPE
                  vocabulary of clip_tokenizer/, NOT the real CLIP one) and preprocessor_config.json
  images.json     the test images: name, width, height (their pixels are a formula, `image_pixels` below,
                  which tests/clip_score_parity.rs computes too), and the prompts
  expected.safetensors
                  crop_<name>   U8 [224, 224, 3]: CLIPImageProcessorPil's resize + centre crop (before rescale)
                  tvcrop_<name> U8 [224, 224, 3]: torchvision Resize(224, BICUBIC) + CenterCrop(224) on the PIL
                                image (ImageReward's transform, round-half-even crop offset)
                  image_embeds / text_embeds [N, P] F32 (`get_image_features` / `get_text_features`),
                  image_embeds_f64 / text_embeds_f64 F64 (the same model and inputs in float64),
                  score [N] F32: torchmetrics 1.9.0 `_clip_score_update` per pair (100 cos, before the clamp),
                  score_f64 [N] F64
  meta.json       drift (f32 vs f64), the torchvision-backend difference, versions

The per-pair scores are torchmetrics' own code (`_clip_score_update`) with a CLIPProcessor whose image processor
is the PIL backend (`CLIPImageProcessorPil`); transformers 5 picks the torchvision backend when torchvision is
installed, whose float resize differs from Pillow's: meta.json records by how much (pixels and scores).
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys

sys.dont_write_bytecode = True

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

# (name, width, height): upscale (short 200), downscale (1024x768), a crop whose offset differs between floor
# and round-half-even (224x227: no resize, offset 1 vs 2), a square downscale, a small image upscaled 4.7x.
IMAGES = [("a_300x200", 300, 200), ("b_1024x768", 1024, 768), ("c_224x227", 224, 227),
          ("d_256x256", 256, 256), ("e_64x48", 64, 48)]
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse on the moon",
           "a bowl of soup", "two cats", "a lighthouse at dusk, oil painting, highly detailed, dramatic sky"]
SEED = 1401


def image_pixels(w: int, h: int) -> np.ndarray:
    """The test image: a gradient plus hash noise, [h, w, 3] uint8 (tests/clip_score_parity.rs: same formula)."""
    y, x, c = np.meshgrid(np.arange(h, dtype=np.uint64), np.arange(w, dtype=np.uint64),
                          np.arange(3, dtype=np.uint64), indexing="ij")
    m = np.uint64(0xFFFFFFFF)
    hs = ((x * np.uint64(73856093)) ^ (y * np.uint64(19349663)) ^ (c * np.uint64(83492791))) & m
    hs = (hs * np.uint64(2654435761)) & m
    v = (x * np.uint64(255)) // np.uint64(max(w - 1, 1)) + (y * np.uint64(127)) // np.uint64(max(h - 1, 1)) \
        + (hs >> np.uint64(25)) + np.uint64(60) * c
    return (v % np.uint64(256)).astype(np.uint8)


def rel_l2(a, b) -> float:
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name:
                v = (1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)) if name.endswith("weight") \
                    else 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif p.ndim <= 1:
                v = 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64) + (2.0 if p.ndim == 0 else 0.0)
            elif "embedding" in name:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                fan_in = math.prod(p.shape[1:])
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
            p.copy_(v.to(p.dtype))
            assert bool((p != 0).all()), name


class Tm5Model(torch.nn.Module):
    """torchmetrics 1.9.0 expects `get_*_features` to return the projected tensor (transformers 4); transformers 5
    returns a `BaseModelOutputWithPooling` whose `pooler_output` holds it. This adapter returns that tensor and
    changes nothing else (torchmetrics fails on transformers 5.24 without it: `'BaseModelOutputWithPooling' object
    has no attribute 'norm'`)."""

    def __init__(self, m):
        super().__init__()
        self.m, self.config = m, m.config

    def get_image_features(self, *a, **k):
        return self.m.get_image_features(*a, **k).pooler_output

    def get_text_features(self, *a, **k):
        return self.m.get_text_features(*a, **k).pooler_output


def features(model, processor, images, prompts):
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update, _get_features
    dev = torch.device("cpu")
    model = Tm5Model(model)
    img = _get_features(images, "image", dev, model, processor)
    txt = _get_features(prompts, "text", dev, model, processor)
    score, n = _clip_score_update(images, prompts, model, processor)
    assert n == len(images)
    return img, txt, score


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    import torchmetrics
    import torchvision
    import transformers
    from torchvision import transforms as T
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_clip import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out = os.path.join(args.out, "clip_score")
    shutil.rmtree(out, ignore_errors=True)
    mdir = os.path.join(out, "model")
    os.makedirs(mdir)
    tok = CLIPTokenizer.from_pretrained(os.path.join(args.out, "clip_tokenizer"))
    vocab = len(tok)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, eos_token_id=2, bos_token_id=tok.bos_token_id, pad_token_id=1),
        vision_config=dict(hidden_size=20, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                           image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=16,
    )
    torch.manual_seed(SEED)
    model = CLIPModel(cfg).eval()
    gen = torch.Generator().manual_seed(SEED)
    randomize(model, gen)
    model.save_pretrained(mdir, safe_serialization=True)
    proc = CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tok)
    proc.save_pretrained(mdir)
    proc = CLIPProcessor.from_pretrained(mdir, backend="pil")
    assert type(proc.image_processor).__name__ == "CLIPImageProcessorPil", type(proc.image_processor)
    model = CLIPModel.from_pretrained(mdir).eval()

    pil_images = [Image.fromarray(image_pixels(w, h), "RGB") for _, w, h in IMAGES]
    tensors = [torch.from_numpy(image_pixels(w, h)).permute(2, 0, 1).contiguous() for _, w, h in IMAGES]
    exp = {}
    ip = proc.image_processor
    tv = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
    for (name, w, h), im in zip(IMAGES, pil_images):
        arr = np.asarray(im).transpose(2, 0, 1)
        r = ip.resize(arr, size=transformers.image_processing_utils.SizeDict(shortest_edge=224),
                      resample=ip.resample)
        c = ip.center_crop(r, size=transformers.image_processing_utils.SizeDict(height=224, width=224))
        exp[f"crop_{name}"] = torch.from_numpy(np.ascontiguousarray(c.transpose(1, 2, 0)).astype(np.uint8))
        # the processor's own pixel values must be these crops rescaled and normalised
        pv = proc(images=[im], return_tensors="pt")["pixel_values"][0]
        mean = torch.tensor(ip.image_mean).view(3, 1, 1)
        std = torch.tensor(ip.image_std).view(3, 1, 1)
        mine = (torch.from_numpy(c.astype(np.float64)) / 255.0 - mean.double()) / std.double()
        assert float((mine - pv.double()).abs().max()) < 1e-5
        if name in ("c_224x227", "b_1024x768"):  # ImageReward's transform on two images (size budget)
            exp[f"tvcrop_{name}"] = torch.from_numpy(np.asarray(tv(im)).copy())

    with torch.no_grad():
        img, txt, score = features(model, proc, tensors, PROMPTS)
        m64 = copy.deepcopy(model).double()
        # float64: the same processor outputs, the model in float64
        pv = proc(images=[t for t in tensors], return_tensors="pt")["pixel_values"].double()
        ti = proc(text=PROMPTS, return_tensors="pt", padding=True)
        img64 = m64.get_image_features(pv).pooler_output
        txt64 = m64.get_text_features(ti["input_ids"], ti["attention_mask"]).pooler_output
        score64 = 100 * (img64 / img64.norm(dim=-1, keepdim=True) * (txt64 / txt64.norm(dim=-1, keepdim=True))).sum(-1)
        # transformers 5's default backend with torchvision installed
        proc_tv = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok)
        assert type(proc_tv.image_processor).__name__ == "CLIPImageProcessor"
        pv_tv = proc_tv(images=[t for t in tensors], return_tensors="pt")["pixel_values"]
        _, _, score_tv = features(model, proc_tv, tensors, PROMPTS)
    pv32 = proc(images=[t for t in tensors], return_tensors="pt")["pixel_values"]
    exp.update(image_embeds=img.float().contiguous(), text_embeds=txt.float().contiguous(),
               image_embeds_f64=img64.contiguous(), text_embeds_f64=txt64.contiguous(),
               score=score.float().contiguous(), score_f64=score64.contiguous())
    save_file(exp, os.path.join(out, "expected.safetensors"))
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    with open(os.path.join(out, "images.json"), "w") as f:
        json.dump(dict(images=[dict(name=n, width=w, height=h) for n, w, h in IMAGES], prompts=PROMPTS,
                       input_ids=ids), f, indent=2)
    meta = dict(
        image_embeds_rel_l2_f32_vs_f64=rel_l2(img, img64),
        text_embeds_rel_l2_f32_vs_f64=rel_l2(txt, txt64),
        score_max_abs_f32_vs_f64=float((score.double() - score64).abs().max()),
        scores=score.tolist(),
        torchvision_backend_pixel_max_abs_diff=float((pv_tv.double() - pv32.double()).abs().max()),
        torchvision_backend_pixel_mean_abs_diff=float((pv_tv.double() - pv32.double()).abs().mean()),
        torchvision_backend_score_max_abs_diff=float((score_tv.double() - score.double()).abs().max()),
        description="tiny CLIPModel: text d 32, 2 layers, 4 heads, ff 48, legacy eos_token_id 2 (argmax pooling); "
                    "vision d 20, 2 layers, 4 heads, ff 32, 224 px, patch 32 (50 tokens); projection 16; quick_gelu; "
                    "every tensor random (logit_scale too, unused by the score)",
        generator=dict(torch=torch.__version__, transformers=transformers.__version__,
                       torchvision=torchvision.__version__, torchmetrics=torchmetrics.__version__,
                       pillow=Image.__version__, seed=SEED),
    )
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta, indent=2))
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(out) for fn in fns)
    print(f"clip_score fixture: {total} bytes")


if __name__ == "__main__":
    main()
