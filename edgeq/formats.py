"""Number formats: the one source of numeric truth in edgeq.

Every rounding and overflow rule lives in this module, once. The emulator, the ingest and every
code generator ask a format object what a value becomes; nothing else re-implements a rule.

Formats are small immutable values:

* :class:`FixedPoint` -- Xilinx ``ap_fixed``/``ap_ufixed`` semantics (all AP_* quantization and
  overflow modes).
* :class:`Int` -- QONNX ``Quant``: an integer grid with scale and zero point.
* :class:`MiniFloat` -- QONNX ``FloatQuant`` (ExMy with bias, subnormals, inf/nan policy, saturation).
* :class:`Float16` -- IEEE binary16, round to nearest even (a MiniFloat).
* :class:`Binary` -- bipolar +-1 (QONNX ``BipolarQuant``).

``quantize(x)`` always returns float64 values that lie exactly on the format's grid.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------
# Rounding: the single implementation of every rounding rule.
# --------------------------------------------------------------------------------------------

#: Rounding modes, named as in ap_fixed (without the ``AP_`` prefix), plus the two directed modes
#: QONNX also has (CEIL = toward +inf, UP = away from zero).
ROUNDING_MODES = ("TRN", "TRN_ZERO", "RND", "RND_ZERO", "RND_MIN_INF", "RND_INF", "RND_CONV", "CEIL", "UP")
#: The rounding modes ap_fixed has (``AP_`` + name); CEIL and UP have no ap_fixed mode.
AP_ROUNDING_MODES = ROUNDING_MODES[:7]

#: QONNX ``rounding_mode`` strings (Quant, Trunc, FloatQuant) -> edgeq rounding mode.
QONNX_ROUNDING = {
    "ROUND": "RND_CONV",  # numpy round: half to even
    "HALF_EVEN": "RND_CONV",
    "CEIL": "CEIL",
    "FLOOR": "TRN",
    "UP": "UP",  # away from zero
    "DOWN": "TRN_ZERO",  # toward zero (np.fix)
    "HALF_UP": "RND_INF",  # sign(x) * floor(|x| + 0.5): half away from zero
    "HALF_DOWN": "RND_ZERO",  # sign(x) * ceil(|x| - 0.5): half toward zero
}

#: Overflow modes, named as in ap_fixed.
OVERFLOW_MODES = ("WRAP", "SAT", "SAT_ZERO", "SAT_SYM")


def rounding_mode(name: str) -> str:
    """Normalise a rounding-mode name (ap_fixed style, with or without ``AP_``, or QONNX style)."""
    key = str(name).upper()
    if key.startswith("AP_"):
        key = key[3:]
    if key in ROUNDING_MODES:
        return key
    if key in QONNX_ROUNDING:
        return QONNX_ROUNDING[key]
    raise ValueError(
        f"unknown rounding mode {name!r}; supported: {', '.join(ROUNDING_MODES)} "
        f"or QONNX {', '.join(QONNX_ROUNDING)}"
    )


def _overflow_mode(name: str) -> str:
    key = str(name).upper()
    if key.startswith("AP_"):
        key = key[3:]
    if key not in OVERFLOW_MODES:
        raise ValueError(f"unknown overflow mode {name!r}; supported: {', '.join(OVERFLOW_MODES)}")
    return key


def _round_parts(fl, above, tie, inexact, negative, mode: str):
    """Finish rounding once the value is split into ``fl = floor(v)`` and its fraction class.

    ``above``/``tie``/``inexact`` say whether the fraction ``v - fl`` is > 1/2, == 1/2, != 0;
    ``negative`` whether ``v < 0``. Works for float64, int64 and object (Python int) arrays.
    """
    if mode == "TRN":
        return fl
    if mode == "CEIL":
        inc = inexact
    elif mode == "TRN_ZERO":
        inc = inexact & negative
    elif mode == "UP":
        inc = inexact & ~negative
    elif mode == "RND":
        inc = above | tie
    elif mode == "RND_MIN_INF":
        inc = above
    elif mode == "RND_ZERO":
        inc = above | (tie & negative)
    elif mode == "RND_INF":
        inc = above | (tie & ~negative)
    elif mode == "RND_CONV":
        inc = above | (tie & (fl % 2 == 1))
    else:  # pragma: no cover - guarded by rounding_mode()
        raise ValueError(mode)
    return np.where(inc, fl + 1, fl)


#: Modes whose rule is exactly an IEEE round-to-integral operation (verified against the oracles).
_IEEE_ROUNDING = {"RND_CONV": np.rint, "TRN": np.floor, "CEIL": np.ceil, "TRN_ZERO": np.trunc}


def round_float(v: np.ndarray, mode: str, out: np.ndarray | None = None) -> np.ndarray:
    """Round float values to integers (as floats of the same dtype) with ``mode``. Exact.

    ``out`` may be ``v`` itself for the IEEE-primitive modes (in place); otherwise it is ignored.
    """
    v = np.asarray(v)
    if mode in _IEEE_ROUNDING:  # the same rules, as IEEE-exact numpy primitives (faster)
        return _IEEE_ROUNDING[mode](v, out=out) if out is not None and out.shape == v.shape else \
            _IEEE_ROUNDING[mode](v)
    fl = np.floor(v)
    inexact = v != fl
    # Compare v with the midpoint rather than forming v - fl: for v in (-1/2, 0) the fraction 1 - |v|
    # may not be representable (v = -(1/2 - 2**-54) gives v - fl == 0.5, a false tie), while
    # fl + 1/2 is exact whenever v is not an integer.
    half = fl + 0.5
    above, tie = inexact & (v > half), inexact & (v == half)
    return _round_parts(fl, above, tie, inexact, v < 0, mode).astype(v.dtype, copy=False)


def round_shift(m: np.ndarray, shift: int, mode: str) -> np.ndarray:
    """Exactly round the integers ``m / 2**shift`` to integers with ``mode``.

    ``m`` is an int64 or object (Python int) array. ``shift <= 0`` is an exact left shift.
    """
    m = np.asarray(m)
    if shift <= 0:
        return m << (-shift) if shift else m.copy()
    if m.dtype != object and shift > 62:
        # |m| < 2**63: beyond 62 bits every value rounds like m / 2**62 does (no ties possible).
        m = m.astype(object)
    fl = m >> shift
    r = m - (fl << shift)
    half = 1 << (shift - 1)
    return _round_parts(fl, r > half, r == half, r != 0, m < 0, mode)


def overflow(q: np.ndarray, width: int, signed: bool, mode: str, lo: int | None = None, hi: int | None = None):
    """Apply an ap_fixed overflow mode to integer-valued ``q`` (float64, int64 or object).

    ``lo``/``hi`` default to the two's-complement range of ``width`` bits.
    """
    if lo is None:
        lo = -(1 << (width - 1)) if signed else 0
    if hi is None:
        hi = (1 << (width - 1)) - 1 if signed else (1 << width) - 1
    over = q > hi
    under = q < lo
    if mode == "WRAP":
        period = 1 << width
        if isinstance(q, np.ndarray) and q.dtype.kind == "f":
            period = float(period)
        r = q % period  # exact for integer-valued floats too (fmod is exact)
        return np.where(r > hi, r - period, r) if signed else r
    if mode == "SAT":
        return np.where(over, hi, np.where(under, lo, q))
    if mode == "SAT_ZERO":
        return np.where(over | under, 0, q)
    if mode == "SAT_SYM":
        if not signed:
            return np.where(over, hi, np.where(under, lo, q))
        # ap_fixed (overflow_adjust) writes the most negative code with its LSB set, on underflow
        # and for the most negative code itself: -max for width > 1, still -1 for width 1 (so a
        # 1-bit signed AP_SAT_SYM behaves as AP_SAT).
        return np.where(over, hi, np.where(q <= lo, lo | 1, q))
    raise ValueError(mode)  # pragma: no cover


def csd_digits(codes: np.ndarray) -> np.ndarray:
    """The canonical signed digit (non-adjacent form) of every integer code: an int8 array ``codes.shape + (D,)``
    with digit i (weight 2^i) in {-1, 0, +1}, D the longest form. The CSD form has the fewest non-zero digits of
    any signed-digit form, so ``np.count_nonzero(csd_digits(c), axis=-1)`` is how many shifted adds a
    multiplication by c takes (the multiplier-free layers of :mod:`edgeq.qfx` and the FPGA backend)."""
    n = np.asarray(codes, dtype=np.int64).copy()
    digits = []
    while np.any(n != 0):
        odd = (n & 1) != 0
        d = np.where(odd, 2 - (n & 3), 0)  # +1 when n = 1 (mod 4), -1 when n = 3 (mod 4)
        digits.append(d.astype(np.int8))
        n = (n - d) >> 1
    if not digits:
        return np.zeros(np.shape(codes) + (1,), dtype=np.int8)
    return np.stack(digits, axis=-1)


def csd_terms(code: int) -> list[tuple[int, int]]:
    """The CSD form of one integer as (sign, shift) terms, lowest shift first: 7 -> [(-1, 0), (1, 3)]."""
    d = csd_digits(np.array(int(code)))
    return [(int(v), i) for i, v in enumerate(d) if v]


def _int_dtype(width: int):
    """Smallest numpy dtype holding integer codes (and their products' intermediates) exactly."""
    return np.int64 if width <= 62 else object


# --------------------------------------------------------------------------------------------
# The formats
# --------------------------------------------------------------------------------------------


class NumFormat:
    """Base class of all number formats (immutable values)."""

    #: number of bits of one stored value
    bits: int

    def quantize(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:  # pragma: no cover - abstract
        """Values of ``x`` on this format's grid, returned as ``dtype`` (float64 unless asked)."""
        raise NotImplementedError

    def to_bits(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def from_bits(self, b: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def ctype(self, backend: str = "hls") -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (used by ``edgeq inspect --json`` and reports)."""
        d: dict[str, Any] = {"kind": type(self).__name__, "str": str(self)}
        for k, v in self.__dict__.items():
            if isinstance(v, tuple):
                v = list(v)
            d[k] = v
        return d


def _check_finite_or_raise(x: np.ndarray, fmt: NumFormat) -> None:
    if np.isnan(x).any():
        raise ValueError(f"NaN cannot be represented in {fmt}")


@dataclass(frozen=True)
class FixedPoint(NumFormat):
    """Two's-complement (or unsigned) fixed point with exact ``ap_fixed<W, I, Q, O>`` semantics.

    A value is ``code * 2**-(width - int_bits)`` with ``code`` a ``width``-bit integer. ``int_bits``
    may be negative or larger than ``width``. Rounding is applied first, then overflow, as in
    ap_fixed.
    """

    width: int
    int_bits: int
    signed: bool = True
    rounding: str = "TRN"
    overflow: str = "WRAP"

    def __post_init__(self):
        if int(self.width) < 1:
            raise ValueError(f"FixedPoint width must be >= 1, got {self.width}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "int_bits", int(self.int_bits))
        object.__setattr__(self, "signed", bool(self.signed))
        object.__setattr__(self, "rounding", rounding_mode(self.rounding))
        object.__setattr__(self, "overflow", _overflow_mode(self.overflow))

    # -- grid -----------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self.width

    @property
    def frac_bits(self) -> int:
        return self.width - self.int_bits

    @property
    def code_min(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def code_max(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def eps(self) -> float:
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def min(self) -> float:
        return math.ldexp(self.code_min, -self.frac_bits)

    @property
    def max(self) -> float:
        return math.ldexp(self.code_max, -self.frac_bits)

    # -- quantization -----------------------------------------------------------------------
    def quantize_codes(self, x: np.ndarray) -> np.ndarray:
        """Integer codes of ``x`` (float array) after this format's rounding and overflow.

        NaN raises ValueError; +-inf saturate under the SAT modes and raise under WRAP.
        """
        x = np.asarray(x, dtype=np.float64)
        _check_finite_or_raise(x, self)
        inf = np.isinf(x)
        if inf.any() and self.overflow == "WRAP":
            raise ValueError(f"infinity cannot be wrapped into {self}")
        ib = self.int_bits
        if self.overflow == "WRAP":
            # Reduce modulo 2**int_bits first (exact, keeps the sign and the rounding outcome),
            # so that the scaled value below stays finite for any input.
            x = np.fmod(x, math.ldexp(1.0, ib))
        else:
            # Beyond +-2**(int_bits+1) everything overflows the same way; clip keeps scaling finite.
            lim = math.ldexp(1.0, ib + 1)
            x = np.clip(x, -lim, lim)
        s = np.ldexp(x, self.frac_bits)
        # A negative frac_bits can scale a tiny nonzero x to +-0; any |s| < 1/2 of the same sign
        # rounds like the true value in every mode (floor of -tiny is -1, ceil of +tiny is 1).
        s = np.where((s == 0) & (x != 0), np.copysign(0.25, x), s)
        q = round_float(s, self.rounding)
        q = overflow(q, self.width, self.signed, self.overflow)
        return q.astype(_int_dtype(self.width)) if self.width <= 62 else np.array(
            [int(v) for v in q.ravel()], dtype=object
        ).reshape(q.shape)

    def quantize(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        """Values of ``x`` on this format's grid, exactly as ``ap_fixed`` assigns them."""
        return self.decode(self.quantize_codes(x)).astype(dtype, copy=False)

    def cast_codes(self, m: np.ndarray, frac_bits: int) -> np.ndarray:
        """Exact cast of fixed-point values ``m * 2**-frac_bits`` (integer ``m``) into this format.

        This is the HLS cast from an accumulator into a narrower ``ap_fixed``: rounding on the
        dropped bits, then overflow. Returns integer codes.
        """
        q = round_shift(np.asarray(m), frac_bits - self.frac_bits, self.rounding)
        return overflow(q, self.width, self.signed, self.overflow)

    def codes_of(self, x: np.ndarray) -> np.ndarray:
        """Codes of values already on this grid (exact: a power-of-two scale)."""
        return self.quantize_codes(x)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Float64 values of integer codes (exact for widths up to 53 bits)."""
        return np.ldexp(np.asarray(codes).astype(np.float64), -self.frac_bits)

    # -- bits ---------------------------------------------------------------------------------
    def to_bits(self, x: np.ndarray) -> np.ndarray:
        """Two's-complement bit patterns (uint64) of the values ``x`` after quantization."""
        codes = np.asarray(self.quantize_codes(x)).astype(object)
        mask = (1 << self.width) - 1
        return np.array([int(c) & mask for c in codes.ravel()], dtype=np.uint64).reshape(codes.shape)

    def bit_string(self, code: int) -> str:
        """The ``width``-bit two's-complement pattern of one integer code, e.g. '11111110'."""
        return format(int(code) & ((1 << self.width) - 1), f"0{self.width}b")

    def from_bits(self, b: np.ndarray) -> np.ndarray:
        """Values of ``width``-bit patterns (sign-extended when signed)."""
        b = np.asarray(b).astype(object)
        sign = 1 << (self.width - 1)

        def code(v):
            v = int(v) & ((1 << self.width) - 1)
            return v - (1 << self.width) if self.signed and v & sign else v

        codes = np.array([code(v) for v in b.ravel()], dtype=object).reshape(b.shape)
        return self.decode(codes)

    # -- rendering ------------------------------------------------------------------------------
    def ctype(self, backend: str = "hls") -> str:
        base = "ap_fixed" if self.signed else "ap_ufixed"
        if backend == "hls":
            if self.rounding not in AP_ROUNDING_MODES:
                raise ValueError(f"ap_fixed has no rounding mode {self.rounding} ({self})")
            return f"{base}<{self.width},{self.int_bits},AP_{self.rounding},AP_{self.overflow}>"
        if backend == "c":
            return _c_int_type(self.width, self.signed)
        raise ValueError(f"no {backend} type for {self}")

    def __str__(self) -> str:
        base = "fixed" if self.signed else "ufixed"
        return f"{base}<{self.width},{self.int_bits},{self.rounding},{self.overflow}>"


def _c_int_type(width: int, signed: bool) -> str:
    """The smallest C integer type holding ``width``-bit codes."""
    for n in (8, 16, 32, 64):
        if width <= n:
            return f"{'' if signed else 'u'}int{n}_t"
    raise ValueError(f"no C integer type holds {width} bits")


def _as_f32_tuple(v) -> tuple[float, ...]:
    return tuple(float(np.float32(a)) for a in np.atleast_1d(np.asarray(v, dtype=np.float32)).ravel())


def _param_array(values: tuple[float, ...], shape: tuple[int, ...], axis: int | None, ndim: int, dtype):
    """Broadcastable array of a per-tensor or per-channel parameter."""
    a = np.asarray(values, dtype=dtype)
    if a.size == 1:
        return a.reshape(())
    if shape:
        return a.reshape(shape)
    view = [1] * ndim
    view[axis if axis is not None else 1] = a.size
    return a.reshape(view)


@dataclass(frozen=True)
class Int(NumFormat):
    """QONNX ``Quant``: ``clip(round(x / scale + zero_point)) - zero_point) * scale``.

    ``scale``/``zero_point`` are float32 per tensor or per channel (``param_shape`` gives the
    broadcast shape QONNX used). Arithmetic follows QONNX's reference in the input's dtype
    (float32 for graph tensors), so results are bit-identical to ``execute_onnx``.
    A 1-bit signed Int is bipolar, as QONNX executes it.
    """

    width: int
    signed: bool = True
    narrow: bool = False
    scale: tuple[float, ...] = (1.0,)
    zero_point: tuple[float, ...] = (0.0,)
    rounding: str = "RND_CONV"
    param_shape: tuple[int, ...] = ()

    def __post_init__(self):
        if int(self.width) < 1:
            raise ValueError(f"Int width must be >= 1, got {self.width}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "signed", bool(self.signed))
        object.__setattr__(self, "narrow", bool(self.narrow))
        object.__setattr__(self, "scale", _as_f32_tuple(self.scale))
        object.__setattr__(self, "zero_point", _as_f32_tuple(self.zero_point))
        object.__setattr__(self, "rounding", rounding_mode(self.rounding))
        object.__setattr__(self, "param_shape", tuple(int(s) for s in self.param_shape))
        if any(s <= 0 or not math.isfinite(s) for s in self.scale):
            raise ValueError(f"Int scale must be positive and finite, got {self.scale}")

    @property
    def bits(self) -> int:
        return self.width

    @property
    def bipolar(self) -> bool:
        return self.width == 1 and self.signed

    @property
    def code_min(self) -> int:
        if self.bipolar:
            return -1
        if self.signed:
            return -(1 << (self.width - 1)) + (1 if self.narrow else 0)
        return 0

    @property
    def code_max(self) -> int:
        if self.bipolar:
            return 1
        if self.signed:
            return (1 << (self.width - 1)) - 1
        return (1 << self.width) - 1 - (1 if self.narrow else 0)

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1 or len(self.zero_point) > 1

    @property
    def has_zero_point(self) -> bool:
        return any(z != 0.0 for z in self.zero_point)

    def power_of_two_exponents(self) -> np.ndarray | None:
        """log2 of each scale if all scales are powers of two, else None."""
        exps = []
        for s in self.scale:
            m, e = math.frexp(s)
            if m != 0.5:
                return None
            exps.append(e - 1)
        return np.asarray(exps, dtype=np.int64)

    @property
    def eps(self) -> float:
        return float(min(self.scale))

    @property
    def min(self) -> float:
        return float(min((self.code_min - z) * s for s in self.scale for z in self.zero_point))

    @property
    def max(self) -> float:
        return float(max((self.code_max - z) * s for s in self.scale for z in self.zero_point))

    def scale_array(self, ndim: int, dtype=np.float32) -> np.ndarray:
        return _param_array(self.scale, self.param_shape, 1, ndim, dtype)

    def zero_point_array(self, ndim: int, dtype=np.float32) -> np.ndarray:
        return _param_array(self.zero_point, self.param_shape, 1, ndim, dtype)

    def quantize_codes(self, x: np.ndarray) -> np.ndarray:
        """Integer codes (as floats of x's dtype), computed exactly as QONNX's Quant does."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
        s = self.scale_array(x.ndim, x.dtype)
        z = self.zero_point_array(x.ndim, x.dtype)
        y = np.asarray(x / s)  # a fresh array (0-d for scalars), updated in place below
        if self.has_zero_point:  # adding a zero would only turn -0 into +0
            y += z
        if self.bipolar:
            return np.where(y >= 0, 1.0, -1.0).astype(x.dtype)
        # QONNX clamps before rounding; the bounds are integers, so this equals round-then-clamp.
        np.clip(y, self.code_min, self.code_max, out=y)
        return round_float(y, self.rounding, out=y)

    def dequantize(self, codes: np.ndarray, dtype=np.float32) -> np.ndarray:
        codes = np.asarray(codes, dtype=dtype)
        return (codes - self.zero_point_array(codes.ndim, dtype)) * self.scale_array(codes.ndim, dtype)

    def quantize(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        """QONNX Quant of ``x`` (computed in x's float dtype), returned as ``dtype`` values."""
        x = np.asarray(x)
        work = x.dtype if x.dtype.kind == "f" else np.float32
        codes = self.quantize_codes(x).astype(work, copy=False)
        if self.has_zero_point:
            return self.dequantize(codes, work).astype(dtype, copy=False)
        codes *= self.scale_array(codes.ndim, work)  # (q - 0) * s, as QONNX computes it
        return codes.astype(dtype, copy=False)

    def codes_of(self, x: np.ndarray) -> np.ndarray:
        """Integer codes (int64) of values already on this format's grid (e.g. ``f32(q * scale)``), to nearest."""
        x = np.asarray(x, dtype=np.float64)
        v = x / self.scale_array(x.ndim, np.float64) + self.zero_point_array(x.ndim, np.float64)
        return np.rint(v).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Values (float64) of integer codes, computed in float32 as :meth:`quantize` does."""
        return self.dequantize(np.asarray(codes), np.float32).astype(np.float64)

    def bit_string(self, code: int) -> str:
        return format(int(code) & ((1 << self.width) - 1), f"0{self.width}b")

    def to_bits(self, x: np.ndarray) -> np.ndarray:
        codes = self.quantize_codes(x).astype(np.int64)
        if self.bipolar:
            return (codes > 0).astype(np.uint64)
        return (codes & ((1 << self.width) - 1)).astype(np.uint64)

    def from_bits(self, b: np.ndarray) -> np.ndarray:
        b = np.asarray(b).astype(np.int64) & ((1 << self.width) - 1)
        if self.bipolar:
            codes = np.where(b > 0, 1, -1)
        elif self.signed:
            codes = np.where(b >= (1 << (self.width - 1)), b - (1 << self.width), b)
        else:
            codes = b
        return self.dequantize(codes).astype(np.float64)

    def as_fixed(self) -> FixedPoint | None:
        """The equivalent :class:`FixedPoint` when the scale is one power of two and there is no
        zero point (narrow signed ranges map to SAT_SYM), else None."""
        exps = self.power_of_two_exponents()
        if exps is None or len(exps) != 1 or self.has_zero_point or self.bipolar:
            return None
        if self.narrow and not self.signed:
            return None
        ovf = "SAT_SYM" if self.narrow else "SAT"
        return FixedPoint(self.width, self.width + int(exps[0]), self.signed, self.rounding, ovf)

    def ctype(self, backend: str = "hls") -> str:
        if backend == "hls":
            return f"ap_{'' if self.signed else 'u'}int<{self.width}>"
        if backend == "c":
            return _c_int_type(self.width, self.signed)
        raise ValueError(f"no {backend} type for {self}")

    def __str__(self) -> str:
        kind = "int" if self.signed else "uint"
        s = f"{kind}{self.width}"
        if self.narrow:
            s += "n"
        if len(self.scale) == 1:
            s += f"*{self.scale[0]:.9g}"
        else:
            s += f"*scale[{len(self.scale)}]"
        if self.has_zero_point:
            s += "+zp"
        if self.rounding != "RND_CONV":
            s += f",{self.rounding}"
        return s


@dataclass(frozen=True)
class MiniFloat(NumFormat):
    """QONNX ``FloatQuant`` minifloat ExMy (sign + exponent_bits + mantissa_bits).

    Quantization of ``v = x / scale``: the exponent of ``v`` selects the grid step
    ``2**(max(e, 1 - bias) - mantissa_bits)`` (subnormals) and ``v`` is rounded once on that grid.
    Then the result is checked against ``max``: saturating formats clip, otherwise the value
    becomes +-inf (``has_inf``) or NaN (``has_nan``). Without subnormals, magnitudes below the
    smallest normal round on the grid ``{0, min_normal}``.

    ``max`` is the largest finite value: the top exponent is reserved when ``has_inf`` (IEEE
    style); with only ``has_nan`` (OCP "fn" style) only the all-ones code is NaN. ``max_val``
    lowers it further, as FloatQuant's ``max_val`` input does.
    """

    exponent_bits: int
    mantissa_bits: int
    bias: int | None = None
    has_subnormal: bool = True
    has_inf: bool = False
    has_nan: bool = False
    saturating: bool = True
    rounding: str = "ROUND"
    max_val: float | None = None
    scale: tuple[float, ...] = (1.0,)
    param_shape: tuple[int, ...] = field(default=())

    def __post_init__(self):
        if int(self.exponent_bits) < 1:
            raise ValueError(f"MiniFloat needs exponent_bits >= 1, got {self.exponent_bits}")
        if int(self.mantissa_bits) < 0:
            raise ValueError(f"MiniFloat needs mantissa_bits >= 0, got {self.mantissa_bits}")
        object.__setattr__(self, "exponent_bits", int(self.exponent_bits))
        object.__setattr__(self, "mantissa_bits", int(self.mantissa_bits))
        bias = (1 << (int(self.exponent_bits) - 1)) - 1 if self.bias is None else self.bias
        if float(bias) != int(bias):
            raise ValueError(f"MiniFloat exponent bias must be an integer, got {bias}")
        object.__setattr__(self, "bias", int(bias))
        for k in ("has_subnormal", "has_inf", "has_nan", "saturating"):
            object.__setattr__(self, k, bool(getattr(self, k)))
        # Keep the user's QONNX-style name but validate it against the shared rule set.
        rounding_mode(self.rounding)
        object.__setattr__(self, "rounding", str(self.rounding).upper())
        object.__setattr__(self, "scale", _as_f32_tuple(self.scale))
        object.__setattr__(self, "param_shape", tuple(int(s) for s in self.param_shape))
        if self.max_val is not None:
            object.__setattr__(self, "max_val", float(self.max_val))
        if not self.saturating and not (self.has_inf or self.has_nan):
            raise ValueError("a non-saturating MiniFloat needs has_inf or has_nan to encode overflow")

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def min_normal_exponent(self) -> int:
        return 1 - self.bias

    @property
    def full_max(self) -> float:
        """Largest magnitude when every code is finite (QONNX's ``compute_max_val``)."""
        e_max = (1 << self.exponent_bits) - 1 - self.bias
        return math.ldexp(2.0 - math.ldexp(1.0, -self.mantissa_bits), e_max)

    @property
    def max(self) -> float:
        e_top = (1 << self.exponent_bits) - 1 - self.bias
        m = self.mantissa_bits
        # With one exponent bit, reserving the top exponent leaves only subnormals (exponent field 0): the largest
        # finite value is then the largest subnormal, not a "normal" of exponent e_top - 1 (which is no value).
        if self.has_inf:
            if e_top - 1 >= self.min_normal_exponent:
                top = math.ldexp(2.0 - math.ldexp(1.0, -m), e_top - 1)
            else:
                top = math.ldexp(1.0 - math.ldexp(1.0, -m), self.min_normal_exponent)
        elif self.has_nan:
            if m == 0:
                top = math.ldexp(1.0, e_top - 1) if e_top - 1 >= self.min_normal_exponent else 0.0
            else:
                top = math.ldexp(2.0 - math.ldexp(1.0, 1 - m), e_top)
        else:
            top = self.full_max
        return min(top, self.max_val) if self.max_val is not None else top

    @property
    def min(self) -> float:
        return -self.max

    @property
    def eps(self) -> float:
        """Smallest positive value (a subnormal when they exist)."""
        if self.has_subnormal:
            return math.ldexp(1.0, self.min_normal_exponent - self.mantissa_bits)
        return math.ldexp(1.0, self.min_normal_exponent)

    def scale_array(self, ndim: int, dtype=np.float32) -> np.ndarray:
        return _param_array(self.scale, self.param_shape, 1, ndim, dtype)

    def quantize_unscaled(self, v: np.ndarray) -> np.ndarray:
        """Round values ``v`` (already divided by the scale) onto the minifloat grid, in v's dtype."""
        v = np.asarray(v)
        if v.dtype.kind != "f":
            v = v.astype(np.float64)
        m = self.mantissa_bits
        _, e2 = np.frexp(v)  # v = f * 2**e2 with 0.5 <= |f| < 1: leading bit at e2 - 1
        lead = e2.astype(np.int64) - 1
        normal = np.abs(v) >= math.ldexp(1.0, self.min_normal_exponent)
        if self.has_subnormal:
            step = np.maximum(lead, self.min_normal_exponent) - m
        else:
            step = np.where(normal, lead - m, self.min_normal_exponent)
        finite = np.isfinite(v)
        step = np.where(finite, step, 0)
        q = np.ldexp(round_float(np.ldexp(np.where(finite, v, 0), -step), rounding_mode(self.rounding)), step)
        q = np.where(finite, np.copysign(q, v), v).astype(v.dtype)  # keeps -0 like IEEE rounding
        mx = self.max
        with np.errstate(invalid="ignore"):
            over = q > mx
            under = q < -mx
        if self.saturating:
            q = np.where(over, mx, np.where(under, -mx, q))
        elif self.has_inf:
            q = np.where(over, np.inf, np.where(under, -np.inf, q))
        else:
            q = np.where(over | under | np.isinf(v), np.nan, q)
        return q.astype(v.dtype)

    def quantize(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        """FloatQuant semantics; arithmetic in x's dtype (float32 reproduces QONNX exactly)."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        if self.scale == (1.0,):
            return self.quantize_unscaled(x).astype(dtype, copy=False)
        s = self.scale_array(x.ndim, x.dtype)
        return (self.quantize_unscaled(x / s) * s).astype(dtype, copy=False)

    # -- bits ---------------------------------------------------------------------------------
    def to_bits(self, x: np.ndarray) -> np.ndarray:
        """Sign|exponent|mantissa bit patterns (uint64) of ``x`` after quantization (scale 1)."""
        x = np.asarray(x)
        q = np.asarray(self.quantize_unscaled(x if x.dtype.kind == "f" else x.astype(np.float64)), np.float64)
        e, m = self.exponent_bits, self.mantissa_bits
        negative = np.signbit(np.where(np.isnan(q), x, q))
        sign = negative.astype(np.uint64) << np.uint64(e + m)
        a = np.abs(q)
        _, e2 = np.frexp(a)
        lead = e2.astype(np.int64) - 1
        normal = a >= math.ldexp(1.0, self.min_normal_exponent)
        exp_field = np.where(normal, lead + self.bias, 0)
        step = np.where(normal, lead, self.min_normal_exponent) - m
        mant = np.ldexp(np.where(np.isfinite(a), a, 0.0), -step)
        mant = np.where(normal, mant - (1 << m), mant)
        top = (1 << e) - 1
        exp_field = np.where(np.isinf(a), top, exp_field)
        mant = np.where(np.isinf(a), 0, mant)
        all_ones = (1 << (e + m)) - 1
        # NaN: the all-ones code in "fn" formats; with infinities (IEEE style) the canonical quiet NaN
        # (top exponent, mantissa MSB set): 0x7E00 for float16, 0x7E for e5m2, as numpy and ml_dtypes.
        nan_body = (top << m) | (1 << (m - 1)) if self.has_inf and m > 0 else all_ones
        body = (exp_field.astype(np.int64) << m) | np.nan_to_num(mant).astype(np.int64)
        body = np.where(np.isnan(a), nan_body, body)
        return sign | body.astype(np.uint64)

    def from_bits(self, b: np.ndarray) -> np.ndarray:
        """Values (scale 1) of sign|exponent|mantissa bit patterns."""
        b = np.asarray(b).astype(np.int64)
        e, m = self.exponent_bits, self.mantissa_bits
        sign = np.where((b >> (e + m)) & 1, -1.0, 1.0)
        ef = (b >> m) & ((1 << e) - 1)
        mf = b & ((1 << m) - 1)
        top = (1 << e) - 1
        val = np.where(
            ef == 0,
            np.ldexp(mf.astype(np.float64), self.min_normal_exponent - m),
            np.ldexp((mf + (1 << m)).astype(np.float64), (ef - self.bias - m).astype(np.int64)),
        )
        if self.has_inf:
            val = np.where((ef == top) & (mf == 0), np.inf, val)
            val = np.where((ef == top) & (mf != 0), np.nan, val)
        elif self.has_nan:
            val = np.where((ef == top) & (mf == (1 << m) - 1), np.nan, val)
        return np.copysign(val, sign)  # also keeps the sign bit of NaN codes

    # -- the accelerator's codes: FPGA designs keep a minifloat tensor as its sign|exponent|mantissa bits ------
    @property
    def step(self) -> float:
        """The smallest subnormal step: every value is an integer multiple of ``step * scale``."""
        return math.ldexp(1.0, self.min_normal_exponent - self.mantissa_bits)

    @property
    def magnitude_max(self) -> int:
        """The largest magnitude bit pattern :meth:`quantize` produces: the largest finite value when
        saturating, else the overflow code right above it (+inf, or the "fn" NaN code)."""
        top = int(self.to_bits(np.float64(self.max)))
        return top if self.saturating else top + 1

    def _nearest(self) -> MiniFloat:
        """This format rounding to nearest: it recovers grid values from their float32 products with the scale."""
        return self if self.rounding == "ROUND" else replace(self, rounding="ROUND")

    def codes_of(self, x: np.ndarray) -> np.ndarray:
        """Bit patterns (int64) of values already on this format's grid (e.g. ``f32(q * scale)``): the scale is
        divided out in float64 and the nearest grid value taken, whatever the format's rounding mode."""
        x = np.asarray(x, dtype=np.float64)
        v = x if self.scale == (1.0,) else x / self.scale_array(x.ndim, np.float64)
        return self._nearest().to_bits(v).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Values (float64) of bit patterns, scaled in float32 exactly as :meth:`quantize` computes them."""
        v = self.from_bits(codes)
        if self.scale == (1.0,):
            return v
        return (v.astype(np.float32) * self.scale_array(v.ndim, np.float32)).astype(np.float64)

    def bit_string(self, code: int) -> str:
        return format(int(code) & ((1 << self.bits) - 1), f"0{self.bits}b")

    def ordinal(self, bits: np.ndarray) -> np.ndarray:
        """Bit patterns -> signed ordinals (+-magnitude bits), increasing with the value: the codes that
        thresholds count (+0 and -0 are both 0; overflow codes sit beyond the largest finite value)."""
        b = np.asarray(bits).astype(np.int64)
        mag = b & ((1 << (self.bits - 1)) - 1)
        return np.where(b >> (self.bits - 1) & 1, -mag, mag)

    def step_codes(self, x: np.ndarray) -> np.ndarray:
        """Exact integers ``value / (step * scale)`` (float64) of values already on this format's grid
        (e.g. ``f32(q * scale)``): the grid value is recovered by rounding, then scaled by a power of two."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        v = x.astype(np.float64) if self.scale == (1.0,) else x / self.scale_array(x.ndim, np.float64)
        q = self._nearest().quantize_unscaled(v.astype(np.float64))
        return np.ldexp(q, self.mantissa_bits - self.min_normal_exponent)

    def ctype(self, backend: str = "hls") -> str:
        if backend == "hls":
            return f"ap_uint<{self.bits}>"
        if backend == "c":
            return "uint8_t" if self.bits <= 8 else "uint16_t"
        raise ValueError(f"no {backend} type for {self}")

    def __str__(self) -> str:
        flags = []
        if not self.has_subnormal:
            flags.append("nosub")
        if self.has_inf:
            flags.append("inf")
        if self.has_nan:
            flags.append("nan")
        flags.append("sat" if self.saturating else "nosat")
        s = f"e{self.exponent_bits}m{self.mantissa_bits}"
        default_bias = (1 << (self.exponent_bits - 1)) - 1
        if self.bias != default_bias:
            s += f"b{self.bias}"
        if self.scale != (1.0,):
            s += f"*{self.scale[0]:.9g}" if len(self.scale) == 1 else f"*scale[{len(self.scale)}]"
        return f"{s}({','.join(flags)})"


class Float16(MiniFloat):
    """IEEE 754 binary16 (``_Float16``), round to nearest even, overflow to infinity."""

    def __init__(self):
        super().__init__(5, 10, 15, True, True, True, False, "ROUND")

    def __reduce__(self):
        return (Float16, ())

    def ctype(self, backend: str = "c") -> str:
        return {"c": "_Float16", "hls": "half"}[backend]

    @staticmethod
    def round(x: np.ndarray) -> np.ndarray:
        """Round float64/float32 values to binary16 (RNE), as a float16 array.

        The fast path of :meth:`quantize` for the MCU emulator: numpy's correctly rounded
        conversion, tested equal to the general MiniFloat rule (``tests/test_formats_float16.py``).
        """
        return np.asarray(x).astype(np.float16)

    def __str__(self) -> str:
        return "float16"


@dataclass(frozen=True)
class Binary(NumFormat):
    """Bipolar +-1 (times ``scale``), as QONNX ``BipolarQuant``: ``x >= 0 -> +1``, else ``-1``.

    Bit pattern: 1 encodes +1, 0 encodes -1 (the XNOR-popcount convention).
    """

    scale: tuple[float, ...] = (1.0,)
    param_shape: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "scale", _as_f32_tuple(self.scale))
        object.__setattr__(self, "param_shape", tuple(int(s) for s in self.param_shape))

    bits = 1

    @property
    def min(self) -> float:
        return -float(max(self.scale))

    @property
    def max(self) -> float:
        return float(max(self.scale))

    @property
    def eps(self) -> float:
        return float(min(self.scale))

    def scale_array(self, ndim: int, dtype=np.float32) -> np.ndarray:
        return _param_array(self.scale, self.param_shape, 1, ndim, dtype)

    def quantize(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        x = np.asarray(x)
        work = x.dtype if x.dtype.kind == "f" else np.float32
        signs = np.where(x >= 0, 1.0, -1.0).astype(work)
        return (signs * self.scale_array(x.ndim, work)).astype(dtype, copy=False)

    def to_bits(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x) >= 0).astype(np.uint64)

    def from_bits(self, b: np.ndarray) -> np.ndarray:
        b = np.asarray(b)
        return np.where(b & 1, 1.0, -1.0) * self.scale_array(b.ndim, np.float64)

    def ctype(self, backend: str = "hls") -> str:
        return {"hls": "ap_uint<1>", "c": "uint32_t"}[backend]

    def __str__(self) -> str:
        return "bipolar" if self.scale == (1.0,) else f"bipolar*{self.scale[0]:.9g}"


@dataclass(frozen=True)
class Float32(NumFormat):
    """IEEE binary32: the declared format of float glue (element-wise float32, as onnxruntime)."""

    bits = 32

    @property
    def min(self) -> float:
        return float(np.finfo(np.float32).min)

    @property
    def max(self) -> float:
        return float(np.finfo(np.float32).max)

    @property
    def eps(self) -> float:
        return float(np.finfo(np.float32).smallest_subnormal)

    def quantize(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        return np.asarray(x).astype(np.float32).astype(dtype, copy=False)

    def to_bits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)

    def from_bits(self, b: np.ndarray) -> np.ndarray:
        return np.asarray(b, dtype=np.uint32).view(np.float32).astype(np.float64)

    # an accelerator tensor of float32 values (a rescaled accumulator) is its own code
    def codes_of(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x).astype(np.float32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(codes).astype(np.float32).astype(np.float64)

    def bit_string(self, code: float) -> str:
        return format(int(np.asarray(code, dtype=np.float32).view(np.uint32)), "032b")

    def ctype(self, backend: str = "hls") -> str:
        return "float"

    def __str__(self) -> str:
        return "float32"


_FORMAT_CLASSES = {c.__name__: c for c in (FixedPoint, Int, MiniFloat, Float16, Binary, Float32)}


def format_from_dict(d: dict[str, Any]) -> NumFormat:
    """Inverse of :meth:`NumFormat.to_dict`."""
    cls = _FORMAT_CLASSES.get(d.get("kind", ""))
    if cls is None:
        raise ValueError(f"unknown number format kind {d.get('kind')!r}")
    if cls is Float16:
        return Float16()
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k not in ("kind", "str")}
    return cls(**fields)


def grid_values(fmt: NumFormat) -> np.ndarray | None:
    """Every value of a small quantizer grid (float32, as QONNX computes them), or None if unknown/large."""
    if isinstance(fmt, Int):
        if fmt.bipolar:
            codes = np.array([-1.0, 1.0], dtype=np.float32)
        elif fmt.width <= 16:
            codes = np.arange(fmt.code_min, fmt.code_max + 1, dtype=np.float32)
        else:
            return None
        scales, zeros = np.asarray(fmt.scale, np.float32), np.asarray(fmt.zero_point, np.float32)
        if len(scales) > 1 and len(zeros) > 1:  # per channel: channel i has scale i and zero point i
            pairs = zip(scales, zeros)
        else:
            pairs = ((sc, z) for sc in scales for z in zeros)
        return np.concatenate([(codes - z) * sc for sc, z in pairs])
    if isinstance(fmt, FixedPoint) and fmt.width <= 16:
        return fmt.decode(np.arange(fmt.code_min, fmt.code_max + 1)).astype(np.float32)
    if isinstance(fmt, Binary):
        return np.concatenate([np.array([-1.0, 1.0], dtype=np.float32) * np.float32(sc) for sc in fmt.scale])
    return None


_INT_RE = re.compile(r"^(u?)int(\d+)(n?)(?:\*([0-9.eE+-]+)|/([0-9.eE+-]+))?$")
_FIXED_RE = re.compile(r"^(?:ap_)?(u?)fixed<(-?\d+),(-?\d+)(?:,([a-z_]+))?(?:,([a-z_]+))?>$")
_BIPOLAR_RE = re.compile(r"^bipolar(?:\*([0-9.eE+-]+))?$")
_MINIFLOAT_RE = re.compile(r"^e(\d+)m(\d+)(?:b(-?\d+))?(?:\*([0-9.eE+-]+))?$")

#: the spellings :func:`parse_format` accepts, for messages
FORMAT_SYNTAX = ("uint8, int8, int4n (narrow), uint8*0.00392157 or uint8/255 (a scale), ap_fixed<16,6>, "
                 "ap_ufixed<8,0,RND,SAT>, bipolar, e4m3, e5m2b15")


def parse_format(text: str) -> NumFormat:
    """A number format from its user-facing spelling (see :data:`FORMAT_SYNTAX`): integers with an optional scale
    (QONNX ``Quant``: round half to even, saturate), ``ap_fixed<W,I[,Q[,O]]>`` / ``ap_ufixed`` (ap_fixed's defaults
    ``AP_TRN`` and ``AP_WRAP`` unless given), ``bipolar``, and saturating minifloats ``eXmY[bB]``.
    Raises ValueError naming what was not understood."""
    s = re.sub(r"\s+", "", str(text)).lower()
    m = _INT_RE.match(s)
    if m:
        unsigned, width, narrow, mul, div = m.groups()
        scale = float(mul) if mul else 1.0 / float(div) if div else 1.0
        return Int(int(width), signed=not unsigned, narrow=bool(narrow), scale=(scale,))
    m = _FIXED_RE.match(s)
    if m:
        unsigned, width, int_bits, q, o = m.groups()
        q, o = ((v or default).upper().removeprefix("AP_") for v, default in ((q, "TRN"), (o, "WRAP")))
        return FixedPoint(int(width), int(int_bits), not unsigned, q, o)
    m = _BIPOLAR_RE.match(s)
    if m:
        return Binary(scale=(float(m.group(1) or 1.0),))
    m = _MINIFLOAT_RE.match(s)
    if m:
        e, mant, bias, scale = m.groups()
        return MiniFloat(int(e), int(mant), bias=int(bias) if bias is not None else None,
                         scale=(float(scale or 1.0),))
    raise ValueError(f"unknown number format {text!r}; formats look like {FORMAT_SYNTAX}")


def from_finn_datatype(name: str) -> NumFormat | None:
    """The format of a QONNX/FINN ``DataType`` name (a graph input's ``quantization_annotation``): ``UINT8``,
    ``INT4``, ``BIPOLAR``, ``BINARY``, ``TERNARY``, ``FIXED<8,4>``; None for ``FLOAT32`` (no annotation).
    Raises ValueError for a name it does not know."""
    s = str(name).strip().upper()
    if s in ("FLOAT32", "FLOAT", ""):
        return None
    if s == "BIPOLAR":
        return Binary()
    if s == "BINARY":
        return Int(1, signed=False)
    if s == "TERNARY":
        return Int(2, signed=True, narrow=True)
    m = re.match(r"^(U?)INT(\d+)$", s)
    if m:
        return Int(int(m.group(2)), signed=not m.group(1))
    m = re.match(r"^(U?)FIXED<(\d+),(-?\d+)>$", s.replace(" ", ""))
    if m:
        return FixedPoint(int(m.group(2)), int(m.group(3)), not m.group(1), "RND_CONV", "SAT")
    raise ValueError(f"unknown QONNX datatype {name!r}")
