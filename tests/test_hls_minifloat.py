"""hls_templates/edgeq_minifloat.h, compiled with g++, against external oracles.

* decoding every code of the OCP formats (E4M3, E5M2, E3M2, E2M3, E2M1) against ml_dtypes' values;
* every product of two formats (and of int8 with a minifloat) against numpy's exact float64 products;
* the ordinal <-> bits mapping the thresholds use against edgeq's MiniFloat.ordinal;
* the declared float32 rescale against numpy's IEEE float32 arithmetic (``emulate.mac_rescale``).
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources

import ml_dtypes
import numpy as np
import pytest

from edgeq.emulate import mac_rescale
from edgeq.formats import MiniFloat

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")

# (name in ml_dtypes, E, M, edgeq format)
OCP = [
    ("float8_e4m3fn", 4, 3, MiniFloat(4, 3, has_nan=True)),
    ("float8_e5m2", 5, 2, MiniFloat(5, 2, has_inf=True, has_nan=True)),
    ("float6_e3m2fn", 3, 2, MiniFloat(3, 2)),
    ("float6_e2m3fn", 2, 3, MiniFloat(2, 3)),
    ("float4_e2m1fn", 2, 1, MiniFloat(2, 1)),
]
PAIRS = [(4, 3, 2, 1), (3, 2, 2, 3), (5, 2, 2, 1), (0, 0, 2, 1), (4, 3, 0, 0)]  # (XE, XM, WE, WM); E = 0: int8

PROGRAM = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include "edgeq_minifloat.h"

template <int E, int M> void decode_all() {
    const int n = 1 << (1 + E + M);
    for (int b = 0; b < n; b++) std::printf("%lld ", (long long)edgeq_mf_decode<int64_t, E, M>(b));
    std::printf("\n");
    for (int b = 0; b < n; b++) std::printf("%lld ", (long long)edgeq_mf_ordinal<1 + E + M>(b));
    std::printf("\n");
    for (int b = 0; b < n; b++)
        std::printf("%lld ", (long long)edgeq_mf_from_ordinal<1 + E + M>(edgeq_mf_ordinal<1 + E + M>(b)));
    std::printf("\n");
}

template <int XE, int XM, int WE, int WM> void products() {
    const int nx = XE ? 1 << (1 + XE + XM) : 256, nw = WE ? 1 << (1 + WE + WM) : 256;
    for (int x = 0; x < nx; x++)
        for (int w = 0; w < nw; w++) {
            const int xc = XE ? x : x - 128, wc = WE ? w : w - 128;  // integer operands: -128..127
            std::printf("%lld ", (long long)edgeq_mf_product<int64_t, XE, XM, WE, WM>(xc, wc));
        }
    std::printf("\n");
}

int main(int argc, char **argv) {
    decode_all<4, 3>(); decode_all<5, 2>(); decode_all<3, 2>(); decode_all<2, 3>(); decode_all<2, 1>();
    products<4, 3, 2, 1>(); products<3, 2, 2, 3>(); products<5, 2, 2, 1>(); products<0, 0, 2, 1>();
    products<4, 3, 0, 0>();
    // rescale: "C A m b" lines on stdin -> float32 bits of edgeq_rescale
    long long a; float m, b;
    unsigned mb, bb;
    while (std::scanf("%lld %x %x", &a, &mb, &bb) == 3) {
        std::memcpy(&m, &mb, 4); std::memcpy(&b, &bb, 4);
        int64_t x[1] = {a}; float mm[1] = {m}, b1[1] = {b}, y[1];
        edgeq_rescale<int64_t, 1, 1, true>(x, mm, b1, y);  // 64-bit accumulator: through double
        float y0[1];
        if (a > -(1LL << 53) && a < (1LL << 53)) edgeq_rescale<int64_t, 1, 1, false, 54>(x, mm, b1, y0);  // direct
        else edgeq_rescale<int64_t, 1, 1, false>(x, mm, b1, y0);
        unsigned yb, y0b;
        std::memcpy(&yb, y, 4); std::memcpy(&y0b, y0, 4);
        std::printf("%08x %08x\n", yb, y0b);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("mf")
    (d / "t.cpp").write_text(PROGRAM)
    inc = resources.files("edgeq.hls_templates")
    exe = d / "t"
    subprocess.run(["g++", "-O2", "-std=c++14", "-ffp-contract=off", f"-I{inc}", str(d / "t.cpp"), "-o", str(exe)],
                   check=True, capture_output=True)
    rng = np.random.default_rng(0)
    n = 4000
    acc = np.concatenate([rng.integers(-2**24, 2**24, n // 2), rng.integers(-2**45, 2**45, n // 2),
                          [2**24 + 1, -(2**24 + 3), 2**53 + 1, 2**60 + 2**36 + 1, 0]]).astype(np.int64)
    m = (rng.uniform(0.5, 1.0, acc.size) * 2.0 ** rng.integers(-40, 0, acc.size)).astype(np.float32)
    b = rng.normal(0, 4, acc.size).astype(np.float32)
    stdin = "".join(f"{a} {mm:08x} {bb:08x}\n" for a, mm, bb in zip(acc, m.view(np.uint32), b.view(np.uint32)))
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True).stdout.splitlines()
    lines = [np.array(line.split(), dtype=np.int64) for line in out[: 3 * len(OCP) + len(PAIRS)]]
    resc = np.array([[int(v, 16) for v in line.split()] for line in out[3 * len(OCP) + len(PAIRS):]],
                    dtype=np.uint64)
    return {"decode": lines[: 3 * len(OCP)], "products": lines[3 * len(OCP):], "rescale": (acc, m, b, resc)}


def _values(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, float64 values) of every finite code of an ml_dtypes type."""
    t = getattr(ml_dtypes, name)
    bits = np.dtype(t).itemsize * 8 if not name.startswith(("float4", "float6")) else int(name[5])
    codes = np.arange(1 << bits, dtype=np.uint8)
    v = codes.view(t).astype(np.float64) if bits == 8 else \
        np.array([np.array(c, dtype=np.uint8).view(t) for c in codes]).astype(np.float64)
    return codes.astype(np.int64), v


