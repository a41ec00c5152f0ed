"""Datasets that ship offline, and the loader for users' own data.

Nothing is downloaded at run time. :func:`digits` uses scikit-learn's bundled 8x8 handwritten
digits (1,797 real samples). :func:`load_arrays` reads users' data from ``.npz``/``.npy`` files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError


def digits(test_fraction: float = 0.2, seed: int = 0):
    """(x_train, y_train, x_test, y_test): float32 images (N, 1, 8, 8) scaled to [0, 1], int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    te, tr = idx[:n_test], idx[n_test:]
    return x[tr], y[tr], x[te], y[te]


def load_npy(path: str | Path, what: str = "a .npy array, batch first") -> np.ndarray:
    """One .npy array (no pickle); a missing or unreadable file is one EdgeqError line naming it."""
    p = Path(path)
    if not p.is_file():
        raise EdgeqError(f"{p}: no such file ({what})")
    try:
        return np.load(p, allow_pickle=False)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeqError(f"{p}: not a readable .npy array ({reason}); save it with numpy.save") from None


def load_arrays(path: str | Path, x_key: str = "x", y_key: str = "y"):
    """Load ``(x, y)`` from an ``.npz`` with arrays ``x``/``y``, or ``x`` alone from an ``.npy`` (y is None).

    ``x`` is float, batch first, shaped like the model input. Any bad file is an EdgeqError.
    """
    p = Path(path)
    if not p.exists():
        raise EdgeqError(f"{p}: no such file; pass an .npz with arrays '{x_key}' and '{y_key}', or an .npy")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception as e:
        raise EdgeqError(f"{p}: not a readable numpy file ({str(e).splitlines()[0] if str(e) else e!r})") from None
    if isinstance(data, np.ndarray):
        return data, None
    if x_key not in data:
        raise EdgeqError(f"{p}: no array '{x_key}' in the archive (found {', '.join(data.files)})")
    return data[x_key], (data[y_key] if y_key in data else None)


def saturation_warning(graph, x) -> str | None:
    """One line when inputs lie outside the range of the quantizer that reads the graph input (e.g. pixels 0-255
    into a [0, 1] quantizer, which silently costs accuracy), with the count; None when they all fit."""
    first = next((lay for lay in graph.layers if lay.inputs == [graph.inputs[0]]), None)
    if first is None or first.op != "Quantize":
        return None
    fmt = graph.tensors[first.output].format
    lo, hi = getattr(fmt, "min", None), getattr(fmt, "max", None)
    if lo is None or hi is None:
        return None
    x = np.asarray(x)
    n = int(np.count_nonzero((x < float(lo)) | (x > float(hi))))
    if not n:
        return None
    return (f"{n} of {x.size} input values lie outside [{float(lo):g}, {float(hi):g}], the range of the input "
            f"quantizer '{first.name}' ({fmt}), and saturate; scale the inputs (e.g. pixels 0-255 into a [0, 1] "
            "quantizer: divide by 255) or type the input with --input-format")
