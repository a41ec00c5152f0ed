"""Static memory plan of an MCU program: one arena shared by every activation, sized by liveness.

Each tensor is a buffer that lives from the layer that writes it to the last layer that reads it (the
model input from the start, the model output to the end). Reshape outputs alias their input (no copy).
A layer's scratch (a padded input copy, im2col rows) lives only during that layer. Buffers are placed
greedily, largest first, at the lowest 8-byte-aligned offset that overlaps no buffer alive at the same
time (the strategy of TFLite Micro's GreedyMemoryPlanner). Weights are ``const`` in flash; there is no malloc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq import ops
from edgeq.formats import Float16
from edgeq.ir import Graph

ALIGN = 8

#: single-input element-wise layers: a chain of them runs as one loop (no RAM for the intermediates)
ELEMENTWISE = ops.having("in_place")


def steps(graph: Graph) -> list[list[int]]:
    """Layer indices grouped into execution steps: a chain of element-wise layers, each reading only the
    previous one's output (used nowhere else and not a model output), is one step; any other layer is alone."""
    consumers: dict[str, int] = {}
    for lay in graph.layers:
        for t in lay.inputs:
            consumers[t] = consumers.get(t, 0) + 1
    out: list[list[int]] = []
    for i, lay in enumerate(graph.layers):
        prev = graph.layers[out[-1][-1]] if out else None
        if (prev is not None and lay.op in ELEMENTWISE and prev.op in ELEMENTWISE and lay.inputs[0] == prev.output
                and consumers.get(prev.output, 0) == 1 and prev.output not in graph.outputs):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def elem_bytes(fmt) -> int:
    return 2 if isinstance(fmt, Float16) else 4


@dataclass
class Buffer:
    name: str
    size: int
    first: int  # layer index that writes it (-1: the model input)
    last: int  # last layer index that reads it
    offset: int = -1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": self.size, "offset": self.offset, "live": [self.first, self.last]}


@dataclass
class MemoryPlan:
    buffers: dict[str, Buffer]
    root: dict[str, str]  # tensor -> the buffer holding it (aliases map to their source)
    arena_bytes: int
    live_bytes: list[int] = field(default_factory=list)  # per layer: bytes of buffers alive during it
    peak_layer: int = 0
    steps: list[list[int]] = field(default_factory=list)

    def offset(self, tensor: str) -> int:
        return self.buffers[self.root[tensor]].offset

    def to_dict(self, graph: Graph) -> dict[str, Any]:
        return {"arena_bytes": self.arena_bytes,
                "peak_layer": graph.layers[self.peak_layer].name if graph.layers else None,
                "live_bytes_per_layer": {lay.name: b for lay, b in zip(graph.layers, self.live_bytes)},
                "buffers": [b.to_dict() for b in sorted(self.buffers.values(), key=lambda b: b.offset)]}


def plan_memory(graph: Graph, scratch_bytes: dict[str, int]) -> MemoryPlan:
    """Plan the arena for ``graph`` (an MCU graph); ``scratch_bytes`` maps layer names to their scratch size.

    Lifetimes are in layer indices; the layers of one element-wise chain (:func:`steps`) all count as its last
    layer's index, and the tensors inside a chain get no buffer."""
    groups = steps(graph)
    at = {i: grp[-1] for grp in groups for i in grp}  # layer -> the index its step runs at
    inner = {graph.layers[i].output for grp in groups for i in grp[:-1]}
    root: dict[str, str] = {}
    buffers: dict[str, Buffer] = {}

    def align(n: int) -> int:
        return -(-n // ALIGN) * ALIGN

    def new(name: str, tensor: str, first: int) -> None:
        t = graph.tensors[tensor]
        size = int(np.prod(t.shape, dtype=np.int64)) * elem_bytes(t.format)
        buffers[name] = Buffer(name, align(max(size, 1)), first, first)
        root[tensor] = name

    for name in graph.inputs:
        new(name, name, -1)
    for li, lay in enumerate(graph.layers):
        i = at[li]
        for t in lay.inputs:
            if t not in inner:
                b = buffers[root[t]]
                b.last = max(b.last, i)
        if lay.output in inner:
            continue
        if lay.op == "Reshape":
            root[lay.output] = root[lay.inputs[0]]
        else:
            new(lay.output, lay.output, i)
        if scratch_bytes.get(lay.name):
            key = f"{lay.name}:scratch"
            buffers[key] = Buffer(key, align(scratch_bytes[lay.name]), i, i)
    end = len(graph.layers)
    for t in graph.outputs:
        buffers[root[t]].last = end

    placed: list[Buffer] = []
    for b in sorted(buffers.values(), key=lambda b: (-b.size, b.first, b.name)):
        clashes = sorted((o.offset, o.offset + o.size) for o in placed if o.first <= b.last and b.first <= o.last)
        off = 0
        for lo, hi in clashes:
            if off + b.size <= lo:
                break
            off = max(off, align(hi))
        b.offset = off
        placed.append(b)
    arena = max((b.offset + b.size for b in placed), default=0)
    live = [sum(b.size for b in placed if b.first <= i <= b.last) for i in range(len(graph.layers))]
    extent = [max((b.offset + b.size for b in placed if b.first <= i <= b.last), default=0)
              for i in range(len(graph.layers))]
    peak = int(np.argmax(extent)) if extent else 0
    return MemoryPlan(buffers, root, arena, live, peak, groups)
