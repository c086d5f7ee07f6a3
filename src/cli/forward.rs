use super::DeviceOpts;
use crate::backend::Backend;
use crate::models::flux::FluxForwardInputs;
use crate::models::pixart::ForwardInputs;
use crate::weights::{read_inputs, write_outputs, HostTensor};
use anyhow::{bail, Context};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ForwardArgs {
    /// Model folder (pipeline root or transformer folder); the embedded demo model when absent.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Inputs: hidden_states, encoder_hidden_states, timestep, and optionally
    /// encoder_attention_mask, resolution, aspect_ratio (PixArt); for FLUX models
    /// hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids and
    /// guidance (when the model has guidance embeddings).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Output file; receives `sample`.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceOpts,
}

pub fn run(a: ForwardArgs) -> anyhow::Result<()> {
    super::with_backend!(a.device, |be| run_on(be, a))
}

fn run_on<B: Backend>(be: &B, a: ForwardArgs) -> anyhow::Result<()> {
    if let Some(m) = a.model.as_deref() {
        if crate::pipeline::is_flux_model(Some(m))? {
            return run_flux(be, &a, m);
        }
    }
    let model = match &a.model {
        Some(m) => crate::pipeline::load_pixart(be, m)?,
        None => crate::pipeline::load_demo(be)?,
    };
    let inputs = read_inputs(&a.inputs)?;
    let get = |name: &str| super::input_tensor(&inputs, &a.inputs, name);
    let x = get("hidden_states")?;
    let y = get("encoder_hidden_states")?;
    let t = get("timestep")?;
    let mask = inputs.get("encoder_attention_mask");
    if x.shape.len() != 4 {
        bail!(
            "{}: hidden_states must be [B, C, H, W], got {:?}",
            a.inputs.display(),
            x.shape
        );
    }
    let n = x.shape[0];
    if let Some(m) = mask {
        if m.shape != [n, y.shape.get(1).copied().unwrap_or(0)] {
            bail!(
                "{}: encoder_attention_mask must be [{n}, L] matching encoder_hidden_states {:?}, got {:?}",
                a.inputs.display(),
                y.shape,
                m.shape
            );
        }
    }
    if t.data.len() != n {
        bail!(
            "{}: timestep must be [{n}], got {:?}",
            a.inputs.display(),
            t.shape
        );
    }
    let out = model.forward(
        be,
        &ForwardInputs {
            hidden_states: (&x.shape, &x.data),
            encoder_hidden_states: (&y.shape, &y.data),
            encoder_attention_mask: mask.map(|m| m.data.as_slice()),
            timestep: &t.data,
            resolution: inputs.get("resolution").map(|r| r.data.as_slice()),
            aspect_ratio: inputs.get("aspect_ratio").map(|r| r.data.as_slice()),
        },
    )?;
    let sample = HostTensor {
        shape: out.shape().to_vec(),
        data: be.to_host(&out)?,
    };
    write_outputs(&a.out, &[("sample", &sample)])?;
    Ok(())
}

/// `forward` for a FluxTransformer2DModel (docs/cli-contract.md, "FLUX models").
fn run_flux<B: Backend>(be: &B, a: &ForwardArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let model = crate::pipeline::load_flux(be, dir)?;
    let inputs = read_inputs(&a.inputs)?;
    let get = |name: &str| super::input_tensor(&inputs, &a.inputs, name);
    let x = get("hidden_states")?;
    let y = get("encoder_hidden_states")?;
    let p = get("pooled_projections")?;
    let t = get("timestep")?;
    let img = get("img_ids")?;
    let txt = get("txt_ids")?;
    let guidance = if model.config.guidance_embeds {
        Some(get("guidance").context("this FLUX model has guidance embeddings")?)
    } else {
        None
    };
    let n = x.shape.first().copied().unwrap_or(0);
    if t.data.len() != n {
        bail!(
            "{}: timestep must be [{n}], got {:?}",
            a.inputs.display(),
            t.shape
        );
    }
    if let Some(g) = guidance {
        if g.data.len() != n {
            bail!(
                "{}: guidance must be [{n}], got {:?}",
                a.inputs.display(),
                g.shape
            );
        }
    }
    let out = model.forward(
        be,
        &FluxForwardInputs {
            hidden_states: (&x.shape, &x.data),
            encoder_hidden_states: (&y.shape, &y.data),
            pooled_projections: (&p.shape, &p.data),
            timestep: &t.data,
            img_ids: (&img.shape, &img.data),
            txt_ids: (&txt.shape, &txt.data),
            guidance: guidance.map(|g| g.data.as_slice()),
        },
    )?;
    let sample = HostTensor {
        shape: out.shape().to_vec(),
        data: be.to_host(&out)?,
    };
    write_outputs(&a.out, &[("sample", &sample)])?;
    Ok(())
}
