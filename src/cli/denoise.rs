use super::DeviceOpts;
use crate::backend::Backend;
use crate::cache::schedule::Schedule;
use crate::pipeline::denoise::{denoise, DenoiseInputs, DenoiseOptions};
use crate::pipeline::ModelDir;
use crate::sampler::DpmSolverConfig;
use crate::weights::{read_inputs, write_outputs, HostTensor};
use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DenoiseArgs {
    /// Pipeline root (transformer/ and scheduler/); the embedded demo model when absent.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Inputs: latents, prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
    /// negative_prompt_attention_mask (optional: resolution, aspect_ratio).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Output file; receives `latents`.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of denoising steps (at least 2).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Classifier-free guidance scale; CFG runs only when > 1.
    #[arg(long, default_value_t = 4.5)]
    pub guidance: f32,
    /// An ECAD cache schedule (JSON); its step count must equal --steps.
    #[arg(long)]
    pub schedule: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceOpts,
}

pub fn run(a: DenoiseArgs) -> anyhow::Result<()> {
    match a.device.device()? {
        super::Device::Cpu(be) => run_on(&be, a),
        super::Device::Cuda(be) => run_on(&*be, a),
    }
}

fn run_on<B: Backend>(be: &B, a: DenoiseArgs) -> anyhow::Result<()> {
    let schedule = match &a.schedule {
        Some(p) => Some(Schedule::from_path(p)?),
        None => None,
    };
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
            a.guidance,
        )
        .with_context(|| format!("{}", a.schedule.as_ref().unwrap().display()))?;
    }
    let inputs = read_inputs(&a.inputs)?;
    let get = |name: &str| -> anyhow::Result<&HostTensor> {
        inputs
            .get(name)
            .with_context(|| format!("{}: missing input tensor `{name}`", a.inputs.display()))
    };
    let need_neg = a.guidance > 1.0;
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
            guidance: a.guidance,
            schedule: schedule.as_ref(),
        },
        &mut |i, _| bar.set(i),
    )
    .with_context(|| a.inputs.display().to_string())?;
    bar.finish();
    let out = HostTensor {
        shape: latents.shape().to_vec(),
        data: be.to_host(&latents)?,
    };
    write_outputs(&a.out, &[("latents", &out)])?;
    Ok(())
}
