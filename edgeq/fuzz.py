"""Differential graph fuzzer: random valid QONNX graphs, QONNX's ``execute_onnx`` as the oracle.

    from edgeq import fuzz
    c = fuzz.case(seed, i)           # the i-th random graph of a seed, replayable bit for bit
    r = fuzz.check(c)                # Result(outcome="exact" | "bounded" | "refused" | "failed", ...)
    small = fuzz.shrink(c)           # the smallest graph (fewer layers, channels, batch) still failing
    fuzz.save_regression(small, dir, "name", expect="exact")

Generation. A graph is a *recipe*: an input shape, a batch size and a list of steps, each naming an op
generator of :data:`OPS` and keeping its own random stream (derived from ``(seed, case, step)``), so a
step can be deleted and the others regenerate the same way (that is how :func:`shrink` works). Every
op generator is one function registered with :func:`op`; it reads the current tensor (shape, and the
quantizer grid the fuzzer put on it) from a :class:`State` and appends ONNX nodes. Adding an op is one
decorated function.

Comparison. The case's graph runs through ``edgeq.load`` + ``edgeq.emulate`` and through qonnx's
``execute_onnx`` (after InferShapes only) on the same batch. Equal outputs, bit for bit: ``exact``.
Otherwise every layer is re-run by the emulator on the oracle's own input tensors and compared with the
oracle's output tensor: bit for bit, except where the contract declares a MAC whose float32 result
QONNX cannot compute exactly (float scales, or exact accumulators past float32's 2**24: QONNX
dequantizes and sums in float32, edgeq sums integer codes exactly and rounds once). There the
difference must stay within the float32 dot-product bound ``gamma_(K+3) * sum|x||w| + u*|y|``
(Higham); if every layer passes so, the case is ``bounded``. Anything else is ``failed``, as is any
exception other than :class:`EdgeqError` (a clean refusal: ``refused``) and a case running longer than
``timeout`` seconds.
"""

from __future__ import annotations

import copy
import json
import math
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError

Q_DOMAIN = "qonnx.custom_op.general"
#: QONNX rounding_mode strings the oracle (qonnx resolve_rounding_mode) executes
ROUNDINGS = ("ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN")
_F32 = np.float32


# ---------------------------------------------------------------------------------------------
# Quantizer grids the generator knows about
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """What the generator knows of a tensor's values: the quantizer that produced them (or "float")."""

    kind: str  # "int" | "bipolar" | "minifloat" | "float"
    scale: float = 1.0  # per-tensor float32 scale (the largest one when per channel)
    bits: int = 0
    signed: bool = True
    narrow: bool = False
    per_channel: bool = False
    pow2: bool = True
    lo: float = -1.0  # smallest and largest value
    hi: float = 1.0
    emb: tuple[int, int, int] = (0, 0, 0)  # minifloat exponent bits, mantissa bits, bias
    tag: str = "float"

    @property
    def quantized(self) -> bool:
        return self.kind != "float"


FLOAT = Grid("float", lo=-4.0, hi=4.0, tag="float")


def _scale(rng: np.random.Generator, pow2: bool, lo: int = -6, hi: int = 1) -> float:
    if pow2:
        return float(2.0 ** int(rng.integers(lo, hi + 1)))
    return float(_F32(2.0 ** rng.uniform(lo, hi)))


def _int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    if bits == 1 and signed:
        return -1, 1  # QONNX executes a 1-bit signed Quant as bipolar
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(narrow)


def _minifloat_max(e: int, m: int, bias: int) -> float:
    """QONNX's compute_max_val: every code finite, whatever has_inf/has_nan say."""
    return math.ldexp(2.0 - math.ldexp(1.0, -m), (1 << e) - 1 - bias)


def edge_values(rng: np.random.Generator, shape: tuple[int, ...], g: Grid) -> np.ndarray:
    """float32 values that hit a grid's edges: exact grid points, ties (x.5 steps), zeros, the largest codes and
    beyond (saturation), mixed with plain uniform values."""
    n = int(np.prod(shape)) if shape else 1
    which = rng.integers(0, 6, n)
    if g.kind == "int":
        cmin, cmax = _int_range(g.bits, g.signed, g.narrow)
        codes = rng.integers(cmin, cmax + 1, n).astype(np.float64)
        v = np.select(
            [which == 0, which == 1, which == 2, which == 3, which == 4],
            [codes, codes + 0.5, np.zeros(n), np.where(rng.random(n) < 0.5, cmin - rng.integers(0, 3, n),
                                                       cmax + rng.integers(0, 3, n)),
             codes - 0.5],
            rng.uniform(cmin - 2, cmax + 2, n)) * g.scale
    elif g.kind == "minifloat":
        e, m, bias = g.emb
        emin, emax = 1 - bias, (1 << e) - 1 - bias
        ex = rng.integers(emin - 1, emax + 1, n)
        step = np.ldexp(1.0, np.maximum(ex, emin) - m)
        mant = rng.integers(0, 1 << (m + 1), n) + np.where(ex >= emin, 1 << m, 0)
        big = _minifloat_max(e, m, bias)
        v = np.select(
            [which == 0, which == 1, which == 2, which == 3],
            [mant * step, (mant + 0.5) * step, np.zeros(n), big * rng.choice([1.0, 1.25, 2.0, 0.75], n)],
            rng.uniform(-1.2 * big, 1.2 * big, n))
        v = v * np.where(rng.random(n) < 0.5, -1.0, 1.0) * g.scale
    else:
        hi = max(abs(g.lo), abs(g.hi), 1e-3)
        v = np.select([which == 0, which == 1], [np.zeros(n), np.round(rng.uniform(-hi, hi, n) * 4) / 4],
                      rng.uniform(-1.2 * hi, 1.2 * hi, n))
    return np.asarray(v, dtype=np.float64).astype(_F32).reshape(shape)


# ---------------------------------------------------------------------------------------------
# The graph under construction
# ---------------------------------------------------------------------------------------------


