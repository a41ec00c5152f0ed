"""The ``edgeq`` command line.

Errors in the user's input print one line and exit with code 2 (``--debug`` shows the traceback).
Long steps show a rich progress bar on a terminal; ``--quiet`` or a non-terminal keeps them silent.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np

from edgeq import __version__
from edgeq.errors import EdgeqError
from edgeq.reference import reference_text


class _Ctx:
    def __init__(self, debug: bool, quiet: bool):
        self.debug = debug
        self.quiet = quiet or not sys.stderr.isatty()


@contextmanager
def _progress(ctx: _Ctx, what: str, total: int):
    """Yields a callable ``update(done, total)``; a rich bar on a terminal, nothing otherwise."""
    if ctx.quiet:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=True, console=_stderr_console()) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _save_npy_atomic(path: str, arr: np.ndarray) -> None:
    from edgeq.export import write_atomic

    write_atomic(path, lambda tmp: np.save(tmp, arr), ".npy")


def _write_dir_atomic(dest: str, files: dict[str, np.ndarray], inputs: list[str]) -> None:
    """Write ``files`` into a fresh directory next to ``dest``, then rename it into place. An existing ``dest``
    is replaced only if empty or written by edgeq (see edgeq.backends.common.check_replaceable)."""
    from edgeq.backends.common import atomic_dir

    with atomic_dir(Path(dest), True, inputs, {"trace_of": str(inputs[0])}, option="--trace") as (d, _):
        for name, arr in files.items():
            np.save(d / f"{name}.npy", arr)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeq")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """edgeq: quantized networks from Brevitas/QONNX to edge hardware, proved bit for bit."""
    ctx.obj = _Ctx(debug, quiet)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def boards(as_json: bool) -> None:
    """List the boards edgeq can target (boards/*.toml)."""
    from edgeq.board import list_boards

    bs = list_boards()
    if as_json:
        click.echo(json.dumps([{"name": b.name, **b.data} for b in bs], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="edgeq boards")
    for col in ("name", "kind", "target", "resources / budget", "description"):
        t.add_column(col)
    for b in bs:
        if b.kind == "fpga":
            r = b["resources"]
            target = f"{b['part']} @ {b['clock_mhz']:g} MHz"
            res = f"DSP {r['dsp']}, LUT {r['lut']}, FF {r['ff']}, BRAM36 {r['bram36']}"
        else:
            target = f"{b['isa']} ({b['runner']})"
            res = f"RAM {b['ram_kib']} KiB, flash {b['flash_kib']} KiB"
        t.add_row(b.name, b.kind, target, res, b.description)
    Console().print(t)


def _mst_options(fn):
    """--mst, --mst-depth and --mst-layers, shared by `inspect` and `build` (edgeq.mst.select checks them)."""
    fn = click.option("--mst-layers", default=None, metavar="A,B",
                      help="MST only for these binary layers (comma-separated layer names; implies --mst).")(fn)
    fn = click.option("--mst-depth", type=int, default=None, metavar="N",
                      help="Depth bound of the MST forest (>= 1; implies --mst; default unbounded: the exact MST). "
                      "Depth is latency: a child waits for its parent.")(fn)
    return click.option("--mst", "with_mst", is_flag=True,
                        help="MST reordering of every binary (XNOR) layer: each output channel is computed from a "
                        "similar one, storing only the differing weights.")(fn)


def _input_format_option(fn):
    """--input-format, and the float-model options folded into one ``precision`` argument (None: not asked)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, default_format=None, precision_file=None, calibrate=None, **kw):
        prec = None
        if default_format is not None or precision_file is not None or calibrate is not None:
            from edgeq.data import load_npy
            from edgeq.precision import precision_from

            x = load_npy(calibrate, "the calibration vectors") if calibrate is not None else None
            prec = precision_from(default_format, precision_file, x)
            if not prec:
                raise EdgeqError("--calibrate needs --default-format (the width and rounding to calibrate)")
        return fn(*args, precision=prec, **kw)

    for opt in (
        click.option("--calibrate", default=None, metavar="X.npy",
                     help="Float model: pick each default-format tensor's integer bits from these inputs so that "
                          "nothing saturates (the width and rounding stay the default's)."),
        click.option("--precision", "precision_file", default=None, metavar="FILE.toml",
                     help='Float model: per-layer formats, e.g. default = "ap_fixed<16,6>" and '
                          '[layer."fc1"] weight = "ap_fixed<8,2>" (keys input, weight, bias; names are ONNX nodes).'),
        click.option("--default-format", default=None, metavar="FORMAT",
                     help="Float model (no quantizers): quantize every MAC input, weight and bias to FORMAT, "
                          "e.g. ap_fixed<16,6> (hls4ml's default precision)."),
        click.option("--input-format", default=None, metavar="FORMAT",
                     help="Type the model's float input (a host-side quantizer in front of the graph), e.g. uint8, "
                          "uint8/255, int8*0.125, ap_fixed<16,6>, bipolar. Default: the input's QONNX annotation, "
                          "else float."),
    ):
        wrapper = opt(wrapper)
    return wrapper


def _input_saturation(g, x) -> None:
    from edgeq.data import saturation_warning

    w = saturation_warning(g, x)
    if w:
        click.echo(f"edgeq: warning: {w}", err=True)


def _mst_request(with_mst: bool, mst_depth: int | None, mst_layers: str | None) -> tuple[bool, tuple[str, ...]]:
    """(MST on?, the named layers) from the shared options; a depth bound < 1 is one error line."""
    if mst_depth is not None and mst_depth < 1:
        raise EdgeqError(f"--mst-depth: MST depth bound must be >= 1, got {mst_depth}")
    names = tuple(n.strip() for n in (mst_layers or "").split(",") if n.strip())
    return with_mst or mst_depth is not None or bool(names), names


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_mst_options
@_input_format_option
def inspect(model: str, as_json: bool, with_mst: bool, mst_depth: int | None, mst_layers: str | None,
            input_format: str | None, precision=None) -> None:
    """Per-layer table: op, source node, shapes, formats, MACs and weight bits (with --mst: MST figures)."""
    from edgeq.ingest import load

    with_mst, names = _mst_request(with_mst, mst_depth, mst_layers)
    g = load(model, input_format, precision)
    if with_mst:
        _inspect_mst(g, model, mst_depth, names, as_json)
        return
    rows = g.summary()
    if as_json:
        doc = {
            "model": str(model),
            "input": {"name": g.input.name, "shape": list(g.input.shape), "format": str(g.input.format)},
            "output": {"name": g.output.name, "shape": list(g.output.shape), "format": str(g.output.format)},
            "total_macs": sum(r["macs"] for r in rows),
            "total_weight_bits": sum(r["weight_bits"] for r in rows),
            "layers": rows,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{model}: input {g.input.name} {list(g.input.shape)}")
    for col in ("layer", "op", "source", "in shape", "out shape", "input fmt", "weight fmt", "output fmt",
                "MACs", "weight bits"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["layer"], r["op"], r["source"], " ".join(map(str, r["input_shape"])), str(r["output_shape"]),
                  ", ".join(r["input_format"]), r["weight_format"] or "", r["output_format"],
                  f"{r['macs']:,}" if r["macs"] else "", f"{r['weight_bits']:,}" if r["weight_bits"] else "")
    Console(width=max(160, shutil.get_terminal_size().columns)).print(t)
    click.echo(f"total MACs {sum(r['macs'] for r in rows):,}, weight bits {sum(r['weight_bits'] for r in rows):,}")


def _inspect_mst(g, model: str, max_depth: int | None, names: tuple[str, ...], as_json: bool) -> None:
    """`inspect --mst`: one row of MST figures per binary (XNOR) layer (edgeq.mst.stats), as `build --mst` uses."""
    from edgeq import mst

    ops = {lay.name: lay.op for lay in g.layers}
    rows = [{"layer": name, "op": ops[name], **mst.stats(tree)}
            for name, (tree, _) in mst.select(g, True, max_depth, names).items()]
    if as_json:
        click.echo(json.dumps({"model": str(model), "mst": {"max_depth": max_depth, "layers": rows}}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    bound = "unbounded" if max_depth is None else f"depth <= {max_depth}"
    t = Table(title=f"{model}: MST reordering ({bound})")
    for col in ("layer", "op", "Cout x K", "depth", "roots", "total distance / K(Cout-1)", "stored bits / dense",
                "compression", "ops / plain XNOR", "op ratio"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["layer"], r["op"], f"{r['channels']} x {r['K']}", str(r["depth"]), str(r["roots"]),
                  f"{r['total_distance']:,} / {r['dense_distance']:,}", f"{r['stored_bits']:,} / {r['dense_bits']:,}",
                  f"{r['compression']:.2f}x", f"{r['ops']:,} / {r['xnor_ops']:,}", f"{r['op_ratio']:.2f}x")
    Console(width=max(160, shutil.get_terminal_size().columns)).print(t)


@cli.command()
@click.argument("model")
@click.option("--input", "-i", "input_path", required=True, help="Float .npy shaped like the model input, batch first.")
@click.option("--output", "-o", "output_path", required=True, help="Where to write the decoded float outputs (.npy).")
@click.option("--trace", "trace_dir", default=None, help="Directory for one .npy per layer, named after the layer.")
@_input_format_option
@click.pass_obj
def emulate(ctx: _Ctx, model: str, input_path: str, output_path: str, trace_dir: str | None,
            input_format: str | None, precision=None) -> None:
    """Run MODEL bit-exactly on the inputs in --input."""
    from edgeq.emulate import emulate as run
    from edgeq.ingest import load

    g = load(model, input_format, precision)
    from edgeq.data import load_npy

    x = load_npy(input_path)
    _input_saturation(g, x)
    with _progress(ctx, f"emulating {len(x)} inputs", len(g.layers)) as update:
        res = run(g, x, trace=trace_dir is not None, progress=update)
    y, traced = res if trace_dir is not None else (res, None)
    if traced is not None:
        _write_dir_atomic(trace_dir, traced, [model, input_path])
    _save_npy_atomic(output_path, y)
    if not ctx.quiet:
        click.echo(f"wrote {output_path} {tuple(y.shape)}" + (f" and {len(traced)} layer traces in {trace_dir}"
                                                              if traced is not None else ""), err=True)


@cli.command()
@click.argument("model")
@click.option("--board", "-b", required=True, help="Target board (see `edgeq boards`).")
@click.option("--out", "-o", "out_dir", required=True, help="Project directory to create.")
@click.option("--vectors", default=None, help="Test inputs (.npy, or .npz with 'x'); default: a seeded random batch.")
@click.option("--n-vectors", default=64, show_default=True, type=click.IntRange(min=1),
              help="Size of the default random batch.")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace DIR if edgeq built it (an empty DIR needs no --force).")
@click.option("--synth", is_flag=True, help="Also run vitis_hls/vivado when they are on PATH.")
@click.option("--allow-over-budget", is_flag=True, help="Warn instead of failing when the estimate exceeds the board.")
@click.option("--trace", is_flag=True, help="Debug build. FPGA: trace every layer in csim and compare each with the "
              "emulator. MCU: per-layer instruction counts and output hashes (first diverging layer).")
@click.option("--mac", type=click.Choice(["fma", "mul-add"]), default="fma", show_default=True,
              help="MCU: FP16 multiply-accumulate as one fused fma16 or as mul16 then add16.")
@click.option("--simd", type=click.Choice(["auto", "off", "v2f16"]), default="auto", show_default=True,
              help="MCU: 2-lane FP16 SIMD kernels (auto: when the board has v2f16).")
@_mst_options
@_input_format_option
@click.pass_obj
def build(ctx: _Ctx, model: str, board: str, out_dir: str, vectors: str | None, n_vectors: int, seed: int,
          force: bool, synth: bool, allow_over_budget: bool, trace: bool, mac: str, simd: str, with_mst: bool,
          mst_depth: int | None, mst_layers: str | None, input_format: str | None, precision=None) -> None:
    """Build MODEL for BOARD into DIR and prove it bit-exact against the emulator.

    FPGA boards: an HLS project, checked by C simulation. MCU boards: FP16 C firmware, checked by the same C
    compiled for the host; run it on the board with `edgeq flash DIR`.
    """
    from edgeq.backends.hls.build import BuildConfig, BuildFailed
    from edgeq.backends.hls.build import build as run_build
    from edgeq.board import get_board

    with_mst, mst_names = _mst_request(with_mst, mst_depth, mst_layers)
    cfg = BuildConfig(model=Path(model), board=board, out=Path(out_dir), vectors=Path(vectors) if vectors else None,
                      n_vectors=n_vectors, seed=seed, force=force, synth=synth, allow_over_budget=allow_over_budget,
                      trace=trace, mst=with_mst, mst_depth=mst_depth, mst_layers=mst_names,
                      input_format=input_format, precision=precision)
    if get_board(board).kind == "mcu":
        for flag, given in (("--synth", synth), ("--allow-over-budget", allow_over_budget)):
            if given:
                click.echo(f"edgeq: warning: {flag} has no effect for MCU boards (the linker enforces the budgets)",
                           err=True)
        _build_mcu(ctx, cfg, mac == "fma", simd)
        return
    steps = ["load", "lower", "cost", "vectors", "reference", "render", "csim"]
    with _progress(ctx, f"building for {board}", len(steps)) as update:
        def say(step: str) -> None:
            update(steps.index(step), len(steps))
        try:
            report = run_build(cfg, say=say)
        except BuildFailed as e:
            click.echo(f"edgeq: build failed: {e}", err=True)
            sys.exit(1)
    cs = report["csim"]
    for w in [report.get("input_saturation")] + list(report.get("budget_warnings") or []):
        if not w:
            continue
        click.echo(f"edgeq: warning: {w}", err=True)
    click.echo(f"{out_dir}: csim {cs['status']} ({cs['mismatches']} mismatches over {cs['vectors']} vectors, "
               f"{cs['seconds']} s); emulator vs model: {reference_text(report.get('qonnx_reference'))}; "
               f"AMD tools: {report['tools']['status']}")


def _build_mcu(ctx: _Ctx, cfg, fma: bool, simd: str) -> None:
    from edgeq.backends.mcu.build import BuildFailed
    from edgeq.backends.mcu.build import build as run_build

    steps = ["load", "lower", "plan", "vectors", "reference", "render", "firmware", "host"]
    with _progress(ctx, f"building for {cfg.board}", len(steps)) as update:
        try:
            report = run_build(cfg, say=lambda s: update(steps.index(s), len(steps)), fma=fma, simd=simd)
        except BuildFailed as e:
            click.echo(f"edgeq: build failed: {e}", err=True)
            sys.exit(1)
    h, fw = report["host_check"], report["firmware"]
    if report.get("input_saturation"):
        click.echo(f"edgeq: warning: {report['input_saturation']}", err=True)
    for risk in report.get("fp16_overflow_risk") or []:
        click.echo(f"edgeq: warning: layer '{risk['layer']}': {risk['note']}", err=True)
    click.echo(f"{cfg.out}: host check {h['status']} ({h['mismatches']} mismatches over {h['vectors']} vectors); "
               f"FP16 program vs model: {reference_text(report.get('qonnx_reference'))}; "
               f"RAM {fw['ram_used']:,}/{fw['ram_budget']:,} B, flash {fw['flash_used']:,}/{fw['flash_budget']:,} B; "
               f"run it with `edgeq flash {cfg.out} --board {cfg.board}`")


@cli.command()
@click.argument("project_dir", metavar="DIR")
@click.option("--board", "-b", required=True, help="The board DIR was built for (see `edgeq boards`).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds before a hanging firmware is stopped.")
@click.option("--port", default=None, help="Serial port of a real board's UART (default $EDGEQ_SERIAL_PORT).")
@click.pass_obj
def flash(ctx: _Ctx, project_dir: str, board: str, timeout: float, port: str | None) -> None:
    """Run the firmware of an MCU project on BOARD; write DIR/hw_outputs.npy and DIR/hw_counters.json."""
    from edgeq.backends.mcu.flash import flash as run_flash

    with _progress(ctx, f"running on {board}", 1):
        summary = run_flash(Path(project_dir), board, timeout=timeout, port=port)
    click.echo(f"{project_dir}: ran {summary['vectors']} vectors on {board} in {summary['wall_s']:.1f} s; "
               f"{summary['instret_per_inference']:,} instructions per inference; wrote hw_outputs.npy, "
               f"hw_counters.json; check with `edgeq compare {project_dir}`")


@cli.command()
@click.argument("project_dir", metavar="DIR")
@click.option("--hw-outputs", default=None, metavar="FILE",
              help="Decoded float64 outputs to check (default DIR/hw_outputs.npy, written by driver/run_on_board.py; "
                   "DIR/csim/outputs.npy is the C simulation's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--plot", "plot_path", default=None, metavar="FILE.png",
              help="Write a PNG of the error per output (and per layer when csim traces exist).")
@click.pass_obj
def compare(ctx: _Ctx, project_dir: str, hw_outputs: str | None, as_json: bool, plot_path: str | None) -> None:
    """Compare hardware outputs with the emulator bit for bit (exit 0 identical, 1 any difference).

    DIR is a project written by `edgeq build`; the reference is edgeq.emulate re-run on DIR/model.onnx and
    DIR/vectors/input.npy.
    """
    from edgeq.backends.compare import compare_project, plot, summary_text

    with _progress(ctx, "emulating the reference", 1) as update:
        summary = compare_project(project_dir, hw_outputs, progress=update)
    if plot_path:
        plot(summary, plot_path)
    click.echo(json.dumps(summary, indent=2, allow_nan=False) if as_json else summary_text(summary))
    if plot_path and not ctx.quiet:
        click.echo(f"wrote {plot_path}", err=True)
    sys.exit(0 if summary["identical"] else 1)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one line and exit code 2 for bad input; 128 + the signal's number (130
    SIGINT, 143 SIGTERM) when interrupted, after the child tools are killed and temporary files removed."""
    from edgeq.backends.proc import interrupts

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    with interrupts() as got:
        try:
            cli.main(args=argv, prog_name="edgeq", standalone_mode=False)
        except EdgeqError as e:
            if debug:
                raise
            click.echo(f"edgeq: error: {e}", err=True)
            sys.exit(2)
        except (click.exceptions.Abort, KeyboardInterrupt):  # click turns KeyboardInterrupt into Abort
            sig = signal.Signals(got["signal"] or signal.SIGINT)
            click.echo(f"edgeq: interrupted by {sig.name}; nothing half-written was left", err=True)
            sys.exit(128 + sig.value)
        except click.ClickException as e:
            click.echo(f"edgeq: error: {e.format_message()} (see `edgeq --help`)", err=True)
            sys.exit(2)
        except Exception as e:
            if debug:
                raise
            click.echo(f"edgeq: internal error: {type(e).__name__}: {e} (rerun with --debug and report it)",
                       err=True)
            sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
