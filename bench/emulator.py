"""Emulator throughput: edgeq vs QONNX's execute_onnx, measured in the same run.

    .venv/bin/python bench/emulator.py [--cnv-batch 64] [--tfc-batch 1000]

Models: FINN's bnn_pynq CNV-w2a2 and TFC-w1a1 (seeded random weights). For each, the same
inputs go through edgeq.emulate (one batched call) and through execute_onnx, both batched (the
model's batch size changed with qonnx's ChangeBatchSize) and sample by sample. Outputs are
checked bit for bit before any number is printed. hls4ml's predict joins once the HLS backend
exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def _time(fn, min_seconds=1.0):
    """Best-of wall time of fn(), repeating until min_seconds have passed (at least twice)."""
    best, total, runs, out = float("inf"), 0.0, 0, None
    while runs < 2 or total < min_seconds:
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best, total, runs = min(best, dt), total + dt, runs + 1
    return best, out


def bench(name: str, batch: int, per_sample: int, workdir: str) -> dict:
    import torch
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model

    import edgeq
    from edgeq.zoo import bnn_pynq

    model, shape = bnn_pynq(name, seed=0)
    path = os.path.join(workdir, f"{name}.onnx")
    edgeq.export(model, torch.zeros(shape), path)
    graph = edgeq.load(path)
    x = np.random.default_rng(0).uniform(0, 1, (batch,) + shape[1:]).astype(np.float32)

    t_edgeq, y = _time(lambda: edgeq.emulate(graph, x))

    mw = cleanup_model(ModelWrapper(path))
    iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
    mwb = mw.transform(ChangeBatchSize(batch)).transform(InferShapes())
    t_qb, ref_b = _time(lambda: execute_onnx(mwb, {iname: x})[oname])
    xs = x[:per_sample]
    t_qs, ref_s = _time(lambda: np.concatenate([execute_onnx(mw, {iname: xs[i : i + 1]})[oname]
                                                for i in range(per_sample)]))
    assert np.array_equal(y, ref_b.astype(np.float64)), f"{name}: edgeq != execute_onnx (batched)"
    assert np.array_equal(y[:per_sample], ref_s.astype(np.float64)), f"{name}: edgeq != execute_onnx"
    return {
        "model": name, "batch": batch,
        "edgeq": batch / t_edgeq, "qonnx_batched": batch / t_qb, "qonnx_per_sample": per_sample / t_qs,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cnv-batch", type=int, default=64)
    ap.add_argument("--tfc-batch", type=int, default=1000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        rows = [bench("cnv_2w2a", args.cnv_batch, min(16, args.cnv_batch), d),
                bench("tfc_1w1a", args.tfc_batch, min(100, args.tfc_batch), d)]
    print("outputs bit-identical to execute_onnx: yes (checked)")
    print(f"{'model':10} {'batch':>6} {'edgeq img/s':>12} {'qonnx batched':>14} {'qonnx 1-by-1':>13}"
          f" {'x batched':>10} {'x 1-by-1':>9}")
    for r in rows:
        print(f"{r['model']:10} {r['batch']:>6} {r['edgeq']:>12.1f} {r['qonnx_batched']:>14.1f}"
              f" {r['qonnx_per_sample']:>13.1f} {r['edgeq'] / r['qonnx_batched']:>9.1f}x"
              f" {r['edgeq'] / r['qonnx_per_sample']:>8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
