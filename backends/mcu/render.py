"""Render an MCU graph (backends/mcu/lower.py) and its memory plan as C: model.c, model.h, weights.bin.

Every layer becomes a block of ``edgeq_model_run()`` that reads and writes fixed offsets of one static
arena. MAC layers call the FP16 kernels of ``firmware/common/edgeq_nn.c`` with weights packed by
``kernels.py`` (in flash, from ``weights.bin`` via ``.incbin``); glue layers are loops over the C
renderings of the numeric rules in ``firmware/common/edgeq_ops.h``. Float constants are written as
exact hexadecimal literals. The harness (``harness.c``) and the test vectors are rendered here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq import mst
from edgeq.emulate import batchnorm_coeffs, pool_counts, softmax_geometry
from edgeq.errors import EdgeqError
from edgeq.formats import OVERFLOW_MODES, ROUNDING_MODES, Binary, FixedPoint, Float16, Int
from edgeq.ir import Graph, Layer

from . import kernels, xnor
from .plan import ELEMENTWISE, MemoryPlan, elem_bytes


def f32(v: float) -> str:
    """An exact C float literal (hexadecimal) for a float32 value. NaN constants are refused."""
    v = float(np.float32(v))
    if np.isnan(v):
        raise EdgeqError("a constant of the model is NaN (e.g. a BatchNorm with var + eps = 0); fix the model")
    if np.isinf(v):
        return "(-__builtin_inff())" if v < 0 else "__builtin_inff()"
    return f"{v.hex()}f" if v != 0 or not np.signbit(v) else "(-0.0f)"


def _ctype(fmt) -> str:
    return "edgeq_f16" if isinstance(fmt, Float16) else "float"


def _elems(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


@dataclass
class Rendered:
    model_c: str
    model_h: str
    weights: bytes
    weight_bytes_per_layer: dict[str, int] = field(default_factory=dict)
    const_bytes: int = 0


def scratch_elems(graph: Graph, lanes: int) -> dict[str, int]:
    """float16 scratch elements each MAC layer's kernel needs."""
    out = {}
    for lay in graph.layers:
        if lay.attrs.get("xnor"):  # binary kernels: uint32 words, i.e. two float16 elements each
            with_mst = "mst_parent" in lay.attrs
            words = xnor.conv_scratch_words(xnor_conv_params(graph, lay), with_mst) if lay.op == "Conv2d" else \
                xnor.dense_scratch_words(lay.weight.shape[0], with_mst)
            out[lay.name] = 2 * words
        elif lay.op == "Conv2d":
            p = conv_params(graph, lay)
            out[lay.name] = kernels.conv_scratch_elems(p, lanes)
        elif lay.op == "Dense":
            k, n = lay.weight.shape
            out[lay.name] = kernels.dense_scratch_elems(k, n, lanes)
    return out


def conv_params(graph: Graph, lay: Layer) -> dict[str, int]:
    return kernels.conv_params(graph.tensors[lay.inputs[0]].shape, graph.tensors[lay.output].shape, lay.attrs,
                               tuple(lay.weight.shape))


def xnor_conv_params(graph: Graph, lay: Layer) -> dict[str, int]:
    return xnor.conv_params(graph.tensors[lay.inputs[0]].shape, graph.tensors[lay.output].shape, lay.attrs,
                            tuple(lay.weight.shape))