@pytest.mark.parametrize("i", range(len(OCP)), ids=[o[0] for o in OCP])
def test_decode_of_every_code_is_the_ml_dtypes_value_over_the_step(run, i):
    name, e, m, fmt = OCP[i]
    codes, v = _values(name)
    finite = np.isfinite(v)
    got = run["decode"][3 * i]
    assert got.size == codes.size
    np.testing.assert_array_equal(got[finite] * fmt.step, v[finite])  # step: a power of two, exact
    assert finite.sum() >= codes.size - 8


@pytest.mark.parametrize("i", range(len(OCP)), ids=[o[0] for o in OCP])
def test_ordinals_are_monotone_and_invert_to_the_bits(run, i):
    name, e, m, fmt = OCP[i]
    codes, v = _values(name)
    ordinal, back = run["decode"][3 * i + 1], run["decode"][3 * i + 2]
    np.testing.assert_array_equal(ordinal, fmt.ordinal(codes))
    finite = np.isfinite(v)
    order = np.argsort(ordinal[finite], kind="stable")
    assert np.all(np.diff(v[finite][order]) >= 0)  # increasing ordinal = non-decreasing value
    negzero = codes == 1 << (1 + e + m - 1)
    np.testing.assert_array_equal(back[~negzero], codes[~negzero])  # -0 maps to +0, nothing else moves
    assert back[negzero][0] == 0


def _operand_values(e: int, m: int) -> tuple[np.ndarray, float]:
    """(values over the smallest step, step) of every code of ExMy, or of int8 (-128..127) when e == 0."""
    if e == 0:
        return np.arange(-128, 128, dtype=np.float64), 1.0
    fmt = MiniFloat(e, m)
    v = fmt.from_bits(np.arange(1 << (1 + e + m)))
    return v / fmt.step, fmt.step


@pytest.mark.parametrize("k", range(len(PAIRS)), ids=[f"e{a}m{b}xe{c}m{d}" for a, b, c, d in PAIRS])
def test_every_product_equals_numpys_exact_product(run, k):
    xe, xm, we, wm = PAIRS[k]
    vx, _ = _operand_values(xe, xm)
    vw, _ = _operand_values(we, wm)
    want = np.outer(vx, vw).ravel()  # integers below 2^53: exact in float64
    got = run["products"][k]
    ok = np.isfinite(want)  # (MiniFloat(5, 2) has no inf here: all codes finite)
    np.testing.assert_array_equal(got[ok].astype(np.float64), want[ok])


def test_rescale_is_the_emulators_float32_contract(run):
    acc, m, b, got = run["rescale"]
    want = mac_rescale(acc, m, b).astype(np.float32).view(np.uint32)
    want0 = mac_rescale(acc, m, None).astype(np.float32).view(np.uint32)
    np.testing.assert_array_equal(got[:, 0], want)
    np.testing.assert_array_equal(got[:, 1], want0)
    # and the contract is not a single exact rounding of A*m: beyond 2^24, f32(A) rounds first
    exact = (acc.astype(np.float64) * m.astype(np.float64)).astype(np.float32).view(np.uint32)
    assert np.any(want0 != exact)
