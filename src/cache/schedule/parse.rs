//! Reading ECAD's JSON into a [`Schedule`]: the key names, value helpers and custom-function
//! entries, and the validating parser.

use super::error::Result;
use super::{
    BlockCustom, Component, CustomFunction, CustomSpec, ModelFamily, Schedule, ScheduleError,
    ATTN_CACHED_FUNCTION, COMPONENTS_PER_BLOCK, FF_CACHED_FUNCTION, TGATE_FUNCTION,
};
use crate::util::limits;
use serde_json::{Map, Value};
use std::path::Path;

pub(super) const KEY_CACHE_SCHEDULE: &str = "cache_schedule";
pub(super) const KEY_CONFIG: &str = "config";
pub(super) const KEY_METRICS: &str = "metrics";
pub(super) const KEY_NUM_BLOCKS: &str = "num_blocks";
pub(super) const KEY_NUM_STEPS: &str = "num_inference_steps";
pub(super) const KEY_NUM_SINGLE: &str = "num_single_blocks";
pub(super) const KEY_NAME: &str = "name";
pub(super) const KEY_ATTRIBUTES: &str = "attributes";
pub(super) const KEY_SCHEDULE: &str = "schedule";
pub(super) const KEY_CUSTOM_ATTN: &str = "custom_compute_attn";
pub(super) const KEY_CUSTOM_FF: &str = "custom_compute_ff";

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn expect_object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| {
        ScheduleError::invalid(
            at,
            format!("expected a JSON object, found {}", type_name(v)),
        )
    })
}

pub(super) fn expect_usize(v: &Value, at: &str) -> Result<usize> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            ScheduleError::invalid(at, format!("expected a non-negative integer, found {v}"))
        })
}

pub(super) fn step_key(step: usize) -> String {
    format!("{step:03}")
}

pub(super) fn block_label(block: usize, single: bool) -> String {
    if single {
        format!("single_{block}")
    } else {
        block.to_string()
    }
}

pub(super) fn at_block(step: usize, block: usize, single: bool) -> String {
    format!(
        "step {} block {}",
        step_key(step),
        block_label(block, single)
    )
}

/// Parses a canonical decimal (no sign, no leading zeros except "0").
pub(super) fn parse_canonical_index(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

/// Parses a custom function entry in slot `slot` (`custom_compute_attn` / `custom_compute_ff`).
pub(super) fn parse_custom(v: &Value, slot: &'static str, at: &str) -> Result<CustomSpec> {
    let at_slot = format!("{at} `{slot}`");
    let obj = expect_object(v, &at_slot)?;
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ScheduleError::invalid(
                &at_slot,
                format!("`name` must be a string, found {}", type_name(other)),
            ))
        }
        None => return Err(ScheduleError::invalid(&at_slot, "missing `name`")),
    };
    for k in obj.keys() {
        if k != "name" && k != "kwargs" {
            return Err(ScheduleError::invalid(
                &at_slot,
                format!("unknown key `{k}` (expected `name` and `kwargs`)"),
            ));
        }
    }
    let empty = Map::new();
    let kwargs = match obj.get("kwargs") {
        None => &empty,
        Some(k) => expect_object(k, &format!("{at_slot} kwargs"))?,
    };
    let lname = name.to_ascii_lowercase();
    let (function, allowed): (CustomFunction, &[&str]) = match (slot, lname.as_str()) {
        (KEY_CUSTOM_ATTN, ATTN_CACHED_FUNCTION) => (CustomFunction::AttnCached, &[]),
        (KEY_CUSTOM_ATTN, TGATE_FUNCTION) => {
            let gate = kwargs.get("gate_step").ok_or_else(|| {
                ScheduleError::invalid(
                    &at_slot,
                    format!("`{TGATE_FUNCTION}` needs kwargs.gate_step"),
                )
            })?;
            let gate_step = gate
                .as_u64()
                .and_then(|g| usize::try_from(g).ok())
                .filter(|&g| g >= 1)
                .ok_or_else(|| {
                    ScheduleError::invalid(
                        &at_slot,
                        format!("kwargs.gate_step must be an integer >= 1, found {gate}"),
                    )
                })?;
            (CustomFunction::AttnTgate { gate_step }, &["gate_step"])
        }
        (KEY_CUSTOM_FF, FF_CACHED_FUNCTION) => (CustomFunction::FfCached, &[]),
        _ => {
            return Err(ScheduleError::UnknownFunction {
                at: at.to_string(),
                slot,
                name,
                known: if slot == KEY_CUSTOM_ATTN {
                    "compute_attn_tgate, compute_attn_cached"
                } else {
                    "compute_ff_cached"
                },
            })
        }
    };
    for k in kwargs.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ScheduleError::invalid(
                &at_slot,
                format!("unknown kwarg `{k}` for `{}`", function.name()),
            ));
        }
    }
    Ok(CustomSpec {
        function,
        raw: v.clone(),
    })
}

