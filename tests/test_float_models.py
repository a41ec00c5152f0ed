"""Float models (no quantizers: Keras/PyTorch exports) built with --default-format / --precision / --calibrate.

The oracle is QONNX's execute_onnx twice: on the rewritten QONNX model (the project's model.onnx), which the
emulator must equal bit for bit, and on the float model, whose distance the build reports.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import qonnx_reference
from qonnx_builder import Model
from test_cli import run

from edgeq.emulate import emulate
from edgeq.errors import EdgeqError
from edgeq.ingest import load
from edgeq.precision import precision_from, quantize_float_model


def _keras_mlp(path, scale: float = 1.0, softmax: bool = False):
    """Keras' Dense export: MatMul + Add(bias) + Relu, twice, then MatMul + Add (and a Softmax)."""
    rng = np.random.default_rng(3)
    m = Model([1, 12])
    t = "x"
    for k, (i, o) in enumerate(((12, 16), (16, 16), (16, 5))):
        t = m.node("MatMul", [t, m.c(rng.normal(0, 0.5 * scale, (i, o)))])
        t = m.node("Add", [t, m.c(rng.normal(0, 0.3 * scale, (o,)))])
        if k < 2:
            t = m.node("Relu", [t])
    if softmax:
        t = m.node("Softmax", [t], axis=-1)
    return m.save(t, path, [1, 5])


def test_a_float_model_is_refused_with_the_flag_that_builds_it(tmp_path):
    path = _keras_mlp(tmp_path / "mlp.onnx")
    with pytest.raises(EdgeqError, match=r"--default-format 'ap_fixed<16,6>'"):
        load(path)


