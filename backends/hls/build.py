"""``edgeq build`` for FPGA boards: a list of named steps over one build context.

Steps: load (and MST selection) -> lower -> cost -> vectors -> render -> csim -> tool files -> synth (optional) ->
report. The project is written into a temporary directory next to the destination and renamed
into place at the end, so a failed build never leaves a half-written directory. The C simulation
(g++ against the ap_types headers of the installed hls4ml wheel) runs on every build and must be
bit-identical to :func:`edgeq.emulate`; a mismatch fails the build (exit code 1) and the report
names the first diverging layer, the element, both values and their bit patterns.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq import __version__, mst
from edgeq.backends import proc
from edgeq.backends.common import atomic_project, load_vectors
from edgeq.backends.compare import same_bits
from edgeq.board import Board, get_board
from edgeq.data import saturation_warning
from edgeq.emulate import emulate
from edgeq.errors import EdgeqError
from edgeq.ingest import load
from edgeq.precision import write_model
from edgeq.reference import reference_text, store_reference

TOP = "edgeq_top"


class BuildFailed(Exception):
    """The build ran but verification failed (exit code 1); the report says why."""


@dataclass
class BuildConfig:
    model: Path
    board: str
    out: Path
    vectors: Path | None = None
    n_vectors: int = 64
    seed: int = 0
    force: bool = False
    parallel: int = 8
    synth: bool = False
    allow_over_budget: bool = False
    trace: bool = False
    #: MST reordering of binary layers (edgeq.mst.select): on for every XNOR layer, or only the named ones
    mst: bool = False
    mst_depth: int | None = None
    mst_layers: tuple[str, ...] = ()
    #: the graph input's format (``--input-format``; edgeq.ingest.load), None: the model's own (or float)
    input_format: str | None = None
    #: a float model's formats (``--default-format``/``--precision``/``--calibrate``; edgeq.precision), None: none
    precision: Any = None
    jobs: int = max(1, min(2, os.cpu_count() or 1))


@dataclass
class BuildContext:
    cfg: BuildConfig
    board: Board
    tmp: Path
    say: Callable[[str], None]
    graph: Any = None
    #: edgeq.mst.select's {layer name: (tree, channel bits)}: the binary layers built MST-reordered
    trees: dict = field(default_factory=dict)
    design: Any = None
    hls: dict = field(default_factory=dict)
    cost: dict | None = None
    x: np.ndarray | None = None
    expected: np.ndarray | None = None
    trace: dict | None = None
    report: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    scratch: Path | None = None  # the tools' TMPDIR, removed with the build's staging directory


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def load_and_select(cfg: BuildConfig) -> tuple[Any, dict]:
    """(graph, MST trees): the model loaded and :func:`edgeq.mst.select` run on it. Both raise EdgeqError on bad
    input, so :func:`build` calls this before it writes anything."""
    graph = load(cfg.model, cfg.input_format, cfg.precision)
    return graph, mst.select(graph, cfg.mst, cfg.mst_depth, cfg.mst_layers)


def typed_input(graph) -> dict | None:
    """The format the graph input was typed with (--input-format or its annotation), for build.json: `edgeq compare`
    loads the model with it again."""
    first = graph.layers[0] if graph.layers else None
    return graph.tensors[first.output].format.to_dict() if first is not None and first.attrs.get("typed_input") \
        else None


def step_load(ctx: BuildContext) -> None:
    if ctx.graph is None:
        ctx.graph, ctx.trees = load_and_select(ctx.cfg)
    write_model(ctx.cfg, ctx.tmp / "model.onnx")


def step_lower(ctx: BuildContext) -> None:
    from edgeq.backends.hls.lower import lower

    if ctx.trees:
        ctx.design = lower(ctx.graph, ctx.cfg.parallel, ctx.trees)
    else:  # the two-argument call, which tests' planted-bug wrappers of lower() also accept
        ctx.design = lower(ctx.graph, ctx.cfg.parallel)


def cost_rows(design) -> list[dict]:
    """The per-layer description the cost model takes."""
    from edgeq.backends.hls import cost
    from edgeq.backends.hls.cost import BINARY_OPS

    rows = []
    for lay in design.layers:
        x = design.tensors[lay.inputs[0]]
        y = design.tensors[lay.output]
        if lay.op in BINARY_OPS:
            a = lay.attrs
            cout, k = int(a["channels"]), int(a["k"])
            mst = lay.op.startswith("Mst")
            taps = int(np.prod(a["kernel_shape"])) if "kernel_shape" in a else 1
            rows.append({
                "name": lay.name, "op": lay.op, "kernel": a["xnor_kernel"], "in_bits": x.width, "w_bits": 1,
                "acc_bits": y.width, "out_bits": y.width, "macs": int(a.get("macs", 0)),
                "channels": cout, "k": k, "pixels": y.elements // cout, "in_elements": x.elements,
                "out_elements": y.elements, "parallel": taps,
                "xnor_bits": int(a["roots"]) * k + int(a["diff"]) if mst else cout * k,
                "roots": int(a["roots"]) if mst else cout, "diff": int(a["diff"]) if mst else 0,
            })
            continue
        w = lay.params.get("weight")
        thr = lay.params.get("thresholds")
        kernel = None
        if lay.op == "Conv2d":
            kernel = list(w.shape[2:])
        elif lay.op in ("MaxPool", "SumPool"):
            kernel = list(lay.attrs["kernel"])
        parallel = 1
        if lay.op == "Conv2d":
            parallel = int(np.prod(kernel))
        elif lay.op == "Dense":
            parallel = max(1, min(int(w.shape[0]), 8))
        elif lay.op == "Threshold":  # a comparator row up to 15 levels, else a binary search
            levels = int(thr.shape[1])
            parallel = levels if levels <= 15 else max(1, levels.bit_length())
        rows.append({
            "name": lay.name, "op": lay.op, "in_bits": x.width,
            "w_bits": int(lay.attrs.get("w_bits", 0)), "acc_bits": y.width if lay.op in ("Conv2d", "Dense")
            else x.width, "out_bits": y.width, "macs": int(lay.attrs.get("macs", 0)),
            "weights": int(w.size) if w is not None else 0,
            "weight_bits": int(w.size) * int(lay.attrs.get("w_bits", 0)) if w is not None else 0,
            "in_elements": x.elements, "out_elements": y.elements, "channels": y.shape[0] if y.shape else 1,
            "levels": int(thr.shape[1]) if thr is not None else 0, "parallel": parallel, "kernel": kernel,
        })
        if lay.op in ("Conv2d", "Dense"):  # minifloat operands: the significand product and shift of cost.py
            ir = design.graph.layers[[g.name for g in design.graph.layers].index(lay.ir_layers[-1])]
            for key, fmt in (("in_minifloat", design.graph.tensors[ir.inputs[0]].format),
                             ("w_minifloat", ir.weight_format)):
                mf = cost.minifloat_operand(fmt)
                if mf is not None:
                    rows[-1][key] = mf
        elif lay.op == "Rescale":
            rows[-1].update(channels=int(lay.attrs["channels"]), has_bias="fbias" in lay.params, out_bits=32)
        elif lay.op == "Decode":
            rows[-1].update(exp_range=int(cost.minifloat_operand(x.format)["exp_range"]))
        if lay.attrs.get("shift_add"):  # multiplier-free: shifts and adds, no DSP (cost.multiplier_cost)
            rows[-1].update(shift_add=True, shift_terms=int(lay.attrs["kd"]))
        if lay.op == "ConstOp":
            c = lay.params["const"]
            rows[-1].update(mul=lay.attrs["fn"] == "mul", w_bits=int(max(1, int(np.abs(c).max(initial=0)))
                                                                      .bit_length() + 1))
    return rows


def step_cost(ctx: BuildContext) -> None:
    try:
        from edgeq.backends.hls import cost
    except ImportError:  # pragma: no cover - the cost model ships with the backend
        ctx.cost = None
        return
    ctx.cost = cost.estimate(cost_rows(ctx.design), ctx.board)
    ctx.report["budget_warnings"] = cost.check_budget(ctx.cost, ctx.board, ctx.cfg.allow_over_budget)


def step_render(ctx: BuildContext) -> None:
    from edgeq.backends.hls.render import render

    ctx.hls = render(ctx.design, ctx.tmp, len(ctx.x))
    ctx.design.glue.save(ctx.tmp / "host")


def step_vectors(ctx: BuildContext) -> None:
    vdir = ctx.tmp / "vectors"
    vdir.mkdir()
    glue = ctx.design.glue
    ctx.x = load_vectors(ctx.cfg.vectors, ctx.cfg.n_vectors, ctx.graph.input.shape, ctx.cfg.seed,
                         None if len(glue.prefix.layers) > 1 else glue.in_format)
    ctx.expected, ctx.trace = emulate(ctx.graph, ctx.x, trace=True, raw_trace=True)
    codes = ctx.design.glue.encode(ctx.x)
    np.save(vdir / "input.npy", ctx.x)
    np.save(vdir / "expected.npy", ctx.expected)
    codes.tofile(vdir / "input_codes.bin")


def step_reference(ctx: BuildContext) -> None:
    """The model's own answer on the vectors (QONNX execute_onnx) and the emulator's distance to it."""
    ctx.report["qonnx_reference"] = store_reference(ctx.graph, ctx.cfg.model, ctx.x, ctx.expected,
                                                    ctx.tmp / "vectors")
    ctx.report["input_saturation"] = saturation_warning(ctx.graph, ctx.x)


def _run(cmd: list[str], cwd: Path, what: str, timeout: float = 1800, tmpdir: Path | None = None) -> None:
    res = proc.run(cmd, cwd=cwd, tmpdir=tmpdir, timeout=timeout)
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
        raise BuildFailed(f"{what} failed (exit {res.returncode}):\n{tail}")


def compile_csim(root: Path, hls: dict, jobs: int, extra: list[str] | None = None, tmpdir: Path | None = None) -> Path:
    """Compile every unit in parallel with g++ (``TMPDIR=tmpdir``) and link the test bench; returns the binary."""
    obj = root / "csim" / "obj"
    obj.mkdir(parents=True, exist_ok=True)
    inc = [f"-I{root / d}" for d in hls["include_dirs"]]
    flags = hls["cflags"] + (extra or [])
    units = hls["sources"] + [hls["testbench"]]

    def cc(src: str) -> Path:
        o = obj / (Path(src).stem + ".o")
        _run(["g++", *flags, *inc, "-c", str(root / src), "-o", str(o)], root, f"g++ {src}", tmpdir=tmpdir)
        return o

    # Largest units first: they bound the wall time.
    order = sorted(units, key=lambda s: -(root / s).stat().st_size)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        objs = list(pool.map(cc, order))
    exe = root / "csim" / "tb_edgeq"
    _run(["g++", *flags, *map(str, objs), "-o", str(exe)], root, "linking the test bench", tmpdir=tmpdir)
    return exe


def run_csim(root: Path, exe: Path, codes: np.ndarray, out_elems: int, out_dtype: str, jobs: int,
             trace_dir: Path | None = None, tmpdir: Path | None = None) -> np.ndarray:
    """Run the test bench over ``codes`` (n, elements), split across ``jobs`` processes."""
    n = len(codes)
    parts = [p for p in np.array_split(np.arange(n), jobs if trace_dir is None else 1) if len(p)]
    work = root / "csim"
    runs = []
    for k, idx in enumerate(parts):
        fin, fout = work / f"in{k}.bin", work / f"out{k}.bin"
        np.ascontiguousarray(codes[idx]).tofile(fin)
        args = [str(exe), str(fin), str(len(idx)), str(fout)] + ([str(trace_dir)] if trace_dir else [])
        runs.append((args, fout))
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        done = list(pool.map(lambda r: proc.run(r[0], cwd=root, tmpdir=tmpdir, timeout=3600), runs))
    outs = []
    for res, (_, fout) in zip(done, runs, strict=True):
        if res.returncode != 0:
            raise BuildFailed(f"C simulation failed (exit {res.returncode}): {res.stderr[-500:]}")
        outs.append(np.fromfile(fout, dtype=out_dtype).reshape(-1, out_elems))
    return np.concatenate(outs)


def compare_traces(ctx: BuildContext, trace_dir: Path) -> list[dict]:
    """Every traced layer's csim codes against the emulator's (see :func:`compare.trace_rows`)."""
    from edgeq.backends.compare import trace_rows

    rows = trace_rows(ctx.design, ctx.hls["layer_names"], ctx.graph, ctx.trace, len(ctx.x), trace_dir)
    return [r for r in rows if r["status"] == "compared"]


def first_divergence(rows: list[dict]) -> dict | None:
    """The first layer (in execution order) whose trace differs, flattened for the report."""
    r = next((r for r in rows if r["mismatching_elements"]), None)
    if r is None:
        return None
    f = r["first"]
    return {"layer": r["layer"], "op": r["op"], "onnx": r["onnx"], "format": r["format"], "sample": f["vector"],
            **{k: v for k, v in f.items() if k != "vector"}, "mismatching_elements": r["mismatching_elements"]}


def step_csim(ctx: BuildContext) -> None:
    t0 = time.perf_counter()
    exe = compile_csim(ctx.tmp, ctx.hls, ctx.cfg.jobs, tmpdir=ctx.scratch)
    t_compile = time.perf_counter() - t0
    d = ctx.design
    codes = d.glue.encode(ctx.x)
    out_t = d.tensors[d.output]
    out_codes = run_csim(ctx.tmp, exe, codes, out_t.elements, out_t.dtype, ctx.cfg.jobs, tmpdir=ctx.scratch)
    got = d.glue.decode(out_codes)
    np.save(ctx.tmp / "csim" / "outputs.npy", got)
    mismatches = int(np.sum(~same_bits(got, ctx.expected, signed_zero=False)))  # codes: zero has no sign
    csim = {"status": "pass" if mismatches == 0 else "fail", "vectors": int(len(ctx.x)), "mismatches": mismatches,
            "outputs_compared": int(got.size), "compile_seconds": round(t_compile, 2),
            "seconds": round(time.perf_counter() - t0, 2), "compiler": "g++", "ap_types": "hls4ml wheel"}
    if mismatches or ctx.cfg.trace:  # debug build: trace every layer and compare each with the emulator
        trace_dir = ctx.tmp / "csim" / "trace"
        trace_dir.mkdir(exist_ok=True)
        run_csim(ctx.tmp, exe, codes, out_t.elements, out_t.dtype, 1, trace_dir, ctx.scratch)
        rows = compare_traces(ctx, trace_dir)
        csim["layers"] = [{k: r[k] for k in ("layer", "op", "mismatching_elements", "elements")} for r in rows]
        csim["first_divergence"] = first_divergence(rows)
    ctx.report["csim"] = csim


def step_tool_files(ctx: BuildContext, info: dict) -> None:
    try:
        from edgeq.backends.hls.project import write_tool_files
    except ImportError:  # pragma: no cover - ships with the backend
        return
    write_tool_files(ctx.tmp, info)


def step_synth(ctx: BuildContext) -> None:
    tools = {name: shutil.which(name) for name in ("vitis_hls", "vivado")}
    rep: dict[str, Any] = {"found": {k: bool(v) for k, v in tools.items()}}
    if not ctx.cfg.synth:
        rep["status"] = "skipped: --synth not given"
    elif not tools["vitis_hls"]:
        rep["status"] = "skipped: vitis_hls is not on PATH; run `make hls` (and `make bitstream`) where it is"
    else:
        _run(["vitis_hls", "-f", "scripts/hls.tcl"], ctx.tmp, "vitis_hls", timeout=6 * 3600, tmpdir=ctx.scratch)
        rep["status"] = "ran vitis_hls"
        rep.update(parse_hls_reports(ctx.tmp))
        if tools["vivado"]:
            _run(["vivado", "-mode", "batch", "-source", "scripts/vivado.tcl"], ctx.tmp, "vivado", timeout=12 * 3600,
                 tmpdir=ctx.scratch)
            rep["status"] += " and vivado"
    ctx.report["tools"] = rep


def parse_hls_reports(root: Path) -> dict:
    """Utilisation and latency from Vitis HLS's csynth.xml, when it exists."""
    import xml.etree.ElementTree as ET

    found = list(root.glob("**/syn/report/csynth.xml"))
    if not found:
        return {"hls_report": "csynth.xml not found"}
    r = ET.parse(found[0]).getroot()
    area = r.find("AreaEstimates/Resources")
    lat = r.find("PerformanceEstimates/SummaryOfOverallLatency")
    out: dict[str, Any] = {"hls_report": str(found[0].relative_to(root))}
    if area is not None:
        out["utilisation"] = {c.tag: int(c.text) for c in area if c.text and c.text.isdigit()}
    if lat is not None:
        out["latency"] = {c.tag: c.text for c in lat}
    return out


