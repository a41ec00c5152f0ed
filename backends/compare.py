"""``edgeq compare``: check an accelerator's outputs bit for bit against the emulator.

The project directory is one written by ``edgeq build``. The outputs under test are the decoded
float64 outputs the PYNQ driver writes (``DIR/hw_outputs.npy``, batch first, the ``edgeq emulate``
convention) or any file of the same shape, e.g. the C simulation's ``DIR/csim/outputs.npy``.
The reference is recomputed here: ``edgeq.emulate`` runs ``DIR/model.onnx`` on ``DIR/vectors/input.npy``;
``DIR/vectors/expected.npy`` (what the build wrote) is only checked for agreement and reported.

Equality is on float64 bit patterns: ``-0.0`` differs from ``0.0``, and NaN equals NaN only with
the same bits. When the C simulation left per-layer traces (``DIR/csim/trace/<layer>.bin``, written by
the build when csim and emulator differ, or always with ``edgeq build --trace``), they are compared
layer by layer with the emulator too.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.data import load_npy
from edgeq.emulate import emulate
from edgeq.errors import EdgeqError
from edgeq.ingest import load
from edgeq.reference import REFERENCE_FILE, distance, distance_text

HW_OUTPUTS = "hw_outputs.npy"


def _num(v: float) -> float | str:
    """A JSON-safe float: finite values as numbers, NaN and infinities as strings."""
    v = float(v)
    return v if np.isfinite(v) else repr(v)


def _hex(v: np.float64) -> str:
    return f"0x{int(np.asarray(v, dtype=np.float64).view(np.uint64)):016x}"


def _shape_str(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _as_outputs(arr: np.ndarray, path: Path, shape: tuple[int, ...], note: str) -> np.ndarray:
    """``arr`` as float64 of ``shape`` (batch first); also accepts the per-sample-flattened (n, elements)."""
    if arr.dtype.kind in "iub":
        raise EdgeqError(f"{path}: holds {arr.dtype} values, expected the decoded float64 outputs of shape "
                         f"{_shape_str(shape)}{note}; raw accelerator codes are decoded by scripts/check_outputs.py")
    if arr.dtype.kind != "f":
        raise EdgeqError(f"{path}: holds {arr.dtype} values, expected float64 outputs of shape {_shape_str(shape)}")
    flat = (shape[0], int(np.prod(shape[1:], dtype=np.int64)))
    if arr.shape == shape or arr.shape == flat:
        return arr.astype(np.float64).reshape(shape)  # float16/32 widen exactly
    raise EdgeqError(f"{path}: has shape {_shape_str(arr.shape)}, expected {_shape_str(shape)}{note}")


def same_bits(a: np.ndarray, b: np.ndarray, signed_zero: bool = True) -> np.ndarray:
    """Element-wise: the float64 values are the same bit pattern (so NaN payloads and signed zeros count).

    ``signed_zero=False`` for fixed-point hardware outputs: an integer code 0 has no sign, so +0.0 and -0.0 (which
    the float32 model may produce, e.g. a quantizer rounding -0.01) are the same output there."""
    same = np.ascontiguousarray(a, dtype=np.float64).view(np.uint64) == \
        np.ascontiguousarray(b, dtype=np.float64).view(np.uint64)
    return same if signed_zero else same | ((np.asarray(a) == 0) & (np.asarray(b) == 0))


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(a - b)
    return np.where(np.isnan(d), np.inf, d)  # NaN against a number (or NaNs with other bits): not finite


def _max(d: np.ndarray) -> float | None:
    """Largest finite entry of ``d`` (None when there is none)."""
    d = d[np.isfinite(d)]
    return float(d.max()) if d.size else None


def _typed_input(d: Path):
    """The input format the FPGA project was built with (build.json ``input_format``), or None."""
    from edgeq.formats import format_from_dict

    try:
        spec = json.loads((d / "build.json").read_text()).get("input_format")
        return None if spec is None else format_from_dict(spec)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def compare_project(directory: str | Path, hw_outputs: str | Path | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Compare the outputs in ``hw_outputs`` (default ``DIR/hw_outputs.npy``) with the emulator, bit for bit.

    Returns a JSON-serialisable summary (see :func:`summary_text` for the human form). Raises
    :class:`EdgeqError` for unusable input (missing directory, missing or corrupt .npy, wrong shape).
    """
    d = Path(directory)
    if not d.is_dir():
        raise EdgeqError(f"{d}: no such directory; pass a project directory written by `edgeq build --out DIR`")
    model = d / "model.onnx"
    if not model.is_file():
        raise EdgeqError(f"{d}: not an edgeq build project ({model.name} is missing); pass the --out directory "
                         "of `edgeq build`")
    mcu = _mcu_info(d)
    if mcu is not None:  # the MCU's FP16 program is the reference; its float32 model is only reported
        from edgeq.ir import load_graph

        try:
            graph = load_graph(d / mcu.get("program", "program.npz"))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise EdgeqError(f"{d / 'program.npz'}: unreadable ({e}); rebuild the project with `edgeq build --force`"
                             ) from None
        reference_name = "program.npz"
    else:
        graph = load(model, _typed_input(d))
        reference_name = model.name
    in_shape, out_shape = tuple(graph.input.shape), tuple(graph.output.shape)

    x_path = d / "vectors" / "input.npy"
    x = load_npy(x_path, "the build's test inputs; rebuild the project with `edgeq build`")
    if x.dtype.kind not in "fiu" or x.ndim != len(in_shape) + 1 or tuple(x.shape[1:]) != in_shape:
        raise EdgeqError(f"{x_path}: has shape {_shape_str(x.shape)} and dtype {x.dtype}, expected a float array of "
                         f"shape {_shape_str(('n',) + in_shape)} for the model input '{graph.input.name}'")
    n = len(x)
    shape = (n,) + out_shape

    hw_path = Path(hw_outputs) if hw_outputs is not None else d / HW_OUTPUTS
    if hw_outputs is None and not hw_path.is_file():
        if mcu is not None:
            raise EdgeqError(f"{hw_path}: no such file; run the firmware first: `edgeq flash {d} --board "
                             f"{mcu.get('board')}`")
        raise EdgeqError(f"{hw_path}: no such file; run driver/run_on_board.py on the board and copy its "
                         f"{HW_OUTPUTS} here, or pass --hw-outputs (e.g. {d / 'csim' / 'outputs.npy'})")
    raw = load_npy(hw_path, "the outputs to check")
    got = _as_outputs(raw, hw_path, shape,
                      f" ({n} vectors in {x_path.relative_to(d)} x model output {_shape_str(out_shape)})")

    trace_dir = d / "csim" / "trace"
    traces = mcu is None and trace_dir.is_dir() and any(trace_dir.glob("*.bin"))
    res = emulate(graph, x, trace=traces, progress=progress, raw_trace=True)
    want, emulated = (res if traces else (res, None))
    want = np.asarray(want, dtype=np.float64).reshape(shape)

    # What the build stored: informational; the reference is the fresh emulation above.
    exp_path = d / "vectors" / "expected.npy"
    expected_agrees: bool | None = None
    if exp_path.is_file():
        exp = load_npy(exp_path, "the build's expected outputs")
        expected_agrees = bool(exp.dtype == np.float64 and exp.shape == shape and
                               np.all(same_bits(exp, want, signed_zero=mcu is not None)))

    g2, w2 = got.reshape(n, -1), want.reshape(n, -1)
    bad = ~same_bits(g2, w2, signed_zero=mcu is not None)  # FPGA outputs are integer codes: zero has no sign
    diff = np.where(bad, _abs_diff(g2, w2), 0.0)
    mism = int(bad.sum())
    per_output = []
    for j in range(g2.shape[1]):
        col = diff[bad[:, j], j]
        per_output.append({"output": j, "mismatches": int(bad[:, j].sum()),
                           "max_abs_diff": _max(col) if col.size else 0.0,
                           "nonfinite": int(np.sum(~np.isfinite(col)))})
    first = None
    if mism:
        s, j = (int(v) for v in np.argwhere(bad)[0])
        first = {"vector": s, "output": j, "position": [int(i) for i in np.unravel_index(j, out_shape)],
                 "hw": _num(g2[s, j]), "emulator": _num(w2[s, j]),
                 "hw_bits": _hex(g2[s, j]), "emulator_bits": _hex(w2[s, j]),
                 "abs_diff": _num(_abs_diff(g2[s, j], w2[s, j]))}
    summary: dict[str, Any] = {
        "project": str(d), "hw_outputs": str(hw_path), "hw_dtype": str(raw.dtype),
        "reference": f"edgeq.emulate({reference_name}, {x_path.relative_to(d)})",
        "identical": mism == 0, "vectors": n, "outputs": int(g2.shape[1]), "output_shape": list(out_shape),
        "values_compared": int(g2.size), "mismatches": mism,
        "mismatching_vectors": int(bad.any(axis=1).sum()),
        "nonfinite_mismatches": int(np.sum(bad & ~np.isfinite(diff))),
        "max_abs_diff": _max(diff[bad]) if mism else 0.0,
        "per_output": per_output, "first_mismatch": first,
        "expected_file": str(exp_path), "expected_file_agrees": expected_agrees,
        "layers": layer_errors(d, graph, x, emulated, trace_dir) if traces else None,
        "trace_dir": str(trace_dir) if traces else None,
    }
    if mcu is not None:
        summary["mcu_layers"] = _mcu_layers(d, graph, x) if mism else None
    summary["model"] = _model_distance(d, got)
    return summary


