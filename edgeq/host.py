"""Host-side glue next to an accelerator: the float32 parts of a model that stay on the CPU.

A backend splits a graph into ``prefix -> accelerator -> tail``. The prefix (e.g. bnn_pynq's
``2x-1`` and the first quantizer) turns float inputs into the accelerator's input codes; the tail
(e.g. TensorNorm) turns the accelerator's output codes into the model's outputs. Both run through
:func:`edgeq.emulate`, so the host computes exactly what the emulator does: there is no second
implementation of any rounding rule. Only numpy is needed, so this runs on a PYNQ board.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq.emulate import emulate
from edgeq.errors import EdgeqError
from edgeq.formats import NumFormat, format_from_dict
from edgeq.ir import Graph, load_graph, save_graph


@dataclass
class HostGlue:
    """``encode`` float inputs to accelerator codes; ``decode`` accelerator codes to model outputs."""

    prefix: Graph
    tail: Graph
    in_format: NumFormat  # FixedPoint, Int or MiniFloat: encode() gives its codes (codes_of)
    out_format: NumFormat  # also Float32 (a rescaled float32 output): decode() gives the values
    in_dtype: str
    out_dtype: str

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Float inputs (batch first) -> integer codes of the accelerator input, (batch, elements)."""
        x = np.asarray(x)
        if tuple(x.shape[1:]) != tuple(self.prefix.input.shape):
            raise EdgeqError(f"inputs have shape {tuple(x.shape)}; the model takes (batch, "
                             f"{', '.join(map(str, self.prefix.input.shape))})")
        v = emulate(self.prefix, x) if self.prefix.layers else x.astype(np.float64)
        codes = self.in_format.codes_of(v)  # exact: v already lies on the input grid
        return codes.reshape(len(codes), -1).astype(self.in_dtype)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Accelerator output codes (batch, elements) -> the model's decoded float outputs."""
        codes = np.asarray(codes)
        if codes.dtype.kind in "iu":
            codes = codes.astype(np.int64)
        shape = (len(codes),) + tuple(self.tail.input.shape)
        values = self.out_format.decode(codes).reshape(shape)
        return emulate(self.tail, values, finite_input=False) if self.tail.layers else values.astype(np.float64)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_graph(self.prefix, d / "prefix.npz")
        save_graph(self.tail, d / "tail.npz")
        meta = {"in_format": self.in_format.to_dict(), "out_format": self.out_format.to_dict(),
                "in_dtype": self.in_dtype, "out_dtype": self.out_dtype}
        (d / "glue.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> HostGlue:
        d = Path(directory)
        try:
            meta = json.loads((d / "glue.json").read_text())
            return cls(load_graph(d / "prefix.npz"), load_graph(d / "tail.npz"),
                       format_from_dict(meta["in_format"]), format_from_dict(meta["out_format"]),
                       meta["in_dtype"], meta["out_dtype"])
        except (OSError, ValueError, KeyError) as e:
            raise EdgeqError(f"{d}: not a readable edgeq host-glue directory ({e}); rebuild with edgeq build") from None
