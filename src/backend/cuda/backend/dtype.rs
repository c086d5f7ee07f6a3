//! Storage dtypes: element sizes, kernel-name suffixes, cuBLAS type codes, host encode/decode,
//! and stored weights in a storage dtype (`encode_stored`).

use crate::backend::{Precision, WeightDtype};
use cudarc::cublaslt::sys as ltsys;
use std::borrow::Cow;

/// The element type device buffers are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    Bf16,
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }
    /// The kernel-name suffix of this dtype's instantiation (kernels/common.cuh).
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }
    /// The precision tensors stored in this dtype carry.
    pub fn precision(self) -> Precision {
        match self {
            DType::F32 => Precision::F32,
            DType::Bf16 => Precision::Bf16,
            DType::F16 => Precision::F16,
        }
    }
    pub(super) fn lt_type(self) -> ltsys::cudaDataType {
        match self {
            DType::F32 => ltsys::cudaDataType_t::CUDA_R_32F,
            DType::Bf16 => ltsys::cudaDataType_t::CUDA_R_16BF,
            DType::F16 => ltsys::cudaDataType_t::CUDA_R_16F,
        }
    }
    pub(super) fn blas_type(self) -> cudarc::cublas::sys::cudaDataType {
        use cudarc::cublas::sys::cudaDataType_t as T;
        match self {
            DType::F32 => T::CUDA_R_32F,
            DType::Bf16 => T::CUDA_R_16BF,
            DType::F16 => T::CUDA_R_16F,
        }
    }
    /// Host f32 values encoded in this dtype (round-to-nearest-even), as bytes.
    pub(super) fn encode(self, data: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(data).to_vec(),
            DType::Bf16 => data
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
            DType::F16 => data
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
        }
    }
    /// A weight stored as little-endian `src` elements, in this dtype's bytes: bit for bit
    /// `self.encode` of the weight widened to f32 (the path weights took before), without the
    /// f32 detour. Stored in this dtype already, the bytes are borrowed as they are, unless one
    /// is a signalling NaN, which the widening would have quieted (then a quieted copy); an f32
    /// weight on f32 storage is borrowed as it is. Any other pair is converted once, element by
    /// element (widened exactly, rounded to nearest even), into the target bytes.
    pub(super) fn encode_stored(self, src: WeightDtype, bytes: &[u8]) -> Cow<'_, [u8]> {
        match (src, self) {
            (WeightDtype::F32, DType::F32) => Cow::Borrowed(bytes),
            (WeightDtype::Bf16, DType::Bf16) => quieted16(bytes, quiet_bf16),
            (WeightDtype::F16, DType::F16) => quieted16(bytes, quiet_f16),
            _ => {
                let n = bytes.len() / src.size();
                let mut out = Vec::with_capacity(n.saturating_mul(self.size()));
                for c in bytes.chunks_exact(src.size()) {
                    let v = src.read_f32(c);
                    match self {
                        DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
                        DType::Bf16 => {
                            out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes())
                        }
                        DType::F16 => {
                            out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
                        }
                    }
                }
                Cow::Owned(out)
            }
        }
    }
    /// Bytes of this dtype decoded to f32 (exact).
    pub(super) fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        }
    }
}

/// A bf16 bit pattern as `half`'s widening to f32 and rounding back leave it: a NaN gets its
/// quiet bit, everything else is unchanged.
fn quiet_bf16(b: u16) -> u16 {
    if b & 0x7fff > 0x7f80 {
        b | 0x0040
    } else {
        b
    }
}

/// [`quiet_bf16`] for IEEE half precision.
fn quiet_f16(b: u16) -> u16 {
    if b & 0x7fff > 0x7c00 {
        b | 0x0200
    } else {
        b
    }
}

/// 16-bit little-endian elements with `quiet` applied: borrowed when it changes none of them
/// (a checkpoint holds no signalling NaN), else a copy.
fn quieted16(bytes: &[u8], quiet: fn(u16) -> u16) -> Cow<'_, [u8]> {
    let bits = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
    if bytes.chunks_exact(2).all(|c| quiet(bits(c)) == bits(c)) {
        return Cow::Borrowed(bytes);
    }
    Cow::Owned(
        bytes
            .chunks_exact(2)
            .flat_map(|c| quiet(bits(c)).to_le_bytes())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::DType;

    #[test]
    fn dtype_codecs_round_to_nearest_even_and_decode_exactly() {
        let v = [1.0f32, -2.5, 3.3, 1e-3, 65504.0, -0.0];
        for dt in [DType::F32, DType::Bf16, DType::F16] {
            let bytes = dt.encode(&v);
            assert_eq!(bytes.len(), v.len() * dt.size());
            let back = dt.decode(&bytes);
            for (a, b) in v.iter().zip(&back) {
                assert_eq!(
                    dt.precision().round(*a).to_bits(),
                    b.to_bits(),
                    "{dt:?} {a}"
                );
            }
        }
    }

    /// `encode_stored` gives the bytes of the f32 path (`encode` of the widened weight) for
    /// every stored dtype and storage dtype: every 16-bit pattern (NaNs, signalling ones
    /// included), and f32 specials, ties and pseudo-random patterns. Same dtypes borrow.
    #[test]
    fn encode_stored_matches_the_f32_path_bit_for_bit() {
        use super::{Cow, WeightDtype};
        use crate::backend::WeightView;
        let all16: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let mut f32s: Vec<u32> = [
            0.0f32,
            -0.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            1.0 + 1.0 / 2048.0,
            65504.0,
            65520.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            6e-8,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]
        .iter()
        .map(|v| v.to_bits())
        .chain([0x7f80_0001, 0xffc0_1234, 0x7fbf_ffff])
        .collect();
        let mut r = 0x9e37_79b9u32;
        for _ in 0..200_000 {
            r ^= r << 13;
            r ^= r >> 17;
            r ^= r << 5;
            f32s.push(r);
        }
        let f32b: Vec<u8> = f32s.iter().flat_map(|b| b.to_le_bytes()).collect();
        for src in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16] {
            let bytes = if src == WeightDtype::F32 {
                &f32b
            } else {
                &all16
            };
            let view = WeightView::Stored { dtype: src, bytes };
            let widened = view.into_f32();
            for dt in [DType::F32, DType::Bf16, DType::F16] {
                let got = dt.encode_stored(src, bytes);
                assert!(got[..] == dt.encode(&widened)[..], "{src:?} -> {dt:?}");
            }
        }
        // f32 on f32 storage is borrowed; so are bf16 and f16 weights on their own storage
        // when they hold no signalling NaN.
        assert!(matches!(
            DType::F32.encode_stored(WeightDtype::F32, &f32b),
            Cow::Borrowed(_)
        ));
        let quiet: Vec<u8> = [1.5f32, -2.0, 3e-3, f32::NAN]
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        assert!(matches!(
            DType::Bf16.encode_stored(WeightDtype::Bf16, &quiet),
            Cow::Borrowed(_)
        ));
        let quiet: Vec<u8> = [1.5f32, -2.0, 3e-3, f32::NAN]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        assert!(matches!(
            DType::F16.encode_stored(WeightDtype::F16, &quiet),
            Cow::Borrowed(_)
        ));
    }
}
