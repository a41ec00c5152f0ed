"""Boards are data: one ``boards/<name>.toml`` each, shipped inside the package."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError

_REQUIRED = {"fpga": ("part", "clock_mhz", "resources"), "mcu": ("isa", "ram_kib", "flash_kib", "runner")}


@dataclass(frozen=True)
class Board:
    """A target board: ``kind`` is ``fpga`` or ``mcu``; ``data`` holds the whole TOML table."""

    name: str
    kind: str
    description: str
    data: dict[str, Any] = field(hash=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def _parse(name: str, text: str) -> Board:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EdgeqError(f"{name}.toml: invalid TOML ({e}); fix the file") from None
    kind = data.get("kind")
    if kind not in _REQUIRED:
        raise EdgeqError(f"boards/{name}.toml: 'kind' must be 'fpga' or 'mcu', got {kind!r}")
    missing = [k for k in _REQUIRED[kind] if k not in data]
    if missing:
        raise EdgeqError(f"boards/{name}.toml: missing {', '.join(missing)} for a {kind} board")
    return Board(name=data.get("name", name), kind=kind, description=data.get("description", ""), data=data)


def list_boards() -> list[Board]:
    """All shipped boards, sorted by name."""
    root = resources.files("edgeq.boards")
    out = [_parse(p.name[:-5], p.read_text()) for p in root.iterdir() if p.name.endswith(".toml")]
    return sorted(out, key=lambda b: b.name)


def get_board(name: str) -> Board:
    """The board called ``name``, or the board file ``name`` when it ends in ``.toml`` (your own board, same
    keys as the shipped ones); an unknown name is an EdgeqError listing the known ones."""
    if str(name).endswith(".toml"):
        path = Path(name)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise EdgeqError(f"{path}: cannot read the board file ({e.strerror if isinstance(e, OSError) else e})"
                             ) from None
        board = _parse(path.stem, text)
        return Board(name=board.data.get("name", path.stem), kind=board.kind, description=board.description,
                     data=board.data)
    boards = {b.name: b for b in list_boards()}
    if name not in boards:
        raise EdgeqError(f"unknown board '{name}'; known boards: {', '.join(boards)} (see `edgeq boards`)")
    return boards[name]