class Renderer:
    def __init__(self, graph: Graph, plan: MemoryPlan, lanes: int):
        self.g, self.plan, self.lanes = graph, plan, lanes
        self.consts: list[str] = []
        self.blob = bytearray()
        self.wbytes: dict[str, int] = {}
        self.const_bytes = 0

    # -- helpers ---------------------------------------------------------------------------------------------
    def ptr(self, tensor: str, const: bool = False) -> str:
        t = self.g.tensors[tensor]
        q = "const " if const else ""
        return f"(({q}{_ctype(t.format)} *)(edgeq_arena + {self.plan.offset(tensor)}))"

    def table(self, name: str, values: np.ndarray) -> str:
        """A float32 constant table in flash."""
        v = np.asarray(values, dtype=np.float32).ravel()
        self.const_bytes += 4 * v.size
        body = ", ".join(f32(x) for x in v)
        self.consts.append(f"static const float {name}[{v.size}] = {{{body}}};")
        return name

    def blob_f16(self, lay: Layer, what: str, values: np.ndarray) -> str:
        """float16 values appended to weights.bin; returns a C pointer expression."""
        return self.blob_array(lay, np.asarray(values, dtype=np.float16), "edgeq_f16")

    def blob_array(self, lay: Layer, values: np.ndarray, ctype: str) -> str:
        """An array appended to weights.bin (8-byte aligned, little-endian); returns a C pointer expression."""
        while len(self.blob) % 8:
            self.blob += b"\0"
        off = len(self.blob)
        data = np.ascontiguousarray(values).tobytes()
        self.blob += data
        self.wbytes[lay.name] = self.wbytes.get(lay.name, 0) + len(data)
        return f"((const {ctype} *)(edgeq_weights + {off}))"

    def per_channel(self, lay: Layer, name: str, values: np.ndarray, shape: tuple[int, ...]):
        """A constant broadcast to one sample: ('scalar', literal), ('channel', table) or ('full', table)."""
        full = np.broadcast_to(np.asarray(values, dtype=np.float32).reshape(
            (1,) * max(0, len(shape) + 1 - np.ndim(values)) + np.shape(values))
            if np.ndim(values) else np.float32(values), (1,) + tuple(shape))[0]
        flat = full.reshape(full.shape[0] if full.ndim else 1, -1) if full.ndim else full.reshape(1, 1)
        bits = np.ascontiguousarray(flat, dtype=np.float32).view(np.uint32)  # -0 and +0 differ
        if np.all(bits == bits.flat[0]):
            return "scalar", f32(full.flat[0])
        if np.all(bits == bits[:, :1]):
            return "channel", self.table(name, flat[:, 0])
        return "full", self.table(name, full)

    def loop(self, shape, body, params: list[tuple[str, str, str]]) -> str:
        """A loop over one sample's elements; ``params`` are (C name, kind, value) from :meth:`per_channel`;
        ``body`` uses ``i`` (flat index) and the names."""
        n = _elems(shape)
        if any(kind == "channel" for _, kind, _ in params):
            c = shape[0]
            inner = n // c
            defs = "".join(f" const float {nm} = {v}[c];" if k == "channel" else
                           (f" const float {nm} = {v};" if k == "scalar" else "") for nm, k, v in params)
            full = "".join(f" const float {nm} = {v}[i];" for nm, k, v in params if k == "full")
            return (f"for (int c = 0; c < {c}; c++) {{{defs}\n"
                    f"        for (int j = 0; j < {inner}; j++) {{ const int i = c * {inner} + j;{full} {body} }}\n"
                    f"    }}")
        defs = "".join(f" const float {nm} = {v};" for nm, k, v in params if k == "scalar")
        full = "".join(f" const float {nm} = {v}[i];" for nm, k, v in params if k == "full")
        return f"{{{defs}\n        for (int i = 0; i < {n}; i++) {{{full} {body} }}\n    }}"

    # -- layers --------------------------------------------------------------------------------------------
    def step(self, idx: list[int]) -> str:
        lay = self.g.layers[idx[0]]
        if lay.op in ELEMENTWISE:
            return self.ew_chain(idx)
        fn = getattr(self, f"r_{lay.op.lower()}", None)
        if fn is None:  # pragma: no cover - lower_fp16 rejects unknown ops
            raise EdgeqError(f"layer '{lay.name}': the MCU renderer has no op {lay.op}")
        return fn(idx[0], lay)

    def io(self, lay: Layer):
        x = self.g.tensors[lay.inputs[0]]
        y = self.g.tensors[lay.output]
        return x, y, self.ptr(lay.inputs[0], const=True), self.ptr(lay.output)

    def r_reshape(self, i: int, lay: Layer) -> str:
        return "/* Reshape: the output aliases the input buffer */"

    # Element-wise layers: each gives C statements that update the float `v` of one element. A chain of them
    # (see :func:`steps`) runs as one loop with the intermediate values in registers: every operation is the
    # same float32 (or float16) operation, so fusing changes no bit, and the intermediates need no RAM.
    def e_cast(self, i: int, lay: Layer):
        return "", []  # the conversion to float16 is the store rule of a float16 output (see ew_chain)

    def e_relu(self, i: int, lay: Layer):
        return "v = !(v <= 0.0f) ? v : 0.0f;", []  # np.maximum(v, 0): +0 for -0, NaN stays NaN

    def e_clip(self, i: int, lay: Layer):
        return f"v = edgeq_clip(v, {f32(lay.attrs['lo'])}, {f32(lay.attrs['hi'])});", []

    def e_batchnorm(self, i: int, lay: Layer):
        y = self.g.tensors[lay.output]
        s, b = batchnorm_coeffs(lay.attrs)
        view = (-1,) + (1,) * (len(y.shape) - 1)
        return f"v = v * L{i}s; v = v + L{i}b;", [(f"L{i}s", *self.per_channel(lay, f"L{i}_scale", s.reshape(view),
                                                                               y.shape)),
                                                   (f"L{i}b", *self.per_channel(lay, f"L{i}_shift", b.reshape(view),
                                                                               y.shape))]

    def e_activation(self, i: int, lay: Layer):
        """The emulator's Activation: its onnxruntime table (binary search, exact compares), else the piecewise
        linear function in the same float32 operations (lower_fp16 refuses the others)."""
        a = lay.attrs
        if "table_x" in a:
            tx, ty = self.table(f"L{i}_tx", a["table_x"]), self.table(f"L{i}_ty", a["table_y"])
            return f"v = edgeq_table(v, {tx}, {ty}, {len(a['table_x'])});", []
        if a["fn"] == "leaky_relu":
            return f"v = v >= 0.0f ? v : v * {f32(a['alpha'])};", []
        if a["fn"] == "prelu":
            kind, val = self.per_channel(lay, f"L{i}_slope", a["slope"], self.g.tensors[lay.output].shape)
            return f"v = v >= 0.0f ? v : v * L{i}k;", [(f"L{i}k", kind, val)]
        if a["fn"] == "hard_sigmoid":
            return f"v = {f32(a['alpha'])} * v; v = v + {f32(a['beta'])}; v = edgeq_clip(v, 0.0f, 1.0f);", []
        # the declared expf-based functions of edgeq.emulate.ACTIVATIONS, operation for operation
        if a["fn"] == "sigmoid":
            return "v = 1.0f / (1.0f + edgeq_expf(-v));", []
        if a["fn"] == "tanh":
            return "v = 1.0f - 2.0f / (edgeq_expf(v + v) + 1.0f);", []
        if a["fn"] == "elu":
            return f"v = v >= 0.0f ? v : {f32(a['alpha'])} * (edgeq_expf(v) - 1.0f);", []
        if a["fn"] == "selu":
            g, al = f32(a["gamma"]), f32(a["alpha"])
            return f"v = v > 0.0f ? {g} * v : {g} * ({al} * (edgeq_expf(v) - 1.0f));", []
        raise EdgeqError(f"layer '{lay.name}': the MCU renderer has no {a['fn']}")  # pragma: no cover

    def e_floatop(self, i: int, lay: Layer):
        a = lay.attrs
        kind, val = self.per_channel(lay, f"L{i}_const", a["const"], self.g.tensors[lay.output].shape)
        lhs, rhs = (f"L{i}k", "v") if a["const_first"] else ("v", f"L{i}k")
        expr = {"add": f"{lhs} + {rhs}", "sub": f"{lhs} - {rhs}", "mul": f"{lhs} * {rhs}", "div": f"{lhs} / {rhs}",
                "max": f"edgeq_max({lhs}, {rhs})", "min": f"edgeq_min({lhs}, {rhs})"}[a["fn"]]
        return f"v = {expr};", [(f"L{i}k", kind, val)]

    def _int_params(self, i: int, lay: Layer, fmt: Int, shape, tag: str):
        nd = len(shape) + 1
        s = fmt.scale_array(nd, np.float32)
        z = fmt.zero_point_array(nd, np.float32)
        s, z = (a.reshape(a.shape[1:]) if a.ndim == nd else a for a in (s, z))
        return [(f"L{i}s{tag}", *self.per_channel(lay, f"L{i}_s{tag}", s, shape)),
                (f"L{i}z{tag}", *self.per_channel(lay, f"L{i}_z{tag}", z, shape))]

    def e_quantize(self, i: int, lay: Layer):
        y = self.g.tensors[lay.output]
        grid = lay.attrs["grid"]
        if isinstance(grid, Int):
            ps = self._int_params(i, lay, grid, y.shape, "")
            if grid.bipolar:
                if grid.has_zero_point:
                    raise EdgeqError(f"layer '{lay.name}': a bipolar quantizer with a zero point is not supported "
                                     "by the MCU backend")
                return f"v = edgeq_quant_bipolar(v, L{i}s);", ps
            mode = ROUNDING_MODES.index(grid.rounding)
            return (f"v = edgeq_quant_int(v, L{i}s, L{i}z, {int(grid.has_zero_point)}, {f32(grid.code_min)}, "
                    f"{f32(grid.code_max)}, {mode});", ps)
        if isinstance(grid, Binary):
            sc = grid.scale_array(len(y.shape) + 1, np.float32)
            sc = sc.reshape(sc.shape[1:]) if sc.ndim == len(y.shape) + 1 else sc
            kind, val = self.per_channel(lay, f"L{i}_s", sc, y.shape)
            return f"v = edgeq_quant_sign(v, L{i}s);", [(f"L{i}s", kind, val)]
        if isinstance(grid, FixedPoint):
            if not -126 <= grid.frac_bits <= 126:
                raise EdgeqError(f"layer '{lay.name}': {grid} has a scale 2^{-grid.frac_bits} outside float32's "
                                 "normal range; the MCU backend's float32 quantizer cannot apply it exactly")
            if grid.overflow == "WRAP" or grid.width > 24:
                raise EdgeqError(f"layer '{lay.name}': {grid} (WRAP overflow or wider than 24 bits) is not supported "
                                 "by the MCU backend's float32 quantizer; use a SAT overflow mode")
            return (f"v = edgeq_quant_fixed(v, {f32(2.0 ** (grid.int_bits + 1))}, {f32(2.0 ** grid.frac_bits)}, "
                    f"{f32(2.0 ** -grid.frac_bits)}, {grid.code_min}, {grid.code_max}, "
                    f"{ROUNDING_MODES.index(grid.rounding)}, {OVERFLOW_MODES.index(grid.overflow)});", [])
        raise EdgeqError(f"layer '{lay.name}': {grid} is not supported by the MCU backend")  # pragma: no cover

    def e_trunc(self, i: int, lay: Layer):
        y = self.g.tensors[lay.output]
        a = lay.attrs
        step: Int = a["step"]
        if step.bipolar:
            raise EdgeqError(f"layer '{lay.name}': a 1-bit Trunc is not supported by the MCU backend")
        for key in ("scale", "out_scale"):
            if np.size(a[key]) != 1:
                raise EdgeqError(f"layer '{lay.name}': a per-channel Trunc {key} is not supported by the MCU backend")
        sc, osc = f32(np.ravel(a["scale"])[0]), f32(np.ravel(a["out_scale"])[0])
        mode = ROUNDING_MODES.index(step.rounding)
        head = f"v = edgeq_round(v / {sc}, {ROUNDING_MODES.index('RND_CONV')}); "
        if a["version"] == 2:
            return (head + f"v = edgeq_int_codes(v, L{i}st, L{i}zt, {int(step.has_zero_point)}, "
                    f"{f32(step.code_min)}, {f32(step.code_max)}, {mode}) * {osc};",
                    self._int_params(i, lay, step, y.shape, "t"))
        return head + f"v = edgeq_round(v / {f32(a['trunc_scale'])}, {mode}) * {osc};", []

    def ew_chain(self, idx: list[int]) -> str:
        """One loop over the element-wise layers ``idx`` (a chain: each reads the previous one's output)."""
        g = self.g
        first, last = g.layers[idx[0]], g.layers[idx[-1]]
        x, y = g.tensors[first.inputs[0]], g.tensors[last.output]
        body, params = ["float v = (float)X[i];"], []
        for i in idx:
            lay = g.layers[i]
            code, ps = getattr(self, f"e_{lay.op.lower()}")(i, lay)
            if code:
                body.append(code)
            params += ps
            if isinstance(g.tensors[lay.output].format, Float16) and i != idx[-1]:
                body.append("v = (float)(edgeq_f16)v;")  # a float16 intermediate: its store rule
        body.append(f"Y[i] = ({_ctype(y.format)})v;")
        return (f"{{ const {_ctype(x.format)} *X = {self.ptr(first.inputs[0], True)}; {_ctype(y.format)} *Y = "
                f"{self.ptr(last.output)};\n    " + self.loop(y.shape, " ".join(body), params) + " }")

    def r_add(self, i: int, lay: Layer) -> str:
        y = self.g.tensors[lay.output]
        a, b = (self.g.tensors[t] for t in lay.inputs)
        ap, bp = (self.ptr(t, const=True) for t in lay.inputs)
        if isinstance(y.format, Float16):
            body = "Y[i] = A[i] + B[i];"
        else:
            body = "Y[i] = (float)A[i] + (float)B[i];"
        return (f"{{ const {_ctype(a.format)} *A = {ap}; const {_ctype(b.format)} *B = {bp}; "
                f"{_ctype(y.format)} *Y = {self.ptr(lay.output)};\n    " + self.loop(y.shape, body, []) + " }")

    def _pool_geometry(self, lay: Layer, x, y):
        a = lay.attrs
        if a.get("global"):
            return (x.shape[1], x.shape[2]), (1, 1), (0, 0)
        return tuple(a["kernel"]), tuple(a["strides"]), (a["pads"][0], a["pads"][1])

    def _pool(self, i: int, lay: Layer, init: str, acc: str, finish: str, acc_t: str) -> str:
        x, y, xp, yp = self.io(lay)
        (kh, kw), (sh, sw), (pt, pl) = self._pool_geometry(lay, x, y)
        c, ih, iw = x.shape
        _, oh, ow = y.shape
        return (f"{{ const {_ctype(x.format)} *X = {xp}; {_ctype(y.format)} *Y = {yp};\n"
                f"    for (int c = 0; c < {c}; c++) for (int oy = 0; oy < {oh}; oy++)"
                f" for (int ox = 0; ox < {ow}; ox++) {{\n"
                f"        {acc_t} m = {init};\n"
                f"        for (int ky = 0; ky < {kh}; ky++) {{ const int iy = oy * {sh} + ky - {pt};"
                f" if (iy < 0 || iy >= {ih}) continue;\n"
                f"            for (int kx = 0; kx < {kw}; kx++) {{ const int ix = ox * {sw} + kx - {pl};"
                f" if (ix < 0 || ix >= {iw}) continue;\n"
                f"                const {acc_t} v = ({acc_t})X[(c * {ih} + iy) * {iw} + ix]; {acc} }} }}\n"
                f"        Y[(c * {oh} + oy) * {ow} + ox] = {finish};\n    }} }}")

    def r_maxpool(self, i: int, lay: Layer) -> str:
        t = _ctype(self.g.tensors[lay.output].format)  # np.maximum(m, v): v wins a tie, NaN propagates
        return self._pool(i, lay, f"({t})(-__builtin_inff())", "m = (m != m || m > v) ? m : v;", "m", t)

    def r_avgpool(self, i: int, lay: Layer) -> str:
        x = self.g.tensors[lay.inputs[0]]
        counts = self.table(f"L{i}_count", pool_counts(lay.attrs, x.shape[1:]))
        _, oh, ow = self.g.tensors[lay.output].shape
        return self._pool(i, lay, "0.0f", "m = m + v;", f"m / {counts}[oy * {ow} + ox]", "float")

    def r_softmax(self, i: int, lay: Layer) -> str:
        x, y, xp, yp = self.io(lay)
        outer, n, inner = softmax_geometry(tuple(x.shape), lay.attrs["axes"])
        kind = "f16" if isinstance(x.format, Float16) else "f32"
        return f"edgeq_softmax_{kind}({xp}, {yp}, {outer}, {n}, {inner});"

    def r_transpose(self, i: int, lay: Layer) -> str:
        x, y, xp, yp = self.io(lay)
        perm = list(lay.attrs["perm"])
        in_strides = np.cumprod((list(x.shape[1:]) + [1])[::-1])[::-1]
        strides = [int(in_strides[p]) for p in perm]
        loops, idx = "", []
        for d, n in enumerate(y.shape):
            loops += f"for (int i{d} = 0; i{d} < {n}; i{d}++) "
            idx.append(f"i{d} * {strides[d]}")
        return (f"{{ const {_ctype(x.format)} *X = {xp}; {_ctype(y.format)} *Y = {yp}; int o = 0;\n"
                f"    {loops}Y[o++] = X[{' + '.join(idx)}]; }}")

    def _scratch(self, lay: Layer, ctype: str) -> str:
        key = lay.name + ":scratch"
        return f"(({ctype} *)(edgeq_arena + {self.plan.buffers[key].offset}))" if key in self.plan.buffers else "0"

    def xnor(self, lay: Layer) -> str:
        """A binary layer: XNOR-popcount (or MST) over the input's sign bits, float32 outputs acc * scale."""
        x = self.g.tensors[lay.inputs[0]]
        eb = elem_bytes(x.format)
        sx, sw = (float(np.float32(mst._bipolar_scale(f))) for f in (lay.attrs["input_grid"], lay.weight_format))
        scale = f32(np.float32(sx * sw))  # a power of two (edgeq.mst.xnor_refusal)
        bits = mst.channel_bits(lay)
        xp, yp, scratch = self.ptr(lay.inputs[0], True), f"((float *)(edgeq_arena + {self.plan.offset(lay.output)}))", \
            self._scratch(lay, "uint32_t")
        head = ""
        if "mst_parent" in lay.attrs:
            m = xnor.pack_mst(mst.tree_from_parent(lay.attrs["mst_parent"], bits), bits)
            ptrs = {key: self.blob_array(lay, m[key], ctype) for key, ctype in (
                ("order", "uint16_t"), ("parent", "uint16_t"), ("count", "uint16_t"), ("root_bits", "uint32_t"),
                ("pos", "uint16_t"))}
            head = (f"const edgeq_mst_t m = {{{int(m['k'])}, {int(m['n'])}, {ptrs['order']}, {ptrs['parent']}, "
                    f"{ptrs['count']},\n        {ptrs['root_bits']}, {ptrs['pos']}}};\n    ")
        if lay.op == "Dense":
            k, n = lay.weight.shape
            if head:
                return f"{{ {head}edgeq_mst_dense(&m, {xp}, {eb}, {scale}, {yp}, {scratch}); }}"
            w = self.blob_array(lay, xnor.pack_bits(bits), "uint32_t")
            return (f"edgeq_pack_signs({xp}, {k}, {eb}, {scratch});\n    "
                    f"edgeq_xnor_dense({k}, {n}, {scratch}, {w}, {scale}, {yp});")
        p = xnor_conv_params(self.g, lay)
        fields = ", ".join(f".{key} = {int(p[key])}" for key in xnor.BCONV_KEYS)
        if head:
            return (f"{{ static const edgeq_bconv_t P = {{{fields}}};\n    {head}"
                    f"edgeq_mst_conv2d(&P, &m, {xp}, {eb}, {scale}, {yp}, {scratch}); }}")
        w = self.blob_array(lay, xnor.pack_bits(bits), "uint32_t")
        return (f"{{ static const edgeq_bconv_t P = {{{fields}}};\n    "
                f"edgeq_xnor_conv2d(&P, {xp}, {eb}, {w}, {scale}, {yp}, {scratch}); }}")

    def r_threshold(self, i: int, lay: Layer) -> str:
        """A folded glue -> bipolar quantizer after an XNOR layer: one compare per element (lower.fold_thresholds)."""
        x, y, xp, yp = self.io(lay)
        a = lay.attrs
        view = (-1,) + (1,) * (len(y.shape) - 1)
        params = [(f"L{i}t", *self.per_channel(lay, f"L{i}_thr", np.asarray(a["threshold"]).reshape(view), y.shape)),
                  (f"L{i}d", *self.per_channel(lay, f"L{i}_dir", np.asarray(a["direction"], np.float32).reshape(view),
                                               y.shape))]
        yt = _ctype(y.format)
        body = f"Y[i] = X[i] * L{i}d >= L{i}t ? ({yt}){f32(a['high'])} : ({yt}){f32(a['low'])};"
        return (f"{{ const {_ctype(x.format)} *X = {xp}; {_ctype(y.format)} *Y = {yp};\n    "
                + self.loop(y.shape, body, params) + " }")

    def r_conv2d(self, i: int, lay: Layer) -> str:
        if lay.attrs.get("xnor"):
            return self.xnor(lay)
        p = conv_params(self.g, lay)
        w = self.blob_f16(lay, "weights", kernels.pack_conv(lay.weight.astype(np.float16), p, self.lanes))
        b = self.blob_f16(lay, "bias", lay.bias) if lay.bias is not None else "0"
        fields = ", ".join(f".{k} = {int(v)}" for k, v in p.items())
        scratch = f"((edgeq_f16 *)(edgeq_arena + {self.plan.buffers[lay.name + ':scratch'].offset}))" \
            if lay.name + ":scratch" in self.plan.buffers else "0"
        return (f"{{ static const edgeq_conv_t P = {{{fields}}};\n    edgeq_conv2d(&P, "
                f"{self.ptr(lay.inputs[0], True)}, {w}, {b}, {self.ptr(lay.output)}, {scratch}); }}")

    def r_dense(self, i: int, lay: Layer) -> str:
        if lay.attrs.get("xnor"):
            return self.xnor(lay)
        k, n = lay.weight.shape
        w = self.blob_f16(lay, "weights", kernels.pack_dense(lay.weight.astype(np.float16), self.lanes))
        b = self.blob_f16(lay, "bias", lay.bias) if lay.bias is not None else "0"
        scratch = f"((edgeq_f16 *)(edgeq_arena + {self.plan.buffers[lay.name + ':scratch'].offset}))" \
            if lay.name + ":scratch" in self.plan.buffers else "0"
        return f"edgeq_dense({k}, {n}, {self.ptr(lay.inputs[0], True)}, {w}, {b}, {self.ptr(lay.output)}, {scratch});"

    # -- files ---------------------------------------------------------------------------------------------
    def render(self) -> Rendered:
        g = self.g
        blocks = []
        for idx in self.plan.steps:
            last = g.layers[idx[-1]]
            out = g.tensors[last.output]
            nbytes = _elems(out.shape) * elem_bytes(out.format)
            what = "; ".join(f"{i}: {g.layers[i].name} ({g.layers[i].op}; {', '.join(g.layers[i].source)})"
                             for i in idx)
            blocks.append(f"    /* {what} */\n"
                          f"    EDGEQ_BEGIN({idx[-1]});\n    {self.step(idx)}\n"
                          f"    EDGEQ_END({idx[-1]}, {self.ptr(last.output)}, {nbytes}, {elem_bytes(out.format)});")
        inp, outp = g.input, g.output
        names = ",\n    ".join(f'"{lay.name}"' for lay in g.layers)
        model_c = f"""/* Generated by edgeq: {g.name} as FP16 C for the MCU backend. Do not edit. */
#include <stdint.h>
#include "edgeq_nn.h"
#include "edgeq_ops.h"
#include "edgeq_xnor.h"
#include "model.h"

#ifdef EDGEQ_DEBUG
void edgeq_layer_begin(int layer);
void edgeq_layer_end(int layer, const void *out, uint32_t bytes, int elem_bytes);
#define EDGEQ_BEGIN(i) edgeq_layer_begin(i)
#define EDGEQ_END(i, p, n, e) edgeq_layer_end((i), (p), (n), (e))
#else
#define EDGEQ_BEGIN(i) ((void)0)
#define EDGEQ_END(i, p, n, e) ((void)0)
#endif

/* The activation arena: every tensor at a fixed offset (static memory plan, {self.plan.arena_bytes} bytes). */
static uint8_t edgeq_arena[{max(8, self.plan.arena_bytes)}] __attribute__((aligned(8)));
/* Packed float16 weights and biases (weights.bin, in flash). */
extern const uint8_t edgeq_weights[];

const char *const edgeq_layer_names[EDGEQ_N_LAYERS] = {{
    {names}
}};

{chr(10).join(self.consts)}

float *edgeq_input(void) {{ return (float *)(edgeq_arena + {self.plan.offset(inp.name)}); }}
const void *edgeq_output(void) {{ return edgeq_arena + {self.plan.offset(outp.name)}; }}

void edgeq_model_run(void) {{
{chr(10).join(blocks)}
}}
"""
        model_h = f"""/* Generated by edgeq. */
#ifndef EDGEQ_MODEL_H
#define EDGEQ_MODEL_H
#define EDGEQ_INPUT_ELEMS {_elems(inp.shape)}
#define EDGEQ_OUTPUT_ELEMS {_elems(outp.shape)}
#define EDGEQ_OUTPUT_ELEM_BYTES {elem_bytes(outp.format)}
#define EDGEQ_N_LAYERS {len(g.layers)}
float *edgeq_input(void);
const void *edgeq_output(void);
void edgeq_model_run(void);
extern const char *const edgeq_layer_names[EDGEQ_N_LAYERS];
#endif
"""
        return Rendered(model_c, model_h, bytes(self.blob), dict(self.wbytes), self.const_bytes)


