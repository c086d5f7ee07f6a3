// CPU emulation of the CUDA C++ that kernels/*.cu use, force-included before a kernel file:
//
//     g++ -std=c++20 -O1 -include tools/cuda-emu/emu.h -I tools/cuda-emu/include -x c++ -c kernels/X.cu
//
// (`-x c++` because g++ does not know the .cu suffix.) Kernels compile unchanged: the CUDA
// keywords become plain C++, the built-in variables (threadIdx, ...) read the emulated thread
// that is running, and the synchronising intrinsics (__syncthreads, warp shuffles and votes,
// ecad_emu_mma_16816) are calls into the runtime (runtime.cpp), which runs every thread of a
// block as a fiber and checks that each barrier is reached by the threads it waits for.
// README.md beside this file describes the execution model and what it does and does not prove.
#pragma once

#define ECAD_EMU 1

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---- keywords --------------------------------------------------------------------------------

#ifdef ECAD_EMU_LIST
// Listing mode (build.sh, preprocessor only): markers that survive `g++ -E`, so the extern "C"
// kernels and their launch bounds can be read off the expanded source.
#define __global__ __ecad_emu_global__
#define __launch_bounds__(...) __ecad_emu_launch_bounds__(__VA_ARGS__)
#else
#define __global__
#define __launch_bounds__(...)
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __constant__
#define __managed__
#define __align__(n) __attribute__((aligned(n)))
// One block runs at a time, so a static variable is exactly one block's shared memory. Like the
// hardware's, it is not cleared between blocks or launches (a static starts zeroed once, at
// program start). `extern __shared__` (dynamic shared memory) is not supported.
#define __shared__ static

// ---- vector and index types -----------------------------------------------------------------

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
struct __align__(8) float2 {
    float x, y;
};
struct float3 {
    float x, y, z;
};
struct __align__(16) float4 {
    float x, y, z, w;
};
struct __align__(8) int2 {
    int x, y;
};
struct __align__(16) int4 {
    int x, y, z, w;
};
struct __align__(8) uint2 {
    unsigned int x, y;
};
struct __align__(16) uint4 {
    unsigned int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// ---- runtime interface (runtime.cpp) --------------------------------------------------------

namespace emu {
namespace rt {
// The running thread's coordinates, rewritten by the scheduler at every switch.
struct Coords {
    uint3 thread_idx, block_idx;
    dim3 block_dim, grid_dim;
};
extern Coords coords;

enum ShflOp { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR };
enum VoteOp { VOTE_BALLOT, VOTE_ANY, VOTE_ALL, VOTE_SYNCWARP };

void syncthreads(const char *file, int line);
uint64_t shfl(ShflOp op, unsigned mask, uint64_t value, int arg, int width, const char *file, int line);
unsigned vote(VoteOp op, unsigned mask, int pred, const char *file, int line);
unsigned activemask();
}  // namespace rt
}  // namespace emu

#define threadIdx (static_cast<const ::uint3 &>(::emu::rt::coords.thread_idx))
#define blockIdx (static_cast<const ::uint3 &>(::emu::rt::coords.block_idx))
#define blockDim (static_cast<const ::dim3 &>(::emu::rt::coords.block_dim))
#define gridDim (static_cast<const ::dim3 &>(::emu::rt::coords.grid_dim))
#define warpSize 32

// ---- synchronisation ------------------------------------------------------------------------
// The call site (file, line) identifies a barrier: threads waiting at different sites can never
// meet, which the runtime reports as divergence instead of hanging.

inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::emu::rt::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    ::emu::rt::vote(::emu::rt::VOTE_SYNCWARP, mask, 1, file, line);
}
inline void __threadfence() {}
inline void __threadfence_block() {}
inline unsigned __activemask() { return ::emu::rt::activemask(); }

namespace emu {
namespace rt {
template <typename T>
inline uint64_t to_bits(T v) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffled values are at most 64 bits");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
}  // namespace rt
}  // namespace emu

