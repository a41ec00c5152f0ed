"""What every backend's ``edgeq build`` shares: the atomic project directory and the test vectors."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.formats import MiniFloat


@contextlib.contextmanager
def atomic_project(out: Path, force: bool, model: Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it replaces ``out`` in one rename.

    A failed build never leaves a half-written directory, and with ``force`` the old project stays in
    place until the new one is complete.
    """
    out = Path(out).absolute()  # tools run with other working directories: relative paths would break
    if out.exists() and not force:
        raise EdgeqError(f"{out}: already exists; pass --force to replace it or choose another --out")
    if not Path(model).exists():
        raise EdgeqError(f"{model}: no such file; pass the path of a QONNX .onnx model")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def default_vectors(n: int, shape: tuple[int, ...], seed: int, in_format=None) -> np.ndarray:
    """A seeded batch in the input's valid range: [0, 1] (images) when float preprocessing comes before the
    first quantizer (``in_format`` None), else that quantizer's range widened by 10 % to exercise saturation."""
    rng = np.random.default_rng(seed)
    shape = (n,) + tuple(shape)
    if in_format is None:
        return rng.uniform(0.0, 1.0, shape).astype(np.float32)
    lo, hi = in_format.min, in_format.max
    if isinstance(in_format, MiniFloat):  # a minifloat's range is stated before its scale
        s = float(max(in_format.scale))
        lo, hi = lo * s, hi * s
    span = (hi - lo) * 0.05
    return rng.uniform(lo - span, hi + span, shape).astype(np.float32)


def load_vectors(path: Path | None, n: int, shape: tuple[int, ...], seed: int, in_format=None) -> np.ndarray:
    """``--vectors`` (.npy, or .npz with 'x') or the default seeded batch, as float32."""
    if path is not None:
        from edgeq.data import load_arrays

        x, _ = load_arrays(path)
    else:
        x = default_vectors(n, shape, seed, in_format)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or len(x) == 0:
        raise EdgeqError(f"{path}: holds no test vectors; pass a batch shaped (n, {', '.join(map(str, shape))})")
    return x
