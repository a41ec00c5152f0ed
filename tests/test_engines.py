"""Exact MAC engines: the float32/float64/int64 choice from the formats, tested at the bounds' edges.

The oracle is Python integer arithmetic on the integer codes (and Fraction for the final rounding,
whose round() is half-to-even), independent of edgeq's formats.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeq

QDOMAIN = "qonnx.custom_op.general"


def _quant(name, x, out, bits, scale):
    inits = [numpy_helper.from_array(np.array(v, dtype=np.float32), f"{name}_{k}")
             for k, v in (("scale", scale), ("zp", 0.0), ("bits", float(bits)))]
    node = helper.make_node("Quant", [x, f"{name}_scale", f"{name}_zp", f"{name}_bits"], [out], name=name,
                            domain=QDOMAIN, signed=1, narrow=0, rounding_mode="ROUND")
    return node, inits


def dense_model(k, n, bits, scale_exp, w_codes, out_quant=None, relu=False):
    """x[1,k] -Quant(bits)-> MatMul with Quant(bits) weights (codes w_codes) [-> Relu] [-> Quant(out)]."""
    scale = 2.0**scale_exp
    nodes, inits = [], [numpy_helper.from_array((w_codes * scale).astype(np.float32), "w")]
    for name, src, dst in (("qx", "x", "xq"), ("qw", "w", "wq")):
        nd, it = _quant(name, src, dst, bits, scale)
        nodes.append(nd)
        inits += it
    nodes.append(helper.make_node("MatMul", ["xq", "wq"], ["acc"], name="dense"))
    out = "acc"
    if relu:
        nodes.append(helper.make_node("Relu", ["acc"], ["r"], name="relu"))
        out = "r"
    if out_quant is not None:
        nd, it = _quant("qy", out, "y", *out_quant)
        nodes.append(nd)
        inits += it
        out = "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QDOMAIN, 1)])
    model.ir_version = 8
    return model


def _exact_dot(xc, wc):
    return [[sum(int(a) * int(b) for a, b in zip(row, col)) for col in wc.T] for row in xc]


@pytest.mark.parametrize("k,engine", [(1024, "float32 BLAS"), (1025, "float64 BLAS")])
def test_engine_switches_from_float32_exactly_at_the_2_pow_24_bound(k, engine):
    # int8 x int8: |code| <= 128, so partial sums are bounded by k * 2**14; 1024 * 2**14 == 2**24.
    rng = np.random.default_rng(k)
    n = 3
    w_codes = rng.integers(-128, 128, (k, n)).astype(np.float64)
    w_codes[:, 0] = -128
    g = edgeq.load(dense_model(k, n, 8, -7, w_codes))
    dense = g.layers[-1]
    assert dense.contract.engine == engine
    xc = rng.integers(-128, 128, (6, k))
    xc[0] = -128  # the worst case: every product is +2**14
    xc[1] = np.where(np.arange(k) % 2, -128, 127)  # partial sums that are not multiples of 2**14
    y = edgeq.emulate(g, (xc * 2.0**-7).astype(np.float32))
    exact = np.array(_exact_dot(xc, w_codes.astype(np.int64)), dtype=object)
    assert np.array_equal(y * 2.0**14, exact.astype(np.float64))
    assert abs(exact[0][0]) == k * 2**14  # the bound itself is reached


def test_int64_engine_keeps_a_55_bit_accumulator_exact_and_rounds_it_once():
    k, n, bits = 256, 4, 24
    rng = np.random.default_rng(0)
    lim = 2 ** (bits - 1)
    w_codes = rng.integers(-lim, lim, (k, n))
    w_codes[:, 0] = lim - 1
    # Column 3 builds exact ties for the output rounding: x=2**22 times w=(2m+1)*2**20.
    w_codes[:, 3] = 0
    w_codes[0, 3] = 5 * 2**20
    out_bits, out_exp = 8, -3  # acc * 2**-46 / 2**-3: ties at acc = (2m+1) * 2**42
    g = edgeq.load(dense_model(k, n, bits, -(bits - 1), w_codes.astype(np.float64), (out_bits, 2.0**out_exp)))
    dense = next(layer for layer in g.layers if layer.op == "Dense")
    assert dense.contract.engine == "int64"
    assert g.tensors[dense.output].format.width > 53
    xc = rng.integers(-lim, lim, (8, k))
    xc[0] = 0
    xc[0, 0] = 2**22  # tie 2.5 in column 3
    xc[1] = 0
    xc[1, 0] = -(2**22)  # tie -2.5
    xc[2] = lim - 1  # large sums that float64 could not hold exactly
    y = edgeq.emulate(g, (xc * 2.0 ** -(bits - 1)).astype(np.float32))
    acc = _exact_dot(xc, w_codes)
    ref = []
    for row in acc:
        out = []
        for a in row:
            q = round(Fraction(a, 2 ** (2 * (bits - 1))) / Fraction(2) ** out_exp)  # half to even
            out.append(float(max(-128, min(127, q)) * 2.0**out_exp))
        ref.append(out)
    assert np.array_equal(y, np.array(ref))
    assert y[0, 3] == 2.0 * 2.0**out_exp and y[1, 3] == -2.0 * 2.0**out_exp  # 2.5 -> 2, -2.5 -> -2
    assert any(abs(a) > 2**53 for a in acc[2])


def test_accumulators_beyond_2_pow_62_are_refused_naming_the_layer():
    w_codes = np.ones((4, 2))
    model = dense_model(4, 2, 32, -31, w_codes)
    with pytest.raises(edgeq.EdgeqError, match=r"node 'dense' \(MatMul\).*2\^62"):
        edgeq.load(model)


def test_handmade_models_are_valid_onnx():
    onnx.checker.check_model(dense_model(8, 2, 8, -7, np.ones((8, 2))))


@pytest.mark.parametrize("relu", [False, True])
def test_a_wide_accumulator_just_above_a_tie_stays_exact_through_relu_into_the_emulator_and_csim(tmp_path, relu):
    """acc = 254.5 + 2^-46 needs 55 bits; float64 would round it onto the tie (-> 254 instead of 255)."""
    k = 256
    w = np.zeros((k, 1))
    w[:254, 0], w[254, 0], w[255, 0] = -(2**23), -(2**22), 1
    model = dense_model(k, 1, 24, -23, w, out_quant=(16, 1.0), relu=relu)
    x = np.full((1, k), -1.0, dtype=np.float32)
    x[0, 255] = 2.0**-23
    acc = sum(int(a) * int(b) for a, b in zip(np.round(x[0] * 2**23).astype(np.int64), w[:, 0].astype(np.int64)))
    assert Fraction(acc, 2**46) > Fraction(509, 2) and acc > 2**53  # just above 254.5
    assert edgeq.emulate(edgeq.load(model), x)[0, 0] == 255.0
    path = tmp_path / "wide.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", x)
    from edgeq.backends.hls.build import BuildConfig, build

    rep = build(BuildConfig(model=path, board="ultra96", out=tmp_path / "p", vectors=tmp_path / "x.npy", trace=True))
    assert rep["csim"]["status"] == "pass" and rep["csim"]["first_divergence"] is None
    assert all(r["mismatching_elements"] == 0 for r in rep["csim"]["layers"])


def test_int_quantize_accepts_scalars():
    from edgeq.formats import Int

    f = Int(8, scale=0.0625)
    assert f.quantize_codes(np.float32(0.3)) == 5.0 and f.quantize(np.array(0.3, dtype=np.float32)) == 0.3125
