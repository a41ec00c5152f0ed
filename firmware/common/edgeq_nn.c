/* edgeq FP16 kernels: conv2d (direct, register-blocked) and dense. The contract is in edgeq_nn.h.
 *
 * Convolution plan. The input of one group is used in place, or copied into scratch inside a zero border when
 * the layer pads. An int32 table in scratch holds the byte offset of every "row" of taps: in row mode a row is
 * the kw = 3 taps (ci, ky, 0..2), in tap mode (any kernel, dilation or stride) a row is a single tap. The
 * flattened k of the contract is then (row, kx) in ascending order, and the packed weights are [k][CB] per
 * block of CB output channels.
 * A block computes CB output channels x PB adjacent output pixels of one output row (CB*PB accumulators: fp16
 * scalars, or v2f16 lane pairs with 2 lanes, in FP registers); the kx loop is unrolled at compile time so
 * neighbouring pixels share input loads, and rows go in pairs so that with 2 lanes the taps pair up at
 * compile-time constant positions: taps (k, k+1), k even, are one v2f16 MAC, x = (x[k], x[k+1]) against the
 * packed weight pair (w[k], w[k+1]) (one aligned 32-bit load); an odd K ends with the pair (x[K-1], +0) x
 * (w[K-1], +0), the contract's trailing MAC(lane1, +0, +0).
 * Variants (chosen at run time): 3-tap rows at stride 1 and 2, 1x1 stride 1 (4 x 6 blocks, rows = channels,
 * no table; without padding the image is one long row), single taps at stride 1 and at any stride; depthwise
 * (CB = 1, 8 pixels), where 3x3 stride 1 computes two output rows at once from four input rows.
 * The last pixel block of a row is shifted left to end at the row end (it recomputes a few outputs, with
 * identical bits), so no input is read beyond the image; rows narrower than a block use 4- or 1-pixel blocks.
 * The last block of output channels of a group may be partly zero weights; its extra outputs are not stored.
 */
#include "edgeq_nn.h"

#include <stddef.h>
#include <stdint.h>

#if EDGEQ_LANES != 1 && EDGEQ_LANES != 2
#error "EDGEQ_LANES must be 1 or 2"
#endif
#define LN EDGEQ_LANES

#if EDGEQ_FUSED
#if defined(__riscv)
#if !defined(__riscv_zfh)
#error "EDGEQ_FUSED=1 on RISC-V needs Zfh (fmadd.h)"
#endif
#if defined(__clang__)
/* fmadd.h; unlike __builtin_fmaf16 it never becomes a libm call, whatever -fmath-errno says */
#define MAC(a, w, x) ((a) = __builtin_elementwise_fma((w), (x), (a)))
#else
#define MAC(a, w, x) ((a) = __builtin_fmaf16((w), (x), (a)))
#endif
#else
/* The host has no correctly rounded fp16 fma. w*x (22 bits) is exact in double, and so is w*x + a unless
 * |w*x| < 2^-30 |a| (then a + w*x is far from every fp16 half-way point and both roundings give a) or
 * |w*x| > 2^29 (fp16 overflow either way): one more rounding to fp16 gives the correctly rounded fma. */
#define MAC(a, w, x) ((a) = (edgeq_f16)((double)(w) * (double)(x) + (double)(a)))
#endif
#else
/* the casts round even where the compiler evaluates _Float16 in float */
#define MAC(a, w, x) ((a) = (edgeq_f16)((a) + (edgeq_f16)((w) * (x))))
#endif

#if LN == 2
/* MAC2: the MAC of both lanes as one v2f16 operation, lane l: MAC(a[l], w[l], x[l]). The vector operations are
 * lane-wise IEEE fp16 operations (the fused one is what PULP toolchains lower to vfmac); on plain Zfh clang
 * scalarises them to two fmadd.h (or fmul.h + fadd.h), so the lanes cost what scalar code costs. */
