// Fused multi-head attention with an online softmax (FlashAttention's recurrence), on
// token-major tensors: q [B, Sq, H·D], k/v [B, Sk, H·D], out [B, Sq, H·D]; f32 accumulation
// whatever the storage dtype. Optional per-key additive bias [B, Sk] (padding masks), per-head
// bias [H, Sq, Sk] (T5 relative positions) and causal masking (CLIP).
//
// Layout choices:
// - A block handles QPB = 16 queries of one (batch, head) with 4 warps (4 queries per warp) and
//   streams K/V through shared memory in tiles of 32 keys, so each K/V tile read from global
//   memory serves 16 queries.
// - In the score phase lane j owns key j of the tile (a D-long dot product against the query
//   held in shared memory: broadcast reads, no shuffles); K rows are padded to D+1 floats so
//   the 32 lanes hit 32 different banks.
// - In the P·V phase lanes own head-dim slices (DPL = ceil(D/32) ≤ 4 values each) and the 32
//   probabilities are broadcast with shuffles.
// - Any head dim up to 128 works (64, 72 and 128 are PixArt's, FLUX's and the VAE-free paths');
//   shared memory stays under the 48 KB static limit: Q 16×128, K 32×129, V 32×128 floats.
// This CUDA-core kernel serves f32 storage and unusual head dims; 16-bit storage at head dims
// 64, 72 and 128 uses the tensor-core kernel further down.
#include "common.cuh"
#include "mma.cuh"

using namespace ecad;

#define QPB 16
#define KT 32
#define MAXD 128

template <typename T, int DPL>
__device__ void attention_impl(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                               T *__restrict__ out, const float *__restrict__ key_bias,
                               const float *__restrict__ head_bias, int sq, int sk, int heads, int d,
                               float scale, int causal) {
    __shared__ float qs[QPB][MAXD];
    __shared__ float ks[KT][MAXD + 1];
    __shared__ float vs[KT][MAXD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * QPB;
    const long hd = (long)heads * d;

    for (int i = threadIdx.x; i < QPB * d; i += blockDim.x) {
        const int r = i / d, c = i % d;
        qs[r][c] = (q0 + r < sq) ? to_f32(q[((long)b * sq + q0 + r) * hd + (long)h * d + c]) * scale : 0.0f;
    }

    float m[4], l[4], acc[4][DPL];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int e = 0; e < DPL; ++e) acc[i][e] = 0.0f;
    }

    const int last_key = causal ? min(sk, q0 + QPB) : sk;
    for (int k0 = 0; k0 < last_key; k0 += KT) {
        __syncthreads();
        for (int i = threadIdx.x; i < KT * d; i += blockDim.x) {
            const int r = i / d, c = i % d;
            const bool ok = k0 + r < sk;
            const long off = ((long)b * sk + k0 + r) * hd + (long)h * d + c;
            ks[r][c] = ok ? to_f32(k[off]) : 0.0f;
            vs[r][c] = ok ? to_f32(v[off]) : 0.0f;
        }
        __syncthreads();
        const int key = k0 + lane;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int qi = warp * 4 + i, qg = q0 + qi;
            float s = -INFINITY;
            if (key < sk && qg < sq && !(causal && key > qg)) {
                float dot = 0.0f;
                for (int c = 0; c < d; ++c) dot = fmaf(qs[qi][c], ks[lane][c], dot);
                s = dot;
                if (key_bias) s += key_bias[(long)b * sk + key];
                if (head_bias) s += head_bias[((long)h * sq + qg) * sk + key];
            }
            const float mt = warp_max(s);
            const float m_new = fmaxf(m[i], mt);
            if (m_new == -INFINITY) continue;  // nothing visible yet for this query
            const float p = __expf(s - m_new);
            const float alpha = __expf(m[i] - m_new);
            l[i] = l[i] * alpha + warp_sum(p);
            m[i] = m_new;
#pragma unroll
            for (int e = 0; e < DPL; ++e) acc[i][e] *= alpha;
            for (int j = 0; j < KT; ++j) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                for (int e = 0; e < DPL; ++e) {
                    const int c = lane + 32 * e;
                    if (c < d) acc[i][e] = fmaf(pj, vs[j][c], acc[i][e]);
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int qg = q0 + warp * 4 + i;
        if (qg >= sq) continue;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
#pragma unroll
        for (int e = 0; e < DPL; ++e) {
            const int c = lane + 32 * e;
            if (c < d) out[((long)b * sq + qg) * hd + (long)h * d + c] = from_f32<T>(acc[i][e] * inv);
        }
    }
}