def test_default_format_quantizes_every_mac_operand_and_folds_keras_bias_adds(tmp_path):
    path = _keras_mlp(tmp_path / "mlp.onnx")
    q = quantize_float_model(onnx.load(path), precision_from("ap_fixed<16,6>"))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("Gemm") == 3 and "MatMul" not in ops and "Add" not in ops
    assert ops.count("Quant") == 9  # input, weight and bias of each of the three Gemms
    quants = [n for n in q.graph.node if n.op_type == "Quant"]
    assert all({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["rounding_mode"] == b"FLOOR"
               for n in quants)  # ap_fixed's AP_TRN
    x = np.random.default_rng(4).normal(0, 1, (20, 12)).astype(np.float32)
    qpath = tmp_path / "q.onnx"
    onnx.save(q, qpath)
    got = emulate(load(path, precision=precision_from("ap_fixed<16,6>")), x)
    assert np.array_equal(got, qonnx_reference(qpath, x))  # the rewritten model, bit for bit
    flt = qonnx_reference(path, x)
    assert 0 < np.abs(got - flt).max() < 0.02 * np.abs(flt).max()  # and close to the float model (AP_TRN)


def test_calibration_picks_integer_bits_so_nothing_saturates(tmp_path):
    """Activations of about +-100 saturate ap_fixed<16,6> (max 31.999); calibrated, each tensor gets the integer
    bits its values need, and the result is far closer to the float model."""
    path = _keras_mlp(tmp_path / "big.onnx", scale=8.0)
    x = np.random.default_rng(5).normal(0, 4, (32, 12)).astype(np.float32)
    flt = qonnx_reference(path, x)
    assert np.abs(flt).max() > 64
    plain = emulate(load(path, precision=precision_from("ap_fixed<16,6>")), x)
    cal = emulate(load(path, precision=precision_from("ap_fixed<16,6>", calibrate=x)), x)
    assert np.abs(plain - flt).max() > 10 * np.abs(cal - flt).max()
    q = quantize_float_model(onnx.load(path), precision_from("ap_fixed<16,6>", calibrate=x))
    bits = {n.name: onnx.numpy_helper.to_array(next(i for i in q.graph.initializer if i.name == n.input[1]))
            for n in q.graph.node if n.op_type == "Quant"}
    assert len(set(float(v) for v in bits.values())) > 1  # different tensors, different binary points


def test_a_precision_file_overrides_one_layer(tmp_path):
    path = _keras_mlp(tmp_path / "mlp.onnx")
    (tmp_path / "p.toml").write_text('default = "ap_fixed<16,6>"\n[layer."MatMul_2"]\nweight = "ap_fixed<4,1>"\n')
    q = quantize_float_model(onnx.load(path), precision_from(None, tmp_path / "p.toml"))
    w = next(n for n in q.graph.node if n.name == "MatMul_2_weight_quant")
    scale = next(i for i in q.graph.initializer if i.name == w.input[1])
    assert float(onnx.numpy_helper.to_array(scale)) == 2.0 ** -3  # ap_fixed<4,1>: 3 fraction bits


@pytest.mark.parametrize("args,needle", [
    (["--precision", "{d}/p.toml"], "layer 'no_such_node' is not a node of"),
    (["--default-format", "ap_fixed<16"], "--default-format"),
    (["--default-format", "e4m3"], "not a fixed-point or integer format"),
    (["--precision", "{d}/missing.toml"], "no such file"),
    (["--calibrate", "{d}/x.npy"], "--calibrate needs --default-format"),
])
def test_bad_precision_input_is_one_line_and_exit_2(tmp_path, args, needle):
    path = _keras_mlp(tmp_path / "mlp.onnx")
    (tmp_path / "p.toml").write_text('default = "ap_fixed<16,6>"\n[layer."no_such_node"]\nweight = "int8"\n')
    np.save(tmp_path / "x.npy", np.zeros((2, 12), np.float32))
    r = run("inspect", path, *[a.format(d=tmp_path) for a in args])
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_default_format_on_a_quantized_model_is_refused(tmp_path):
    m = Model([1, 4])
    path = m.save(m.quant("x", 8, 0.5), tmp_path / "q.onnx", [1, 4])
    r = run("inspect", path, "--default-format", "ap_fixed<16,6>")
    assert r.returncode == 2 and "already quantized" in r.stderr


def test_a_float_model_builds_for_ultra96_csim_exact_and_reports_its_distance_to_the_float_model(tmp_path):
    path = _keras_mlp(tmp_path / "mlp.onnx", softmax=True)
    x = np.random.default_rng(6).normal(0, 1, (16, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("build", path, "--board", "ultra96", "--out", tmp_path / "p", "--vectors", tmp_path / "x.npy",
            "--default-format", "ap_fixed<16,6>", "--calibrate", tmp_path / "x.npy")
    assert r.returncode == 0 and "csim pass (0 mismatches over 16 vectors" in r.stdout, r.stdout + r.stderr
    flt = qonnx_reference(path, x)
    ref = np.load(tmp_path / "p" / "vectors" / "qonnx_reference.npy").reshape(flt.shape)
    assert np.array_equal(ref, flt)  # the distance is to the float model
    rep = json.loads((tmp_path / "p" / "report.json").read_text())["qonnx_reference"]
    exp = np.load(tmp_path / "p" / "vectors" / "expected.npy").reshape(flt.shape)
    assert rep["max_abs_diff"] == float(np.abs(exp - flt).max()) and rep["argmax_agreement"] == 1.0
    # the project's model.onnx is the QONNX model it was built as: compare needs no flags
    c = run("compare", tmp_path / "p", "--hw-outputs", tmp_path / "p" / "csim" / "outputs.npy")
    assert c.returncode == 0 and "IDENTICAL" in c.stdout and "differ from the QONNX model" in c.stdout, c.stdout


@pytest.mark.skipif(not shutil.which("qemu-system-riscv32"), reason="QEMU missing (make setup)")
def test_a_float_model_builds_for_the_mcu_and_runs_on_qemu_bit_exact(tmp_path):
    path = _keras_mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(7).normal(0, 1, (8, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proj = tmp_path / "m"
    r = run("build", path, "--board", "qemu-rv32", "--out", proj, "--vectors", tmp_path / "x.npy",
            "--default-format", "ap_fixed<16,6>")
    assert r.returncode == 0 and "host check pass (0 mismatches" in r.stdout, r.stdout + r.stderr
    assert run("flash", proj, "--board", "qemu-rv32").returncode == 0
    c = run("compare", proj, "--json")
    s = json.loads(c.stdout)
    assert c.returncode == 0 and s["identical"] and s["model"]["argmax_agreement"] == 1.0
