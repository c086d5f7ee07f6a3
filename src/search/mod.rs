//! Schedule search: NSGA-II over ECAD cache schedules (pymoo 0.6 semantics, as ECAD runs it),
//! with MACs (or latency) and fidelity (or an external scorer) as objectives, prefix-shared
//! candidate evaluation, exact checkpoint/resume and Pareto-front outputs.
//!
//! - [`nsga2`]: the genetic algorithm's operators (pure functions of a seeded stream).
//! - [`rng`]: the seeded, serialisable random stream.
//! - [`calibration`]: prompt embeddings × seeds and their fixed initial noise.
//! - [`evaluate`]: objectives, the shared-prefix walk and the cross-generation state cache
//!   ([`prefix`]).
//! - [`driver`]: the search loop; [`state`]: what it keeps between generations; [`seeds`]: the
//!   initial population; [`checkpoint`]: save and resume; [`output`]: the output files.
//!
//! See docs/SEARCH.md for the user-facing description.

pub mod calibration;
pub mod checkpoint;
pub mod dist;
pub mod driver;
pub mod evaluate;
pub mod genome;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod nsga2;
pub mod output;
pub mod prefix;
pub mod rng;
pub mod seeds;
pub mod state;

use crate::cache::heuristics::HeuristicError;
use crate::cache::macs::MacsError;
use crate::cache::schedule::ScheduleError;
use crate::models::ModelError;
use crate::weights::WeightsError;

/// Everything that can stop a search.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Heuristic(#[from] HeuristicError),
    #[error(transparent)]
    Macs(#[from] MacsError),
    #[error("calibration file {path}: {msg}")]
    Calibration { path: String, msg: String },
    #[error("seed population: {0}")]
    Seeds(String),
    #[error("{0}")]
    Settings(String),
    #[error("checkpoint {path} is corrupt ({msg}); delete it (or the whole output folder) to start over")]
    CorruptCheckpoint { path: String, msg: String },
    #[error("checkpoint {path} belongs to a different search ({msg}); use another --out, or rerun with the original settings")]
    ForeignCheckpoint { path: String, msg: String },
    #[error("{path} already holds a search checkpoint: pass --resume to continue it, or choose another --out")]
    CheckpointExists { path: String },
    #[error("--resume: no checkpoint at {path}")]
    NoCheckpoint { path: String },
    #[error("external scorer on {candidate}: {msg}")]
    Scorer { candidate: String, msg: String },
    /// A stop was requested ([`evaluate::EvalConfig::stop`]); the generation in progress was
    /// abandoned. `completed` generations are in the checkpoint (0: none was written).
    #[error("{}", interrupted_message(*.completed))]
    Interrupted { completed: usize },
    /// Another rank of a distributed search ([`dist`]) failed or was refused.
    #[error("rank {rank} failed ({candidates}): {msg}")]
    Rank {
        rank: usize,
        candidates: String,
        msg: String,
    },
    /// A rank other than 0 was stopped because rank 0 reported a failure (rank 0 says which).
    #[error("stopped by rank 0 (see its message)")]
    StoppedByRank0,
}

/// What a stopped search tells the user.
fn interrupted_message(completed: usize) -> String {
    if completed == 0 {
        "interrupted before generation 1 finished; no checkpoint was written (run the search again)"
            .into()
    } else {
        format!("interrupted after generation {completed}; continue with --resume")
    }
}

pub type SResult<T> = Result<T, SearchError>;
