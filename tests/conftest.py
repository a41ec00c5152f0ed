"""Shared fixtures: real Brevitas models exported once per test session."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

warnings.filterwarnings("ignore")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _deterministic(request):
    """Every test starts from the same generator state, whatever order pytest-xdist runs it in: Python's,
    numpy's and torch's global generators are seeded from the test's own id, torch uses one thread and
    deterministic algorithms."""
    import random
    import zlib

    seed = zlib.crc32(request.node.nodeid.encode())
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def exported(export_dir):
    """exported(kind, *args) -> (path to the raw Brevitas QONNX export, brevitas module, input shape)."""
    import edgeq
    from edgeq import zoo

    cache: dict = {}

    def get(kind: str, *args):
        key = (kind,) + args
        if key not in cache:
            build = {"bnn_pynq": zoo.bnn_pynq, "fixed": zoo.fixed_point_cnn, "minifloat": zoo.minifloat_mlp,
                     "depthwise": zoo.depthwise_cnn, "resblock": zoo.fixed_point_resblock}[kind]
            model, shape = build(*args)
            path = export_dir / ("_".join(map(str, key)) + ".onnx")
            import torch

            edgeq.export(model, torch.zeros(shape), path)
            cache[key] = (path, model, shape)
        return cache[key]

    return get


def qonnx_reference(path, x: np.ndarray, full_context: bool = False):
    """Run QONNX's own reference executor sample by sample on the raw export (qonnx cleanup only)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    mw = ModelWrapper(str(path))
    if not full_context:
        mw = cleanup_model(mw)
    else:  # keep the exporter's tensor names so they match edgeq's layer outputs
        from qonnx.transformation.infer_shapes import InferShapes

        for n in mw.graph.node:
            if n.op_type in ("Quant", "BipolarQuant", "FloatQuant", "Trunc"):
                n.domain = "qonnx.custom_op.general"
        mw = mw.transform(InferShapes())
    iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
    outs, ctxs = [], []
    for i in range(len(x)):
        ctx = execute_onnx(mw, {iname: x[i : i + 1]}, return_full_exec_context=full_context)
        outs.append(ctx[oname])
        ctxs.append(ctx)
    out = np.concatenate(outs).astype(np.float64)
    if not full_context:
        return out
    keys = set().union(*[c.keys() for c in ctxs])
    return out, {k: np.concatenate([c[k] for c in ctxs]) for k in keys if np.ndim(ctxs[0][k]) > 0}


def run_qonnx_node(op: str, x: np.ndarray, inits: dict, **attrs) -> np.ndarray:
    """Execute one QONNX custom op (domain qonnx.custom_op.general) with execute_onnx, in float32."""
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.basic import qonnx_make_model

    node = helper.make_node(op, ["X", *inits], ["Y"], domain="qonnx.custom_op.general", **attrs)
    shape = list(x.shape)
    graph = helper.make_graph(
        [node], "oracle",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shape)],
    )
    model = ModelWrapper(qonnx_make_model(graph))
    for k, v in inits.items():
        model.set_initializer(k, np.asarray(v, dtype=np.float32))
    y = execute_onnx(model, {"X": np.asarray(x, dtype=np.float32)})["Y"]
    assert y.dtype == np.float32
    return y


def corrupt_thresholds(monkeypatch, index: int = 0) -> dict:
    """Make the FPGA lowering shift the thresholds of its ``index``-th Threshold layer by 3 (a planted bug).

    Returns a dict that receives the corrupted layer's name under "layer" once a build has lowered.
    """
    from edgeq.backends.hls import lower as lower_mod

    real, seen = lower_mod.lower, {}

    def corrupted(graph, parallel=8):
        design = real(graph, parallel)
        lay = [x for x in design.layers if x.op == "Threshold"][index]
        lay.params["thresholds"] = lay.params["thresholds"] + 3
        seen["layer"] = lay.name
        return design

    monkeypatch.setattr(lower_mod, "lower", corrupted)
    return seen
