"""MST-compression core: exact outputs, the depth bound, the exact MST, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import edgeq
from edgeq import mst
from edgeq.errors import EdgeqError

EDGEQ = [str(Path(sys.executable).with_name("edgeq"))]


def run(*args):
    return subprocess.run(EDGEQ + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def dense_pm1(bits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The plain ±1 product x @ Wᵀ in int64 (the oracle MST must equal)."""
    return x.astype(np.int64) @ np.where(bits, 1, -1).astype(np.int64).T


def clustered_bits(rng, cout: int, k: int, flip: float = 0.1) -> np.ndarray:
    """Channels near a few random centres, so that trees are deep and bounds bite."""
    centres = rng.random((4, k)) < 0.5
    rows = centres[rng.integers(0, 4, cout)]
    return rows ^ (rng.random((cout, k)) < flip)


def binary_layers(exported, name):
    path, _, _ = exported("bnn_pynq", name, 0)
    layers = [lay for lay in edgeq.load(path).layers if mst.is_binary(lay)]
    assert layers
    return layers


def spans_once(tree: mst.MstTree) -> bool:
    n = len(tree.parent)
    order = list(tree.order)
    seen = set()
    for c in order:
        if tree.parent[c] >= 0 and tree.parent[c] not in seen:
            return False
        seen.add(c)
    return sorted(order) == list(range(n))


def networkx_mst_cost(dist: np.ndarray, k: int) -> int:
    """K for the one root plus the total weight of networkx's MST over the complete graph."""
    g = nx.Graph()
    n = len(dist)
    g.add_nodes_from(range(n))
    g.add_weighted_edges_from((i, j, int(dist[i, j])) for i in range(n) for j in range(i + 1, n))
    return k + int(nx.minimum_spanning_tree(g).size(weight="weight"))


def test_hamming_matches_scipy_on_random_bits():
    from scipy.spatial.distance import cdist

    bits = np.random.default_rng(0).random((37, 300)) < 0.5
    ref = np.rint(cdist(bits, bits, "hamming") * 300).astype(np.int64)
    assert np.array_equal(mst.hamming(bits), ref)


@pytest.mark.parametrize("depth", [1, 2, 3, None])
def test_mst_forward_equals_dense_product_on_random_data(depth):
    rng = np.random.default_rng(depth or 0)
    bits = clustered_bits(rng, 48, 200)
    tree = mst.build_tree(mst.hamming(bits), depth, K=200)
    x = rng.choice([-1, 1], size=(5, 200))
    assert np.array_equal(mst.mst_forward(tree, bits, x), dense_pm1(bits, x))
    xi = rng.integers(-128, 128, size=(3, 200))  # an 8-bit first-layer input is exact too
    assert np.array_equal(mst.mst_forward(tree, bits, xi), dense_pm1(bits, xi))


@pytest.mark.parametrize("name", ["tfc_1w1a", "cnv_1w1a"])
def test_mst_forward_equals_dense_product_on_bnn_pynq_weights(exported, name):
    rng = np.random.default_rng(1)
    for lay in binary_layers(exported, name):
        bits = mst.channel_bits(lay)
        cout, k = bits.shape
        w = lay.weight.T if lay.op == "Dense" else lay.weight.reshape(cout, -1)
        assert np.array_equal(np.where(bits, 1, -1), np.sign(w))  # bits are the weights' signs
        x = rng.choice([-1, 1], size=(4, k))
        for depth in (2, None):
            tree, _ = mst.layer_tree(lay, depth)
            assert spans_once(tree)
            assert np.array_equal(mst.mst_forward(tree, bits, x), dense_pm1(bits, x)), (lay.name, depth)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_depth_bound_is_respected_and_tree_spans_every_channel_once(depth):
    rng = np.random.default_rng(10 + depth)
    for bits in (clustered_bits(rng, 60, 128), rng.random((40, 96)) < 0.5):
        dist = mst.hamming(bits)
        assert int(mst.build_tree(dist, None, K=bits.shape[1]).depth.max()) > depth  # the bound must bite
        tree = mst.build_tree(dist, depth, K=bits.shape[1])
        assert spans_once(tree)
        assert int(tree.depth.max()) <= depth
        for c in range(len(bits)):
            p = tree.parent[c]
            assert tree.depth[c] == (0 if p < 0 else tree.depth[p] + 1)


