"""MCU backend end to end: `edgeq build` (host check) -> `edgeq flash` (QEMU, Spike) -> `edgeq compare`.

The oracles are real RISC-V ISA simulators running the generated firmware (QEMU `-cpu rv32,Zfh=true`, Spike
`rv32imafc_zfh`) and the same C compiled for x86-64 with gcc `-fexcess-precision=16`; the reference they must
equal bit for bit is `edgeq.emulate` on the FP16 program. The distance of that program to the float32 model
(which equals QONNX's execute_onnx, tests/test_emulator_vs_qonnx.py) is checked against QONNX directly here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from conftest import qonnx_reference

EDGEQ = str(Path(sys.executable).with_name("edgeq"))
BOARDS = ("qemu-rv32", "spike-rv32")


def edgeq_cli(*args, env=None):
    return subprocess.run([EDGEQ, *map(str, args)], capture_output=True, text=True, timeout=900, env=env)


def _need_tools():
    missing = [t for t in ("clang-19", "ld.lld-19", "qemu-system-riscv32", "dtc") if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing {', '.join(missing)}; `make setup` installs them with apt")
        pytest.skip(f"missing {', '.join(missing)} (make setup installs them)")


MODELS = {"tfc_2w2a": ("bnn_pynq", "tfc_2w2a", 0), "cnv_2w2a": ("bnn_pynq", "cnv_2w2a", 0),
          "depthwise_cnn": ("depthwise", 0)}
#: vectors per build: CNV-w2a2 (59 M MACs per inference) is the expensive one on a simulator
VECTORS = {"tfc_2w2a": 32, "cnv_2w2a": 8, "depthwise_cnn": 32}
#: (model, board) pairs run end to end: every model on QEMU, and Spike on the two small ones (one network per
#: simulator for the heavy end: CNV-w2a2 on Spike took 167 s of the suite for the same kernels QEMU runs)
END_TO_END = [(m, b) for m in MODELS for b in BOARDS if not (m == "cnv_2w2a" and b == "spike-rv32")]


@pytest.fixture(scope="module")
def projects(exported, tmp_path_factory):
    """Build each model once (VECTORS[model] vectors, debug build); flashing happens per board in the tests."""
    _need_tools()
    root = tmp_path_factory.mktemp("mcu")
    cache = {}

    def get(model: str, board: str):
        key = (model, board)
        if key not in cache:
            path, _, _ = exported(*MODELS[model])
            out = root / f"{model}-{board}"
            res = edgeq_cli("build", path, "--board", board, "--out", out, "--n-vectors", VECTORS[model], "--trace")
            assert res.returncode == 0, res.stderr
            cache[key] = (path, out)
        return cache[key]

    return get


@pytest.mark.parametrize("model,board", END_TO_END)
def test_build_flash_compare_is_bit_exact(projects, model, board):
    path, out = projects(model, board)
    rep = json.loads((out / "report.json").read_text())
    assert rep["backend"] == "mcu" and rep["board"] == board
    h = rep["host_check"]
    n = VECTORS[model]
    assert h["status"] == "pass" and h["vectors"] == n and h["mismatches"] == 0 and h["values_compared"] >= 10 * n

    res = edgeq_cli("flash", out, "--board", board, "--timeout", 600)
    assert res.returncode == 0, res.stderr
    hw = np.load(out / "hw_outputs.npy")
    assert hw.dtype == np.float64 and hw.shape[0] == n
    counters = json.loads((out / "hw_counters.json").read_text())
    inst = counters["total"]["instret"]
    assert len(inst) == n and min(inst) > 0
    layers = counters["layers"]
    assert [r["layer"] for r in layers] == [lay["name"] for lay in rep["layers"]]
    # debug builds report per-layer counts (a fused element-wise chain on its last layer) and they sum to the
    # inference's count, which the harness takes as that sum
    counted = [r for r in layers if r["instret"] is not None]
    assert all(r["fused_into"] in {c["layer"] for c in counted} for r in layers if r["instret"] is None)
    assert sum(r["instret"][0] for r in counted) == inst[0]
    macs = [r for r in counted if r["macs"]]
    assert macs and all(r["instret"][0] > 0 for r in macs)

    cmp = edgeq_cli("compare", out, "--json")
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    s = json.loads(cmp.stdout)
    assert s["identical"] and s["mismatches"] == 0 and s["values_compared"] == hw.size
    assert s["reference"].startswith("edgeq.emulate(program.npz")


def test_fp16_program_is_close_to_qonnx_and_the_report_says_how_close(projects):
    """The float32 model is QONNX's; the MCU's FP16 program may differ, and report.json says by how much."""
    path, out = projects("depthwise_cnn", "qemu-rv32")
    rep = json.loads((out / "report.json").read_text())
    x = np.load(out / "vectors" / "input.npy")[:8]
    want = qonnx_reference(path, x)
    got = np.load(out / "vectors" / "expected.npy")[:8]
    q = rep["qonnx_distance"]
    assert np.abs(got - want.reshape(got.shape)).max() <= q["max_abs_diff"] + 0.0
    assert q["differing_values"] > 0, "8-bit activations x weights overflow 11 bits: FP16 accumulation rounds"
    assert q["argmax_agreement"] >= 0.9
    # TFC-w2a2's partial sums stay exact in FP16: the MCU equals QONNX bit for bit
    _, tfc = projects("tfc_2w2a", "qemu-rv32")
    t = json.loads((tfc / "report.json").read_text())["qonnx_distance"]
    assert t["differing_values"] == 0 and t["max_abs_diff"] == 0.0


def test_report_has_memory_plan_macs_and_contracts(projects):
    _, out = projects("cnv_2w2a", "qemu-rv32")
    rep = json.loads((out / "report.json").read_text())
    mem = rep["memory"]
    assert mem["peak_ram_bytes"] <= rep["firmware"]["ram_budget"] and mem["flash_bytes"] <= rep["firmware"][
        "flash_budget"]
    assert mem["arena_bytes"] <= mem["peak_ram_bytes"]
    # liveness: buffers alive at the same time never overlap in the arena
    bufs = mem["buffers"]
    for i, a in enumerate(bufs):
        for b in bufs[i + 1:]:
            if a["live"][0] <= b["live"][1] and b["live"][0] <= a["live"][1]:
                assert a["offset"] + a["bytes"] <= b["offset"] or b["offset"] + b["bytes"] <= a["offset"]
    # the arena is smaller than keeping every tensor
    assert mem["arena_bytes"] < sum(b["bytes"] for b in bufs)
    convs = [lay for lay in rep["layers"] if lay["op"] == "Conv2d"]
    assert len(convs) == 6 and all(lay["macs"] > 0 and lay["weight_bytes"] > 0 for lay in convs)
    assert rep["total_macs"] == sum(lay["macs"] for lay in rep["layers"])
    assert all("fma16" in lay["contract"]["rounding"] for lay in convs)


@pytest.mark.parametrize("opts", [("--simd", "v2f16"), ("--mac", "mul-add"), ("--simd", "v2f16", "--mac", "mul-add")],
                         ids=["v2f16", "mul-add", "v2f16-mul-add"])
def test_simd_and_mul_add_contracts_are_emulated_exactly(exported, tmp_path, opts):
    """The 2-lane (v2f16) reduction order and the unfused mul+add are different contracts, each exact."""
    _need_tools()
    path, _, _ = exported("depthwise", 0)
    out = tmp_path / "p"
    res = edgeq_cli("build", path, "--board", "qemu-rv32", "--out", out, "--n-vectors", 32, *opts)
    assert res.returncode == 0, res.stderr
    assert edgeq_cli("flash", out, "--board", "qemu-rv32").returncode == 0
    assert edgeq_cli("compare", out).returncode == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["options"]["lanes"] == (2 if "v2f16" in opts else 1)
    assert rep["options"]["fused"] == ("mul-add" not in opts)


def test_contracts_differ_so_the_check_can_fail(exported, tmp_path):
    """Outputs of the fma and mul-add programs differ on the same vectors: comparing one against the other's
    emulation fails (exit 1), i.e. the comparison really sees the contract."""
    _need_tools()
    path, _, _ = exported("depthwise", 0)
    a, b = tmp_path / "fma", tmp_path / "muladd"
    assert edgeq_cli("build", path, "--board", "qemu-rv32", "--out", a, "--n-vectors", 32).returncode == 0
    assert edgeq_cli("build", path, "--board", "qemu-rv32", "--out", b, "--n-vectors", 32, "--mac",
                     "mul-add").returncode == 0
    assert edgeq_cli("flash", b, "--board", "qemu-rv32").returncode == 0
    res = edgeq_cli("compare", a, "--hw-outputs", b / "hw_outputs.npy")
    assert res.returncode == 1 and "differ" in res.stdout


# ------------------------------------------------------------------------------------------------- bad input


def _one_line_exit_2(res):
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeq: error:") and "Traceback" not in res.stderr
    return lines[0]


def _tiny_board(tmp_path: Path, ram_kib: int, flash_kib: int) -> Path:
    text = (Path(str(resources.files("edgeq.boards") / "qemu-rv32.toml")).read_text()
            .replace('name = "qemu-rv32"', 'name = "tiny"'))
    text = "\n".join(f"ram_kib = {ram_kib}" if ln.startswith("ram_kib") else
                     f"flash_kib = {flash_kib}" if ln.startswith("flash_kib") else ln for ln in text.splitlines())
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def test_model_over_the_boards_ram_names_the_peak_layer(exported, tmp_path):
    _need_tools()
    path, _, _ = exported("depthwise", 0)
    board = _tiny_board(tmp_path, ram_kib=24, flash_kib=1024)
    msg = _one_line_exit_2(edgeq_cli("build", path, "--board", board, "--out", tmp_path / "p"))
    assert "KiB of RAM" in msg and "peak at layer" in msg and "'tiny' has 24 KiB" in msg
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.*"))
    board = _tiny_board(tmp_path, ram_kib=512, flash_kib=16)
    msg = _one_line_exit_2(edgeq_cli("build", path, "--board", board, "--out", tmp_path / "p"))
    assert "of flash" in msg and "'tiny' has 16 KiB" in msg and "largest layer" in msg


def test_unknown_board_and_wrong_board_for_flash(projects, tmp_path):
    _, out = projects("tfc_2w2a", "qemu-rv32")
    assert "unknown board" in _one_line_exit_2(edgeq_cli("flash", out, "--board", "nope"))
    msg = _one_line_exit_2(edgeq_cli("flash", out, "--board", "spike-rv32"))
    assert "built for board 'qemu-rv32'" in msg


def test_fpga_project_is_not_flashable(exported, tmp_path):
    path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
    out = tmp_path / "fpga"
    assert edgeq_cli("build", path, "--board", "ultra96", "--out", out, "--n-vectors", 4).returncode == 0
    assert "MCU" in _one_line_exit_2(edgeq_cli("flash", out, "--board", "ultra96"))


def test_missing_toolchain_says_how_to_install(exported, tmp_path):
    path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # the venv only: no clang, no QEMU
    msg = _one_line_exit_2(edgeq_cli("build", path, "--board", "qemu-rv32", "--out", tmp_path / "p", env=env))
    assert "apt-get install" in msg and "clang" in msg
    assert not (tmp_path / "p").exists()


def test_trapping_firmware_is_reported_with_its_cause(projects, tmp_path):
    """Patch the first instruction of edgeq_model_run with an illegal one: the trap is reported, exit 2."""
    _, out = projects("tfc_2w2a", "qemu-rv32")
    proj = tmp_path / "trap"
    shutil.copytree(out, proj)
    elf = proj / "firmware.elf"
    from edgeq.backends.mcu.toolchain import elf_section_offset, elf_sections, elf_symbols

    addr = next(a for name, a, _ in elf_symbols(elf) if name == "edgeq_model_run")
    base = next(a for name, a, *_ in elf_sections(elf) if name == ".text")
    off = elf_section_offset(elf, ".text")
    data = bytearray(elf.read_bytes())
    data[off + addr - base : off + addr - base + 4] = b"\0\0\0\0"  # 0x0000: an illegal instruction
    elf.write_bytes(bytes(data))
    msg = _one_line_exit_2(edgeq_cli("flash", proj, "--board", "qemu-rv32", "--timeout", 60))
    assert "trapped" in msg and "mcause=0x2" in msg and "illegal instruction" in msg and f"{addr:08x}" in msg
    assert "(edgeq_model_run+0x0)" in msg

