//! T5 encoder and VAE decoder parity with transformers 5.24 / diffusers 0.42.1 on tiny random
//! models (tools/golden/gen_t5_vae.py), and the image postprocess / resize-back functions.
//!
//! Tolerance as elsewhere: each fixture's meta.json records the reference's float32-vs-float64
//! drift (a true float64 evaluation); this engine (f32) is compared with the float64 output and
//! must be within `DRIFT_FACTOR` × that drift. Broken variants land far above it.

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::Backend;
use ecad_native::models::rel_l2;
use ecad_native::models::t5::relative_position_bucket;
use ecad_native::weights::read_inputs;

const DRIFT_FACTOR: f64 = 3.0;

fn t5_run(scale: f32) -> (Vec<f32>, Vec<f32>, f64, usize) {
    let be = CpuBackend::new();
    let dir = fixtures().join("t5");
    let m = ecad_native::pipeline::load_t5(&be, &dir.join("text_encoder")).unwrap();
    let inp = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let exp = read_inputs(&dir.join("expected.safetensors")).unwrap();
    let ids: Vec<u32> = inp["input_ids"].data.iter().map(|&v| v as u32).collect();
    let mask = &inp["attention_mask"].data;
    let (b, l) = (inp["input_ids"].shape[0], inp["input_ids"].shape[1]);
    let out = if scale == 1.0 {
        m.forward(&be, &ids, mask, b).unwrap()
    } else {
        // Broken variant: the same stack with 1/sqrt(d_kv) attention scaling.
        let pos = be
            .upload(m.position_bias(l), &[m.config.num_heads, l, l])
            .unwrap();
        let kb: Vec<f32> = mask
            .iter()
            .map(|&v| if v != 0.0 { 0.0 } else { f32::MIN })
            .collect();
        let kb = be.upload(kb, &[b, l]).unwrap();
        let x = be
            .embedding(&m.shared, &ids)
            .unwrap()
            .reshape(&[b, l, m.config.d_model])
            .unwrap();
        m.run_blocks(&be, x, &pos, Some(&kb), scale).unwrap()
    };
    let keep = out.dim(1);
    let d = out.dim(2);
    let got = be.to_host(&out).unwrap();
    // Compare the first `keep` positions of every row (the rest are padding for all rows).
    let want: Vec<f32> = (0..b)
        .flat_map(|bi| exp["last_hidden_state_f64"].data[bi * l * d..(bi * l + keep) * d].to_vec())
        .collect();
    let drift = meta(&dir)["rel_l2_f32_vs_f64"].as_f64().unwrap();
    (got, want, drift, keep)
}

#[test]
fn t5_matches_transformers() {
    let (got, want, drift, keep) = t5_run(1.0);
    assert_eq!(keep, 110);
    let err = rel_l2(&got, &want);
    println!("T5: rel L2 {err:.3e}, reference drift {drift:.3e}");
    assert!(drift < 1e-5, "implausible fixture drift {drift}");
    assert!(
        err < DRIFT_FACTOR * drift,
        "rel L2 {err:.3e} > 3 × {drift:.3e}"
    );
}

#[test]
fn t5_with_attention_scaling_fails() {
    let (got, want, drift, _) = t5_run(1.0 / 8f32.sqrt());
    let err = rel_l2(&got, &want);
    println!("T5 with 1/sqrt(d) scaling: rel L2 {err:.3e}");
    assert!(err > 1000.0 * DRIFT_FACTOR * drift, "{err:.3e}");
}

/// The short row alone (batch 1, its own length) gives its rows of the batched output: the
/// valid-prefix shortcut is exact.
#[test]
fn t5_short_row_alone_matches_batched() {
    let be = CpuBackend::new();
    let dir = fixtures().join("t5");
    let m = ecad_native::pipeline::load_t5(&be, &dir.join("text_encoder")).unwrap();
    let inp = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let exp = read_inputs(&dir.join("expected.safetensors")).unwrap();
    let l = inp["input_ids"].shape[1];
    let ids: Vec<u32> = inp["input_ids"].data[l..]
        .iter()
        .map(|&v| v as u32)
        .collect();
    let mask = &inp["attention_mask"].data[l..];
    let out = m.forward(&be, &ids, mask, 1).unwrap();
    assert_eq!(out.shape(), &[1, 23, 32]);
    let got = be.to_host(&out).unwrap();
    let want = &exp["last_hidden_state_f64"].data[l * 32..(l + 23) * 32];
    let err = rel_l2(&got, want);
    let drift = meta(&dir)["rel_l2_f32_vs_f64"].as_f64().unwrap();
    assert!(err < DRIFT_FACTOR * drift, "{err:.3e}");
}