@dataclass
class State:
    """The graph being built: nodes, constants, and the current (last) tensor with its per-sample shape."""

    batch: int
    cur: str
    shape: tuple[int, ...]
    grid: Grid = FLOAT
    max_channels: int = 6
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # node name -> format tag (the coverage map)
    qonnx_opset: int = 1
    n: int = 0

    def const(self, v: Any) -> str:
        from onnx import numpy_helper

        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(v, dtype=_F32), name))
        return name

    def node(self, op: str, ins: list[str], tag: str | None = None, domain: str | None = None, **attrs) -> str:
        from onnx import helper

        self.n += 1
        out, name = f"t{self.n}", f"{op}_{self.n}"
        kw = {"domain": domain} if domain else {}
        self.nodes.append(helper.make_node(op, ins, [out], name=name, **kw, **attrs))
        self.tags[name] = tag or self.grid.tag
        return out

    def set(self, out: str, shape: tuple[int, ...], grid: Grid) -> None:
        self.cur, self.shape, self.grid = out, tuple(int(s) for s in shape), grid


# ---------------------------------------------------------------------------------------------
# Quantizers (used by the Quant/BipolarQuant/FloatQuant ops, and for weights, biases and inputs)
# ---------------------------------------------------------------------------------------------


def random_grid(rng: np.random.Generator, kinds=("int", "int", "int", "bipolar", "minifloat"),
                per_channel: bool = False) -> Grid:
    kind = str(rng.choice(kinds))
    pow2 = bool(rng.random() < 0.7)
    if kind == "int":
        bits = int(rng.choice([1, 2, 3, 4, 5, 6, 8, 8, 12, 16]))
        signed, narrow = bool(rng.random() < 0.7), bool(rng.random() < 0.3)
        s = _scale(rng, pow2, -8 if bits > 8 else -5, 0 if bits > 8 else 2)
        cmin, cmax = _int_range(bits, signed, narrow)
        tag = f"int{bits}{'' if signed else 'u'}{'n' if narrow else ''}({'pow2' if pow2 else 'f32'}" \
              f"{',per-ch' if per_channel else ''})"
        return Grid("int", s, bits, signed, narrow, per_channel, pow2, cmin * s, cmax * s, tag=tag)
    if kind == "bipolar":
        s = _scale(rng, pow2, -3, 1)
        return Grid("bipolar", s, 1, True, False, per_channel, pow2, -s, s,
                    tag=f"bipolar({'pow2' if pow2 else 'f32'}{',per-ch' if per_channel else ''})")
    e = int(rng.integers(1, 6))
    m = int(rng.integers(0, 5))
    bias = (1 << (e - 1)) - 1 + int(rng.integers(-1, 3))
    s = _scale(rng, pow2, -3, 1)
    big = _minifloat_max(e, m, bias) * s
    return Grid("minifloat", s, 1 + e + m, True, False, per_channel, pow2, -big, big, emb=(e, m, bias),
                tag=f"e{e}m{m}({'pow2' if pow2 else 'f32'}{',per-ch' if per_channel else ''})")


def add_quantizer(rng: np.random.Generator, st: State, x: str, g: Grid, pshape: tuple[int, ...] = (),
                  tag_node: bool = True) -> str:
    """Append the QONNX quantizer of grid ``g`` on tensor ``x`` (scale shape ``pshape`` when per channel)."""
    def scale_const():
        if not g.per_channel or not pshape:
            return st.const(g.scale)
        n = int(np.prod(pshape))
        if g.pow2:
            f = 2.0 ** rng.integers(-3, 1, n)
        else:
            f = rng.uniform(0.3, 1.0, n)
        return st.const((g.scale * f).astype(_F32).reshape(pshape))

    tag = g.tag if tag_node else None
    if g.kind == "int":
        return st.node("Quant", [x, scale_const(), st.const(0.0), st.const(float(g.bits))], tag, Q_DOMAIN,
                       signed=int(g.signed), narrow=int(g.narrow), rounding_mode=str(rng.choice(ROUNDINGS)))
    if g.kind == "bipolar":
        return st.node("BipolarQuant", [x, scale_const()], tag, Q_DOMAIN)
    e, m, bias = g.emb
    has_inf, has_nan = int(rng.random() < 0.3), int(rng.random() < 0.3)
    sat = 1 if not (has_inf or has_nan) else int(rng.random() < 0.6)
    max_val = _max_val(rng, e, m, bias, bool(has_inf), bool(has_nan))
    return st.node("FloatQuant", [x, scale_const(), st.const(float(e)), st.const(float(m)), st.const(float(bias)),
                                  st.const(max_val)], tag, Q_DOMAIN,
                   has_inf=has_inf, has_nan=has_nan, has_subnormal=1, saturation=sat,
                   rounding_mode=str(rng.choice(ROUNDINGS)))


def _max_val(rng: np.random.Generator, e: int, m: int, bias: int, has_inf: bool, has_nan: bool) -> float:
    """FloatQuant's max_val: mostly the largest value left by the reserved inf/nan codes (what Brevitas exports),
    sometimes a smaller representable value, rarely the full range or an off-grid value (ingest must refuse)."""
    from edgeq.formats import MiniFloat

    top = MiniFloat(e, m, bias, has_inf=has_inf, has_nan=has_nan, saturating=True).max
    r = rng.random()
    if r < 0.7:
        return top
    if r < 0.92:  # a value of the format below top: a mantissa of one of the top binades
        ex = math.frexp(top)[1] - 1 - int(rng.integers(0, 3))
        ex = max(ex, 1 - bias)
        v = math.ldexp(1.0 + int(rng.integers(0, 1 << m)) / (1 << m), ex)
        return min(v, top)
    return _minifloat_max(e, m, bias) if r < 0.96 else float(_F32(top * rng.uniform(0.3, 1.0)))


def quantized_weight(rng: np.random.Generator, st: State, shape: tuple[int, ...],
                     channel_axis: int) -> tuple[str, Grid]:
    """A constant weight through a random quantizer (per tensor or per output channel along ``channel_axis``)."""
    per_ch = bool(rng.random() < 0.3)
    g = random_grid(rng, per_channel=per_ch)
    w = edge_values(rng, shape, g)
    pshape = tuple(s if a == channel_axis else 1 for a, s in enumerate(shape)) if per_ch else ()
    return add_quantizer(rng, st, st.const(w), g, pshape, tag_node=False), g


