"""The emulator's FP16 contract (MCU programs) against exact rational arithmetic, and its fast path.

The hardware oracles (QEMU, Spike, the host build) are in tests/test_mcu_build.py and test_mcu_kernels.py;
here every fp16 step of the emulator is checked against Python's exact fractions rounded by an independent
round-to-nearest-even, and the proven-exact BLAS path against the sequential contract it replaces.
"""

from __future__ import annotations

import importlib
import math
from fractions import Fraction

import numpy as np
import pytest

from edgeq.backends.mcu.lower import McuOptions, lower_fp16
from edgeq.ingest import load

emu = importlib.import_module("edgeq.emulate")  # the module (edgeq.emulate is also the function)


def _round_half(q: Fraction) -> float:
    """Exact binary16 round-to-nearest-even of a rational (subnormals, overflow to inf)."""
    if q == 0:
        return 0.0
    sign = -1.0 if q < 0 else 1.0
    a = abs(q)
    e = math.floor(math.log2(a.numerator) - math.log2(a.denominator))
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    step = Fraction(2) ** (max(e, -14) - 10)
    m = a / step
    f = math.floor(m)
    r = m - f
    f = f + 1 if r > Fraction(1, 2) or (r == Fraction(1, 2) and f % 2 == 1) else f
    v = f * step
    return sign * (math.inf if v > 65504 else float(v))


def _halves(rng, n):
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    v = bits.view(np.float16).astype(np.float64)
    v[~np.isfinite(v)] = 1.0
    v[: n // 3] = (rng.standard_normal(n // 3) * 8).astype(np.float16)  # where most arithmetic happens
    return v


@pytest.mark.parametrize("fused", [True, False])
def test_each_fp16_mac_step_is_the_exactly_rounded_result(fused):
    rng = np.random.default_rng(1)
    w, x, acc = (_halves(rng, 6000) for _ in range(3))
    got = emu._fp16_step(acc, w, x, fused)
    for i in range(len(w)):
        W, X, A = (Fraction(float(v)) for v in (w[i], x[i], acc[i]))
        want = _round_half(W * X + A) if fused else _round_half(Fraction(_round_half(W * X)) + A) \
            if math.isfinite(_round_half(W * X)) else math.copysign(math.inf, float(W * X))
        if want == 0:
            continue  # zero signs follow IEEE rules checked on hardware; fractions have no -0
        assert got[i] == want, (i, w[i], x[i], acc[i], got[i], want)


def test_the_proven_exact_path_equals_the_sequential_contract(exported, monkeypatch):
    """Where partial sums stay on an integer grid below 2048 units, BLAS gives the sequential fp16 result."""
    path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
    x = np.random.default_rng(0).uniform(-1, 1, (16, 1, 28, 28)).astype(np.float32)
    for lanes in (1, 2):
        prog = lower_fp16(load(path), McuOptions(lanes=lanes)).graph
        fast = emu.emulate(prog, x)
        monkeypatch.setattr(emu, "_exact_columns", lambda xv, w: np.zeros(w.shape[1], dtype=bool))
        slow = emu.emulate(prog, x)
        monkeypatch.undo()
        assert np.array_equal(fast.view(np.uint64), slow.view(np.uint64))


def test_the_fast_path_is_not_taken_when_sums_can_round():
    """8-bit x 8-bit codes over K=64 exceed 2048 units: the sequential (rounding) contract must run."""
    rng = np.random.default_rng(0)
    xv = rng.integers(-128, 128, (4, 64)).astype(np.float64)
    w = rng.integers(-128, 128, (64, 3)).astype(np.float64)
    assert not emu._exact_columns(xv, w).any()
    small = np.sign(w)  # +-1 weights and codes below 32: |sum| <= 64 * 32 = 2048
    assert emu._exact_columns(np.clip(xv, -31, 31), small).all()
