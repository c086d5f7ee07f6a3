//! The calibration set: prompt embeddings × seeds, and the initial noise of every sample.
//!
//! Samples are numbered prompt-major: sample `i` is prompt `i / seeds_per_prompt` with seed
//! `i % seeds_per_prompt` (seeds are `0..seeds_per_prompt`, as ECAD's `--seed 0 --seed-step 1`).
//! The initial noise of (prompt `p`, seed `s`) is `randn(C·h·w)` (Box–Muller over ChaCha8,
//! [`crate::util::randn`]) from `ChaCha8Rng::seed_from_u64(s)` switched to stream `p`
//! (`set_stream(p)`): it depends on nothing else (not on batching, not on the other samples),
//! so every candidate sees exactly the same inputs.

use super::{SResult, SearchError};
use crate::util::{randn, Fnv};
use crate::weights::{read_inputs, HostTensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Seed of the demo calibration embeddings.
pub const DEMO_CALIBRATION_SEED: u64 = 0xCA1B;
/// Text tokens of the demo calibration prompts (PixArt-α's 120).
pub const DEMO_TEXT_LEN: usize = 120;

/// Prompt embeddings, one row per prompt.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub prompts: usize,
    pub text_len: usize,
    pub channels: usize,
    /// `[P, L, C]`
    pub prompt_embeds: Vec<f32>,
    /// `[P, L]`
    pub prompt_attention_mask: Vec<f32>,
    /// `[P, L, C]` (broadcast from `[1, L, C]` when the file has one row); `None` when absent.
    pub negative_prompt_embeds: Option<Vec<f32>>,
    /// `[P, L]`
    pub negative_prompt_attention_mask: Vec<f32>,
    /// `[P, D]`: the pooled text embedding (FLUX's CLIP output); `None` when absent.
    pub pooled_prompt_embeds: Option<Vec<f32>>,
    /// `D` of `pooled_prompt_embeds` (0 when absent).
    pub pooled_dim: usize,
    /// The prompt text of each row, when the set was encoded from a prompts file
    /// ([`Calibration::from_prompts`]); empty otherwise (the scorer of an image objective
    /// needs them).
    pub texts: Vec<String>,
    /// Content fingerprint (FNV-1a over shapes and values, and the texts when present).
    pub fingerprint: String,
    /// Where it came from, for logs.
    pub description: String,
}

