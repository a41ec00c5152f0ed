"""Host side of the FP16 MCU kernels (``firmware/common/edgeq_nn.c``): weight packing, scratch sizes, parameters.

The C kernels compute, for every output, the arithmetic contract stated in ``edgeq_nn.h`` (one MAC per k in
ascending order, ``lanes`` accumulators, the zero padding included); the packing below only changes where
the weights sit in flash, never which weight meets which input.

Packed layouts (all float16, 1-D):

* **conv** -- ``[group][co_block][k][CB]``: for each group, its ``cout/group`` output channels in blocks of
  ``CB`` (:func:`conv_block_channels`: 1 for a depthwise conv, i.e. ``group == cin == cout``; else 4 when
  ``lanes == 1`` and 2 when ``lanes == 2``), the last block zero-padded to ``CB`` channels; inside a block,
  ``k`` is the flattened ``(ci, ky, kx)`` of the group (``ci`` slowest) and the ``CB`` channels are adjacent.
* **dense** -- output columns in blocks: as many of :func:`dense_block_outputs` (16, or 8 when ``lanes == 2``)
  as fit, then one block for each remaining power of two, largest first (N = 10 -> 8, 2); each block is
  ``[k][nb]``.

With ``lanes == 2`` the ``k`` axis is stored in pairs, so that the v2f16 operand ``(w[k], w[k+1])`` (k even) of
one output is a single aligned 32-bit load: conv blocks are ``[k/2][CB][2]`` and dense blocks ``[k/2][nb][2]``,
with an odd K first padded to even by a +0.0 weight (the weight of the contract's trailing
``MAC(lane1, +0, +0)``; :func:`packed_k`). Every block then has an even number of elements, so every pair is
aligned when the packed array is: edgeq_nn.h requires 4-byte alignment with 2 lanes.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError

#: the keys of the C struct ``edgeq_conv_t``, in field order
CONV_KEYS = ("cin", "ih", "iw", "cout", "oh", "ow", "kh", "kw", "sh", "sw", "dh", "dw", "pt", "pl", "pb", "pr",
             "group")
#: the kernel sources, relative to the ``common`` firmware folder
C_SOURCES = ("edgeq_nn.c", "edgeq_xnor.c")
C_HEADERS = ("edgeq_nn.h", "edgeq_xnor.h")


def firmware_common() -> Traversable:
    """The folder holding ``edgeq_nn.h/.c`` (package data of ``edgeq.firmware``); use it as the include path."""
    return resources.files("edgeq.firmware") / "common"


def c_sources() -> list[Traversable]:
    """The C files to compile with a generated model: the FP16 and the binary kernels."""
    return [firmware_common() / name for name in C_SOURCES]


def _check_lanes(lanes: int) -> None:
    if lanes not in (1, 2):
        raise EdgeqError(f"the MCU kernels support lanes 1 or 2, not {lanes}")


def is_depthwise(p: dict[str, int]) -> bool:
    """The depthwise fast path of the C kernel is taken exactly when ``group == cin == cout``."""
    return p["group"] == p["cin"] == p["cout"]


def conv_block_channels(p: dict[str, int], lanes: int) -> int:
    """CB, the output channels per packed weight block (``EDGEQ_CONV_CB`` in C, or 1 when depthwise)."""
    _check_lanes(lanes)
    return 1 if is_depthwise(p) else (4 if lanes == 1 else 2)


def dense_block_outputs(lanes: int) -> int:
    """The outputs of a full dense block (``EDGEQ_DENSE_NB`` in C)."""
    _check_lanes(lanes)
    return 16 if lanes == 1 else 8


def conv_params(in_shape: tuple[int, ...], out_shape: tuple[int, ...], attrs: dict[str, Any],
                weight_shape: tuple[int, ...] | None = None) -> dict[str, int]:
    """The ``edgeq_conv_t`` fields for a conv from (C, H, W) ``in_shape`` to ``out_shape``.

    ``attrs`` are ONNX-style: ``strides`` (2), ``pads`` (top, left, bottom, right), ``dilations`` (2), ``group``;
    each defaults as in ONNX. The kernel size comes from ``weight_shape`` (Cout, Cin/group, kh, kw) or else from
    ``attrs["kernel_shape"]``. Raises EdgeqError when the shapes do not fit together.
    """
    if len(in_shape) != 3 or len(out_shape) != 3:
        raise EdgeqError(f"conv_params takes per-sample (C, H, W) shapes, not {tuple(in_shape)} -> {tuple(out_shape)}")
    cin, ih, iw = (int(v) for v in in_shape)
    cout, oh, ow = (int(v) for v in out_shape)
    group = int(attrs.get("group", 1))
    if weight_shape is not None:
        wco, wci, kh, kw = (int(v) for v in weight_shape)
        if wco != cout or wci * group != cin:
            raise EdgeqError(f"conv weight {tuple(weight_shape)} does not fit input {tuple(in_shape)}, "
                             f"output {tuple(out_shape)} and group {group}")
    elif "kernel_shape" in attrs:
        kh, kw = (int(v) for v in attrs["kernel_shape"])
    else:
        raise EdgeqError("conv_params needs the weight shape or attrs['kernel_shape']")
    sh, sw = (int(v) for v in attrs.get("strides", (1, 1)))
    dh, dw = (int(v) for v in attrs.get("dilations", (1, 1)))
    pt, pl, pb, pr = (int(v) for v in attrs.get("pads", (0, 0, 0, 0)))
    if group < 1 or cin % group or cout % group:
        raise EdgeqError(f"conv group {group} must divide cin {cin} and cout {cout}")
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(pt, pl, pb, pr) < 0:
        raise EdgeqError(f"conv kernel/strides/dilations must be >= 1 and pads >= 0: {attrs}")
    want = ((ih + pt + pb - dh * (kh - 1) - 1) // sh + 1, (iw + pl + pr - dw * (kw - 1) - 1) // sw + 1)
    if (oh, ow) != want or min(want) < 1:
        raise EdgeqError(f"conv output {tuple(out_shape)} does not match input {tuple(in_shape)} and {attrs} "
                         f"(expected spatial size {want})")
    values = (cin, ih, iw, cout, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, group)
    return dict(zip(CONV_KEYS, values))


def conv_scratch_elems(p: dict[str, int], lanes: int) -> int:
    """float16 elements of the ``scratch`` buffer for ``edgeq_conv2d`` (``edgeq_conv2d_scratch_elems`` in C):
    a zero-padded copy of one group's input when there is padding, then an int32 table of up to K entries."""
    _check_lanes(lanes)
    cin_g = p["cin"] // p["group"]
    padded = 0
    if p["pt"] or p["pl"] or p["pb"] or p["pr"]:
        padded = cin_g * (p["ih"] + p["pt"] + p["pb"]) * (p["iw"] + p["pl"] + p["pr"])
    return padded + 1 + 2 * cin_g * p["kh"] * p["kw"]


