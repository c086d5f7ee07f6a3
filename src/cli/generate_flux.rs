//! `generate` for FLUX pipelines (the PixArt path is in generate.rs; both share the argument
//! set, the prompt reading and the PNG/manifest writer).

use super::generate::{generate_all, resolve_steps, write_images, GenerateArgs};
use crate::backend::Backend;
use crate::cache::schedule::Schedule;
use crate::pipeline::flux::validate_flux_schedule;
use crate::pipeline::flux_generate::{FluxGeneratePipeline, FluxRequest};
use crate::pipeline::generate::Timings;
use anyhow::{bail, Context};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub(super) fn run_flux<B: Backend>(
    be: &B,
    a: &GenerateArgs,
    model: &Path,
    prompts: &[String],
    schedule: Option<&Schedule>,
    t_start: Instant,
) -> anyhow::Result<()> {
    if !a.negative_prompt.is_empty() {
        bail!("--negative-prompt: FLUX.1 runs no classifier-free guidance, so a negative prompt has no effect; leave it out");
    }
    if a.no_binning {
        bail!("--no-binning is for PixArt (FLUX has no aspect-ratio bins)");
    }
    let steps = resolve_steps(a, schedule, 28)?;
    let guidance = a.guidance.unwrap_or(3.5);
    let mut pipe = FluxGeneratePipeline::load(be, model, a.max_sequence_length)?;
    if let (Some(s), Some(p)) = (schedule, &a.schedule) {
        let c = &pipe.transformer_config;
        validate_flux_schedule(s, steps, c.num_layers, c.num_single_layers)
            .with_context(|| p.display().to_string())?;
    }
    let (height, width) = pipe.plan_size(a.height, a.width)?;
    let t_loaded = t_start.elapsed();
    let n_images = prompts.len() * a.batch;
    let mut texts = HashMap::new();
    let mut timings = Timings::default();
    let common = json!({
        "model": pipe.source,
        "steps": steps,
        "guidance": guidance,
        "width": width,
        "height": height,
        "max_sequence_length": pipe.max_sequence_length,
        "schedule": schedule.map(|s| s.name.clone()),
        "noise": "ChaCha8Rng::seed_from_u64(seed) + Box-Muller, packed 2x2 (ecad-native)",
        "version": env!("CARGO_PKG_VERSION"),
    });
    // All text first; then CLIP and T5 are freed before the denoising loops.
    for p in prompts {
        pipe.encode_cached(be, p, &mut texts, &mut timings)?;
    }
    for (pi, prompt) in prompts.iter().enumerate() {
        let t = &texts[prompt.as_str()];
        if t.truncated_t5 > 0 || t.truncated_clip > 0 {
            eprintln!(
                "warning: prompt {} was truncated: {} tokens cut for T5 (max {}), {} for CLIP (max {})",
                pi + 1,
                t.truncated_t5,
                pipe.max_sequence_length,
                t.truncated_clip,
                pipe.clip_length
            );
        }
    }
    pipe.release_text_encoders();
    pipe.load_transformer(be)?;
    let images = generate_all(a, prompts, steps, &mut |prompt, seeds, on_step| {
        Ok(pipe.generate(
            be,
            &FluxRequest {
                prompt,
                seeds,
                steps,
                guidance,
                height,
                width,
                schedule,
            },
            &mut texts,
            &mut timings,
            on_step,
        )?)
    })?;
    write_images(a, prompts, &common, images)?;
    if a.verbose {
        let total = t_start.elapsed();
        eprintln!(
            "timing: load {:.2} s, text encoders {:.2} s, denoise {:.2} s, decode {:.2} s, total {:.2} s ({} image{}, {}x{}); peak host memory {}",
            t_loaded.as_secs_f64(),
            timings.text_encoder.as_secs_f64(),
            timings.denoise.as_secs_f64(),
            timings.decode.as_secs_f64(),
            total.as_secs_f64(),
            n_images,
            if n_images == 1 { "" } else { "s" },
            width,
            height,
            crate::pipeline::peak_host_memory_text(),
        );
    }
    Ok(())
}