// Launch: grid (ceil(Sq / 16), H, B), block 128 threads; pick the variant with DPL = ceil(D/32).
#define ECAD_ATTN_DPL(SUF, T, DPL)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) attention_d##DPL##_##SUF(                          \
        const T *q, const T *k, const T *v, T *out, const float *key_bias, const float *head_bias,       \
        int sq, int sk, int heads, int d, float scale, int causal) {                                     \
        attention_impl<T, DPL>(q, k, v, out, key_bias, head_bias, sq, sk, heads, d, scale, causal);      \
    }
#define ECAD_ATTN(SUF, T) \
    ECAD_ATTN_DPL(SUF, T, 1) ECAD_ATTN_DPL(SUF, T, 2) ECAD_ATTN_DPL(SUF, T, 3) ECAD_ATTN_DPL(SUF, T, 4)

ECAD_FOR_DTYPES(ECAD_ATTN)

// ---------------------------------------------------------------------------------------------
// Tensor-core attention for bf16/f16 storage (FlashAttention-2's structure on mma.sync
// m16n8k16, f32 accumulation; fragment layouts in mma.cuh).
//
// - A block of 4 warps handles MQ = 64 queries of one (batch, head), 16 rows per warp; the
//   warp keeps its Q rows as A fragments in registers for the whole pass (Q is read once).
// - K and V stream through shared memory in tiles of MK = 64 keys, read from global memory in
//   16-byte vectors (the head dims served, 64/72/128, are multiples of 8 values, so every row
//   start is 16-byte aligned). K is stored [key][dim] and V transposed, [dim][key], so that
//   both B fragments are pairs of adjacent values: one 32-bit shared load each. Rows are
//   padded by 8 values (16 bytes): the 8 row groups of a warp then start 4 or 12 banks apart
//   and a fragment load touches 32 distinct banks. DP is the head dim rounded up to 16
//   (72 -> 80); the padding dims are zero-filled, so they add nothing to Q·Kᵀ and produce
//   output columns that are not written.
// - S = Q·Kᵀ for 16 x 64 lands in registers in the C layout; a quad (4 lanes) shares each row,
//   so row max and row sum are two xor-shuffles. The probabilities are re-packed from the C
//   layout of two adjacent 8-key tiles straight into the A layout of the next mma (no shared
//   memory round trip), rounded to T as FlashAttention does; the row sums use the f32 values.
// - Shared memory: 64 x (128 + 8) x 2 + 128 x (64 + 8) x 2 bytes = 35 KB at DP = 128, under
//   the 48 KB static limit.
#define MQ 64
#define MK 64
#define SPAD 8

template <typename T>
__device__ __forceinline__ unsigned q_pair(const T *qb, long hd, int row, int sq, int c, int d) {
    // d is even, so c < d implies c + 1 < d; the pair is 4-byte aligned (hd, d and c even).
    if (row >= sq || c >= d) return 0u;
    return ld32(qb + (long)row * hd + c);
}

template <typename T, int DP>
__device__ void attention_mma_impl(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                                   T *__restrict__ out, const float *__restrict__ key_bias,
                                   const float *__restrict__ head_bias, int sq, int sk, int heads, int d,
                                   float scale, int causal) {
    alignas(16) __shared__ T ks[MK][DP + SPAD];
    alignas(16) __shared__ T vt[DP][MK + SPAD];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y;
    const int r0 = blockIdx.x * MQ + warp * 16 + g, r1 = r0 + 8;
    const long hd = (long)heads * d;

    const T *qb = q + (long)b * sq * hd + (long)h * d;
    unsigned qa[DP / 16][4];
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
        const int c = kk * 16 + 2 * t;
        qa[kk][0] = q_pair(qb, hd, r0, sq, c, d);
        qa[kk][1] = q_pair(qb, hd, r1, sq, c, d);
        qa[kk][2] = q_pair(qb, hd, r0, sq, c + 8, d);
        qa[kk][3] = q_pair(qb, hd, r1, sq, c + 8, d);
    }

    float o[DP / 8][4];