# ---------------------------------------------------------------------------------------------
# Reports and the driver
# ---------------------------------------------------------------------------------------------


def build_info(ctx: BuildContext) -> dict:
    d = ctx.design
    i, o = d.tensors[d.input], d.tensors[d.output]
    b = ctx.board
    return {
        "edgeq_version": __version__, "top": TOP,
        "board": {"name": b.name, "part": b["part"], "clock_mhz": b["clock_mhz"], "description": b.description,
                  "ps": b.get("ps", "zynq_ultra_ps_e" if not b["part"].startswith("xc7z") else "processing_system7")},
        "model": "model.onnx",
        "input_format": typed_input(ctx.graph),
        "input": {"shape": list(i.shape), "elements": i.elements, "ctype": i.ctype, "dtype": i.dtype,
                  "format": str(i.format)},
        "output": {"shape": list(o.shape), "elements": o.elements, "ctype": o.ctype, "dtype": o.dtype,
                   "format": str(o.format)},
        "hls": {k: v for k, v in ctx.hls.items() if k != "layer_names"},
        "vectors": {"input": "vectors/input.npy", "codes": "vectors/input_codes.bin",
                    "expected": "vectors/expected.npy", "count": int(len(ctx.x))},
        "host": "host",
    }


def write_reports(ctx: BuildContext) -> None:
    d = ctx.design
    b = ctx.board
    layers = []
    cost_by_name = {r["name"]: r for r in (ctx.cost or {}).get("layers", [])}
    for lay in d.layers:
        x, y = d.tensors[lay.inputs[0]], d.tensors[lay.output]
        row = {"name": lay.name, "op": lay.op, "onnx": lay.source, "ir_layers": lay.ir_layers,
               "input_format": str(x.format), "output_format": str(y.format), "shape": list(y.shape),
               "macs": int(lay.attrs.get("macs", 0))}
        if lay.op in ("Conv2d", "Dense"):
            row["accumulator"] = str(y.format)
            row["weight_bits"] = int(lay.attrs.get("w_bits", 0))
            mf = {k: f"e{v[0]}m{v[1]}" for k, v in (("input", lay.attrs.get("x_mf")), ("weights",
                                                        lay.attrs.get("w_mf"))) if v and v[0]}
            if mf:  # minifloat operands stay codes: decoded to fixed point, exact products (edgeq_minifloat.h)
                row["minifloat_operands"] = mf
            if lay.attrs.get("rescaled"):  # float32 scales factored out: exact accumulator, then a declared rescale
                row["accumulator_bits"] = int(lay.attrs["acc_bits"])
                row["accumulator_bound"] = "worst case n_x + n_w + ceil(log2 K) (exact in any order)"
            if lay.attrs.get("multiplier_free"):  # edgeq.qfx pow2 / K-hot weights: shift-add products, no DSP
                row["multiplier_free"] = {**lay.attrs["multiplier_free"], "shift_add_terms": int(lay.attrs["kd"])}
        if "xnor_kernel" in lay.attrs:  # a binary layer: XNOR-popcount or MST-reordered (edgeq_xnor.h)
            row["kernel"] = lay.attrs["xnor_kernel"]
            row["accumulator"] = str(y.format)
            row["weight_bits"] = 1
            row["output_shift"] = int(lay.attrs["shift"])
            if "mst_stats" in lay.attrs:
                row["mst"] = dict(lay.attrs["mst_stats"])
        if lay.op == "Rescale":
            row["contract"] = "y = f32(f32(A) * m[c])" + (" + b[c] (float32)" if "fbias" in lay.params else "") + \
                ", m[c] = f32(lsb_x * lsb_w[c]); the emulator's mac_rescale"
        if lay.op == "Threshold":
            row["thresholds_per_channel"] = int(lay.attrs["levels"])
            row["thresholds_exhaustively_verified"] = bool(lay.attrs["exhaustive"])
        if lay.name in cost_by_name:
            row["estimate"] = {k: v for k, v in cost_by_name[lay.name].items() if k != "name"}
        layers.append(row)
    glue = d.glue
    ctx.report["mst"] = mst.build_report(ctx.graph, ctx.trees, ctx.cfg.mst_depth, ctx.cfg.mst_layers)
    ctx.report.update({
        "edgeq_version": __version__, "board": b.name, "part": b["part"], "clock_mhz": b["clock_mhz"],
        "backend": "fpga-hls", "model": str(ctx.cfg.model), "layers": layers,
        "host": {
            "prefix": [f"{x.op} ({', '.join(x.source)})" for x in glue.prefix.layers],
            "tail": [f"{x.op} ({', '.join(x.source)})" for x in glue.tail.layers],
            "note": "prefix and tail run on the host (PYNQ driver, edgeq compare) in float32 exactly as edgeq.emulate",
        },
        "totals": (ctx.cost or {}).get("totals"), "capacity": (ctx.cost or {}).get("capacity"),
        "utilisation": (ctx.cost or {}).get("utilisation"), "timings_s": ctx.timings,
    })
    ctx.report.setdefault("tools", {"status": "not run"})
    (ctx.tmp / "report.json").write_text(json.dumps(ctx.report, indent=2, default=str))
    (ctx.tmp / "report.md").write_text(report_md(ctx.report))


