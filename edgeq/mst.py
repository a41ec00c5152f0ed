"""MST-compression of binary layers: compute output channels from a similar channel's output.

A binary layer's output channels are ±1 weight vectors of length K. Channel c can be computed from a
"parent" channel p that is already computed, touching only the positions D where their signs differ::

    out_c = out_p - 2 * sum_{i in D} w_p[i] * x[i]        (w_c[i] = -w_p[i] on D, equal elsewhere)

so a child costs |D| = hamming(w_c, w_p) multiply-accumulates instead of K, and stores only D (positions
and the parent's signs there). A root is computed fully (K MACs, K stored bits). The channels form a forest
whose depth is the length of the longest chain of dependent outputs, i.e. latency on hardware, so the
depth is bounded by a build option.

* :func:`channel_bits` -- a binary layer's weights as one bit row per output channel (True = +1).
* :func:`hamming` -- exact pairwise Hamming distances between those rows.
* :func:`build_tree` -- a forest minimising K * roots + total edge distance, with depth <= max_depth.
  Unbounded depth is the exact minimum spanning tree (scipy); a bound uses a depth-constrained Prim from
  several roots plus local search (re-parenting subtrees, opening and closing roots).
* :func:`stats` -- depth, roots, distance, stored bits and operation counts.
* :func:`mst_forward` -- the exact int64 reference the C/HLS kernels are checked against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.formats import Binary, Int

# ---------------------------------------------------------------------------------------------
# Weights as bits
# ---------------------------------------------------------------------------------------------


def is_binary(layer: Any) -> bool:
    """True when ``layer`` is a Dense or Conv2d whose weights are bipolar (Binary, or a 1-bit signed Int)."""
    fmt = getattr(layer, "weight_format", None)
    return (getattr(layer, "op", None) in ("Dense", "Conv2d") and layer.weight is not None
            and (isinstance(fmt, Binary) or (isinstance(fmt, Int) and fmt.bipolar)))


def channel_bits(layer: Any) -> np.ndarray:
    """Each output channel's flattened ±1 weights as bits: a bool array (Cout, K), True = +1.

    Dense weights (K, N) give the columns; Conv2d weights (Cout, Cin/g, kh, kw) give the rows flattened in
    (Cin/g, kh, kw) order, the order of an im2col patch. Raises EdgeqError naming the layer when it is not a
    binary Dense/Conv2d, when a weight is 0 (not ±scale), or for a grouped convolution (channels of different
    groups read different inputs, so one cannot be computed from another).
    """
    if not is_binary(layer):
        raise EdgeqError(
            f"layer '{layer.name}' ({layer.op}, weights {layer.weight_format}) is not a binary layer: "
            "MST reordering needs bipolar ±1 weights (BipolarQuant or a 1-bit signed Quant)"
        )
    w = np.asarray(layer.weight)
    if layer.op == "Conv2d":
        if int(layer.attrs.get("group", 1)) != 1:
            raise EdgeqError(f"layer '{layer.name}': MST reordering of grouped binary convolutions is not supported")
        rows = w.reshape(w.shape[0], -1)
    else:
        rows = w.T
    if np.any(rows == 0):
        raise EdgeqError(f"layer '{layer.name}': a binary weight is 0, expected ±scale")
    return np.ascontiguousarray(rows > 0)


def hamming(bits: np.ndarray) -> np.ndarray:
    """Exact pairwise Hamming distances (Cout, Cout) int64 between the rows of a bool array (Cout, K).

    Computed as B·(1-B)ᵀ + (1-B)·Bᵀ in float64, exact because every partial sum is an integer <= K < 2**53.
    """
    b = np.asarray(bits, dtype=bool).astype(np.float64)
    d = b @ (1.0 - b).T
    return np.rint(d + d.T).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------


@dataclass
class MstTree:
    """A forest over output channels.

    * ``parent[c]``: the channel c is computed from, or -1 for a root (computed fully).
    * ``depth[c]``: 0 for roots, parent's depth + 1 otherwise.
    * ``order``: every channel once, parents before children.
    * ``diff_pos[c]``: int64 positions D where c differs from its parent (empty for roots);
      ``diff_sign[c]``: the parent's signs at D as bools (True = +1). Filled by :func:`attach_weights`.
    * ``K``: the weight vector length; ``dist``: the edge distances |D| (0 for roots).
    """

    parent: np.ndarray
    depth: np.ndarray
    order: np.ndarray
    K: int
    dist: np.ndarray
    diff_pos: list[np.ndarray] | None = None
    diff_sign: list[np.ndarray] | None = None

    @property
    def roots(self) -> np.ndarray:
        return np.flatnonzero(self.parent < 0)

    @property
    def cost(self) -> int:
        """MAC-equivalents: K per root plus |D| per child."""
        return int(self.K * len(self.roots) + self.dist.sum())


def _depths(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(depth, order parents-first) of a parent array; breadth-first from the roots."""
    n = len(parent)
    children: list[list[int]] = [[] for _ in range(n)]
    for c, p in enumerate(parent):
        if p >= 0:
            children[p].append(c)
    depth = np.full(n, -1, dtype=np.int64)
    order = [int(r) for r in np.flatnonzero(parent < 0)]
    for r in order:
        depth[r] = 0
    i = 0
    while i < len(order):
        u = order[i]
        for c in children[u]:
            depth[c] = depth[u] + 1
            order.append(c)
        i += 1
    if len(order) != n:
        raise AssertionError("parent array has a cycle")  # pragma: no cover
    return depth, np.asarray(order, dtype=np.int64)


