"""Lower an edgeq graph to the MCU's FP16 program: the same layers, with the arithmetic an RV32 Zfh core runs.

The result is again an :class:`edgeq.ir.Graph`. Its tensors are ``float16`` or ``float32`` and every
layer's :class:`~edgeq.ir.Contract` says exactly how the MCU computes it; :func:`edgeq.emulate.emulate`
runs that contract bit for bit, and the C renderer emits it. The rules:

* **Multiply-accumulate** (Conv2d, Dense) in FP16. Weights and bias become float16 (exactly when their
  values fit, else rounded to nearest even, as declared and reported). Per output: the lanes start at
  +0; k runs over (ci, ky, kx) in ascending order over the zero-padded input (padded taps included);
  each step is ``fma16`` (one rounding) or ``mul16`` then ``add16`` (two), as ``fused`` says; with two
  lanes (v2f16 SIMD) even k go to lane 0 and odd k to lane 1, K is padded to even, and the lanes are
  summed in FP16; the bias is added last, in FP16.
* **Float glue** (quantizers, Trunc, BatchNorm, element-wise constants, Clip, AvgPool) runs in FP32 in
  QONNX's (onnxruntime's) order, so it equals the float32 model on equal inputs. A quantizer writes
  float16 when every value of its grid is exactly a float16, otherwise float32.
* **A MAC layer fed by a float32 tensor** gets an explicit ``Cast`` to float16 (RNE) in front of it.
* Relu, MaxPool, Reshape and Transpose keep their input's type; Add is FP16 when both inputs are
  float16, else FP32.
* **Binary layers** (±1 weights and ±1 inputs, :func:`edgeq.mst.xnor_refusal`) are not FP16: they run as exact
  integer XNOR-popcount kernels (``firmware/common/edgeq_xnor.c``) reading the input's sign bits, and write
  ``acc * s_x * s_w`` as float32, exact. Their contract is the source graph's (exact integers); with MST
  reordering (``trees``) the layer keeps the tree's parent array in ``attrs["mst_parent"]``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq import mst, ops
from edgeq.errors import EdgeqError
from edgeq.formats import Binary, FixedPoint, Float16, Float32, Int, NumFormat, grid_values
from edgeq.ir import Contract, Graph, Layer, Tensor

F16, F32 = Float16(), Float32()

_GLUE = ops.having("mcu_fp32")
_SAME_TYPE = ops.having("same_type")
_GLUE_CONTRACT = Contract(rounding="float32 after every operation (QONNX/onnxruntime order)", engine="fp32")


@dataclass
class McuOptions:
    """Arithmetic choices of an MCU build, declared in every MAC layer's contract."""

    fused: bool = True  # fma16 (one rounding per multiply-add) or mul16 + add16
    lanes: int = 1  # 1: scalar Zfh; 2: v2f16 SIMD (even/odd k in two lanes)

    def mac_contract(self) -> Contract:
        step = "fma16 (one rounding per multiply-add)" if self.fused else "mul16 then add16 (two roundings)"
        if self.lanes == 1:
            order = "sequential over k=(ci,ky,kx) from +0, padded taps included; bias added last in fp16"
        else:
            order = (f"{self.lanes} lanes: k mod {self.lanes} selects the lane, each sequential from +0, K padded "
                     "with zeros to a multiple of the lanes; lanes summed in fp16; bias added last in fp16")
        return Contract(accumulator=F16, rounding=f"fp16 at every step: {step}", fused=self.fused, order=order,
                        engine=f"fp16 lanes={self.lanes}")


@dataclass
class Conversion:
    """One place where a value becomes float16: exact, or rounded (with how much it moved)."""

    layer: str
    what: str
    exact: bool
    max_abs_change: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "what": self.what, "exact": self.exact, "max_abs_change": self.max_abs_change}


@dataclass
class McuLowering:
    graph: Graph
    conversions: list[Conversion] = field(default_factory=list)
    overflow_risk: list[dict[str, Any]] = field(default_factory=list)  # MAC layers whose fp16 sums may reach inf


