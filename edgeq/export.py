"""Export a Brevitas model to QONNX, avoiding the known pitfalls."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from edgeq.errors import EdgeqError


def export(module: Any, example_input: Any, path: str | os.PathLike) -> Path:
    """Export a Brevitas ``module`` to a QONNX file at ``path`` and return the path.

    Wraps ``brevitas.export.export_qonnx(..., dynamo=False)``: the dynamo exporter (the default on
    torch >= 2.9) writes a Gemm without bias and an external ``.onnx.data`` file, which breaks the
    qonnx passes. The module is exported in eval mode (BatchNorm uses running statistics) with a
    batch of one, without gradients, and the file is written to a temporary name first so a
    failed export never leaves a partial file behind.
    """
    import torch
    from brevitas.export import export_qonnx

    path = Path(path)
    x = torch.as_tensor(example_input, dtype=torch.float32)
    if x.ndim == 0:
        raise EdgeqError("example_input must have a batch axis, e.g. torch.zeros(1, 1, 28, 28)")
    x = x[:1]
    was_training = module.training
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            export_qonnx(module, input_t=x, export_path=tmp, dynamo=False)
        if Path(tmp + ".data").exists():
            raise EdgeqError("the export wrote external tensor data; export with dynamo=False")
        os.replace(tmp, path)
    except EdgeqError:
        raise
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgeqError(f"Brevitas QONNX export of {type(module).__name__} failed: {reason}") from None
    finally:
        if Path(tmp).exists():
            os.unlink(tmp)
        module.train(was_training)
    return path


def write_atomic(path: str | os.PathLike, write: Any, suffix: str = "") -> Path:
    """Create ``path`` by ``write(tmp_name)`` on a temporary file next to it and one rename: a failed write
    never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if Path(tmp).exists():
            os.unlink(tmp)
    return path


def save_onnx_atomic(proto: Any, path: str | os.PathLike) -> Path:
    """Write an ONNX ModelProto to ``path`` atomically (:func:`write_atomic`)."""
    import onnx

    return write_atomic(path, lambda tmp: onnx.save(proto, tmp), ".onnx")
