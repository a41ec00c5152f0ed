"""Float models: give every MAC operand a number format, as hls4ml's precision config does, then build as usual.

``quantize_float_model`` rewrites an ONNX model with no quantizers (a Keras or PyTorch export) into a QONNX model:
a QONNX ``Quant`` in front of every Conv/MatMul/Gemm input, weight and bias, and on the constant of every bias
``Add`` (Keras exports a Dense as MatMul + Add). The formats are

- ``default`` (``--default-format``, e.g. ``ap_fixed<16,6>``) for every such tensor,
- per-layer overrides (``--precision FILE.toml``): ``[layer."NODE"]`` with ``input``/``weight``/``bias`` keys,
  keyed by the ONNX node name of the MAC (or of the Add for its ``bias``); a name that is not a node is an error,
- and, with calibration vectors (``--calibrate X.npy``), each default-format tensor's integer bits chosen from the
  float model's own values on the vectors (weights: from their values) so that nothing saturates; the width and
  rounding stay the default's.

The rewritten model *is* the model that edgeq emulates and builds bit-exactly (against QONNX ``execute_onnx`` of the
rewritten model); a build stores it as the project's ``model.onnx`` and reports the distance to the float model.
A Quant saturates: ``ap_fixed``'s default ``AP_WRAP`` has no QONNX spelling, so the formats saturate (calibration
makes the difference moot). Fixed-point and scaled-integer formats are accepted; rounding follows the format
(``ap_fixed``'s default ``AP_TRN`` is QONNX's ``FLOOR``).
"""

from __future__ import annotations

import copy
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.formats import FixedPoint, Int, NumFormat, parse_format

MAC_OPS = ("Conv", "MatMul", "Gemm")
QUANT_OPS = ("Quant", "BipolarQuant", "FloatQuant", "Trunc")
ROLES = ("input", "weight", "bias")

#: edgeq rounding mode -> QONNX Quant rounding_mode
_TO_QONNX = {"TRN": "FLOOR", "TRN_ZERO": "DOWN", "RND_CONV": "ROUND", "RND_INF": "HALF_UP", "RND_ZERO": "HALF_DOWN",
             "CEIL": "CEIL", "UP": "UP"}


@dataclass
class Precision:
    """What ``--default-format``, ``--precision`` and ``--calibrate`` ask for."""

    default: NumFormat | None = None
    layers: dict[str, dict[str, NumFormat]] = field(default_factory=dict)
    calibrate: np.ndarray | None = None
    source: str = "--precision"

    def __bool__(self) -> bool:
        return self.default is not None or bool(self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"default": None if self.default is None else str(self.default),
                "layers": {k: {r: str(f) for r, f in v.items()} for k, v in self.layers.items()},
                "calibrated": self.calibrate is not None}


def _format(text: Any, where: str) -> NumFormat:
    try:
        fmt = parse_format(str(text))
    except ValueError as e:
        raise EdgeqError(f"{where}: {e}") from None
    if not isinstance(fmt, (FixedPoint, Int)) or (isinstance(fmt, Int) and fmt.bipolar):
        raise EdgeqError(f"{where}: {text!r} is not a fixed-point or integer format; float models take e.g. "
                         "'ap_fixed<16,6>' or 'int8*0.0625'")
    return fmt


def precision_from(default: str | None = None, toml_path: str | Path | None = None,
                   calibrate: np.ndarray | None = None) -> Precision:
    """A :class:`Precision` from the CLI's spellings (one EdgeqError line for anything unreadable)."""
    p = Precision(calibrate=calibrate)
    if default is not None:
        p.default = _format(default, "--default-format")
    if toml_path is not None:
        path = Path(toml_path)
        p.source = str(path)
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise EdgeqError(f"{path}: no such file (the --precision file)") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
            raise EdgeqError(f"{path}: not a readable TOML file ({e})") from None
        unknown = set(doc) - {"default", "layer"}
        if unknown:
            raise EdgeqError(f"{path}: unknown keys {sorted(unknown)}; use `default = \"ap_fixed<16,6>\"` and "
                             "[layer.\"NODE\"] tables with input/weight/bias")
        if "default" in doc and p.default is None:
            p.default = _format(doc["default"], f"{path}: default")
        for name, spec in (doc.get("layer") or {}).items():
            if isinstance(spec, str):
                spec = {r: spec for r in ROLES}
            if not isinstance(spec, dict) or set(spec) - set(ROLES):
                raise EdgeqError(f"{path}: layer {name!r} takes a format or a table with keys {', '.join(ROLES)}")
            p.layers[name] = {r: _format(v, f"{path}: layer {name!r} {r}") for r, v in spec.items()}
    return p


