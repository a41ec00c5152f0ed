"""FPGA build time: `edgeq build --board ultra96` against hls4ml 1.3 convert+compile, measured in the same run.

    .venv/bin/python bench/build_fpga.py [--hls4ml-timeout 600] [--models tfc_2w2a,cnv_2w2a]
                                         [--n-vectors 64] [--hls4ml-precision 'fixed<32,16>'] [--keep DIR]

Models: FINN's bnn_pynq TFC-w2a2 and CNV-w2a2 (edgeq.zoo, seed 0), exported once with edgeq.export.

* edgeq: the installed ``edgeq build MODEL --board ultra96`` as a subprocess, wall time from start to
  exit. That includes the C simulation (g++ against the ap_types headers) over ``--n-vectors`` seeded
  vectors, checked bit for bit against edgeq.emulate; the csim mismatches come from its report.json.
* hls4ml: in a subprocess (its own process group) the QONNX path of hls4ml 1.3: qonnx cleanup ->
  ConvertToChannelsLastAndClean -> GemmToMatMul -> cleanup, ``config_from_onnx_model(granularity='name',
  backend='Vivado', default_precision=...)``, ``convert_from_onnx_model(io_type='io_parallel',
  backend='Vivado', part='xczu3eg-sbva484-1-i')`` and ``compile()``. Its time is the wall time from the
  subprocess start to the end of ``compile()`` (Python start-up and imports included on both sides).
  After that the worker runs ``predict()`` on the build's vectors (DIR/vectors/input.npy) and the
  outputs are compared bit for bit (as float64) with edgeq.emulate on the same vectors.
  A run that exceeds ``--hls4ml-timeout`` seconds is killed with its whole process group (g++ and
  cc1plus included) and reported as "did not finish in N s".

Prints one table: model, edgeq build s, csim mismatches, hls4ml s (or timeout), ratio (hls4ml / edgeq),
hls4ml mismatches; then one line per model with details.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

PART = "xczu3eg-sbva484-1-i"
MODELS = ("tfc_2w2a", "cnv_2w2a")
LABELS = {"tfc_2w2a": "TFC-w2a2", "cnv_2w2a": "CNV-w2a2"}


# ---------------------------------------------------------------------------------------------
# hls4ml worker (runs in its own process group; the parent enforces the time limit)
# ---------------------------------------------------------------------------------------------


def _status(out: Path, **kw) -> None:
    """Merge ``kw`` into out/status.json atomically, so the parent knows how far the worker got."""
    f = out / "status.json"
    doc = json.loads(f.read_text()) if f.exists() else {}
    doc.update(kw)
    tmp = out / ".status.json.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, f)


def hls4ml_worker(onnx_path: str, vectors: str, out_dir: str, precision: str) -> int:
    out = Path(out_dir)
    _status(out, phase="import")
    import hls4ml
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model

    _status(out, phase="preprocess", hls4ml_version=hls4ml.__version__)
    model = cleanup_model(ModelWrapper(onnx_path))
    model = model.transform(ConvertToChannelsLastAndClean())
    model = model.transform(GemmToMatMul())
    model = cleanup_model(model)
    _status(out, phase="convert")
    config = hls4ml.utils.config_from_onnx_model(model, granularity="name", backend="Vivado",
                                                 default_precision=precision)
    hls_model = hls4ml.converters.convert_from_onnx_model(
        model, output_dir=str(out / "hls4ml_prj"), io_type="io_parallel", backend="Vivado", hls_config=config,
        part=PART)
    _status(out, phase="compile")
    hls_model.compile()
    _status(out, phase="predict", compiled_at=time.time())
    x = np.load(vectors, allow_pickle=False)
    in_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    if x.ndim == 4 and list(x.shape[1:]) != in_shape and in_shape == [x.shape[2], x.shape[3], x.shape[1]]:
        x = np.transpose(x, (0, 2, 3, 1))  # the model input was made channels-last
    y = hls_model.predict(np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32))
    np.save(out / "predict.npy", np.asarray(y))
    _status(out, phase="done", predicted_at=time.time())
    return 0


# ---------------------------------------------------------------------------------------------
# The parent: timing, time limit, comparison
# ---------------------------------------------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Processes still in process group ``pgid`` (from /proc)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(p.name))
    return pids


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the worker's whole process group (g++/cc1plus children included)."""
    pgid = proc.pid
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_members(pgid):
                return
            time.sleep(0.1)
    proc.wait()
    left = _group_members(pgid)
    if left:
        raise RuntimeError(f"processes {left} of the hls4ml run survived SIGKILL")


