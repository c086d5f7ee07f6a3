// Reductions whose result goes back to the host: the runtime cache policies' skip test
// (src/cache/policy.rs), per batch row r of two same-shaped tensors a, b of n values a row,
//
//     out[r] = (Σ_i |a[r, i] − b[r, i]|, Σ_i |b[r, i]|)
//
// so that the host reads back 2·B floats per step instead of both [B, N, D] tensors.
//
// Deterministic by construction: the summation tree depends only on n and the row count, never
// on how blocks are scheduled, and no float is accumulated with atomics. Two launches:
//
// 1. abs_diff_partial_T, grid (chunks, rows), ABS_DIFF_THREADS threads: block (c, r) sums the
//    fixed chunk [c·CHUNK, (c+1)·CHUNK) of row r. Thread t adds, in order, the values at
//    c·CHUNK + k·ABS_DIFF_THREADS + t for k = 0..ABS_DIFF_PER_THREAD−1 (a warp reads 32
//    consecutive values at each k: coalesced), then the block sums its threads with the fixed
//    butterfly tree of block_sum (common.cuh), and thread 0 writes the pair to part[r, c].
// 2. abs_diff_finish, grid (rows), ABS_DIFF_THREADS threads: thread t adds part[r, j] for
//    j = t, t + ABS_DIFF_THREADS, ... in order, the block sums the threads with the same tree,
//    and thread 0 writes out[r].
//
// Why these sizes: 256 threads a block, as the other kernels (8 warps hide the load latency,
// block_sum's scratch is 32 floats). 16 values a thread amortise the block tree (two block_sum,
// four barriers) over 4096 values a block while keeping the grid wide: a FLUX 1024-px image
// stream (4096 tokens × 3072) gives 3072 blocks a row, many waves on any GPU, where one block
// a row (as the norm kernels do) would leave all but B multiprocessors idle. The inner loop is
// unrolled, so a thread has its 2 × 16 loads in flight at once. part holds 2 floats a chunk
// (24 KiB for that row): nothing to read back but out.
//
// Accuracy: everything is summed in f32 (from values widened exactly from the storage dtype).
// All terms are non-negative, so the relative error of each sum is at most its tree depth
// times 2^-24: 16 (a thread) + 8 (a block) + ceil(chunks / 256) + 8, about 2.6e-6 in the
// worst case for the 12.6M values of the FLUX row above, and of order 1e-7 on random values.
// The CPU backend sums in f64 in index order; the decisions (a ratio against a threshold such
// as 0.08) can only differ where the ratio lies within that distance of the threshold.
#include "common.cuh"

using namespace ecad;

// Keep in sync with src/backend/cuda/backend/reduce.rs (ABS_DIFF_CHUNK, the block size).
#define ABS_DIFF_THREADS 256
#define ABS_DIFF_PER_THREAD 16
#define ABS_DIFF_CHUNK (ABS_DIFF_THREADS * ABS_DIFF_PER_THREAD)

template <typename T>
__device__ void abs_diff_partial_impl(const T *a, const T *b, float *part, long n, int chunks) {
    __shared__ float scratch[32];
    const long row = blockIdx.y;
    const int chunk = blockIdx.x;
    const T *ar = a + row * n;
    const T *br = b + row * n;
    const long start = (long)chunk * ABS_DIFF_CHUNK + threadIdx.x;
    float d = 0.0f, p = 0.0f;
#pragma unroll
    for (int k = 0; k < ABS_DIFF_PER_THREAD; ++k) {
        const long i = start + (long)k * ABS_DIFF_THREADS;
        if (i < n) {
            const float y = to_f32(br[i]);
            d += fabsf(to_f32(ar[i]) - y);
            p += fabsf(y);
        }
    }
    d = block_sum(d, scratch);
    p = block_sum(p, scratch);
    if (threadIdx.x == 0) {
        float *o = part + 2 * (row * chunks + chunk);
        o[0] = d;
        o[1] = p;
    }
}

// The pairs of one row's chunks, summed in a fixed order: out[r] = (Σ_c d, Σ_c p).
extern "C" __global__ void __launch_bounds__(ABS_DIFF_THREADS) abs_diff_finish(const float *part, float *out,
                                                                               int chunks) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    const float *pr = part + 2 * row * chunks;
    float d = 0.0f, p = 0.0f;
    for (int j = threadIdx.x; j < chunks; j += ABS_DIFF_THREADS) {
        d += pr[2 * j];
        p += pr[2 * j + 1];
    }
    d = block_sum(d, scratch);
    p = block_sum(p, scratch);
    if (threadIdx.x == 0) {
        out[2 * row] = d;
        out[2 * row + 1] = p;
    }
}

#define ECAD_REDUCE(SUF, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(ABS_DIFF_THREADS)                                        \
        abs_diff_partial_##SUF(const T *a, const T *b, float *part, long n, int chunks) {                 \
        abs_diff_partial_impl<T>(a, b, part, n, chunks);                                                  \
    }

ECAD_FOR_DTYPES(ECAD_REDUCE)
