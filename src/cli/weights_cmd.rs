use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Validate a model folder against its manifest (or the shapes its config.json implies).
    Check {
        /// A diffusers pipeline root or transformer folder, or an ImageReward folder (as
        /// tools/convert/imagereward_to_safetensors.py writes it).
        #[arg(long)]
        model: PathBuf,
    },
    /// List the known checkpoints (the manifests shipped in weights-manifest/).
    List,
}

pub fn run(cmd: WeightsCommand) -> anyhow::Result<()> {
    match cmd {
        WeightsCommand::Check { model } => {
            let r = if crate::metrics::image_reward::is_image_reward_dir(&model) {
                crate::metrics::image_reward::check_dir(&model)?
            } else {
                crate::pipeline::check_model_dir(&model)?
            };
            let dtypes: Vec<String> = r.dtypes.iter().map(|(d, n)| format!("{d}×{n}")).collect();
            println!(
                "ok: {} — {} tensors, {} parameters ({}){}",
                model.display(),
                r.tensors,
                r.parameters,
                dtypes.join(", "),
                match &r.matched {
                    Some(m) => format!(", matches the {m} manifest"),
                    None => ", checked against the shapes its config.json implies".into(),
                }
            );
            Ok(())
        }
        WeightsCommand::List => {
            for m in crate::weights::manifest::manifests() {
                let params: u64 = m
                    .tensors
                    .iter()
                    .filter(|(n, _)| !m.dtypes.contains_key(n))
                    .map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>())
                    .sum();
                let kind = if m.is_image_reward() {
                    "image-reward"
                } else if m.config.get("_class_name").and_then(|v| v.as_str())
                    == Some("FluxTransformer2DModel")
                {
                    "flux"
                } else {
                    "pixart"
                };
                println!(
                    "{:<28} {:<13} {:>5} tensors {:>15} parameters  {}",
                    m.name,
                    kind,
                    m.tensors.len(),
                    params,
                    m.repo
                );
            }
            Ok(())
        }
    }
}
