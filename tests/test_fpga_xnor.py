"""Binary layers on the FPGA backend: XNOR-popcount and MST-reordered kernels (hls_templates/edgeq_xnor.h).

Real bnn_pynq w1a1 networks build for Ultra96 with the binary layers on the XNOR or MST kernels, and their C
simulation equals QONNX's executor bit for bit. Synthetic binary convolutions (asymmetric padding, strides,
dilations, K not a multiple of 64) and dense layers are checked against exact numpy references, and a corrupted
MST sign in a generated header makes the project's own `make csim` fail.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import qonnx_reference
from qonnx_builder import Model

EDGEQ = str(Path(sys.executable).with_name("edgeq"))


def build(model: Path, out: Path, **kw) -> dict:
    from edgeq.backends.hls.build import BuildConfig
    from edgeq.backends.hls.build import build as run_build

    kw.setdefault("n_vectors", 8)
    return run_build(BuildConfig(model=Path(model), board="ultra96", out=out, **kw))


def c_array(header: Path, name: str) -> list[int]:
    """The values of the C array ``name`` in a generated header (decimal or 0x...ULL)."""
    m = re.search(rf"\b{re.escape(name)}\[\d+\] = \{{(.*?)\}};", header.read_text(), re.S)
    assert m, f"{name} not in {header}"
    return [int(v.strip().removesuffix("ULL"), 0) for v in m.group(1).split(",") if v.strip()]


def weights_header(out: Path, layer: str) -> tuple[Path, str]:
    """(path, C name) of a layer's generated weights header."""
    from edgeq.backends.hls.render import c_name

    name = c_name(layer, "layer_")
    assert f"hls/weights/{name}.h" in json.loads((out / "build.json").read_text())["hls"]["headers"]
    return out / "hls" / "weights" / f"{name}.h", name


# ---------------------------------------------------------------------------------------------
# bnn_pynq w1a1
# ---------------------------------------------------------------------------------------------

BNN = [("tfc_1w1a", {}), ("tfc_1w1a", {"mst": True}), ("sfc_1w1a", {}), ("sfc_1w1a", {"mst": True}),
       ("lfc_1w1a", {}), ("lfc_1w1a", {"mst": True}), ("cnv_1w1a", {}), ("cnv_1w1a", {"mst": True}),
       ("sfc_1w1a", {"mst": True, "mst_depth": 2})]


@pytest.mark.parametrize("name,opts", BNN, ids=[f"{n}-{'mst' + str(o.get('mst_depth', '')) if o else 'xnor'}"
                                                for n, o in BNN])
def test_bnn_pynq_w1a1_binary_layers_run_xnor_or_mst_bit_exact_against_qonnx(exported, tmp_path, name, opts):
    from edgeq import mst
    from edgeq.ingest import load

    path, _, _ = exported("bnn_pynq", name, 0)
    out = tmp_path / "p"
    # Random weights have no structure, so MST stores more than the plain rows (|D| ~ K/2, positions of
    # log2 K bits): the BRAM estimate of the larger networks exceeds the ZU3EG; that is the honest answer.
    rep = build(path, out, allow_over_budget=bool(opts), **opts)
    cs = rep["csim"]
    assert cs["status"] == "pass" and cs["mismatches"] == 0 and cs["vectors"] == 8
    n = 2 if name.startswith("cnv") else 4
    x = np.load(out / "vectors" / "input.npy")[:n]
    assert np.array_equal(np.load(out / "csim" / "outputs.npy")[:n], qonnx_reference(path, x))

    binary = [lay.name for lay in mst.xnor_layers(load(path))]
    assert binary, "bnn_pynq w1a1 has binary layers"
    want = "mst" if opts.get("mst") else "xnor"
    by_name = {lay["name"]: lay for lay in rep["layers"]}
    for lay in binary:
        row = by_name[lay]
        assert row["kernel"] == want and row["op"].startswith("Mst" if want == "mst" else "Xnor")
        assert row["estimate"]["dsp"] == 0
    sec = rep["mst"]
    assert sec["enabled"] == bool(opts) and sec["max_depth"] == opts.get("mst_depth")
    assert [r["layer"] for r in sec["layers"]] == binary and all(r["kernel"] == want for r in sec["layers"])
    for r in sec["layers"]:
        header, cname = weights_header(out, r["layer"])
        if want == "xnor":
            assert f"{cname}_weight_bits" in header.read_text()
            continue
        if opts.get("mst_depth"):
            assert r["depth"] <= opts["mst_depth"]
        k, words = r["K"], math.ceil(r["K"] / 64)
        # Only the roots' rows, D and the parent signs are stored; the report's figures are edgeq.mst.stats'.
        text = header.read_text()
        assert f"{cname}_weight_bits" not in text
        parent, dstart = c_array(header, f"{cname}_parent"), c_array(header, f"{cname}_dstart")
        assert parent.count(-1) == r["roots"] and len(c_array(header, f"{cname}_root_bits")) == r["roots"] * words
        assert dstart[-1] == r["edge_distance"]
        assert len(c_array(header, f"{cname}_dsign")) == max(1, math.ceil(dstart[-1] / 64))
        assert r["ops"] == r["roots"] * k + r["edge_distance"] and r["xnor_ops"] == r["channels"] * k
        assert r["op_ratio"] == pytest.approx(r["xnor_ops"] / r["ops"])
        assert r["dense_distance"] == k * (r["channels"] - 1) and r["total_distance"] <= r["dense_distance"]
        assert by_name[r["layer"]]["mst"]["ops"] == r["ops"]