fn bad(path: &Path, msg: impl Into<String>) -> SearchError {
    SearchError::Calibration {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

impl Calibration {
    /// The demo set: `prompts` seeded random prompt embeddings of [`DEMO_TEXT_LEN`] tokens
    /// (`ChaCha8Rng::seed_from_u64(DEMO_CALIBRATION_SEED)`, prompts in order, then one shared
    /// negative embedding; prompt `p` has `clamp(L/3 + 7p, 1, L)` valid tokens, the negative
    /// one).
    pub fn demo(channels: usize, prompts: usize) -> Self {
        let l = DEMO_TEXT_LEN;
        let mut rng = ChaCha8Rng::seed_from_u64(DEMO_CALIBRATION_SEED);
        let pe = randn(&mut rng, prompts * l * channels);
        let neg_row = randn(&mut rng, l * channels);
        let mut pm = vec![0f32; prompts * l];
        let mut nm = vec![0f32; prompts * l];
        for p in 0..prompts {
            let valid = (l / 3 + 7 * p).clamp(1, l);
            pm[p * l..p * l + valid].fill(1.0);
            nm[p * l] = 1.0;
        }
        let ne: Vec<f32> = (0..prompts).flat_map(|_| neg_row.iter().copied()).collect();
        let mut c = Calibration {
            prompts,
            text_len: l,
            channels,
            prompt_embeds: pe,
            prompt_attention_mask: pm,
            negative_prompt_embeds: Some(ne),
            negative_prompt_attention_mask: nm,
            pooled_prompt_embeds: None,
            pooled_dim: 0,
            texts: Vec::new(),
            fingerprint: String::new(),
            description: format!("demo: {prompts} seeded random prompt(s) × {l} tokens"),
        };
        c.fingerprint = c.compute_fingerprint();
        c
    }

    /// A set encoded from prompt texts by the pipeline's own text encoder(s): `embeds[p]` and
    /// `masks[p]` (`[L, C]`, `[L]`) per prompt; the negative prompt's (`""`, PixArt's CFG) once,
    /// shared by every row, or `None` (FLUX: no negative, masks all ones); `pooled[p]`
    /// (`[D]`, FLUX's CLIP pooled embedding) per prompt, or empty (PixArt). `source` names the
    /// prompts file.
    #[allow(clippy::too_many_arguments)]
    pub fn from_prompts(
        texts: Vec<String>,
        embeds: Vec<Vec<f32>>,
        masks: Vec<Vec<f32>>,
        negative: Option<(Vec<f32>, Vec<f32>)>,
        pooled: Vec<Vec<f32>>,
        text_len: usize,
        channels: usize,
        source: &str,
    ) -> SResult<Self> {
        let p = texts.len();
        let pooled_dim = pooled.first().map_or(0, Vec::len);
        let bad_shape = embeds.len() != p
            || masks.len() != p
            || embeds.iter().any(|e| e.len() != text_len * channels)
            || masks.iter().any(|m| m.len() != text_len)
            || negative
                .as_ref()
                .is_some_and(|n| n.0.len() != text_len * channels || n.1.len() != text_len)
            || !(pooled.is_empty() || (pooled.len() == p && pooled_dim > 0))
            || pooled.iter().any(|x| x.len() != pooled_dim);
        if p == 0 || bad_shape {
            return Err(SearchError::Settings(format!(
                "{source}: {p} prompt(s) encoded to inconsistent shapes"
            )));
        }
        let (negative_prompt_embeds, negative_prompt_attention_mask) = match negative {
            Some((ne, nm)) => (
                Some((0..p).flat_map(|_| ne.iter().copied()).collect()),
                (0..p).flat_map(|_| nm.iter().copied()).collect(),
            ),
            None => (None, vec![1.0; p * text_len]),
        };
        let mut c = Calibration {
            prompts: p,
            text_len,
            channels,
            prompt_embeds: embeds.concat(),
            prompt_attention_mask: masks.concat(),
            negative_prompt_embeds,
            negative_prompt_attention_mask,
            pooled_prompt_embeds: (pooled_dim > 0).then(|| pooled.concat()),
            pooled_dim,
            texts,
            fingerprint: String::new(),
            description: format!("{source}: {p} prompt(s) encoded by the pipeline's text encoder"),
        };
        c.fingerprint = c.compute_fingerprint();
        Ok(c)
    }

    /// The FLUX demo set: [`Calibration::demo`] with `text_len` tokens (all valid, as FLUX
    /// passes no mask) plus seeded random pooled embeddings `[P, pooled_dim]` drawn after
    /// everything else from the same stream.
    pub fn demo_flux(channels: usize, pooled_dim: usize, prompts: usize, text_len: usize) -> Self {
        let l = text_len.max(1);
        let mut rng = ChaCha8Rng::seed_from_u64(DEMO_CALIBRATION_SEED);
        let pe = randn(&mut rng, prompts * l * channels);
        let pooled = randn(&mut rng, prompts * pooled_dim);
        let mut c = Calibration {
            prompts,
            text_len: l,
            channels,
            prompt_embeds: pe,
            prompt_attention_mask: vec![1.0; prompts * l],
            negative_prompt_embeds: None,
            negative_prompt_attention_mask: vec![1.0; prompts * l],
            pooled_prompt_embeds: Some(pooled),
            pooled_dim,
            texts: Vec::new(),
            fingerprint: String::new(),
            description: format!(
                "demo: {prompts} seeded random prompt(s) × {l} tokens + pooled {pooled_dim}"
            ),
        };
        c.fingerprint = c.compute_fingerprint();
        c
    }

    /// Reads `prompt_embeds [P, L, C]`, `prompt_attention_mask [P, L]` (optional: all ones),
    /// `negative_prompt_embeds [P or 1, L, C]` (optional) and
    /// `negative_prompt_attention_mask [P or 1, L]` (optional: all ones) and
    /// `pooled_prompt_embeds [P, D]` (optional; FLUX needs it) from a safetensors file.
    pub fn from_file(path: &Path, channels: usize) -> SResult<Self> {
        let t = read_inputs(path).map_err(|e| bad(path, e.to_string()))?;
        let pe = t
            .get("prompt_embeds")
            .ok_or_else(|| bad(path, "no `prompt_embeds` tensor [P, L, C]"))?;
        if pe.shape.len() != 3 || pe.shape[2] != channels || pe.shape[0] == 0 || pe.shape[1] == 0 {
            return Err(bad(
                path,
                format!(
                    "`prompt_embeds` must be [P, L, {channels}] for this model, got {:?}",
                    pe.shape
                ),
            ));
        }
        let (p, l) = (pe.shape[0], pe.shape[1]);
        let mask = |name: &str| -> SResult<Vec<f32>> {
            match t.get(name) {
                None => Ok(vec![1.0; p * l]),
                Some(m) if m.shape == [p, l] => Ok(m.data.clone()),
                Some(m) if m.shape == [1, l] => {
                    Ok((0..p).flat_map(|_| m.data.iter().copied()).collect())
                }
                Some(m) => Err(bad(
                    path,
                    format!(
                        "`{name}` must be [{p}, {l}] (or [1, {l}]), got {:?}",
                        m.shape
                    ),
                )),
            }
        };
        let pm = mask("prompt_attention_mask")?;
        let nm = mask("negative_prompt_attention_mask")?;
        let ne = match t.get("negative_prompt_embeds") {
            None => None,
            Some(n) if n.shape == [p, l, channels] => Some(n.data.clone()),
            Some(n) if n.shape == [1, l, channels] => {
                Some((0..p).flat_map(|_| n.data.iter().copied()).collect())
            }
            Some(n) => {
                return Err(bad(
                    path,
                    format!(
                        "`negative_prompt_embeds` must be [{p}, {l}, {channels}] (or [1, {l}, {channels}]), got {:?}",
                        n.shape
                    ),
                ))
            }
        };
        let (pooled, pooled_dim) = match t.get("pooled_prompt_embeds") {
            None => (None, 0),
            Some(x) if x.shape.len() == 2 && x.shape[0] == p && x.shape[1] > 0 => {
                (Some(x.data.clone()), x.shape[1])
            }
            Some(x) => {
                return Err(bad(
                    path,
                    format!("`pooled_prompt_embeds` must be [{p}, D], got {:?}", x.shape),
                ))
            }
        };
        let mut c = Calibration {
            prompts: p,
            text_len: l,
            channels,
            prompt_embeds: pe.data.clone(),
            prompt_attention_mask: pm,
            negative_prompt_embeds: ne,
            negative_prompt_attention_mask: nm,
            pooled_prompt_embeds: pooled,
            pooled_dim,
            texts: Vec::new(),
            fingerprint: String::new(),
            description: format!("{p} prompt(s) × {l} tokens from file"),
        };
        c.fingerprint = c.compute_fingerprint();
        Ok(c)
    }

    fn compute_fingerprint(&self) -> String {
        let mut h = Fnv::default();
        for d in [self.prompts, self.text_len, self.channels] {
            h.update(&(d as u64).to_le_bytes());
        }
        let mut put = |v: &[f32]| {
            for x in v {
                h.update(&x.to_bits().to_le_bytes());
            }
        };
        put(&self.prompt_embeds);
        put(&self.prompt_attention_mask);
        if let Some(n) = &self.negative_prompt_embeds {
            put(n);
        }
        put(&self.negative_prompt_attention_mask);
        if let Some(p) = &self.pooled_prompt_embeds {
            put(p);
        }
        for t in &self.texts {
            h.update(&(t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        h.hex()
    }
}

/// The calibration set expanded to samples: prompts × seeds at one latent size.
#[derive(Clone, Debug)]
pub struct SampleSet {
    pub calibration: Calibration,
    pub seeds_per_prompt: usize,
    /// Latent `(channels, height, width)`.
    pub latent: (usize, usize, usize),
    /// Hand latents over packed into 2×2 patches `[N, 4C]` (FLUX), not `[C, h, w]`.
    pub packed: bool,
}

/// The inputs of one batch of samples.
pub struct BatchInputs {
    pub latents: HostTensor,
    pub prompt_embeds: HostTensor,
    pub prompt_attention_mask: HostTensor,
    pub negative_prompt_embeds: Option<HostTensor>,
    pub negative_prompt_attention_mask: HostTensor,
    pub pooled_prompt_embeds: Option<HostTensor>,
}

impl SampleSet {
    pub fn len(&self) -> usize {
        self.calibration.prompts * self.seeds_per_prompt
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(prompt, seed)` of sample `i`.
    pub fn sample(&self, i: usize) -> (usize, usize) {
        (i / self.seeds_per_prompt, i % self.seeds_per_prompt)
    }

    /// The initial noise of (prompt, seed), `C·h·w` values (see the module docs).
    pub fn noise(&self, prompt: usize, seed: usize) -> Vec<f32> {
        let (c, h, w) = self.latent;
        let mut rng = ChaCha8Rng::seed_from_u64(seed as u64);
        rng.set_stream(prompt as u64);
        randn(&mut rng, c * h * w)
    }

    /// The inputs of samples `start..start + len`.
    pub fn batch(&self, start: usize, len: usize) -> BatchInputs {
        let cal = &self.calibration;
        let (l, ch) = (cal.text_len, cal.channels);
        let (c, h, w) = self.latent;
        let mut lat = Vec::with_capacity(len * c * h * w);
        let mut pe = Vec::with_capacity(len * l * ch);
        let mut pm = Vec::with_capacity(len * l);
        let mut ne = Vec::with_capacity(len * l * ch);
        let mut nm = Vec::with_capacity(len * l);
        let pd = cal.pooled_dim;
        let mut pooled = Vec::with_capacity(len * pd);
        for i in start..start + len {
            let (p, s) = self.sample(i);
            let noise = self.noise(p, s);
            if self.packed {
                lat.extend(crate::pipeline::flux::pack_latents(&noise, 1, c, h, w));
            } else {
                lat.extend(noise);
            }
            if let Some(x) = &cal.pooled_prompt_embeds {
                pooled.extend_from_slice(&x[p * pd..(p + 1) * pd]);
            }
            pe.extend_from_slice(&cal.prompt_embeds[p * l * ch..(p + 1) * l * ch]);
            pm.extend_from_slice(&cal.prompt_attention_mask[p * l..(p + 1) * l]);
            if let Some(n) = &cal.negative_prompt_embeds {
                ne.extend_from_slice(&n[p * l * ch..(p + 1) * l * ch]);
            }
            nm.extend_from_slice(&cal.negative_prompt_attention_mask[p * l..(p + 1) * l]);
        }
        BatchInputs {
            latents: HostTensor {
                shape: if self.packed {
                    vec![len, (h / 2) * (w / 2), 4 * c]
                } else {
                    vec![len, c, h, w]
                },
                data: lat,
            },
            pooled_prompt_embeds: cal.pooled_prompt_embeds.as_ref().map(|_| HostTensor {
                shape: vec![len, pd],
                data: pooled,
            }),
            prompt_embeds: HostTensor {
                shape: vec![len, l, ch],
                data: pe,
            },
            prompt_attention_mask: HostTensor {
                shape: vec![len, l],
                data: pm,
            },
            negative_prompt_embeds: cal.negative_prompt_embeds.as_ref().map(|_| HostTensor {
                shape: vec![len, l, ch],
                data: ne,
            }),
            negative_prompt_attention_mask: HostTensor {
                shape: vec![len, l],
                data: nm,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_depends_only_on_prompt_and_seed() {
        let s = SampleSet {
            calibration: Calibration::demo(8, 3),
            seeds_per_prompt: 2,
            latent: (4, 4, 4),
            packed: false,
        };
        assert_eq!(s.len(), 6);
        assert_eq!(s.sample(3), (1, 1));
        let all = s.batch(0, 6);
        let part = s.batch(3, 2);
        let n = 4 * 4 * 4;
        assert_eq!(&all.latents.data[3 * n..5 * n], &part.latents.data[..]);
        assert_ne!(s.noise(0, 1), s.noise(1, 0));
        assert_eq!(s.noise(2, 1), s.noise(2, 1));
        // the documented recipe
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        rng.set_stream(2);
        assert_eq!(s.noise(2, 1), randn(&mut rng, n));
        // prompt rows follow the sample's prompt
        let l = DEMO_TEXT_LEN * 8;
        assert_eq!(
            &part.prompt_embeds.data[..l],
            &s.calibration.prompt_embeds[l..2 * l]
        );
    }

    #[test]
    fn demo_is_deterministic() {
        let a = Calibration::demo(16, 2);
        let b = Calibration::demo(16, 2);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, Calibration::demo(16, 3).fingerprint);
    }
}
