"""Pre-synthesis resource estimate of the generated HLS design, and the budget check against a board.

This is an **estimate**, not a synthesis result. It is a small, explicit model of what the generated design
instantiates, so that a design that cannot fit is refused in a second instead of after an hour of Vitis HLS and
Vivado. Expect tens of percent of error on LUT and FF; DSP and BRAM follow the design's structure more closely.

The design being modelled
-------------------------
A loop-based dataflow of layers. Each layer instantiates ``parallel`` lanes (multipliers, comparators, adders),
each doing one operation per clock. Weights and thresholds live in on-chip ROMs. Each layer reads its input
activations from an on-chip buffer that the previous layer wrote.

Rules (every constant is a module-level name, so tests and later calibration can quote it)
------------------------------------------------------------------------------------------
**Products** (Conv2d, Dense): each lane has one signed ``a x b`` product, with a = ``in_bits`` and b = ``w_bits``.
See :func:`multiplier_impl`.

* both operands 1 bit: an XNOR, 1 LUT + 1 FF. The popcount is the accumulator below.
* one operand 1 bit: a conditional negation of the other operand, n LUT + (n+1) FF, where n is the wider width.
* ``shift_add`` layers (multiplier-free: power-of-two or K-hot weights, ``shift_terms`` = the largest number of
  signed digits per weight): never a DSP. Each term is a barrel shifter of the ``a``-bit input over the ``b``
  possible positions (``a * ceil(log2 b)`` 2:1 muxes, one LUT each) and, from the second term on, an adder of
  ``a + b`` bits; without ``shift_terms`` it is costed like a fabric product of the same size (an upper bound).
* ``max(a, b) > 10`` or ``a*b > 40``: DSP. A product wider than one slice (27x18 signed on DSP48E2 in Zynq
  UltraScale+, 25x18 on DSP48E1 in Zynq-7000) is tiled: ``ceil(a/27) * ceil(b/18)`` slices, with the operands
  swapped if that needs fewer. Vivado may instead build part of a wide product in LUTs; we do not model that.
* otherwise fabric: ``a*b`` LUTs for the partial products, ``a+b`` LUTs for the final adder, and ``a+b`` FF.

Why the 10-bit / 40-bit line: Vitis HLS chooses DSP or fabric for each ``mul`` itself (``BIND_OP impl=dsp|fabric``
overrides it). The choice depends on version and clock, and narrow products go to fabric. hls4ml's DSP estimator
(``hls4ml.optimization.dsp_aware_pruning``, ``VivadoDSPEstimator``) counts no DSP for weights under 9 bits. We draw
the line slightly more conservatively. A product stays in LUTs only if both operands are at most 10 bits **and** it
has at most 40 partial-product bits (4x8, 5x8, 6x6, 4x10 ...). 6x8 and the boundary case 8x8 therefore count as
DSPs, so the DSP count is an upper bound for 8-bit networks, while FINN-style networks of 4 bits and less are all
fabric. The lowering can make this model a contract by emitting ``BIND_OP`` with :func:`multiplier_impl`'s answer.

**Accumulators**: ``acc_bits`` LUT (adder) + ``acc_bits`` FF (register) per lane. This holds also when the product
sits in a DSP. We do not assume the add folds into the DSP's post-adder; where it does, the estimate is high.

**Binary layers** (XnorDense/XnorConv2d, MstDense/MstConv2d; see :func:`binary_cost`): no DSP. Each output pixel
pass of a layer touches ``xnor_bits`` weight bits: ``Cout*K`` for plain XNOR-popcount, ``roots*K + sum|D|`` for
MST (a root is a full row, a child only its differing positions D). The kernels step through the output channels
(MST: the tree steps) one per clock, so the XNOR+popcount datapath is sized for the mean bits per step,
``ceil(xnor_bits / Cout)`` bit lanes: ``XNOR_LUT_PER_BIT`` LUT each (the XNOR with a weight bit merges into the
first 6-input compressor of the popcount tree, and the tree of n bits takes about n LUTs) and ``XNOR_FF_PER_BIT`` FF
(pipeline registers between tree levels), plus one ``acc_bits`` accumulator (MST: also the parent-acc buffer).
MST's saving therefore shows as fewer lanes at the same channel-per-clock schedule. The MST gather of x at the
stored positions D (a K:1 multiplexer per lane) is not counted, so MST estimates are low by that much. Memories:
packed weight rows (``Cout`` rows, or the ``roots`` rows for MST; a single row is a constant folded into the XNORs)
as 64-bit words split into one bank per word, MST positions (``ceil(log2 K)`` bits each), parent signs (1 bit
each, packed) and parent accumulators, and the input buffer (one bank per kernel tap). Note that MST stores
``sum|D| * (ceil(log2 K) + 1)`` bits for its children: on weights without structure (random, |D| ~ K/2) that is more
than the ``Cout*K`` bits of the plain rows, and the BRAM estimate says so.

**Other layers**, per lane (see ``_LANE_COST``):

* Threshold: one comparator of ``acc_bits`` (or ``in_bits``) LUTs, plus ``out_bits`` FF.
* Cast (shift, round, saturate): ``in_bits`` LUT + ``out_bits`` FF.
* Relu: ``out_bits`` LUT + ``out_bits`` FF.
* MaxPool (compare, keep): ``in_bits`` LUT + ``in_bits`` FF.
* SumPool (add, keep): ``acc_bits`` LUT + ``acc_bits`` FF.
* Add: ``max(in_bits, out_bits) + 1`` LUT + ``out_bits`` FF.

**Minifloat products** (Conv2d/Dense rows with ``in_minifloat`` and/or ``w_minifloat``, each
``{"exponent_bits": E, "mantissa_bits": M, "exp_range": r}`` from :func:`minifloat_operand`, with r = e_max - e_min):
the datapath of ``hls_templates/edgeq_minifloat.h`` and of the paper, per lane (:func:`minifloat_product_cost`):

* the **significand product** ``multiplier_cost(s_x, s_w)`` with s = M + 1 for a minifloat (the implicit bit
  included, the sign kept apart) and the integer width for an integer operand;
* the **implicit bit** (exponent field non-zero): 1 LUT per minifloat operand (2 beyond 6 exponent bits);
* the **sign** XOR: 1 LUT (the conditional negation merges into the accumulator's add/sub);
* the **exponent add** when both operands are minifloats and r_x + r_w > 0: ``max(E_x, E_w) + 1`` LUT and FF;
* the **alignment shifter** when r = r_x + r_w > 0: the ``s_x + s_w``-bit product shifted by 0..r into
  ``p = s_x + s_w + r`` bits, ``ceil(log2(r + 1))`` mux stages at two per LUT6: ``p * ceil(stages / 2)`` LUT, and
  ``p`` FF for the pipeline register.

``in_bits``/``w_bits`` stay the storage widths (1 + E + M) for the input buffer and the weight ROM.

**Rescale** (the declared float32 rescale ``y = f32(f32(A) * m[c])`` ``(+ b[c])`` of an exact accumulator, one
lane): an integer-to-float conversion (``in_bits`` LUT for the leading-zero count and ``in_bits *
ceil(log2(in_bits) / 2)`` LUT for the normalising shifter, 32 FF), one float32 multiply ``FMUL_COST`` and, with
``has_bias``, one float32 add ``FADD_COST``, plus the m and b ROMs (``channels`` x 32 bits each).

**Decode** (minifloat bits to fixed-point codes, for Add/pools/thresholds on power-of-two minifloats), per lane:
the shifter ``out_bits * ceil(log2(exp_range + 1) / 2)`` LUT + 1 LUT for the implicit bit, ``out_bits`` FF.

**Control**: ``LAYER_CONTROL`` (60 LUT + 80 FF) per layer, for loop counters, address generation and handshake.
Reshape is free: it only re-indexes a buffer.

**Memories** (see :func:`memory_cost`): an array of N values of w bits, split into P = min(``parallel``, N)
partitions so that every lane reads its own bank each clock. Each partition has depth ``ceil(N/P)``.

* a partition of fewer than ``BRAM_MIN_BITS`` = 1024 bits goes to LUTRAM or LUT-ROM: ``w * ceil(depth/64)`` LUTs,
  since one LUT6 is a 64x1 RAM or ROM. The threshold is our choice: below 1024 bits a RAMB18 would be more than
  94 % empty, while a smaller partition costs at most 16 + w LUTs.
* otherwise block RAM: the cheapest tiling of depth x w by one RAMB36 shape (32Kx1, 16Kx2, 8Kx4, 4Kx9, 2Kx18,
  1Kx36, 512x72) or RAMB18 shape (16Kx1 ... 512x36), with a RAMB18 counting as 0.5 BRAM36. A tiling never
  holds less than ``bits / 36864`` BRAM36 per partition.

The arrays are: the weights (N = ``weights``, w = ``w_bits``); the thresholds (N = ``channels * levels``,
w = ``acc_bits``); and the layer's input buffer (N = ``in_elements``, w = ``in_bits``). An Add layer has two input
buffers, because its skip input must be held until the other branch arrives. There are ``BUFFER_COPIES`` (1) of
each buffer. If the top level uses ``#pragma HLS DATAFLOW`` with array channels, Vitis HLS double-buffers them
(ping-pong), and the constant should become 2.

**Top level**: a fixed ``TOP_OVERHEAD`` (2000 LUT, 2500 FF, 2 BRAM36, 0 DSP) for the s_axilite control block,
the m_axi adapter and its burst buffers. These are round figures typical of Vitis HLS reports for such a top. They
have not been measured on this project.

What it ignores
---------------
* packing and routing effects: LUT/FF pairing, control sets, and the ~70-80 % utilisation above which timing closure
  gets hard, so a design estimated at 95 % may still fail;
* the Vivado block design around the HLS IP (SmartConnect, DMA, resets, the PS configuration);
* biases, FIFOs between dataflow processes, and the multiplexers that array partitioning adds;
* Vivado's optimisations: constant-weight products folded to LUTs, DSP48E2 packing of two INT8 products into one
  slice, retiming and resource sharing;
* UltraRAM. Arrays are bound to BRAM or LUTRAM only. On boards that have URAM (ZCU104, KV260), a BRAM shortfall can
  often be met by binding the large weight ROMs to URAM.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from edgeq.errors import EdgeqError

#: the resources the estimate covers, in report order
RESOURCES = ("dsp", "lut", "ff", "bram36")
#: printable names
RESOURCE_NAMES = {"dsp": "DSP", "lut": "LUT", "ff": "FF", "bram36": "BRAM36"}

#: signed multiplier port widths (wide port, narrow port) of one DSP slice
DSP_SLICES = {"DSP48E2": (27, 18), "DSP48E1": (25, 18)}
#: a product goes to a DSP when its wider operand is wider than this ...
DSP_MAX_FABRIC_WIDTH = 10
#: ... or when it has more partial-product bits (a*b) than this
DSP_MAX_FABRIC_PRODUCT = 40

#: an array partition smaller than this many bits goes to LUTRAM / LUT-ROM instead of block RAM
BRAM_MIN_BITS = 1024
#: bits of one LUT6 used as a 64x1 RAM/ROM
LUTRAM_BITS = 64
#: bits of one RAMB36 including parity bits (the data-sheet capacity, 36 Kib)
BRAM36_BITS = 36864
#: simple-dual-port (depth, width) shapes of one RAMB36 and of one RAMB18 (UG473 / UG573)
RAMB36_SHAPES = ((32768, 1), (16384, 2), (8192, 4), (4096, 9), (2048, 18), (1024, 36), (512, 72))
RAMB18_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
#: copies of each activation buffer (2 if the top level ping-pongs them)
BUFFER_COPIES = 1

#: loop counters, address generation and handshake of one hardware layer
LAYER_CONTROL = {"lut": 60, "ff": 80}
#: s_axilite control + m_axi adapter and burst buffers of the top-level function (not measured here)
TOP_OVERHEAD = {"dsp": 0, "lut": 2000, "ff": 2500, "bram36": 2.0}

MAC_OPS = ("Conv2d", "Dense")
BINARY_OPS = ("XnorDense", "XnorConv2d", "MstDense", "MstConv2d")
OPS = MAC_OPS + BINARY_OPS + ("Threshold", "Cast", "MaxPool", "SumPool", "Relu", "Add", "ConstOp", "Reshape",
                              "Rescale", "Decode")

#: one float32 multiply as Vitis HLS binds it on DSP48E2 ("fmul", full-DSP core; assumed from the Floating-Point
#: Operator data sheet PG060's order of magnitude, not measured here)
FMUL_COST = {"dsp": 3, "lut": 80, "ff": 150}
#: one float32 add ("fadd", full-DSP core; same remark)
FADD_COST = {"dsp": 2, "lut": 200, "ff": 300}

#: LUTs per XNOR+popcount input bit (the XNOR folds into the popcount tree's first compressor level)
XNOR_LUT_PER_BIT = 1.0
#: FFs per XNOR+popcount input bit (pipeline registers between adder-tree levels)
XNOR_FF_PER_BIT = 0.5
#: bits of one packed word of the binary kernels
XNOR_WORD_BITS = 64


# ---------------------------------------------------------------------------------------------- products


def multiplier_impl(a: int, b: int, shift_add: bool = False) -> str:
    """How one signed ``a x b`` product is built.

    Returns ``"none"`` (an operand of width 0), ``"xnor"`` (1 x 1), ``"negate"`` (1 x n), ``"shift"``
    (a multiplier-free layer), ``"dsp"`` (``max(a, b) > DSP_MAX_FABRIC_WIDTH`` or ``a*b > DSP_MAX_FABRIC_PRODUCT``)
    or ``"fabric"`` (LUTs).
    """
    if a <= 0 or b <= 0:
        return "none"
    if a == 1 and b == 1:
        return "xnor"
    if min(a, b) == 1:
        return "negate"
    if shift_add:
        return "shift"
    if max(a, b) > DSP_MAX_FABRIC_WIDTH or a * b > DSP_MAX_FABRIC_PRODUCT:
        return "dsp"
    return "fabric"


def dsp_tiles(a: int, b: int, dsp_slice: str = "DSP48E2") -> int:
    """DSP slices for one ``a x b`` product: ceil-tiled over the slice's multiplier, better orientation."""
    wide, narrow = DSP_SLICES[dsp_slice]
    return min(math.ceil(a / wide) * math.ceil(b / narrow), math.ceil(b / wide) * math.ceil(a / narrow))


