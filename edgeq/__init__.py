"""edgeq: quantized networks from Brevitas/QONNX to edge hardware, proved bit for bit.

    graph = edgeq.load("model.onnx")      # QONNX -> typed IR (every tensor has a NumFormat)
    y = edgeq.emulate(graph, x)           # bit-exact emulation, batch first
    edgeq.export(brevitas_module, x, "model.onnx")
    edgeq.qfx                             # QFX quantizers: learned binary points (imported on first use)
"""

from edgeq.emulate import emulate
from edgeq.errors import EdgeqError
from edgeq.export import export
from edgeq.formats import Binary, FixedPoint, Float16, Float32, Int, MiniFloat
from edgeq.ingest import load

__version__ = "0.1.0"

__all__ = [
    "Binary", "EdgeqError", "FixedPoint", "Float16", "Float32", "Int", "MiniFloat",
    "__version__", "emulate", "export", "load",
]


def __getattr__(name: str):
    # edgeq.qfx and edgeq.ptq need torch and Brevitas: import them only when asked for
    if name in ("qfx", "ptq"):
        import importlib

        return importlib.import_module(f"edgeq.{name}")
    raise AttributeError(f"module 'edgeq' has no attribute {name!r}")