def ensure_grid(rng: np.random.Generator, st: State, p_skip: float = 0.1) -> None:
    """Put a per-tensor activation quantizer on the current tensor unless it has one (or, rarely, skip:
    ingest must then refuse cleanly or accept an exact accumulator)."""
    if (st.grid.quantized and not st.grid.per_channel) or rng.random() < p_skip:
        return
    gen_act_quant(rng, st, per_tensor=True)


def gen_act_quant(rng: np.random.Generator, st: State, per_tensor: bool = False,
                  kinds=("int", "int", "int", "bipolar", "minifloat")) -> None:
    per_ch = not per_tensor and len(st.shape) >= 1 and rng.random() < 0.15
    g = random_grid(rng, kinds, per_channel=per_ch)
    pshape = ((1, st.shape[0]) + (1,) * (len(st.shape) - 1)) if per_ch else ()
    st.set(add_quantizer(rng, st, st.cur, g, pshape), st.shape, g)


# ---------------------------------------------------------------------------------------------
# The op registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpGen:
    """One op generator: ``fn(rng, state)`` appends nodes to the state; ``ranks`` are the per-sample ranks
    of the current tensor it accepts; ``weight`` is how often it is drawn."""

    name: str
    fn: Callable[[np.random.Generator, State], None]
    ranks: tuple[int, ...]
    weight: float


OPS: dict[str, OpGen] = {}


def op(name: str, ranks: tuple[int, ...] = (1, 3), weight: float = 1.0):
    """Register an op generator: ``@op("Conv", ranks=(3,)) def gen_conv(rng, state): ...``."""
    def deco(fn):
        OPS[name] = OpGen(name, fn, tuple(ranks), weight)
        return fn
    return deco


@op("Quant", weight=1.0)
def gen_quant(rng, st):
    gen_act_quant(rng, st, kinds=("int",))


@op("BipolarQuant", weight=0.3)
def gen_bipolar(rng, st):
    gen_act_quant(rng, st, kinds=("bipolar",))


@op("FloatQuant", weight=0.6)
def gen_floatquant(rng, st):
    gen_act_quant(rng, st, kinds=("minifloat",))


@op("Trunc", weight=0.4)
def gen_trunc(rng, st):
    """QONNX Trunc on an integer grid (v1, or v2 with an output scale when the graph's qonnx opset is 2)."""
    g = st.grid
    if g.kind != "int" or g.per_channel:
        gen_act_quant(rng, st, per_tensor=True, kinds=("int",))
        g = st.grid
    in_bits = max(2, g.bits + int(rng.integers(0, 4)))
    out_bits = int(rng.integers(1, in_bits + 1))
    signed, narrow = g.signed, bool(rng.random() < 0.2)
    mode = str(rng.choice(ROUNDINGS))
    ins = [st.cur, st.const(g.scale), st.const(0.0), st.const(float(in_bits))]
    if st.qonnx_opset >= 2:
        out_scale = float(_F32(g.scale * 2.0 ** int(rng.integers(0, in_bits - out_bits + 1))))
        ins += [st.const(out_scale), st.const(float(out_bits))]
        cmin, cmax = _int_range(out_bits, signed, narrow)
        ng = Grid("int", out_scale, out_bits, signed, narrow, False, g.pow2, cmin * out_scale, cmax * out_scale,
                  tag=f"trunc{out_bits}")
    else:
        ins += [st.const(float(out_bits))]
        ng = replace(g, kind="float", tag=g.tag)  # v1 keeps the input scale and does not clip: values unknown
    out = st.node("Trunc", ins, g.tag, Q_DOMAIN, rounding_mode=mode, signed=int(signed), narrow=int(narrow))
    st.set(out, st.shape, ng)


