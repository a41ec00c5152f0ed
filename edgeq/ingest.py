"""QONNX ingest: read a model, clean it with qonnx, and lower it into the edgeq IR.

``load(path_or_ModelWrapper) -> Graph``. Every weight, bias and activation tensor of the result
carries its NumFormat. Anything that cannot be lowered raises one :class:`EdgeqError` naming the
node, its op type and what is supported.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeq import ops
from edgeq.errors import EdgeqError
from edgeq.formats import (
    Binary,
    FixedPoint,
    Float32,
    Int,
    MiniFloat,
    NumFormat,
    csd_digits,
    from_finn_datatype,
    grid_values,
    parse_format,
    rounding_mode,
)
from edgeq.ir import Contract, Graph, Layer, Tensor

QUANT_OPS = ("Quant", "BipolarQuant", "FloatQuant")
#: op types qonnx must never constant-fold: folding would erase the weight formats.
PRESERVED_OPS = ["Quant", "BipolarQuant", "FloatQuant", "Trunc", "QuantizeLinear", "DequantizeLinear"]
QONNX_DOMAIN = "qonnx.custom_op.general"

_FLOAT_FNS = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Max": "max", "Min": "min"}


# ---------------------------------------------------------------------------------------------
# Reading and cleaning
# ---------------------------------------------------------------------------------------------


def _read(model: Any):
    """Return a qonnx ModelWrapper, turning every way a file can be bad into one clear line."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper

    if isinstance(model, ModelWrapper):
        return model, getattr(model, "_edgeq_path", None)
    if isinstance(model, onnx.ModelProto):
        return _wrap(model), None
    path = Path(os.fspath(model))
    if not path.exists():
        raise EdgeqError(f"{path}: no such file; pass the path of a QONNX .onnx model")
    if path.is_dir():
        raise EdgeqError(f"{path}: is a directory; pass the path of a QONNX .onnx model")
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeqError(
            f"{path}: not a readable ONNX model ({reason}); re-export it with edgeq.export()"
        ) from None
    if len(proto.graph.node) == 0 or len(proto.graph.input) == 0 or len(proto.graph.output) == 0:
        raise EdgeqError(f"{path}: ONNX model has no graph (empty or truncated file); re-export it")
    return _wrap(proto), str(path)


def _wrap(proto):
    """qonnx's ModelWrapper, without its warning about converting FINN-era domains (QKeras/FINN exports)."""
    import warnings

    from qonnx.core.modelwrapper import ModelWrapper

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some old-style domain attributes")
        return ModelWrapper(proto)


