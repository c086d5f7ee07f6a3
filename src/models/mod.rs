//! Models, written once against the [`Backend`] interface. Each module struct mirrors the
//! checkpoint: its fields are named after the tensor names they load.

pub mod clip;
pub mod clip_vision;
pub mod embeddings;
pub mod flux;
pub mod image_reward;
pub mod pixart;
pub mod t5;
pub mod vae;

// Their home is `util`; kept here for the code and tests that name them `models::…`.
pub use crate::util::{randn, rel_l2};

use crate::backend::shapes::ShapeOnly;
use crate::backend::{checked_numel, Activation, BResult, Backend, Tensor, WeightView};
use crate::weights::{WResult, WeightStore, WeightsError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;

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
    /// The sampler's latents hold NaN or an infinity after `step` of `steps` (inputs or a
    /// guidance scale beyond what the model's arithmetic holds).
    #[error("the latents became non-finite (NaN or inf) at step {step} of {steps}; the inputs or the guidance are too large for the model")]
    NonFinite { step: usize, steps: usize },
}

pub type MResult<T> = Result<T, ModelError>;

/// Where weights come from: a checkpoint on disk, or seeded random values (the demo model).
pub trait TensorSource {
    /// The tensor `name`, which must have exactly `shape`, as stored (borrowed bytes of its
    /// dtype where the source holds them, else f32 values).
    fn view(&self, name: &str, shape: &[usize]) -> WResult<WeightView<'_>>;
    /// Whether the source holds `name` (used for optional modules).
    fn has(&self, name: &str) -> bool;
    /// The tensor `name` as f32, which must have exactly `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> WResult<Vec<f32>> {
        Ok(self.view(name, shape)?.into_f32())
    }
}

impl TensorSource for WeightStore {
    fn view(&self, name: &str, shape: &[usize]) -> WResult<WeightView<'_>> {
        self.get_view(name, shape)
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

    /// The values of tensor `name` with `shape`.
    fn values(&self, name: &str, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(self.name_seed(name));
        let scale = if shape.len() >= 2 {
            1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt()
        } else {
            0.2
        };
        randn(&mut rng, n).into_iter().map(|v| v * scale).collect()
    }
}

impl TensorSource for RandomSource {
    fn view(&self, name: &str, shape: &[usize]) -> WResult<WeightView<'_>> {
        Ok(WeightView::F32(self.values(name, shape)))
    }
    fn has(&self, _name: &str) -> bool {
        true
    }
}

/// A scoped view of a [`TensorSource`] on a backend: the checkpoint path prefix the module
/// being loaded lives under. Loaders push one path segment per module (`vb.pp("attn1")`,
/// `vb.pp("transformer_blocks").pp(i)`) and name each tensor once, relative to it
/// (`vb.get(&[d], "weight")`), so every checkpoint name is spelled in exactly one place.
pub struct Vb<'a, B: Backend> {
    be: &'a B,
    src: &'a dyn TensorSource,
    prefix: String,
}

impl<B: Backend> Clone for Vb<'_, B> {
    fn clone(&self) -> Self {
        Vb {
            be: self.be,
            src: self.src,
            prefix: self.prefix.clone(),
        }
    }
}

impl<'a, B: Backend> Vb<'a, B> {
    /// The root scope (empty prefix).
    pub fn new(be: &'a B, src: &'a dyn TensorSource) -> Self {
        Vb {
            be,
            src,
            prefix: String::new(),
        }
    }

    /// The scope one path segment deeper: `pp("to_out").pp(0)` is `{prefix}.to_out.0`.
    pub fn pp(&self, segment: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            segment.to_string()
        } else {
            format!("{}.{segment}", self.prefix)
        };
        Vb {
            be: self.be,
            src: self.src,
            prefix,
        }
    }

    /// The scope's prefix (`""` at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full checkpoint name of `name` in this scope.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn backend(&self) -> &'a B {
        self.be
    }

    /// Whether the source holds `name` in this scope (optional or alternatively named tensors).
    pub fn contains(&self, name: &str) -> bool {
        self.src.has(&self.path(name))
    }

    /// Loads the weight `name` of this scope, which must have exactly `shape`, onto the backend.
    /// A missing or mis-shaped tensor is reported with its full name.
    pub fn get(&self, shape: &[usize], name: &str) -> MResult<Tensor<B>> {
        let view = self.src.view(&self.path(name), shape)?;
        Ok(self.be.upload_weight_raw(view, shape)?)
    }

    /// Like [`Vb::get`], also accepting the tensor stored with the shape `stored_alt` (the same
    /// elements in the same order, e.g. a `[c, c, 1, 1]` convolution holding a `[c, c]` linear);
    /// the tensor is `shape` either way.
    pub fn get_reshaped(
        &self,
        shape: &[usize],
        stored_alt: &[usize],
        name: &str,
    ) -> MResult<Tensor<B>> {
        let path = self.path(name);
        let view = match self.src.view(&path, shape) {
            Err(WeightsError::ShapeMismatch { actual, .. })
                if actual == stored_alt && checked_numel(&actual) == checked_numel(shape) =>
            {
                self.src.view(&path, stored_alt)?
            }
            r => r?,
        };
        Ok(self.be.upload_weight_raw(view, shape)?)
    }

    /// Reads the tensor `name` of this scope to the host as f32 (tables used on the host).
    pub fn get_host(&self, shape: &[usize], name: &str) -> MResult<Vec<f32>> {
        Ok(self.src.tensor(&self.path(name), shape)?)
    }
}

