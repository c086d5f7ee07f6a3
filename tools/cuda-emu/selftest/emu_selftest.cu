// Kernels that test the emulator itself (run by tests/kernel_emu.rs): the mma fragment layouts,
// shuffle and vote semantics, the 16-bit conversions, shared memory across blocks, and the errors
// the emulator must report instead of hanging or computing garbage.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

static __device__ __forceinline__ unsigned short bits16(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
static __device__ __forceinline__ unsigned short bits16(__half x) { return __half_as_ushort(x); }
static __device__ __forceinline__ uint32_t pack(unsigned short lo, unsigned short hi) {
    return (uint32_t)lo | ((uint32_t)hi << 16);
}

// D = A·B + C, one tile per warp (tile w at A + 256w, B, C, D + 128w): A 16×16 row-major (M×K),
// B 16×8 row-major (K×N), C and D 16×8 row-major. The fragments follow the PTX ISA's formulas for
// mma.m16n8k16 with .f16/.bf16 (groupID = lane >> 2, threadID_in_group = lane % 4):
//   A: row = groupID for a0, a1, a4, a5, else groupID + 8; col = 2·tig + (i & 1), + 8 for i ≥ 4
//   B: row = 2·tig + (i & 1), + 8 for i ≥ 2; col = groupID
//   C, D: row = groupID for c0, c1, else groupID + 8; col = 2·tig + (i & 1)
// with element pairs (a0, a1), (a2, a3), ... packed low to high into one 32-bit register.
template <typename T>
__device__ void mma_tile(const T *A, const T *B, const float *C, float *D, int is_bf16, bool in_place) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    A += 256 * w;
    B += 128 * w;
    C += 128 * w;
    D += 128 * w;
    const int g = lane >> 2, t = lane & 3;
    uint32_t a[4], b[2];
    for (int r = 0; r < 4; ++r) {
        const int i = 2 * r;  // the register holds elements a_i (low) and a_{i+1} (high)
        const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
        const int col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
        a[r] = pack(bits16(A[row * 16 + col]), bits16(A[row * 16 + col + 1]));
    }
    for (int r = 0; r < 2; ++r) {
        const int i = 2 * r;
        const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
        b[r] = pack(bits16(B[row * 8 + g]), bits16(B[(row + 1) * 8 + g]));
    }
    float c[4], d[4];
    for (int i = 0; i < 4; ++i) c[i] = C[(i < 2 ? g : g + 8) * 8 + 2 * t + (i & 1)];
    if (in_place) {
        ecad_emu_mma_16816(c, a, b, c, is_bf16);  // accumulate in place: d aliases c
        for (int i = 0; i < 4; ++i) d[i] = c[i];
    } else {
        ecad_emu_mma_16816(d, a, b, c, is_bf16);
    }
    for (int i = 0; i < 4; ++i) D[(i < 2 ? g : g + 8) * 8 + 2 * t + (i & 1)] = d[i];
}

extern "C" __global__ void emu_mma_bf16(const __nv_bfloat16 *A, const __nv_bfloat16 *B, const float *C, float *D) {
    mma_tile(A, B, C, D, 1, false);
}
extern "C" __global__ void emu_mma_f16(const __half *A, const __half *B, const float *C, float *D) {
    mma_tile(A, B, C, D, 0, true);
}

// 16 results per thread from shuffles and votes of every kind; the test computes what CUDA's
// documented semantics give.
extern "C" __global__ void emu_shuffles(int *out) {
    const unsigned full = 0xffffffffu;
    const int t = threadIdx.x, lane = t & 31, w = t >> 5;
    const int v = 3 * t + 1;
    int *o = out + 16 * t;
    o[0] = __shfl_sync(full, v, (lane * 7 + 3) & 31);
    o[1] = __shfl_sync(full, v, lane + 5, 16);
    o[2] = __shfl_sync(full, v, -1, 8);
    o[3] = __shfl_up_sync(full, v, 3);
    o[4] = __shfl_up_sync(full, v, 2, 8);
    o[5] = __shfl_down_sync(full, v, 5);
    o[6] = __shfl_down_sync(full, v, 3, 16);
    o[7] = __shfl_xor_sync(full, v, 9);
    o[8] = __shfl_xor_sync(full, v, 6, 4);
    o[9] = (int)__ballot_sync(full, lane % 3 == 0);
    o[10] = __any_sync(full, lane == 31 && w == 1);
    o[11] = __all_sync(full, lane < 40);
    o[12] = __all_sync(full, lane != 5);
    o[13] = (int)__shfl_xor_sync(full, (unsigned)v * 2654435761u, 1);
    o[14] = (int)(__shfl_down_sync(full, (float)v * 0.5f, 1) * 2.0f);
    o[15] = (int)__shfl_sync(full, (double)v + 0.25, 0);
}

