//! CUDA backend against the CPU backend: every op on fresh random inputs, and the PixArt and
//! FLUX forwards on the committed diffusers fixtures (f32, and FLUX in bf16 against torch's
//! bf16). The sampling loops and the FLUX pipeline on the GPU are the `*_on_gpu` tests of
//! denoise_parity, flux_denoise_parity and flux_generate. Without a CUDA driver each test
//! prints SKIPPED and why (CI has no GPU); scripts/gpu-check.sh runs them on a GPU machine.

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::cuda::{CudaBackend, DType};
use ecad_native::backend::{Activation, Backend, Tensor};
use ecad_native::models::{randn, rel_l2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

struct Pair<'a> {
    cpu: &'a CpuBackend,
    gpu: &'a CudaBackend,
}

impl Pair<'_> {
    /// Fresh random values, rounded to the GPU's storage dtype so that both backends see the
    /// same inputs.
    fn t(&self, r: &mut ChaCha8Rng, shape: &[usize]) -> (Tensor<CpuBackend>, Tensor<CudaBackend>) {
        let mut v = randn(r, shape.iter().product());
        self.gpu.dtype().precision().round_slice(&mut v);
        (
            self.cpu.upload(v.clone(), shape).unwrap(),
            self.gpu.upload(v, shape).unwrap(),
        )
    }
    /// `tol` is the f32 bound; ops that round (tol above 1e-7) get the storage dtype's bound in
    /// 16-bit storage: the output rounding alone is ~1e-3 rel L2 in bf16 (2^-8 unit roundoff)
    /// and ~1.4e-4 in f16, and the tensor-core attention also rounds the probabilities.
    fn same(&self, name: &str, c: &Tensor<CpuBackend>, g: &Tensor<CudaBackend>, tol: f64) {
        assert_eq!(c.shape(), g.shape(), "{name}");
        let tol = match self.gpu.dtype() {
            _ if tol <= 1e-7 => tol,
            DType::F32 => tol,
            DType::Bf16 => 1e-2,
            DType::F16 => 2e-3,
        };
        let e = rel_l2(&self.gpu.to_host(g).unwrap(), &self.cpu.to_host(c).unwrap());
        println!("{:<6} {name:<30} rel L2 {e:.2e}", self.gpu.name());
        assert!(e < tol, "{} {name}: {e:e} ≥ {tol:e}", self.gpu.name());
    }
}

#[test]
fn every_op_matches_the_cpu_backend() {
    if gpu().is_none() {
        return;
    }
    for dt in [DType::F32, DType::Bf16, DType::F16] {
        let gpu = gpu_dtype(dt).expect("CUDA backend");
        // What `--device auto` runs before it picks CUDA.
        ecad_native::backend::cuda::self_check(&gpu).unwrap();
        every_op(&gpu);
    }
}

