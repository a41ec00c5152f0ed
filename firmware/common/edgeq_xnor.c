/* edgeq binary kernels: XNOR-popcount dense and conv2d, MST-reordered dense. The contract is in edgeq_xnor.h.
 *
 * Popcount. POPCNT is __builtin_popcount: with Zbb (-march=..._zbb) clang emits one `cpop`; without it, clang
 * for rv32im expands it inline to the SWAR sequence (x - ((x >> 1) & 0x55..), nibble sums, then a multiply by
 * 0x01010101 and a shift: about 12 instructions, no library call), which is the fastest portable popcount for
 * a 32-bit word on a core with a single-cycle multiplier. A core without M would get a __popcountsi2 call,
 * so such a build uses the shift-add SWAR below instead (EDGEQ_XNOR_SWAR forces it anywhere).
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

/* mismatches of one packed row of K bits against x: popcount(x XOR w) over the K real bits */
static inline __attribute__((always_inline)) uint32_t mismatches(int words, uint32_t last_mask, const uint32_t *x,
                                                                 const uint32_t *w) {
    uint32_t m = 0;
    int i = 0;
    for (; i + 1 < words; i++) m += POPCNT(x[i] ^ w[i]);
    return m + POPCNT((x[i] ^ w[i]) & last_mask);
}

void edgeq_xnor_dense(int k, int n, const uint32_t *x_bits, const uint32_t *w_bits, int32_t *y) {
    const int words = EDGEQ_XNOR_WORDS(k);
    const uint32_t last = EDGEQ_XNOR_MASK(k);
    if (words == 1) { /* K <= 32: one word per output, x stays in a register */
        const uint32_t x0 = x_bits[0];
        for (int j = 0; j < n; j++) y[j] = k - 2 * (int32_t)POPCNT((x0 ^ w_bits[j]) & last);
        return;
    }
    for (int j = 0; j < n; j++, w_bits += words) y[j] = k - 2 * (int32_t)mismatches(words, last, x_bits, w_bits);
}

void edgeq_mst_dense(const edgeq_mst_t *m, const uint32_t *x_bits, int32_t *y) {
    const int k = m->k, words = EDGEQ_XNOR_WORDS(k);
    const uint32_t last = EDGEQ_XNOR_MASK(k);
    const uint32_t *root = m->root_bits;
    const uint16_t *pos = m->pos;
    const uint32_t *sbits = m->sign_bits;
    uint32_t t = 0; /* running index into pos / the sign bit stream */
    for (int s = 0; s < m->n; s++) {
        const int c = m->order[s];
        const uint32_t par = m->parent[s];
        if (par == EDGEQ_MST_ROOT) {
            y[c] = k - 2 * (int32_t)mismatches(words, last, x_bits, root);
            root += words;
            continue;
        }
        const uint32_t cnt = m->count[s], end = t + cnt;
        uint32_t diff = 0; /* #{i in D : s_i != x_i} */
        while (t < end) {
            /* the sign word of t, shifted so that bit 0 is t's sign; runs to the word's end or to `end` */
            uint32_t sw = sbits[t >> 5] >> (t & 31);
            uint32_t stop = (t | 31u) + 1u;
            if (stop > end) stop = end;
            for (; t < stop; t++, sw >>= 1) {
                const uint32_t p = pos[t];
                diff += ((x_bits[p >> 5] >> (p & 31)) ^ sw) & 1u;
            }
        }
        y[c] = y[par] - 2 * (int32_t)cnt + 4 * (int32_t)diff;
    }
}

/* ---- binary conv2d: pack each pixel's patch (and its valid mask when it touches the padding), then XNOR ---- */

NO_LIBC_CALLS void edgeq_xnor_conv2d(const edgeq_bconv_t *p, const int8_t *x, const uint32_t *w_bits, int32_t *y,
                       uint32_t *scratch) {
    const int k = p->cin * p->kh * p->kw, words = EDGEQ_XNOR_WORDS(k);
    const uint32_t last = EDGEQ_XNOR_MASK(k);
    const int plane = p->oh * p->ow;
    uint32_t *patch = scratch, *valid = scratch + words;
    for (int oy = 0; oy < p->oh; oy++) {
        for (int ox = 0; ox < p->ow; ox++) {
            const int y0 = oy * p->sh - p->pt, x0 = ox * p->sw - p->pl;
            const int inside = y0 >= 0 && x0 >= 0 && y0 + p->dh * (p->kh - 1) < p->ih &&
                               x0 + p->dw * (p->kw - 1) < p->iw;
            for (int i = 0; i < words; i++) patch[i] = valid[i] = 0;
            int nvalid = 0, bit = 0;
            for (int ci = 0; ci < p->cin; ci++) {
                const int8_t *xc = x + ci * p->ih * p->iw;
                for (int ky = 0; ky < p->kh; ky++) {
                    const int iy = y0 + ky * p->dh;
                    for (int kx = 0; kx < p->kw; kx++, bit++) {
                        const int ix = x0 + kx * p->dw;
                        if (iy < 0 || iy >= p->ih || ix < 0 || ix >= p->iw) continue; /* padded tap: 0 */
                        const uint32_t b = 1u << (bit & 31);
                        valid[bit >> 5] |= b;
                        nvalid++;
                        if (xc[iy * p->iw + ix] > 0) patch[bit >> 5] |= b;
                    }
                }
            }
            int32_t *yo = y + oy * p->ow + ox;
            const uint32_t *w = w_bits;
            if (inside) {
                for (int co = 0; co < p->cout; co++, w += words)
                    yo[co * plane] = k - 2 * (int32_t)mismatches(words, last, patch, w);
            } else {
                for (int co = 0; co < p->cout; co++, w += words) {
                    uint32_t m = 0;
                    for (int i = 0; i < words; i++) m += POPCNT((patch[i] ^ w[i]) & valid[i]);
                    yo[co * plane] = nvalid - 2 * (int32_t)m;
                }
            }
        }
    }
}
