/* edgeq binary (±1) kernels for microcontrollers: XNOR-popcount dense/conv and MST-reordered dense/conv.
 *
 * Freestanding C: no libc, no heap. Builds for RV32 (clang, any -march; with Zbb the popcount is one cpop) and
 * for the host (the checks). The Python side is edgeq.backends.mcu.xnor (pack_bits, pack_mst).
 *
 * Activations. A binary activation is ±s. The kernels read only its SIGN BIT, from elements of `eb` bytes in
 * little-endian order: eb = 2 for float16, 4 for float32, 1 for int8. Sign bit clear = +1, set = -1 (a bipolar
 * quantizer never writes 0 or -0, so this is exact).
 *
 * Bit packing (pack_bits): a ±1 vector of length K is W = ceil(K/32) uint32 words; element i is bit (i % 32)
 * (LSB first) of word i / 32; bit 1 = +1, bit 0 = -1. The pad bits K..32W-1 of the last word are never read:
 * the last word is masked with EDGEQ_XNOR_MASK(K). So
 *     acc = sum_i x_i w_i = K - 2 * popcount((x XOR w) restricted to the K real bits)
 * exactly. Weight matrices are row-major per OUTPUT: w_bits[j * W + word] is word `word` of output j's K weights
 * (for a Dense (K, N) weight that is column j; for a conv, output channel j flattened as (ci, ky, kx)).
 *
 * Outputs are float: y = (float)acc * scale, where scale = s_x * s_w is a power of two and |acc| <= K < 2^24,
 * so every output, and every MST sum below, is exact in float32 (edgeq.mst.xnor_refusal checks the scales).
 */
#ifndef EDGEQ_XNOR_H
#define EDGEQ_XNOR_H

#include <stdint.h>

/* words per packed row of K bits, and the mask of the valid bits of its last word */
#define EDGEQ_XNOR_WORDS(k) (((k) + 31) >> 5)
#define EDGEQ_XNOR_MASK(k) ((((k) & 31) == 0) ? 0xFFFFFFFFu : ((1u << ((k) & 31)) - 1u))

/* parent[] value of a root in edgeq_mst_t */
#define EDGEQ_MST_ROOT 0xFFFFu

/* bits (W words) = the sign bits of the n activations x (elements of eb bytes), in the layout above */
void edgeq_pack_signs(const void *x, int n, int eb, uint32_t *bits);

/* y[j] = scale * (K - 2 * popcount(x XOR w_j)) = scale * sum_i x_i * w_ji, j = 0..n-1; x_bits W words,
 * w_bits n * W words (layout above); k >= 1. */
void edgeq_xnor_dense(int k, int n, const uint32_t *x_bits, const uint32_t *w_bits, float scale, float *y);

/* One MST-reordered binary layer (edgeq.backends.mcu.xnor.pack_mst writes every array):
 *   k, n        K (<= 65535) and the number of output channels (< 65535)
 *   order[n]    the channel computed at step s (parents before children: edgeq.mst.MstTree.order)
 *   parent[n]   the parent channel of step s's channel, or EDGEQ_MST_ROOT for a root
 *   count[2n]   per step: |D+| and |D-|, the differing positions where the PARENT's weight is +1 and -1
 *               (0, 0 for a root)
 *   root_bits   (roots, W) words: the packed weights of the roots, in step order
 *   pos         per child step, its D+ positions then its D- positions, each ascending (uint16)
 * Only the roots' weights and each child's D (positions, with the parent's sign given by the list it is in)
 * are stored, never a child's full weights. A root is computed as edgeq_xnor_dense does; a child c of p as
 *   acc_c = acc_p - 2 * sum_{i in D} w_p[i] x[i] = acc_p - 2 * (sum_{D+} x[i] - sum_{D-} x[i])
 * reading x as int8 ±1 (xs: one byte per position, 0 at a padded conv tap, which then adds nothing), which
 * equals the plain XNOR output exactly (edgeq.mst.mst_forward is the reference). */
typedef struct {
    int k, n;
    const uint16_t *order, *parent, *count;
    const uint32_t *root_bits;
    const uint16_t *pos;
} edgeq_mst_t;

/* scratch: EDGEQ_MST_DENSE_SCRATCH(k) words (x's packed bits and its int8 ±1 copy) */
#define EDGEQ_MST_DENSE_SCRATCH(k) (EDGEQ_XNOR_WORDS(k) + (((k) + 3) >> 2))
void edgeq_mst_dense(const edgeq_mst_t *m, const void *x, int eb, float scale, float *y, uint32_t *scratch);

/* Binary conv2d, one sample, NCHW: x (cin, ih, iw) of eb-byte elements holding ±s, y (cout, oh, ow) float;
 * weights packed per output channel over K = cin*kh*kw in (ci, ky, kx) order (ci slowest), no groups. Zero
 * padding has no ±1 encoding: a padded tap contributes 0 to the sum, exactly as the QONNX Conv over a
 * zero-padded ±1 tensor. The kernel packs each output pixel's patch into scratch with a VALID mask (bit set for
 * a real tap) and computes acc = popcount(valid) - 2 * popcount((x XOR w) AND valid), exact. Interior pixels (no
 * padded tap) skip the mask. Strides and dilations >= 1; oh, ow as in edgeq_nn.h. */
typedef struct {
    int cin, ih, iw, cout, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
} edgeq_bconv_t;

/* scratch of edgeq_xnor_conv2d: the patch and its valid mask; of edgeq_mst_conv2d: those and the int8 patch */
#define EDGEQ_XNOR_CONV_SCRATCH(k) (2 * EDGEQ_XNOR_WORDS(k))
#define EDGEQ_MST_CONV_SCRATCH(k) (2 * EDGEQ_XNOR_WORDS(k) + (((k) + 3) >> 2))
void edgeq_xnor_conv2d(const edgeq_bconv_t *p, const void *x, int eb, const uint32_t *w_bits, float scale, float *y,
                       uint32_t *scratch);
void edgeq_mst_conv2d(const edgeq_bconv_t *p, const edgeq_mst_t *m, const void *x, int eb, float scale, float *y,
                      uint32_t *scratch);

#endif
