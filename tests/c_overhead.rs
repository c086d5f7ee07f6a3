//! The C ABI's overhead over the Rust API: the same denoise (demo model, same inputs, same
//! thread count) through `Engine::denoise` and through `ecad_engine_denoise`, interleaved in
//! pairs of alternating order, medians after warm-up. Ignored by default (a measurement, not a
//! check: no timing threshold); run it optimised:
//!
//!     cargo test --release --test c_overhead -- --ignored --nocapture
//!
//! Settings: ECAD_OVERHEAD_REPS (default 15), ECAD_OVERHEAD_STEPS (default 10),
//! ECAD_OVERHEAD_THREADS (default: all cores).

use ecad_native::engine::{DenoiseRequest, DeviceSpec, Engine, EngineOptions, Load, NamedInputs};
use ecad_native::engine::{ModelSource, Progress};
use ecad_native::ffi::engine::{ecad_engine_destroy, ecad_engine_get_info, ecad_engine_open};
use ecad_native::ffi::run::ecad_engine_denoise;
use ecad_native::ffi::{EcadDenoiseRequest, EcadEngineInfo, EcadEngineParams, EcadStatus};
use ecad_native::weights::HostTensor;
use std::collections::BTreeMap;
use std::time::Instant;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn noise(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 20001) as f32 / 10000.0 - 1.0
        })
        .collect()
}

#[test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
fn c_api_overhead_over_rust_api() {
    let reps = env("ECAD_OVERHEAD_REPS", 15).max(3);
    let steps = env("ECAD_OVERHEAD_STEPS", 10);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = env("ECAD_OVERHEAD_THREADS", cores).max(1);

    let engine = Engine::open(
        ModelSource::Demo,
        EngineOptions {
            device: DeviceSpec::Cpu,
            threads: Some(threads),
            load: Load::Transformer,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let mut params: EcadEngineParams = unsafe { std::mem::zeroed() };
    params.struct_size = std::mem::size_of::<EcadEngineParams>() as u32;
    params.device = c"cpu".as_ptr();
    params.threads = threads as u32;
    let mut handle = std::ptr::null_mut();
    assert_eq!(
        unsafe { ecad_engine_open(&params, &mut handle) },
        EcadStatus::EcadOk
    );
    let mut info: EcadEngineInfo = unsafe { std::mem::zeroed() };
    info.struct_size = std::mem::size_of::<EcadEngineInfo>() as u32;
    assert_eq!(
        unsafe { ecad_engine_get_info(handle, &mut info) },
        EcadStatus::EcadOk
    );

    let (b, l) = (1usize, 120usize);
    let (c, h, d) = (
        info.latent_channels as usize,
        info.sample_size as usize,
        info.text_dim as usize,
    );
    let lat = noise(b * c * h * h, 1);
    let emb = noise(b * l * d, 2);
    let neg = noise(b * l * d, 3);
    let mask: Vec<f32> = (0..l).map(|i| (i < 40) as u8 as f32).collect();
    let nmask: Vec<f32> = (0..l).map(|i| (i == 0) as u8 as f32).collect();
    let guidance = 4.5f32;

    let mut t = BTreeMap::new();
    let put = |t: &mut BTreeMap<String, HostTensor>, k: &str, shape: Vec<usize>, v: &[f32]| {
        t.insert(
            k.to_string(),
            HostTensor {
                shape,
                data: v.to_vec(),
            },
        );
    };
    put(&mut t, "latents", vec![b, c, h, h], &lat);
    put(&mut t, "prompt_embeds", vec![b, l, d], &emb);
    put(&mut t, "prompt_attention_mask", vec![b, l], &mask);
    put(&mut t, "negative_prompt_embeds", vec![b, l, d], &neg);
    put(&mut t, "negative_prompt_attention_mask", vec![b, l], &nmask);
    let inputs = NamedInputs {
        tensors: &t,
        origin: "overhead",
    };
    let req = DenoiseRequest {
        steps,
        guidance: Some(guidance),
        ..DenoiseRequest::default()
    };
    let rust = || {
        let t0 = Instant::now();
        let out = engine
            .denoise(&inputs, &req, &mut Progress::none())
            .unwrap();
        (t0.elapsed().as_secs_f64() * 1e3, out.data)
    };

    let mut out = vec![0f32; lat.len()];
    let mut r: EcadDenoiseRequest = unsafe { std::mem::zeroed() };
    r.struct_size = std::mem::size_of::<EcadDenoiseRequest>() as u32;
    r.batch = b as u32;
    r.height = (h as u32) * info.vae_scale_factor;
    r.width = r.height;
    r.text_len = l as u32;
    r.steps = steps as u32;
    r.guidance = guidance;
    (r.latents, r.latents_len) = (lat.as_ptr(), lat.len());
    (r.prompt_embeds, r.prompt_embeds_len) = (emb.as_ptr(), emb.len());
    (r.prompt_mask, r.prompt_mask_len) = (mask.as_ptr(), mask.len());
    (r.negative_embeds, r.negative_embeds_len) = (neg.as_ptr(), neg.len());
    (r.negative_mask, r.negative_mask_len) = (nmask.as_ptr(), nmask.len());
    (r.out_latents, r.out_latents_len) = (out.as_mut_ptr(), out.len());
    let c_api = || {
        let t0 = Instant::now();
        let s = unsafe { ecad_engine_denoise(handle, std::ptr::null(), &r, std::ptr::null()) };
        assert_eq!(s, EcadStatus::EcadOk);
        t0.elapsed().as_secs_f64() * 1e3
    };

    for _ in 0..2 {
        rust();
        c_api();
    }
    let (mut tr, mut tc) = (Vec::new(), Vec::new());
    let mut reference = Vec::new();
    // Pairs of runs, the order alternating (a run warms the caches for the next one).
    for i in 0..reps {
        if i % 2 == 1 {
            tc.push(c_api());
        }
        let (ms, data) = rust();
        tr.push(ms);
        reference = data;
        if i % 2 == 0 {
            tc.push(c_api());
        }
    }
    assert_eq!(reference, out, "the C API gives the Rust API's latents");
    // The median of the pairs' ratios cancels slow drifts of the machine's load, which the
    // ratio of the two medians does not.
    let mut ratios: Vec<f64> = tc.iter().zip(&tr).map(|(c, r)| c / r).collect();
    let paired = median(&mut ratios);
    let (mr, mc) = (median(&mut tr), median(&mut tc));
    println!(
        "denoise demo {h}x{h} latents, {steps} steps, CFG, L={l}, {threads} threads, {reps} reps: \
         Rust API median {mr:.3} ms, C API median {mc:.3} ms, overhead {:.3} ms ({:+.2}%); \
         median of paired C/Rust ratios {paired:.4}",
        mc - mr,
        (mc / mr - 1.0) * 100.0
    );
    assert_eq!(unsafe { ecad_engine_destroy(handle) }, EcadStatus::EcadOk);
}
