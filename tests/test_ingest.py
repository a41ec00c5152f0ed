"""Ingest: formats survive qonnx cleanup, layouts are normalised, unsupported input is refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import qonnx_reference

import edgeq
from edgeq.formats import FixedPoint, MiniFloat


def _floatquant_reference(path, node_suffix: str) -> tuple[np.ndarray, np.ndarray]:
    """(raw float weights, QONNX FloatQuant of them) read from the export with qonnx's executor."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    mw = ModelWrapper(str(path))
    node = next(n for n in mw.graph.node if n.op_type == "FloatQuant" and node_suffix in n.name)
    node.domain = "qonnx.custom_op.general"
    ctx = {i: mw.get_initializer(i) for i in node.input}
    getCustomOp(node).execute_node(ctx, mw.graph)
    return ctx[node.input[0]], ctx[node.output[0]]


@pytest.mark.parametrize("pow2", [True, False])
def test_floatquant_weight_format_survives_cleanup_and_matches_qonnx_values(exported, pow2):
    path, _, _ = exported("minifloat", 0, pow2)
    graph = edgeq.load(path)
    dense = next(layer for layer in graph.layers if layer.op == "Dense")
    wf = dense.weight_format
    assert isinstance(wf, MiniFloat) and (wf.exponent_bits, wf.mantissa_bits, wf.bias) == (4, 3, 7)
    assert wf.max == 448.0 and wf.has_nan and not wf.has_inf
    _, ref_w = _floatquant_reference(path, "weight_quant")
    # The IR holds (K, N) weights for y = x @ W; the export stores Linear's (N, K) before a Transpose.
    assert np.array_equal(dense.weight, ref_w.T.astype(np.float64))
    assert isinstance(graph.tensors[dense.inputs[0]].format, MiniFloat)


def test_minifloat_layer_is_exact_where_qonnx_rounds_within_its_float32_bound(exported):
    """E4M3 x E4M3 products are exact in fixed point; with power-of-two scales edgeq's accumulator
    is an exact FixedPoint. QONNX sums in float32, so it may differ, but only within Higham's bound
    gamma_K * sum|x||w| (K = 64), and Brevitas' float32 forward is bounded the same way."""
    path, _, shape = exported("minifloat", 0, True)
    graph = edgeq.load(path)
    dense = next(layer for layer in graph.layers if layer.op == "Dense")
    assert isinstance(graph.tensors[dense.output].format, FixedPoint)
    x = np.random.default_rng(4).uniform(-1, 1, (64,) + shape[1:]).astype(np.float32)
    y, trace = edgeq.emulate(graph, x, trace=True)
    xq = trace[graph.layers[0].name].reshape(len(x), -1)
    exact = xq @ dense.weight  # float64: 8-bit significands x 8-bit, K=64, far below 2**53
    assert np.array_equal(y, exact)
    ref = qonnx_reference(path, x)
    k, u = 64, 2.0**-24
    bound = k * u / (1 - k * u) * (np.abs(xq) @ np.abs(dense.weight))
    assert np.all(np.abs(ref - exact) <= bound)


def test_dynamic_spatial_dimensions_are_refused_naming_the_input(tmp_path):
    import torch

    path = tmp_path / "dyn.onnx"
    torch.onnx.export(torch.nn.Conv2d(1, 2, 3), torch.zeros(1, 1, 8, 8), str(path), input_names=["img"],
                      dynamic_axes={"img": {2: "height"}}, dynamo=False)
    with pytest.raises(edgeq.EdgeqError, match="img.*dynamic dimension 2"):
        edgeq.load(path)


def test_float_input_feeding_a_convolution_is_refused_naming_the_node(tmp_path):
    """bnn_pynq's resnet18 feeds the float image straight into its first QuantConv2d."""
    import torch
    from brevitas import nn as qnn

    path = tmp_path / "floatin.onnx"
    net = torch.nn.Sequential(qnn.QuantConv2d(3, 4, 3, bias=False))
    edgeq.export(net.eval(), torch.zeros(1, 3, 8, 8), path)
    with pytest.raises(edgeq.EdgeqError, match=r"\(Conv\): input .* float32 with no quantizer"):
        edgeq.load(path)


def test_trunc_average_pool_and_quantized_bias_lower_to_exact_layers(exported):
    path, _, _ = exported("fixed", 0, 8, "power_of_two")
    graph = edgeq.load(path)
    ops = [layer.op for layer in graph.layers]
    assert "Trunc" in ops and ops[ops.index("Trunc") - 1] == "AvgPool"
    dense = next(layer for layer in graph.layers if layer.op == "Dense")
    assert dense.bias is not None and isinstance(graph.tensors[dense.output].format, FixedPoint)
    for layer in graph.layers:  # every tensor carries a format, every MAC layer a contract
        assert graph.tensors[layer.output].format is not None
        if layer.op in ("Conv2d", "Dense"):
            assert layer.contract.accumulator is not None and layer.macs > 0
