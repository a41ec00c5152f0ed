"""QFX: trainable fixed point with a learned binary point, and multiplier-free weights (Brevitas).

This implements the quantizers of "Trainable Fixed-Point Quantization for Deep Learning Acceleration
on FPGAs" (QFX, Dai et al. 2024) on top of Brevitas, so that a trained model exports to standard
QONNX and ``edgeq.load`` sees exact ``ap_fixed`` formats.

The number format
-----------------
Every quantized tensor is ``ap_fixed<W, I, Q, O>`` (``ap_ufixed`` when unsigned), exactly as
:class:`edgeq.formats.FixedPoint` defines it: a value is ``code * 2**-F`` with ``F = W - I``
fractional bits and ``code`` a W-bit two's-complement (or unsigned) integer. ``int_bits = I``
counts the sign bit, so a signed tensor covers ``[-2**(I-1), 2**(I-1) - 2**-F]`` and an unsigned
one ``[0, 2**I - 2**-F]``::

    q = overflow_O(round_Q(x * 2**F)) * 2**-F,      F = W - I

The width W is fixed; the binary point I is learned, per tensor or per output channel.

The learned binary point
------------------------
The trainable parameter is ``int_bits`` itself (a float, in bits). The forward pass uses
``I = clamp(round_ste(int_bits))``, so the scale ``2**(I - W)`` is always a power of two, while the
backward pass lets the gradient through the rounding (straight-through estimator). With the STE on
the value rounding as well, ``d q / d scale = round(x/scale) - x/scale`` inside the range and the
clipping bound outside it (the LSQ gradient), and ``d scale / d int_bits = ln 2 * scale``: clipping
pushes the binary point right (more integer bits), rounding noise pushes it left.

``int_bits`` of weights is initialised on the first forward pass from the tensor itself (the
smallest I whose range holds ``max |w|``, per channel when per-channel). Activations take
``init_int_bits``, or, when it is None, the same rule applied to the first *training* batch (before
that, an uninitialised activation quantizer uses ``I = 1`` signed / ``0`` unsigned, i.e. ``[-1, 1)``
or ``[0, 1)``).

The binary-point rule: a binary point may sit at most ``MAX_POINT_OFFSET`` (16) bit positions
beyond either end of the word, ``-16 <= int_bits <= W + 16``. Anything else (for instance
``init_int_bits=40`` with ``W = 8``: a grid of multiples of 2**32) is an error at construction;
during training the learned value is clamped into this range. The rule keeps every scale, and every
product of two scales (an accumulator's lsb), a normal float32 number, so Brevitas, QONNX and the
emulator all compute with exact powers of two.

Rounding and overflow
---------------------
``fixed_quant`` supports every mode of :mod:`edgeq.formats` (``TRN, TRN_ZERO, RND, RND_ZERO,
RND_MIN_INF, RND_INF, RND_CONV, CEIL, UP`` x ``WRAP, SAT, SAT_ZERO, SAT_SYM``) and equals
``FixedPoint(...).quantize`` bit for bit. The Brevitas quantizers accept the ap_fixed rounding
modes that QONNX ``Quant`` can encode:

==============  ==========================  =========================================
QFX / ap_fixed  QONNX ``rounding_mode``     Brevitas FloatToIntImplType (export trace)
==============  ==========================  =========================================
RND_CONV        ROUND (half to even)        ROUND
TRN             FLOOR                       FLOOR
TRN_ZERO        DOWN (toward zero)          ROUND_TO_ZERO
RND_INF         HALF_UP (half away from 0)  none (DPU placeholder)
RND_ZERO        HALF_DOWN (half toward 0)   none (DPU placeholder)
==============  ==========================  =========================================

``RND`` and ``RND_MIN_INF`` (ties toward +-inf) have no QONNX encoding, and ``CEIL``/``UP`` are not
ap_fixed modes: they raise EdgeqError. Training runs every mode through this module's rounding (one
torch implementation, tested bit for bit against FixedPoint). Brevitas' exporter can only trace its
own enums and writes their names (``ROUND_TO_ZERO``, ``DPU``), which QONNX cannot execute, so
:func:`export` rewrites each activation Quant node's ``rounding_mode`` to the QONNX name: export QFX
models with :func:`export`, not plain ``edgeq.export`` (which would fail loudly on these modes).

Overflow ``SAT`` exports as ``narrow=0`` and ``SAT_SYM`` as ``narrow=1`` (for unsigned tensors
SAT_SYM is SAT, as in ap_ufixed). ``WRAP`` and ``SAT_ZERO`` train with their true semantics (wrap:
straight-through gradient; sat-zero: no gradient for overflowed values) but have no QONNX encoding:
the export writes a saturating ``Quant`` (narrow=0) and records the true mode in the model metadata
(below), which ``edgeq.load`` applies; QONNX's own executor runs such a tensor as SAT.

Brevitas' exporter writes float weights and lets the weight Quant node (``ROUND``) re-quantize them,
which would undo a projection, another rounding mode or a wrap. :func:`export` therefore stores the
weights Brevitas actually uses (on the grid, where that Quant node is the identity).

Biases and layers
-----------------
:func:`bias_quant` puts biases on the accumulator's grid (lsb ``2**-(F_x + F_w)``, W bits,
saturating), so the bias adds into the accumulator exactly; its binary point follows the learned
points of the layer's input and weights. :func:`QFXBatchNorm2d` is BatchNorm as a fixed-point scale
and shift with learned binary points, :func:`QFXAdd` a residual add requantized to a learned point.

Multiplier-free weights
-----------------------
``weight_quant(..., multiplier_free="pow2")`` restricts every weight code to ``0`` or ``+-2**e``
(one non-zero digit: a multiplication is a shift); ``"khot"`` to codes with at most ``k`` non-zero
digits in canonical signed digit (CSD) form (a multiplication is at most ``k`` shifts and
``k - 1`` additions). Both sit on the learned binary point's W-bit grid. The forward pass
projects ``w / scale`` to the nearest allowed code (ties: the one with the smaller magnitude);
the backward pass is straight-through inside the code range and zero outside it. Width is at most
16 bits in these modes.

Metadata: ONNX ``metadata_props`` key ``"edgeq.qfx"``
----------------------------------------------------
:func:`export` writes one JSON object (readers must ignore unknown keys; ``version`` is bumped only
for incompatible changes)::

    {"version": 1,
     "tensors": {"<Quant output tensor name>": {"overflow": "WRAP", "rounding": "RND_CONV",
                                                "module": "inp.act_quant",
                                                "node": "/inp/act_quant/export_handler/Quant"}},
     "layers":  {"<weight initializer name, e.g. conv1.weight>": {"multiplier_free": "pow2" | "khot",
                                                                 "k": 1, "module": "conv1"}}}

``tensors`` lists every Quant node made by a QFX quantizer, with the ap_fixed rounding and
overflow it was trained with (for weights the stored values are already quantized). The names are
those of the raw export, before any qonnx cleanup renames tensors. ``layers`` lists weights
constrained to be multiplier free (``k`` is 1 for pow2).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeq import formats
from edgeq.errors import EdgeqError
from edgeq.formats import OVERFLOW_MODES, ROUNDING_MODES, rounding_mode

#: The binary point may lie at most this many bit positions beyond either end of the word.
MAX_POINT_OFFSET = 16

#: Widest weight/activation word: float32 (Brevitas, QONNX) holds every code exactly.
MAX_WIDTH = 24

#: Widest multiplier-free weight word (the allowed-code table is built by enumeration).
MAX_MULTIPLIER_FREE_WIDTH = 16

#: ap_fixed rounding mode -> QONNX Quant ``rounding_mode`` for the modes the Brevitas quantizers support.
QONNX_ROUNDING = {"RND_CONV": "ROUND", "TRN": "FLOOR", "TRN_ZERO": "DOWN", "RND_INF": "HALF_UP",
                  "RND_ZERO": "HALF_DOWN"}

#: ap_fixed rounding mode -> Brevitas FloatToIntImplType name, which Brevitas' exporter writes as the Quant
#: node's ``rounding_mode`` (and needs to trace it). :func:`annotate` rewrites it to the QONNX name; a plain
#: ``edgeq.export`` leaves ROUND_TO_ZERO / DPU, which QONNX and edgeq reject (loudly, not silently wrong).
BREVITAS_ROUNDING = {"RND_CONV": "ROUND", "TRN": "FLOOR", "TRN_ZERO": "ROUND_TO_ZERO", "RND_INF": "DPU",
                     "RND_ZERO": "DPU"}

METADATA_KEY = "edgeq.qfx"
METADATA_VERSION = 1

__all__ = [
    "MAX_POINT_OFFSET", "METADATA_KEY", "QONNX_ROUNDING", "QFXAdd", "QFXBatchNorm2d", "act_quant",
    "allowed_codes", "annotate", "bias_quant", "binary_points", "csd", "csd_digits", "export", "fixed_quant",
    "int_bits_range", "project_codes", "read_metadata", "round_ste", "weight_quant",
]


# ---------------------------------------------------------------------------------------------
# Checking user input
# ---------------------------------------------------------------------------------------------


def int_bits_range(width: int) -> tuple[int, int]:
    """The allowed binary points for ``width`` bits: ``(-16, width + 16)``, inclusive."""
    return -MAX_POINT_OFFSET, int(width) + MAX_POINT_OFFSET


def _check_width(where: str, width: Any, hi: int = MAX_WIDTH) -> int:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 2 <= int(width) <= hi:
        raise EdgeqError(f"{where}: width must be an integer from 2 to {hi}, got {width!r}")
    return int(width)


def _check_rounding(where: str, mode: Any, allowed=None) -> str:
    try:
        key = rounding_mode(mode)
    except ValueError:
        raise EdgeqError(f"{where}: unknown rounding mode {mode!r}; use one of {', '.join(ROUNDING_MODES)}") from None
    if allowed is not None and key not in allowed:
        raise EdgeqError(f"{where}: rounding mode {key} has no QONNX Quant encoding; use one of "
                         f"{', '.join(allowed)}")
    return key


def _check_overflow(where: str, mode: Any, allowed=OVERFLOW_MODES) -> str:
    key = str(mode).upper()
    key = key[3:] if key.startswith("AP_") else key
    if key not in OVERFLOW_MODES:
        raise EdgeqError(f"{where}: unknown overflow mode {mode!r}; use one of {', '.join(OVERFLOW_MODES)}")
    if key not in allowed:
        raise EdgeqError(f"{where}: overflow mode {key} is not supported here; use one of {', '.join(allowed)}")
    return key


def _check_int_bits(where: str, int_bits: Any, width: int) -> int:
    if isinstance(int_bits, bool) or not isinstance(int_bits, (int, np.integer)):
        raise EdgeqError(f"{where}: int_bits must be an integer, got {int_bits!r}")
    lo, hi = int_bits_range(width)
    if not lo <= int(int_bits) <= hi:
        raise EdgeqError(f"{where}: int_bits={int_bits} puts the binary point outside what width {width} allows "
                         f"({lo} <= int_bits <= {hi}: at most {MAX_POINT_OFFSET} bits beyond the word)")
    return int(int_bits)


# ---------------------------------------------------------------------------------------------
# The torch arithmetic: rounding and overflow with straight-through gradients
# ---------------------------------------------------------------------------------------------


def _round_values(v: torch.Tensor, mode: str) -> torch.Tensor:
    """Round ``v`` to integers with ``mode``: :func:`edgeq.formats.round_float`, the one implementation of the
    rounding rules, on the tensor's values (exact, float32 or float64). Zeros are +0."""
    r = formats.round_float(v.detach().cpu().numpy(), mode)
    return torch.from_numpy(np.ascontiguousarray(r)).to(device=v.device, dtype=v.dtype) + 0.0


