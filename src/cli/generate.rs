//! `generate`: prompt(s) → PNG image(s).

use super::DeviceOpts;
use crate::backend::Backend;
use crate::cache::schedule::Schedule;
use crate::pipeline::generate::{
    output_paths, GeneratePipeline, GenerateRequest, RgbImage, Timings,
};
use crate::pipeline::image::encode_png;
use crate::weights::atomic_write;
use anyhow::{bail, Context};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Without --model, an embedded demo pipeline runs (tiny seeded random T5, transformer and VAE \
with a small built-in vocabulary): it works on a fresh machine, but its images are NOISE, not \
pictures. For real images pass a PixArt-α or PixArt-Σ diffusers folder (transformer/, \
scheduler/, text_encoder/, tokenizer/, vae/), or a FLUX.1 diffusers folder (transformer/, \
scheduler/, text_encoder/ + tokenizer/ for CLIP, text_encoder_2/ + tokenizer_2/ for T5, vae/): FLUX \
runs no CFG and puts --guidance into its guidance embedding.

Initial noise comes from ChaCha8 seeded with the image's seed (Box-Muller normals): the same \
arguments and seed give byte-identical PNGs, but not the images torch's generator would give.")]
pub struct GenerateArgs {
    /// Diffusers PixArt or FLUX pipeline root; the embedded demo pipeline (noise images) when
    /// absent.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The prompt (repeatable: one image set per prompt).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A file with one prompt per line (blank lines are skipped).
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// The negative prompt (PixArt, used when --guidance > 1; FLUX runs no CFG).
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Number of denoising steps (default: the --schedule's step count, else 20 for PixArt and
    /// 28 for FLUX, as FluxPipeline).
    #[arg(long)]
    pub steps: Option<usize>,
    /// PixArt: classifier-free guidance scale (default 4.5; CFG runs only when > 1). FLUX: the
    /// distilled guidance value (default 3.5).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Seed of the first image; image k (over prompts, then batch) uses seed + k.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image width in pixels (PixArt: multiple of 8, FLUX: of 16; default: the model's
    /// resolution, 1024 for FLUX.1).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels (as --width).
    #[arg(long)]
    pub height: Option<usize>,
    /// Run at the requested size instead of PixArt's nearest aspect-ratio bin (then the size
    /// must be a multiple of 16).
    #[arg(long)]
    pub no_binning: bool,
    /// An ECAD cache schedule (JSON); its step count must equal --steps when given.
    #[arg(long)]
    pub schedule: Option<PathBuf>,
    /// Images per prompt (run as one batch).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Text length L: default 120 for PixArt-α, 300 for PixArt-Σ (from model_index.json),
    /// 512 for FLUX's T5 (at most 512).
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
    /// Output PNG. With several images: OUT-000.png, OUT-001.png, … and a manifest OUT.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Print a timing breakdown (load, text encoder, denoise, decode).
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub device: DeviceOpts,
}

pub(super) fn read_prompts(a: &GenerateArgs) -> anyhow::Result<Vec<String>> {
    let mut prompts = a.prompt.clone();
    if let Some(p) = &a.prompts_file {
        let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
        prompts.extend(
            text.lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
        if prompts.is_empty() {
            bail!("{}: no prompts in the file", p.display());
        }
    }
    if prompts.is_empty() {
        bail!("give a prompt with --prompt TEXT or --prompts-file FILE");
    }
    Ok(prompts)
}

fn check_out_dir(out: &Path) -> anyhow::Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "--out {}: folder {} does not exist",
            out.display(),
            dir.display()
        );
    }
    if out.is_dir() {
        bail!(
            "--out {} is a folder; give a file name such as {}/image.png",
            out.display(),
            out.display()
        );
    }
    Ok(())
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    super::with_backend!(a.device, |be| run_on(be, a))
}

/// One finished image and where it came from.
pub(super) struct ImageOut {
    pub prompt_index: usize,
    pub batch_index: usize,
    pub seed: u64,
    pub image: RgbImage,
}