#if EDGEQ_FUSED && defined(__riscv) && defined(__clang__)
#define MAC2(a, w, x) ((a) = __builtin_elementwise_fma((w), (x), (a)))
#elif EDGEQ_FUSED
/* no vector fma builtin (gcc) or no fp16 fma (host): per lane, as MAC */
static inline __attribute__((always_inline)) edgeq_v2f16 mac2(edgeq_v2f16 a, edgeq_v2f16 w, edgeq_v2f16 x) {
    edgeq_f16 a0 = a[0], a1 = a[1];
    MAC(a0, w[0], x[0]);
    MAC(a1, w[1], x[1]);
    return (edgeq_v2f16){a0, a1};
}
#define MAC2(a, w, x) ((a) = mac2((a), (w), (x)))
#else
/* two roundings; the cast rounds the product even where the compiler evaluates _Float16 in float */
#define MAC2(a, w, x) ((a) = (a) + (edgeq_v2f16)((w) * (x)))
#endif
#endif

#if defined(__clang__)
#define UNROLL _Pragma("clang loop unroll(full)")
/* keep copy/fill loops from turning into memcpy/memset calls: there is no libc */
#define NO_LIBC_CALLS __attribute__((no_builtin("memcpy", "memset")))
#elif defined(__GNUC__)
#define UNROLL _Pragma("GCC unroll 16")
#define NO_LIBC_CALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define UNROLL
#define NO_LIBC_CALLS
#endif
#define INLINE static inline __attribute__((always_inline))

#define CB_MAX 4  /* output channels per block */
#define PB_MAX 8  /* output pixels per block */
#define PB_CONV 4 /* output pixels per block: dense conv with rows of taps */
#define PB_1X1 6  /* 1x1 conv: 4 (or 2) channels x 6 pixels (x 1 or 2 lanes) = 24 accumulators */
#define PB_DW 8   /* depthwise (CB = 1) */
#define PB_DW2 (LN == 2 ? 4 : 8) /* depthwise 3x3, two output rows at once */

/* packed weights per output along k: K, rounded up to even with 2 lanes (pairs) */
#if LN == 2
#define KPACK(k) (((k) + 1) & ~1)
#else
#define KPACK(k) (k)
#endif

typedef uint16_t __attribute__((may_alias)) bits16;

typedef struct {
    int cin_g, cout_g, k;  /* channels per group, taps per output (K) */
    int oh, ow, sh;        /* output rows/cols, vertical stride (after flattening) */
    int ih, iw, hp, wp;    /* input and padded input sizes (after flattening) */
    int plane;             /* elements per (padded) input channel */
    int rows, kwr, dwr;    /* table rows, taps per row, element step between the taps of a row */
    const int32_t *tab;    /* byte offset of each row from the block's first input */
} plan_t;

static inline int imin(int a, int b) { return a < b ? a : b; }

/* the bias of a layer without one: adding -0.0 changes no value (see finish) */
static const edgeq_f16 NEG_ZEROS[16] = {-0.0, -0.0, -0.0, -0.0, -0.0, -0.0, -0.0, -0.0,
                                        -0.0, -0.0, -0.0, -0.0, -0.0, -0.0, -0.0, -0.0};

/* ---- one block: CB output channels x PB output pixels ---------------------------------------------------- */

#if LN == 2
/* a packed weight pair (w[k], w[k+1]) of one output: one aligned 32-bit load */
typedef edgeq_v2f16 __attribute__((may_alias)) v2w_t;

/* One tap pair (k even, k+1) for CB channels x PB pixels: x = (xa[j*SW], xb[j*SW]) against w = the CB packed
 * weight pairs. PAD: the last pair of an odd K, x = (xa[j*SW], +0) and w = (w[K-1], +0): lane 1 takes the
 * trailing MAC(+0, +0) of the contract. xb and the packed +0 pad weight are not read (on plain Zfh that saves a
 * load per channel: -0.5% instructions on QEMU for a 3x3 conv with cin = 3, K = 27). */
INLINE void pair_mac(const int CB, const int PB, const int SW, const int PAD, edgeq_v2f16 acc[][PB_MAX],
                     const edgeq_f16 *xa, const edgeq_f16 *xb, const edgeq_f16 *restrict w) {
    edgeq_v2f16 wv[CB_MAX];
    UNROLL for (int c = 0; c < CB; c++) {
        if (PAD) wv[c] = (edgeq_v2f16){w[2 * c], 0};
        else wv[c] = ((const v2w_t *)w)[c];
    }
    UNROLL for (int j = 0; j < PB; j++) {
        const edgeq_v2f16 xv = {xa[j * SW], PAD ? (edgeq_f16)0 : xb[j * SW]};
        UNROLL for (int c = 0; c < CB; c++) MAC2(acc[c][j], wv[c], xv);
    }
}