class _RoundSte(torch.autograd.Function):
    """Exact rounding forward, identity backward."""

    @staticmethod
    def forward(ctx, v, mode):
        return _round_values(v, mode)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _WrapSte(torch.autograd.Function):
    """Two's-complement wrap of integer-valued ``q`` into ``[lo, lo + period)``, identity backward."""

    @staticmethod
    def forward(ctx, q, lo, period):
        # formats.overflow's WRAP (the one implementation) on the width whose range is [lo, lo + period)
        lo, period = int(lo), int(period)  # Brevitas passes 0-d tensors
        width = period.bit_length() - 1
        r = formats.overflow(q.detach().cpu().numpy(), width, lo < 0, "WRAP", lo, lo + period - 1)
        return torch.from_numpy(np.ascontiguousarray(r)).to(device=q.device, dtype=q.dtype) + 0.0

    @staticmethod
    def backward(ctx, g):
        return g, None, None


def round_ste(v: torch.Tensor, mode: str = "RND_CONV") -> torch.Tensor:
    """``v`` rounded to integers with an ap_fixed rounding ``mode``; the gradient passes straight through."""
    return _RoundSte.apply(v, _check_rounding("qfx.round_ste", mode))


def _overflow(q: torch.Tensor, lo, hi, mode: str) -> torch.Tensor:
    """Apply an overflow mode to integer-valued ``q`` with code range ``[lo, hi]`` (numbers or tensors)."""
    if mode in ("SAT", "SAT_SYM"):  # SAT_SYM callers pass the symmetric range
        return torch.clamp(q, lo, hi)
    if mode == "SAT_ZERO":
        return torch.where((q > hi) | (q < lo), torch.zeros_like(q), q)
    if mode == "WRAP":
        return _WrapSte.apply(q, lo, hi - lo + 1)
    raise ValueError(mode)  # pragma: no cover


