"""The emulator is bit-identical to QONNX's reference executor (execute_onnx) on real exports."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import qonnx_reference

import edgeq
from edgeq.formats import Float32
from edgeq.zoo import BNN_PYNQ


def _inputs(shape, n, seed=0):
    # bnn_pynq networks take images in [0, 1]
    return np.random.default_rng(seed).uniform(0, 1, (n,) + tuple(shape[1:])).astype(np.float32)


@pytest.mark.parametrize("name", BNN_PYNQ)
def test_bnn_pynq_emulation_is_bit_identical_to_qonnx_in_every_layer(exported, name):
    path, _, shape = exported("bnn_pynq", name, 0)
    graph = edgeq.load(path)
    x = _inputs(shape, 3 if name.startswith("cnv") else 8)
    y, trace = edgeq.emulate(graph, x, trace=True)
    ref, ctx = qonnx_reference(path, x, full_context=True)
    assert y.shape == ref.shape
    assert np.array_equal(y, ref), f"max |diff| {np.abs(y - ref).max()}"
    compared = 0
    for layer in graph.layers:
        if layer.output in ctx:
            expect = ctx[layer.output].astype(np.float64)
            assert np.array_equal(trace[layer.name], expect), f"{name}: layer {layer.name} ({layer.op}) differs"
            compared += 1
    assert compared >= len(graph.layers) - 1


@pytest.mark.parametrize("name", ["tfc_2w2a", "cnv_1w1a"])
def test_bnn_pynq_emulation_matches_qonnx_cleanup_pipeline_on_larger_batches(exported, name):
    path, _, shape = exported("bnn_pynq", name, 1)
    graph = edgeq.load(path)
    x = _inputs(shape, 24 if "fc" in name else 6, seed=3)
    assert np.array_equal(edgeq.emulate(graph, x), qonnx_reference(path, x))


def test_fixed_point_cnn_matches_qonnx_and_brevitas_bit_for_bit(exported):
    import torch

    path, model, shape = exported("fixed", 0, 8, "power_of_two")
    graph = edgeq.load(path)
    # Everything is exact fixed point except the declared float32 glue (BatchNorm, AvgPool division).
    mac_layers = [lay for lay in graph.layers if lay.op in ("Conv2d", "Dense")]
    assert mac_layers and all(not isinstance(graph.tensors[m.output].format, Float32) for m in mac_layers)
    adds = [lay for lay in graph.layers if lay.op == "Add"]
    assert adds and not isinstance(graph.tensors[adds[0].output].format, Float32)
    x = np.random.default_rng(1).uniform(-1, 1, (32,) + shape[1:]).astype(np.float32)
    y = edgeq.emulate(graph, x)
    assert np.array_equal(y, qonnx_reference(path, x))
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    out = getattr(out, "value", out)
    assert np.array_equal(y, out.numpy().astype(np.float64))


def test_float_scaled_integer_cnn_differs_from_qonnx_only_within_the_float32_summation_bound(exported):
    """With learned float32 scales exact equality with QONNX is impossible: QONNX dequantizes
    (q*s rounded to float32) and accumulates in float32, rounding at every partial sum, while
    edgeq accumulates the integer codes exactly and rounds once (declared contract).

    Proof obligation checked here on the first convolution (whose inputs are bit-identical in both):
    for any summation order, |ref - exact| <= gamma_(K+2) * sum|x||w| (Higham's dot-product bound,
    with two extra roundings for the dequantized operands), and |emu - exact| <= u*|exact|.
    """
    import torch

    path, _, shape = exported("fixed", 0, 8, "float")
    graph = edgeq.load(path)
    x = np.random.default_rng(2).uniform(-1, 1, (16,) + shape[1:]).astype(np.float32)
    y, trace = edgeq.emulate(graph, x, trace=True)
    ref, ctx = qonnx_reference(path, x, full_context=True)
    quant, conv = graph.layers[0], graph.layers[1]
    assert quant.op == "Quantize" and conv.op == "Conv2d"
    assert isinstance(graph.tensors[conv.output].format, Float32)  # declared: one rounding to float32
    assert np.array_equal(trace[quant.name], ctx[quant.output])
    xa = torch.from_numpy(np.abs(trace[quant.name]))
    wa = torch.from_numpy(np.abs(conv.weight.astype(np.float64)))
    mag = torch.nn.functional.conv2d(xa, wa, padding=conv.attrs["pads"][:2]).numpy()
    k = int(np.prod(conv.weight.shape[1:]))
    u = 2.0**-24
    gamma = (k + 2) * u / (1 - (k + 2) * u)
    diff = np.abs(trace[conv.name] - ctx[conv.output])
    assert np.all(diff <= gamma * mag + u * np.abs(trace[conv.name]))
    assert diff.max() > 0 or np.array_equal(trace[conv.name], ctx[conv.output])
    # End to end the difference stays at float32-rounding level relative to the logits.
    assert np.abs(y - ref).max() <= 1e-3 * np.abs(ref).max()