def test_unbounded_tree_is_the_exact_mst():
    rng = np.random.default_rng(3)
    for bits in (clustered_bits(rng, 50, 150), rng.random((30, 64)) < 0.5, np.repeat(rng.random((5, 32)) < 0.5, 4, 0)):
        dist, k = mst.hamming(bits), bits.shape[1]
        tree = mst.build_tree(dist, None, K=k)
        assert len(tree.roots) == 1
        assert tree.cost == networkx_mst_cost(dist, k)
        assert mst.stats(tree)["total_distance"] == networkx_mst_cost(dist, k) - k


def test_depth_one_forest_is_within_5_percent_of_the_brute_force_optimum():
    """Depth 1 is facility location: roots cost K, every other channel pays its distance to the nearest root."""
    import itertools

    rng = np.random.default_rng(6)
    n, k = 9, 64
    for _ in range(8):
        centres = rng.random((3, k)) < 0.5
        bits = centres[rng.integers(0, 3, n)] ^ (rng.random((n, k)) < rng.uniform(0.05, 0.3))
        dist = mst.hamming(bits)
        best = min(k * len(roots) + int(dist[:, list(roots)].min(axis=1).sum())
                   for m in range(1, n + 1) for roots in itertools.combinations(range(n), m))
        assert mst.build_tree(dist, 1, K=k).cost <= 1.05 * best


def test_total_distance_does_not_increase_as_the_depth_bound_grows():
    rng = np.random.default_rng(4)
    for bits in (clustered_bits(rng, 64, 256), rng.random((48, 128)) < 0.5):
        dist = mst.hamming(bits)
        totals = [mst.stats(mst.build_tree(dist, d, K=bits.shape[1]))["total_distance"] for d in (1, 2, 3, None)]
        assert totals == sorted(totals, reverse=True), totals
        assert totals[0] > totals[-1]  # depth really trades against work here


def test_stats_count_bits_and_ops():
    rng = np.random.default_rng(5)
    bits = clustered_bits(rng, 20, 100)
    tree, _ = mst.layer_tree(type("L", (), {"name": "l", "op": "Dense", "weight": np.where(bits.T, 0.5, -0.5),
                                            "weight_format": edgeq.Binary(), "attrs": {}})(), 2)
    s = mst.stats(tree, 100)
    edge = sum(len(d) for d in tree.diff_pos)
    assert s["edge_distance"] == edge == int(tree.dist.sum())
    assert s["stored_bits"] == s["roots"] * 100 + edge * (7 + 1)
    assert s["ops"] == s["roots"] * 100 + edge and s["xnor_ops"] == s["dense_bits"] == 2000
    assert s["dense_distance"] == 100 * 19


@pytest.mark.parametrize("bad", [0, -1])
def test_depth_bound_below_one_is_refused(bad):
    with pytest.raises(EdgeqError, match="depth bound must be >= 1"):
        mst.build_tree(np.zeros((3, 3), dtype=np.int64), bad, K=4)


def test_non_binary_layer_is_refused_by_name(exported):
    path, _, _ = exported("bnn_pynq", "tfc_2w2a", 0)
    lay = next(x for x in edgeq.load(path).layers if x.op == "Dense")
    with pytest.raises(EdgeqError, match=f"layer '{lay.name}'.*not a binary layer"):
        mst.channel_bits(lay)


def test_cli_inspect_mst_json_reports_every_binary_layer(exported):
    path, _, _ = exported("bnn_pynq", "tfc_1w1a", 0)
    res = run("inspect", path, "--mst", "--mst-depth", "2", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    rows = doc["mst"]["layers"]
    assert [r["K"] for r in rows] == [784, 64, 64, 64] and [r["channels"] for r in rows] == [64, 64, 64, 10]
    assert doc["mst"]["max_depth"] == 2 and all(r["depth"] <= 2 for r in rows)
    assert all(r["ops"] < r["xnor_ops"] and r["total_distance"] < r["dense_distance"] for r in rows)
    table = run("inspect", path, "--mst")
    assert table.returncode == 0 and "features_2_MatMul" in table.stdout and "compression" in table.stdout


@pytest.mark.parametrize("args,needle", [(["--mst", "--mst-depth", "0"], "depth bound must be >= 1"),
                                         (["--mst"], "no binary layer")])
def test_cli_inspect_mst_bad_input_is_one_line_exit_2(exported, args, needle):
    name = "tfc_1w1a" if "--mst-depth" in args else "tfc_2w2a"
    path, _, _ = exported("bnn_pynq", name, 0)
    res = run("inspect", path, *args)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr and needle in lines[0], res.stderr
