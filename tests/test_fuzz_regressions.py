"""Every graph the fuzzer once got wrong (tests/fuzz_regressions/) replays against QONNX's execute_onnx.

Each ``<name>.onnx`` has its input batch (``<name>.npy``) and a sidecar ``<name>.json`` stating the expectation:
"exact" (bit for bit, or differing only where the contract declares it) or "refused" (a clean EdgeqError).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeq import fuzz

REGRESSIONS = sorted((Path(__file__).parent / "fuzz_regressions").glob("*.onnx"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_saved_fuzz_regression_replays_as_expected(path):
    case, meta = fuzz.load_regression(path)
    res = fuzz.check(case)
    if meta["expect"] == "refused":
        assert res.outcome == "refused", f"{path.stem}: {res.outcome}: {res.message}"
    else:
        assert res.passed, f"{path.stem}: {res.outcome}: {res.message}"


def test_regression_directory_is_not_empty():
    assert len(REGRESSIONS) >= 5
