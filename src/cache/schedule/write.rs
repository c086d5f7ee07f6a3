//! Writing a schedule back as ECAD's JSON (original key order, untouched sections kept) and
//! the attributes ECAD computes for it.

use super::parse::*;
use super::{Component, ModelFamily, Schedule, COMPONENTS_PER_BLOCK};
use serde_json::{Map, Value};

impl Schedule {
    /// ECAD's `compute_additional_info` for GA candidates, computed over the first
    /// `num_inference_steps` steps against the all-recompute default: PixArt
    /// `{num_affected_steps, num_affected_blocks, total_num_affected_blocks}`; FLUX
    /// `{num_affected_steps, num_affected_blocks, num_affected_blocks_single,
    /// total_num_affected_blocks}`. A block is affected when any bit is false or it has a
    /// custom function.
    pub fn ecad_attributes(&self) -> Map<String, Value> {
        let mut affected_steps = 0u64;
        let mut total = 0u64;
        let mut full = vec![false; self.num_blocks];
        let mut single = vec![false; self.num_single_blocks];
        for step in 0..self.num_inference_steps {
            let mut step_affected = false;
            for g in 0..self.blocks_per_step() {
                let i = self.index(step, g, 0);
                let mut affected = self.bits[i..i + COMPONENTS_PER_BLOCK].iter().any(|b| !b);
                if g < self.num_blocks && self.custom.contains_key(&(step, g)) {
                    affected = true;
                }
                if affected {
                    step_affected = true;
                    total += 1;
                    if g < self.num_blocks {
                        full[g] = true;
                    } else {
                        single[g - self.num_blocks] = true;
                    }
                }
            }
            affected_steps += u64::from(step_affected);
        }
        let count = |v: &[bool]| v.iter().filter(|&&b| b).count() as u64;
        let mut m = Map::new();
        m.insert("num_affected_steps".into(), affected_steps.into());
        m.insert("num_affected_blocks".into(), count(&full).into());
        if self.family == ModelFamily::Flux {
            m.insert("num_affected_blocks_single".into(), count(&single).into());
        }
        m.insert("total_num_affected_blocks".into(), total.into());
        m
    }

    /// Sets the preferred key order of the top level and of `cache_schedule` (used by the
    /// heuristic generators to reproduce ECAD's files byte for byte). Keys not listed are
    /// written after the listed ones, in canonical order.
    pub(crate) fn set_key_order(&mut self, top: &[&str], cache: &[&str]) {
        self.top_order = top.iter().map(|s| s.to_string()).collect();
        self.cache_order = cache.iter().map(|s| s.to_string()).collect();
    }

    fn schedule_value(&self) -> Value {
        let mut steps = Map::new();
        for step in 0..self.num_step_entries {
            let mut blocks = Map::new();
            for g in 0..self.blocks_per_step() {
                let single = g >= self.num_blocks;
                let (b, comps): (usize, &[Component]) = if single {
                    (g - self.num_blocks, self.family.single_block_components())
                } else {
                    (g, self.family.block_components())
                };
                let mut obj = Map::new();
                for c in comps {
                    obj.insert(
                        c.name().into(),
                        Value::Bool(self.bits[self.index(step, g, c.slot())]),
                    );
                }
                if !single {
                    if let Some(custom) = self.custom.get(&(step, b)) {
                        if let Some(a) = &custom.attn {
                            obj.insert(KEY_CUSTOM_ATTN.into(), a.raw.clone());
                        }
                        if let Some(f) = &custom.ff {
                            obj.insert(KEY_CUSTOM_FF.into(), f.raw.clone());
                        }
                    }
                }
                blocks.insert(block_label(b, single), Value::Object(obj));
            }
            steps.insert(step_key(step), Value::Object(blocks));
        }
        Value::Object(steps)
    }

    fn cache_schedule_value(&self) -> Value {
        let mut canonical = vec![
            KEY_NUM_BLOCKS,
            KEY_NUM_STEPS,
            KEY_NAME,
            KEY_ATTRIBUTES,
            KEY_SCHEDULE,
        ];
        if self.family == ModelFamily::Flux {
            canonical.push(KEY_NUM_SINGLE);
        }
        let value_of = |k: &str| -> Option<Value> {
            match k {
                KEY_NUM_BLOCKS => Some(Value::from(self.num_blocks as u64)),
                KEY_NUM_STEPS => Some(Value::from(self.num_inference_steps as u64)),
                KEY_NAME => Some(Value::from(self.name.clone())),
                KEY_ATTRIBUTES => Some(Value::Object(self.attributes.clone())),
                KEY_SCHEDULE => Some(self.schedule_value()),
                KEY_NUM_SINGLE if self.family == ModelFamily::Flux => {
                    Some(Value::from(self.num_single_blocks as u64))
                }
                other => self.cache_extra.get(other).cloned(),
            }
        };
        let mut m = Map::new();
        for k in &self.cache_order {
            if let Some(v) = value_of(k) {
                m.insert(k.clone(), v);
            }
        }
        for k in canonical {
            if !m.contains_key(k) {
                // attributes are always written (ECAD always writes them).
                if let Some(v) = value_of(k) {
                    m.insert(k.to_string(), v);
                }
            }
        }
        for (k, v) in &self.cache_extra {
            if !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// The whole document as JSON.
    pub fn to_value(&self) -> Value {
        let value_of = |k: &str| -> Option<Value> {
            match k {
                KEY_CACHE_SCHEDULE => Some(self.cache_schedule_value()),
                KEY_CONFIG => self.config.clone(),
                KEY_METRICS => self.metrics.clone(),
                other => self.top_extra.get(other).cloned(),
            }
        };
        let mut m = Map::new();
        for k in &self.top_order {
            if let Some(v) = value_of(k) {
                m.insert(k.clone(), v);
            }
        }
        for k in [KEY_CACHE_SCHEDULE, KEY_CONFIG, KEY_METRICS] {
            if !m.contains_key(k) {
                if let Some(v) = value_of(k) {
                    m.insert(k.to_string(), v);
                }
            }
        }
        for (k, v) in &self.top_extra {
            if !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// Pretty JSON with ECAD's 4-space indentation (`json.dump(data, f, indent=4)`).
    pub fn to_json_string(&self) -> String {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&self.to_value(), &mut ser)
            .expect("serializing a serde_json::Value cannot fail");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}
