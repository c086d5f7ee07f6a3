//! ECAD cache schedules: the JSON format, its validation, lossless round-tripping and the
//! genetic-algorithm genome.
//!
//! A schedule is a boolean tensor `S[step, block, component]`; `true` means *recompute* the
//! component at that step, `false` means *reuse* its most recently computed output. The JSON
//! layout is ECAD's (`CacheSchedule.to_dict`):
//!
//! ```json
//! {
//!   "cache_schedule": {
//!     "num_blocks": 28, "num_inference_steps": 20, "name": "...", "attributes": {...},
//!     "schedule": { "000": { "0": {"attn1": true, "attn2": true, "ff": true}, ... }, ... },
//!     "num_single_blocks": 38            // FLUX only
//!   },
//!   "config": {...},                      // optional, kept untouched
//!   "metrics": {...}                      // optional, kept untouched
//! }
//! ```
//!
//! Block keys are `"0".."N-1"` (PixArt blocks, FLUX double-stream blocks) and
//! `"single_0".."single_M-1"` (FLUX single-stream blocks). PixArt blocks may also carry
//! `custom_compute_attn` / `custom_compute_ff` entries (`{"name": ..., "kwargs": {...}}`), which
//! ECAD uses for T-GATE (see [`CustomFunction`]).
//!
//! Everything this module does not interpret (`config`, `metrics`, unknown top-level keys,
//! unknown `cache_schedule` keys) is kept as [`serde_json::Value`] and written back unchanged, in
//! the original key order, so every shipped ECAD file round-trips without loss.
//!
//! Steps: `num_inference_steps` is the number of denoising steps ECAD runs and counts; the
//! `schedule` object must hold at least that many step entries (`"000"`, `"001"`, ...). One
//! shipped file (`flux_cache_schedules/gen_default/default_1024x1024_gs_5.0_steps_08.json`)
//! declares 8 steps but carries 50 entries; ECAD uses the first 8 (its MAC metrics have 8
//! entries). Extra entries are preserved for round-tripping and otherwise ignored.
//!
//! This file holds [`Schedule`] and its bit access and checks; the parts live in `family`
//! (model families, components), `custom` (custom compute functions), `error`, `parse`
//! (reading the JSON), `write` (writing it, ECAD's attributes) and `genome` (the GA's bits).

mod custom;
mod error;
mod family;
mod genome;
mod parse;
mod write;

pub use custom::{
    BlockCustom, CustomFunction, CustomSpec, ATTN_CACHED_FUNCTION, FF_CACHED_FUNCTION,
    TGATE_FUNCTION,
};
pub use error::ScheduleError;
pub use family::{Component, ModelFamily, COMPONENTS_PER_BLOCK};

use crate::util::limits;
use error::Result;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// An ECAD cache schedule.
///
/// Bits are stored for every step entry, block and component; blocks are indexed per kind:
/// regular/double blocks `0..num_blocks`, single blocks `0..num_single_blocks` (the component
/// says which kind is meant).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    family: ModelFamily,
    num_inference_steps: usize,
    num_blocks: usize,
    num_single_blocks: usize,
    num_step_entries: usize,
    bits: Vec<bool>,
    custom: BTreeMap<(usize, usize), BlockCustom>,
    /// `cache_schedule.name`.
    pub name: String,
    /// `cache_schedule.attributes` (ECAD's free-form description of the schedule).
    pub attributes: Map<String, Value>,
    /// The top-level `config` section, untouched (height/width/guidance/weights/pipeline).
    pub config: Option<Value>,
    /// The top-level `metrics` section, untouched.
    pub metrics: Option<Value>,
    /// A runtime policy driving the run on top of these bits (`fbcache:…`, `dbcache:…`; see
    /// [`crate::cache::policy`]); not part of the JSON file.
    pub runtime: Option<crate::cache::policy::RuntimePolicy>,
    /// How reused components are filled: `None` copies (ECAD), `Some` forecasts them with a
    /// Taylor expansion (`SPEC+taylor1`, `--forecast`); not part of the JSON file.
    pub forecast: Option<crate::cache::policy::Forecast>,
    top_extra: Map<String, Value>,
    cache_extra: Map<String, Value>,
    top_order: Vec<String>,
    cache_order: Vec<String>,
}

