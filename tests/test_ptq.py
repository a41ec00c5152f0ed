"""edgeq.ptq: post-training minifloat/integer quantization, checked against outside references.

* Where every sum is exact in float32 (power-of-two scales, narrow formats; the bound is proved per layer
  from the IR's formats), the exported model's emulation equals the Brevitas forward bit for bit.
* With float32 scales Brevitas sums float32-rounded products, so equality is impossible: every quantizer
  and every weight still agrees bit for bit, and each MAC layer's output lies within Higham's bound of the
  exact sum (README, "Where QONNX's own reference is not exact").
* The FloatQuant quantizers the flow builds agree with ml_dtypes' OCP formats and with QONNX's executor.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import run_qonnx_node
from torch import nn

import edgeq
from edgeq import ptq
from edgeq.errors import EdgeqError
from edgeq.formats import FixedPoint, Int, MiniFloat
from edgeq.ingest import grid_of

ROOT = Path(__file__).resolve().parents[1]
U = 2.0**-24  # float32 unit roundoff


@pytest.fixture(scope="module")
def digits_model():
    """(float CNN trained 4 epochs on digits, x_train, x_test)."""
    from edgeq.data import digits

    x_tr, y_tr, x_te, _ = digits()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    for _ in range(4):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    return net.eval(), x_tr, x_te


def _export(qm, tmp_path, name="m.onnx"):
    return ptq.export(qm, torch.zeros(1, 1, 8, 8), tmp_path / name)


def _brevitas(qm, x):
    with torch.no_grad():
        return qm(torch.from_numpy(x)).numpy()


def _quant_layers(qm):
    from brevitas import nn as qnn

    return [m for m in qm.modules() if isinstance(m, qnn.QuantConv2d | qnn.QuantLinear)]


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64), equal_nan=True)


# ---------------------------------------------------------------------------------------------- exact models

EXACT = {
    "e2m1 x e3m2, per channel": dict(weights="e2m1", acts="e3m2"),
    "int4 x uint4, per tensor": dict(weights="int4", acts="int4", per_channel=False),
    "e3m2 x e2m3, activation equalization": dict(weights="e3m2", acts="e2m3", act_equalization=0.5),
    "custom bias/inf, saturating": dict(
        weights=MiniFloat(2, 2, bias=0),
        acts=MiniFloat(3, 1, bias=4, has_inf=True, has_nan=True, saturating=True)),
}


def test_non_saturating_activations_into_a_conv_are_refused_naming_it(digits_model, tmp_path):
    """inf/NaN activations have no integer codes: the exact accumulator cannot hold them (the fuzzer found inf - inf
    summed wrongly), so the MAC is refused with what to change."""
    net, x_tr, _ = digits_model
    qm = ptq.quantize(net, x_tr[:256], power_of_two_scales=True, weights=MiniFloat(2, 2, bias=0),
                      acts=MiniFloat(3, 1, bias=4, has_inf=True, has_nan=True, saturating=False))
    with pytest.raises(EdgeqError, match=r"node '/0/Conv' \(Conv\): .*inf/NaN.*use a saturating minifloat"):
        edgeq.load(_export(qm, tmp_path))


@pytest.mark.parametrize("name", list(EXACT))
def test_power_of_two_model_emulates_brevitas_bit_for_bit_where_float32_sums_are_exact(digits_model, tmp_path, name):
    net, x_tr, x_te = digits_model
    qm = ptq.quantize(net, x_tr[:256], power_of_two_scales=True, **EXACT[name])
    graph = edgeq.load(_export(qm, tmp_path))
    for layer in graph.layers:
        if layer.op not in ("Conv2d", "Dense"):
            continue
        # The proof that Brevitas' float32 conv is exact: every product and partial sum of output channel c
        # is a multiple of L_c = lsb_x * lsb_w[c] below 2^24 * L_c, with the bias (snapped onto L_c) included.
        assert isinstance(graph.tensors[layer.output].format, FixedPoint)
        lsb_x, max_x = grid_of(graph.tensors[layer.inputs[0]].format)
        lsb_w, _ = grid_of(layer.weight_format)
        w = layer.weight if layer.op == "Conv2d" else layer.weight.T  # (Cout, K...)
        lsb_w = np.broadcast_to(np.asarray(lsb_w, np.float64).reshape(-1), (w.shape[0],))
        per_out = np.abs(w.reshape(len(w), -1)).sum(1) / lsb_w * max_x
        bias = np.abs(layer.bias) / (float(lsb_x) * lsb_w) if layer.bias is not None else 0
        assert np.all(per_out + bias <= 2.0**24), f"{layer.name}: not in the exact regime"
        if layer.bias is not None:
            assert np.all(np.rint(layer.bias / (float(lsb_x) * lsb_w)) * float(lsb_x) * lsb_w == layer.bias)
    if isinstance(EXACT[name]["weights"], MiniFloat):
        wf = next(layer.weight_format for layer in graph.layers if layer.op == "Conv2d")
        assert (wf.exponent_bits, wf.mantissa_bits, wf.bias) == (2, 2, 0)
        af = graph.tensors[next(layer for layer in graph.layers if layer.op == "Conv2d").inputs[0]].format
        assert (af.bias, af.has_inf, af.has_nan, af.saturating) == (4, True, True, True)
    x = np.concatenate([x_te, 4 * x_te[:64]])  # beyond the calibration range: saturation, or inf and NaN
    y, trace = edgeq.emulate(graph, x, trace=True)
    assert _same(y, _brevitas(qm, x))
    first = trace[next(layer.name for layer in graph.layers if layer.op == "Quantize")]
    assert not np.isinf(first).any()  # saturating: beyond the range is the largest finite value, never inf


# ---------------------------------------------------------------------------------------------- float scales


def test_float_scale_minifloat_model_agrees_per_quantizer_and_within_higham_per_mac_layer(digits_model, tmp_path):
    """e4m3 x e4m3 with float32 scales (the default). Per MAC layer, from the *same* quantized input:

    Brevitas sums K float32-rounded products plus the bias in float32: |y_b - S| <= gamma_{K+1} T, with S the
    exact sum of the dequantized float32 operands and T = sum |x||w| + |b| (Higham, Accuracy and Stability of
    Numerical Algorithms, 3.1). The emulator sums the integer codes exactly and rounds A*s_x*s_w and the bias
    add once each in float32, and the dequantized operands are themselves float32 roundings of code*scale
    (relative 2u per product): |y_e - S| <= 4u T. So |y_e - y_b| <= gamma_{K+6} T, gamma_n = nu / (1 - nu).
    """
    net, x_tr, x_te = digits_model
    qm = ptq.quantize(net, x_tr[:256], weights="e4m3", acts="e4m3")
    graph = edgeq.load(_export(qm, tmp_path))
    x = x_te[:128]
    _, trace = edgeq.emulate(graph, x, trace=True)
    mods = iter(_quant_layers(qm))
    source = x
    checked = differ = 0
    for layer in graph.layers:
        if layer.op == "Quantize":
            mod = next(mods)
            with torch.no_grad():
                q = mod.input_quant(torch.from_numpy(np.asarray(source, np.float32)))
            q = getattr(q, "value", q).numpy()
            assert _same(trace[layer.name], q), f"{layer.name}: FloatQuant differs from Brevitas"
            xq = trace[layer.name]
        elif layer.op in ("Conv2d", "Dense"):
            with torch.no_grad():
                wq = mod.quant_weight().value.numpy()
            assert _same(layer.weight, wq if layer.op == "Conv2d" else wq.T), f"{layer.name}: weights differ"
            assert isinstance(layer.weight_format, MiniFloat) and len(layer.weight_format.scale) == wq.shape[0]
            b = mod.bias.detach().numpy()
            xt, wt = torch.from_numpy(np.asarray(xq, np.float32)), torch.from_numpy(wq)
            f64 = {"dtype": torch.float64}
            with torch.no_grad():
                if layer.op == "Conv2d":
                    kw = {"padding": mod.padding, "stride": mod.stride}
                    y_b = nn.functional.conv2d(xt, wt, torch.from_numpy(b), **kw).numpy()
                    t = nn.functional.conv2d(xt.abs().to(**f64), wt.abs().to(**f64), **kw).numpy()
                    t += np.abs(b).reshape(-1, 1, 1)
                    k = int(np.prod(wq.shape[1:]))
                else:
                    y_b = nn.functional.linear(xt, wt, torch.from_numpy(b)).numpy()
                    t = (xt.abs().to(**f64) @ wt.abs().to(**f64).T).numpy() + np.abs(b)
                    k = wq.shape[1]
            y_e = trace[layer.name]
            gamma = (k + 6) * U / (1 - (k + 6) * U)
            assert np.all(np.abs(y_e - y_b) <= gamma * t), f"{layer.name}: beyond the summation bound"
            differ += int(np.sum(y_e != y_b))
            checked += 1
        source = trace[layer.name]
    assert checked == 3 and differ > 0  # the float32 sums do differ, so the bound is what is tested
    y_b = _brevitas(qm, x_te)
    y_e = edgeq.emulate(graph, x_te)
    assert np.mean(y_e.argmax(1) == y_b.argmax(1)) >= 0.99


# ---------------------------------------------------------------------------------------------- FloatQuant oracles

OCP = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2, "e2m1": ml_dtypes.float4_e2m1fn,
       "e2m3": ml_dtypes.float6_e2m3fn, "e3m2": ml_dtypes.float6_e3m2fn}


def _floatquant_nodes(path):
    from qonnx.core.modelwrapper import ModelWrapper

    mw = ModelWrapper(str(path))
    out = []
    for n in mw.graph.node:
        if n.op_type == "FloatQuant":
            params = dict(zip(("scale", "exponent_bitwidth", "mantissa_bitwidth", "exponent_bias", "max_val"),
                              (mw.get_initializer(i) for i in n.input[1:])))
            attrs = {a.name: (a.s.decode() if a.s else a.i) for a in n.attribute}
            out.append((n, mw.get_initializer(n.input[0]), params, attrs))
    return out


@pytest.mark.parametrize("name", list(OCP))
def test_ptq_floatquant_matches_ml_dtypes_qonnx_and_edgeq(tmp_path, name):
    """The activation quantizer the flow builds: Brevitas == ml_dtypes (OCP) == QONNX FloatQuant == edgeq."""
    rng = np.random.default_rng(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    calib = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    # e5m2 x e5m2 accumulators exceed 2^62 (see the next test): e5m2 activations get e4m3 weights
    wname = "e4m3" if name == "e5m2" else name
    qm = ptq.quantize(net, calib, weights=wname, acts=name, equalize=False)
    path = _export(qm, tmp_path)
    (act_node, _, p, attrs), (_, w_raw, wp, wattrs) = _floatquant_nodes(path)[:2]
    assert w_raw is not None  # the weights' FloatQuant survived export, fed by the float initializer
    s = np.float32(p["scale"])
    mod = _quant_layers(qm)[0]
    fmt = ptq.format_of(name)
    grid = np.unique(np.abs(np.arange(256, dtype=np.uint8).view(OCP[name]).astype(np.float32)))
    grid = grid[np.isfinite(grid)][: 1 << (fmt.bits - 1)]
    v = np.concatenate([grid, (grid[1:] + grid[:-1]) / 2, rng.standard_normal(5000) * grid.max() / 3,
                        [grid.max() * 1.2, grid.max() * 4, 1e-30]]).astype(np.float32)
    x = np.concatenate([v, -v]) * s
    with torch.no_grad():
        y_brev = mod.input_quant(torch.from_numpy(x))
    y_brev = getattr(y_brev, "value", y_brev).numpy()
    vq = np.clip(x / s, -float(fmt.max), float(fmt.max))  # the quantizer saturates; ml_dtypes' fn types do not
    y_ml = vq.astype(OCP[name]).astype(np.float32) * s
    y_qonnx = run_qonnx_node("FloatQuant", x, p, **attrs)
    graph = edgeq.load(path)
    quant = next(layer for layer in graph.layers if layer.op == "Quantize")
    y_edgeq = graph.tensors[quant.output].format.quantize(x, np.float32)
    assert _same(y_brev, y_ml) and _same(y_brev, y_qonnx) and _same(y_brev, y_edgeq)
    # weights: QONNX executing the exported FloatQuant on the raw weights == Brevitas == the IR's weights
    w_qonnx = run_qonnx_node("FloatQuant", w_raw, wp, **wattrs)
    with torch.no_grad():
        assert _same(w_qonnx, mod.quant_weight().value.numpy())
    dense = next(layer for layer in graph.layers if layer.op == "Dense")
    assert isinstance(dense.weight_format, MiniFloat) and _same(dense.weight, w_qonnx.T)


def test_e5m2_times_e5m2_is_refused_at_export_because_its_exact_accumulator_exceeds_int64(tmp_path):
    """Two e5m2 operands span 2^33 steps each, so K products need more than the emulator's 2^62: one line."""
    qm = ptq.quantize(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), np.ones((8, 1, 8, 8), np.float32),
                      weights="e5m2", acts="e5m2", equalize=False)
    with pytest.raises(edgeq.EdgeqError, match=r"partial sums may reach .* \(> 2\^62\)"):
        _export(qm, tmp_path)