def has_quantizers(model) -> bool:
    return any(n.op_type in QUANT_OPS for n in model.graph.node)


def _fits(fmt: NumFormat, lo: float, hi: float) -> bool:
    return float(fmt.min) <= lo and hi <= float(fmt.max)


def calibrated(fmt: NumFormat, values: np.ndarray) -> NumFormat:
    """``fmt`` with the fewest integer bits (same width and rounding) that hold ``values`` without saturating."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    fx = fmt if isinstance(fmt, FixedPoint) else None
    if fx is None:  # a scaled integer: calibration keeps the width and picks a power-of-two scale
        fx = FixedPoint(fmt.width, fmt.width, fmt.signed, fmt.rounding, "SAT")
    need = max(abs(lo), abs(hi), 2.0 ** -60)
    int_bits = math.ceil(math.log2(need)) + (1 if fx.signed else 0)
    for ib in range(int_bits - 1, int_bits + 3):
        cand = FixedPoint(fx.width, ib, fx.signed, fx.rounding, "SAT")
        if _fits(cand, lo, hi):
            return cand
    return FixedPoint(fx.width, int_bits + 2, fx.signed, fx.rounding, "SAT")  # pragma: no cover


def _quant_params(fmt: NumFormat) -> tuple[float, int, int, int, str]:
    """(scale, bits, signed, narrow, rounding_mode) of the QONNX Quant that computes ``fmt`` (saturating)."""
    if isinstance(fmt, FixedPoint):
        return 2.0 ** -fmt.frac_bits, fmt.width, int(fmt.signed), 0, _TO_QONNX[fmt.rounding]
    if fmt.scale is None or len(fmt.scale) != 1 or fmt.has_zero_point:
        raise EdgeqError(f"{fmt}: only per-tensor scaled integers without a zero point are default formats")
    return float(fmt.scale[0]), fmt.width, int(fmt.signed), int(fmt.narrow), _TO_QONNX[fmt.rounding]


def _float_values(model, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The float model's intermediate tensors ``names`` on ``x`` (onnxruntime, every tensor made an output)."""
    import onnx
    import onnxruntime as ort

    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name
    batch = m.graph.input[0].type.tensor_type.shape.dim[0]
    step = batch.dim_value if batch.HasField("dim_value") and batch.dim_value > 0 else len(x)
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(x), step):
        res = sess.run(names, {iname: np.ascontiguousarray(x[i:i + step], dtype=np.float32)})
        for n, r in zip(names, res):
            out[n].append(np.asarray(r))
    return {n: np.concatenate(v) if v else np.zeros(0) for n, v in out.items()}


def _fold_bias_adds(m) -> None:
    """MatMul(x, W) + B (Keras' Dense) -> Gemm(x, W, B) when x is 2-D and B a constant vector: then the bias is a
    quantized Gemm bias added exactly to the integer accumulator (a float Add after a wide accumulator would be
    float32 glue, which the FPGA could only turn into 2^16 thresholds per channel). The Gemm keeps the MatMul's name."""
    import onnx
    from onnx import helper, numpy_helper

    g = m.graph
    try:
        shapes = onnx.shape_inference.infer_shapes(m).graph
    except Exception:  # pragma: no cover - an ONNX file onnx cannot type: no fold
        return
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in list(shapes.value_info) + list(shapes.input)}
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1
    drop = set()
    for n in list(g.node):
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        for k in (0, 1):
            b, y = n.input[k], n.input[1 - k]
            mm = producers.get(y)
            if mm is None or mm.op_type != "MatMul" or b not in inits or uses.get(y, 0) != 1 or \
                    mm.input[1] not in inits or rank.get(mm.input[0]) != 2:
                continue
            bias = numpy_helper.to_array(inits[b])
            w = numpy_helper.to_array(inits[mm.input[1]])
            if bias.size != w.shape[-1] or bias.ndim > 2:
                continue
            bname = f"{b}__edgeq_gemm_bias"
            g.initializer.append(numpy_helper.from_array(bias.reshape(-1).astype(np.float32), bname))
            gemm = helper.make_node("Gemm", [mm.input[0], mm.input[1], bname], [n.output[0]], name=mm.name or n.name)
            idx = list(g.node).index(mm)
            g.node.insert(idx, gemm)
            drop.update({id(mm), id(n)})
            break
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    used = {t for n in g.node for t in n.input}
    live = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(live)