def multiplier_cost(a: int, b: int, *, dsp_slice: str = "DSP48E2", shift_add: bool = False,
                    shift_terms: int = 0) -> dict[str, Any]:
    """Resources of one ``a x b`` product: ``{"impl", "dsp", "lut", "ff"}`` (rules in the module docstring)."""
    impl = multiplier_impl(a, b, shift_add)
    if impl == "shift" and shift_terms > 0:
        lut = shift_terms * a * max(1, math.ceil(math.log2(b))) + (shift_terms - 1) * (a + b)
        return {"impl": impl, "dsp": 0, "lut": lut, "ff": a + b}
    if impl == "none":
        return {"impl": impl, "dsp": 0, "lut": 0, "ff": 0}
    if impl == "xnor":
        return {"impl": impl, "dsp": 0, "lut": 1, "ff": 1}
    if impl == "negate":
        n = max(a, b)
        return {"impl": impl, "dsp": 0, "lut": n, "ff": n + 1}
    if impl == "dsp":
        return {"impl": impl, "dsp": dsp_tiles(a, b, dsp_slice), "lut": 0, "ff": 0}
    return {"impl": impl, "dsp": 0, "lut": a * b + a + b, "ff": a + b}  # fabric or shift


def minifloat_operand(fmt: Any) -> dict[str, int] | None:
    """The ``in_minifloat``/``w_minifloat`` row entry of a MAC operand format: None for integers and fixed point."""
    from edgeq.formats import MiniFloat

    if not isinstance(fmt, MiniFloat):
        return None
    r = int(math.floor(math.log2(fmt.max))) - fmt.min_normal_exponent
    return {"exponent_bits": fmt.exponent_bits, "mantissa_bits": fmt.mantissa_bits, "exp_range": max(0, r)}