/* Two rows of KW taps, x0 then x1 (k even at the first tap of x0): KW pairs, weights [KW][CB][2]. */
INLINE void rows2_mac(const int CB, const int PB, const int KW, const int SW, const int DW,
                      edgeq_v2f16 acc[][PB_MAX], const edgeq_f16 *x0, const edgeq_f16 *x1,
                      const edgeq_f16 *restrict w) {
    UNROLL for (int p = 0; p < KW; p++) {
        const int ta = 2 * p, tb = 2 * p + 1; /* taps of the pair in the two rows: 0 .. 2*KW-1 */
        const edgeq_f16 *xa = ta < KW ? x0 + ta * DW : x1 + (ta - KW) * DW;
        const edgeq_f16 *xb = tb < KW ? x0 + tb * DW : x1 + (tb - KW) * DW;
        pair_mac(CB, PB, SW, 0, acc, xa, xb, w + p * 2 * CB);
    }
}

/* The last of an odd number of rows (k even at its first tap): (KW+1)/2 pairs; with KW odd, K is odd and the
 * last pair is (x[K-1], +0). */
INLINE void row1_mac(const int CB, const int PB, const int KW, const int SW, const int DW,
                     edgeq_v2f16 acc[][PB_MAX], const edgeq_f16 *x0, const edgeq_f16 *restrict w) {
    UNROLL for (int p = 0; p < (KW + 1) / 2; p++) {
        const int pad = 2 * p + 1 == KW;
        pair_mac(CB, PB, SW, pad, acc, x0 + 2 * p * DW, x0 + (pad ? 0 : 2 * p + 1) * DW, w + p * 2 * CB);
    }
}

/* The output value: fp16(lane0 + lane1) + bias (an odd K's trailing MAC is already in lane 1). Without a bias the
 * kernels add -0.0, which is the identity of IEEE addition (-0 + -0 = -0, +0 + -0 = +0), so no branch is needed. */
INLINE edgeq_f16 finish(edgeq_v2f16 a, edgeq_f16 bias) {
    const edgeq_f16 s = (edgeq_f16)(a[0] + a[1]);
    return (edgeq_f16)(s + bias);
}

/* One block. TAB: rows at the table's byte offsets; else rows q->plane elements apart (1x1 convs). The weights
 * of a row pair are 2*KW*CB elements with either packing. */
INLINE void conv_block(const int CB, const int PB, const int KW, const int SW, const int DW, const int TAB,
                       const plan_t *q, const edgeq_f16 *xb, const edgeq_f16 *restrict w,
                       const edgeq_f16 *bias, int nco, edgeq_f16 *y, int ysz) {
    edgeq_v2f16 acc[CB_MAX][PB_MAX];
    UNROLL for (int c = 0; c < CB; c++) UNROLL for (int j = 0; j < PB; j++) acc[c][j] = (edgeq_v2f16){0, 0};
    if (TAB) {
        const char *xc = (const char *)xb;
        const int32_t *t = q->tab, *te = t + (q->rows & ~1);
        for (; t != te; t += 2, w += 2 * KW * CB)
            rows2_mac(CB, PB, KW, SW, DW, acc, (const edgeq_f16 *)(xc + t[0]), (const edgeq_f16 *)(xc + t[1]), w);
        if (q->rows & 1) row1_mac(CB, PB, KW, SW, DW, acc, (const edgeq_f16 *)(xc + t[0]), w);
    } else {
        const edgeq_f16 *x = xb;
        const edgeq_f16 *we = w + (size_t)(q->rows & ~1) * KW * CB;
        const int step = q->plane;
        for (; w != we; w += 2 * KW * CB, x += 2 * step) rows2_mac(CB, PB, KW, SW, DW, acc, x, x + step, w);
        if (q->rows & 1) row1_mac(CB, PB, KW, SW, DW, acc, x, w);
    }
    if (nco == CB) {
        UNROLL for (int c = 0; c < CB; c++) {
            const edgeq_f16 b = bias[c];
            UNROLL for (int j = 0; j < PB; j++) y[c * ysz + j] = finish(acc[c][j], b);
        }
    } else { /* the last block of a zero-padded group: only its first nco channels exist */
        UNROLL for (int c = 0; c < CB; c++) {
            if (c < nco) {
                const edgeq_f16 b = bias[c];
                UNROLL for (int j = 0; j < PB; j++) y[c * ysz + j] = finish(acc[c][j], b);
            }
        }
    }
}

