"""The venv the tests run in is the locked development stack (requirements.lock, installed by `make setup`)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"


def _pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_lock_pins_every_package_to_one_exact_version():
    pins = _pins()
    assert {"torch", "numpy", "onnx", "onnxruntime", "qonnx", "brevitas", "hls4ml", "pytest", "pip"} <= set(pins)
    assert pins["torch"].startswith("2.13.0")
    assert int(pins["onnx"].split(".")[1]) < 23  # onnxruntime rejects IR version 14 (onnx>=1.23)


def test_the_installed_venv_matches_the_lock():
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in _pins().items()
             if installed.get(name) != version}
    assert not wrong, f"venv differs from requirements.lock (locked, installed): {wrong}; run `make setup`"
