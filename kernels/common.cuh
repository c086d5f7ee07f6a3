// Shared device code for the ecad-native kernels: dtype conversion and reductions.
// Every kernel computes in f32 whatever the storage dtype (f32, bf16 or f16).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// NVRTC has no <math.h>, so INFINITY is not defined there (nvcc defines it).
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

namespace ecad {

template <typename T> __device__ __forceinline__ float to_f32(T x);
template <> __device__ __forceinline__ float to_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f32<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 x) {
    return __bfloat162float(x);
}

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of up to 1024 threads; `scratch` holds 32 floats. All threads get the sum.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int nwarps = (blockDim.x + 31) >> 5;
    v = lane < nwarps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float gelu_tanh(float x) {
    // 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))) = x / (1 + e^{−2u}); no cancellation near 0.
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x / (1.0f + __expf(-2.0f * u));
}

__device__ __forceinline__ float silu(float x) { return x / (1.0f + __expf(-x)); }

// CLIP's quick_gelu: x·sigmoid(1.702x).
__device__ __forceinline__ float quick_gelu(float x) { return x / (1.0f + __expf(-1.702f * x)); }

// Exact GELU (transformers' "gelu"): 0.5·x·(1 + erf(x/√2)).
__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// Activation codes shared with the Rust side: 0 none, 1 GELU(tanh), 2 SiLU, 3 quick_gelu, 4 GELU(erf).
__device__ __forceinline__ float apply_act(float v, int act) {
    switch (act) {
        case 1: return gelu_tanh(v);
        case 2: return silu(v);
        case 3: return quick_gelu(v);
        case 4: return gelu_erf(v);
        default: return v;
    }
}

}  // namespace ecad

// Instantiates an extern "C" kernel for the three storage dtypes: NAME_f32, NAME_bf16, NAME_f16.
#define ECAD_FOR_DTYPES(MACRO) \
    MACRO(f32, float)          \
    MACRO(bf16, __nv_bfloat16) \
    MACRO(f16, __half)
