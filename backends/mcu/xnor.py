"""Host side of the binary MCU kernels (``firmware/common/edgeq_xnor.c``): bit packing and the MST layout.

Bit packing (:func:`pack_bits`): a ±1 vector of length K becomes ``ceil(K/32)`` uint32 words; element i is bit
``i % 32`` (LSB first) of word ``i // 32``, bit 1 = +1 and bit 0 = -1. The pad bits (K .. 32·words-1) are written
as 0, but the C kernels mask the last word with the K real bits, so the result is exact whatever a producer left
in the pad bits: ``sum_i x_i·w_i = K - 2·popcount((x XOR w) & mask)``.

Weights are packed per OUTPUT (:func:`pack_dense_bits`: a Dense (K, N) weight gives its N columns;
:func:`pack_conv_bits`: a Conv2d (Cout, Cin, kh, kw) weight gives each output channel flattened in (ci, ky, kx)
order), i.e. the rows of :func:`edgeq.mst.channel_bits`, each row ``words`` uint32 long.

MST layout (:func:`pack_mst`, the C struct ``edgeq_mst_t``), steps s = 0..n-1 in ``tree.order`` (parents first):

* ``order`` uint16 (n): the channel of step s; ``parent`` uint16 (n): its parent or 0xFFFF for a root;
* ``count`` uint16 (2n): per step |D+| and |D-|, the differing positions where the PARENT's sign is +1 and -1
  (0, 0 for a root);
* ``root_bits`` uint32 (roots, words): the roots' packed weights in step order;
* ``pos`` uint16 (Σ|D|): every child's D+ then D-, steps in order, ascending within each list. The list a
  position is in is the parent's sign there, so D and the signs are stored and nothing else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.mst import MstTree, attach_weights

MST_ROOT = 0xFFFF


def c_sources() -> list[Any]:
    """The C file of the binary kernels: ``[.../common/edgeq_xnor.c]`` (also in kernels.c_sources())."""
    from edgeq.backends.mcu.kernels import firmware_common

    return [firmware_common() / "edgeq_xnor.c"]


def words(k: int) -> int:
    """uint32 words per packed row of K bits."""
    return -(-int(k) // 32)


def _as_bits(values: np.ndarray) -> np.ndarray:
    """±1 values (or bools, True = +1) -> bool, True = +1; anything else is an EdgeqError."""
    v = np.asarray(values)
    if v.dtype == bool:
        return v
    if v.size and not np.all((v == 1) | (v == -1)):
        bad = v[(v != 1) & (v != -1)].reshape(-1)[0]
        raise EdgeqError(f"pack_bits takes ±1 values, got {bad} (a binary tensor must not hold 0)")
    return v > 0


def pack_bits(values_pm1: np.ndarray) -> np.ndarray:
    """±1 values (..., K) (or bools, True = +1) -> uint32 (..., ceil(K/32)) in the layout of the module docstring."""
    b = _as_bits(values_pm1)
    if b.ndim == 0 or b.shape[-1] == 0:
        raise EdgeqError(f"pack_bits needs a last axis K >= 1, got shape {b.shape}")
    k = b.shape[-1]
    w = words(k)
    padded = np.zeros(b.shape[:-1] + (w * 32,), dtype=np.uint8)
    padded[..., :k] = b
    by = np.packbits(padded.reshape(b.shape[:-1] + (w * 4, 8)), axis=-1, bitorder="little")[..., 0]
    return np.ascontiguousarray(by).view("<u4").astype(np.uint32).reshape(b.shape[:-1] + (w,))


def unpack_bits(packed: np.ndarray, k: int) -> np.ndarray:
    """The inverse of :func:`pack_bits`: uint32 (..., words) -> int8 ±1 (..., k)."""
    p = np.ascontiguousarray(np.asarray(packed, dtype="<u4"))
    bits = np.unpackbits(p.view(np.uint8), axis=-1, bitorder="little")[..., :k]
    return np.where(bits > 0, 1, -1).astype(np.int8)


def xnor_reference(x_pm1: np.ndarray, w_rows_pm1: np.ndarray) -> np.ndarray:
    """The exact ±1 product y[..., j] = Σ_i x[..., i]·w[j, i] in int64 (what the kernels compute)."""
    return np.asarray(x_pm1, np.int64) @ np.asarray(w_rows_pm1, np.int64).T


def pack_dense_bits(w: np.ndarray) -> np.ndarray:
    """A binary Dense weight (K, N) (±scale or ±1) -> uint32 (N, words): output j's row is column j."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise EdgeqError(f"pack_dense_bits takes a (K, N) weight, not shape {w.shape}")
    return pack_bits(np.sign(w.T).astype(np.int8))


def pack_conv_bits(w: np.ndarray) -> np.ndarray:
    """A binary Conv2d weight (Cout, Cin, kh, kw) -> uint32 (Cout, words), each channel flattened (ci, ky, kx)."""
    w = np.asarray(w)
    if w.ndim != 4:
        raise EdgeqError(f"pack_conv_bits takes a (Cout, Cin, kh, kw) weight, not shape {w.shape}")
    return pack_bits(np.sign(w.reshape(w.shape[0], -1)).astype(np.int8))


