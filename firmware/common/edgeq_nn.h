/* edgeq FP16 neural-network kernels for microcontrollers (RV32 + Zfh; also builds on the host for checks).
 *
 * Freestanding C: no libc, no heap, no memcpy/memset calls. Every buffer is given by the caller.
 * RISC-V: clang --target=riscv32-unknown-elf -march=rv32imafc_zfh -mabi=ilp32f -O2 -ffp-contract=off
 *         -fno-math-errno -ffreestanding.   Host: gcc -O2 -ffp-contract=off -fexcess-precision=16.
 * Build-time macros: EDGEQ_LANES (1 or 2, default 1) and EDGEQ_FUSED (0 or 1, default 1); the packing on the
 * Python side (edgeq.backends.mcu.kernels) must use the same lanes.
 *
 * Arithmetic contract (the emulator implements exactly this; the kernels match it bit for bit):
 *   MAC(acc, w, x):  EDGEQ_FUSED=1  acc = fp16(w*x + acc), one rounding (RISC-V: fmadd.h)
 *                    EDGEQ_FUSED=0  acc = fp16(acc + fp16(w*x)), two roundings
 *   Each output starts with its accumulator lane(s) at +0.0 and takes one MAC per k in ascending order,
 *   where k runs over the flattened (ci, ky, kx) of its group (ci slowest) over the ZERO-PADDED input:
 *   padded taps are executed with x = +0.0. Dense: k ascending over x.
 *   EDGEQ_LANES=1: one accumulator.  EDGEQ_LANES=2: even k go to lane 0, odd k to lane 1; an odd K gets one
 *   trailing MAC(lane1, +0, +0); the sum is fp16(lane0 + lane1).
 *   With a bias: y = fp16(sum + bias[co]); without: y = sum.
 * Kernels change only the schedule (blocking, unrolling, packing), never the per-output order of roundings.
 *
 * Tensors are one sample, NCHW without batch: x (cin, ih, iw), y (cout, oh, ow), contiguous, edgeq_f16.
 * Weights (in flash) are packed by edgeq.backends.mcu.kernels (pack_conv / pack_dense):
 *   conv:  [group][co_block][k][CB] with CB = EDGEQ_CONV_CB (4, or 2 with 2 lanes), or CB = 1 for a depthwise
 *          conv (group == cin == cout); k = flattened (ci, ky, kx) of the group; the last co_block of each
 *          group zero-padded to CB channels.
 *   dense: [block][k][nb]: blocks of EDGEQ_DENSE_NB outputs (16, or 8 with 2 lanes), then one block for each
 *          remaining power of two, largest first (e.g. N = 10 with NB 16: blocks 8, 2).
 *   EDGEQ_LANES=2: k is stored in pairs, [k/2][CB][2] and [k/2][nb][2], so that the v2f16 operand
 *          (w[k], w[k+1]) of one output (k even) is one aligned 32-bit load; an odd K is first padded to even
 *          with a +0.0 weight (the weight of the trailing MAC(lane1, +0, +0); the kernels use the constant).
 *          Every block has an even number of elements: w_packed must be 4-byte aligned.
 */
#ifndef EDGEQ_NN_H
#define EDGEQ_NN_H

#ifndef EDGEQ_LANES
#define EDGEQ_LANES 1
#endif
#ifndef EDGEQ_FUSED
#define EDGEQ_FUSED 1
#endif

typedef _Float16 edgeq_f16;

/* The lane pair of EDGEQ_LANES=2 (GCC/clang vector extension): accumulators, weight pairs and input pairs are
 * edgeq_v2f16 values, and one MAC of both lanes is one vector operation (fused: an elementwise fma, which PULP
 * toolchains lower to vfmac; on a core with plain Zfh clang scalarises it to two fmadd.h). */
typedef _Float16 edgeq_v2f16 __attribute__((vector_size(4)));

/* Output channels per packed conv weight block, and outputs per full dense block. */
#define EDGEQ_CONV_CB (EDGEQ_LANES == 2 ? 2 : 4)
#define EDGEQ_DENSE_NB (EDGEQ_LANES == 2 ? 8 : 16)

/* One 2-D convolution. Kernel (kh, kw); stride (sh, sw); dilation (dh, dw); zero padding top/left/bottom/right
 * (pt, pl, pb, pr); groups (cin and cout divisible by group). oh/ow must equal
 * (ih + pt + pb - dh*(kh-1) - 1)/sh + 1 and (iw + pl + pr - dw*(kw-1) - 1)/sw + 1. */
typedef struct {
    int cin, ih, iw, cout, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, group;
} edgeq_conv_t;

/* Elements of scratch that edgeq_conv2d needs (same formula as kernels.conv_scratch_elems):
 *   (any padding ? (cin/group) * (ih+pt+pb) * (iw+pl+pr) : 0) + 1 + 2 * (cin/group) * kh * kw
 * i.e. one zero-padded copy of one group's input, then an int32 offset table (the +1 aligns it). */
int edgeq_conv2d_scratch_elems(const edgeq_conv_t *p);

/* y = conv(x, w) (+ bias). w_packed as above (4-byte aligned with 2 lanes); bias has cout elements or is NULL;
 * scratch (always needed: it holds the tap table) has edgeq_conv2d_scratch_elems(p) elements, 2-byte aligned.
 * x, y, scratch must not overlap. The parameters are trusted (kernels.conv_params checks them on the host). */
void edgeq_conv2d(const edgeq_conv_t *p, const edgeq_f16 *x, const edgeq_f16 *w_packed, const edgeq_f16 *bias,
                  edgeq_f16 *y, edgeq_f16 *scratch);

/* y[n] = sum_k x[k] * W[k][n] (+ bias[n]) for a (k, n) weight matrix, packed as above (4-byte aligned with 2
 * lanes). scratch is unused (the dense kernel needs 0 elements) and may be NULL. */
void edgeq_dense(int k, int n, const edgeq_f16 *x, const edgeq_f16 *w_packed, const edgeq_f16 *bias, edgeq_f16 *y,
                 edgeq_f16 *scratch);

#endif