def report_md(r: dict) -> str:
    cs = r.get("csim", {})
    out = [f"# edgeq build: {r['model']} for {r['board']} ({r['part']} @ {r['clock_mhz']} MHz)", "",
           f"**C simulation:** {cs.get('status', '?')}: {cs.get('mismatches', '?')} mismatching outputs over "
           f"{cs.get('vectors', '?')} vectors ({cs.get('outputs_compared', '?')} values compared bit for bit with "
           f"edgeq.emulate), {cs.get('seconds', '?')} s.", "",
           f"**Against the model** (QONNX execute_onnx on the same vectors): the emulator is "
           f"{reference_text(r.get('qonnx_reference'))}.", ""]
    div = cs.get("first_divergence")
    if div:
        out += [f"First diverging layer: **{div['layer']}** ({div['op']}, ONNX {', '.join(div['onnx'])}), sample "
                f"{div['sample']}, element {div['element']}: csim {div['csim_value']} ({div['csim_bits']}) vs "
                f"emulator {div['emulator_value']} ({div['emulator_bits']}).", ""]
    mst = r.get("mst") or {}
    if mst.get("layers"):
        kinds = [row["kernel"] for row in mst["layers"]]
        depth = mst.get("max_depth")
        out += [f"**Binary layers:** {kinds.count('xnor')} XNOR-popcount, {kinds.count('mst')} MST-reordered"
                + (f" (depth bound {depth})" if depth else "") + "; figures in report.json `mst`.", ""]
    out += ["| layer | op | ONNX | in | out | MACs | DSP | LUT | BRAM36 |", "|---|---|---|---|---|---|---|---|---|"]
    for lay in r["layers"]:
        e = lay.get("estimate", {})
        out.append(f"| {lay['name']} | {lay['op']} | {', '.join(lay['onnx'])} | {lay['input_format']} | "
                   f"{lay['output_format']} | {lay['macs']:,} | {e.get('dsp', '')} | {e.get('lut', '')} | "
                   f"{e.get('bram36', '')} |")
    if r.get("totals"):
        t, c = r["totals"], r.get("capacity") or {}
        out += ["", "Estimated totals vs capacity: " + ", ".join(f"{k} {t[k]} / {c.get(k, '?')}" for k in t
                                                                  if k in c)]
    h = r["host"]
    out += ["", "Host side (float32, exactly as the emulator): prefix " + (", ".join(h["prefix"]) or "none") +
            "; tail " + (", ".join(h["tail"]) or "none") + ".", "", f"AMD tools: {r['tools'].get('status')}", ""]
    return "\n".join(out)


