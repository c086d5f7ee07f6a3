// Layout kernels: generic permutation (unpatchify, patch tokens), narrow/concat copies,
// embedding gather, nearest ×2 upsampling and im2col for convolutions lowered to GEMMs.
#include "common.cuh"

using namespace ecad;

struct Perm6 {
    long out_shape[6];
    long in_stride[6];  // input stride of the input dim that lands at each output position
};

template <typename T>
__device__ void permute_impl(const T *x, T *out, long n, Perm6 p) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long r = i, src = 0;
#pragma unroll
        for (int d = 5; d >= 0; --d) {
            const long idx = r % p.out_shape[d];
            r /= p.out_shape[d];
            src += idx * p.in_stride[d];
        }
        out[i] = x[src];
    }
}

// Copies a [outer, len, inner] window starting at `start` of a [outer, dim, inner] tensor into
// `out` at offset `dst_start` of a [outer, dst_dim, inner] tensor (narrow and concat).
template <typename T>
__device__ void copy_window_impl(const T *x, T *out, long outer, long dim, long len, long inner, long start,
                                 long dst_dim, long dst_start) {
    const long n = outer * len * inner;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const long o = i / (len * inner), rem = i % (len * inner);
        const long j = rem / inner, k = rem % inner;
        out[(o * dst_dim + dst_start + j) * inner + k] = x[(o * dim + start + j) * inner + k];
    }
}

template <typename T>
__device__ void embedding_impl(const T *table, const unsigned *ids, T *out, long n_ids, int d) {
    const long n = n_ids * d;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = table[(long)ids[i / d] * d + i % d];
}

template <typename T>
__device__ void upsample2x_impl(const T *x, T *out, long planes, int h, int w) {
    const long n = planes * 4L * h * w;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const long p = i / (4L * h * w), rem = i % (4L * h * w);
        const int y = (int)(rem / (2 * w)), xx = (int)(rem % (2 * w));
        out[i] = x[(p * h + y / 2) * w + xx / 2];
    }
}

// im2col for one image: cols[(c·kh + i)·kw + j, oy·wo + ox] (zero padding).
template <typename T>
__device__ void im2col_impl(const T *x, T *cols, int c, int h, int w, int kh, int kw, int stride, int pad,
                            int ho, int wo) {
    const long n = (long)c * kh * kw * ho * wo;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const long r = i / ((long)ho * wo), q = i % ((long)ho * wo);
        const int ci = (int)(r / (kh * kw)), ki = (int)((r / kw) % kh), kj = (int)(r % kw);
        const int iy = (int)(q / wo) * stride + ki - pad, ix = (int)(q % wo) * stride + kj - pad;
        cols[i] = (iy < 0 || ix < 0 || iy >= h || ix >= w) ? from_f32<T>(0.0f) : x[((long)ci * h + iy) * w + ix];
    }
}

// Storage-dtype conversions (f32 <-> T, round-to-nearest-even): uploads of f32 islands such as
// attention masks into a bf16/f16 run, and mixed-dtype op inputs.
template <typename T>
__device__ void to_f32_impl(const T *x, float *out, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = to_f32(x[i]);
}

template <typename T>
__device__ void from_f32_impl(const float *x, T *out, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = from_f32<T>(x[i]);
}

#define ECAD_LAYOUT(SUF, T)                                                                                \
    extern "C" __global__ void permute_##SUF(const T *x, T *out, long n, Perm6 p) { permute_impl<T>(x, out, n, p); } \
    extern "C" __global__ void copy_window_##SUF(const T *x, T *out, long outer, long dim, long len, long inner,      \
                                                 long start, long dst_dim, long dst_start) {                         \
        copy_window_impl<T>(x, out, outer, dim, len, inner, start, dst_dim, dst_start);                                \
    }                                                                                                                  \
    extern "C" __global__ void embedding_##SUF(const T *table, const unsigned *ids, T *out, long n_ids, int d) {       \
        embedding_impl<T>(table, ids, out, n_ids, d);                                                                  \
    }                                                                                                                  \
    extern "C" __global__ void upsample_nearest2x_##SUF(const T *x, T *out, long planes, int h, int w) {               \
        upsample2x_impl<T>(x, out, planes, h, w);                                                                      \
    }                                                                                                                  \
    extern "C" __global__ void im2col_##SUF(const T *x, T *cols, int c, int h, int w, int kh, int kw, int stride,      \
                                            int pad, int ho, int wo) {                                                 \
        im2col_impl<T>(x, cols, c, h, w, kh, kw, stride, pad, ho, wo);                                                 \
    }                                                                                                                  \
    extern "C" __global__ void to_f32_##SUF(const T *x, float *out, long n) { to_f32_impl<T>(x, out, n); }             \
    extern "C" __global__ void from_f32_##SUF(const float *x, T *out, long n) { from_f32_impl<T>(x, out, n); }

ECAD_FOR_DTYPES(ECAD_LAYOUT)
