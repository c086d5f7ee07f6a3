//! Storage dtypes: element sizes, kernel-name suffixes, cuBLAS type codes, host encode/decode.

use crate::backend::Precision;
use cudarc::cublaslt::sys as ltsys;

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
}
