//! `generate`: prompt(s) → PNG image(s).

use super::DeviceOpts;
use crate::engine::{GenerateRequest, GeneratedImage, Load, Progress};
use crate::pipeline::generate::output_paths;
use crate::pipeline::image::encode_png;
use crate::weights::atomic_write;
use anyhow::{bail, Context};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  ecad-native generate --prompt \"a red cube on a table\" --schedule pixart-alpha-256/fast --out cube.png
  ecad-native generate --model PixArt-XL-2-256x256 --prompts-file prompts.txt --batch 2 --out out/img.png
  ecad-native generate --model FLUX.1-dev --prompt \"a lighthouse\" --height 512 --width 512 --schedule flux-256/fast --out l.png --device cuda --dtype bf16

Without --model, an embedded demo pipeline runs (tiny seeded random T5, transformer and VAE \
with a small built-in vocabulary): it works on a fresh machine, but its images are NOISE, not \
pictures. For real images pass a PixArt-α or PixArt-Σ diffusers folder (transformer/, \
scheduler/, text_encoder/, tokenizer/, vae/), or a FLUX.1 diffusers folder (transformer/, \
scheduler/, text_encoder/ + tokenizer/ for CLIP, text_encoder_2/ + tokenizer_2/ for T5, vae/): FLUX \
runs no CFG and puts --guidance into its guidance embedding.

Initial noise comes from ChaCha8 seeded with the image's seed (Box-Muller normals): the same \
arguments and seed give byte-identical PNGs, but not the images torch's generator would give.")]
pub struct GenerateArgs {
    /// Diffusers PixArt or FLUX pipeline root [default: the embedded demo pipeline, whose
    /// images are noise].
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
    /// Number of denoising steps [default: the --schedule's step count, else 20 PixArt, 28
    /// FLUX (as FluxPipeline)].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub steps: Option<usize>,
    /// PixArt: the classifier-free guidance scale (CFG runs only when > 1). FLUX: the distilled
    /// guidance value [default: 4.5 PixArt, 3.5 FLUX].
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// Seed of the first image; image k (over prompts, then batch) uses seed + k.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>, default_value_t = 0)]
    pub seed: u64,
    /// Image width in pixels (PixArt: multiple of 8, FLUX: of 16) [default: the model's
    /// resolution, 1024 for FLUX.1].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub width: Option<usize>,
    /// Image height in pixels (as --width) [default: the model's resolution].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub height: Option<usize>,
    /// Run at the requested size instead of PixArt's nearest aspect-ratio bin (then the size
    /// must be a multiple of 16).
    #[arg(long)]
    pub no_binning: bool,
    /// An ECAD cache schedule: a JSON file, a built-in name (`ecad-native schedule list`), a
    /// heuristic (fora:N, ca_sa:N, tgate:M) or a runtime policy (fbcache:RDT,
    /// dbcache:FN:BN:RDT[:WARMUP[:MAXCACHED]], teacache:THRESH[:COEFFS_FILE],
    /// taylorseer:INTERVAL:ORDER[:WARMUP]; docs/CACHING.md), optionally `+taylor1`/`+taylor2`;
    /// its step count must equal --steps when given [default: none, every component computed].
    #[arg(long)]
    pub schedule: Option<String>,
    /// Forecast the components the --schedule reuses (TaylorSeer's expansion, order 1 or 2)
    /// instead of copying them: the same as appending `+taylor1`/`+taylor2` to its name.
    #[arg(long, value_parser = super::parse_forecast)]
    pub forecast: Option<crate::cache::policy::Forecast>,
    /// Images per prompt (run as one batch).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 1)]
    pub batch: usize,
    /// Text length L (at most 512 for FLUX's T5) [default: 120 PixArt-α, 300 PixArt-Σ (from
    /// model_index.json), 512 FLUX].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
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

fn read_prompts(a: &GenerateArgs) -> anyhow::Result<Vec<String>> {
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
    if !out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        bail!(
            "--out {}: generate writes PNG images; give a file name ending in .png",
            out.display()
        );
    }
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
    crate::engine::check_output_file("--out", out)?;
    Ok(())
}

/// The engine's request for these flags, prompts and schedule.
fn generate_request<'a>(
    a: &'a GenerateArgs,
    prompts: &'a [String],
    schedule: Option<&'a crate::cache::schedule::Schedule>,
) -> GenerateRequest<'a> {
    GenerateRequest {
        prompts,
        negative_prompt: &a.negative_prompt,
        steps: a.steps,
        guidance: a.guidance,
        seed: a.seed,
        batch: a.batch,
        height: a.height,
        width: a.width,
        binning: !a.no_binning,
        schedule,
        release_text_encoders: true,
    }
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let t_start = Instant::now();
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.max_sequence_length == Some(0) {
        bail!("--max-sequence-length must be at least 1");
    }
    let prompts = read_prompts(&a)?;
    check_out_dir(&a.out)?;
    // Counts and sizes are refused before the model is read.
    generate_request(&a, &prompts, None).precheck()?;
    let mut options = a.device.engine_options(Load::Pipeline);
    options.max_sequence_length = a.max_sequence_length;
    let mut engine = super::open_engine(super::model_source(a.model.as_deref(), None), options)?;
    if engine.info().is_demo {
        eprintln!("note: no --model given: running the embedded demo pipeline (random weights); its images are noise");
    }
    let steps_for_names = a.steps.unwrap_or(engine.info().default_steps);
    let schedule =
        super::resolve_schedule(&engine, a.schedule.as_deref(), steps_for_names, a.forecast)?;
    if let (Some(s), Some(spec)) = (&schedule, &a.schedule) {
        let steps = a.steps.unwrap_or(s.num_inference_steps());
        if steps >= 2 {
            engine
                .validate_schedule(s, steps, a.guidance)
                .with_context(|| spec.clone())?;
        }
    }
    let t_loaded = t_start.elapsed();
    let mut bars = super::Bars::new();
    let mut sink = |e: &crate::engine::Event<'_>| bars.on_event(e);
    let out = engine.generate(
        &generate_request(&a, &prompts, schedule.as_ref()),
        &mut Progress::new(&mut sink),
    )?;
    let n_images = out.images.len();
    write_images(&a, &prompts, &out.settings, out.images)?;
    if a.verbose {
        let total = t_start.elapsed();
        let t = &out.timings;
        let size = if engine.info().family == "flux" {
            format!("{}x{}", out.width, out.height)
        } else {
            format!(
                "{}x{} generated at {}x{}",
                out.width, out.height, out.gen_width, out.gen_height
            )
        };
        eprintln!(
            "timing: load {:.2} s, text encoder{} {:.2} s, denoise {:.2} s, decode {:.2} s, total {:.2} s ({} image{}, {size}); peak host memory {}",
            t_loaded.as_secs_f64(),
            if engine.info().family == "flux" { "s" } else { "" },
            t.text_encoder.as_secs_f64(),
            t.denoise.as_secs_f64(),
            t.decode.as_secs_f64(),
            total.as_secs_f64(),
            n_images,
            if n_images == 1 { "" } else { "s" },
            crate::pipeline::peak_host_memory_text(),
        );
    }
    Ok(())
}

/// Encodes every image as PNG (with its parameters as a text chunk), adds the manifest for
/// several images, writes everything atomically (all or nothing) and prints the paths.
fn write_images(
    a: &GenerateArgs,
    prompts: &[String],
    common: &serde_json::Value,
    images: Vec<GeneratedImage>,
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