def _code_range(width: int, signed: bool, overflow: str) -> tuple[int, int]:
    lo = -(1 << (width - 1)) if signed else 0
    hi = (1 << (width - 1)) - 1 if signed else (1 << width) - 1
    if overflow == "SAT_SYM" and signed:
        lo += 1  # ap_fixed AP_SAT_SYM: the most negative code is -max
    return lo, hi


def _learned_int_bits(int_bits: torch.Tensor, width: int) -> torch.Tensor:
    """round_ste(int_bits), clamped to the allowed binary points with a straight-through gradient."""
    lo, hi = int_bits_range(width)
    i = _RoundSte.apply(int_bits, "RND_CONV")
    return i + (torch.clamp(i, lo, hi) - i).detach()


def fixed_quant(x: torch.Tensor, width: int, int_bits: int | torch.Tensor, signed: bool = True,
                rounding: str = "RND_CONV", overflow: str = "SAT") -> torch.Tensor:
    """Quantize ``x`` to ``ap_fixed<width, int_bits, rounding, overflow>`` (``ap_ufixed`` if unsigned).

    ``q = overflow(round(x * 2**F)) * 2**-F`` with ``F = width - int_bits``, computed in ``x``'s dtype
    and equal to ``FixedPoint(width, int_bits, signed, rounding, overflow).quantize(x)`` bit for bit
    (zeros are +0) whenever the dtype holds the grid (width <= 24 for float32, <= 53 for float64).

    ``int_bits`` is an int (checked: ``-16 <= int_bits <= width + 16``) or a float tensor
    broadcastable to ``x`` (per channel), which is learned: the forward pass uses
    ``round(int_bits)`` clamped to that range, the backward pass gives it the straight-through
    gradient (see the module docstring). Gradients w.r.t. ``x`` are straight through the rounding
    and zero where SAT/SAT_SYM/SAT_ZERO overflow; WRAP passes them straight through.

    Unlike FixedPoint, NaN propagates instead of raising, and an infinity under WRAP gives NaN.
    """
    where = "qfx.fixed_quant"
    width = _check_width(where, width, 53)
    rounding = _check_rounding(where, rounding)
    overflow = _check_overflow(where, overflow)
    if isinstance(int_bits, torch.Tensor):
        i = _learned_int_bits(int_bits.to(x.dtype), width)
    else:
        i = torch.tensor(float(_check_int_bits(where, int_bits, width)), dtype=x.dtype, device=x.device)
    scale = 2.0 ** (i - width)
    # Like FixedPoint.quantize_codes: reduce or clip first so that x / scale stays finite.
    if overflow == "WRAP":
        xr = torch.fmod(x, (2.0 ** i).detach())  # exact; keeps the sign and the rounding outcome
    else:
        lim = (2.0 ** (i + 1)).detach()
        xr = torch.clamp(x, -lim, lim)
    v = xr / scale  # exact: a power of two
    # A tiny x can underflow to +-0 when scale > 1; any |v| < 1/2 of the same sign rounds the same.
    v = torch.where((v == 0) & (xr != 0), torch.copysign(torch.full_like(v, 0.25), xr), v)
    lo, hi = _code_range(width, signed, overflow)
    q = _overflow(_RoundSte.apply(v, rounding), lo, hi, overflow)
    return q * scale