def _cleanup(mw, where: str):
    """qonnx cleanup that keeps every quantizer, including FloatQuant on weights."""
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import (
        GiveUniqueParameterTensors,
        RemoveStaticGraphInputs,
        RemoveUnusedTensors,
        SortGraph,
    )
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.quant_constant_folding import FoldTransposeIntoQuantInit

    for node in mw.graph.node:
        if node.op_type in QUANT_OPS + ("Trunc",):
            node.domain = QONNX_DOMAIN
    # Name unnamed nodes only: users know their nodes by the names they exported.
    seen: set[str] = set()
    for i, node in enumerate(mw.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    inp = mw.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    for k, d in enumerate(dims):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            if k == 0:
                d.Clear()
                d.dim_value = 1  # the batch axis: edgeq runs per-sample shapes
            else:
                raise EdgeqError(
                    f"{where}: input '{inp.name}' has a dynamic dimension {k} ('{d.dim_param}'); "
                    "export with a fixed input shape"
                )
    try:
        # One deep copy, then in place, and qonnx's own cleanup (the same passes plus input sorting) once at the
        # end: ModelWrapper.transform copies the model and runs five cleanup passes after *every* pass by default,
        # which made ingest of a small graph cost ~40 ms (the fuzzer's profile). No InferDataTypes: the lowering
        # reads formats from the quantizer nodes themselves, never qonnx's datatype annotations.
        for k, t in enumerate((
            InferShapes(),
            GiveUniqueParameterTensors(),
            FoldConstants(exclude_op_types=PRESERVED_OPS),
            FoldTransposeIntoQuantInit(),
            RemoveUnusedTensors(),
            RemoveStaticGraphInputs(),
            SortGraph(),
            InferShapes(),
        )):
            mw = mw.transform(t, make_deepcopy=k == 0, cleanup=False)
        mw = mw.cleanup()
    except EdgeqError:
        raise
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeqError(f"{where}: qonnx could not clean this model ({reason}); is it a valid QONNX export?") from None
    return mw


# ---------------------------------------------------------------------------------------------
# Formats of quantizer nodes
# ---------------------------------------------------------------------------------------------


def _const(mw, name: str, node, what: str) -> np.ndarray:
    v = mw.get_initializer(name)
    if v is None:
        raise EdgeqError(
            f"node '{node.name}' ({node.op_type}): {what} '{name}' is not a constant; "
            "edgeq needs static quantizer parameters"
        )
    return np.asarray(v)


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _param_shape(a: np.ndarray) -> tuple[int, ...]:
    return tuple(a.shape) if a.size > 1 else ()


def quantizer_format(mw, node) -> NumFormat:
    """The NumFormat a QONNX quantizer node (Quant, BipolarQuant, FloatQuant) produces."""
    try:
        if node.op_type == "Quant":
            scale = _const(mw, node.input[1], node, "scale")
            zp = _const(mw, node.input[2], node, "zero point")
            bw = _const(mw, node.input[3], node, "bit width")
            if bw.size != 1 or float(bw) != int(bw) or int(bw) < 1:
                raise EdgeqError(f"node '{node.name}' (Quant): bit width {bw.ravel()[:4]} is not a positive integer")
            shape = _param_shape(scale) if scale.size >= zp.size else _param_shape(zp)
            return Int(
                int(bw),
                signed=bool(_attr(node, "signed", 1)),
                narrow=bool(_attr(node, "narrow", 0)),
                scale=tuple(np.broadcast_to(scale, shape or scale.shape).ravel()) if shape else scale.ravel(),
                zero_point=tuple(np.broadcast_to(zp, shape).ravel()) if shape else zp.ravel(),
                rounding=_attr(node, "rounding_mode", "ROUND"),
                param_shape=shape,
            )
        if node.op_type == "BipolarQuant":
            scale = _const(mw, node.input[1], node, "scale")
            return Binary(scale=scale.ravel(), param_shape=_param_shape(scale))
        if node.op_type == "FloatQuant":
            scale = _const(mw, node.input[1], node, "scale")
            eb = float(_const(mw, node.input[2], node, "exponent bit width"))
            mb = float(_const(mw, node.input[3], node, "mantissa bit width"))
            bias = float(_const(mw, node.input[4], node, "exponent bias"))
            max_val = float(_const(mw, node.input[5], node, "max_val")) if len(node.input) > 5 else None
            if eb < 1 or eb != int(eb):
                raise EdgeqError(
                    f"node '{node.name}' (FloatQuant): exponent bit width {eb:g} must be an integer >= 1"
                )
            fmt = MiniFloat(
                int(eb),
                int(mb),
                bias=bias,
                has_subnormal=True,  # QONNX's FloatQuant executes subnormals whatever the attribute says
                has_inf=bool(_attr(node, "has_inf", 0)),
                has_nan=bool(_attr(node, "has_nan", 0)),
                saturating=bool(_attr(node, "saturation", 1)),
                rounding=_attr(node, "rounding_mode", "ROUND"),
                max_val=max_val,
                scale=scale.ravel(),
                param_shape=_param_shape(scale),
            )
            _check_floatquant_max(node, fmt, max_val)
            return fmt
    except EdgeqError:
        raise
    except ValueError as e:
        raise EdgeqError(f"node '{node.name}' ({node.op_type}): {e}") from None
    raise AssertionError(node.op_type)  # pragma: no cover


def _check_floatquant_max(node, fmt: MiniFloat, max_val: float | None) -> None:
    """QONNX executes FloatQuant with every code finite: it clips at min(full range, max_val) whatever has_inf and
    has_nan say (they only choose what a non-saturating overflow becomes). edgeq's MiniFloat reserves the IEEE/OCP
    codes for inf/nan, so it is the same quantizer only when max_val is at most the largest non-reserved value.
    And max_val must be a value of the format: QONNX clips to it exactly, so an off-grid max_val leaves the grid."""
    qonnx_max = fmt.full_max if max_val is None else min(fmt.full_max, max_val)
    if qonnx_max != fmt.max:
        raise EdgeqError(
            f"node '{node.name}' (FloatQuant): QONNX clips at {qonnx_max:g} (all codes finite), but with "
            f"has_inf={int(fmt.has_inf)}/has_nan={int(fmt.has_nan)} the largest value of {fmt} is {fmt.max:g}; "
            f"export max_val <= {fmt.max:g} (Brevitas' OCP/IEEE minifloats do)")
    step = math.ldexp(1.0, max(math.frexp(qonnx_max)[1] - 1, fmt.min_normal_exponent) - fmt.mantissa_bits)
    if qonnx_max / step != int(qonnx_max / step):
        raise EdgeqError(f"node '{node.name}' (FloatQuant): max_val {qonnx_max!r} is not a value of {fmt}; QONNX "
                         "clips to it exactly, which leaves the minifloat grid; export a representable max_val")


# ---------------------------------------------------------------------------------------------
# Grids: exact integer views of quantized values (shared with the emulator)
# ---------------------------------------------------------------------------------------------


def grid_of(fmt: NumFormat) -> tuple[np.ndarray, int] | None:
    """(lsb, max |code|) such that every value of ``fmt`` is ``code * lsb`` exactly, or None.

    ``lsb`` is per tensor (0-d) or per channel (broadcastable over a per-sample tensor with the
    channel first). Minifloats decode to fixed point with the smallest subnormal step as lsb.
    """
    if isinstance(fmt, FixedPoint):
        return np.asarray(fmt.eps), max(-fmt.code_min, fmt.code_max)
    if isinstance(fmt, Int):
        zmax = max(abs(z) for z in fmt.zero_point)
        if any(z != int(z) for z in fmt.zero_point):
            return None
        lsb = np.asarray(fmt.scale, dtype=np.float64)
        return _channel_view(lsb, fmt.param_shape), int(max(-fmt.code_min, fmt.code_max) + zmax)
    if isinstance(fmt, Binary):
        return _channel_view(np.asarray(fmt.scale, dtype=np.float64), fmt.param_shape), 1
    if isinstance(fmt, MiniFloat):
        step = math.ldexp(1.0, fmt.min_normal_exponent - fmt.mantissa_bits)
        lsb = np.asarray(fmt.scale, dtype=np.float64) * step
        return _channel_view(lsb, fmt.param_shape), int(fmt.max / step)
    return None


def exact_fixed(fmt: NumFormat) -> FixedPoint | None:
    """The FixedPoint holding every value of ``fmt`` exactly (a per-tensor power-of-two grid), or None."""
    if isinstance(fmt, FixedPoint):
        return fmt
    if isinstance(fmt, Int) and fmt.as_fixed() is not None:  # e.g. int8 * 2^-7 is exactly ap_fixed<8,1>
        fx = fmt.as_fixed()
        return FixedPoint(fx.width, fx.int_bits, fx.signed)
    g = grid_of(fmt)
    if g is None or g[0].size != 1 or not is_power_of_two(g[0]):
        return None
    frac = 1 - int(np.frexp(float(g[0]))[1])
    width = _bits_for(g[1])
    return FixedPoint(width, width - frac, True)


def _channel_view(a: np.ndarray, param_shape: tuple[int, ...]) -> np.ndarray:
    if a.size == 1:
        return a.reshape(())
    # QONNX parameter shapes include the batch axis for activations: (1, C, 1, 1) -> (C, 1, 1).
    shape = param_shape[1:] if len(param_shape) >= 2 and param_shape[0] == 1 else param_shape
    return a.reshape(shape)


def is_power_of_two(a: np.ndarray) -> bool:
    m, _ = np.frexp(np.asarray(a, dtype=np.float64))
    return bool(np.all(m == 0.5))


def mac_engine(bound: float) -> str | None:
    """How to accumulate integer codes exactly when every partial sum is at most ``bound`` in size.

    float32 represents every integer up to 2**24 and float64 up to 2**53, so BLAS in any order or
    fusion is exact below those bounds; int64 up to 2**62 (numpy integer matmul, slow). None beyond.
    """
    if bound <= 2**24:
        return "float32 BLAS"
    if bound <= 2**53:
        return "float64 BLAS"
    if bound <= 2**62:
        return "int64"
    return None


def _bits_for(bound: float) -> int:
    """Two's-complement width holding every integer in [-bound, bound]."""
    return max(1, int(math.ceil(math.log2(bound + 1))) + 1) if bound > 0 else 1


# ---------------------------------------------------------------------------------------------
# Lowering
# ---------------------------------------------------------------------------------------------


class _Lowering:
    def __init__(self, mw, where: str, meta: dict[str, Any] | None = None, typed: NumFormat | None = None):
        self.mw = mw
        self.typed = typed
        self.where = where
        self.meta = meta or {}
        # quantized constant -> the initializer it came from (metadata names layers by their weight initializer)
        self.qsource: dict[str, str] = {}
        self.tensors: dict[str, Tensor] = {}
        self.layers: list[Layer] = []
        self.alias: dict[str, str] = {}
        # quantized constants: tensor name -> (values float64, format)
        self.qconst: dict[str, tuple[np.ndarray, NumFormat]] = {}
        # tensors that may hold inf/NaN: a non-saturating minifloat's output and everything computed from it
        # (an integer quantizer keeps NaN; only a bipolar one maps every value to +-1)
        self.nonfinite: set[str] = set()

    # -- helpers -----------------------------------------------------------------------------
    def name(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def shape(self, t: str) -> tuple[int, ...]:
        s = self.mw.get_tensor_shape(t)
        if s is None:
            raise EdgeqError(f"{self.where}: tensor '{t}' has no inferred shape; export with a fixed input shape")
        return tuple(int(d) for d in s[1:])

    def is_dynamic(self, t: str) -> bool:
        return self.name(t) in self.tensors

    def const(self, node, idx: int) -> np.ndarray | None:
        if idx >= len(node.input) or not node.input[idx]:
            return None
        t = node.input[idx]
        if t in self.qconst:
            return self.qconst[t][0]
        v = self.mw.get_initializer(t)
        return None if v is None else np.asarray(v)

    def add(self, node, op: str, inputs: list[str], fmt: NumFormat, **kw) -> Layer:
        out = node.output[0]
        layer = Layer(
            name=_layer_name(node.name), op=op, inputs=[self.name(i) for i in inputs], output=out,
            source=[node.name], **kw,
        )
        self.layers.append(layer)
        self.tensors[out] = Tensor(out, self.shape(out), fmt)
        if _can_be_nonfinite(fmt) or (not isinstance(fmt, Binary) and any(i in self.nonfinite for i in layer.inputs)):
            self.nonfinite.add(out)
        return layer

    def need_dynamic(self, node, idx: int = 0) -> str:
        t = node.input[idx]
        if not self.is_dynamic(t):
            raise EdgeqError(
                f"node '{node.name}' ({node.op_type}): input '{t}' is expected to be an activation, "
                "but it is a constant"
            )
        return self.name(t)

    def weight(self, node, idx: int) -> tuple[np.ndarray, NumFormat]:
        t = node.input[idx]
        if t in self.qconst:
            return self.qconst[t]
        if self.mw.get_initializer(t) is not None:
            raise EdgeqError(
                f"node '{node.name}' ({node.op_type}): weight '{t}' is float32 with no quantizer; "
                "for a float model give every MAC a format with --default-format 'ap_fixed<16,6>' (and "
                "--calibrate X.npy, --precision FILE.toml), or quantize it with Brevitas (QuantConv2d, QuantLinear)"
            )
        raise EdgeqError(
            f"node '{node.name}' ({node.op_type}): weight '{t}' is computed at run time; "
            "edgeq needs constant quantized weights"
        )

    def quantized_input(self, node, t: str) -> NumFormat:
        fmt = self.tensors[t].format
        if grid_of(fmt) is None:
            raise EdgeqError(
                f"node '{node.name}' ({node.op_type}): input '{t}' is {fmt} with no quantizer; "
                "insert a quantizer before it (e.g. Brevitas QuantIdentity)"
            )
        return fmt

    # -- the walk -------------------------------------------------------------------------------
    def run(self) -> Graph:
        mw = self.mw
        g = mw.graph
        init_names = {i.name for i in g.initializer}
        inputs = [i.name for i in g.input if i.name not in init_names]
        for i in inputs:
            self.tensors[i] = Tensor(i, self.shape(i), Float32())
        if self.typed is not None:  # the typed input: a host-side quantizer in front of the graph
            q = f"{inputs[0]}_quantized"
            fmt = self.typed
            self.layers.append(Layer(name="input_quant", op="Quantize", inputs=[inputs[0]], output=q,
                                     source=[f"input {inputs[0]}"], attrs={"typed_input": True},
                                     contract=Contract(rounding=f"once: {getattr(fmt, 'rounding', 'sign')}",
                                                       order="elementwise", engine="format.quantize (float32)")))
            self.tensors[q] = Tensor(q, self.shape(inputs[0]), fmt)
            self.alias[inputs[0]] = q
        for node in g.node:
            self.lower(node)
        outputs = [self.name(o.name) for o in g.output]
        for o in outputs:
            if o not in self.tensors:
                raise EdgeqError(f"{self.where}: output '{o}' does not depend on the input")
        # Drop layers whose outputs are never used (e.g. unused branches).
        graph = Graph(Path(self.where).stem if self.where else "model", inputs, outputs, self.tensors, self.layers,
                      source_path=self.where)
        return graph

    def lower(self, node) -> None:
        op = node.op_type
        dyn = [t for t in node.input if t and self.is_dynamic(t)]
        if op in QUANT_OPS:
            fmt = quantizer_format(self.mw, node)
            if not dyn:
                x = self.const(node, 0)
                if x is None:
                    raise EdgeqError(f"node '{node.name}' ({op}): input '{node.input[0]}' is not available")
                self.qconst[node.output[0]] = (fmt.quantize(np.asarray(x, dtype=np.float32)), fmt)
                self.qsource[node.output[0]] = node.input[0]
                return
            spec = self.meta.get("tensors", {}).get(node.output[0])
            if spec is not None:
                fmt = self.metadata_format(node, fmt, spec)
            self.add(node, "Quantize", [self.need_dynamic(node)], fmt,
                     contract=Contract(rounding=f"once: {getattr(fmt, 'rounding', 'sign')}",
                                       order="elementwise", engine="format.quantize (float32, as QONNX)"))
            return
        if not dyn and node.input[0] in self.qconst and op in ("Transpose", "Identity", "Reshape", "Unsqueeze"):
            self.move_qconst(node)
            return
        if not dyn:
            raise EdgeqError(
                f"node '{node.name}' ({op}): all inputs are constant but qonnx did not fold it; "
                "run the model through qonnx cleanup or remove the node"
            )
        if op == "Trunc":
            self.lower_trunc(node)
            return
        if op in ("Identity", "Dropout"):
            self.alias[node.output[0]] = self.name(node.input[0])
            return
        if op == "Conv":
            self.lower_conv(node)
        elif op in ("MatMul", "Gemm"):
            self.lower_dense(node)
        elif op == "BatchNormalization":
            x = self.need_dynamic(node)
            gamma, beta, mean, var = (self.const(node, i) for i in range(1, 5))
            if any(v is None for v in (gamma, beta, mean, var)):
                raise EdgeqError(f"node '{node.name}' (BatchNormalization): parameters must be constants")
            self.add(node, "BatchNorm", [x], Float32(),
                     attrs={"gamma": gamma.astype(np.float32), "beta": beta.astype(np.float32),
                            "mean": mean.astype(np.float32), "var": var.astype(np.float32),
                            "epsilon": np.float32(_attr(node, "epsilon", 1e-5))},
                     contract=Contract(rounding="float32 after every op", fused=False,
                                       order="inv=1/sqrt(var+eps); s=inv*gamma; b=beta-mean*s; y=x*s+b",
                                       engine="float32 numpy (onnxruntime order)"))
        elif op in _FLOAT_FNS:
            self.lower_binary(node, dyn)
        elif op == "Relu":
            x = self.need_dynamic(node)
            fmt = self.tensors[x].format
            if isinstance(fmt, Binary):  # ReLU of +-s is {0, s}: no longer bipolar (an XNOR kernel would read -s)
                scale = np.asarray(fmt.scale)
                fmt = Int(1, signed=False, scale=scale, param_shape=fmt.param_shape) if np.all(scale > 0) \
                    else Float32()
            self.add(node, "Relu", [x], fmt)
        elif op == "Clip":
            x = self.need_dynamic(node)
            lo = self.const(node, 1)
            hi = self.const(node, 2)
            # ONNX: a missing bound is numeric_limits<float>::lowest()/max(), not -inf/inf (onnxruntime clips inf
            # to FLT_MAX)
            f32max = float(np.finfo(np.float32).max)
            lo = float(lo) if lo is not None else float(_attr(node, "min", -f32max))
            hi = float(hi) if hi is not None else float(_attr(node, "max", f32max))
            fmt = self.tensors[x].format
            if not (_keeps_values(fmt, lo) and _keeps_values(fmt, hi)):
                fmt = Float32()  # a bound between grid points: the clipped values leave the input's grid
            self.add(node, "Clip", [x], fmt, attrs={"lo": lo, "hi": hi})
        elif op == "MaxPool":
            x = self.need_dynamic(node)
            self.add(node, "MaxPool", [x], self.tensors[x].format, attrs=self.pool_attrs(node, x))
        elif op in ("AveragePool", "GlobalAveragePool"):
            x = self.need_dynamic(node)
            attrs = self.pool_attrs(node, x) if op == "AveragePool" else {"global": True}
            attrs["count_include_pad"] = int(_attr(node, "count_include_pad", 0))
            self.add(node, "AvgPool", [x], Float32(), attrs=attrs,
                     contract=Contract(rounding="once: float32 division of the exact window sum (onnxruntime sums "
                                                "in float32 in its own order: the same when every window sum is exact "
                                                "in float32, else within gamma_k * sum|x|)",
                                       order="sum then divide", engine="float64 sum, float32 divide"))
        elif op in _ACTIVATIONS or op == "PRelu":
            self.lower_activation(node)
        elif op == "Softmax":
            self.lower_softmax(node)
        elif op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            x = self.need_dynamic(node)
            full = self.mw.get_tensor_shape(node.output[0])
            if not full or full[0] != self.mw.get_tensor_shape(self.mw.graph.input[0].name)[0]:
                raise EdgeqError(f"node '{node.name}' ({op}): reshapes that change the batch axis are unsupported")
            self.add(node, "Reshape", [x], self.tensors[x].format, attrs={"shape": self.shape(node.output[0])})
        elif op == "Transpose":
            x = self.need_dynamic(node)
            perm = list(_attr(node, "perm", []))
            if not perm or perm[0] != 0:
                raise EdgeqError(f"node '{node.name}' (Transpose): transposes that move the batch axis are unsupported")
            self.add(node, "Transpose", [x], self.tensors[x].format, attrs={"perm": [p - 1 for p in perm[1:]]})
        else:
            raise EdgeqError(f"node '{node.name}' ({op}): no lowering for op type {op}; edgeq lowers "
                             f"{ops.supported_onnx_ops()}")

    def lower_activation(self, node) -> None:
        """An element-wise activation (float32 result). On a small quantized input grid it becomes a table that
        onnxruntime's own kernel computes once on every grid value, so the emulator equals QONNX's execute_onnx bit
        for bit; otherwise the declared float32 numpy implementation (edgeq.emulate)."""
        op = node.op_type
        x = self.need_dynamic(node)
        if op == "PRelu":
            slope = self.const(node, 1)
            if slope is None:
                raise EdgeqError(f"node '{node.name}' (PRelu): the slope must be a constant")
            slope = np.asarray(slope, dtype=np.float32)
            xshape = (1,) + self.tensors[x].shape
            if slope.ndim > len(xshape) or (slope.ndim == len(xshape) and slope.shape[0] != 1):
                raise EdgeqError(f"node '{node.name}' (PRelu): slope of shape {slope.shape} broadcasts over the batch")
            attrs: dict[str, Any] = {"fn": "prelu", "slope": slope[0] if slope.ndim == len(xshape) else slope}
        else:
            fn, defaults = _ACTIVATIONS[op]
            attrs = {"fn": fn, **{k: float(np.float32(_attr(node, k, v))) for k, v in defaults.items()}}
        table = None if op in _UNTABULATED or x in self.nonfinite else _onnxruntime_table(node, self.tensors[x].format)
        contract = Contract(rounding="float32, as onnxruntime", engine="onnxruntime's kernel, tabulated on every "
                            "input grid value (exact)")
        if table is not None:
            attrs["table_x"], attrs["table_y"] = table
        else:
            exact = attrs["fn"] in PIECEWISE_LINEAR
            contract = Contract(rounding="float32 after every operation", engine="float32 numpy" + (
                " (onnxruntime's arithmetic: exact)" if exact else " (declared implementation: edgeq_expf-based "
                "float32 function, not onnxruntime's; quantize its input for an exact table)"))
        self.add(node, "Activation", [x], Float32(), attrs=attrs, contract=contract)

    def lower_softmax(self, node) -> None:
        x = self.need_dynamic(node)
        rank = len(self.tensors[x].shape) + 1
        opset = next((o.version for o in self.mw.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        axis = int(_attr(node, "axis", -1 if opset >= 13 else 1))
        axis = axis + rank if axis < 0 else axis
        if not 1 <= axis < rank:
            raise EdgeqError(f"node '{node.name}' (Softmax): softmax over the batch axis is unsupported")
        # before opset 13 the input is viewed as 2-D (axes before `axis`, the rest): the softmax is over all of them
        axes = [axis - 1] if opset >= 13 else list(range(axis - 1, rank - 1))
        self.add(node, "Softmax", [x], Float32(), attrs={"axes": axes}, contract=Contract(
            rounding="float32 after every operation", order="m = max; e = expf(x - m); s = sum of e in index "
            "order; y = e / s", engine="float32 (declared implementation: edgeq_expf's polynomial exp, "
            "edgeq.emulate.expf in numpy and C on the MCU; not onnxruntime's)"))

    def metadata_format(self, node, fmt: NumFormat, spec: Any) -> FixedPoint:
        """A fixed-point quantizer whose rounding/overflow the ``edgeq.qfx`` metadata overrides (e.g. WRAP, which
        QONNX's Quant cannot express: QONNX's own execution saturates such a tensor instead)."""
        # the quantizer's own rounding and overflow (SAT, or SAT_SYM when narrow) are the defaults
        fx = fmt if isinstance(fmt, FixedPoint) else fmt.as_fixed() if isinstance(fmt, Int) else None
        if fx is None or not isinstance(spec, dict):
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): metadata '{QFX_METADATA_KEY}' gives "
                             f"{spec!r} for a {fmt} quantizer; only power-of-two (fixed-point) quantizers take it")
        try:
            return FixedPoint(fx.width, fx.int_bits, fx.signed, spec.get("rounding", fx.rounding),
                              spec.get("overflow", fx.overflow))
        except ValueError as e:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): metadata '{QFX_METADATA_KEY}': {e}") from None

    def multiplier_free(self, node, w: np.ndarray, wfmt: NumFormat) -> dict[str, Any] | None:
        """The ``edgeq.qfx`` multiplier-free mode of this layer's weights, checked against the weight codes."""
        spec = self.meta.get("layers", {}).get(self.qsource.get(node.input[1], ""))
        if not isinstance(spec, dict) or not spec.get("multiplier_free"):
            return None
        mode = spec["multiplier_free"]
        k = 1 if mode == "pow2" else spec.get("k")
        if mode not in ("pow2", "khot") or not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): metadata '{QFX_METADATA_KEY}' asks for "
                             f"multiplier_free={mode!r}, k={k!r}; expected 'pow2', or 'khot' with k >= 1")
        g = grid_of(wfmt)
        if g is None or not is_power_of_two(g[0]):
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): multiplier-free weights need a power-of-two "
                             f"weight grid, not {wfmt}")
        codes = np.rint(np.asarray(w, dtype=np.float64) / np.broadcast_to(g[0], w.shape)).astype(np.int64)
        digits = int(np.count_nonzero(csd_digits(codes), axis=-1).max(initial=0))
        if digits > k:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): a weight has {digits} non-zero CSD digits but "
                             f"the layer is declared multiplier-free ({mode}, at most {k}); re-export the model")
        return {"mode": mode, "k": k, "max_digits": digits}

    def move_qconst(self, node) -> None:
        """Data movement on a quantized constant (e.g. FloatQuant -> Transpose -> MatMul weights)."""
        v, fmt = self.qconst[node.input[0]]
        if node.input[0] in self.qsource:
            self.qsource[node.output[0]] = self.qsource[node.input[0]]
        if node.op_type in ("Reshape", "Unsqueeze"):  # e.g. a quantized BatchNorm weight viewed as (1, C, 1, 1)
            out_shape = self.mw.get_tensor_shape(node.output[0])
            if out_shape is None:
                raise EdgeqError(f"node '{node.name}' ({node.op_type}): output shape of a quantized constant unknown")
            shape = getattr(fmt, "param_shape", ())
            new_v = np.reshape(v, tuple(int(d) for d in out_shape))
            if shape and int(np.prod(shape)) > 1:
                if int(np.prod(shape)) != v.size or tuple(shape) != tuple(v.shape):
                    raise EdgeqError(f"node '{node.name}' ({node.op_type}): cannot reshape a quantized constant "
                                     f"whose scales have shape {tuple(shape)}")
                from dataclasses import replace

                fmt = replace(fmt, param_shape=tuple(new_v.shape))
            self.qconst[node.output[0]] = (new_v, fmt)
            return
        if node.op_type == "Transpose":
            perm = list(_attr(node, "perm", range(v.ndim)[::-1]))
            v = np.transpose(v, perm)
            shape = getattr(fmt, "param_shape", ())
            if len(shape) == len(perm):
                from dataclasses import replace

                fmt = replace(fmt, param_shape=tuple(shape[p] for p in perm))
        self.qconst[node.output[0]] = (v, fmt)

    def lower_trunc(self, node) -> None:
        """QONNX Trunc (v1: 5 inputs, v2: 6 inputs with an output scale), e.g. after AveragePool."""
        x = self.need_dynamic(node)
        consts = [self.const(node, i) for i in range(1, len(node.input))]
        if any(c is None for c in consts) or len(consts) not in (4, 5):
            raise EdgeqError(f"node '{node.name}' (Trunc): expected 5 or 6 constant inputs (scale, zero point, "
                             "bit widths[, output scale])")
        scale, zp = consts[0].astype(np.float32), consts[1].astype(np.float32)
        if np.any(zp != 0):
            raise EdgeqError(f"node '{node.name}' (Trunc): a non-zero zero point is unsupported")
        mode = _attr(node, "rounding_mode", "FLOOR")
        signed, narrow = bool(_attr(node, "signed", 1)), bool(_attr(node, "narrow", 0))
        if len(consts) == 5:  # v2: X, scale, zeropt, in_bits, out_scale, out_bits
            out_scale, out_bits = consts[3].astype(np.float32), int(consts[4])
            trunc_scale = (2 ** np.round(np.log2(out_scale / scale))).astype(np.float32)
            version = 2
        else:  # v1: X, scale, zeropt, in_bits, out_bits; no clipping, keeps the input scale
            in_bits, out_bits = float(consts[2]), int(consts[3])
            trunc_scale = np.float32(2.0 ** (in_bits - out_bits))
            out_scale, version = scale, 1
        if out_bits == 1 and signed:
            # QONNX's Quant executes a 1-bit signed grid as bipolar {-1, +1}, but Trunc clips to [-1, 0] (narrow:
            # [0, 0]); edgeq's Int(1, signed) is the bipolar one, so it cannot state this Trunc's range.
            raise EdgeqError(f"node '{node.name}' (Trunc): a 1-bit signed output is unsupported (QONNX clips it to "
                             "[-1, 0], not bipolar); use out_bits >= 2 or an unsigned output")
        # v1 does not clip: a mode that rounds up takes the largest input code to 2^(out_bits - 1) (unsigned: 2^out),
        # one past the out_bits range (found by the hls fuzzer: case 1131 of seed 991), so its format has a bit more
        fmt_bits = out_bits + 1 if version == 1 and rounding_mode(mode) not in ("TRN", "TRN_ZERO") else out_bits
        try:
            fmt = Int(fmt_bits, signed=signed, narrow=narrow, scale=out_scale.ravel(), rounding=mode,
                      param_shape=_param_shape(out_scale))
            step = Int(out_bits, signed=signed, narrow=narrow, scale=np.ravel(trunc_scale), rounding=mode)
        except ValueError as e:
            raise EdgeqError(f"node '{node.name}' (Trunc): {e}") from None
        self.add(node, "Trunc", [x], fmt,
                 attrs={"version": version, "scale": scale, "trunc_scale": np.float32(np.ravel(trunc_scale)[0]),
                        "out_scale": out_scale, "step": step},
                 contract=Contract(rounding=f"round(x/scale) half-even, then {fmt.rounding} on /2^k",
                                   order="elementwise", engine="float32 numpy (QONNX order)"))

    def pool_attrs(self, node, x: str) -> dict[str, Any]:
        k = list(_attr(node, "kernel_shape", []))
        if len(k) != 2:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): only 2-D pooling is supported (kernel {k})")
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        if _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): auto_pad is unsupported; export explicit pads")
        dil = list(_attr(node, "dilations", [1, 1]))
        if dil != [1, 1]:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): dilated pooling is unsupported")
        attrs = {"kernel": k, "strides": list(_attr(node, "strides", [1, 1])), "pads": pads,
                 "ceil_mode": int(_attr(node, "ceil_mode", 0))}
        from edgeq.emulate import pool_output_hw

        hw = tuple(self.tensors[x].shape[1:])
        want, got = pool_output_hw(attrs, hw), tuple(self.shape(node.output[0])[1:])
        if want != got:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): its output {got} is not what onnxruntime computes "
                             f"({want}) for input {hw} with these pads and ceil_mode; export without ceil_mode or "
                             "with pads that keep the last window inside the input")
        return attrs

    def lower_binary(self, node, dyn: list[str]) -> None:
        op = node.op_type
        fn = _FLOAT_FNS[op]
        if len(dyn) == 2:
            if op != "Add":
                raise EdgeqError(f"node '{node.name}' ({op}): {op} of two activations is unsupported; only Add")
            a, b = (self.name(t) for t in node.input)
            fa, fb = exact_fixed(self.tensors[a].format), exact_fixed(self.tensors[b].format)
            if a in self.nonfinite or b in self.nonfinite:
                fa = fb = None  # inf/NaN values: the float32 add, as QONNX
            out_fmt: NumFormat = Float32()
            contract = Contract(rounding="float32 add (one rounding)", engine="float32 numpy")
            ia, ib = self.tensors[a].format, self.tensors[b].format
            if (fa is None or fb is None) and _same_scale_ints(ia, ib) and a not in self.nonfinite and \
                    b not in self.nonfinite:
                # Brevitas default quantizers with one shared scale (or equal ones): the codes add exactly
                width = max(ia.width + (not ia.signed), ib.width + (not ib.signed)) + 1
                out_fmt = Int(width, signed=True, scale=ia.scale)
                contract = Contract(accumulator=out_fmt, rounding="none: exact on codes (QONNX adds the two "
                                    "float32 values in float32: within 2^-22 (|a| + |b|) of it)",
                                    engine="float64 exact")
            if fa is not None and fb is not None:
                frac = max(fa.frac_bits, fb.frac_bits)
                # signed result: unsigned inputs need one more bit, and the sum one carry bit
                ib = max(fa.int_bits + (not fa.signed), fb.int_bits + (not fb.signed)) + 1
                if ib + frac <= 53:
                    out_fmt = FixedPoint(ib + frac, ib, True)
                    contract = Contract(accumulator=out_fmt, rounding="none: exact", engine="float64 exact")
            self.add(node, "Add", [a, b], out_fmt, contract=contract)
            return
        xi = 0 if self.is_dynamic(node.input[0]) else 1
        c = self.const(node, 1 - xi)
        if c is None:
            other = node.input[1 - xi]
            raise EdgeqError(f"node '{node.name}' ({op}): operand '{other}' is neither constant nor computed")
        x = self.name(node.input[xi])
        cshape = np.asarray(c).shape
        xshape = (1,) + self.tensors[x].shape
        if len(cshape) > len(xshape) or (len(cshape) == len(xshape) and cshape[0] != 1):
            raise EdgeqError(f"node '{node.name}' ({op}): constant of shape {cshape} broadcasts over the batch axis")
        c = np.asarray(c, dtype=np.float32)
        if len(cshape) == len(xshape):
            c = c[0]
        if op == "Div" and xi == 0 and c.size and np.all(c != 0) and is_power_of_two(np.abs(c)) and \
                np.all(np.isfinite(np.float32(1) / c)):
            # x / 2^k is x * 2^-k exactly (both one float32 rounding of the same exact value)
            fn, c = "mul", (np.float32(1) / c).astype(np.float32)
            node_op = "Mul"
        else:
            node_op = op
        out_fmt, contract = self._exact_scale_shift(node, x, c, node_op), None
        if out_fmt is None:
            fn, c = _FLOAT_FNS[op], np.asarray(self.const(node, 1 - xi), dtype=np.float32)  # as written
            if np.ndim(self.const(node, 1 - xi)) == len(xshape):
                c = c[0]
            out_fmt = Float32()
            contract = Contract(rounding="float32, once per element", fused=False, engine="float32 numpy")
        else:
            contract = Contract(accumulator=out_fmt, rounding="none: exact fixed point (float32 holds every value)",
                                engine="float32 numpy (exact)")
        self.add(node, "FloatOp", [x], out_fmt, attrs={"fn": fn, "const": c, "const_first": xi == 1},
                 contract=contract)

    def _exact_scale_shift(self, node, x: str, c: np.ndarray, op: str | None = None) -> FixedPoint | None:
        """The exact FixedPoint of ``x * c`` or ``x + c`` (either order) when x is exact fixed point and c is a
        quantized constant on a power-of-two grid (a fixed-point BatchNorm's scale or shift, e.g. Brevitas
        BatchNorm2dToQuantScaleBias), and the result fits 24 bits: then float32 computes it exactly, so the
        emulator, QONNX and Brevitas agree, and the FPGA computes it on integer codes. Else None (float glue).
        A plain float constant counts when its values are short dyadic numbers (e.g. the 1 and 1/2 of (x + 1) / 2);
        ``op`` overrides the node's op type (a Div by a power of two is lowered as the Mul by its inverse)."""
        op = op or node.op_type
        if op not in ("Mul", "Add", "Sub"):
            return None
        ct = next((t for t in node.input if t in self.qconst), None)
        fx = None if x in self.nonfinite else exact_fixed(self.tensors[x].format)
        if fx is None:
            return None
        if ct is None:  # a plain float32 constant: exact when every value is a short dyadic number, e.g. (x + 1) / 2
            fc = _dyadic(c)
            if fc is None:
                return None
        else:
            fc = exact_fixed(self.qconst[ct][1])
        if fc is None:  # per-channel power-of-two scales: codes on the finest channel's lsb
            g = grid_of(self.qconst[ct][1])
            if g is None or not is_power_of_two(g[0]) or not (2.0 ** -100 < float(np.min(g[0])) < 2.0 ** 100):
                return None
            frac_c = 1 - int(np.frexp(float(np.min(g[0])))[1])
            fc = FixedPoint(64, 64 - frac_c, True)  # only its lsb is used below
        codes = np.asarray(c, dtype=np.float64) / fc.eps
        if not np.array_equal(codes, np.rint(codes)):
            return None
        cmax = float(np.max(np.abs(codes))) if codes.size else 0.0
        xmax = float(max(-fx.code_min, fx.code_max))
        if op == "Mul":
            frac = fx.frac_bits + fc.frac_bits
            bound = xmax * cmax
        else:
            frac = max(fx.frac_bits, fc.frac_bits)
            bound = xmax * 2.0 ** (frac - fx.frac_bits) + cmax * 2.0 ** (frac - fc.frac_bits)
        width = _bits_for(bound)
        if width > 24:
            return None
        return FixedPoint(width, width - frac, True)

    def _mac_layer(self, node, op: str, x: str, w: np.ndarray, wfmt: NumFormat, bias_idx: int | None,
                   k: int, attrs: dict[str, Any]) -> None:
        xfmt = self.quantized_input(node, x)
        if x in self.nonfinite:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): input '{x}' is {xfmt}, computed from a "
                             "non-saturating minifloat that turns overflow into inf/NaN; integer accumulation needs "
                             "finite inputs: use a saturating minifloat")
        if not np.all(np.isfinite(w)):
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): quantized weights contain inf/NaN ({wfmt} is "
                             "not saturating and a weight overflows it); use a saturating weight format")
        gx, gw = grid_of(xfmt), grid_of(wfmt)
        if gw is None:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): weight format {wfmt} has no exact integer grid")
        lsb_x, bx = gx
        lsb_w, bw = gw
        if lsb_x.size != 1:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): input '{x}' has per-channel scales ({xfmt}); "
                             "quantize activations feeding Conv/MatMul per tensor")
        bound = float(k) * bx * bw
        bias = bias_fmt = None
        if bias_idx is not None and bias_idx < len(node.input) and node.input[bias_idx]:
            t = node.input[bias_idx]
            if t in self.qconst:
                bias, bias_fmt = self.qconst[t]
            else:
                b = self.const(node, bias_idx)
                if b is None:
                    raise EdgeqError(f"node '{node.name}' ({node.op_type}): bias '{t}' must be constant")
                bias, bias_fmt = np.asarray(b, dtype=np.float32).astype(np.float64), Float32()
        exact_scales = lsb_x.size == 1 and is_power_of_two(lsb_x) and is_power_of_two(lsb_w)
        if bias is not None:
            bound += float(np.max(np.abs(bias)) / (np.min(lsb_w) * float(lsb_x.max()))) if exact_scales else 0
        engine = mac_engine(bound)
        if engine is None:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): partial sums may reach {bound:.3g} (> 2^62) "
                             f"with these formats ({xfmt} x {wfmt}, K={k}); use narrower weights or activations")
        frac = -int(np.frexp(float(np.min(lsb_w)) * float(np.min(lsb_x)))[1] - 1)
        out_fmt: NumFormat
        bias_exact = bias is None or (exact_scales and _on_grid(bias, math.ldexp(1.0, -frac)))
        if exact_scales and bias_exact:
            # Per-channel power-of-two weight scales: codes of coarser channels scale up to the finest lsb.
            width = _bits_for(bound * float(np.max(lsb_w) / np.min(lsb_w)))
            if width > 63:
                raise EdgeqError(f"node '{node.name}' ({node.op_type}): the exact accumulator needs {width} bits "
                                 "(> 63); use narrower formats or per-tensor weight scales")
            out_fmt = FixedPoint(width, width - frac, True)
            contract = Contract(accumulator=out_fmt, rounding="none: exact accumulation", order="any: exact",
                                engine=engine)
        else:
            acc = FixedPoint(_bits_for(bound), _bits_for(bound), True)
            out_fmt = Float32()
            why = "non-power-of-two scales" if not exact_scales else "a float bias"
            contract = Contract(accumulator=acc,
                                rounding=f"declared rescale ({why}): y = f32(f32(acc) * m[c]) [+ b in float32], "
                                         "m[c] = f32(lsb_x * lsb_w[c])",
                                order="integer accumulation is exact", engine=engine)
        attrs["macs"] = int(np.prod(self.shape(node.output[0]))) * k
        free = self.multiplier_free(node, w, wfmt)
        if free is not None:
            attrs["multiplier_free"] = free
        self.add(node, op, [x], out_fmt, attrs=attrs, weight=w, weight_format=wfmt, bias=bias,
                 bias_format=bias_fmt, contract=contract)

    def lower_conv(self, node) -> None:
        x = self.need_dynamic(node)
        w, wfmt = self.weight(node, 1)
        if w.ndim != 4:
            raise EdgeqError(f"node '{node.name}' (Conv): only 2-D convolutions are supported (weight {w.shape})")
        if _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise EdgeqError(f"node '{node.name}' (Conv): auto_pad is unsupported; export explicit pads")
        group = int(_attr(node, "group", 1))
        attrs = {"strides": list(_attr(node, "strides", [1, 1])), "pads": list(_attr(node, "pads", [0, 0, 0, 0])),
                 "dilations": list(_attr(node, "dilations", [1, 1])), "group": group}
        k = int(np.prod(w.shape[1:]))
        self._mac_layer(node, "Conv2d", x, w, wfmt, 2, k, attrs)

    def lower_dense(self, node) -> None:
        x = self.need_dynamic(node)
        w, wfmt = self.weight(node, 1)
        if len(self.tensors[x].shape) != 1:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): input must be 2-D (batch, features), "
                             f"got per-sample shape {self.tensors[x].shape}")
        bias_idx = None
        if node.op_type == "Gemm":
            alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
            if _attr(node, "transA", 0) or alpha != 1.0 or beta != 1.0:
                raise EdgeqError(f"node '{node.name}' (Gemm): only transA=0, alpha=1, beta=1 are supported")
            if _attr(node, "transB", 0):
                w = w.T
                wfmt = _transpose_format(wfmt)
            bias_idx = 2
        if w.ndim != 2:
            raise EdgeqError(f"node '{node.name}' ({node.op_type}): weight must be 2-D, got {w.shape}")
        self._mac_layer(node, "Dense", x, np.ascontiguousarray(w), wfmt, bias_idx, int(w.shape[0]), {})


