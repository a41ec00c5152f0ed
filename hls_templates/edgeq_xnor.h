// edgeq HLS kernels for binary layers: XNOR-popcount and MST-reordered Dense / Conv2d.
//
// Inputs and weights are +-1 (a bipolar tensor's codes are -1/+1). Both are bit-packed into 64-bit
// words, edgeq_word_t: element i of a vector is bit i % 64 of word i / 64, bit 1 = +1, bit 0 = -1;
// the pad bits of the last word are 0 in the weights and in the packed input, so they XOR to 0.
// Weights are packed per output channel (Dense (K, N): column n; Conv2d (Cout, Cin, kh, kw): row co
// flattened in (ci, ky, kx) order, the order of a patch). Then, exactly,
//
//     acc = sum_i x_i w_i = n - 2 * popcount((x XOR w) & valid)
//
// with n the number of real (valid) taps: a zero-padded convolution tap contributes 0, so it is
// masked out of both terms (valid = all real taps; a Dense layer has n = K and no padding).
// The layer output code is acc * 2^SHIFT (SHIFT >= 0, derived from the formats by the generator).
//
// MST layers compute output channels in tree order (parents first). A root is a full XNOR row; a
// child c of parent p differs from it at the positions D only, where s are the PARENT's signs:
//
//     acc_c = acc_p - 2 * sum_{i in D, valid} s_i x_i = acc_p - 2 |D n V| + 4 #{i in D n V : s_i != x_i}
//
// MST tables (steps s = 0..N-1 in tree order): order[s] (the channel), parent[s] (-1 for a root),
// dstart[s] .. dstart[s + 1] - 1 (this step's entries of dpos / dsign, empty for a root), dpos (the
// positions of D, ascending), dsign (the parent's sign at entry j: bit j % 64 of word j / 64, 1 = +1),
// roots (the roots' packed weights, WORDS words each, in step order). Nothing else is stored.
//
// Every popcount is an explicit pairwise adder tree: a SWAR tree inside each 64-bit word, then an
// unrolled binary tree over the words. The code is plain C++ (uint64_t, no ap_uint) so that g++
// compiles and runs it quickly for C simulation; the pragmas are for Vitis HLS.
#ifndef EDGEQ_XNOR_H
#define EDGEQ_XNOR_H

#include <stdint.h>

typedef uint64_t edgeq_word_t;

// ---- popcount trees ------------------------------------------------------------------------------

// popcount of one word: six levels of pairwise adds (2-bit sums, 4-bit sums, ... one 7-bit sum).
static inline int edgeq_popcount64(edgeq_word_t v) {
#pragma HLS INLINE
    v = (v & 0x5555555555555555ULL) + ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v & 0x0F0F0F0F0F0F0F0FULL) + ((v >> 4) & 0x0F0F0F0F0F0F0F0FULL);
    v = (v & 0x00FF00FF00FF00FFULL) + ((v >> 8) & 0x00FF00FF00FF00FFULL);
    v = (v & 0x0000FFFF0000FFFFULL) + ((v >> 16) & 0x0000FFFF0000FFFFULL);
    v = (v & 0x00000000FFFFFFFFULL) + (v >> 32);
    return (int)v;
}

// sum of N values as a balanced binary adder tree (ceil(log2 N) levels).
template <int N>
struct edgeq_adder_tree {
    static int sum(const int *a) {
#pragma HLS INLINE
        return edgeq_adder_tree<N / 2>::sum(a) + edgeq_adder_tree<N - N / 2>::sum(a + N / 2);
    }
};
template <>
struct edgeq_adder_tree<1> {
    static int sum(const int *a) {
#pragma HLS INLINE
        return a[0];
    }
};

// popcount((a XOR b) & m) over WORDS words: one word tree per word, one tree over the words.
template <int WORDS>
int edgeq_popcount_xor(const edgeq_word_t a[WORDS], const edgeq_word_t *b, const edgeq_word_t m[WORDS]) {
#pragma HLS INLINE
    int cnt[WORDS];
#pragma HLS ARRAY_PARTITION variable = cnt complete
xor_words:
    for (int i = 0; i < WORDS; i++) {
#pragma HLS UNROLL
        cnt[i] = edgeq_popcount64((a[i] ^ b[i]) & m[i]);
    }
    return edgeq_adder_tree<WORDS>::sum(cnt);
}

// ---- bit packing -----------------------------------------------------------------------------------

