"""The command line: real subprocesses of the installed `edgeq` script, bad input gets one line + exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import qonnx_reference

EDGEQ = [str(Path(sys.executable).with_name("edgeq"))]


def run(*args, cwd=None):
    return subprocess.run(EDGEQ + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_version_and_help():
    assert run("--version").stdout.startswith("edgeq, version")
    out = run("--help").stdout
    for cmd in ("boards", "inspect", "emulate"):
        assert cmd in out


def test_boards_json_lists_ultra96_and_qemu_rv32_with_their_facts():
    boards = {b["name"]: b for b in json.loads(run("boards", "--json").stdout)}
    u = boards["ultra96"]
    assert u["kind"] == "fpga" and u["part"] == "xczu3eg-sbva484-1-i"
    assert u["resources"] == {"dsp": 360, "lut": 70560, "ff": 141120, "bram36": 216}
    assert boards["qemu-rv32"]["kind"] == "mcu" and "zfh" in boards["qemu-rv32"]["isa"]


def test_inspect_json_reports_formats_macs_and_weight_bits(exported):
    path, _, _ = exported("bnn_pynq", "tfc_1w1a", 0)
    doc = json.loads(run("inspect", path, "--json").stdout)
    dense = [r for r in doc["layers"] if r["op"] == "Dense"]
    assert [r["macs"] for r in dense] == [784 * 64, 64 * 64, 64 * 64, 64 * 10]
    assert all(r["weight_format"] == "bipolar" and r["input_format"] == ["bipolar"] for r in dense)
    assert doc["total_weight_bits"] == sum(r["macs"] for r in dense)  # 1 bit per weight, 1 MAC per weight
    assert all(r["source"] for r in doc["layers"])
    table = run("inspect", path)
    assert table.returncode == 0 and "Dense" in table.stdout


def test_emulate_writes_outputs_and_per_layer_traces_equal_to_qonnx(exported, tmp_path):
    path, _, shape = exported("bnn_pynq", "sfc_1w2a", 0)
    x = np.random.default_rng(5).uniform(0, 1, (4,) + shape[1:]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    res = run("emulate", path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
              "--trace", tmp_path / "trace")
    assert res.returncode == 0, res.stderr
    y = np.load(tmp_path / "y.npy")
    assert np.array_equal(y, qonnx_reference(path, x))
    traces = sorted(p.name for p in (tmp_path / "trace").iterdir() if p.name != ".edgeq-project")  # edgeq's marker
    assert len(traces) > 10 and all(t.endswith(".npy") for t in traces)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("float") / "float.onnx"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
    torch.onnx.export(net, torch.zeros(1, 1, 4, 4), str(path), dynamo=False)
    return path


@pytest.fixture(scope="module")
def unsupported_model(tmp_path_factory):
    import torch
    from brevitas import nn as qnn

    import edgeq

    net = torch.nn.Sequential(qnn.QuantIdentity(return_quant_tensor=False), torch.nn.Upsample(scale_factor=2),
                              torch.nn.Flatten(), qnn.QuantLinear(64, 4, bias=False))
    path = tmp_path_factory.mktemp("unsup") / "upsample.onnx"
    edgeq.export(net.eval(), torch.zeros(1, 1, 4, 4), path)
    return path


def test_bad_inputs_give_one_line_and_exit_code_2(exported, tmp_path, float_model, unsupported_model):
    path, _, shape = exported("bnn_pynq", "tfc_1w1a", 0)
    good = np.zeros((2,) + shape[1:], np.float32)
    np.save(tmp_path / "good.npy", good)
    assert_one_line_error(run("inspect", tmp_path / "missing.onnx"), "missing.onnx", "no such file")
    (tmp_path / "text.onnx").write_text("this is not onnx\n")
    assert_one_line_error(run("inspect", tmp_path / "text.onnx"), "text.onnx", "not a readable ONNX")
    data = Path(path).read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    assert_one_line_error(run("inspect", tmp_path / "trunc.onnx"), "trunc.onnx")
    assert_one_line_error(run("inspect", float_model), "no quantizer", "Gemm")
    assert_one_line_error(run("inspect", unsupported_model), "Resize x1", "cannot be lowered", "edgeq lowers")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 28, 28), np.float32))
    assert_one_line_error(run("emulate", path, "-i", tmp_path / "wrong.npy", "-o", tmp_path / "y.npy"),
                          "shape", "(2, 3, 28, 28)")
    bad = good.copy()
    bad[1, 0, 3, 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert_one_line_error(run("emulate", path, "-i", tmp_path / "nan.npy", "-o", tmp_path / "y.npy"), "NaN")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    assert_one_line_error(run("emulate", path, "-i", tmp_path / "corrupt.npy", "-o", tmp_path / "y.npy"),
                          "corrupt.npy")
    assert not (tmp_path / "y.npy").exists()  # nothing half-written


def test_installed_wheel_ships_boards_and_runs_outside_the_repo(tmp_path, exported):
    """Build the wheel, install it into an empty target dir, and use it from another directory."""
    repo = Path(__file__).resolve().parents[1]
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(repo)], check=True, capture_output=True, timeout=300)
    target = tmp_path / "site"
    wheel = next(wheel_dir.glob("edgeq-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))
    code = ("import edgeq, edgeq.backends.hls.build, edgeq.backends.hls.project; from edgeq.board import get_board; "
            "from importlib import resources; assert resources.files('edgeq.hls_templates').joinpath("
            "'edgeq_kernels.h').is_file(); assert resources.files('edgeq.firmware').joinpath('common', 'crt0.S')"
            ".is_file(); print(edgeq.__file__); print(get_board('ultra96')['part'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=True).stdout.split()
    assert out[0].startswith(str(target)) and out[1] == "xczu3eg-sbva484-1-i"
    # the FPGA backend from the wheel, with a relative --out (the compilers run in other directories)
    path, _, _ = exported("bnn_pynq", "tfc_1w1a", 0)
    res = subprocess.run([sys.executable, "-m", "edgeq.cli", "build", str(path), "--board", "ultra96", "--out",
                          "fpga", "--n-vectors", "4"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert res.returncode == 0 and "csim pass" in res.stdout, res.stderr
    # the MCU backend from the wheel: kernels, runtime and link script are package data
    if shutil.which("clang-19") and shutil.which("qemu-system-riscv32"):
        path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
        cli = [sys.executable, "-m", "edgeq.cli"]
        for args in (["build", str(path), "--board", "qemu-rv32", "--out", "p", "--n-vectors", "4"],
                     ["flash", "p", "--board", "qemu-rv32"], ["compare", "p"]):
            res = subprocess.run(cli + args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
            assert res.returncode == 0, res.stderr
    elif os.environ.get("CI"):
        pytest.fail("clang-19 / qemu-system-riscv32 missing; `make setup` installs them")