#pragma unroll
    for (int i = 0; i < DP / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    const int kend = causal ? min(sk, (int)(blockIdx.x + 1) * MQ) : sk;
    for (int k0 = 0; k0 < kend; k0 += MK) {
        __syncthreads();
        for (int i = threadIdx.x; i < MK * (DP / 8); i += blockDim.x) {
            const int r = i / (DP / 8), c = (i % (DP / 8)) * 8;
            u32x4 kv = {0u, 0u, 0u, 0u}, vv = {0u, 0u, 0u, 0u};
            if (k0 + r < sk && c < d) {  // d % 8 == 0: a chunk is all inside or all padding
                const long off = ((long)b * sk + k0 + r) * hd + (long)h * d + c;
                kv = ld128(k + off);
                vv = ld128(v + off);
            }
            st128(&ks[r][c], kv);
            const unsigned w[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                vt[c + 2 * j][r] = from_bits<T>(w[j] & 0xffffu);
                vt[c + 2 * j + 1][r] = from_bits<T>(w[j] >> 16);
            }
        }
        __syncthreads();

        // S = Q·Kᵀ (16 rows x 64 keys per warp).
        float s[MK / 8][4];
#pragma unroll
        for (int nt = 0; nt < MK / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
            for (int nt = 0; nt < MK / 8; ++nt) {
                const T *kr = &ks[nt * 8 + g][kk * 16 + 2 * t];
                const unsigned bb[2] = {ld32(kr), ld32(kr + 8)};
                mma_16816<T>(s[nt], qa[kk], bb);
            }
        }

        // Scale, biases, masks; this thread's rows r0 (elements 0, 1) and r1 (2, 3).
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < MK / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = k0 + nt * 8 + 2 * t + (e & 1);
                const int row = e < 2 ? r0 : r1;
                float x = -INFINITY;
                if (key < sk && row < sq && !(causal && key > row)) {
                    x = s[nt][e] * scale;
                    if (key_bias) x += key_bias[(long)b * sk + key];
                    if (head_bias) x += head_bias[((long)h * sq + row) * sk + key];
                }
                s[nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float m_new = fmaxf(m[i], mx[i]);
            // A row with nothing visible yet keeps m = -inf; exponentiate against 0 so that
            // exp(-inf - m) is 0, never NaN.
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;
            alpha[i] = __expf(m[i] - m_use);
            m[i] = m_new;
            mx[i] = m_use;
        }
        float rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < MK / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = __expf(s[nt][e] - mx[e >> 1]);
                s[nt][e] = p;
                rs[e >> 1] += p;
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            rs[i] += __shfl_xor_sync(0xffffffffu, rs[i], 1);
            rs[i] += __shfl_xor_sync(0xffffffffu, rs[i], 2);
            l[i] = l[i] * alpha[i] + rs[i];
        }
#pragma unroll
        for (int nt = 0; nt < DP / 8; ++nt) {
            o[nt][0] *= alpha[0];
            o[nt][1] *= alpha[0];
            o[nt][2] *= alpha[1];
            o[nt][3] *= alpha[1];
        }

        // O += P·V, 16 keys per mma k-step.
#pragma unroll
        for (int kk = 0; kk < MK / 16; ++kk) {
            const unsigned pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                    pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int nt = 0; nt < DP / 8; ++nt) {
                const T *vr = &vt[nt * 8 + g][kk * 16 + 2 * t];
                const unsigned bb[2] = {ld32(vr), ld32(vr + 8)};
                mma_16816<T>(o[nt], pa, bb);
            }
        }
    }

    const float inv0 = l[0] > 0.0f ? 1.0f / l[0] : 0.0f, inv1 = l[1] > 0.0f ? 1.0f / l[1] : 0.0f;
    T *ob = out + (long)b * sq * hd + (long)h * d;
#pragma unroll
    for (int nt = 0; nt < DP / 8; ++nt) {
        const int c = nt * 8 + 2 * t;
        if (c >= d) continue;
        if (r0 < sq) {
            ob[(long)r0 * hd + c] = from_f32<T>(o[nt][0] * inv0);
            ob[(long)r0 * hd + c + 1] = from_f32<T>(o[nt][1] * inv0);
        }
        if (r1 < sq) {
            ob[(long)r1 * hd + c] = from_f32<T>(o[nt][2] * inv1);
            ob[(long)r1 * hd + c + 1] = from_f32<T>(o[nt][3] * inv1);
        }
    }
}

// Launch: grid (ceil(Sq / 64), H, B), block 128 threads; DP = head dim rounded up to 16.
#define ECAD_ATTN_MMA(SUF, T, DP)                                                                      \
    extern "C" __global__ void __launch_bounds__(128) attention_mma_d##DP##_##SUF(                     \
        const T *q, const T *k, const T *v, T *out, const float *key_bias, const float *head_bias,     \
        int sq, int sk, int heads, int d, float scale, int causal) {                                   \
        attention_mma_impl<T, DP>(q, k, v, out, key_bias, head_bias, sq, sk, heads, d, scale, causal); \
    }
ECAD_ATTN_MMA(bf16, __nv_bfloat16, 64)
ECAD_ATTN_MMA(bf16, __nv_bfloat16, 80)
ECAD_ATTN_MMA(bf16, __nv_bfloat16, 128)
ECAD_ATTN_MMA(f16, __half, 64)
ECAD_ATTN_MMA(f16, __half, 80)
ECAD_ATTN_MMA(f16, __half, 128)