def minifloat_product_cost(x_bits: int, w_bits: int, x_mf: dict | None, w_mf: dict | None, *,
                           dsp_slice: str = "DSP48E2") -> dict[str, Any]:
    """Resources of one product whose operands are minifloats (``x_mf``/``w_mf``, :func:`minifloat_operand`) or
    integers of ``x_bits``/``w_bits``: the significand product, implicit bits, sign, exponent add and alignment
    shifter of the module docstring, as :func:`multiplier_cost`'s dict."""
    ops = [(mf["mantissa_bits"] + 1, mf["exp_range"], mf["exponent_bits"]) if mf else (bits, 0, 0)
           for bits, mf in ((x_bits, x_mf), (w_bits, w_mf))]
    (sx, rx, ex), (sw, rw, ew) = ops
    core = multiplier_cost(sx, sw, dsp_slice=dsp_slice)
    out = {"impl": core["impl"], "dsp": core["dsp"], "lut": core["lut"], "ff": core["ff"]}
    if not (ex or ew):
        return out
    out["lut"] += sum(1 if e <= 6 else 2 for e in (ex, ew) if e)  # implicit bits
    out["lut"] += 1  # sign XOR
    r = rx + rw
    if ex and ew and r > 0:  # the shift amount is the sum of both exponents
        add = max(ex, ew) + 1
        out["lut"] += add
        out["ff"] += add
    if r > 0:
        width = sx + sw + r
        stages = math.ceil(math.log2(r + 1))
        out["lut"] += width * math.ceil(stages / 2)
        out["ff"] += width
    return out


