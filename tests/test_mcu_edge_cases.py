"""MCU backend edge cases on small hand-built QONNX graphs, each run on QEMU and compared bit for bit.

Shared casts, signed zeros in constants, Clip with lo > hi, bipolar quantizers, and FP16 overflow to inf and
NaN (canonical on RISC-V; the emulator canonicalises, x86's host check treats NaN as NaN). Broadcasting
element-wise layers are refused with one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qonnx_builder import Model, Q

EDGEQ = str(Path(sys.executable).with_name("edgeq"))


def run(*args):
    return subprocess.run([EDGEQ, *map(str, args)], capture_output=True, text=True, timeout=300)


def build_flash_compare(model: Path, out: Path, x: np.ndarray | None = None):
    if shutil.which("clang-19") is None or shutil.which("qemu-system-riscv32") is None:
        pytest.skip("clang-19 / qemu-system-riscv32 missing (make setup installs them)")
    extra = []
    if x is not None:
        np.save(out.parent / "x.npy", x)
        extra = ["--vectors", out.parent / "x.npy"]
    b = run("build", model, "--board", "qemu-rv32", "--out", out, "--n-vectors", 8, *extra)
    assert b.returncode == 0, b.stderr
    assert run("flash", out, "--board", "qemu-rv32").returncode == 0
    c = run("compare", out)
    assert c.returncode == 0, c.stdout + c.stderr
    return b


def test_one_float32_tensor_feeding_two_convs_gets_one_shared_cast(tmp_path):
    rng = np.random.default_rng(0)
    m = Model([1, 4, 6, 6])
    q = m.quant("x", 8, 0.1)  # 0.1 is not a float16 grid: the convs need a cast to float16
    wa = m.quant(m.c(rng.integers(-3, 4, (4, 4, 5, 5)) * 0.5), 4, 0.5)
    wb = m.quant(m.c(rng.integers(-3, 4, (4, 4, 1, 1)) * 0.5), 4, 0.5)
    y = m.node("Add", [m.node("Conv", [q, wa], pads=[2, 2, 2, 2]), m.node("Conv", [q, wb])])
    out = tmp_path / "p"
    build_flash_compare(m.save(y, tmp_path / "m.onnx", [1, 4, 6, 6]), out)
    rep = json.loads((out / "report.json").read_text())
    assert [lay["op"] for lay in rep["layers"]].count("Cast") == 1


def test_fp16_overflow_to_inf_and_nan_is_bit_exact_and_warned(tmp_path):
    m = Model([1, 8])
    q = m.quant("x", 8, 1.0)
    d1 = m.node("MatMul", [q, m.quant(m.c(np.full((8, 2), 127.0)), 8, 1.0)])  # 8 * 127 * 127 > 65504: inf
    d2 = m.node("MatMul", [d1, m.quant(m.c(np.array([[0.0, 1.0], [1.0, 0.0]])), 8, 1.0)])  # inf * 0: NaN
    out = tmp_path / "p"
    b = build_flash_compare(m.save(d2, tmp_path / "m.onnx", [1, 2]), out, np.full((2, 8), 127.0, np.float32))
    assert "can overflow to inf" in b.stderr
    hw = np.load(out / "hw_outputs.npy")
    assert np.isnan(hw).all()


def test_signed_zero_constants_and_clip_with_lo_above_hi(tmp_path):
    m = Model([1, 2, 2, 2])
    c = np.array([[[[0.0, -0.0], [-0.0, -0.0]], [[1.0, 1.0], [1.0, 1.0]]]], np.float32)
    y = m.node("Clip", [m.node("Add", [m.quant("x", 8, 1.0), m.c(c)]), m.c(1.0), m.c(0.0)])
    build_flash_compare(m.save(y, tmp_path / "m.onnx", [1, 2, 2, 2]), tmp_path / "p",
                        np.full((2, 2, 2, 2), -0.3, np.float32))
    m = Model([1, 2, 2, 2])
    y = m.node("Add", [m.quant("x", 8, 1.0), m.c(c)])
    out = tmp_path / "q"
    build_flash_compare(m.save(y, tmp_path / "n.onnx", [1, 2, 2, 2]), out, np.full((2, 2, 2, 2), -0.3, np.float32))
    hw = np.load(out / "hw_outputs.npy")
    assert np.signbit(hw[0, 0, 0, 1]) and not np.signbit(hw[0, 0, 0, 0])  # -0 + -0 and -0 + +0


def test_bipolar_quantizers(tmp_path):
    m = Model([1, 8])
    w = m.node("BipolarQuant", [m.c(np.sign(np.random.default_rng(0).standard_normal((8, 4)))), m.c(1.0)], Q)
    d = m.node("MatMul", [m.node("BipolarQuant", ["x", m.c(1.0)], Q), w])
    build_flash_compare(m.save(d, tmp_path / "m.onnx", [1, 4]), tmp_path / "p")


def test_broadcasting_add_is_refused_with_one_line(tmp_path):
    m = Model([1, 2, 4, 4])
    q = m.quant("x", 8, 0.5)
    y = m.node("Add", [q, m.quant(m.node("GlobalAveragePool", [q]), 8, 0.5)])
    res = run("build", m.save(y, tmp_path / "m.onnx", [1, 2, 4, 4]), "--board", "qemu-rv32", "--out", tmp_path / "p")
    assert res.returncode == 2 and "broadcasts (2, 1, 1) to (2, 4, 4)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "p").exists()
