"""The fuzzer's hardware backends (edgeq.backends.fuzz): random QONNX graphs through the FPGA C simulation (g++
against the Xilinx ap_types headers) and the MCU firmware under QEMU, bit for bit against edgeq.emulate (which the
emulate backend holds to QONNX's execute_onnx)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeq import fuzz
from edgeq.backends import fuzz as hw

HLS_DIR = Path(__file__).parent / "fuzz_regressions" / "hls"
#: bugs the fuzzer found that are not fixed yet (names start with "open_"): strict xfails, so a fix shows at once
HLS_REGRESSIONS = [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason="open FPGA bug found by the fuzzer"))
                   if p.stem.startswith("open_") else p for p in sorted(HLS_DIR.glob("*.onnx"))]


@pytest.mark.parametrize("path", HLS_REGRESSIONS, ids=[p.stem for p in sorted(HLS_DIR.glob("*.onnx"))])
def test_saved_hls_regression_builds_and_csim_equals_the_emulator(path, hls_regressions):
    res, meta = hls_regressions[path.stem]
    assert res.outcome == meta["expect"], f"{path.stem}: {res.outcome}: {res.message} ({meta['note']})"


@pytest.fixture(scope="module")
def hls_regressions():
    """{name: (result, expectation)}: every saved FPGA regression through one g++ compile."""
    paths = sorted(HLS_DIR.glob("*.onnx"))
    loaded = [fuzz.load_regression(p) for p in paths]
    results = hw.hls([case for case, _ in loaded])
    return {p.stem: (r, meta) for p, r, (_, meta) in zip(paths, results, loaded)}


def test_a_seeded_slice_of_random_graphs_is_exact_or_refused_on_the_fpga():
    results = hw.hls([fuzz.case(7, i) for i in range(60)])
    failed = [(i, r.message) for i, r in enumerate(results) if r.outcome == "failed"]
    assert not failed, failed
    assert sum(r.outcome == "exact" for r in results) >= 10  # the slice reaches csim, it is not all refusals


def test_a_planted_csim_bug_is_a_failure_that_names_the_outputs(monkeypatch):
    """The same batch, with the test bench's Threshold kernel counting one level too many: csim must disagree."""
    from edgeq.backends.hls import render as render_mod

    real = render_mod.render

    def planted(design, root, n_vectors=64):
        info = real(design, root, n_vectors)
        k = root / "hls" / "edgeq_kernels.h"
        count = "q += (v >= thr[c * L + k]) ? 1 : 0;"
        k.write_text(k.read_text().replace(count, count.replace("? 1", "? 2")))
        return info

    monkeypatch.setattr(render_mod, "render", planted)
    cases = [fuzz.case(7, i) for i in range(60)]
    results = hw.hls(cases)
    assert any(r.outcome == "failed" and "csim differs from the emulator" in r.message for r in results)


NO_QEMU = pytest.mark.skipif(shutil.which("qemu-system-riscv32") is None or shutil.which("clang-19") is None,
                             reason="QEMU or clang-19 missing (make setup installs them)")


@pytest.fixture(scope="module")
def mcu_slice():
    cases = [fuzz.case(7, i) for i in range(32)]
    return cases, hw.mcu(cases)


@NO_QEMU
def test_random_graphs_run_on_qemu_exactly_as_the_emulator_or_are_refused(mcu_slice):
    """32 graphs in one firmware image and one host build: each design's outputs, bit for bit."""
    _, results = mcu_slice
    assert not [r.message for r in results if r.outcome == "failed"]
    assert sum(r.outcome == "exact" for r in results) >= 8  # the slice reaches QEMU, it is not all refusals
    assert np.all([r.seconds > 0 for r in results])


def _patched_kernels(tmp_path, old: str, new: str):
    from edgeq.backends.mcu import build as mb

    srcs, inc = mb._kernel_files()
    dst = tmp_path / "common"
    shutil.copytree(inc, dst)
    nn = dst / "edgeq_nn.c"
    assert old in nn.read_text()
    nn.write_text(nn.read_text().replace(old, new))
    return lambda: ([dst / p.name for p in srcs], dst)


@NO_QEMU
def test_a_planted_kernel_bug_is_a_failure_of_exactly_the_designs_it_touches(tmp_path, monkeypatch, mcu_slice):
    """The MAC kernels' 1-lane finish adds 2^-10: designs with a Conv or Dense layer fail (the host build is
    checked first, as the build's host check is), the others stay exact in the same firmware image."""
    from edgeq.backends.mcu import build as mb

    cases, clean = mcu_slice
    monkeypatch.setattr(mb, "_kernel_files", _patched_kernels(
        tmp_path, "return (edgeq_f16)(a + bias); }", "return (edgeq_f16)(a + bias + (edgeq_f16)0x1p-10f); }"))
    results = hw.mcu(cases)
    failed = [i for i, r in enumerate(results) if r.outcome == "failed"]
    assert failed and all("the host build differs from the emulator" in results[i].message for i in failed)
    assert all(clean[i].outcome == "exact" for i in failed)
    assert any(r.outcome == "exact" for r in results)
    assert all({"Conv", "MatMul", "Gemm"} & {n.op_type for n in cases[i].model.graph.node} for i in failed)


@NO_QEMU
def test_a_design_that_does_not_compile_is_split_out_of_its_batch(monkeypatch, mcu_slice):
    """One design's C gets a syntax error: it alone fails, naming the compiler's error; the rest are exact."""
    from edgeq.backends.mcu import build as mb

    cases, clean = mcu_slice
    victim = next(i for i, r in enumerate(clean) if r.outcome == "exact")
    real = mb.step_render

    def planted(ctx):
        real(ctx)
        if ctx.tmp.name == f"d{victim}":
            model_c = ctx.tmp / "src" / "model.c"
            model_c.write_text(model_c.read_text() + "\nthis is not C;\n")

    monkeypatch.setattr(mb, "step_render", planted)
    cases = cases[:victim + 4]
    results = hw.mcu(cases)
    assert results[victim].outcome == "failed" and "did not build" in results[victim].message
    assert [i for i, r in enumerate(results) if r.outcome == "failed"] == [victim]
    assert all(r.outcome == c.outcome for r, c in zip(results, clean) if r is not results[victim])
