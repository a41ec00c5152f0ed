"""The FP16 MCU kernels (firmware/common/edgeq_nn.c) compute the arithmetic contract bit for bit.

The oracle is a plain numpy transcription of the contract written here, independent of edgeq's emulator:
float64 products (exact for float16 operands), cast to float16 after every rounding step, the zero-padded input,
k ascending over (ci, ky, kx), even/odd k in two lanes when lanes=2 (K padded to even), then the lane sum and
the bias. The kernels run on the x86 host (gcc, -fexcess-precision=16) for many shapes, and on QEMU (clang-19,
rv32imafc_zfh) for a representative subset. Each call sees its scratch pre-filled with NaNs, and guard elements
after the output and the scratch buffers must survive.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mcu_tools import BOARD
from mcu_tools import host_compiler as _host_compiler
from mcu_tools import need as _need
from mcu_tools import qemu as _qemu

from edgeq.backends.mcu import kernels
from edgeq.backends.mcu import toolchain as tc
from edgeq.errors import EdgeqError

GUARD = 8  # guard elements after every output and scratch buffer
CANARY = 0xA5A5




# ---- the cases ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    cin: int
    cout: int
    hw: tuple[int, int]
    k: tuple[int, int] = (3, 3)
    s: tuple[int, int] = (1, 1)
    d: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    group: int = 1
    bias: bool = True
    data: str = "normal"

    @property
    def params(self) -> dict[str, int]:
        (ih, iw), (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = self.hw, self.k, self.s, self.d, self.pads
        oh = (ih + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (iw + pl + pr - dw * (kw - 1) - 1) // sw + 1
        attrs = {"strides": list(self.s), "dilations": list(self.d), "pads": list(self.pads), "group": self.group}
        return kernels.conv_params((self.cin, ih, iw), (self.cout, oh, ow), attrs,
                                   (self.cout, self.cin // self.group, kh, kw))


@dataclass(frozen=True)
class Dense:
    k: int
    n: int
    bias: bool = True
    data: str = "normal"


HOST_CASES = [
    Conv(5, 6, (7, 9), pads=(1, 1, 1, 1)),  # Cout and OW not multiples of the block
    Conv(8, 8, (8, 8), pads=(1, 1, 1, 1), bias=False, data="mixed"),
    Conv(3, 9, (6, 6), pads=(1, 1, 1, 1), data="zeros"),  # padded taps flip -0 accumulators to +0
    Conv(4, 4, (6, 7), pads=(1, 1, 1, 1), data="large"),  # overflow to inf, inf - inf
    Conv(4, 5, (9, 11), s=(2, 2), pads=(1, 1, 0, 0)),  # asymmetric pads
    Conv(3, 4, (8, 8), s=(2, 2), pads=(1, 1, 1, 1), data="mixed"),
    Conv(4, 4, (9, 9), d=(2, 2), pads=(2, 2, 2, 2)),  # dilation 2
    Conv(3, 2, (9, 10), d=(2, 1), s=(1, 2), pads=(0, 1, 2, 0)),
    Conv(3, 4, (8, 10), k=(5, 5), pads=(2, 2, 2, 2), data="mixed"),
    Conv(3, 3, (9, 9), k=(5, 5), s=(2, 2), pads=(2, 1, 1, 2)),
    Conv(8, 12, (5, 5), k=(1, 1)),  # 1x1, one long row of 25 pixels
    Conv(6, 5, (7, 7), k=(1, 1), s=(2, 2), bias=False),
    Conv(3, 4, (4, 4), k=(1, 1), pads=(1, 0, 1, 0), data="zeros"),
    Conv(7, 9, (6, 5), k=(1, 1), data="large"),
    Conv(8, 6, (6, 6), pads=(1, 1, 1, 1), group=2),  # groups, cout per group < block
    Conv(8, 8, (5, 5), k=(1, 1), group=2, data="mixed"),
    Conv(6, 12, (5, 6), pads=(1, 1, 1, 1), group=3, data="zeros"),
    Conv(8, 8, (9, 9), pads=(1, 1, 1, 1), group=8),  # depthwise
    Conv(6, 6, (9, 10), s=(2, 2), pads=(1, 1, 1, 1), group=6, data="mixed"),
    Conv(4, 4, (8, 8), k=(5, 5), pads=(2, 2, 2, 2), group=4, data="zeros"),
    Conv(4, 4, (10, 12), group=4, bias=False),
    Conv(3, 3, (11, 11), d=(2, 2), pads=(2, 2, 2, 2), group=3),
    Conv(4, 8, (7, 7), pads=(1, 1, 1, 1), group=4),  # channel multiplier 2: not the depthwise path
    Conv(1, 1, (6, 6), pads=(1, 1, 1, 1), data="zeros"),
    Conv(3, 5, (5, 5)),  # OW = 3: narrower than a block
    Conv(2, 3, (4, 6), s=(1, 3), pads=(0, 0, 0, 1), data="mixed"),
    Conv(3, 4, (7, 5), k=(3, 1), pads=(1, 0, 1, 0)),
    Conv(3, 4, (5, 7), k=(1, 3), pads=(0, 1, 0, 1), data="zeros"),
    Conv(2, 4, (8, 8), k=(2, 2), s=(2, 2)),  # even K
    Conv(2, 5, (6, 8), pads=(1, 1, 1, 1)),  # K = 18
    Conv(3, 4, (12, 12), k=(7, 7), s=(2, 2), pads=(3, 3, 3, 3)),
    Conv(5, 4, (6, 9), s=(2, 1), pads=(1, 1, 1, 1), data="mixed"),
    Conv(4, 4, (3, 8), pads=(0, 0, 0, 0), bias=False, data="large"),
    Conv(3, 3, (17, 18), s=(2, 2), pads=(1, 1, 1, 1), group=3, data="mixed"),  # depthwise, two rows at once
    Conv(4, 4, (10, 20), s=(2, 1), pads=(1, 1, 1, 1), group=4, bias=False),
    Conv(2, 2, (11, 9), pads=(0, 1, 2, 1), group=2, data="zeros"),
    Conv(2, 5, (6, 6), pads=(1, 1, 1, 1), bias=False, data="zeros"),  # -0 outputs without a bias
    Dense(7, 3),
    Dense(16, 16, data="mixed"),
    Dense(33, 21, bias=False),
    Dense(64, 10, data="zeros"),
    Dense(1, 1),
    Dense(50, 31, data="large"),
    Dense(20, 40, data="mixed"),
    Dense(24, 9, bias=False, data="zeros"),
    Dense(2, 400, bias=False, data="ties"),  # y = fma(b, 1, a): on and next to half-way points
    Dense(2, 400, bias=False, data="near-ties"),  # y = fma(b, 1025/1024, a): 21-bit products next to half-way
]
QEMU_CASES = [HOST_CASES[i] for i in (0, 1, 2, 4, 6, 8, 10, 14, 17, 18, 24, 28)] + HOST_CASES[-2:] + [Dense(33, 21)]


def _values(rng: np.random.Generator, shape, kind: str, scale: float) -> np.ndarray:
    """float16 test data: 'normal' rounds on almost every MAC; 'zeros' is signed zeros and tiny values whose
    products underflow; 'large' overflows to inf; 'mixed' sprinkles all of those into normal data."""
    n = int(np.prod(shape))
    normal = rng.standard_normal(n) * scale
    tiny = rng.choice([-1, 1], n) * np.ldexp(rng.integers(1, 1 << 10, n).astype(np.float64), -24)
    small = rng.choice([-1, 1], n) * np.ldexp(1 + rng.random(n), rng.integers(-14, -8, n))
    zeros = rng.choice([-0.0, 0.0], n)
    large = rng.choice([-1, 1], n) * rng.uniform(60, 300, n)
    if kind == "normal":
        v = normal
    elif kind == "zeros":
        v = np.choose(rng.integers(0, 3, n), [zeros, tiny, small])
    elif kind == "large":
        v = np.where(rng.random(n) < 0.8, large, normal)
    else:
        pick = rng.random(n)
        v = np.where(pick < 0.08, zeros, normal)
        v = np.where((pick >= 0.08) & (pick < 0.14), tiny, v)
        v = np.where((pick >= 0.14) & (pick < 0.20), large * 100, v)
        v = np.where(pick >= 0.995, np.inf * rng.choice([-1, 1], n), v)
    return v.astype(np.float16).reshape(shape)


@dataclass
class Data:
    x: np.ndarray
    w: np.ndarray
    b: np.ndarray | None


def _halfway(rng: np.random.Generator, n: int, x1: float) -> Data:
    """K = 2 with x = (1, x1): output j is fma(b_j, x1, a_j) (lanes=1). a_j is put on a grid of step u = 2**k
    chosen so that a_j + b_j*x1 is exactly on (a third of the cases) or next to a half-way point of that grid:
    there a second rounding (of b*x1, or of the sum to float32) changes the result. With x1 = 1025/1024 and
    b = 1023 * 2**e, b*x1 = (2**20 - 1) * 2**(e-10) is one product-lsb below a half-way point."""
    a, b = np.zeros(n), np.zeros(n)
    for j in range(n):
        mant = 1023 if j % 4 == 1 else int(rng.integers(1025, 2048))
        bj = float(rng.choice([-1, 1])) * mant * 2.0 ** int(rng.integers(-18, -7))
        p = abs(bj * x1)
        m = int(p * 2.0**40)  # p is a multiple of 2**-40
        lowbit = (m & -m).bit_length() - 41
        ks = range(max(lowbit + 1, -14), min(int(np.floor(np.log2(p))) + 3, 6))

        def dist(k: int, p: float = p) -> float:  # distance of p from a half-way point of the 2**k grid
            r = p % 2.0**k - 2.0 ** (k - 1)
            return abs(r) / 2.0**k if r else 1.0

        k = ks[0] if j % 4 == 0 else min(ks, key=dist)  # ks[0]: p mod 2**k == 2**(k-1), an exact tie
        a[j], b[j] = rng.choice([-1, 1]) * rng.integers(1024, 2048) * 2.0**k, bj
    w = np.stack([a, b]).astype(np.float16)
    assert np.array_equal(w.astype(np.float64), np.stack([a, b]))
    return Data(np.array([1.0, x1], np.float16), w, None)


def _data(case, index: int) -> Data:
    rng = np.random.default_rng(1000 + index)
    if isinstance(case, Dense) and case.data in ("ties", "near-ties"):
        return _halfway(rng, case.n, 1.0 if case.data == "ties" else 1025 / 1024)
    if isinstance(case, Conv):
        x = _values(rng, (case.cin, *case.hw), case.data, 1.0)
        w = _values(rng, (case.cout, case.cin // case.group, *case.k), case.data, 0.5)
        b = _values(rng, (case.cout,), case.data, 1.0) if case.bias else None
    else:
        x = _values(rng, (case.k,), case.data, 1.0)
        w = _values(rng, (case.k, case.n), case.data, 0.5)
        b = _values(rng, (case.n,), case.data, 1.0) if case.bias else None
    return Data(x, w, b)


# ---- the oracle: the contract in numpy -----------------------------------------------------------------------


def _mac(acc: np.ndarray, w, x, fused: bool) -> np.ndarray:
    a, p = acc.astype(np.float64), np.asarray(w, np.float64) * np.asarray(x, np.float64)
    if fused:
        return (p + a).astype(np.float16)
    return (a + p.astype(np.float16).astype(np.float64)).astype(np.float16)


def _finish(lanes: list[np.ndarray], bias) -> np.ndarray:
    s = lanes[0]
    for lane in lanes[1:]:
        s = (s.astype(np.float64) + lane.astype(np.float64)).astype(np.float16)
    if bias is not None:
        s = (s.astype(np.float64) + bias.astype(np.float64)).astype(np.float16)
    return s


def _reduce(cols: np.ndarray, wk: np.ndarray, lanes: int, fused: bool) -> list[np.ndarray]:
    """cols: (K, *out) inputs per k; wk: (K, m) weights -> the lane accumulators, shape (m, *out) each."""
    k_total, out_shape = cols.shape[0], (wk.shape[1], *cols.shape[1:])
    expand = (slice(None),) + (None,) * (cols.ndim - 1)
    acc = [np.zeros(out_shape, np.float16) for _ in range(lanes)]
    for k in range(-(-k_total // lanes) * lanes):
        if k < k_total:
            acc[k % lanes] = _mac(acc[k % lanes], wk[k][expand], cols[k][None], fused)
        else:
            acc[k % lanes] = _mac(acc[k % lanes], 0.0, 0.0, fused)
    return acc


def _oracle(case, d: Data, lanes: int, fused: bool) -> np.ndarray:
    with np.errstate(all="ignore"):
        if isinstance(case, Dense):
            return _finish(_reduce(d.x[:, None], d.w, lanes, fused), None if d.b is None else d.b[:, None]).reshape(-1)
        p = case.params
        xp = np.pad(d.x, ((0, 0), (p["pt"], p["pb"]), (p["pl"], p["pr"])))  # +0.0 padding
        g, oh, ow = p["group"], p["oh"], p["ow"]
        cin_g, cout_g = p["cin"] // g, p["cout"] // g
        out = []
        for gi in range(g):
            cols = np.stack([xp[gi * cin_g + ci, ky * p["dh"]:ky * p["dh"] + (oh - 1) * p["sh"] + 1:p["sh"],
                                kx * p["dw"]:kx * p["dw"] + (ow - 1) * p["sw"] + 1:p["sw"]]
                             for ci in range(cin_g) for ky in range(p["kh"]) for kx in range(p["kw"])])
            wk = d.w[gi * cout_g:(gi + 1) * cout_g].reshape(cout_g, -1).T
            bias = None if d.b is None else d.b[gi * cout_g:(gi + 1) * cout_g, None, None]
            out.append(_finish(_reduce(cols, wk, lanes, fused), bias))
        return np.concatenate(out).reshape(-1)


# ---- the firmware ----------------------------------------------------------------------------------------


def _carray(name: str, v: np.ndarray) -> str:
    """4-byte aligned: with 2 lanes the packed weights are loaded as aligned pairs."""
    bits = ",".join(str(int(b)) for b in np.asarray(v, np.float16).reshape(-1).view(np.uint16))
    n = max(v.size, 1)
    return (f"static const union {{ uint16_t u[{n}]; edgeq_f16 h[{n}]; }} {name} __attribute__((aligned(4))) = "
            f"{{{{{bits}}}}};\n")


def _program(cases: list, data: list[Data], lanes: int) -> str:
    """A C program that runs every case and prints one line per case: id, C scratch size, guards ok, output bits."""
    decl, body, longest = [], [], 1
    for i, (case, d) in enumerate(zip(cases, data)):
        decl.append(_carray(f"X{i}", d.x))
        bias = "NULL"
        if d.b is not None:
            decl.append(_carray(f"B{i}", d.b))
            bias = f"B{i}.h"
        if isinstance(case, Conv):
            p = case.params
            n_out, scratch = p["cout"] * p["oh"] * p["ow"], kernels.conv_scratch_elems(p, lanes)
            decl.append(_carray(f"W{i}", kernels.pack_conv(d.w, p, lanes)))
            off = i % 2  # odd cases get a scratch that is not 4-byte aligned
            decl.append(f"static edgeq_f16 S{i}[{scratch + off + GUARD}];\n")
            fields = ", ".join(str(p[key]) for key in kernels.CONV_KEYS)
            call = (f"static const edgeq_conv_t p = {{{fields}}};\n"
                    f"        prep(S{i}, {scratch + off + GUARD});\n"
                    f"        edgeq_conv2d(&p, X{i}.h, W{i}.h, {bias}, Y{i}, S{i} + {off});\n"
                    f"        ok = guard_ok(S{i} + {scratch + off}) && edgeq_conv2d_scratch_elems(&p) == {scratch};")
        else:
            n_out = case.n
            assert kernels.dense_scratch_elems(case.k, case.n, lanes) == 0
            decl.append(_carray(f"W{i}", kernels.pack_dense(d.w, lanes)))
            call = f"edgeq_dense({case.k}, {case.n}, X{i}.h, W{i}.h, {bias}, Y{i}, NULL);\n        ok = 1;"
        decl.append(f"static edgeq_f16 Y{i}[{n_out + GUARD}];\n")
        longest = max(longest, n_out)
        body.append(f"    {{\n        int ok;\n        prep(Y{i}, {n_out + GUARD});\n        {call}\n"
                    f"        emit({i}, Y{i}, {n_out}, ok && guard_ok(Y{i} + {n_out}));\n    }}\n")
    return f"""#include <stddef.h>