#else
/* MACs of one row of KW taps (starting at input x, weights w[kx][CB]) into acc. */
INLINE void row_mac(const int CB, const int PB, const int KW, const int SW, const int DW,
                    edgeq_f16 acc[CB_MAX][PB_MAX], const edgeq_f16 *restrict x, const edgeq_f16 *restrict w) {
    UNROLL for (int kx = 0; kx < KW; kx++) {
        edgeq_f16 wv[CB_MAX];
        UNROLL for (int c = 0; c < CB; c++) wv[c] = w[kx * CB + c];
        UNROLL for (int j = 0; j < PB; j++) {
            const edgeq_f16 xv = x[j * SW + kx * DW];
            UNROLL for (int c = 0; c < CB; c++) MAC(acc[c][j], wv[c], xv);
        }
    }
}

/* The output value: acc + bias (without a bias, -0.0: see the 2-lane finish). */
INLINE edgeq_f16 finish(edgeq_f16 a, edgeq_f16 bias) { return (edgeq_f16)(a + bias); }

/* One block. TAB: rows at the table's byte offsets; else rows q->plane elements apart (1x1 convs). */
INLINE void conv_block(const int CB, const int PB, const int KW, const int SW, const int DW, const int TAB,
                       const plan_t *q, const edgeq_f16 *xb, const edgeq_f16 *restrict w,
                       const edgeq_f16 *bias, int nco, edgeq_f16 *y, int ysz) {
    edgeq_f16 acc[CB_MAX][PB_MAX];
    UNROLL for (int c = 0; c < CB; c++) UNROLL for (int j = 0; j < PB; j++) acc[c][j] = 0;
    if (TAB) {
        const char *xc = (const char *)xb;
        const int32_t *t = q->tab, *te = t + (q->rows & ~1);
        for (; t != te; t += 2, w += 2 * KW * CB) {
            row_mac(CB, PB, KW, SW, DW, acc, (const edgeq_f16 *)(xc + t[0]), w);
            row_mac(CB, PB, KW, SW, DW, acc, (const edgeq_f16 *)(xc + t[1]), w + KW * CB);
        }
        if (q->rows & 1) row_mac(CB, PB, KW, SW, DW, acc, (const edgeq_f16 *)(xc + t[0]), w);
    } else {
        const edgeq_f16 *x = xb;
        const edgeq_f16 *we = w + (size_t)(q->rows & ~1) * KW * CB;
        const int step = q->plane;
        for (; w != we; w += 2 * KW * CB, x += 2 * step) {
            row_mac(CB, PB, KW, SW, DW, acc, x, w);
            row_mac(CB, PB, KW, SW, DW, acc, x + step, w + KW * CB);
        }
        if (q->rows & 1) row_mac(CB, PB, KW, SW, DW, acc, x, w);
    }
    if (nco == CB) {
        UNROLL for (int c = 0; c < CB; c++) {
            const edgeq_f16 b = bias[c];
            UNROLL for (int j = 0; j < PB; j++) y[c * ysz + j] = finish(acc[c][j], b);
        }
    } else { /* the last block of a zero-padded group: only its first nco channels exist */
        UNROLL for (int c = 0; c < CB; c++) {
            if (c < nco) {
                const edgeq_f16 b = bias[c];
                UNROLL for (int j = 0; j < PB; j++) y[c * ysz + j] = finish(acc[c][j], b);
            }
        }
    }
}

#endif

/* One output row in blocks of PB pixels; the last block is shifted left to end at the row end. */
INLINE void conv_row(const int CB, const int PB, const int KW, const int SW, const int DW, const int TAB,
                     const plan_t *q, const edgeq_f16 *xr, const edgeq_f16 *w, const edgeq_f16 *bias, int nco,
                     edgeq_f16 *yr, int ysz) {
    const int last = q->ow - PB;
    for (int ox = 0;; ox = imin(ox + PB, last)) {
        conv_block(CB, PB, KW, SW, DW, TAB, q, xr + ox * SW, w, bias, nco, yr + ox, ysz);
        if (ox == last) break;
    }
}

