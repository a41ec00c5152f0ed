"""Lower the edgeq IR to a fixed-point hardware design for the FPGA backend.

The graph is split into ``prefix -> accelerator -> tail``:

* **prefix** (host): float glue up to the first quantizer, e.g. bnn_pynq's ``2x-1`` -- the
  accelerator's input format *is* that quantizer's format, so the preprocessing is absorbed exactly.
* **accelerator**: every tensor is a fixed-point grid carried as integer codes.
* **tail** (host): float glue after the last exact tensor (e.g. TensorNorm), in float32 exactly as
  the emulator runs it (:class:`edgeq.host.HostGlue`).

Inside the accelerator, float glue between an exact tensor and a quantizer (BatchNorm, ReLU, clips,
element-wise constants, an average pool's division, Trunc) becomes integer **thresholds**: the
composed float32 function is evaluated by the emulator itself on every possible input code (or
binary-searched when the domain is huge), so the thresholds reproduce it exactly. A quantizer that
directly follows an exact accumulator with an ap_fixed-equivalent format becomes an ap_fixed
**cast**.

**Minifloats and float32 scales** (:class:`HwTensor`). A minifloat tensor stays its sign|exponent|mantissa bits; an
integer quantizer with a float32 scale stays its integer codes. A Conv2d/Dense decodes each operand to an integer in
units of its lsb (``hls_templates/edgeq_minifloat.h``: significand x significand, shifted by the exponent fields)
and accumulates exactly in n_x + n_w + ceil(log2 K) bits (the paper's worst case). With power-of-two scales the sum
is the IR's exact FixedPoint. Otherwise the scales are factored out: the accumulator A carries the declared rescale
``mac_rescale(A, m[c], b[c])`` (``m[c] = f32(lsb_x * lsb_w[c])``), which the next quantizer's thresholds include
(max pools inside that float glue run first, on A: max commutes with the non-decreasing rescale and ReLU), or which
a ``Rescale`` layer applies in float32 where the result leaves the accelerator. Thresholds into a minifloat count
its signed ordinal (``MiniFloat.ordinal``), which the kernel writes as bits. What cannot be exact (an Add of
tensors whose scales do not align, a non-saturating minifloat into a MAC, ...) is refused, naming the node.

**Binary layers.** Every Dense/Conv2d that :func:`edgeq.mst.xnor_refusal` accepts (±1 weights and ±1 input, one
power-of-two scale each, no bias, no groups) becomes an XNOR-popcount layer (``XnorDense``/``XnorConv2d``), or,
when the build's MST selection (:func:`edgeq.mst.select`) names it, an MST-reordered one (``MstDense``/
``MstConv2d``). Their integer accumulator is ``acc = sum x_i w_i`` over ±1 values, computed as
``n_valid - 2 * popcount((x XOR w) & valid)``; the output code is ``acc * 2^shift`` where
``2^shift = s_x * s_w / output lsb`` is derived from the formats (a factor that is not a power of two >= 1 is
refused). Bit layout (:func:`pack_words`): element i of a ±1 vector is bit ``i % 64`` of uint64 word ``i // 64``,
1 = +1, pad bits 0. Weights are packed per output channel, the rows of :func:`edgeq.mst.channel_bits`.
MST layers keep only the roots' packed rows, and for every child its positions D and the parent's signs there;
see ``hls_templates/edgeq_xnor.h`` for the tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq import mst, ops
from edgeq.emulate import grid_codes, mac_rescale, rescale_factor, run_chain, storage_dtype
from edgeq.errors import EdgeqError
from edgeq.formats import AP_ROUNDING_MODES, Binary, FixedPoint, Float32, Int, MiniFloat, NumFormat, csd_digits
from edgeq.host import HostGlue
from edgeq.ingest import _bits_for, exact_fixed, grid_of, is_power_of_two
from edgeq.ir import Graph, Layer

#: element-wise float ops that may sit between an accumulator and a quantizer (all monotone per channel)
GLUE_OPS = ops.having("glue")
#: ops inside float glue that move before the thresholds: max pools (they commute with the non-decreasing glue
#: before them) and flattens (they commute with element-wise per-tensor glue)
POOL_GLUE = {"MaxPool", "Reshape"}
#: the largest number of (channel, code) evaluations for exhaustive threshold derivation
EXHAUSTIVE_LIMIT = 1 << 23


@dataclass
class HwTensor:
    """An accelerator tensor: per-sample shape and the format its container holds.

    ``format`` is a FixedPoint (integer codes, value = code * 2^-F), an Int with a float32 scale (integer codes,
    value = f32(code * scale)), a MiniFloat (sign|exponent|mantissa bits, any float32 scale) or Float32 (values:
    the output of a Rescale). With ``rescale`` set, the tensor is an exact integer accumulator A (``format`` is
    FixedPoint(W, W)) whose values are ``emulate.mac_rescale(A, rescale["m"][c], rescale["bias"][c])``.
    """

    name: str
    shape: tuple[int, ...]
    format: NumFormat
    rescale: dict[str, Any] | None = None

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def ctype(self) -> str:
        return container(self.format)[0]

    @property
    def dtype(self) -> str:
        return container(self.format)[1]

    @property
    def width(self) -> int:
        """Bits of one stored element."""
        return int(self.format.width if isinstance(self.format, (FixedPoint, Int)) else self.format.bits)

    @property
    def minifloat_bits(self) -> int:
        """The MFBITS template argument of edgeq_kernels.h: the bit width of minifloat codes, else 0."""
        return self.format.bits if isinstance(self.format, MiniFloat) else 0

    @property
    def code_range(self) -> tuple[int, int]:
        """The integer codes an integer tensor can hold (thresholds search this domain)."""
        return int(self.format.code_min), int(self.format.code_max)

    def values(self, codes: np.ndarray) -> np.ndarray:
        """Float64 values of integer codes (a channel per column of ``codes``, shaped (D, C)), exactly as the
        emulator holds them: codes * 2^-F, f32(code * scale), or the declared rescale of an accumulator."""
        if self.rescale is not None:
            m, b = self.rescale["m"], self.rescale["bias"]
            return mac_rescale(codes, m, b).astype(np.float64)
        if isinstance(self.format, FixedPoint):
            return codes.astype(np.float64) * self.format.eps
        return self.format.decode(codes)


@dataclass
class HwLayer:
    """One accelerator layer. ``params`` holds integer arrays (weights, bias, thresholds)."""

    name: str
    op: str  # Conv2d, Dense, XnorDense, XnorConv2d, MstDense, MstConv2d, Threshold, Cast, MaxPool, SumPool, Relu, Add
    inputs: list[str]
    output: str
    source: list[str]
    ir_layers: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class HwDesign:
    graph: Graph
    tensors: dict[str, HwTensor]
    layers: list[HwLayer]
    input: str
    output: str
    glue: HostGlue
    #: IR tensor whose emulator values each accelerator tensor must equal (for per-layer checks)
    ir_tensor: dict[str, str]


def container(fmt: NumFormat) -> tuple[str, str]:
    """(C type, numpy dtype) of the codes of ``fmt`` (see :class:`HwTensor`)."""
    if isinstance(fmt, Float32):
        return "float", "float32"
    if isinstance(fmt, Int):
        fmt = FixedPoint(fmt.width, fmt.width, fmt.signed)
    try:
        ctype = fmt.ctype("c")  # the one choice of integer container, in formats
    except ValueError:
        raise EdgeqError(f"{fmt} is wider than 64 bits; the FPGA backend supports up to 64-bit codes") from None
    return ctype, ctype[:-2]


def _node(layer: Layer) -> str:
    return f"node '{layer.source[0]}' ({layer.op})"


def _codes(values: np.ndarray, lsb: np.ndarray) -> np.ndarray:
    c = np.asarray(values, dtype=np.float64) / lsb
    r = np.rint(c)
    assert np.array_equal(c, r), "values off their grid"
    return r.astype(np.int64)


#: bits per packed word of the binary kernels (edgeq_word_t in hls_templates/edgeq_xnor.h)
WORD_BITS = 64
#: the HwLayer ops of binary layers, by (IR op, MST)
XNOR_OPS = {("Dense", False): "XnorDense", ("Conv2d", False): "XnorConv2d",
            ("Dense", True): "MstDense", ("Conv2d", True): "MstConv2d"}
BINARY_OPS = tuple(XNOR_OPS.values())


def words(k: int) -> int:
    """64-bit words per packed row of K bits."""
    return -(-int(k) // WORD_BITS)


def pack_words(bits: np.ndarray) -> np.ndarray:
    """bool (..., K) (True = +1) -> uint64 (..., ceil(K/64)): element i is bit i % 64 of word i // 64, pad bits 0."""
    b = np.asarray(bits, dtype=bool)
    k = b.shape[-1]
    n = words(k)
    padded = np.zeros(b.shape[:-1] + (n * WORD_BITS,), dtype=np.uint8)
    padded[..., :k] = b
    by = np.packbits(padded.reshape(b.shape[:-1] + (n * 8, 8)), axis=-1, bitorder="little")[..., 0]
    return np.ascontiguousarray(by).view("<u8").astype(np.uint64).reshape(b.shape[:-1] + (n,))