def pack_mst(tree: MstTree, bits: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of ``edgeq_mst_t`` for one layer (layout in the module docstring).

    ``bits`` (Cout, K) bool are the channel bits (:func:`edgeq.mst.channel_bits`): the roots' weights, and D when
    the tree has none attached yet. Raises EdgeqError when K or Cout do not fit uint16.
    """
    n, k = len(tree.parent), int(tree.K)
    if k > 0xFFFF or n >= MST_ROOT:
        raise EdgeqError(f"MST kernel limits: K <= 65535 and Cout < 65535, got K = {k}, Cout = {n}")
    if bits is None:
        raise EdgeqError("pack_mst needs the channel bits (edgeq.mst.channel_bits) for the roots")
    bits = np.asarray(bits, dtype=bool)
    if bits.shape != (n, k):
        raise EdgeqError(f"channel bits have shape {bits.shape}, the tree wants ({n}, {k})")
    if tree.diff_pos is None or tree.diff_sign is None:
        attach_weights(tree, bits)
    order = np.asarray(tree.order, dtype=np.int64)
    parent = tree.parent[order]
    roots = order[parent < 0]
    count = np.zeros((n, 2), dtype=np.int64)
    pos: list[np.ndarray] = []
    for s, c in enumerate(order):
        d = np.asarray(tree.diff_pos[c], dtype=np.int64)
        sign = np.asarray(tree.diff_sign[c], dtype=bool)
        if len(d) > 1 and np.any(np.diff(d) <= 0):
            raise EdgeqError(f"channel {c}: D positions must be strictly ascending")
        count[s] = (int(sign.sum()), int((~sign).sum()))
        pos += [d[sign], d[~sign]]
    return {
        "k": np.int64(k), "n": np.int64(n),
        "order": order.astype(np.uint16),
        "parent": np.where(parent < 0, MST_ROOT, parent).astype(np.uint16),
        "count": count.reshape(-1).astype(np.uint16),
        "root_bits": pack_bits(bits[roots]) if len(roots) else np.zeros((0, words(k)), np.uint32),
        "pos": (np.concatenate(pos) if pos else np.zeros(0, np.int64)).astype(np.uint16),
    }


def mst_words(packed: dict[str, np.ndarray]) -> dict[str, int]:
    """Bytes of flash a packed MST layer takes, per array and in total (the dense XNOR layer: n·words·4)."""
    sizes = {key: int(np.asarray(v).nbytes) for key, v in packed.items() if key not in ("k", "n")}
    sizes["total"] = sum(sizes.values())
    sizes["dense"] = int(packed["n"]) * words(int(packed["k"])) * 4
    return sizes


def conv_params(in_shape: tuple[int, ...], out_shape: tuple[int, ...], attrs: dict[str, Any],
                weight_shape: tuple[int, ...]) -> dict[str, int]:
    """The ``edgeq_bconv_t`` fields (as :func:`edgeq.backends.mcu.kernels.conv_params`, without ``group``).

    Grouped binary convolutions are refused (one clear EdgeqError). Zero padding is supported exactly (the C
    kernel masks the padded taps out of the sum, see edgeq_xnor.h).
    """
    from edgeq.backends.mcu.kernels import conv_params as fp_conv_params

    p = fp_conv_params(in_shape, out_shape, attrs, weight_shape)
    if p.pop("group") != 1:
        raise EdgeqError("grouped binary convolutions are not supported by the XNOR kernels")
    return p


BCONV_KEYS = ("cin", "ih", "iw", "cout", "oh", "ow", "kh", "kw", "sh", "sw", "dh", "dw", "pt", "pl", "pb", "pr")


def conv_scratch_words(p: dict[str, int], with_mst: bool = False) -> int:
    """uint32 words of scratch for ``edgeq_xnor_conv2d`` (the patch and its valid mask) or, ``with_mst``,
    ``edgeq_mst_conv2d`` (also the int8 patch): EDGEQ_XNOR_CONV_SCRATCH / EDGEQ_MST_CONV_SCRATCH."""
    k = p["cin"] * p["kh"] * p["kw"]
    return 2 * words(k) + (-(-k // 4) if with_mst else 0)


def dense_scratch_words(k: int, with_mst: bool = False) -> int:
    """uint32 words of scratch for a binary dense layer: x's packed bits (and its int8 copy for MST)."""
    return words(k) + (-(-k // 4) if with_mst else 0)


def conv_reference(x_pm1: np.ndarray, w_pm1: np.ndarray, p: dict[str, int]) -> np.ndarray:
    """Exact int64 conv of a ±1 input (cin, ih, iw) over its ZERO-padded copy (padded taps add 0)."""
    x = np.pad(np.asarray(x_pm1, np.int64), ((0, 0), (p["pt"], p["pb"]), (p["pl"], p["pr"])))
    oh, ow = p["oh"], p["ow"]
    cols = np.stack([x[ci, ky * p["dh"]:ky * p["dh"] + (oh - 1) * p["sh"] + 1:p["sh"],
                       kx * p["dw"]:kx * p["dw"] + (ow - 1) * p["sw"] + 1:p["sw"]]
                     for ci in range(p["cin"]) for ky in range(p["kh"]) for kx in range(p["kw"])])
    w = np.asarray(w_pm1, np.int64).reshape(p["cout"], -1)
    return np.einsum("ck,khw->chw", w, cols)
