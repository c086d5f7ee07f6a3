//! A schedule as the genetic algorithm's genome (ECAD's bit order) and back.

use super::error::Result;
use super::{ModelFamily, Schedule, ScheduleError, COMPONENTS_PER_BLOCK};
use serde_json::{Map, Value};

impl Schedule {
    /// The genome length ECAD's GA uses: `steps * (blocks + single_blocks) * 3`.
    pub fn genome_len(steps: usize, blocks: usize, single_blocks: usize) -> usize {
        // Saturating: the counts are bounded (`check_size`) wherever a schedule is built, and a
        // hostile count yields a length no genome has instead of an overflow.
        steps
            .saturating_mul(blocks.saturating_add(single_blocks))
            .saturating_mul(COMPONENTS_PER_BLOCK)
    }

    /// The GA genome in ECAD's order, over the first `num_inference_steps` steps: step-major;
    /// PixArt: per step the blocks, each `[attn1, attn2, ff]`; FLUX: per step the double blocks,
    /// each `[full_attn, full_ff, full_ff_context]`, then the single blocks, each
    /// `[single_attn, single_proj_mlp, single_proj_out]`. Custom functions are not part of it.
    pub fn to_genome(&self) -> Vec<bool> {
        let n = Schedule::genome_len(
            self.num_inference_steps,
            self.num_blocks,
            self.num_single_blocks,
        );
        self.bits[..n].to_vec()
    }

    /// Builds a schedule from a genome (the inverse of [`Schedule::to_genome`]), as ECAD's
    /// population manager writes a GA candidate: attributes are ECAD's
    /// `compute_additional_info` ([`Schedule::ecad_attributes`]), `config` is `{}` (ECAD copies
    /// the run's config there; set it if you have one), no metrics.
    pub fn from_genome(
        family: ModelFamily,
        steps: usize,
        blocks: usize,
        single_blocks: usize,
        genome: &[bool],
        name: impl Into<String>,
    ) -> Result<Schedule> {
        let expected = Schedule::genome_len(steps, blocks, single_blocks);
        if genome.len() != expected {
            return Err(ScheduleError::GenomeLength {
                got: genome.len(),
                expected,
                family,
                steps,
                blocks,
                single_blocks,
            });
        }
        let mut s = Schedule::new_filled(family, steps, blocks, single_blocks, name, true)?;
        s.bits.copy_from_slice(genome);
        s.attributes = s.ecad_attributes();
        s.config = Some(Value::Object(Map::new()));
        Ok(s)
    }
}