// x's signs (code > 0 -> 1) packed into WORDS words; the pad bits are 0. Also sets valid to all K bits.
template <typename XT, int K, int WORDS>
void edgeq_pack_signs(const XT x[K], edgeq_word_t xb[WORDS], edgeq_word_t valid[WORDS]) {
pack_clear:
    for (int i = 0; i < WORDS; i++) {
#pragma HLS UNROLL
        xb[i] = 0;
        valid[i] = (i + 1) * 64 <= K ? ~(edgeq_word_t)0 : (((edgeq_word_t)1 << (K % 64)) - 1);
    }
pack_k:
    for (int k = 0; k < K; k++) {
#pragma HLS PIPELINE II = 1
        if (x[k] > 0) xb[k >> 6] |= (edgeq_word_t)1 << (k & 63);
    }
}

// The patch of output pixel (oh, ow) of a zero-padded conv, packed once for every output channel:
// patch holds the signs of the real taps (0 at padded taps), valid the real taps. Returns their number.
template <typename XT, int CIN, int H, int W, int KH, int KW, int SH, int SW, int PT, int PL, int DH, int DW,
          int WORDS>
int edgeq_pack_patch(const XT x[CIN * H * W], int oh, int ow, edgeq_word_t patch[WORDS],
                     edgeq_word_t valid[WORDS]) {
#pragma HLS INLINE
patch_clear:
    for (int i = 0; i < WORDS; i++) {
#pragma HLS UNROLL
        patch[i] = 0;
        valid[i] = 0;
    }
    int nvalid = 0;
patch_ci:
    for (int ci = 0; ci < CIN; ci++) {
#pragma HLS PIPELINE II = 1
    patch_ky:
        for (int ky = 0; ky < KH; ky++) {
#pragma HLS UNROLL
            const int iy = oh * SH - PT + ky * DH;
        patch_kx:
            for (int kx = 0; kx < KW; kx++) {
#pragma HLS UNROLL
                const int ix = ow * SW - PL + kx * DW;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
                    const int i = (ci * KH + ky) * KW + kx;
                    const edgeq_word_t bit = (edgeq_word_t)1 << (i & 63);
                    valid[i >> 6] |= bit;
                    nvalid++;
                    if (x[(ci * H + iy) * W + ix] > 0) patch[i >> 6] |= bit;
                }
            }
        }
    }
    return nvalid;
}

// ---- plain XNOR-popcount -----------------------------------------------------------------------------

// y[n] = (K - 2 popcount(x XOR w_n)) * 2^SHIFT; w holds N rows of WORDS words.
template <typename XT, typename YT, int K, int N, int WORDS, int SHIFT>
void edgeq_xnor_dense(const XT x[K], const edgeq_word_t w[N * WORDS], YT y[N]) {
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = WORDS dim = 1
    edgeq_word_t xb[WORDS], valid[WORDS];
#pragma HLS ARRAY_PARTITION variable = xb complete
#pragma HLS ARRAY_PARTITION variable = valid complete
    edgeq_pack_signs<XT, K, WORDS>(x, xb, valid);
xnor_dense_n:
    for (int n = 0; n < N; n++) {
#pragma HLS PIPELINE II = 1
        const int acc = K - 2 * edgeq_popcount_xor<WORDS>(xb, w + n * WORDS, valid);
        y[n] = (YT)(acc * (1 << SHIFT));
    }
}

// NCHW codes; w holds COUT rows of WORDS words (ci, ky, kx order). Padded taps contribute 0.
template <typename XT, typename YT, int CIN, int H, int W, int COUT, int KH, int KW, int SH, int SW, int PT, int PL,
          int DH, int DW, int OH, int OW, int WORDS, int SHIFT>
void edgeq_xnor_conv2d(const XT x[CIN * H * W], const edgeq_word_t w[COUT * WORDS], YT y[COUT * OH * OW]) {
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = WORDS dim = 1
    edgeq_word_t patch[WORDS], valid[WORDS];
#pragma HLS ARRAY_PARTITION variable = patch complete
#pragma HLS ARRAY_PARTITION variable = valid complete
xnor_conv_oh:
    for (int oh = 0; oh < OH; oh++) {
    xnor_conv_ow:
        for (int ow = 0; ow < OW; ow++) {
            const int nvalid = edgeq_pack_patch<XT, CIN, H, W, KH, KW, SH, SW, PT, PL, DH, DW, WORDS>(
                x, oh, ow, patch, valid);
        xnor_conv_co:
            for (int co = 0; co < COUT; co++) {
#pragma HLS PIPELINE II = 1
                const int acc = nvalid - 2 * edgeq_popcount_xor<WORDS>(patch, w + co * WORDS, valid);
                y[(co * OH + oh) * OW + ow] = (YT)(acc * (1 << SHIFT));
            }
        }
    }
}

// ---- MST-reordered -------------------------------------------------------------------------------------

