//! `score`: image-quality scores of images against their prompts (CLIP score, ImageReward).

use super::DeviceOpts;
use crate::engine::device::AnyBackend;
use crate::engine::Dtype;
use crate::metrics::{open_scorer, summarize, Metric, MetricSpec, RgbImage};
use crate::pipeline::image::decode_png;
use crate::weights::atomic_write;
use anyhow::{bail, Context};
use serde_json::json;
use std::path::{Path, PathBuf};

/// At most this many images in one `score` run.
pub const MAX_IMAGES: usize = 1_000_000;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  ecad-native score --metric clip-score --weights clip-vit-base-patch32 --images out/ --prompts prompts.txt
  ecad-native score --metric clip-score --weights clip-vit-base-patch32 --manifest out/img.json --out scores.json

--images DIR reads every *.png file of DIR, sorted by file name, and matches the k-th to the \
k-th line of --prompts (one prompt per line; the counts must agree). --manifest reads the JSON \
file `generate` writes next to its images (its `images` list: file and prompt per image). \
Prints JSON: per image {file, prompt, score}, then n, mean, std and the 95 % interval of the \
mean (mean ± t·s/√n, Student's t with n−1 degrees of freedom). On the CPU the same images give \
the same bytes.")]
pub struct ScoreArgs {
    /// image-reward or clip-score.
    #[arg(long)]
    pub metric: String,
    /// The metric's weights folder: a CLIP model in transformers' layout (config.json,
    /// model.safetensors, tokenizer files) for clip-score.
    #[arg(long)]
    pub weights: PathBuf,
    /// A folder of PNG images (with --prompts).
    #[arg(long, requires = "prompts", conflicts_with = "manifest")]
    pub images: Option<PathBuf>,
    /// One prompt per line, matched to the sorted images of --images.
    #[arg(long, requires = "images")]
    pub prompts: Option<PathBuf>,
    /// A manifest written by `generate` (instead of --images/--prompts).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Also write the JSON to this file (atomically).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Images per scorer batch (default: the scorer's own maximum).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub device: DeviceOpts,
}

/// One image to score: its file (as shown in the output), its path and its prompt.
struct Item {
    name: String,
    path: PathBuf,
    prompt: String,
}

fn read_text(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| p.display().to_string())
}

/// Prompts, one per line; a final newline is not an empty prompt, an empty line is refused.
fn read_prompt_lines(p: &Path) -> anyhow::Result<Vec<String>> {
    let text = read_text(p)?;
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut out = Vec::with_capacity(lines.len());
    for (k, l) in lines.iter().enumerate() {
        let l = l.trim_end_matches('\r');
        if l.trim().is_empty() {
            bail!(
                "{}: line {} is empty (a missing prompt?); give one prompt per line",
                p.display(),
                k + 1
            );
        }
        out.push(l.to_string());
    }
    Ok(out)
}

fn items_from_dir(dir: &Path, prompts: &Path) -> anyhow::Result<Vec<Item>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("--images {}", dir.display()))?;
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for e in rd {
        let e = e.with_context(|| dir.display().to_string())?;
        let path = e.path();
        if !path.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().to_string();
        let ext = path
            .extension()
            .map(|x| x.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "png" => files.push((name, path)),
            "jpg" | "jpeg" | "webp" | "bmp" | "gif" | "tif" | "tiff" => bail!(
                "--images {}: {name} is not a PNG; score reads PNG images only",
                dir.display()
            ),
            _ => {}
        }
        if files.len() > MAX_IMAGES {
            bail!("--images {}: more than {MAX_IMAGES} images", dir.display());
        }
    }
    files.sort();
    let lines = read_prompt_lines(prompts)?;
    if files.is_empty() {
        bail!("--images {}: no .png files", dir.display());
    }
    if files.len() != lines.len() {
        bail!(
            "{} images in {} but {} prompts in {}: give one prompt per image (matched by sorted file name)",
            files.len(),
            dir.display(),
            lines.len(),
            prompts.display()
        );
    }
    Ok(files
        .into_iter()
        .zip(lines)
        .map(|((name, path), prompt)| Item { name, path, prompt })
        .collect())
}

