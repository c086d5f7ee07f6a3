//! The paper's schedules, compiled in, and one resolver for every way a schedule is named.
//!
//! ECAD's published result schedules (the "ours" rows of the paper's tables, from
//! github.com/AniAggarwal/ecad, `schedules/schedules_in_paper/`) ship in this repository under
//! `schedules/paper/` and are embedded in the binary with `include_str!`, so they work by name
//! wherever a schedule file does:
//!
//! | name | model | size | ECAD file (under `schedules/paper/`) |
//! |---|---|---|---|
//! | `pixart-alpha-256/fast` | PixArt-α | 256 | `pixart_alpha_256/ours_fast.json` |
//! | `pixart-alpha-256/faster` | PixArt-α | 256 | `pixart_alpha_256/ours_faster.json` |
//! | `pixart-alpha-256/fastest` | PixArt-α | 256 | `pixart_alpha_256/ours_fastest.json` |
//! | `pixart-sigma-256/fast` | PixArt-Σ | 256 | `pixart_sigma_256/ours_fast.json` |
//! | `flux-256/fast` | FLUX.1-dev | 256 | `flux_256/ours_fast.json` |
//! | `flux-256/faster` | FLUX.1-dev | 256 | `flux_256/ours_faster.json` |
//! | `flux-1024/slow` | FLUX.1-dev | 1024 | `flux_256_to_1024/slow_256_to_1024.json` |
//! | `flux-1024/fast` | FLUX.1-dev | 1024 | `flux_256_to_1024/fast_256_to_1024.json` |
//!
//! The labels are ECAD's own file names (the repository ships two FLUX-256 result schedules,
//! `ours_fast` and `ours_faster`, and two 1024 px transfers, `slow` and `fast`). The embedded
//! text is the ECAD file byte for byte; `tests/schedules_shipped.rs` checks it.
//!
//! [`resolve_spec`] turns any `--schedule` argument into a [`Schedule`]: a built-in name, a
//! schedule file, or a heuristic ([`heuristic_by_name`]).

use std::path::Path;

use crate::cache::heuristics::{default_schedule, heuristic_by_name, HeuristicError};
use crate::cache::macs::{ecad_macs, FluxDims, MacsError, ModelDims, PixArtDims};
use crate::cache::schedule::{ModelFamily, Schedule, ScheduleError};

/// One compiled-in schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Builtin {
    /// The name `--schedule` takes, e.g. `pixart-alpha-256/fast`.
    pub name: &'static str,
    /// The model the schedule was searched for, e.g. `PixArt-α`.
    pub model: &'static str,
    /// The model family (component names).
    pub family: ModelFamily,
    /// Image height in pixels the paper evaluates it at.
    pub height: u64,
    /// Image width in pixels.
    pub width: u64,
    /// Denoising steps (`num_inference_steps`).
    pub steps: usize,
    /// Regular (PixArt) or double-stream (FLUX) blocks.
    pub blocks: usize,
    /// FLUX single-stream blocks (0 for PixArt).
    pub single_blocks: usize,
    /// The shipped copy, relative to the repository root.
    pub path: &'static str,
    json: &'static str,
}

macro_rules! shipped {
    ($dir:literal, $file:literal) => {
        (
            concat!("schedules/paper/", $dir, "/", $file),
            include_str!(concat!("../../schedules/paper/", $dir, "/", $file)),
        )
    };
}

const fn pixart(
    name: &'static str,
    model: &'static str,
    (path, json): (&'static str, &'static str),
) -> Builtin {
    Builtin {
        name,
        model,
        family: ModelFamily::PixArt,
        height: 256,
        width: 256,
        steps: 20,
        blocks: 28,
        single_blocks: 0,
        path,
        json,
    }
}

const fn flux(
    name: &'static str,
    size: u64,
    (path, json): (&'static str, &'static str),
) -> Builtin {
    Builtin {
        name,
        model: "FLUX.1-dev",
        family: ModelFamily::Flux,
        height: size,
        width: size,
        steps: 20,
        blocks: 19,
        single_blocks: 38,
        path,
        json,
    }
}

static BUILTINS: [Builtin; 8] = [
    pixart(
        "pixart-alpha-256/fast",
        "PixArt-α",
        shipped!("pixart_alpha_256", "ours_fast.json"),
    ),
    pixart(
        "pixart-alpha-256/faster",
        "PixArt-α",
        shipped!("pixart_alpha_256", "ours_faster.json"),
    ),
    pixart(
        "pixart-alpha-256/fastest",
        "PixArt-α",
        shipped!("pixart_alpha_256", "ours_fastest.json"),
    ),
    pixart(
        "pixart-sigma-256/fast",
        "PixArt-Σ",
        shipped!("pixart_sigma_256", "ours_fast.json"),
    ),
    flux("flux-256/fast", 256, shipped!("flux_256", "ours_fast.json")),
    flux(
        "flux-256/faster",
        256,
        shipped!("flux_256", "ours_faster.json"),
    ),
    flux(
        "flux-1024/slow",
        1024,
        shipped!("flux_256_to_1024", "slow_256_to_1024.json"),
    ),
    flux(
        "flux-1024/fast",
        1024,
        shipped!("flux_256_to_1024", "fast_256_to_1024.json"),
    ),
];

/// Every compiled-in schedule, in the order `schedule list` prints them.
pub fn builtins() -> &'static [Builtin] {
    &BUILTINS
}

/// The names of the compiled-in schedules, in [`builtins`] order.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|b| b.name).collect()
}