/// A tensor source that serves no data: it answers every request with an empty tensor and
/// records `(name, shape)` in request order. Paired with the shape-only backend
/// ([`ShapeOnly`]) it turns a model loader into the list of tensors a config implies
/// ([`record_tensors`]), so that list is never written by hand.
pub struct Recorder {
    present: Vec<String>,
    seen: RefCell<Vec<(String, Vec<usize>)>>,
}

impl Recorder {
    /// `present`: the names [`TensorSource::has`] answers true for (optional or alternatively
    /// named tensors the loader probes); every other probe answers false.
    pub fn new(present: &[&str]) -> Self {
        Recorder {
            present: present.iter().map(|s| s.to_string()).collect(),
            seen: RefCell::new(Vec::new()),
        }
    }
    /// The requests so far, in order.
    pub fn into_tensors(self) -> Vec<(String, Vec<usize>)> {
        self.seen.into_inner()
    }
}

impl TensorSource for Recorder {
    /// Records the request; the (empty) data is for the shape-only backend, which ignores it.
    fn view(&self, name: &str, shape: &[usize]) -> WResult<WeightView<'_>> {
        self.seen
            .borrow_mut()
            .push((name.to_string(), shape.to_vec()));
        Ok(WeightView::F32(Vec::new()))
    }
    fn has(&self, name: &str) -> bool {
        self.present.iter().any(|p| p == name)
    }
}

/// The `(name, shape)` list, in load order, of the tensors `load` reads, found by running it on
/// the shape-only backend with a [`Recorder`] (no weight is read or allocated). `present` are
/// the names the loader's probes find. A loader on this pair fails only on its own validation;
/// the list is then what it read up to that point.
pub fn record_tensors(
    present: &[&str],
    load: impl FnOnce(&Vb<'_, ShapeOnly>) -> MResult<()>,
) -> Vec<(String, Vec<usize>)> {
    let rec = Recorder::new(present);
    let result = load(&Vb::new(&ShapeOnly, &rec));
    debug_assert!(result.is_ok(), "a recording load failed: {result:?}");
    rec.into_tensors()
}

/// `nn.Linear`: `weight [out, in]`, optional `bias [out]`.
pub struct Linear<B: Backend> {
    pub weight: Tensor<B>,
    pub bias: Option<Tensor<B>>,
}

impl<B: Backend> Linear<B> {
    /// Loads `weight [out, in]` (and `bias [out]` when `bias`) of the scope `vb`.
    pub fn load(vb: &Vb<'_, B>, in_dim: usize, out_dim: usize, bias: bool) -> MResult<Self> {
        Ok(Linear {
            weight: vb.get(&[out_dim, in_dim], "weight")?,
            bias: if bias {
                Some(vb.get(&[out_dim], "bias")?)
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
    pub fn load(vb: &Vb<'_, B>, i: usize, o: usize) -> MResult<Self> {
        Ok(TimestepEmbedding {
            linear_1: Linear::load(&vb.pp("linear_1"), i, o, true)?,
            linear_2: Linear::load(&vb.pp("linear_2"), o, o, true)?,
        })
    }
    pub fn forward(&self, be: &B, x: &Tensor<B>) -> BResult<Tensor<B>> {
        let h = self.linear_1.forward_act(be, x, Activation::Silu)?;
        self.linear_2.forward(be, &h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::WeightDtype;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    /// A checkpoint with one tensor per stored dtype loads through `Vb` exactly as the f32
    /// values `get_f32` reads, and a missing or mis-shaped tensor is named with its full path.
    #[test]
    fn typed_views_load_what_get_f32_reads() {
        let vals = [1.5f32, -0.333, 65504.0, 1e-3, 7.0, -2.25];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bf16b: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        let f16b: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let views = vec![
            (
                "m.a.weight",
                TensorView::new(Dtype::F32, vec![2, 3], &f32b).unwrap(),
            ),
            (
                "m.b.weight",
                TensorView::new(Dtype::BF16, vec![2, 3], &bf16b).unwrap(),
            ),
            (
                "m.c.weight",
                TensorView::new(Dtype::F16, vec![6, 1, 1], &f16b).unwrap(),
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
        let store = WeightStore::open_files(dir.path(), std::slice::from_ref(&path)).unwrap();
        let be = CpuBackend::default();
        let vb = Vb::new(&be, &store).pp("m");
        for (seg, dtype) in [("a", WeightDtype::F32), ("b", WeightDtype::Bf16)] {
            let t = vb.pp(seg).get(&[2, 3], "weight").unwrap();
            let name = format!("m.{seg}.weight");
            let want = store.get_f32(&name, &[2, 3]).unwrap();
            assert_eq!(be.to_host(&t).unwrap(), want);
            assert_eq!(store.get_view(&name, &[2, 3]).unwrap().dtype(), dtype);
        }
        let t = vb.pp("c").get_reshaped(&[6], &[6, 1, 1], "weight").unwrap();
        assert_eq!(t.shape(), &[6]);
        let e = vb.pp("d").get(&[2, 3], "weight").unwrap_err().to_string();
        assert!(e.contains("m.d.weight"), "{e}");
        let e = vb.pp("a").get(&[3, 2], "weight").unwrap_err().to_string();
        assert!(
            e.contains("m.a.weight") && e.contains("w.safetensors"),
            "{e}"
        );
        // A view whose length does not fit the shape is refused, not uploaded.
        let bad = WeightView::Stored {
            dtype: WeightDtype::Bf16,
            bytes: &bf16b[..4],
        };
        assert!(be.upload_weight_raw(bad, &[2, 3]).is_err());
    }
}