fn every_op(gpu: &CudaBackend) {
    let cpu = CpuBackend::new();
    let p = Pair { cpu: &cpu, gpu };
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let (xc, xg) = p.t(&mut r, &[2, 37, 96]);
    let (wc, wg) = p.t(&mut r, &[80, 96]);
    let (bc, bg) = p.t(&mut r, &[80]);
    for act in [Activation::None, Activation::GeluTanh, Activation::Silu] {
        p.same(
            &format!("linear {act:?}"),
            &cpu.linear(&xc, &wc, Some(&bc), act).unwrap(),
            &gpu.linear(&xg, &wg, Some(&bg), act).unwrap(),
            1e-5,
        );
    }
    for (heads, d) in [(2, 64), (2, 72), (1, 128), (4, 24)] {
        let (qc, qg) = p.t(&mut r, &[2, 300, heads * d]);
        let (kc, kg) = p.t(&mut r, &[2, 45, heads * d]);
        let (vc, vg) = p.t(&mut r, &[2, 45, heads * d]);
        let kb: Vec<f32> = (0..90)
            .map(|i| {
                if i % 45 < 10 + i / 45 * 20 {
                    0.0
                } else {
                    -10000.0
                }
            })
            .collect();
        let kbc = cpu.upload(kb.clone(), &[2, 45]).unwrap();
        let kbg = gpu.upload(kb, &[2, 45]).unwrap();
        let s = 1.0 / (d as f32).sqrt();
        p.same(
            &format!("attention h{heads} d{d}"),
            &cpu.attention(&qc, &kc, &vc, heads, s, Some(&kbc), None, false)
                .unwrap(),
            &gpu.attention(&qg, &kg, &vg, heads, s, Some(&kbg), None, false)
                .unwrap(),
            1e-5,
        );
    }
    // Causal with a per-head bias, at head dim 32 (CUDA-core kernel) and 64 (tensor cores in
    // 16-bit storage; 70 queries span two 64-query blocks).
    for (s, hd) in [(50, 64), (70, 128)] {
        let (qc, qg) = p.t(&mut r, &[1, s, hd]);
        let (hc, hg) = p.t(&mut r, &[2, s, s]);
        p.same(
            &format!("attention causal+head bias d{}", hd / 2),
            &cpu.attention(&qc, &qc, &qc, 2, 0.125, None, Some(&hc), true)
                .unwrap(),
            &gpu.attention(&qg, &qg, &qg, 2, 0.125, None, Some(&hg), true)
                .unwrap(),
            1e-5,
        );
    }
    let (xc2, xg2) = p.t(&mut r, &[1, 9, 4 * 16]);
    let (cs, cs_g) = p.t(&mut r, &[9, 8]);
    let (sn, sn_g) = p.t(&mut r, &[9, 8]);
    p.same(
        "rope",
        &cpu.rope(&xc2, &cs, &sn, 4).unwrap(),
        &gpu.rope(&xg2, &cs_g, &sn_g, 4).unwrap(),
        1e-6,
    );
    let (sc, sg) = p.t(&mut r, &[2, 96]);
    let (cc, cg) = p.t(&mut r, &[2, 96]);
    p.same(
        "layer_norm_modulate",
        &cpu.layer_norm_modulate(&xc, &sc, &cc, 1e-6).unwrap(),
        &gpu.layer_norm_modulate(&xg, &sg, &cg, 1e-6).unwrap(),
        1e-5,
    );
    let (lw, lwg) = p.t(&mut r, &[96]);
    p.same(
        "layer_norm",
        &cpu.layer_norm(&xc, Some(&lw), Some(&lw), 1e-6).unwrap(),
        &gpu.layer_norm(&xg, Some(&lwg), Some(&lwg), 1e-6).unwrap(),
        1e-5,
    );
    p.same(
        "rms_norm",
        &cpu.rms_norm(&xc, Some(&lw), 1e-6).unwrap(),
        &gpu.rms_norm(&xg, Some(&lwg), 1e-6).unwrap(),
        1e-5,
    );
    let (ic, ig) = p.t(&mut r, &[2, 64, 9, 7]);
    let (gw, gwg) = p.t(&mut r, &[64]);
    p.same(
        "group_norm+silu",
        &cpu.group_norm(&ic, 32, &gw, &gw, 1e-6, true).unwrap(),
        &gpu.group_norm(&ig, 32, &gwg, &gwg, 1e-6, true).unwrap(),
        1e-5,
    );
    let (cw, cwg) = p.t(&mut r, &[16, 64, 3, 3]);
    let (cb, cbg) = p.t(&mut r, &[16]);
    p.same(
        "conv2d 3x3 pad 1",
        &cpu.conv2d(&ic, &cw, Some(&cb), 1, 1).unwrap(),
        &gpu.conv2d(&ig, &cwg, Some(&cbg), 1, 1).unwrap(),
        1e-5,
    );
    p.same(
        "upsample",
        &cpu.upsample_nearest2x(&ic).unwrap(),
        &gpu.upsample_nearest2x(&ig).unwrap(),
        1e-7,
    );
    p.same(
        "permute",
        &cpu.permute(&ic, &[0, 2, 3, 1]).unwrap(),
        &gpu.permute(&ig, &[0, 2, 3, 1]).unwrap(),
        1e-7,
    );
    p.same(
        "narrow",
        &cpu.narrow(&xc, 1, 5, 9).unwrap(),
        &gpu.narrow(&xg, 1, 5, 9).unwrap(),
        1e-7,
    );
    p.same(
        "concat",
        &cpu.concat(&[&xc, &xc], 1).unwrap(),
        &gpu.concat(&[&xg, &xg], 1).unwrap(),
        1e-7,
    );
    let (yc, yg) = p.t(&mut r, &[2, 37, 96]);
    p.same(
        "gate_residual",
        &cpu.gate_residual(&xc, Some(&sc), &yc).unwrap(),
        &gpu.gate_residual(&xg, Some(&sg), &yg).unwrap(),
        1e-6,
    );
    let (zc, zg) = p.t(&mut r, &[2, 37, 96]);
    let (gc2, gg2) = p.t(&mut r, &[2, 96]);
    p.same(
        "gate_residual_chain 4 terms",
        &cpu.gate_residual_chain(
            &xc,
            &[
                (Some(&sc), &yc),
                (None, &zc),
                (Some(&gc2), &yc),
                (None, &xc),
            ],
        )
        .unwrap(),
        &gpu.gate_residual_chain(
            &xg,
            &[
                (Some(&sg), &yg),
                (None, &zg),
                (Some(&gg2), &yg),
                (None, &xg),
            ],
        )
        .unwrap(),
        1e-6,
    );
    p.same(
        "lincomb 4 terms",
        &cpu.lincomb(&[(0.5, &xc), (2.0, &yc), (-1.0, &xc), (0.25, &yc)])
            .unwrap(),
        &gpu.lincomb(&[(0.5, &xg), (2.0, &yg), (-1.0, &xg), (0.25, &yg)])
            .unwrap(),
        1e-6,
    );
    p.same(
        "add broadcast",
        &cpu.add(&xc, &lw).unwrap(),
        &gpu.add(&xg, &lwg).unwrap(),
        1e-7,
    );
    p.same(
        "gelu",
        &cpu.activation(&xc, Activation::GeluTanh).unwrap(),
        &gpu.activation(&xg, Activation::GeluTanh).unwrap(),
        1e-6,
    );
    let (tc, tg) = p.t(&mut r, &[50, 8]);
    p.same(
        "embedding",
        &cpu.embedding(&tc, &[3, 49, 0]).unwrap(),
        &gpu.embedding(&tg, &[3, 49, 0]).unwrap(),
        1e-7,
    );
}

