// Normalisation kernels. One block per normalised group; statistics in f32 with a two-pass
// (mean, then centred variance) reduction over values re-read from global memory, which is
// L2-resident at these sizes (a row is ≤ 4096 values) and keeps registers low (no spills).
#include "common.cuh"

using namespace ecad;

// LN(x)·(1 + scale[b]) + shift[b] over rows of width d (adaLN modulation, PixArt/FLUX).
// x: [B, T, d]; shift, scale: [B, d]; grid = B·T blocks.
template <typename T>
__device__ void ln_modulate_impl(const T *x, const T *shift, const T *scale, T *out, long tokens, int d, float eps) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    const long b = row / tokens;
    const T *xr = x + row * d;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += to_f32(xr[j]);
    const float mean = block_sum(s, scratch) / d;
    float v = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float c = to_f32(xr[j]) - mean;
        v += c * c;
    }
    const float inv = rsqrtf(block_sum(v, scratch) / d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float n = (to_f32(xr[j]) - mean) * inv;
        const float sc = scale ? to_f32(scale[b * d + j]) : 0.0f;
        const float sh = shift ? to_f32(shift[b * d + j]) : 0.0f;
        out[row * d + j] = from_f32<T>(n * (1.0f + sc) + sh);
    }
}

// Affine LayerNorm (weight, bias may be NULL).
template <typename T>
__device__ void layer_norm_impl(const T *x, const T *w, const T *bias, T *out, int d, float eps) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    const T *xr = x + row * d;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) s += to_f32(xr[j]);
    const float mean = block_sum(s, scratch) / d;
    float v = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float c = to_f32(xr[j]) - mean;
        v += c * c;
    }
    const float inv = rsqrtf(block_sum(v, scratch) / d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float n = (to_f32(xr[j]) - mean) * inv;
        if (w) n *= to_f32(w[j]);
        if (bias) n += to_f32(bias[j]);
        out[row * d + j] = from_f32<T>(n);
    }
}

// RMSNorm: w · x / sqrt(mean(x²) + eps) (T5, FLUX QK-norm with d = head dim).
template <typename T>
__device__ void rms_norm_impl(const T *x, const T *w, T *out, int d, float eps) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    const T *xr = x + row * d;
    float s = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float v = to_f32(xr[j]);
        s += v * v;
    }
    const float inv = rsqrtf(block_sum(s, scratch) / d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float n = to_f32(xr[j]) * inv;
        out[row * d + j] = from_f32<T>(w ? n * to_f32(w[j]) : n);
    }
}

// GroupNorm on NCHW (+ optional SiLU): grid = N·groups blocks, each over (C/groups)·HW values.
template <typename T>
__device__ void group_norm_impl(const T *x, const T *w, const T *bias, T *out, int c, int groups, long hw,
                                float eps, int silu_after) {
    __shared__ float scratch[32];
    const long n = blockIdx.x / groups;
    const int g = blockIdx.x % groups;
    const int cg = c / groups;
    const long base = (n * c + (long)g * cg) * hw;
    const long count = cg * hw;
    float s = 0.0f;
    for (long i = threadIdx.x; i < count; i += blockDim.x) s += to_f32(x[base + i]);
    const float mean = block_sum(s, scratch) / count;
    float v = 0.0f;
    for (long i = threadIdx.x; i < count; i += blockDim.x) {
        const float t = to_f32(x[base + i]) - mean;
        v += t * t;
    }
    const float inv = rsqrtf(block_sum(v, scratch) / count + eps);
    for (long i = threadIdx.x; i < count; i += blockDim.x) {
        const int ch = g * cg + (int)(i / hw);
        float y = (to_f32(x[base + i]) - mean) * inv * to_f32(w[ch]) + to_f32(bias[ch]);
        if (silu_after) y = silu(y);
        out[base + i] = from_f32<T>(y);
    }
}

#define ECAD_NORM(SUF, T)                                                                                 \
    extern "C" __global__ void __launch_bounds__(256) layer_norm_modulate_##SUF(                          \
        const T *x, const T *shift, const T *scale, T *out, long tokens, int d, float eps) {             \
        ln_modulate_impl<T>(x, shift, scale, out, tokens, d, eps);                                        \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) layer_norm_##SUF(const T *x, const T *w, const T *b, \
                                                                     T *out, int d, float eps) {         \
        layer_norm_impl<T>(x, w, b, out, d, eps);                                                         \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) rms_norm_##SUF(const T *x, const T *w, T *out,      \
                                                                   int d, float eps) {                   \
        rms_norm_impl<T>(x, w, out, d, eps);                                                              \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) group_norm_##SUF(                                   \
        const T *x, const T *w, const T *b, T *out, int c, int groups, long hw, float eps, int silu_after) { \
        group_norm_impl<T>(x, w, b, out, c, groups, hw, eps, silu_after);                                 \
    }

ECAD_FOR_DTYPES(ECAD_NORM)
