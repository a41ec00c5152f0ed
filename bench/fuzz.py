"""Differential graph fuzzer: random QONNX graphs through edgeq and QONNX's execute_onnx.

    .venv/bin/python bench/fuzz.py --cases 3000 --seed 0 [--backends emulate,hls,mcu] [--minutes M] [--workers 2]
        [--save-regressions tests/fuzz_regressions]

Prints per backend: cases, exact, bounded (differs from QONNX only by QONNX's own float32 summation, within the
proven bound), refused (a clean EdgeqError), failed, cases/s; then the coverage map: per op type and per format,
how many cases used it and how often ingest refused the graph at it. Lists every failure with its replay command
(``edgeq.fuzz.case(seed, i)``). With ``--save-regressions`` each failure is shrunk and saved there. Exits 1 when
any case failed. See edgeq/fuzz.py for what is generated and how outcomes are decided.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import re
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _init_worker():
    warnings.filterwarnings("ignore")
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # onnxruntime's shape-merge warnings are not results


def _run_chunk(job):
    import edgeq.backends.fuzz  # noqa: F401  (registers the hls and mcu backends)
    from edgeq import fuzz

    backend, seed, indices, timeout = job
    cases = [fuzz.case(seed, i) for i in indices]
    return list(zip(indices, fuzz.BACKENDS[backend](cases, timeout=timeout)))


def run_backend(backend: str, seed: int, n: int, minutes: float | None, workers: int, timeout: float, chunk: int):
    deadline = time.monotonic() + 60 * minutes if minutes else None
    jobs = ((backend, seed, list(range(s, min(n, s + chunk))), timeout) for s in range(0, n, chunk))
    results = []
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        for part in pool.imap_unordered(_run_chunk, jobs):
            results.extend(part)
            if deadline is not None and time.monotonic() > deadline:
                pool.terminate()
                break
    return sorted(results, key=lambda r: r[0]), time.perf_counter() - t0


def _table(rows, header):
    widths = [max(len(str(r[k])) for r in rows + [header]) for k in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w) if k else str(v).ljust(w) for k, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def report(backend: str, results, seconds: float) -> str:
    outcomes = collections.Counter(r.outcome for _, r in results)
    n = len(results)
    out = [f"== backend {backend} ==",
           _table([[backend, n, outcomes["exact"], outcomes["bounded"], outcomes["refused"], outcomes["failed"],
                    f"{n / seconds:.1f}"]],
                  ["backend", "cases", "exact", "bounded", "refused", "failed", "cases/s"])]
    for key, title in (("ops", "op"), ("fmts", "format")):
        used, refused = collections.Counter(), collections.Counter()
        for _, r in results:
            used.update(getattr(r, key))
            if r.outcome == "refused":
                refused[r.op if key == "ops" else r.fmt] += 1
        rows = [[k, used[k], refused[k], f"{100 * refused[k] / used[k]:.1f}%" if used[k] else "-"]
                for k in sorted(set(used) | set(refused), key=lambda k: (-refused[k], -used[k], k))]
        out += ["", f"coverage map per {title}: cases using it, cases refused at it",
                _table(rows, [title, "cases", "refused", "rate"])]
    why = collections.Counter(re.sub(r"'[^']*'", "'…'", r.message)[:110] for _, r in results if r.outcome == "refused")
    if why:
        out += ["", "top refusal reasons:"] + [f"  {v:6d}  {k}" for k, v in why.most_common(8)]
    fails = [(i, r) for i, r in results if r.outcome == "failed"]
    if fails:
        out += ["", f"FAILED ({len(fails)}): replay with edgeq.fuzz.check(edgeq.fuzz.case(seed, i))"]
        out += [f"  case {i}: {r.message[:200]}" for i, r in fails[:40]]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default="emulate")
    ap.add_argument("--minutes", type=float, default=None, help="stop after this long (whatever --cases says)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20.0, help="a case running longer has failed (hang)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="cases per task (default: emulate 25; hls 40, one g++ compile per chunk; mcu 100, one "
                         "firmware image and one host build per chunk)")
    ap.add_argument("--save-regressions", default=None, metavar="DIR",
                    help="shrink each failure and save it (model, input, expectation) in DIR")
    args = ap.parse_args(argv)
    import edgeq.backends.fuzz  # noqa: F401  (registers the hls and mcu backends)
    from edgeq import fuzz

    failed = False
    for backend in args.backends.split(","):
        if backend not in fuzz.BACKENDS:
            print(f"unknown backend {backend!r}; available: {', '.join(fuzz.BACKENDS)}", file=sys.stderr)
            return 2
        chunk = args.chunk or {"hls": 40, "mcu": 100}.get(backend, 25)
        results, seconds = run_backend(backend, args.seed, args.cases, args.minutes, args.workers, args.timeout,
                                       chunk)
        print(report(backend, results, seconds), flush=True)
        fails = [i for i, r in results if r.outcome == "failed"]
        failed |= bool(fails)
        if args.save_regressions:
            run = fuzz.BACKENDS[backend]
            # hardware regressions go to a folder per backend (tests/test_fuzz_hw.py replays tests/.../hls)
            where = args.save_regressions if backend == "emulate" else os.path.join(args.save_regressions, backend)
            for i in fails[:10]:
                small = fuzz.shrink(fuzz.case(args.seed, i), lambda k, run=run: run([k])[0].outcome == "failed")
                path = fuzz.save_regression(small, where, f"seed{args.seed}_case{i}", "exact",
                                            note=run([small])[0].message)
                print(f"  shrunk case {i} to {small.n_layers} nodes: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