#if LN == 2
/* Depthwise 3x3 (dilation 1, stride S both ways): PB pixels of two output rows from the S + 3 input rows, each input
 * loaded once. Per output the MACs still run over (ky, kx) in ascending order. Used with S = 1 (see dw_r3s2). */
INLINE void dw3_block2(const int PB, const int S, const plan_t *q, const edgeq_f16 *restrict xb,
                       const edgeq_f16 *restrict w, edgeq_f16 b, edgeq_f16 *restrict y) {
    edgeq_v2f16 acc[2][PB_MAX];
    UNROLL for (int r = 0; r < 2; r++) UNROLL for (int j = 0; j < PB; j++) acc[r][j] = (edgeq_v2f16){0, 0};
    const int wp = q->wp;
    /* taps t = 3*ky + kx in pairs p = (2p, 2p+1), the fifth pair (8, pad); one loop over (p, output row r): with two
     * nested loops clang-19 schedules the block worse (+8% instructions fused, +4% unfused, for the depthwise
     * layer of bench/mcu.py) */
    UNROLL for (int i = 0; i < 10; i++) {
        const int p = i >> 1, r = i & 1;
        const int ta = 2 * p, tb = p < 4 ? ta + 1 : ta;
        pair_mac(1, PB, S, p == 4, &acc[r], xb + (r * S + ta / 3) * wp + ta % 3,
                 xb + (r * S + tb / 3) * wp + tb % 3, w + 2 * p);
    }
    UNROLL for (int r = 0; r < 2; r++) UNROLL for (int j = 0; j < PB; j++) y[r * q->ow + j] = finish(acc[r][j], b);
}
#else
/* Depthwise 3x3 (dilation 1, stride S both ways): PB pixels of two output rows from the S + 3 input rows, each input
 * loaded once. Per output the MACs still run over (ky, kx) in ascending order. Used with S = 1 (see dw_r3s2). */
INLINE void dw3_block2(const int PB, const int S, const plan_t *q, const edgeq_f16 *restrict xb,
                       const edgeq_f16 *restrict w, edgeq_f16 b, edgeq_f16 *restrict y) {
    edgeq_f16 acc[2][PB_MAX];
    UNROLL for (int r = 0; r < 2; r++) UNROLL for (int j = 0; j < PB; j++) acc[r][j] = 0;
    const int wp = q->wp;
    UNROLL for (int ky = 0; ky < 3; ky++) {
        UNROLL for (int kx = 0; kx < 3; kx++) {
            const edgeq_f16 wv = w[ky * 3 + kx];
            UNROLL for (int r = 0; r < 2; r++) {
                const edgeq_f16 *xr = xb + (r * S + ky) * wp + kx;
                UNROLL for (int j = 0; j < PB; j++) MAC(acc[r][j], wv, xr[j * S]);
            }
        }
    }
    UNROLL for (int r = 0; r < 2; r++) UNROLL for (int j = 0; j < PB; j++) y[r * q->ow + j] = finish(acc[r][j], b);
}
#endif

/* ---- the layer ------------------------------------------------------------------------------------------ */

static NO_LIBC_CALLS void fill_zero(bits16 *d, int n) {
    for (int i = 0; i < n; i++) d[i] = 0;
}

/* Zero the padding border of every channel of the buffer (copy_group fills the interior). */
static void zero_border(const edgeq_conv_t *p, const plan_t *q, edgeq_f16 *buf) {
    for (int ci = 0; ci < q->cin_g; ci++) {
        bits16 *d = (bits16 *)(buf + ci * q->plane);
        fill_zero(d, p->pt * q->wp + p->pl);
        d += p->pt * q->wp + p->pl + q->iw;
        for (int iy = 0; iy + 1 < q->ih; iy++, d += q->wp) fill_zero(d, p->pr + p->pl);
        fill_zero(d, p->pr + p->pb * q->wp);
    }
}

