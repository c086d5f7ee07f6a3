use super::DeviceOpts;
use crate::engine::{Load, NamedInputs};
use crate::weights::{read_inputs, write_outputs};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The inputs and outputs are named tensors in safetensors files; docs/CLI-CONTRACT.md lists every \
name, shape and dtype for PixArt and FLUX models.

Examples:
  ecad-native forward --inputs in.safetensors --out sample.safetensors
  ecad-native forward --model PixArt-XL-2-256x256/transformer --inputs in.safetensors --out out.safetensors --device cuda --dtype bf16")]
pub struct ForwardArgs {
    /// Model folder (pipeline root or transformer folder) [default: the embedded demo model].
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
    crate::engine::check_output_file("--out", &a.out)?;
    let engine = super::open_engine(
        super::model_source(a.model.as_deref(), None),
        a.device.engine_options(Load::Transformer),
    )?;
    if engine.info().is_demo {
        eprintln!("{}", super::DEMO_NOTE);
    }
    let inputs = read_inputs(&a.inputs)?;
    let origin = a.inputs.display().to_string();
    let sample = engine.forward(&NamedInputs {
        tensors: &inputs,
        origin: &origin,
    })?;
    write_outputs(&a.out, &[("sample", &sample)])?;
    Ok(())
}
