/* edgeq element-wise and pooling operations for the MCU backend (float glue, FP16 adds, pooling).
 *
 * Each function is the C rendering of one rule of edgeq's numeric core (edgeq/formats.py, edgeq/emulate.py):
 * every float operation is one IEEE float32 (or float16) operation, in the same order as the emulator, and
 * the file must be compiled with -ffp-contract=off (and -fexcess-precision=16 on x86 hosts) so no compiler
 * fuses or widens anything. Signed zeros follow numpy: maximum(a, b) = a > b ? a : b, clip keeps x unless
 * strictly outside, and round-to-integral keeps the sign of its input.
 */
#ifndef EDGEQ_OPS_H
#define EDGEQ_OPS_H
#include <stdint.h>

typedef _Float16 edgeq_f16;

/* Rounding modes, in the order of edgeq.formats.ROUNDING_MODES. */
enum { EDGEQ_TRN, EDGEQ_TRN_ZERO, EDGEQ_RND, EDGEQ_RND_ZERO, EDGEQ_RND_MIN_INF, EDGEQ_RND_INF, EDGEQ_RND_CONV,
       EDGEQ_CEIL, EDGEQ_UP };
/* Overflow modes, in the order of edgeq.formats.OVERFLOW_MODES. */
enum { EDGEQ_WRAP, EDGEQ_SAT, EDGEQ_SAT_ZERO, EDGEQ_SAT_SYM };

/* round_float(v, mode) of edgeq.formats: IEEE round-to-integral for the four IEEE modes (the sign of a zero
 * result is the sign of v), otherwise floor plus a comparison with the exact midpoint floor(v) + 1/2. */
static inline float edgeq_round(float v, int mode) {
    switch (mode) {
    case EDGEQ_RND_CONV: return __builtin_rintf(v);
    case EDGEQ_TRN: return __builtin_floorf(v);
    case EDGEQ_CEIL: return __builtin_ceilf(v);
    case EDGEQ_TRN_ZERO: return __builtin_truncf(v);
    default: break;
    }
    float fl = __builtin_floorf(v);
    int inexact = v != fl, negative = v < 0.0f;
    float half = fl + 0.5f;
    int above = inexact && v > half, tie = inexact && v == half, inc;
    switch (mode) {
    case EDGEQ_UP: inc = inexact && !negative; break;
    case EDGEQ_RND: inc = above || tie; break;
    case EDGEQ_RND_MIN_INF: inc = above; break;
    case EDGEQ_RND_ZERO: inc = above || (tie && negative); break;
    case EDGEQ_RND_INF: inc = above || (tie && !negative); break;
    default: inc = 0; break;
    }
    return inc ? fl + 1.0f : fl;
}

/* numpy's clip / maximum / minimum: signed zeros (the second operand wins a tie), NaN propagated, and for
 * clip with lo > hi the result hi. NaNs are canonical on RISC-V, and the emulator canonicalises its own. */
static inline float edgeq_clip(float v, float lo, float hi) {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}
/* An activation tabulated on its input grid (edgeq.emulate's Activation table): ty at the first tx >= v. The
 * input lies on the grid, so the compare finds it exactly; tx is sorted ascending. */
static inline float edgeq_table(float v, const float *tx, const float *ty, int n) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (tx[mid] < v) lo = mid + 1; else hi = mid;
    }
    return ty[lo];
}

/* 2^k as a float32 for -126 <= k <= 127 (exact). */
static inline float edgeq_pow2f(int k) {
    union { uint32_t u; float f; } b;
    b.u = (uint32_t)(k + 127) << 23;
    return b.f;
}

/* exp in float32 operations (no libm), operation for operation edgeq.emulate.expf: k = rne(x log2 e) by the
 * 1.5 * 2^23 shifter; r = (x - k ln2_hi) - k ln2_lo (k ln2_hi is exact: 16-bit head); Horner of the degree-6
 * Taylor polynomial; y = p 2^k, in two steps (the first exact) outside the normal exponents. */
static inline float edgeq_expf(float x) {
    if (x != x) return x;
    if (x > 88.72283935546875f) return __builtin_inff();
    if (x < -103.972076416015625f) return 0.0f;
    float k = (x * 1.44269502162933349609375f + 12582912.0f) - 12582912.0f;
    float r = (x - k * 0.693145751953125f) - k * 1.428606765e-06f;
    float p = 1.388888923e-03f;          /* float32(1/720), as numpy rounds it; likewise 1/120, 1/24, 1/6 */
    p = p * r + 8.333333768e-03f;
    p = p * r + 4.166666791e-02f;
    p = p * r + 1.666666716e-01f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int ki = (int)k;
    if (ki < -126) return (p * edgeq_pow2f(ki + 126)) * edgeq_pow2f(-126);
    if (ki > 127) return (p * edgeq_pow2f(ki - 127)) * edgeq_pow2f(127);
    return p * edgeq_pow2f(ki);
}

