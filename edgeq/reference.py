"""The model's own answer: QONNX's ``execute_onnx`` on the build's vectors, and the distance of any outputs to it.

Bit-exact verdicts compare hardware with the emulator. This module says what that verdict is worth against the
*model*: ``edgeq build`` stores ``vectors/qonnx_reference.npy`` (execute_onnx after qonnx's cleanup, on the same
inputs the emulator saw, i.e. after the typed input's quantizer when there is one), reports the emulator's distance
to it, and ``edgeq compare`` puts the hardware's distance on the same line as its verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: file name of the stored reference outputs inside a project's vectors/ directory
REFERENCE_FILE = "qonnx_reference.npy"


def qonnx_outputs(model, x: np.ndarray) -> np.ndarray:
    """execute_onnx of ``model`` (a path or ModelProto) on ``x`` (batch first), after qonnx's cleanup.

    Runs the whole batch at once when the graph's batch dimension allows it, else one sample at a time (models
    exported with batch 1). Returns float64 outputs of shape ``(len(x), *output)``."""
    import onnx
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    from edgeq.ingest import _wrap

    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    mw = cleanup_model(_wrap(proto))
    iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
    dims = mw.graph.input[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
    x = np.ascontiguousarray(x, dtype=np.float32)
    if batch in (None, 0) or batch == len(x):
        return np.asarray(execute_onnx(mw, {iname: x})[oname], dtype=np.float64)
    step = batch if batch and len(x) % batch == 0 else 1
    outs = [execute_onnx(mw, {iname: x[i:i + step]})[oname] for i in range(0, len(x), step)]
    return np.concatenate(outs).astype(np.float64)


def distance(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """How far ``got`` is from ``ref`` (both batch first): values differing (NaN equals NaN; -0 equals +0),
    vectors differing, max |diff|, and top-1 (argmax) agreement when the output has more than one value."""
    n = len(ref)
    got, ref = np.asarray(got, np.float64).reshape(n, -1), np.asarray(ref, np.float64).reshape(n, -1)
    differ = ~((got == ref) | (np.isnan(got) & np.isnan(ref)))
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(got - ref)[differ]
    finite = d[np.isfinite(d)]
    return {"values": int(got.size), "differing_values": int(differ.sum()),
            "differing_vectors": int(differ.any(axis=1).sum()), "vectors": n,
            "max_abs_diff": float(finite.max()) if finite.size else (None if d.size else 0.0),  # None: only non-finite
            "nonfinite_differences": int(d.size - finite.size),
            "argmax_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))) if got.shape[1] > 1 else None}


def distance_text(d: dict[str, Any]) -> str:
    """One phrase: "identical to QONNX" or "k of n values differ from QONNX (max |diff| .., top-1 ..)"."""
    if d["differing_values"] == 0:
        return f"identical to the QONNX model ({d['values']} values)"
    top1 = "" if d["argmax_agreement"] is None else f", top-1 agreement {d['argmax_agreement']:.4f}"
    mx = "non-finite only" if d["max_abs_diff"] is None else f"{d['max_abs_diff']:.3g}"
    nf = f", {d['nonfinite_differences']} non-finite" if d.get("nonfinite_differences") else ""
    return (f"{d['differing_values']} of {d['values']} values differ from the QONNX model "
            f"(max |diff| {mx}{nf}{top1})")


def model_inputs(graph, x: np.ndarray) -> np.ndarray:
    """What the QONNX model is fed: ``x`` after the typed input's host-side quantizer, when the graph has one
    (``--input-format`` or an annotation), since the model itself has no quantizer there."""
    first = graph.layers[0] if graph.layers else None
    if first is not None and first.attrs.get("typed_input"):
        return graph.tensors[first.output].format.quantize(x).astype(np.float32)
    return np.asarray(x, dtype=np.float32)


def store_reference(graph, model, x: np.ndarray, emulated: np.ndarray, vdir: Path) -> dict[str, Any]:
    """A build's reference step: QONNX's outputs on the build's vectors, saved as ``vdir/qonnx_reference.npy``,
    and the emulator's distance to them. A model QONNX cannot execute is reported, not fatal (the bit-exact
    verdict against the emulator stands on its own)."""
    import time

    t = time.perf_counter()
    try:
        ref = qonnx_outputs(model, model_inputs(graph, x))
    except Exception as e:  # onnxruntime/qonnx refusing a model edgeq reads: say so in the report
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return {"status": f"not run: QONNX execute_onnx failed ({type(e).__name__}: {msg})"}
    if ref.size != np.asarray(emulated).size:
        return {"status": f"not comparable: QONNX gives {ref.shape[1:]} per vector, the emulator "
                          f"{np.asarray(emulated).shape[1:]}"}
    np.save(Path(vdir) / REFERENCE_FILE, ref)
    return {"status": "ran", "file": f"vectors/{REFERENCE_FILE}", "seconds": round(time.perf_counter() - t, 2),
            **distance(emulated, ref)}


def reference_text(r: dict[str, Any] | None) -> str:
    """The reference step's result as a phrase for summaries (see :func:`store_reference`)."""
    if not r or r.get("status") != "ran":
        return f"QONNX reference {(r or {}).get('status', 'not run')}"
    return distance_text(r)
