"""The edgeq IR: a graph of layers in which every tensor carries its exact number format.

The IR is deliberately small. A :class:`Graph` holds :class:`Tensor` descriptions (shape without
the batch axis, and a :class:`~edgeq.formats.NumFormat`) and a topologically ordered list of
:class:`Layer` objects. Each layer states its :class:`Contract`: the accumulator format, where
rounding happens, whether floating-point multiply-add is fused, and the reduction order. The
emulator implements the contract; code generators render it.

Layer ops (``Layer.op``) and their attributes:

========== ==================================================================================
Quantize   requantize the input into ``output`` format (QONNX Quant / BipolarQuant /
           FloatQuant / Trunc on activations).
Conv2d     ``weight`` (Cout, Cin/g, kh, kw) values on ``weight_format``'s grid; optional
           ``bias``; ``strides``, ``pads`` (top, left, bottom, right), ``dilations``, ``group``.
Dense      ``weight`` (K, N) so that y = x @ weight; optional ``bias``.
BatchNorm  float32 glue in onnxruntime's order: ``inv = 1/sqrt(var+eps)``, ``s = inv*gamma``,
           ``b = beta - mean*s``, ``y = x*s + b`` (two roundings, not fused).
FloatOp    element-wise float32 glue with a constant: ``fn`` in add, sub, mul, div, pow, max,
           min, ``const`` and ``const_first`` (c - x instead of x - c).
Relu       max(x, 0), exact on every format.
Clip       clip(x, lo, hi).
Add        element-wise sum of two tensors (residual).
MaxPool    ``kernel``, ``strides``, ``pads``, ``ceil_mode``.
AvgPool    ``kernel``, ``strides``, ``pads``, ``count_include_pad``; float32 division of the
           exact window sum (onnxruntime's order); ``global`` for GlobalAveragePool.
Reshape    ``shape`` (without the batch axis); Flatten lowers to it.
Transpose  ``perm`` (without the batch axis).
========== ==================================================================================
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq.formats import NumFormat, format_from_dict


@dataclass(frozen=True)
class Contract:
    """A layer's arithmetic contract.

    * ``accumulator``: the format partial sums live in (exact when it is a FixedPoint wide enough
      for every partial sum), or None for layers without accumulation.
    * ``rounding``: where rounding happens, in words (e.g. "none: exact", "once at the output").
    * ``fused``: for floating-point layers, whether multiply-add is fused (fma) or two ops.
    * ``order``: the reduction order, when it matters (floating-point accumulation).
    * ``engine``: how the emulator evaluates it exactly (float32/float64 BLAS under a proven
      bound, int64 or Python ints), chosen from the formats.
    """

    accumulator: NumFormat | None = None
    rounding: str = "none: exact"
    fused: bool | None = None
    order: str = "any: exact"
    engine: str = "elementwise"

    def to_dict(self) -> dict[str, Any]:
        return {
            "accumulator": str(self.accumulator) if self.accumulator is not None else None,
            "rounding": self.rounding,
            "fused": self.fused,
            "order": self.order,
            "engine": self.engine,
        }


@dataclass
class Tensor:
    """A tensor of the graph: its name, per-sample shape (no batch axis) and number format."""

    name: str
    shape: tuple[int, ...]
    format: NumFormat


@dataclass
class Layer:
    """One IR layer. ``source`` names the ONNX node(s) it came from."""

    name: str
    op: str
    inputs: list[str]
    output: str
    source: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    weight: np.ndarray | None = None
    weight_format: NumFormat | None = None
    bias: np.ndarray | None = None
    bias_format: NumFormat | None = None
    contract: Contract = field(default_factory=Contract)

    @property
    def macs(self) -> int:
        """Multiply-accumulates per sample (set by ingest for Conv2d and Dense)."""
        return int(self.attrs.get("macs", 0))

    @property
    def weight_bits(self) -> int:
        if self.weight is None or self.weight_format is None:
            return 0
        return int(self.weight.size) * int(self.weight_format.bits)


@dataclass
class Graph:
    """A whole model: input and output tensor names, tensors, and layers in execution order."""

    name: str
    inputs: list[str]
    outputs: list[str]
    tensors: dict[str, Tensor]
    layers: list[Layer]
    source_path: str | None = None

    def tensor(self, name: str) -> Tensor:
        return self.tensors[name]

    @property
    def input(self) -> Tensor:
        return self.tensors[self.inputs[0]]

    @property
    def output(self) -> Tensor:
        return self.tensors[self.outputs[0]]

    def summary(self) -> list[dict[str, Any]]:
        """Per-layer rows for ``edgeq inspect``: op, source node, shapes, formats, MACs, weight bits."""
        rows = []
        for layer in self.layers:
            ins = [self.tensors[i] for i in layer.inputs]
            out = self.tensors[layer.output]
            rows.append(
                {
                    "layer": layer.name,
                    "op": layer.op,
                    "source": ", ".join(layer.source),
                    "input_shape": [list(t.shape) for t in ins],
                    "output_shape": list(out.shape),
                    "input_format": [str(t.format) for t in ins],
                    "weight_format": str(layer.weight_format) if layer.weight_format is not None else None,
                    "output_format": str(out.format),
                    "macs": layer.macs,
                    "weight_bits": layer.weight_bits,
                    "contract": layer.contract.to_dict(),
                }
            )
        return rows


# ---------------------------------------------------------------------------------------------
# Serialisation: one .npz holding the structure as JSON and every array by name
# ---------------------------------------------------------------------------------------------


def _encode(v: Any, arrays: dict[str, np.ndarray], key: str) -> Any:
    if isinstance(v, np.ndarray):
        arrays[key] = v
        return {"__array__": key}
    if isinstance(v, NumFormat):
        return {"__format__": v.to_dict()}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _encode(x, arrays, f"{key}.{k}") for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode(x, arrays, f"{key}.{i}") for i, x in enumerate(v)]
    return v


def _decode(v: Any, arrays) -> Any:
    if isinstance(v, dict):
        if "__array__" in v:
            return arrays[v["__array__"]]
        if "__format__" in v:
            return format_from_dict(v["__format__"])
        return {k: _decode(x, arrays) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode(x, arrays) for x in v]
    return v


def save_graph(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph`` to one ``.npz`` file (structure as JSON, arrays by name). No pickle."""
    arrays: dict[str, np.ndarray] = {}
    doc = {
        "name": graph.name, "inputs": graph.inputs, "outputs": graph.outputs, "source_path": graph.source_path,
        "tensors": [{"name": t.name, "shape": list(t.shape), "format": t.format.to_dict()}
                    for t in graph.tensors.values()],
        "layers": [],
    }
    for i, lay in enumerate(graph.layers):
        doc["layers"].append({
            "name": lay.name, "op": lay.op, "inputs": lay.inputs, "output": lay.output, "source": lay.source,
            "attrs": _encode(lay.attrs, arrays, f"l{i}.attrs"),
            "weight": _encode(lay.weight, arrays, f"l{i}.weight"),
            "weight_format": _encode(lay.weight_format, arrays, ""),
            "bias": _encode(lay.bias, arrays, f"l{i}.bias"),
            "bias_format": _encode(lay.bias_format, arrays, ""),
            "contract": {**lay.contract.to_dict(),
                         "accumulator": _encode(lay.contract.accumulator, arrays, "")},
        })
    buf = io.BytesIO()
    np.savez(buf, __graph__=np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8), **arrays)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def load_graph(path: str | os.PathLike) -> Graph:
    """Read a graph written by :func:`save_graph`."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(arrays.pop("__graph__").tobytes().decode())
    tensors = {t["name"]: Tensor(t["name"], tuple(t["shape"]), format_from_dict(t["format"])) for t in doc["tensors"]}
    layers = []
    for d in doc["layers"]:
        c = d["contract"]
        layers.append(Layer(
            name=d["name"], op=d["op"], inputs=d["inputs"], output=d["output"], source=d["source"],
            attrs=_decode(d["attrs"], arrays), weight=_decode(d["weight"], arrays),
            weight_format=_decode(d["weight_format"], arrays), bias=_decode(d["bias"], arrays),
            bias_format=_decode(d["bias_format"], arrays),
            contract=Contract(accumulator=_decode(c["accumulator"], arrays), rounding=c["rounding"],
                              fused=c["fused"], order=c["order"], engine=c["engine"]),
        ))
    return Graph(doc["name"], doc["inputs"], doc["outputs"], tensors, layers, doc.get("source_path"))
