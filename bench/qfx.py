"""QFX vs post-training fixed point on digits: test accuracy and Ultra96 DSP/LUT, measured in one run.

    .venv/bin/python bench/qfx.py [--seeds 0] [--quick] [--out DIR]

Runs examples/qfx_digits.py's comparison (float baseline; PTQ, QAT with frozen binary points, and QFX at
W = 4, 6, 8; QFX with power-of-two and 2-hot weights at W = 8), then prints its table: accuracy from
edgeq.emulate of each exported QONNX model (checked equal to Brevitas bit for bit), csim mismatches of the
Ultra96 build over the test set, and the cost model's DSP/LUT. Below it, the accuracy difference QFX - PTQ
and QFX - QAT-frozen at each width. With several ``--seeds`` (training seeds; the test split is fixed) each
run's table is printed, then the mean, min and max accuracy over the seeds. The test set has 359 images:
one image is 0.28 points of accuracy.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import qfx_digits as ex  # noqa: E402


def _acc(rows) -> dict[tuple[str, str], float]:
    return {(r.variant, str(r.width)): r.accuracy for r in rows}


def _differences(rows, widths) -> None:
    acc = _acc(rows)
    for other in ("ptq", "qat-frozen"):
        cells = [f"W={w}: {100 * (acc[('qfx', str(w))] - acc[(other, str(w))]):+.2f}" for w in widths]
        print(f"QFX - {other} (accuracy points): " + ", ".join(cells))


def _summary(runs: list[list]) -> None:
    keys = list(_acc(runs[0]))
    print(f"\naccuracy over {len(runs)} seeds")
    head = ("variant", "W", "mean", "min", "max")
    body = []
    for key in keys:
        values = [_acc(rows)[key] for rows in runs]
        body.append((*key, f"{sum(values) / len(values):.4f}", f"{min(values):.4f}", f"{max(values):.4f}"))
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    for line in [head, tuple("-" * w for w in widths), *body]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0", help="training seeds, comma separated (default: 0)")
    ap.add_argument("--quick", action="store_true", help="the example's --quick settings (no csim)")
    ap.add_argument("--out", default=None, help="keep models and HLS projects here (default: a temporary folder)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    import torch

    torch.set_num_threads(ex.THREADS)
    widths = (4, 6, 8)
    print(f"# QFX on digits: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{ex.THREADS} intra-op thread(s), seeds {seeds}, {'quick' if args.quick else 'full'}")
    train_loader, test_loader = ex.digits_loaders()
    runs, bad = [], 0
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-qfx-") as tmp:
        for seed in seeds:
            out = Path(args.out or tmp) / f"seed{seed}"
            t = time.time()
            rows = ex.run(train_loader, test_loader, 10, widths=widths, float_epochs=8 if args.quick else 30,
                          qfx_epochs=3 if args.quick else 15, out=out, csim=not args.quick, seed=seed,
                          say=lambda s: None)
            print(f"\nseed {seed}: {time.time() - t:.0f} s")
            ex.print_table(rows)
            _differences(rows, widths)
            bad += sum(1 for r in rows[1:] if not r.emulate_equals_brevitas or r.csim_mismatches)
            runs.append(rows)
    if len(runs) > 1:
        _summary(runs)
    if bad:
        print(f"\n{bad} model(s) differ from Brevitas or csim: the accuracies above are not proven", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