def build(cfg: BuildConfig, say: Callable[[str], None] = lambda s: None) -> dict:
    """Run every step; returns the report. Raises EdgeqError (bad input) or BuildFailed (csim mismatch)."""
    board = get_board(cfg.board)
    if board.kind != "fpga":
        raise EdgeqError(f"board '{board.name}' is a {board.kind} target; the MCU backend is not available yet. "
                         "Choose an FPGA board (see `edgeq boards`)")
    t_load = time.perf_counter()
    graph, trees = load_and_select(cfg)  # bad model or MST request: refused before anything is written
    t_load = time.perf_counter() - t_load
    with atomic_project(Path(cfg.out), cfg.force, Path(cfg.model), board.name) as (tmp, scratch):
        ctx = BuildContext(cfg, board, tmp, say, graph=graph, trees=trees, scratch=scratch)
        for name, fn in (("load", step_load), ("lower", step_lower), ("cost", step_cost), ("vectors", step_vectors),
                         ("reference", step_reference), ("render", step_render), ("csim", step_csim)):
            say(name)
            t = time.perf_counter()
            fn(ctx)
            ctx.timings[name] = round(time.perf_counter() - t + (t_load if name == "load" else 0.0), 2)
        info = build_info(ctx)
        (tmp / "build.json").write_text(json.dumps(info, indent=2))
        step_tool_files(ctx, info)
        step_synth(ctx)
        write_reports(ctx)
    out = Path(cfg.out)
    if ctx.report["csim"]["status"] != "pass":
        div = ctx.report["csim"].get("first_divergence") or {}
        raise BuildFailed(
            f"csim differs from the emulator in {ctx.report['csim']['mismatches']} outputs; first diverging layer "
            f"{div.get('layer', '?')} ({div.get('op', '?')}) element {div.get('element', '?')}: csim "
            f"{div.get('csim_bits', '?')} vs emulator {div.get('emulator_bits', '?')}; see {out}/report.md"
        )
    return ctx.report
