"""What every backend's ``edgeq build`` shares: the atomic, marked project directory and the test vectors."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edgeq import __version__
from edgeq.backends.proc import held_signals
from edgeq.errors import EdgeqError
from edgeq.formats import MiniFloat

#: The file that marks a directory as written by edgeq (JSON: tool, version, board or trace_of). ``--force``
#: replaces only such directories; it appears with the rest of the directory, in the same rename.
MARKER = ".edgeq-project"
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _written_by_edgeq(d: Path) -> bool:
    m = d / MARKER
    try:
        return not m.is_symlink() and json.loads(m.read_text()).get("tool") == "edgeq"
    except (OSError, ValueError, AttributeError):
        return False


def check_replaceable(out: Path, force: bool, keep: Iterable[Path] = (), option: str = "--out") -> None:
    """Raise EdgeqError unless writing ``out`` (absolute) loses nothing of the user's.

    Allowed: a path that does not exist; an empty directory (with or without ``force``); with ``force``, a
    directory edgeq wrote (it holds :data:`MARKER`). Refused whatever ``force`` says: a symlink, a file, the
    working directory, the home directory, ``/``, and any directory that is or holds one of ``keep`` (the
    command's input files) or the working directory. Nothing is touched either way.
    """
    if not os.path.lexists(out):
        return
    if out.is_symlink():
        raise EdgeqError(f"{out}: is a symbolic link; edgeq does not replace links: choose another {option}")
    if not out.is_dir():
        raise EdgeqError(f"{out}: is a file, not a directory edgeq wrote; choose another {option}")
    real = out.resolve()
    for path, what in ((Path.cwd(), "the working directory"), *((Path(k).resolve(), str(k)) for k in keep)):
        if real == path or real in path.parents:
            raise EdgeqError(f"{out}: is or contains {what}; edgeq never replaces it: choose a new directory "
                             f"for {option}")
    if real in (Path.home().resolve(), Path(real.anchor)):
        raise EdgeqError(f"{out}: is the home or root directory; choose a new directory for {option}")
    if not any(out.iterdir()):
        return
    if not force:
        raise EdgeqError(f"{out}: already exists; pass --force to replace it or choose another {option}")
    if not _written_by_edgeq(out):
        raise EdgeqError(f"{out}: was not written by edgeq (it has no {MARKER} file), so it is not replaced; "
                         f"remove it yourself or choose another {option}")


def _disk_full(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, OSError) and (e.errno in _DISK_FULL or os.strerror(errno.ENOSPC) in str(e)):
            return True  # (shutil.copytree's Error keeps only the message)
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def atomic_dir(out: Path, force: bool, keep: Iterable[Path] = (), marker: dict | None = None,
               option: str = "--out") -> Iterator[tuple[Path, Path]]:
    """Yield ``(new, scratch)``: write the directory's files into ``new``, temporary files into ``scratch``.

    Both live in a hidden staging directory next to ``out`` (``.NAME.XXXXXXXX``, unique per call), which is
    removed on every exit, interrupts included. On success ``new`` (with its :data:`MARKER`, and the usual
    permissions: ``0o777`` less the umask) replaces ``out`` in one rename; the old directory stays in place until
    then. :func:`check_replaceable` decides whether ``out`` may be replaced, before the work and again before
    the rename. A full disk raises EdgeqError.
    """
    out = Path(out).absolute()  # tools run with other working directories: relative paths would break
    keep = list(keep)
    check_replaceable(out, force, keep, option)
    staging = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # 0700 while it is written
        new, scratch = staging / "new", staging / "tmp"
        new.mkdir()  # mkdir applies the umask
        scratch.mkdir()
        (new / MARKER).write_text(json.dumps({"tool": "edgeq", "version": __version__, **(marker or {})}) + "\n")
        yield new, scratch
        with held_signals():  # an interrupt between the two renames would leave no ``out`` at all
            check_replaceable(out, force, keep, option)
            old = staging / "old"
            if os.path.lexists(out):
                os.rename(out, old)
            try:
                os.rename(new, out)
            except OSError:
                if old.exists():
                    os.rename(old, out)
                raise
    except Exception as e:
        if _disk_full(e):
            raise EdgeqError(f"no space left on device while writing {out}; free space or choose another "
                             f"{option}") from e
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_project(out: Path, force: bool, model: Path, board: str) -> Iterator[tuple[Path, Path]]:
    """:func:`atomic_dir` for ``edgeq build``: yields (project directory, scratch directory for the tools)."""
    check_replaceable(Path(out).absolute(), force, [model])
    if not Path(model).exists():
        raise EdgeqError(f"{model}: no such file; pass the path of a QONNX .onnx model")
    with atomic_dir(out, force, [model], {"board": board}) as dirs:
        yield dirs


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