fn items_from_manifest(m: &Path) -> anyhow::Result<Vec<Item>> {
    let v: serde_json::Value = serde_json::from_str(&read_text(m)?)
        .with_context(|| format!("--manifest {}: invalid JSON", m.display()))?;
    let list = v
        .get("images")
        .and_then(|x| x.as_array())
        .ok_or_else(|| anyhow::anyhow!("--manifest {}: no `images` list", m.display()))?;
    if list.is_empty() || list.len() > MAX_IMAGES {
        bail!(
            "--manifest {}: `images` must list 1 to {MAX_IMAGES} images",
            m.display()
        );
    }
    let dir = m.parent().unwrap_or(Path::new(""));
    let mut out = Vec::with_capacity(list.len());
    for (k, e) in list.iter().enumerate() {
        let file = e.get("file").and_then(|x| x.as_str());
        let prompt = e.get("prompt").and_then(|x| x.as_str());
        let (Some(file), Some(prompt)) = (file, prompt) else {
            bail!(
                "--manifest {}: image {k} has no `file` or no `prompt` string",
                m.display()
            );
        };
        if Path::new(file).is_absolute() || file.contains("..") {
            bail!(
                "--manifest {}: image {k}: `file` must be a name relative to the manifest's folder",
                m.display()
            );
        }
        out.push(Item {
            name: file.to_string(),
            path: dir.join(file),
            prompt: prompt.to_string(),
        });
    }
    Ok(out)
}

fn load_image(it: &Item) -> anyhow::Result<RgbImage> {
    let bytes = std::fs::read(&it.path).with_context(|| it.path.display().to_string())?;
    let (width, height, rgb) =
        decode_png(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", it.path.display()))?;
    Ok(RgbImage { width, height, rgb })
}

fn score_on<B: crate::backend::Backend>(
    be: &B,
    spec: &MetricSpec,
    items: &[Item],
    batch: Option<usize>,
) -> anyhow::Result<(String, Vec<f64>)> {
    let scorer =
        open_scorer(spec, be).with_context(|| format!("--weights {}", spec.weights.display()))?;
    let b = batch
        .unwrap_or(scorer.max_batch())
        .clamp(1, scorer.max_batch().max(1));
    let mut scores = Vec::with_capacity(items.len());
    for chunk in items.chunks(b) {
        let imgs = chunk
            .iter()
            .map(load_image)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let refs: Vec<&RgbImage> = imgs.iter().collect();
        let prompts: Vec<&str> = chunk.iter().map(|i| i.prompt.as_str()).collect();
        scores.extend(scorer.score_batch(&refs, &prompts)?);
    }
    Ok((scorer.fingerprint(), scores))
}

pub fn run(a: ScoreArgs) -> anyhow::Result<()> {
    let metric = Metric::parse(&a.metric)?;
    let spec = MetricSpec::new(metric, &a.weights);
    if a.batch == Some(0) {
        bail!("--batch must be at least 1");
    }
    if let Some(o) = &a.out {
        crate::engine::check_output_file("--out", o)?;
    }
    let items = match (&a.images, &a.prompts, &a.manifest) {
        (Some(d), Some(p), None) => items_from_dir(d, p)?,
        (None, None, Some(m)) => items_from_manifest(m)?,
        _ => bail!("give --images DIR --prompts FILE, or --manifest FILE"),
    };
    let opts = a.device.engine_options(crate::engine::Load::Pipeline);
    let mut warnings = Vec::new();
    let be = AnyBackend::open(opts.device, opts.dtype, &mut warnings)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    if opts.dtype != Dtype::F32 {
        eprintln!(
            "note: scoring in {}; the reference packages score in float32",
            opts.dtype.name()
        );
    }
    let (fingerprint, scores) = match &be {
        AnyBackend::Cpu(b) => score_on(b, &spec, &items, a.batch)?,
        AnyBackend::CpuBf16(b) => score_on(b, &spec, &items, a.batch)?,
        AnyBackend::Cuda(b) => score_on(b.as_ref(), &spec, &items, a.batch)?,
    };
    let s = summarize(&scores);
    let per: Vec<serde_json::Value> = items
        .iter()
        .zip(&scores)
        .map(|(i, sc)| json!({"file": i.name, "prompt": i.prompt, "score": sc}))
        .collect();
    let out = json!({
        "metric": metric.name(),
        "weights_fingerprint": fingerprint,
        "device": be.name(),
        "images": per,
        "n": s.n,
        "mean": s.mean,
        "std": s.std,
        "ci95": s.ci95,
        "interval": "mean ± t(0.975, n−1) · std / √n",
    });
    let text = serde_json::to_string_pretty(&out)? + "\n";
    if let Some(o) = &a.out {
        atomic_write(o, text.as_bytes())?;
    }
    print!("{text}");
    Ok(())
}