#[test]
fn buckets_match_transformers() {
    let exp = read_inputs(&fixtures().join("t5/expected.safetensors")).unwrap();
    let b = &exp["buckets"].data;
    let r = (b.len() as i64 - 1) / 2;
    for (i, &want) in b.iter().enumerate() {
        let rel = i as i64 - r;
        assert_eq!(
            relative_position_bucket(rel, 32, 128) as f32,
            want,
            "rel {rel}"
        );
    }
}

#[test]
fn vae_decoder_matches_diffusers() {
    let be = CpuBackend::new();
    let dir = fixtures().join("vae");
    let m = ecad_native::pipeline::load_vae(&be, &dir.join("vae")).unwrap();
    let inp = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let exp = read_inputs(&dir.join("expected.safetensors")).unwrap();
    let lat = &inp["latents"];
    let x = be.upload(lat.data.clone(), &lat.shape).unwrap();
    let out = m.decode_latents(&be, &x).unwrap();
    assert_eq!(out.shape(), &[2, 3, 20, 24]);
    let got = be.to_host(&out).unwrap();
    let err = rel_l2(&got, &exp["sample_f64"].data);
    let drift = meta(&dir)["rel_l2_f32_vs_f64"].as_f64().unwrap();
    println!("VAE: rel L2 {err:.3e}, reference drift {drift:.3e}");
    assert!(drift < 1e-5);
    assert!(
        err < DRIFT_FACTOR * drift,
        "rel L2 {err:.3e} > 3 × {drift:.3e}"
    );

    // Broken variant: GroupNorm eps 1e-5 instead of 1e-6 is not enough to see at this scale,
    // but a missing mid-block attention residual is: decode without the attention block.
    let mut m2 = ecad_native::pipeline::load_vae(&be, &dir.join("vae")).unwrap();
    m2.mid_block.attention = None;
    let bad = be.to_host(&m2.decode_latents(&be, &x).unwrap()).unwrap();
    let e2 = rel_l2(&bad, &exp["sample_f64"].data);
    println!("VAE without mid attention: rel L2 {e2:.3e}");
    assert!(e2 > 1000.0 * DRIFT_FACTOR * drift);
}

/// diffusers' postprocess (denormalize, round half to even) on the reference decoder output
/// gives exactly its uint8 image; this engine's own decode gives the same pixels up to ±1 where
/// a value sits within float noise of a rounding boundary.
#[test]
fn postprocess_matches_diffusers_uint8() {
    use ecad_native::pipeline::image::to_rgb8;
    let dir = fixtures().join("vae");
    let exp = read_inputs(&dir.join("expected.safetensors")).unwrap();
    let s = &exp["sample"];
    let (n, h, w) = (s.shape[0], s.shape[2], s.shape[3]);
    let want: Vec<u8> = exp["image_u8"].data.iter().map(|&v| v as u8).collect();
    let mut got = Vec::new();
    for i in 0..n {
        got.extend(to_rgb8(&s.data[i * 3 * h * w..(i + 1) * 3 * h * w], h, w));
    }
    assert_eq!(got, want);
    // The engine's decode: pixels within 1 of diffusers'.
    let be = CpuBackend::new();
    let m = ecad_native::pipeline::load_vae(&be, &dir.join("vae")).unwrap();
    let inp = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let lat = &inp["latents"];
    let x = be.upload(lat.data.clone(), &lat.shape).unwrap();
    let out = be.to_host(&m.decode_latents(&be, &x).unwrap()).unwrap();
    let mut mine = Vec::new();
    for i in 0..n {
        mine.extend(to_rgb8(&out[i * 3 * h * w..(i + 1) * 3 * h * w], h, w));
    }
    let off = mine.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert!(mine.iter().zip(&want).all(|(a, b)| a.abs_diff(*b) <= 1));
    println!("{off} of {} pixels differ by 1", want.len());
}

