use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Validate a model folder against its manifest (or the shapes its config.json implies).
    Check {
        /// A diffusers pipeline root or transformer folder.
        #[arg(long)]
        model: PathBuf,
    },
}

pub fn run(cmd: WeightsCommand) -> anyhow::Result<()> {
    match cmd {
        WeightsCommand::Check { model } => {
            let r = crate::pipeline::check_model_dir(&model)?;
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
    }
}
