"""`edgeq build --board ultra96`: C simulation bit-exact against the emulator, and against QONNX."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import corrupt_thresholds, qonnx_reference

EDGEQ = str(Path(sys.executable).with_name("edgeq"))


def edgeq_cli(*args):
    return subprocess.run([EDGEQ, *map(str, args)], capture_output=True, text=True, timeout=600)


MODELS = [("bnn_pynq", "tfc_2w2a", 0), ("bnn_pynq", "sfc_2w2a", 0), ("bnn_pynq", "cnv_2w2a", 0),
          ("fixed", 0, 8, "power_of_two")]


@pytest.mark.parametrize("key", MODELS, ids=lambda k: str(k[1]) if k[0] == "bnn_pynq" else "fixed_point_cnn")
def test_build_for_ultra96_is_bit_exact_in_csim(exported, tmp_path, key):
    path, _, _ = exported(*key)
    out = tmp_path / "proj"
    res = edgeq_cli("build", path, "--board", "ultra96", "--out", out)
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["board"] == "ultra96" and rep["part"] == "xczu3eg-sbva484-1-i" and rep["backend"] == "fpga-hls"
    cs = rep["csim"]
    assert cs["status"] == "pass" and cs["vectors"] >= 64 and cs["mismatches"] == 0
    assert cs["outputs_compared"] == 64 * int(np.prod(json.loads((out / "build.json").read_text())["output"]["shape"]))
    assert all(lay["input_format"] and lay["output_format"] for lay in rep["layers"])
    assert "tools" in rep and "skipped" in rep["tools"]["status"]
    # The C simulation's decoded outputs also equal QONNX's own executor on the same vectors.
    x = np.load(out / "vectors" / "input.npy")[:6]
    csim = np.load(out / "csim" / "outputs.npy")[:6]
    assert np.array_equal(csim, qonnx_reference(path, x))


def test_residual_add_and_truncating_average_pool_lower_to_exact_hardware_layers(exported, tmp_path):
    from edgeq.backends.hls.lower import lower
    from edgeq.ingest import load

    path, _, _ = exported("fixed", 0, 8, "power_of_two")
    design = lower(load(path))
    ops = [lay.op for lay in design.layers]
    assert "Add" in ops and "SumPool" in ops and "Threshold" in ops
    g = design.graph
    for lay in (lay for lay in design.layers if lay.op == "Threshold"):
        # Thresholds must reproduce the float32 glue + quantizer, as the emulator runs it, on any input code
        # (exhaustively derived ones on every code; binary-searched ones checked here on random codes).
        x = design.tensors[lay.inputs[0]]
        ir = [next(v for v in g.layers if v.name == n) for n in lay.ir_layers]
        if ir[0].op == "AvgPool":
            continue  # the window-sum domain is covered by the csim build test
        rng = np.random.default_rng(0)
        codes = rng.integers(x.format.code_min, x.format.code_max + 1, (4096, x.shape[0]))
        v = codes * x.format.eps
        v = v.reshape(v.shape + (1,) * (len(g.tensors[ir[0].inputs[0]].shape) - 1))
        from edgeq.emulate import run_chain

        want = design.tensors[lay.output].format.quantize_codes(run_chain(g, ir, v).reshape(codes.shape))
        thr, sign = lay.params["thresholds"], lay.params["sign"]
        got = lay.attrs["base"] + ((codes * sign)[:, :, None] >= thr[None]).sum(axis=2)
        assert np.array_equal(got, want), lay.name


def test_a_corrupted_threshold_fails_the_build_and_the_report_names_the_layer(exported, tmp_path, monkeypatch):
    """The verification can fail: shift one layer's thresholds after lowering and build."""
    from edgeq.backends.hls import build as b

    corrupted = corrupt_thresholds(monkeypatch)
    path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
    out = tmp_path / "proj"
    with pytest.raises(b.BuildFailed, match=r"first diverging layer .* \(Threshold\)"):
        b.build(b.BuildConfig(model=path, board="ultra96", out=out))
    rep = json.loads((out / "report.json").read_text())
    div = rep["csim"]["first_divergence"]
    assert rep["csim"]["status"] == "fail" and div["layer"] == corrupted["layer"] and div["op"] == "Threshold"
    assert div["csim_bits"] != div["emulator_bits"] and len(div["csim_bits"]) == len(div["emulator_bits"])


def test_bad_build_inputs_give_one_line_exit_2_and_leave_no_directory(exported, tmp_path):
    path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
    res = edgeq_cli("build", path, "--board", "no-such-board", "--out", tmp_path / "a")
    assert res.returncode == 2 and "unknown board 'no-such-board'" in res.stderr
    # float32 scales build (their rescale is declared), and so does this residual Add: both branches end on one
    # float32 scale, so the codes add exactly (two different scales are refused: tests/test_real_world_ops.py)
    float_path, _, _ = exported("fixed", 0, 8, "float")
    res = edgeq_cli("build", float_path, "--board", "ultra96", "--out", tmp_path / "b")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "b" / "report.json").read_text())["csim"]["status"] == "pass"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine\n")  # an empty directory would simply be used
    res = edgeq_cli("build", path, "--board", "ultra96", "--out", tmp_path / "c")
    assert res.returncode == 2 and "--force" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]  # nothing half-written ("b" built)


@pytest.fixture(scope="module")
def big_dense(tmp_path_factory):
    """An 8-bit 1024x1024 fixed-point Dense: 8 Mbit of weights, more block RAM than a ZU3EG has."""
    import torch
    from brevitas import nn as qnn
    from brevitas.quant.fixed_point import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint

    import edgeq

    torch.manual_seed(0)
    net = torch.nn.Sequential(qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True),
                              qnn.QuantLinear(1024, 1024, bias=False, weight_quant=Int8WeightPerTensorFixedPoint))
    path = tmp_path_factory.mktemp("big") / "big_dense.onnx"
    edgeq.export(net.eval(), torch.zeros(1, 1024), path)
    return path


def test_over_budget_is_refused_naming_the_layer_unless_allowed(big_dense, tmp_path):
    res = edgeq_cli("build", big_dense, "--board", "ultra96", "--out", tmp_path / "a")
    assert res.returncode == 2 and "does not fit ultra96" in res.stderr and "BRAM" in res.stderr.upper()
    assert "MatMul" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
    res = edgeq_cli("build", big_dense, "--board", "ultra96", "--out", tmp_path / "b", "--allow-over-budget",
                    "--n-vectors", "8")
    assert res.returncode == 0 and "warning" in res.stderr
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["totals"]["bram36"] > rep["capacity"]["bram36"] and rep["csim"]["status"] == "pass"


def test_debug_build_traces_and_checks_every_layer(exported, tmp_path):
    path, _, _ = exported("bnn_pynq", "sfc_2w2a", 0)
    res = edgeq_cli("build", path, "--board", "pynq-z2", "--out", tmp_path / "p", "--trace", "--n-vectors", "16")
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "p" / "report.json").read_text())
    layers = rep["csim"]["layers"]
    assert len(layers) >= len([x for x in rep["layers"] if x["op"] != "Reshape"]) - 1
    assert all(r["mismatching_elements"] == 0 and r["elements"] > 0 for r in layers)
    assert rep["part"] == "xc7z020clg400-1"
