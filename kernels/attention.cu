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
// This is the CUDA-core baseline; a tensor-core (mma) variant is the planned next step.
#include "common.cuh"

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