/// Steps: `--steps`, else the schedule's, else the family default.
pub(super) fn resolve_steps(
    a: &GenerateArgs,
    schedule: Option<&Schedule>,
    default: usize,
) -> anyhow::Result<usize> {
    let steps = match (a.steps, schedule) {
        (Some(n), _) => n,
        (None, Some(s)) => s.num_inference_steps(),
        (None, None) => default,
    };
    if steps < 2 {
        bail!("--steps must be at least 2, got {steps}");
    }
    Ok(steps)
}

/// Runs every prompt's batch through `generate(prompt, seeds, on_step)` with a progress bar:
/// image k (over prompts, then the batch) gets seed `--seed + k`.
#[allow(clippy::type_complexity)]
pub(super) fn generate_all(
    a: &GenerateArgs,
    prompts: &[String],
    steps: usize,
    generate: &mut dyn FnMut(
        &str,
        &[u64],
        &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<Vec<RgbImage>>,
) -> anyhow::Result<Vec<ImageOut>> {
    let mut images = Vec::with_capacity(prompts.len() * a.batch);
    for (pi, prompt) in prompts.iter().enumerate() {
        let seeds: Vec<u64> = (0..a.batch)
            .map(|j| a.seed.wrapping_add((pi * a.batch + j) as u64))
            .collect();
        let label = if prompts.len() > 1 {
            format!("prompt {}/{}", pi + 1, prompts.len())
        } else {
            "denoise".to_string()
        };
        let bar = super::progress::Progress::new(&label, steps);
        let out = generate(prompt, &seeds, &mut |i, _| bar.set(i))?;
        bar.finish();
        for (j, image) in out.into_iter().enumerate() {
            images.push(ImageOut {
                prompt_index: pi,
                batch_index: j,
                seed: seeds[j],
                image,
            });
        }
    }
    Ok(images)
}

/// Encodes every image as PNG (with its parameters as a text chunk), adds the manifest for
/// several images, writes everything atomically (all or nothing) and prints the paths.
pub(super) fn write_images(
    a: &GenerateArgs,
    prompts: &[String],
    common: &serde_json::Value,
    images: Vec<ImageOut>,
) -> anyhow::Result<()> {
    let (files, manifest_path) = output_paths(&a.out, images.len());
    let mut outputs: Vec<(PathBuf, Vec<u8>)> = Vec::with_capacity(images.len() + 1);
    let mut entries = Vec::with_capacity(images.len());
    for (k, im) in images.into_iter().enumerate() {
        let prompt = &prompts[im.prompt_index];
        let params = json!({
            "prompt": prompt,
            "seed": im.seed,
            "settings": common,
        });
        let img = im.image;
        let png = encode_png(
            &img.rgb,
            img.width,
            img.height,
            &[
                (
                    "Software",
                    concat!("ecad-native ", env!("CARGO_PKG_VERSION")),
                ),
                ("parameters", &params.to_string()),
            ],
        )
        .context("encoding the PNG")?;
        let file = files[k].clone();
        entries.push(json!({
            "file": file.file_name().map(|f| f.to_string_lossy().to_string()),
            "prompt": prompt,
            "prompt_index": im.prompt_index,
            "batch_index": im.batch_index,
            "seed": im.seed,
        }));
        outputs.push((file, png));
    }
    if let Some(m) = &manifest_path {
        let mut v = common.clone();
        v["images"] = serde_json::Value::Array(entries);
        let text = serde_json::to_string_pretty(&v)? + "\n";
        outputs.push((m.clone(), text.into_bytes()));
    }
    // Everything is computed: write it all, or nothing.
    let mut written: Vec<&Path> = Vec::new();
    for (path, bytes) in &outputs {
        if let Err(e) = atomic_write(path, bytes) {
            for p in written {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
        written.push(path);
    }
    for (path, _) in &outputs {
        println!("{}", path.display());
    }
    Ok(())
}

fn run_on<B: Backend>(be: &B, a: GenerateArgs) -> anyhow::Result<()> {
    let t_start = Instant::now();
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.max_sequence_length == Some(0) {
        bail!("--max-sequence-length must be at least 1");
    }
    let prompts = read_prompts(&a)?;
    check_out_dir(&a.out)?;
    let schedule = super::read_schedule(a.schedule.as_deref())?;
    if let Some(m) = a.model.as_deref() {
        if crate::pipeline::is_flux_model(Some(m))? {
            return super::generate_flux::run_flux(be, &a, m, &prompts, schedule.as_ref(), t_start);
        }
    }
    let steps = resolve_steps(&a, schedule.as_ref(), 20)?;
    let guidance = a.guidance.unwrap_or(4.5);
    let mut pipe = match &a.model {
        Some(m) => GeneratePipeline::load(be, m, a.max_sequence_length)?,
        None => GeneratePipeline::demo(be, a.max_sequence_length)?,
    };
    if pipe.is_demo {
        eprintln!("note: no --model given: running the embedded demo pipeline (random weights); its images are noise");
    }
    if let Some(s) = &schedule {
        crate::pipeline::denoise::validate_schedule(
            s,
            steps,
            pipe.transformer.transformer_blocks.len(),
            guidance,
        )
        .with_context(|| a.schedule.as_ref().unwrap().display().to_string())?;
    }
    let size = pipe.plan_size(a.height, a.width, !a.no_binning)?;
    let t_loaded = t_start.elapsed();

    let n_images = prompts.len() * a.batch;
    let mut texts = HashMap::new();
    let mut timings = Timings::default();
    let common = json!({
        "model": pipe.source,
        "negative_prompt": a.negative_prompt,
        "steps": steps,
        "guidance": guidance,
        "width": size.width,
        "height": size.height,
        "generated_width": size.gen_width,
        "generated_height": size.gen_height,
        "max_sequence_length": pipe.max_sequence_length,
        "schedule": schedule.as_ref().map(|s| s.name.clone()),
        "noise": "ChaCha8Rng::seed_from_u64(seed) + Box-Muller (ecad-native)",
        "version": env!("CARGO_PKG_VERSION"),
    });
    // All text first, then the T5 weights are freed before the denoising loops.
    for p in prompts.iter().chain([&a.negative_prompt]) {
        pipe.encode_cached(be, p, &mut texts, &mut timings)?;
    }
    for (pi, prompt) in prompts.iter().enumerate() {
        if let Some(t) = texts
            .get(prompt.as_str())
            .filter(|t| t.truncated_tokens > 0)
        {
            eprintln!(
                "warning: prompt {} is longer than {} tokens; {} tokens were truncated: {:?}",
                pi + 1,
                pipe.max_sequence_length - 1,
                t.truncated_tokens,
                t.truncated_text
            );
        }
    }
    pipe.release_text_encoder();
    let images = generate_all(&a, &prompts, steps, &mut |prompt, seeds, on_step| {
        Ok(pipe.generate(
            be,
            &GenerateRequest {
                prompt,
                negative_prompt: &a.negative_prompt,
                seeds,
                steps,
                guidance,
                size,
                schedule: schedule.as_ref(),
            },
            &mut texts,
            &mut timings,
            on_step,
        )?)
    })?;
    write_images(&a, &prompts, &common, images)?;
    if a.verbose {
        let total = t_start.elapsed();
        eprintln!(
            "timing: load {:.2} s, text encoder {:.2} s, denoise {:.2} s, decode {:.2} s, total {:.2} s ({} image{}, {}x{} generated at {}x{}); peak host memory {}",
            t_loaded.as_secs_f64(),
            timings.text_encoder.as_secs_f64(),
            timings.denoise.as_secs_f64(),
            timings.decode.as_secs_f64(),
            total.as_secs_f64(),
            n_images,
            if n_images == 1 { "" } else { "s" },
            size.width,
            size.height,
            size.gen_width,
            size.gen_height,
            crate::pipeline::peak_host_memory_text(),
        );
    }
    Ok(())
}