# ---------------------------------------------------------------------------------------------
# Canonical signed digits and multiplier-free projection
# ---------------------------------------------------------------------------------------------


def _as_int_codes(codes: Any) -> np.ndarray:
    a = np.asarray(codes)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise EdgeqError("csd_digits: codes must be integers")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iub":
        raise EdgeqError(f"csd_digits: codes must be integers, got dtype {a.dtype}")
    return a.astype(np.int64)


def csd_digits(codes: Any) -> np.ndarray:
    """Number of non-zero digits of each integer code in canonical signed digit (CSD) form.

    CSD (the non-adjacent form, :func:`edgeq.formats.csd_digits`) is the signed-binary form (digits
    -1, 0, +1) with no two adjacent non-zero digits; it has the fewest non-zero digits of all
    signed-binary forms, so ``csd_digits(c)`` is the least number of shifted terms ``+-2**e`` that sum
    to ``c`` (a multiplication by ``c`` costs that many shifts and one addition fewer). Returns an
    int64 array of ``codes``' shape.
    """
    return np.count_nonzero(formats.csd_digits(_as_int_codes(codes)), axis=-1).astype(np.int64)


def csd(code: int) -> list[tuple[int, int]]:
    """The CSD form of one integer code as ``[(sign, shift), ...]`` by increasing shift.

    ``code == sum(sign << shift)``; e.g. ``csd(7) == [(-1, 0), (1, 3)]`` (7 = 8 - 1).
    """
    return formats.csd_terms(int(_as_int_codes(code).reshape(())))


def allowed_codes(width: int, k: int, narrow: bool = True) -> np.ndarray:
    """Sorted signed ``width``-bit codes with at most ``k`` non-zero CSD digits (``narrow``: no -2**(W-1))."""
    lo = -(1 << (width - 1)) + (1 if narrow else 0)
    codes = np.arange(lo, 1 << (width - 1), dtype=np.int64)
    return codes[csd_digits(codes) <= k]