#[test]
fn pixart_forward_on_gpu_matches_diffusers() {
    let Some(gpu) = gpu() else { return };
    for case in [
        "alpha_basic",
        "alpha_sizecond",
        "sigma_interp2",
        "odd_heads",
    ] {
        let dir = fixtures().join("pixart").join(case);
        let m = ecad_native::pipeline::load_pixart(&gpu, &dir.join("transformer")).unwrap();
        let inp = ecad_native::weights::read_inputs(&dir.join("inputs.safetensors")).unwrap();
        let exp = ecad_native::weights::read_inputs(&dir.join("expected.safetensors")).unwrap();
        let x = &inp["hidden_states"];
        let y = &inp["encoder_hidden_states"];
        let out = m
            .forward(
                &gpu,
                &ecad_native::models::pixart::ForwardInputs {
                    hidden_states: (&x.shape, &x.data),
                    encoder_hidden_states: (&y.shape, &y.data),
                    encoder_attention_mask: inp
                        .get("encoder_attention_mask")
                        .map(|t| t.data.as_slice()),
                    timestep: &inp["timestep"].data,
                    resolution: inp.get("resolution").map(|t| t.data.as_slice()),
                    aspect_ratio: inp.get("aspect_ratio").map(|t| t.data.as_slice()),
                },
            )
            .unwrap();
        let err = rel_l2(&gpu.to_host(&out).unwrap(), &exp["sample_f64"].data);
        let drift = meta(&dir)["rel_l2_f32_vs_f64"].as_f64().unwrap();
        println!("{case}: rel L2 {err:.3e} (reference drift {drift:.3e})");
        assert!(err < 3.0 * drift, "{case}: {err:e}");
    }
}

