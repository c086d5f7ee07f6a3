//! Shape validation shared by every backend: each op's preconditions, checked once here so that
//! the CPU and CUDA backends refuse exactly the same inputs with the same messages (and the
//! CUDA backend's checks are exercised by the CPU tests). Each function returns the dimensions
//! the op computes with.

use super::{shape_err, BResult, Backend, Tensor};

/// `b` broadcast onto `a`: `b`'s shape, less leading 1s, must be a suffix of `a`'s. Returns
/// `b`'s element count.
pub fn broadcast(op: &'static str, a: &[usize], b: &[usize]) -> BResult<usize> {
    let bn: usize = b.iter().product();
    let trimmed: Vec<usize> = b.iter().copied().skip_while(|&d| d == 1).collect();
    if trimmed.len() > a.len() || a[a.len() - trimmed.len()..] != trimmed[..] || bn == 0 {
        return shape_err(op, format!("cannot broadcast {b:?} onto {a:?}"));
    }
    Ok(bn)
}

/// A permutation of at most 6 dims, each used once.
pub fn permute(shape: &[usize], perm: &[usize]) -> BResult<()> {
    let nd = shape.len();
    if perm.len() != nd || nd > 6 {
        return shape_err("permute", format!("perm {perm:?} for shape {shape:?}"));
    }
    let mut seen = [false; 6];
    for &p in perm {
        if p >= nd || seen[p] {
            return shape_err("permute", format!("invalid perm {perm:?}"));
        }
        seen[p] = true;
    }
    Ok(())
}

/// `[start, start + len)` inside dim `dim`. Returns (outer, inner) element counts.
pub fn narrow(shape: &[usize], dim: usize, start: usize, len: usize) -> BResult<(usize, usize)> {
    if dim >= shape.len() || start + len > shape[dim] {
        return shape_err(
            "narrow",
            format!("[{start}, {}) of dim {dim} of {shape:?}", start + len),
        );
    }
    Ok((
        shape[..dim].iter().product(),
        shape[dim + 1..].iter().product(),
    ))
}

/// Tensors that agree on every dim but `dim`. Returns (outer, inner, total along `dim`).
pub fn concat<B: Backend>(xs: &[&Tensor<B>], dim: usize) -> BResult<(usize, usize, usize)> {
    let Some(first) = xs.first() else {
        return shape_err("concat", "no tensors");
    };
    let nd = first.dims();
    if dim >= nd {
        return shape_err("concat", format!("dim {dim} of {:?}", first.shape()));
    }
    for x in xs {
        let ok = x.dims() == nd && (0..nd).all(|i| i == dim || x.dim(i) == first.dim(i));
        if !ok {
            return shape_err(
                "concat",
                format!("{:?} vs {:?} along {dim}", first.shape(), x.shape()),
            );
        }
    }
    Ok((
        first.shape()[..dim].iter().product(),
        first.shape()[dim + 1..].iter().product(),
        xs.iter().map(|x| x.dim(dim)).sum(),
    ))
}

/// `x: [..., K]`, `w: [N, K]`, `b: [N]`. Returns (rows, K, N).
pub fn linear<B: Backend>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    b: Option<&Tensor<B>>,
) -> BResult<(usize, usize, usize)> {
    if w.dims() != 2 || x.last_dim() != w.dim(1) {
        return shape_err(
            "linear",
            format!("input {:?} with weight {:?}", x.shape(), w.shape()),
        );
    }
    let (m, k, n) = (x.rows(), w.dim(1), w.dim(0));
    if let Some(b) = b {
        if b.numel() != n {
            return shape_err("linear", format!("bias {:?} for {n} outputs", b.shape()));
        }
    }
    Ok((m, k, n))
}

/// The sizes of a 2-D convolution.
#[derive(Clone, Copy, Debug)]
pub struct ConvDims {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub ho: usize,
    pub wo: usize,
}

/// NCHW `x` with `w: [Cout, Cin, kh, kw]`, `b: [Cout]`, stride ≥ 1.
pub fn conv2d<B: Backend>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    b: Option<&Tensor<B>>,
    stride: usize,
    padding: usize,
) -> BResult<ConvDims> {
    if x.dims() != 4 || w.dims() != 4 || x.dim(1) != w.dim(1) || stride == 0 {
        return shape_err(
            "conv2d",
            format!("input {:?} with weight {:?}", x.shape(), w.shape()),
        );
    }
    let (batch, cin, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (cout, kh, kw) = (w.dim(0), w.dim(2), w.dim(3));
    if h + 2 * padding < kh || wd + 2 * padding < kw {
        return shape_err("conv2d", "kernel larger than padded input");
    }
    if let Some(b) = b {
        if b.numel() != cout {
            return shape_err("conv2d", format!("bias {:?} for {cout} outputs", b.shape()));
        }
    }
    Ok(ConvDims {
        batch,
        cin,
        h,
        w: wd,
        cout,
        kh,
        kw,
        ho: (h + 2 * padding - kh) / stride + 1,
        wo: (wd + 2 * padding - kw) / stride + 1,
    })
}

/// The sizes of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,
    pub sq: usize,
    pub sk: usize,
    /// heads · head dim
    pub hd: usize,
    /// head dim
    pub d: usize,
}

