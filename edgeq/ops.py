"""What each op is, declared once: the ONNX op types ingest reads, and the properties of every IR op.

Passes ask this module instead of keeping their own sets, so adding an op is one registration here plus its
kernels (ingest's lowering, the emulator's function, a backend's renderer):

- :data:`ONNX_OPS`: the ONNX/QONNX op types :func:`edgeq.ingest.load` lowers, with the domains they may come
  from. :func:`unsupported_nodes` checks a whole model against it before any (slow) qonnx pass runs, so a refusal
  names every unsupported node at once.
- :data:`IR_OPS`: the properties of each IR op (``Layer.op``), e.g. whether it is element-wise, whether it takes
  a wide tensor's int64 codes as they are, whether a backend may fold it into integer thresholds before a quantizer.
  :func:`having` returns the ops with a property.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

#: domains of standard ONNX ops
STANDARD_DOMAINS = ("", "ai.onnx")
#: domains QONNX quantizers are exported in (qonnx, FINN's older name, Brevitas' own)
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas")


@dataclass(frozen=True)
class OnnxOp:
    """An ONNX op type ingest lowers, and the domains a node of it may declare."""

    op_type: str
    domains: tuple[str, ...] = STANDARD_DOMAINS


ONNX_OPS: dict[str, OnnxOp] = {}


def _onnx(*op_types: str, domains: tuple[str, ...] = STANDARD_DOMAINS) -> None:
    for t in op_types:
        ONNX_OPS[t] = OnnxOp(t, domains)


_onnx("Quant", "BipolarQuant", "FloatQuant", "Trunc", domains=QONNX_DOMAINS + STANDARD_DOMAINS)
_onnx("Conv", "MatMul", "Gemm", "BatchNormalization", "Relu", "Clip", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min",
      "MaxPool", "AveragePool", "GlobalAveragePool", "Reshape", "Flatten", "Transpose", "Identity", "Dropout",
      "Squeeze", "Unsqueeze", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "Tanh", "Softmax")


def supported_onnx_ops() -> str:
    """The ONNX op types ingest lowers, for messages."""
    return ", ".join(ONNX_OPS)


#: hints for op types users meet in real exports, shown next to the refusal
HINTS = {
    ("qonnx.custom_op.channels_last", None): "a channels-last QONNX graph (hls4ml's ConvertToChannelsLastAndClean): "
                                            "give edgeq the channels-first export",
    ("", "Resize"): "upsample with a transposed convolution or nearest-neighbour Reshape/Concat is not lowered yet",
    ("", "Concat"): "concatenation of activations is not lowered yet",
}


def unsupported_nodes(graph, dynamic: Iterable[str]) -> dict[str, list[str]]:
    """``{"OpType" or "domain:OpType": [node names]}`` of every node on the data path (one of its inputs derives
    from a tensor in ``dynamic``) that ingest cannot lower. Nodes on constant paths are left to constant folding."""
    live = set(dynamic)
    bad: dict[str, list[str]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        if not any(t in live for t in node.input if t):
            continue
        if node.op_type == "Shape" and node.domain in STANDARD_DOMAINS:
            continue  # shapes are static: qonnx folds what they feed (e.g. a Reshape's target shape)
        known = ONNX_OPS.get(node.op_type)
        live.update(o for o in node.output if o)
        if known is not None and node.domain in known.domains:
            continue
        key = node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}:{node.op_type}"
        bad[key].append(node.name or f"{node.op_type}_{i}")
    return dict(bad)


def refusal(where: str, bad: dict[str, list[str]]) -> str:
    """One line naming every unsupported node, grouped by op type, with hints."""
    n = sum(len(v) for v in bad.values())
    parts = []
    for key, names in sorted(bad.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = ", ".join(f"'{x}'" for x in names[:3]) + (", ..." if len(names) > 3 else "")
        domain, _, op_type = key.rpartition(":")
        hint = HINTS.get((domain, op_type)) or HINTS.get((domain, None))
        parts.append(f"{key} x{len(names)} ({shown})" + (f" [{hint}]" if hint else ""))
    return (f"{where}: {n} node{'s' if n > 1 else ''} cannot be lowered: {'; '.join(parts)}; "
            f"edgeq lowers {supported_onnx_ops()}")


# ------------------------------------------------------------------------------------------------ IR ops


@dataclass(frozen=True)
class IrOp:
    """Properties of an IR op (``Layer.op``) that passes ask about.

    - ``elementwise``: each output element depends on the element at the same index only (per-channel constants
      allowed).
    - ``glue``: a float32 function of one tensor that may sit between an accumulator and its quantizer; the FPGA
      (and the MCU's XNOR layers) evaluate the whole chain on every input code and fold it into integer thresholds.
    - ``codes``: the emulator passes a wide fixed-point tensor's int64 codes to it as they are (it only compares,
      moves or clamps values).
    - ``same_type``: the output has the input's format and storage (MCU programs keep its type).
    - ``in_place``: element-wise on one input, same element count: the MCU memory plan may reuse its input's buffer.
    - ``mcu_fp32``: the MCU computes it in float32 C, exactly as the emulator's float32 numpy.
    - ``tail``: float32 work that may only follow the accelerated part (it runs on the host after an FPGA).
    """

    name: str
    elementwise: bool = False
    glue: bool = False
    codes: bool = False
    same_type: bool = False
    in_place: bool = False
    mcu_fp32: bool = False
    tail: bool = False


IR_OPS: dict[str, IrOp] = {op.name: op for op in (
    IrOp("Quantize", elementwise=True, codes=True, in_place=True),
    IrOp("Trunc", elementwise=True, in_place=True, mcu_fp32=True),
    IrOp("Cast", elementwise=True, in_place=True),
    IrOp("Threshold", elementwise=True),
    IrOp("BatchNorm", elementwise=True, glue=True, in_place=True, mcu_fp32=True, tail=True),
    IrOp("FloatOp", elementwise=True, glue=True, in_place=True, mcu_fp32=True, tail=True),
    IrOp("Activation", elementwise=True, glue=True, in_place=True, mcu_fp32=True, tail=True),
    IrOp("Relu", elementwise=True, glue=True, codes=True, same_type=True, in_place=True, tail=True),
    IrOp("Clip", elementwise=True, glue=True, codes=True, in_place=True, mcu_fp32=True, tail=True),
    IrOp("Softmax", tail=True),
    IrOp("Add", elementwise=True),
    IrOp("Conv2d"),
    IrOp("Dense"),
    IrOp("MaxPool", codes=True, same_type=True),
    IrOp("AvgPool", mcu_fp32=True),
    IrOp("Reshape", codes=True, same_type=True, tail=True),
    IrOp("Transpose", codes=True, same_type=True),
)}


def having(prop: str) -> frozenset[str]:
    """The IR ops with property ``prop`` (a field of :class:`IrOp`)."""
    if prop not in IrOp.__dataclass_fields__ or prop == "name":
        raise KeyError(prop)
    return frozenset(name for name, op in IR_OPS.items() if getattr(op, prop))
