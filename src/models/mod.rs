//! Models, written once against the [`Backend`] interface. Each module struct mirrors the
//! checkpoint: its fields are named after the tensor names they load.

pub mod clip;
pub mod embeddings;
pub mod flux;
pub mod pixart;
pub mod t5;
pub mod vae;

// Their home is `util`; kept here for the code and tests that name them `models::…`.
pub use crate::util::{randn, rel_l2};

use crate::backend::{Activation, BResult, Backend, Tensor};
use crate::weights::{WResult, WeightStore, WeightsError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Errors from building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("invalid input: {0}")]
    Input(String),
    /// The caller's progress callback asked to stop (after `step` of `steps`).
    #[error("cancelled by the caller after step {step} of {steps}")]
    Cancelled { step: usize, steps: usize },
}

pub type MResult<T> = Result<T, ModelError>;

/// Where weights come from: a checkpoint on disk, or seeded random values (the demo model).
pub trait TensorSource {
    /// Returns the tensor `name` as f32, which must have exactly `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> WResult<Vec<f32>>;
    /// Whether the source holds `name` (used for optional modules).
    fn has(&self, name: &str) -> bool;
}

impl TensorSource for WeightStore {
    fn tensor(&self, name: &str, shape: &[usize]) -> WResult<Vec<f32>> {
        self.get_f32(name, shape)
    }
    fn has(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// Seeded random weights: each tensor's values depend only on (seed, name), drawn from
/// N(0, 1)·scale with scale = 1/√fan_in for matrices (fan_in = product of all but dim 0) and a
/// fixed 0.2 for vectors, so activations stay O(1) and no tensor is zero.
pub struct RandomSource {
    pub seed: u64,
}

impl RandomSource {
    fn name_seed(&self, name: &str) -> u64 {
        // FNV-1a of the name, mixed with the seed: stable across platforms and versions.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

impl TensorSource for RandomSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> WResult<Vec<f32>> {
        let n: usize = shape.iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(self.name_seed(name));
        let scale = if shape.len() >= 2 {
            1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt()
        } else {
            0.2
        };
        Ok(randn(&mut rng, n).into_iter().map(|v| v * scale).collect())
    }
    fn has(&self, _name: &str) -> bool {
        true
    }
}

/// Loads `name` with `shape` onto the backend as a weight.
pub fn load<B: Backend>(
    be: &B,
    src: &dyn TensorSource,
    name: &str,
    shape: &[usize],
) -> MResult<Tensor<B>> {
    let data = src.tensor(name, shape)?;
    Ok(be.upload_weight(data, shape)?)
}

/// `nn.Linear`: `weight [out, in]`, optional `bias [out]`.
pub struct Linear<B: Backend> {
    pub weight: Tensor<B>,
    pub bias: Option<Tensor<B>>,
}

impl<B: Backend> Linear<B> {
    pub fn load(
        be: &B,
        src: &dyn TensorSource,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> MResult<Self> {
        Ok(Linear {
            weight: load(be, src, &format!("{prefix}.weight"), &[out_dim, in_dim])?,
            bias: if bias {
                Some(load(be, src, &format!("{prefix}.bias"), &[out_dim])?)
            } else {
                None
            },
        })
    }
    pub fn forward(&self, be: &B, x: &Tensor<B>) -> BResult<Tensor<B>> {
        be.linear(x, &self.weight, self.bias.as_ref(), Activation::None)
    }
    pub fn forward_act(&self, be: &B, x: &Tensor<B>, act: Activation) -> BResult<Tensor<B>> {
        be.linear(x, &self.weight, self.bias.as_ref(), act)
    }
    pub fn in_dim(&self) -> usize {
        self.weight.dim(1)
    }
    pub fn out_dim(&self) -> usize {
        self.weight.dim(0)
    }
}

/// `TimestepEmbedding` (also FLUX's `text_embedder`, a PixArtAlphaTextProjection with SiLU:
/// the same structure): `linear_1` → SiLU → `linear_2`.
pub struct TimestepEmbedding<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    pub fn load(be: &B, src: &dyn TensorSource, p: &str, i: usize, o: usize) -> MResult<Self> {
        Ok(TimestepEmbedding {
            linear_1: Linear::load(be, src, &format!("{p}.linear_1"), i, o, true)?,
            linear_2: Linear::load(be, src, &format!("{p}.linear_2"), o, o, true)?,
        })
    }
    pub fn forward(&self, be: &B, x: &Tensor<B>) -> BResult<Tensor<B>> {
        let h = self.linear_1.forward_act(be, x, Activation::Silu)?;
        self.linear_2.forward(be, &h)
    }
}
