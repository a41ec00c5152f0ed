"""Minifloat and mixed int/minifloat models on the FPGA backend (issue 7).

Real post-training-quantized models (``edgeq.zoo.minifloat_cnn``: a digits CNN, Brevitas' learned float32 scales)
are built for ultra96 with ``edgeq build``; the generated HLS C simulation must equal the emulator bit for bit on
64 real test images, and agree with the Brevitas forward on the predicted digit. Minifloat tensors stay 8-bit
codes in the generated C++, and the float32 rescale is one declared layer. A planted bug in the minifloat decoder
makes the project's own ``make csim`` fail. Bad inputs each get one line and exit code 2.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qonnx_builder import Model, Q

EDGEQ = str(Path(sys.executable).with_name("edgeq"))


def edgeq_cli(*args):
    return subprocess.run([EDGEQ, *map(str, args)], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from edgeq.data import digits

    _, _, x_te, _ = digits()
    path = tmp_path_factory.mktemp("vec") / "digits64.npy"
    np.save(path, x_te[:64])
    return path, x_te[:64]


@pytest.fixture(scope="module")
def ptq_models(tmp_path_factory):
    from edgeq import ptq, zoo

    d = tmp_path_factory.mktemp("mf")
    cache = {}

    def get(weights: str, acts: str):
        if (weights, acts) not in cache:
            model, example = zoo.minifloat_cnn(weights, acts, epochs=2)
            path = d / f"w_{weights}_a_{acts}.onnx"
            ptq.export(model, example, path)
            cache[weights, acts] = path, model
        return cache[weights, acts]

    return get


# (weights, activations): minifloat x minifloat, and both mixes of integers and minifloats
CASES = [("e2m1", "e4m3"), ("int8", "e4m3"), ("e3m2", "int8")]


@pytest.mark.parametrize("w,a", CASES, ids=[f"{w}x{a}" for w, a in CASES])
def test_ptq_models_with_float32_scales_build_bit_exact_for_ultra96(ptq_models, images, tmp_path, w, a):
    import torch

    path, model = ptq_models(w, a)
    vec, x = images
    out = tmp_path / "proj"
    res = edgeq_cli("build", path, "--board", "ultra96", "--out", out, "--vectors", vec)
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    cs = rep["csim"]
    assert cs["status"] == "pass" and cs["vectors"] == 64 and cs["mismatches"] == 0 and cs["outputs_compared"] == 640
    csim = np.load(out / "csim" / "outputs.npy")
    with torch.no_grad():
        brevitas = model(torch.from_numpy(x)).numpy()
    assert (csim.argmax(1) == brevitas.argmax(1)).mean() >= 0.95  # the float32 forward sums in another order
    # The scales are learned float32 values, not powers of two, and the output leaves through the declared rescale.
    ops = [lay["op"] for lay in rep["layers"]]
    assert ops[-1] == "Rescale" and "MaxPool" in ops and "Threshold" in ops
    hls = out / "hls"
    types = (hls / "edgeq_types.h").read_text()
    for fmt in {w, a} - {"int8"}:  # minifloat activations are 8-bit codes; minifloat weights their bits
        if fmt == a:
            assert re.search(rf"typedef uint8_t \w+;  // .*{fmt}\*", types), types
        else:
            weights = "".join(p.read_text() for p in (hls / "weights").glob("*.h"))
            assert re.search(r"static const uint8_t \w+_weight\[", weights)
    rescale = next(p for p in (hls / "weights").glob("*rescale*.h")).read_text()
    scales = [float(v) for v in re.findall(r"(-?\d\.?\d*e[-+]\d+)f", rescale)]
    m, e = np.frexp(np.asarray(scales[:10]))
    assert np.any(m != 0.5)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_planted_bug_in_the_minifloat_decoder_fails_the_projects_csim(ptq_models, images, tmp_path):
    """The check can fail: decode subnormal codes one binade too high and re-run the project's csim."""
    path, _ = ptq_models("e2m1", "e4m3")
    out = tmp_path / "p"
    res = edgeq_cli("build", path, "--board", "ultra96", "--out", out, "--vectors", images[0])
    assert res.returncode == 0, res.stderr
    ok = subprocess.run(["make", "-s", "csim"], cwd=out, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "bit-identical" in ok.stdout, ok.stdout + ok.stderr
    header = out / "hls" / "edgeq_minifloat.h"
    text = header.read_text()
    assert text.count("return e ? e - 1 : 0;") == 1
    header.write_text(text.replace("return e ? e - 1 : 0;", "return e ? e - 1 : 1;"))
    bad = subprocess.run(["make", "-s", "csim"], cwd=out, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "differ" in bad.stdout, bad.stdout + bad.stderr


def test_power_of_two_minifloats_keep_8_bit_codes_and_an_exact_accumulator(tmp_path, images):
    """zoo.minifloat_mlp (E4M3 with power-of-two scales): no rescale; the accumulator is the IR's exact fixed point."""
    import edgeq
    from edgeq import zoo
    from edgeq.backends.hls.lower import lower

    model, shape = zoo.minifloat_mlp(power_of_two_scales=True)
    import torch

    path = tmp_path / "mlp.onnx"
    edgeq.export(model, torch.rand(shape), path)
    design = lower(edgeq.load(path))
    dense = next(lay for lay in design.layers if lay.op == "Dense")
    assert dense.attrs["x_mf"] == [4, 3] and dense.attrs["w_mf"] == [4, 3]
    assert design.tensors[dense.inputs[0]].ctype == "uint8_t"
    assert not any(lay.op == "Rescale" for lay in design.layers)
    out = tmp_path / "p"
    res = edgeq_cli("build", path, "--board", "ultra96", "--out", out)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "report.json").read_text())["csim"]["mismatches"] == 0


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, no output directory
# ---------------------------------------------------------------------------------------------