def _model_distance(d: Path, got: np.ndarray) -> dict[str, Any] | None:
    """The hardware's distance to the *model* (QONNX execute_onnx on the same vectors, stored by the build)."""
    ref_path = d / "vectors" / REFERENCE_FILE
    if not ref_path.is_file():
        return None
    ref = load_npy(ref_path, "the build's QONNX reference outputs")
    if ref.size != got.size:
        raise EdgeqError(f"{ref_path}: {ref.size} values for {got.size} outputs; rebuild the project with "
                         "`edgeq build --force`")
    return {"reference": f"QONNX execute_onnx (vectors/{REFERENCE_FILE})", **distance(got, ref.reshape(got.shape))}


def _mcu_info(d: Path) -> dict[str, Any] | None:
    """build.json of an MCU project (None for FPGA projects)."""
    import json

    try:
        info = json.loads((d / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("backend") == "mcu" else None


def _mcu_layers(d: Path, graph, x: np.ndarray) -> dict[str, Any] | None:
    """The first layer whose output hash (debug builds, DIR/hw_counters.json) differs from the emulator's."""
    import json

    from edgeq.backends.mcu.render import layer_hash

    try:
        rows = json.loads((d / "hw_counters.json").read_text()).get("layers")
    except (OSError, ValueError):
        return None
    if not rows:
        return {"note": "no per-layer hashes: rebuild with `edgeq build --trace` and flash again"}
    _, trace = emulate(graph, x, trace=True)
    for i, (lay, row) in enumerate(zip(graph.layers, rows)):
        if row.get("hash") is None:  # fused into an element-wise chain: checked with its last layer
            continue
        want = layer_hash(trace[lay.name], graph.tensors[lay.output].format)
        got = np.array([-1 if h is None else h for h in row["hash"]], dtype=np.int64).astype(np.uint64)
        if got.shape != want.shape or np.any(got != want):
            bad = np.flatnonzero(got != want) if got.shape == want.shape else np.arange(len(want))
            return {"first_diverging_layer": lay.name, "op": lay.op, "onnx": list(lay.source), "index": i,
                    "mismatching_vectors": int(bad.size)}
    return {"first_diverging_layer": None, "note": "every layer hash agrees; only the outputs differ"}


def layer_errors(d: Path, graph, x: np.ndarray, emulated: dict[str, np.ndarray], trace_dir: Path) -> list[dict]:
    """Per accelerator layer of the project in ``d``: its C-simulation trace against the emulator.

    The design is lowered again from the model to map trace files to layers, tensors and formats.
    """
    from edgeq.backends.hls.lower import lower
    from edgeq.backends.hls.render import Renderer

    design = lower(graph)
    return trace_rows(design, Renderer(design).lname, graph, emulated, len(x), trace_dir)


def trace_rows(design, names: dict[str, str], graph, emulated: dict[str, np.ndarray], n: int,
               trace_dir: Path) -> list[dict]:
    """The one comparison of csim layer traces (``<layer function>.bin``, integer codes) with the emulator's
    layer outputs, in execution order. Used by ``edgeq build`` (first diverging layer) and ``edgeq compare``."""
    by_output = {lay.output: lay for lay in graph.layers}
    rows = []
    for lay in design.layers:
        t = design.tensors[lay.output]
        f = trace_dir / f"{names[lay.name]}.bin"
        row: dict[str, Any] = {"layer": lay.name, "op": lay.op, "onnx": list(lay.source), "format": str(t.format),
                               "elements": int(t.elements) * n, "trace": f.name}
        ir_layer = by_output.get(design.ir_tensor.get(lay.output))
        if not f.is_file():
            row["status"] = "no trace"
        elif ir_layer is None or ir_layer.name not in emulated:
            row["status"] = "no emulator counterpart"
        else:
            got = np.fromfile(f, dtype=t.dtype)
            if got.size != n * t.elements:
                row["status"] = f"unreadable trace ({got.size} values, expected {n} x {t.elements})"
            else:
                e = emulated[ir_layer.name].reshape(n, -1)
                if got.dtype.kind == "f":  # float32 values (a Rescale): compared as values, bit for bit
                    got = got.reshape(n, -1)
                    want = t.format.codes_of(e)
                    bad = ~same_bits(got, want, signed_zero=False)
                else:
                    got = got.reshape(n, -1).astype(np.int64)
                    if e.dtype.kind == "i":  # raw int64 codes of a wide accumulator, in the IR format's lsb
                        shift = t.format.frac_bits - graph.tensors[ir_layer.output].format.frac_bits
                        want = e.astype(np.int64) << shift
                    else:
                        want = t.format.codes_of(e).astype(np.int64)
                    if hasattr(t.format, "ordinal"):  # minifloat bits: -0 and +0 are the same value (ordinal 0)
                        bad = t.format.ordinal(got) != t.format.ordinal(want)
                    else:
                        bad = got != want
                dv = np.abs(t.format.decode(got) - t.format.decode(want))
                row.update({"status": "compared", "mismatching_elements": int(bad.sum()),
                            "mismatching_vectors": int(bad.any(axis=1).sum()),
                            "max_abs_diff": float(dv.max()) if dv.size else 0.0})
                if bad.any():
                    s, e = (int(v) for v in np.argwhere(bad)[0])
                    row["first"] = {"vector": s, "element": e, "csim_code": got[s, e].item(),
                                    "emulator_code": want[s, e].item(),
                                    "csim_value": float(t.format.decode(got[s, e])),
                                    "emulator_value": float(t.format.decode(want[s, e])),
                                    "csim_bits": t.format.bit_string(got[s, e]),
                                    "emulator_bits": t.format.bit_string(want[s, e])}
        rows.append(row)
    return rows


def _fmt(v: float | None) -> str:
    return "non-finite only" if v is None else repr(v)


def summary_text(s: dict[str, Any], limit: int = 20) -> str:
    """The human-readable report."""
    shape = "x".join(map(str, s["output_shape"])) or "1"
    head = f"{s['hw_outputs']} vs {s['reference']}: "
    lines = []
    model = "" if not s.get("model") else "; " + distance_text(s["model"])
    if s["identical"]:
        lines.append(head + f"IDENTICAL: {s['values_compared']} outputs ({s['vectors']} vectors x {shape}) "
                            "bit for bit" + model)
    else:
        mx = _fmt(s["max_abs_diff"])
        lines.append(head + f"{s['mismatches']} of {s['values_compared']} outputs differ "
                            f"({s['mismatching_vectors']} of {s['vectors']} vectors); max |diff| "
                            f"{mx}" + (f", {s['nonfinite_mismatches']} non-finite" if s["nonfinite_mismatches"]
                                        else "") + model)
        rows = [r for r in s["per_output"] if r["mismatches"]]
        lines.append(f"  {'output':>6}  {'mismatching vectors':>19}  max |diff|")
        for r in rows[:limit]:
            lines.append(f"  {r['output']:>6}  {r['mismatches']:>19}  {_fmt(r['max_abs_diff'])}"
                         + (f" ({r['nonfinite']} non-finite)" if r["nonfinite"] else ""))
        if len(rows) > limit:
            lines.append(f"  ... {len(rows) - limit} more outputs differ (--json lists all)")
        f = s["first_mismatch"]
        lines.append(f"first mismatch: vector {f['vector']}, output {f['output']}: hw {f['hw']!r} ({f['hw_bits']}) "
                     f"vs emulator {f['emulator']!r} ({f['emulator_bits']})")
    agrees = s["expected_file_agrees"]
    lines.append(f"{s['expected_file']}: " + ("missing" if agrees is None else "agrees with the emulator"
                                              if agrees else "DIFFERS from the emulator (stale or modified "
                                              "project? the comparison above uses the fresh emulation)"))
    if s.get("mcu_layers"):
        m = s["mcu_layers"]
        lines.append("MCU layer hashes: " + (f"first diverging layer {m['first_diverging_layer']} ({m['op']}), "
                                             f"{m['mismatching_vectors']} vectors" if m.get("first_diverging_layer")
                                             else m.get("note", "")))
    if s["layers"] is not None:
        diverging = [r for r in s["layers"] if r.get("mismatching_elements")]
        lines.append(f"C simulation traces ({s['trace_dir']}): " + (
            f"first diverging layer {diverging[0]['layer']} ({diverging[0]['op']}), "
            f"{len(diverging)} of {len(s['layers'])} layers differ" if diverging else
            "every traced layer equals the emulator"))
    return "\n".join(lines)


def plot(s: dict[str, Any], path: str | Path) -> None:
    """Error per output (and per layer, when traces exist) as a PNG, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = [r for r in (s["layers"] or []) if r.get("status") == "compared"]
    fig = Figure(figsize=(12, 8 if layers else 5), layout="constrained")
    FigureCanvasAgg(fig)
    axs = fig.subplots(2 if layers else 1, 2, squeeze=False)
    status = "identical" if s["identical"] else (f"{s['mismatches']} of {s['values_compared']} outputs differ")
    fig.suptitle(f"{Path(s['hw_outputs']).name} vs edgeq.emulate ({s['project']}): {status}")

    po = s["per_output"]
    idx = [r["output"] for r in po]
    _bars(axs[0, 0], idx, [r["mismatches"] for r in po], "output index",
          f"mismatching vectors (of {s['vectors']})", "mismatches per output")
    _bars(axs[0, 1], idx, [r["max_abs_diff"] if r["max_abs_diff"] is not None else np.nan for r in po],
          "output index", "max |hw - emulator|", "largest error per output", log=True,
          nonfinite=[r["nonfinite"] for r in po])
    if layers:
        names = [f"{k}: {r['op']}" for k, r in enumerate(layers)]
        _bars(axs[1, 0], range(len(layers)), [r["mismatching_elements"] / (s["vectors"] * r["elements"])
                                              for r in layers],
              "layer", "fraction of elements differing", "C simulation vs emulator per layer (csim/trace)",
              labels=names)
        _bars(axs[1, 1], range(len(layers)), [r["max_abs_diff"] for r in layers], "layer",
              "max |csim - emulator| (layer units)", "largest error per layer", log=True, labels=names)
    else:
        why = ("no per-layer traces in csim/trace (edgeq build writes them when the C simulation differs "
               "from the emulator, or always with --trace)" if s["layers"] is None
               else "the traces in csim/trace could not be compared")
        fig.supxlabel(f"per-layer errors not drawn: {why}", fontsize=9)

    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".png", dir=p.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format="png", dpi=100)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        raise EdgeqError(f"{p}: cannot write the plot ({e.strerror or e})") from None


def _bars(ax, x, y, xlabel: str, ylabel: str, title: str, log: bool = False, labels: list[str] | None = None,
          nonfinite: list[int] | None = None) -> None:
    x = list(x)
    y = np.asarray(y, dtype=np.float64)
    pos = y[np.isfinite(y) & (y > 0)]
    ax.bar(x, np.where(np.isfinite(y), y, 0.0), color=["tab:red" if v > 0 else "tab:green" for v in
                                                        np.nan_to_num(y)])
    if log and pos.size:
        ax.set_yscale("log")
    if not pos.size:
        ax.text(0.5, 0.5, "no difference", transform=ax.transAxes, ha="center", va="center", color="tab:green")
        ax.set_ylim(0, 1)
    if nonfinite and any(nonfinite):
        ax.text(0.01, 0.98, f"{sum(nonfinite)} non-finite differences (NaN/inf) not drawn", transform=ax.transAxes,
                va="top", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if labels is not None:
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    elif len(x) <= 32:
        ax.set_xticks(x)


__all__ = ["HW_OUTPUTS", "compare_project", "layer_errors", "plot", "summary_text"]
