"""``edgeq build`` for MCU boards: the FP16 program, its memory plan, C, firmware, and the host check.

Steps: load -> lower (FP16 program) -> plan (arena, budgets) -> vectors (emulator) -> render (C) ->
firmware (clang, the board's link script) -> host check (the same C on x86-64, compared bit for bit).
The project is written into a temporary directory and renamed into place at the end. ``edgeq flash``
then runs the firmware on the board and ``edgeq compare`` checks its outputs against the emulator.

Project layout::

    model.onnx            the input model
    program.npz           the MCU program (edgeq IR: float16/float32 tensors, per-layer contracts)
    src/                  model.c model.h harness.c weights.S weights.bin vectors.S vectors.bin
    firmware.elf          the firmware for the board
    vectors/input.npy     the test inputs; vectors/expected.npy the emulator's outputs
    build.json            backend, board, options, what to run; report.json / report.md
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq import __version__, mst
from edgeq.backends import proc
from edgeq.backends.common import atomic_project, load_vectors
from edgeq.board import Board, get_board
from edgeq.data import saturation_warning
from edgeq.emulate import emulate
from edgeq.errors import EdgeqError
from edgeq.formats import Float16, Int
from edgeq.ingest import load
from edgeq.ir import Graph, save_graph
from edgeq.precision import write_model
from edgeq.reference import reference_text, store_reference

from . import kernels, toolchain
from .lower import McuOptions, lower_fp16
from .plan import MemoryPlan, elem_bytes, plan_memory, steps
from .render import HARNESS_C, VECTORS_S, WEIGHTS_S, layer_hash, render, scratch_elems

#: Flash the firmware itself needs besides the model's constants (kernels, glue, harness, runtime), for the
#: budget check before compiling; the linker then checks the exact sizes.
CODE_RESERVE = 32 * 1024


class BuildFailed(Exception):
    """The build ran but verification failed (exit code 1)."""


@dataclass
class McuContext:
    cfg: Any
    board: Board
    tmp: Path
    opts: McuOptions
    graph: Graph | None = None
    program: Graph | None = None
    conversions: list = field(default_factory=list)
    plan: MemoryPlan | None = None
    x: np.ndarray | None = None
    expected: np.ndarray | None = None
    report: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    scratch: Path | None = None  # the tools' TMPDIR, removed with the build's staging directory


def options_for(board: Board, fma: bool = True, simd: str = "auto") -> McuOptions:
    """The arithmetic options of a build: fma or mul+add; SIMD lanes from the board's capabilities."""
    caps = board.get("simd", []) or []
    if simd == "auto":
        lanes = 2 if "v2f16" in caps else 1
    elif simd == "off":
        lanes = 1
    elif simd == "v2f16":
        lanes = 2
    else:
        raise EdgeqError(f"--simd must be auto, off or v2f16, got {simd!r}")
    return McuOptions(fused=fma, lanes=lanes)


def _first_quantizer(graph: Graph):
    lay = graph.layers[0] if graph.layers else None
    if lay is not None and lay.op == "Quantize" and isinstance(graph.tensors[lay.output].format, Int):
        return graph.tensors[lay.output].format
    return None


def check_budget(ctx: McuContext, weight_bytes: int) -> dict[str, Any]:
    """RAM (arena + stack) and flash (weights + constants + code reserve) against the board, before compiling."""
    b, plan, g = ctx.board, ctx.plan, ctx.program
    ram_budget, flash_budget = int(b["ram_kib"]) * 1024, int(b["flash_kib"]) * 1024
    stack = int(b.get("stack_kib", 8)) * 1024
    ram = plan.arena_bytes + stack
    flash = weight_bytes + CODE_RESERVE
    peak = g.layers[plan.peak_layer]
    if ram > ram_budget:
        raise EdgeqError(
            f"model needs {ram / 1024:.1f} KiB of RAM (activation arena {plan.arena_bytes / 1024:.1f} KiB, peak at "
            f"layer '{peak.name}' ({peak.op}, {', '.join(peak.source)}), plus {stack // 1024} KiB stack) but board "
            f"'{b.name}' has {ram_budget // 1024} KiB; choose a board with more RAM or shrink that layer")
    if flash > flash_budget:
        big = max(ctx.report.get("weight_bytes_per_layer", {"?": 0}).items(), key=lambda kv: kv[1])
        raise EdgeqError(
            f"model needs about {flash / 1024:.1f} KiB of flash ({weight_bytes / 1024:.1f} KiB of float16 weights, "
            f"largest layer '{big[0]}' {big[1] / 1024:.1f} KiB, plus ~{CODE_RESERVE // 1024} KiB code) but board "
            f"'{b.name}' has {flash_budget // 1024} KiB; choose a board with more flash or a smaller model")
    return {"ram_estimate": ram, "flash_estimate": flash, "ram_budget": ram_budget, "flash_budget": flash_budget,
            "arena_bytes": plan.arena_bytes, "stack_bytes": stack, "peak_layer": peak.name}


