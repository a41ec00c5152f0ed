"""Tool checks shared by the MCU kernel tests: skip when a compiler or simulator is missing (fail under CI=1)."""

from __future__ import annotations

import os
import shutil

import pytest

from edgeq.backends.mcu import toolchain as tc
from edgeq.errors import EdgeqError

BOARD = "qemu-rv32"


def need(*checks) -> None:
    """Skip (fail under CI=1) when a compiler or simulator is missing."""
    try:
        for check in checks:
            check()
    except EdgeqError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


def host_compiler() -> None:
    if not (shutil.which("gcc") or shutil.which("clang") or shutil.which("clang-19")):
        raise EdgeqError("no host C compiler (gcc or clang); `apt-get install gcc`")


def qemu() -> None:
    tc.find_compiler()
    tc.check_tools(BOARD)