def mst_tables(tree: mst.MstTree, bits: np.ndarray) -> dict[str, np.ndarray]:
    """The MST tables of one layer (steps in ``tree.order``, parents first; layout in edgeq_xnor.h).

    ``order`` (the channel of each step), ``parent`` (-1 for a root), ``dstart`` (N+1 offsets into ``dpos``),
    ``dpos`` (each child's D, ascending), ``dsign`` (the parent's signs at ``dpos``, packed like the weights) and
    ``root_bits`` (the roots' packed rows in step order). The full weights are not among them.
    """
    bits = np.asarray(bits, dtype=bool)
    if tree.diff_pos is None or tree.diff_sign is None:
        mst.attach_weights(tree, bits)
    order = np.asarray(tree.order, dtype=np.int64)
    parent = tree.parent[order]
    pos = [np.asarray(tree.diff_pos[c], dtype=np.int64) for c in order]
    sign = [np.asarray(tree.diff_sign[c], dtype=bool) for c in order]
    for c, d in zip(order, pos):
        if len(d) > 1 and np.any(np.diff(d) <= 0):
            raise AssertionError(f"channel {c}: D positions must be strictly ascending")
    dpos = np.concatenate(pos) if pos else np.zeros(0, np.int64)
    dsign = np.concatenate(sign) if sign else np.zeros(0, bool)
    return {
        "order": order, "parent": parent.astype(np.int64),
        "dstart": np.concatenate([[0], np.cumsum([len(d) for d in pos])]).astype(np.int64),
        "dpos": dpos.astype(np.int64),
        "dsign": pack_words(dsign) if dsign.size else np.zeros(0, np.uint64),
        "root_bits": pack_words(bits[order[parent < 0]]),
    }


def split(graph: Graph) -> tuple[list[Layer], list[Layer], list[Layer]]:
    """(prefix, body, tail) layer lists; see the module docstring."""
    layers = graph.layers
    i = 0
    while i < len(layers) and layers[i].op != "Quantize":
        if layers[i].op not in GLUE_OPS | {"Reshape"}:  # the host prefix: float glue up to the input quantizer
            raise EdgeqError(f"{_node(layers[i])}: the input reaches a {layers[i].op} before any quantizer; "
                             "quantize the input first (e.g. a Brevitas QuantIdentity)")
        i += 1
    if i == len(layers):
        raise EdgeqError(f"{graph.source_path or graph.name}: no quantizer found; this is not a quantized model")
    prefix = layers[: i + 1]
    j = len(layers)
    while j > i + 1 and isinstance(graph.tensors[layers[j - 1].output].format, Float32) and \
            layers[j - 1].op in ops.having("tail"):  # the host tail: float32 work after the last quantizer
        j -= 1
    body, tail = layers[i + 1 : j], layers[j:]
    if not body:
        raise EdgeqError(f"{graph.source_path or graph.name}: nothing to accelerate after the input quantizer")
    return prefix, body, tail


def _subgraph(graph: Graph, layers: list[Layer], inp: str, name: str) -> Graph:
    names = {inp} | {lay.output for lay in layers}
    out = layers[-1].output if layers else inp
    return Graph(name, [inp], [out], {n: graph.tensors[n] for n in names}, list(layers), graph.source_path)


