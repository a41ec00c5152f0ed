"""Child tools (g++, clang, the test benches) that die with the build: one way to run them.

Every tool runs in its own session (process group) with ``TMPDIR`` pointing into the build's staging directory,
so that its temporary files are removed with it. If the caller is interrupted (KeyboardInterrupt, a timeout, any
exception) the whole group is killed and reaped before the exception goes on. Under :func:`interrupts` (the
CLI) SIGINT and SIGTERM first kill every running tool, even those started by worker threads, then raise
KeyboardInterrupt in the main thread; no new tool starts after that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

# The tools now running, and the signal state. set.add/discard and list(set) are atomic under the GIL: no lock,
# as a signal handler must never wait for one.
_running: set[subprocess.Popen] = set()
_state = {"signal": None, "held": 0, "owed": False}


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (grandchildren such as the linker too) and reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _stop_if_signalled() -> None:
    if _state["signal"] is not None:
        raise KeyboardInterrupt


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """In the main thread, delay the KeyboardInterrupt of :func:`interrupts` to the end of the block (a start of
    a tool and its registration, or the final renames of a project, must not be cut in two)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["held"] += 1
    try:
        yield
    finally:
        _state["held"] -= 1
        if not _state["held"] and _state["owed"]:
            _state["owed"] = False
            raise KeyboardInterrupt


def _on_signal(signum: int, frame) -> None:
    first = _state["signal"] is None
    _state["signal"] = signum
    for p in list(_running):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
    if not first:  # the first one is already unwinding the build: let its cleanup finish
        return
    if _state["held"]:
        _state["owed"] = True
    else:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts() -> Iterator[dict]:
    """Handle SIGINT and SIGTERM as described above while the block runs (main thread only). Yields a dict whose
    ``"signal"`` is the number of the signal received, or None."""
    if threading.current_thread() is not threading.main_thread():
        yield _state
        return
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield _state
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state.update(signal=None, held=0, owed=False)


def run(argv: Sequence[str], *, cwd: str | os.PathLike | None = None, tmpdir: str | os.PathLike | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` to completion and return its exit status and text output, like ``subprocess.run`` with
    ``capture_output=True, text=True``; ``tmpdir`` (created if missing) becomes its ``TMPDIR``.

    Raises subprocess.TimeoutExpired after ``timeout`` seconds and OSError(ENOSPC) when the tool failed because
    the disk is full; in both cases, and on KeyboardInterrupt, no process of the group survives.
    """
    env = None
    if tmpdir is not None:
        Path(tmpdir).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = None
    try:
        with held_signals():
            _stop_if_signalled()
            proc = subprocess.Popen(list(map(str, argv)), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                    start_new_session=True)
            _running.add(proc)
        _stop_if_signalled()  # a signal came while it started (in a worker thread)
        out, err = proc.communicate(timeout=timeout)
        _stop_if_signalled()  # it was killed by the signal handler: its exit status means nothing
    except BaseException:
        if proc is not None:
            _kill(proc)
        raise
    finally:
        _running.discard(proc)
    if proc.returncode != 0 and os.strerror(errno.ENOSPC) in out + err:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(cwd or tmpdir or "."))
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