#: ONNX activations lowered to the IR's Activation: (function name, attributes with their ONNX defaults)
_ACTIVATIONS = {
    "LeakyRelu": ("leaky_relu", {"alpha": 0.01}),
    "Elu": ("elu", {"alpha": 1.0}),
    "Selu": ("selu", {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}),
    "Sigmoid": ("sigmoid", {}),
    "HardSigmoid": ("hard_sigmoid", {"alpha": 0.2, "beta": 0.5}),
    "Tanh": ("tanh", {}),
}
#: not tabulated: PRelu's slope is per channel (and its arithmetic is exact anyway); onnxruntime's Elu and Selu give
#: an element a different value depending on its position in the tensor (vectorised body or scalar tail; measured
#: -0.550648153 -> -0.423424 or -0.42342407), so no table can equal it everywhere
_UNTABULATED = ("PRelu", "Elu", "Selu")
#: activations whose float32 numpy implementation is onnxruntime's arithmetic (compares and one multiply-add)
PIECEWISE_LINEAR = ("leaky_relu", "prelu", "hard_sigmoid")
#: the largest input grid an activation is tabulated on
TABLE_LIMIT = 1 << 16


def _onnxruntime_table(node, fmt: NumFormat) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted grid values, onnxruntime's outputs on them), both float32, or None when the grid is unknown or
    larger than TABLE_LIMIT."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    grid = grid_values(fmt)
    if grid is None:
        return None
    grid = np.unique(grid.astype(np.float32))
    grid = grid[np.isfinite(grid)]
    if grid.size == 0 or grid.size > TABLE_LIMIT:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    one = helper.make_node(node.op_type, ["x"], ["y"], **attrs)
    g = helper.make_graph([one], "activation", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [grid.size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [grid.size])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return grid, np.asarray(sess.run(None, {"x": grid})[0], dtype=np.float32)


def _same_scale_ints(a: NumFormat, b: NumFormat) -> bool:
    """Two integer grids with one identical float32 scale and no zero point: their codes add exactly."""
    return isinstance(a, Int) and isinstance(b, Int) and not a.bipolar and not b.bipolar and \
        len(a.scale) == 1 and a.scale == b.scale and not a.has_zero_point and not b.has_zero_point and \
        max(a.width, b.width) < 52


def _dyadic(c: np.ndarray) -> FixedPoint | None:
    """The FixedPoint whose lsb ``2^-f`` puts every value of ``c`` on integer codes below 2^24 (f in [-64, 64]),
    or None (only its ``eps`` is used)."""
    c = np.asarray(c, dtype=np.float64)
    if c.size == 0 or not np.all(np.isfinite(c)):
        return None
    for f in range(-64, 65):
        codes = np.ldexp(c, f)
        if np.array_equal(codes, np.rint(codes)):
            return FixedPoint(64, 64 - f, True) if np.max(np.abs(codes)) < 2 ** 24 else None
    return None


def _keeps_values(fmt: NumFormat, bound: float) -> bool:
    """True when clipping a tensor of ``fmt`` at ``bound`` leaves every value a value of ``fmt``: the bound is
    outside the format's range or is itself one of its values (conservatively: its own quantization)."""
    if isinstance(fmt, Float32) or not math.isfinite(bound) or not fmt.min < bound < fmt.max:
        return True
    if isinstance(fmt, (Int, MiniFloat, Binary)) and len(getattr(fmt, "scale", ())) > 1:
        return False  # per-channel grids: a bound is a value of some channels only
    try:
        return bool(fmt.quantize(np.float32(bound)) == bound)
    except Exception:
        return False


def _can_be_nonfinite(fmt: NumFormat) -> bool:
    """A non-saturating minifloat quantizer turns overflow into inf or NaN: not values on any integer grid."""
    return isinstance(fmt, MiniFloat) and not fmt.saturating


def _on_grid(v: np.ndarray, lsb: float) -> bool:
    q = np.asarray(v, dtype=np.float64) / lsb
    return bool(np.all(q == np.round(q)) and np.all(np.abs(q) < 2**52))


def _transpose_format(fmt: NumFormat) -> NumFormat:
    """A per-output-channel weight format after transposing (N, K) weights to (K, N)."""
    shape = getattr(fmt, "param_shape", ())
    if len(shape) == 2:
        from dataclasses import replace

        return replace(fmt, param_shape=(shape[1], shape[0]))
    return fmt


def _layer_name(onnx_name: str) -> str:
    """A C- and file-name-safe layer name derived from the ONNX node name."""
    out = "".join(c if c.isalnum() else "_" for c in onnx_name).strip("_")
    if not out or out[0].isdigit():
        out = "n_" + out
    return out


#: the ONNX ``metadata_props`` key of what standard QONNX cannot say (written by :func:`edgeq.qfx.export`)
QFX_METADATA_KEY = "edgeq.qfx"
QFX_METADATA_VERSION = 1


def qfx_metadata(model_proto: Any, where: str) -> dict[str, Any]:
    """The ``edgeq.qfx`` metadata of a model, or {} (see :mod:`edgeq.qfx` for the schema).

    Forward compatible: unknown keys are ignored, and a newer ``version`` is read as far as this one knows it.
    A value that is not a JSON object, or an entry of the wrong type, is one EdgeqError line.
    """
    for prop in model_proto.metadata_props:
        if prop.key != QFX_METADATA_KEY:
            continue
        try:
            doc = json.loads(prop.value)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("tensors", {}), dict) or \
                not isinstance(doc.get("layers", {}), dict):
            raise EdgeqError(f"{where}: metadata '{QFX_METADATA_KEY}' is not a JSON object with 'tensors' and "
                             "'layers' objects; re-export the model with edgeq.qfx.export()")
        return doc
    return {}