def run_edgeq_build(onnx_path: Path, out: Path, n_vectors: int) -> dict:
    edgeq = str(Path(sys.executable).with_name("edgeq"))
    cmd = [edgeq, "--quiet", "build", str(onnx_path), "--board", "ultra96", "--out", str(out), "--force",
           "--n-vectors", str(n_vectors)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode not in (0, 1) or not (out / "report.json").exists():
        raise RuntimeError(f"edgeq build failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}")
    cs = json.loads((out / "report.json").read_text())["csim"]
    return {"seconds": seconds, "csim_mismatches": int(cs["mismatches"]), "csim_compared": int(cs["outputs_compared"]),
            "csim_status": cs["status"]}


def run_hls4ml(onnx_path: Path, vectors: Path, work: Path, timeout: float, precision: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--hls4ml-worker", str(onnx_path), str(vectors), str(work),
           "--hls4ml-precision", precision]
    log = open(work / "worker.log", "w")
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        rc, timed_out = None, True
    finally:
        log.close()
    status = json.loads((work / "status.json").read_text()) if (work / "status.json").exists() else {}
    r: dict = {"timed_out": timed_out, "phase": status.get("phase", "start"), "returncode": rc,
               "total_seconds": time.time() - start}
    if "compiled_at" in status:
        r["seconds"] = status["compiled_at"] - start
    if not timed_out and rc != 0:
        tail = (work / "worker.log").read_text(errors="replace").strip().splitlines()[-5:]
        r["error"] = " | ".join(tail)
    if (work / "predict.npy").exists():
        r["predict"] = np.load(work / "predict.npy")
    return r


def bench_model(name: str, work: Path, args) -> dict:
    import torch

    import edgeq
    from edgeq.zoo import bnn_pynq

    model, shape = bnn_pynq(name, seed=0)
    onnx_path = work / f"{name}.onnx"
    edgeq.export(model, torch.zeros(shape), onnx_path)

    row = {"model": LABELS.get(name, name), "edgeq": run_edgeq_build(onnx_path, work / f"{name}_edgeq", args.n_vectors)}
    vectors = work / f"{name}_edgeq" / "vectors" / "input.npy"
    h = run_hls4ml(onnx_path, vectors, work / f"{name}_hls4ml", args.hls4ml_timeout, args.hls4ml_precision)
    if "predict" in h:
        want = edgeq.emulate(edgeq.load(onnx_path), np.load(vectors))
        got = np.asarray(h.pop("predict"), dtype=np.float64)
        if got.size != want.size:
            h["mismatches"] = f"shape {got.shape} vs {want.shape}"
        else:
            got = got.reshape(want.shape)
            same = got.view(np.uint64) == want.view(np.uint64)
            h["mismatches"] = int((~same).sum())
            h["compared"] = int(want.size)
            h["max_abs_diff"] = float(np.abs(got - want).max())
            g2, w2 = got.reshape(len(got), -1), want.reshape(len(want), -1)
            h["top1_agree"] = int((g2.argmax(1) == w2.argmax(1)).sum())
            h["vectors"] = len(want)
    row["hls4ml"] = h
    return row


def _table(rows: list[dict], timeout: float) -> str:
    head = ("model", "edgeq build s", "csim mismatches", "hls4ml s", "ratio", "hls4ml mismatches")
    lines = []
    for r in rows:
        e, h = r["edgeq"], r["hls4ml"]
        if "seconds" in h:
            hs, ratio = f"{h['seconds']:.1f}", f"{h['seconds'] / e['seconds']:.1f}x"
        elif h["timed_out"]:
            hs, ratio = f"did not finish in {timeout:g} s", f">{timeout / e['seconds']:.0f}x"
        else:
            hs, ratio = f"failed in {h['phase']}", "-"
        if isinstance(h.get("mismatches"), int):
            hm = f"{h['mismatches']} of {h['compared']}"
        elif "mismatches" in h:
            hm = h["mismatches"]
        elif h["timed_out"]:
            hm = f"- (killed in {h['phase']})"
        else:
            hm = "-"
        lines.append((r["model"], f"{e['seconds']:.1f}", f"{e['csim_mismatches']} of {e['csim_compared']}", hs,
                      ratio, hm))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*x) for x in lines])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hls4ml-timeout", type=float, default=600.0,
                    help="seconds allowed for each hls4ml run (convert+compile+predict); default 600")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--n-vectors", type=int, default=64, help="csim / predict vectors (default 64)")
    ap.add_argument("--hls4ml-precision", default="fixed<32,16>",
                    help="hls4ml default_precision for tensors the QONNX graph leaves open (default fixed<32,16>)")
    ap.add_argument("--keep", default=None, help="keep the projects in this directory (default: a temporary one)")
    ap.add_argument("--hls4ml-worker", nargs=3, metavar=("ONNX", "VECTORS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hls4ml_worker:
        return hls4ml_worker(*args.hls4ml_worker, precision=args.hls4ml_precision)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for m in models:
            rows.append(bench_model(m, work, args))
            print(f"measured {rows[-1]['model']}", file=sys.stderr, flush=True)
    import hls4ml

    print(f"edgeq build --board ultra96 vs hls4ml {hls4ml.__version__} convert+compile (io_parallel, Vivado, {PART}); "
          f"{os.cpu_count()} CPUs, {args.n_vectors} vectors, hls4ml default_precision {args.hls4ml_precision}")
    print(_table(rows, args.hls4ml_timeout))
    for r in rows:
        h = r["hls4ml"]
        bits = [f"{r['model']}: edgeq csim {r['edgeq']['csim_status']}"]
        if "seconds" in h:
            bits.append(f"hls4ml convert+compile {h['seconds']:.1f} s, subprocess total {h['total_seconds']:.1f} s")
        if isinstance(h.get("mismatches"), int):
            bits.append(f"hls4ml vs edgeq.emulate: max |diff| {h['max_abs_diff']:.3g}, top-1 agrees on "
                        f"{h['top1_agree']} of {h['vectors']}")
        if h.get("error"):
            bits.append(f"hls4ml failed (exit {h['returncode']}) in {h['phase']}: {h['error']}")
        print("; ".join(bits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