// Warp shuffles: full-mask semantics (every existing lane of the warp must take part), any
// trivially copyable value of up to 64 bits (int, unsigned, float, double, __half2, ...).
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32, const char *file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    using namespace ::emu::rt;
    return from_bits<T>(shfl(SHFL_IDX, mask, to_bits(var), src_lane, width, file, line));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const char *file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
    using namespace ::emu::rt;
    return from_bits<T>(shfl(SHFL_UP, mask, to_bits(var), (int)delta, width, file, line));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32,
                          const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    using namespace ::emu::rt;
    return from_bits<T>(shfl(SHFL_DOWN, mask, to_bits(var), (int)delta, width, file, line));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, const char *file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
    using namespace ::emu::rt;
    return from_bits<T>(shfl(SHFL_XOR, mask, to_bits(var), lane_mask, width, file, line));
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    return ::emu::rt::vote(::emu::rt::VOTE_BALLOT, mask, pred, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::emu::rt::vote(::emu::rt::VOTE_ANY, mask, pred, file, line);
}
inline int __all_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return (int)::emu::rt::vote(::emu::rt::VOTE_ALL, mask, pred, file, line);
}

// Tensor cores: the warp-collective PTX
//   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 {d0..d3}, {a0..a3}, {b0,b1}, {c0..c3}
// with the PTX ISA's fragment layouts (groupID = lane >> 2, tig = lane & 3; the lower column
// or row of a pair in the low 16 bits):
//   a[0] = A[g][2t..2t+1]  a[1] = A[g+8][2t..2t+1]  a[2] = A[g][2t+8..2t+9]  a[3] = A[g+8][2t+8..2t+9]
//   b[0] = B[2t..2t+1][g]  b[1] = B[2t+8..2t+9][g]
//   c/d[0..1] = C[g][2t..2t+1]  c/d[2..3] = C[g+8][2t..2t+1]
// Products of the exact 16-bit inputs, accumulated in f32. All 32 lanes must call it together.
extern "C" void ecad_emu_mma_16816(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                                   int is_bf16);

// ---- atomics (one OS thread runs every emulated thread, so plain read-modify-writes are atomic) --

template <typename T>
inline T atomicAdd(T *p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <typename T>
inline T atomicSub(T *p, T v) {
    T old = *p;
    *p = old - v;
    return old;
}
template <typename T>
inline T atomicExch(T *p, T v) {
    T old = *p;
    *p = v;
    return old;
}
template <typename T>
inline T atomicMax(T *p, T v) {
    T old = *p;
    *p = old < v ? v : old;
    return old;
}
template <typename T>
inline T atomicMin(T *p, T v) {
    T old = *p;
    *p = v < old ? v : old;
    return old;
}
template <typename T>
inline T atomicCAS(T *p, T compare, T v) {
    T old = *p;
    if (old == compare) *p = v;
    return old;
}

// ---- math -----------------------------------------------------------------------------------
// The fast intrinsics follow the PTX approximations' structure where it decides the error:
// __expf is ex2.approx(x·log2 e), so its error grows with |x| through the rounding of that
// product, as on the GPU. The remaining ulp-level differences from the GPU's approximations
// are below every tolerance the tests use.

inline float __expf(float x) {
    const float r = exp2f(x * 1.4426950408889634f);
    return r < FLT_MIN ? 0.0f : r;  // ex2.approx.ftz flushes subnormal results
}
inline float __exp10f(float x) { return exp2f(x * 3.3219280948873623f); }
inline float __logf(float x) { return log2f(x) * 0.6931471805599453f; }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float x, float y) { return exp2f(y * log2f(x)); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
// div.approx: 0 for 2^126 < |y| < 2^128, else x·(1/y).
inline float __fdividef(float x, float y) {
    const float ay = fabsf(y);
    if (ay > 8.507059173023462e37f && ay < INFINITY) return 0.0f;
    return x * (1.0f / y);
}
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float exp10f(float x) { return powf(10.0f, x); }

template <typename T>
inline T __ldg(const T *p) {
    return *p;
}

// CUDA's min/max overloads (math_functions.h) for integers, float and double.
#define ECAD_EMU_MINMAX(T)                          \
    inline T min(T a, T b) { return b < a ? b : a; } \
    inline T max(T a, T b) { return a < b ? b : a; }
ECAD_EMU_MINMAX(int)
ECAD_EMU_MINMAX(unsigned int)
ECAD_EMU_MINMAX(long)
ECAD_EMU_MINMAX(unsigned long)
ECAD_EMU_MINMAX(long long)
ECAD_EMU_MINMAX(unsigned long long)
#undef ECAD_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// Integer intrinsics.
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline int __mul24(int a, int b) { return (int)((long long)((a << 8) >> 8) * ((b << 8) >> 8)); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }

// CUDA headers a kernel may include are provided (or stubbed) in include/.
