use crate::cache::macs::TrueCostOptions;
use crate::cache::schedule::Schedule;
use crate::engine::{EngineOptions, Load, ModelSource};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Cost of a schedule: ECAD's MAC count (default) or this engine's true cost.
    Macs {
        #[arg(long)]
        schedule: PathBuf,
        /// Model folder; only the transformer config.json is read.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        height: u64,
        #[arg(long)]
        width: u64,
        /// Report this engine's true cost instead (attention products included, text work
        /// counted once per run).
        #[arg(long)]
        true_cost: bool,
        /// Text tokens for --true-cost (α 120, Σ 300, FLUX 512).
        #[arg(long, default_value_t = 120)]
        text_len: u64,
        /// Sequences per transformer call for --true-cost (2 = one prompt with CFG).
        #[arg(long, default_value_t = 2)]
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
            true_cost,
            text_len,
            batch,
        } => {
            let s = Schedule::from_path(&schedule)?;
            let engine = super::open_engine(
                ModelSource::Dir(model),
                EngineOptions {
                    load: Load::Config,
                    ..EngineOptions::default()
                },
            )?;
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
