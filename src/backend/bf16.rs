//! `Bf16<B>`: a precision decorator that makes any backend compute what a PyTorch bfloat16
//! pipeline computes.
//!
//! Storage stays whatever `B` stores (f32 on the CPU and, for now, on CUDA): every value a
//! tensor holds is a bf16 value, and every op rounds its result to bf16 (round-to-nearest-even)
//! through [`Backend::round_to`]. Inside an op, `B` computes in f32, which is what PyTorch's
//! bf16 kernels do (f32 "opmath": GEMM accumulation, LayerNorm/RMSNorm/GroupNorm statistics,
//! softmax, elementwise arithmetic). Uploads (inputs and weights) are rounded too, so weights
//! become the bf16 values a `torch_dtype=torch.bfloat16` load holds; [`Backend::upload_f32`] is
//! the exception for diffusers' float32 islands (FLUX's RoPE tables).
//!
//! Where one fused op of ours is several PyTorch bf16 ops in diffusers, the decorator splits it
//! and rounds after each piece (see each op's comment for the torch sequence it mirrors). Pure
//! data movement (permute, narrow, concat, embedding, upsample) moves bf16 values unchanged.
//!
//! Tensors of `Bf16<B>` and of `B` share a buffer type; conversions are an `Arc` clone
//! ([`Bf16::wrap`], [`Bf16::unwrap`]).

use super::{shape_err, Activation, BResult, Backend, Precision, Tensor, WeightDtype, WeightView};
use rayon::prelude::*;

/// `B` with every op result, upload and weight rounded to bfloat16.
#[derive(Clone, Debug, Default)]
pub struct Bf16<B: Backend> {
    inner: B,
}

impl<B: Backend> Bf16<B> {
    pub fn new(inner: B) -> Self {
        Bf16 { inner }
    }
    /// The wrapped (float32) backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }
    /// A tensor of the wrapped backend viewed as a bf16-decorated one (no rounding: the caller
    /// vouches that it holds bf16 values, or wants them carried as they are).
    pub fn wrap(t: &Tensor<B>) -> Tensor<Self> {
        t.rebrand()
    }
    /// The same buffer as a tensor of the wrapped backend.
    pub fn unwrap(t: &Tensor<Self>) -> Tensor<B> {
        t.rebrand()
    }

    /// Rounds an inner result to bf16 and rebrands it.
    fn r(&self, t: Tensor<B>) -> BResult<Tensor<Self>> {
        Ok(self.inner.round_to(t, Precision::Bf16)?.into_backend())
    }
    /// Rounds an inner result to bf16, staying on the inner backend (intermediate pieces).
    fn ri(&self, t: Tensor<B>) -> BResult<Tensor<B>> {
        self.inner.round_to(t, Precision::Bf16)
    }

    /// Applies `f(x_b, [v_b...])` per batch row, where `x: [B, T, D]` and each `v: [B, D]`, and
    /// concatenates the results along dim 0. Our `add`/`mul` broadcast only over leading dims, so
    /// a per-batch `[B, D]` vector broadcast over tokens (torch's `v[:, None]`) is done one batch
    /// row at a time; with B = 1 there is no split.
    fn per_batch(
        &self,
        x: &Tensor<B>,
        vs: &[&Tensor<B>],
        f: impl Fn(&Tensor<B>, &[Tensor<B>]) -> BResult<Tensor<B>>,
    ) -> BResult<Tensor<B>> {
        let (b, d) = (x.dim(0), x.last_dim());
        if b == 1 {
            let flat: Vec<Tensor<B>> =
                vs.iter().map(|v| v.reshape(&[d])).collect::<BResult<_>>()?;
            return f(x, &flat);
        }
        let be = &self.inner;
        let mut outs = Vec::with_capacity(b);
        for i in 0..b {
            let xi = be.narrow(x, 0, i, 1)?;
            let vi: Vec<Tensor<B>> = vs
                .iter()
                .map(|v| be.narrow(&v.reshape(&[b, d])?, 0, i, 1)?.reshape(&[d]))
                .collect::<BResult<_>>()?;
            outs.push(f(&xi, &vi)?);
        }
        let refs: Vec<&Tensor<B>> = outs.iter().collect();
        be.concat(&refs, 0)
    }
}