def _make_tree(parent: np.ndarray, dist: np.ndarray, K: int) -> MstTree:
    parent = np.asarray(parent, dtype=np.int64)
    depth, order = _depths(parent)
    edge = np.where(parent >= 0, dist[np.arange(len(parent)), np.maximum(parent, 0)], 0)
    return MstTree(parent=parent, depth=depth, order=order, K=int(K), dist=edge.astype(np.int64))


def tree_from_parent(parent: np.ndarray, bits: np.ndarray) -> MstTree:
    """The tree with this parent array over these channel bits, D attached (e.g. a tree saved in a program)."""
    bits = np.asarray(bits, dtype=bool)
    return attach_weights(_make_tree(np.asarray(parent, dtype=np.int64), hamming(bits), bits.shape[1]), bits)


def attach_weights(tree: MstTree, bits: np.ndarray) -> MstTree:
    """Fill ``tree.diff_pos``/``diff_sign`` (D and the parent's signs there) from the channel bits."""
    bits = np.asarray(bits, dtype=bool)
    pos, sign = [], []
    for c, p in enumerate(tree.parent):
        if p < 0:
            pos.append(np.zeros(0, dtype=np.int64))
            sign.append(np.zeros(0, dtype=bool))
        else:
            d = np.flatnonzero(bits[c] != bits[p])
            pos.append(d.astype(np.int64))
            sign.append(bits[p, d].copy())
    tree.diff_pos, tree.diff_sign = pos, sign
    return tree