def test_mst_lowers_the_xnor_lut_estimate_of_every_cnv_layer(exported):
    from edgeq import mst
    from edgeq.backends.hls import cost
    from edgeq.backends.hls.build import cost_rows
    from edgeq.backends.hls.lower import lower
    from edgeq.board import get_board
    from edgeq.ingest import load

    g = load(exported("bnn_pynq", "cnv_1w1a", 0)[0])
    trees = mst.select(g, True)
    board = get_board("ultra96")
    plain = {r["name"]: r for r in cost.estimate(cost_rows(lower(g)), board)["layers"]}
    rows = cost_rows(lower(g, 8, trees))
    reordered = {r["name"]: r for r in cost.estimate(rows, board)["layers"]}
    for row in (r for r in rows if r["op"] in cost.BINARY_OPS):
        tree = trees[row["name"]][0]
        st = mst.stats(tree)
        assert row["xnor_bits"] == st["ops"] and row["channels"] * row["k"] == st["xnor_ops"]
        assert reordered[row["name"]]["dsp"] == plain[row["name"]]["dsp"] == 0
        assert reordered[row["name"]]["lut"] < plain[row["name"]]["lut"], row["name"]


# ---------------------------------------------------------------------------------------------
# Synthetic binary layers against exact numpy references
# ---------------------------------------------------------------------------------------------


def conv_out(size: int, k: int, lo: int, hi: int, stride: int, dil: int) -> int:
    return (size + lo + hi - dil * (k - 1) - 1) // stride + 1


def binary_conv(path: Path, w: np.ndarray, hw: tuple[int, int], pads, strides, dilations) -> Path:
    cout, cin, kh, kw = w.shape
    m = Model([1, cin, *hw])
    y = m.node("Conv", [m.bipolar("x"), m.bipolar(m.c(w))], pads=list(pads), strides=list(strides),
               dilations=list(dilations), kernel_shape=[kh, kw])
    oh = conv_out(hw[0], kh, pads[0], pads[2], strides[0], dilations[0])
    ow = conv_out(hw[1], kw, pads[1], pads[3], strides[1], dilations[1])
    return m.save(y, path, [1, cout, oh, ow])


def binary_dense(path: Path, w: np.ndarray) -> Path:
    m = Model([1, w.shape[0]])
    return m.save(m.node("MatMul", [m.bipolar("x"), m.bipolar(m.c(w))]), path, [1, w.shape[1]])