# ---------------------------------------------------------------------------------------------- the flow's steps


def test_equalization_and_bias_correction_change_the_model_as_brevitas_does(digits_model):
    net, x_tr, _ = digits_model
    calib = x_tr[:256]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(calib),
                                                                        torch.zeros(len(calib))), batch_size=50)
    qa = ptq.quantize(net, loader, weights="int3", acts="int4", equalize=False, bias_correction=False)
    qb = ptq.quantize(net, calib, weights="int3", acts="int4", equalize=True, bias_correction=False)
    qc = ptq.quantize(net, calib, weights="int3", acts="int4", equalize=True, bias_correction=True)
    wa, wb = (_quant_layers(q)[0].weight.detach() for q in (qa, qb))
    assert not torch.equal(wa, wb)  # cross-layer equalization rescaled the first layer's channels
    # Bias correction removes the mean output error of each layer on the calibration data.
    with torch.no_grad():
        ref = net(torch.from_numpy(calib))
        err_b = (qb(torch.from_numpy(calib)) - ref).mean(0).abs().mean()
        err_c = (qc(torch.from_numpy(calib)) - ref).mean(0).abs().mean()
    assert err_c < err_b
    assert qc.edgeq_ptq.layer_inputs["0"] == Int(4, signed=False)  # the image is never negative: unsigned


