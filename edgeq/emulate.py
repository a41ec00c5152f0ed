"""Bit-exact emulator of the edgeq IR, vectorised over the batch.

Every layer runs its declared :class:`~edgeq.ir.Contract`:

* quantizers call their NumFormat (the one implementation of each rounding rule);
* Conv2d/Dense accumulate integer codes exactly. The engine is chosen per layer from the formats:
  float32 BLAS when every partial sum is provably at most 2**24, float64 BLAS up to 2**53, int64
  up to 2**62 (ingest refuses more). Integers within those bounds are exact in any summation order;
* float glue (BatchNorm, element-wise constants, AvgPool's division) runs in float32 in
  onnxruntime's order, so it matches QONNX's ``execute_onnx`` bit for bit.

Tensor values travel as exact arrays: float32 whenever the tensor's format is exactly representable
in float32 (float glue, and grids of at most 24 significant bits), float64 for accumulators up to 53
bits, and int64 *codes* for wider fixed-point accumulators (only code-aware ops -- Quantize, Relu,
MaxPool, Reshape, Transpose -- see them as codes; others get float64 values). Outputs and traces are
returned as float64 values.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgeq import ops
from edgeq.errors import EdgeqError
from edgeq.formats import FixedPoint, Float16, Float32, Int, MiniFloat, round_float
from edgeq.ingest import grid_of, is_power_of_two
from edgeq.ir import Graph, Layer

_F32 = np.float32


def emulate(graph: Graph, x: np.ndarray, trace: bool = False, progress: Any = None, raw_trace: bool = False,
            finite_input: bool = True):
    """Run ``graph`` on the batch ``x`` (batch axis first). Returns decoded float64 outputs.

    With ``trace=True`` returns ``(output, {layer_name: layer_output})`` as float64 values; with
    ``raw_trace=True`` too, the trace keeps the stored arrays instead, i.e. exact int64 codes for
    fixed-point accumulators wider than 53 bits (which float64 would round). ``progress`` is an
    optional callable ``progress(done_layers, total_layers)``. A user's input must be finite (NaN or inf raises
    EdgeqError); ``finite_input=False`` is for a graph that continues another one (the host tail after an
    accelerator), whose inputs may legitimately be the inf a non-saturating format produced.
    """
    x = np.asarray(x)
    inp = graph.input
    if x.dtype.kind not in "fiu":
        dims = ", ".join(map(str, inp.shape))
        raise EdgeqError(f"input has dtype {x.dtype}; expected a float array shaped (batch, {dims})")
    if tuple(x.shape[1:]) != tuple(inp.shape):
        raise EdgeqError(
            f"input has shape {tuple(x.shape)}, but model input '{inp.name}' expects (batch, "
            f"{', '.join(map(str, inp.shape))}); reshape it, keeping the batch as the first axis"
        )
    if finite_input and x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        where = tuple(int(i) for i in bad)
        raise EdgeqError(f"input contains NaN or infinity (first at index {where}); clean the data")
    env: dict[str, np.ndarray] = {inp.name: x.astype(_F32)}
    traced: dict[str, np.ndarray] = {}
    for i, layer in enumerate(graph.layers):
        env[layer.output] = step(graph, layer, env)
        if trace:
            stored = env[layer.output]
            traced[layer.name] = stored if raw_trace and stored.dtype.kind == "i" else \
                _values(graph.tensors[layer.output].format, stored).astype(np.float64)
        if progress is not None:
            progress(i + 1, len(graph.layers))
    out = _values(graph.output.format, env[graph.outputs[0]]).astype(np.float64)
    return (out, traced) if trace else out


def step(graph: Graph, layer: Layer, env: dict[str, np.ndarray]) -> np.ndarray:
    """Run one layer on the stored values in ``env``; returns its stored output (see module doc)."""
    xs = [env[t] for t in layer.inputs]
    if layer.op not in _CODE_OPS:
        xs = [_values(graph.tensors[t].format, v) for t, v in zip(layer.inputs, xs)]
    mcu = layer.contract.engine in _MCU_ENGINES or layer.contract.engine.startswith("fp16")
    with np.errstate(all="ignore") if mcu else contextlib.nullcontext():  # MCU: inf and NaN follow IEEE rules
        y = run_layer(graph, layer, xs)
        out_dtype = storage_dtype(graph.tensors[layer.output].format)
        if out_dtype is np.int64 and y.dtype.kind == "f":  # values of a wide fixed-point output: to its codes
            y = np.rint(np.ldexp(y, graph.tensors[layer.output].format.frac_bits))
        elif out_dtype is not np.int64 and y.dtype.kind == "i":  # a code op whose output is not wide (e.g. float32)
            y = _f32_values(graph.tensors[layer.inputs[0]].format, y)
        y = y.astype(out_dtype, copy=False)
    if mcu:
        # MCU programs: a NaN is RISC-V's canonical quiet NaN (+, payload 0), whatever numpy produced
        nan = np.isnan(y)
        if nan.any():
            y = np.where(nan, _F32(np.nan), y).astype(y.dtype, copy=False)
    return y


def run_chain(graph: Graph, layers: list[Layer], x: np.ndarray) -> np.ndarray:
    """Run a chain of single-input layers on ``x`` (values of the first layer's input tensor).

    Used by backends to evaluate float glue exactly as :func:`emulate` does, e.g. on every code of
    an accumulator to derive integer thresholds. Each layer takes the previous one's output, whatever its
    input's name (a backend may take pools or flattens out of the chain). Returns float64 values of the last output.
    A wide fixed-point input (stored as int64 codes) may also be given as its int64 codes, which is exact past 2^53.
    """
    fmt = graph.tensors[layers[0].inputs[0]].format
    dtype = storage_dtype(fmt)
    if dtype is np.int64 and x.dtype.kind == "f":  # values of a wide fixed-point tensor: to its codes, not truncated
        x = np.rint(np.ldexp(x, fmt.frac_bits))
    y = x.astype(dtype, copy=False)
    for layer in layers:
        y = step(graph, layer, {layer.inputs[0]: y})
    env = {layers[-1].output: y}
    return _values(graph.tensors[layers[-1].output].format, env[layers[-1].output]).astype(np.float64)


#: contract engines of MCU programs (backends/mcu/lower.py), besides "fp16 ..."
_MCU_ENGINES = {"fp32", "exact"}

#: ops that take int64 codes of wide fixed-point tensors as they are (order-preserving or exact casts)
_CODE_OPS = ops.having("codes")


def storage_dtype(fmt) -> type:
    """float32 when every value of ``fmt`` is exactly a float32, float64 up to 53 bits, else int64 codes."""
    if isinstance(fmt, FixedPoint):
        if -100 < fmt.frac_bits < 100 and fmt.width <= 24:
            return _F32
        return np.float64 if fmt.width <= 53 else np.int64
    return _F32  # float glue, Int/Binary/MiniFloat values are float32 results (QONNX semantics)


def _values(fmt, v: np.ndarray) -> np.ndarray:
    """Values of a stored tensor: int64 codes of a wide FixedPoint become float64 (rounded past 53 bits)."""
    if v.dtype.kind == "i":
        return np.ldexp(v.astype(np.float64), -fmt.frac_bits)
    return v


def _f32_values(fmt, codes: np.ndarray) -> np.ndarray:
    """float32 values of int64 codes of a wide FixedPoint, rounded once (int64 -> float32 is correctly rounded;
    the power-of-two scaling is exact while the result is a normal float32)."""
    return np.ldexp(codes.astype(_F32).astype(np.float64), -fmt.frac_bits).astype(_F32)


def run_layer(graph: Graph, layer: Layer, xs: list[np.ndarray]) -> np.ndarray:
    """Evaluate one layer on its input values (float64 arrays, batch first)."""
    fn = _OPS.get(layer.op)
    if fn is None:  # pragma: no cover - ingest only emits known ops
        raise EdgeqError(f"layer '{layer.name}': the emulator has no op {layer.op}")
    return fn(graph, layer, *xs)


# ------------------------------------------------------------------------------------------------
# Quantizers and float glue
# ------------------------------------------------------------------------------------------------


def _quantize(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    fmt = graph.tensors[layer.output].format
    grid = layer.attrs.get("grid")
    if grid is not None:  # an MCU graph: the quantizer runs in float32, its output is stored as `fmt`
        y = grid.quantize(x.astype(_F32, copy=False), dtype=_F32)
        return Float16.round(y).astype(_F32) if isinstance(fmt, Float16) else y
    src = graph.tensors[layer.inputs[0]].format
    fixed = fmt.as_fixed() if isinstance(fmt, Int) else fmt if isinstance(fmt, FixedPoint) else None
    if isinstance(src, FixedPoint) and src.width > 24:
        # A wide exact accumulator: cast it once, exactly, as the hardware does (no float32 detour).
        if fixed is not None:
            codes = x if x.dtype.kind == "i" else np.rint(np.ldexp(x, src.frac_bits)).astype(np.int64)
            return fixed.decode(fixed.cast_codes(codes, src.frac_bits))
        return fmt.quantize(_values(src, x))
    return fmt.quantize(x.astype(_F32, copy=False), dtype=_F32)


def _trunc(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    """QONNX Trunc in its own float32 order: y = round(x/scale); then the step's rounding on y/2^k."""
    a = layer.attrs
    y = round_float(x.astype(_F32, copy=False) / a["scale"], "RND_CONV")  # QONNX np.round: half to even
    if a["version"] == 2:  # clip to the output range, then round, as Int (QONNX Quant) does
        codes = a["step"].quantize_codes(y)
    else:  # v1 does not clip
        codes = round_float(y / a["trunc_scale"], a["step"].rounding)
    return codes * a["out_scale"]


def batchnorm_coeffs(attrs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm's float32 scale and shift, computed in onnxruntime's order (also rendered into C)."""
    a = attrs
    inv = _F32(1) / np.sqrt(a["var"] + a["epsilon"])
    s = inv * a["gamma"]
    b = a["beta"] - a["mean"] * s
    return s.astype(_F32), b.astype(_F32)


def _cast(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    """Cast to float16 (round to nearest even): MCU graphs, in front of FP16 multiply-accumulate."""
    return Float16.round(x).astype(_F32)


def _batchnorm(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    s, b = batchnorm_coeffs(layer.attrs)
    view = (1, -1) + (1,) * (x.ndim - 2)
    y = x.astype(_F32, copy=False) * s.reshape(view)
    y += b.reshape(view)  # a separate float32 add, as onnxruntime does (no fma)
    return y


_FLOAT_FNS = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power,
    "max": np.maximum, "min": np.minimum,
}


def _floatop(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    a = layer.attrs
    f = _FLOAT_FNS[a["fn"]]
    x32 = x.astype(_F32, copy=False)
    c = a["const"]
    y = f(c, x32) if a["const_first"] else f(x32, c)
    return y.astype(_F32, copy=False)


def _relu(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    # int64 codes of a wide accumulator stay integers (a float zero would round them to float64)
    return np.maximum(x, 0 if x.dtype.kind == "i" else 0.0)


#: edgeq_expf's constants (firmware/common/edgeq_ops.h): log2(e), ln 2 split in a 16-bit head and its tail, the
#: round-to-nearest-even shifter 1.5 * 2^23, the overflow/underflow limits, and 1/n! for the degree-6 polynomial
_EXP_LOG2E, _EXP_LN2_HI, _EXP_LN2_LO = _F32(1.44269502162933349609375), _F32(0.693145751953125), \
    _F32(1.428606765e-06)
_EXP_SHIFT, _EXP_HI, _EXP_LO = _F32(12582912.0), _F32(88.72283935546875), _F32(-103.972076416015625)
_EXP_POLY = tuple(_F32(c) for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0))


def expf(x: np.ndarray) -> np.ndarray:
    """exp in float32 operations, the numpy twin of ``edgeq_expf`` operation for operation (the MCU firmware has no
    libm; the FPGA's host tail and the emulator use this too): k = rne(x log2 e); r = (x - k ln2_hi) - k ln2_lo;
    p = Horner(r) of the degree-6 Taylor polynomial; y = p 2^k, in two exact-then-rounded steps below 2^-126.
    Within 2^-22 relative of the true exp (tests/test_real_world_ops.py measures it against onnxruntime)."""
    x = np.asarray(x, dtype=_F32)
    with np.errstate(over="ignore", invalid="ignore"):
        k = (x * _EXP_LOG2E + _EXP_SHIFT) - _EXP_SHIFT
        k = np.where((x > _EXP_HI) | (x < _EXP_LO) | np.isnan(x), _F32(0), k)
        r = (x - k * _EXP_LN2_HI) - k * _EXP_LN2_LO
        p = np.full_like(r, _EXP_POLY[0])
        for c in _EXP_POLY[1:]:
            p = p * r + c
        ki = k.astype(np.int32)
        low = ki < -126
        high = ki > 127
        first = np.where(low, ki + 126, np.where(high, ki - 127, ki))
        y = p * np.ldexp(_F32(1), first).astype(_F32)
        y = np.where(low, y * _F32(2.0 ** -126), np.where(high, y * _F32(2.0 ** 127), y)).astype(_F32)
    y = np.where(x > _EXP_HI, _F32(np.inf), np.where(x < _EXP_LO, _F32(0), y))
    return np.where(np.isnan(x), x, y).astype(_F32)


def _exp(x: np.ndarray, minus_one: bool = False) -> np.ndarray:
    e = expf(x)
    return (e - _F32(1)).astype(_F32) if minus_one else e


#: the declared float32 implementation of each activation (Activation layers without an onnxruntime table);
#: leaky_relu, prelu and hard_sigmoid are onnxruntime's arithmetic exactly; the others are built on
#: :func:`expf` in float32 operations that the MCU's C repeats (tanh x = 1 - 2 / (e^2x + 1)); builds report the
#: distance to onnxruntime
ACTIVATIONS = {
    "leaky_relu": lambda x, a: np.where(x >= 0, x, x * _F32(a["alpha"])),
    "prelu": lambda x, a: np.where(x >= 0, x, x * np.asarray(a["slope"], dtype=_F32)),
    "elu": lambda x, a: np.where(x >= 0, x, _F32(a["alpha"]) * _exp(x, minus_one=True)),
    "selu": lambda x, a: np.where(x > 0, _F32(a["gamma"]) * x,
                                  _F32(a["gamma"]) * (_F32(a["alpha"]) * _exp(x, minus_one=True))),
    "sigmoid": lambda x, a: _F32(1) / (_F32(1) + _exp(-x)),
    "hard_sigmoid": lambda x, a: np.clip(_F32(a["alpha"]) * x + _F32(a["beta"]), _F32(0), _F32(1)),
    "tanh": lambda x, a: _F32(1) - _F32(2) / (_exp(x + x) + _F32(1)),
}


def _activation(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    """onnxruntime's outputs tabulated on the input grid (exact), else the declared numpy implementation."""
    a = layer.attrs
    x = x.astype(_F32, copy=False)
    if "table_x" in a:
        tx, ty = a["table_x"], a["table_y"]
        i = np.clip(np.searchsorted(tx, x), 0, len(tx) - 1)
        hit = tx[i] == x
        if hit.all():
            return ty[i]
        return np.where(hit, ty[i], ACTIVATIONS[a["fn"]](x, a)).astype(_F32)  # pragma: no cover - off the grid
    return ACTIVATIONS[a["fn"]](x, a).astype(_F32, copy=False)


def softmax_geometry(shape: tuple[int, ...], axes: list[int]) -> tuple[int, int, int]:
    """(outer, n, inner) of a softmax over the contiguous per-sample ``axes`` of a tensor of per-sample ``shape``."""
    a0, a1 = min(axes), max(axes) + 1
    if sorted(axes) != list(range(a0, a1)):  # pragma: no cover - ingest emits one axis or a trailing range
        raise EdgeqError(f"softmax over non-contiguous axes {axes}")
    return int(np.prod(shape[:a0], dtype=np.int64)), int(np.prod(shape[a0:a1], dtype=np.int64)), \
        int(np.prod(shape[a1:], dtype=np.int64))


def _softmax(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    """float32, as ``edgeq_softmax`` in C: m = max over the axes (NaN propagates); e = expf(x - m); s = the sum of e
    in index order from +0; y = e / s."""
    outer, n, inner = softmax_geometry(tuple(x.shape[1:]), layer.attrs["axes"])
    v = x.astype(_F32, copy=False).reshape(len(x) * outer, n, inner)
    e = expf(v - v.max(axis=1, keepdims=True))
    s = np.zeros((v.shape[0], 1, inner), dtype=_F32)
    for j in range(n):
        s = s + e[:, j:j + 1]
    return (e / s).astype(_F32, copy=False).reshape(x.shape)


def _clip(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    lo, hi = float(_F32(layer.attrs["lo"])), float(_F32(layer.attrs["hi"]))
    if x.dtype.kind == "i" and storage_dtype(graph.tensors[layer.output].format) is not np.int64:
        x = _f32_values(graph.tensors[layer.inputs[0]].format, x)  # to float32: rounding commutes with the clamp
    if x.dtype.kind == "i":  # int64 codes of a wide fixed-point tensor: the bounds in codes (exact)
        frac = graph.tensors[layer.inputs[0]].format.frac_bits
        big = np.iinfo(np.int64)
        lo_c = big.min if math.ldexp(lo, frac) <= big.min else math.ceil(math.ldexp(lo, frac))
        hi_c = big.max if math.ldexp(hi, frac) >= big.max else math.floor(math.ldexp(hi, frac))
        return np.clip(x, lo_c, hi_c)
    return np.clip(x, lo, hi)


def _add(graph: Graph, layer: Layer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    fmt = graph.tensors[layer.output].format
    if isinstance(fmt, Float16):  # one fp16 rounding of the exact sum
        return Float16.round(a.astype(np.float64) + b.astype(np.float64)).astype(_F32)
    if isinstance(fmt, Float32):
        return a.astype(_F32, copy=False) + b.astype(_F32, copy=False)
    if isinstance(fmt, Int):  # same-scale integer grids: the codes add exactly (ingest's _same_scale_ints)
        s = float(fmt.scale[0])
        return fmt.decode(np.rint(a.astype(np.float64) / s) + np.rint(b.astype(np.float64) / s))
    return a.astype(np.float64) + b.astype(np.float64)  # exact: both on fixed-point grids that fit float64


def _reshape(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    return x.reshape((x.shape[0],) + tuple(layer.attrs["shape"]))


def _transpose(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    return np.transpose(x, [0] + [p + 1 for p in layer.attrs["perm"]])


# ------------------------------------------------------------------------------------------------
# Pooling
# ------------------------------------------------------------------------------------------------


def _pool_windows(x: np.ndarray, attrs: dict[str, Any], fill: float):
    """(N, C, OH, OW, kh, kw) windows of the padded input, ONNX pooling geometry."""
    kh, kw = attrs["kernel"]
    sh, sw = attrs["strides"]
    pt, pl, pb, pr = attrs["pads"]
    h, w = x.shape[2] + pt + pb, x.shape[3] + pl + pr
    if attrs.get("ceil_mode"):
        oh = -(-(h - kh) // sh) + 1
        ow = -(-(w - kw) // sw) + 1
        # ONNX: the last window must start inside the (left-)padded input.
        if (oh - 1) * sh >= x.shape[2] + pt:
            oh -= 1
        if (ow - 1) * sw >= x.shape[3] + pl:
            ow -= 1
    else:
        oh = (h - kh) // sh + 1
        ow = (w - kw) // sw + 1
    extra_b = max(0, (oh - 1) * sh + kh - h)
    extra_r = max(0, (ow - 1) * sw + kw - w)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb + extra_b), (pl, pr + extra_r)), constant_values=fill)
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]
    return win, (pt, pl, pb, pr, extra_b, extra_r)


def _maxpool(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    a = layer.attrs
    win, _ = _pool_windows(x, a, np.iinfo(x.dtype).min if x.dtype.kind == "i" else -np.inf)
    # Element-wise maximum over the kernel offsets: strided views, no window copies.
    out = None
    for i in range(win.shape[4]):
        for j in range(win.shape[5]):
            out = win[..., i, j].copy() if out is None else np.maximum(out, win[..., i, j], out=out)
    return out


def _avgpool(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    a = layer.attrs
    if layer.contract.engine == "fp32":  # MCU: a float32 window sum in row-major order, then one division
        return _avgpool_sequential(a, x)
    if a.get("global"):
        s = x.astype(np.float64).sum(axis=(2, 3), keepdims=True)
        count = np.float64(x.shape[2] * x.shape[3])
        return s.astype(_F32) / _F32(count)
    win, _ = _pool_windows(x.astype(np.float64), a, 0.0)
    s = win.sum(axis=(4, 5))  # exact: the inputs are on fixed-point grids that fit float64
    return s.astype(_F32) / pool_counts(a, x.shape[2:])


def _global_pool_attrs(a: dict[str, Any], hw: tuple[int, ...]) -> dict[str, Any]:
    if a.get("global"):
        return {"kernel": tuple(hw), "strides": (1, 1), "pads": (0, 0, 0, 0), "count_include_pad": True}
    return a


def pool_output_hw(a: dict[str, Any], in_hw: tuple[int, int]) -> tuple[int, int]:
    """(OH, OW) of a 2-D pool with the emulator's (onnxruntime's) geometry."""
    win, _ = _pool_windows(np.zeros((1, 1) + tuple(in_hw), dtype=_F32), a, 0.0)
    return int(win.shape[2]), int(win.shape[3])


def pool_counts(a: dict[str, Any], in_hw: tuple[int, int]) -> np.ndarray:
    """(OH, OW) float32 divisors of an AvgPool (ONNX: count_include_pad, ceil_mode); also rendered into C."""
    a = _global_pool_attrs(a, in_hw)
    ones = np.ones((1, 1) + tuple(in_hw), dtype=_F32)
    win, (pt, pl, pb, pr, eb, er) = _pool_windows(ones, a, 0.0)
    if a["count_include_pad"]:  # padding counts, the ceil_mode overhang does not
        inner = np.pad(np.ones((1, 1) + tuple(in_hw)), ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=1.0)
        inner = np.pad(inner, ((0, 0), (0, 0), (0, eb), (0, er)))
        kh, kw = a["kernel"]
        sh, sw = a["strides"]
        oh, ow = win.shape[2], win.shape[3]
        win = sliding_window_view(inner, (kh, kw), axis=(2, 3))
        win = win[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]
    return win.sum(axis=(4, 5))[0, 0].astype(_F32)


def _avgpool_sequential(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
    a = _global_pool_attrs(a, x.shape[2:])
    win, _ = _pool_windows(x.astype(_F32, copy=False), a, 0.0)
    s = np.zeros(win.shape[:4], dtype=_F32)
    for i in range(win.shape[4]):
        for j in range(win.shape[5]):
            s += win[..., i, j]  # float32, one rounding per add (padded taps add +0: no change)
    return s / pool_counts(a, x.shape[2:])


# ------------------------------------------------------------------------------------------------
# Exact multiply-accumulate layers
# ------------------------------------------------------------------------------------------------

_ENGINE_DTYPE = {"float32 BLAS": np.float32, "float64 BLAS": np.float64, "int64": np.int64}
_CHUNK_ELEMS = 1 << 24  # bound the im2col buffer (elements) per batch chunk


def _codes(values: np.ndarray, lsb: np.ndarray, dtype) -> np.ndarray:
    """Exact integer codes of grid values, in the engine's dtype."""
    if dtype is _F32 and is_power_of_two(lsb) and np.all((lsb > 2.0**-100) & (lsb < 2.0**100)):
        return values.astype(_F32, copy=False) * (1.0 / lsb).astype(_F32)  # exact: power-of-two scaling
    return np.rint(values.astype(np.float64) / lsb).astype(dtype)


def grid_codes(fmt, values: np.ndarray, lsb: np.ndarray, dtype) -> np.ndarray:
    """Exact integer codes of a MAC operand. A minifloat with a float32 scale is recovered on its grid
    (``MiniFloat.step_codes``): ``values / lsb`` alone would be off for codes beyond ~2^22."""
    if isinstance(fmt, MiniFloat) and not is_power_of_two(lsb):
        return fmt.step_codes(values).astype(dtype)
    return _codes(values, lsb, dtype)


def rescale_factor(x_lsb: np.ndarray, w_lsb: np.ndarray) -> np.ndarray:
    """The declared rescale of a MAC with non-power-of-two scales: ``m = f32(lsb_x * lsb_w)``, one rounding
    (the float64 product of two float32 scales times powers of two is exact)."""
    return (np.asarray(x_lsb, dtype=np.float64) * np.asarray(w_lsb, dtype=np.float64)).astype(_F32)


def mac_rescale(acc: np.ndarray, m: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The one implementation of the rescale contract: ``y = f32(f32(f64(A)) * m)``, then ``+ b`` in float32.

    ``A`` is the exact integer accumulator. The FPGA kernel ``edgeq_rescale`` (hls_templates/edgeq_minifloat.h)
    is the same three IEEE operations: ``(float)(double)A``, one float32 multiply, one float32 add."""
    y = np.asarray(acc).astype(np.float64).astype(_F32) * np.asarray(m, dtype=_F32)
    if bias is not None:
        y = y + np.asarray(bias, dtype=_F32)
    return y


def _mac_output(graph: Graph, layer: Layer, acc: np.ndarray, out_lsb: np.ndarray, bias_codes, x_lsb, w_lsb_out):
    fmt = graph.tensors[layer.output].format
    if isinstance(fmt, Float32):
        shape = w_lsb_out.shape if w_lsb_out.ndim else ()
        bias = layer.bias.reshape(shape) if layer.bias is not None else None
        return mac_rescale(acc, rescale_factor(x_lsb, w_lsb_out), bias).astype(np.float64)
    if bias_codes is not None:
        acc = acc + bias_codes
    if storage_dtype(fmt) is np.int64:  # wide accumulator: keep exact codes in units of the format's lsb
        # (a float64 BLAS sum is an exact integer below 2^53: cast it, so the result is codes, not values)
        return acc.astype(np.int64) * np.rint(out_lsb / math.ldexp(1.0, -fmt.frac_bits)).astype(np.int64)
    if acc.dtype == _F32 and storage_dtype(fmt) is _F32 and is_power_of_two(out_lsb):
        return acc * out_lsb.astype(_F32)  # exact: integer codes times a power of two, within 24 bits
    return acc.astype(np.float64) * out_lsb


def _lsbs(graph: Graph, layer: Layer):
    # an MCU program's XNOR layer reads a float16 tensor holding its input grid's values
    x_lsb, _ = grid_of(layer.attrs.get("input_grid") or graph.tensors[layer.inputs[0]].format)
    w_lsb, _ = grid_of(layer.weight_format)
    return np.asarray(x_lsb, dtype=np.float64), np.broadcast_to(np.asarray(w_lsb, dtype=np.float64), layer.weight.shape)


def _values_domain(graph: Graph, layer: Layer) -> bool:
    """True when the layer may multiply-accumulate the float32 *values* directly: the result is an
    exact FixedPoint of at most 24 bits (engine float32) and every value is an integer times a power
    of two well inside float32's exponent range. Then every product and partial sum is exactly a
    float32 (the same bound as for the codes, scaled by a power of two), so BLAS is exact in any order."""
    fmt = graph.tensors[layer.output].format
    if layer.contract.engine != "float32 BLAS" or not isinstance(fmt, FixedPoint) or fmt.width > 24:
        return False
    x_lsb, w_lsb = _lsbs(graph, layer)
    lo = float(x_lsb) * float(w_lsb.min())
    return is_power_of_two(x_lsb) and is_power_of_two(w_lsb) and lo >= 2.0**-100 and fmt.max < 2.0**100


def _weights_f32(layer: Layer) -> np.ndarray:
    w = layer.__dict__.get("_w_f32")
    if w is None:
        w = layer.__dict__["_w_f32"] = np.ascontiguousarray(layer.weight, dtype=_F32)
    return w


def _dense(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    if layer.contract.engine.startswith("fp16"):
        return _fp16_dense(layer, x)
    if _values_domain(graph, layer):
        y = x.astype(_F32, copy=False) @ _weights_f32(layer)
        return y + layer.bias.astype(_F32) if layer.bias is not None else y
    dtype = _ENGINE_DTYPE[layer.contract.engine]
    x_lsb, w_lsb = _lsbs(graph, layer)
    xc = grid_codes(graph.tensors[layer.inputs[0]].format, x, x_lsb, dtype)
    wc = grid_codes(layer.weight_format, layer.weight, w_lsb, dtype)
    acc = xc @ wc
    w_lsb_out = w_lsb[0]  # per output column
    out_lsb = float(x_lsb) * w_lsb_out
    bias_codes = None
    if layer.bias is not None and not isinstance(graph.tensors[layer.output].format, Float32):
        bias_codes = _codes(layer.bias.astype(np.float64), out_lsb, dtype)
    return _mac_output(graph, layer, acc, out_lsb, bias_codes, x_lsb, w_lsb_out)


def _conv(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    a = layer.attrs
    if layer.contract.engine.startswith("fp16"):
        return _fp16_conv(layer, x)
    if _values_domain(graph, layer):
        y = _ort_conv(layer, _weights_f32(layer), x, key="_ort_values")
        if layer.bias is not None:
            y += layer.bias.astype(_F32).reshape(-1, 1, 1)
        return y
    dtype = _ENGINE_DTYPE[layer.contract.engine]
    x_lsb, w_lsb = _lsbs(graph, layer)
    xc = grid_codes(graph.tensors[layer.inputs[0]].format, x, x_lsb, dtype)
    wc = grid_codes(layer.weight_format, layer.weight, w_lsb, dtype)
    cout = wc.shape[0]
    out = _ort_conv(layer, wc, xc) if dtype is np.float32 else _im2col_conv(xc, wc, a, dtype)
    w_lsb_out = w_lsb[:, 0, 0, 0].reshape(cout, 1, 1)
    out_lsb = float(x_lsb) * w_lsb_out
    bias_codes = None
    if layer.bias is not None and not isinstance(graph.tensors[layer.output].format, Float32):
        bias_codes = _codes(layer.bias.astype(np.float64).reshape(cout, 1, 1), out_lsb, dtype)
    return _mac_output(graph, layer, out, out_lsb, bias_codes, x_lsb, w_lsb_out)


def _im2col_conv(xc: np.ndarray, wc: np.ndarray, a: dict[str, Any], dtype) -> np.ndarray:
    """Exact integer convolution as im2col + matmul, in batch chunks of bounded memory."""
    cout, cin_g, kh, kw = wc.shape
    g = a["group"]
    sh, sw = a["strides"]
    dh, dw = a["dilations"]
    pt, pl, pb, pr = a["pads"]
    xp = np.pad(xc, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    oh = (xp.shape[2] - ekh) // sh + 1
    ow = (xp.shape[3] - ekw) // sw + 1
    win = sliding_window_view(xp, (ekh, ekw), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :oh, :ow]
    n = xc.shape[0]
    out = np.empty((n, cout, oh, ow), dtype=dtype)
    cout_g = cout // g
    per_sample = oh * ow * cin_g * kh * kw
    step = max(1, _CHUNK_ELEMS // max(1, per_sample))
    for gi in range(g):
        wg = wc[gi * cout_g : (gi + 1) * cout_g].reshape(cout_g, -1).T
        for s in range(0, n, step):
            cols = win[s : s + step, gi * cin_g : (gi + 1) * cin_g]  # (b, C, OH, OW, kh, kw)
            cols = np.ascontiguousarray(cols.transpose(0, 2, 3, 1, 4, 5)).reshape(-1, cin_g * kh * kw)
            res = (cols @ wg).reshape(-1, oh, ow, cout_g).transpose(0, 3, 1, 2)
            out[s : s + step, gi * cout_g : (gi + 1) * cout_g] = res
    return out


def _ort_conv(layer: Layer, wc: np.ndarray, xc: np.ndarray, key: str = "_ort_session") -> np.ndarray:
    """Integer codes convolved by onnxruntime's float32 MLAS kernels.

    Exact: the contract's engine is "float32 BLAS" only when every partial sum of integer codes
    is below 2**24, where float32 multiply-adds of integers are exact in any order or fusion.
    """
    sess = layer.__dict__.get(key)
    if sess is None:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        a = layer.attrs
        node = helper.make_node("Conv", ["x", "w"], ["y"], strides=a["strides"], pads=a["pads"],
                                dilations=a["dilations"], group=a["group"])
        c = wc.shape[1] * a["group"]
        graph = helper.make_graph(
            [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, "h", "w"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.ascontiguousarray(wc, dtype=np.float32), "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        layer.__dict__[key] = sess
    return sess.run(None, {"x": np.ascontiguousarray(xc, dtype=np.float32)})[0]


# ------------------------------------------------------------------------------------------------
# FP16 multiply-accumulate (MCU graphs): the contract of backends/mcu/lower.py, bit for bit
# ------------------------------------------------------------------------------------------------


def _f16(v: np.ndarray) -> np.ndarray:
    return Float16.round(v).astype(np.float64)


def _fp16_step(acc: np.ndarray, w: np.ndarray, x: np.ndarray, fused: bool) -> np.ndarray:
    """One MAC of the contract. Products of float16 values are exact in float64, and so is the sum
    ``w*x + acc`` whenever the result is finite in float16, so one cast rounds it exactly once."""
    p = w * x
    return _f16(p + acc) if fused else _f16(_f16(p) + acc)


def _exact_columns(xv: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per output column of ``xv @ w`` (xv: (M, K), w: (K, N) float16 values): True when *every*
    partial sum, in any order and lane split, is exactly a float16. Then the contract's result is the
    exact sum. Proof: all values are multiples of the power of two L = lsb(x)*lsb(w); a partial sum is
    bounded by sum |x||w|; multiples of L up to 2048*L (and <= 65504) are float16 when L >= 2**-24."""
    def lsb(v: np.ndarray) -> float:
        n = np.abs(v[v != 0] * 2.0**24).astype(np.int64)  # float16 values are multiples of 2**-24
        return math.ldexp(float(np.min(n & -n)), -24) if n.size else 1.0

    if not (np.all(np.isfinite(xv)) and np.all(np.isfinite(w))):
        return np.zeros(w.shape[1], dtype=bool)
    unit = lsb(xv) * lsb(w)
    if unit < 2.0**-24:
        return np.zeros(w.shape[1], dtype=bool)
    bound = np.abs(xv) @ np.abs(w)  # float64: exact enough (terms below 2**40, relative error ~K*2**-53)
    return np.all(bound <= min(2048.0 * unit, 65504.0) * (1 - 1e-9), axis=0)


def _fp16_lanes(acc_lanes: list[np.ndarray]) -> np.ndarray:
    """Sum the SIMD lanes in fp16, lane 0 first."""
    acc = acc_lanes[0]
    for lane in acc_lanes[1:]:
        acc = _f16(acc + lane)
    return acc


def _fp16_dense(layer: Layer, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):  # overflow to inf and NaN are part of the fp16 contract
        return _fp16_dense_impl(layer, x)


def _fp16_dense_impl(layer: Layer, x: np.ndarray) -> np.ndarray:
    c = layer.contract
    lanes = int(layer.attrs.get("lanes", 1))
    xv = x.astype(np.float64)
    w = layer.weight.astype(np.float64)
    exact = _exact_columns(xv, w)
    out = xv @ w + 0.0  # the exact sums where proven exact (+0.0: a sequential sum from +0 is never -0)
    todo = np.flatnonzero(~exact)
    if todo.size:
        wt = w[:, todo]
        lanes_acc = [np.zeros((xv.shape[0], todo.size)) for _ in range(lanes)]
        k_pad = -(-w.shape[0] // lanes) * lanes
        for k in range(k_pad):
            if k < w.shape[0]:
                acc = lanes_acc[k % lanes]
                lanes_acc[k % lanes] = _fp16_step(acc, wt[k][None, :], xv[:, k][:, None], c.fused)
            else:  # the zero padding of K: fma(+0, +0, acc)
                lanes_acc[k % lanes] = _fp16_step(lanes_acc[k % lanes], 0.0, 0.0, c.fused)
        out[:, todo] = _fp16_lanes(lanes_acc)
    if layer.bias is not None:
        out = _f16(out + layer.bias.astype(np.float64)[None, :])
    return out.astype(_F32)


def _fp16_conv(layer: Layer, x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):  # overflow to inf and NaN are part of the fp16 contract
        return _fp16_conv_batched(layer, x)


def _fp16_conv_batched(layer: Layer, x: np.ndarray) -> np.ndarray:
    per_sample = int(np.prod(x.shape[1:])) * layer.weight[0].size
    step = max(1, _CHUNK_ELEMS // 2 // max(1, per_sample))  # bound the (samples*pixels, K) columns
    if x.shape[0] > step:
        return np.concatenate([_fp16_conv_chunk(layer, x[i : i + step]) for i in range(0, x.shape[0], step)])
    return _fp16_conv_chunk(layer, x)


def _fp16_conv_chunk(layer: Layer, x: np.ndarray) -> np.ndarray:
    a = layer.attrs
    c = layer.contract
    lanes = int(a.get("lanes", 1))
    w = layer.weight.astype(np.float64)
    cout, cin_g, kh, kw = w.shape
    g = a["group"]
    sh, sw = a["strides"]
    dh, dw = a["dilations"]
    pt, pl, pb, pr = a["pads"]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh = (xp.shape[2] - ((kh - 1) * dh + 1)) // sh + 1
    ow = (xp.shape[3] - ((kw - 1) * dw + 1)) // sw + 1
    n = x.shape[0]
    cout_g = cout // g
    out = np.empty((n, cout, oh, ow))

    def tap(ci: int, ky: int, kx: int) -> np.ndarray:  # (n, oh, ow) input values under tap (ky, kx)
        return xp[:, ci, ky * dh : ky * dh + (oh - 1) * sh + 1 : sh, kx * dw : kx * dw + (ow - 1) * sw + 1 : sw]

    for gi in range(g):
        cos = slice(gi * cout_g, (gi + 1) * cout_g)
        wg = w[cos].reshape(cout_g, -1)  # (cout_g, K) in (ci, ky, kx) order
        taps = [(gi * cin_g + ci, ky, kx) for ci in range(cin_g) for ky in range(kh) for kx in range(kw)]
        cols = np.stack([tap(*t) for t in taps], axis=-1).reshape(-1, len(taps))  # (n*oh*ow, K)
        exact = _exact_columns(cols, wg.T)
        res = (cols @ wg.T + 0.0).reshape(n, oh, ow, cout_g).transpose(0, 3, 1, 2)
        todo = np.flatnonzero(~exact)
        if todo.size:
            wt = wg[todo]  # (m, K)
            lanes_acc = [np.zeros((n, todo.size, oh, ow)) for _ in range(lanes)]
            k_pad = -(-len(taps) // lanes) * lanes
            for k in range(k_pad):
                if k < len(taps):
                    xk = tap(*taps[k])[:, None]
                    lanes_acc[k % lanes] = _fp16_step(lanes_acc[k % lanes], wt[:, k][None, :, None, None], xk,
                                                      c.fused)
                else:
                    lanes_acc[k % lanes] = _fp16_step(lanes_acc[k % lanes], 0.0, 0.0, c.fused)
            res[:, todo] = _fp16_lanes(lanes_acc)
        out[:, cos] = res
    if layer.bias is not None:
        out = _f16(out + layer.bias.astype(np.float64).reshape(1, -1, 1, 1))
    return out.astype(_F32)


def _threshold(graph: Graph, layer: Layer, x: np.ndarray) -> np.ndarray:
    """A folded "glue -> bipolar quantizer" of an MCU program: high where direction * x >= threshold, else low,
    per channel (axis 0 of a sample); x holds exact integers times a power of two, so the compare is exact."""
    a = layer.attrs
    view = (-1,) + (1,) * (x.ndim - 2)
    d = np.asarray(a["direction"], dtype=_F32).reshape(view)
    t = np.asarray(a["threshold"], dtype=_F32).reshape(view)
    return np.where(x.astype(_F32) * d >= t, _F32(a["high"]), _F32(a["low"]))


_OPS = {
    "Threshold": _threshold,
    "Quantize": _quantize,
    "Cast": _cast,
    "Trunc": _trunc,
    "BatchNorm": _batchnorm,
    "FloatOp": _floatop,
    "Relu": _relu,
    "Activation": _activation,
    "Softmax": _softmax,
    "Clip": _clip,
    "Add": _add,
    "MaxPool": _maxpool,
    "AvgPool": _avgpool,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Conv2d": _conv,
    "Dense": _dense,
}

__all__ = ["batchnorm_coeffs", "emulate", "run_chain", "run_layer", "step"]
