"""FP16 MCU kernels: MACs per executed instruction on QEMU (rv32imafc_zfh), next to a naive C loop.

    .venv/bin/python bench/mcu.py [--lanes 1 2] [--fused 1] [--small]

For each build (EDGEQ_LANES, EDGEQ_FUSED) one firmware runs every layer twice: through edgeq_conv2d /
edgeq_dense with weights packed by edgeq.backends.mcu.kernels, and through the plain contract loop (pad the
input, then six nested loops over co, oy, ox, ci, ky, kx with one MAC each), compiled with the same flags.
Instructions are the minstret delta around each call (QEMU -icount shift=0: exact and repeatable), so they
include the padding copy and the set-up of both. The firmware compares both outputs bit for bit; the table is
printed only when they are identical for every layer. Large buffers live in the board's TESTDATA region (the
simulator's memory), so layers larger than the board's RAM budget can be measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeq.backends.mcu import kernels
from edgeq.backends.mcu import toolchain as tc

BOARD = "qemu-rv32"

# name, kind, (cin, h, w, cout, k, stride, pad, group) or (K, N)
LAYERS = [
    ("conv3x3 32->32 16x16 p1", "conv", (32, 16, 16, 32, 3, 1, 1, 1)),
    ("CNV conv3x3 64->64 30x30 p0", "conv", (64, 30, 30, 64, 3, 1, 0, 1)),
    ("conv3x3 s2 32->64 16x16 p1", "conv", (32, 16, 16, 64, 3, 2, 1, 1)),
    ("depthwise3x3 32ch 16x16 p1", "conv", (32, 16, 16, 32, 3, 1, 1, 32)),
    ("conv1x1 32->64 16x16", "conv", (32, 16, 16, 64, 1, 1, 0, 1)),
    ("dense 784->64", "dense", (784, 64)),
    ("dense 256->10", "dense", (256, 10)),
]
SMALL = {"CNV conv3x3 64->64 30x30 p0": ("CNV conv3x3 64->64 14x14 p0", "conv", (64, 14, 14, 64, 3, 1, 0, 1))}

NAIVE = r"""
#if EDGEQ_FUSED
#define NAIVE_MAC(a, w, x) ((a) = __builtin_elementwise_fma((w), (x), (a)))
#else
#define NAIVE_MAC(a, w, x) ((a) = (edgeq_f16)((a) + (edgeq_f16)((w) * (x))))
#endif
#define NL EDGEQ_LANES

static edgeq_f16 naive_out(edgeq_f16 *a, int k, const edgeq_f16 *bias) {
    edgeq_f16 s = a[0];
    if (NL == 2) {
        if (k & 1) { const edgeq_f16 z = 0; NAIVE_MAC(a[1], z, z); }
        s = (edgeq_f16)(s + a[1]);
    }
    if (bias) s = (edgeq_f16)(s + *bias);
    return s;
}

/* The contract, literally: a zero-padded copy, then one MAC per (co, oy, ox, ci, ky, kx). */
__attribute__((noinline)) void naive_conv(const edgeq_conv_t *p, const edgeq_f16 *x, const edgeq_f16 *w,
                                          const edgeq_f16 *bias, edgeq_f16 *y, edgeq_f16 *xp) {
    const int hp = p->ih + p->pt + p->pb, wp = p->iw + p->pl + p->pr;
    const int cin_g = p->cin / p->group, cout_g = p->cout / p->group;
    for (int c = 0; c < p->cin; c++)
        for (int i = 0; i < hp; i++)
            for (int j = 0; j < wp; j++) {
                const int iy = i - p->pt, ix = j - p->pl;
                const int in = iy >= 0 && iy < p->ih && ix >= 0 && ix < p->iw;
                xp[(c * hp + i) * wp + j] = in ? x[(c * p->ih + iy) * p->iw + ix] : (edgeq_f16)0;
            }
    for (int co = 0; co < p->cout; co++) {
        const int g = co / cout_g;
        for (int oy = 0; oy < p->oh; oy++)
            for (int ox = 0; ox < p->ow; ox++) {
                edgeq_f16 a[2] = {0, 0};
                int k = 0;
                for (int ci = 0; ci < cin_g; ci++)
                    for (int ky = 0; ky < p->kh; ky++)
                        for (int kx = 0; kx < p->kw; kx++, k++)
                            NAIVE_MAC(a[k & (NL - 1)], w[((co * cin_g + ci) * p->kh + ky) * p->kw + kx],
                                      xp[((g * cin_g + ci) * hp + oy * p->sh + ky * p->dh) * wp + ox * p->sw
                                         + kx * p->dw]);
                y[(co * p->oh + oy) * p->ow + ox] = naive_out(a, k, bias ? bias + co : 0);
            }
    }
}