def test_per_tensor_and_per_channel_scales_and_rounding_reach_the_export(digits_model, tmp_path):
    net, x_tr, _ = digits_model
    for per_channel, n in ((True, 8), (False, 1)):
        qm = ptq.quantize(net, x_tr[:128], weights="e3m2", acts="e2m3", per_channel=per_channel, rounding="FLOOR")
        graph = edgeq.load(_export(qm, tmp_path, f"pc{per_channel}.onnx"))
        conv = next(layer for layer in graph.layers if layer.op == "Conv2d")
        assert len(conv.weight_format.scale) == n and conv.weight_format.rounding == "FLOOR"
        assert graph.tensors[conv.inputs[0]].format.rounding == "FLOOR"


# ---------------------------------------------------------------------------------------------- bad input

BAD = [
    (dict(weights="e0m3"), "weights format 'e0m3': a minifloat needs at least 1 exponent bit"),
    (dict(acts="fp7"), "acts format 'fp7' is unknown"),
    (dict(acts="e4m3", rounding="HALF_UP"), "unsupported rounding mode 'HALF_UP'"),
    (dict(weights=MiniFloat(3, 2, rounding="DOWN")), "unsupported rounding mode 'DOWN'"),
    (dict(weights=MiniFloat(3, 2, has_subnormal=False)), "always have subnormals"),
    (dict(acts=MiniFloat(3, 2, has_inf=True)), "inf without NaN"),
    (dict(acts=MiniFloat(3, 0, has_nan=True)), "without mantissa bits"),
    (dict(weights="uint4"), "weights must be signed"),
    (dict(weights="int1"), "integer width must be 2..16"),
    (dict(acts="e9m2"), "at most 8 exponent bits"),
    (dict(act_equalization=2.0), "alpha must be in [0, 1]"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_is_one_edgeq_error_line_naming_it(kwargs, message):
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(edgeq.EdgeqError) as e:
        ptq.quantize(net, np.zeros((4, 4), np.float32), **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_empty_broken_or_misshapen_calibration_data_is_one_line():
    net = nn.Sequential(nn.Linear(4, 2))
    for data, message in (([], "calibration data is empty"), (np.full((2, 4), np.nan, np.float32), "NaN"),
                          (42, "expected a DataLoader"),
                          (np.zeros((2, 5), np.float32), r"shape \(2, 5\) does not fit")):
        with pytest.raises(edgeq.EdgeqError, match=message):
            ptq.quantize(net, data)


# ---------------------------------------------------------------------------------------------- the bench


def test_minifloat_dse_quick_writes_plot_and_csv_with_int_and_minifloat_rows(tmp_path):
    """bench/minifloat_dse.py --quick: table, Pareto verdict, CSV + PNG, and a csim spot check with 0 mismatches."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "minifloat_dse.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "minifloat_dse.png").stat().st_size > 10_000
    import csv

    rows = list(csv.DictReader(open(tmp_path / "minifloat_dse.csv")))
    fams = {row["family"] for row in rows}
    assert {"int", "minifloat"} <= fams and all(row["accuracy"] for row in rows)
    assert all(float(row["lut"]) > 0 for row in rows)
    assert "integers Pareto-optimal" in r.stdout
    assert " 0 mismatches of " in r.stdout, r.stdout[-1500:]