def project_codes(v: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The nearest value of the sorted code ``table`` to each ``v`` (ties: the smaller magnitude). Exact.

    Distances are taken in float64, where ``v - code`` is exact for float32 ``v`` and 16-bit codes.
    """
    t = table.to(device=v.device, dtype=torch.float64)
    v64 = v.detach().to(torch.float64)
    idx = torch.clamp(torch.searchsorted(t, v64.contiguous()), 1, t.numel() - 1)
    below, above = t[idx - 1], t[idx]
    d_below, d_above = v64 - below, above - v64
    take_above = (d_above < d_below) | ((d_above == d_below) & (above.abs() < below.abs()))
    return torch.where(take_above, above, below).to(v.dtype) + 0.0


class _ProjectSte(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, table, lo, hi):
        ctx.save_for_backward((v >= lo) & (v <= hi))
        return project_codes(v, table)

    @staticmethod
    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g * inside.to(g.dtype), None, None, None


# ---------------------------------------------------------------------------------------------
# Brevitas building blocks (instantiated by Brevitas' dependency injection, by argument name)
# ---------------------------------------------------------------------------------------------


class QFXRound(nn.Module):
    """Brevitas ``float_to_int_impl``: exact ap_fixed rounding with a straight-through gradient."""

    def __init__(self, qfx_rounding: str):
        super().__init__()
        self.mode = qfx_rounding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RoundSte.apply(x, self.mode)


class QFXProject(nn.Module):
    """Brevitas ``float_to_int_impl`` of multiplier-free weights: nearest code with <= k CSD digits."""

    def __init__(self, bit_width: int, narrow_range: bool, qfx_k: int):
        super().__init__()
        self.register_buffer("table", torch.from_numpy(allowed_codes(bit_width, qfx_k, narrow_range)),
                             persistent=False)
        self.lo, self.hi = float(self.table[0]), float(self.table[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ProjectSte.apply(x, self.table, self.lo, self.hi)


class QFXOverflow(nn.Module):
    """Brevitas ``tensor_clamp_impl``: SAT (Brevitas passes the narrow range for SAT_SYM), WRAP, SAT_ZERO."""

    def __init__(self, qfx_overflow: str):
        super().__init__()
        self.mode = "SAT" if qfx_overflow == "SAT_SYM" else qfx_overflow

    def forward(self, x: torch.Tensor, min_val: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
        return _overflow(x, min_val, max_val, self.mode)


def _int_bits_for_max(m: torch.Tensor, signed: bool, fallback: float) -> torch.Tensor:
    """The smallest I whose range reaches ``m`` (2**(I-1) >= m signed, 2**I >= m unsigned); ``fallback`` for 0."""
    mant, exp = torch.frexp(m.to(torch.float64))
    ceil_log2 = exp.to(torch.float64) - (mant == 0.5).to(torch.float64)  # exact ceil(log2 m)
    i = ceil_log2 + (1.0 if signed else 0.0)
    return torch.where(m > 0, i, torch.full_like(i, fallback))


class QFXBinaryPoint(nn.Module):
    """Brevitas ``scaling_impl``: the learned binary point. Returns the scale ``2**(I - W)``.

    ``int_bits`` (a Parameter of the scaling shape) is the learned position; ``I`` is its
    round-STE value clamped to :func:`int_bits_range`. Brevitas' integer threshold argument is
    ignored: the scale is the fixed point's lsb directly.
    """

    def __init__(self, bit_width: int, signed: bool, scaling_shape: tuple[int, ...],
                 qfx_init_int_bits: Any = None, qfx_init_in_eval: bool = False):
        super().__init__()
        self.width = int(bit_width)
        self.signed = bool(signed)
        self.init_in_eval = bool(qfx_init_in_eval)
        self.fallback = 1.0 if self.signed else 0.0
        shape = tuple(scaling_shape)
        init = self.fallback if qfx_init_int_bits is None else qfx_init_int_bits
        value = torch.as_tensor(init, dtype=torch.float32)
        if value.numel() > 1:  # one initial point per channel
            value = value.reshape(shape)
        self.int_bits = nn.Parameter(torch.broadcast_to(value, shape).clone() if shape else value.reshape(()).clone())
        self.register_buffer("initialized", torch.tensor(qfx_init_int_bits is not None))
        self._ready = qfx_init_int_bits is not None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.initialized)

    @torch.no_grad()
    def _init_from(self, x: torch.Tensor) -> None:
        shape = tuple(self.int_bits.shape)
        a = x.detach().abs()
        if shape and len(shape) == a.dim():
            dims = [d for d in range(a.dim()) if shape[d] == 1]
            m = a.amax(dim=dims, keepdim=True) if dims else a
            m = m.reshape(shape)
        else:
            m = torch.broadcast_to(a.max(), shape)
        lo, hi = int_bits_range(self.width)
        i = torch.clamp(_int_bits_for_max(m, self.signed, self.fallback), lo, hi)
        self.int_bits.copy_(i.to(self.int_bits.dtype))
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, x: torch.Tensor, threshold: torch.Tensor | None = None) -> torch.Tensor:
        if not self._ready and x.dim() > 0 and (self.training or self.init_in_eval):
            self._init_from(x)
        i = _learned_int_bits(self.int_bits, self.width)
        return 2.0 ** (i - self.width)

    def extra_repr(self) -> str:
        return f"width={self.width}, signed={self.signed}"


# ---------------------------------------------------------------------------------------------
# Quantizer factories
# ---------------------------------------------------------------------------------------------


def _base_attrs(width: int, signed: bool, rounding: str, overflow: str, kind: str) -> dict[str, Any]:
    from brevitas.inject.enum import BitWidthImplType, FloatToIntImplType, QuantType, RestrictValueType, ScalingImplType

    narrow = overflow == "SAT_SYM" and signed  # unsigned SAT_SYM is SAT (ap_ufixed)
    return {
        "quant_type": QuantType.INT,
        "bit_width": width,
        "bit_width_impl_type": BitWidthImplType.CONST,
        "signed": signed,
        "narrow_range": narrow,
        "scaling_impl_type": ScalingImplType.PARAMETER,
        "restrict_scaling_type": RestrictValueType.POWER_OF_TWO,
        "scaling_impl": QFXBinaryPoint,
        "float_to_int_impl": QFXRound,
        "float_to_int_impl_type": FloatToIntImplType[BREVITAS_ROUNDING[rounding]],  # exported rounding_mode
        "tensor_clamp_impl": QFXOverflow,
        "update_state_dict_impl": None,
        "qfx_kind": kind,
        "qfx_rounding": rounding,
        "qfx_overflow": overflow,
        "qfx_multiplier_free": None,
        "qfx_k": 0,
    }


def weight_quant(width: int, *, per_channel: bool = False, rounding: str = "RND_CONV", overflow: str = "SAT_SYM",
                 multiplier_free: str | None = None, k: int = 2):
    """A Brevitas weight quantizer: signed ``ap_fixed<width, I>`` with a learned binary point I.

    Use as ``QuantConv2d(..., weight_quant=qfx.weight_quant(8))``. ``per_channel`` learns one I per
    output channel. ``multiplier_free="pow2"`` allows only codes 0 and +-2**e, ``"khot"`` codes with
    at most ``k`` non-zero CSD digits (both: width <= 16, overflow SAT or SAT_SYM; ``rounding`` is
    replaced by the nearest-allowed-code projection). I is initialised from ``max |w|`` on the first
    forward pass. Errors (EdgeqError): width outside 2..24, unknown or unencodable modes, k < 1.
    """
    from brevitas.core.zero_point import ZeroZeroPoint
    from brevitas.inject.enum import ScalingPerOutputType
    from brevitas.quant.solver.weight import WeightQuantSolver

    where = "qfx.weight_quant"
    width = _check_width(where, width)
    rounding = _check_rounding(where, rounding, QONNX_ROUNDING)
    overflow = _check_overflow(where, overflow)
    attrs = _base_attrs(width, True, rounding, overflow, "weight")
    if multiplier_free is not None:
        if multiplier_free not in ("pow2", "khot"):
            raise EdgeqError(f"{where}: unknown multiplier_free mode {multiplier_free!r}; use 'pow2', 'khot' or None")
        if multiplier_free == "khot" and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise EdgeqError(f"{where}: k must be an integer >= 1 for multiplier_free='khot', got {k!r}")
        if width > MAX_MULTIPLIER_FREE_WIDTH:
            raise EdgeqError(f"{where}: multiplier_free weights are at most {MAX_MULTIPLIER_FREE_WIDTH} bits wide, "
                             f"got width {width}")
        if overflow not in ("SAT", "SAT_SYM"):
            raise EdgeqError(f"{where}: multiplier_free weights saturate; overflow must be SAT or SAT_SYM, "
                             f"got {overflow}")
        attrs.update(float_to_int_impl=QFXProject, qfx_multiplier_free=multiplier_free,
                     qfx_k=1 if multiplier_free == "pow2" else int(k))
    attrs.update(
        zero_point_impl=ZeroZeroPoint,
        scaling_per_output_type=ScalingPerOutputType.CHANNEL if per_channel else ScalingPerOutputType.TENSOR,
        qfx_init_int_bits=None,
        qfx_init_in_eval=True,
    )
    name = f"QFXWeight{width}" + (f"_{multiplier_free}" if multiplier_free else "")
    return type(name, (WeightQuantSolver,), attrs)


def act_quant(width: int, *, signed: bool = True, rounding: str = "RND_CONV", overflow: str = "SAT",
              per_channel: bool = False, init_int_bits: int | list[int] | None = None):
    """A Brevitas activation quantizer: ``ap_fixed<width, I>`` (``ap_ufixed`` unless ``signed``), I learned.

    Use as ``act_quant=``, ``input_quant=`` or ``output_quant=``. ``init_int_bits`` sets the initial
    binary point (a list for per-channel); None initialises it from the first training batch.
    ``per_channel`` needs Brevitas' ``per_channel_broadcastable_shape=(1, C, 1, 1)`` on the layer.
    Errors (EdgeqError): width outside 2..24, unknown or unencodable modes, an init_int_bits outside
    ``-16 .. width + 16``.
    """
    from brevitas.core.zero_point import ZeroZeroPoint
    from brevitas.inject.enum import ScalingPerOutputType
    from brevitas.quant.solver.act import ActQuantSolver

    where = "qfx.act_quant"
    width = _check_width(where, width)
    rounding = _check_rounding(where, rounding, QONNX_ROUNDING)
    overflow = _check_overflow(where, overflow)
    if init_int_bits is not None:
        values = init_int_bits if isinstance(init_int_bits, (list, tuple)) else [init_int_bits]
        for v in values:
            _check_int_bits(where + " init_int_bits", v, width)
    attrs = _base_attrs(width, bool(signed), rounding, overflow, "act")
    attrs.update(
        zero_point_impl=ZeroZeroPoint,
        scaling_per_output_type=ScalingPerOutputType.CHANNEL if per_channel else ScalingPerOutputType.TENSOR,
        qfx_init_int_bits=None if init_int_bits is None else (
            [float(v) for v in init_int_bits] if isinstance(init_int_bits, (list, tuple)) else float(init_int_bits)),
        qfx_init_in_eval=False,
    )
    if not signed:
        attrs["min_val"] = 0.0
    return type(f"QFXAct{width}{'' if signed else 'u'}", (ActQuantSolver,), attrs)


def bias_quant(width: int):
    """A Brevitas bias quantizer: signed ``width``-bit codes on the accumulator's grid, saturating.

    The bias's lsb is the accumulator's, ``2**-(F_x + F_w)``, so its binary point follows the
    learned binary points of the layer's input and weights and the bias adds into the accumulator
    exactly (no shift). This is Brevitas ``IntBias`` (``requires_input_scale``): the layer's input
    must be a QuantTensor (a quantized input or ``return_quant_tensor=True`` upstream).
    """
    from brevitas.quant.scaled_int import IntBias

    width = _check_width("qfx.bias_quant", width, 32)
    return type(f"QFXBias{width}", (IntBias,), {
        "bit_width": width, "qfx_kind": "bias", "qfx_rounding": "RND_CONV", "qfx_overflow": "SAT",
        "qfx_multiplier_free": None, "qfx_k": 0})


# ---------------------------------------------------------------------------------------------
# Whole-model helpers: binary points and export with metadata
# ---------------------------------------------------------------------------------------------


def _qfx_proxies(model: nn.Module) -> list[tuple[str, Any]]:
    from brevitas.proxy.quant_proxy import QuantProxyFromInjector

    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, QuantProxyFromInjector) and "qfx_kind" in mod.quant_injector:
            out.append((name, mod))
    return out


def binary_points(model: nn.Module) -> dict[str, torch.Tensor]:
    """The binary point (int_bits, as used in the forward pass) of every learned QFX quantizer, by module path."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QFXBinaryPoint):
            with torch.no_grad():
                out[name.split(".fused_activation_quant_proxy")[0].split(".tensor_quant")[0]] = \
                    _learned_int_bits(mod.int_bits, mod.width).detach().clone()
    return out


def annotate(onnx_model: Any, model: nn.Module) -> dict[str, Any]:
    """Finish a raw Brevitas QONNX export of ``model`` (node names untouched) in place; return the metadata.

    * Writes the ``edgeq.qfx`` metadata of ``model``'s QFX quantizers (see the module docstring).
    * Replaces the float weight feeding each QFX weight ``Quant`` node by the weight Brevitas
      actually uses (``quant_weight()``, already on the grid). Brevitas' exporter writes the float
      weight and relies on the Quant node (``rounding_mode=ROUND``) to re-quantize it, which would
      undo a multiplier-free projection, a non-RND_CONV rounding or a WRAP. On grid values the Quant
      node is the identity, so QONNX, edgeq and Brevitas then agree.
    """
    from onnx import numpy_helper

    meta: dict[str, Any] = {"version": METADATA_VERSION, "tensors": {}, "layers": {}}
    proxies = sorted(_qfx_proxies(model), key=lambda p: -len(p[0]))  # longest path first
    modules = dict(model.named_modules())
    inits = {t.name: t for t in onnx_model.graph.initializer}
    for node in onnx_model.graph.node:
        if node.op_type != "Quant":
            continue
        for path, proxy in proxies:
            if not path or not node.name.startswith("/" + path.replace(".", "/") + "/"):
                continue
            inj = proxy.quant_injector
            meta["tensors"][node.output[0]] = {"overflow": inj.qfx_overflow, "rounding": inj.qfx_rounding,
                                               "module": path, "node": node.name}
            if inj.qfx_kind != "weight":  # weights are written on the grid: their Quant keeps ROUND
                _set_rounding_mode(node, QONNX_ROUNDING[inj.qfx_rounding])
            owner = path.rsplit(".", 1)[0] if "." in path else ""
            if inj.qfx_kind == "weight" and path.endswith(".weight_quant") and node.input[0] in inits:
                _write_quant_weight(inits[node.input[0]], modules.get(owner), node, numpy_helper)
            if inj.qfx_multiplier_free:
                meta["layers"][node.input[0]] = {"multiplier_free": inj.qfx_multiplier_free, "k": int(inj.qfx_k),
                                                 "module": owner}
            break
    props = {p.key: p.value for p in onnx_model.metadata_props}
    props[METADATA_KEY] = json.dumps(meta, sort_keys=True)
    del onnx_model.metadata_props[:]
    for key, value in props.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value
    return meta


def _set_rounding_mode(node: Any, mode: str) -> None:
    for attr in node.attribute:
        if attr.name == "rounding_mode":
            attr.s = mode.encode()
            return
    from onnx import helper

    node.attribute.append(helper.make_attribute("rounding_mode", mode))


def _write_quant_weight(init: Any, layer: nn.Module | None, node: Any, numpy_helper: Any) -> None:
    if layer is None or not hasattr(layer, "quant_weight"):
        raise EdgeqError(f"qfx.export: cannot find the layer of weight quantizer node '{node.name}'")
    with torch.no_grad():
        w = layer.quant_weight()
    w = getattr(w, "value", w).detach().cpu().numpy().astype(np.float32)
    old = numpy_helper.to_array(init)
    if w.shape != old.shape:
        raise EdgeqError(f"qfx.export: weight '{init.name}' has shape {old.shape} in the export but "
                         f"{w.shape} in Brevitas; cannot write the quantized weight")
    init.CopyFrom(numpy_helper.from_array(w, init.name))


def export(model: nn.Module, example_input: Any, path: str | os.PathLike) -> Path:
    """``edgeq.export`` of a model with QFX quantizers, finished by :func:`annotate`. Returns the path.

    The file holds standard QONNX (power-of-two ``Quant`` nodes, so ``edgeq.load`` sees exact
    fixed point), the quantized weights, and the ``edgeq.qfx`` metadata.
    """
    import onnx

    from edgeq.export import export as edgeq_export
    from edgeq.export import save_onnx_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        raw = edgeq_export(model, example_input, Path(tmp) / "raw.onnx")  # the plain Brevitas export
        proto = onnx.load(str(raw))
        was_training = model.training
        model.eval()
        try:
            annotate(proto, model)
        finally:
            model.train(was_training)
        return save_onnx_atomic(proto, path)  # one rename: never a file without its metadata


def read_metadata(model: Any) -> dict[str, Any] | None:
    """The ``edgeq.qfx`` metadata of an ONNX model (path or ModelProto), or None."""
    import onnx

    proto = onnx.load(str(model)) if isinstance(model, (str, os.PathLike)) else model
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            return json.loads(p.value)
    return None


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def QFXBatchNorm2d(num_features: int, width: int, *, bias_width: int | None = None, out_width: int | None = None,
                   per_channel: bool = False, return_quant_tensor: bool = True, **kwargs):
    """BatchNorm as a fixed-point per-channel scale and shift (Brevitas ``BatchNorm2dToQuantScaleBias``).

    The scale (gamma/sigma, folded) is ``width``-bit and the shift ``bias_width``-bit (default ``width``)
    fixed point with learned binary points (per tensor, or per channel with ``per_channel=True``; both load
    as exact fixed point); the output
    is ``out_width``-bit (default ``width``) with a learned binary point (a QuantTensor unless
    ``return_quant_tensor=False``). A
    QuantTensor input is used by value (Brevitas' eval-mode QuantTensor arithmetic would insist
    that the shift share the product's scale). Extra keyword arguments go to Brevitas.
    """
    bias_width = width if bias_width is None else bias_width
    out_width = width if out_width is None else out_width
    from brevitas.nn import BatchNorm2dToQuantScaleBias

    cls = _by_value(BatchNorm2dToQuantScaleBias, "QFXBatchNorm2dModule")
    return cls(num_features, weight_quant=_vector_quant(width, "weight", per_channel),
               bias_quant=_vector_quant(bias_width, "bias", per_channel), output_quant=act_quant(out_width),
               return_quant_tensor=return_quant_tensor, **kwargs)


_LAYER_CLASSES: dict[str, type] = {}


def _by_value(base: type, name: str) -> type:
    """A subclass of a Brevitas layer that takes QuantTensor inputs by value: the fixed-point values add and
    multiply exactly in float32, while Brevitas' eval-mode QuantTensor arithmetic would insist on equal scales."""
    if name not in _LAYER_CLASSES:
        def forward(self, *inputs):
            return base.forward(self, *(getattr(x, "value", x) for x in inputs))

        _LAYER_CLASSES[name] = type(name, (base,), {"forward": forward, "__doc__": _by_value.__doc__})
    return _LAYER_CLASSES[name]


def _vector_quant(width: int, kind: str, per_channel: bool):
    """A learned-binary-point quantizer for a BatchNorm scale or shift vector (one point per channel or per tensor)."""
    from brevitas.core.zero_point import ZeroZeroPoint
    from brevitas.inject.enum import ScalingPerOutputType
    from brevitas.quant.solver.bias import BiasQuantSolver
    from brevitas.quant.solver.weight import WeightQuantSolver

    width = _check_width(f"qfx.QFXBatchNorm2d {kind}", width)
    attrs = _base_attrs(width, True, "RND_CONV", "SAT", kind)
    attrs.update(zero_point_impl=ZeroZeroPoint, qfx_init_int_bits=None, qfx_init_in_eval=True,
                 scaling_per_output_type=ScalingPerOutputType.CHANNEL if per_channel else ScalingPerOutputType.TENSOR)
    if kind == "bias":
        attrs["requires_input_scale"] = False
        return type(f"QFXShift{width}", (BiasQuantSolver,), attrs)
    return type(f"QFXScale{width}", (WeightQuantSolver,), attrs)


def QFXAdd(width: int, *, signed: bool = True, init_int_bits: int | None = None, return_quant_tensor: bool = True,
           **kwargs):
    """A residual add whose sum is requantized to ``width``-bit fixed point with a learned binary point
    (Brevitas ``QuantEltwiseAdd`` with a QFX output quantizer). The inputs are added by value, so inputs with
    different binary points add exactly (while the sum fits float32's 24 bits)."""
    from brevitas.nn import QuantEltwiseAdd

    out = act_quant(width, signed=signed, init_int_bits=init_int_bits)
    return _by_value(QuantEltwiseAdd, "QFXAddModule")(input_quant=None, output_quant=out,
                           return_quant_tensor=return_quant_tensor, **kwargs)