def _floatquant(m: Model, x: str, e: float, mant: float, scale=1.0, **attrs) -> str:
    from edgeq.formats import MiniFloat

    top = MiniFloat(max(e, 1.0), mant, has_inf=bool(attrs.get("has_inf", 0)),
                    has_nan=bool(attrs.get("has_nan", 0))).max  # QONNX's max_val input
    ins = [x, m.c(scale), m.c(e), m.c(mant), m.c(2.0 ** (e - 1) - 1 if e >= 1 else 0.0), m.c(top)]
    return m.node("FloatQuant", ins, Q, **attrs)


def _mlp(path: Path, e_in=4.0, rounding="ROUND", saturation=1, act_scale=0.0123) -> Path:
    rng = np.random.default_rng(0)
    m = Model([1, 16])
    x = _floatquant(m, "x", e_in, 3.0, act_scale, rounding_mode=rounding, saturation=saturation,
                    **({"has_inf": 1} if not saturation else {}))
    w = _floatquant(m, m.c(rng.normal(0, 1, (16, 4))), 2.0, 1.0, 0.37)
    y = m.node("MatMul", [x, w])
    return m.save(y, path, [1, 4])


def _one_line_exit_2(res, out: Path, *words: str):
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists()


def test_the_hand_built_minifloat_mlp_builds(tmp_path):
    path = _mlp(tmp_path / "ok.onnx")
    out = tmp_path / "p"
    res = edgeq_cli("build", path, "--board", "ultra96", "--out", out)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "report.json").read_text())["csim"]["mismatches"] == 0


def test_floatquant_with_zero_exponent_bits_is_refused(tmp_path):
    path = _mlp(tmp_path / "e0.onnx", e_in=0.0)
    out = tmp_path / "p"
    _one_line_exit_2(edgeq_cli("build", path, "--board", "ultra96", "--out", out), out, "FloatQuant",
                     "exponent bit width 0")


def test_an_unsupported_rounding_mode_is_named(tmp_path):
    path = _mlp(tmp_path / "r.onnx", rounding="STOCHASTIC")
    out = tmp_path / "p"
    _one_line_exit_2(edgeq_cli("build", path, "--board", "ultra96", "--out", out), out, "FloatQuant", "STOCHASTIC")


