// edgeq HLS kernels: loop-based layer templates over integer codes.
//
// Every tensor is carried as the integer codes of its fixed-point format (value = code * 2^-F,
// F known at generation time). Multiply-accumulate runs on those codes in an accumulator type the
// generator proves wide enough, so it is exact in any order. Rounding and overflow happen only in
// edgeq_cast(), which is ap_fixed's own conversion (AP_RND_CONV, AP_SAT, ...): the one rounding
// rule in the generated code, the same one edgeq's emulator models.
//
// The loops are written for synthesis (PIPELINE/UNROLL pragmas) and compile quickly with g++ for
// C simulation: no giant unrolled bodies, weights as plain integer arrays.
#ifndef EDGEQ_KERNELS_H
#define EDGEQ_KERNELS_H

#include <stdint.h>

#include "edgeq_minifloat.h"

// ---- One product term of a MAC ---------------------------------------------------------------
// KD == 0: x * w[i], a multiplier. KD > 0: a multiplier-free layer (edgeq.qfx pow2 / K-hot weights): w holds KD
// signed digits per weight, w[i*KD + j] = 0 (none) or +-(shift + 1), and the product is the sum of the shifted
// copies of x, i.e. shifts and adds in LUTs, no DSP. Both are exact integer products.
template <typename AT, typename XT, typename WT, int KD>
static inline AT edgeq_product(XT x, const WT *w, int i) {
#pragma HLS INLINE
    if (KD == 0) return (AT)x * (AT)w[i];
    AT p = 0;
    for (int j = 0; j < (KD > 0 ? KD : 1); j++) {
#pragma HLS UNROLL
        const int d = (int)w[i * KD + j];
        if (d > 0) p += (AT)x * ((AT)1 << (d - 1));
        if (d < 0) p -= (AT)x * ((AT)1 << (-d - 1));
    }
    return p;
}

// One term of a MAC: an operand with XE > 0 (WE > 0) is minifloat bits (edgeq_minifloat.h), else an integer code.
template <typename AT, typename XT, typename WT, int KD, int XE, int XM, int WE, int WM>
static inline AT edgeq_mac_term(XT x, const WT *w, int i) {
#pragma HLS INLINE
    if (KD > 0) return edgeq_product<AT, AT, WT, KD>(edgeq_mf_decode<AT, XE, XM>(x), w, i);
    return edgeq_mf_product<AT, XE, XM, WE, WM>(x, w[i]);
}

// ---- Conv2d (NCHW codes, weights [COUT][CIN/G][KH][KW], each KD digits when KD > 0) -----------
template <typename XT, typename WT, typename BT, typename AT, typename YT, int CIN, int H, int W, int COUT,
          int KH, int KW, int SH, int SW, int PT, int PL, int DH, int DW, int G, int OH, int OW, bool HAS_BIAS,
          int KD = 0, int XE = 0, int XM = 0, int WE = 0, int WM = 0>
void edgeq_conv2d(const XT x[CIN * H * W], const WT w[COUT * (CIN / G) * KH * KW * (KD > 0 ? KD : 1)],
                  const BT bias[COUT], YT y[COUT * OH * OW]) {
    const int CG = CIN / G, OG = COUT / G;
conv_co:
    for (int co = 0; co < COUT; co++) {
        const int g = co / OG;
    conv_oh:
        for (int oh = 0; oh < OH; oh++) {
        conv_ow:
            for (int ow = 0; ow < OW; ow++) {
                AT acc = HAS_BIAS ? (AT)bias[co] : (AT)0;
            conv_ci:
                for (int ci = 0; ci < CG; ci++) {
#pragma HLS PIPELINE II = 1
                conv_kh:
                    for (int kh = 0; kh < KH; kh++) {
#pragma HLS UNROLL
                    conv_kw:
                        for (int kw = 0; kw < KW; kw++) {
#pragma HLS UNROLL
                            const int ih = oh * SH - PT + kh * DH, iw = ow * SW - PL + kw * DW;
                            if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                                acc += edgeq_mac_term<AT, XT, WT, KD, XE, XM, WE, WM>(
                                    x[((g * CG + ci) * H + ih) * W + iw], w, ((co * CG + ci) * KH + kh) * KW + kw);
                        }
                    }
                }
                y[(co * OH + oh) * OW + ow] = (YT)acc;
            }
        }
    }
}

// ---- Dense: y[N] = x[K] . w[K][N] (+ bias); KD as for Conv2d ---------------------------------
template <typename XT, typename WT, typename BT, typename AT, typename YT, int K, int N, int P, bool HAS_BIAS,
          int KD = 0, int XE = 0, int XM = 0, int WE = 0, int WM = 0>
void edgeq_dense(const XT x[K], const WT w[K * N * (KD > 0 ? KD : 1)], const BT bias[N], YT y[N]) {
dense_n:
    for (int n = 0; n < N; n++) {
        AT acc = HAS_BIAS ? (AT)bias[n] : (AT)0;
    dense_k:
        for (int k = 0; k < K; k++) {
#pragma HLS PIPELINE II = 1
#pragma HLS UNROLL factor = P
            acc += edgeq_mac_term<AT, XT, WT, KD, XE, XM, WE, WM>(x[k], w, k * N + n);
        }
        y[n] = (YT)acc;
    }
}

// ---- Threshold: y = base + #{k : s*x >= T[c][k]} (folded BatchNorm/activation + quantizer) ----
// The thresholds of a channel are sorted, so the count is an upper bound: up to 15 levels it is a
// row of parallel comparators; beyond, a binary search of LOG2 = ceil(log2(L+1)) comparisons.
// MFBITS > 0: the count is the signed ordinal of an output minifloat of MFBITS bits, written as its bits; MFTOP > 0:
// the ordinal +-MFTOP is the overflow code, of magnitude bits MFOVF (edgeq_mf_from_ordinal).
template <typename XT, typename TT, typename YT, int C, int HW, int L, int LOG2, int MFBITS = 0, int MFTOP = 0,
          int MFOVF = 0>
