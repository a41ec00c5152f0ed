"""edgeq: quantized networks from Brevitas/QONNX to edge hardware, proved bit for bit."""

from edgeq.errors import EdgeqError
from edgeq.formats import Binary, FixedPoint, Float16, Float32, Int, MiniFloat

__version__ = "0.1.0"

__all__ = ["EdgeqError", "Binary", "FixedPoint", "Float16", "Float32", "Int", "MiniFloat", "__version__"]