def test_a_non_saturating_minifloat_into_a_mac_is_refused_naming_the_layer(tmp_path):
    path = _mlp(tmp_path / "inf.onnx", saturation=0)
    out = tmp_path / "p"
    _one_line_exit_2(edgeq_cli("build", path, "--board", "ultra96", "--out", out), out, "MatMul", "inf/NaN")


def test_adding_a_minifloat_and_an_integer_tensor_with_float_scales_is_refused_naming_the_add(tmp_path):
    rng = np.random.default_rng(0)
    m = Model([1, 16])
    x = _floatquant(m, "x", 4.0, 3.0, 0.0123)
    t = m.node("MatMul", [x, _floatquant(m, m.c(rng.normal(0, 1, (16, 8))), 2.0, 1.0, 0.37)])
    a = _floatquant(m, t, 4.0, 3.0, 0.0217)  # one branch requantized to e4m3 ...
    b = m.quant(t, 8, 0.0371)  # ... the other to int8, both with float32 scales
    y = m.node("Add", [a, b])
    q = m.quant(y, 8, 0.05)
    path = m.save(q, tmp_path / "add.onnx", [1, 8])
    out = tmp_path / "p"
    _one_line_exit_2(edgeq_cli("build", path, "--board", "ultra96", "--out", out), out, "Add", "cannot add them")


def _conv_to(path: Path, out_fq: dict, then=None) -> Path:
    """FloatQuant e4m3 input -> 3x3 conv (e2m1 weights, float32 scales) -> FloatQuant(**out_fq) [-> then]."""
    rng = np.random.default_rng(0)
    m = Model([1, 2, 6, 6])
    x = _floatquant(m, "x", 4.0, 3.0, 0.02)
    w = _floatquant(m, m.c(rng.normal(0, 1, (4, 2, 3, 3))), 2.0, 1.0, 0.3)
    c = m.node("Conv", [x, w], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    e, mant, scale = out_fq.pop("e"), out_fq.pop("m"), out_fq.pop("scale")
    y = _floatquant(m, c, e, mant, scale, **out_fq)
    shape = [1, 4, 6, 6]
    if then == "maxpool":
        y, shape = m.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2]), [1, 4, 3, 3]
    elif then == "relu_ceil":  # an exact ReLU on the minifloat bits, then a second float32-scaled requantizer
        y = _floatquant(m, m.node("Relu", [y]), 3.0, 2.0, 0.1, rounding_mode="CEIL")
    return m.save(y, path, shape)


@pytest.mark.parametrize("out_fq, then", [
    ({"e": 4.0, "m": 3.0, "scale": 0.05, "rounding_mode": "FLOOR"}, "relu_ceil"),  # FLOOR/CEIL on float32 grids
    ({"e": 3.0, "m": 2.0, "scale": 0.001, "saturation": 0, "has_inf": 1, "has_nan": 1}, "maxpool"),  # +-inf codes
], ids=["floor_then_ceil", "overflow_to_inf_then_maxpool"])
def test_requantizing_minifloats_with_float_scales_is_bit_exact(tmp_path, out_fq, then):
    path = _conv_to(tmp_path / "m.onnx", dict(out_fq), then)
    rng = np.random.default_rng(1)
    vec = tmp_path / "x.npy"
    np.save(vec, rng.uniform(-3, 3, (64, 2, 6, 6)).astype(np.float32))
    out = tmp_path / "p"
    res = edgeq_cli("build", path, "--board", "ultra96", "--out", out, "--vectors", vec)
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["csim"]["mismatches"] == 0 and rep["csim"]["vectors"] == 64
    if then == "maxpool":  # the vectors really overflow into inf
        assert np.isinf(np.load(out / "csim" / "outputs.npy")).any()


def test_overflow_to_nan_on_both_sides_is_refused(tmp_path):
    path = _conv_to(tmp_path / "m.onnx", {"e": 4.0, "m": 3.0, "scale": 1e-4, "saturation": 0, "has_nan": 1})
    out = tmp_path / "p"
    _one_line_exit_2(edgeq_cli("build", path, "--board", "ultra96", "--out", out), out, "FloatQuant", "not monotone")
