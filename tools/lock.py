"""Write ``requirements.lock``: every package of the development stack at one exact version.

``make lock`` runs this. It asks pip's own resolver what a fresh install of ``torch==2.13.0`` plus
``edgeq[dev]`` would take today (``pip install --dry-run --ignore-installed --report``, nothing is installed)
and writes one ``name==version`` line per package. ``make setup`` installs from the file, so every machine
and CI run get the same stack; ``pyproject.toml`` keeps the version ranges for ``pip install edgeq`` users.
``tests/test_lock.py`` checks that the installed venv matches the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
TORCH = "torch==2.13.0"  # the local CPU wheel; any other torch request may pull a CUDA build


def resolve() -> list[tuple[str, str]]:
    """(name, version) of every package a fresh ``pip install TORCH -e .[dev]`` would install, sorted."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
                        "--report", str(report), TORCH, "-e", f"{ROOT}[dev]"], check=True)
        doc = json.loads(report.read_text())
    pins = {(i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in doc["install"]}
    return sorted(p for p in pins if p[0] != "edgeq")


def main() -> None:
    import pip

    lines = ["# edgeq's development stack, every transitive package pinned. Regenerate with `make lock`",
             f"# (tools/lock.py: pip's resolver report for {TORCH} + edgeq[dev]; Python {sys.version.split()[0]}).",
             f"pip=={pip.__version__}"]
    lines += [f"{name}=={version}" for name, version in resolve()]
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"wrote {LOCK} ({len(lines) - 2} pins)")


if __name__ == "__main__":
    main()
