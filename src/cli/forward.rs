use super::DeviceOpts;
use crate::engine::{Load, NamedInputs};
use crate::weights::{read_inputs, write_outputs};
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
    let engine = super::open_engine(
        super::model_source(a.model.as_deref(), None),
        a.device.engine_options(Load::Transformer),
    )?;
    let inputs = read_inputs(&a.inputs)?;
    let origin = a.inputs.display().to_string();
    let sample = engine.forward(&NamedInputs {
        tensors: &inputs,
        origin: &origin,
    })?;
    write_outputs(&a.out, &[("sample", &sample)])?;
    Ok(())
}