/* Softmax over n elements `inner` apart (edgeq.emulate._softmax): m = max (NaN propagates), e = expf(x - m)
 * stored in y, s = sum of e in index order from +0, y = e / s. x and y do not overlap. One body, instantiated
 * for float32 and float16 inputs (a float16 value converts to float32 exactly). */
#define EDGEQ_SOFTMAX(NAME, T)                                                                                  \
    static inline void NAME(const T *x, float *y, int outer, int n, int inner) {                               \
        for (int o = 0; o < outer; o++) {                                                                      \
            for (int i = 0; i < inner; i++) {                                                                  \
                const T *X = x + (long)o * n * inner + i;                                                      \
                float *Y = y + (long)o * n * inner + i;                                                        \
                float m = (float)X[0];                                                                         \
                for (int j = 1; j < n; j++) {                                                                  \
                    float v = (float)X[j * inner];                                                             \
                    m = (m != m || m > v) ? m : v;                                                             \
                }                                                                                              \
                float s = 0.0f;                                                                                \
                for (int j = 0; j < n; j++) {                                                                  \
                    float e = edgeq_expf((float)X[j * inner] - m);                                             \
                    Y[j * inner] = e;                                                                          \
                    s = s + e;                                                                                 \
                }                                                                                              \
                for (int j = 0; j < n; j++) Y[j * inner] = Y[j * inner] / s;                                   \
            }                                                                                                  \
        }                                                                                                      \
    }
EDGEQ_SOFTMAX(edgeq_softmax_f32, float)
EDGEQ_SOFTMAX(edgeq_softmax_f16, edgeq_f16)

static inline float edgeq_max(float a, float b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }
static inline float edgeq_min(float a, float b) { return a != a ? a : (b != b ? b : (a < b ? a : b)); }

/* Integer codes of QONNX Quant (edgeq.formats.Int.quantize_codes), in float32: x / s (+ z), clip, round. */
static inline float edgeq_int_codes(float x, float s, float z, int has_z, float lo, float hi, int mode) {
    float y = x / s;
    if (has_z) y = y + z;
    return edgeq_round(edgeq_clip(y, lo, hi), mode);
}

/* QONNX Quant values: codes * s, or (codes - z) * s with a zero point. */
static inline float edgeq_quant_int(float x, float s, float z, int has_z, float lo, float hi, int mode) {
    float q = edgeq_int_codes(x, s, z, has_z, lo, hi, mode);
    return has_z ? (q - z) * s : q * s;
}

/* A 1-bit signed QONNX Quant (bipolar Int): (x / s >= 0 ? 1 : -1) * s. */
static inline float edgeq_quant_bipolar(float x, float s) { return (x / s >= 0.0f ? 1.0f : -1.0f) * s; }

/* BipolarQuant (edgeq.formats.Binary): (x >= 0 ? 1 : -1) * s. */
static inline float edgeq_quant_sign(float x, float s) { return (x >= 0.0f ? 1.0f : -1.0f) * s; }

/* ap_fixed assignment from a float (edgeq.formats.FixedPoint.quantize_codes) for SAT-family overflow and
 * width <= 24: clip to +-lim = 2^(int_bits+1), scale by up = 2^frac (exact), round, saturate the integer code
 * to [lo, hi], and scale back by down = 2^-frac. (WRAP is refused by the MCU lowering.) */
static inline float edgeq_quant_fixed(float x, float lim, float up, float down, int32_t lo, int32_t hi, int mode,
                                      int ovf) {
    x = edgeq_clip(x, -lim, lim);
    float s = x * up;
    if (s == 0.0f && x != 0.0f) s = __builtin_copysignf(0.25f, x);
    int32_t c = (int32_t)edgeq_round(s, mode);
    if (c > hi || c < lo) c = ovf == EDGEQ_SAT_ZERO ? 0 : (c > hi ? hi : lo);
    if (ovf == EDGEQ_SAT_SYM && lo < 0 && c <= lo) c = lo | 1;
    return (float)c * down;
}

#endif
