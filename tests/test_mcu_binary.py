"""Binary (w1a1) networks on the MCU: XNOR-popcount and MST kernels through `edgeq build` -> `flash` -> `compare`.

The oracles: QEMU running the firmware (rv32imafc_zfh), equal bit for bit to `edgeq.emulate` on the program, and
QONNX's execute_onnx on the exported model: a binary layer is exact integer arithmetic and the float glue runs in
float32 in QONNX's order, so TFC/SFC/LFC w1a1 (every MAC layer binary) must equal QONNX bit for bit. MST builds
must give exactly the outputs of plain XNOR builds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import qonnx_reference
from mcu_tools import need, qemu

import edgeq
from edgeq import mst

EDGEQ = str(Path(sys.executable).with_name("edgeq"))
N = 8
BAD_INPUT_BOARDS = ("qemu-rv32", "ultra96")


def cli(*args):
    return subprocess.run([EDGEQ, *map(str, args)], capture_output=True, text=True, timeout=900)


def build_and_run(path: Path, out: Path, *extra) -> tuple[dict, np.ndarray, dict]:
    res = cli("build", path, "--board", "qemu-rv32", "--out", out, "--n-vectors", N, "--trace", *extra)
    assert res.returncode == 0, res.stderr
    res = cli("flash", out, "--board", "qemu-rv32")
    assert res.returncode == 0, res.stderr
    res = cli("compare", out)
    assert res.returncode == 0 and "IDENTICAL" in res.stdout, res.stdout + res.stderr
    return (json.loads((out / "report.json").read_text()), np.load(out / "hw_outputs.npy"),
            json.loads((out / "hw_counters.json").read_text()))


@pytest.mark.parametrize("name", ["tfc_1w1a", "sfc_1w1a", "lfc_1w1a", "cnv_1w1a"])
def test_w1a1_bnn_pynq_is_bit_exact_with_and_without_mst(exported, tmp_path, name):
    need(qemu)
    path, _, _ = exported("bnn_pynq", name, 0)
    g = edgeq.load(path)
    binary = [lay.name for lay in mst.xnor_layers(g)]
    runs = {}
    variants = [("plain", ()), ("mst", ("--mst",)), ("mst2", ("--mst-depth", "2"))]
    if name in ("lfc_1w1a", "cnv_1w1a"):  # the depth bound is covered by TFC and SFC; these builds are the slowest
        variants = variants[:2]
    for tag, extra in variants:
        rep, hw, counters = build_and_run(path, tmp_path / tag, *extra)
        runs[tag] = hw
        kernels = {r["layer"]: r["kernel"] for r in rep["mst"]["layers"]}
        assert kernels == {b: ("xnor" if tag == "plain" else "mst") for b in binary}
        contracts = {lay["name"]: lay["contract"]["rounding"] for lay in rep["layers"]}
        assert all("XNOR-popcount" in contracts[b] for b in binary)
        # BatchNorm -> bipolar quantizer after a binary layer became integer thresholds (one per hidden layer)
        ops = [lay["op"] for lay in rep["layers"]]
        assert ops.count("Threshold") == len(binary) - 1
        assert ops.count("BatchNorm") == (1 if name == "cnv_1w1a" else 0)  # CNV's first conv is not binary
        if tag == "mst2":
            assert all(r["depth"] <= 2 for r in rep["mst"]["layers"])
        per_layer = {r["layer"]: r["instret"] for r in counters["layers"]}
        assert all(min(per_layer[b]) > 0 for b in binary)
    assert all(np.array_equal(runs["plain"], hw) for hw in runs.values())
    x = np.load(tmp_path / "plain" / "vectors" / "input.npy")
    ref = qonnx_reference(path, x).reshape(runs["plain"].shape)
    if name == "cnv_1w1a":  # its first layer (8-bit input) is an FP16 MAC, not binary: top-1 only
        assert binary and "conv_features_1_Conv" not in binary
        assert np.mean(ref.argmax(1) == runs["plain"].argmax(1)) >= 0.75
    else:
        assert np.array_equal(runs["plain"].astype(np.float32), ref.astype(np.float32))


def test_binary_layers_shrink_flash_and_instructions_against_fp16(exported, tmp_path):
    """TFC-w1a1 as XNOR against the same weights as FP16 MACs (what the MCU backend did before)."""
    need(qemu)
    path, _, _ = exported("bnn_pynq", "tfc_1w1a", 0)
    rep, _, counters = build_and_run(path, tmp_path / "x")
    sizes = rep["weight_bytes_per_layer"]
    g = edgeq.load(path)
    for lay in mst.xnor_layers(g):
        k, n = lay.weight.shape
        assert sizes[lay.name] == n * -(-k // 32) * 4  # 1 bit per weight, rows padded to 32-bit words
    assert min(counters["total"]["instret"]) < 100_000  # FP16 build of the same model: 147,211 (README)


@pytest.mark.parametrize("args,needle", [
    (["--mst-depth", "0"], "MST depth bound must be >= 1"),
    (["--mst-layers", "conv_features_1_Conv"], "layer 'conv_features_1_Conv'"),
])
def test_bad_mst_requests_are_one_line_and_exit_2(exported, tmp_path, args, needle):
    path, _, _ = exported("bnn_pynq", "cnv_1w1a", 0)
    for board in BAD_INPUT_BOARDS:
        out = tmp_path / board
        res = cli("build", path, "--board", board, "--out", out, *args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr
        assert "Traceback" not in res.stderr and not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{board}")]  # no half-written dir


def test_mst_on_a_model_without_binary_layers_is_refused(exported, tmp_path):
    path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
    res = cli("build", path, "--board", "qemu-rv32", "--out", tmp_path / "p", "--mst")
    assert res.returncode == 2 and "no binary layer" in res.stderr and not (tmp_path / "p").exists()


def test_planted_mst_bug_is_caught_by_the_host_check(exported, tmp_path, monkeypatch):
    """Dropping one differing position from the packed MST layer makes the build fail (the check can fail)."""
    if shutil.which("clang-19") is None and shutil.which("gcc") is None:
        pytest.skip("no host compiler")
    from edgeq.backends.hls.build import BuildConfig
    from edgeq.backends.mcu import build as mcu_build
    from edgeq.backends.mcu import xnor

    real = xnor.pack_mst

    def broken(tree, bits):
        m = real(tree, bits)
        s = int(np.flatnonzero(m["count"])[0])  # the first step with a non-empty list
        m["count"] = m["count"].copy()
        m["count"][s] -= 1
        return m

    monkeypatch.setattr(xnor, "pack_mst", broken)
    path, _, _ = exported("bnn_pynq", "tfc_1w1a", 0)
    cfg = BuildConfig(model=path, board="qemu-rv32", out=tmp_path / "bad", n_vectors=4, mst=True)
    with pytest.raises(mcu_build.BuildFailed, match="differs from the emulator"):
        mcu_build.build(cfg)
