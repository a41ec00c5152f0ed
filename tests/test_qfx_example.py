"""examples/qfx_digits.py: its quick run writes fixed-point QONNX models that equal Brevitas bit for bit and build for
Ultra96 with csim bit-exact (multiplier-free layers with no DSP); bad widths, K and binary points are one line + exit 2.

Oracles: the Brevitas forward pass (saved by the script), and the g++ C simulation of the generated HLS project.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeq
from edgeq import qfx
from edgeq.formats import FixedPoint, Float32

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "qfx_digits.py"
EDGEQ = str(Path(sys.executable).with_name("edgeq"))
MODELS = ["ptq_w4", "ptq_w6", "ptq_w8", "qat-frozen_w4", "qat-frozen_w6", "qat-frozen_w8", "qfx_w4", "qfx_w6",
          "qfx_w8", "qfx-pow2_w8", "qfx-khot2_w8"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """The output directory of one ``--quick`` run per session: one xdist worker runs it, the others wait and reuse."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "qfx_example_quick"
    shared.mkdir(exist_ok=True)
    out, log = shared / "out", shared / "log.json"
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not log.exists():
            res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True,
                                 text=True, timeout=300)
            log.write_text(json.dumps({"rc": res.returncode, "stdout": res.stdout, "stderr": res.stderr}))
    res = json.loads(log.read_text())
    assert res["rc"] == 0, res["stdout"][-2000:] + res["stderr"][-2000:]
    assert "emulate==Brevitas" in res["stdout"] and "NO" not in res["stdout"]
    return out


def _build(model: Path, out: Path, vectors: Path) -> dict:
    res = subprocess.run([EDGEQ, "build", str(model), "--board", "ultra96", "--out", str(out), "--vectors",
                          str(vectors)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return json.loads((out / "report.json").read_text())


def test_quick_run_writes_every_model_and_each_emulates_exactly_like_brevitas(quick):
    x = np.load(quick / "x_test.npy")
    assert x.shape[1:] == (1, 8, 8) and len(x) > 300
    for name in MODELS:
        assert (quick / f"{name}.onnx").is_file(), name
        want = np.load(quick / f"{name}.brevitas.npy")
        got = edgeq.emulate(edgeq.load(quick / f"{name}.onnx"), x)
        assert np.array_equal(got, want.astype(np.float64)), name
    rows = json.loads((quick / "results.json").read_text())
    assert [f"{r['variant']}_w{r['width']}" for r in rows[1:]] == MODELS
    assert all(r["emulate_equals_brevitas"] and r["dsp"] is not None for r in rows[1:])


def test_qfx_model_has_fixed_point_batchnorm_and_residual_add(quick):
    g = edgeq.load(quick / "qfx_w6.onnx")
    floats = [lay.name for lay in g.layers if isinstance(g.tensors[lay.output].format, Float32)]
    assert floats == [] and isinstance(g.input.format, Float32)
    layers = {lay.name: lay for lay in g.layers}
    fmt = {name: g.tensors[lay.output].format for name, lay in layers.items()}
    for bn in ("bn1", "bn2"):  # BatchNorm: a fixed-point scale (Mul) and shift (Add), then a learned 6-bit point
        assert layers[f"{bn}_Mul"].op == "FloatOp" and layers[f"{bn}_Add"].op == "FloatOp"
        out = fmt[f"{bn}_output_quant_export_handler_Quant"]
        assert isinstance(out, FixedPoint) and out.width == 6
    add = [lay for lay in g.layers if lay.op == "Add"]
    assert len(add) == 1 and isinstance(fmt[add[0].name], FixedPoint)
    out = fmt["add_output_quant_export_handler_Quant"]
    assert isinstance(out, FixedPoint) and out.width == 6


def test_qfx_and_multiplier_free_models_build_for_ultra96_with_csim_bit_exact(quick, tmp_path):
    vectors = quick / "x_test.npy"
    fixed = _build(quick / "qfx_w8.onnx", tmp_path / "qfx", vectors)
    mf_path = quick / "qfx-pow2_w8.onnx"
    mf = _build(mf_path, tmp_path / "pow2", vectors)
    for rep in (fixed, mf):
        assert rep["csim"]["mismatches"] == 0 and rep["csim"]["vectors"] == len(np.load(vectors))
    # the multiplier-free layers (declared in the export's metadata) are shift-add: no DSP, where 8-bit products
    # of the ordinary QFX model use DSPs
    declared = {spec["module"] for spec in qfx.read_metadata(mf_path)["layers"].values()}
    assert declared == {"conv1", "conv2", "fc"}
    g = edgeq.load(mf_path)
    mf_layers = {lay.name for lay in g.layers if lay.attrs.get("multiplier_free")}
    assert mf_layers == {"conv1_Conv", "conv2_Conv", "fc_Gemm"}
    dsp = {rep_name: {lay["name"]: lay["estimate"]["dsp"] for lay in rep["layers"]}
           for rep_name, rep in (("fixed", fixed), ("mf", mf))}
    assert all(dsp["mf"][name] == 0 for name in mf_layers)
    assert all(dsp["fixed"][name] > 0 for name in mf_layers)
    assert mf["totals"]["dsp"] < fixed["totals"]["dsp"]


def _example():
    spec = importlib.util.spec_from_file_location("qfx_digits_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("args,words", [
    (["--widths", "4,1"], "width must be an integer from 2 to 24, got 1"),
    (["--mf-width", "1"], "width must be an integer from 2 to 24, got 1"),
    (["--khot-k", "0"], "k must be an integer >= 1"),
    (["--input-int-bits", "40"], "binary point outside what width 4 allows"),
    (["--widths", "4,six"], "--widths"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_width_k_or_binary_point_is_one_line_and_exit_2_before_training(args, words, tmp_path, capsys):
    out = tmp_path / "out"
    code = _example().main(["--quick", "--out", str(out)] + args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert not out.exists()  # refused before anything was trained or written


def test_the_script_itself_exits_2_with_one_line_on_bad_input(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "o"), "--khot-k", "0"],
                         capture_output=True, text=True, timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "k must be" in lines[0], res.stderr