_LINE = {"V": re.compile(r"[0-9a-f]{8}"), "L": re.compile(r"([0-9a-f]{4}) ([0-9a-f]{16}) ([0-9a-f]{16}) ([0-9a-f]{8})"),
         "O": re.compile(r"[0-9a-f]*"), "R": re.compile(r"([0-9a-f]{16}) ([0-9a-f]{16})"),
         "DONE": re.compile(r"([0-9a-f]{8})")}


def parse_run(text: str, program: Graph, n_vectors: int) -> dict[str, Any]:
    """Parse the harness's lines (see render.HARNESS_C) into output bits, counters and layer hashes."""
    n_out = int(np.prod(program.output.shape, dtype=np.int64))
    width = 2 * elem_bytes(program.output.format)
    outs, runs, layers, done = [], [], [], None
    cur: dict = {}
    for no, line in enumerate(text.splitlines(), 1):
        if not line.startswith("EDGEQ "):
            continue
        tag, _, rest = line[6:].strip().partition(" ")
        pat = _LINE.get(tag)
        m = pat.fullmatch(rest.strip()) if pat is not None else None
        if tag == "EXIT":
            continue
        if m is None:
            raise EdgeqError(f"firmware output line {no} is garbled: {line[:120]!r}; run `edgeq flash` again (a "
                             "noisy UART?) or rebuild the project")
        if tag == "V":
            cur = {}
            layers.append(cur)
        elif tag == "L":
            cur[int(m[1], 16)] = (int(m[2], 16), int(m[3], 16), int(m[4], 16))
        elif tag == "O":
            s = m[0]
            if len(s) != n_out * width:
                raise EdgeqError(f"firmware printed {len(s)} hex digits of outputs for vector {len(outs)}, expected "
                                 f"{n_out * width} ({n_out} outputs); was the firmware built from this project?")
            outs.append([int(s[i : i + width], 16) for i in range(0, len(s), width)])
        elif tag == "R":
            runs.append((int(m[1], 16), int(m[2], 16)))
        elif tag == "DONE":
            done = int(m[1], 16)
    if len(outs) != n_vectors or done != n_vectors or len(layers) != n_vectors:
        raise EdgeqError(f"firmware output is incomplete: {len(outs)} of {n_vectors} vectors, DONE line "
                         f"{'missing' if done is None else done}; last line: "
                         f"{(text.strip().splitlines() or ['(none)'])[-1][:200]}")
    bits = np.array(outs, dtype=np.uint16 if width == 4 else np.uint32)
    values = bits.view(np.float16 if width == 4 else np.float32).astype(np.float64)
    return {"bits": bits, "values": values.reshape((n_vectors,) + tuple(program.output.shape)),
            "runs": runs, "layers": layers}


def counters_json(parsed: dict[str, Any], program: Graph) -> dict[str, Any]:
    """``hw_counters.json``: instructions and cycles per inference (every vector) and, in debug builds, per layer."""
    runs = parsed["runs"]
    out: dict[str, Any] = {
        "total": {"instret": [r[0] for r in runs], "cycles": [r[1] for r in runs]},
        "note": "per inference; printing excluded" + ("; per-layer sums (debug build)" if parsed["layers"] and
                                                       parsed["layers"][0] else ""),
    }
    if parsed["layers"] and parsed["layers"][0]:
        rows = []
        step_of = {i: grp[-1] for grp in steps(program) for i in grp}
        for i, lay in enumerate(program.layers):
            row: dict[str, Any] = {"layer": lay.name, "op": lay.op, "macs": lay.macs}
            if step_of[i] != i:  # counted with the element-wise chain it runs in
                row.update({"fused_into": program.layers[step_of[i]].name, "instret": None, "cycles": None,
                            "hash": None})
            else:
                per = [v.get(i, (None, None, None)) for v in parsed["layers"]]
                row.update({"instret": [p[0] for p in per], "cycles": [p[1] for p in per],
                            "hash": [p[2] for p in per]})
            rows.append(row)
        out["layers"] = rows
    return out


