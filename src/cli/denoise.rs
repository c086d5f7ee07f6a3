use super::DeviceOpts;
use crate::engine::{DenoiseRequest, Load, NamedInputs, Progress};
use crate::weights::{read_inputs, write_outputs};
use anyhow::Context;
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
    /// An ECAD cache schedule: a JSON file or a heuristic name; its step count must equal
    /// --steps.
    #[arg(long)]
    pub schedule: Option<String>,
    #[command(flatten)]
    pub device: DeviceOpts,
}

pub fn run(a: DenoiseArgs) -> anyhow::Result<()> {
    let engine = super::open_engine(
        super::model_source(a.model.as_deref(), None),
        a.device.engine_options(Load::Transformer),
    )?;
    let schedule = super::resolve_schedule(&engine, a.schedule.as_deref(), a.steps)?;
    if let (Some(s), Some(spec)) = (&schedule, &a.schedule) {
        engine
            .validate_schedule(s, a.steps, a.guidance)
            .with_context(|| spec.clone())?;
    }
    let inputs = read_inputs(&a.inputs)?;
    let origin = a.inputs.display().to_string();
    let mut bars = super::Bars::new();
    let mut sink = |e: &crate::engine::Event<'_>| bars.on_event(e);
    let latents = engine.denoise(
        &NamedInputs {
            tensors: &inputs,
            origin: &origin,
        },
        &DenoiseRequest {
            steps: a.steps,
            guidance: a.guidance,
            height: a.height,
            width: a.width,
            schedule: schedule.as_ref(),
        },
        &mut Progress::new(&mut sink),
    )?;
    write_outputs(&a.out, &[("latents", &latents)])?;
    Ok(())
}
