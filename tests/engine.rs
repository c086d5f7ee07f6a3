//! The Rust API every door uses: `Engine::open` and its operations, the error kinds they report,
//! and cancellation through the progress callback.

mod common;

use common::{cpu_engine, demo_denoise_inputs};
use ecad_native::engine::{
    DenoiseRequest, Dtype, EngineOptions, Event, GenerateRequest, Load, NamedInputs, Progress,
};
use ecad_native::{Engine, ErrorKind, ModelSource};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn info_comes_from_the_configs() {
    let e = Engine::open(ModelSource::Demo, cpu_engine(Load::Config)).unwrap();
    let i = e.info();
    assert_eq!((i.family, i.blocks, i.single_blocks), ("pixart", 28, 0));
    assert!(i.is_demo && !i.packed);
    assert_eq!(e.device_name(), "none");
    let f = Engine::open(
        ModelSource::Arch("flux-narrow".into()),
        cpu_engine(Load::Config),
    )
    .unwrap();
    let i = f.info();
    assert_eq!((i.family, i.blocks, i.single_blocks), ("flux", 19, 38));
    assert_eq!(
        (i.text_dim, i.pooled_dim, i.latent_channels),
        (4096, 768, 16)
    );
    // A folder is detected by its transformer config.
    let d = Engine::open(
        ModelSource::Dir(fixtures().join("flux_denoise/dev_dynamic")),
        cpu_engine(Load::Config),
    )
    .unwrap();
    assert_eq!((d.info().family, d.info().single_blocks), ("flux", 3));
    let p = Engine::open(
        ModelSource::Dir(fixtures().join("denoise/tiny28")),
        cpu_engine(Load::Config),
    )
    .unwrap();
    assert_eq!((p.info().family, p.info().blocks), ("pixart", 28));
    // A config-only engine refuses what needs weights, by kind.
    let inputs = BTreeMap::new();
    let err = p
        .forward(&NamedInputs {
            tensors: &inputs,
            origin: "x",
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[test]
fn open_errors_have_kinds() {
    let kind = |s: ModelSource, o: EngineOptions| Engine::open(s, o).err().unwrap().kind();
    assert_eq!(
        kind(ModelSource::Arch("nope".into()), cpu_engine(Load::Config)),
        ErrorKind::InvalidInput
    );
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(
        kind(
            ModelSource::Dir(tmp.path().into()),
            cpu_engine(Load::Config)
        ),
        ErrorKind::Checkpoint
    );
    let f16 = EngineOptions {
        dtype: Dtype::F16,
        ..cpu_engine(Load::Transformer)
    };
    assert_eq!(kind(ModelSource::Demo, f16), ErrorKind::Unsupported);
    let zero = EngineOptions {
        threads: Some(0),
        ..cpu_engine(Load::Config)
    };
    assert_eq!(kind(ModelSource::Demo, zero), ErrorKind::InvalidInput);
    // A transformer folder with a truncated weights file: a checkpoint error naming the file.
    let dir = tmp.path().join("t");
    std::fs::create_dir(&dir).unwrap();
    let src = fixtures().join("denoise/tiny28/transformer");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("diffusion_pytorch_model.safetensors"),
        b"\x08\0\0\0\0\0\0\0{}",
    )
    .unwrap();
    let e = Engine::open(ModelSource::Dir(dir), cpu_engine(Load::Transformer))
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Checkpoint, "{e}");
}

#[test]
fn denoise_is_deterministic_and_cancellable() {
    let e = Engine::open(ModelSource::Demo, cpu_engine(Load::Transformer)).unwrap();
    let inputs = demo_denoise_inputs();
    let named = NamedInputs {
        tensors: &inputs,
        origin: "demo inputs",
    };
    let req = DenoiseRequest {
        steps: 4,
        ..DenoiseRequest::default()
    };
    let mut seen = Vec::new();
    let mut sink = |ev: &Event<'_>| {
        if let Event::Advance { done } = ev {
            seen.push(*done);
        }
        true
    };
    let a = e
        .denoise(&named, &req, &mut Progress::new(&mut sink))
        .unwrap();
    assert_eq!(seen, vec![1, 2, 3, 4]);
    let b = e.denoise(&named, &req, &mut Progress::none()).unwrap();
    assert_eq!(a.data, b.data);
    assert_eq!(a.shape, vec![1, 4, 8, 8]);
    // A schedule that does not fit is a schedule error.
    let wrong = e.heuristic("fora:2", 5).unwrap();
    let err = e
        .denoise(
            &named,
            &DenoiseRequest {
                schedule: Some(&wrong),
                ..req
            },
            &mut Progress::none(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Schedule, "{err}");
    // Cancel after the first step: the run stops there (no later step is reported).
    let mut after_cancel = Vec::new();
    let mut stop = |ev: &Event<'_>| {
        if let Event::Advance { done } = ev {
            after_cancel.push(*done);
        }
        !matches!(ev, Event::Advance { done: 1 })
    };
    let err = e
        .denoise(&named, &req, &mut Progress::new(&mut stop))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(after_cancel, vec![1], "steps ran after the cancel");
    assert!(err.message().contains("after step 1 of 4"), "{err}");
    // A missing input names itself and its origin.
    let mut partial = inputs.clone();
    partial.remove("prompt_embeds");
    let err = e
        .denoise(
            &NamedInputs {
                tensors: &partial,
                origin: "demo inputs",
            },
            &req,
            &mut Progress::none(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.message().contains("demo inputs") && err.message().contains("prompt_embeds"));
}

#[test]
fn generate_needs_the_pipeline_and_is_reproducible() {
    let mut t = Engine::open(ModelSource::Demo, cpu_engine(Load::Transformer)).unwrap();
    let prompts = vec!["a red cube".to_string(), "two cats".to_string()];
    let req = GenerateRequest {
        prompts: &prompts,
        negative_prompt: "",
        steps: Some(3),
        guidance: None,
        seed: 7,
        batch: 2,
        height: Some(64),
        width: Some(64),
        binning: true,
        schedule: None,
        release_text_encoders: false,
    };
    let err = t.generate(&req, &mut Progress::none()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    let mut g = Engine::open(ModelSource::Demo, cpu_engine(Load::Pipeline)).unwrap();
    assert!(g.has_pipeline());
    assert_eq!(g.plan_size(Some(64), Some(64), true).unwrap(), (64, 64));
    let a = g.generate(&req, &mut Progress::none()).unwrap();
    assert_eq!(a.images.len(), 4);
    let seeds: Vec<u64> = a.images.iter().map(|i| i.seed).collect();
    assert_eq!(seeds, vec![7, 8, 9, 10]);
    assert_eq!(a.images[3].prompt_index, 1);
    assert_eq!(a.images[0].image.rgb.len(), 64 * 64 * 3);
    // The engine stays usable: the same request gives the same bytes.
    let b = g.generate(&req, &mut Progress::none()).unwrap();
    for (x, y) in a.images.iter().zip(&b.images) {
        assert_eq!(x.image, y.image);
    }
    // Cancelling during the first prompt's sampling stops there, mid-run.
    let mut steps_seen = 0;
    let mut stop = |ev: &Event<'_>| {
        if matches!(ev, Event::Advance { .. }) {
            steps_seen += 1;
        }
        steps_seen < 2
    };
    let err = g.generate(&req, &mut Progress::new(&mut stop)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(err.message().contains("after step 2 of 3"), "{err}");
    assert_eq!(steps_seen, 2);
    let enc = g.encode_prompt("a red cube").unwrap();
    assert_eq!(enc.embeds.len(), enc.text_len * g.info().text_dim);
    assert!(enc.pooled.is_empty());
}

#[test]
fn macs_and_heuristics_match_the_layout() {
    let e = Engine::open(
        ModelSource::Arch("xl2-256".into()),
        cpu_engine(Load::Config),
    )
    .unwrap();
    let full = e.macs(None, 256, 256).unwrap();
    let fora = e.heuristic("fora:2", 20).unwrap();
    let cached = e.macs(Some(&fora), 256, 256).unwrap();
    assert!(
        cached.total_macs < full.total_macs && cached.total_macs * 3 > full.total_macs,
        "FORA:2 computes about half: {} vs {}",
        cached.total_macs,
        full.total_macs
    );
    let err = e.heuristic("no-such-heuristic", 20).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Schedule);
}