/// The compiled-in schedule called `name`, if there is one.
pub fn find_builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The compiled-in schedule called `name`, parsed: `None` when no built-in has that name.
pub fn builtin(name: &str) -> Option<Result<Schedule, ScheduleError>> {
    find_builtin(name).map(Builtin::schedule)
}

/// A built-in's cost under ECAD's MAC model, against the uncached run of the same model,
/// steps and size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BuiltinCost {
    /// ECAD MACs of the schedule (what `schedule macs` prints as `total_macs`).
    pub total_macs: u64,
    /// ECAD MACs of the no-cache schedule.
    pub baseline_macs: u64,
    /// `baseline_macs / total_macs`.
    pub mac_speedup: f64,
}

impl Builtin {
    /// The embedded JSON, byte for byte ECAD's file.
    pub fn json(&self) -> &'static str {
        self.json
    }

    /// The embedded schedule, parsed.
    pub fn schedule(&self) -> Result<Schedule, ScheduleError> {
        Schedule::from_json_str(self.json).map_err(|e| ScheduleError::InFile {
            path: format!("built-in schedule {}", self.name).into(),
            inner: Box::new(e),
        })
    }

    /// The released model's dimensions, for the cost model (PixArt-XL-2 at 256 px for α and Σ,
    /// FLUX.1-dev).
    pub fn dims(&self) -> ModelDims {
        match self.family {
            ModelFamily::PixArt => ModelDims::PixArt(PixArtDims::pixart_xl_2_256()),
            ModelFamily::Flux => ModelDims::Flux(FluxDims::flux1_dev()),
        }
    }

    /// ECAD MACs of the schedule and of the uncached run at the built-in's size, and their
    /// ratio.
    pub fn cost(&self) -> Result<BuiltinCost, ResolveError> {
        let s = self.schedule()?;
        let dims = self.dims();
        let base = default_schedule(self.family, self.steps, self.blocks, self.single_blocks)
            .map_err(ResolveError::Heuristic)?;
        let total_macs = ecad_macs(&s, &dims, self.height, self.width)?.total_macs;
        let baseline_macs = ecad_macs(&base, &dims, self.height, self.width)?.total_macs;
        Ok(BuiltinCost {
            total_macs,
            baseline_macs,
            mac_speedup: baseline_macs as f64 / total_macs as f64,
        })
    }
}

/// Why a `--schedule` argument did not give a schedule.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A file (or a built-in's text) that does not parse, or cannot be read.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// A heuristic name with bad parameters, or for another family.
    #[error(transparent)]
    Heuristic(HeuristicError),
    /// The cost model refused a schedule.
    #[error(transparent)]
    Macs(#[from] MacsError),
    /// Neither a built-in name, nor a file, nor a heuristic.
    #[error(
        "unknown schedule `{spec}`: not a built-in name, a schedule file or a heuristic. Built-in \
         names: {builtins}. Heuristics: default, fora:N, ca_sa:N (PixArt), tgate:M[:SP[:FI[:WARMUP]]] \
         (PixArt), tgate_without_ca_avg:M[...] (PixArt), or an ECAD heuristic schedule name such as \
         recompute_all_every_003. Files: a path to an ECAD schedule JSON file"
    )]
    Unknown {
        /// The argument given.
        spec: String,
        /// The built-in names, comma-separated.
        builtins: String,
    },
}

/// Turns a `--schedule` argument into a schedule, trying in order:
///
/// 1. a built-in name ([`builtin_names`]), e.g. `pixart-alpha-256/fast`;
/// 2. a schedule file: a path ending in `.json`, or any existing file (a missing `.json` file
///    is an error naming the path);
/// 3. a heuristic ([`heuristic_by_name`]: `default`, `fora:3`, `tgate:10`, ...), built for
///    `family` with `steps` steps, `blocks` blocks and `single_blocks` single blocks (ignored
///    for PixArt).
///
/// Anything else is refused with one error that lists the options. Built-ins and files are
/// returned as they are: the caller checks that they fit its model and step count
/// ([`Schedule::validate_for`]), as it does for any file.
pub fn resolve_spec(
    spec: &str,
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> Result<Schedule, ResolveError> {
    if let Some(s) = builtin(spec.trim()) {
        return Ok(s?);
    }
    let path = Path::new(spec);
    if path.extension().is_some_and(|e| e == "json") || path.is_file() {
        return Ok(Schedule::from_path(path)?);
    }
    match heuristic_by_name(spec, family, steps, blocks, single_blocks) {
        Ok(s) => Ok(s),
        Err(HeuristicError::UnknownSpec(_)) => Err(ResolveError::Unknown {
            spec: spec.to_string(),
            builtins: builtin_names().join(", "),
        }),
        Err(e) => Err(ResolveError::Heuristic(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        let names = builtin_names();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[..i].contains(n), "{n} twice");
            assert_eq!(find_builtin(n).unwrap().name, *n);
        }
        assert!(builtin("pixart-alpha-256/slowest").is_none());
    }

    #[test]
    fn every_builtin_parses_and_matches_its_entry() {
        for b in builtins() {
            let s = b.schedule().unwrap();
            assert_eq!(s.family(), b.family, "{}", b.name);
            s.validate_for(b.steps, b.blocks, b.single_blocks, b.family)
                .unwrap_or_else(|e| panic!("{}: {e}", b.name));
        }
    }

    #[test]
    fn unknown_spec_lists_the_options() {
        let e = resolve_spec("pixart-alpha-256/fst", ModelFamily::PixArt, 20, 28, 0)
            .unwrap_err()
            .to_string();
        for n in builtin_names() {
            assert!(e.contains(n), "{e}");
        }
        assert!(e.contains("fora:N") && e.contains("JSON file"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