def first_divergence(parsed: dict[str, Any], program: Graph, x: np.ndarray) -> dict[str, Any] | None:
    """The first layer whose output hash differs from the emulator's (debug builds), or None."""
    if not parsed["layers"] or not parsed["layers"][0]:
        return None
    _, trace = emulate(program, x, trace=True)
    for grp in steps(program):
        i = grp[-1]
        lay = program.layers[i]
        want = layer_hash(trace[lay.name], program.tensors[lay.output].format)
        got = np.array([v.get(i, (0, 0, -1))[2] for v in parsed["layers"]], dtype=np.int64).astype(np.uint64)
        bad = np.flatnonzero(got != want)
        if bad.size:
            return {"layer": lay.name, "op": lay.op, "onnx": list(lay.source), "index": i,
                    "vectors": [int(v) for v in bad[:10]], "mismatching_vectors": int(bad.size)}
    return {"layer": None, "note": "every layer hash agrees; only the outputs differ"}


# ---------------------------------------------------------------------------------------------------------- steps


def step_load(ctx: McuContext) -> None:
    ctx.graph = load(ctx.cfg.model, getattr(ctx.cfg, "input_format", None), getattr(ctx.cfg, "precision", None))
    write_model(ctx.cfg, ctx.tmp / "model.onnx")


def step_lower(ctx: McuContext) -> None:
    cfg = ctx.cfg
    trees = mst.select(ctx.graph, cfg.mst, cfg.mst_depth, cfg.mst_layers)
    ctx.report["mst"] = mst.build_report(ctx.graph, trees, cfg.mst_depth, cfg.mst_layers)
    low = lower_fp16(ctx.graph, ctx.opts, trees)
    ctx.program, ctx.conversions = low.graph, low.conversions
    ctx.report["fp16_overflow_risk"] = low.overflow_risk
    save_graph(ctx.program, ctx.tmp / "program.npz")


def step_plan(ctx: McuContext) -> None:
    scratch = {k: 2 * v for k, v in scratch_elems(ctx.program, ctx.opts.lanes).items()}
    ctx.plan = plan_memory(ctx.program, scratch)


def step_vectors(ctx: McuContext) -> None:
    g = ctx.graph
    ctx.x = load_vectors(ctx.cfg.vectors, ctx.cfg.n_vectors, g.input.shape, ctx.cfg.seed, _first_quantizer(g))
    if ctx.x.ndim != len(g.input.shape) + 1 or tuple(ctx.x.shape[1:]) != tuple(g.input.shape):
        raise EdgeqError(f"{ctx.cfg.vectors}: test vectors have shape {ctx.x.shape}; the model input "
                         f"'{g.input.name}' expects (n, {', '.join(map(str, g.input.shape))})")
    ctx.expected = emulate(ctx.program, ctx.x)
    vdir = ctx.tmp / "vectors"
    vdir.mkdir()
    np.save(vdir / "input.npy", ctx.x)
    np.save(vdir / "expected.npy", ctx.expected)


def step_reference(ctx: McuContext) -> None:
    """The float32 model's own answer on the vectors (QONNX execute_onnx) and the FP16 program's distance to it."""
    ctx.report["qonnx_reference"] = store_reference(ctx.graph, ctx.cfg.model, ctx.x, ctx.expected,
                                                    ctx.tmp / "vectors")
    ctx.report["input_saturation"] = saturation_warning(ctx.graph, ctx.x)


def step_render(ctx: McuContext) -> None:
    src = ctx.tmp / "src"
    src.mkdir()
    r = render(ctx.program, ctx.plan, ctx.opts.lanes)
    ctx.report["weight_bytes_per_layer"] = r.weight_bytes_per_layer
    ctx.report["budget"] = check_budget(ctx, len(r.weights) + r.const_bytes)
    (src / "model.c").write_text(r.model_c)
    (src / "model.h").write_text(r.model_h)
    (src / "weights.bin").write_bytes(r.weights)
    (src / "weights.S").write_text(WEIGHTS_S)
    (src / "vectors.bin").write_bytes(np.ascontiguousarray(ctx.x, dtype=np.float32).tobytes())
    (src / "vectors.S").write_text(VECTORS_S)
    (src / "harness.c").write_text(HARNESS_C % {"n_vectors": len(ctx.x)})


def _defines(ctx: McuContext) -> list[str]:
    d = [f"EDGEQ_LANES={ctx.opts.lanes}", f"EDGEQ_FUSED={int(ctx.opts.fused)}"]
    return d + (["EDGEQ_DEBUG"] if ctx.cfg.trace else [])


