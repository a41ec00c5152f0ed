/* edgeq binary (±1) kernels for microcontrollers: XNOR-popcount dense/conv and MST-reordered dense.
 *
 * Freestanding C: no libc, no heap, integer only. Builds for RV32 (clang, any -march; with Zbb the popcount is
 * one cpop) and for the host (the checks). The Python side is edgeq.backends.mcu.xnor (pack_bits, pack_mst).
 *
 * Bit packing (pack_bits): a ±1 vector of length K is W = ceil(K/32) uint32 words; element i is bit (i % 32)
 * (LSB first) of word i / 32; bit 1 = +1, bit 0 = -1. The pad bits K..32W-1 of the last word are written as 0
 * by pack_bits but the kernels never read them: the last word is masked with EDGEQ_XNOR_MASK(K). So
 *     sum_i x_i w_i = K - 2 * popcount((x XOR w) restricted to the K real bits)
 * is exact whatever the pad bits hold (an activation packed by another kernel may leave garbage there).
 * Weight matrices are row-major per OUTPUT: w_bits[j * W + word] is word `word` of output j's K weights (for a
 * Dense (K, N) weight that is column j; for a conv, output channel j flattened as (ci, ky, kx)).
 * Every output is int32; words are accumulated in ascending order (integer sums: the order does not change
 * the result, it is stated for the record).
 */
#ifndef EDGEQ_XNOR_H
#define EDGEQ_XNOR_H

#include <stdint.h>

/* words per packed row of K bits, and the mask of the valid bits of its last word */
#define EDGEQ_XNOR_WORDS(k) (((k) + 31) >> 5)
#define EDGEQ_XNOR_MASK(k) ((((k) & 31) == 0) ? 0xFFFFFFFFu : ((1u << ((k) & 31)) - 1u))

/* parent[] value of a root in edgeq_mst_t */
#define EDGEQ_MST_ROOT 0xFFFFu

/* y[j] = K - 2 * popcount(x XOR w_j) = sum_i x_i * w_ji (x, w in ±1), j = 0..n-1. x_bits has W words,
 * w_bits n * W words (layout above). k >= 1. */
void edgeq_xnor_dense(int k, int n, const uint32_t *x_bits, const uint32_t *w_bits, int32_t *y);

/* One MST-reordered binary dense layer (edgeq.backends.mcu.xnor.pack_mst writes every array; layout):
 *   k, n        K (<= 65535 so a position fits a uint16) and the number of output channels (< 65535)
 *   order[n]    the channel computed at step s (parents before children: edgeq.mst.MstTree.order)
 *   parent[n]   the parent channel of step s's channel, or EDGEQ_MST_ROOT for a root
 *   count[n]    |D| of step s (0 for a root)
 *   root_bits   (roots, W) words: the packed weights of the roots, in step order
 *   pos         sum |D| uint16: D of every child, steps in order, positions ascending within a step
 *   sign_bits   ceil(sum|D| / 32) words: the parent's sign at pos[t] is bit t % 32 of word t / 32 (1 = +1),
 *               t the running index over pos (one continuous bit stream, no per-step padding)
 * A root is computed as edgeq_xnor_dense does; a child c of p as
 *   y[c] = y[p] - 2 * sum_{i in D} s_i x_i = y[p] - 2|D| + 4 * #{i in D : s_i != x_i}
 * which equals the plain XNOR output exactly (edgeq.mst.mst_forward is the reference). */
typedef struct {
    int k, n;
    const uint16_t *order, *parent, *count;
    const uint32_t *root_bits;
    const uint16_t *pos;
    const uint32_t *sign_bits;
} edgeq_mst_t;

void edgeq_mst_dense(const edgeq_mst_t *m, const uint32_t *x_bits, int32_t *y);

/* Binary conv2d, one sample, NCHW: x (cin, ih, iw) int8 holding ±1, y (cout, oh, ow) int32; weights packed per
 * output channel over K = cin*kh*kw in (ci, ky, kx) order (ci slowest), no groups. Zero padding has no ±1
 * encoding: a padded tap contributes 0 to the sum, exactly as the QONNX Conv over a zero-padded ±1 tensor.
 * The kernel packs each output pixel's patch into scratch with a VALID mask (bit set for a real tap, 0 for a
 * padded one) and computes y = popcount(valid) - 2 * popcount((x XOR w) AND valid), exact. Interior pixels
 * (no padded tap) skip the mask. scratch: 2 * EDGEQ_XNOR_WORDS(K) words. Strides and dilations >= 1;
 * oh, ow as in edgeq_nn.h: (ih + pt + pb - dh*(kh-1) - 1)/sh + 1. */
typedef struct {
    int cin, ih, iw, cout, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
} edgeq_bconv_t;

void edgeq_xnor_conv2d(const edgeq_bconv_t *p, const int8_t *x, const uint32_t *w_bits, int32_t *y,
                       uint32_t *scratch);

#endif
