// edgeq minifloat kernels: minifloat tensors stay sign|exponent|mantissa bits (E, M) in memory, and every
// arithmetic step on them is exact integer arithmetic.
//
// Decoding. A minifloat with E exponent and M mantissa bits is an integer multiple of its smallest subnormal
// step (2^(1 - bias - M)): value / step = mantissa (exponent field 0, subnormal) or (2^M | mantissa) << (exp - 1)
// (normal). The bias and any scale only move the step, so they are not in the kernel: the generator folds them
// into the binary point of an exact accumulator, or into the declared rescale below.
//
// Products. The product of two minifloats is the product of their significands shifted by the sum of their
// exponent fields (the datapath of "Post-Training Quantization with Low-precision Minifloats and Integers on
// FPGAs"): exact, in an accumulator the generator sizes by the worst case n_x + n_w + ceil(log2 K).
// An integer operand (E == 0) is its own significand with shift 0, so mixed int x minifloat layers use the same
// function.
//
// Rounding into an output minifloat is done by edgeq_threshold (edgeq_kernels.h) with MFBITS > 0: thresholds
// count the signed ordinal of the output value, which edgeq_mf_from_ordinal turns into bits.
//
// Arbitrary (float32) scales: edgeq_rescale computes y = f32(f32(A) * m[c]) (+ b[c]), three IEEE operations,
// which the emulator's mac_rescale (edgeq/emulate.py) computes identically.
#ifndef EDGEQ_MINIFLOAT_H
#define EDGEQ_MINIFLOAT_H

#include <stdint.h>

// ---- fields of one code (E == 0: a two's-complement integer code) ------------------------------------------------
template <int E, int M>
static inline int64_t edgeq_mf_sig(int64_t b) {
#pragma HLS INLINE
    if (E == 0) return b;
    const int64_t e = (b >> M) & ((1 << (E > 0 ? E : 1)) - 1), m = b & ((1 << M) - 1);
    return e ? (m | ((int64_t)1 << M)) : m;
}

template <int E, int M>
static inline int edgeq_mf_shift(int64_t b) {
#pragma HLS INLINE
    if (E == 0) return 0;
    const int e = (int)((b >> M) & ((1 << (E > 0 ? E : 1)) - 1));
    return e ? e - 1 : 0;
}

template <int E, int M>
static inline bool edgeq_mf_neg(int64_t b) {
#pragma HLS INLINE
    return E > 0 && ((b >> (E + M)) & 1);
}

// value / step of one code, exact (E == 0: the integer code itself)
template <typename AT, int E, int M, typename T>
static inline AT edgeq_mf_decode(T code) {
#pragma HLS INLINE
    const int64_t b = (int64_t)code;
    const AT v = (AT)edgeq_mf_sig<E, M>(b) << edgeq_mf_shift<E, M>(b);
    return edgeq_mf_neg<E, M>(b) ? (AT)(-v) : v;
}

// the exact product of two operands: significands multiplied, then shifted by the sum of the exponent fields
template <typename AT, int XE, int XM, int WE, int WM, typename XT, typename WT>
static inline AT edgeq_mf_product(XT x, WT w) {
#pragma HLS INLINE
    const int64_t bx = (int64_t)x, bw = (int64_t)w;
    const AT p = ((AT)edgeq_mf_sig<XE, XM>(bx) * (AT)edgeq_mf_sig<WE, WM>(bw))
                 << (edgeq_mf_shift<XE, XM>(bx) + edgeq_mf_shift<WE, WM>(bw));
    return (edgeq_mf_neg<XE, XM>(bx) != edgeq_mf_neg<WE, WM>(bw)) ? (AT)(-p) : p;
}

// ---- ordinals: sign-magnitude bits <-> a signed integer increasing with the value ---------------------------------
template <int BITS>
static inline int64_t edgeq_mf_ordinal(int64_t b) {
#pragma HLS INLINE
    const int64_t mag = b & (((int64_t)1 << (BITS - 1)) - 1);
    return ((b >> (BITS - 1)) & 1) ? -mag : mag;
}

// TOP > 0: the ordinal +-TOP stands for the overflow code, whose magnitude bits are OVF (a FloatQuant max_val below
// the format's own largest value leaves the codes between unused: overflow jumps to +-inf or the "fn" NaN code).
template <int BITS, int TOP = 0, int OVF = 0>
static inline int64_t edgeq_mf_from_ordinal(int64_t o) {
#pragma HLS INLINE
    int64_t mag = o < 0 ? -o : o;
    if (TOP > 0 && mag == TOP) mag = OVF;
    return o < 0 ? (((int64_t)1 << (BITS - 1)) | mag) : mag;
}

// ---- Decode: minifloat bits -> fixed-point codes (for Add, pools and thresholds on power-of-two scales) -----------
template <typename XT, typename YT, int E, int M, int N>
void edgeq_mf_decode_layer(const XT x[N], YT y[N]) {
dec_i:
    for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
        y[i] = edgeq_mf_decode<YT, E, M>(x[i]);
    }
}

// ---- Rescale: y = f32(f32(A) * m[c]) (+ b[c] in float32), A an exact integer accumulator (at most 64 bits) -------
// f32(A) is f32(f64(A)): one RNE rounding while |A| < 2^53 (ACC_BITS <= 54), where it is a direct int -> float
// conversion; wider accumulators round to double first, exactly as numpy's int64 -> float64 -> float32.
template <typename AT, int C, int HW, bool HAS_BIAS, int ACC_BITS = 64>
void edgeq_rescale(const AT x[C * HW], const float m[C], const float b[C], float y[C * HW]) {
rs_c:
    for (int c = 0; c < C; c++) {
    rs_i:
        for (int i = 0; i < HW; i++) {
#pragma HLS PIPELINE II = 1
            const int64_t acc = (int64_t)x[c * HW + i];
            const float a = ACC_BITS <= 54 ? (float)acc : (float)(double)acc;
            float v = a * m[c];
            if (HAS_BIAS) v = v + b[c];
            y[c * HW + i] = v;
        }
    }
}

#endif
