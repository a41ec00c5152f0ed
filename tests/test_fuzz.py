"""The differential fuzzer: a seeded slice passes, and a planted emulator bug is found and shrunk."""

from __future__ import annotations

import collections
import importlib
from dataclasses import replace

import numpy as np

from edgeq import fuzz
from edgeq.formats import Int

emulate_mod = importlib.import_module("edgeq.emulate")  # the module (edgeq.emulate is also the function)


def test_seeded_slice_of_random_graphs_has_no_failures():
    results = [(i, fuzz.check(fuzz.case(7, i))) for i in range(300)]
    outcomes = collections.Counter(r.outcome for _, r in results)
    fails = [f"case {i}: {r.message}" for i, r in results if r.outcome == "failed"]
    assert not fails, "\n".join(fails[:10])
    assert outcomes["exact"] > 150  # the slice really compares, it does not only get refused
    ops = {op for _, r in results for op in r.ops}
    assert {"Quant", "BipolarQuant", "FloatQuant", "Trunc", "Conv", "MatMul", "Gemm", "BatchNormalization", "Relu",
            "Clip", "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Transpose"} <= ops


def test_a_case_replays_exactly_from_its_seed_and_index():
    a, b = fuzz.case(3, 17), fuzz.case(3, 17)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert np.array_equal(a.x, b.x)
    assert fuzz.case(3, 18).model.SerializeToString() != a.model.SerializeToString()


def test_every_registered_op_generator_builds_valid_graphs():
    for name in fuzz.OPS:
        r = fuzz.Recipe(seed=11, index=0, in_shape=(2, 5, 5), batch=2, steps=((0, name), (1, name)))
        res = fuzz.check(fuzz.build(r))
        assert res.outcome != "failed", f"{name}: {res.message}"


def test_fuzzer_finds_and_shrinks_a_planted_rounding_bug(monkeypatch):
    """Plant a bug: the emulator's Quant rounds half away from zero where QONNX rounds half to even."""
    real = emulate_mod._OPS["Quantize"]

    def buggy(graph, layer, x):
        fmt = graph.tensors[layer.output].format
        if isinstance(fmt, Int) and fmt.rounding == "RND_CONV":
            tensors = dict(graph.tensors)
            tensors[layer.output] = replace(tensors[layer.output], format=replace(fmt, rounding="RND_INF"))
            graph = replace(graph, tensors=tensors)
        return real(graph, layer, x)

    monkeypatch.setitem(emulate_mod._OPS, "Quantize", buggy)
    failing = None
    for i in range(200):
        c = fuzz.case(5, i)
        if fuzz.check(c).outcome == "failed":
            failing = c
            break
    assert failing is not None, "the planted bug went unnoticed"
    small = fuzz.shrink(failing)
    assert fuzz.check(small).outcome == "failed"
    assert small.n_layers <= 3 and small.n_layers <= failing.n_layers
    assert small.x.shape[0] == 1
