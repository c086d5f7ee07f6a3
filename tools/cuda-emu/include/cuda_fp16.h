// Emulator shim for CUDA's cuda_fp16.h: IEEE binary16 storage (`__half`, `__half2`) and the
// conversions, bit-exact with CUDA (round-to-nearest-even; NaN becomes the canonical 0x7fff).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ecad_emu_half_ops.h"

namespace ecad_emu_detail {
inline unsigned short f32_to_f16_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const unsigned short sign = (unsigned short)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;                // NaN
    if (ax >= 0x477ff000u) return sign | 0x7c00u;        // ≥ 65520 (max 65504 + half an ulp): inf
    if (ax >= 0x38800000u) {                             // normal result (≥ 2^-14)
        const uint32_t r = ax - 0x38000000u;             // rebias the exponent 127 → 15
        return sign | (unsigned short)((r + 0x0fffu + ((r >> 13) & 1u)) >> 13);
    }
    if (ax <= 0x33000000u) return sign;                  // ≤ 2^-25 (a tie goes to even: 0)
    // Subnormal result: round(|f| / 2^-24).
    const uint32_t e = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;                     // 14..24
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return sign | (unsigned short)q;
}
inline float f16_bits_to_f32(unsigned short h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t x;
    if (e == 0x1fu) {
        x = sign | 0x7f800000u | (m << 13);
    } else if (e != 0) {
        x = sign | ((e + 112u) << 23) | (m << 13);
    } else {
        float v = (float)m * 5.9604644775390625e-8f;     // m · 2^-24, exact
        memcpy(&x, &v, 4);
        x |= sign;
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}
}  // namespace ecad_emu_detail

struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(ecad_emu_detail::f32_to_f16_bits(f)) {}
    operator float() const { return ecad_emu_detail::f16_bits_to_f32(__x); }
};
struct __align__(4) __half2 {
    __half x, y;  // x: the low 16 bits (lower address)
};
typedef __half half;
typedef __half2 half2;

inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float __half2float(__half h) { return (float)h; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return (short)h.__x; }
inline __half __ushort_as_half(unsigned short u) {
    __half h;
    h.__x = u;
    return h;
}
inline __half __short_as_half(short s) { return __ushort_as_half((unsigned short)s); }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__half(lo), __half(hi)}; }
inline __half2 __float22half2_rn(float2 v) { return {__half(v.x), __half(v.y)}; }
inline __half2 __halves2half2(__half lo, __half hi) { return {lo, hi}; }
inline __half2 __half2half2(__half h) { return {h, h}; }
inline __half __low2half(__half2 v) { return v.x; }
inline __half __high2half(__half2 v) { return v.y; }
inline float __low2float(__half2 v) { return (float)v.x; }
inline float __high2float(__half2 v) { return (float)v.y; }
inline float2 __half22float2(__half2 v) { return {(float)v.x, (float)v.y}; }
inline __half __int2half_rn(int i) { return __half((float)i); }

ECAD_EMU_HALF_OPS(__half)