/* Copy the interior of group g's channels into the zero-bordered buffer. */
static NO_LIBC_CALLS void copy_group(const edgeq_conv_t *p, const plan_t *q, const edgeq_f16 *x, int g,
                                     edgeq_f16 *buf) {
    const bits16 *s = (const bits16 *)(x + (size_t)g * q->cin_g * q->ih * q->iw);
    for (int ci = 0; ci < q->cin_g; ci++) {
        bits16 *d = (bits16 *)(buf + ci * q->plane + p->pt * q->wp + p->pl);
        for (int iy = 0; iy < q->ih; iy++, d += q->wp, s += q->iw) {
            int i = 0;
            for (; i + 4 <= q->iw; i += 4) {
                bits16 a = s[i], b = s[i + 1], c = s[i + 2], e = s[i + 3];
                d[i] = a, d[i + 1] = b, d[i + 2] = c, d[i + 3] = e;
            }
            for (; i < q->iw; i++) d[i] = s[i];
        }
    }
}

/* DW2 (depthwise only): when the layer is 3x3 with dilation 1 and stride DW2 both ways, row pairs take
 * dw3_block2 (PB_DW2 pixels); other rows, and other layers, take conv_block. */
INLINE void conv_layer(const int CB, const int PB, const int KW, const int SW, const int DW, const int TAB,
                       const int DW2, const edgeq_conv_t *p, const plan_t *q, const edgeq_f16 *x,
                       const edgeq_f16 *w, const edgeq_f16 *bias, edgeq_f16 *y, edgeq_f16 *pad_buf) {
    const int two_rows = DW2 && p->kh == 3 && p->dh == 1 && q->sh == DW2 && q->ow >= PB_DW2;
    const int ncob = (q->cout_g + CB - 1) / CB, ysz = q->oh * q->ow;
    for (int g = 0; g < p->group; g++) {
        const edgeq_f16 *xg = x + (size_t)g * q->cin_g * q->plane;
        if (pad_buf) {
            copy_group(p, q, x, g, pad_buf);
            xg = pad_buf;
        }
        for (int b = 0; b < ncob; b++) {
            const int co = g * q->cout_g + b * CB, nco = imin(CB, q->cout_g - b * CB);
            const edgeq_f16 *wb = w + (size_t)(g * ncob + b) * KPACK(q->k) * CB;
            const edgeq_f16 *bb = bias ? bias + co : NEG_ZEROS;
            edgeq_f16 *yc = y + (size_t)co * ysz;
            int oy = 0;
            if (DW2 && two_rows) {
                for (; oy + 2 <= q->oh; oy += 2) {
                    const edgeq_f16 *xr = xg + oy * DW2 * q->wp;
                    const int last = q->ow - PB_DW2;
                    for (int ox = 0;; ox = imin(ox + PB_DW2, last)) {
                        dw3_block2(PB_DW2, DW2, q, xr + ox * DW2, wb, bb[0], yc + oy * q->ow + ox);
                        if (ox == last) break;
                    }
                }
            }
            for (; oy < q->oh; oy++) {
                const edgeq_f16 *xr = xg + oy * q->sh * q->wp;
                edgeq_f16 *yr = yc + oy * q->ow;
                if (q->ow >= PB) conv_row(CB, PB, KW, SW, DW, TAB, q, xr, wb, bb, nco, yr, ysz);
                else if (PB > 4 && q->ow >= 4) conv_row(CB, 4, KW, SW, DW, TAB, q, xr, wb, bb, nco, yr, ysz);
                else conv_row(CB, 1, KW, SW, DW, TAB, q, xr, wb, bb, nco, yr, ysz);
            }
        }
    }
}

#define ARGS const edgeq_conv_t *p, const plan_t *q, const edgeq_f16 *x, const edgeq_f16 *w, \
             const edgeq_f16 *bias, edgeq_f16 *y, edgeq_f16 *pad_buf
#define VARIANT(name, CB, PB, KW, SW, DW, TAB, DW2) \
    static __attribute__((noinline)) void name(ARGS) { \
        conv_layer(CB, PB, KW, SW, DW, TAB, DW2, p, q, x, w, bias, y, pad_buf); \
    }
