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
use crate::cache::policy::{
    policy_by_name, Forecast, PolicyError, PolicySpec, RuntimePolicy, TeaCacheParams, POLICY_FORMS,
    TEACACHE_FLUX_COEFFS,
};
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
    /// A runtime policy or forecast spec with bad parameters.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Neither a built-in name, nor a file, nor a heuristic.
    #[error(
        "unknown schedule `{spec}`: not a built-in name, a schedule file or a heuristic. Built-in \
         names: {builtins}. Heuristics: default, fora:N, ca_sa:N (PixArt), tgate:M[:SP[:FI[:WARMUP]]] \
         (PixArt), tgate_without_ca_avg:M[...] (PixArt), or an ECAD heuristic schedule name such as \
         recompute_all_every_003. Runtime policies: {policies}. Files: a path to an ECAD \
         schedule JSON file"
    )]
    Unknown {
        /// The argument given.
        spec: String,
        /// The built-in names, comma-separated.
        builtins: String,
        /// The runtime-policy forms.
        policies: &'static str,
    },
}

/// Turns a `--schedule` argument into a schedule, trying in order:
///
/// 1. a built-in name ([`builtin_names`]), e.g. `pixart-alpha-256/fast`;
/// 2. a schedule file: a path ending in `.json`, or any existing file (a missing `.json` file
///    is an error naming the path);
/// 3. `SPEC+taylor1` / `SPEC+taylor2`: SPEC resolved by these rules, its reused components
///    forecast (see [`crate::cache::policy`]);
/// 4. a runtime policy ([`policy_by_name`]: `fbcache:RDT`, `dbcache:FN:BN:RDT[...]`,
///    `teacache:THRESH[:COEFFS_FILE]`, `taylorseer:INTERVAL:ORDER[:WARMUP]`), built on the
///    no-cache schedule of `steps` steps;
/// 5. a heuristic ([`heuristic_by_name`]: `default`, `fora:3`, `tgate:10`, ...), built for
///    `family` with `steps` steps, `blocks` blocks and `single_blocks` single blocks (ignored
///    for PixArt).
///
/// Anything else is refused with one error that lists the options. Built-ins and files are
/// returned as they are: the caller checks that they fit its model and step count
/// ([`Schedule::validate_for`]), as it does for any file. A schedule built from a name is
/// named by the spec as given (trimmed), so that two specs never share a name.
pub fn resolve_spec(
    spec: &str,
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> Result<Schedule, ResolveError> {
    let spec = spec.trim();
    if let Some(s) = builtin(spec) {
        return Ok(s?);
    }
    let path = Path::new(spec);
    // `teacache:T:COEFFS.json` ends in `.json` too: a policy name is not a schedule file.
    let policy_named = spec
        .split_once(':')
        .is_some_and(|(n, _)| ["fbcache", "dbcache", "teacache", "taylorseer"].contains(&n));
    if !policy_named && (path.extension().is_some_and(|e| e == "json") || path.is_file()) {
        return Ok(Schedule::from_path(path)?);
    }
    if let Some((base, f)) = spec.rsplit_once('+') {
        if f.trim().starts_with("taylor") {
            let forecast = Forecast::parse(f).ok_or_else(|| PolicyError {
                spec: spec.to_string(),
                msg: format!("unknown forecast `{f}` after `+` (expected taylor1 or taylor2)"),
            })?;
            let s = resolve_spec(base, family, steps, blocks, single_blocks)?;
            let name = format!("{}+{}", s.name, forecast.name());
            let mut s = with_forecast(s, forecast, spec)?;
            s.name = name;
            return Ok(s);
        }
    }
    if let Some(p) = policy_by_name(spec)? {
        return policy_schedule(spec, p, family, steps, blocks, single_blocks);
    }
    match heuristic_by_name(spec, family, steps, blocks, single_blocks) {
        Ok(s) => Ok(s),
        Err(HeuristicError::UnknownSpec(_)) => Err(ResolveError::Unknown {
            spec: spec.to_string(),
            builtins: builtin_names().join(", "),
            policies: POLICY_FORMS,
        }),
        Err(e) => Err(ResolveError::Heuristic(e)),
    }
}

/// `s` with its reused components forecast (`--forecast`, `SPEC+taylorN`). A runtime policy
/// skips whole blocks and computes every component it runs, so it has nothing to forecast,
/// and a schedule that forecasts already cannot take a second forecast: both are refused.
pub fn with_forecast(
    mut s: Schedule,
    forecast: Forecast,
    spec: &str,
) -> Result<Schedule, ResolveError> {
    let refuse = |msg: String| {
        ResolveError::Policy(PolicyError {
            spec: spec.to_string(),
            msg,
        })
    };
    if let Some(rp) = &s.runtime {
        return Err(refuse(format!(
            "{} is a runtime policy: it skips whole blocks and reuses their residual, it has no \
             reused components to forecast (forecasts apply to static schedules: built-ins, files, \
             heuristics)",
            rp.spec()
        )));
    }
    if let Some(f) = s.forecast {
        return Err(refuse(format!(
            "the schedule already forecasts with {} (one forecast per schedule)",
            f.name()
        )));
    }
    s.forecast = Some(forecast);
    Ok(s)
}

/// The schedule of a runtime-policy spec: the no-cache bits with the policy, or TaylorSeer's
/// compute pattern with its forecast.
fn policy_schedule(
    spec: &str,
    p: PolicySpec,
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> Result<Schedule, ResolveError> {
    let mut s =
        default_schedule(family, steps, blocks, single_blocks).map_err(ResolveError::Heuristic)?;
    s.name = spec.to_string();
    match p {
        PolicySpec::Runtime(rp) => s.runtime = Some(rp),
        PolicySpec::TeaCache {
            thresh,
            coeffs_file,
        } => {
            let (coeffs, source) = match coeffs_file {
                Some(f) => (
                    crate::cache::teacache::read_coefficients(Path::new(&f), family).map_err(
                        |e| PolicyError {
                            spec: spec.to_string(),
                            msg: e.to_string(),
                        },
                    )?,
                    Some(f),
                ),
                None if family == ModelFamily::Flux => (TEACACHE_FLUX_COEFFS.to_vec(), None),
                None => {
                    return Err(ResolveError::Policy(PolicyError {
                        spec: spec.to_string(),
                        msg: format!(
                            "TeaCache ships coefficients for FLUX only; for {family} fit them with \
                             `ecad-native schedule fit-teacache --out COEFFS.json` and give \
                             teacache:{thresh}:COEFFS.json"
                        ),
                    }))
                }
            };
            s.runtime = Some(RuntimePolicy::TeaCache(TeaCacheParams {
                thresh,
                coeffs,
                source,
            }));
        }
        PolicySpec::TaylorSeer {
            interval,
            forecast,
            warmup,
        } => {
            let nb = s.num_blocks();
            let ns = s.num_single_blocks();
            for step in 0..steps {
                let on = PolicySpec::taylorseer_computes(step, interval, warmup);
                for b in 0..nb {
                    for &c in family.block_components() {
                        s.set(step, b, c, on);
                    }
                }
                for b in 0..ns {
                    for &c in family.single_block_components() {
                        s.set(step, b, c, on);
                    }
                }
            }
            s.forecast = Some(forecast);
        }
    }
    Ok(s)
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
