// Arithmetic shared by the cuda_fp16.h and cuda_bf16.h shims: operators on a 16-bit float type H
// computed in f32 and rounded once to H. That is the correctly rounded result of +, -, *, /
// (f32 has at least 2p + 2 bits for both 16-bit formats, so the double rounding is innocuous),
// which is what the GPU's native f16/bf16 instructions return (__hfma may differ from the GPU's
// single rounding in rare double-rounding cases).
#pragma once

#define ECAD_EMU_HALF_OPS(H)                                                                       \
    inline H operator+(const H &a, const H &b) { return H((float)a + (float)b); }                  \
    inline H operator-(const H &a, const H &b) { return H((float)a - (float)b); }                  \
    inline H operator*(const H &a, const H &b) { return H((float)a * (float)b); }                  \
    inline H operator/(const H &a, const H &b) { return H((float)a / (float)b); }                  \
    inline H &operator+=(H &a, const H &b) { return a = a + b; }                                   \
    inline H &operator-=(H &a, const H &b) { return a = a - b; }                                   \
    inline H &operator*=(H &a, const H &b) { return a = a * b; }                                   \
    inline H &operator/=(H &a, const H &b) { return a = a / b; }                                   \
    inline H operator-(const H &a) { return H(-(float)a); }                                        \
    inline H operator+(const H &a) { return a; }                                                   \
    inline bool operator==(const H &a, const H &b) { return (float)a == (float)b; }                \
    inline bool operator!=(const H &a, const H &b) { return (float)a != (float)b; }                \
    inline bool operator<(const H &a, const H &b) { return (float)a < (float)b; }                  \
    inline bool operator>(const H &a, const H &b) { return (float)a > (float)b; }                  \
    inline bool operator<=(const H &a, const H &b) { return (float)a <= (float)b; }                \
    inline bool operator>=(const H &a, const H &b) { return (float)a >= (float)b; }                \
    inline H __hadd(H a, H b) { return a + b; }                                                    \
    inline H __hsub(H a, H b) { return a - b; }                                                    \
    inline H __hmul(H a, H b) { return a * b; }                                                    \
    inline H __hdiv(H a, H b) { return a / b; }                                                    \
    inline H __hneg(H a) { return -a; }                                                            \
    inline H __habs(H a) { return H(fabsf((float)a)); }                                            \
    inline H __hmax(H a, H b) { return H(fmaxf((float)a, (float)b)); }                            \
    inline H __hmin(H a, H b) { return H(fminf((float)a, (float)b)); }                             \
    inline H __hfma(H a, H b, H c) { return H(fmaf((float)a, (float)b, (float)c)); }