# ---------------------------------------------------------------------------------------------- memories


def _bram_tiles(depth: int, width: int) -> float:
    """BRAM36 for one depth x width partition: the cheapest single-shape RAMB36 or RAMB18 tiling."""
    best = min(math.ceil(depth / d) * math.ceil(width / w) for d, w in RAMB36_SHAPES)
    half = min(math.ceil(depth / d) * math.ceil(width / w) for d, w in RAMB18_SHAPES)
    return min(float(best), 0.5 * half)


def memory_cost(values: int, width: int, partitions: int = 1) -> dict[str, Any]:
    """Resources of an array of ``values`` entries of ``width`` bits split into ``partitions`` banks.

    Returns ``{"kind": "none" | "lutram" | "bram", "lut": int, "bram36": float, "partitions": P, "depth": D}``
    with P = min(partitions, values) and D = ceil(values / P). A partition of fewer than ``BRAM_MIN_BITS``
    bits is LUTRAM (``width * ceil(D / 64)`` LUTs). Otherwise it is block RAM, tiled by one RAMB36 or RAMB18 shape.
    """
    if values <= 0 or width <= 0:
        return {"kind": "none", "lut": 0, "bram36": 0.0, "partitions": 0, "depth": 0}
    p = max(1, min(int(partitions), int(values)))
    depth = math.ceil(values / p)
    if depth * width < BRAM_MIN_BITS:
        return {
            "kind": "lutram",
            "lut": p * width * math.ceil(depth / LUTRAM_BITS),
            "bram36": 0.0,
            "partitions": p,
            "depth": depth,
        }
    return {"kind": "bram", "lut": 0, "bram36": p * _bram_tiles(depth, width), "partitions": p, "depth": depth}