def _sources(root: Path) -> list[Path]:
    src = root / "src"
    return [src / "model.c", src / "harness.c", src / "weights.S", src / "vectors.S"]


def _kernel_files() -> tuple[list[Path], Path]:
    """The kernel sources and their include folder (package data: real files in an installed package)."""
    return [Path(str(p)) for p in kernels.c_sources()], Path(str(kernels.firmware_common()))


def step_firmware(ctx: McuContext) -> None:
    ksrc, inc = _kernel_files()
    sizes = toolchain.compile_elf(ctx.board, [*_sources(ctx.tmp), *ksrc], ctx.tmp / "firmware.elf",
                                  include_dirs=[ctx.tmp / "src", inc], defines=_defines(ctx), workdir=ctx.tmp / "src",
                                  tmpdir=ctx.scratch)
    shutil.rmtree(ctx.tmp / "src" / "edgeq_fw", ignore_errors=True)
    ctx.report["firmware"] = {k: v for k, v in sizes.items() if k != "elf"}


def step_host(ctx: McuContext) -> None:
    """The same C compiled for the host and run on the test vectors: a fast, bit-exact check of the kernels."""
    host = ctx.tmp / "host"
    host.mkdir()
    ksrc, inc = _kernel_files()
    exe = toolchain.host_compile([*_sources(ctx.tmp), *ksrc], host / "model_host",
                                 include_dirs=[ctx.tmp / "src", inc], defines=_defines(ctx), tmpdir=ctx.scratch)
    t = time.perf_counter()
    ran = proc.run([exe], cwd=host, tmpdir=ctx.scratch, timeout=1800)
    if ran.returncode != 0:
        raise BuildFailed(f"the host build exited with code {ran.returncode}: {ran.stderr.strip()[-300:]}")
    parsed = parse_run(ran.stdout, ctx.program, len(ctx.x))
    exe.unlink()
    got, want = parsed["bits"], _bits(ctx.expected, ctx.program)
    # x86 makes negative default NaNs where RISC-V (and the emulator) make canonical +qNaN: same NaN here
    nan = np.isnan(parsed["values"].reshape(got.shape)) & np.isnan(ctx.expected.reshape(got.shape))
    bad = (got != want) & ~nan
    res: dict[str, Any] = {"status": "pass" if not bad.any() else "fail", "vectors": int(len(ctx.x)),
                           "values_compared": int(got.size), "mismatches": int(bad.sum()),
                           "seconds": round(time.perf_counter() - t, 2),
                           "compiler": "x86-64 clang -Xclang -ffloat16-excess-precision=none (or gcc "
                                       "-fexcess-precision=16), -O2 -ffp-contract=off"}
    if bad.any():
        s, j = (int(v) for v in np.argwhere(bad)[0])
        res["first_mismatch"] = {"vector": s, "output": j, "host_bits": f"{int(got[s, j]):#x}",
                                 "emulator_bits": f"{int(want[s, j]):#x}"}
        res["first_divergence"] = first_divergence(parsed, ctx.program, ctx.x)
    ctx.report["host_check"] = res


def _bits(values: np.ndarray, program: Graph) -> np.ndarray:
    n = values.shape[0]
    if isinstance(program.output.format, Float16):
        return values.reshape(n, -1).astype(np.float16).view(np.uint16)
    return values.reshape(n, -1).astype(np.float32).view(np.uint32)


# --------------------------------------------------------------------------------------------------------- report


def qonnx_distance(ctx: McuContext) -> dict[str, Any]:
    """How far the MCU's FP16 results are from the float32 QONNX model on the test vectors (the reference step),
    and where the FP16 contract rounds."""
    out = dict(ctx.report.get("qonnx_reference") or {"status": "not run"})
    out["where"] = ("FP16 accumulation: every multiply-add rounds to float16 unless the partial sums stay exact "
                    "(integer grids with |sum| <= 2048 units); float16 storage of weights, biases and activations "
                    "whose grids are not exactly float16 (listed in rounded_conversions). Float glue runs in "
                    "float32 exactly as QONNX.")
    out["rounded_conversions"] = [c.to_dict() for c in ctx.conversions if not c.exact]
    return out