def quantize_float_model(model, prec: Precision, where: str = "model"):
    """The QONNX model of ``model`` (an onnx ModelProto with no quantizers) under ``prec`` (see the module doc)."""
    from onnx import helper, numpy_helper

    if has_quantizers(model):
        raise EdgeqError(f"{where}: already quantized (it has QONNX quantizers); --default-format and --precision "
                         "are for float models")
    m = copy.deepcopy(model)
    _fold_bias_adds(m)
    g = m.graph
    nodes = {n.name: n for n in g.node if n.name}
    missing = sorted(set(prec.layers) - set(nodes))
    if missing:
        macs = [n.name for n in g.node if n.op_type in MAC_OPS and n.name][:8]
        raise EdgeqError(f"{prec.source}: layer {missing[0]!r} is not a node of {where}; its MAC nodes are "
                         f"{', '.join(macs) or '(unnamed)'} (see `edgeq inspect` for the names)")
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}

    targets: list[tuple[Any, int, str]] = []  # (node, input index, role)
    for n in g.node:
        if n.op_type in MAC_OPS:
            for k, t in enumerate(n.input[:3]):
                if t:
                    targets.append((n, k, ROLES[k] if n.op_type != "MatMul" or k < 2 else "bias"))
        elif n.op_type == "Add" and len(n.input) == 2:
            # a bias Add: a constant added to a MAC's result (directly, as Keras exports a Dense)
            for k, t in enumerate(n.input):
                other = n.input[1 - k]
                if t in inits and other in producers and producers[other].op_type in MAC_OPS:
                    targets.append((n, k, "bias"))

    def fmt_for(node, role: str) -> tuple[NumFormat | None, bool]:
        over = prec.layers.get(node.name, {})
        if role in over:
            return over[role], False
        return prec.default, True

    need_values = sorted({n.input[k] for n, k, r in targets if n.input[k] not in inits
                          and fmt_for(n, r)[1] and prec.calibrate is not None})
    values = _float_values(m, prec.calibrate, need_values) if need_values else {}

    new_nodes: dict[int, list] = {}
    made: dict[tuple[str, str], str] = {}
    for node, k, role in targets:
        t = node.input[k]
        fmt, is_default = fmt_for(node, role)
        if fmt is None:
            raise EdgeqError(f"{where}: node '{node.name or node.op_type}' has a float {role} and no format for it; "
                             "give --default-format (e.g. 'ap_fixed<16,6>') or a [layer] entry in --precision")
        if is_default and prec.calibrate is not None:
            v = numpy_helper.to_array(inits[t]) if t in inits else values[t]
            fmt = calibrated(fmt, v)
        key = (t, str(fmt))
        if key not in made:
            scale, bits, signed, narrow, rmode = _quant_params(fmt)
            q = f"{t}__edgeq_q{len(made)}"
            consts = []
            for suffix, val in (("scale", scale), ("zeropt", 0.0), ("bits", float(bits))):
                name = f"{q}_{suffix}"
                g.initializer.append(numpy_helper.from_array(np.array(val, dtype=np.float32), name))
                consts.append(name)
            qn = helper.make_node("Quant", [t, *consts], [q], name=f"{node.name or node.op_type}_{role}_quant",
                                  domain="qonnx.custom_op.general", signed=signed, narrow=narrow,
                                  rounding_mode=rmode)
            idx = list(g.node).index(node)
            new_nodes.setdefault(idx, []).append(qn)
            made[key] = q
        node.input[k] = made[key]
    order = []
    for i, n in enumerate(g.node):
        order.extend(new_nodes.get(i, []))
        order.append(n)
    del g.node[:]
    g.node.extend(order)
    if not any(o.domain == "qonnx.custom_op.general" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("qonnx.custom_op.general", 1))
    return m


def write_model(cfg, dest: Path) -> None:
    """A project's ``model.onnx``: the user's model, or for a float model the QONNX model it was built as (so that
    ``edgeq compare`` reloads exactly what was built; the float model's own outputs are vectors/qonnx_reference.npy).
    """
    import shutil

    prec = getattr(cfg, "precision", None)
    if not prec:
        shutil.copyfile(cfg.model, dest)
        return
    import onnx

    onnx.save(quantize_float_model(onnx.load(str(cfg.model)), prec, str(cfg.model)), str(dest))