// Every channel's acc for one packed input (xb, valid, nvalid real taps), in tree order (tables above).
template <typename OT, typename ST, typename PT, int N, int WORDS, int ROOTS, int ND, int NDW>
void edgeq_mst_steps(const edgeq_word_t xb[WORDS], const edgeq_word_t valid[WORDS], int nvalid, const OT order[N],
                     const OT parent[N], const ST dstart[N + 1], const PT dpos[ND], const edgeq_word_t dsign[NDW],
                     const edgeq_word_t roots[ROOTS * WORDS], int acc[N]) {
#pragma HLS INLINE
    int r = 0;
mst_step:
    for (int s = 0; s < N; s++) {
        const int c = order[s], p = parent[s];
        int a;
        if (p < 0) {  // root: a full XNOR row
            a = nvalid - 2 * edgeq_popcount_xor<WORDS>(xb, roots + r * WORDS, valid);
            r++;
        } else {  // child: the parent's acc, corrected over D
            int nd = 0, mis = 0;
        mst_diff:
            for (int j = dstart[s]; j < dstart[s + 1]; j++) {
#pragma HLS PIPELINE II = 1
                const int i = dpos[j];
                const int v = (int)((valid[i >> 6] >> (i & 63)) & 1);
                const int xi = (int)((xb[i >> 6] >> (i & 63)) & 1);
                const int si = (int)((dsign[j >> 6] >> (j & 63)) & 1);
                nd += v;
                mis += v & (xi ^ si);
            }
            a = acc[p] - 2 * nd + 4 * mis;
        }
        acc[c] = a;
    }
}

template <typename XT, typename YT, typename OT, typename ST, typename PT, int K, int N, int WORDS, int ROOTS, int ND,
          int NDW, int SHIFT>
void edgeq_mst_dense(const XT x[K], const OT order[N], const OT parent[N], const ST dstart[N + 1],
                     const PT dpos[ND], const edgeq_word_t dsign[NDW], const edgeq_word_t roots[ROOTS * WORDS],
                     YT y[N]) {
#pragma HLS ARRAY_PARTITION variable = roots cyclic factor = WORDS dim = 1
    edgeq_word_t xb[WORDS], valid[WORDS];
#pragma HLS ARRAY_PARTITION variable = xb complete
#pragma HLS ARRAY_PARTITION variable = valid complete
    int acc[N];
    edgeq_pack_signs<XT, K, WORDS>(x, xb, valid);
    edgeq_mst_steps<OT, ST, PT, N, WORDS, ROOTS, ND, NDW>(xb, valid, K, order, parent, dstart, dpos, dsign, roots,
                                                          acc);
mst_dense_out:
    for (int n = 0; n < N; n++) {
#pragma HLS PIPELINE II = 1
        y[n] = (YT)(acc[n] * (1 << SHIFT));
    }
}

template <typename XT, typename YT, typename OT, typename ST, typename PT, int CIN, int H, int W, int COUT, int KH,
          int KW, int SH, int SW, int PT_, int PL, int DH, int DW, int OH, int OW, int WORDS, int ROOTS, int ND,
          int NDW, int SHIFT>
void edgeq_mst_conv2d(const XT x[CIN * H * W], const OT order[COUT], const OT parent[COUT],
                      const ST dstart[COUT + 1], const PT dpos[ND], const edgeq_word_t dsign[NDW],
                      const edgeq_word_t roots[ROOTS * WORDS], YT y[COUT * OH * OW]) {
#pragma HLS ARRAY_PARTITION variable = roots cyclic factor = WORDS dim = 1
    edgeq_word_t patch[WORDS], valid[WORDS];
#pragma HLS ARRAY_PARTITION variable = patch complete
#pragma HLS ARRAY_PARTITION variable = valid complete
    int acc[COUT];
mst_conv_oh:
    for (int oh = 0; oh < OH; oh++) {
    mst_conv_ow:
        for (int ow = 0; ow < OW; ow++) {
            const int nvalid = edgeq_pack_patch<XT, CIN, H, W, KH, KW, SH, SW, PT_, PL, DH, DW, WORDS>(
                x, oh, ow, patch, valid);
            edgeq_mst_steps<OT, ST, PT, COUT, WORDS, ROOTS, ND, NDW>(patch, valid, nvalid, order, parent, dstart,
                                                                     dpos, dsign, roots, acc);
        mst_conv_out:
            for (int co = 0; co < COUT; co++) {
#pragma HLS PIPELINE II = 1
                y[(co * OH + oh) * OW + ow] = (YT)(acc[co] * (1 << SHIFT));
            }
        }
    }
}

#endif