def conv_reference(x: np.ndarray, w: np.ndarray, pads, strides, dilations) -> np.ndarray:
    """Exact int64 conv of sign(x) (BipolarQuant: x >= 0 -> +1) over its zero-padded copy."""
    xs = np.where(x >= 0, 1, -1).astype(np.int64)
    pt, pl, pb, pr = pads
    xp = np.pad(xs, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, cout, (kh, kw) = len(x), w.shape[0], w.shape[2:]
    oh = conv_out(x.shape[2], kh, pt, pb, strides[0], dilations[0])
    ow = conv_out(x.shape[3], kw, pl, pr, strides[1], dilations[1])
    y = np.zeros((n, cout, oh, ow), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dilations[0], kx * dilations[1]
            win = xp[:, :, y0:y0 + (oh - 1) * strides[0] + 1:strides[0], x0:x0 + (ow - 1) * strides[1] + 1:strides[1]]
            y += np.einsum("oc,nchw->nohw", w[:, :, ky, kx].astype(np.int64), win)
    return y


CONVS = [  # (cin, (h, w), cout, (kh, kw), pads (t, l, b, r), strides, dilations)
    (3, (9, 8), 6, (3, 3), (1, 0, 2, 1), (2, 2), (1, 1)),  # K = 27 < 64, asymmetric pads, stride 2
    (10, (7, 7), 7, (3, 3), (2, 2, 2, 2), (1, 1), (2, 2)),  # K = 90, dilation 2
    (16, (6, 9), 9, (2, 3), (0, 1, 1, 0), (1, 2), (2, 1)),  # K = 96, mixed stride / dilation
    (64, (4, 4), 5, (1, 1), (0, 0, 0, 0), (1, 1), (1, 1)),  # K = 64 exactly
]


@pytest.mark.parametrize("case", CONVS, ids=[f"K{c[0] * c[3][0] * c[3][1]}" for c in CONVS])
def test_binary_conv_with_padding_strides_dilations_matches_exact_reference(tmp_path, case):
    cin, hw, cout, kernel, pads, strides, dilations = case
    rng = np.random.default_rng(cin)
    w = np.where(rng.random((cout, cin, *kernel)) < 0.5, 1.0, -1.0)
    w[1] = w[0]  # two identical channels: an MST child with D empty
    path = binary_conv(tmp_path / "conv.onnx", w, hw, pads, strides, dilations)
    for opts in ({}, {"mst": True}, {"mst": True, "mst_depth": 1}):
        out = tmp_path / f"p{len(opts)}"
        rep = build(path, out, **opts)
        assert rep["csim"]["status"] == "pass"
        assert [lay["op"] for lay in rep["layers"]] == ["MstConv2d" if opts else "XnorConv2d"]
        x = np.load(out / "vectors" / "input.npy")
        got = np.load(out / "csim" / "outputs.npy").reshape(len(x), cout, -1)
        want = conv_reference(x, w, pads, strides, dilations).reshape(len(x), cout, -1)
        assert np.array_equal(got, want), opts
    assert np.array_equal(np.load(out / "csim" / "outputs.npy")[:2], qonnx_reference(path, x[:2]))


@pytest.mark.parametrize("k,n", [(200, 7), (130, 12)])
def test_binary_dense_matches_exact_reference_with_and_without_mst(tmp_path, k, n):
    # two clusters of similar channels: the unbounded MST is one deep tree, depth 1 needs a root per cluster
    rng = np.random.default_rng(k)
    base = rng.random((2, k)) < 0.5
    bits = np.stack([base[j % 2] ^ (rng.random(k) < 1 / 16) for j in range(n)], axis=1)
    w = np.where(bits, 1.0, -1.0)
    path = binary_dense(tmp_path / "dense.onnx", w)
    for opts in ({}, {"mst": True}, {"mst": True, "mst_depth": 1}):
        out = tmp_path / f"p{len(opts)}"
        rep = build(path, out, **opts)
        assert rep["layers"][0]["kernel"] == ("mst" if opts else "xnor")
        if opts.get("mst_depth") and n > 3:
            assert rep["mst"]["layers"][0]["roots"] >= 2 and rep["mst"]["layers"][0]["depth"] == 1
        x = np.load(out / "vectors" / "input.npy")
        want = np.where(x >= 0, 1, -1).astype(np.int64) @ w.astype(np.int64)
        assert np.array_equal(np.load(out / "csim" / "outputs.npy").reshape(want.shape), want)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_corrupted_mst_sign_in_the_weights_header_makes_csim_mismatch(tmp_path):
    """The check can fail: flip the stored parent sign of the first D entry and re-run the project's csim."""
    rng = np.random.default_rng(1)
    path = binary_dense(tmp_path / "dense.onnx", np.where(rng.random((100, 8)) < 0.5, 1.0, -1.0))
    out = tmp_path / "p"
    rep = build(path, out, mst=True)
    header, cname = weights_header(out, rep["layers"][0]["name"])
    ok = subprocess.run(["make", "-s", "csim"], cwd=out, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "bit-identical" in ok.stdout, ok.stdout + ok.stderr
    text = header.read_text()
    first = re.search(rf"{cname}_dsign\[\d+\] = \{{\s*0x([0-9a-f]{{16}})ULL", text)
    flipped = f"{int(first.group(1), 16) ^ 1:016x}"
    header.write_text(text[:first.start(1)] + flipped + text[first.end(1):])
    bad = subprocess.run(["make", "-s", "csim"], cwd=out, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "differ" in bad.stdout, bad.stdout + bad.stderr


# ---------------------------------------------------------------------------------------------
# Bad MST requests
# ---------------------------------------------------------------------------------------------


def edgeq_cli(*args):
    return subprocess.run([EDGEQ, *map(str, args)], capture_output=True, text=True, timeout=600)


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_mst_requests_give_one_line_exit_2_and_write_nothing(exported, tmp_path):
    tfc, _, _ = exported("bnn_pynq", "tfc_1w1a", 0)
    res = edgeq_cli("build", tfc, "--board", "ultra96", "--out", tmp_path / "a", "--mst-depth", "0")
    assert_one_line_error(res, "--mst-depth", ">= 1")
    cnv, _, _ = exported("bnn_pynq", "cnv_1w1a", 0)
    res = edgeq_cli("build", cnv, "--board", "ultra96", "--out", tmp_path / "b", "--mst-layers",
                    "conv_features_1_Conv")
    assert_one_line_error(res, "--mst-layers", "conv_features_1_Conv", "not a binary layer")
    assert list(tmp_path.iterdir()) == []