#[test]
fn resize_and_crop_matches_diffusers() {
    use ecad_native::pipeline::image::resize_and_crop;
    let exp = read_inputs(&fixtures().join("vae/expected.safetensors")).unwrap();
    let x = &exp["resize_in"];
    let shape = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    for (key, h, w) in [("resize_out_h15_w7", 15, 7), ("resize_out_h9_w16", 9, 16)] {
        let got = resize_and_crop(&x.data, shape, h, w);
        let want = &exp[key];
        assert_eq!(want.shape, vec![1, 3, h, w]);
        let max = got
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-5, "{key}: max abs {max}");
    }
}

/// Copies a weights file with renamed tensors (all written as F32; `reshape` may give a tensor
/// another shape).
fn rewrite(
    src: &std::path::Path,
    dst: &std::path::Path,
    rename: &dyn Fn(&str) -> String,
    reshape: &dyn Fn(&str, &[usize]) -> Vec<usize>,
) {
    use ecad_native::weights::{write_outputs, HostTensor};
    let t = read_inputs(src).unwrap();
    let renamed: Vec<(String, HostTensor)> = t
        .iter()
        .map(|(k, v)| {
            let n = rename(k);
            let shape = reshape(&n, &v.shape);
            (
                n,
                HostTensor {
                    shape,
                    data: v.data.clone(),
                },
            )
        })
        .collect();
    let refs: Vec<(&str, &HostTensor)> = renamed.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write_outputs(dst, &refs).unwrap();
}

/// Legacy VAE attention names (`query`/`key`/`value`/`proj_attn`, also as 1×1 conv weights)
/// and F32 weights give the same decoder output.
#[test]
fn vae_accepts_legacy_attention_names() {
    let be = CpuBackend::new();
    let dir = fixtures().join("vae");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("vae/config.json"), tmp.path().join("config.json")).unwrap();
    rewrite(
        &dir.join("vae/diffusion_pytorch_model.safetensors"),
        &tmp.path().join("diffusion_pytorch_model.safetensors"),
        &|k: &str| {
            k.replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.")
        },
        &|k: &str, s: &[usize]| {
            if k.contains(".query.weight") || k.contains(".proj_attn.weight") {
                vec![s[0], s[1], 1, 1]
            } else {
                s.to_vec()
            }
        },
    );
    let inp = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let lat = &inp["latents"];
    let x = be.upload(lat.data.clone(), &lat.shape).unwrap();
    let a = ecad_native::pipeline::load_vae(&be, &dir.join("vae")).unwrap();
    let b = ecad_native::pipeline::load_vae(&be, tmp.path()).unwrap();
    let ya = be.to_host(&a.decode_latents(&be, &x).unwrap()).unwrap();
    let yb = be.to_host(&b.decode_latents(&be, &x).unwrap()).unwrap();
    assert_eq!(ya, yb);
}

/// A single F32 file with the embedding stored as `encoder.embed_tokens.weight` (and extra
/// decoder tensors that the encoder ignores) gives the same T5 output as the BF16 shards.
#[test]
fn t5_accepts_embed_tokens_name_and_a_single_file() {
    let be = CpuBackend::new();
    let dir = fixtures().join("t5");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("text_encoder/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    // Merge the shards into one file.
    let mut all = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir.join("text_encoder")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            all.extend(read_inputs(&p).unwrap());
        }
    }
    let mut named: Vec<(String, ecad_native::weights::HostTensor)> = all
        .into_iter()
        .map(|(k, v)| (k.replace("shared.weight", "encoder.embed_tokens.weight"), v))
        .collect();
    named.push((
        "decoder.final_layer_norm.weight".into(),
        ecad_native::weights::HostTensor {
            shape: vec![32],
            data: vec![1.0; 32],
        },
    ));
    let refs: Vec<(&str, &ecad_native::weights::HostTensor)> =
        named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    ecad_native::weights::write_outputs(&tmp.path().join("model.safetensors"), &refs).unwrap();
    let a = ecad_native::pipeline::load_t5(&be, &dir.join("text_encoder")).unwrap();
    let b = ecad_native::pipeline::load_t5(&be, tmp.path()).unwrap();
    let inp = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let ids: Vec<u32> = inp["input_ids"].data.iter().map(|&v| v as u32).collect();
    let mask = &inp["attention_mask"].data;
    let ya = be.to_host(&a.forward(&be, &ids, mask, 2).unwrap()).unwrap();
    let yb = be.to_host(&b.forward(&be, &ids, mask, 2).unwrap()).unwrap();
    assert_eq!(ya, yb);
}
