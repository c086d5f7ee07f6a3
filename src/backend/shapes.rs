//! `ShapeOnly`: a backend whose tensors hold a shape and no data. Uploads (weights included)
//! keep only the shape and every op returns [`BackendError::Unavailable`]. Running a model
//! loader on it with a recording tensor source ([`crate::models::Recorder`]) lists the tensors
//! (name, shape) a config implies without reading or allocating any weight.

use super::{Activation, BResult, Backend, BackendError, Precision, Tensor, WeightView};
use std::sync::Arc;

/// The backend of shapes (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct ShapeOnly;

impl ShapeOnly {
    fn shaped(shape: &[usize]) -> Tensor<Self> {
        Tensor::from_parts(shape.to_vec(), Arc::new(()))
    }
}

fn unsupported<T>(op: &'static str) -> BResult<T> {
    Err(BackendError::Unavailable(
        "shape-only",
        format!("`{op}` computes nothing on the shape-only backend (it holds no data)"),
    ))
}

impl Backend for ShapeOnly {
    type Buffer = ();

    fn name(&self) -> &'static str {
        "shape-only"
    }

    /// Keeps the shape; the values are dropped.
    fn upload(&self, _data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        Ok(Self::shaped(shape))
    }
    fn upload_weight(&self, _data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        Ok(Self::shaped(shape))
    }
    fn upload_weight_raw(&self, _view: WeightView<'_>, shape: &[usize]) -> BResult<Tensor<Self>> {
        Ok(Self::shaped(shape))
    }
    fn upload_f32(&self, _data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        Ok(Self::shaped(shape))
    }
    fn zeros(&self, shape: &[usize]) -> BResult<Tensor<Self>> {
        Ok(Self::shaped(shape))
    }
    fn to_host(&self, _t: &Tensor<Self>) -> BResult<Vec<f32>> {
        unsupported("to_host")
    }
    fn abs_diff_sums(&self, _a: &Tensor<Self>, _b: &Tensor<Self>) -> BResult<Vec<(f64, f64)>> {
        unsupported("abs_diff_sums")
    }

    fn permute(&self, _x: &Tensor<Self>, _perm: &[usize]) -> BResult<Tensor<Self>> {
        unsupported("permute")
    }
    fn narrow(
        &self,
        _x: &Tensor<Self>,
        _dim: usize,
        _start: usize,
        _len: usize,
    ) -> BResult<Tensor<Self>> {
        unsupported("narrow")
    }
    fn concat(&self, _xs: &[&Tensor<Self>], _dim: usize) -> BResult<Tensor<Self>> {
        unsupported("concat")
    }
    fn linear(
        &self,
        _x: &Tensor<Self>,
        _w: &Tensor<Self>,
        _b: Option<&Tensor<Self>>,
        _act: Activation,
    ) -> BResult<Tensor<Self>> {
        unsupported("linear")
    }
    fn conv2d(
        &self,
        _x: &Tensor<Self>,
        _w: &Tensor<Self>,
        _b: Option<&Tensor<Self>>,
        _stride: usize,
        _padding: usize,
    ) -> BResult<Tensor<Self>> {
        unsupported("conv2d")
    }
    fn attention(
        &self,
        _q: &Tensor<Self>,
        _k: &Tensor<Self>,
        _v: &Tensor<Self>,
        _heads: usize,
        _scale: f32,
        _key_bias: Option<&Tensor<Self>>,
        _head_bias: Option<&Tensor<Self>>,
        _causal: bool,
    ) -> BResult<Tensor<Self>> {
        unsupported("attention")
    }
    fn layer_norm(
        &self,
        _x: &Tensor<Self>,
        _weight: Option<&Tensor<Self>>,
        _bias: Option<&Tensor<Self>>,
        _eps: f32,
    ) -> BResult<Tensor<Self>> {
        unsupported("layer_norm")
    }
    fn layer_norm_modulate(
        &self,
        _x: &Tensor<Self>,
        _shift: &Tensor<Self>,
        _scale: &Tensor<Self>,
        _eps: f32,
    ) -> BResult<Tensor<Self>> {
        unsupported("layer_norm_modulate")
    }
    fn rms_norm(
        &self,
        _x: &Tensor<Self>,
        _weight: Option<&Tensor<Self>>,
        _eps: f32,
    ) -> BResult<Tensor<Self>> {
        unsupported("rms_norm")
    }
    fn group_norm(
        &self,
        _x: &Tensor<Self>,
        _groups: usize,
        _weight: &Tensor<Self>,
        _bias: &Tensor<Self>,
        _eps: f32,
        _silu: bool,
    ) -> BResult<Tensor<Self>> {
        unsupported("group_norm")
    }
    fn activation(&self, _x: &Tensor<Self>, _act: Activation) -> BResult<Tensor<Self>> {
        unsupported("activation")
    }
    fn add(&self, _a: &Tensor<Self>, _b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        unsupported("add")
    }
    fn mul(&self, _a: &Tensor<Self>, _b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        unsupported("mul")
    }
    fn lincomb(&self, _terms: &[(f32, &Tensor<Self>)]) -> BResult<Tensor<Self>> {
        unsupported("lincomb")
    }
    fn gate_residual(
        &self,
        _x: &Tensor<Self>,
        _gate: Option<&Tensor<Self>>,
        _branch: &Tensor<Self>,
    ) -> BResult<Tensor<Self>> {
        unsupported("gate_residual")
    }
    fn rope(
        &self,
        _x: &Tensor<Self>,
        _cos: &Tensor<Self>,
        _sin: &Tensor<Self>,
        _heads: usize,
    ) -> BResult<Tensor<Self>> {
        unsupported("rope")
    }
    fn round_to(&self, _x: Tensor<Self>, _precision: Precision) -> BResult<Tensor<Self>> {
        unsupported("round_to")
    }
    fn embedding(&self, _table: &Tensor<Self>, _ids: &[u32]) -> BResult<Tensor<Self>> {
        unsupported("embedding")
    }
    fn upsample_nearest2x(&self, _x: &Tensor<Self>) -> BResult<Tensor<Self>> {
        unsupported("upsample_nearest2x")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_carry_shapes_and_ops_refuse() {
        let be = ShapeOnly;
        let w = be.upload_weight(Vec::new(), &[3, 4]).unwrap();
        assert_eq!(w.shape(), &[3, 4]);
        let e = be.linear(&w, &w, None, Activation::None).unwrap_err();
        assert!(e.to_string().contains("linear"), "{e}");
        assert!(be.to_host(&w).is_err());
    }
}
