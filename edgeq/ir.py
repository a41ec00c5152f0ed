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

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq.formats import NumFormat


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
