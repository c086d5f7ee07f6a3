//! ImageReward v1.0 (src/models/image_reward/) against the `image-reward` package's own model code
//! (ImageReward 1.5, transformers 4.46.3, timm 0.6.13, torch 2.15.0) on small random models:
//! fixtures from tools/golden/gen_image_reward.py, converted by tools/convert/imagereward_to_safetensors.py.
//!
//! Per stage (image tokens, the text encoder's CLS row, the raw MLP output, the normalised score)
//! the engine (f32) is compared with the package run in float64 on the same weights and must stay
//! within `DRIFT_FACTOR` × the package's own float32-vs-float64 drift recorded in meta.json
//! (measured: 2–5e-7 relative L2 for the tensors; see tools/golden/README.md). The raw reward and
//! the score are one number per image, so their own drift is a noisy estimate (1.8e-8 to 8.7e-7):
//! they are allowed the larger of their drift and the CLS row's, from which their error comes.
//!
//! Broken variants (padding attended, no cross-attention, `[ENC]` in position 0 as BLIP's ITM
//! head does, no normalisation) land 10⁴–10⁶ × above the tolerance; the ViT's eps in BERT
//! (1e-6 for 1e-12) moves the CLS row by 4.9e-6, 6× its tolerance. The other swap, BERT's
//! 1e-12 in the ViT (for 1e-6), is measured and printed, not asserted: on the ViT's activations
//! (unit-order variance) it moves the image tokens by 5.3e-7, within f32 noise (tolerance
//! 1.0e-6), so no tolerance could tell it apart.

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::Backend;
use ecad_native::models::image_reward::bert_med::TextVariant;
use ecad_native::models::image_reward::tokenizer::BertTokenizer;
use ecad_native::models::image_reward::{ImageReward, ImageRewardConfig, Variant};
use ecad_native::weights::read_inputs;
use std::path::{Path, PathBuf};

const DRIFT_FACTOR: f64 = 3.0;

fn dir() -> PathBuf {
    fixtures().join("image_reward")
}

/// A tensor of the expected file as f64 (F64 tensors exactly, F32 widened).
fn f64_tensor(path: &Path, name: &str) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    match v.dtype() {
        safetensors::Dtype::F64 => v
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::F32 => v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        d => panic!("{name}: {d:?}"),
    }
}

fn rel(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y).powi(2);
        den += y * y;
    }
    (num / den).sqrt()
}

struct Case {
    model: ImageReward<CpuBackend>,
    pixels: ecad_native::backend::Tensor<CpuBackend>,
    ids: Vec<u32>,
    mask: Vec<f32>,
    meta: serde_json::Value,
    expected: PathBuf,
}

fn case(be: &CpuBackend, name: &'static str) -> Case {
    let d = dir().join(name);
    let model = ImageReward::open(&d, be).unwrap();
    let inp = read_inputs(&d.join("inputs.safetensors")).unwrap();
    let px = &inp["pixels"];
    let pixels = be.upload(px.data.clone(), &px.shape).unwrap();
    let ids = inp["input_ids"].data.iter().map(|&v| v as u32).collect();
    let mask = inp["attention_mask"].data.clone();
    Case {
        model,
        pixels,
        ids,
        mask,
        meta: meta(&d),
        expected: d.join("expected.safetensors"),
    }
}