impl Schedule {
    /// A schedule with every bit set to `fill`, no custom functions, empty attributes and no
    /// `config`/`metrics` sections. `single_blocks` must be 0 for PixArt.
    pub fn new_filled(
        family: ModelFamily,
        steps: usize,
        blocks: usize,
        single_blocks: usize,
        name: impl Into<String>,
        fill: bool,
    ) -> Result<Schedule> {
        if family == ModelFamily::PixArt && single_blocks != 0 {
            return Err(ScheduleError::invalid(
                "schedule",
                format!("PixArt has no single blocks (got {single_blocks})"),
            ));
        }
        check_size(steps, blocks, single_blocks)?;
        Ok(Schedule {
            family,
            num_inference_steps: steps,
            num_blocks: blocks,
            num_single_blocks: single_blocks,
            num_step_entries: steps,
            bits: vec![fill; steps * (blocks + single_blocks) * COMPONENTS_PER_BLOCK],
            custom: BTreeMap::new(),
            name: name.into(),
            attributes: Map::new(),
            config: None,
            metrics: None,
            runtime: None,
            forecast: None,
            top_extra: Map::new(),
            cache_extra: Map::new(),
            top_order: Vec::new(),
            cache_order: Vec::new(),
        })
    }

    /// Checks the parts of `config` that change execution: a T-GATE pipeline needs an integer
    /// `kwargs.gate_step >= 1`.
    fn check_config(&self) -> Result<()> {
        self.tgate_pipeline_gate_step().map(|_| ())
    }

    /// If `config.pipeline.name` is `"tgate"`, the pipeline's gate step
    /// (`config.pipeline.kwargs.gate_step`): from that step on ECAD's `TGATEPipeline` runs the
    /// transformer on the null (negative) embeddings only, batch B, without CFG. `Ok(None)` for
    /// any other pipeline or no config.
    pub fn tgate_pipeline_gate_step(&self) -> Result<Option<usize>> {
        let Some(pipeline) = self.config.as_ref().and_then(|c| c.get("pipeline")) else {
            return Ok(None);
        };
        if pipeline.get("name").and_then(Value::as_str) != Some("tgate") {
            return Ok(None);
        }
        let g = pipeline.get("kwargs").and_then(|k| k.get("gate_step"));
        match g
            .and_then(Value::as_u64)
            .and_then(|g| usize::try_from(g).ok())
        {
            Some(g) if g >= 1 => Ok(Some(g)),
            _ => Err(ScheduleError::invalid(
                "config.pipeline",
                format!(
                    "the tgate pipeline needs kwargs.gate_step, an integer >= 1 (found {})",
                    g.map_or("nothing".to_string(), |v| v.to_string())
                ),
            )),
        }
    }

    fn blocks_per_step(&self) -> usize {
        self.num_blocks + self.num_single_blocks
    }

    fn global_block(&self, block: usize, single: bool) -> usize {
        if single {
            self.num_blocks + block
        } else {
            block
        }
    }

    fn index(&self, step: usize, gblock: usize, slot: usize) -> usize {
        (step * self.blocks_per_step() + gblock) * COMPONENTS_PER_BLOCK + slot
    }

    fn checked_index(&self, step: usize, block: usize, comp: Component) -> usize {
        assert!(
            comp.family() == self.family,
            "component `{comp}` does not belong to a {} schedule",
            self.family
        );
        let limit = if comp.is_single() {
            self.num_single_blocks
        } else {
            self.num_blocks
        };
        assert!(
            step < self.num_step_entries && block < limit,
            "step {step} block {block} `{comp}` out of range ({} step entries, {limit} blocks)",
            self.num_step_entries
        );
        self.index(
            step,
            self.global_block(block, comp.is_single()),
            comp.slot(),
        )
    }

    /// The model family.
    pub fn family(&self) -> ModelFamily {
        self.family
    }

    /// `num_inference_steps`: the number of denoising steps the schedule is for.
    pub fn num_inference_steps(&self) -> usize {
        self.num_inference_steps
    }

