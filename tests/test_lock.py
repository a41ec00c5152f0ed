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


def _installed(name: str) -> str | None:
    """The version Python imports: the first distribution on sys.path (setuptools appends its own vendored
    packaging/zipp/importlib-metadata behind site-packages once imported; those are not the venv's)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_the_installed_venv_matches_the_lock():
    wrong = {name: (version, _installed(name)) for name, version in _pins().items() if _installed(name) != version}
    assert not wrong, f"venv differs from requirements.lock (locked, installed): {wrong}; run `make setup`"
