"""Post-training quantization (PTQ) to minifloats and integers, with Brevitas, for the FPGA.

This is the flow of "Post-Training Quantization with Low-precision Minifloats and Integers on FPGAs"
(Aggarwal et al., FPL 2024) on Brevitas' own PTQ machinery::

    from edgeq import ptq
    qmodel = ptq.quantize(float_model, calib_loader, weights="e2m1", acts="e4m3")
    ptq.export(qmodel, example_input, "model.onnx")      # QONNX with FloatQuant weights and activations
    edgeq.emulate(edgeq.load("model.onnx"), x)           # bit-exact, like the hardware

What :func:`quantize` does, in order (each step is Brevitas' own):

1. **Graph preprocessing** (``brevitas.graph.quantize.preprocess_for_quantize``): fx-trace a copy of
   the model, merge BatchNorm into the preceding convolution, and with ``equalize=True`` run
   cross-layer **weight equalization** (``EqualizeGraph``, 20 iterations, bias absorption): the
   channels' weight ranges of consecutive layers are balanced through scale-invariant ReLU/MaxPool.
   ``act_equalization=alpha`` (off by default) adds SmoothQuant-style activation equalization
   (``activation_equalization_mode`` in graph mode, on the calibration batches): per-channel input
   ranges are moved into the preceding layer's weights, so no op is added to the graph.
2. **Layerwise quantization** (``brevitas.graph.quantize.layerwise_quantize``): every ``nn.Conv2d``
   and ``nn.Linear`` becomes ``QuantConv2d`` / ``QuantLinear`` with a weight quantizer and an
   *input* quantizer, so every MAC layer multiplies two quantized operands (``weights`` x ``acts``)
   and everything between them (bias, ReLU, pooling) is float glue, which :mod:`edgeq.emulate`
   reproduces in float32 exactly as QONNX does. The model's output (logits) is not quantized.
3. **Calibration** (``brevitas.graph.calibrate.calibration_mode``): the activation scales are set
   from statistics of the calibration batches (Brevitas' defaults: the 99.999th percentile for
   integers, the maximum for minifloats).
4. **Bias correction** (``bias_correction_mode``, ``bias_correction=True``): each layer's bias is
   shifted by the mean difference between its float and its quantized output on the calibration
   batches (a bias is added where the layer had none).
5. With ``power_of_two_scales=True`` every bias is then rounded onto its accumulator's grid
   (``lsb = lsb_x * lsb_w``, like an Int32 bias), so each MAC layer is exact fixed point end to end
   and the model can be built for the FPGA (``edgeq build``).

Formats
-------
``weights`` and ``acts`` take a name or an :class:`edgeq.MiniFloat` / :class:`edgeq.Int`:

* ``"intN"`` (2 <= N <= 16): Brevitas' integer quantizers. Weights are narrow-range signed
  (``-(2**(N-1)-1) .. 2**(N-1)-1``). Activations are signed, or unsigned where the calibration
  batches show the layer's input is never negative (``unsigned_acts=True``: the image input in
  [0, 1], the output of ReLU/MaxPool), which buys one bit of resolution; ``"uintN"`` forces unsigned.
* ``"eXmY"`` (X >= 1 exponent bits, Y >= 0 mantissa bits, 1 + X + Y <= 16): a signed minifloat with
  the IEEE-style bias ``2**(X-1) - 1``, subnormals and saturation, and with every code finite; except
  ``"e4m3"`` and ``"e5m2"``, which follow OCP FP8 (E4M3: only S.1111.111 is NaN, max 448; E5M2:
  IEEE-style inf and NaN, max 57344), as ``ml_dtypes.float8_e4m3fn`` / ``float8_e5m2``. e2m1, e2m3 and
  e3m2 equal OCP's FP4/FP6 (``float4_e2m1fn``, ``float6_e2m3fn``, ``float6_e3m2fn``).
* Custom ExMy: ``MiniFloat(exponent_bits, mantissa_bits, bias=..., has_inf=..., has_nan=...,
  saturating=..., rounding=...)``. Brevitas encodes inf/NaN on the top exponent's mantissa codes, so
  ``has_nan`` alone means the OCP "fn" style (the all-ones code is NaN), ``has_inf`` with ``has_nan``
  the IEEE style (the whole top exponent is reserved); ``saturating=False`` maps overflow to inf (or
  NaN). Brevitas always has subnormals and cannot have inf without NaN, or inf/NaN with no mantissa
  bit: those are refused.
* Rounding: ``rounding`` (``"ROUND"`` = half to even, ``"FLOOR"``, ``"CEIL"``; ap_fixed names
  ``RND_CONV``/``TRN`` are accepted) applies to named formats; a MiniFloat/Int object carries its
  own. QONNX and Brevitas take a minifloat's exponent as ``floor(log2|v|)`` in float32, one too high
  just below a power of two, which edgeq does not copy; so with FLOOR/CEIL a few values can differ
  from Brevitas (README "Where QONNX's own reference is not exact"). ROUND has no such case.

Scales are float32 (``power_of_two_scales=False``) or powers of two: integers then use Brevitas'
fixed-point quantizers; minifloats round the calibration maximum up and the format's largest value down to
powers of two (:func:`_power_of_two`), so nothing in the calibration range overflows. Weights are scaled per
output channel (``per_channel=True``) or per tensor; activations always per tensor (edgeq refuses
per-channel activation scales feeding a convolution). Bad input (an unknown format name, exponent bits < 1, an
unsupported rounding mode or minifloat feature, empty calibration data) is one :class:`EdgeqError`
line naming it, raised before any work.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.formats import Int, MiniFloat

#: rounding names accepted -> Brevitas ``float_to_int_impl_type`` (which exports as this QONNX rounding_mode)
ROUNDING = {"ROUND": "ROUND", "RND_CONV": "ROUND", "HALF_EVEN": "ROUND", "FLOOR": "FLOOR", "TRN": "FLOOR",
            "CEIL": "CEIL"}
#: widest integer or minifloat the flow builds
MAX_BITS = 16
#: largest exponent field: wider exponents leave float32's range, which Brevitas and QONNX compute in
MAX_EXPONENT_BITS = 8
#: cross-layer weight-equalization iterations (``EqualizeGraph``)
EQUALIZE_ITERATIONS = 20
#: batch size used when calibration data is given as one array
CALIB_BATCH = 64

_INT_NAME = re.compile(r"^(u?)int(\d+)$")
_MF_NAME = re.compile(r"^e(\d+)m(\d+)$")


# ---------------------------------------------------------------------------------------------- formats


def format_of(spec: Any, role: str = "weights", rounding: str = "ROUND") -> MiniFloat | Int:
    """The number format a name (``"int4"``, ``"uint8"``, ``"e2m1"``...) or a format object stands for.

    ``role`` ("weights" or "acts") only words the error messages and refuses unsigned weights. The result
    is an :class:`Int` (scale 1; for ``"intN"`` activations :func:`quantize` may still choose unsigned per
    layer) or a :class:`MiniFloat`. Anything unsupported is one EdgeqError line naming it.
    """
    where = f"{role} format"
    if isinstance(spec, MiniFloat):
        _check_minifloat(spec, where)
        return spec
    if isinstance(spec, Int):
        _check_int(spec.width, where, repr(spec))
        _check_rounding(spec.rounding, where)
        if role == "weights" and not spec.signed:
            raise EdgeqError(f"{where} {spec}: weights must be signed")
        return spec
    if not isinstance(spec, str):
        raise EdgeqError(f"{where} {spec!r}: expected a name like 'int4' or 'e2m1', or an edgeq MiniFloat/Int")
    name = spec.strip().lower()
    mode = _check_rounding(rounding, where)
    m = _INT_NAME.match(name)
    if m:
        width = _check_int(int(m.group(2)), where, repr(spec))
        if m.group(1):
            if role == "weights":
                raise EdgeqError(f"{where} {spec!r}: weights must be signed; use 'int{width}'")
            return Int(width, signed=False, rounding=mode)
        return Int(width, signed=True, narrow=role == "weights", rounding=mode)
    m = _MF_NAME.match(name)
    if m:
        e, mant = int(m.group(1)), int(m.group(2))
        if e < 1:
            raise EdgeqError(f"{where} {spec!r}: a minifloat needs at least 1 exponent bit (e0mM has none; "
                             f"use 'int{mant + 1}')")
        if e == 4 and mant == 3:  # OCP FP8 E4M3: only the all-ones code is NaN, saturating
            fmt = MiniFloat(4, 3, has_nan=True, rounding=mode)
        elif e == 5 and mant == 2:  # OCP FP8 E5M2: IEEE-style inf and NaN, saturating
            fmt = MiniFloat(5, 2, has_inf=True, has_nan=True, rounding=mode)
        else:
            fmt = MiniFloat(e, mant, rounding=mode) if e <= MAX_EXPONENT_BITS and 1 + e + mant <= MAX_BITS else None
        if fmt is None:
            raise EdgeqError(f"{where} {spec!r}: at most {MAX_EXPONENT_BITS} exponent bits and {MAX_BITS} bits "
                             "in all")
        _check_minifloat(fmt, where)
        return fmt
    raise EdgeqError(f"{where} {spec!r} is unknown; use intN (2..{MAX_BITS}), uintN (activations), eXmY "
                     "(X >= 1 exponent and Y mantissa bits, e.g. e4m3), or an edgeq MiniFloat/Int")


def _check_int(width: int, where: str, what: str) -> int:
    if not 2 <= width <= MAX_BITS:
        raise EdgeqError(f"{where} {what}: integer width must be 2..{MAX_BITS} (1-bit is binary, not PTQ)")
    return width


def _check_rounding(mode: Any, where: str) -> str:
    key = str(mode).upper().removeprefix("AP_")
    if key not in ROUNDING:
        raise EdgeqError(f"{where}: unsupported rounding mode {mode!r}; supported: ROUND (half to even, RND_CONV), "
                         "FLOOR (TRN), CEIL")
    return ROUNDING[key]


def _check_minifloat(fmt: MiniFloat, where: str) -> None:
    e, m = fmt.exponent_bits, fmt.mantissa_bits
    if e < 1:  # MiniFloat itself refuses this; kept for duck-typed objects
        raise EdgeqError(f"{where} {fmt}: a minifloat needs at least 1 exponent bit")
    if e > MAX_EXPONENT_BITS or fmt.bits > MAX_BITS:
        raise EdgeqError(f"{where} {fmt}: at most {MAX_EXPONENT_BITS} exponent bits and {MAX_BITS} bits in all")
    if not fmt.has_subnormal:
        raise EdgeqError(f"{where} {fmt}: Brevitas minifloats always have subnormals; use has_subnormal=True")
    if fmt.has_inf and not fmt.has_nan:
        raise EdgeqError(f"{where} {fmt}: Brevitas cannot encode inf without NaN; use has_nan=True as well")
    if (fmt.has_inf or fmt.has_nan) and m == 0:
        raise EdgeqError(f"{where} {fmt}: Brevitas encodes inf/NaN in mantissa codes, so a format without "
                         "mantissa bits cannot have them")
    if fmt.max_val is not None:
        raise EdgeqError(f"{where} {fmt}: a custom max_val is not supported; it follows from the inf/NaN codes")
    _check_rounding(fmt.rounding, where)
    if abs(fmt.min_normal_exponent - fmt.mantissa_bits) > 120 or math.log2(fmt.max) > 120:
        raise EdgeqError(f"{where} {fmt}: exponent bias {fmt.bias} puts the format outside float32's range")


def format_name(fmt: MiniFloat | Int) -> str:
    """Short name: ``int4``, ``uint8``, ``e2m1`` (custom biases and inf/NaN policies as in ``str(MiniFloat)``)."""
    if isinstance(fmt, Int):
        return f"{'' if fmt.signed else 'u'}int{fmt.width}"
    e, m = fmt.exponent_bits, fmt.mantissa_bits
    ocp = {(4, 3): (False, True), (5, 2): (True, True)}.get((e, m), (False, False))  # format_of's defaults
    if fmt.bias == (1 << (e - 1)) - 1 and (fmt.has_inf, fmt.has_nan) == ocp and fmt.saturating:
        return f"e{e}m{m}"
    return str(fmt)


def lsb(fmt: MiniFloat | Int) -> float:
    """The value of one step of the smallest magnitude (scale 1): 1 for integers, the smallest subnormal
    ``2**(1 - bias - mantissa_bits)`` for minifloats."""
    if isinstance(fmt, Int):
        return 1.0
    return math.ldexp(1.0, fmt.min_normal_exponent - fmt.mantissa_bits)


# ---------------------------------------------------------------------------------------------- quantizers


def _minifloat_kwargs(fmt: MiniFloat) -> dict[str, Any]:
    m = fmt.mantissa_bits
    inf_values = nan_values = None
    if fmt.has_inf:  # IEEE style: the top exponent is inf (mantissa 0) or NaN (any other mantissa)
        inf_values = ("0" * m,)
        nan_values = tuple(format(i, f"0{m}b") for i in range(1, 1 << m))
    elif fmt.has_nan:  # OCP "fn" style: only the all-ones code is NaN
        nan_values = ("1" * m,)
    return {
        "bit_width": fmt.bits, "exponent_bit_width": fmt.exponent_bits, "mantissa_bit_width": m,
        "exponent_bias": fmt.bias, "saturating": fmt.saturating, "inf_values": inf_values, "nan_values": nan_values,
        "float_to_int_impl_type": ROUNDING[str(fmt.rounding).upper().removeprefix("AP_")],
    }


def _power_of_two(q: Any) -> Any:
    """Power-of-two scales for a minifloat quantizer that never clip the calibration maximum.

    Brevitas computes the scale as ``restrict(amax) / restrict(max_fmt)``, each rounded to a power of two on
    its own. Rounding both up (its fixed-point recipe) maps ``amax`` up to ``2**ceil(log2 max_fmt) / max_fmt``
    times the format's largest value (8/6 for e2m1: a third of the range clipped, or inf for non-saturating
    formats). So ``amax`` is rounded up and ``max_fmt`` down (Brevitas' OCP MX convention for this threshold):
    the calibration maximum always fits, at the price of sometimes one unused binade.
    """
    from brevitas.core.function_wrapper.ops_ste import CeilSte, FloorSte
    from brevitas.core.restrict_val import PowerOfTwoRestrictValue, RestrictValueType
    from brevitas.inject import ExtendedInjector, this

    class FloorThreshold(ExtendedInjector):
        restrict_value_float_to_int_impl = FloorSte
        restrict_scaling_impl = PowerOfTwoRestrictValue

    return q.let(restrict_scaling_type=RestrictValueType.POWER_OF_TWO, restrict_value_float_to_int_impl=CeilSte,
                 threshold_mixin=FloorThreshold, restrict_threshold_impl=this.threshold_mixin.restrict_scaling_impl)


def weight_quantizer(fmt: MiniFloat | Int, per_channel: bool = True, power_of_two_scales: bool = False) -> Any:
    """The Brevitas weight quantizer (an injector) for ``fmt``: max-statistics scale per channel or tensor."""
    if isinstance(fmt, Int):
        from brevitas.quant import fixed_point as fx
        from brevitas.quant import scaled_int as si

        if power_of_two_scales:
            base = fx.Int8WeightPerChannelFixedPoint if per_channel else fx.Int8WeightPerTensorFixedPoint
        else:
            base = si.Int8WeightPerChannelFloat if per_channel else si.Int8WeightPerTensorFloat
        return base.let(bit_width=fmt.width, narrow_range=fmt.narrow, float_to_int_impl_type=_int_rounding(fmt))
    from brevitas.quant import float_quant_ocp as ocp

    base = ocp.FpOCPWeightPerChannelFloat if per_channel else ocp.FpOCPWeightPerTensorFloat
    q = base.let(**_minifloat_kwargs(fmt))
    return _power_of_two(q) if power_of_two_scales else q


def act_quantizer(fmt: MiniFloat | Int, signed: bool = True, power_of_two_scales: bool = False) -> Any:
    """The Brevitas activation quantizer (an injector) for ``fmt``: per-tensor scale from calibration."""
    if isinstance(fmt, Int):
        from brevitas.quant import fixed_point as fx
        from brevitas.quant import scaled_int as si

        if power_of_two_scales:
            base = fx.Int8ActPerTensorFixedPoint if signed else fx.Uint8ActPerTensorFixedPoint
        else:
            base = si.Int8ActPerTensorFloat if signed else si.Uint8ActPerTensorFloat
        return base.let(bit_width=fmt.width, narrow_range=fmt.narrow and signed,
                        float_to_int_impl_type=_int_rounding(fmt))
    from brevitas.quant import float_quant_ocp as ocp

    q = ocp.FpOCPActPerTensorFloat.let(**_minifloat_kwargs(fmt))
    return _power_of_two(q) if power_of_two_scales else q


def _int_rounding(fmt: Int) -> str:
    # edgeq.Int normalises QONNX names to ap_fixed ones (ROUND -> RND_CONV, FLOOR -> TRN)
    return ROUNDING[fmt.rounding]


# ---------------------------------------------------------------------------------------------- data


def calibration_batches(calib: Any, limit: int | None = None) -> list[Any]:
    """Float32 input batches from a DataLoader / iterable of ``x`` or ``(x, y, ...)`` batches, or one array
    or tensor of samples (batch first, split into batches of :data:`CALIB_BATCH`). Empty data, NaN/inf or
    a non-numeric batch is an EdgeqError."""
    import torch

    if isinstance(calib, np.ndarray | torch.Tensor):
        x = torch.as_tensor(np.asarray(calib) if isinstance(calib, np.ndarray) else calib)
        items: Iterable = [x[i:i + CALIB_BATCH] for i in range(0, len(x), CALIB_BATCH)] if x.ndim else [x]
    elif isinstance(calib, Iterable) and not isinstance(calib, str | bytes):
        items = calib
    else:
        raise EdgeqError(f"calibration data: expected a DataLoader, an iterable of batches or an array, "
                         f"got {type(calib).__name__}")
    out = []
    for item in items:
        x = item[0] if isinstance(item, list | tuple) else item
        try:
            x = torch.as_tensor(x).to(torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise EdgeqError(f"calibration data: batch {len(out)} is not numeric ({type(x).__name__})") from None
        if x.numel() == 0:
            continue
        if not torch.isfinite(x).all():
            raise EdgeqError(f"calibration data: batch {len(out)} contains NaN or inf")
        out.append(x)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise EdgeqError("calibration data is empty; pass a DataLoader (or array) of representative inputs")
    return out


# ---------------------------------------------------------------------------------------------- flow


@dataclass
class PtqConfig:
    """What :func:`quantize` did; kept on the returned model as ``model.edgeq_ptq``."""

    weights: MiniFloat | Int
    acts: MiniFloat | Int
    per_channel: bool
    power_of_two_scales: bool
    bias_correction: bool
    equalize: bool
    unsigned_acts: bool
    act_equalization: float | None = None
    #: per quantized layer (module name): its input format (activations: signedness resolved)
    layer_inputs: dict[str, MiniFloat | Int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _preprocess(model: Any, equalize: bool, need_trace: bool, notes: list[str]) -> Any:
    from brevitas.graph.quantize import preprocess_for_quantize

    try:
        return preprocess_for_quantize(model, equalize_iters=EQUALIZE_ITERATIONS if equalize else 0, merge_bn=True)
    except Exception as e:  # fx tracing of arbitrary user code can fail in many ways
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if need_trace:
            raise EdgeqError(f"weight/activation equalization needs an fx-traceable model, and Brevitas could not "
                             f"trace {type(model).__name__} ({reason}); pass equalize=False, act_equalization=None"
                             ) from None
        notes.append(f"not fx-traceable ({reason}): BatchNorm left unmerged, no graph preprocessing")
        return model


def _act_equalize(model: Any, batches: list[Any], alpha: float) -> None:
    """SmoothQuant-style activation equalization in graph mode: per-channel scales moved from each layer's
    input into the preceding layer's weights (through ReLU/MaxPool), so the function and the graph's ops stay
    the same and no Mul node is added to the export."""
    import torch
    from brevitas.graph.equalize import activation_equalization_mode

    with torch.no_grad(), activation_equalization_mode(model, alpha=float(alpha), layerwise=False,
                                                       add_mul_node=False):
        for x in batches:
            model(x)


def _input_minimum(model: Any, batches: list[Any]) -> dict[str, float]:
    """Smallest input value each Conv2d/Linear sees on the calibration batches (float model)."""
    import torch

    seen: dict[str, float] = {}
    hooks = []
    for name, mod in model.named_modules():
        if type(mod) in (torch.nn.Conv2d, torch.nn.Linear):
            def hook(_m, inp, name=name):
                v = float(inp[0].min())
                seen[name] = min(seen.get(name, math.inf), v)
            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _keep_finite_biases(model: Any, before: dict[str, Any], cfg: PtqConfig) -> None:
    """A non-saturating format can overflow to inf/NaN on the calibration data, and bias correction then
    averages NaN: such channels keep their uncorrected bias (zero where the layer had none), with a note."""
    import torch

    for name, mod in model.named_modules():
        if name not in before or mod.bias is None:
            continue
        bad = ~torch.isfinite(mod.bias.detach())
        if bool(bad.any()):
            old = before[name] if before[name] is not None else torch.zeros_like(mod.bias)
            with torch.no_grad():
                mod.bias[bad] = old[bad]
            cfg.notes.append(f"{name}: bias correction skipped on {int(bad.sum())} channel(s): the quantized "
                             "output overflowed to inf/NaN on the calibration data (non-saturating format)")


def _snap_biases(model: Any, cfg: PtqConfig) -> None:
    """Round each bias onto its accumulator grid (power-of-two scales only): the layer becomes exact fixed point."""
    import torch
    from brevitas import nn as qnn

    for name, mod in model.named_modules():
        if not isinstance(mod, qnn.QuantConv2d | qnn.QuantLinear) or mod.bias is None:
            continue
        with torch.no_grad():
            s_x = float(mod.input_quant.scale()) * lsb(cfg.layer_inputs[name])
            s_w = mod.quant_weight().scale.reshape(-1).to(torch.float64) * lsb(cfg.weights)
            step = (s_w * s_x).to(torch.float64)
            snapped = torch.round(mod.bias.to(torch.float64) / step) * step
            mod.bias.copy_(snapped.to(mod.bias.dtype))


def quantize(model: Any, calib: Any, *, weights: Any = "e4m3", acts: Any = "e4m3", per_channel: bool = True,
             bias_correction: bool = True, equalize: bool = True, act_equalization: float | None = None,
             power_of_two_scales: bool = False, rounding: str = "ROUND", unsigned_acts: bool = True,
             calib_batches: int | None = None) -> Any:
    """Post-training quantize a float PyTorch ``model`` (Conv2d/Linear/ReLU/pooling/BatchNorm...) to a Brevitas model.

    ``calib``: a DataLoader (or any iterable) of ``x`` or ``(x, y)`` batches, or one array/tensor of samples,
    batch first, shaped like the model input; ``calib_batches`` caps how many batches are used. The float
    model is not modified. Returns the quantized model in eval mode (an fx GraphModule of Brevitas layers)
    with its :class:`PtqConfig` as ``model.edgeq_ptq``. See the module docstring for the steps and formats.
    """
    import torch
    from brevitas import nn as qnn
    from brevitas.graph.calibrate import bias_correction_mode, calibration_mode
    from brevitas.graph.quantize import layerwise_quantize

    wfmt = format_of(weights, "weights", rounding)
    afmt = format_of(acts, "acts", rounding)
    batches = calibration_batches(calib, calib_batches)
    if not isinstance(model, torch.nn.Module):
        raise EdgeqError(f"quantize: expected a torch.nn.Module, got {type(model).__name__}")
    if act_equalization is not None and not 0.0 <= float(act_equalization) <= 1.0:
        raise EdgeqError(f"act_equalization={act_equalization!r}: the SmoothQuant alpha must be in [0, 1]")
    if not any(type(m) in (torch.nn.Conv2d, torch.nn.Linear) for m in model.modules()):
        raise EdgeqError(f"quantize: {type(model).__name__} has no nn.Conv2d or nn.Linear layer to quantize")
    cfg = PtqConfig(wfmt, afmt, per_channel, power_of_two_scales, bias_correction, equalize, unsigned_acts,
                    act_equalization)

    was_training = model.training
    work = copy.deepcopy(model).eval()
    model.train(was_training)
    try:
        with torch.no_grad():
            work(batches[0])
    except Exception as e:  # a batch that does not fit the model: say so before any Brevitas work
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeqError(f"calibration batch of shape {tuple(batches[0].shape)} does not fit "
                         f"{type(model).__name__}: {reason}") from None
    work = _preprocess(work, equalize, equalize or act_equalization is not None, cfg.notes).eval()
    if act_equalization is not None:
        _act_equalize(work, batches, act_equalization)

    unsigned = set()
    if isinstance(afmt, Int) and unsigned_acts and afmt.signed and not isinstance(acts, Int):
        unsigned = {name for name, lo in _input_minimum(work, batches).items() if lo >= 0}
    w_quant = weight_quantizer(wfmt, per_channel, power_of_two_scales)
    act_signed = {True: act_quantizer(afmt, True, power_of_two_scales)}
    if isinstance(afmt, Int):
        act_signed[False] = act_quantizer(afmt, False, power_of_two_scales)

    def input_quant(_module: Any, name: str) -> Any:
        signed = isinstance(afmt, MiniFloat) or (afmt.signed and name not in unsigned)
        cfg.layer_inputs[name] = afmt if isinstance(afmt, MiniFloat) else Int(
            afmt.width, signed=signed, narrow=afmt.narrow and signed, rounding=afmt.rounding)
        return act_signed[signed]

    # Brevitas calls a *lambda* kwarg with (old module, name); a named function would be passed as is
    kwargs = {"weight_quant": w_quant, "input_quant": lambda module, name: input_quant(module, name),
              "bias_quant": None, "return_quant_tensor": False}
    layer_map = {torch.nn.Conv2d: (qnn.QuantConv2d, kwargs), torch.nn.Linear: (qnn.QuantLinear, kwargs)}
    try:
        qmodel = layerwise_quantize(work, compute_layer_map=layer_map)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeqError(f"Brevitas could not build the {format_name(wfmt)} x {format_name(afmt)} quantizers: "
                         f"{reason}") from None
    qmodel.eval()
    with torch.no_grad():
        with calibration_mode(qmodel):
            for x in batches:
                qmodel(x)
        if bias_correction:
            before = {name: None if m.bias is None else m.bias.detach().clone()
                      for name, m in qmodel.named_modules() if isinstance(m, qnn.QuantConv2d | qnn.QuantLinear)}
            with bias_correction_mode(qmodel):
                for x in batches:
                    qmodel(x)
            _keep_finite_biases(qmodel, before, cfg)
        if power_of_two_scales:
            _snap_biases(qmodel, cfg)
    qmodel.eval()
    qmodel.edgeq_ptq = cfg
    return qmodel


def export(model: Any, example_input: Any, path: str | os.PathLike) -> Path:
    """Export a :func:`quantize` model to QONNX at ``path`` (via :func:`edgeq.export`) and check it.

    Minifloat tensors export as QONNX ``FloatQuant`` nodes, integers as ``Quant``. The file is then loaded
    with :func:`edgeq.load`, so a model edgeq cannot run exactly (e.g. an accumulator beyond 2^62 bits of
    range with two wide-exponent formats) fails here with its one-line EdgeqError, and every quantized
    layer is checked to have kept its weight format (a minifloat weight must arrive as a MiniFloat, not
    folded into plain floats). Returns the path.
    """
    from edgeq.export import export as edgeq_export
    from edgeq.ingest import load

    path = edgeq_export(model, example_input, path)
    graph = load(path)
    cfg = getattr(model, "edgeq_ptq", None)
    if cfg is not None:
        want = MiniFloat if isinstance(cfg.weights, MiniFloat) else Int
        for layer in graph.layers:
            if layer.op in ("Conv2d", "Dense") and not isinstance(layer.weight_format, want):
                raise EdgeqError(f"{path}: layer '{layer.name}' has weight format {layer.weight_format}, "
                                 f"expected {format_name(cfg.weights)}; its quantizer was lost in export")
    return path
