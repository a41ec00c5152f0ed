"""`edgeq compare DIR`: hardware outputs against a fresh emulation, bit for bit, on real builds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import corrupt_thresholds

EDGEQ = str(Path(sys.executable).with_name("edgeq"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def edgeq_cli(*args):
    return subprocess.run([EDGEQ, *map(str, args)], capture_output=True, text=True, timeout=600)


def strict_json(text: str) -> dict:
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def project(exported, tmp_path_factory):
    """A real `edgeq build --board ultra96` of bnn_pynq TFC-w2a2 (64 seeded vectors, csim passed)."""
    path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
    out = tmp_path_factory.mktemp("compare") / "tfc_proj"
    res = edgeq_cli("build", path, "--board", "ultra96", "--out", out)
    assert res.returncode == 0, res.stderr
    return out


def test_identical_csim_outputs_exit_0(project, tmp_path):
    res = edgeq_cli("compare", project, "--hw-outputs", project / "csim" / "outputs.npy", "--json")
    assert res.returncode == 0, res.stderr
    s = strict_json(res.stdout)
    assert s["identical"] is True and s["mismatches"] == 0 and s["first_mismatch"] is None
    assert (s["vectors"], s["outputs"], s["values_compared"]) == (64, 10, 640)
    assert s["expected_file_agrees"] is True and s["max_abs_diff"] == 0.0
    assert [r["mismatches"] for r in s["per_output"]] == [0] * 10
    assert s["layers"] is None  # a passing build leaves no per-layer traces
    # The default is DIR/hw_outputs.npy, as the PYNQ driver writes it; the text form says IDENTICAL.
    d = tmp_path / "proj"
    shutil.copytree(project, d)
    shutil.copyfile(project / "csim" / "outputs.npy", d / "hw_outputs.npy")
    res = edgeq_cli("compare", d)
    assert res.returncode == 0, res.stderr
    assert "IDENTICAL" in res.stdout and "640 outputs" in res.stdout and "agrees with the emulator" in res.stdout


def test_one_ulp_is_a_mismatch_named_with_its_bit_patterns(project, tmp_path):
    y = np.load(project / "csim" / "outputs.npy")
    s_idx, o_idx = 5, 3
    y[s_idx, o_idx] = np.nextafter(y[s_idx, o_idx], np.inf)
    hw = tmp_path / "nudged.npy"
    np.save(hw, y)
    res = edgeq_cli("compare", project, "--hw-outputs", hw, "--json")
    assert res.returncode == 1, res.stderr
    s = strict_json(res.stdout)
    assert s["identical"] is False and s["mismatches"] == 1 and s["mismatching_vectors"] == 1
    f = s["first_mismatch"]
    assert (f["vector"], f["output"]) == (s_idx, o_idx)
    assert f["hw"] == float(y[s_idx, o_idx]) and f["emulator"] != f["hw"]
    assert f["hw_bits"].startswith("0x") and len(f["hw_bits"]) == len(f["emulator_bits"]) == 18
    assert int(f["hw_bits"], 16) ^ int(f["emulator_bits"], 16) == 1  # only the last bit differs
    assert [r["mismatches"] for r in s["per_output"]] == [1 if j == o_idx else 0 for j in range(10)]
    assert 0 < s["max_abs_diff"] == s["per_output"][o_idx]["max_abs_diff"] < 1e-14
    assert s["expected_file_agrees"] is True
    res = edgeq_cli("compare", project, "--hw-outputs", hw)
    assert res.returncode == 1
    assert f"vector {s_idx}, output {o_idx}" in res.stdout and f["hw_bits"] in res.stdout

    # A NaN from the hardware is reported without breaking the JSON.
    z = np.load(project / "csim" / "outputs.npy")
    z[0, 0] = np.nan
    np.save(hw, z)
    s = strict_json(edgeq_cli("compare", project, "--hw-outputs", hw, "--json").stdout)
    assert s["first_mismatch"]["hw"] == "nan" and s["nonfinite_mismatches"] == 1 and s["mismatches"] == 1
    assert s["max_abs_diff"] is None and s["per_output"][0]["nonfinite"] == 1


def test_equality_is_on_bit_patterns(project, tmp_path, monkeypatch):
    """NaN equals NaN only with the same bits, inf only with the same sign (reference values injected). An FPGA
    output is an integer code, and code 0 has no sign: -0.0 from the float32 model equals the hardware's 0."""
    from edgeq.backends import compare as c

    ref = np.zeros((64, 10))
    ref[:, 1] = np.nan
    ref[:, 2] = np.inf
    ref[7, 3] = -0.0
    monkeypatch.setattr(c, "emulate", lambda graph, x, trace=False, progress=None, raw_trace=False: ref.copy())
    hw = ref.copy()
    hw[3, 0] = -0.0
    hw[7, 3] = 0.0
    hw[4, 1] = np.frombuffer(np.uint64(0x7FF8000000000001).tobytes(), np.float64)[0]  # another NaN payload
    hw[5, 2] = -np.inf
    np.save(tmp_path / "hw.npy", hw)
    s = c.compare_project(project, tmp_path / "hw.npy")
    assert s["mismatches"] == 2 and [r["mismatches"] for r in s["per_output"][:4]] == [0, 1, 1, 0]
    assert s["first_mismatch"]["vector"] == 4 and s["first_mismatch"]["hw_bits"] == "0x7ff8000000000001"
    assert s["nonfinite_mismatches"] == 2
    assert s["expected_file_agrees"] is False
    np.save(tmp_path / "hw.npy", ref)
    assert c.compare_project(project, tmp_path / "hw.npy")["identical"] is True


