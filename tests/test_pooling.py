"""Pooling geometry and divisors against onnxruntime (the engine QONNX's execute_onnx runs standard ops on)."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeq.emulate import pool_output_hw, run_layer
from edgeq.errors import EdgeqError
from edgeq.formats import Float32
from edgeq.ir import Contract, Graph, Layer, Tensor

CASES = [dict(k=k, s=s, pads=p, ceil=c, cip=cip)
         for k, s, p, c, cip in itertools.product([2, 3], [1, 2], [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 1, 0)],
                                                  [0, 1], [0, 1])]


def _ort(op: str, x: np.ndarray, case: dict) -> np.ndarray:
    attrs = {"kernel_shape": [case["k"]] * 2, "strides": [case["s"]] * 2, "pads": list(case["pads"]),
             "ceil_mode": case["ceil"]}
    if op == "AveragePool":
        attrs["count_include_pad"] = case["cip"]
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    g = helper.make_graph([node], "p", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _edgeq(op: str, x: np.ndarray, case: dict, engine: str) -> np.ndarray:
    attrs = {"kernel": [case["k"]] * 2, "strides": [case["s"]] * 2, "pads": list(case["pads"]),
             "ceil_mode": case["ceil"], "count_include_pad": case["cip"]}
    oh, ow = pool_output_hw(attrs, x.shape[2:])
    t = {"x": Tensor("x", x.shape[1:], Float32()), "y": Tensor("y", (x.shape[1], oh, ow), Float32())}
    lay = Layer("p", op, ["x"], "y", ["p"], attrs=attrs, contract=Contract(engine=engine))
    return run_layer(Graph("g", ["x"], ["y"], t, [lay]), lay, [x])


@pytest.mark.parametrize("case", CASES, ids=lambda c: "k{k}s{s}p{pads}c{ceil}i{cip}".format(**c))
def test_pools_equal_onnxruntime(case):
    rng = np.random.default_rng(0)
    x = rng.integers(-8, 9, (2, 3, 7, 6)).astype(np.float32)  # integer values: every window sum is exact
    want = _ort("AveragePool", x, case)
    for engine in ("elementwise", "fp32"):  # the float32 model, and the MCU's sequential float32 sum
        got = _edgeq("AvgPool", x, case, engine)
        assert got.shape == want.shape and np.array_equal(got.astype(np.float32), want), engine
    got = _edgeq("MaxPool", x, case, "elementwise")
    assert np.array_equal(got.astype(np.float32), _ort("MaxPool", x, case))


def test_a_pool_whose_onnx_shape_disagrees_with_onnxruntime_is_refused(tmp_path):
    """ceil_mode with a last window starting in the padding: ONNX shape inference and onnxruntime disagree."""
    from edgeq.ingest import load

    node = helper.make_node("MaxPool", ["q"], ["y"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1],
                            ceil_mode=1)
    quant = helper.make_node("Quant", ["x", "s", "z", "b"], ["q"], domain="qonnx.custom_op.general", signed=1,
                             narrow=0, rounding_mode="ROUND")
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("s", 0.5), ("z", 0.0), ("b", 8.0))]
    g = helper.make_graph([quant, node], "p", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 3, 3])], inits)
    ops = [helper.make_opsetid("", 13), helper.make_opsetid("qonnx.custom_op.general", 1)]
    m = helper.make_model(g, opset_imports=ops)
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(EdgeqError, match="ceil_mode"):
        load(path)
