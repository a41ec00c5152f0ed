"""A tiny QONNX graph builder for hand-made test models (shared by the MCU, FPGA and fixed-point tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Q = "qonnx.custom_op.general"


class Model:
    """Nodes and constants of one graph with input "x"; ``save`` writes it as a QONNX model."""

    def __init__(self, in_shape):
        self.nodes, self.inits, self.n, self.in_shape = [], [], 0, list(in_shape)

    def c(self, v) -> str:
        self.n += 1
        self.inits.append(numpy_helper.from_array(np.asarray(v, dtype=np.float32), f"c{self.n}"))
        return f"c{self.n}"

    def node(self, op, ins, domain=None, **attrs) -> str:
        self.n += 1
        kw = {"domain": domain} if domain else {}
        self.nodes.append(helper.make_node(op, ins, [f"t{self.n}"], name=f"{op}_{self.n}", **kw, **attrs))
        return f"t{self.n}"

    def quant(self, x, bits, scale=1.0) -> str:
        return self.node("Quant", [x, self.c(scale), self.c(0.0), self.c(float(bits))], Q, signed=1, narrow=0,
                         rounding_mode="ROUND")

    def bipolar(self, x, scale=1.0) -> str:
        return self.node("BipolarQuant", [x, self.c(scale)], Q)

    def save(self, out, path, out_shape) -> Path:
        g = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.in_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(Q, 1)])
        m.ir_version = 8
        onnx.save(m, path)
        return Path(path)