/* CB = EDGEQ_CONV_CB: rows of 3 taps at stride 1 and 2; 1x1 (rows = input channels); single taps, any stride */
VARIANT(conv_r3s1, EDGEQ_CONV_CB, PB_CONV, 3, 1, 1, 1, 0)
VARIANT(conv_r3s2, EDGEQ_CONV_CB, PB_CONV, 3, 2, 1, 1, 0)
VARIANT(conv_1x1s1, EDGEQ_CONV_CB, PB_1X1, 1, 1, 1, 0, 0)
VARIANT(conv_t_s1, EDGEQ_CONV_CB, PB_CONV, 1, 1, 1, 1, 0)
VARIANT(conv_t_any, EDGEQ_CONV_CB, PB_CONV, 1, p->sw, 1, 1, 0)
/* depthwise (CB = 1) */
VARIANT(dw_r3s1, 1, PB_DW, 3, 1, 1, 1, 1)
VARIANT(dw_r3s2, 1, PB_DW, 3, 2, 1, 1, 0) /* two rows at stride 2 need 5 input rows: spills, slower */
VARIANT(dw_t_any, 1, PB_DW, 1, p->sw, 1, 1, 0)

int edgeq_conv2d_scratch_elems(const edgeq_conv_t *p) {
    const int cin_g = p->cin / p->group;
    const int pad = (p->pt | p->pl | p->pb | p->pr) != 0;
    const int padded = pad ? cin_g * (p->ih + p->pt + p->pb) * (p->iw + p->pl + p->pr) : 0;
    return padded + 1 + 2 * cin_g * p->kh * p->kw;
}

void edgeq_conv2d(const edgeq_conv_t *p, const edgeq_f16 *x, const edgeq_f16 *w_packed, const edgeq_f16 *bias,
                  edgeq_f16 *y, edgeq_f16 *scratch) {
    plan_t q;
    const int pad = (p->pt | p->pl | p->pb | p->pr) != 0;
    const int dwise = p->group == p->cin && p->group == p->cout;
    q.cin_g = p->cin / p->group;
    q.cout_g = p->cout / p->group;
    q.k = q.cin_g * p->kh * p->kw;
    q.ih = p->ih, q.iw = p->iw, q.oh = p->oh, q.ow = p->ow, q.sh = p->sh;
    if (!pad && p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1) { /* one long row */
        q.iw = p->ih * p->iw, q.ih = 1;
        q.ow = p->oh * p->ow, q.oh = 1;
    }
    q.hp = q.ih + p->pt + p->pb;
    q.wp = q.iw + p->pl + p->pr;
    q.plane = q.hp * q.wp;
    const int rowmode = p->kw == 3 && p->dw == 1 && (p->sw == 1 || p->sw == 2);
    q.kwr = rowmode ? p->kw : 1;
    q.dwr = p->dw;
    q.rows = q.k / q.kwr;

    edgeq_f16 *pad_buf = pad ? scratch : NULL;
    const int padded = pad ? q.cin_g * q.plane : 0;
    int32_t *tab = (int32_t *)(((uintptr_t)(scratch + padded) + 3) & ~(uintptr_t)3);
    int r = 0;
    for (int ci = 0; ci < q.cin_g; ci++)
        for (int ky = 0; ky < p->kh; ky++)
            for (int kx = 0; kx < p->kw; kx += q.kwr)
                tab[r++] = (int32_t)sizeof(edgeq_f16) * (ci * q.plane + ky * p->dh * q.wp + kx * p->dw);
    q.tab = tab;
    if (pad_buf) zero_border(p, &q, pad_buf);

    if (dwise) {
        if (rowmode && p->sw == 1) dw_r3s1(p, &q, x, w_packed, bias, y, pad_buf);
        else if (rowmode) dw_r3s2(p, &q, x, w_packed, bias, y, pad_buf);
        else dw_t_any(p, &q, x, w_packed, bias, y, pad_buf);
    } else {
        if (rowmode && p->sw == 1) conv_r3s1(p, &q, x, w_packed, bias, y, pad_buf);
        else if (rowmode) conv_r3s2(p, &q, x, w_packed, bias, y, pad_buf);
        else if (p->kh == 1 && p->kw == 1 && p->sw == 1) conv_1x1s1(p, &q, x, w_packed, bias, y, pad_buf);
        else if (p->sw == 1) conv_t_s1(p, &q, x, w_packed, bias, y, pad_buf);
        else conv_t_any(p, &q, x, w_packed, bias, y, pad_buf);
    }
}