// x → bf16 and f16 bits, back to f32, and the packed pairs (x, −x).
extern "C" __global__ void emu_convert(const float *x, unsigned *bf_bits, unsigned *h_bits, float *bf_back,
                                       float *h_back, unsigned *bf_pair, unsigned *h_pair, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const __nv_bfloat16 b = __float2bfloat16_rn(x[i]);
        const __half h = __float2half_rn(x[i]);
        bf_bits[i] = __bfloat16_as_ushort(b);
        h_bits[i] = __half_as_ushort(h);
        bf_back[i] = __bfloat162float(__ushort_as_bfloat16(__bfloat16_as_ushort(b)));
        h_back[i] = __half2float(__ushort_as_half(__half_as_ushort(h)));
        const __nv_bfloat162 bp = __floats2bfloat162_rn(x[i], -x[i]);
        const __half2 hp = __floats2half2_rn(x[i], -x[i]);
        uint32_t u;
        memcpy(&u, &bp, 4);
        bf_pair[i] = u;
        memcpy(&u, &hp, 4);
        h_pair[i] = u;
    }
}

// Reads the shared value the previous block left, then leaves its own: shared memory is not reset
// between blocks.
extern "C" __global__ void emu_shared_persists(int *out) {
    __shared__ int s;
    if (threadIdx.x == 0) {
        out[blockIdx.x] = s;
        s = 100 + (int)blockIdx.x;
    }
}

// A partial warp (blockDim 48: warp 1 has lanes 0-15) is fine while nobody reads a missing lane.
extern "C" __global__ void emu_partial_warp_ok(float *x) {
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 8);
}

// ---- each of these must fail with a clear report ----

extern "C" __global__ void emu_bad_divergent_syncthreads(float *x) {
    if (threadIdx.x < 40) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    x[threadIdx.x] = 1.0f;
}

extern "C" __global__ void emu_bad_exit_before_syncthreads(float *x) {
    if (threadIdx.x >= 64) return;
    __syncthreads();
    x[threadIdx.x] = 1.0f;
}

extern "C" __global__ void emu_bad_partial_warp_shfl(float *x) {
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 16);
}

extern "C" __global__ void emu_bad_divergent_shfl(float *x) {
    float v = (float)threadIdx.x;
    if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    x[threadIdx.x] = v;
}

extern "C" __global__ void emu_bad_shfl_vs_syncthreads(float *x) {
    float v = (float)threadIdx.x;
    if (threadIdx.x == 0) {
        __syncthreads();
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 1);
        __syncthreads();
    }
    x[threadIdx.x] = v;
}

extern "C" __global__ void emu_bad_partial_mask(float *x) {
    x[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, (float)threadIdx.x, 1);
}

extern "C" __global__ void emu_bad_write(float *x, int i) {
    if (threadIdx.x == 3) x[i] = 1.0f;
}

extern "C" __global__ void emu_bad_read(const float *x, float *y, int i) {
    if (threadIdx.x == 5) y[0] = x[i];
}

extern "C" __global__ void emu_bad_write_input(const float *x) {
    if (threadIdx.x == 7) const_cast<float *>(x)[1] = 0.0f;
}

// No barrier between the shared write and the read of another thread's slot.
extern "C" __global__ void emu_bad_race(float *out) {
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x + 0.5f;
    out[threadIdx.x] = s[63 - threadIdx.x];
}

extern "C" __global__ void __launch_bounds__(64) emu_bad_launch_bounds(float *x) { x[threadIdx.x] = 0.0f; }

extern "C" __global__ void emu_bad_spin(float *x) {
    volatile int spin = 1;
    while (spin) {
    }
    x[0] = 0.0f;
}

static __device__ __noinline__ float deep(int n, volatile float *sink) {
    volatile float pad[1024];
    pad[n & 1023] = (float)n;
    *sink = pad[(n * 7) & 1023];
    return n == 0 ? 0.0f : deep(n - 1, sink) + 1.0f;
}

extern "C" __global__ void emu_bad_stack(float *x, int depth) { x[threadIdx.x] = deep(depth, x + threadIdx.x); }
