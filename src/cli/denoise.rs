use super::DeviceOpts;
use crate::engine::{DenoiseRequest, Load, NamedInputs, Progress};
use crate::weights::{read_inputs, write_outputs};
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The inputs and the output are named tensors in safetensors files; docs/CLI-CONTRACT.md lists \
every name and shape. --write-example-inputs FILE writes a valid inputs file for the demo model \
(seeded noise and prompt embeddings) and exits.

Examples:
  ecad-native denoise --write-example-inputs demo-in.safetensors
  ecad-native denoise --inputs demo-in.safetensors --out latents.safetensors --schedule pixart-alpha-256/fast
  ecad-native denoise --model FLUX.1-dev --inputs flux-in.safetensors --out latents.safetensors --height 256 --width 256 --steps 28")]
pub struct DenoiseArgs {
    /// Pipeline root (transformer/ and scheduler/) [default: the embedded demo model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Write a valid inputs file for the demo model here (seeded latents and prompt
    /// embeddings, with CFG's negative embeddings) and exit.
    #[arg(long, conflicts_with_all = ["inputs", "out", "model"])]
    pub write_example_inputs: Option<PathBuf>,
    /// Inputs: latents, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
    /// negative_prompt_attention_mask (optional: resolution, aspect_ratio); for FLUX models
    /// latents (packed, [B, N_img, 64]), prompt_embeds and pooled_prompt_embeds.
    #[arg(long, required_unless_present = "write_example_inputs")]
    pub inputs: Option<PathBuf>,
    /// Output file; receives `latents`.
    #[arg(long, required_unless_present = "write_example_inputs")]
    pub out: Option<PathBuf>,
    /// Number of denoising steps (at least 2).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 20)]
    pub steps: usize,
    /// PixArt: the classifier-free guidance scale (CFG runs only when > 1). FLUX: the distilled
    /// guidance value for the guidance embedding (no CFG batch; ignored by a model without
    /// guidance embeddings) [default: 4.5 PixArt, 3.5 FLUX].
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// Image height in pixels (FLUX only, required there: it sets the position ids and the
    /// time shift).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub height: Option<usize>,
    /// Image width in pixels (FLUX only, required there).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub width: Option<usize>,
    /// An ECAD cache schedule: a JSON file, a built-in name (`ecad-native schedule list`), a
    /// heuristic (fora:N, ca_sa:N, tgate:M) or a runtime policy (fbcache:RDT,
    /// dbcache:FN:BN:RDT[:WARMUP[:MAXCACHED]], teacache:THRESH[:COEFFS_FILE],
    /// taylorseer:INTERVAL:ORDER[:WARMUP]; docs/CACHING.md), optionally `+taylor1`/`+taylor2`;
    /// its step count must equal --steps [default: none, every component computed].
    #[arg(long)]
    pub schedule: Option<String>,
    /// Forecast the components the --schedule reuses with TaylorSeer's first- or second-order
    /// expansion instead of copying them (the same as appending `+taylor1`/`+taylor2` to the
    /// schedule's name).
    #[arg(long, value_parser = super::parse_forecast)]
    pub forecast: Option<crate::cache::policy::Forecast>,
    /// Write the schedule's decisions here as JSON: `{"policy": NAME, "steps": [{"step": s,
    /// "rows": [SKIP, ...]}]}`, SKIP `null` (every block computed) or `[from, to]`, the
    /// half-open range of blocks the row skipped (FLUX: double blocks 0..D, then single blocks
    /// D..D+S); one row per transformer-batch row (with CFG, the unconditional rows first).
    #[arg(long)]
    pub policy_trace: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceOpts,
}

/// The engine's request for these flags and schedule.
fn denoise_request<'a>(
    a: &DenoiseArgs,
    schedule: Option<&'a crate::cache::schedule::Schedule>,
) -> DenoiseRequest<'a> {
    DenoiseRequest {
        steps: a.steps,
        guidance: a.guidance,
        height: a.height,
        width: a.width,
        schedule,
    }
}