def typed_input_format(mw, where: str, requested: Any = None) -> NumFormat | None:
    """The format the graph input is typed with: ``requested`` (``--input-format``: a NumFormat or its spelling,
    :func:`edgeq.formats.parse_format`), else the input's QONNX ``quantization_annotation`` (a FINN datatype),
    else None (a float input). The two must agree when both are given."""
    name = mw.graph.input[0].name
    annotated = None
    try:
        dt = mw.get_tensor_datatype(name)
    except Exception:  # an annotation qonnx cannot read
        raise EdgeqError(f"{where}: input '{name}' has an unreadable quantization_annotation; "
                         "remove it or re-export") from None
    dt_name = getattr(dt, "name", str(dt))
    try:
        annotated = from_finn_datatype(dt_name)
    except ValueError as e:
        raise EdgeqError(f"{where}: input '{name}': {e}; pass --input-format to type the input") from None
    if requested is None:
        return annotated
    if isinstance(requested, NumFormat):
        fmt = requested
    else:
        try:
            fmt = parse_format(requested)
        except ValueError as e:
            raise EdgeqError(f"--input-format: {e}") from None
    if annotated is not None and grid_values(annotated) is not None and grid_values(fmt) is not None and \
            not np.array_equal(np.unique(grid_values(annotated)), np.unique(grid_values(fmt))):
        raise EdgeqError(f"{where}: --input-format {fmt} contradicts the input '{name}' annotation {dt_name}; "
                         "drop the option or fix the annotation")
    return fmt


