"""Ops and inputs of models people export (issue 14): activations, Softmax, typed inputs, complete refusals.

The oracle is QONNX's execute_onnx (onnxruntime for the standard ops), run sample by sample on the model file.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from conftest import qonnx_reference
from qonnx_builder import Model

from edgeq.emulate import emulate
from edgeq.errors import EdgeqError
from edgeq.ingest import load

ACTIVATIONS = [("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
               ("Tanh", {}), ("Elu", {}), ("Selu", {}), ("PRelu", {})]


def _act_model(tmp_path, op, attrs, quantized_input=True, softmax=False):
    m = Model([1, 3, 4, 4])
    t = m.quant("x", 6, 0.0731) if quantized_input else "x"
    ins = [t] + ([m.c(np.array([0.25, -0.5, 1.5], np.float32).reshape(3, 1, 1))] if op == "PRelu" else [])
    t = m.node(op, ins, **attrs)
    t = m.quant(t, 8, 0.03125)
    shape = [1, 3, 4, 4]
    if softmax:
        t = m.node("Softmax", [m.node("Flatten", [t])], axis=-1)
        shape = [1, 48]
    return m.save(t, tmp_path / f"{op}.onnx", shape)


@pytest.mark.parametrize("op,attrs", ACTIVATIONS, ids=[a for a, _ in ACTIVATIONS])
def test_an_activation_on_a_quantized_input_is_bit_exact_against_qonnx(tmp_path, op, attrs):
    """On a grid, the emulator uses onnxruntime's own values (a table built on every grid value), except for
    PRelu (exact float32 arithmetic) and Elu/Selu (onnxruntime's value depends on the element's position: they
    use the declared numpy function, which this grid happens not to expose)."""
    path = _act_model(tmp_path, op, attrs)
    x = np.random.default_rng(0).normal(0, 2.5, (16, 3, 4, 4)).astype(np.float32)
    g = load(path)
    act = next(lay for lay in g.layers if lay.op == "Activation")
    assert ("table_x" in act.attrs) == (op not in ("PRelu", "Elu", "Selu"))
    got = emulate(g, x)
    want = qonnx_reference(path, x.reshape(16, 3, 4, 4)).reshape(got.shape)
    if op in ("Elu", "Selu"):
        np.testing.assert_allclose(got, want, rtol=0, atol=0.03125 + 1e-7)  # at most one output code
    else:
        assert np.array_equal(got, want), np.abs(got - want).max()


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Elu"])
def test_an_activation_of_float_values_is_the_declared_numpy_function_near_onnxruntime(tmp_path, op):
    path = _act_model(tmp_path, op, {}, quantized_input=False)
    x = np.random.default_rng(1).normal(0, 2.5, (16, 3, 4, 4)).astype(np.float32)
    g = load(path)
    act = next(lay for lay in g.layers if lay.op == "Activation")
    assert "table_x" not in act.attrs and "declared implementation" in act.contract.engine
    got, want = emulate(g, x), qonnx_reference(path, x)
    # the quantizer after it may flip a code where numpy's and onnxruntime's exp differ in the last bit
    assert np.mean(got == want) > 0.99 and np.abs(got - want).max() <= 0.03125 + 1e-7


def test_a_trailing_softmax_emulates_within_the_declared_tolerance_with_the_same_top1(tmp_path):
    path = _act_model(tmp_path, "LeakyRelu", {"alpha": 0.1}, softmax=True)
    x = np.random.default_rng(2).normal(0, 2.5, (32, 3, 4, 4)).astype(np.float32)
    g = load(path)
    assert g.layers[-1].op == "Softmax"
    got, want = emulate(g, x), qonnx_reference(path, x)
    np.testing.assert_allclose(got, want, rtol=2.0 ** -16, atol=2.0 ** -22)
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_every_unsupported_node_is_named_at_once_before_any_qonnx_pass(tmp_path):
    """A model with Resize, Concat and a channels-last Conv: one line naming all of them, grouped, in seconds
    (the issue's tiny U-Net spent minutes in qonnx's shape inference before refusing the first)."""
    m = Model([1, 2, 4, 4])
    a = m.quant("x", 8, 0.125)
    r = m.node("Resize", [a, "", m.c(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    r2 = m.node("Resize", [a, "", m.c(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    c = m.node("Concat", [r, r2], axis=1)
    w = m.quant(m.c(np.ones((4, 4, 1, 1), np.float32)), 4, 0.5)
    y = m.node("Conv", [c, w], domain="qonnx.custom_op.channels_last", kernel_shape=[1, 1])
    path = m.save(y, tmp_path / "unet_bits.onnx", [1, 4, 8, 8])
    t = time.perf_counter()
    with pytest.raises(EdgeqError) as e:
        load(path)
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    assert "\n" not in msg and "4 nodes cannot be lowered" in msg
    assert "Resize x2 ('Resize_" in msg and "Concat x1" in msg and "qonnx.custom_op.channels_last:Conv x1" in msg


def _float_input_mlp(tmp_path, annotate=None):
    """QKeras-style: 16 float features straight into a MatMul with quantized weights (qkeras_jettagging)."""
    m = Model([1, 16])
    rng = np.random.default_rng(3)
    w = m.quant(m.c(rng.normal(0, 0.5, (16, 8)).astype(np.float32)), 6, 0.0625)
    y = m.quant(m.node("MatMul", ["x", w]), 8, 0.25)
    path = m.save(y, tmp_path / "mlp.onnx", [1, 8])
    if annotate:
        model = onnx.load(path)
        qa = onnx.TensorAnnotation()
        qa.tensor_name = "x"
        kv = qa.quant_parameter_tensor_names.add()
        kv.key, kv.value = "finn_datatype", annotate
        model.graph.quantization_annotation.append(qa)
        onnx.save(model, path)
    return path


def test_a_float_input_into_a_mac_is_refused_until_the_input_is_typed(tmp_path):
    path = _float_input_mlp(tmp_path)
    with pytest.raises(EdgeqError, match="float32 with no quantizer"):
        load(path)
    g = load(path, "ap_fixed<16,6>")
    assert g.layers[0].name == "input_quant" and str(g.tensors[g.layers[0].output].format) == "fixed<16,6,TRN,WRAP>"
    x = np.random.default_rng(4).normal(0, 4, (20, 16)).astype(np.float32)
    xq = np.floor(x * 1024) / 1024  # ap_fixed<16,6>: AP_TRN onto 2^-10 (all inside +-32)
    assert np.array_equal(emulate(g, x), qonnx_reference(path, xq))


def test_a_finn_datatype_annotation_types_the_input_without_a_flag(tmp_path):
    path = _float_input_mlp(tmp_path, annotate="INT8")
    g = load(path)
    assert g.layers[0].attrs.get("typed_input") and str(g.tensors[g.layers[0].output].format).startswith("int8")
    x = np.random.default_rng(5).integers(-128, 128, (10, 16)).astype(np.float32)
    assert np.array_equal(emulate(g, x), qonnx_reference(path, x))
    with pytest.raises(EdgeqError, match="contradicts the input 'x' annotation INT8"):
        load(path, "uint8")


@pytest.mark.parametrize("bad", ["apfixed", "int", "uint8*abc", "e4"])
def test_an_unknown_input_format_is_one_line(tmp_path, bad):
    with pytest.raises(EdgeqError, match="--input-format: unknown number format"):
        load(_float_input_mlp(tmp_path), bad)


def test_a_bipolar_input_through_x_plus_one_over_two_is_exact_fixed_point(tmp_path):
    """unsw_nb15-mlp-w2a2: (x + 1) / 2 on a +-1 input, then Gemm: with --input-format bipolar the glue is exact
    fixed point (a plain float 1 and a division by 2), so the MAC gets a 0/1 grid."""
    m = Model([1, 12])
    rng = np.random.default_rng(6)
    t = m.node("Div", [m.node("Add", ["x", m.c(1.0)]), m.c(2.0)])
    w = m.quant(m.c(rng.normal(0, 1, (5, 12)).astype(np.float32)), 2, 0.5)
    y = m.quant(m.node("Gemm", [t, w], transB=1), 8, 0.5)
    path = m.save(y, tmp_path / "unsw.onnx", [1, 5])
    g = load(path, "bipolar")
    assert [lay.op for lay in g.layers][:3] == ["Quantize", "FloatOp", "FloatOp"]
    assert all(str(g.tensors[lay.output].format).startswith("fixed") for lay in g.layers[1:3])
    x = rng.choice([-1.0, 1.0], (10, 12)).astype(np.float32)
    assert np.array_equal(emulate(g, x), qonnx_reference(path, x))


def test_squeeze_and_unsqueeze_of_activations_are_reshapes(tmp_path):
    """PyTorch's BatchNorm1d export: Unsqueeze -> BatchNormalization -> Squeeze."""
    m = Model([1, 6])
    a = m.quant("x", 8, 0.125)
    u = m.node("Unsqueeze", [a, _i64(m, [2])])
    ones = np.ones(6, np.float32)
    b = m.node("BatchNormalization", [u, m.c(ones * 1.5), m.c(ones * 0.25), m.c(ones * 0.1), m.c(ones)])
    s = m.node("Squeeze", [b, _i64(m, [2])])
    path = m.save(m.quant(s, 8, 0.0625), tmp_path / "bn1d.onnx", [1, 6])
    x = np.random.default_rng(7).normal(0, 3, (10, 6)).astype(np.float32)
    g = load(path)
    assert np.array_equal(emulate(g, x), qonnx_reference(path, x))


