"""MST-regularized binary networks on digits: accuracy, MST distance and instructions on QEMU, measured in one run.

    .venv/bin/python bench/mst.py [--quick] [--lambdas 2 10] [--epochs 40] [--hidden 512] [--seed 0]
                                  [--vectors 32] [--mst-depth N]

One binary MLP for scikit-learn's 8x8 digits (an 8-bit input and first layer, then three binary layers with ±1
weights and ±1 activations, BatchNorm in between) is trained from the same seed without and with
edgeq.train.mst_regularizer at each --lambdas strength. Each trained model is exported to QONNX and:

* its test accuracy is edgeq.emulate's on the whole test split (the emulator is bit-exact with the hardware),
  checked to predict exactly what the Brevitas forward predicts;
* its total MST distance and compression come from edgeq.mst.select + edgeq.mst.stats on the exported graph;
* it is built twice for the board with `edgeq build --trace`, with plain XNOR-popcount kernels and with --mst,
  run with `edgeq flash` on the first --vectors test images and checked with `edgeq compare` (the bench exits 1
  when any compare is not IDENTICAL). Instructions are minstret deltas per inference (QEMU -icount shift=0:
  exact and repeatable), summed over the binary (XNOR/MST) layers and over the whole inference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

EDGEQ = str(Path(sys.executable).with_name("edgeq"))


@dataclass
class Variant:
    """One trained model and everything measured on it."""

    name: str
    lam: float
    train_s: float = 0.0
    accuracy: float = 0.0  # edgeq.emulate on the exported QONNX, whole test split
    brevitas_accuracy: float = 0.0
    same_predictions: bool = False
    mst: dict = field(default_factory=dict)  # layer -> edgeq.mst.stats
    instr: dict = field(default_factory=dict)  # "xnor"/"mst" -> {"layers": {layer: instr}, "total": instr}
    compare: dict = field(default_factory=dict)  # "xnor"/"mst" -> (identical, first line of `edgeq compare`)


def digits_bnn(hidden: int, seed: int):
    """An 8-bit input and 8-bit first layer, then three binary layers (±1 weights with scale 1, ±1 inputs, no
    bias: XNOR-eligible), BatchNorm after every layer."""
    import torch
    from brevitas import nn as qnn
    from brevitas.quant.binary import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
    from brevitas.quant.fixed_point import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint

    def binary(cin: int, cout: int):
        return qnn.QuantLinear(cin, cout, bias=False, weight_quant=SignedBinaryWeightPerTensorConst,
                               weight_scaling_const=1.0)

    def sign():
        return qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)

    torch.manual_seed(seed)
    h = hidden
    return torch.nn.Sequential(
        qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True),
        torch.nn.Flatten(),
        qnn.QuantLinear(64, h, bias=False, weight_quant=Int8WeightPerTensorFixedPoint),
        torch.nn.BatchNorm1d(h), sign(),
        binary(h, h), torch.nn.BatchNorm1d(h), sign(),
        binary(h, h), torch.nn.BatchNorm1d(h), sign(),
        binary(h, 10), torch.nn.BatchNorm1d(10),
    )


def train(data: tuple, lam: float, args) -> tuple:
    """(model in eval mode, seconds): Adam with a cosine schedule; with lam > 0 the loss adds w * lam * the MST
    regularizer, w rising linearly from 0 to 1 over the first --ramp of the epochs (then 1)."""
    import torch

    from edgeq.train import mst_regularizer

    x_train, y_train = (torch.from_numpy(a) for a in data[:2])
    model = digits_bnn(args.hidden, args.seed)
    reg = None
    if lam:
        reg = mst_regularizer(model, max_depth=args.mst_depth, refresh_every=args.refresh_every,
                              surrogate=args.surrogate)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    gen = torch.Generator().manual_seed(args.seed)
    t = time.perf_counter()
    ramp = args.ramp * args.epochs
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(perm), args.batch):
            idx = perm[i:i + args.batch]
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            if reg is not None:
                w = min(1.0, (epoch + i / len(perm)) / ramp) if ramp > 0 else 1.0
                loss = loss + w * lam * reg()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    return model, time.perf_counter() - t


def run(*args, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([EDGEQ, "-q", *map(str, args)], capture_output=True, text=True)
    if check and res.returncode != 0:
        sys.exit(f"edgeq {' '.join(map(str, args))} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res


def measure(v: Variant, model, data: tuple, tmp: Path, vectors: Path, args) -> None:
    """Export, emulate, MST statistics, and the two MCU builds of one trained model."""
    import torch

    import edgeq
    from edgeq import mst

    x_test, y_test = data[2:]
    onnx = edgeq.export(model, torch.zeros(1, 1, 8, 8), tmp / f"{v.name}.onnx")
    graph = edgeq.load(onnx)
    pred = edgeq.emulate(graph, x_test).argmax(axis=1)
    with torch.no_grad():
        out = model(torch.from_numpy(x_test))
    ref = getattr(out, "value", out).numpy().argmax(axis=1)
    v.accuracy, v.brevitas_accuracy = float((pred == y_test).mean()), float((ref == y_test).mean())
    v.same_predictions = bool(np.array_equal(pred, ref))
    v.mst = {name: mst.stats(tree) for name, (tree, _) in mst.select(graph, True, args.mst_depth).items()}
    for kernel, flags in (("xnor", []), ("mst", ["--mst"] + (["--mst-depth", args.mst_depth] if args.mst_depth
                                                            else []))):
        out_dir = tmp / f"{v.name}-{kernel}"
        run("build", onnx, "--board", args.board, "--out", out_dir, "--vectors", vectors, "--trace", *flags)
        report = json.loads((out_dir / "report.json").read_text())
        kernels = {row["layer"]: row["kernel"] for row in report["mst"]["layers"]}
        if set(kernels) != set(v.mst) or set(kernels.values()) != {kernel}:
            sys.exit(f"{v.name}: the {kernel} build runs {kernels}, expected {kernel} kernels on {sorted(v.mst)}")
        run("flash", out_dir, "--board", args.board)
        cmp = run("compare", out_dir, check=False)
        text = cmp.stdout.strip().splitlines()
        v.compare[kernel] = (cmp.returncode == 0 and "IDENTICAL" in cmp.stdout,
                             text[0].split(": ", 1)[-1] if text else cmp.stderr.strip())
        counters = json.loads((out_dir / "hw_counters.json").read_text())
        per_layer = {row["layer"]: float(np.mean(row["instret"])) for row in counters["layers"]
                     if row["layer"] in v.mst}
        v.instr[kernel] = {"layers": per_layer, "total": float(np.mean(counters["total"]["instret"]))}


def print_tables(variants: list[Variant], args, n_test: int, seconds: float) -> None:
    base = variants[0]
    print(f"digits (scikit-learn, {n_test} test images), MLP 64-{args.hidden}-{args.hidden}-{args.hidden}-10, "
          f"{args.epochs} epochs, seed {args.seed}, regularizer surrogate={args.surrogate!r}, "
          f"refresh_every={args.refresh_every}, "
          f"lambda ramp over {args.ramp:.0%} of the epochs, "
          f"MST depth {args.mst_depth or 'unbounded'}; board {args.board}, {args.vectors} vectors; "
          f"{seconds:.0f} s in all")
    print("accuracy: edgeq.emulate of the exported QONNX (bit-exact with the board); instructions: minstret per "
          "inference, binary layers = the XNOR/MST layers, whole = the whole inference\n")
    head = (f"{'model':<14} {'acc %':>6} {'Δacc':>6} {'=Brevitas':>9} {'MST dist / K(Cout-1)':>22} {'compr':>6} "
            f"{'binary XNOR':>11} {'binary MST':>10} {'XNOR/MST':>8} {'whole XNOR':>10} {'whole MST':>9} "
            f"{'train s':>7}")
    print(head)
    print("-" * len(head))
    for v in variants:
        dist = sum(s["total_distance"] for s in v.mst.values())
        dense = sum(s["dense_distance"] for s in v.mst.values())
        compr = sum(s["dense_bits"] for s in v.mst.values()) / sum(s["stored_bits"] for s in v.mst.values())
        bx, bm = (sum(v.instr[k]["layers"].values()) for k in ("xnor", "mst"))
        same = "yes" if v.same_predictions else f"NO ({100 * v.brevitas_accuracy:.2f})"
        print(f"{v.name:<14} {100 * v.accuracy:>6.2f} {100 * (v.accuracy - base.accuracy):>+6.2f} {same:>9} "
              f"{f'{dist} / {dense} ({dist / dense:.3f})':>22} {compr:>6.2f} {bx:>11,.0f} {bm:>10,.0f} "
              f"{bx / bm:>7.2f}x {v.instr['xnor']['total']:>10,.0f} {v.instr['mst']['total']:>9,.0f} "
              f"{v.train_s:>7.1f}")
    print("\nper binary layer: instructions per inference, plain XNOR kernel / MST kernel")
    head = f"{'model':<14} {'layer':<12} {'K x Cout':>9} {'dist/K(Cout-1)':>14} {'XNOR':>8} {'MST':>8} {'XNOR/MST':>8}"
    print(head)
    print("-" * len(head))
    for v in variants:
        for name, s in v.mst.items():
            x, m = v.instr["xnor"]["layers"][name], v.instr["mst"]["layers"][name]
            shape = f"{s['K']}x{s['channels']}"
            print(f"{v.name:<14} {name:<12} {shape:>9} "
                  f"{s['total_distance'] / s['dense_distance']:>14.3f} {x:>8,.0f} {m:>8,.0f} {x / m:>7.2f}x")
    print("\nedgeq compare (board outputs vs the emulator):")
    for v in variants:
        for kernel, (ok, line) in v.compare.items():
            print(f"  {v.name:<14} {kernel:<4} {'' if ok else 'NOT IDENTICAL: '}{line}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 8 epochs, 8 vectors, one lambda")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[2.0, 10.0], help="regularizer strengths")
    ap.add_argument("--surrogate", default="tanh", choices=["tanh", "l1"])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0, help="weights' initialisation and batch order")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--ramp", type=float, default=0.5,
                    help="fraction of the epochs over which lambda rises linearly from 0 (0: constant)")
    ap.add_argument("--refresh-every", type=int, default=50)
    ap.add_argument("--mst-depth", type=int, default=None, help="MST depth bound (training and build)")
    ap.add_argument("--vectors", type=int, default=32, help="test images run on the board")
    ap.add_argument("--board", default="qemu-rv32")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.vectors, args.lambdas = 8, 8, args.lambdas[-1:]

    import torch

    from edgeq import data as datasets

    # One thread: with two, torch's CPU training is not bit-reproducible from run to run (and no faster here).
    torch.set_num_threads(1)
    data = datasets.digits(seed=0)  # one fixed train/test split
    t0 = time.perf_counter()
    variants = [Variant("plain BNN", 0.0)] + [Variant(f"MST λ={lam:g}", lam) for lam in args.lambdas]
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-mst-") as tmp_name:
        tmp = Path(tmp_name)
        vectors = tmp / "vectors.npy"
        np.save(vectors, data[2][:args.vectors])
        for v in variants:
            model, v.train_s = train(data, v.lam, args)
            measure(v, model, data, tmp, vectors, args)
    print_tables(variants, args, len(data[3]), time.perf_counter() - t0)
    bad = [f"{v.name} ({k})" for v in variants for k, (ok, _) in v.compare.items() if not ok]
    if bad:
        print(f"\nFAIL: board outputs differ from the emulator for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
