//! ECAD's heuristic schedule generators, bit for bit
//! (`ecad/schedulers/cache_scheduler/generators/{pixart,flux}_schedule_generators.py`).
//!
//! Every generator reproduces the shipped JSON (minus `metrics`, which ECAD adds later) exactly:
//! name, attributes (with their key order), `config` where the shipped files have one, and the
//! `cache_schedule` key order of the shipped files. Note that the older shipped PixArt `default`
//! and `recompute_all_every_*` files have no `config` section at all, while the other generators
//! write one (possibly `{}`); the FLUX `recompute_all_every_*` files put `num_single_blocks`
//! second in `cache_schedule`, the FLUX `default_*` files put it last. The generators follow the
//! files.
//!
//! Use [`heuristic_by_name`] to build one from a short spec.

use serde_json::{json, Map, Value};

use crate::cache::schedule::{Component, CustomFunction, ModelFamily, Schedule, ScheduleError};

/// Errors from the generators.
#[derive(Debug, thiserror::Error)]
pub enum HeuristicError {
    /// The spec is not one [`heuristic_by_name`] knows.
    #[error(
        "unknown heuristic `{0}` (expected default, fora:N, recompute_all_every:N, ca_sa:N, \
         recompute_ca_sa_every:N, tgate:M[:SP[:FI[:WARMUP]]], tgate_without_ca_avg:M[:SP[:FI[:WARMUP]]], \
         or an ECAD schedule name such as recompute_all_every_003 or tgate_m_010_sp_003_fi_001_warmup_002)"
    )]
    UnknownSpec(String),
    /// A parameter is out of range or malformed.
    #[error("heuristic `{spec}`: {msg}")]
    BadParameter {
        /// The spec or generator.
        spec: String,
        /// What is wrong.
        msg: String,
    },
    /// The generator exists for another family only.
    #[error("heuristic `{spec}` exists for {supported} only, not {family}")]
    WrongFamily {
        /// The spec or generator.
        spec: String,
        /// The family it supports.
        supported: ModelFamily,
        /// The family asked for.
        family: ModelFamily,
    },
    /// Building the schedule failed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

type Result<T> = std::result::Result<T, HeuristicError>;

const CANONICAL_CACHE_ORDER: &[&str] = &[
    "num_blocks",
    "num_inference_steps",
    "name",
    "attributes",
    "schedule",
    "num_single_blocks",
];

fn bad(spec: &str, msg: impl Into<String>) -> HeuristicError {
    HeuristicError::BadParameter {
        spec: spec.to_string(),
        msg: msg.into(),
    }
}

fn check_steps(spec: &str, steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(bad(spec, "needs at least 1 step"));
    }
    crate::util::limits::STEPS
        .check("the step count", steps as u128)
        .map_err(|e| bad(spec, e.to_string()))?;
    Ok(())
}

fn single_blocks_for(family: ModelFamily, single_blocks: usize) -> usize {
    match family {
        ModelFamily::PixArt => 0,
        ModelFamily::Flux => single_blocks,
    }
}

/// Sets every component of every block at `step`.
fn set_step(s: &mut Schedule, step: usize, bits: &[(Component, bool)]) {
    for &(c, v) in bits {
        let n = if c.is_single() {
            s.num_single_blocks()
        } else {
            s.num_blocks()
        };
        for b in 0..n {
            s.set(step, b, c, v);
        }
    }
}

