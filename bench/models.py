"""Other people's models through edgeq: what loads, what is bit-exact against QONNX, what builds where.

    .venv/bin/python bench/models.py DIR [--backends emulate,fpga,mcu] [--only NAME,...] [--vectors 16]
        [--input-format NAME=FORMAT ...] [--out results.json]

For every ``*.onnx`` in DIR (e.g. the six QONNX model-zoo files and hls4ml's example-models ``onnx/``; the
suite fetches nothing, so point this at a folder you filled):

- **load**: ``edgeq.load`` (with the model's input format, below), its time, or the one-line refusal;
- **emulate**: ``edgeq.emulate`` against QONNX ``execute_onnx`` on the same seeded vectors (sample by sample):
  exact, or the number of differing outputs, max |diff| and top-1 agreement;
- **fpga**: ``edgeq build MODEL --board ultra96`` (csim against the emulator) through the CLI;
- **mcu**: ``edgeq build --board qemu-rv32``, ``edgeq flash``, ``edgeq compare`` through the CLI.

Input formats: a model whose float input feeds a MAC needs one (``--input-format``); the defaults below are the
ones the models were trained with (QKeras jet tagging: hls4ml's ``ap_fixed<16,6>``; UNSW-NB15: +-1 features).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

#: input formats of the public models (file stem -> --input-format)
DEFAULT_INPUT_FORMATS = {
    "qkeras_jettagging": "ap_fixed<16,6>",
    "unsw_nb15-mlp-w2a2": "bipolar",
    "resnet18_4w4a": "uint8",
}
EDGEQ = [str(Path(sys.executable).with_name("edgeq"))]


def vectors(graph, n: int, seed: int) -> np.ndarray:
    """Seeded test inputs: inside the typed input's range, else standard normal."""
    rng = np.random.default_rng(seed)
    shape = (n, *graph.input.shape)
    first = graph.layers[0] if graph.layers else None
    fmt = graph.tensors[first.output].format if first is not None and first.op == "Quantize" else None
    lo, hi = (float(getattr(fmt, "min", -3)), float(getattr(fmt, "max", 3))) if fmt is not None else (-3.0, 3.0)
    if fmt is not None and lo == -hi and lo != 0 and getattr(fmt, "bits", 0) == 1:  # bipolar: +-scale
        return rng.choice([lo, hi], shape).astype(np.float32)
    return rng.uniform(max(lo, -8), min(hi, 8), shape).astype(np.float32) if fmt is not None else \
        rng.normal(0, 1, shape).astype(np.float32)


def qonnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """QONNX's execute_onnx after qonnx's cleanup, one sample at a time (the model's own batch size is 1)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    mw = cleanup_model(ModelWrapper(str(path)))
    iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
    return np.concatenate([execute_onnx(mw, {iname: x[i:i + 1]})[oname] for i in range(len(x))]).astype(np.float64)


def distance(got: np.ndarray, ref: np.ndarray) -> dict:
    got, ref = got.reshape(len(got), -1), ref.reshape(len(ref), -1)
    differ = ~((got == ref) | (np.isnan(got) & np.isnan(ref)))
    d = np.abs(got - ref)
    top1 = float(np.mean(got.argmax(1) == ref.argmax(1))) if got.shape[1] > 1 else None
    return {"exact": not differ.any(), "differing": int(differ.sum()), "values": int(got.size),
            "max_abs_diff": float(np.nanmax(d)) if d.size else 0.0, "top1_agreement": top1}


def cli(*args, timeout: float = 1800) -> tuple[int, str]:
    r = subprocess.run(EDGEQ + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip() and "warning" not in ln]
    return r.returncode, (lines[-1] if lines else "")[:240]


def run_model(path: Path, fmt: str | None, backends: list[str], n: int, work: Path) -> dict:
    from edgeq.emulate import emulate
    from edgeq.errors import EdgeqError
    from edgeq.ingest import load

    row: dict = {"model": path.stem, "input_format": fmt}
    t = time.perf_counter()
    try:
        graph = load(path, fmt)
    except EdgeqError as e:
        row.update(load_s=round(time.perf_counter() - t, 2), status="refused", reason=str(e)[:300])
        return row
    row.update(load_s=round(time.perf_counter() - t, 2), status="loaded", layers=len(graph.layers))
    x = vectors(graph, n, 0)
    vec = work / f"{path.stem}_x.npy"
    np.save(vec, x)
    if "emulate" in backends:
        y = emulate(graph, x)
        first = graph.layers[0]
        xq = graph.tensors[first.output].format.quantize(x).astype(np.float32) if first.attrs.get("typed_input") \
            else x
        row["emulate_vs_qonnx"] = distance(y, qonnx_outputs(path, xq))
    extra = ["--input-format", fmt] if fmt else []
    if "fpga" in backends:
        rc, line = cli("build", path, "--board", "ultra96", "--out", work / f"{path.stem}_fpga", "--vectors", vec,
                       "--force", *extra)
        row["fpga"] = {"rc": rc, "result": line}
    if "mcu" in backends:
        proj = work / f"{path.stem}_mcu"
        rc, line = cli("build", path, "--board", "qemu-rv32", "--out", proj, "--vectors", vec, "--force", *extra)
        if rc == 0:
            rc, line = cli("flash", proj, "--board", "qemu-rv32")
        if rc == 0:
            rc, line = cli("compare", proj)
        row["mcu"] = {"rc": rc, "result": line}
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory")
    ap.add_argument("--backends", default="emulate,fpga,mcu")
    ap.add_argument("--only", default=None, help="comma-separated file stems")
    ap.add_argument("--vectors", type=int, default=16)
    ap.add_argument("--input-format", action="append", default=[], metavar="NAME=FORMAT")
    ap.add_argument("--out", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    formats = dict(DEFAULT_INPUT_FORMATS)
    for kv in args.input_format:
        name, _, fmt = kv.partition("=")
        formats[name] = fmt
    paths = sorted(Path(args.directory).glob("*.onnx"))
    if args.only:
        keep = set(args.only.split(","))
        paths = [p for p in paths if p.stem in keep]
    if not paths:
        print(f"{args.directory}: no .onnx files", file=sys.stderr)
        return 2
    backends = args.backends.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeq-models-") as tmp:
        for p in paths:
            row = run_model(p, formats.get(p.stem), backends, args.vectors, Path(tmp))
            rows.append(row)
            em = row.get("emulate_vs_qonnx")
            emu = "-" if em is None else "exact" if em["exact"] else \
                f"{em['differing']}/{em['values']} differ (max {em['max_abs_diff']:.3g}, top-1 {em['top1_agreement']})"
            print(f"{p.stem:34s} load {row['load_s']:6.2f}s  {row['status']:8s} emulate: {emu}", flush=True)
            if row["status"] == "refused":
                print(f"    refused: {row['reason']}", flush=True)
            for b in ("fpga", "mcu"):
                if b in row:
                    print(f"    {b}: rc {row[b]['rc']}: {row[b]['result']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    ok = sum(r["status"] == "loaded" for r in rows)
    print(f"\n{ok} of {len(rows)} models load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
