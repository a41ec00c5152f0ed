"""Whole models on the MCU backend: per-layer instructions and MACs per instruction, measured on QEMU.

    .venv/bin/python bench/mcu_models.py [--board qemu-rv32] [--vectors 8] [--models tfc_2w2a cnv_2w2a depthwise]

Each model (bnn_pynq networks with seeded weights, and edgeq.zoo's depthwise CNN) is exported, built with
`edgeq build --trace` (per-layer counters), run with `edgeq flash` and checked with `edgeq compare` before
anything is printed. Instructions are minstret deltas (QEMU -icount shift=0: exact and repeatable); a chain of
element-wise layers runs as one loop and is counted on its last layer. bench/mcu.py compares the kernels
themselves with a naive loop.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

EDGEQ = str(Path(sys.executable).with_name("edgeq"))


def run(*args) -> str:
    res = subprocess.run([EDGEQ, "--quiet", *map(str, args)], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"edgeq {' '.join(map(str, args))} failed: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def export(name: str, path: Path) -> None:
    import torch

    import edgeq
    from edgeq import zoo

    model, shape = zoo.depthwise_cnn(0) if name == "depthwise" else zoo.bnn_pynq(name, seed=0)
    edgeq.export(model, torch.zeros(shape), path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="qemu-rv32")
    ap.add_argument("--vectors", type=int, default=8)
    ap.add_argument("--models", nargs="+", default=["tfc_2w2a", "cnv_2w2a", "depthwise"])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            onnx = Path(tmp) / f"{name}.onnx"
            export(name, onnx)
            out = Path(tmp) / name
            t = time.perf_counter()
            run("build", onnx, "--board", args.board, "--out", out, "--n-vectors", args.vectors, "--trace")
            t_build = time.perf_counter() - t
            t = time.perf_counter()
            run("flash", out, "--board", args.board, "--timeout", 1800)
            t_flash = time.perf_counter() - t
            cmp = subprocess.run([EDGEQ, "compare", str(out)], capture_output=True, text=True)
            if cmp.returncode != 0:
                sys.exit(f"{name}: the board's outputs differ from the emulator:\n{cmp.stdout}")
            counters = json.loads((out / "hw_counters.json").read_text())
            print(f"\n{name} on {args.board}: {args.vectors} vectors bit-identical to the emulator; build "
                  f"{t_build:.1f} s, run {t_flash:.1f} s")
            print(f"{'layer':44} {'op':>9} {'MACs':>11} {'instr':>12} {'MAC/instr':>9}")
            macs_total = 0
            for row in counters["layers"]:
                macs_total += row["macs"]
                if row["instret"] is None:
                    continue
                inst = row["instret"][0]
                ratio = f"{row['macs'] / inst:.3f}" if row["macs"] else ""
                print(f"{row['layer'][:44]:44} {row['op']:>9} {row['macs']:>11,} {inst:>12,} {ratio:>9}")
            total = counters["total"]["instret"][0]
            print(f"{'total (one inference)':44} {'':>9} {macs_total:>11,} {total:>12,} {macs_total / total:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