void edgeq_threshold(const XT x[C * HW], const TT thr[C * L], const int8_t sign[C], int base, YT y[C * HW]) {
thr_c:
    for (int c = 0; c < C; c++) {
    thr_i:
        for (int i = 0; i < HW; i++) {
#pragma HLS PIPELINE II = 1
            const TT v = sign[c] > 0 ? (TT)x[c * HW + i] : (TT)(-(TT)x[c * HW + i]);
            int q = 0;
            if (L <= 15) {
            thr_k:
                for (int k = 0; k < L; k++) {
#pragma HLS UNROLL
                    q += (v >= thr[c * L + k]) ? 1 : 0;
                }
            } else {
                int len = L;
            thr_search:
                for (int step = 0; step < LOG2; step++) {
#pragma HLS UNROLL
                    if (len > 0) {
                        const int half = len >> 1;
                        if (thr[c * L + q + half] <= v) {
                            q += half + 1;
                            len -= half + 1;
                        } else {
                            len = half;
                        }
                    }
                }
            }
            y[c * HW + i] = MFBITS ? (YT)edgeq_mf_from_ordinal<(MFBITS > 0 ? MFBITS : 1), MFTOP, MFOVF>(base + q) : (YT)(base + q);
        }
    }
}

// ---- MaxPool on codes (order-preserving): padding never wins ---------------------------------
// MFBITS > 0: minifloat bits, compared by their ordinals.
template <typename T, int C, int H, int W, int KH, int KW, int SH, int SW, int PT, int PL, int OH, int OW,
          int MFBITS = 0>
void edgeq_maxpool(const T x[C * H * W], T y[C * OH * OW], T lowest) {
mp_c:
    for (int c = 0; c < C; c++)
    mp_oh:
        for (int oh = 0; oh < OH; oh++)
        mp_ow:
            for (int ow = 0; ow < OW; ow++) {
#pragma HLS PIPELINE II = 1
                T m = lowest;
                for (int kh = 0; kh < KH; kh++)
                    for (int kw = 0; kw < KW; kw++) {
                        const int ih = oh * SH - PT + kh, iw = ow * SW - PL + kw;
                        if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
                            const T v = x[(c * H + ih) * W + iw];
                            const bool more = MFBITS ? edgeq_mf_ordinal<(MFBITS > 0 ? MFBITS : 1)>(v) >
                                                           edgeq_mf_ordinal<(MFBITS > 0 ? MFBITS : 1)>(m)
                                                     : v > m;
                            m = more ? v : m;
                        }
                    }
                y[(c * OH + oh) * OW + ow] = m;
            }
}

// ---- SumPool: exact window sums (an average pool's numerator; the division is in the thresholds) -
template <typename XT, typename YT, int C, int H, int W, int KH, int KW, int SH, int SW, int OH, int OW>
void edgeq_sumpool(const XT x[C * H * W], YT y[C * OH * OW]) {
sp_c:
    for (int c = 0; c < C; c++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
#pragma HLS PIPELINE II = 1
                YT s = 0;
                for (int kh = 0; kh < KH; kh++)
                    for (int kw = 0; kw < KW; kw++) s += (YT)x[(c * H + oh * SH + kh) * W + ow * SW + kw];
                y[(c * OH + oh) * OW + ow] = s;
            }
}

// ---- Element-wise -----------------------------------------------------------------------------
// MFBITS > 0: minifloat bits; a negative value (sign bit set) becomes +0.
template <typename T, int N, int MFBITS = 0>
void edgeq_relu(const T x[N], T y[N]) {
    for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
        const bool pos = MFBITS ? edgeq_mf_ordinal<(MFBITS > 0 ? MFBITS : 1)>(x[i]) > 0 : x[i] > 0;
        y[i] = pos ? x[i] : (T)0;
    }
}

template <typename AT, typename BT, typename YT, int N, int SA, int SB>
void edgeq_add(const AT a[N], const BT b[N], YT y[N]) {
    for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
        y[i] = (YT)a[i] * ((YT)1 << SA) + (YT)b[i] * ((YT)1 << SB);  // aligned binary points: exact
    }
}

// Fixed-point scale or shift by a per-channel constant (codes c[C], already at the output's binary point for
// an add): MUL: y = x * c; else y = SX_SIGN * (x << SHIFT_X) + SC_SIGN * c. Exact: YT holds every result.
template <typename XT, typename CT, typename YT, int C, int INNER, bool MUL, int SHIFT_X, int SX_SIGN, int SC_SIGN>
void edgeq_const_op(const XT x[C * INNER], const CT c[C], YT y[C * INNER]) {
const_c:
    for (int ch = 0; ch < C; ch++) {
    const_i:
        for (int i = 0; i < INNER; i++) {
#pragma HLS PIPELINE II = 1
            const YT v = (YT)x[ch * INNER + i];
            y[ch * INNER + i] = MUL ? (YT)(v * (YT)c[ch])
                                    : (YT)(SX_SIGN * v * ((YT)1 << SHIFT_X) + SC_SIGN * (YT)c[ch]);
        }
    }
}

template <typename T, int N>
void edgeq_copy(const T x[N], T y[N]) {
    for (int i = 0; i < N; i++) {
#pragma HLS PIPELINE II = 1
        y[i] = x[i];
    }
}

#endif
