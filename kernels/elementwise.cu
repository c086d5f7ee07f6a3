// Elementwise kernels: activations, broadcast add/mul, linear combinations, and the fused
// cache-blend op (out = x + gate ⊙ branch) through which a cached component is consumed.
// Grid-stride loops; 256 threads a block is enough to saturate bandwidth on these.
#include "common.cuh"

using namespace ecad;

template <typename T>
__device__ void act_impl(T *x, long n, int act) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float v = to_f32(x[i]);
        v = apply_act(v, act);
        x[i] = from_f32<T>(v);
    }
}

// out[r, j] = act(y[r, j] + bias[j]) in place (the GEMM epilogue when cuBLASLt does not fuse it).
template <typename T>
__device__ void bias_act_impl(T *y, const T *bias, long rows, int n, int act) {
    const long total = rows * n;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        float v = to_f32(y[i]) + (bias ? to_f32(bias[i % n]) : 0.0f);
        v = apply_act(v, act);
        y[i] = from_f32<T>(v);
    }
}

// op 0: add, 1: mul; b broadcast over leading dims (b has bn elements, a has n).
template <typename T>
__device__ void binary_impl(const T *a, const T *b, T *out, long n, long bn, int op) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float x = to_f32(a[i]), y = to_f32(b[i % bn]);
        out[i] = from_f32<T>(op == 0 ? x + y : x * y);
    }
}

// out = c0·x0 + c1·x1 + c2·x2 (x2 may be NULL); sampler updates and CFG.
template <typename T>
__device__ void lincomb_impl(const T *x0, const T *x1, const T *x2, float c0, float c1, float c2, T *out, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float v = c0 * to_f32(x0[i]);
        if (x1) v += c1 * to_f32(x1[i]);
        if (x2) v += c2 * to_f32(x2[i]);
        out[i] = from_f32<T>(v);
    }
}

// The cache blend: out[b, t, d] = x[b, t, d] + gate[b, d] · branch[b, t, d] (gate NULL = 1).
// `branch` is either the fresh component output or the cached buffer: reading it here is all a
// reused component costs.
template <typename T>
__device__ void gate_residual_impl(const T *x, const T *gate, const T *branch, T *out, long total, long tokens, int d) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long b = i / (tokens * d);
        const float g = gate ? to_f32(gate[b * d + i % d]) : 1.0f;
        out[i] = from_f32<T>(to_f32(x[i]) + g * to_f32(branch[i]));
    }
}

// Up to three blends in one pass: out = ((x + g0⊙b0) + g1⊙b1) + g2⊙b2, in that order in f32 (a
// NULL branch ends the chain; a NULL gate is ones). The reused components of a block are
// blended here together: one read of x and one write instead of three of each.
template <typename T>
__device__ void gate_residual3_impl(const T *x, const T *g0, const T *b0, const T *g1, const T *b1, const T *g2,
                                    const T *b2, T *out, long total, long tokens, int d) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        const long gi = (i / (tokens * d)) * d + i % d;
        float v = to_f32(x[i]);
        v += (g0 ? to_f32(g0[gi]) : 1.0f) * to_f32(b0[i]);
        if (b1) v += (g1 ? to_f32(g1[gi]) : 1.0f) * to_f32(b1[i]);
        if (b2) v += (g2 ? to_f32(g2[gi]) : 1.0f) * to_f32(b2[i]);
        out[i] = from_f32<T>(v);
    }
}

// x[i] = bf16(x[i]) in place, round-to-nearest-even, kept in the storage dtype T (the bf16
// precision decorator's rounding point on f32 storage; the identity on bf16 storage).
template <typename T>
__device__ void round_bf16_impl(T *x, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        x[i] = from_f32<T>(__bfloat162float(__float2bfloat16_rn(to_f32(x[i]))));
    }
}

// x[i] = f16(x[i]) in place (the f16 rounding point on f32 storage; the identity on f16 storage).
template <typename T>
__device__ void round_f16_impl(T *x, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        x[i] = from_f32<T>(__half2float(__float2half_rn(to_f32(x[i]))));
    }
}

// Rotary embedding, FLUX's interleaved pairs: for each row r of x [rows, heads·d] at sequence
// position s = r % seq, pair i of every head is rotated by (cos, sin)[s, i]. The tables stay
// f32 (diffusers computes them in float32 whatever the model dtype); one thread per pair.
template <typename T>
__device__ void rope_impl(const T *x, const float *cos, const float *sin, T *out, long rows, long seq, int hd,
                          int d) {
    const int half_d = d / 2, pairs = hd / 2;
    const long n = rows * pairs;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const long r = i / pairs;
        const int p = (int)(i % pairs), pi = p % half_d;
        const long s = r % seq;
        const float c = cos[s * half_d + pi], sn = sin[s * half_d + pi];
        const long o = r * hd + 2L * p;
        const float a = to_f32(x[o]), b = to_f32(x[o + 1]);
        out[o] = from_f32<T>(a * c - b * sn);
        out[o + 1] = from_f32<T>(a * sn + b * c);
    }
}

#define ECAD_ELEMENTWISE(SUF, T)                                                                        \
    extern "C" __global__ void activation_##SUF(T *x, long n, int act) { act_impl<T>(x, n, act); }        \
    extern "C" __global__ void bias_act_##SUF(T *y, const T *bias, long rows, int n, int act) {          \
        bias_act_impl<T>(y, bias, rows, n, act);                                                          \
    }                                                                                                     \
    extern "C" __global__ void round_bf16_##SUF(T *x, long n) { round_bf16_impl<T>(x, n); }              \
    extern "C" __global__ void round_f16_##SUF(T *x, long n) { round_f16_impl<T>(x, n); }                \
    extern "C" __global__ void rope_##SUF(const T *x, const float *cos, const float *sin, T *out, long rows, \
                                          long seq, int hd, int d) {                                      \
        rope_impl<T>(x, cos, sin, out, rows, seq, hd, d);                                                 \
    }                                                                                                     \
    extern "C" __global__ void binary_##SUF(const T *a, const T *b, T *out, long n, long bn, int op) {    \
        binary_impl<T>(a, b, out, n, bn, op);                                                             \
    }                                                                                                     \
    extern "C" __global__ void lincomb_##SUF(const T *x0, const T *x1, const T *x2, float c0, float c1,   \
                                             float c2, T *out, long n) {                                  \
        lincomb_impl<T>(x0, x1, x2, c0, c1, c2, out, n);                                                  \
    }                                                                                                     \
    extern "C" __global__ void gate_residual3_##SUF(const T *x, const T *g0, const T *b0, const T *g1,   \
                                                    const T *b1, const T *g2, const T *b2, T *out,       \
                                                    long total, long tokens, int d) {                     \
        gate_residual3_impl<T>(x, g0, b0, g1, b1, g2, b2, out, total, tokens, d);                         \
    }                                                                                                     \
    extern "C" __global__ void gate_residual_##SUF(const T *x, const T *gate, const T *branch, T *out,   \
                                                   long total, long tokens, int d) {                      \
        gate_residual_impl<T>(x, gate, branch, out, total, tokens, d);                                    \
    }

ECAD_FOR_DTYPES(ECAD_ELEMENTWISE)