/// `q: [B, Sq, H·D]`, `k, v: [B, Sk, H·D]`, `key_bias: [B, Sk]`, `head_bias: [H, Sq, Sk]`.
pub fn attention<B: Backend>(
    q: &Tensor<B>,
    k: &Tensor<B>,
    v: &Tensor<B>,
    heads: usize,
    key_bias: Option<&Tensor<B>>,
    head_bias: Option<&Tensor<B>>,
) -> BResult<AttnDims> {
    if q.dims() != 3 || k.dims() != 3 || v.shape() != k.shape() || heads == 0 {
        return shape_err(
            "attention",
            format!("q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape()),
        );
    }
    let (b, sq, hd) = (q.dim(0), q.dim(1), q.dim(2));
    let sk = k.dim(1);
    if k.dim(0) != b || k.dim(2) != hd || hd % heads != 0 {
        return shape_err(
            "attention",
            format!("q {:?}, k {:?}, heads {heads}", q.shape(), k.shape()),
        );
    }
    if let Some(kb) = key_bias {
        if kb.numel() != b * sk {
            return shape_err("attention", format!("key bias {:?}", kb.shape()));
        }
    }
    if let Some(hb) = head_bias {
        if hb.numel() != heads * sq * sk {
            return shape_err("attention", format!("head bias {:?}", hb.shape()));
        }
    }
    Ok(AttnDims {
        batch: b,
        sq,
        sk,
        hd,
        d: hd / heads,
    })
}

/// Optional per-feature parameters (norm weights and biases) of width `d`.
pub fn norm_params<B: Backend>(
    op: &'static str,
    d: usize,
    params: &[Option<&Tensor<B>>],
) -> BResult<()> {
    for p in params.iter().flatten() {
        if p.numel() != d {
            return shape_err(op, format!("param {:?} for dim {d}", p.shape()));
        }
    }
    Ok(())
}

/// `x: [B, T, D]` with per-batch `shift, scale: [B, D]`.
pub fn layer_norm_modulate<B: Backend>(
    x: &Tensor<B>,
    shift: &Tensor<B>,
    scale: &Tensor<B>,
) -> BResult<()> {
    let ok = x.dims() == 3
        && shift.numel() == x.dim(0) * x.dim(2)
        && scale.numel() == x.dim(0) * x.dim(2);
    if !ok {
        return shape_err(
            "layer_norm_modulate",
            format!(
                "x {:?}, shift {:?}, scale {:?}",
                x.shape(),
                shift.shape(),
                scale.shape()
            ),
        );
    }
    Ok(())
}

/// NCHW `x` into `groups` channel groups with `[C]` affine parameters.
pub fn group_norm<B: Backend>(
    x: &Tensor<B>,
    groups: usize,
    weight: &Tensor<B>,
    bias: &Tensor<B>,
) -> BResult<()> {
    if x.dims() != 4 || groups == 0 || !x.dim(1).is_multiple_of(groups) {
        return shape_err(
            "group_norm",
            format!("{:?} into {groups} groups", x.shape()),
        );
    }
    if weight.numel() != x.dim(1) || bias.numel() != x.dim(1) {
        return shape_err("group_norm", "affine params do not match channels");
    }
    Ok(())
}

/// At least one term, all of one shape.
pub fn lincomb<B: Backend>(terms: &[(f32, &Tensor<B>)]) -> BResult<()> {
    let Some((_, first)) = terms.first() else {
        return shape_err("lincomb", "no terms");
    };
    if terms.iter().any(|(_, t)| t.shape() != first.shape()) {
        return shape_err("lincomb", "terms differ in shape");
    }
    Ok(())
}

/// `a` and `b` of one shape, of rank ≥ 1 (the skip test's sums, per row of dim 0). Returns
/// (rows, values a row).
pub fn abs_diff_sums<B: Backend>(a: &Tensor<B>, b: &Tensor<B>) -> BResult<(usize, usize)> {
    if a.shape() != b.shape() || a.dims() == 0 {
        return shape_err(
            "abs_diff_sums",
            format!(
                "a {:?} and b {:?} must have one shape of rank ≥ 1",
                a.shape(),
                b.shape()
            ),
        );
    }
    let rows = a.dim(0);
    Ok((rows, a.numel().checked_div(rows).unwrap_or(0)))
}

/// `x, branch: [B, T, D]`, `gate: [B, D]`.
pub fn gate_residual<B: Backend>(
    x: &Tensor<B>,
    gate: Option<&Tensor<B>>,
    branch: &Tensor<B>,
) -> BResult<()> {
    if x.shape() != branch.shape() || x.dims() != 3 {
        return shape_err(
            "gate_residual",
            format!("x {:?}, branch {:?}", x.shape(), branch.shape()),
        );
    }
    if let Some(g) = gate {
        if g.numel() != x.dim(0) * x.dim(2) {
            return shape_err("gate_residual", format!("gate {:?}", g.shape()));
        }
    }
    Ok(())
}

/// `x: [B, S, H·D]` with `cos, sin: [S, D/2]`, D even. Returns (S, H·D, D).
pub fn rope<B: Backend>(
    x: &Tensor<B>,
    cos: &Tensor<B>,
    sin: &Tensor<B>,
    heads: usize,
) -> BResult<(usize, usize, usize)> {
    if x.dims() != 3 || heads == 0 || !x.dim(2).is_multiple_of(heads) {
        return shape_err("rope", format!("x {:?} with {heads} heads", x.shape()));
    }
    let (s, hd) = (x.dim(1), x.dim(2));
    let d = hd / heads;
    if !d.is_multiple_of(2) || cos.numel() != s * d / 2 || sin.numel() != s * d / 2 {
        return shape_err("rope", format!("tables {:?} for S={s}, D={d}", cos.shape()));
    }
    Ok((s, hd, d))
}

/// `table: [V, D]` and ids below V. Returns (V, D).
pub fn embedding<B: Backend>(table: &Tensor<B>, ids: &[u32]) -> BResult<(usize, usize)> {
    if table.dims() != 2 {
        return shape_err("embedding", format!("table {:?}", table.shape()));
    }
    let (v, d) = (table.dim(0), table.dim(1));
    if let Some(&id) = ids.iter().find(|&&i| i as usize >= v) {
        return shape_err("embedding", format!("token id {id} outside vocabulary {v}"));
    }
    Ok((v, d))
}

/// NCHW input.
pub fn nchw<B: Backend>(op: &'static str, x: &Tensor<B>) -> BResult<()> {
    if x.dims() != 4 {
        return shape_err(op, format!("{:?}", x.shape()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    fn t(be: &CpuBackend, shape: &[usize]) -> Tensor<CpuBackend> {
        be.zeros(shape).unwrap()
    }

    #[test]
    fn refuses_mismatched_shapes_and_returns_dims() {
        let be = CpuBackend::new();
        let (x, w) = (t(&be, &[2, 3, 8]), t(&be, &[5, 8]));
        assert_eq!(linear(&x, &w, Some(&t(&be, &[5]))).unwrap(), (6, 8, 5));
        assert!(linear(&x, &w, Some(&t(&be, &[4]))).is_err());
        assert!(linear(&x, &t(&be, &[5, 7]), None).is_err());
        let q = t(&be, &[2, 4, 12]);
        let kv = t(&be, &[2, 6, 12]);
        let d = attention(&q, &kv, &kv, 3, Some(&t(&be, &[2, 6])), None).unwrap();
        assert_eq!((d.batch, d.sq, d.sk, d.hd, d.d), (2, 4, 6, 12, 4));
        assert!(attention(&q, &kv, &kv, 5, None, None).is_err());
        assert!(attention(&q, &kv, &kv, 3, Some(&t(&be, &[2, 4])), None).is_err());
        assert!(attention(&q, &kv, &kv, 3, None, Some(&t(&be, &[3, 4, 5]))).is_err());
        assert_eq!(broadcast("add", &[2, 3, 4], &[1, 3, 4]).unwrap(), 12);
        assert!(broadcast("add", &[2, 3, 4], &[2, 4]).is_err());
        assert!(permute(&[2, 3], &[0, 0]).is_err());
        assert_eq!(narrow(&[2, 5, 3], 1, 1, 4).unwrap(), (2, 3));
        assert!(narrow(&[2, 5, 3], 1, 2, 4).is_err());
        assert!(embedding(&t(&be, &[4, 2]), &[0, 4]).is_err());
        assert!(rope(&t(&be, &[1, 3, 6]), &t(&be, &[3, 3]), &t(&be, &[3, 3]), 2).is_err());
        let c = conv2d(&t(&be, &[1, 3, 8, 8]), &t(&be, &[4, 3, 3, 3]), None, 2, 1).unwrap();
        assert_eq!((c.ho, c.wo, c.cout), (4, 4, 4));
    }
}
