/* edgeq binary kernels: XNOR-popcount dense and conv2d, MST-reordered dense and conv2d. The contract is in
 * edgeq_xnor.h.
 *
 * Popcount. POPCNT is __builtin_popcount: with Zbb (-march=..._zbb) clang emits one `cpop`; without it, clang
 * for rv32im expands it inline to the SWAR sequence (x - ((x >> 1) & 0x55..), nibble sums, then a multiply by
 * 0x01010101 and a shift: about 12 instructions, no library call), which is the fastest portable popcount for
 * a 32-bit word on a core with a single-cycle multiplier. A core without M would get a __popcountsi2 call,
 * so such a build uses the shift-add SWAR below instead (EDGEQ_XNOR_SWAR forces it anywhere).
 *
 * MST children. A child reads its differing positions from an int8 ±1 copy of the input (xs), one load and one
 * add per position: a position list cannot use the word-parallel popcount, so on a CPU a child is cheaper than
 * its plain XNOR row only when |D| is small against K: below about K/10 without Zbb (a plain XNOR row costs
 * about 0.65 instructions per position, a child about 6 per differing position; bench/mst.py).
 */
#include "edgeq_xnor.h"

#include <stdint.h>

#if defined(__clang__)
#define NO_LIBC_CALLS __attribute__((no_builtin("memcpy", "memset"))) /* there is no libc */
#elif defined(__GNUC__)
#define NO_LIBC_CALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define NO_LIBC_CALLS
#endif

#if defined(EDGEQ_XNOR_SWAR) || (defined(__riscv) && !defined(__riscv_zbb) && !defined(__riscv_mul))
static inline __attribute__((always_inline)) uint32_t popcnt32(uint32_t v) {
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    v = (v + (v >> 4)) & 0x0F0F0F0Fu;
    v = v + (v >> 8);
    v = v + (v >> 16);
    return v & 63u;
}
#define POPCNT(v) popcnt32(v)
#else
#define POPCNT(v) ((uint32_t)__builtin_popcount(v))
#endif

/* the sign bit of element i (eb bytes, little-endian): 1 for a negative activation */
#define NEG(x, i, eb) (((const uint8_t *)(x))[(i) * (eb) + (eb) - 1] >> 7)

/* mismatches of one packed row of K bits against x: popcount(x XOR w) over the K real bits */
static inline __attribute__((always_inline)) uint32_t mismatches(int words, uint32_t last_mask, const uint32_t *x,
                                                                 const uint32_t *w) {
    uint32_t m = 0;
    int i = 0;
    for (; i + 1 < words; i++) m += POPCNT(x[i] ^ w[i]);
    return m + POPCNT((x[i] ^ w[i]) & last_mask);
}

NO_LIBC_CALLS void edgeq_pack_signs(const void *x, int n, int eb, uint32_t *bits) {
    for (int w = 0; w < EDGEQ_XNOR_WORDS(n); w++) {
        const int end = n - 32 * w < 32 ? n - 32 * w : 32;
        uint32_t v = 0;
        for (int b = 0; b < end; b++) v |= (uint32_t)(NEG(x, 32 * w + b, eb) ^ 1u) << b;
        bits[w] = v;
    }
}

void edgeq_xnor_dense(int k, int n, const uint32_t *x_bits, const uint32_t *w_bits, float scale, float *y) {
    const int words = EDGEQ_XNOR_WORDS(k);
    const uint32_t last = EDGEQ_XNOR_MASK(k);
    if (words == 1) { /* K <= 32: one word per output, x stays in a register */
        const uint32_t x0 = x_bits[0];
        for (int j = 0; j < n; j++) y[j] = (float)(k - 2 * (int32_t)POPCNT((x0 ^ w_bits[j]) & last)) * scale;
        return;
    }
    for (int j = 0; j < n; j++, w_bits += words)
        y[j] = (float)(k - 2 * (int32_t)mismatches(words, last, x_bits, w_bits)) * scale;
}

/* sum of xs over n positions: a load of the position, an address add, a byte load and an add per position
 * (clang's own unrolling measured fewer instructions than a hand-unrolled loop on tfc_1w1a) */
static inline __attribute__((always_inline)) int32_t gather(const int8_t *xs, const uint16_t *pos, int n) {
    int32_t a = 0;
    for (int t = 0; t < n; t++) a += xs[pos[t]];
    return a;
}

/* the MST steps of one output position: roots by XNOR over bits (valid: the mask of real taps, or 0 when all K
 * are real, with nvalid of them), children from their parent over xs; outputs at y[c * stride] */
static inline __attribute__((always_inline)) void mst_steps(const edgeq_mst_t *m, const uint32_t *bits,
                                                            const uint32_t *valid, int nvalid, const int8_t *xs,
                                                            float scale, float *y, int stride) {
    const int words = EDGEQ_XNOR_WORDS(m->k);
    const uint32_t last = EDGEQ_XNOR_MASK(m->k);
    const uint32_t *root = m->root_bits;
    const uint16_t *pos = m->pos, *cnt = m->count;
    for (int s = 0; s < m->n; s++, cnt += 2) {
        const int c = m->order[s];
        const uint32_t par = m->parent[s];
        if (par == EDGEQ_MST_ROOT) {
            uint32_t mis;
            if (valid) {
                mis = 0;
                for (int i = 0; i < words; i++) mis += POPCNT((bits[i] ^ root[i]) & valid[i]);
            } else {
                mis = mismatches(words, last, bits, root);
            }
            y[c * stride] = (float)(nvalid - 2 * (int32_t)mis) * scale;
            root += words;
            continue;
        }
        const int32_t plus = gather(xs, pos, cnt[0]), minus = gather(xs, pos + cnt[0], cnt[1]);
        pos += cnt[0] + cnt[1];
        y[c * stride] = y[par * stride] - (float)(2 * (plus - minus)) * scale;
    }
}