__attribute__((noinline)) void naive_dense(int k, int n, const edgeq_f16 *x, const edgeq_f16 *w,
                                           const edgeq_f16 *bias, edgeq_f16 *y) {
    for (int j = 0; j < n; j++) {
        edgeq_f16 a[2] = {0, 0};
        for (int i = 0; i < k; i++) NAIVE_MAC(a[i & (NL - 1)], w[i * n + j], x[i]);
        y[j] = naive_out(a, k, bias ? bias + j : 0);
    }
}

__attribute__((noinline)) void fast_conv(const edgeq_conv_t *p, const edgeq_f16 *x, const edgeq_f16 *w,
                                         const edgeq_f16 *bias, edgeq_f16 *y, edgeq_f16 *scratch) {
    edgeq_conv2d(p, x, w, bias, y, scratch);
}

__attribute__((noinline)) void fast_dense(int k, int n, const edgeq_f16 *x, const edgeq_f16 *w,
                                          const edgeq_f16 *bias, edgeq_f16 *y) {
    edgeq_dense(k, n, x, w, bias, y, 0);
}

static int same_bits(const edgeq_f16 *a, const edgeq_f16 *b, int n) {
    int bad = 0;
    for (int i = 0; i < n; i++) {
        uint16_t u, v;
        __builtin_memcpy(&u, &a[i], 2);
        __builtin_memcpy(&v, &b[i], 2);
        bad += u != v;
    }
    return bad;
}

static void report(int id, uint64_t fast, uint64_t naive, int bad) {
    edgeq_puts("L ");
    edgeq_put_hex((uint32_t)id, 2);
    edgeq_puts(" ");
    edgeq_put_hex64(fast);
    edgeq_puts(" ");
    edgeq_put_hex64(naive);
    edgeq_puts(" ");
    edgeq_put_hex((uint32_t)bad, 8);
    edgeq_puts("\n");
}
"""

# aligned(4): with 2 lanes the kernels load packed weight pairs (v2f16) as aligned 32-bit words
RO = '__attribute__((section(".edgeq_testdata.ro"), aligned(4)))'
RW = '__attribute__((section(".edgeq_testdata.rw"), aligned(4)))'


def _carray(name: str, v: np.ndarray) -> str:
    bits = ",".join(str(int(b)) for b in np.asarray(v, np.float16).reshape(-1).view(np.uint16))
    n = max(v.size, 1)
    return f"static const union {{ uint16_t u[{n}]; edgeq_f16 h[{n}]; }} {name} {RO} = {{{{{bits}}}}};\n"


def _layer_data(i: int, kind: str, shape: tuple) -> dict:
    rng = np.random.default_rng(i)
    if kind == "conv":
        cin, h, w, cout, k, s, pad, g = shape
        x = rng.standard_normal((cin, h, w)).astype(np.float16)
        wt = (rng.standard_normal((cout, cin // g, k, k)) / np.sqrt(cin // g * k * k)).astype(np.float16)
        oh, ow = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        attrs = {"strides": [s, s], "pads": [pad] * 4, "dilations": [1, 1], "group": g}
        p = kernels.conv_params((cin, h, w), (cout, oh, ow), attrs, wt.shape)
        macs = cout * oh * ow * (cin // g) * k * k
        return {"x": x, "w": wt, "b": rng.standard_normal(cout).astype(np.float16), "p": p, "macs": macs,
                "n_out": cout * oh * ow}
    k, n = shape
    return {"x": rng.standard_normal(k).astype(np.float16),
            "w": (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float16),
            "b": rng.standard_normal(n).astype(np.float16), "macs": k * n, "n_out": n}


def _program(layers: list, lanes: int) -> str:
    decl, body = [], []
    for i, (_name, kind, _shape) in enumerate(layers):
        d = _layer_data(i, kind, _shape)
        decl += [_carray(f"X{i}", d["x"]), _carray(f"B{i}", d["b"]), _carray(f"WR{i}", d["w"])]
        decl.append(f"static edgeq_f16 YF{i}[{d['n_out']}] {RW};\nstatic edgeq_f16 YN{i}[{d['n_out']}] {RW};\n")
        if kind == "conv":
            p = d["p"]
            decl.append(_carray(f"WP{i}", kernels.pack_conv(d["w"], p, lanes)))
            padded = p["cin"] * (p["ih"] + p["pt"] + p["pb"]) * (p["iw"] + p["pl"] + p["pr"])
            decl.append(f"static edgeq_f16 S{i}[{kernels.conv_scratch_elems(p, lanes)}] {RW};\n"
                        f"static edgeq_f16 XP{i}[{padded}] {RW};\n")
            fields = ", ".join(str(p[key]) for key in kernels.CONV_KEYS)
            fast = f"fast_conv(&p{i}, X{i}.h, WP{i}.h, B{i}.h, YF{i}, S{i})"
            naive = f"naive_conv(&p{i}, X{i}.h, WR{i}.h, B{i}.h, YN{i}, XP{i})"
            decl.append(f"static const edgeq_conv_t p{i} = {{{fields}}};\n")
        else:
            k, n = _shape
            decl.append(_carray(f"WP{i}", kernels.pack_dense(d["w"], lanes)))
            fast = f"fast_dense({k}, {n}, X{i}.h, WP{i}.h, B{i}.h, YF{i})"
            naive = f"naive_dense({k}, {n}, X{i}.h, WR{i}.h, B{i}.h, YN{i})"
        body.append(f"""    {{
        uint64_t t0 = edgeq_instret();
        {fast};
        uint64_t t1 = edgeq_instret();
        {naive};
        uint64_t t2 = edgeq_instret();
        report({i}, t1 - t0, t2 - t1, same_bits(YF{i}, YN{i}, {d['n_out']}));
    }}