def load(model: Any, input_format: Any = None, precision: Any = None) -> Graph:
    """Load a QONNX model (path, ``onnx.ModelProto`` or qonnx ``ModelWrapper``) into the edgeq IR.

    Every node on the data path is checked against :data:`edgeq.ops.ONNX_OPS` first, before any qonnx pass: a
    model with unsupported ops is refused at once, naming all of them (grouped by op type).

    ``input_format`` (a NumFormat or its spelling, e.g. ``"uint8"``) types the graph input: a host-side quantizer
    in front of the graph (a ``Quantize`` layer named ``input_quant``), as a FINN datatype annotation on the input
    does (which is honoured without it).

    ``precision`` (an :class:`edgeq.precision.Precision`) turns a float model into a QONNX one first: a Quant on
    every MAC input, weight and bias (see :func:`edgeq.precision.quantize_float_model`)."""
    mw, path = _read(model)
    where = path or "model"
    if precision:
        from edgeq.precision import quantize_float_model

        mw = _wrap(quantize_float_model(mw.model, precision, where))
    inits = {i.name for i in mw.graph.initializer}
    bad = ops.unsupported_nodes(mw.graph, [i.name for i in mw.graph.input if i.name not in inits])
    if bad:
        raise EdgeqError(ops.refusal(where, bad))
    typed = typed_input_format(mw, where, input_format)
    meta = qfx_metadata(mw.model, where)
    mw = _cleanup(mw, where)
    return _Lowering(mw, where, meta, typed).run()