/// A whole cached run recorded as one CUDA graph and replayed: bit-identical to the eager run
/// (the same kernels in the same order), for the recorded inputs and, after the inputs are
/// refreshed, for another seed; SKIPPED without a CUDA driver.
#[test]
fn graph_replay_matches_the_eager_run_on_gpu() {
    use ecad_native::cache::heuristics::heuristic_by_name;
    use ecad_native::cache::schedule::ModelFamily;
    use ecad_native::pipeline::bench::BenchInputs;
    use ecad_native::pipeline::denoise::{DenoiseOptions, PreparedDenoise};
    use ecad_native::pipeline::run::{GraphedRun, PreparedRun};
    use ecad_native::weights::HostTensor;
    let Some(gpu) = gpu_dtype(DType::Bf16) else {
        return;
    };
    let cfg = ecad_native::pipeline::demo_config();
    let model = ecad_native::models::pixart::PixArtTransformer::load(
        &gpu,
        cfg.clone(),
        &ecad_native::models::RandomSource { seed: 5 },
    )
    .unwrap();
    let steps = 8;
    let sched = heuristic_by_name("fora:3", ModelFamily::PixArt, steps, cfg.num_layers, 0).unwrap();
    let scheduler = ecad_native::sampler::DpmSolverConfig::default();
    let side = cfg.sample_size;
    // Prepares the run for `seed` and hands it to `f`.
    let with_run = |seed: u64, f: &mut dyn FnMut(&PreparedRun<CudaBackend>, &HostTensor)| {
        let inputs = BenchInputs::random(&cfg, 1, (side, side), 16, seed);
        let inp = inputs.as_denoise();
        let opts = DenoiseOptions {
            steps,
            guidance: 4.5,
            schedule: Some(&sched),
        };
        let prepared = PreparedRun::PixArt(
            PreparedDenoise::new(&gpu, &model, &scheduler, &inp, &opts).unwrap(),
        );
        f(&prepared, inp.latents);
    };
    let run = |seed: u64, graph: Option<&GraphedRun<CudaBackend>>| -> Vec<f32> {
        let mut out = Vec::new();
        with_run(seed, &mut |prepared, latents| {
            let (t, _) = match graph {
                None => prepared
                    .run_to_end(latents, Some(&sched), &mut |_, _| true)
                    .unwrap(),
                Some(g) => g.replay(&gpu, prepared, latents).unwrap(),
            };
            out = gpu.to_host(&t).unwrap();
        });
        out
    };
    let eager1 = run(1, None);
    let eager2 = run(2, None);
    let mut graph = None;
    with_run(1, &mut |prepared, latents| {
        graph = GraphedRun::capture(&gpu, prepared, latents, Some(&sched)).unwrap();
    });
    let graph = graph.expect("the CUDA backend records graphs");
    let replay1 = run(1, Some(&graph));
    let replay2 = run(2, Some(&graph));
    let e1 = rel_l2(&replay1, &eager1);
    let e2 = rel_l2(&replay2, &eager2);
    println!("graph replay vs eager: seed 1 {e1:.2e}, seed 2 {e2:.2e}");
    assert_eq!(replay1, eager1, "seed 1");
    assert_eq!(
        replay2, eager2,
        "seed 2 (inputs refreshed before the replay)"
    );
    assert!(rel_l2(&eager1, &eager2) > 1e-2, "the seeds must differ");
    graph.release(&gpu).unwrap();
}