impl Case {
    fn drift(&self, stage: &str) -> f64 {
        self.meta["drift"][stage]["rel_l2_f32_vs_f64"]
            .as_f64()
            .unwrap()
    }
    fn tol(&self, stage: &str) -> f64 {
        let d = match stage {
            "raw" | "score" => self.drift(stage).max(self.drift("text_cls")),
            _ => self.drift(stage),
        };
        DRIFT_FACTOR * d
    }
    /// rel L2 of each stage against the float64 reference.
    fn errors(&self, be: &CpuBackend, v: Variant) -> Vec<(&'static str, f64)> {
        let s = self
            .model
            .stages_variant(be, &self.pixels, &self.ids, &self.mask, v)
            .unwrap();
        let got = [
            ("image_embeds", be.to_host(&s.image_embeds).unwrap()),
            ("text_cls", be.to_host(&s.text_cls).unwrap()),
            ("raw", s.raw.clone()),
            ("score", s.score.clone()),
        ];
        got.iter()
            .map(|(k, g)| {
                let want = f64_tensor(&self.expected, &format!("{k}_f64"));
                (*k, rel(g, &want))
            })
            .collect()
    }
}

fn check_parity(name: &'static str) {
    let be = CpuBackend::new();
    let c = case(&be, name);
    for (stage, e) in c.errors(&be, Variant::default()) {
        let tol = c.tol(stage);
        println!(
            "{name} {stage}: rel L2 {e:.3e} (package f32 drift {:.3e}, tol {tol:.3e})",
            c.drift(stage)
        );
        assert!(e <= tol, "{name} {stage}: {e:.3e} > {tol:.3e}");
    }
    // The prompt path: the prompts of meta.json tokenised here give the package's ids, and
    // `score` gives the stage scores.
    let prompts: Vec<String> = c.meta["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let (ids, mask) = c.model.tokenize(&refs).unwrap();
    assert_eq!(ids, c.ids, "{name}: token ids");
    assert_eq!(mask, c.mask, "{name}: attention mask");
    let scores = c.model.score(&be, &c.pixels, &refs).unwrap();
    let want = f64_tensor(&c.expected, "score_f64");
    assert!(rel(&scores, &want) <= c.tol("score"));
}

#[test]
fn tiny_matches_the_package() {
    check_parity("tiny");
}

#[test]
fn grid224_matches_the_package() {
    check_parity("grid224");
}

#[test]
fn broken_variants_fail() {
    let be = CpuBackend::new();
    let c = case(&be, "tiny");
    let broken = [
        (
            "padding attended",
            Variant {
                text: TextVariant {
                    ignore_padding_mask: true,
                    ..Default::default()
                },
                ..Default::default()
            },
        ),
        (
            "no cross-attention",
            Variant {
                text: TextVariant {
                    skip_cross_attention: true,
                    ..Default::default()
                },
                ..Default::default()
            },
        ),
        (
            "[ENC] in position 0",
            Variant {
                enc_token_first: true,
                ..Default::default()
            },
        ),
        (
            "no normalisation",
            Variant {
                no_normalisation: true,
                ..Default::default()
            },
        ),
    ];
    for (what, v) in broken {
        let errs = c.errors(&be, v);
        let (_, e) = errs.iter().find(|(k, _)| *k == "score").unwrap();
        let tol = c.tol("score");
        println!("{what}: score rel L2 {e:.3e} (tol {tol:.3e})");
        assert!(
            *e > 100.0 * tol,
            "{what} not caught: {e:.3e} vs tol {tol:.3e}"
        );
    }
    // BERT with the ViT's eps: caught on the CLS row.
    let v = Variant {
        text: TextVariant {
            eps: Some(1e-6),
            ..Default::default()
        },
        ..Default::default()
    };
    let errs = c.errors(&be, v);
    println!("BERT LayerNorm eps 1e-6: {errs:?}");
    let (_, e) = errs.iter().find(|(k, _)| *k == "text_cls").unwrap();
    assert!(
        *e > 3.0 * c.tol("text_cls"),
        "BERT eps 1e-6 not caught: {e:.3e}"
    );
    // The ViT with BERT's eps, measured only (see the module docs).
    let v = Variant {
        vision_eps: Some(1e-12),
        ..Default::default()
    };
    println!("ViT LayerNorm eps 1e-12: {:?}", c.errors(&be, v));
}

#[test]
fn scores_are_deterministic() {
    let be = CpuBackend::new();
    let c = case(&be, "tiny");
    let a = c.model.score_ids(&be, &c.pixels, &c.ids, &c.mask).unwrap();
    let b = c.model.score_ids(&be, &c.pixels, &c.ids, &c.mask).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn tokenizer_matches_the_package() {
    let tokens: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("tokens.json")).unwrap()).unwrap();
    let l = tokens["max_length"].as_u64().unwrap() as usize;
    let td = dir().join("tokenizer");
    let from_vocab = BertTokenizer::from_vocab_file(&td.join("vocab.txt")).unwrap();
    let from_json = BertTokenizer::from_json_file(&td.join("tokenizer.json")).unwrap();
    for tok in [&from_vocab, &from_json] {
        assert_eq!(
            tok.vocab_size() as u64,
            tokens["vocab_size"].as_u64().unwrap()
        );
        assert_eq!(
            tok.enc_id() as u64,
            tokens["enc_token_id"].as_u64().unwrap()
        );
        for case in tokens["cases"].as_array().unwrap() {
            let p = case["prompt"].as_str().unwrap();
            let t = tok.encode_padded(p, l).unwrap();
            let want: Vec<u32> = case["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let want_mask: Vec<f32> = case["attention_mask"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as f32)
                .collect();
            assert_eq!(t.ids, want, "{p:?}");
            assert_eq!(t.mask, want_mask, "{p:?}");
        }
    }
}

#[test]
fn bad_folders_give_one_clear_error() {
    let be = CpuBackend::new();
    let tmp = std::env::temp_dir().join(format!("ecad-ir-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("tokenizer")).unwrap();
    let src = dir().join("tiny");
    std::fs::copy(
        src.join("tokenizer/vocab.txt"),
        tmp.join("tokenizer/vocab.txt"),
    )
    .unwrap();
    let err = |m: Result<ImageReward<CpuBackend>, ecad_native::models::ModelError>| match m {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    // No weights.
    std::fs::copy(src.join("config.json"), tmp.join("config.json")).unwrap();
    let e = err(ImageReward::open(&tmp, &be));
    assert!(e.contains("model.safetensors"), "{e}");
    // Weights of another size: the config says 3 ViT blocks.
    std::fs::copy(src.join("model.safetensors"), tmp.join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"depth\": 2", "\"depth\": 3");
    std::fs::write(tmp.join("config.json"), cfg).unwrap();
    let e = err(ImageReward::open(&tmp, &be));
    assert!(e.contains("blip.visual_encoder.blocks.2"), "{e}");
    // A wider ViT than the weights.
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"mlp_hidden_dim\": 256", "\"mlp_hidden_dim\": 512");
    std::fs::write(tmp.join("config.json"), cfg).unwrap();
    let e = err(ImageReward::open(&tmp, &be));
    assert!(e.contains("mlp.fc1.weight"), "{e}");
    // A tokenizer larger than the embedding table.
    std::fs::copy(src.join("config.json"), tmp.join("config.json")).unwrap();
    let mut vocab = std::fs::read_to_string(src.join("tokenizer/vocab.txt")).unwrap();
    for i in 0..10 {
        vocab.push_str(&format!("extra{i}\n"));
    }
    std::fs::write(tmp.join("tokenizer/vocab.txt"), vocab).unwrap();
    let e = err(ImageReward::open(&tmp, &be));
    assert!(e.contains("do not match"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();

    // Wrong image size and prompt count: typed errors.
    let c = case(&be, "tiny");
    let px = be.zeros(&[1, 3, 16, 16]).unwrap();
    assert!(c.model.score(&be, &px, &["a"]).is_err());
    let e = c
        .model
        .score(&be, &c.pixels, &["a", "b"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 prompts for 3 images"), "{e}");
}

#[test]
fn v1_manifest_matches_the_loader() {
    let path = repo_root().join("weights-manifest/ImageReward-v1.0.json");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let listed: std::collections::BTreeMap<String, Vec<usize>> = m["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize);
            (t[0].as_str().unwrap().to_string(), shape.collect())
        })
        .collect();
    let read = ImageReward::<CpuBackend>::expected_tensors(&ImageRewardConfig::default());
    for (name, shape) in &read {
        // The engine uploads pos_embed [1, N, D] as [N, D] but reads it as stored.
        assert_eq!(listed.get(name), Some(shape), "{name}");
    }
    // What the engine does not read: the unused BLIP projections and BERT's position_ids buffer.
    let unread: Vec<&String> = listed
        .keys()
        .filter(|k| !read.iter().any(|(n, _)| n == *k))
        .collect();
    assert_eq!(
        unread,
        [
            "blip.text_encoder.embeddings.position_ids",
            "blip.text_proj.bias",
            "blip.text_proj.weight",
            "blip.vision_proj.bias",
            "blip.vision_proj.weight",
        ]
    );
}

#[test]
fn scorer_on_decoded_images_matches_the_package() {
    use ecad_native::metrics::{open_scorer, score_all, Metric, MetricSpec, RgbImage};
    let be = CpuBackend::new();
    let d = dir().join("tiny");
    let c = case(&be, "tiny");
    let path = d.join("score_images.safetensors");
    let inp = read_inputs(&path).unwrap();
    let si = &c.meta["score_images"];
    let prompts: Vec<&str> = si["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let images: Vec<RgbImage> = (0..prompts.len())
        .map(|i| {
            let t = &inp[&format!("image{i}")];
            RgbImage {
                height: t.shape[0],
                width: t.shape[1],
                rgb: t.data.iter().map(|&v| v as u8).collect(),
            }
        })
        .collect();
    let scorer = ecad_native::metrics::image_reward::ImageRewardScorer::open(&d, &be).unwrap();
    // The preprocessing: the package's _transform (torchvision Resize + CenterCrop + Normalize).
    for (i, img) in images.iter().enumerate() {
        let got = scorer.pixel_values(img).unwrap();
        let want = &inp[&format!("pixels{i}")].data;
        let max = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("image {i}: preprocess max abs diff {max:.2e}");
        assert!(max <= 1e-6, "image {i}: preprocessing differs by {max}");
    }
    let spec = MetricSpec::new(Metric::ImageReward, &d);
    let boxed = open_scorer(&spec, &be).unwrap();
    assert_eq!(boxed.metric(), "image-reward");
    assert_eq!(
        boxed.fingerprint(),
        ecad_native::metrics::Scorer::fingerprint(&scorer)
    );
    let refs: Vec<&RgbImage> = images.iter().collect();
    let got = score_all(boxed.as_ref(), &refs, &prompts).unwrap();
    let want = f64_tensor(&path, "score_f64");
    let got32: Vec<f32> = got.iter().map(|&v| v as f32).collect();
    let e = rel(&got32, &want);
    println!("decoded-image scores {got:?} vs package {want:?}: rel {e:.3e}");
    assert!(e <= c.tol("score"), "{e:.3e}");
    // One at a time gives the same bits as the batch.
    let one = boxed.score_batch(&refs[1..], &prompts[1..]).unwrap();
    assert_eq!(one[0].to_bits(), got[1].to_bits());
}

/// The same per-stage parity on the CUDA backend (f32, no TF32); SKIPPED without a CUDA driver.
#[test]
fn image_reward_on_gpu_matches_the_package() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuBackend::new();
    for name in ["tiny", "grid224"] {
        let c = case(&cpu, name);
        let d = dir().join(name);
        let m = ImageReward::open(&d, &gpu).unwrap();
        let inp = read_inputs(&d.join("inputs.safetensors")).unwrap();
        let px = &inp["pixels"];
        let pixels = gpu.upload(px.data.clone(), &px.shape).unwrap();
        let s = m.stages(&gpu, &pixels, &c.ids, &c.mask).unwrap();
        for (stage, got) in [
            ("image_embeds", gpu.to_host(&s.image_embeds).unwrap()),
            ("text_cls", gpu.to_host(&s.text_cls).unwrap()),
            ("raw", s.raw.clone()),
            ("score", s.score.clone()),
        ] {
            let want = f64_tensor(&c.expected, &format!("{stage}_f64"));
            let e = rel(&got, &want);
            println!(
                "{name} {stage} on GPU: rel L2 {e:.3e} (tol {:.3e})",
                c.tol(stage)
            );
            assert!(e <= c.tol(stage), "{name} {stage} on GPU: {e:.3e}");
        }
    }
}

/// ImageReward v1.0 at its real size (seeded random weights) on the GPU: images/s at batch 16
/// in f32 and bf16, printed for docs/PERFORMANCE.md (no threshold); SKIPPED without a driver.
#[test]
fn image_reward_throughput_on_gpu() {
    use ecad_native::backend::cuda::DType;
    use ecad_native::models::RandomSource;
    for dt in [DType::F32, DType::Bf16] {
        let Some(gpu) = gpu_dtype(dt) else { return };
        let cfg = ImageRewardConfig::default();
        let m = ImageReward::load(&gpu, cfg, &RandomSource { seed: 14 }).unwrap();
        let b = 16;
        let px: Vec<f32> = (0..b * 3 * 224 * 224)
            .map(|i| ((i * 7919 % 2000) as f32) / 1000.0 - 1.0)
            .collect();
        let pixels = gpu.upload(px, &[b, 3, 224, 224]).unwrap();
        let ids: Vec<u32> = (0..b * 35)
            .map(|i| {
                if i % 35 < 12 {
                    (i % 35 * 97 + 101) as u32
                } else {
                    0
                }
            })
            .collect();
        let mask: Vec<f32> = (0..b * 35)
            .map(|i| if i % 35 < 12 { 1.0 } else { 0.0 })
            .collect();
        m.score_ids(&gpu, &pixels, &ids, &mask).unwrap(); // warm-up
        gpu.synchronize().unwrap();
        let reps = 10;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            m.score_ids(&gpu, &pixels, &ids, &mask).unwrap();
        }
        gpu.synchronize().unwrap();
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "ImageReward v1.0 {dt:?} batch {b}: {:.2} ms per batch, {:.1} images/s",
            s * 1e3,
            b as f64 / s
        );
    }
}

/// One tensor of a safetensors file: name, dtype, shape, bytes.
type Entry = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Rewrites `src/model.safetensors` into `dst/` with `edit` applied to each tensor (`None`
/// drops it), copying config.json and the tokenizer.
fn rewrite_folder(src: &Path, dst: &Path, edit: &dyn Fn(Entry) -> Option<Entry>) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst.join("tokenizer")).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    std::fs::copy(
        src.join("tokenizer/vocab.txt"),
        dst.join("tokenizer/vocab.txt"),
    )
    .unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let edited: Vec<Entry> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, v)| edit((n, v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = edited
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dst.join("model.safetensors")).unwrap();
}

/// `weights check` knows ImageReward: the v1.0 manifest is the converter's full tensor list for
/// v1.0's config (what the engine reads plus `position_ids` and BLIP's projections); a converted
/// folder passes (against its config's list, or against the manifest when its config is
/// v1.0's); a wrong shape, a wrong dtype, a missing or an extra tensor is refused by name, by
/// the library and by the CLI alike. Broken variant to run (not yet run: no time for the
/// rebuild): with the shape comparison of `check_store_dtypes` removed, the short
/// `mlp.layers.0.bias` must be accepted and this test fail. The unchanged copy passing first
/// shows the refusals come from the edits.
#[test]
fn weights_check_knows_image_reward() {
    use ecad_native::metrics::image_reward::{check_dir, checkpoint_tensors, is_image_reward_dir};
    use ecad_native::weights::manifest::manifests;
    use std::collections::BTreeMap;
    let m = manifests()
        .into_iter()
        .find(|m| m.name == "ImageReward-v1.0")
        .expect("ImageReward-v1.0 in MANIFEST_SOURCES");
    assert!(m.is_image_reward());
    let (list, dtypes) = checkpoint_tensors(&ImageRewardConfig::default());
    let want: BTreeMap<_, _> = m.tensors.iter().cloned().collect();
    let got: BTreeMap<_, _> = list.iter().cloned().collect();
    assert_eq!(got.len(), list.len(), "duplicate names");
    assert_eq!(got, want);
    assert_eq!(dtypes, m.dtypes);

    let tiny = dir().join("tiny");
    assert!(is_image_reward_dir(&tiny));
    assert!(!is_image_reward_dir(
        &repo_root().join("tools/bench/clip_vit_b32")
    ));
    let r = check_dir(&tiny).unwrap();
    assert_eq!(r.matched, None);
    assert_eq!(r.dtypes.get("I64"), Some(&1), "{:?}", r.dtypes);
    let out = cli()
        .args(["weights", "check", "--model"])
        .arg(&tiny)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("ok: ") && text.contains("config.json implies"),
        "{text}"
    );
    let out = cli().args(["weights", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("ImageReward-v1.0") && l.contains("image-reward")),
        "{text}"
    );

    let tmp = std::env::temp_dir().join(format!("ecad-ir-check-{}", std::process::id()));
    let refused = |edit: &dyn Fn(Entry) -> Option<Entry>| {
        rewrite_folder(&tiny, &tmp, edit);
        let e = check_dir(&tmp).expect_err("accepted").to_string();
        let out = cli()
            .args(["weights", "check", "--model"])
            .arg(&tmp)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(stderr.contains(&e), "CLI: {stderr}\nlib: {e}");
        e
    };
    // The unchanged copy passes (the refusals below come from the edits).
    rewrite_folder(&tiny, &tmp, &|t| Some(t));
    check_dir(&tmp).unwrap();
    // A wrong shape: the head's first bias one element short.
    let e = refused(&|(n, d, mut s, mut b)| {
        if n == "mlp.layers.0.bias" {
            s[0] -= 1;
            b.truncate(b.len() - 4);
        }
        Some((n, d, s, b))
    });
    assert!(
        e.contains("`mlp.layers.0.bias` has shape [1023], expected [1024]"),
        "{e}"
    );
    // position_ids stored as floats.
    let e = refused(&|(n, d, s, b)| {
        if n.ends_with("position_ids") {
            let v: Vec<u8> = b
                .chunks(8)
                .flat_map(|c| (i64::from_le_bytes(c.try_into().unwrap()) as f32).to_le_bytes())
                .collect();
            return Some((n, safetensors::Dtype::F32, s, v));
        }
        Some((n, d, s, b))
    });
    assert!(e.contains("position_ids") && e.contains("I64"), "{e}");
    // A missing tensor, and an extra one (the same tensor under a name no model reads).
    let e = refused(&|t| Some(t).filter(|t| t.0 != "blip.vision_proj.bias"));
    assert!(e.contains("blip.vision_proj.bias"), "{e}");
    let e = refused(&|mut t| {
        if t.0 == "blip.vision_proj.bias" {
            t.0 = "blip.vision_proj.bias_extra".into();
        }
        Some(t)
    });
    assert!(e.contains("blip.vision_proj.bias"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();

    // A v1.0 config: the folder is checked against the manifest's real-size shapes.
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(
        tmp.join("config.json"),
        serde_json::to_string(&m.config).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        tiny.join("model.safetensors"),
        tmp.join("model.safetensors"),
    )
    .unwrap();
    let e = check_dir(&tmp).expect_err("accepted").to_string();
    assert!(e.contains("has shape") && e.contains("1024"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
