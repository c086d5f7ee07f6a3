use super::DeviceOpts;
use crate::backend::Backend;
use crate::pipeline::denoise::{denoise, DenoiseInputs, DenoiseOptions};
use crate::pipeline::flux::{
    denoise_flux, validate_flux_schedule, FluxDenoiseInputs, FluxDenoiseOptions,
};
use crate::pipeline::ModelDir;
use crate::sampler::DpmSolverConfig;
use crate::weights::{read_inputs, write_outputs, HostTensor};
use anyhow::{bail, Context};
use std::path::Path;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DenoiseArgs {
    /// Pipeline root (transformer/ and scheduler/); the embedded demo model when absent.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Inputs: latents, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
    /// negative_prompt_attention_mask (optional: resolution, aspect_ratio); for FLUX models
    /// latents (packed, [B, N_img, 64]), prompt_embeds and pooled_prompt_embeds.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Output file; receives `latents`.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of denoising steps (at least 2).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// PixArt: classifier-free guidance scale (default 4.5; CFG runs only when > 1). FLUX: the
    /// distilled guidance value for the guidance embedding (default 3.5; no CFG batch; ignored
    /// by a model without guidance embeddings).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Image height in pixels (FLUX only, required there: it sets the position ids and the
    /// time shift).
    #[arg(long)]
    pub height: Option<usize>,
    /// Image width in pixels (FLUX only, required there).
    #[arg(long)]
    pub width: Option<usize>,
    /// An ECAD cache schedule (JSON); its step count must equal --steps.
    #[arg(long)]
    pub schedule: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceOpts,
}

pub fn run(a: DenoiseArgs) -> anyhow::Result<()> {
    super::with_backend!(a.device, |be| run_on(be, a))
}

fn run_on<B: Backend>(be: &B, a: DenoiseArgs) -> anyhow::Result<()> {
    if let Some(m) = a.model.as_deref() {
        if crate::pipeline::is_flux_model(Some(m))? {
            return run_flux(be, &a, m);
        }
    }
    if a.height.is_some() || a.width.is_some() {
        bail!("--height/--width are for FLUX models; a PixArt run takes its size from `latents`");
    }
    let guidance = a.guidance.unwrap_or(4.5);
    let schedule = super::read_schedule(a.schedule.as_deref())?;
    let (model, sched_cfg) = match &a.model {
        Some(m) => {
            let dir = ModelDir::resolve(m)?;
            let sc = dir.scheduler_config()?;
            (crate::pipeline::load_pixart(be, m)?, sc)
        }
        None => (crate::pipeline::load_demo(be)?, DpmSolverConfig::default()),
    };
    if let Some(s) = &schedule {
        crate::pipeline::denoise::validate_schedule(
            s,
            a.steps,
            model.transformer_blocks.len(),
            guidance,
        )
        .with_context(|| format!("{}", a.schedule.as_ref().unwrap().display()))?;
    }
    let inputs = read_inputs(&a.inputs)?;
    let get = |name: &str| super::input_tensor(&inputs, &a.inputs, name);
    let need_neg = guidance > 1.0;
    let inp = DenoiseInputs {
        latents: get("latents")?,
        prompt_embeds: get("prompt_embeds")?,
        prompt_attention_mask: inputs.get("prompt_attention_mask"),
        negative_prompt_embeds: if need_neg {
            Some(get("negative_prompt_embeds")?)
        } else {
            None
        },
        negative_prompt_attention_mask: if need_neg {
            inputs.get("negative_prompt_attention_mask")
        } else {
            None
        },
        resolution: inputs.get("resolution"),
        aspect_ratio: inputs.get("aspect_ratio"),
    };
    let bar = super::progress::Progress::new("denoise", a.steps);
    let (latents, _report) = denoise(
        be,
        &model,
        &sched_cfg,
        &inp,
        &DenoiseOptions {
            steps: a.steps,
            guidance,
            schedule: schedule.as_ref(),
        },
        &mut |i, _| bar.set(i),
    )
    .with_context(|| a.inputs.display().to_string())?;
    bar.finish();
    write_latents(be, &latents, &a.out)
}

fn run_flux<B: Backend>(be: &B, a: &DenoiseArgs, m: &Path) -> anyhow::Result<()> {
    let (Some(height), Some(width)) = (a.height, a.width) else {
        bail!("a FLUX model needs --height and --width (image pixels)");
    };
    let dir = ModelDir::resolve(m)?;
    let sched_cfg = dir.flow_match_config()?;
    let vae_scale_factor = dir.vae_scale_factor()?;
    let schedule = super::read_schedule(a.schedule.as_deref())?;
    let model = crate::pipeline::load_flux(be, m)?;
    if let (Some(s), Some(p)) = (&schedule, &a.schedule) {
        let c = &model.config;
        validate_flux_schedule(s, a.steps, c.num_layers, c.num_single_layers)
            .with_context(|| p.display().to_string())?;
    }
    let inputs = read_inputs(&a.inputs)?;
    let get = |name: &str| super::input_tensor(&inputs, &a.inputs, name);
    let inp = FluxDenoiseInputs {
        latents: get("latents")?,
        prompt_embeds: get("prompt_embeds")?,
        pooled_prompt_embeds: get("pooled_prompt_embeds")?,
    };
    let bar = super::progress::Progress::new("denoise", a.steps);
    let (latents, _report) = denoise_flux(
        be,
        &model,
        &sched_cfg,
        &inp,
        &FluxDenoiseOptions {
            steps: a.steps,
            guidance: a.guidance.unwrap_or(3.5),
            height,
            width,
            vae_scale_factor,
            schedule: schedule.as_ref(),
        },
        &mut |i, _| bar.set(i),
    )
    .with_context(|| a.inputs.display().to_string())?;
    bar.finish();
    write_latents(be, &latents, &a.out)
}

/// Writes the final latents as the `latents` tensor of `out`.
fn write_latents<B: Backend>(
    be: &B,
    latents: &crate::backend::Tensor<B>,
    out: &Path,
) -> anyhow::Result<()> {
    let host = HostTensor {
        shape: latents.shape().to_vec(),
        data: be.to_host(latents)?,
    };
    write_outputs(out, &[("latents", &host)])?;
    Ok(())
}