def test_signed_zero_counts_for_float_outputs():
    from edgeq.backends.compare import same_bits

    a, b = np.array([0.0, -0.0, 1.0]), np.array([-0.0, -0.0, 1.0])
    assert same_bits(a, b).tolist() == [False, True, True]  # MCU: float16/float32 outputs keep the sign
    assert same_bits(a, b, signed_zero=False).tolist() == [True, True, True]  # FPGA: integer codes


def test_stale_expected_file_is_reported_but_the_fresh_emulation_decides(project, tmp_path):
    d = tmp_path / "proj"
    shutil.copytree(project, d)
    e = np.load(d / "vectors" / "expected.npy")
    e[0, 0] += 1.0
    np.save(d / "vectors" / "expected.npy", e)
    res = edgeq_cli("compare", d, "--hw-outputs", d / "csim" / "outputs.npy", "--json")
    assert res.returncode == 0, res.stderr
    assert strict_json(res.stdout)["expected_file_agrees"] is False


def test_bad_input_gives_one_line_and_exit_2(project, tmp_path):
    def bad(*args, expect):
        res = edgeq_cli("compare", *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
        for word in expect:
            assert word in res.stderr, (word, res.stderr)
        return res

    bad(tmp_path / "no-such-dir", expect=["no-such-dir", "no such directory"])
    bad(tmp_path, expect=["not an edgeq build project"])
    bad(project, expect=["hw_outputs.npy", "--hw-outputs"])  # the board run's file is not there yet
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY garbage")
    bad(project, "--hw-outputs", corrupt, expect=["corrupt.npy", "not a readable .npy"])
    y = np.load(project / "csim" / "outputs.npy")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, y[:, :5])
    bad(project, "--hw-outputs", wrong, expect=["wrong.npy", "(64, 5)", "expected (64, 10)"])
    np.save(wrong, y[:10])
    bad(project, "--hw-outputs", wrong, expect=["wrong.npy", "expected (64, 10)"])
    np.save(wrong, y.astype(np.int8))
    bad(project, "--hw-outputs", wrong, expect=["wrong.npy", "int8", "float64"])
    d = tmp_path / "proj"
    shutil.copytree(project, d)
    (d / "vectors" / "input.npy").write_bytes(b"not numpy")
    bad(d, "--hw-outputs", project / "csim" / "outputs.npy", expect=["input.npy", "not a readable .npy"])
    np.save(d / "vectors" / "input.npy", np.zeros((4, 3), np.float32))
    bad(d, "--hw-outputs", project / "csim" / "outputs.npy", expect=["input.npy", "(4, 3)", "(n, 1, 28, 28)"])


def _check_png(path: Path) -> tuple[int, int]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    return img.shape[:2]


def test_plot_writes_a_png(project, tmp_path):
    png = tmp_path / "plots" / "errors.png"
    y = np.load(project / "csim" / "outputs.npy")
    y[2, 7] = np.nextafter(y[2, 7], -np.inf)
    np.save(tmp_path / "hw.npy", y)
    res = edgeq_cli("compare", project, "--hw-outputs", tmp_path / "hw.npy", "--plot", png)
    assert res.returncode == 1, res.stderr
    _check_png(png)
    res = edgeq_cli("compare", project, "--hw-outputs", project / "csim" / "outputs.npy", "--plot", png)
    assert res.returncode == 0, res.stderr
    _check_png(png)


def test_per_layer_errors_from_csim_traces_name_the_corrupted_layer(exported, tmp_path, monkeypatch):
    """A build whose thresholds are corrupted after lowering fails csim and leaves traces; compare maps them."""
    from edgeq.backends.hls import build as b

    corrupted = corrupt_thresholds(monkeypatch, 1)
    path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
    out = tmp_path / "bad"
    with pytest.raises(b.BuildFailed):
        b.build(b.BuildConfig(model=path, board="ultra96", out=out))
    monkeypatch.undo()
    png = tmp_path / "layers.png"
    res = edgeq_cli("compare", out, "--hw-outputs", out / "csim" / "outputs.npy", "--json", "--plot", png)
    assert res.returncode == 1, res.stderr
    s = strict_json(res.stdout)
    rep = json.loads((out / "report.json").read_text())
    assert s["mismatches"] == rep["csim"]["mismatches"] > 0
    layers = s["layers"]
    assert layers and all(r["status"] == "compared" for r in layers)
    first_bad = next(r for r in layers if r["mismatching_elements"])
    assert first_bad["layer"] == corrupted["layer"] == rep["csim"]["first_divergence"]["layer"]
    assert first_bad["first"]["element"] == rep["csim"]["first_divergence"]["element"]
    assert all(r["mismatching_elements"] == 0 for r in layers[: layers.index(first_bad)])
    _check_png(png)


def test_a_trace_build_gives_per_layer_rows_that_all_agree(exported, tmp_path):
    path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
    out = tmp_path / "traced"
    assert edgeq_cli("build", path, "--board", "ultra96", "--out", out, "--trace").returncode == 0
    res = edgeq_cli("compare", out, "--hw-outputs", out / "csim" / "outputs.npy", "--json")
    assert res.returncode == 0, res.stderr
    layers = strict_json(res.stdout)["layers"]
    rep = json.loads((out / "report.json").read_text())["csim"]["layers"]
    assert [r["layer"] for r in layers] == [r["layer"] for r in rep]
    assert all(r["status"] == "compared" and r["mismatching_elements"] == 0 for r in layers)