def write_reports(ctx: McuContext) -> None:
    g, b, plan = ctx.program, ctx.board, ctx.plan
    layers = []
    for lay in g.layers:
        y = g.tensors[lay.output]
        layers.append({"name": lay.name, "op": lay.op, "onnx": lay.source, "output_format": str(y.format),
                       "shape": list(y.shape), "macs": lay.macs, "contract": lay.contract.to_dict(),
                       "weight_bytes": ctx.report["weight_bytes_per_layer"].get(lay.name, 0),
                       "arena_offset": plan.offset(lay.output) if lay.output in plan.root else None,
                       "live_bytes": plan.live_bytes[g.layers.index(lay)]})
    ctx.report.update({
        "edgeq_version": __version__, "backend": "mcu", "board": b.name, "isa": b["isa"], "model": str(ctx.cfg.model),
        "options": {"fused": ctx.opts.fused, "lanes": ctx.opts.lanes, "debug": bool(ctx.cfg.trace)},
        "layers": layers, "total_macs": int(sum(lay.macs for lay in g.layers)),
        "memory": {**plan.to_dict(g), "peak_ram_bytes": ctx.report["firmware"]["ram_used"],
                   "flash_bytes": ctx.report["firmware"]["flash_used"]},
        "qonnx_distance": qonnx_distance(ctx), "timings_s": ctx.timings,
    })
    (ctx.tmp / "report.json").write_text(json.dumps(ctx.report, indent=2, default=str))
    (ctx.tmp / "report.md").write_text(report_md(ctx.report))


def report_md(r: dict) -> str:
    h, fw, q = r["host_check"], r["firmware"], r["qonnx_distance"]
    out = [f"# edgeq build: {r['model']} for {r['board']} ({r['isa']})", "",
           f"**Host check** (the same C on x86-64): {h['status']}, {h['mismatches']} mismatching outputs over "
           f"{h['vectors']} vectors, bit for bit against edgeq.emulate.", "",
           f"**Memory:** RAM {fw['ram_used']:,} of {fw['ram_budget']:,} bytes (arena {r['memory']['arena_bytes']:,}, "
           f"peak at {r['memory']['peak_layer']}, stack {fw['stack']:,}); flash {fw['flash_used']:,} of "
           f"{fw['flash_budget']:,} bytes.", "",
           f"**Arithmetic:** {'fma16' if r['options']['fused'] else 'mul16 + add16'}, {r['options']['lanes']} "
           f"lane(s). Against the float32 QONNX model (execute_onnx) on the test vectors: {reference_text(q)}.", "",
           "| layer | op | ONNX | out | MACs | weight bytes |", "|---|---|---|---|---|---|"]
    for lay in r["layers"]:
        out.append(f"| {lay['name']} | {lay['op']} | {', '.join(lay['onnx'])} | {lay['output_format']} | "
                   f"{lay['macs']:,} | {lay['weight_bytes']:,} |")
    return "\n".join(out) + "\n"


def build(cfg, say: Callable[[str], None] = lambda s: None, fma: bool = True, simd: str = "auto") -> dict:
    """Run every step; returns the report. Raises EdgeqError (bad input) or BuildFailed (host check mismatch)."""
    board = get_board(cfg.board)
    if board.kind != "mcu":  # pragma: no cover - the CLI dispatches on the board kind
        raise EdgeqError(f"board '{board.name}' is not an MCU board")
    toolchain.find_compiler()  # fail early, with an install hint, when clang is missing
    with atomic_project(Path(cfg.out), cfg.force, Path(cfg.model), board.name) as (tmp, scratch):
        ctx = McuContext(cfg, board, tmp, options_for(board, fma, simd), scratch=scratch)
        for name, fn in (("load", step_load), ("lower", step_lower), ("plan", step_plan), ("vectors", step_vectors),
                         ("reference", step_reference), ("render", step_render), ("firmware", step_firmware),
                         ("host", step_host)):
            say(name)
            t = time.perf_counter()
            fn(ctx)
            ctx.timings[name] = round(time.perf_counter() - t, 2)
        info = {"edgeq_version": __version__, "backend": "mcu", "board": board.name, "elf": "firmware.elf",
                "program": "program.npz", "vectors": {"input": "vectors/input.npy",
                                                      "expected": "vectors/expected.npy", "count": int(len(ctx.x))},
                "options": {"fused": ctx.opts.fused, "lanes": ctx.opts.lanes, "debug": bool(cfg.trace)}}
        (tmp / "build.json").write_text(json.dumps(info, indent=2))
        write_reports(ctx)
    if ctx.report["host_check"]["status"] != "pass":
        h = ctx.report["host_check"]
        div = (h.get("first_divergence") or {}).get("layer") or "? (rebuild with --trace for per-layer hashes)"
        raise BuildFailed(f"the host build differs from the emulator in {h['mismatches']} outputs; first diverging "
                          f"layer {div}; see {cfg.out}/report.md")
    return ctx.report