impl Schedule {
    /// Parses a schedule from JSON text.
    pub fn from_json_str(text: &str) -> Result<Schedule> {
        let v: Value = serde_json::from_str(text)?;
        Schedule::from_value(&v)
    }

    /// Reads and parses a schedule file; errors are prefixed with the path.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Schedule> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScheduleError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Schedule::from_json_str(&text).map_err(|e| ScheduleError::InFile {
            path: path.to_path_buf(),
            inner: Box::new(e),
        })
    }

    /// Parses a schedule from an already-parsed JSON document.
    pub fn from_value(v: &Value) -> Result<Schedule> {
        let top = expect_object(v, "top level")?;
        let cs_v = top.get(KEY_CACHE_SCHEDULE).ok_or_else(|| {
            ScheduleError::invalid("top level", format!("missing `{KEY_CACHE_SCHEDULE}`"))
        })?;
        let cs = expect_object(cs_v, KEY_CACHE_SCHEDULE)?;

        let get = |key: &str| {
            cs.get(key).ok_or_else(|| {
                ScheduleError::invalid(KEY_CACHE_SCHEDULE, format!("missing `{key}`"))
            })
        };
        let num_blocks = expect_usize(get(KEY_NUM_BLOCKS)?, "cache_schedule.num_blocks")?;
        let num_steps = expect_usize(get(KEY_NUM_STEPS)?, "cache_schedule.num_inference_steps")?;
        // The counts size what follows: refused over their limits before anything is allocated.
        super::check_size(num_steps, num_blocks, 0)?;
        let name = match get(KEY_NAME)? {
            Value::String(s) => s.clone(),
            other => {
                return Err(ScheduleError::invalid(
                    "cache_schedule.name",
                    format!("expected a string, found {}", type_name(other)),
                ))
            }
        };
        let attributes = match cs.get(KEY_ATTRIBUTES) {
            None => Map::new(),
            Some(a) => expect_object(a, "cache_schedule.attributes")?.clone(),
        };
        let sched = expect_object(get(KEY_SCHEDULE)?, "cache_schedule.schedule")?;

        // Step entries: keys are decimal step indices ("000", ...), as ECAD's int(step).
        limits::STEPS
            .check("its number of step entries", sched.len() as u128)
            .map_err(|e| ScheduleError::invalid("cache_schedule.schedule", e.to_string()))?;
        let slots = sched.len().max(num_steps);
        let mut steps: Vec<Option<&Map<String, Value>>> = vec![None; slots];
        for (k, sv) in sched {
            let at = format!("cache_schedule.schedule step `{k}`");
            let idx: usize = if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) {
                k.parse()
                    .map_err(|_| ScheduleError::invalid(&at, "step index too large"))?
            } else {
                return Err(ScheduleError::invalid(
                    &at,
                    "step keys must be decimal step indices like \"000\"",
                ));
            };
            if idx >= steps.len() {
                return Err(ScheduleError::invalid(
                    &at,
                    format!(
                        "step {idx} out of range: the schedule has {} step entries and \
                         num_inference_steps {num_steps}, so steps must be numbered 000..{:03}",
                        sched.len(),
                        slots.saturating_sub(1)
                    ),
                ));
            }
            if steps[idx].is_some() {
                return Err(ScheduleError::invalid(
                    &at,
                    format!("step {idx} appears twice"),
                ));
            }
            steps[idx] = Some(expect_object(sv, &format!("step {}", step_key(idx)))?);
        }
        if let Some(missing) = steps.iter().position(Option::is_none) {
            return Err(ScheduleError::invalid(
                "cache_schedule.schedule",
                format!(
                    "missing step `{}` (num_inference_steps is {num_steps})",
                    step_key(missing)
                ),
            ));
        }
        let steps: Vec<&Map<String, Value>> = steps.into_iter().flatten().collect();
        if steps.len() < num_steps {
            return Err(ScheduleError::invalid(
                "cache_schedule.schedule",
                format!(
                    "has {} step entries but num_inference_steps is {num_steps}",
                    steps.len()
                ),
            ));
        }

        // Family: from the first block's components, else from num_single_blocks.
        let family = {
            let first_block = steps
                .first()
                .and_then(|s| s.values().next())
                .and_then(|b| b.as_object());
            let has = |fam: ModelFamily| {
                first_block.is_some_and(|b| {
                    b.keys()
                        .any(|k| Component::from_name(k).is_some_and(|c| c.family() == fam))
                })
            };
            if has(ModelFamily::PixArt) {
                ModelFamily::PixArt
            } else if has(ModelFamily::Flux) || cs.contains_key(KEY_NUM_SINGLE) {
                ModelFamily::Flux
            } else {
                ModelFamily::PixArt
            }
        };
        let num_single_blocks = match family {
            ModelFamily::PixArt => 0,
            ModelFamily::Flux => {
                let v = cs.get(KEY_NUM_SINGLE).ok_or_else(|| {
                    ScheduleError::invalid(
                        KEY_CACHE_SCHEDULE,
                        format!("missing `{KEY_NUM_SINGLE}` (required for FLUX schedules)"),
                    )
                })?;
                expect_usize(v, "cache_schedule.num_single_blocks")?
            }
        };
        super::check_size(num_steps, num_blocks, num_single_blocks)?;

        let mut s =
            Schedule::new_filled(family, num_steps, num_blocks, num_single_blocks, name, true)?;
        s.num_step_entries = steps.len();
        s.bits = vec![true; steps.len() * s.blocks_per_step() * COMPONENTS_PER_BLOCK];
        s.attributes = attributes;

        for (step, blocks) in steps.iter().enumerate() {
            s.parse_step(step, blocks)?;
        }

        // Top-level and cache_schedule key order, unknown keys kept.
        for (k, v) in top {
            s.top_order.push(k.clone());
            match k.as_str() {
                KEY_CACHE_SCHEDULE => {}
                KEY_CONFIG => s.config = Some(v.clone()),
                KEY_METRICS => s.metrics = Some(v.clone()),
                _ => {
                    s.top_extra.insert(k.clone(), v.clone());
                }
            }
        }
        for (k, v) in cs {
            s.cache_order.push(k.clone());
            let known = matches!(
                k.as_str(),
                KEY_NUM_BLOCKS | KEY_NUM_STEPS | KEY_NAME | KEY_ATTRIBUTES | KEY_SCHEDULE
            ) || (family == ModelFamily::Flux && k == KEY_NUM_SINGLE);
            if !known {
                s.cache_extra.insert(k.clone(), v.clone());
            }
        }
        s.check_config()?;
        Ok(s)
    }

    fn parse_step(&mut self, step: usize, blocks: &Map<String, Value>) -> Result<()> {
        let family = self.family;
        let at_step = format!("step {}", step_key(step));
        let mut seen = vec![false; self.blocks_per_step()];
        for (key, bv) in blocks {
            let (block, single) = if let Some(i) = parse_canonical_index(key) {
                if i >= self.num_blocks {
                    return Err(ScheduleError::invalid(
                        &at_step,
                        format!(
                            "block `{key}` out of range (num_blocks = {})",
                            self.num_blocks
                        ),
                    ));
                }
                (i, false)
            } else if let Some(i) = key
                .strip_prefix("single_")
                .filter(|_| family == ModelFamily::Flux)
                .and_then(parse_canonical_index)
            {
                if i >= self.num_single_blocks {
                    return Err(ScheduleError::invalid(
                        &at_step,
                        format!(
                            "block `{key}` out of range (num_single_blocks = {})",
                            self.num_single_blocks
                        ),
                    ));
                }
                (i, true)
            } else {
                let expected = match family {
                    ModelFamily::PixArt => format!(
                        "PixArt block keys are \"0\"..\"{}\"",
                        self.num_blocks.saturating_sub(1)
                    ),
                    ModelFamily::Flux => format!(
                        "FLUX block keys are \"0\"..\"{}\" and \"single_0\"..\"single_{}\"",
                        self.num_blocks.saturating_sub(1),
                        self.num_single_blocks.saturating_sub(1)
                    ),
                };
                return Err(ScheduleError::invalid(
                    &at_step,
                    format!("unknown block `{key}` ({expected})"),
                ));
            };
            let at = at_block(step, block, single);
            let gidx = self.global_block(block, single);
            if seen[gidx] {
                return Err(ScheduleError::invalid(&at, "block appears twice"));
            }
            seen[gidx] = true;
            let obj = expect_object(bv, &at)?;
            let comps: &[Component] = if single {
                family.single_block_components()
            } else {
                family.block_components()
            };
            let mut have = [false; COMPONENTS_PER_BLOCK];
            let mut custom = BlockCustom::default();
            for (ck, cv) in obj {
                if let Some(c) = comps.iter().copied().find(|c| c.name() == ck) {
                    let bit = cv.as_bool().ok_or_else(|| {
                        ScheduleError::invalid(
                            format!("{at} component `{ck}`"),
                            format!("expected true or false, found {cv}"),
                        )
                    })?;
                    have[c.slot()] = true;
                    let i = self.index(step, gidx, c.slot());
                    self.bits[i] = bit;
                } else if ck == KEY_CUSTOM_ATTN || ck == KEY_CUSTOM_FF {
                    if family != ModelFamily::PixArt {
                        return Err(ScheduleError::invalid(
                            &at,
                            format!("`{ck}`: custom compute functions exist for PixArt only"),
                        ));
                    }
                    if ck == KEY_CUSTOM_ATTN {
                        custom.attn = Some(parse_custom(cv, KEY_CUSTOM_ATTN, &at)?);
                    } else {
                        custom.ff = Some(parse_custom(cv, KEY_CUSTOM_FF, &at)?);
                    }
                } else {
                    let mut expected = comps.iter().map(|c| c.name()).collect::<Vec<_>>();
                    if family == ModelFamily::PixArt {
                        expected.extend([KEY_CUSTOM_ATTN, KEY_CUSTOM_FF]);
                    }
                    let kind = match (family, single) {
                        (ModelFamily::PixArt, _) => "PixArt components",
                        (ModelFamily::Flux, false) => "FLUX double-block components",
                        (ModelFamily::Flux, true) => "FLUX single-block components",
                    };
                    return Err(ScheduleError::UnknownComponent {
                        at,
                        component: ck.clone(),
                        expected: format!("{kind}: {}", expected.join(", ")),
                    });
                }
            }
            for c in comps {
                if !have[c.slot()] {
                    return Err(ScheduleError::MissingComponent {
                        at,
                        component: c.name(),
                    });
                }
            }
            if !custom.is_empty() {
                self.custom.insert((step, block), custom);
            }
        }
        if let Some(g) = seen.iter().position(|&x| !x) {
            let label = if g < self.num_blocks {
                block_label(g, false)
            } else {
                block_label(g - self.num_blocks, true)
            };
            return Err(ScheduleError::invalid(
                &at_step,
                format!("missing block {label}"),
            ));
        }
        Ok(())
    }
}