NO_LIBC_CALLS void edgeq_mst_dense(const edgeq_mst_t *m, const void *x, int eb, float scale, float *y,
                                   uint32_t *scratch) {
    const int k = m->k;
    int8_t *xs = (int8_t *)(scratch + EDGEQ_XNOR_WORDS(k));
    edgeq_pack_signs(x, k, eb, scratch);
    for (int i = 0; i < k; i++) xs[i] = (int8_t)(1 - 2 * (int)NEG(x, i, eb));
    mst_steps(m, scratch, 0, k, xs, scale, y, 1);
}

/* ---- binary conv2d: pack each pixel's patch once (and its valid mask when it touches the padding) ---------- */

/* Packs the patch of output pixel (oy, ox) into patch/valid (and, when xs is not 0, its int8 ±1 copy with 0 at
 * padded taps). Returns the number of real taps; *inside is 1 when there is no padded tap. */
static inline __attribute__((always_inline)) int pack_patch(const edgeq_bconv_t *p, const void *x, int eb, int oy,
                                                            int ox, uint32_t *patch, uint32_t *valid, int8_t *xs,
                                                            int *inside) {
    const int words = EDGEQ_XNOR_WORDS(p->cin * p->kh * p->kw);
    const int y0 = oy * p->sh - p->pt, x0 = ox * p->sw - p->pl;
    *inside = y0 >= 0 && x0 >= 0 && y0 + p->dh * (p->kh - 1) < p->ih && x0 + p->dw * (p->kw - 1) < p->iw;
    for (int i = 0; i < words; i++) patch[i] = valid[i] = 0;
    int nvalid = 0, bit = 0;
    for (int ci = 0; ci < p->cin; ci++) {
        const int plane = ci * p->ih * p->iw;
        for (int ky = 0; ky < p->kh; ky++) {
            const int iy = y0 + ky * p->dh;
            for (int kx = 0; kx < p->kw; kx++, bit++) {
                const int ix = x0 + kx * p->dw;
                if (iy < 0 || iy >= p->ih || ix < 0 || ix >= p->iw) { /* padded tap: 0 */
                    if (xs) xs[bit] = 0;
                    continue;
                }
                const uint32_t b = 1u << (bit & 31), neg = NEG(x, plane + iy * p->iw + ix, eb);
                valid[bit >> 5] |= b;
                nvalid++;
                if (!neg) patch[bit >> 5] |= b;
                if (xs) xs[bit] = (int8_t)(1 - 2 * (int)neg);
            }
        }
    }
    return nvalid;
}

NO_LIBC_CALLS void edgeq_xnor_conv2d(const edgeq_bconv_t *p, const void *x, int eb, const uint32_t *w_bits,
                                     float scale, float *y, uint32_t *scratch) {
    const int k = p->cin * p->kh * p->kw, words = EDGEQ_XNOR_WORDS(k);
    const uint32_t last = EDGEQ_XNOR_MASK(k);
    const int plane = p->oh * p->ow;
    uint32_t *patch = scratch, *valid = scratch + words;
    for (int oy = 0; oy < p->oh; oy++) {
        for (int ox = 0; ox < p->ow; ox++) {
            int inside;
            const int nvalid = pack_patch(p, x, eb, oy, ox, patch, valid, 0, &inside);
            float *yo = y + oy * p->ow + ox;
            const uint32_t *w = w_bits;
            if (inside) {
                for (int co = 0; co < p->cout; co++, w += words)
                    yo[co * plane] = (float)(k - 2 * (int32_t)mismatches(words, last, patch, w)) * scale;
            } else {
                for (int co = 0; co < p->cout; co++, w += words) {
                    uint32_t mis = 0;
                    for (int i = 0; i < words; i++) mis += POPCNT((patch[i] ^ w[i]) & valid[i]);
                    yo[co * plane] = (float)(nvalid - 2 * (int32_t)mis) * scale;
                }
            }
        }
    }
}

NO_LIBC_CALLS void edgeq_mst_conv2d(const edgeq_bconv_t *p, const edgeq_mst_t *m, const void *x, int eb,
                                    float scale, float *y, uint32_t *scratch) {
    const int words = EDGEQ_XNOR_WORDS(m->k);
    const int plane = p->oh * p->ow;
    uint32_t *patch = scratch, *valid = scratch + words;
    int8_t *xs = (int8_t *)(scratch + 2 * words);
    for (int oy = 0; oy < p->oh; oy++) {
        for (int ox = 0; ox < p->ow; ox++) {
            int inside;
            const int nvalid = pack_patch(p, x, eb, oy, ox, patch, valid, xs, &inside);
            mst_steps(m, patch, inside ? 0 : valid, nvalid, xs, scale, y + oy * p->ow + ox, plane);
        }
    }
}