/// Rounds host data to bf16 in place (parallel for large uploads such as weights).
fn round_host(data: &mut [f32]) {
    if data.len() >= 1 << 16 {
        data.par_chunks_mut(1 << 14)
            .for_each(super::round_bf16_slice);
    } else {
        super::round_bf16_slice(data);
    }
}

fn check_btd_vec(op: &'static str, x: &[usize], vs: &[(&str, &[usize])]) -> BResult<()> {
    if x.len() != 3 {
        return shape_err(op, format!("x must be [B, T, D], got {x:?}"));
    }
    for (name, v) in vs {
        if v.iter().product::<usize>() != x[0] * x[2] {
            return shape_err(op, format!("{name} {v:?} for x {x:?}"));
        }
    }
    Ok(())
}

impl<B: Backend> Backend for Bf16<B> {
    type Buffer = B::Buffer;

    fn name(&self) -> &'static str {
        match self.inner.name() {
            "cpu" => "cpu-bf16",
            "cuda" => "cuda-bf16",
            _ => "bf16",
        }
    }

    fn precision(&self) -> Precision {
        Precision::Bf16
    }

    // ---- memory: uploads are rounded (`tensor.to(torch.bfloat16)`) --------------------------
    fn upload(&self, mut data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        round_host(&mut data);
        Ok(self.inner.upload(data, shape)?.into_backend())
    }
    fn upload_weight(&self, mut data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        round_host(&mut data);
        Ok(self.inner.upload_weight(data, shape)?.into_backend())
    }
    /// A weight stored in bf16 already holds bf16 values: rounding them is the identity, so it
    /// goes to the wrapped backend as stored. Other dtypes are widened and rounded
    /// ([`Bf16::upload_weight`]).
    fn upload_weight_raw(&self, view: WeightView<'_>, shape: &[usize]) -> BResult<Tensor<Self>> {
        view.check("upload_weight_raw", shape)?;
        if view.dtype() == WeightDtype::Bf16 {
            return Ok(self.inner.upload_weight_raw(view, shape)?.into_backend());
        }
        self.upload_weight(view.into_f32(), shape)
    }
    /// Float32 islands are carried unrounded (diffusers' RoPE tables end in `.float()`).
    fn upload_f32(&self, data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        Ok(self.inner.upload_f32(data, shape)?.into_backend())
    }
    fn to_host(&self, t: &Tensor<Self>) -> BResult<Vec<f32>> {
        self.inner.to_host(&Self::unwrap(t))
    }
    fn all_finite_cheap(&self, t: &Tensor<Self>) -> Option<bool> {
        self.inner.all_finite_cheap(&Self::unwrap(t))
    }
    /// The stored values are bf16 already: nothing to round, the wrapped backend reduces.
    fn abs_diff_sums(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Vec<(f64, f64)>> {
        self.inner.abs_diff_sums(&Self::unwrap(a), &Self::unwrap(b))
    }
    fn zeros(&self, shape: &[usize]) -> BResult<Tensor<Self>> {
        Ok(self.inner.zeros(shape)?.into_backend())
    }
    fn synchronize(&self) -> BResult<()> {
        self.inner.synchronize()
    }
    fn device_time_ms(&self, f: &mut dyn FnMut() -> BResult<()>) -> BResult<Option<f64>> {
        self.inner.device_time_ms(f)
    }
    fn capture_begin(&self) -> BResult<bool> {
        self.inner.capture_begin()
    }
    fn capture_end(&self) -> BResult<Option<usize>> {
        self.inner.capture_end()
    }
    fn graph_launch(&self, id: usize) -> BResult<()> {
        self.inner.graph_launch(id)
    }
    fn graph_release(&self, id: usize) -> BResult<()> {
        self.inner.graph_release(id)
    }
    fn copy_into(&self, dst: &Tensor<Self>, src: &Tensor<Self>) -> BResult<()> {
        self.inner.copy_into(&Self::unwrap(dst), &Self::unwrap(src))
    }
    fn device_memory(&self) -> Option<(u64, u64)> {
        self.inner.device_memory()
    }

    // ---- layout: data movement of bf16 values, nothing to round ----------------------------
    fn permute(&self, x: &Tensor<Self>, perm: &[usize]) -> BResult<Tensor<Self>> {
        Ok(self.inner.permute(&Self::unwrap(x), perm)?.into_backend())
    }
    fn narrow(
        &self,
        x: &Tensor<Self>,
        dim: usize,
        start: usize,
        len: usize,
    ) -> BResult<Tensor<Self>> {
        Ok(self
            .inner
            .narrow(&Self::unwrap(x), dim, start, len)?
            .into_backend())
    }
    fn concat(&self, xs: &[&Tensor<Self>], dim: usize) -> BResult<Tensor<Self>> {
        let inner: Vec<Tensor<B>> = xs.iter().map(|t| Self::unwrap(t)).collect();
        let refs: Vec<&Tensor<B>> = inner.iter().collect();
        Ok(self.inner.concat(&refs, dim)?.into_backend())
    }

    // ---- dense -----------------------------------------------------------------------------
    /// torch: `y = F.linear(x, w, b)` (bf16 GEMM, f32 accumulation, bias in the epilogue, one
    /// rounding), then the activation module on the bf16 `y` (`F.gelu(y, approximate="tanh")`,
    /// `F.silu(y)`: computed in f32, rounded again).
    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        act: Activation,
    ) -> BResult<Tensor<Self>> {
        let b = b.map(Self::unwrap);
        let y = self.ri(self.inner.linear(
            &Self::unwrap(x),
            &Self::unwrap(w),
            b.as_ref(),
            Activation::None,
        )?)?;
        match act {
            Activation::None => Ok(y.into_backend()),
            _ => self.r(self.inner.activation(&y, act)?),
        }
    }
    /// torch: `F.conv2d` in bf16 (f32 accumulation, bias added before the one rounding).
    fn conv2d(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        stride: usize,
        padding: usize,
    ) -> BResult<Tensor<Self>> {
        let b = b.map(Self::unwrap);
        self.r(self.inner.conv2d(
            &Self::unwrap(x),
            &Self::unwrap(w),
            b.as_ref(),
            stride,
            padding,
        )?)
    }
    /// torch: `F.scaled_dot_product_attention` on bf16 q/k/v (scores, softmax and the P·V
    /// accumulation in f32 inside the kernel), output rounded once to bf16. Masks/biases are
    /// whatever bf16 tensors the model built.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        heads: usize,
        scale: f32,
        key_bias: Option<&Tensor<Self>>,
        head_bias: Option<&Tensor<Self>>,
        causal: bool,
    ) -> BResult<Tensor<Self>> {
        let kb = key_bias.map(Self::unwrap);
        let hb = head_bias.map(Self::unwrap);
        self.r(self.inner.attention(
            &Self::unwrap(q),
            &Self::unwrap(k),
            &Self::unwrap(v),
            heads,
            scale,
            kb.as_ref(),
            hb.as_ref(),
            causal,
        )?)
    }

    // ---- normalisation ---------------------------------------------------------------------
    /// torch: `F.layer_norm(x, w, b)` on bf16: f32 statistics and affine, one rounding.
    fn layer_norm(
        &self,
        x: &Tensor<Self>,
        weight: Option<&Tensor<Self>>,
        bias: Option<&Tensor<Self>>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        let w = weight.map(Self::unwrap);
        let b = bias.map(Self::unwrap);
        self.r(self
            .inner
            .layer_norm(&Self::unwrap(x), w.as_ref(), b.as_ref(), eps)?)
    }
    /// diffusers (AdaLayerNormZero / AdaLayerNormContinuous / PixArt's adaLN-single):
    /// `n = LN(x)` (f32 stats, bf16 out) → `p = 1 + scale` (bf16) → `m = n * p[:, None]` (bf16)
    /// → `m + shift[:, None]` (bf16): four roundings.
    fn layer_norm_modulate(
        &self,
        x: &Tensor<Self>,
        shift: &Tensor<Self>,
        scale: &Tensor<Self>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        check_btd_vec(
            "layer_norm_modulate",
            x.shape(),
            &[("shift", shift.shape()), ("scale", scale.shape())],
        )?;
        let be = &self.inner;
        let d = x.dim(2);
        let n = self.ri(be.layer_norm(&Self::unwrap(x), None, None, eps)?)?;
        let ones = be.upload(vec![1.0; d], &[d])?;
        let p = self.ri(be.add(&Self::unwrap(scale), &ones)?)?;
        let out = self.per_batch(&n, &[&p, &Self::unwrap(shift)], |nb, v| {
            let m = self.ri(be.mul(nb, &v[0])?)?;
            self.ri(be.add(&m, &v[1])?)
        })?;
        Ok(out.into_backend())
    }
    /// `torch.nn.RMSNorm` on bf16 input with a bf16 weight, as torch 2.15 computes it (measured
    /// against `torch.nn.RMSNorm` on CPU, bit-identical): `x.float() * rsqrt(mean(x²) + eps) *
    /// w.float()`, rounded once. (The older ATen composite — and flux-spec §7.5 — rounds after
    /// the normalisation and again after `* w`; the two differ by ≤ 1 bf16 ulp on a few % of
    /// elements.)
    fn rms_norm(
        &self,
        x: &Tensor<Self>,
        weight: Option<&Tensor<Self>>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        let w = weight.map(Self::unwrap);
        self.r(self.inner.rms_norm(&Self::unwrap(x), w.as_ref(), eps)?)
    }
    /// torch: `GroupNorm` (f32 statistics, affine, one rounding), then `F.silu` as a separate
    /// bf16 op (rounded again) when fused here.
    fn group_norm(
        &self,
        x: &Tensor<Self>,
        groups: usize,
        weight: &Tensor<Self>,
        bias: &Tensor<Self>,
        eps: f32,
        silu: bool,
    ) -> BResult<Tensor<Self>> {
        let g = self.ri(self.inner.group_norm(
            &Self::unwrap(x),
            groups,
            &Self::unwrap(weight),
            &Self::unwrap(bias),
            eps,
            false,
        )?)?;
        if silu {
            self.r(self.inner.activation(&g, Activation::Silu)?)
        } else {
            Ok(g.into_backend())
        }
    }

    // ---- elementwise -----------------------------------------------------------------------
    /// torch: `F.gelu(x, approximate="tanh")` / `F.silu(x)` on bf16 (f32 inside, one rounding).
    fn activation(&self, x: &Tensor<Self>, act: Activation) -> BResult<Tensor<Self>> {
        if act == Activation::None {
            return Ok(x.clone());
        }
        self.r(self.inner.activation(&Self::unwrap(x), act)?)
    }
    /// torch: `a + b` on bf16 tensors (f32 add, one rounding).
    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        self.r(self.inner.add(&Self::unwrap(a), &Self::unwrap(b))?)
    }
    /// torch: `a * b` on bf16 tensors (f32 multiply, one rounding).
    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        self.r(self.inner.mul(&Self::unwrap(a), &Self::unwrap(b))?)
    }
    /// torch, term by term: `acc = c₀ * x₀` (a bf16 tensor times a Python float: f32 multiply,
    /// rounded), then `acc = acc + cᵢ * xᵢ` with each product and each sum rounded. A
    /// coefficient of 1 is no op in torch's spelling (`x + c * y`), and rounding `1 · x` of a
    /// bf16 `x` is exact anyway.
    fn lincomb(&self, terms: &[(f32, &Tensor<Self>)]) -> BResult<Tensor<Self>> {
        let Some((_, first)) = terms.first() else {
            return shape_err("lincomb", "no terms");
        };
        if terms.iter().any(|(_, t)| t.shape() != first.shape()) {
            return shape_err("lincomb", "terms differ in shape");
        }
        let be = &self.inner;
        let term = |c: f32, t: &Tensor<Self>| -> BResult<Tensor<B>> {
            let t = Self::unwrap(t);
            if c == 1.0 {
                Ok(t)
            } else {
                self.ri(be.lincomb(&[(c, &t)])?)
            }
        };
        let mut acc = term(terms[0].0, terms[0].1)?;
        for (c, t) in &terms[1..] {
            let p = term(*c, t)?;
            acc = self.ri(be.add(&acc, &p)?)?;
        }
        Ok(acc.into_backend())
    }
    /// diffusers: `y = gate[:, None] * branch` (bf16) then `x + y` (bf16): two roundings; with
    /// no gate, `x + branch`, one rounding.
    fn gate_residual(
        &self,
        x: &Tensor<Self>,
        gate: Option<&Tensor<Self>>,
        branch: &Tensor<Self>,
    ) -> BResult<Tensor<Self>> {
        let be = &self.inner;
        let (xi, bi) = (Self::unwrap(x), Self::unwrap(branch));
        let Some(g) = gate else {
            return self.r(be.gate_residual(&xi, None, &bi)?);
        };
        check_btd_vec("gate_residual", x.shape(), &[("gate", g.shape())])?;
        if x.shape() != branch.shape() {
            return shape_err(
                "gate_residual",
                format!("x {:?}, branch {:?}", x.shape(), branch.shape()),
            );
        }
        // The product per batch row (gate broadcast over tokens), then one full-size add.
        let (b, t) = (x.dim(0), x.dim(1));
        let prod = self.per_batch(&bi, &[&Self::unwrap(g)], |bb, v| {
            self.ri(be.mul(bb, &v[0])?)
        })?;
        debug_assert_eq!(prod.shape(), &[b, t, x.dim(2)]);
        self.r(be.add(&xi, &prod)?)
    }
    /// diffusers `apply_rotary_emb`: `(x.float() * cos + x_rot.float() * sin).to(bf16)` with f32
    /// tables: f32 math, one rounding.
    fn rope(
        &self,
        x: &Tensor<Self>,
        cos: &Tensor<Self>,
        sin: &Tensor<Self>,
        heads: usize,
    ) -> BResult<Tensor<Self>> {
        self.r(self.inner.rope(
            &Self::unwrap(x),
            &Self::unwrap(cos),
            &Self::unwrap(sin),
            heads,
        )?)
    }
    fn round_to(&self, x: Tensor<Self>, precision: Precision) -> BResult<Tensor<Self>> {
        Ok(self
            .inner
            .round_to(x.into_backend(), precision)?
            .into_backend())
    }
    /// A row gather of bf16 values.
    fn embedding(&self, table: &Tensor<Self>, ids: &[u32]) -> BResult<Tensor<Self>> {
        Ok(self
            .inner
            .embedding(&Self::unwrap(table), ids)?
            .into_backend())
    }
    fn upsample_nearest2x(&self, x: &Tensor<Self>) -> BResult<Tensor<Self>> {
        Ok(self
            .inner
            .upsample_nearest2x(&Self::unwrap(x))?
            .into_backend())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    fn be() -> Bf16<CpuBackend> {
        Bf16::new(CpuBackend::new())
    }
    fn bf(v: f32) -> f32 {
        half::bf16::from_f32(v).to_f32()
    }
    fn host(b: &Bf16<CpuBackend>, t: &Tensor<Bf16<CpuBackend>>) -> Vec<f32> {
        b.to_host(t).unwrap()
    }

    /// Every bf16 bit pattern, and f16/f32 weights, stored through `upload_weight_raw` hold the
    /// same bits as the widened values through `upload_weight`.
    #[test]
    fn raw_weight_uploads_store_what_widened_uploads_store() {
        let b = be();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let bf16: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let f32s: Vec<u8> = [1.0f32 + 1.0 / 256.0, -3.3, 1e-40, f32::MAX, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        for (dtype, bytes) in [
            (WeightDtype::Bf16, &bf16[..]),
            (WeightDtype::F16, &bf16[..]),
            (WeightDtype::F32, &f32s[..]),
        ] {
            let view = WeightView::Stored { dtype, bytes };
            let shape = [view.len()];
            let raw = b.upload_weight_raw(view.clone(), &shape).unwrap();
            let widened = b.upload_weight(view.into_f32(), &shape).unwrap();
            assert_eq!(bits(host(&b, &raw)), bits(host(&b, &widened)), "{dtype:?}");
        }
        let short = WeightView::Stored {
            dtype: WeightDtype::Bf16,
            bytes: &bf16[..3],
        };
        assert!(b.upload_weight_raw(short, &[2]).is_err());
    }

    #[test]
    fn round_bf16_matches_half_including_ties_and_specials() {
        let mut vals = vec![
            0.0,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0, // tie: rounds to even (1.0)
            1.0 + 3.0 / 256.0, // tie: rounds to even (1 + 4/256)
            3.504e3,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        let mut s = 0x1234_5678u32;
        for _ in 0..10_000 {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            vals.push(f32::from_bits(s));
        }
        for v in vals {
            let want = half::bf16::from_f32(v).to_f32();
            let got = crate::backend::round_bf16(v);
            if v.is_nan() {
                assert!(got.is_nan());
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{v:e}");
            }
        }
        assert!(crate::backend::round_bf16(f32::NAN).is_nan());
        assert!(crate::backend::round_bf16(f32::from_bits(0x7fff_ffff)).is_nan());
    }

    #[test]
    fn uploads_and_ops_are_rounded_and_f32_islands_are_not() {
        let b = be();
        assert_eq!(b.precision(), Precision::Bf16);
        let x = b.upload(vec![1.0 + 1e-3, 1.23457], &[2]).unwrap();
        assert_eq!(host(&b, &x), vec![1.0, bf(1.23457)]);
        let t = b.upload_f32(vec![1.0 + 1e-3], &[1]).unwrap();
        assert_eq!(host(&b, &t), vec![1.0 + 1e-3]);
        let y = b.add(&x, &x).unwrap();
        assert_eq!(host(&b, &y), vec![2.0, bf(2.0 * bf(1.23457))]);
        // Conversions share the buffer.
        let inner = Bf16::unwrap(&x);
        assert!(Bf16::wrap(&inner).same_buffer(&x));
    }

    /// `(1 + scale)` is rounded before the multiply: with scale = 2^-9 (which bf16 holds), the
    /// rounded `1 + scale` is 1, so the modulation is the identity on LN(x) (the fused f32 op
    /// would scale by 1.002).
    #[test]
    fn layer_norm_modulate_rounds_one_plus_scale() {
        let b = be();
        let d = 4;
        let x = b.upload(vec![1.0, -1.0, 1.0, -1.0], &[1, 1, d]).unwrap();
        let scale = b.upload(vec![2f32.powi(-9); d], &[1, d]).unwrap();
        let shift = b.zeros(&[1, d]).unwrap();
        let y = host(
            &b,
            &b.layer_norm_modulate(&x, &shift, &scale, 1e-6).unwrap(),
        );
        let ln = bf(1.0 / (1.0f32 + 1e-6).sqrt());
        assert_eq!(y, vec![ln, -ln, ln, -ln]);
        let f = CpuBackend::new();
        let yf = f
            .layer_norm_modulate(
                &Bf16::unwrap(&x),
                &Bf16::unwrap(&shift),
                &Bf16::unwrap(&scale),
                1e-6,
            )
            .unwrap();
        assert!(f.to_host(&yf).unwrap()[0] > 1.001);
    }

    /// Per-batch vectors broadcast over tokens (B > 1 goes through the per-batch split) and the
    /// result equals the op-by-op torch spelling.
    #[test]
    fn modulate_and_gate_match_op_by_op_spelling_for_batches() {
        let b = be();
        let (n, t, d) = (2, 3, 5);
        let vals = |k: usize, s: f32| -> Vec<f32> {
            (0..k)
                .map(|i| ((i as f32) * 0.7311 + s).sin() * 1.7)
                .collect()
        };
        let x = b.upload(vals(n * t * d, 0.1), &[n, t, d]).unwrap();
        let br = b.upload(vals(n * t * d, 0.9), &[n, t, d]).unwrap();
        let sc = b.upload(vals(n * d, 0.3), &[n, d]).unwrap();
        let sh = b.upload(vals(n * d, 0.5), &[n, d]).unwrap();
        let g = b.upload(vals(n * d, 0.7), &[n, d]).unwrap();
        let (xh, brh, sch, shh, gh) = (
            host(&b, &x),
            host(&b, &br),
            host(&b, &sc),
            host(&b, &sh),
            host(&b, &g),
        );
        let ln = host(&b, &b.layer_norm(&x, None, None, 1e-6).unwrap());
        let y = host(&b, &b.layer_norm_modulate(&x, &sh, &sc, 1e-6).unwrap());
        let z = host(&b, &b.gate_residual(&x, Some(&g), &br).unwrap());
        for i in 0..n * t * d {
            let (bi, j) = (i / (t * d), i % d);
            let p = bf(1.0 + sch[bi * d + j]);
            let want = bf(bf(ln[i] * p) + shh[bi * d + j]);
            assert_eq!(y[i], want, "modulate {i}");
            let want = bf(xh[i] + bf(gh[bi * d + j] * brh[i]));
            assert_eq!(z[i], want, "gate {i}");
        }
    }

    #[test]
    fn linear_with_activation_rounds_before_and_after_the_activation() {
        let b = be();
        let x = b.upload(vec![0.3, -1.1, 0.77], &[1, 3]).unwrap();
        let w = b
            .upload(vec![1.3, 0.2, -0.5, 0.9, 0.1, 0.4], &[2, 3])
            .unwrap();
        let bias = b.upload(vec![0.05, -0.2], &[2]).unwrap();
        let y = host(
            &b,
            &b.linear(&x, &w, Some(&bias), Activation::Silu).unwrap(),
        );
        let lin = b.linear(&x, &w, Some(&bias), Activation::None).unwrap();
        let f = b.inner();
        let act = f
            .to_host(&f.activation(&Bf16::unwrap(&lin), Activation::Silu).unwrap())
            .unwrap();
        for (o, a) in y.iter().zip(&act) {
            assert_eq!(*o, bf(*a));
        }
    }

    #[test]
    fn lincomb_rounds_each_product_and_sum() {
        let b = be();
        let a = b.upload(vec![1.0, 3.0], &[2]).unwrap();
        let c = b.upload(vec![1.0 / 3.0, 0.7], &[2]).unwrap();
        let y = host(&b, &b.lincomb(&[(1.0, &a), (0.1, &c)]).unwrap());
        let (ah, ch) = (host(&b, &a), host(&b, &c));
        for i in 0..2 {
            assert_eq!(y[i], bf(ah[i] + bf(0.1 * ch[i])));
        }
        let y = host(&b, &b.lincomb(&[(0.5, &a), (-0.25, &c)]).unwrap());
        for i in 0..2 {
            assert_eq!(y[i], bf(bf(0.5 * ah[i]) + bf(-0.25 * ch[i])));
        }
    }

    #[test]
    fn group_norm_with_silu_rounds_between() {
        let b = be();
        let x = b
            .upload(
                (0..16).map(|i| (i as f32 * 0.37).cos()).collect(),
                &[1, 4, 2, 2],
            )
            .unwrap();
        let w = b.upload(vec![1.1, 0.9, 1.3, 0.7], &[4]).unwrap();
        let bias = b.upload(vec![0.1, -0.1, 0.2, 0.0], &[4]).unwrap();
        let g = b.group_norm(&x, 2, &w, &bias, 1e-6, false).unwrap();
        let gs = host(&b, &b.group_norm(&x, 2, &w, &bias, 1e-6, true).unwrap());
        let f = b.inner();
        let act = f
            .to_host(&f.activation(&Bf16::unwrap(&g), Activation::Silu).unwrap())
            .unwrap();
        for (s, a) in gs.iter().zip(&act) {
            assert_eq!(*s, bf(*a));
        }
    }
}