#include <stdint.h>
#include "edgeq_io.h"
#include "edgeq_nn.h"

static void prep(edgeq_f16 *a, int n) {{  /* NaN garbage, then canaries in the guard */
    for (int i = 0; i < n; i++) {{ uint16_t u = i < n - {GUARD} ? 0xfe01 : {CANARY}; __builtin_memcpy(&a[i], &u, 2); }}
}}
static int guard_ok(const edgeq_f16 *a) {{
    for (int i = 0; i < {GUARD}; i++) {{ uint16_t u; __builtin_memcpy(&u, &a[i], 2); if (u != {CANARY}) return 0; }}
    return 1;
}}
static char line[{5 * longest + 32}];
static void emit(int id, const edgeq_f16 *y, int n, int ok) {{
    char *s = line;
    *s++ = 'C'; *s++ = ' '; *s++ = (char)('0' + id / 10); *s++ = (char)('0' + id % 10);
    *s++ = ' '; *s++ = (char)('0' + ok);
    for (int i = 0; i < n; i++) {{
        uint16_t u; __builtin_memcpy(&u, &y[i], 2);
        *s++ = ' ';
        for (int d = 3; d >= 0; d--) *s++ = "0123456789abcdef"[(u >> (4 * d)) & 15];
    }}
    *s++ = '\\n'; *s = 0;
    edgeq_puts(line);
}}
{"".join(decl)}
int main(void) {{
{"".join(body)}    return 0;
}}
"""


def build_and_run(src: str, lanes: int, fused: bool, target: str, tmp: Path) -> str:
    """Compile the program with the kernels for 'host' (gcc) or 'qemu' (clang, rv32 Zfh) and return its output."""
    (tmp / "main.c").write_text(src)
    defines = [f"EDGEQ_LANES={lanes}", f"EDGEQ_FUSED={int(fused)}"]
    sources = [*kernels.c_sources(), tmp / "main.c"]
    include = [kernels.firmware_common()]
    if target == "host":
        exe = tc.host_compile(sources, tmp / "host", include_dirs=include, defines=defines)
        return subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=60).stdout
    tc.compile_elf(BOARD, sources, tmp / "fw.elf", include_dirs=include, defines=defines, workdir=tmp)
    return tc.run_firmware(BOARD, tmp / "fw.elf", timeout_s=60).stdout


@functools.cache
def _run(cases: tuple, lanes: int, fused: bool, target: str) -> list[np.ndarray]:
    data = [_data(c, i) for i, c in enumerate(cases)]
    with tempfile.TemporaryDirectory() as tmp:
        text = build_and_run(_program(list(cases), data, lanes), lanes, fused, target,
                             Path(tmp))
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("C ")]
    assert [int(ln[1]) for ln in lines] == list(range(len(cases))), text[-500:]
    bad = [i for i, ln in enumerate(lines) if ln[2] != "1"]
    assert not bad, f"guard overwritten or C/Python scratch sizes differ in cases {[cases[i] for i in bad]}"
    return [np.array([int(t, 16) for t in ln[3:]], dtype=np.uint16) for ln in lines]


def _check(cases: tuple, lanes: int, fused: bool, target: str) -> None:
    got = _run(cases, lanes, fused, target)
    for i, (case, g) in enumerate(zip(cases, got)):
        want = _oracle(case, _data(case, i), lanes, fused)
        assert g.size == want.size
        gv, nan = g.view(np.float16), np.isnan(want)
        assert np.array_equal(np.isnan(gv), nan), f"NaN placement differs for {case}"
        diff = (g != want.view(np.uint16)) & ~nan
        first = int(np.argmax(diff))
        assert not diff.any(), (f"{case}, lanes={lanes}, fused={fused}: {int(diff.sum())}/{g.size} differ; first at "
                                f"{first}: got {g[first]:04x}, want {want.view(np.uint16)[first]:04x}")


# ---- the tests ------------------------------------------------------------------------------------------------

CONFIGS = [(lanes, fused) for lanes in (1, 2) for fused in (False, True)]


@pytest.mark.parametrize("lanes,fused", CONFIGS)
def test_kernels_on_the_host_equal_the_contract_bit_for_bit(lanes, fused):
    _need(_host_compiler)
    _check(tuple(HOST_CASES), lanes, fused, "host")


@pytest.mark.parametrize("lanes,fused", CONFIGS)
def test_kernels_on_qemu_rv32_zfh_equal_the_contract_bit_for_bit(lanes, fused):
    _need(_qemu)
    _check(tuple(QEMU_CASES), lanes, fused, "qemu")


def test_fused_and_unfused_builds_really_differ():
    _need(_host_compiler)
    for lanes in (1, 2):
        a, b = (np.concatenate(_run(tuple(HOST_CASES), lanes, fused, "host")) for fused in (False, True))
        assert (a != b).sum() > 100, f"lanes={lanes}: fused and unfused builds agree on almost everything"


def test_one_and_two_lanes_really_differ():
    _need(_host_compiler)
    a, b = (np.concatenate(_run(tuple(HOST_CASES), lanes, True, "host")) for lanes in (1, 2))
    assert (a != b).sum() > 100


def test_conv_params_read_onnx_attributes():
    attrs = {"strides": [2, 1], "pads": [1, 2, 0, 3], "dilations": [1, 2], "group": 2}
    p = kernels.conv_params((4, 9, 10), (6, 4, 11), attrs, (6, 2, 3, 3))
    assert p == {"cin": 4, "ih": 9, "iw": 10, "cout": 6, "oh": 4, "ow": 11, "kh": 3, "kw": 3, "sh": 2, "sw": 1,
                 "dh": 1, "dw": 2, "pt": 1, "pl": 2, "pb": 0, "pr": 3, "group": 2}
    assert kernels.conv_params((3, 5, 5), (8, 5, 5), {"kernel_shape": [1, 1]})["kh"] == 1  # ONNX defaults


@pytest.mark.parametrize("in_shape,out_shape,wshape,attrs", [
    ((4, 8, 8), (4, 7, 7), (4, 4, 3, 3), {}),  # wrong output size
    ((4, 8, 8), (4, 6, 6), (4, 2, 3, 3), {}),  # weight does not fit cin
    ((6, 8, 8), (4, 6, 6), (4, 2, 3, 3), {"group": 3}),  # group does not divide cout
])
def test_conv_params_refuse_shapes_that_do_not_fit(in_shape, out_shape, wshape, attrs):
    with pytest.raises(EdgeqError):
        kernels.conv_params(in_shape, out_shape, attrs, wshape)


def test_packed_conv_weights_put_a_block_of_output_channels_side_by_side():
    p = kernels.conv_params((4, 5, 5), (6, 3, 3), {"group": 2}, (6, 2, 3, 3))
    w = np.arange(6 * 2 * 3 * 3).astype(np.float16).reshape(6, 2, 3, 3)
    packed = kernels.pack_conv(w, p, lanes=1).reshape(2, 1, 18, 4)  # 2 groups, 1 block of 4 (3 + 1 zero)
    assert np.array_equal(packed[1, 0, :, :3], w[3:6].reshape(3, 18).T)
    assert not packed[:, :, :, 3].any()
    assert kernels.dense_blocks(10, 1) == [8, 2] and kernels.dense_blocks(37, 2) == [8] * 4 + [4, 1]


def test_two_lane_packing_stores_k_in_pairs_and_pads_an_odd_k_with_zeros():
    """lanes=2: (w[k], w[k+1]) of one output are adjacent (one aligned 32-bit v2f16 load in C), K odd gets a +0."""
    p = kernels.conv_params((3, 5, 5), (3, 3, 3), {}, (3, 3, 3, 3))  # K = 27, CB = 2: 2 blocks, the last 1 + 1 zero
    w = (np.arange(3 * 27) + 1).astype(np.float16).reshape(3, 3, 3, 3)
    packed = kernels.pack_conv(w, p, lanes=2)
    assert packed.size == 2 * 28 * 2 and kernels.packed_k(27, 2) == 28 and kernels.packed_k(27, 1) == 27
    blocks = packed.reshape(2, 14, 2, 2)  # [co_block][k/2][CB][2]
    for co in range(4):
        want = np.zeros(28, np.float16)
        if co < 3:
            want[:27] = w[co].reshape(-1)
        assert np.array_equal(blocks[co // 2, :, co % 2, :].reshape(-1), want)
        assert not np.signbit(blocks[co // 2, -1, co % 2, 1])  # the pad is +0.0
    wd = (np.arange(5 * 3) + 1).astype(np.float16).reshape(5, 3)  # K = 5, N = 3: blocks of 2 and 1 outputs
    dense = kernels.pack_dense(wd, lanes=2)
    wpad = np.vstack([wd, np.zeros((1, 3), np.float16)])
    assert np.array_equal(dense[:12].reshape(3, 2, 2), wpad[:, :2].reshape(3, 2, 2).transpose(0, 2, 1))
    assert np.array_equal(dense[12:], wpad[:, 2])
    assert np.array_equal(kernels.pack_dense(wd, lanes=1), np.concatenate([wd[:, :2].reshape(-1), wd[:, 2]]))
