"""A ResNet-style block with every tensor in fixed point (BatchNorm as a fixed-point scale and shift, a fixed-point
residual Add) is ingested without float glue, equals Brevitas and QONNX bit for bit, and builds for Ultra96 with
csim bit-exact, BatchNorm running as integer multiply/add on codes (ConstOp)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import qonnx_reference

import edgeq
from edgeq.formats import Float32

EDGEQ = str(Path(sys.executable).with_name("edgeq"))


def test_resblock_is_fixed_point_everywhere_and_equals_brevitas_and_qonnx(exported):
    path, model, shape = exported("resblock", 0)
    g = edgeq.load(path)
    floats = [lay.name for lay in g.layers if isinstance(g.tensors[lay.output].format, Float32)]
    assert floats == [], f"float32 tensors left: {floats}"
    assert [lay.op for lay in g.layers].count("FloatOp") == 4  # two BatchNorms: a scale and a shift each
    x = torch.randn((32,) + tuple(shape[1:]), generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        want = model(x).numpy().astype(np.float32)
    got = edgeq.emulate(g, x.numpy()).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    ref = qonnx_reference(path, x.numpy()[:8]).astype(np.float32)
    assert np.array_equal(got[:8], ref)


def test_resblock_builds_for_ultra96_with_csim_bit_exact(exported, tmp_path):
    path, _, shape = exported("resblock", 0)
    x = np.random.default_rng(2).normal(0, 2, (64,) + tuple(shape[1:])).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "p"
    res = subprocess.run([EDGEQ, "build", str(path), "--board", "ultra96", "--out", str(out), "--vectors",
                          str(tmp_path / "x.npy"), "--trace"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["csim"]["mismatches"] == 0 and rep["csim"]["vectors"] == 64
    ops = [lay["op"] for lay in rep["layers"]]
    assert ops.count("ConstOp") == 4 and "Threshold" not in ops  # no float glue left to fold
    assert all(r["mismatching_elements"] == 0 for r in rep["csim"]["layers"])


def _annotated_resblock(path: Path, out: Path, layers: dict, khot_values: bool) -> Path:
    """The resblock export with multiplier-free weights in conv1 (powers of two, or sums of two) and the
    edgeq.qfx metadata declaring them (the schema edgeq.qfx.export writes)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    rng = np.random.default_rng(3)
    for init in m.graph.initializer:
        if init.name == "conv1.weight":
            w = numpy_helper.to_array(init)
            e = rng.integers(-6, -1, w.shape).astype(np.float64)
            v = np.sign(rng.standard_normal(w.shape)) * 2.0 ** e
            if khot_values:
                v = v + np.sign(v) * 2.0 ** (e - 2)  # two non-zero digits
            init.CopyFrom(numpy_helper.from_array(v.astype(np.float32), init.name))
    meta = m.metadata_props.add()
    meta.key = "edgeq.qfx"
    meta.value = json.dumps({"version": 1, "tensors": {}, "layers": layers})
    onnx.save(m, str(out))
    return out