def _exact_mst(dist: np.ndarray) -> np.ndarray:
    """Parent array of an exact MST (scipy), rooted at its centre so that its depth is smallest."""
    from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

    n = len(dist)
    if n == 1:
        return np.array([-1])
    # scipy reads 0 as "no edge": shift every edge by 1 (every spanning tree has n-1 edges, same argmin).
    w = (dist + 1).astype(np.float64)
    np.fill_diagonal(w, 0)
    mst = minimum_spanning_tree(w)
    sym = mst + mst.T
    # centre: the middle of a longest path (two BFS sweeps in hops)
    far = _farthest(sym, 0)
    end = _farthest(sym, far)
    _, pred = breadth_first_order(sym, far, directed=False)
    path = [end]
    while path[-1] != far:
        path.append(int(pred[path[-1]]))
    centre = path[len(path) // 2]
    _, pred = breadth_first_order(sym, centre, directed=False)
    parent = np.asarray(pred, dtype=np.int64)
    parent[centre] = -1
    return parent


def _farthest(sym, src: int) -> int:
    from scipy.sparse.csgraph import shortest_path

    hops = shortest_path(sym, unweighted=True, directed=False, indices=src)
    return int(np.argmax(hops))


def _prim_bounded(dist: np.ndarray, K: int, h: int, root: int) -> np.ndarray:
    """Depth-constrained Prim from ``root``: repeatedly add the channel with the cheapest option, either
    attaching to a tree node of depth < h or opening a new root at cost K."""
    n = len(dist)
    parent = np.full(n, -1, dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    in_tree = np.zeros(n, dtype=bool)
    best = np.full(n, K, dtype=np.int64)  # cost of the best option (K = open a root)
    best_p = np.full(n, -1, dtype=np.int64)
    u = root
    for _ in range(n):
        in_tree[u] = True
        if depth[u] < h:
            better = (~in_tree) & (dist[u] < best)
            best[better] = dist[u][better]
            best_p[better] = u
        cand = np.where(in_tree, np.iinfo(np.int64).max, best)
        u = int(np.argmin(cand))
        if in_tree[u]:
            break
        parent[u] = best_p[u]
        depth[u] = depth[best_p[u]] + 1 if best_p[u] >= 0 else 0
    return parent


def _layout(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(depth, subtree height, tin, tout) of a forest: v's subtree is every u with tin[v] <= tin[u] < tout[v]."""
    n = len(parent)
    children: list[list[int]] = [[] for _ in range(n)]
    for c, p in enumerate(parent):
        if p >= 0:
            children[p].append(c)
    depth = np.zeros(n, dtype=np.int64)
    height = np.zeros(n, dtype=np.int64)
    tin = np.zeros(n, dtype=np.int64)
    tout = np.zeros(n, dtype=np.int64)
    clock = 0
    for r in np.flatnonzero(parent < 0):
        stack = [(int(r), 0)]
        while stack:
            u, i = stack.pop()
            if i == 0:
                tin[u] = clock
                clock += 1
            if i < len(children[u]):
                stack.append((u, i + 1))
                c = children[u][i]
                depth[c] = depth[u] + 1
                stack.append((c, 0))
            else:
                tout[u] = clock
                if parent[u] >= 0:
                    height[parent[u]] = max(height[parent[u]], height[u] + 1)
    if clock != n:
        raise AssertionError("parent array has a cycle")  # pragma: no cover
    return depth, height, tin, tout


def _improve(parent: np.ndarray, dist: np.ndarray, K: int, h: int) -> np.ndarray:
    """Local search until no move lowers K * roots + Σ|D| (depth <= h kept):

    * re-parent a channel with its subtree (or a root: closing it) to a cheaper feasible parent;
    * open a root at channel v and move to it every channel (with its subtree) that gets cheaper.
    """
    parent = parent.copy()
    n = len(parent)
    idx = np.arange(n)
    never = np.iinfo(np.int64).max
    for _ in range(10 * n):
        changed = False
        depth, height, tin, tout = _layout(parent)
        cur = np.where(parent >= 0, dist[idx, np.maximum(parent, 0)], K)
        # (1) re-parenting moves, most expensive channels first; the layout is refreshed after each move
        for v in np.argsort(-cur, kind="stable"):
            outside = (tin < tin[v]) | (tin >= tout[v])
            ok = outside & (depth + 1 + height[v] <= h)
            gain = cur[v] - np.where(ok, dist[v], never)
            u = int(np.argmax(gain))
            if gain[u] > 0:
                parent[v] = u
                cur[v] = dist[v, u]
                changed = True
                depth, height, tin, tout = _layout(parent)
        # (2) open a root at v; channels outside v's subtree whose subtree fits under depth 1 may move to it
        movable = height <= h - 1
        best_gain, best_v, best_moves = 0, -1, None
        for v in np.flatnonzero(parent >= 0):
            outside = (tin < tin[v]) | (tin >= tout[v])
            moves = movable & outside & (dist[v] < cur)
            gain = int((cur - dist[v])[moves].sum()) - (K - int(cur[v]))
            if gain > best_gain:
                best_gain, best_v, best_moves = gain, int(v), moves
        if best_v >= 0:
            parent[best_v] = -1
            parent[best_moves] = best_v
            changed = True
        if not changed:
            break
    return parent


def build_tree(dist: np.ndarray, max_depth: int | None, K: int | None = None) -> MstTree:
    """A forest over the channels minimising K * roots + Σ edge distance, with every depth <= ``max_depth``.

    ``dist`` is the (Cout, Cout) Hamming matrix; ``K`` the weight length (a root's cost; default the largest
    distance in ``dist`` or 1 when all are 0 -- pass it). The root depth is 0. ``max_depth=None`` gives the exact
    minimum spanning tree (scipy), rooted at its centre; it is optimal for any bound at least its height, and
    one root is optimal since no Hamming distance exceeds K. A smaller bound is the NP-hard hop-constrained
    problem: this uses depth-constrained Prim from the medoids plus local search, seeded also with the result for
    ``max_depth - 1``, so the cost never increases as the bound grows. Raises EdgeqError for a bound < 1.
    """
    dist = np.asarray(dist, dtype=np.int64)
    n = len(dist)
    if dist.ndim != 2 or dist.shape != (n, n):
        raise EdgeqError(f"distance matrix must be square, got shape {dist.shape}")
    if max_depth is not None and int(max_depth) < 1:
        raise EdgeqError(f"MST depth bound must be >= 1, got {max_depth}")
    K = int(K) if K is not None else max(1, int(dist.max(initial=0)))
    if dist.size and int(dist.max()) > K:
        raise EdgeqError(f"a Hamming distance {int(dist.max())} exceeds K = {K}")
    if n == 0:
        raise EdgeqError("no output channels")
    exact = _make_tree(_exact_mst(dist), dist, K)
    if max_depth is None or int(exact.depth.max()) <= int(max_depth):
        return exact
    medoids = np.argsort(dist.sum(axis=1), kind="stable")[:3]
    best: MstTree | None = None
    for h in range(1, int(max_depth) + 1):
        if int(exact.depth.max()) <= h:
            return exact
        cands = [_improve(_prim_bounded(dist, K, h, int(r)), dist, K, h) for r in medoids]
        if best is not None:
            cands.append(_improve(best.parent, dist, K, h))
        trees = [_make_tree(p, dist, K) for p in cands]
        best = min(trees, key=lambda t: (t.cost, int(t.depth.max())))
    assert best is not None
    return best


def layer_tree(layer: Any, max_depth: int | None) -> tuple[MstTree, np.ndarray]:
    """(tree with D and signs attached, channel bits) for one binary layer."""
    bits = channel_bits(layer)
    tree = build_tree(hamming(bits), max_depth, K=bits.shape[1])
    return attach_weights(tree, bits), bits


# ---------------------------------------------------------------------------------------------
# Which layers run as XNOR-popcount, and which get MST reordering (one rule for every backend)
# ---------------------------------------------------------------------------------------------


def _bipolar_scale(fmt: Any) -> float | None:
    """The one scale of a per-tensor bipolar format (Binary, or a 1-bit signed Int), else None."""
    if isinstance(fmt, Binary) and len(fmt.scale) == 1:
        return float(fmt.scale[0])
    if isinstance(fmt, Int) and fmt.bipolar and len(fmt.scale) == 1 and all(z == 0 for z in fmt.zero_point):
        return float(fmt.scale[0])
    return None


def xnor_refusal(graph: Any, layer: Any) -> str | None:
    """Why ``layer`` cannot run as an XNOR-popcount kernel, or None when it can.

    It can when it is a binary Dense/Conv2d (no groups, no bias) whose weights AND input are bipolar with one
    power-of-two scale each: then every output is ``acc * s_x * s_w`` with the exact integer
    ``acc = K - 2 * popcount(x XOR w)`` (padded conv taps excluded) and a power-of-two factor, exact on every
    backend. Every backend asks this one function.
    """
    if not is_binary(layer):
        return f"its weights are {layer.weight_format}, not bipolar ±1" if layer.op in ("Dense", "Conv2d") \
            else f"it is a {layer.op}, not a Dense/Conv2d"
    xfmt = graph.tensors[layer.inputs[0]].format
    sx, sw = _bipolar_scale(xfmt), _bipolar_scale(layer.weight_format)
    if sx is None:
        return f"its input '{layer.inputs[0]}' is {xfmt}, not bipolar ±1 with one scale (XNOR needs ±1 activations)"
    if sw is None:
        return "its weights have per-channel scales (XNOR kernels need one weight scale)"
    if layer.bias is not None:
        return "it has a bias"
    if layer.op == "Conv2d" and int(layer.attrs.get("group", 1)) != 1:
        return "it is a grouped convolution"
    if np.frexp(sx * sw)[0] != 0.5:
        return f"its scale product {sx * sw!r} is not a power of two"
    return None


def xnor_layers(graph: Any) -> list[Any]:
    """The layers of ``graph`` that run as XNOR-popcount kernels (:func:`xnor_refusal` is None)."""
    return [lay for lay in graph.layers if lay.op in ("Dense", "Conv2d") and xnor_refusal(graph, lay) is None]


def select(graph: Any, enabled: bool, max_depth: int | None = None,
           layers: Any = None) -> dict[str, tuple[MstTree, np.ndarray]]:
    """The MST trees of a build: ``{layer name: (tree with D attached, channel bits)}``.

    ``enabled`` turns MST on for every XNOR layer; ``layers`` (names) restricts it to those, each of which must
    exist and be an XNOR layer. Errors are one EdgeqError line each: a depth bound < 1, an unknown layer, a
    named layer that is not binary (saying why), or MST requested on a model without any binary layer.
    """
    if max_depth is not None and int(max_depth) < 1:
        raise EdgeqError(f"--mst-depth: MST depth bound must be >= 1, got {max_depth}")
    if not enabled and not layers:
        return {}
    chosen = xnor_layers(graph)
    if layers:
        by_name = {lay.name: lay for lay in graph.layers}
        picked = []
        for name in layers:
            lay = by_name.get(name)
            if lay is None:
                names = ", ".join(x.name for x in chosen) or "none"
                raise EdgeqError(f"--mst-layers: no layer '{name}' in the model (binary layers: {names})")
            why = xnor_refusal(graph, lay)
            if why is not None:
                raise EdgeqError(f"--mst-layers: layer '{name}' ({', '.join(lay.source)}) is not a binary layer: "
                                 f"{why}; MST reordering needs ±1 weights and ±1 activations")
            picked.append(lay)
        chosen = picked
    if not chosen:
        src = graph.source_path or graph.name
        raise EdgeqError(f"{src}: --mst found no binary layer (Dense/Conv2d with ±1 weights and ±1 inputs) to "
                         "reorder; drop --mst, or quantize weights and activations with BipolarQuant")
    return {lay.name: layer_tree(lay, max_depth) for lay in chosen}


def build_report(graph: Any, trees: dict[str, tuple[MstTree, np.ndarray]], max_depth: int | None,
                 requested: Any = ()) -> dict[str, Any]:
    """The ``mst`` section of a build report: every XNOR layer with its kernel ("xnor" or "mst") and, for MST
    layers, :func:`stats` (depth, distance vs K·(Cout−1), compression, ops vs plain XNOR)."""
    rows = []
    for lay in xnor_layers(graph):
        row: dict[str, Any] = {"layer": lay.name, "op": lay.op, "onnx": list(lay.source),
                               "kernel": "mst" if lay.name in trees else "xnor"}
        if lay.name in trees:
            row.update(stats(trees[lay.name][0]))
        rows.append(row)
    return {"enabled": bool(trees), "max_depth": max_depth, "requested_layers": list(requested), "layers": rows}


# ---------------------------------------------------------------------------------------------
# Figures and the reference forward
# ---------------------------------------------------------------------------------------------


def stats(tree: MstTree, K: int | None = None) -> dict[str, Any]:
    """Per-layer figures of an MST forest.

    * ``depth``, ``roots``, ``channels``, ``K``;
    * ``edge_distance``: Σ|D| over children; ``total_distance``: that plus K per root beyond the first (a second
      root costs as much as a child at distance K), against ``dense_distance`` = K·(Cout−1);
    * ``stored_bits``: K per root plus |D|·(ceil(log2 K) + 1) per child (positions and parent signs), against
      ``dense_bits`` = Cout·K; ``compression`` = dense_bits / stored_bits;
    * ``ops``: MAC-equivalents, K per root plus |D| per child, against ``xnor_ops`` = Cout·K (plain XNOR-popcount
      touches every weight); ``op_ratio`` = xnor_ops / ops.
    """
    K = int(K if K is not None else tree.K)
    n = len(tree.parent)
    roots = int((tree.parent < 0).sum())
    edge = int(tree.dist.sum())
    pos_bits = math.ceil(math.log2(K)) if K > 1 else 0
    stored = roots * K + edge * (pos_bits + 1)
    ops = roots * K + edge
    return {
        "channels": n, "K": K, "depth": int(tree.depth.max()), "roots": roots,
        "edge_distance": edge, "total_distance": edge + K * (roots - 1), "dense_distance": K * (n - 1),
        "stored_bits": stored, "dense_bits": n * K, "compression": n * K / stored if stored else math.inf,
        "ops": ops, "xnor_ops": n * K, "op_ratio": n * K / ops if ops else math.inf,
    }


def mst_forward(tree: MstTree, bits: np.ndarray, x_pm1: np.ndarray) -> np.ndarray:
    """out = x @ Wᵀ for every channel, the MST way, in exact int64: (..., K) -> (..., Cout).

    ``bits`` (Cout, K) are read for the roots only (computed fully); each child is
    ``out[parent] - 2 * Σ_{i∈D} s_i * x[i]`` with D and the parent signs s from the tree (attached from ``bits``
    when missing). ``x_pm1`` holds integers (±1 for a binary activation; any integer works).
    """
    bits = np.asarray(bits, dtype=bool)
    if tree.diff_pos is None or tree.diff_sign is None:
        attach_weights(tree, bits)
    x = np.asarray(x_pm1)
    if x.dtype.kind == "f":
        if not np.array_equal(x, np.rint(x)):
            raise EdgeqError("mst_forward needs integer activations")
    x = x.astype(np.int64)
    if x.shape[-1] != bits.shape[1]:
        raise EdgeqError(f"activations have {x.shape[-1]} values per sample, the weights K = {bits.shape[1]}")
    out = np.zeros(x.shape[:-1] + (len(tree.parent),), dtype=np.int64)
    for c in tree.order:
        p = tree.parent[c]
        if p < 0:
            w = np.where(bits[c], 1, -1).astype(np.int64)
            out[..., c] = x @ w
        else:
            d = tree.diff_pos[c]
            s = np.where(tree.diff_sign[c], 1, -1).astype(np.int64)
            out[..., c] = out[..., p] - 2 * (x[..., d] @ s)
    return out