def _conv_out(h: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    return (h + p0 + p1 - ((k - 1) * d + 1)) // s + 1


@op("Conv", ranks=(3,), weight=2.0)
def gen_conv(rng, st):
    ensure_grid(rng, st)
    c, h, w = st.shape
    kind = rng.choice(["plain", "plain", "depthwise", "grouped"])
    if kind == "depthwise":
        group, cout = c, c * int(rng.integers(1, 3))
    elif kind == "grouped" and c > 1:
        divs = [d for d in range(2, c + 1) if c % d == 0]
        group = int(rng.choice(divs))
        cout = group * int(rng.integers(1, 3))
    else:
        group, cout = 1, int(rng.integers(1, st.max_channels + 1))
    cout = max(group, min(cout, max(st.max_channels, group)))
    cout -= cout % group
    kh, kw = (int(rng.integers(1, 4)) for _ in range(2))
    sh, sw = (int(rng.integers(1, 3)) for _ in range(2))
    dh, dw = (int(rng.integers(1, 3)) if rng.random() < 0.25 else 1 for _ in range(2))
    pads = [int(rng.integers(0, kh)), int(rng.integers(0, kw)), int(rng.integers(0, kh)), int(rng.integers(0, kw))]
    oh, ow = _conv_out(h, kh, sh, pads[0], pads[2], dh), _conv_out(w, kw, sw, pads[1], pads[3], dw)
    if oh < 1 or ow < 1:
        kh = kw = dh = dw = 1
        pads = [0, 0, 0, 0]
        oh, ow = _conv_out(h, 1, sh, 0, 0, 1), _conv_out(w, 1, sw, 0, 0, 1)
    wname, wg = quantized_weight(rng, st, (cout, c // group, kh, kw), 0)
    ins = [st.cur, wname]
    r = rng.random()
    if r < 0.3:
        ins.append(st.const(edge_values(rng, (cout,), FLOAT)))
    elif r < 0.5 and st.grid.quantized and st.grid.pow2 and wg.pow2:
        bg = Grid("int", float(_F32(st.grid.scale * wg.scale)), 16, True, tag="int16(bias)")
        ins.append(add_quantizer(rng, st, st.const(edge_values(rng, (cout,), bg)), bg, tag_node=False))
    out = st.node("Conv", ins, kernel_shape=[kh, kw], strides=[sh, sw], pads=pads, dilations=[dh, dw],
                  group=group)
    st.set(out, (cout, oh, ow), FLOAT)


@op("Dense", ranks=(1,), weight=1.5)
def gen_dense(rng, st):
    ensure_grid(rng, st)
    (k,) = st.shape
    n = int(rng.integers(1, 4 * st.max_channels + 1))
    if rng.random() < 0.5:
        wname, _ = quantized_weight(rng, st, (k, n), 1)
        out = st.node("MatMul", [st.cur, wname])
    else:
        trans = int(rng.random() < 0.6)
        wname, _ = quantized_weight(rng, st, (n, k) if trans else (k, n), 0 if trans else 1)
        ins = [st.cur, wname]
        if rng.random() < 0.6:
            ins.append(st.const(edge_values(rng, (n,), FLOAT)))
        out = st.node("Gemm", ins, transB=trans)
    st.set(out, (n,), FLOAT)


@op("BatchNormalization", weight=0.8)
def gen_batchnorm(rng, st):
    c = st.shape[0]
    pow2 = rng.random() < 0.4
    gamma = 2.0 ** rng.integers(-2, 2, c) * rng.choice([-1, 1], c) if pow2 else rng.uniform(-2, 2, c)
    gamma = np.where(rng.random(c) < 0.1, 0.0, gamma)
    beta = np.round(rng.uniform(-1, 1, c) * 8) / 8 if pow2 else rng.uniform(-1, 1, c)
    mean = rng.uniform(-1, 1, c) * (0 if pow2 else 1)
    var = 2.0 ** (2 * rng.integers(-2, 2, c)) - 1e-5 if pow2 else rng.uniform(0.05, 3, c)
    eps = float(rng.choice([1e-5, 1e-3, 0.0])) if not pow2 else 1e-5
    ins = [st.cur] + [st.const(v) for v in (gamma, beta, mean, np.maximum(var, 1e-6))]
    st.set(st.node("BatchNormalization", ins, epsilon=eps), st.shape, FLOAT)


@op("Relu", weight=1.0)
def gen_relu(rng, st):
    g = st.grid
    ng = replace(g, lo=max(0.0, g.lo), hi=max(0.0, g.hi)) if g.quantized else g
    st.set(st.node("Relu", [st.cur]), st.shape, ng)


@op("Clip", weight=0.6)
def gen_clip(rng, st):
    g = st.grid
    if g.quantized and rng.random() < 0.7:  # bounds on the grid (e.g. ReLU6 on a fixed-point tensor)
        lo = g.scale * math.floor(rng.uniform(g.lo, 0) / g.scale) if g.kind == "int" else float(rng.choice([0, g.lo]))
        hi = g.scale * math.ceil(rng.uniform(0, g.hi) / g.scale) if g.kind == "int" else g.hi
    else:
        lo, hi = float(rng.uniform(-2, 0)), float(rng.uniform(0, 2))
    ins = [st.cur, st.const(np.float32(lo))] + ([st.const(np.float32(hi))] if rng.random() < 0.8 else [])
    st.set(st.node("Clip", ins), st.shape, replace(g, lo=max(g.lo, lo), hi=min(g.hi, hi)))


_ACTIVATIONS = ("LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "Tanh")


@op("Activation", weight=0.7)
def gen_activation(rng, st):
    """An element-wise activation, mostly on a quantized tensor (then edgeq tabulates onnxruntime's kernel on the
    grid: exact), else on float32 values (edgeq's declared numpy implementation)."""
    if rng.random() < 0.7:
        ensure_grid(rng, st, p_skip=0.0)
    fn = str(rng.choice(_ACTIVATIONS))
    ins, attrs = [st.cur], {}
    if fn == "LeakyRelu":
        attrs["alpha"] = float(rng.choice([0.01, 0.1, 0.3, 1.5]))
    elif fn == "Elu" and rng.random() < 0.5:
        attrs["alpha"] = float(rng.uniform(0.1, 2))
    elif fn == "HardSigmoid" and rng.random() < 0.5:
        attrs["alpha"], attrs["beta"] = float(rng.uniform(0.05, 1)), float(rng.uniform(0, 1))
    elif fn == "PRelu":
        shape = () if rng.random() < 0.4 else (st.shape[0],) + (1,) * (len(st.shape) - 1)
        ins.append(st.const(rng.uniform(-1, 1.5, shape)))
    st.set(st.node(fn, ins, tag="float", **attrs), st.shape, FLOAT)


@op("Softmax", weight=0.3)
def gen_softmax(rng, st):
    """Softmax over the last axis (onnx opset 13), usually on quantized logits."""
    ensure_grid(rng, st, p_skip=0.3)
    st.set(st.node("Softmax", [st.cur], tag="float", axis=-1), st.shape, FLOAT)


@op("Add", weight=0.8)
def gen_residual_add(rng, st):
    """A residual block: y = q(x); y + q'(branch(y)), where branch is a same-shape Conv or nothing."""
    ensure_grid(rng, st, p_skip=0.2)
    skip, shape, skip_grid = st.cur, st.shape, st.grid
    if len(shape) == 3 and rng.random() < 0.6:
        c = shape[0]
        k = int(rng.choice([1, 3]))
        wname, _ = quantized_weight(rng, st, (c, c, k, k), 0)
        b = st.node("Conv", [skip, wname], kernel_shape=[k, k], pads=[k // 2] * 4)
        st.set(b, shape, FLOAT)
    if rng.random() < 0.85:
        if rng.random() < 0.3 and skip_grid.kind == "int" and not skip_grid.per_channel:
            # one shared quantizer (Brevitas' default float scales): both branches on the skip's grid
            st.set(add_quantizer(rng, st, st.cur, skip_grid), shape, skip_grid)
        else:
            gen_act_quant(rng, st, per_tensor=True)
    a, bt = (skip, st.cur) if rng.random() < 0.5 else (st.cur, skip)
    st.set(st.node("Add", [a, bt]), shape, FLOAT)


_GLUE = ("Mul", "Mul", "Add", "Add", "Sub", "Div", "Max", "Min")


@op("FloatGlue", weight=1.0)
def gen_float_glue(rng, st):
    """Element-wise float glue with a constant: Mul/Add/Sub/Div/Max/Min, scalar or per channel, either order;
    sometimes a quantized constant (Brevitas' BatchNorm-to-scale-bias pattern)."""
    fn = str(rng.choice(_GLUE))
    shape = () if rng.random() < 0.5 else (1, st.shape[0]) + (1,) * (len(st.shape) - 1)
    if rng.random() < 0.5:
        c = 2.0 ** rng.integers(-3, 3, shape) * rng.choice([-1, 1], shape)
        if fn in ("Add", "Sub", "Max", "Min"):
            c = np.round(rng.uniform(-2, 2, shape) * 8) / 8
    else:
        c = rng.uniform(0.2, 2, shape) * rng.choice([-1, 1], shape)
    cname = st.const(np.asarray(c, dtype=_F32))
    if fn in ("Mul", "Add") and rng.random() < 0.3:
        g = random_grid(rng, kinds=("int",))
        cname = add_quantizer(rng, st, cname, g, tag_node=False)
    # c / x is left out: the sign of a zero activation would decide +-inf, and the fuzzer compares values, where
    # -0 == +0 (QONNX's sign(x)*... rounding modes produce -0 where edgeq gives +0; see the module doc)
    ins = [st.cur, cname] if fn == "Div" or rng.random() < 0.7 else [cname, st.cur]
    st.set(st.node(fn, ins), st.shape, FLOAT)


def _pool_geometry(rng, h: int, w: int):
    kh, kw = int(rng.integers(1, min(3, h) + 1)), int(rng.integers(1, min(3, w) + 1))
    sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    pads = [int(rng.integers(0, kh)), int(rng.integers(0, kw)), int(rng.integers(0, kh)), int(rng.integers(0, kw))]
    if rng.random() < 0.5:
        pads = [0, 0, 0, 0]
    ceil = int(rng.random() < 0.25)

    def out(n, k, s, p0, p1):
        return -(-(n + p0 + p1 - k) // s) + 1 if ceil else (n + p0 + p1 - k) // s + 1

    if ceil and any((o - 1) * s >= n + p0 for o, s, n, p0 in ((out(h, kh, sh, pads[0], pads[2]), sh, h, pads[0]),
                                                            (out(w, kw, sw, pads[1], pads[3]), sw, w, pads[1]))):
        # a last window starting in the padding: ONNX shape inference and onnxruntime disagree on the output size
        # (the graph is not valid), so use floor mode
        ceil = 0
    return dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=pads, ceil_mode=ceil), \
        (out(h, kh, sh, pads[0], pads[2]), out(w, kw, sw, pads[1], pads[3]))


@op("MaxPool", ranks=(3,), weight=0.7)
def gen_maxpool(rng, st):
    c, h, w = st.shape
    attrs, (oh, ow) = _pool_geometry(rng, h, w)
    st.set(st.node("MaxPool", [st.cur], **attrs), (c, oh, ow), st.grid)


@op("AveragePool", ranks=(3,), weight=0.7)
def gen_avgpool(rng, st):
    c, h, w = st.shape
    attrs, (oh, ow) = _pool_geometry(rng, h, w)
    st.set(st.node("AveragePool", [st.cur], count_include_pad=int(rng.random() < 0.5), **attrs), (c, oh, ow),
           FLOAT)


@op("GlobalAveragePool", ranks=(3,), weight=0.4)
def gen_gap(rng, st):
    st.set(st.node("GlobalAveragePool", [st.cur]), (st.shape[0], 1, 1), FLOAT)


@op("Reshape", weight=0.6)
def gen_reshape(rng, st):
    """Flatten a (C, H, W) tensor, or view a flat one as (C, H, W)."""
    n = int(np.prod(st.shape))
    if len(st.shape) == 3:
        if rng.random() < 0.5:
            out = st.node("Flatten", [st.cur], axis=1)
        else:
            out = st.node("Reshape", [st.cur, _int64_const(st, [-1, n])])
        st.set(out, (n,), st.grid)
        return
    divs = [d for d in range(1, n + 1) if n % d == 0]
    c = int(rng.choice(divs))
    hw = n // c
    h = int(rng.choice([d for d in range(1, hw + 1) if hw % d == 0]))
    out = st.node("Reshape", [st.cur, _int64_const(st, [st.batch, c, h, hw // h])])
    st.set(out, (c, h, hw // h), st.grid)


def _int64_const(st: State, v) -> str:
    from onnx import numpy_helper

    st.n += 1
    name = f"c{st.n}"
    st.inits.append(numpy_helper.from_array(np.asarray(v, dtype=np.int64), name))
    return name


@op("Transpose", ranks=(3,), weight=0.4)
def gen_transpose(rng, st):
    perm = [int(p) for p in rng.permutation(3)]
    st.set(st.node("Transpose", [st.cur], perm=[0] + [p + 1 for p in perm]), tuple(st.shape[p] for p in perm),
           st.grid)


# ---------------------------------------------------------------------------------------------
# Recipes and cases
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a case: the ops of its steps (with their original step index, which keys
    each step's random stream) and the size caps the shrinker lowers."""

    seed: int
    index: int
    in_shape: tuple[int, ...]
    batch: int
    steps: tuple[tuple[int, str], ...]
    max_channels: int = 6
    qonnx_opset: int = 1
    first_quant: bool = True


@dataclass
class Case:
    recipe: Recipe | None
    model: Any  # onnx.ModelProto
    x: np.ndarray
    tags: dict[str, str]

    @property
    def n_layers(self) -> int:
        return len(self.model.graph.node)


def _rng(seed: int, index: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), *[int(m) for m in more]])


def recipe(seed: int, i: int) -> Recipe:
    """The i-th random recipe of ``seed``: a fixed numpy Generator per (seed, i)."""
    rng = _rng(seed, i)
    if rng.random() < 0.65:
        c = int(rng.integers(1, 5))
        h, w = int(rng.integers(2, 9)), int(rng.integers(2, 9))
        in_shape: tuple[int, ...] = (c, h, w)
    else:
        in_shape = (int(rng.integers(2, 33)),)
    depth = int(rng.integers(2, 7))
    names = list(OPS)
    wts = np.array([OPS[n].weight for n in names])
    steps = [(j, str(rng.choice(names, p=wts / wts.sum()))) for j in range(depth)]
    return Recipe(seed, i, in_shape, int(rng.integers(1, 9)), tuple(steps),
                  qonnx_opset=int(rng.choice([1, 2])), first_quant=bool(rng.random() < 0.9))


def build(r: Recipe) -> Case:
    """The QONNX model and input batch of a recipe (deterministic)."""
    from onnx import TensorProto, helper

    st = State(batch=r.batch, cur="x", shape=r.in_shape, max_channels=r.max_channels, qonnx_opset=r.qonnx_opset)
    rng0 = _rng(r.seed, r.index, 1_000_000)
    if r.first_quant:
        gen_act_quant(rng0, st, per_tensor=True)
    first_grid = st.grid
    for j, name in r.steps:
        g = OPS[name]
        rng = _rng(r.seed, r.index, j)
        if len(st.shape) not in g.ranks:
            _adapt_rank(rng, st, g.ranks[0])
        if int(np.prod(st.shape)) > 600:  # keep tensors small: pool them down first
            gen_maxpool(rng, st)
        g.fn(rng, st)
    out_shape = [r.batch, *st.shape]
    graph = helper.make_graph(
        st.nodes, f"fuzz_{r.seed}_{r.index}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [r.batch, *r.in_shape])],
        [helper.make_tensor_value_info(st.cur, TensorProto.FLOAT, out_shape)], st.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid(Q_DOMAIN, r.qonnx_opset)])
    model.ir_version = 8
    x = edge_values(_rng(r.seed, r.index, 2_000_000), (r.batch, *r.in_shape), first_grid)
    return Case(r, model, x, st.tags)


def _adapt_rank(rng, st: State, rank: int) -> None:
    if rank == 1:
        gen_reshape(rng, st) if len(st.shape) == 3 else None
        return
    n = int(np.prod(st.shape))  # a flat tensor viewed as (C, H, W)
    c = max(d for d in range(1, min(n, st.max_channels) + 1) if n % d == 0)
    hw = n // c
    h = max(d for d in range(1, int(math.isqrt(hw)) + 1) if hw % d == 0)
    st.set(st.node("Reshape", [st.cur, _int64_const(st, [st.batch, c, h, hw // h])]), (c, h, hw // h), st.grid)


def case(seed: int, i: int) -> Case:
    """The i-th case of ``seed``, replayable exactly."""
    return build(recipe(seed, i))


# ---------------------------------------------------------------------------------------------
# Running one case
# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    outcome: str  # "exact" | "bounded" | "refused" | "failed"
    message: str = ""
    op: str = ""  # refused: op type of the first refused node
    fmt: str = ""  # refused: format tag of that node
    layer: str = ""  # failed: the first differing layer
    seconds: float = 0.0
    ops: tuple[str, ...] = ()  # the case's op types and format tags (the coverage map's denominators)
    fmts: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.outcome in ("exact", "bounded")


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def oracle(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """QONNX's reference: execute_onnx after InferShapes (the graph is built fully typed and sorted, so
    qonnx's slower cleanup adds nothing), the whole batch at once. Returns the full execution context."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    mw = ModelWrapper(copy.deepcopy(model)).transform(InferShapes(), make_deepcopy=False)
    return execute_onnx(mw, {mw.graph.input[0].name: x}, return_full_exec_context=True)


_NODE_RE = re.compile(r"node '([^']*)' \(([A-Za-z]+)\)")


def _refusal(e: EdgeqError, tags: dict[str, str]) -> Result:
    msg = str(e)
    m = _NODE_RE.search(msg)
    name, op_type = (m.group(1), m.group(2)) if m else ("", "model")
    return Result("refused", msg, op_type, tags.get(name, "?"))


def check(c: Case, timeout: float = 20.0) -> Result:
    """Run one case through edgeq and the oracle and classify it (see the module doc)."""
    t0 = time.perf_counter()
    use_alarm = timeout and hasattr(signal, "setitimer")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        res = _check(c)
    except _Timeout:
        res = Result("failed", f"hang: no result after {timeout:g} s")
    except Exception as e:  # anything but a clean refusal is a bug (of edgeq, or of the generator)
        res = Result("failed", f"crash: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    res.seconds = time.perf_counter() - t0
    res.ops = tuple(sorted({n.op_type for n in c.model.graph.node}))
    res.fmts = tuple(sorted(set(c.tags.values())))
    return res


def _check(c: Case) -> Result:
    from edgeq.emulate import emulate
    from edgeq.ingest import load

    try:
        graph = load(copy.deepcopy(c.model))
        y = emulate(graph, c.x)
    except EdgeqError as e:
        return _refusal(e, c.tags)
    ctx = oracle(c.model, c.x)
    ref = ctx[c.model.graph.output[0].name].astype(np.float64)
    if y.shape == ref.shape and np.array_equal(y, ref, equal_nan=True):
        return Result("exact")
    return _per_layer(graph, ctx, y, ref)


def _stored(fmt, v: np.ndarray) -> np.ndarray:
    from edgeq.emulate import storage_dtype

    dt = storage_dtype(fmt)
    if dt is np.int64:
        return np.rint(np.ldexp(v.astype(np.float64), fmt.frac_bits)).astype(np.int64)
    return v.astype(dt)


#: how far a layer with a declared float32 implementation (numpy's exp: Softmax; Sigmoid, Tanh, Elu, Selu of float32
#: values) may be from onnxruntime's kernel: 2^-16 relative plus 2^-22 absolute (their outputs are O(1); onnxruntime
#: computes Selu near 0 as alpha*exp(x) - alpha, with cancellation)
DECLARED_RTOL, DECLARED_ATOL = 2.0 ** -16, 2.0 ** -22


def _per_layer(graph, ctx: dict[str, np.ndarray], y: np.ndarray, ref: np.ndarray) -> Result:
    """Re-run each layer on the oracle's inputs; exact layers must match bit for bit, declared float32 MACs
    within the dot-product bound."""
    from edgeq import ops
    from edgeq.emulate import _values, run_layer, step
    from edgeq.formats import FixedPoint, Int

    bounded = False
    for layer in graph.layers:
        if layer.output not in ctx or any(t not in ctx for t in layer.inputs):
            continue
        env = {t: _stored(graph.tensors[t].format, ctx[t]) for t in layer.inputs}
        off_grid = [t for t in layer.inputs if env[t].dtype.kind == "i" and not np.array_equal(
            _values(graph.tensors[t].format, env[t]), ctx[t].astype(np.float64))]
        if off_grid and layer.op in ops.having("codes"):
            # QONNX rounded a wide accumulator to float32 off its grid: run the clamp/selection on those values
            got = run_layer(graph, layer, [ctx[t].astype(np.float64) for t in layer.inputs]).astype(np.float64)
        else:
            got = _values(graph.tensors[layer.output].format, step(graph, layer, env)).astype(np.float64)
        want = ctx[layer.output].astype(np.float64)
        if got.shape != want.shape:
            return Result("failed", f"layer {layer.name} ({layer.op}): shape {got.shape} vs QONNX {want.shape}",
                          layer=layer.name)
        # values, not bits: -0 and +0 are one value (one integer code in hardware)
        if np.array_equal(got, want, equal_nan=True):
            continue
        d = ~((got == want) | (np.isnan(got) & np.isnan(want)))
        if layer.op == "MaxPool":
            # onnxruntime's MaxPool lets a NaN win or lose depending on its kernel's tap order (measured: along H
            # the first tap wins, along W a NaN tap wins); edgeq propagates NaN (IEEE maximum). And it starts from
            # lowest() = -FLT_MAX, so a window of -inf gives -FLT_MAX where edgeq gives -inf. Outside the contract.
            nan_tap = np.isnan(env[layer.inputs[0]]).any() & (np.isnan(got) | np.isnan(want))
            lowest = (got == -np.inf) & (want == -np.finfo(np.float32).max)
            if not (d & ~nan_tap & ~lowest).any():
                bounded = True
                continue
        if layer.op == "Add" and isinstance(graph.tensors[layer.output].format, Int):
            # same-scale integer codes add exactly; QONNX adds the two float32 values in float32
            ab = sum(np.abs(_values(graph.tensors[t].format, env[t]).astype(np.float64)) for t in layer.inputs)
            if np.all(np.abs(got - want)[d] <= np.ldexp(ab[d] if np.ndim(ab) else ab, -22)):
                bounded = True
                continue
        if layer.op == "Add" and isinstance(graph.tensors[layer.output].format, FixedPoint) and np.all(
                np.abs(got - want)[d] <= np.ldexp(np.abs(want)[d], -24)):
            # QONNX adds in float32 (one rounding, |err| <= 2^-24 |y|); edgeq adds fixed point exactly
            bounded = True
            continue
        if "declared implementation" in layer.contract.engine and np.all(
                np.abs(got - want)[d] <= DECLARED_RTOL * np.abs(want)[d] + DECLARED_ATOL):
            # Softmax, and Sigmoid/Tanh/Elu/Selu of float32 values: numpy's exp, not onnxruntime's
            bounded = True
            continue
        if layer.op == "Quantize" and _declared_floatquant(graph, layer, env[layer.inputs[0]], d):
            bounded = True
            continue
        bound = _float32_bound(graph, layer, ctx, want)
        if bound is not None:
            with np.errstate(invalid="ignore"):
                ratio = np.where(d, np.abs(got - want) / bound, 0.0)
            if np.all(ratio <= 1.0):
                bounded = True
                continue
            detail = f"beyond the float32 summation bound (worst {np.nanmax(ratio):.3g} x bound)"
        else:
            idx = tuple(int(i) for i in np.argwhere(d)[0])
            detail = f"{int(d.sum())}/{d.size} values differ, first at {idx}: edgeq {got[idx]!r} vs QONNX {want[idx]!r}"
        src = graph.tensors[layer.inputs[0]].format
        return Result("failed", f"layer {layer.name} ({layer.op}, {src} -> {graph.tensors[layer.output].format}): "
                                f"{detail}", layer=layer.name)
    if bounded:
        return Result("bounded", "differs only where the contract declares it (float32 sums within the proven bound, "
                                   "FloatQuant log2/inf rules, NaN in MaxPool)")
    return Result("failed", f"outputs differ (max |diff| {np.nanmax(np.abs(y - ref)) if y.shape == ref.shape else '?'})"
                            " but every layer matches on the oracle's inputs", layer="")


def _declared_floatquant(graph, layer, x: np.ndarray, differ: np.ndarray) -> bool:
    """True when a minifloat quantizer differs from QONNX only where edgeq declares it does (and
    tests/test_formats_minifloat.py pins): QONNX's float32 ``floor(log2(|v| + tiny))`` exponent estimate is one
    off (just below a power of two, or at the bottom of float32's normal range), or v = x/scale is +-inf (QONNX
    gives NaN; edgeq saturates or keeps inf, as ml_dtypes does)."""
    from edgeq.formats import MiniFloat

    fmt = graph.tensors[layer.output].format
    if not isinstance(fmt, MiniFloat) or x.dtype.kind != "f":
        return False
    x32 = x.astype(_F32)
    with np.errstate(all="ignore"):
        v = (x32 / fmt.scale_array(x32.ndim, _F32)).astype(_F32)
        est = np.floor(np.log2(np.abs(v) + np.finfo(_F32).tiny))
        true = np.frexp(v.astype(np.float64))[1] - 1.0
    floor_exp = fmt.min_normal_exponent
    declared = np.isinf(v) | (np.isfinite(v) & (np.maximum(est, floor_exp) != np.maximum(true, floor_exp)))
    return bool(np.all(declared[differ]))


def _exactly_summable(fmt, k: int) -> bool:
    """True when any float32 sum of ``k`` values of ``fmt`` is exact: a power-of-two grid and k * max|code| <= 2**24."""
    from edgeq.ingest import grid_of, is_power_of_two

    g = grid_of(fmt)
    return g is not None and g[0].size == 1 and is_power_of_two(g[0]) and k * g[1] <= 2**24


def _float32_bound(graph, layer, ctx, want: np.ndarray) -> np.ndarray | None:
    """Where QONNX itself sums in float32 and cannot be exact, the bound on |edgeq - QONNX| the contract proves:
    Higham's gamma_(K+3) * sum|x||w| + u*|y| (K-term dot product, dequantized operands, bias add, one final
    rounding); None where QONNX is exact (then edgeq must be bit-identical)."""
    from edgeq.emulate import _avgpool, _im2col_conv
    from edgeq.formats import FixedPoint

    u = 2.0**-24
    x = np.abs(ctx[layer.inputs[0]].astype(np.float64))
    if layer.op in ("Conv2d", "Dense"):
        # exact in QONNX too: partial sums of codes provably below 2**24 on power-of-two grids
        if isinstance(graph.tensors[layer.output].format, FixedPoint) and layer.contract.engine == "float32 BLAS":
            return None
        w = np.abs(layer.weight.astype(np.float64))
        if layer.op == "Dense":
            mag, k = x @ w, w.shape[0]
        else:
            mag, k = _im2col_conv(x, w, layer.attrs, np.float64), int(np.prod(w.shape[1:]))
        if layer.bias is not None:
            b = np.abs(layer.bias.astype(np.float64))
            mag = mag + (b if layer.op == "Dense" else b.reshape(-1, 1, 1))
    elif layer.op == "AvgPool":
        k = int(np.prod(x.shape[2:])) if layer.attrs.get("global") else int(np.prod(layer.attrs["kernel"]))
        if _exactly_summable(graph.tensors[layer.inputs[0]].format, k):
            return None
        mag = _avgpool(graph, layer, x).astype(np.float64) * (1 + 2 * u)
    else:
        return None
    gamma = (k + 3) * u / (1 - (k + 3) * u)
    return gamma * mag + u * np.abs(want) + np.finfo(np.float32).tiny


# ---------------------------------------------------------------------------------------------
# Shrinking and regressions
# ---------------------------------------------------------------------------------------------


def shrink(c: Case, still_fails: Callable[[Case], bool] | None = None, budget: int = 200) -> Case:
    """The smallest variant of a failing case that still fails: delete steps, lower channels, batch and input
    size, drop the input quantizer, as long as ``still_fails`` (default: :func:`check` says failed)."""
    if c.recipe is None:
        return c
    fails = still_fails or (lambda k: check(k).outcome == "failed")
    best, tries = c.recipe, 0

    def attempt(r: Recipe) -> bool:
        nonlocal best, tries
        tries += 1
        try:
            ok = fails(build(r))
        except Exception:  # a variant the builder cannot make is no smaller failure
            ok = False
        if ok:
            best = r
        return ok

    changed = True
    while changed and tries < budget:
        changed = False
        for k in range(len(best.steps)):
            if k < len(best.steps) and attempt(replace(best, steps=best.steps[:k] + best.steps[k + 1:])):
                changed = True
        for field_name, smaller in (("batch", 1), ("max_channels", 1)):
            v = getattr(best, field_name)
            while v > smaller and tries < budget:
                nv = max(smaller, v // 2)
                if not attempt(replace(best, **{field_name: nv})):
                    break
                v, changed = nv, True
        if len(best.in_shape) == 3:
            c0, h, w = best.in_shape
            for shp in ((1, h, w), (c0, max(2, h // 2), w), (c0, h, max(2, w // 2))):
                if shp != best.in_shape and tries < budget and attempt(replace(best, in_shape=shp)):
                    changed = True
        elif best.in_shape[0] > 2 and attempt(replace(best, in_shape=(max(2, best.in_shape[0] // 2),))):
            changed = True
    return build(best)


def save_regression(c: Case, directory: str | Path, name: str, expect: str, note: str = "") -> Path:
    """Write ``<name>.onnx``, ``<name>.npy`` (the input batch) and ``<name>.json`` (the expected outcome:
    "exact" -- bit for bit or within the proven float32 bound -- or "refused")."""
    import onnx

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(c.model, str(d / f"{name}.onnx"))
    np.save(d / f"{name}.npy", c.x)
    meta = {"expect": expect, "note": note, "tags": c.tags}
    if c.recipe is not None:
        meta["recipe"] = {"seed": c.recipe.seed, "index": c.recipe.index}
    (d / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return d / f"{name}.onnx"


def load_regression(path: str | Path) -> tuple[Case, dict[str, Any]]:
    import onnx

    p = Path(path)
    meta = json.loads(p.with_suffix(".json").read_text())
    return Case(None, onnx.load(str(p)), np.load(p.with_suffix(".npy")), meta.get("tags", {})), meta


# ---------------------------------------------------------------------------------------------
# Backends: functions from a batch of cases to their results
# ---------------------------------------------------------------------------------------------


def run_emulate(cases: list[Case], timeout: float = 20.0) -> list[Result]:
    """The emulator backend: every case against execute_onnx."""
    return [check(c, timeout) for c in cases]


BACKENDS: dict[str, Callable[..., list[Result]]] = {"emulate": run_emulate}


def backend(name: str):
    """Register a backend ``fn(cases, timeout) -> [Result]`` (e.g. HLS csim, MCU under QEMU)."""
    def deco(fn):
        BACKENDS[name] = fn
        return fn
    return deco


__all__ = ["OPS", "BACKENDS", "Case", "Grid", "Recipe", "Result", "State", "backend", "build", "case", "check",
           "edge_values", "load_regression", "op", "oracle", "recipe", "save_regression", "shrink"]