def test_multiplier_free_layer_builds_as_shift_add_with_no_dsp(exported, tmp_path):
    path, _, shape = exported("resblock", 0)
    model = _annotated_resblock(path, tmp_path / "mf.onnx", {"conv1.weight": {"multiplier_free": "khot", "k": 2}},
                                khot_values=True)
    g = edgeq.load(model)
    conv1 = next(lay for lay in g.layers if lay.name == "conv1_Conv")
    assert conv1.attrs["multiplier_free"] == {"mode": "khot", "k": 2, "max_digits": 2}
    out = tmp_path / "p"
    res = subprocess.run([EDGEQ, "build", str(model), "--board", "ultra96", "--out", str(out), "--n-vectors", "32"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["csim"]["mismatches"] == 0
    row = next(lay for lay in rep["layers"] if lay["name"] == "conv1_Conv")
    other = next(lay for lay in rep["layers"] if lay["name"] == "conv2_Conv")
    assert row["estimate"]["dsp"] == 0 and other["estimate"]["dsp"] > 0
    assert row["multiplier_free"] == {"mode": "khot", "k": 2, "max_digits": 2, "shift_add_terms": 2}
    src = (out / "hls" / "weights" / "layer_conv1_Conv.h").read_text()
    assert "layer_conv1_Conv_digits" in src and "layer_conv1_Conv_weight[" not in src


def test_a_weight_breaking_its_multiplier_free_declaration_is_refused(exported, tmp_path):
    path, _, _ = exported("resblock", 0)
    model = _annotated_resblock(path, tmp_path / "bad.onnx", {"conv1.weight": {"multiplier_free": "pow2"}},
                                khot_values=True)
    res = subprocess.run([EDGEQ, "build", str(model), "--board", "ultra96", "--out", str(tmp_path / "p")],
                         capture_output=True, text=True, timeout=600)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "2 non-zero CSD digits" in lines[0], res.stderr
    assert not (tmp_path / "p").exists()


def test_qfx_per_channel_batchnorm_is_fixed_point_and_builds_bit_exact(tmp_path):
    """A QFX conv + per-channel QFXBatchNorm2d (learned binary point per channel): exact, and csim bit-exact."""
    import brevitas.nn as qnn

    from edgeq import qfx

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=qfx.act_quant(8))
            self.conv = qnn.QuantConv2d(3, 4, 3, padding=1, bias=False, weight_quant=qfx.weight_quant(8),
                                        output_quant=qfx.act_quant(8), return_quant_tensor=True)
            self.bn = qfx.QFXBatchNorm2d(4, 8, per_channel=True, return_quant_tensor=False)

        def forward(self, x):
            return self.bn(self.conv(self.inp(x)))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.bn.weight.uniform_(0.3, 3.0)
        net.bn.bias.uniform_(-1.0, 1.0)
    net.train()
    for _ in range(3):
        net(torch.randn(8, 3, 6, 6))
    net.eval()
    path = qfx.export(net, torch.zeros(1, 3, 6, 6), tmp_path / "pc.onnx") or tmp_path / "pc.onnx"
    g = edgeq.load(path)
    assert not [lay.name for lay in g.layers if isinstance(g.tensors[lay.output].format, Float32)]
    x = torch.randn(32, 3, 6, 6)
    with torch.no_grad():
        want = net(x).numpy()
    assert np.array_equal(edgeq.emulate(g, x.numpy()).astype(np.float32), want)
    res = subprocess.run([EDGEQ, "build", str(path), "--board", "ultra96", "--out", str(tmp_path / "p"),
                          "--n-vectors", "32"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "0 mismatches" in res.stdout, res.stderr


def test_qfx_resblock_every_tensor_fixed_point_equals_brevitas_and_builds_bit_exact(tmp_path):
    """The QFX ResNet-style block (issue 6's done-when): learned binary points everywhere, BatchNorm and the
    residual Add in fixed point; emulator == Brevitas bit for bit; Ultra96 csim bit-exact with no float glue."""
    from edgeq import qfx, zoo

    model, shape = zoo.qfx_resblock(0)
    path = tmp_path / "qfx_block.onnx"
    qfx.export(model, torch.zeros(shape), path)
    g = edgeq.load(path)
    assert not [lay.name for lay in g.layers if isinstance(g.tensors[lay.output].format, Float32)]
    ops = [lay.op for lay in g.layers]
    assert ops.count("FloatOp") == 4 and ops.count("Add") == 1
    x = torch.randn((64,) + tuple(shape[1:]), generator=torch.Generator().manual_seed(5)) * 2
    with torch.no_grad():
        want = model(x).numpy().astype(np.float32)
    got = edgeq.emulate(g, x.numpy()).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    np.save(tmp_path / "x.npy", x.numpy())
    res = subprocess.run([EDGEQ, "build", str(path), "--board", "ultra96", "--out", str(tmp_path / "p"),
                          "--vectors", str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rep = json.loads((tmp_path / "p" / "report.json").read_text())
    assert rep["csim"]["mismatches"] == 0
    hw_ops = [lay["op"] for lay in rep["layers"]]
    assert "Threshold" not in hw_ops and hw_ops.count("ConstOp") == 4 and "Add" in hw_ops


def _meta_model(tmp_path: Path, bipolar: bool, spec: dict) -> Path:
    from qonnx_builder import Model, Q

    m = Model([1, 8])
    if bipolar:
        q = m.node("BipolarQuant", ["x", m.c(1.0)], Q)
    else:
        q = m.node("Quant", ["x", m.c(2.0 ** -4), m.c(0.0), m.c(8.0)], Q, signed=1, narrow=1, rounding_mode="ROUND")
    path = m.save(q, tmp_path / "meta.onnx", [1, 8])
    import onnx

    proto = onnx.load(str(path))
    prop = proto.metadata_props.add()
    prop.key, prop.value = "edgeq.qfx", json.dumps({"version": 1, "tensors": {q: spec}, "layers": {}})
    onnx.save(proto, str(path))
    return path


def test_partial_metadata_keeps_the_quantizers_other_modes(tmp_path):
    """A spec naming only the overflow keeps the Quant's rounding (ROUND = RND_CONV); an empty one keeps both
    (narrow = SAT_SYM), so the emulation equals QONNX; a bipolar quantizer takes no metadata (review finding)."""
    from conftest import qonnx_reference

    from edgeq.errors import EdgeqError

    x = np.array([[0.09375, 0.3, 100.0, -100.0, 0.03125, -0.03125, 7.97, -7.99]], np.float32)
    g = edgeq.load(_meta_model(tmp_path, False, {"overflow": "WRAP"}))
    fmt = g.tensors[g.outputs[0]].format
    assert (fmt.rounding, fmt.overflow) == ("RND_CONV", "WRAP")
    path = _meta_model(tmp_path, False, {})
    g = edgeq.load(path)
    assert (g.output.format.rounding, g.output.format.overflow) == ("RND_CONV", "SAT_SYM")
    assert np.array_equal(edgeq.emulate(g, x), qonnx_reference(path, x))
    with pytest.raises(EdgeqError, match="bipolar quantizer; only power-of-two"):
        edgeq.load(_meta_model(tmp_path, True, {"overflow": "SAT"}))


def test_fpga_refuses_per_element_glue_before_a_quantizer_in_one_line(tmp_path):
    """Binary conv -> Add of a (1, C, H, W) constant -> BipolarQuant: thresholds are per channel, so the FPGA
    refuses it (it used to crash with a reshape error); the MCU runs it as float32 glue."""
    from qonnx_builder import Model, Q

    rng = np.random.default_rng(3)
    m = Model([1, 3, 5, 5])
    x = m.node("BipolarQuant", ["x", m.c(1.0)], Q)
    w = m.node("BipolarQuant", [m.c(rng.normal(size=(5, 3, 3, 3))), m.c(1.0)], Q)
    y = m.node("Conv", [x, w], pads=[1, 1, 1, 1])
    # + 0.3: not a short dyadic number (k + 0.5 would make the sum exact fixed point, which the FPGA adds on codes)
    y = m.node("Add", [y, m.c(rng.integers(-3, 4, (1, 5, 5, 5)).astype(np.float32) + 0.3)])
    y = m.node("BipolarQuant", [y, m.c(1.0)], Q)
    path = m.save(y, tmp_path / "perelem.onnx", [1, 5, 5, 5])
    res = subprocess.run([EDGEQ, "build", str(path), "--board", "ultra96", "--out", str(tmp_path / "p"),
                          "--n-vectors", "4"], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "varies within a channel" in lines[0], res.stderr
    assert not (tmp_path / "p").exists()