# ---------------------------------------------------------------------------------------------- layers


def _int(layer: dict, key: str, default: int = 0) -> int:
    value = layer.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise EdgeqError(
            f"cost estimate: layer '{layer.get('name', '?')}' has {key}={value!r}; expected a non-negative integer"
        )
    return int(value)


#: per-lane (LUT, FF) of the non-MAC layers, from the layer's widths (in_bits, acc_bits, out_bits)
_LANE_COST = {
    "Threshold": lambda i, acc, o: (acc or i, o),
    "Cast": lambda i, acc, o: (i, o),
    "Relu": lambda i, acc, o: (o, o),
    "MaxPool": lambda i, acc, o: (i, i),
    "SumPool": lambda i, acc, o: (acc or i, acc or i),
    "Add": lambda i, acc, o: (max(i, o) + 1, o),
    "ConstOp": lambda i, acc, o: (max(i, o) + 1, o),  # the shift-add of a shift; a multiply as shift-adds in LUTs
    "Reshape": lambda i, acc, o: (0, 0),
}


def _memory_note(what: str, m: dict[str, Any], width: int) -> str:
    where = f"BRAM36 {m['bram36']:g}" if m["kind"] == "bram" else f"LUTRAM {m['lut']} LUT"
    return f"{what}: {m['partitions']} x {m['depth']} x {width} bit -> {where}"


