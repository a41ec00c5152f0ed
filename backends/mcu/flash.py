"""``edgeq flash DIR --board B``: run an MCU project's firmware on its board and capture what it printed.

Writes, next to the project:

* ``hw_outputs.npy``: the outputs, decoded to float64 (batch first, the ``edgeq emulate`` convention);
* ``hw_counters.json``: instructions and cycles per inference, and per layer in debug builds
  (``edgeq build --trace``), with the layer output hashes ``edgeq compare`` uses to find the first
  diverging layer;
* ``hw_log.txt``: the raw lines.

Simulators (QEMU, Spike) run with a timeout; a trap is reported with mcause/mepc/mtval.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.board import get_board
from edgeq.errors import EdgeqError
from edgeq.ir import load_graph

from . import toolchain
from .build import counters_json, parse_run


def read_project(d: Path) -> dict[str, Any]:
    """``DIR/build.json`` of an MCU project, or a clear error."""
    if not d.is_dir():
        raise EdgeqError(f"{d}: no such directory; pass a project directory written by `edgeq build --out DIR`")
    info_path = d / "build.json"
    try:
        info = json.loads(info_path.read_text())
    except FileNotFoundError:
        raise EdgeqError(f"{d}: not an edgeq build project (build.json is missing); pass the --out directory of "
                         "`edgeq build`") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgeqError(f"{info_path}: corrupt JSON; rebuild the project with `edgeq build --force`") from None
    count = info.get("vectors", {}).get("count") if isinstance(info, dict) and isinstance(info.get("vectors"),
                                                                                          dict) else None
    if not isinstance(info, dict) or (info.get("backend") == "mcu" and not isinstance(count, int)):
        raise EdgeqError(f"{info_path}: not a build.json written by `edgeq build`; rebuild the project with "
                         "`edgeq build --force`")
    return info


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def flash(d: Path, board_name: str, timeout: float = 600.0, port: str | None = None) -> dict[str, Any]:
    info = read_project(d)
    board = get_board(board_name)
    if info.get("backend") != "mcu":
        raise EdgeqError(f"{d} is a {info.get('backend', 'non-MCU')} project for board '{info.get('board')}'; "
                         "`edgeq flash` runs MCU firmware (build with an MCU board, see `edgeq boards`)")
    if info.get("board") != board.name:
        raise EdgeqError(f"{d} was built for board '{info.get('board')}', not '{board.name}'; rebuild it with "
                         f"`edgeq build MODEL --board {board.name} --out DIR`, or flash it with --board "
                         f"{info.get('board')}")
    elf = d / info.get("elf", "firmware.elf")
    if not elf.is_file():
        raise EdgeqError(f"{elf}: missing; rebuild the project with `edgeq build --force`")
    try:
        program = load_graph(d / info.get("program", "program.npz"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise EdgeqError(f"{d / 'program.npz'}: unreadable ({e}); rebuild the project with `edgeq build --force`"
                         ) from None
    n = int(info["vectors"]["count"])
    for stale in ("hw_outputs.npy", "hw_counters.json", "hw_log.txt"):  # never leave a previous run's results
        (d / stale).unlink(missing_ok=True)
    res = toolchain.run_firmware(board, elf, timeout, port=port)
    _write_atomic(d / "hw_log.txt", res.stdout.encode())
    parsed = parse_run(res.stdout, program, n)
    buf = tempfile.SpooledTemporaryFile()
    np.save(buf, parsed["values"])
    buf.seek(0)
    _write_atomic(d / "hw_outputs.npy", buf.read())
    counters = counters_json(parsed, program)
    counters.update({"board": board.name, "runner": board["runner"], "wall_s": round(res.wall_s, 3)})
    _write_atomic(d / "hw_counters.json", json.dumps(counters, indent=2).encode())
    inst = counters["total"]["instret"]
    return {"vectors": n, "wall_s": res.wall_s, "instret_per_inference": int(np.median(inst)) if inst else 0}
