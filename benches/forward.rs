//! Criterion benchmarks: one PixArt forward (the demo model, and one XL-2 block at 256 px) and
//! the CPU ops that dominate it. Medians after criterion's warm-up.
//! Whole-model comparisons with PyTorch: `ecad-native bench --forward` and tools/bench/.

use criterion::{criterion_group, criterion_main, Criterion};
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::{Activation, Backend};
use ecad_native::models::pixart::{PixArtConfig, PixArtTransformer};
use ecad_native::models::RandomSource;
use ecad_native::pipeline::bench::BenchInputs;

fn forward(c: &mut Criterion, name: &str, cfg: PixArtConfig) {
    let be = CpuBackend::new();
    let model = PixArtTransformer::load(&be, cfg.clone(), &RandomSource { seed: 1 }).unwrap();
    let inp = BenchInputs::random(&cfg, 1, (cfg.sample_size, cfg.sample_size), 120, 0);
    let mut x = inp.latents.data.clone();
    x.extend_from_slice(&inp.latents.data);
    let mut shape = inp.latents.shape.clone();
    shape[0] = 2;
    let xt = be.upload(x, &shape).unwrap();
    let mut y = inp.negative_prompt_embeds.data.clone();
    y.extend_from_slice(&inp.prompt_embeds.data);
    let yt = be.upload(y, &[2, 120, cfg.text_dim()]).unwrap();
    let mut m = inp.negative_prompt_attention_mask.data.clone();
    m.extend_from_slice(&inp.prompt_attention_mask.data);
    let text = model.prepare_text(&be, &yt, Some(&m)).unwrap();
    c.bench_function(name, |b| {
        b.iter(|| {
            let cond = model.condition(&be, &[500.0, 500.0], None, None).unwrap();
            model
                .forward_prepared(&be, &xt, &cond, &text, &mut ecad_native::cache::NoCache)
                .unwrap()
        })
    });
}

fn benches(c: &mut Criterion) {
    forward(
        c,
        "forward/demo (28 blocks, D=48, 256 tokens, CFG batch 2)",
        ecad_native::pipeline::demo_config(),
    );
    let mut one_block = PixArtConfig::xl2(32, false);
    one_block.num_layers = 1;
    forward(
        c,
        "forward/XL-2 one block at 256 px (CFG batch 2)",
        one_block,
    );

    let be = CpuBackend::new();
    let x = be.upload(vec![0.01; 512 * 1152], &[512, 1152]).unwrap();
    let w = be.upload(vec![0.02; 4608 * 1152], &[4608, 1152]).unwrap();
    let b = be.upload(vec![0.1; 4608], &[4608]).unwrap();
    c.bench_function("op/linear 512x1152 -> 4608 + GELU", |bn| {
        bn.iter(|| be.linear(&x, &w, Some(&b), Activation::GeluTanh).unwrap())
    });
    let q = be
        .upload(vec![0.01; 2 * 256 * 1152], &[2, 256, 1152])
        .unwrap();
    c.bench_function("op/self-attention B=2 S=256 H=16 D=72", |bn| {
        bn.iter(|| {
            be.attention(&q, &q, &q, 16, 0.1178, None, None, false)
                .unwrap()
        })
    });
}

criterion_group! {
    name = group;
    config = Criterion::default().sample_size(10);
    targets = benches
}
criterion_main!(group);
