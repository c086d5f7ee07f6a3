#!/usr/bin/env python3
"""Converts ImageReward's checkpoint (`ImageReward.pt`, a torch pickle of the `ImageReward` module's
state dict, as `ImageReward.load` reads it) into the folder `ecad-native` reads:

    OUT/model.safetensors   every tensor of the state dict under its original name (F32 by default)
    OUT/config.json         model_type "image_reward": vision_config (BLIP create_vit arguments,
                            inferred from the tensor shapes), text_config (med_config.json with
                            encoder_width = the ViT width), reward_mean / reward_std, max_length
    OUT/tokenizer/vocab.txt bert-base-uncased's WordPiece vocabulary (ImageReward's tokenizer is
                            BertTokenizer('bert-base-uncased') plus the added [DEC] and [ENC] tokens,
                            which the engine appends after the vocabulary, as transformers does)

Usage:
    python3 tools/convert/imagereward_to_safetensors.py --ckpt ImageReward.pt \
        --med-config med_config.json --vocab bert-base-uncased/vocab.txt --out ImageReward-v1.0

`med_config.json` is the file THUDM/ImageReward ships beside ImageReward.pt; `vocab.txt` comes from a
local copy of bert-base-uncased (the .pt holds no vocabulary). Needs torch and safetensors only (any
recent version; the tools/golden venvs have both). Nothing is downloaded.
"""
import argparse
import json
import os
import re
import shutil
import sys

# ImageReward.py's constants (the normalisation of the MLP output).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_LENGTH = 35

# BLIP's med_config.json as THUDM/ImageReward ships it (used when --med-config is not given).
MED_CONFIG_V1 = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}

VIT = "blip.visual_encoder."


def vision_config(sd, num_heads=None, layer_norm_eps=1e-6):
    """BLIP create_vit's arguments, from the tensor shapes (heads: 16 for width 1024, 12 for 768)."""
    w = sd[VIT + "patch_embed.proj.weight"]
    d, _, p, _ = w.shape
    n = sd[VIT + "pos_embed"].shape[1]
    g = int(round((n - 1) ** 0.5))
    if g * g + 1 != n:
        raise SystemExit(f"pos_embed has {n} rows, not 1 + a square")
    blocks = {int(m.group(1)) for k in sd for m in [re.match(re.escape(VIT) + r"blocks\.(\d+)\.", k)] if m}
    if num_heads is None:
        num_heads = {1024: 16, 768: 12}.get(d)
        if num_heads is None:
            raise SystemExit(f"ViT width {d}: pass --vision-heads")
    return {
        "image_size": g * p,
        "patch_size": p,
        "embed_dim": d,
        "depth": len(blocks),
        "num_heads": num_heads,
        "mlp_hidden_dim": sd[VIT + "blocks.0.mlp.fc1.weight"].shape[0],
        "layer_norm_eps": layer_norm_eps,
    }


def convert_state_dict(sd, out, med_config, vocab, num_heads=None, dtype=None):
    """Writes OUT from a state dict (name -> tensor). Returns the config written."""
    import torch
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    tensors = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        t = v.detach().cpu().clone().contiguous()
        if t.is_floating_point():
            t = t.to(dtype or torch.float32)
        tensors[k] = t
    missing = [k for k in ("blip.visual_encoder.cls_token", "blip.text_encoder.embeddings.word_embeddings.weight",
                           "mlp.layers.0.weight") if k not in tensors]
    if missing:
        raise SystemExit(f"not an ImageReward state dict: missing {missing}")
    vc = vision_config(tensors, num_heads)
    tc = dict(med_config)
    tc["encoder_width"] = vc["embed_dim"]  # BLIP_Pretrain: encoder_config.encoder_width = vision_width
    wv = tensors["blip.text_encoder.embeddings.word_embeddings.weight"].shape[0]
    if tc.get("vocab_size") != wv:
        raise SystemExit(f"med_config vocab_size {tc.get('vocab_size')} != word_embeddings rows {wv}")
    config = {
        "model_type": "image_reward",
        "vision_config": vc,
        "text_config": tc,
        "reward_mean": REWARD_MEAN,
        "reward_std": REWARD_STD,
        "max_length": MAX_LENGTH,
    }
    tmp = os.path.join(out, "model.safetensors.tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
        f.write("\n")
    if vocab:
        os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
        shutil.copyfile(vocab, os.path.join(out, "tokenizer", "vocab.txt"))
    return config


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="ImageReward.pt")
    ap.add_argument("--med-config", help="med_config.json (default: ImageReward v1.0's)")
    ap.add_argument("--vocab", help="bert-base-uncased vocab.txt (copied to OUT/tokenizer/)")
    ap.add_argument("--vision-heads", type=int, help="ViT heads (default from the width)")
    ap.add_argument("--bf16", action="store_true", help="store floating tensors as BF16 (default F32)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch

    sd = torch.load(a.ckpt, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    med = MED_CONFIG_V1
    if a.med_config:
        with open(a.med_config) as f:
            med = json.load(f)
    if not a.vocab:
        print("warning: no --vocab: OUT/tokenizer/vocab.txt must be added by hand", file=sys.stderr)
    cfg = convert_state_dict(sd, a.out, med, a.vocab, a.vision_heads, torch.bfloat16 if a.bf16 else None)
    print(json.dumps(cfg["vision_config"]), file=sys.stderr)
    print(f"wrote {a.out}/model.safetensors, config.json", file=sys.stderr)


if __name__ == "__main__":
    main()