def estimate_layer(layer: dict, *, dsp_slice: str = "DSP48E2") -> dict[str, Any]:
    """Estimate one hardware layer: ``{"dsp": int, "lut": int, "ff": int, "bram36": float, "notes": [str]}``.

    ``layer`` is the dict described in the module docstring (``name``, ``op``, ``in_bits``, ``w_bits``,
    ``acc_bits``, ``out_bits``, ``weights``, ``in_elements``, ``channels``, ``levels``, ``parallel``,
    optional ``shift_add``). ``dsp_slice`` is ``"DSP48E2"`` (Zynq UltraScale+) or ``"DSP48E1"`` (Zynq-7000).
    An unknown op, or a negative or non-integer size, is an EdgeqError naming the layer.
    """
    name, op = layer.get("name", "?"), layer.get("op")
    if op not in OPS:
        raise EdgeqError(
            f"cost estimate: layer '{name}' has op {op!r}, which has no cost model; known: {', '.join(OPS)}"
        )
    if dsp_slice not in DSP_SLICES:
        raise EdgeqError(f"cost estimate: unknown DSP slice {dsp_slice!r}; known: {', '.join(DSP_SLICES)}")
    in_bits, w_bits, acc_bits, out_bits = (_int(layer, k) for k in ("in_bits", "w_bits", "acc_bits", "out_bits"))
    lanes = max(1, _int(layer, "parallel", 1))
    out = {"dsp": 0, "lut": 0, "ff": 0, "bram36": 0.0, "notes": []}
    notes = out["notes"]
    if op == "Reshape":
        notes.append("re-indexes its input buffer: no hardware")
        return out
    if op in BINARY_OPS:
        return binary_cost(layer, out)

    if op in MAC_OPS:
        weights = _int(layer, "weights")
        if w_bits == 0 or weights == 0:
            raise EdgeqError(f"cost estimate: {op} layer '{name}' has no weights (weights={weights}, w_bits={w_bits})")
        x_mf, w_mf = layer.get("in_minifloat"), layer.get("w_minifloat")
        if x_mf or w_mf:
            mul = minifloat_product_cost(in_bits, w_bits, x_mf, w_mf, dsp_slice=dsp_slice)
        else:
            mul = multiplier_cost(in_bits, w_bits, dsp_slice=dsp_slice, shift_add=bool(layer.get("shift_add", False)),
                                  shift_terms=_int(layer, "shift_terms"))
        out["dsp"] += lanes * mul["dsp"]
        out["lut"] += lanes * (mul["lut"] + acc_bits)
        out["ff"] += lanes * (mul["ff"] + acc_bits)
        kind = f"{mul['dsp']} {dsp_slice}" if mul["impl"] == "dsp" else f"{mul['impl']}, {mul['lut']} LUT"
        what = "minifloat product (significands, shift)" if x_mf or w_mf else "product"
        notes.append(f"{lanes} x {what} {in_bits}x{w_bits} bit -> {kind}; {lanes} x {acc_bits}-bit accumulator")
        rom = memory_cost(weights, w_bits, lanes)
        out["lut"] += rom["lut"]
        out["bram36"] += rom["bram36"]
        notes.append(_memory_note("weights", rom, w_bits))
        macs = _int(layer, "macs")
        if macs:
            notes.append(f"~{math.ceil(macs / lanes):,} cycles/sample for {macs:,} MACs")
    elif op == "Rescale":  # int -> float32, one float32 multiply, one float32 add with a bias
        conv_lut = in_bits + in_bits * math.ceil(math.log2(max(2, in_bits)) / 2)
        parts = [FMUL_COST] + ([FADD_COST] if layer.get("has_bias") else [])
        out["dsp"] += lanes * sum(p["dsp"] for p in parts)
        out["lut"] += lanes * (conv_lut + sum(p["lut"] for p in parts))
        out["ff"] += lanes * (32 + sum(p["ff"] for p in parts))
        notes.append(f"{lanes} x (int{in_bits} -> float32, fmul" + (", fadd)" if layer.get("has_bias") else ")"))
        roms = 2 if layer.get("has_bias") else 1
        rom = memory_cost(_int(layer, "channels", 1), 32, 1)
        out["lut"] += roms * rom["lut"]
        out["bram36"] += roms * rom["bram36"]
    elif op == "Decode":
        stages = math.ceil(math.log2(_int(layer, "exp_range") + 1)) if _int(layer, "exp_range") else 0
        out["lut"] += lanes * (out_bits * math.ceil(stages / 2) + 1)
        out["ff"] += lanes * out_bits
        notes.append(f"{lanes} x minifloat decode {in_bits} -> {out_bits} bit")
    elif op == "ConstOp" and layer.get("mul"):  # a fixed-point BatchNorm scale: one multiplier per lane
        mul = multiplier_cost(in_bits, w_bits, dsp_slice=dsp_slice, shift_add=bool(layer.get("shift_add", False)))
        out["dsp"] += lanes * mul["dsp"]
        out["lut"] += lanes * mul["lut"]
        out["ff"] += lanes * (mul["ff"] + out_bits)
        notes.append(f"{lanes} x scale {in_bits}x{w_bits} bit -> {mul['impl']}")
    else:
        lut, ff = _LANE_COST[op](in_bits, acc_bits, out_bits)
        out["lut"] += lanes * lut
        out["ff"] += lanes * ff
        notes.append(f"{lanes} lane(s) x ({lut} LUT, {ff} FF)")
        if op == "Threshold":
            thr_bits = acc_bits or in_bits
            count = _int(layer, "channels") * _int(layer, "levels")
            thr = memory_cost(count, thr_bits, lanes)
            out["lut"] += thr["lut"]
            out["bram36"] += thr["bram36"]
            if thr["kind"] != "none":
                notes.append(_memory_note("thresholds", thr, thr_bits))

    buffers = (2 if op == "Add" else 1) * BUFFER_COPIES
    buf = memory_cost(_int(layer, "in_elements"), in_bits, lanes)
    out["lut"] += buffers * buf["lut"]
    out["bram36"] += buffers * buf["bram36"]
    if buf["kind"] != "none":
        notes.append((f"{buffers} x " if buffers > 1 else "") + _memory_note("input buffer", buf, in_bits))

    out["lut"] += LAYER_CONTROL["lut"]
    out["ff"] += LAYER_CONTROL["ff"]
    return out