def render(graph: Graph, plan: MemoryPlan, lanes: int) -> Rendered:
    return Renderer(graph, plan, lanes).render()


WEIGHTS_S = """/* Generated by edgeq: the packed weights, byte for byte, in flash. */
    .section .rodata.edgeq_weights, "a"
    .balign 8
    .globl edgeq_weights
edgeq_weights:
    .incbin "weights.bin"
    .byte 0
    .section .note.GNU-stack, "", @progbits
"""

VECTORS_S = """/* Generated by edgeq: the embedded test vectors (float32), outside the board's flash budget. */
    .section .edgeq_testdata, "a"
    .balign 8
    .globl edgeq_vectors
edgeq_vectors:
    .incbin "vectors.bin"
    .byte 0
    .section .note.GNU-stack, "", @progbits
"""

HARNESS_C = r"""/* Generated by edgeq: runs every embedded test vector and prints machine-parsable lines:
 *   EDGEQ V <vector>                                       a vector starts
 *   EDGEQ L <layer> <instret:16 hex> <cycles:16 hex> <hash:8 hex>   per layer, debug builds (EDGEQ_DEBUG)
 *   EDGEQ O <output bit patterns, 4 or 8 hex digits each, no separators>
 *   EDGEQ R <instret:16 hex> <cycles:16 hex>               the whole inference (printing excluded)
 *   EDGEQ DONE <vectors>
 * The layer hash is sum_i (bits_i + 1) * (2i + 1) mod 2^32 over the layer's output elements (u16 or u32). */
#include <stdint.h>
#include "edgeq_io.h"
#include "model.h"

#define EDGEQ_N_VECTORS %(n_vectors)d
extern const uint32_t edgeq_vectors[];

#ifdef EDGEQ_DEBUG
static uint64_t t_instret, t_cycles, run_instret, run_cycles;
static void put_counters(uint64_t instret, uint64_t cycles) {
    edgeq_puts(" "); edgeq_put_hex64(instret); edgeq_puts(" "); edgeq_put_hex64(cycles);
}
void edgeq_layer_begin(int layer) {
    (void)layer;
    t_cycles = edgeq_cycles();
    t_instret = edgeq_instret();
}
void edgeq_layer_end(int layer, const void *out, uint32_t bytes, int elem_bytes) {
    uint64_t di = edgeq_instret() - t_instret, dc = edgeq_cycles() - t_cycles;
    run_instret += di;
    run_cycles += dc;
    uint32_t h = 0;
    if (elem_bytes == 2) {
        const uint16_t *p = (const uint16_t *)out;
        for (uint32_t i = 0; i < bytes / 2; i++) h += ((uint32_t)p[i] + 1u) * (2u * i + 1u);
    } else {
        const uint32_t *p = (const uint32_t *)out;
        for (uint32_t i = 0; i < bytes / 4; i++) h += (p[i] + 1u) * (2u * i + 1u);
    }
    edgeq_puts("EDGEQ L ");
    edgeq_put_hex((uint32_t)layer, 4);
    put_counters(di, dc);
    edgeq_puts(" ");
    edgeq_put_hex(h, 8);
    edgeq_puts("\n");
}
#endif

__attribute__((noinline)) static void run_one(void) { edgeq_model_run(); }

int main(void) {
    for (int v = 0; v < EDGEQ_N_VECTORS; v++) {
        edgeq_puts("EDGEQ V ");
        edgeq_put_hex((uint32_t)v, 8);
        edgeq_puts("\n");
        float *in = edgeq_input();
        __builtin_memcpy(in, &edgeq_vectors[(uint32_t)v * EDGEQ_INPUT_ELEMS], 4u * EDGEQ_INPUT_ELEMS);
#ifdef EDGEQ_DEBUG
        run_instret = run_cycles = 0;
        run_one();
        uint64_t ni = run_instret, nc = run_cycles;
#else
        uint64_t c0 = edgeq_cycles(), i0 = edgeq_instret();
        run_one();
        uint64_t ni = edgeq_instret() - i0, nc = edgeq_cycles() - c0;
#endif
        edgeq_puts("EDGEQ O ");
        const void *out = edgeq_output();
        for (int i = 0; i < EDGEQ_OUTPUT_ELEMS; i++) {
            if (EDGEQ_OUTPUT_ELEM_BYTES == 2) edgeq_put_hex(((const uint16_t *)out)[i], 4);
            else edgeq_put_hex(((const uint32_t *)out)[i], 8);
        }
        edgeq_puts("\nEDGEQ R ");
        edgeq_put_hex64(ni);
        edgeq_puts(" ");
        edgeq_put_hex64(nc);
        edgeq_puts("\n");
    }
    edgeq_puts("EDGEQ DONE ");
    edgeq_put_hex(EDGEQ_N_VECTORS, 8);
    edgeq_puts("\n");
    return 0;
}
"""


def harness(n_vectors: int) -> str:
    return HARNESS_C % {"n_vectors": n_vectors}


def layer_hash(values: np.ndarray, fmt) -> np.ndarray:
    """The harness's per-layer hash of stored outputs (batch first), computed from emulator values."""
    n = values.shape[0]
    if isinstance(fmt, Float16):
        bits = values.reshape(n, -1).astype(np.float16).view(np.uint16).astype(np.uint64)
    else:
        bits = values.reshape(n, -1).astype(np.float32).view(np.uint32).astype(np.uint64)
    mult = 2 * np.arange(bits.shape[1], dtype=np.uint64) + 1
    return (((bits + 1) * mult) & 0xFFFFFFFF).sum(axis=1) & 0xFFFFFFFF


def testdata(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype=np.float32).tobytes()


def info(graph: Graph) -> dict[str, Any]:
    return {"output_bytes": elem_bytes(graph.output.format)}
