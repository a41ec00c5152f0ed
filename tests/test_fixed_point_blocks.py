"""A ResNet-style block with every tensor in fixed point (BatchNorm as a fixed-point scale and shift, a fixed-point
residual Add) is ingested without float glue, equals Brevitas and QONNX bit for bit, and builds for Ultra96 with
csim bit-exact, BatchNorm running as integer multiply/add on codes (ConstOp)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