    /// The number of step entries in the `schedule` object (>= `num_inference_steps`).
    pub fn num_step_entries(&self) -> usize {
        self.num_step_entries
    }

    /// `num_blocks` (PixArt blocks or FLUX double blocks).
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// `num_single_blocks` (FLUX; 0 for PixArt).
    pub fn num_single_blocks(&self) -> usize {
        self.num_single_blocks
    }

    /// The raw bit: `true` = recompute at this step, `false` = reuse the cached output.
    /// `block` indexes single blocks when `comp` is a single-block component.
    ///
    /// Panics when the component is not of the schedule's family or the indices are out of
    /// range (check with [`Schedule::validate_for`] first).
    pub fn recompute(&self, step: usize, block: usize, comp: Component) -> bool {
        self.bits[self.checked_index(step, block, comp)]
    }

    /// Sets a bit (same indexing and panics as [`Schedule::recompute`]).
    pub fn set(&mut self, step: usize, block: usize, comp: Component, recompute: bool) {
        let i = self.checked_index(step, block, comp);
        self.bits[i] = recompute;
    }

    /// Whether ECAD actually computes the component at this step:
    /// - step 0 always computes (the cache is empty, whatever the bit says);
    /// - `attn2` of a block whose `custom_compute_attn` is T-GATE with gate step m is never
    ///   computed from step m on (the cached average is used);
    /// - otherwise the bit decides.
    pub fn effective_recompute(&self, step: usize, block: usize, comp: Component) -> bool {
        let bit = self.recompute(step, block, comp);
        if comp == Component::Attn2 {
            if let Some(CustomFunction::AttnTgate { gate_step }) =
                self.custom_compute_attn(step, block)
            {
                if step >= gate_step {
                    return false;
                }
            }
        }
        step == 0 || bit
    }

    /// The block's `custom_compute_attn` at this step, if any.
    pub fn custom_compute_attn(&self, step: usize, block: usize) -> Option<CustomFunction> {
        self.custom
            .get(&(step, block))
            .and_then(|c| c.attn.as_ref())
            .map(|s| s.function)
    }

    /// The block's `custom_compute_ff` at this step, if any.
    pub fn custom_compute_ff(&self, step: usize, block: usize) -> Option<CustomFunction> {
        self.custom
            .get(&(step, block))
            .and_then(|c| c.ff.as_ref())
            .map(|s| s.function)
    }

    /// Sets or clears a block's `custom_compute_attn` (PixArt only; panics otherwise, or when
    /// out of range, or when given a feed-forward function).
    pub fn set_custom_compute_attn(
        &mut self,
        step: usize,
        block: usize,
        f: Option<CustomFunction>,
    ) {
        assert!(
            self.family == ModelFamily::PixArt,
            "custom functions are PixArt-only"
        );
        assert!(
            step < self.num_step_entries && block < self.num_blocks,
            "out of range"
        );
        assert!(
            !matches!(f, Some(CustomFunction::FfCached)),
            "compute_ff_cached is not an attention function"
        );
        let e = self.custom.entry((step, block)).or_default();
        e.attn = f.map(CustomSpec::new);
        if e.is_empty() {
            self.custom.remove(&(step, block));
        }
    }

    /// Sets or clears a block's `custom_compute_ff` (PixArt only; panics otherwise).
    pub fn set_custom_compute_ff(&mut self, step: usize, block: usize, f: Option<CustomFunction>) {
        assert!(
            self.family == ModelFamily::PixArt,
            "custom functions are PixArt-only"
        );
        assert!(
            step < self.num_step_entries && block < self.num_blocks,
            "out of range"
        );
        assert!(
            matches!(f, None | Some(CustomFunction::FfCached)),
            "only compute_ff_cached is a feed-forward function"
        );
        let e = self.custom.entry((step, block)).or_default();
        e.ff = f.map(CustomSpec::new);
        if e.is_empty() {
            self.custom.remove(&(step, block));
        }
    }

    /// Whether any block uses a custom function.
    pub fn has_custom_functions(&self) -> bool {
        !self.custom.is_empty()
    }

