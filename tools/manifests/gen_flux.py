#!/usr/bin/env python3
"""Writes weights-manifest/FLUX.1-{dev,schnell}.json from the tensor tables of shared/docs/flux-spec.md §7.9
(written out here by hand from the spec, independently of the engine's own FluxConfig::expected_tensors,
which tests/flux_manifest.rs compares against them) and the transformer config.json values of §1.
FLUX.1-schnell has the same architecture without `time_text_embed.guidance_embedder`.

Usage: python3 tools/manifests/gen_flux.py   (no dependencies)
"""
import json
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
D, M, HD, T5, POOL, CIN = 3072, 12288, 128, 4096, 768, 64


def lin(out, name, i, o):
    out.append([f"{name}.weight", [o, i]])
    out.append([f"{name}.bias", [o]])


def tensors(guidance: bool):
    t = []
    lin(t, "x_embedder", CIN, D)
    lin(t, "context_embedder", T5, D)
    lin(t, "time_text_embed.timestep_embedder.linear_1", 256, D)
    lin(t, "time_text_embed.timestep_embedder.linear_2", D, D)
    if guidance:
        lin(t, "time_text_embed.guidance_embedder.linear_1", 256, D)
        lin(t, "time_text_embed.guidance_embedder.linear_2", D, D)
    lin(t, "time_text_embed.text_embedder.linear_1", POOL, D)
    lin(t, "time_text_embed.text_embedder.linear_2", D, D)
    for i in range(19):
        p = f"transformer_blocks.{i}"
        lin(t, f"{p}.norm1.linear", D, 6 * D)
        lin(t, f"{p}.norm1_context.linear", D, 6 * D)
        for n in ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"]:
            lin(t, f"{p}.attn.{n}", D, D)
        for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"]:
            t.append([f"{p}.attn.{n}.weight", [HD]])
        lin(t, f"{p}.attn.to_out.0", D, D)
        lin(t, f"{p}.attn.to_add_out", D, D)
        for ff in ["ff", "ff_context"]:
            lin(t, f"{p}.{ff}.net.0.proj", D, M)
            lin(t, f"{p}.{ff}.net.2", M, D)
    for i in range(38):
        p = f"single_transformer_blocks.{i}"
        lin(t, f"{p}.norm.linear", D, 3 * D)
        for n in ["to_q", "to_k", "to_v"]:
            lin(t, f"{p}.attn.{n}", D, D)
        t.append([f"{p}.attn.norm_q.weight", [HD]])
        t.append([f"{p}.attn.norm_k.weight", [HD]])
        lin(t, f"{p}.proj_mlp", D, M)
        lin(t, f"{p}.proj_out", D + M, D)
    lin(t, "norm_out.linear", D, 2 * D)
    lin(t, "proj_out", D, CIN)
    return t


def main():
    for name, guidance in [("FLUX.1-dev", True), ("FLUX.1-schnell", False)]:
        config = {
            "_class_name": "FluxTransformer2DModel",
            "attention_head_dim": HD,
            "guidance_embeds": guidance,
            "in_channels": CIN,
            "joint_attention_dim": T5,
            "num_attention_heads": 24,
            "num_layers": 19,
            "num_single_layers": 38,
            "patch_size": 1,
            "pooled_projection_dim": POOL,
        }
        t = tensors(guidance)
        params = sum(eval("*".join(map(str, s))) for _, s in t)
        print(f"{name}: {len(t)} tensors, {params:,} parameters")
        with open(os.path.join(ROOT, "weights-manifest", f"{name}.json"), "w") as f:
            json.dump({"name": name, "repo": f"black-forest-labs/{name}", "config": config, "tensors": t}, f,
                      indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