pub fn run(a: DenoiseArgs) -> anyhow::Result<()> {
    if let Some(path) = &a.write_example_inputs {
        return write_example_inputs(path);
    }
    let (Some(inputs_path), Some(out)) = (&a.inputs, &a.out) else {
        anyhow::bail!("give --inputs FILE and --out FILE (or --write-example-inputs FILE)");
    };
    crate::engine::check_output_file("--out", out)?;
    if let Some(t) = &a.policy_trace {
        if a.schedule.is_none() {
            anyhow::bail!("--policy-trace needs --schedule (an uncached run makes no decisions)");
        }
        crate::engine::check_output_file("--policy-trace", t)?;
    }
    // Counts, sizes and the inputs file are checked before the model is read.
    denoise_request(&a, None).precheck()?;
    let inputs = read_inputs(inputs_path)?;
    let engine = super::open_engine(
        super::model_source(a.model.as_deref(), None),
        a.device.engine_options(Load::Transformer),
    )?;
    let schedule = super::resolve_schedule(&engine, a.schedule.as_deref(), a.steps, a.forecast)?;
    if let (Some(s), Some(spec)) = (&schedule, &a.schedule) {
        engine
            .validate_schedule(s, a.steps, a.guidance)
            .with_context(|| spec.clone())?;
    }
    if engine.info().is_demo {
        eprintln!("{}", super::DEMO_NOTE);
    }
    let origin = inputs_path.display().to_string();
    let mut bars = super::Bars::new();
    let mut sink = |e: &crate::engine::Event<'_>| bars.on_event(e);
    let run = engine.denoise_report(
        &NamedInputs {
            tensors: &inputs,
            origin: &origin,
        },
        &denoise_request(&a, schedule.as_ref()),
        &mut Progress::new(&mut sink),
    )?;
    write_outputs(out, &[("latents", &run.latents)])?;
    if let (Some(path), Some(s)) = (&a.policy_trace, &schedule) {
        let doc = crate::cache::policy::trace_json(&s.name, &run.report.cache.trace);
        let mut text = serde_json::to_string(&doc)?;
        text.push('\n');
        crate::util::atomic_write(path, text.as_bytes())
            .with_context(|| format!("--policy-trace {}", path.display()))?;
    }
    Ok(())
}

/// `--write-example-inputs`: seeded inputs of the demo model's shapes (one prompt, 8x8 latent,
/// 16 text tokens of which 10 are valid, with CFG's negative prompt).
fn write_example_inputs(path: &std::path::Path) -> anyhow::Result<()> {
    use crate::weights::HostTensor;
    let info = crate::Engine::open(
        crate::engine::ModelSource::Demo,
        crate::engine::EngineOptions {
            load: Load::Config,
            ..Default::default()
        },
    )?
    .info()
    .clone();
    let (c, side, l, d) = (
        info.latent_channels,
        info.sample_size / 4,
        16,
        info.text_dim,
    );
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0xE9);
    let mut normal = |n: usize| crate::models::randn(&mut rng, n);
    let mask: Vec<f32> = (0..l).map(|i| if i < 10 { 1.0 } else { 0.0 }).collect();
    let t = |shape: Vec<usize>, data: Vec<f32>| HostTensor { shape, data };
    let tensors = [
        (
            "latents",
            t(vec![1, c, side, side], normal(c * side * side)),
        ),
        ("prompt_embeds", t(vec![1, l, d], normal(l * d))),
        ("prompt_attention_mask", t(vec![1, l], mask.clone())),
        ("negative_prompt_embeds", t(vec![1, l, d], normal(l * d))),
        ("negative_prompt_attention_mask", t(vec![1, l], mask)),
    ];
    let named: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    write_outputs(path, &named)?;
    println!("{}", path.display());
    Ok(())
}