class _Lowerer:
    def __init__(self, graph: Graph, parallel: int, trees: dict | None = None):
        self.g = graph
        self.parallel = max(1, int(parallel))
        self.trees = dict(trees or {})
        self.tensors: dict[str, HwTensor] = {}
        self.layers: list[HwLayer] = []
        self.ir_tensor: dict[str, str] = {}

    def hw(self, name: str) -> HwTensor:
        if name not in self.tensors:
            raise EdgeqError(f"tensor '{name}' is not computed on the accelerator")
        return self.tensors[name]

    def new_tensor(self, ir_name: str, fmt: FixedPoint, shape=None) -> HwTensor:
        t = HwTensor(ir_name, tuple(shape if shape is not None else self.g.tensors[ir_name].shape), fmt)
        self.tensors[ir_name] = t
        self.ir_tensor[ir_name] = ir_name
        return t

    def add(self, op: str, ins: list[str], out: HwTensor, ir: list[Layer], name: str | None = None, **kw) -> HwLayer:
        lay = HwLayer(name or ir[-1].name, op, list(ins), out.name,
                      [s for x in ir for s in x.source], [x.name for x in ir], **kw)
        self.layers.append(lay)
        return lay

    # -- the walk --------------------------------------------------------------------------------
    def run(self, body: list[Layer], first: str) -> None:
        consumers: dict[str, int] = {}
        for lay in self.g.layers:
            for t in lay.inputs:
                consumers[t] = consumers.get(t, 0) + 1
        i = 0
        while i < len(body):
            lay = body[i]
            if lay.op in ("Conv2d", "Dense"):
                self.mac(lay)
            elif lay.op in ("Quantize", "Trunc") or lay.op in GLUE_OPS and not self.is_exact(lay) or \
                    lay.op in POOL_GLUE and self.is_accumulator(lay.inputs[0]):
                # Collect float glue (with max pools and flattens inside it) up to the quantizer that ends it.
                j = i
                while body[j].op in GLUE_OPS | POOL_GLUE and not (body[j].op == "Relu" and self.is_exact(body[j])):
                    if consumers.get(body[j].output, 0) != 1 or j + 1 >= len(body):
                        raise EdgeqError(f"{_node(body[j])}: float32 result is used outside a "
                                         "BatchNorm/activation -> quantizer chain; the FPGA cannot compute it exactly")
                    j += 1
                if body[j].op not in ("Quantize", "Trunc"):
                    raise EdgeqError(f"{_node(body[j])}: expected a quantizer after float glue, found {body[j].op}")
                self.requantize(body[i : j + 1])
                i = j
            elif lay.op == "AvgPool":
                j = i + 1
                while j < len(body) and body[j].op in GLUE_OPS:
                    j += 1
                if j >= len(body) or body[j].op not in ("Quantize", "Trunc"):
                    raise EdgeqError(f"{_node(lay)}: an average pool must be followed by a quantizer or Trunc on FPGA")
                self.avgpool(lay, body[i + 1 : j + 1])
                i = j
            elif lay.op == "Relu":
                x = self.hw(lay.inputs[0])
                self.add("Relu", [x.name], self.new_tensor(lay.output, x.format), [lay])
            elif lay.op == "MaxPool":
                x = self.hw(lay.inputs[0])
                out = self.new_tensor(lay.output, x.format)
                self.add("MaxPool", [x.name], out, [lay], attrs=dict(lay.attrs))
            elif lay.op == "Reshape":  # C-order flatten: the same codes in the same order
                x = self.hw(lay.inputs[0])
                self.add("Reshape", [x.name], self.new_tensor(lay.output, x.format), [lay])
            elif lay.op == "Add":
                self.add_layer(lay)
            elif lay.op == "FloatOp" and self.is_exact(lay):
                self.const_op(lay)
            else:
                raise EdgeqError(f"{_node(lay)}: {lay.op} has no FPGA lowering; supported: Conv2d, Dense, "
                                 "BatchNorm/activation -> quantizer, Quantize, Trunc, Relu, MaxPool, AvgPool, Add, "
                                 "Flatten")
            i += 1

    def is_exact(self, lay: Layer) -> bool:
        return lay.inputs[0] in self.tensors and not isinstance(self.g.tensors[lay.output].format, Float32)

    def is_accumulator(self, name: str) -> bool:
        """A rescaled accumulator (its values are float32: what follows is float glue)."""
        t = self.tensors.get(name)
        return t is not None and t.rescale is not None

    def fixed_in(self, name: str, lay: Layer) -> HwTensor:
        """The input ``name`` of ``lay`` as fixed-point codes: minifloat bits with a power-of-two scale are decoded
        once (a Decode layer); anything else that is not fixed point is refused, naming the layer."""
        t = self.hw(name)
        if isinstance(t.format, FixedPoint) and t.rescale is None:
            return t
        if isinstance(t.format, MiniFloat) and not t.format.saturating:
            raise _nonfinite_input(lay, name, t.format)
        fx = exact_fixed(t.format) if isinstance(t.format, MiniFloat) else None
        if fx is None:
            raise EdgeqError(
                f"{_node(lay)}: input '{name}' is {t.format if t.rescale is None else 'a float32-rescaled sum'}; "
                f"the FPGA kernels cannot compute {lay.op} on it exactly (they need power-of-two scales here): "
                "quantize both sides with power-of-two scales, or requantize before this layer")
        key = name + "#fixed"
        if key not in self.tensors:
            d = HwTensor(key, t.shape, fx)
            self.tensors[key] = d
            self.ir_tensor[key] = self.ir_tensor.get(name, name)  # the same values, as fixed-point codes
            self.add("Decode", [name], d, [lay], name=f"{lay.name}_decode_{len(self.layers)}",
                     attrs={"E": t.format.exponent_bits, "M": t.format.mantissa_bits})
        return self.tensors[key]

    def rescale(self, acc: HwTensor, lay: Layer) -> HwTensor:
        """The declared rescale of an exact accumulator into float32 values (``edgeq_rescale``)."""
        out = HwTensor(acc.name + "#f32", acc.shape, Float32())
        self.tensors[out.name] = out
        self.ir_tensor[out.name] = acc.name  # equal to the emulator's float32 result
        params = {"scale": acc.rescale["m"]}
        if acc.rescale["bias"] is not None:
            params["fbias"] = acc.rescale["bias"]
        self.add("Rescale", [acc.name], out, [lay], name=f"{lay.name}_rescale",
                 attrs={"channels": int(acc.shape[0]) if acc.shape else 1}, params=params)
        return out

    def step_codes_in(self, t: HwTensor, lay: Layer) -> HwTensor:
        """Minifloat bits as monotone integer codes for thresholds: fixed point when the scale is a power of two,
        else step codes A whose values f32(A * f32(step * scale)) are exactly the minifloat's f32(q * scale)
        (A has at most M + 1 significant bits, so f32(A) is exact), i.e. the rescale with m = step * scale."""
        fmt = t.format
        if not fmt.saturating:
            raise _nonfinite_input(lay, t.name, fmt)
        if exact_fixed(fmt) is not None:
            return self.fixed_in(t.name, lay)
        m = np.float32(fmt.step * fmt.scale[0])
        if float(m) != fmt.step * fmt.scale[0] or not np.isfinite(m) or abs(float(m)) < np.finfo(np.float32).tiny:
            raise EdgeqError(f"{_node(lay)}: the step of {fmt} is not a normal float32; requantize with a larger scale")
        lsb, big = grid_of(fmt)
        width = _bits_for(big)
        key = t.name + "#steps"
        if key not in self.tensors:
            channels = t.shape[0] if t.shape else 1
            d = HwTensor(key, t.shape, FixedPoint(width, width, True),
                         rescale={"m": np.full(channels, m, dtype=np.float32), "bias": None})
            self.tensors[key] = d  # its codes are not the IR tensor's: no ir_tensor entry
            self.add("Decode", [t.name], d, [lay], name=f"{lay.name}_decode_{len(self.layers)}",
                     attrs={"E": fmt.exponent_bits, "M": fmt.mantissa_bits})
        return self.tensors[key]

    def operand(self, fmt: NumFormat, lay: Layer, what: str) -> dict[str, Any]:
        """A MAC operand: its minifloat fields (E, M; E = 0 for integer codes), the fixed-point width n of every
        decoded value (the paper's worst case), and the value of one decoded code (per tensor or per channel)."""
        if isinstance(fmt, MiniFloat):
            if not fmt.saturating:
                raise EdgeqError(f"{_node(lay)}: {what} format {fmt} is not saturating, so it can hold inf/NaN, which "
                                 "an exact fixed-point accumulation cannot represent; use a saturating FloatQuant")
            lsb, big = grid_of(fmt)
            return {"E": fmt.exponent_bits, "M": fmt.mantissa_bits, "n": _bits_for(big), "lsb": lsb}
        if isinstance(fmt, Int) and fmt.has_zero_point:
            raise EdgeqError(f"{_node(lay)}: {what} format {fmt} has a zero point; the FPGA kernels multiply "
                             "symmetric codes only: quantize without a zero point")
        g = grid_of(fmt)
        if g is None:  # pragma: no cover - ingest accepts only formats with a grid
            raise EdgeqError(f"{_node(lay)}: {what} format {fmt} has no exact integer grid")
        lsb, big = g
        if isinstance(fmt, Binary):
            return {"E": 0, "M": 0, "n": 2, "lsb": lsb}
        return {"E": 0, "M": 0, "n": _bits_for(big), "lsb": lsb}

    def mac(self, lay: Layer) -> None:
        if mst.xnor_refusal(self.g, lay) is None:
            self.xnor(lay)
            return
        x = self.hw(lay.inputs[0])
        if x.rescale is not None or isinstance(x.format, Float32):  # pragma: no cover - ingest needs a quantizer
            raise EdgeqError(f"{_node(lay)}: its input is not quantized")
        xo = self.operand(x.format, lay, "input")
        wfmt = lay.weight_format
        wo = self.operand(wfmt, lay, "weight")
        out_fmt = self.g.tensors[lay.output].format
        attrs = dict(lay.attrs)
        attrs.update(macs=lay.macs, x_mf=[xo["E"], xo["M"]], w_mf=[0, 0])
        params: dict[str, np.ndarray] = {}
        w_mf = isinstance(wfmt, MiniFloat) and (not isinstance(out_fmt, FixedPoint) or len(wfmt.scale) == 1)
        if w_mf:  # weights stay minifloat bits; their (per-channel) scale is factored out of the sum
            params["weight"] = wfmt.codes_of(lay.weight)
            attrs.update(w_mf=[wo["E"], wo["M"]], w_bits=wfmt.bits, w_ctype=container(wfmt)[0])
            w_units = grid_codes(wfmt, lay.weight, np.asarray(wo["lsb"]), np.float64)
        if isinstance(out_fmt, FixedPoint):
            self.exact_mac(lay, x, xo, wo, out_fmt, attrs, params, w_mf)
            return
        # Float32 result (non-power-of-two scales or a float bias): an exact integer accumulator A, then the
        # declared rescale y = f32(f32(A) * m[c]) (+ b[c]) where the sum is requantized or leaves the accelerator.
        if not w_mf:
            w_units = grid_codes(wfmt, lay.weight, np.asarray(wo["lsb"]), np.float64)
            params["weight"] = w_units.astype(np.int64)
            attrs["w_bits"] = wfmt.width if isinstance(wfmt, (Int, FixedPoint)) else 2
        k = int(np.prod(lay.weight.shape[1:])) if lay.op == "Conv2d" else int(lay.weight.shape[0])
        # The paper's worst-case exact accumulator: n_x + n_w + ceil(log2 K) bits.
        acc_bits = xo["n"] + wo["n"] + max(0, math.ceil(math.log2(k)))
        if acc_bits > 64:
            raise EdgeqError(f"{_node(lay)}: the exact accumulator of {x.format} x {wfmt} over K = {k} needs "
                             f"{acc_bits} bits (> 64); use narrower minifloats (fewer exponent bits) on one side")
        w_lsb = np.broadcast_to(np.asarray(wo["lsb"], dtype=np.float64), lay.weight.shape)
        w_lsb_out = w_lsb[:, 0, 0, 0] if lay.op == "Conv2d" else w_lsb[0]
        m = rescale_factor(np.asarray(xo["lsb"], dtype=np.float64), w_lsb_out)
        bias = None if lay.bias is None else np.asarray(lay.bias, dtype=np.float32).reshape(-1)
        acc = HwTensor(lay.output, tuple(self.g.tensors[lay.output].shape), FixedPoint(acc_bits, acc_bits, True),
                       rescale={"m": m, "bias": bias})
        self.tensors[acc.name] = acc  # no IR tensor holds A itself: not in ir_tensor
        attrs.update(acc_bits=acc_bits, rescaled=True)
        self.add(lay.op, [x.name], acc, [lay], attrs=attrs, params=params)

    def exact_mac(self, lay: Layer, x: HwTensor, xo: dict, wo: dict, out_fmt: FixedPoint, attrs: dict,
                  params: dict, w_mf: bool) -> None:
        """Power-of-two scales throughout: the accumulator is the IR's exact FixedPoint result."""
        if not is_power_of_two(xo["lsb"]) or np.asarray(xo["lsb"]).size != 1:  # pragma: no cover - ingest's rule
            raise AssertionError(f"{lay.name}: exact MAC with a non-power-of-two input scale")
        if w_mf:
            finest = float(wo["lsb"])
            w_codes = grid_codes(lay.weight_format, lay.weight, np.asarray(finest), np.float64).astype(np.int64)
        else:
            lsb_w = np.broadcast_to(np.asarray(wo["lsb"], dtype=np.float64), lay.weight.shape)
            finest = float(lsb_w.min())
            if not np.all(np.frexp(lsb_w / finest)[0] == 0.5):
                raise EdgeqError(f"{_node(lay)}: weight scales are not powers of two; use FixedPoint weight quantizers")
            w_codes = _codes(lay.weight, finest)  # per-channel power-of-two scales folded into the codes
            params["weight"] = w_codes
            wfix = exact_fixed(lay.weight_format) if np.asarray(wo["lsb"]).size == 1 else None
            attrs["w_bits"] = wfix.width if wfix is not None else \
                int(max(1, int(np.abs(w_codes).max())).bit_length() + 1) if w_codes.size else 1
        out_lsb = float(xo["lsb"]) * finest
        if abs(np.frexp(out_lsb)[1] - 1 + out_fmt.frac_bits) > 0:
            raise AssertionError(f"{lay.name}: accumulator lsb mismatch")
        if lay.bias is not None:
            params["bias"] = _codes(lay.bias, out_lsb)
        out = self.new_tensor(lay.output, out_fmt)
        if lay.attrs.get("multiplier_free") and not w_mf:  # shifts and adds (ingest checked the CSD digit count)
            params["digits"] = shift_add_digits(w_codes)
            attrs.update(kd=int(params["digits"].shape[-1]), shift_add=True)
        self.add(lay.op, [x.name], out, [lay], attrs=attrs, params=params)

    def xnor(self, lay: Layer) -> None:
        """A binary layer as XNOR-popcount, or MST-reordered when the build selected it (module docstring)."""
        x = self.hw(lay.inputs[0])
        out_fmt = self.g.tensors[lay.output].format
        if not isinstance(out_fmt, FixedPoint):
            raise EdgeqError(f"{_node(lay)}: binary layer result is {out_fmt}, not fixed point")
        s_x = float(self.g.tensors[lay.inputs[0]].format.scale[0])
        s_w = float(lay.weight_format.scale[0])
        factor = s_x * s_w / float(out_fmt.eps)
        mant, exp = np.frexp(factor)
        if mant != 0.5 or exp < 1:
            raise EdgeqError(f"{_node(lay)}: the XNOR accumulator's scale {s_x * s_w!r} is not the output lsb "
                             f"{out_fmt.eps!r} times a power of two >= 1; it cannot be exact")
        shift = int(exp) - 1
        bits = mst.channel_bits(lay)  # (Cout, K), True = +1
        cout, k = bits.shape
        if (k << shift) > out_fmt.code_max:
            raise AssertionError(f"{lay.name}: {out_fmt} cannot hold an accumulator of K = {k} (shift {shift})")
        use_mst = lay.name in self.trees
        attrs: dict[str, Any] = dict(lay.attrs)
        attrs.update(k=k, words=words(k), shift=shift, channels=cout, macs=lay.macs, w_bits=1,
                     xnor_kernel="mst" if use_mst else "xnor")
        if lay.op == "Conv2d":
            attrs.update(kernel_shape=list(lay.weight.shape[2:]))
        if use_mst:
            tree, tbits = self.trees[lay.name]
            if tree.K != k or not np.array_equal(np.asarray(tbits, dtype=bool), bits):
                raise AssertionError(f"{lay.name}: the MST tree was built for other weights")
            params = mst_tables(tree, bits)
            attrs.update(roots=int((tree.parent < 0).sum()), diff=int(tree.dist.sum()),
                         depth=int(tree.depth.max()), mst_stats=mst.stats(tree))
        else:
            params = {"weight_bits": pack_words(bits)}
        out = self.new_tensor(lay.output, out_fmt)
        self.add(XNOR_OPS[(lay.op, use_mst)], [x.name], out, [lay], attrs=attrs, params=params)

    def const_op(self, lay: Layer) -> None:
        """An exact fixed-point multiply or add by a quantized constant (a fixed-point BatchNorm's scale or shift,
        ingest's ``_exact_scale_shift``): on codes, y = x * c, or y = sx * (x << SX) + sc * (c << SC)."""
        x = self.fixed_in(lay.inputs[0], lay)
        out = self.new_tensor(lay.output, self.g.tensors[lay.output].format)
        a = lay.attrs
        fn = a["fn"]
        c = np.asarray(a["const"], dtype=np.float64)
        full = np.broadcast_to(c.reshape((1,) * max(0, len(x.shape) - c.ndim) + c.shape), x.shape)
        per_channel = full.reshape(full.shape[0], -1) if full.ndim else full.reshape(1, 1)
        if np.all(per_channel == per_channel[:, :1]):
            values, channels = per_channel[:, 0], (x.shape[0] if x.shape else 1)
        else:
            values, channels = full.reshape(-1), x.elements
        if fn == "mul":
            frac_c = out.format.frac_bits - x.format.frac_bits
        elif fn in ("add", "sub"):
            frac_c = out.format.frac_bits
        else:  # pragma: no cover - ingest marks only Mul/Add/Sub exact
            raise EdgeqError(f"{_node(lay)}: {fn} by a constant has no fixed-point lowering")
        codes = _codes(values, 2.0 ** -frac_c)
        attrs = {"fn": fn, "channels": channels, "inner": x.elements // channels,
                 "shift_x": out.format.frac_bits - x.format.frac_bits if fn != "mul" else 0,
                 "sign_x": -1 if fn == "sub" and a["const_first"] else 1,
                 "sign_c": -1 if fn == "sub" and not a["const_first"] else 1}
        self.add("ConstOp", [x.name], out, [lay], attrs=attrs, params={"const": codes})

    def add_layer(self, lay: Layer) -> None:
        out_fmt = self.g.tensors[lay.output].format
        if isinstance(out_fmt, Int):  # integer codes on one float32 scale (ingest's _same_scale_ints): add codes
            a, b = (self.hw(t) for t in lay.inputs)
            if not all(isinstance(t.format, Int) and t.rescale is None and t.format.scale == out_fmt.scale
                       for t in (a, b)):
                raise EdgeqError(f"{_node(lay)}: adds {a.format} and {b.format}, not integer codes on the scale "
                                 f"{out_fmt.scale[0]:.9g}; requantize both inputs with one shared quantizer")
            self.add("Add", [a.name, b.name], self.new_tensor(lay.output, out_fmt), [lay],
                     attrs={"shift_a": 0, "shift_b": 0})
            return
        if not isinstance(out_fmt, FixedPoint):
            fa, fb = (self.g.tensors[t].format for t in lay.inputs)
            raise EdgeqError(f"{_node(lay)}: adds {fa} and {fb}, whose scales do not align exactly in fixed point; "
                             "the FPGA kernels cannot add them exactly: quantize both branches with one shared "
                             "quantizer before the Add (in Brevitas, pass the same QuantIdentity to both), or use "
                             "power-of-two scales (e.g. Int8ActPerTensorFixedPoint)")
        a, b = (self.fixed_in(t, lay) for t in lay.inputs)
        out = self.new_tensor(lay.output, out_fmt)
        self.add("Add", [a.name, b.name], out, [lay],
                 attrs={"shift_a": out_fmt.frac_bits - a.format.frac_bits,
                        "shift_b": out_fmt.frac_bits - b.format.frac_bits})

    # -- requantization ---------------------------------------------------------------------------
    def out_format(self, q: Layer) -> NumFormat:
        """The container format of a quantizer's output: fixed point for power-of-two grids, else minifloat bits
        or integer codes with their float32 scale (per tensor, no zero point)."""
        fmt = self.g.tensors[q.output].format
        if isinstance(fmt, MiniFloat):
            if len(fmt.scale) != 1:
                raise EdgeqError(f"{_node(q)}: quantizer format {fmt} has per-channel scales; the FPGA needs one scale "
                                 "per activation tensor")
            if not fmt.saturating and not fmt.has_inf:
                raise EdgeqError(f"{_node(q)}: quantizer format {fmt} turns overflow on both sides into NaN, which is "
                                 "not monotone, so no thresholds produce it; use saturation=1 or a format with inf")
            return fmt
        fx = exact_fixed(fmt)
        if fx is not None:
            return fx
        if isinstance(fmt, Int) and len(fmt.scale) == 1 and not fmt.has_zero_point and not fmt.bipolar:
            return fmt
        raise EdgeqError(
            f"{_node(q)}: quantizer format {fmt} has per-channel scales or a zero point; the FPGA needs one scale per "
            "activation tensor and no zero point (e.g. Brevitas Int8ActPerTensorFloat or FixedPoint quantizers)"
        )

    def requantize(self, chain: list[Layer]) -> None:
        x = self.hw(chain[0].inputs[0])
        q = chain[-1]
        ofmt = self.out_format(q)
        fmt = self.g.tensors[q.output].format
        # Max pools inside the glue run first, on the exact codes: max commutes with the non-decreasing functions
        # before it (the rescale, ReLU, Clip). Flattens go last: only the per-tensor quantizer may follow them.
        moved = [lay for lay in chain if lay.op in POOL_GLUE]
        glue = [lay for lay in chain if lay.op not in POOL_GLUE]
        for idx, lay in enumerate(chain):
            if lay.op == "MaxPool":
                bad = next((p for p in chain[:idx] if p.op not in ("Relu", "Clip", "MaxPool")), None)
                if bad is None and any(p.op == "Reshape" for p in chain[:idx]):
                    bad = next(p for p in chain[:idx] if p.op == "Reshape")
                if bad is not None:
                    raise EdgeqError(f"{_node(lay)}: max pooling after {bad.op} ({bad.source[0]}) in float glue; the "
                                     "FPGA pools the exact sum, which is only the same after ReLU/Clip: pool after "
                                     "the quantizer or before the BatchNorm")
                if x.rescale is not None and not np.all(x.rescale["m"] > 0):
                    raise EdgeqError(f"{_node(lay)}: a negative scale before the max pool; it cannot pool the exact "
                                     "sum")
            if lay.op == "Reshape" and (chain[idx + 1:] != [q] or len(getattr(fmt, "scale", (1.0,))) != 1):
                raise EdgeqError(f"{_node(lay)}: a flatten inside float glue must be followed directly by a per-tensor "
                                 "quantizer on the FPGA")
        for pool in (lay for lay in moved if lay.op == "MaxPool"):
            shape = tuple(self.g.tensors[pool.output].shape)
            t = HwTensor(pool.output + "#pooled", shape, x.format, x.rescale)
            self.tensors[t.name] = t
            self.add("MaxPool", [x.name], t, [pool], attrs=dict(pool.attrs))
            x = t
        flatten = next((lay for lay in moved if lay.op == "Reshape"), None)
        if flatten is not None:
            out = HwTensor(q.output + "#unflattened", x.shape, ofmt)
            self.tensors[out.name] = out
        else:
            out = self.new_tensor(q.output, ofmt)
        direct = None
        if len(glue) == 1 and q.op == "Quantize" and x.rescale is None and isinstance(x.format, FixedPoint):
            direct = fmt.as_fixed() if isinstance(fmt, Int) else fmt if isinstance(fmt, FixedPoint) else None
        if direct is not None and direct.rounding not in AP_ROUNDING_MODES:
            direct = None  # CEIL/UP have no ap_fixed mode: thresholds derived from the emulator's own rule
        if direct is not None:
            # ap_fixed's own cast rule (e.g. AP_RND_CONV, AP_SAT) on the exact accumulator.
            self.add("Cast", [x.name], out, glue, attrs={"cast_to": direct})
        else:
            if isinstance(x.format, MiniFloat):
                x = self.step_codes_in(x, glue[0])
            self.thresholds(x, glue, out, sum_count=None)
        if flatten is not None:
            self.add("Reshape", [out.name], self.new_tensor(q.output, ofmt), [flatten], name=flatten.name)

    def avgpool(self, pool: Layer, chain: list[Layer]) -> None:
        a = pool.attrs
        x = self.fixed_in(pool.inputs[0], pool)
        if a.get("global"):
            kernel, strides, pads = list(x.shape[1:]), list(x.shape[1:]), [0, 0, 0, 0]
        else:
            kernel, strides, pads = a["kernel"], a["strides"], a["pads"]
        if any(pads) or a.get("ceil_mode"):
            raise EdgeqError(f"{_node(pool)}: padded or ceil-mode average pools are not supported on FPGA")
        count = int(np.prod(kernel))
        bound = max(-x.format.code_min, x.format.code_max) * count
        width = int(bound).bit_length() + 1
        sum_fmt = FixedPoint(width, width - x.format.frac_bits, True)
        s = HwTensor(pool.output + "_sum", tuple(self.g.tensors[pool.output].shape), sum_fmt)
        self.tensors[s.name] = s
        self.add("SumPool", [x.name], s, [pool], attrs={"kernel": kernel, "strides": strides, "count": count})
        out = self.new_tensor(chain[-1].output, self.out_format(chain[-1]))
        self.thresholds(s, [pool] + chain, out, sum_count=count)

    def thresholds(self, x: HwTensor, chain: list[Layer], out: HwTensor, sum_count: int | None) -> None:
        """Integer thresholds reproducing ``chain`` (float glue -> quantizer) on every input code.

        The input codes' values are :meth:`HwTensor.values` (codes * 2^-F, or the declared rescale of an
        accumulator); the output counts :func:`levels` (integer codes, or a minifloat's signed ordinals, which the
        kernel writes as bits). Levels no channel can leave (always or never reached) are dropped."""
        g = self.g
        channels = x.shape[0]
        lo, hi = x.code_range
        qfmt = out.format
        qmin, qmax = level_range(qfmt)
        levels = qmax - qmin
        ndim = len(g.tensors[chain[0].inputs[0]].shape)
        src = g.tensors[chain[0].inputs[0]].format
        wide_codes = sum_count is None and x.rescale is None and storage_dtype(src) is np.int64 and \
            isinstance(x.format, FixedPoint) and x.format.frac_bits == src.frac_bits

        def f(codes: np.ndarray) -> np.ndarray:
            """Output levels for input codes shaped (D, C)."""
            v = x.values(codes)
            if wide_codes:  # the emulator stores this tensor as int64 codes: float64 values would round past 2^53
                v = np.asarray(codes, dtype=np.int64)
            if sum_count is not None:  # AvgPool: the exact window sum, divided in float32 as the emulator does
                v = (v.astype(np.float32) / np.float32(sum_count)).astype(np.float64)
                rest = chain[1:]
            else:
                rest = chain
            v = v.reshape(v.shape + (1,) * (ndim - 1))
            y = run_chain(g, rest, v)
            if y.size != codes.size:  # a constant that varies inside a channel: not per-channel thresholds
                raise EdgeqError(f"{_node(chain[-1])}: the float glue before it has a constant that varies within a "
                                 "channel (per-element); the FPGA needs per-channel BatchNorm/scale constants")
            try:
                lv = level_codes(qfmt, y.reshape(codes.shape))
            except EdgeqError as e:
                raise EdgeqError(f"{_node(chain[-1])}: {e}; requantize with a saturating format") from None
            if lv.size and (lv.min() < qmin or lv.max() > qmax):  # e.g. a QONNX Trunc v1, which does not clip
                bad = int(lv.max() if lv.max() > qmax else lv.min())
                raise EdgeqError(f"{_node(chain[-1])}: its results reach code {bad}, "
                                 f"outside its declared format {self.g.tensors[chain[-1].output].format} "
                                 f"({qmin}..{qmax}), which the FPGA's container cannot hold; clip it (e.g. Trunc v2 "
                                 "or a Quant after it)")
            return lv

        size = hi - lo + 1
        if size * channels <= EXHAUSTIVE_LIMIT:
            dom = np.arange(lo, hi + 1, dtype=np.int64)
            table = np.empty((size, channels), dtype=np.int64)
            step = max(1, (1 << 22) // channels)
            for s in range(0, size, step):
                d = dom[s : s + step]
                table[s : s + step] = f(np.repeat(d[:, None], channels, axis=1))
            inc = np.all(np.diff(table, axis=0) >= 0, axis=0)
            dec = np.all(np.diff(table, axis=0) <= 0, axis=0)
            if not np.all(inc | dec):
                c = int(np.argmin(inc | dec))
                raise EdgeqError(f"{_node(chain[-1])}: the float glue is not monotone in channel {c}; "
                                 "it cannot become thresholds")
            sign = np.where(inc, 1, -1)
            # Threshold k (k = 1..levels): the first s*a at which the output code reaches qmin + k.
            thr = np.empty((channels, levels), dtype=np.int64)
            for c in range(channels):
                col = table[:, c] if inc[c] else table[::-1, c]
                keys = dom if inc[c] else -dom[::-1]
                idx = np.searchsorted(col, qmin + np.arange(1, levels + 1), side="left")
                thr[c] = np.where(idx < size, keys[np.minimum(idx, size - 1)], keys[-1] + 1)
            exhaustive = True
        else:  # binary search over the code domain, all levels at once, relying on monotone glue (ends checked)
            ends = f(np.array([[lo] * channels, [hi] * channels], dtype=np.int64))
            sign = np.where(ends[1] >= ends[0], 1, -1)
            want = qmin + np.arange(1, levels + 1, dtype=np.int64)[:, None]  # (levels, 1)
            a = np.broadcast_to(np.where(sign > 0, lo, -hi).astype(np.int64), (levels, channels)).copy()
            b = np.broadcast_to(np.where(sign > 0, hi, -lo).astype(np.int64) + 1, (levels, channels)).copy()
            while np.any(b > a):
                mid = a + (b - a) // 2
                ok = f(mid * sign) >= want
                b = np.where(ok, mid, b)
                a = np.where(ok, a, mid + 1)
                a = np.minimum(a, b)
            thr = np.ascontiguousarray(a.T)
            exhaustive = False
        # Drop the levels every channel always reaches (their count is constant) or never reaches.
        start = np.where(sign > 0, lo, -hi)[:, None]
        end = np.where(sign > 0, hi, -lo)[:, None]
        always = np.all(thr <= start, axis=0)
        never = np.all(thr > end, axis=0)
        first = int(np.argmin(always)) if not always.all() else levels
        last = levels - (int(np.argmin(never[::-1])) if not never.all() else levels)
        first = min(first, max(0, last - 1))
        last = max(last, first + 1)
        thr = thr[:, first:last]
        if thr.shape[1] == 0:  # a one-code output format: one level no input reaches keeps the kernel's arrays real
            thr = (end + 1).astype(np.int64)
        self.add("Threshold", [x.name], out, chain,
                 attrs={"levels": int(thr.shape[1]), "base": int(qmin + first), "exhaustive": exhaustive,
                        "domain": [lo, hi], "minifloat_bits": out.minifloat_bits,
                        "minifloat_top": minifloat_levels(qfmt) if isinstance(qfmt, MiniFloat) else (0, 0)},
                 params={"thresholds": thr, "sign": sign.astype(np.int64)})


def _nonfinite_input(lay: Layer, name: str, fmt: MiniFloat) -> EdgeqError:
    return EdgeqError(f"{_node(lay)}: input '{name}' is {fmt}, a non-saturating minifloat (overflow gives inf/NaN), "
                      f"which has no fixed-point codes for {lay.op}; quantize it with saturation (Brevitas "
                      "minifloat quantizers saturate by default), or requantize before this layer")


def minifloat_levels(fmt: MiniFloat) -> tuple[int, int]:
    """(top, overflow) of the signed ordinals a Threshold layer counts into ``fmt``: ``top`` is the largest level
    magnitude; for a non-saturating format it stands for the overflow code, whose magnitude bits ``overflow`` are
    not ``top`` when ``max_val`` lowers the largest finite value below the format's own (the codes between are never
    produced: overflow jumps straight to +-inf or the "fn" NaN code). ``overflow`` is 0 for saturating formats."""
    finite = int(fmt.to_bits(np.float64(fmt.max)))
    if fmt.saturating:
        return finite, 0
    mask = (1 << (fmt.bits - 1)) - 1
    return finite + 1, int(fmt.to_bits(np.float64(np.inf))) & mask


def level_range(fmt: NumFormat) -> tuple[int, int]:
    """The output levels a Threshold layer counts into ``fmt``: its integer codes, or a minifloat's signed ordinals
    (-top .. top of :func:`minifloat_levels`; the ends are +-inf or NaN for a non-saturating format)."""
    if isinstance(fmt, MiniFloat):
        top = minifloat_levels(fmt)[0]
        return -top, top
    return int(fmt.code_min), int(fmt.code_max)


def level_codes(fmt: NumFormat, y: np.ndarray) -> np.ndarray:
    """The levels of quantized values ``y`` (see :func:`level_range`): a minifloat's overflow code counts as the
    level right above its largest finite value (``edgeq_mf_from_ordinal``'s TOP -> OVF in edgeq_minifloat.h)."""
    if isinstance(fmt, MiniFloat):
        o = fmt.ordinal(fmt.codes_of(y))
        top, ovf = minifloat_levels(fmt)
        mag = np.abs(o)
        if np.any((mag >= top) & (mag != (ovf or top))):  # e.g. a NaN code: no level stands for it
            raise EdgeqError(f"the float glue produces {fmt} codes other than its finite values and its overflow "
                             f"code (e.g. NaN), which thresholds cannot count")
        return np.clip(o, -top, top)
    return fmt.codes_of(y).astype(np.int64)


def shift_add_digits(codes: np.ndarray) -> np.ndarray:
    """int8 (..., KD): the non-zero CSD digits of each weight code as +-(shift + 1), 0-padded to KD, the largest
    count in the layer (the ``edgeq_product`` layout of hls_templates/edgeq_kernels.h)."""
    d = csd_digits(codes)
    kd = max(1, int(np.count_nonzero(d, axis=-1).max(initial=0)))
    out = np.zeros(np.shape(codes) + (kd,), dtype=np.int8)
    flat_d, flat_o = d.reshape(-1, d.shape[-1]), out.reshape(-1, kd)
    for i, row in enumerate(flat_d):
        nz = np.flatnonzero(row)
        flat_o[i, :len(nz)] = row[nz] * (nz + 1)
    return out


def lower(graph: Graph, parallel: int = 8, trees: dict | None = None) -> HwDesign:
    """Lower ``graph`` for the FPGA. Raises EdgeqError naming the node for anything not exact.

    ``trees`` is :func:`edgeq.mst.select`'s ``{layer name: (tree, channel bits)}``: those binary layers become
    MST layers, every other binary layer plain XNOR-popcount.
    """
    prefix, body, tail = split(graph)
    inq = prefix[-1]
    low = _Lowerer(graph, parallel, trees)
    in_fmt = low.out_format(inq)
    low.new_tensor(inq.output, in_fmt)
    low.run(body, inq.output)
    lowered = {lay.name for lay in low.layers if lay.op.startswith("Mst")}
    missing = sorted(set(low.trees) - lowered)
    if missing:
        raise EdgeqError(f"MST was requested for layer(s) {', '.join(missing)}, which are not binary layers on the "
                         "accelerator")
    last = body[-1].output
    out_t = low.hw(last)
    if out_t.rescale is not None:  # a float32 result leaves the accelerator through the declared rescale
        out_t = low.rescale(out_t, body[-1])
    glue = HostGlue(
        prefix=_subgraph(graph, prefix, graph.inputs[0], "prefix"),
        tail=_subgraph(graph, tail, last, "tail"),
        in_format=in_fmt, out_format=out_t.format,
        in_dtype=container(in_fmt)[1], out_dtype=out_t.dtype,
    )
    return HwDesign(graph, low.tensors, low.layers, inq.output, out_t.name, glue, low.ir_tensor)