def packed_k(k: int, lanes: int) -> int:
    """The packed weights per output along k: K, or K rounded up to even when ``lanes == 2``."""
    _check_lanes(lanes)
    return k + (k & 1) if lanes == 2 else k


def _pair_k(blocks: np.ndarray, lanes: int) -> np.ndarray:
    """(..., K, C) blocks -> (..., K, C) for lanes=1, (..., K/2, C, 2) for lanes=2, K zero-padded to even."""
    if lanes == 1:
        return blocks
    k = blocks.shape[-2]
    kp = packed_k(k, lanes)
    if kp != k:
        pad = [(0, 0)] * blocks.ndim
        pad[-2] = (0, kp - k)
        blocks = np.pad(blocks, pad)  # +0.0
    pairs = blocks.reshape(*blocks.shape[:-2], kp // 2, 2, blocks.shape[-1])
    return np.swapaxes(pairs, -1, -2)


def pack_conv(w: np.ndarray, p: dict[str, int], lanes: int) -> np.ndarray:
    """Conv weights (Cout, Cin/group, kh, kw) float16 in the layout of the module docstring."""
    w = np.asarray(w)
    if w.dtype != np.float16:
        raise EdgeqError(f"pack_conv takes float16 weights, not {w.dtype}")
    g, cout, cin = p["group"], p["cout"], p["cin"]
    if w.shape != (cout, cin // g, p["kh"], p["kw"]):
        raise EdgeqError(f"conv weight shape {w.shape} does not match the parameters {p}")
    cb = conv_block_channels(p, lanes)
    cout_g, k = cout // g, (cin // g) * p["kh"] * p["kw"]
    nb = -(-cout_g // cb)
    padded = np.zeros((g, nb * cb, k), dtype=np.float16)
    padded[:, :cout_g] = w.reshape(g, cout_g, k)
    blocks = padded.reshape(g, nb, cb, k).transpose(0, 1, 3, 2)  # [group][co_block][k][CB]
    return np.ascontiguousarray(_pair_k(blocks, lanes)).reshape(-1)


def dense_blocks(n: int, lanes: int) -> list[int]:
    """The widths of the dense output blocks, in order (e.g. n=10, lanes=1 -> [8, 2])."""
    full = dense_block_outputs(lanes)
    blocks = [full] * (n // full)
    rest = n % full
    blocks += [b for b in (8, 4, 2, 1) if b < full and rest & b]
    return blocks


def pack_dense(w: np.ndarray, lanes: int) -> np.ndarray:
    """Dense weights (K, N) float16 in the layout of the module docstring."""
    w = np.asarray(w)
    if w.dtype != np.float16 or w.ndim != 2:
        raise EdgeqError(f"pack_dense takes a (K, N) float16 matrix, not {w.dtype} {w.shape}")
    parts, n0 = [], 0
    for nb in dense_blocks(w.shape[1], lanes):
        parts.append(np.ascontiguousarray(_pair_k(w[:, n0:n0 + nb], lanes)).reshape(-1))
        n0 += nb
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float16)


def dense_scratch_elems(k: int, n: int, lanes: int) -> int:
    """float16 elements of scratch for ``edgeq_dense``: none."""
    _check_lanes(lanes)
    return 0
