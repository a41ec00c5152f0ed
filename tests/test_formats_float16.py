"""Float16 against numpy's IEEE binary16 conversion (values and bit patterns).

numpy converts float64 -> float16 directly (correctly rounded, no pass through float32) and
float32 -> float16 likewise, so both input dtypes have a true oracle. Inputs span subnormals,
normals, overflow, exact ties (midpoints between neighbouring float16 values) and their nearest
neighbours in the input dtype, infinities, NaN and signed zeros.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeq.formats import Float16

ALL_CODES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
ALL_VALUES = ALL_CODES.view(np.float16).astype(np.float64)


def _inputs(dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    finite = np.unique(np.abs(ALL_VALUES[np.isfinite(ALL_VALUES)]))  # 0 .. 65504
    mids = (finite[:-1] + finite[1:]) / 2  # every tie, exact in float32 and float64
    over = [65504.0 + 8, 65504.0 + 16, 65520.0, 65536.0, 1e5, 1e10, 1e30]  # 65520: tie into inf
    under = [2.0**-25, 2.0**-26, 3 * 2.0**-26, 2.0**-24 * 1.5, 1e-30, 1e-45]  # around the smallest subnormal
    base = np.concatenate([finite, mids, over, under]).astype(dtype)
    parts = [base]
    for direction in (dtype(np.inf), dtype(0)):
        a = base
        for _ in range(2):
            a = np.nextafter(a, direction)
            parts.append(a)
    parts += [
        np.ldexp(rng.uniform(1, 2, 20000), rng.integers(-30, 18, 20000)).astype(dtype),  # log-uniform
        rng.uniform(0, 2.0**-14, 5000).astype(dtype),  # subnormal range
        (rng.standard_normal(5000) * 1000).astype(dtype),
    ]
    if dtype == np.float64:
        # doubles that a float32 would round onto a tie: direct conversion must not double-round
        parts.append((mids + np.ldexp(mids, -30)).astype(dtype))
        parts.append((mids - np.ldexp(mids, -30)).astype(dtype))
    pos = np.concatenate(parts)
    x = np.concatenate([pos, -pos, np.array([0.0, np.inf, np.nan], dtype), -np.array([0.0, np.inf, np.nan], dtype)])
    assert x.dtype == dtype
    return x


def _same(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))


def _report(x, ref, got, ok, what) -> str:
    bad = np.flatnonzero(~ok)
    rows = [f"  x={x[j]!r} ({float(x[j]).hex()}): numpy {ref[j]!r}, edgeq {got[j]!r}" for j in bad[:12]]
    return f"{what}: {len(bad)}/{ok.size} mismatches\n" + "\n".join(rows)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_float16_values_match_numpy(dtype):
    x = _inputs(dtype, 1 if dtype == np.float64 else 2)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).astype(np.float64)
    got = Float16().quantize(x)
    ok = _same(ref, got)
    assert ok.all(), _report(x, ref, got, ok, f"Float16.quantize({np.dtype(dtype).name})")
    assert x.size > 300_000


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_float16_bit_patterns_match_numpy(dtype):
    x = _inputs(dtype, 3 if dtype == np.float64 else 4)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).view(np.uint16).astype(np.uint64)
    got = Float16().to_bits(x)
    assert got.dtype == np.uint64
    ok = ref == got
    assert ok.all(), _report(x, ref, got, ok, f"Float16.to_bits({np.dtype(dtype).name})")


def test_float16_decodes_every_code_like_numpy():
    got = Float16().from_bits(ALL_CODES)
    ok = _same(ALL_VALUES, got)
    assert ok.all(), _report(ALL_CODES, ALL_VALUES, got, ok, "Float16.from_bits")


def test_float16_round_trips_every_code_like_numpy():
    # numpy re-encoding each decoded value is the oracle: the identity for every non-NaN code. numpy
    # keeps NaN payloads (0x7C01 stays 0x7C01); edgeq does not model payloads, so a NaN code must
    # come back as numpy's encoding of a plain NaN of the same sign (0x7E00 / 0xFE00).
    fmt = Float16()
    nan = np.isnan(ALL_VALUES)
    plain = np.where(nan, np.copysign(np.nan, np.where(ALL_CODES >= 0x8000, -1.0, 1.0)), ALL_VALUES)
    ref = plain.astype(np.float16).view(np.uint16).astype(np.uint64)
    np.testing.assert_array_equal(ref[~nan], ALL_CODES[~nan])
    assert set(ref[nan].tolist()) == {0x7E00, 0xFE00}
    got = fmt.to_bits(fmt.from_bits(ALL_CODES))
    ok = ref == got
    assert ok.all(), _report(ALL_CODES, ref, got, ok, "Float16.to_bits(from_bits)")