fn obj(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Python's `repr(float)` for ordinary values (`5.0`, `3.5`), as ECAD's f-strings print them.
fn python_float(x: f64) -> String {
    format!("{x:?}")
}

/// The no-cache schedule (every bit true). PixArt: ECAD's `gen_default` (name `default`,
/// attributes `{}`, no config section, as the shipped `alpha_cache_schedules/gen_default`).
/// FLUX: ECAD's `gen_default` without size (name `default`, `config: {}`); see
/// [`flux_default_with_config`] for the shipped `default_<H>x<W>_gs_<G>_steps_<NN>` files.
pub fn default_schedule(
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> Result<Schedule> {
    check_steps("default", steps)?;
    let single_blocks = single_blocks_for(family, single_blocks);
    let mut s = Schedule::new_filled(family, steps, blocks, single_blocks, "default", true)?;
    match family {
        ModelFamily::PixArt => s.set_key_order(&["cache_schedule"], CANONICAL_CACHE_ORDER),
        ModelFamily::Flux => {
            s.config = Some(json!({}));
            s.set_key_order(&["cache_schedule", "config"], CANONICAL_CACHE_ORDER);
        }
    }
    Ok(s)
}

/// FLUX no-cache schedule with a size and guidance config, as the shipped
/// `flux_cache_schedules/gen_default/default_<H>x<W>_gs_<G>_steps_<NN>.json`: that name,
/// attributes `{}`, `config: {"height", "width", "guidance_scale" (a float)}`.
pub fn flux_default_with_config(
    steps: usize,
    blocks: usize,
    single_blocks: usize,
    height: u64,
    width: u64,
    guidance_scale: f64,
) -> Result<Schedule> {
    check_steps("default", steps)?;
    let name = format!(
        "default_{height}x{width}_gs_{}_steps_{steps:02}",
        python_float(guidance_scale)
    );
    let mut s = Schedule::new_filled(ModelFamily::Flux, steps, blocks, single_blocks, name, true)?;
    s.config = Some(json!({"height": height, "width": width, "guidance_scale": guidance_scale}));
    s.set_key_order(&["cache_schedule", "config"], CANONICAL_CACHE_ORDER);
    Ok(s)
}

/// FORA: every component of every block is recomputed at steps `i` with `i % n == 0` and
/// reused otherwise (ECAD's `gen_recompute_all_every_n`; name `recompute_all_every_{n:03}`).
/// ECAD's attribute `num_affected_steps` counts the *recompute* steps.
pub fn recompute_all_every_n(
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
    n: usize,
) -> Result<Schedule> {
    let spec = "recompute_all_every_n";
    check_steps(spec, steps)?;
    if n == 0 {
        return Err(bad(spec, "n must be at least 1"));
    }
    let single_blocks = single_blocks_for(family, single_blocks);
    let name = format!("recompute_all_every_{n:03}");
    let mut s = Schedule::new_filled(family, steps, blocks, single_blocks, name, true)?;
    let mut affected_steps = 0u64;
    for step in 0..steps {
        let r = step % n == 0;
        affected_steps += u64::from(r);
        let bits: Vec<(Component, bool)> = family
            .block_components()
            .iter()
            .chain(family.single_block_components())
            .map(|&c| (c, r))
            .collect();
        set_step(&mut s, step, &bits);
    }
    // step 0 always recomputes, so every block counts as affected
    let n = n as u64;
    match family {
        ModelFamily::PixArt => {
            s.attributes = obj(vec![
                ("num_affected_blocks", (blocks as u64).into()),
                ("num_affected_steps", affected_steps.into()),
                ("recompute_attn1_every", n.into()),
                ("recompute_attn2_every", n.into()),
                ("recompute_ff_every", n.into()),
            ]);
            s.set_key_order(&["cache_schedule"], CANONICAL_CACHE_ORDER);
        }
        ModelFamily::Flux => {
            s.attributes = obj(vec![
                ("num_affected_blocks", (blocks as u64).into()),
                ("num_affected_single_blocks", (single_blocks as u64).into()),
                ("num_affected_steps", affected_steps.into()),
                ("recompute_single_attn_every_n", n.into()),
                ("recompute_single_proj_mlp_every_n", n.into()),
                ("recompute_single_proj_out_every_n", n.into()),
                ("recompute_full_attn_every_n", n.into()),
                ("recompute_full_ff_every_n", n.into()),
                ("recompute_full_ff_context_every_n", n.into()),
            ]);
            s.config = Some(json!({}));
            s.set_key_order(
                &["cache_schedule", "config"],
                &[
                    "num_blocks",
                    "num_single_blocks",
                    "num_inference_steps",
                    "name",
                    "attributes",
                    "schedule",
                ],
            );
        }
    }
    Ok(s)
}

/// PixArt: self- and cross-attention (`attn1`, `attn2`) recomputed at steps `i % n == 0` and
/// reused otherwise; **`ff` is recomputed at every step** (ECAD's `gen_recompute_ca_sa_every_n`;
/// name `recompute_ca_sa_every_{n:03}`, attribute `recompute_ff_every: 1`, `config: {}`).
pub fn recompute_ca_sa_every_n(steps: usize, blocks: usize, n: usize) -> Result<Schedule> {
    let spec = "recompute_ca_sa_every_n";
    check_steps(spec, steps)?;
    if n == 0 {
        return Err(bad(spec, "n must be at least 1"));
    }
    let name = format!("recompute_ca_sa_every_{n:03}");
    let mut s = Schedule::new_filled(ModelFamily::PixArt, steps, blocks, 0, name, true)?;
    let mut affected_steps = 0u64;
    for step in 0..steps {
        let r = step % n == 0;
        affected_steps += u64::from(r);
        set_step(
            &mut s,
            step,
            &[
                (Component::Attn1, r),
                (Component::Attn2, r),
                (Component::Ff, true),
            ],
        );
    }
    let n = n as u64;
    s.attributes = obj(vec![
        ("num_affected_blocks", (blocks as u64).into()),
        ("num_affected_steps", affected_steps.into()),
        ("recompute_attn1_every", n.into()),
        ("recompute_attn2_every", n.into()),
        ("recompute_ff_every", 1u64.into()),
    ]);
    s.config = Some(json!({}));
    s.set_key_order(&["cache_schedule", "config"], CANONICAL_CACHE_ORDER);
    Ok(s)
}

/// T-GATE parameters (ECAD names; the T-GATE paper's m and k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TgateParams {
    /// m: the first step of the "fidelity-improving" stage; cross-attention is cached from here.
    pub gate_step: usize,
    /// k: before the gate, after the warm-up, self-attention is recomputed when
    /// `step % sp_interval == 0` (ECAD follows T-GATE's code, not `(step - warmup) % k`).
    pub sp_interval: usize,
    /// After the gate, self-attention is recomputed when `step % fi_interval == 0`.
    pub fi_interval: usize,
    /// Steps `< warmup` always recompute self-attention.
    pub warmup: usize,
}

impl TgateParams {
    /// m = `gate_step`, with T-GATE's defaults k = 1, fi = 1, warm-up = 2.
    pub fn new(gate_step: usize) -> Self {
        TgateParams {
            gate_step,
            sp_interval: 1,
            fi_interval: 1,
            warmup: 2,
        }
    }
}

fn tgate_common(
    steps: usize,
    blocks: usize,
    p: TgateParams,
    with_ca_avg: bool,
) -> Result<Schedule> {
    let spec = if with_ca_avg {
        "tgate"
    } else {
        "tgate_without_ca_avg"
    };
    check_steps(spec, steps)?;
    if p.gate_step == 0 {
        return Err(bad(spec, "gate_step must be at least 1"));
    }
    if p.sp_interval == 0 || p.fi_interval == 0 {
        return Err(bad(spec, "sp_interval and fi_interval must be at least 1"));
    }
    let prefix = if with_ca_avg {
        "tgate"
    } else {
        "tgate_without_ca_avg"
    };
    let name = format!(
        "{prefix}_m_{:03}_sp_{:03}_fi_{:03}_warmup_{:03}",
        p.gate_step, p.sp_interval, p.fi_interval, p.warmup
    );
    let mut s = Schedule::new_filled(ModelFamily::PixArt, steps, blocks, 0, name, true)?;
    let mut affected_steps = 0u64;
    let mut affected_blocks = 0u64;
    for step in 0..steps {
        let (attn1, attn2) = if step < p.gate_step {
            (step < p.warmup || step % p.sp_interval == 0, true)
        } else {
            (step % p.fi_interval == 0, false)
        };
        set_step(
            &mut s,
            step,
            &[
                (Component::Attn1, attn1),
                (Component::Attn2, attn2),
                (Component::Ff, true),
            ],
        );
        if with_ca_avg {
            for b in 0..blocks {
                s.set_custom_compute_attn(
                    step,
                    b,
                    Some(CustomFunction::AttnTgate {
                        gate_step: p.gate_step,
                    }),
                );
            }
        }
        if !(attn1 && attn2) {
            affected_steps += 1;
            affected_blocks = blocks as u64;
        }
    }
    s.attributes = obj(vec![
        ("num_affected_blocks", affected_blocks.into()),
        ("num_affected_steps", affected_steps.into()),
        ("gate_step", (p.gate_step as u64).into()),
        ("sp_interval", (p.sp_interval as u64).into()),
        ("fi_interval", (p.fi_interval as u64).into()),
        ("warmup", (p.warmup as u64).into()),
    ]);
    s.config = Some(if with_ca_avg {
        json!({"pipeline": {"name": "tgate", "kwargs": {"gate_step": p.gate_step}}})
    } else {
        json!({})
    });
    s.set_key_order(&["cache_schedule", "config"], CANONICAL_CACHE_ORDER);
    Ok(s)
}

/// PixArt T-GATE (ECAD's `helper_tgate`; name `tgate_m_{m:03}_sp_{k:03}_fi_{fi:03}_warmup_{w:03}`).
/// Before the gate step: `attn1` recomputed when `step < warmup || step % sp_interval == 0`,
/// `attn2` always. From the gate step on: `attn1` when `step % fi_interval == 0`, `attn2`
/// never. `ff` always. Every block at every step carries
/// `custom_compute_attn = {"name": "compute_attn_tgate", "kwargs": {"gate_step": m}}` and
/// `config = {"pipeline": {"name": "tgate", "kwargs": {"gate_step": m}}}` (cached cross-attention
/// is the CFG-averaged one and CFG stops at the gate; see [`CustomFunction::AttnTgate`]).
pub fn tgate(steps: usize, blocks: usize, params: TgateParams) -> Result<Schedule> {
    tgate_common(steps, blocks, params, true)
}

/// ECAD's `helper_tgate_without_ca_avg`: the same bits as [`tgate`] but no custom function and
/// `config: {}` (the cross-attention is cached un-averaged and CFG continues). Name
/// `tgate_without_ca_avg_m_..._warmup_...`. 13 of the shipped PixArt-α seed candidates are these.
pub fn tgate_without_ca_avg(steps: usize, blocks: usize, params: TgateParams) -> Result<Schedule> {
    tgate_common(steps, blocks, params, false)
}

fn parse_num(spec: &str, s: &str, what: &str) -> Result<usize> {
    s.parse::<usize>().map_err(|_| {
        bad(
            spec,
            format!("{what} must be a non-negative integer, found `{s}`"),
        )
    })
}

fn require_family(spec: &str, family: ModelFamily, supported: ModelFamily) -> Result<()> {
    if family != supported {
        return Err(HeuristicError::WrongFamily {
            spec: spec.to_string(),
            supported,
            family,
        });
    }
    Ok(())
}

/// Parses `tgate_m_010_sp_003_fi_001_warmup_002`-style parameter tails (after the prefix).
fn parse_tgate_stem(spec: &str, rest: &str) -> Result<TgateParams> {
    let parts: Vec<&str> = rest.split('_').collect();
    if parts.len() != 8
        || parts[0] != "m"
        || parts[2] != "sp"
        || parts[4] != "fi"
        || parts[6] != "warmup"
    {
        return Err(HeuristicError::UnknownSpec(spec.to_string()));
    }
    Ok(TgateParams {
        gate_step: parse_num(spec, parts[1], "m")?,
        sp_interval: parse_num(spec, parts[3], "sp")?,
        fi_interval: parse_num(spec, parts[5], "fi")?,
        warmup: parse_num(spec, parts[7], "warmup")?,
    })
}

/// Parses `M[:SP[:FI[:WARMUP]]]`.
fn parse_tgate_colon(spec: &str, rest: &str) -> Result<TgateParams> {
    let parts: Vec<&str> = rest.split(':').collect();
    if parts.is_empty() || parts.len() > 4 {
        return Err(bad(spec, "expected M[:SP[:FI[:WARMUP]]]"));
    }
    let mut p = TgateParams::new(parse_num(spec, parts[0], "gate step M")?);
    if let Some(x) = parts.get(1) {
        p.sp_interval = parse_num(spec, x, "SP")?;
    }
    if let Some(x) = parts.get(2) {
        p.fi_interval = parse_num(spec, x, "FI")?;
    }
    if let Some(x) = parts.get(3) {
        p.warmup = parse_num(spec, x, "WARMUP")?;
    }
    Ok(p)
}

/// Builds a heuristic schedule from a short spec. Specs (surrounding whitespace ignored):
///
/// | spec | schedule |
/// |---|---|
/// | `default`, `none` | no caching: every bit true ([`default_schedule`]) |
/// | `default_<H>x<W>_gs_<G>[_steps_<NN>]` | FLUX only: no caching with `config` {height, width, guidance_scale} ([`flux_default_with_config`]; `NN` must equal `steps`) |
/// | `fora:<N>`, `recompute_all_every:<N>`, `recompute_all_every_<NNN>` | FORA: all components recomputed every N steps ([`recompute_all_every_n`]) |
/// | `ca_sa:<N>`, `recompute_ca_sa_every:<N>`, `recompute_ca_sa_every_<NNN>` | PixArt only: `attn1`/`attn2` every N steps, `ff` every step ([`recompute_ca_sa_every_n`]) |
/// | `tgate:<M>[:<SP>[:<FI>[:<WARMUP>]]]`, `tgate_m_<M>_sp_<SP>_fi_<FI>_warmup_<W>` | PixArt only: T-GATE with gate step M (defaults SP=1, FI=1, WARMUP=2) ([`tgate`]) |
/// | `tgate_without_ca_avg:<M>[...]`, `tgate_without_ca_avg_m_<M>_sp_<SP>_fi_<FI>_warmup_<W>` | PixArt only: T-GATE bits without the averaging function and CFG cut ([`tgate_without_ca_avg`]) |
///
/// The underscore forms are ECAD's own schedule names (the shipped file stems), so
/// `heuristic_by_name(file_stem, ...)` regenerates a shipped heuristic file.
/// `single_blocks` is ignored for PixArt.
pub fn heuristic_by_name(
    spec: &str,
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> Result<Schedule> {
    let spec = spec.trim();
    if spec == "default" || spec == "none" {
        return default_schedule(family, steps, blocks, single_blocks);
    }
    if let Some(rest) = spec.strip_prefix("default_") {
        require_family(spec, family, ModelFamily::Flux)?;
        // <H>x<W>_gs_<G>[_steps_<NN>]
        let (hw, rest) = rest
            .split_once("_gs_")
            .ok_or_else(|| HeuristicError::UnknownSpec(spec.to_string()))?;
        let (h, w) = hw
            .split_once('x')
            .ok_or_else(|| bad(spec, "expected <H>x<W> after `default_`"))?;
        let (g, nsteps) = match rest.split_once("_steps_") {
            Some((g, n)) => (g, Some(parse_num(spec, n, "steps")?)),
            None => (rest, None),
        };
        let height = parse_num(spec, h, "height")? as u64;
        let width = parse_num(spec, w, "width")? as u64;
        let gs: f64 = g.parse().map_err(|_| {
            bad(
                spec,
                format!("guidance scale must be a number, found `{g}`"),
            )
        })?;
        if let Some(n) = nsteps {
            if n != steps {
                return Err(bad(
                    spec,
                    format!("names {n} steps but {steps} were asked for"),
                ));
            }
        }
        return flux_default_with_config(steps, blocks, single_blocks, height, width, gs);
    }
    for prefix in ["fora:", "recompute_all_every:", "recompute_all_every_"] {
        if let Some(n) = spec.strip_prefix(prefix) {
            let n = parse_num(spec, n, "N")?;
            return recompute_all_every_n(family, steps, blocks, single_blocks, n);
        }
    }
    for prefix in ["ca_sa:", "recompute_ca_sa_every:", "recompute_ca_sa_every_"] {
        if let Some(n) = spec.strip_prefix(prefix) {
            require_family(spec, family, ModelFamily::PixArt)?;
            let n = parse_num(spec, n, "N")?;
            return recompute_ca_sa_every_n(steps, blocks, n);
        }
    }
    // the longer prefix first
    if let Some(rest) = spec.strip_prefix("tgate_without_ca_avg") {
        require_family(spec, family, ModelFamily::PixArt)?;
        let p = if let Some(r) = rest.strip_prefix(':') {
            parse_tgate_colon(spec, r)?
        } else if let Some(r) = rest.strip_prefix('_') {
            parse_tgate_stem(spec, r)?
        } else {
            return Err(HeuristicError::UnknownSpec(spec.to_string()));
        };
        return tgate_without_ca_avg(steps, blocks, p);
    }
    if let Some(rest) = spec.strip_prefix("tgate") {
        require_family(spec, family, ModelFamily::PixArt)?;
        let p = if let Some(r) = rest.strip_prefix(':') {
            parse_tgate_colon(spec, r)?
        } else if let Some(r) = rest.strip_prefix('_') {
            parse_tgate_stem(spec, r)?
        } else {
            return Err(HeuristicError::UnknownSpec(spec.to_string()));
        };
        return tgate(steps, blocks, p);
    }
    Err(HeuristicError::UnknownSpec(spec.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_step_and_block_counts_are_refused() {
        for spec in ["default", "fora:3", "ca_sa:2", "tgate:5"] {
            let e = heuristic_by_name(spec, ModelFamily::PixArt, 4_294_967_295, 28, 0)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("4294967295") && e.contains("1000"),
                "{spec}: {e}"
            );
            assert!(heuristic_by_name(spec, ModelFamily::PixArt, 20, usize::MAX, 0).is_err());
        }
        assert!(heuristic_by_name("fora:4294967295", ModelFamily::PixArt, 20, 28, 0).is_ok());
        assert!(heuristic_by_name("fora:3", ModelFamily::Flux, 28, 19, usize::MAX).is_err());
    }

    #[test]
    fn fora_bits() {
        let s = heuristic_by_name("fora:3", ModelFamily::PixArt, 20, 28, 0).unwrap();
        for step in 0..20 {
            for c in [Component::Attn1, Component::Attn2, Component::Ff] {
                assert_eq!(s.recompute(step, 5, c), step % 3 == 0);
            }
        }
        assert_eq!(s.name, "recompute_all_every_003");
    }

    #[test]
    fn ca_sa_keeps_ff() {
        let s = heuristic_by_name("ca_sa:4", ModelFamily::PixArt, 20, 28, 0).unwrap();
        assert!(s.recompute(3, 0, Component::Ff));
        assert!(!s.recompute(3, 0, Component::Attn1));
        assert!(!s.recompute(3, 0, Component::Attn2));
        assert!(s.recompute(4, 0, Component::Attn2));
    }

    #[test]
    fn tgate_spec_and_custom() {
        let s = heuristic_by_name("tgate:10", ModelFamily::PixArt, 20, 28, 0).unwrap();
        assert_eq!(s.name, "tgate_m_010_sp_001_fi_001_warmup_002");
        assert_eq!(
            s.custom_compute_attn(0, 3),
            Some(CustomFunction::AttnTgate { gate_step: 10 })
        );
        assert_eq!(s.tgate_pipeline_gate_step().unwrap(), Some(10));
        assert!(s.recompute(9, 0, Component::Attn2));
        assert!(!s.recompute(10, 0, Component::Attn2));
    }

    #[test]
    fn spec_errors() {
        let e = heuristic_by_name("ca_sa:2", ModelFamily::Flux, 20, 19, 38).unwrap_err();
        assert_eq!(
            e.to_string(),
            "heuristic `ca_sa:2` exists for PixArt only, not FLUX"
        );
        let e = heuristic_by_name("fora:x", ModelFamily::PixArt, 20, 28, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "heuristic `fora:x`: N must be a non-negative integer, found `x`"
        );
        let e = heuristic_by_name("fora:0", ModelFamily::PixArt, 20, 28, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "heuristic `recompute_all_every_n`: n must be at least 1"
        );
        let e = heuristic_by_name("toca", ModelFamily::PixArt, 20, 28, 0).unwrap_err();
        assert!(e.to_string().starts_with("unknown heuristic `toca`"));
        let e = heuristic_by_name("tgate:0", ModelFamily::PixArt, 20, 28, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "heuristic `tgate`: gate_step must be at least 1"
        );
    }
}
