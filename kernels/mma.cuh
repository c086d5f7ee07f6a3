// Tensor-core fragments: the warp-wide mma.sync.m16n8k16 (16-bit inputs, f32 accumulate) that
// the tensor-core attention is built on, and 16-bit packing helpers.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type");
// g = lane >> 2, t = lane & 3, each 32-bit register holds two 16-bit values, the lower column
// (or lower k) in the low half:
//   A 16x16 (row-major, M x K): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1],
//                               a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..2t+9]
//   B 16x8  (K x N):            b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   C/D 16x8 (f32):             c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1]
// Under ECAD_EMU (the CPU emulator of tools/cuda-emu, used by tests/kernel_emu.rs) the product
// is computed by the emulator from these documented layouts instead of the instruction.
#pragma once
#include "common.cuh"

#ifdef ECAD_EMU
void ecad_emu_mma_16816(float d[4], const unsigned a[4], const unsigned b[2], const float c[4], int is_bf16);
#endif

namespace ecad {

__device__ __forceinline__ unsigned bits16(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ unsigned bits16(__half x) { return __half_as_ushort(x); }

// A 16-bit pattern as T.
template <typename T> __device__ __forceinline__ T from_bits(unsigned u);
template <> __device__ __forceinline__ __nv_bfloat16 from_bits<__nv_bfloat16>(unsigned u) {
    return __ushort_as_bfloat16((unsigned short)u);
}
template <> __device__ __forceinline__ __half from_bits<__half>(unsigned u) {
    return __ushort_as_half((unsigned short)u);
}

// Two f32 values rounded to T and packed (lo in the low half).
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi) {
    return bits16(from_f32<T>(lo)) | (bits16(from_f32<T>(hi)) << 16);
}

// Two stored T values packed (lo in the low half).
template <typename T> __device__ __forceinline__ unsigned pack2t(T lo, T hi) {
    return bits16(lo) | (bits16(hi) << 16);
}

// 16 bytes (eight 16-bit values): the unit of the vectorised global loads.
struct alignas(16) u32x4 {
    unsigned x, y, z, w;
};

// Two adjacent 16-bit values as one 32-bit word (p 4-byte aligned), and eight as 16 bytes (p
// 16-byte aligned). The emulator copies bytes instead of type-punning through the pointer.
template <typename T> __device__ __forceinline__ unsigned ld32(const T *p) {
#ifdef ECAD_EMU
    unsigned r;
    __builtin_memcpy(&r, p, 4);
    return r;
#else
    return *reinterpret_cast<const unsigned *>(p);
#endif
}

template <typename T> __device__ __forceinline__ u32x4 ld128(const T *p) {
#ifdef ECAD_EMU
    u32x4 r;
    __builtin_memcpy(&r, p, 16);
    return r;
#else
    return *reinterpret_cast<const u32x4 *>(p);
#endif
}

template <typename T> __device__ __forceinline__ void st128(T *p, u32x4 v) {
#ifdef ECAD_EMU
    __builtin_memcpy(p, &v, 16);
#else
    *reinterpret_cast<u32x4 *>(p) = v;
#endif
}

template <typename T> struct is_bf16_t { static const int value = 0; };
template <> struct is_bf16_t<__nv_bfloat16> { static const int value = 1; };

// d += A·B for one 16x8x16 tile, T = __nv_bfloat16 or __half.
template <typename T>
__device__ __forceinline__ void mma_16816(float d[4], const unsigned a[4], const unsigned b[2]) {
#ifdef ECAD_EMU
    const float c[4] = {d[0], d[1], d[2], d[3]};
    ecad_emu_mma_16816(d, a, b, c, is_bf16_t<T>::value);
#else
    if (is_bf16_t<T>::value) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#endif
}

}  // namespace ecad
