//! The initial population: the built-in heuristics, schedules read from a folder, and the
//! fingerprint of seed genomes.

use super::genome::to_hex;
use super::nsga2::{repair, Genome};
use super::{SResult, SearchError};
use crate::cache::builtin::resolve_spec;
use crate::cache::heuristics::{heuristic_by_name, tgate_without_ca_avg, TgateParams};
use crate::cache::policy::Forecast;
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::util::Fnv;
use std::path::{Path, PathBuf};

/// Where the initial population comes from.
#[derive(Clone, Debug)]
pub enum SeedSource {
    /// `pop_size` uniformly random genomes (ECAD's `BinaryRandomSampling`).
    Random,
    /// The built-in heuristics ([`builtin_heuristics`]).
    Heuristics,
    /// Schedules read from a folder (name, genome), in path order.
    Genomes(Vec<(String, Genome)>),
}

/// The built-in heuristics used as reference points (and as seeds with `--seed-from
/// heuristics`), ECAD's hand-crafted seed families that are plain bit schedules: the no-cache
/// default, FORA `recompute_all_every_{2,3,4,5,7,10,20}`, `recompute_ca_sa_every_{2,4,5,7,10,20}`
/// and the 13 `tgate_without_ca_avg` (m, k) pairs of ECAD's PixArt-α seed set (for a run of S
/// steps ≠ 20, m and k are scaled by S/20 and rounded). N > S is skipped; schedules whose
/// genome (with step 0 forced to recompute) equals an earlier one are dropped.
///
/// For FLUX: the default and FORA `recompute_all_every_{2..7}`, the source candidates of
/// ECAD's FLUX seed population (`population_initialization/flux_256x256`).
pub fn builtin_heuristics(
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> SResult<Vec<(String, Schedule)>> {
    let mut out: Vec<(String, Schedule)> = Vec::new();
    if family == ModelFamily::Flux {
        out.push((
            "default".into(),
            heuristic_by_name("default", family, steps, blocks, single_blocks)?,
        ));
        for n in 2..=7 {
            if n <= steps {
                out.push((
                    format!("fora:{n}"),
                    heuristic_by_name(&format!("fora:{n}"), family, steps, blocks, single_blocks)?,
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|(_, s)| {
            let mut g = s.to_genome();
            repair(&mut g, (blocks + single_blocks) * 3);
            seen.insert(g)
        });
        return Ok(out);
    }
    out.push((
        "default".into(),
        heuristic_by_name("default", ModelFamily::PixArt, steps, blocks, 0)?,
    ));
    for n in [2, 3, 4, 5, 7, 10, 20] {
        if n <= steps {
            out.push((
                format!("fora:{n}"),
                heuristic_by_name(&format!("fora:{n}"), ModelFamily::PixArt, steps, blocks, 0)?,
            ));
        }
    }
    for n in [2, 4, 5, 7, 10, 20] {
        if n <= steps {
            out.push((
                format!("ca_sa:{n}"),
                heuristic_by_name(&format!("ca_sa:{n}"), ModelFamily::PixArt, steps, blocks, 0)?,
            ));
        }
    }
    const TGATE: [(usize, usize); 13] = [
        (10, 1),
        (12, 1),
        (12, 3),
        (12, 5),
        (12, 7),
        (14, 1),
        (14, 5),
        (14, 7),
        (16, 9),
        (18, 7),
        (18, 11),
        (20, 7),
        (20, 11),
    ];
    for (m, k) in TGATE {
        let scale = |v: usize| ((v * steps) as f64 / 20.0).round().max(1.0) as usize;
        let (m, k) = (scale(m).min(steps), scale(k));
        let mut p = TgateParams::new(m);
        p.sp_interval = k;
        out.push((
            format!("tgate:{m}/{k}"),
            tgate_without_ca_avg(steps, blocks, p)?,
        ));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, s)| {
        let mut g = s.to_genome();
        repair(&mut g, blocks * 3);
        seen.insert(g)
    });
    Ok(out)
}

/// Reads every `*.json` schedule under `dir` (recursively, in path order) as seed genomes;
/// custom compute functions (T-GATE) are not part of a genome and are ignored, as ECAD's
/// population loader does.
pub fn read_seed_dir(
    dir: &Path,
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> SResult<Vec<(String, Genome)>> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(d)?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|e| e == "json") {
                out.push(p);
            }
        }
        Ok(())
    }
    if !dir.is_dir() {
        return Err(SearchError::Seeds(format!(
            "{} is not a folder (expected a folder of schedule JSONs, `heuristics` or `random`)",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    walk(dir, &mut files).map_err(|e| SearchError::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    if files.is_empty() {
        return Err(SearchError::Seeds(format!(
            "no *.json schedules under {}",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    for f in files {
        let s = Schedule::from_path(&f)?;
        s.validate_for(steps, blocks, single_blocks, family)
            .map_err(|e| SearchError::Seeds(format!("{}: {e}", f.display())))?;
        if s.num_inference_steps() != steps {
            return Err(SearchError::Seeds(format!(
                "{}: has {} steps, the search runs --steps {steps}",
                f.display(),
                s.num_inference_steps()
            )));
        }
        let rel = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
        out.push((rel, s.to_genome()));
    }
    Ok(out)
}

/// The most entries a `--seed-from` list may have (each costs at most one schedule read).
pub const MAX_SEED_ITEMS: usize = 4096;

/// `--seed-from`'s value: `random`, `heuristics`, one folder of schedule JSONs, or a
/// comma-separated list of `heuristics`, folders and schedule names as `--schedule` takes them
/// (a built-in paper schedule, a schedule file, a heuristic such as `fora:3` or `tgate:10`,
/// `taylorseer:INTERVAL:ORDER[:WARMUP]` and `SPEC+taylorN`), their genomes in list order.
///
/// A forecast is not part of a genome: every seed gives its bits, and a seed that forecasts
/// (`taylorseer:…`, `+taylorN`) must match the search's fixed `--forecast`. A runtime policy
/// (`fbcache`, `dbcache`, `teacache`) is refused: it decides from the features while a run goes
/// and has no bits before it runs. `forecast` is the search's `--forecast`.
pub fn seed_source(
    spec: &str,
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
    forecast: Option<Forecast>,
) -> SResult<SeedSource> {
    let spec = spec.trim();
    match spec {
        "random" => return Ok(SeedSource::Random),
        "heuristics" => return Ok(SeedSource::Heuristics),
        _ => {}
    }
    if Path::new(spec).is_dir() {
        return Ok(SeedSource::Genomes(read_seed_dir(
            Path::new(spec),
            family,
            steps,
            blocks,
            single_blocks,
        )?));
    }
    let items: Vec<&str> = spec.split(',').map(str::trim).collect();
    if items.len() > MAX_SEED_ITEMS {
        return Err(SearchError::Seeds(format!(
            "--seed-from lists {} sources, at most {} are taken",
            items.len(),
            MAX_SEED_ITEMS
        )));
    }
    let mut out = Vec::new();
    for item in items {
        if item.is_empty() {
            return Err(SearchError::Seeds(format!(
                "--seed-from {}: an empty entry in the list",
                crate::util::quote_start(spec, 80)
            )));
        }
        if item == "random" {
            return Err(SearchError::Seeds(
                "--seed-from: `random` stands alone (it is not combined with other seeds)".into(),
            ));
        }
        if item == "heuristics" {
            for (name, s) in builtin_heuristics(family, steps, blocks, single_blocks)? {
                out.push((name, s.to_genome()));
            }
        } else if Path::new(item).is_dir() {
            out.extend(read_seed_dir(
                Path::new(item),
                family,
                steps,
                blocks,
                single_blocks,
            )?);
        } else {
            out.push((
                item.to_string(),
                seed_genome(item, family, steps, blocks, single_blocks, forecast)?,
            ));
        }
    }
    Ok(SeedSource::Genomes(out))
}

/// The genome of one named seed (see [`seed_source`]).
fn seed_genome(
    item: &str,
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
    forecast: Option<Forecast>,
) -> SResult<Genome> {
    let bad = |msg: String| SearchError::Seeds(format!("--seed-from {item}: {msg}"));
    let s =
        resolve_spec(item, family, steps, blocks, single_blocks).map_err(|e| bad(e.to_string()))?;
    if s.runtime.is_some() {
        return Err(bad(
            "a runtime policy decides from the features while the run goes and has no bits \
             before it runs, so it cannot seed a search; seed from its static neighbours \
             (`fora:N`, the paper schedules, `taylorseer:…`)"
                .into(),
        ));
    }
    if s.forecast.is_some() && s.forecast != forecast {
        let name = |f: Option<Forecast>| f.map_or("no forecast", |f| f.name());
        return Err(bad(format!(
            "the seed has {}, the search {} (a search's forecast is one fixed setting: give \
             --forecast to match)",
            name(s.forecast),
            name(forecast)
        )));
    }
    s.validate_for(steps, blocks, single_blocks, family)
        .map_err(|e| bad(e.to_string()))?;
    if s.num_inference_steps() != steps {
        return Err(bad(format!(
            "has {} steps, the search runs --steps {steps}",
            s.num_inference_steps()
        )));
    }
    Ok(s.to_genome())
}

/// Fingerprint of seed genomes (settings).
pub fn seed_digest(seeds: &[(String, Genome)]) -> String {
    let mut h = Fnv::default();
    for (_, g) in seeds {
        h.update(to_hex(g).as_bytes());
        h.update(b"\n");
    }
    h.hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_heuristics_for_20_steps_match_ecad_seed_families() {
        let h = builtin_heuristics(ModelFamily::PixArt, 20, 28, 0).unwrap();
        let names: Vec<&str> = h.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "default");
        assert!(names.contains(&"fora:3") && names.contains(&"ca_sa:20"));
        assert_eq!(names.iter().filter(|n| n.starts_with("tgate:")).count(), 13);
        assert_eq!(h.len(), 1 + 7 + 6 + 13);
        assert!(h.iter().all(|(_, s)| !s.has_custom_functions()));
    }
}