def _i64(m: Model, v) -> str:
    from onnx import numpy_helper

    m.n += 1
    m.inits.append(numpy_helper.from_array(np.asarray(v, dtype=np.int64), f"c{m.n}"))
    return f"c{m.n}"


def test_the_cli_refuses_a_contradicting_or_unknown_input_format_with_exit_2(tmp_path):
    from test_cli import assert_one_line_error, run

    path = _float_input_mlp(tmp_path, annotate="INT8")
    assert_one_line_error(run("inspect", path, "--input-format", "uint8"), "contradicts", "INT8")
    assert_one_line_error(run("emulate", path, "-i", path, "-o", tmp_path / "y.npy", "--input-format", "nonsense"),
                          "--input-format: unknown number format 'nonsense'")


def _act_cnn(tmp_path, acts):
    """Quant -> Conv -> Quant -> activation -> Quant -> ... : each activation on a quantized tensor."""
    m = Model([1, 2, 5, 5])
    rng = np.random.default_rng(8)
    t, cin = m.quant("x", 8, 0.0625), 2
    for op, attrs in acts:
        w = m.quant(m.c(rng.normal(0, 0.4, (3, cin, 3, 3))), 4, 0.125)
        cin = 3
        t = m.quant(m.node("Conv", [t, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 8, 0.0625)
        ins = [t] + ([m.c(np.array([0.25, -0.5, 1.5], np.float32).reshape(3, 1, 1))] if op == "PRelu" else [])
        t = m.quant(m.node(op, ins, **attrs), 6, 0.125)
    return m.save(t, tmp_path / "acts.onnx", [1, 3, 5, 5])


@pytest.mark.skipif(not __import__("shutil").which("qemu-system-riscv32"), reason="QEMU missing (make setup)")
def test_activations_build_for_the_mcu_and_run_on_qemu_bit_exact(tmp_path):
    """LeakyRelu, Sigmoid and Tanh as onnxruntime tables (binary search in C), PRelu and HardSigmoid as float32
    arithmetic: the host check, QEMU and compare agree with the emulator, and the emulator with QONNX."""
    from test_cli import run

    path = _act_cnn(tmp_path, [("LeakyRelu", {"alpha": 0.1}), ("PRelu", {}), ("Sigmoid", {}),
                               ("HardSigmoid", {}), ("Tanh", {})])
    x = np.random.default_rng(9).normal(0, 3, (6, 2, 5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert np.array_equal(emulate(load(path), x), qonnx_reference(path, x))
    proj = tmp_path / "p"
    r = run("build", path, "--board", "qemu-rv32", "--out", proj, "--vectors", tmp_path / "x.npy")
    assert r.returncode == 0 and "host check pass (0 mismatches" in r.stdout, r.stdout + r.stderr
    assert run("flash", proj, "--board", "qemu-rv32").returncode == 0
    r = run("compare", proj)
    assert r.returncode == 0 and "identical" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


def test_activations_and_a_trailing_softmax_build_for_the_fpga_with_csim_exact(tmp_path):
    """On the FPGA each activation between two quantizers becomes integer thresholds derived from the emulator on
    every input code; the trailing Softmax runs on the host (the project's host tail), as the emulator does."""
    from test_cli import run

    m_path = _act_cnn(tmp_path, [("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("Elu", {})])
    m = onnx.load(m_path)
    out = m.graph.output[0].name
    flat = onnx.helper.make_node("Flatten", [out], ["flat"], name="flatten")
    sm = onnx.helper.make_node("Softmax", ["flat"], ["probs"], name="softmax", axis=-1)
    m.graph.node.extend([flat, sm])
    del m.graph.output[:]
    m.graph.output.append(onnx.helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, [1, 75]))
    path = tmp_path / "acts_softmax.onnx"
    onnx.save(m, path)
    x = np.random.default_rng(10).normal(0, 3, (8, 2, 5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("build", path, "--board", "ultra96", "--out", tmp_path / "p", "--vectors", tmp_path / "x.npy")
    assert r.returncode == 0 and "csim pass (0 mismatches over 8 vectors" in r.stdout, r.stdout + r.stderr
    got = np.load(tmp_path / "p" / "vectors" / "expected.npy")
    want = qonnx_reference(path, x)
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=2.0 ** -16, atol=2.0 ** -22)


def _brevitas_residual(path, shared: bool):
    """A newcomer's residual block with Brevitas' default quantizers (float32 scales), trained a few steps so the
    scales leave their power-of-two initial values; the branches meet in one shared QuantIdentity, or in two."""
    import torch
    from brevitas import nn as qnn

    import edgeq

    class Res(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(return_quant_tensor=True)
            self.c1 = qnn.QuantConv2d(3, 4, 3, padding=1, return_quant_tensor=True)
            self.r1 = qnn.QuantReLU(return_quant_tensor=True)
            self.c2 = qnn.QuantConv2d(4, 4, 3, padding=1, return_quant_tensor=False)
            self.q2 = qnn.QuantIdentity(return_quant_tensor=shared)
            self.qskip = self.q2 if shared else qnn.QuantIdentity(return_quant_tensor=False)
            self.out = qnn.QuantIdentity(return_quant_tensor=True)
            self.fc = qnn.QuantLinear(4 * 6 * 6, 5, return_quant_tensor=False)

        def forward(self, x):
            y = self.r1(self.c1(self.inp(x)))
            z = self.out(self.q2(self.c2(y)) + self.qskip(y))
            return self.fc(torch.flatten(z, 1))

    torch.manual_seed(0)
    m = Res().train()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(m(torch.randn(16, 3, 6, 6)), torch.randint(0, 5, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    edgeq.export(m.eval(), torch.zeros(1, 3, 6, 6), path)
    return path


def test_a_residual_add_behind_one_shared_default_quantizer_builds_for_the_fpga_csim_exact(tmp_path):
    """Both branches on one float32 scale (0.0105577763-like): the FPGA adds the integer codes; csim is exact
    against the emulator, and the emulator is within QONNX's own float32 add of it."""
    from test_cli import run

    path = _brevitas_residual(tmp_path / "res_shared.onnx", shared=True)
    g = load(path)
    add = next(lay for lay in g.layers if lay.op == "Add")
    fmt = g.tensors[add.output].format
    assert type(fmt).__name__ == "Int" and not np.log2(fmt.scale[0]).is_integer()
    x = np.random.default_rng(11).normal(0, 1, (16, 3, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("build", path, "--board", "ultra96", "--out", tmp_path / "p", "--vectors", tmp_path / "x.npy")
    assert r.returncode == 0 and "csim pass (0 mismatches over 16 vectors" in r.stdout, r.stdout + r.stderr
    got, want = emulate(g, x), qonnx_reference(path, x)  # the last layer's float32 sums: within ulps
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    # the build says what was compared: the stored reference is execute_onnx's, and its distance is on the line
    stored = np.load(tmp_path / "p" / "vectors" / "qonnx_reference.npy")
    assert np.array_equal(stored.reshape(want.shape), want)
    n_diff = int(np.sum(got != want))
    rep = json.loads((tmp_path / "p" / "report.json").read_text())["qonnx_reference"]
    assert rep["differing_values"] == n_diff and rep["max_abs_diff"] == float(np.abs(got - want).max())
    phrase = (f"{n_diff} of {want.size} values differ from the QONNX model" if n_diff else
              f"identical to the QONNX model ({want.size} values)")
    assert f"emulator vs model: {phrase}" in r.stdout, r.stdout
    # compare puts the hardware's distance to the model on the verdict's line
    c = run("compare", tmp_path / "p", "--hw-outputs", tmp_path / "p" / "csim" / "outputs.npy")
    head = c.stdout.splitlines()[0]
    assert c.returncode == 0 and "IDENTICAL" in head and phrase in head, c.stdout + c.stderr
    # and a reference that disagrees is reported, not hidden behind the bit-exact verdict
    np.save(tmp_path / "p" / "vectors" / "qonnx_reference.npy", np.where(got == want, want + 1.0, got))
    c = run("compare", tmp_path / "p", "--hw-outputs", tmp_path / "p" / "csim" / "outputs.npy")
    assert f"{want.size - n_diff} of {want.size} values differ from the QONNX model" in c.stdout.splitlines()[0]


def test_a_residual_add_of_two_default_quantizers_is_refused_on_the_fpga_saying_what_to_change(tmp_path):
    from test_cli import assert_one_line_error, run

    path = _brevitas_residual(tmp_path / "res_two.onnx", shared=False)
    assert_one_line_error(run("build", path, "--board", "ultra96", "--out", tmp_path / "p"),
                          "Add", "one shared quantizer", "QuantIdentity")
    assert not (tmp_path / "p").exists()


def _expf_inputs() -> np.ndarray:
    """Every 97th float32 bit pattern across exp's whole domain, plus the edges: limits, +-0, +-inf, NaN."""
    lo, hi = np.float32(-104.0), np.float32(89.0)
    neg = np.arange(np.float32(-0.0).view(np.uint32), lo.view(np.uint32), 97, dtype=np.uint32).view(np.float32)
    pos = np.arange(0, hi.view(np.uint32), 97, dtype=np.uint32).view(np.float32)
    edges = np.array([88.72283935546875, 88.7228317, 88.72284, -103.972076416015625, -103.97208, -87.33654,
                      -87.3365478515625, 0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30], np.float32)
    return np.concatenate([neg, pos, edges])


def test_expf_in_c_equals_its_numpy_twin_bit_for_bit_and_is_within_2_22_of_onnxruntime(tmp_path):
    """The MCU's edgeq_expf (firmware/common/edgeq_ops.h, compiled by the host's gcc with the MCU flags) and
    edgeq.emulate.expf agree on ~2.2M float32 inputs bit for bit; both are within 2^-21 relative of onnxruntime's
    Exp on normal results (the declared implementation's accuracy)."""
    import shutil
    import subprocess

    from edgeq.backends.mcu.kernels import firmware_common
    from edgeq.backends.mcu.toolchain import HOST_GCC_FLAGS
    from edgeq.emulate import expf

    if not shutil.which("gcc"):
        pytest.skip("gcc missing (make setup)")
    x = _expf_inputs()
    x.tofile(tmp_path / "x.bin")
    (tmp_path / "t.c").write_text("""#include <stdio.h>
#include "edgeq_ops.h"
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "rb"), *g = fopen(argv[2], "wb"); float v;
    while (fread(&v, 4, 1, f) == 1) { float y = edgeq_expf(v); fwrite(&y, 4, 1, g); }
    fclose(f); fclose(g); return 0;
}
""")
    subprocess.run(["gcc", *HOST_GCC_FLAGS, "-I", str(firmware_common()), str(tmp_path / "t.c"), "-o",
                    str(tmp_path / "t")], check=True)
    subprocess.run([str(tmp_path / "t"), str(tmp_path / "x.bin"), str(tmp_path / "y.bin")], check=True)
    c = np.fromfile(tmp_path / "y.bin", dtype=np.float32)
    py = expf(x)
    assert np.array_equal(c, py, equal_nan=True) and len(c) == len(x) > 2_000_000
    m = Model([1, len(x)])
    path = m.save(m.node("Exp", ["x"]), tmp_path / "exp.onnx", [1, len(x)])
    ort_y = qonnx_reference(path, x.reshape(1, -1)).ravel()
    normal = np.isfinite(ort_y) & (ort_y >= np.finfo(np.float32).tiny)
    rel = np.abs(py[normal].astype(np.float64) - ort_y[normal]) / ort_y[normal]
    assert rel.max() <= 2.0 ** -21, rel.max()
    assert np.array_equal(np.isinf(py), np.isinf(ort_y)) and np.array_equal(np.isnan(py), np.isnan(ort_y))


@pytest.mark.skipif(not __import__("shutil").which("qemu-system-riscv32"), reason="QEMU missing (make setup)")
def test_float_activations_and_a_trailing_softmax_run_on_qemu_bit_exact_near_qonnx(tmp_path):
    """Sigmoid, Tanh and Elu of float32 values and a trailing Softmax on the MCU: edgeq_expf in C, the emulator's
    twin in numpy; QEMU equals the emulator bit for bit, and the FP16 program is near QONNX with the same top-1."""
    from test_cli import run

    m = Model([1, 2, 5, 5])
    rng = np.random.default_rng(12)
    t = m.quant("x", 8, 0.0625)
    w = m.quant(m.c(rng.normal(0, 0.4, (3, 2, 3, 3))), 4, 0.125)
    t = m.node("Conv", [t, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])  # float32 values (FP16 on the MCU)
    for op in ("Sigmoid", "Tanh", "Elu"):
        t = m.node(op, [t])
    t = m.node("Softmax", [m.node("Flatten", [t])], axis=-1)
    path = m.save(t, tmp_path / "float_acts.onnx", [1, 75])
    g = load(path)
    assert [lay.op for lay in g.layers][-5:] == ["Activation", "Activation", "Activation", "Reshape", "Softmax"]
    x = rng.normal(0, 3, (8, 2, 5, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proj = tmp_path / "p"
    r = run("build", path, "--board", "qemu-rv32", "--out", proj, "--vectors", tmp_path / "x.npy")
    assert r.returncode == 0 and "host check pass (0 mismatches" in r.stdout, r.stdout + r.stderr
    assert run("flash", proj, "--board", "qemu-rv32").returncode == 0
    r = run("compare", proj, "--json")
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["identical"], r.stdout + r.stderr
    hw = np.load(proj / "hw_outputs.npy").reshape(8, -1)
    want = qonnx_reference(path, x).reshape(8, -1)
    np.testing.assert_allclose(hw, want, rtol=0.02, atol=1e-4)  # FP16 conv, then float32 glue
    assert s["model"]["differing_values"] == int(np.sum(hw != want))
    assert np.allclose(hw.sum(axis=1), 1.0, atol=1e-5)


def test_a_build_warns_once_when_test_inputs_saturate_the_input_quantizer(tmp_path):
    """Pixels 0-255 into a [-1, 1) quantizer: the build still proves csim exact, and says how many values saturate."""
    from test_cli import run

    m = Model([1, 8])
    t = m.quant("x", 8, 1 / 128)
    t = m.node("MatMul", [t, m.quant(m.c(np.random.default_rng(13).normal(0, 0.5, (8, 4))), 4, 0.125)])
    path = m.save(t, tmp_path / "px.onnx", [1, 4])
    x = np.random.default_rng(14).integers(0, 256, (6, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("build", path, "--board", "ultra96", "--out", tmp_path / "p", "--vectors", tmp_path / "x.npy")
    n = int(np.count_nonzero(x > 127 / 128))
    warn = [ln for ln in r.stderr.splitlines() if "saturate" in ln]
    assert r.returncode == 0 and len(warn) == 1 and f"{n} of {x.size} input values" in warn[0], r.stderr