    /// Refuses a schedule that does not fit the model: family (component names), step count
    /// (`num_inference_steps` vs `steps`), block count, single-block count.
    pub fn validate_for(
        &self,
        steps: usize,
        blocks: usize,
        single_blocks: usize,
        family: ModelFamily,
    ) -> Result<()> {
        if self.family != family {
            return Err(ScheduleError::FamilyMismatch {
                schedule: self.family,
                schedule_components: self.family.component_list(),
                model: family,
                model_components: family.component_list(),
            });
        }
        if self.num_inference_steps != steps {
            return Err(ScheduleError::StepsMismatch {
                schedule: self.num_inference_steps,
                expected: steps,
            });
        }
        if self.num_blocks != blocks {
            return Err(ScheduleError::BlocksMismatch {
                schedule: self.num_blocks,
                expected: blocks,
            });
        }
        if self.num_single_blocks != single_blocks {
            return Err(ScheduleError::SingleBlocksMismatch {
                schedule: self.num_single_blocks,
                expected: single_blocks,
            });
        }
        if let Some(rp) = &self.runtime {
            rp.check_fits(blocks + single_blocks)
                .map_err(|msg| ScheduleError::invalid("runtime policy", msg))?;
        }
        Ok(())
    }
}

/// Refuses a schedule whose step or block counts exceed [`limits::STEPS`] and
/// [`limits::LAYERS`] (double and single blocks together), before its bits are allocated.
pub(crate) fn check_size(steps: usize, blocks: usize, single_blocks: usize) -> Result<()> {
    let over = |at: &str, e: limits::OverLimit| ScheduleError::invalid(at, e.to_string());
    limits::STEPS
        .check("num_inference_steps", steps as u128)
        .map_err(|e| over("cache_schedule.num_inference_steps", e))?;
    limits::LAYERS
        .check("num_blocks", blocks as u128)
        .map_err(|e| over("cache_schedule.num_blocks", e))?;
    limits::LAYERS
        .check("num_single_blocks", single_blocks as u128)
        .map_err(|e| over("cache_schedule.num_single_blocks", e))?;
    limits::LAYERS
        .check(
            "num_blocks + num_single_blocks",
            blocks as u128 + single_blocks as u128,
        )
        .map_err(|e| over("cache_schedule", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixart_json(step_count: usize, blocks: usize, patch: impl Fn(&mut Value)) -> String {
        let s =
            Schedule::new_filled(ModelFamily::PixArt, step_count, blocks, 0, "t", true).unwrap();
        let mut v = s.to_value();
        patch(&mut v);
        v.to_string()
    }

    fn err(text: &str) -> String {
        Schedule::from_json_str(text).unwrap_err().to_string()
    }

    #[test]
    fn hostile_counts_are_refused_before_allocating() {
        let t = pixart_json(2, 2, |v| {
            v["cache_schedule"]["num_inference_steps"] = Value::from(1u64 << 40);
        });
        let e = err(&t);
        assert!(
            e.contains("num_inference_steps") && e.contains("1000"),
            "{e}"
        );
        let t = pixart_json(2, 2, |v| {
            v["cache_schedule"]["num_blocks"] = Value::from(1u64 << 40);
        });
        assert!(err(&t).contains("num_blocks"), "{}", err(&t));
        let t = pixart_json(2, 2, |v| {
            v["cache_schedule"]["num_blocks"] = Value::from(u64::MAX);
        });
        assert!(err(&t).contains("num_blocks"), "{}", err(&t));
        let f = Schedule::new_filled(ModelFamily::Flux, 2, 2, 2, "f", true).unwrap();
        let mut v = f.to_value();
        v["cache_schedule"]["num_single_blocks"] = Value::from(u64::MAX);
        assert!(err(&v.to_string()).contains("num_single_blocks"));
        assert!(Schedule::new_filled(ModelFamily::Flux, 4, usize::MAX, 1, "x", true).is_err());
        assert!(Schedule::new_filled(ModelFamily::PixArt, 1000, 512, 0, "x", true).is_ok());
        assert!(Schedule::new_filled(ModelFamily::PixArt, 1001, 28, 0, "x", true).is_err());
    }

    #[test]
    fn error_missing_component() {
        let t = pixart_json(8, 13, |v| {
            v["cache_schedule"]["schedule"]["007"]["12"]
                .as_object_mut()
                .unwrap()
                .remove("ff");
        });
        assert_eq!(err(&t), "step 007 block 12: missing component `ff`");
    }

    #[test]
    fn error_unknown_component() {
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["001"]["2"]["attn3"] = Value::Bool(true);
        });
        let e = err(&t);
        assert!(
            e.starts_with("step 001 block 2: unknown component `attn3`"),
            "{e}"
        );
        assert!(e.contains("attn1, attn2, ff"), "{e}");
    }

    #[test]
    fn error_not_json() {
        let e = err("{ not json");
        assert!(e.starts_with("not JSON: "), "{e}");
    }

    #[test]
    fn error_bad_bit_and_missing_block_and_step() {
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["001"]["2"]["ff"] = Value::from(1);
        });
        assert_eq!(
            err(&t),
            "step 001 block 2 component `ff`: expected true or false, found 1"
        );
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["001"]
                .as_object_mut()
                .unwrap()
                .remove("1");
        });
        assert_eq!(err(&t), "step 001: missing block 1");
        let t = pixart_json(3, 3, |v| {
            v["cache_schedule"]["num_inference_steps"] = Value::from(4);
        });
        assert_eq!(
            err(&t),
            "cache_schedule.schedule: missing step `003` (num_inference_steps is 4)"
        );
        let t = pixart_json(3, 3, |v| {
            v["cache_schedule"]["schedule"]["000"]["3"] =
                v["cache_schedule"]["schedule"]["000"]["2"].clone();
        });
        assert_eq!(err(&t), "step 000: block `3` out of range (num_blocks = 3)");
    }

    #[test]
    fn error_unknown_function() {
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["000"]["1"]["custom_compute_attn"] =
                serde_json::json!({"name": "compute_attn_magic", "kwargs": {}});
        });
        assert_eq!(
            err(&t),
            "step 000 block 1: unknown custom function `compute_attn_magic` in \
             `custom_compute_attn` (known: compute_attn_tgate, compute_attn_cached)"
        );
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["000"]["1"]["custom_compute_attn"] =
                serde_json::json!({"name": "compute_attn_tgate", "kwargs": {}});
        });
        assert_eq!(
            err(&t),
            "step 000 block 1 `custom_compute_attn`: `compute_attn_tgate` needs kwargs.gate_step"
        );
        let t = pixart_json(2, 3, |v| {
            v["cache_schedule"]["schedule"]["000"]["1"]["custom_compute_attn"] =
                serde_json::json!({"name": "compute_attn_tgate", "kwargs": {"gate_step": 0}});
        });
        assert!(err(&t).contains("gate_step must be an integer >= 1"));
    }

    #[test]
    fn flux_errors() {
        let f = Schedule::new_filled(ModelFamily::Flux, 2, 2, 2, "f", true).unwrap();
        let mut v = f.to_value();
        v["cache_schedule"]["schedule"]["001"]["1"]["single_attn"] = Value::Bool(true);
        let e = err(&v.to_string());
        assert_eq!(
            e,
            "step 001 block 1: unknown component `single_attn` (expected FLUX double-block \
             components: full_attn, full_ff, full_ff_context)"
        );
        let mut v = f.to_value();
        v["cache_schedule"]["schedule"]["000"]["single_1"]["custom_compute_attn"] =
            serde_json::json!({"name": "compute_attn_tgate", "kwargs": {"gate_step": 1}});
        assert_eq!(
            err(&v.to_string()),
            "step 000 block single_1: `custom_compute_attn`: custom compute functions exist for \
             PixArt only"
        );
        let mut v = f.to_value();
        v["cache_schedule"]
            .as_object_mut()
            .unwrap()
            .remove("num_single_blocks");
        assert_eq!(
            err(&v.to_string()),
            "cache_schedule: missing `num_single_blocks` (required for FLUX schedules)"
        );
        let t = pixart_json(1, 2, |v| {
            v["cache_schedule"]["schedule"]["000"]["single_0"] =
                v["cache_schedule"]["schedule"]["000"]["0"].clone();
        });
        assert_eq!(
            err(&t),
            "step 000: unknown block `single_0` (PixArt block keys are \"0\"..\"1\")"
        );
    }

    #[test]
    fn error_from_path_names_file() {
        let e = Schedule::from_path("/nonexistent/x.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read schedule /nonexistent/x.json"),
            "{e}"
        );
    }

    #[test]
    fn validate_messages() {
        let s = Schedule::new_filled(ModelFamily::PixArt, 20, 28, 0, "t", true).unwrap();
        assert!(s.validate_for(20, 28, 0, ModelFamily::PixArt).is_ok());
        assert_eq!(
            s.validate_for(25, 28, 0, ModelFamily::PixArt)
                .unwrap_err()
                .to_string(),
            "schedule has 20 steps (num_inference_steps) but --steps is 25"
        );
        assert_eq!(
            s.validate_for(20, 24, 0, ModelFamily::PixArt)
                .unwrap_err()
                .to_string(),
            "schedule has 28 blocks (num_blocks) but the model has 24"
        );
        let e = s
            .validate_for(20, 28, 0, ModelFamily::Flux)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "schedule is a PixArt schedule (components attn1, attn2, ff) but the model is FLUX"
            ),
            "{e}"
        );
        let f = Schedule::new_filled(ModelFamily::Flux, 20, 19, 38, "t", true).unwrap();
        assert_eq!(
            f.validate_for(20, 19, 20, ModelFamily::Flux)
                .unwrap_err()
                .to_string(),
            "schedule has 38 single blocks (num_single_blocks) but the model has 20"
        );
    }

    #[test]
    fn genome_roundtrip_and_order() {
        let mut s = Schedule::new_filled(ModelFamily::Flux, 2, 2, 3, "g", true).unwrap();
        s.set(1, 0, Component::FullFf, false);
        s.set(1, 2, Component::SingleProjOut, false);
        let g = s.to_genome();
        assert_eq!(g.len(), 2 * 5 * 3);
        // step 1 starts at 15; full block 0 ff is slot 1
        assert!(!g[15 + 1]);
        // single block 2 = global block 4 -> 15 + 4*3 + 2
        assert!(!g[15 + 14]);
        assert_eq!(g.iter().filter(|b| !**b).count(), 2);
        let t = Schedule::from_genome(ModelFamily::Flux, 2, 2, 3, &g, "g").unwrap();
        assert_eq!(t.to_genome(), g);
        assert_eq!(
            serde_json::Value::Object(t.attributes.clone()),
            serde_json::json!({"num_affected_steps": 1, "num_affected_blocks": 1,
                "num_affected_blocks_single": 1, "total_num_affected_blocks": 2})
        );
        let e = Schedule::from_genome(ModelFamily::Flux, 2, 2, 3, &g[1..], "g").unwrap_err();
        assert_eq!(
            e.to_string(),
            "genome has 29 bits but FLUX with 2 steps, 2 blocks and 3 single blocks needs 30"
        );
    }

    #[test]
    fn effective_recompute_step0_and_tgate() {
        let mut s = Schedule::new_filled(ModelFamily::PixArt, 4, 1, 0, "t", false).unwrap();
        assert!(s.effective_recompute(0, 0, Component::Attn1));
        assert!(!s.effective_recompute(1, 0, Component::Attn1));
        for step in 0..4 {
            s.set(step, 0, Component::Attn2, true);
            s.set_custom_compute_attn(step, 0, Some(CustomFunction::AttnTgate { gate_step: 2 }));
        }
        assert!(s.effective_recompute(1, 0, Component::Attn2));
        assert!(!s.effective_recompute(2, 0, Component::Attn2));
        let back = Schedule::from_json_str(&s.to_json_string()).unwrap();
        assert_eq!(back.to_value(), s.to_value());
        assert_eq!(
            back.custom_compute_attn(3, 0),
            Some(CustomFunction::AttnTgate { gate_step: 2 })
        );
    }
}
