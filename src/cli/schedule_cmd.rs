use crate::cache::macs::TrueCostOptions;
use crate::engine::{EngineOptions, Load, ModelSource};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Cost of a schedule: ECAD's MAC count (default) or this engine's true cost.
    ///
    /// Prints one JSON object: {"total_macs": N, "by_inference_step": {"000": N, ...}} (the
    /// contract in docs/CLI-CONTRACT.md); with --true-cost, the engine's own cost breakdown.
    #[command(after_help = "Examples:
  ecad-native schedule macs --model PixArt-XL-2-256x256 --height 256 --width 256 \\
      --schedule pixart-alpha-256/fast
  ecad-native schedule macs --model PixArt-XL-2-256x256 --height 256 --width 256 \\
      --schedule my_schedule.json --true-cost
  ecad-native schedule macs --model FLUX.1-dev --height 1024 --width 1024 \\
      --schedule fora:3 --steps 28")]
    Macs {
        /// The schedule: a built-in name (`ecad-native schedule list`), an ECAD schedule JSON
        /// file, or a heuristic (`fora:N`, `ca_sa:N`, `tgate:M`, `default`, for --steps steps).
        #[arg(long)]
        schedule: String,
        /// Model folder; only the transformer config.json is read.
        #[arg(long)]
        model: PathBuf,
        /// Image height in pixels (the token count follows from it and the VAE's factor 8).
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>)]
        height: u64,
        /// Image width in pixels.
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>)]
        width: u64,
        /// Steps of a heuristic --schedule (a file or built-in name has its own).
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 20)]
        steps: usize,
        /// Report this engine's true cost instead (attention products included, text work
        /// counted once per run).
        #[arg(long)]
        true_cost: bool,
        /// Text tokens for --true-cost (α 120, Σ 300, FLUX 512).
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>, default_value_t = 120)]
        text_len: u64,
        /// Sequences per transformer call for --true-cost (2 = one prompt with CFG).
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>, default_value_t = 2)]
        batch: u64,
    },
    /// The compiled-in paper schedules (`--schedule NAME`): model, resolution, steps and ECAD
    /// MAC speedup.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ScheduleCommand) -> anyhow::Result<()> {
    match cmd {
        ScheduleCommand::Macs {
            schedule,
            model,
            height,
            width,
            steps,
            true_cost,
            text_len,
            batch,
        } => {
            let engine = super::open_engine(
                ModelSource::Dir(model),
                EngineOptions {
                    load: Load::Config,
                    ..EngineOptions::default()
                },
            )?;
            if steps == 0 {
                anyhow::bail!("--steps must be at least 1, got {steps}");
            }
            crate::util::limits::STEPS
                .check("--steps", steps as u128)
                .map_err(crate::error::Error::from)?;
            let s = engine.resolve_schedule(&schedule, steps)?;
            let json = if true_cost {
                let r = engine.true_macs(&s, height, width, TrueCostOptions { batch, text_len })?;
                serde_json::to_string(&r)?
            } else {
                serde_json::to_string(&engine.macs(Some(&s), height, width)?)?
            };
            println!("{json}");
            Ok(())
        }
        ScheduleCommand::List { json } => schedule_list::run(json),
    }
}

#[path = "schedule_list.rs"]
mod schedule_list;