/* ---- dense ---------------------------------------------------------------------------------------------- */

#if LN == 2
INLINE void dense_block(const int NB, int k, const edgeq_f16 *restrict x, const edgeq_f16 *restrict w,
                        const edgeq_f16 *restrict bias, edgeq_f16 *restrict y) {
    edgeq_v2f16 acc[16];
    UNROLL for (int n = 0; n < NB; n++) acc[n] = (edgeq_v2f16){0, 0};
    int i = 0;
    /* weights [k/2][NB][2]: the pair (x[i], x[i+1]) meets one packed pair per output */
    for (; i + 2 <= k; i += 2, w += 2 * NB) {
        const edgeq_v2f16 xv = {x[i], x[i + 1]};
        UNROLL for (int n = 0; n < NB; n++) MAC2(acc[n], ((const v2w_t *)w)[n], xv);
    }
    if (i < k) { /* odd k: (x[k-1], +0) against (w[k-1], +0), lane 1 takes the trailing MAC(+0, +0) */
        const edgeq_v2f16 xv = {x[i], 0};
        UNROLL for (int n = 0; n < NB; n++) MAC2(acc[n], ((edgeq_v2f16){w[2 * n], 0}), xv);
    }
    if (!bias) bias = NEG_ZEROS;
    UNROLL for (int n = 0; n < NB; n++) y[n] = finish(acc[n], bias[n]);
}
#else
INLINE void dense_block(const int NB, int k, const edgeq_f16 *restrict x, const edgeq_f16 *restrict w,
                        const edgeq_f16 *restrict bias, edgeq_f16 *restrict y) {
    edgeq_f16 acc[16];
    UNROLL for (int n = 0; n < NB; n++) acc[n] = 0;
    int i = 0;
    for (; i + 2 <= k; i += 2, w += 2 * NB) {
        const edgeq_f16 x0 = x[i], x1 = x[i + 1];
        UNROLL for (int n = 0; n < NB; n++) MAC(acc[n], w[n], x0);
        UNROLL for (int n = 0; n < NB; n++) MAC(acc[n], w[NB + n], x1);
    }
    if (i < k) {
        const edgeq_f16 x0 = x[i];
        UNROLL for (int n = 0; n < NB; n++) MAC(acc[n], w[n], x0);
    }
    if (!bias) bias = NEG_ZEROS;
    UNROLL for (int n = 0; n < NB; n++) y[n] = finish(acc[n], bias[n]);
}
#endif

#define DENSE(NB) \
    static __attribute__((noinline)) void dense_##NB(int k, const edgeq_f16 *x, const edgeq_f16 *w, \
                                                     const edgeq_f16 *bias, edgeq_f16 *y) { \
        dense_block(NB, k, x, w, bias, y); \
    }
#if EDGEQ_DENSE_NB == 16
DENSE(16)
#endif
DENSE(8)
DENSE(4)
DENSE(2)
DENSE(1)

void edgeq_dense(int k, int n, const edgeq_f16 *x, const edgeq_f16 *w_packed, const edgeq_f16 *bias, edgeq_f16 *y,
                 edgeq_f16 *scratch) {
    (void)scratch;
    int n0 = 0;
    const edgeq_f16 *w = w_packed;
    for (; n - n0 >= EDGEQ_DENSE_NB; n0 += EDGEQ_DENSE_NB, w += (size_t)KPACK(k) * EDGEQ_DENSE_NB) {
#if EDGEQ_DENSE_NB == 16
        dense_16(k, x, w, bias ? bias + n0 : NULL, y + n0);
#else
        dense_8(k, x, w, bias ? bias + n0 : NULL, y + n0);
#endif
    }
    for (int nb = EDGEQ_DENSE_NB / 2; nb >= 1; nb /= 2) {
        if ((n - n0) & nb) {
            const edgeq_f16 *bb = bias ? bias + n0 : NULL;
            if (nb == 8) dense_8(k, x, w, bb, y + n0);
            else if (nb == 4) dense_4(k, x, w, bb, y + n0);
            else if (nb == 2) dense_2(k, x, w, bb, y + n0);
            else dense_1(k, x, w, bb, y + n0);
            n0 += nb;
            w += (size_t)KPACK(k) * nb;
        }
    }
}