def binary_cost(layer: dict, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Resources of an XNOR / MST layer (rules in the module docstring).

    ``layer`` needs ``channels`` (Cout), ``k``, ``xnor_bits`` (bits per output pixel pass: Cout*K, or
    roots*K + sum|D| for MST), ``acc_bits``, ``in_bits``, ``in_elements``, ``pixels`` (output pixels per channel,
    1 for Dense) and ``parallel`` (input-buffer banks); MST layers also ``roots`` and ``diff`` (sum|D|).
    """
    out = out if out is not None else {"dsp": 0, "lut": 0, "ff": 0, "bram36": 0.0, "notes": []}
    name, op = layer.get("name", "?"), layer.get("op")
    notes = out["notes"]
    cout, k, bits = (_int(layer, key) for key in ("channels", "k", "xnor_bits"))
    acc_bits, in_bits = _int(layer, "acc_bits"), _int(layer, "in_bits")
    if cout == 0 or k == 0 or bits == 0:
        raise EdgeqError(f"cost estimate: {op} layer '{name}' has channels={cout}, k={k}, xnor_bits={bits}")
    lanes = math.ceil(bits / cout)
    words = math.ceil(k / XNOR_WORD_BITS)
    out["lut"] += math.ceil(lanes * XNOR_LUT_PER_BIT) + acc_bits
    out["ff"] += math.ceil(lanes * XNOR_FF_PER_BIT) + acc_bits
    notes.append(f"XNOR+popcount: {bits:,} weight bits per output pixel pass over {cout} channel steps -> "
                 f"{lanes} bit lanes ({cout * k:,} bits plain); one {acc_bits}-bit accumulator")
    mst = op.startswith("Mst")
    rows = _int(layer, "roots") if mst else cout
    what = "root rows" if mst else "weight rows"
    if rows == 1:  # a single row is read at one constant address: synthesis folds it into the XNOR logic
        notes.append(f"{what}: 1 x {k} bit, constant (folded into the XNORs)")
    else:
        rom = memory_cost(rows * words, XNOR_WORD_BITS, words)
        out["lut"] += rom["lut"]
        out["bram36"] += rom["bram36"]
        notes.append(_memory_note(what, rom, XNOR_WORD_BITS))
    if mst:
        diff = _int(layer, "diff")
        pos_bits = max(1, math.ceil(math.log2(k))) if k > 1 else 1
        for what, m, width in (("D positions", memory_cost(diff, pos_bits), pos_bits),
                               ("parent signs", memory_cost(math.ceil(diff / XNOR_WORD_BITS), XNOR_WORD_BITS),
                                XNOR_WORD_BITS),
                               ("parent accs", memory_cost(cout, acc_bits), acc_bits)):
            out["lut"] += m["lut"]
            out["bram36"] += m["bram36"]
            if m["kind"] != "none":
                notes.append(_memory_note(what, m, width))
        out["lut"] += acc_bits  # the child's correction adder
        out["ff"] += acc_bits
    pixels = max(1, _int(layer, "pixels", 1))
    notes.append(f"~{pixels * (cout + math.ceil(k / max(1, _int(layer, 'parallel', 1)))):,} cycles/sample")
    buf = memory_cost(_int(layer, "in_elements"), in_bits, max(1, _int(layer, "parallel", 1)))
    out["lut"] += BUFFER_COPIES * buf["lut"]
    out["bram36"] += BUFFER_COPIES * buf["bram36"]
    if buf["kind"] != "none":
        notes.append(_memory_note("input buffer", buf, in_bits))
    out["lut"] += LAYER_CONTROL["lut"]
    out["ff"] += LAYER_CONTROL["ff"]
    return out


# ---------------------------------------------------------------------------------------------- boards


def _board_name(board) -> str:
    return getattr(board, "name", None) or board.get("name", "?")


def dsp_slice_of(board) -> str:
    """``"DSP48E1"`` for Zynq-7000 boards (``ps = "processing_system7"`` or an ``xc7`` part), else ``"DSP48E2"``."""
    ps = board.get("ps")
    if ps == "processing_system7" or (ps is None and str(board.get("part", "")).lower().startswith("xc7")):
        return "DSP48E1"
    return "DSP48E2"


def capacity_of(board) -> dict[str, float]:
    """The board's ``[resources]`` restricted to :data:`RESOURCES`; a missing entry is an EdgeqError."""
    if board.get("kind") != "fpga":
        raise EdgeqError(
            f"board '{_board_name(board)}' is not an FPGA board; pick one of `edgeq boards` with kind fpga"
        )
    res = board.get("resources") or {}
    missing = [r for r in RESOURCES if r not in res]
    if missing:
        raise EdgeqError(f"boards/{_board_name(board)}.toml: [resources] lacks {', '.join(missing)}; add it")
    return {r: res[r] for r in RESOURCES}


# ---------------------------------------------------------------------------------------------- design


def estimate(layers: list[dict], board) -> dict[str, Any]:
    """Estimate a whole design on ``board`` (an :class:`edgeq.board.Board` of kind fpga).

    Returns ``{"board", "dsp_slice", "layers": [{"name", "op", **estimate_layer}], "overhead": TOP_OVERHEAD,
    "totals", "capacity", "utilisation": {res: fraction}, "over_budget": [res, ...]}``. ``totals`` is the sum
    over the layers plus ``overhead``. ``over_budget`` lists the resources, in :data:`RESOURCES` order, whose
    total exceeds the capacity.
    """
    capacity = capacity_of(board)
    dsp_slice = dsp_slice_of(board)
    rows = [
        {"name": layer.get("name", "?"), "op": layer.get("op"), **estimate_layer(layer, dsp_slice=dsp_slice)}
        for layer in layers
    ]
    totals: dict[str, float] = {}
    for r in RESOURCES:
        totals[r] = sum(row[r] for row in rows) + TOP_OVERHEAD[r]
    utilisation = {
        r: (totals[r] / capacity[r]) if capacity[r] > 0 else (math.inf if totals[r] else 0.0) for r in RESOURCES
    }
    return {
        "board": _board_name(board),
        "dsp_slice": dsp_slice,
        "layers": rows,
        "overhead": dict(TOP_OVERHEAD),
        "totals": totals,
        "capacity": capacity,
        "utilisation": utilisation,
        "over_budget": [r for r in RESOURCES if totals[r] > capacity[r]],
    }


_DSP_ADVICE = (
    f"lower --parallel, or narrow the formats so products stay in LUTs "
    f"(both operands <= {DSP_MAX_FABRIC_WIDTH} bits and a*b <= {DSP_MAX_FABRIC_PRODUCT})"
)
_ADVICE = {
    "dsp": _DSP_ADVICE,
    "lut": "lower --parallel or use narrower formats",
    "ff": "lower --parallel or use narrower formats (accumulators dominate)",
    "bram36": "use narrower weights or activations, lower --parallel (fewer, fuller banks), or a board with more BRAM",
}


def _fmt(value: float) -> str:
    return f"{value:,.1f}".removesuffix(".0") if isinstance(value, float) else f"{value:,}"


def _worst_layer(report: dict, res: str) -> tuple[str, float]:
    rows = report.get("layers") or []
    if not rows:
        return "(top level)", report.get("overhead", TOP_OVERHEAD)[res]
    row = max(rows, key=lambda row: row[res])
    return row["name"], row[res]


def check_budget(report: dict, board, allow_over_budget: bool = False) -> list[str]:
    """Compare ``report`` (from :func:`estimate`) with ``board``'s resources.

    Within budget: returns ``[]``. Over budget: raises one single-line EdgeqError. The line names each resource
    over budget, the estimate against the capacity, the layer that uses the most of it, and what to do. With
    ``allow_over_budget`` it returns one warning string per resource over budget instead of raising.
    """
    capacity = capacity_of(board)
    totals = report["totals"]
    over = [r for r in RESOURCES if totals[r] > capacity[r]]
    if not over:
        return []
    where = f"{_board_name(board)} ({board.get('part', '?')})"
    parts, warnings = [], []
    for r in over:
        layer, used = _worst_layer(report, r)
        pct = 100.0 * totals[r] / capacity[r] if capacity[r] else math.inf
        what = (
            f"{RESOURCE_NAMES[r]} {_fmt(totals[r])} > {_fmt(capacity[r])} ({pct:.0f}%), "
            f"most in layer '{layer}' ({_fmt(used)})"
        )
        parts.append(f"{what}: {_ADVICE[r]}")
        warnings.append(f"estimate exceeds {where}: {what}; building anyway (--allow-over-budget)")
    if allow_over_budget:
        return warnings
    raise EdgeqError(
        f"design does not fit {where} by the pre-synthesis estimate: {'; '.join(parts)}; "
        "or pass --allow-over-budget to build anyway"
    )