def fits_f16(fmt: NumFormat) -> bool:
    """True when every value of ``fmt`` is exactly a float16."""
    if isinstance(fmt, Float16):
        return True
    v = grid_values(fmt)
    with np.errstate(over="ignore"):  # a value beyond float16's range becomes inf: not exact, no warning
        return v is not None and bool(np.all(v.astype(np.float16).astype(np.float32) == v))


def _to_f16(values: np.ndarray, layer: str, what: str, notes: list[Conversion]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    h = Float16.round(v).astype(np.float64)
    with np.errstate(invalid="ignore"):
        change = np.abs(h - v)
    if not np.all(np.isfinite(h)):
        raise EdgeqError(f"layer '{layer}': {what} overflows float16 (|value| > 65504); "
                         "the MCU backend stores weights as float16: rescale the layer")
    exact = bool(np.all(change == 0))
    notes.append(Conversion(layer, what, exact, float(change.max()) if change.size else 0.0))
    return h


def lower_fp16(graph: Graph, opts: McuOptions | None = None, trees: dict[str, Any] | None = None) -> McuLowering:
    """The MCU program of ``graph`` (see the module doc). Raises EdgeqError for what the MCU cannot run.

    ``trees`` ({layer: (MstTree, bits)}, :func:`edgeq.mst.select`) turns MST reordering on for those layers."""
    trees = trees or {}
    opts = opts or McuOptions()
    if opts.lanes not in (1, 2):
        raise EdgeqError(f"SIMD lanes must be 1 or 2, got {opts.lanes}")
    notes: list[Conversion] = []
    overflow: list[dict[str, Any]] = []
    tensors: dict[str, Tensor] = {}
    layers: list[Layer] = []
    orig = graph.tensors  # formats of the original graph: the grids values lie on

    for name in graph.inputs:
        t = orig[name]
        tensors[name] = Tensor(name, t.shape, F32)

    def fmt_of(name: str) -> NumFormat:
        return tensors[name].format

    def add(layer: Layer, out_fmt: NumFormat) -> None:
        shape = orig[layer.output].shape if layer.output in orig else orig[layer.inputs[0]].shape
        tensors[layer.output] = Tensor(layer.output, shape, out_fmt)
        layers.append(layer)

    casts: dict[str, str] = {}  # float32 tensor -> its float16 cast (one per tensor, shared by its MAC layers)

    for src in graph.layers:
        _check_shapes(graph, src)
        lay = copy.copy(src)
        lay.attrs = dict(src.attrs)
        lay.inputs = list(src.inputs)
        for key in list(lay.__dict__):  # drop the emulator's per-layer caches
            if key.startswith("_"):
                del lay.__dict__[key]
        op = lay.op
        if op in ("Conv2d", "Dense") and mst.xnor_refusal(graph, src) is None:
            lay.attrs["xnor"] = True
            lay.attrs["input_grid"] = orig[lay.inputs[0]].format
            kernel = "XNOR-popcount"
            if src.name in trees:
                lay.attrs["mst_parent"] = np.asarray(trees[src.name][0].parent, dtype=np.int64)
                kernel = "MST-reordered XNOR-popcount (children from their parent over D)"
            lay.contract = Contract(accumulator=src.contract.accumulator, rounding=f"none: exact integers ({kernel})",
                                    order="any: exact", engine=src.contract.engine)
            add(lay, orig[lay.output].format)
        elif op in ("Conv2d", "Dense"):
            x = lay.inputs[0]
            if not isinstance(fmt_of(x), Float16):
                if x not in casts:
                    exact = fits_f16(orig[x].format)
                    casts[x] = f"{x}__f16"
                    add(Layer(name=f"{lay.name}_cast", op="Cast", inputs=[x], output=casts[x],
                              source=list(lay.source), contract=Contract(
                                  rounding="none: exact" if exact else "float32 to float16, RNE", engine="fp32")), F16)
                    notes.append(Conversion(f"{lay.name}_cast", f"input {orig[x].format} to float16", exact))
                lay.inputs = [casts[x]]
            lay.attrs["input_grid"] = orig[x].format
            lay.weight = _to_f16(src.weight, lay.name, f"weights ({src.weight_format})", notes)
            lay.weight_format = F16
            if src.bias is not None:
                lay.bias = _to_f16(src.bias, lay.name, f"bias ({src.bias_format})", notes)
                lay.bias_format = F16
            lay.attrs["lanes"] = opts.lanes
            lay.contract = opts.mac_contract()
            bound = _worst_sum(orig[x].format, lay.weight)
            if bound is None or bound > 65504.0:
                overflow.append({"layer": lay.name, "worst_case_sum": bound, "note": (
                    "the input grid is unbounded or unknown" if bound is None else
                    f"sum |w| * max|x| = {bound:.6g} > 65504: an fp16 accumulator can overflow to inf")})
            add(lay, F16)
        elif op == "Quantize":
            grid = orig[lay.output].format
            if not isinstance(grid, (Int, FixedPoint, Binary)):
                raise EdgeqError(
                    f"layer '{lay.name}' ({', '.join(lay.source)}): {grid} quantizers are not supported by the MCU "
                    "backend (integer, bipolar and fixed-point quantizers are); use an FPGA board for this model")
            lay.attrs["grid"] = grid
            lay.contract = _GLUE_CONTRACT
            add(lay, F16 if fits_f16(grid) else F32)
        elif op in _GLUE:
            if op == "FloatOp" and lay.attrs["fn"] == "pow":
                raise EdgeqError(f"layer '{lay.name}' ({', '.join(lay.source)}): Pow is not supported by the MCU "
                                 "backend (no libm in the firmware); fold it into a constant or a Mul")
            lay.contract = _GLUE_CONTRACT if op != "AvgPool" else Contract(
                rounding="float32 at every step", order="window sum in float32, row-major from +0; then one "
                "float32 division by the count", engine="fp32")
            add(lay, F32)
        elif op in _SAME_TYPE:
            lay.contract = Contract(engine="exact")
            add(lay, fmt_of(lay.inputs[0]))
        elif op == "Add":
            both16 = all(isinstance(fmt_of(i), Float16) for i in lay.inputs)
            lay.contract = Contract(rounding="fp16 add" if both16 else "float32 add", engine="fp16" if both16
                                    else "fp32")
            add(lay, F16 if both16 else F32)
        elif op == "Softmax":  # edgeq_softmax: float32, edgeq_expf (the emulator's declared implementation)
            lay.contract = Contract(rounding=src.contract.rounding, order=src.contract.order, engine="fp32")
            add(lay, F32)
        else:  # pragma: no cover - ingest only emits known ops
            raise EdgeqError(f"layer '{lay.name}': op {op} is not supported by the MCU backend")

    mcu = Graph(f"{graph.name}", list(graph.inputs), list(graph.outputs), tensors, layers, graph.source_path)
    fold_thresholds(mcu)
    return McuLowering(mcu, notes, overflow)


_THRESHOLD_GLUE = ops.having("glue")


def fold_thresholds(program: Graph) -> None:
    """Replace each "XNOR layer -> float glue -> bipolar quantizer" chain by one integer Threshold layer.

    The XNOR output is an integer acc in [-K, K] times a power of two, so the chain's float32 function (the
    Larq "output transform") is evaluated by the emulator itself on every acc value, per channel; when the
    sign it gives is monotone in acc the chain becomes ``high if direction * x >= threshold else low``, exact on
    every input. Chains with per-element constants or a non-monotone sign stay as they are (float32 glue).
    """
    from edgeq.emulate import run_chain

    consumers: dict[str, int] = {}
    for lay in program.layers:
        for t in lay.inputs:
            consumers[t] = consumers.get(t, 0) + 1

    def sole(t: str) -> bool:
        return consumers.get(t, 0) == 1 and t not in program.outputs

    i = 0
    while i < len(program.layers):
        lay = program.layers[i]
        i += 1
        if not lay.attrs.get("xnor"):
            continue
        chain, t = [], lay.output
        for nxt in program.layers[i:]:
            if nxt.inputs != [t] or not sole(t) or nxt.op not in _THRESHOLD_GLUE | {"Quantize"}:
                break
            chain.append(nxt)
            t = nxt.output
            if nxt.op == "Quantize":
                break
        if not chain or chain[-1].op != "Quantize":
            continue
        grid = chain[-1].attrs["grid"]
        if not isinstance(grid, Binary) or len(grid.scale) != 1:
            continue
        shape = tuple(program.tensors[lay.output].shape)
        k = int(np.prod(lay.weight.shape[1:])) if lay.op == "Conv2d" else int(lay.weight.shape[0])
        scale = float(np.float32(mst._bipolar_scale(lay.attrs["input_grid"]) * mst._bipolar_scale(lay.weight_format)))
        acc = np.arange(-k, k + 1, dtype=np.int64)
        xv = (acc.astype(np.float64) * scale).astype(np.float32).reshape((-1, 1) + (1,) * (len(shape) - 1))
        xv = np.broadcast_to(xv, (len(acc), shape[0]) + (1,) * (len(shape) - 1))
        try:
            y = run_chain(program, chain, np.ascontiguousarray(xv))
        except ValueError:  # per-element constants: not per channel
            continue
        if y.shape != xv.shape:
            continue
        pos = y.reshape(len(acc), shape[0]) > 0
        step = np.diff(pos.astype(np.int8), axis=0)
        inc, dec = np.all(step >= 0, axis=0), np.all(step <= 0, axis=0)
        if not np.all(inc | dec):
            continue
        first_true = np.where(pos.any(axis=0), acc[np.argmax(pos, axis=0)], k + 1)  # inc: acc >= T
        last_true = np.where(pos.any(axis=0), acc[len(acc) - 1 - np.argmax(pos[::-1], axis=0)], -k - 1)  # dec
        direction = np.where(inc, 1, -1)
        thr = np.where(inc, first_true, -last_true).astype(np.float64) * scale
        q = chain[-1]
        folded = Layer(name=q.name, op="Threshold", inputs=[lay.output], output=q.output,
                       source=[s for c in chain for s in c.source], attrs={
                           "threshold": thr.astype(np.float32), "direction": direction.astype(np.int64),
                           "high": float(grid.scale[0]), "low": -float(grid.scale[0]),
                           "folded": [c.name for c in chain]},
                       contract=Contract(rounding="none: integer thresholds, derived from the float32 glue on every "
                                         "accumulator value", engine="exact"))
        start = program.layers.index(chain[0])
        program.layers[start:start + len(chain)] = [folded]
        for c in chain[:-1]:
            del program.tensors[c.output]


def _worst_sum(x_fmt: NumFormat, w: np.ndarray) -> float | None:
    """The largest |partial sum| an fp16 accumulator can see: max over outputs of sum |w| * max |x|."""
    try:
        xmax = max(abs(float(x_fmt.min)), abs(float(x_fmt.max)))
    except (AttributeError, TypeError, ValueError):
        return None
    if not np.isfinite(xmax):
        return None
    a = np.abs(np.asarray(w, dtype=np.float64))
    per_out = a.reshape(a.shape[0], -1).sum(axis=1) if a.ndim == 4 else a.sum(axis=0)
    return float(per_out.max() * xmax) if per_out.size else 0.0


def _check_shapes(graph: Graph, lay: Layer) -> None:
    """The C loops index every input like the output: refuse broadcasting element-wise layers."""
    if lay.op == "Add" or lay.op in ops.having("in_place"):
        out = tuple(graph.tensors[lay.output].shape)
        for t in lay.inputs:
            if tuple(graph.tensors[t].shape) != out:
                shape = tuple(graph.tensors[t].shape)
                raise EdgeqError(
                    f"layer '{lay.name}' ({', '.join(lay.source)}): {lay.op} broadcasts {shape} to {out}; the MCU "
                    "backend needs equal shapes (expand the smaller input in the model)")