""")
    return (f'#include <stdint.h>\n#include "edgeq_io.h"\n#include "edgeq_nn.h"\n{NAIVE}\n{"".join(decl)}\n'
            f'int main(void) {{\n{"".join(body)}    return 0;\n}}\n')


def run(layers: list, lanes: int, fused: int, tmp: Path) -> dict[int, tuple[int, int, int]]:
    src = tmp / f"bench_l{lanes}_f{fused}.c"
    src.write_text(_program(layers, lanes))
    elf = tmp / f"bench_l{lanes}_f{fused}.elf"
    tc.compile_elf(BOARD, [*kernels.c_sources(), src], elf, include_dirs=[kernels.firmware_common()],
                   defines=[f"EDGEQ_LANES={lanes}", f"EDGEQ_FUSED={fused}"], workdir=tmp / f"w{lanes}{fused}")
    out = tc.run_firmware(BOARD, elf, timeout_s=600).stdout
    res = {}
    for line in out.splitlines():
        if line.startswith("L "):
            _, i, fast, naive, bad = line.split()
            res[int(i, 16)] = (int(fast, 16), int(naive, 16), int(bad, 16))
    if len(res) != len(layers):
        sys.exit(f"the firmware reported {len(res)} of {len(layers)} layers:\n{out[-2000:]}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lanes", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    ap.add_argument("--fused", type=int, nargs="+", default=[1], choices=[0, 1])
    ap.add_argument("--small", action="store_true", help="a 14x14 CNV layer instead of 30x30 (faster)")
    args = ap.parse_args()
    layers = [SMALL.get(name, (name, kind, shape)) if args.small else (name, kind, shape)
              for name, kind, shape in LAYERS]
    macs = [_layer_data(i, kind, shape)["macs"] for i, (_, kind, shape) in enumerate(layers)]
    t0 = time.monotonic()
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-mcu-") as tmp:
        for lanes in args.lanes:
            for fused in args.fused:
                results[lanes, fused] = run(layers, lanes, fused, Path(tmp))
    for (lanes, fused), res in results.items():
        bad = {layers[i][0]: b for i, (_, _, b) in res.items() if b}
        if bad:
            sys.exit(f"LANES={lanes} FUSED={fused}: fast and naive outputs differ (elements per layer): {bad}")
    print(f"board {BOARD} (rv32imafc_zfh, QEMU -icount shift=0); instructions = minstret deltas; "
          f"fast == naive bit for bit on every layer; {time.monotonic() - t0:.1f} s")
    for (lanes, fused), res in results.items():
        print(f"\nEDGEQ_LANES={lanes} EDGEQ_FUSED={fused}")
        head = f"{'layer':<30} {'MACs':>10} {'fast instr':>12} {'MAC/instr':>9} {'naive instr':>12} " \
               f"{'MAC/instr':>9} {'speedup':>8}"
        print(head)
        print("-" * len(head))
        tf = tn = tm = 0
        for i, (name, _, _) in enumerate(layers):
            fast, naive, _ = res[i]
            tf, tn, tm = tf + fast, tn + naive, tm + macs[i]
            print(f"{name:<30} {macs[i]:>10} {fast:>12} {macs[i] / fast:>9.3f} {naive:>12} {macs[i] / naive:>9.3f} "
                  f"{naive / fast:>7.2f}x")
        print(f"{'total':<30} {tm:>10} {tf:>12} {tm / tf:>9.3f} {tn:>12} {tm / tn:>9.3f} {tn / tf:>7.2f}x")


if __name__ == "__main__":
    main()
