"""Minifloats against integers after post-training quantization: accuracy vs FPGA cost, and the Pareto front.

    .venv/bin/python bench/minifloat_dse.py [--quick] [--out DIR] [--model digits|cnv] [--seed 0]

The design-space exploration of "Post-Training Quantization with Low-precision Minifloats and Integers on
FPGAs" (Aggarwal et al., FPL 2024), on edgeq. A float CNN is trained here (default: conv 1->16, conv 16->32,
each with BatchNorm, ReLU and 2x2 max pooling, then linear 128->10: ``edgeq.zoo.digits_cnn``, on scikit-learn's
digits, 15 epochs, ~2 s),
then for every (weights, activations) pair of the grid below it is quantized with :func:`edgeq.ptq.quantize`
(weight equalization, BatchNorm merged, calibration on 512 training images, bias correction, per-channel
weight scales, float32 scales), exported to QONNX with :func:`edgeq.ptq.export`, and

* **accuracy** on the 359 test images is measured with ``edgeq.emulate`` on the export (bit-exact with
  the hardware; the Brevitas forward's top-1 agreement is printed too);
* **cost** is the Ultra96 (ZU3EG) estimate of ``backends/hls/cost.py`` for edgeq's FPGA design of that
  model, with the minifloat multiply-accumulate modelled as below.

The grid: every format from 3 to 8 bits, for weights and activations each, in the full cross product
(integers x integers, minifloats x minifloats, and mixed), 17 x 17 = 289 models, ~80 s on 2 cores, so no
subsampling (``--quick``: int4, int8, e2m1, e4m3, 4 x 4 models, ~10 s)::

    int3..int8
    3 bits: e2m0 e1m1 | 4: e2m1 | 5: e2m2 e3m1 | 6: e2m3 e3m2 | 7: e3m3 e4m2 | 8: e4m3 e5m2

Minifloats are signed with subnormals and saturation, bias ``2**(E-1)-1``, all codes finite, except e4m3
and e5m2 which are OCP FP8 (see :mod:`edgeq.ptq`). e1mM is a sign-magnitude integer in disguise (e1m1 = the
values -3..3, like narrow int3); it is kept as the paper's degenerate case. Integer activations are unsigned
where the layer input is never negative (all of them here: the image and ReLU/MaxPool outputs), integer
weights narrow-range signed. Minifloat activations stay signed (QONNX FloatQuant has no unsigned form), so
half of their codes are unused after ReLU: the integer advantage this measures includes that bit.

Cost model
----------
The design is edgeq's FPGA architecture as ``edgeq build`` lowers it and ``backends/hls/build.py:
cost_rows`` describes it, row for row: per Conv2d/Dense a MAC layer (``parallel`` = kernel taps for Conv2d,
min(K, 8) for Dense) whose accumulator then goes through ReLU and MaxPool at accumulator width and into the
next quantizer as a Threshold layer (one comparator lane per level up to 15 levels, else a binary search;
thresholds as wide as the accumulator; ``levels`` = the non-negative values of the output format minus one,
since every requantized tensor here follows a ReLU). The first quantizer (on the image) and the float
logits run on the host and cost nothing. ``estimate(rows, ultra96)`` then adds the top-level overhead. Storage
(weight ROMs, input buffers) uses the formats' bit widths: ``1 + E + M`` for a minifloat, N for intN.

For a MAC lane with operand formats A (activation) and W (weight), let, for each operand,

* an integer intN: significand ``s = N`` bits (two's complement), exponent range ``r = 0``, fixed-point width
  ``n = N`` (``N + 1`` when unsigned);
* a minifloat ExMy: ``s = M + 1`` (the significand with its implicit bit; the sign is kept apart),
  ``r = e_max - e_min`` with ``e_min = 1 - bias`` and ``e_max = floor(log2 max)`` (``2**E - 2`` when every
  code is finite; e4m3 OCP: 14), and fixed-point width ``n = M + 2 + r`` (sign + every magnitude bit, in units
  of the smallest subnormal: e4m3 OCP 19, e2m1 5, e5m2 OCP 33).

The product of two minifloats is the exact product of their significands shifted by the sum of their
exponents (the paper's view, and the datapath ``edgeq build`` generates: hls_templates/edgeq_minifloat.h).
Per lane (``cost.minifloat_product_cost``, the same model ``edgeq build`` reports):

* **significand product** ``multiplier_cost(s_A, s_W)`` of cost.py (LUT ``a*b + a + b``, or DSPs above its
  10-bit / 40-partial-product line; an int x int layer is exactly cost.py's integer product);
* **implicit bit** (exponent field non-zero): 1 LUT per minifloat operand (a LUT6 ORs up to 6 exponent bits);
* **exponent add** when both operands are minifloats and ``r > 0``: ``max(E_A, E_W) + 1`` LUT and FF
  (carry-chain adder; e1mM has r = 0 and needs no shift);
* **alignment shifter** when ``r = r_A + r_W > 0``: the ``p = s_A + s_W``-bit product shifted left by 0..r
  into ``p + r`` bits: ``ceil(log2(r + 1))`` mux stages, two stages per LUT6 (a 4:1 mux), so
  ``(p + r) * ceil(stages / 2)`` LUT, and ``p + r`` FF for the pipeline register;
* **sign**: the sign XOR is 1 LUT; the conditional negation merges into the accumulator's add/sub (the
  adder's LUT per bit is already counted by cost.py).

The **accumulator** is the worst-case exact (Kulisch-style) accumulator of the paper: every product of the
two formats, summed K times without rounding, needs ``acc = n_A + n_W + ceil(log2 K)`` bits (for integers this
is DESIGN.md's ``Wa + Wb + ceil(log2 K)``; for two e4m3 and K = 144: 19 + 19 + 8 = 46 bits). cost.py charges
``acc`` LUT + FF per lane, and the ReLU/MaxPool/Threshold rows that follow work at that width too.

The Pareto front is taken over (cost, accuracy) with cost = **LUT-equivalents** = LUT + DSP x (LUT/DSP
capacity of the board; 196 on ZU3EG), i.e. the share of the chip used; BRAM is printed, not in the front.
A point is on the front when no other point is at most as costly and at least as accurate, one of them
strictly. The script prints the front, says whether integers are Pareto-optimal (the paper: "integer
quantization often remains the Pareto-optimal option"), and writes ``DIR/minifloat_dse.csv`` and
``DIR/minifloat_dse.png`` (``--out``, default ``minifloat_dse_out``).

A model whose accumulator could exceed 2^62 (e5m2 x e5m2: n = 33 + 33 + ceil(log2 K) bits) is refused by
``edgeq.load`` (the emulator's exact engines stop at int64); such pairs are listed with their cost and no
accuracy. As a spot check the script builds a minifloat model (e2m1 weights, e4m3 activations) and a mixed one
(int8 weights, e4m3 activations), both with their float32 PTQ scales, with ``edgeq build --board ultra96`` and
prints their csim mismatches over the test images.

``--model cnv``: FINN's CNV topology (bnn_pynq, 6 conv + 3 linear layers, 59 M MACs) as a float network with
BatchNorm, trained here on the digits images scaled to 3 x 32 x 32 (4 epochs, ~12 s). Each of its models takes
5-40 s (export, and the emulation of 359 images: float32 MLAS for narrow formats, float64/int64 engines once the
exact accumulator passes 2^24 / 2^53), so its grid is subsampled to the diagonal: weights and activations in
the same format, 17 models; ``--quick``: int4/e2m1 only, 2 epochs.
Its spot-check build uses 64 test images and ``--allow-over-budget`` (CNV's threshold tables exceed the
ZU3EG's BRAM in this architecture; the estimate says so).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")
os.environ.setdefault("OMP_NUM_THREADS", "2")

from edgeq.errors import EdgeqError  # noqa: E402
from edgeq.formats import Int, MiniFloat  # noqa: E402

GRID = {
    3: ["int3", "e2m0", "e1m1"],
    4: ["int4", "e2m1"],
    5: ["int5", "e2m2", "e3m1"],
    6: ["int6", "e2m3", "e3m2"],
    7: ["int7", "e3m3", "e4m2"],
    8: ["int8", "e4m3", "e5m2"],
}
QUICK = ["int4", "int8", "e2m1", "e4m3"]
SPOT_CHECK = (("e2m1", "e4m3"), ("int8", "e4m3"))  # a minifloat and a mixed model, built for Ultra96
CALIB_IMAGES = 512


# ---------------------------------------------------------------------------------------------- models


def cnv_float():
    """FINN's CNV topology (brevitas_examples.bnn_pynq CNV) in float, with BatchNorm, for 3x32x32 inputs."""
    import torch
    from torch import nn

    layers, cin = [], 3
    for i, cout in enumerate((64, 64, 128, 128, 256, 256)):
        layers += [nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        if i in (1, 3):
            layers.append(nn.MaxPool2d(2))
        cin = cout
    layers += [nn.Flatten(), nn.Linear(256, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
               nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 10)]
    return nn.Sequential(*layers), torch.zeros(1, 3, 32, 32)


def data(model: str):
    from edgeq.data import digits

    x_tr, y_tr, x_te, y_te = digits()
    if model == "cnv":  # 8x8 -> 32x32 (nearest), grey -> 3 channels
        up = lambda x: np.repeat(np.repeat(x, 4, axis=2), 4, axis=3).repeat(3, axis=1)  # noqa: E731
        x_tr, x_te = up(x_tr), up(x_te)
    return x_tr, y_tr, x_te, y_te


def train(model: str, x, y, epochs: int, seed: int):
    """The float model (edgeq.zoo.digits_cnn, or :func:`cnv_float`) trained on (x, y) with edgeq.zoo.train."""
    import torch

    from edgeq import zoo

    torch.manual_seed(seed)
    net, example = zoo.digits_cnn() if model == "digits" else cnv_float()
    return zoo.train(net, x, y, epochs, lr=3e-3 if model == "digits" else 1e-3), example


# ---------------------------------------------------------------------------------------------- cost


def fixed_width(fmt) -> int:
    """n: the two's-complement fixed-point width of every value of an operand (module docstring)."""
    from edgeq.backends.hls.cost import minifloat_operand

    mf = minifloat_operand(fmt)
    if mf is None:
        return fmt.width + (0 if fmt.signed else 1)
    return mf["mantissa_bits"] + 2 + mf["exp_range"]


def storage_bits(fmt) -> int:
    return fmt.bits if isinstance(fmt, MiniFloat) else fmt.width


def levels(fmt) -> int:
    """Thresholds of a requantizer to ``fmt`` after a ReLU: its non-negative values minus one."""
    if isinstance(fmt, Int):
        return (1 << (fmt.width - (1 if fmt.signed else 0))) - 1
    codes = np.arange(1 << (fmt.bits - 1))  # sign bit 0
    v = fmt.from_bits(codes)
    return int(np.unique(v[np.isfinite(v)]).size) - 1


def cost_rows(graph) -> list[dict]:
    """cost.py rows for edgeq's FPGA design of ``graph`` (minifloat MACs carry ``in_minifloat``/``w_minifloat``)."""
    from edgeq.backends.hls.cost import minifloat_operand

    rows = []
    acc = None  # accumulator width flowing from the last MAC layer
    for lay in graph.layers:
        shape_in = graph.tensors[lay.inputs[0]].shape
        n_in = int(np.prod(shape_in)) if shape_in else 1
        if lay.op in ("Conv2d", "Dense"):
            a, w = graph.tensors[lay.inputs[0]].format, lay.weight_format
            k = int(np.prod(lay.weight.shape[1:])) if lay.op == "Conv2d" else int(lay.weight.shape[0])
            acc = fixed_width(a) + fixed_width(w) + math.ceil(math.log2(k))
            parallel = int(np.prod(lay.weight.shape[2:])) if lay.op == "Conv2d" else max(1, min(k, 8))
            rows.append({"name": lay.name, "op": lay.op, "in_bits": storage_bits(a), "w_bits": storage_bits(w),
                         "acc_bits": acc, "out_bits": acc, "macs": lay.macs, "weights": int(lay.weight.size),
                         "in_elements": n_in, "parallel": parallel})
            for key, fmt in (("in_minifloat", a), ("w_minifloat", w)):
                if minifloat_operand(fmt) is not None:
                    rows[-1][key] = minifloat_operand(fmt)
        elif lay.op in ("Relu", "MaxPool") and acc is not None:
            rows.append({"name": lay.name, "op": lay.op, "in_bits": acc, "acc_bits": acc, "out_bits": acc,
                         "in_elements": n_in, "parallel": 1})
        elif lay.op == "Quantize" and acc is not None:
            fmt = graph.tensors[lay.output].format
            lv = levels(fmt)
            rows.append({"name": lay.name, "op": "Threshold", "in_bits": acc, "acc_bits": acc,
                         "out_bits": storage_bits(fmt), "in_elements": n_in,
                         "channels": shape_in[0] if shape_in else 1, "levels": lv,
                         "parallel": lv if lv <= 15 else max(1, lv.bit_length())})
            acc = None
    return rows


def estimate(graph, board) -> dict:
    """cost.estimate over :func:`cost_rows` (cost.py prices minifloat products itself), plus the LUT-equivalents
    of the whole design and of the multiply-accumulate datapath alone."""
    from edgeq.backends.hls import cost

    rows = cost_rows(graph)
    report = cost.estimate(rows, board)
    capacity = report["capacity"]
    per_dsp = capacity["lut"] / capacity["dsp"]
    mac_lut = mac_dsp = 0
    for row in rows:
        if row["op"] not in cost.MAC_OPS:
            continue
        real = cost.minifloat_product_cost(row["in_bits"], row["w_bits"], row.get("in_minifloat"),
                                           row.get("w_minifloat"), dsp_slice=report["dsp_slice"])
        mac_lut += row["parallel"] * (real["lut"] + row["acc_bits"])
        mac_dsp += row["parallel"] * real["dsp"]
    report["lut_equivalents"] = report["totals"]["lut"] + report["totals"]["dsp"] * per_dsp
    # the multiply-accumulate datapath alone (products + accumulators): the paper's operator-level view
    report["mac_lut_equivalents"] = mac_lut + mac_dsp * per_dsp
    return report


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class Point:
    weights: str
    acts: str
    w_bits: int
    a_bits: int
    family: str  # int, minifloat, mixed
    accuracy: float | None
    agree: float | None  # top-1 agreement of the emulation with the Brevitas forward
    lut: int
    dsp: int
    ff: int
    bram36: float
    lut_eq: float
    mac_lut_eq: float
    status: str = "ok"
    pareto: bool = False
    pareto_mac: bool = False


def family(w: str, a: str) -> str:
    kinds = {"int" if n.startswith("int") else "minifloat" for n in (w, a)}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def run_point(net, example, calib, x_te, y_te, w: str, a: str, tmp: Path, board) -> Point:
    import torch

    import edgeq
    from edgeq import ptq

    qm = ptq.quantize(net, calib, weights=w, acts=a)
    with torch.no_grad():
        yb = qm(torch.from_numpy(x_te)).numpy()
    path = tmp / f"w_{w}_a_{a}.onnx"
    acc = agree = None
    status = "ok"
    try:
        ptq.export(qm, example, path)
        graph = edgeq.load(path)
        y = edgeq.emulate(graph, x_te)
        acc = float((y.argmax(1) == y_te).mean())
        agree = float((y.argmax(1) == yb.argmax(1)).mean())
    except EdgeqError as e:
        status = f"refused by edgeq.load: {str(e)[:90]}"
        graph = _graph_for_cost(path, qm, example)
    rep = estimate(graph, board)
    t = rep["totals"]
    wf, af = ptq.format_of(w, "weights"), ptq.format_of(a, "acts")
    return Point(w, a, wf.bits, af.bits, family(w, a), acc, agree, int(t["lut"]), int(t["dsp"]), int(t["ff"]),
                 float(t["bram36"]), float(rep["lut_equivalents"]), float(rep["mac_lut_equivalents"]), status)


def _graph_for_cost(path: Path, qm, example):
    """A model edgeq refuses to emulate still has a cost: read its layers with the accumulator check relaxed."""
    from unittest import mock

    import edgeq
    from edgeq import ingest

    if not path.exists():
        edgeq.export(qm, example, path)
    with mock.patch.object(ingest, "mac_engine", lambda bound: "int64"):
        return edgeq.load(path)


def pareto(points: list[Point], cost: str = "lut_eq", flag: str = "pareto") -> None:
    """Mark the points no other point beats: at most as costly and at least as accurate, one strictly."""
    ok = [p for p in points if p.accuracy is not None]
    for p in ok:
        c = getattr(p, cost)
        setattr(p, flag, not any(
            q is not p and getattr(q, cost) <= c and q.accuracy >= p.accuracy
            and (getattr(q, cost) < c or q.accuracy > p.accuracy) for q in ok))


def spot_check_build(net, calib, x_te, tmp: Path) -> list[str]:
    """Build the :data:`SPOT_CHECK` models (float32 scales, as PTQ learns them) for Ultra96; csim over ``x_te``."""
    from edgeq import ptq
    from edgeq.backends.hls.build import BuildConfig, build

    vec = tmp / "x_test.npy"
    np.save(vec, x_te)
    lines = []
    for w, a in SPOT_CHECK:
        qm = ptq.quantize(net, calib, weights=w, acts=a)
        path = ptq.export(qm, np.zeros((1,) + x_te.shape[1:], np.float32), tmp / f"spot_{w}_{a}.onnx")
        t = time.time()
        try:
            rep = build(BuildConfig(model=path, board="ultra96", out=tmp / f"spot_{w}_{a}", vectors=vec, force=True,
                                    allow_over_budget=True))
        except Exception as e:  # the spot check reports, it does not stop the exploration
            lines.append(f"{w} x {a}: build failed: {str(e).splitlines()[0] if str(e) else e!r}")
            continue
        cs = rep.get("csim") or {}
        lines.append(f"{w} x {a} (float32 scales): edgeq build --board ultra96 + csim over {len(x_te)} test images: "
                     f"{cs.get('mismatches', '?')} mismatches of {cs.get('outputs_compared', '?')} outputs vs "
                     f"edgeq.emulate ({time.time() - t:.1f} s)")
    return lines


# ---------------------------------------------------------------------------------------------- output


def print_table(points: list[Point]) -> None:
    head = ("weights", "acts", "Wb", "Ab", "family", "acc %", "=Brev", "LUT", "DSP", "FF", "BRAM36", "LUT-eq",
            "MAC LUT-eq", "front")
    body = []
    for p in sorted(points, key=lambda p: (p.w_bits, p.a_bits, p.weights, p.acts)):
        front = "+".join(name for name, on in (("design", p.pareto), ("mac", p.pareto_mac)) if on)
        body.append((p.weights, p.acts, str(p.w_bits), str(p.a_bits), p.family,
                     f"{100 * p.accuracy:.2f}" if p.accuracy is not None else "-",
                     f"{100 * p.agree:.1f}" if p.agree is not None else "-", f"{p.lut:,}", str(p.dsp), f"{p.ff:,}",
                     f"{p.bram36:g}", f"{p.lut_eq:,.0f}", f"{p.mac_lut_eq:,.0f}",
                     front if p.status == "ok" else "refused"))
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    for line in [head, tuple("-" * w for w in widths), *body]:
        print("  ".join(c.rjust(w) if 2 <= i < 13 else c.ljust(w)
                        for i, (c, w) in enumerate(zip(line, widths))).rstrip())


def verdict(points: list[Point], flag: str, cost: str, what: str) -> list[str]:
    front = sorted((p for p in points if getattr(p, flag)), key=lambda p: getattr(p, cost))
    lines = [f"Pareto front, {what}: " + ", ".join(
        f"w {p.weights}/a {p.acts} {100 * p.accuracy:.2f}% @ {getattr(p, cost):,.0f}" for p in front)]
    kinds = {k: sum(p.family == k for p in front) for k in ("int", "minifloat", "mixed")}
    if kinds["int"] == len(front):
        v = f"yes: all {len(front)} front points are integer x integer (the paper's finding)"
    elif kinds["int"] == 0:
        v = f"no: none of the {len(front)} front points is integer x integer"
    else:
        others = [p for p in front if p.family != "int"]
        v = (f"partly: {kinds['int']} of {len(front)} front points are integer x integer; the others "
             f"({kinds['minifloat']} minifloat, {kinds['mixed']} mixed): "
             + ", ".join(f"w {p.weights}/a {p.acts}" for p in others))
        disguised = [p for p in others if all(n.startswith(("int", "e1m")) for n in (p.weights, p.acts))]
        if disguised:
            v += f" ({len(disguised)} of them only mix integers with e1mM, itself a sign-magnitude integer)"
    lines.append(f"integers Pareto-optimal ({what}): " + v)
    return lines


def summary(points: list[Point]) -> list[str]:
    lines = verdict(points, "pareto", "lut_eq", "whole design, LUT-equivalents")
    lines += verdict(points, "pareto_mac", "mac_lut_eq", "MAC datapath only, LUT-equivalents")
    # Same bit widths, integer vs best minifloat: accuracy and cost
    best_mf: dict[tuple[int, int], Point] = {}
    for p in points:
        if p.family == "minifloat" and p.accuracy is not None:
            key = (p.w_bits, p.a_bits)
            if key not in best_mf or (p.accuracy, -p.lut_eq) > (best_mf[key].accuracy, -best_mf[key].lut_eq):
                best_mf[key] = p
    pairs = []
    for p in sorted(points, key=lambda p: p.w_bits):
        if p.family == "int" and p.w_bits == p.a_bits and (p.w_bits, p.a_bits) in best_mf and p.accuracy is not None:
            q = best_mf[(p.w_bits, p.a_bits)]
            pairs.append(f"{p.w_bits}b: int {100 * p.accuracy:.2f}% @ {p.lut_eq:,.0f} vs {q.weights}/{q.acts} "
                         f"{100 * q.accuracy:.2f}% @ {q.lut_eq:,.0f}")
    if pairs:
        lines.append("W = A bits, integer vs the best minifloat pair (accuracy @ LUT-eq): " + "; ".join(pairs))
    return lines


def plot(points: list[Point], path: Path, title: str) -> None:
    """Two panels: accuracy vs whole-design cost and vs MAC-datapath cost, each with its Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), sharey=True)
    style = {"int": ("tab:blue", "o"), "minifloat": ("tab:orange", "s"), "mixed": ("tab:gray", "^")}
    ok = [p for p in points if p.accuracy is not None]
    panels = (("lut_eq", "pareto", "whole design (edgeq FPGA architecture)"),
              ("mac_lut_eq", "pareto_mac", "multiply-accumulate datapath only"))
    for ax, (cost, flag, what) in zip(axes, panels):
        for fam, (color, marker) in style.items():
            sel = [p for p in ok if p.family == fam]
            if sel:
                ax.scatter([getattr(p, cost) for p in sel], [100 * p.accuracy for p in sel], c=color, marker=marker,
                           s=22, alpha=0.6, label=f"{fam} x {fam} ({len(sel)})" if fam != "mixed" else
                           f"int x minifloat ({len(sel)})")
        front = sorted((p for p in ok if getattr(p, flag)), key=lambda p: getattr(p, cost))
        if front:
            xs, ys = [getattr(p, cost) for p in front], [100 * p.accuracy for p in front]
            ax.step(xs, ys, where="post", color="k", lw=1.2, label="Pareto front")
            ax.scatter(xs, ys, facecolors="none", edgecolors="k", s=80)
            labels: dict[tuple[float, float], list[str]] = {}
            for p, x, y in zip(front, xs, ys):  # coincident points share one label
                labels.setdefault((x, y), []).append(f"{p.weights}/{p.acts}")
            for (x, y), names in labels.items():
                ax.annotate(", ".join(names), (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(f"Ultra96 estimate, {what}: LUT + DSP x 196 [LUT-equivalents, log]", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("test accuracy, edgeq.emulate (%)  [labels: weights/acts]")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(points: list[Point], path: Path) -> None:
    fields = list(Point.__dataclass_fields__)
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(fields)
        for p in points:
            wr.writerow([getattr(p, k) for k in fields])


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"smoke run: formats {', '.join(QUICK)}, fewer epochs")
    ap.add_argument("--out", default="minifloat_dse_out", help="folder for minifloat_dse.csv and .png")
    ap.add_argument("--model", default="digits", choices=("digits", "cnv"), help="the float model (default digits)")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--no-build", action="store_true", help="skip the Ultra96 build + csim spot check")
    args = ap.parse_args(argv)

    import torch

    from edgeq.board import get_board

    torch.set_num_threads(2)
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    board = get_board("ultra96")
    x_tr, y_tr, x_te, y_te = data(args.model)
    epochs = {"digits": 6 if args.quick else 15, "cnv": 2 if args.quick else 4}[args.model]
    net, example = train(args.model, x_tr, y_tr, epochs, args.seed)
    with torch.no_grad():
        float_acc = float((net(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    calib = x_tr[:CALIB_IMAGES]
    names = QUICK if args.quick else [n for b in sorted(GRID) for n in GRID[b]]
    if args.model == "cnv" and args.quick:
        names = ["int4", "e2m1"]
    pairs = [(w, a) for w in names for a in names]
    if args.model == "cnv" and not args.quick:  # subsampled: the diagonal (module docstring)
        pairs = [(n, n) for n in names]
    print(f"# minifloat vs integer PTQ on {args.model}: {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {'quick' if args.quick else 'full'} grid of {len(pairs)} models; "
          f"float model {100 * float_acc:.2f}% ({epochs} epochs, {time.time() - t0:.1f} s)")
    points = []
    with tempfile.TemporaryDirectory(prefix="edgeq-dse-") as tmp:
        tmp = Path(tmp)
        for i, (w, a) in enumerate(pairs):
            points.append(run_point(net, example, calib, x_te, y_te, w, a, tmp, board))
            if sys.stderr.isatty():
                print(f"\r{i + 1}/{len(pairs)} models", end="", file=sys.stderr, flush=True)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        spot = None if args.no_build else spot_check_build(net, calib, x_te if args.model == "digits" else x_te[:64],
                                                           tmp)
    pareto(points)
    pareto(points, "mac_lut_eq", "pareto_mac")
    print_table(points)
    print()
    for p in points:
        if p.status != "ok":
            print(f"w {p.weights} / a {p.acts}: {p.status}")
    agree = [p.agree for p in points if p.agree is not None]
    if agree:
        print(f"top-1 agreement of edgeq.emulate with the Brevitas forward: min {100 * min(agree):.1f}% over "
              f"{len(agree)} models (float32 sums in Brevitas vs exact accumulation: README, 'Where QONNX's own "
              "reference is not exact')")
    for line in summary(points):
        print(line)
    for line in spot or []:
        print("spot check: " + line)
    write_csv(points, out / "minifloat_dse.csv")
    plot(points, out / "minifloat_dse.png",
         f"PTQ on {args.model}: accuracy (edgeq.emulate) vs Ultra96 cost estimate, {len(pairs)} models")
    print(f"wrote {out / 'minifloat_dse.csv'} and {out / 'minifloat_dse.png'}; {time.time() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except EdgeqError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
