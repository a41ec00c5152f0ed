"""The binary MCU kernels (firmware/common/edgeq_xnor.c) equal the exact ±1 products.

XNOR dense and conv against numpy's int64 product; the MST dense kernel against edgeq.mst.mst_forward (and so
against plain XNOR) for depth bounds 1, 2 and unbounded, on random data (K < 32, K not a multiple of 32, several
N) and on the 64x64 binary layer of bnn_pynq tfc_1w1a (exported to QONNX and loaded). Every kernel runs on the
host and on QEMU (rv32imafc_zfh, the qemu-rv32 board; and with Zbb, where popcount is `cpop`); on QEMU the
executed instructions of each call (edgeq_instret() delta) are printed, see test_report_instructions.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mcu_tools import BOARD
from mcu_tools import host_compiler as _host_compiler
from mcu_tools import need as _need
from mcu_tools import qemu as _qemu

from edgeq import mst
from edgeq.backends.mcu import kernels, xnor
from edgeq.backends.mcu import toolchain as tc
from edgeq.errors import EdgeqError

GUARD = 4
CANARY = 0x5A5A5A5A




def _zbb_board():
    """qemu-rv32 with Zbb in -march and on QEMU's CPU (no board file has Zbb yet)."""
    b = tc._board(BOARD)
    data = dict(b.data)
    data["toolchain_flags"] = [f + "_zbb" if f.startswith("-march=") else f for f in b.data["toolchain_flags"]]
    data["qemu_args"] = [a + ",zbb=true" if a.startswith("rv32,") else a for a in b.data["qemu_args"]]
    return dataclasses.replace(b, name=BOARD + "-zbb", data=data)


# ---- the cases -----------------------------------------------------------------------------------------------


def _correlated(rng: np.random.Generator, n: int, k: int, flip: float) -> np.ndarray:
    """n channel bit rows (n, k) that are noisy copies of a few prototypes: non-trivial MST trees."""
    protos = rng.random((max(1, n // 8), k)) < 0.5
    rows = protos[rng.integers(0, len(protos), n)]
    return rows ^ (rng.random((n, k)) < flip)


@functools.cache
def _tfc_layer() -> np.ndarray:
    """Channel bits (64, 64) of tfc_1w1a's second binary layer (features_6_MatMul), via QONNX."""
    pytest.importorskip("brevitas")
    import torch

    import edgeq
    import edgeq.zoo

    model, shape = edgeq.zoo.bnn_pynq("tfc_1w1a")
    with tempfile.TemporaryDirectory() as tmp:
        g = edgeq.load(edgeq.export(model, torch.zeros(shape), Path(tmp) / "tfc.onnx"))
    layers = [layer for layer in g.layers if mst.is_binary(layer)]
    layer = next(la for la in layers if np.asarray(la.weight).shape == (64, 64))
    return mst.channel_bits(layer)


def _cases() -> list[dict]:
    rng = np.random.default_rng(5)
    cases: list[dict] = []
    for k, n in [(1, 1), (5, 3), (31, 7), (32, 16), (33, 10), (100, 17), (64, 64), (300, 9)]:
        cases.append({"kind": "dense", "name": f"dense K={k} N={n}", "bits": rng.random((n, k)) < 0.5})
    for k, n, flip in [(20, 12, 0.1), (70, 24, 0.08), (64, 40, 0.05), (200, 33, 0.1)]:
        bits = _correlated(rng, n, k, flip)
        for depth in (1, 2, None):
            cases.append({"kind": "mst", "name": f"mst K={k} N={n} depth={depth}", "bits": bits, "depth": depth})
    tfc = _tfc_layer()
    cases.append({"kind": "dense", "name": "tfc_1w1a 64x64 xnor", "bits": tfc, "measure": True})
    for depth in (1, 2, 4, None):
        cases.append({"kind": "mst", "name": f"tfc_1w1a 64x64 mst depth={depth}", "bits": tfc, "depth": depth,
                      "measure": True})
    for cin, cout, hw, kk, s, pads in [(3, 5, (6, 7), (3, 3), (1, 1), (0, 0, 0, 0)),
                                        (4, 6, (7, 6), (3, 3), (1, 1), (1, 1, 1, 1)),
                                        (16, 4, (5, 5), (3, 3), (2, 2), (1, 0, 2, 1)),
                                        (2, 3, (5, 6), (1, 1), (1, 1), (0, 0, 0, 0))]:
        oh = (hw[0] + pads[0] + pads[2] - kk[0]) // s[0] + 1
        ow = (hw[1] + pads[1] + pads[3] - kk[1]) // s[1] + 1
        p = xnor.conv_params((cin, *hw), (cout, oh, ow), {"strides": list(s), "pads": list(pads)},
                             (cout, cin, *kk))
        w = rng.choice([-1, 1], (cout, cin, *kk))
        if cout > 4:  # correlated channels: non-trivial MST trees
            w = np.where(_correlated(rng, cout, cin * kk[0] * kk[1], 0.1), 1, -1).reshape(w.shape)
        x = rng.choice([-1, 1], (cin, *hw))
        cases.append({"kind": "conv", "name": f"conv {p}", "p": p, "w": w, "x": x})
        for depth in (1, None):
            cases.append({"kind": "mstconv", "name": f"mst conv depth={depth} {p}", "p": p, "w": w, "x": x,
                          "bits": np.asarray(w > 0).reshape(cout, -1), "depth": depth})
    for i, c in enumerate(cases):
        c["eb"] = (1, 2, 4)[i % 3]  # int8, float16 and float32 activations: the kernels read the sign bit
        c["scale"] = (1.0, 0.25, 2.0)[i % 3 if c["eb"] != 1 else 0]
        if "x" not in c:
            c["x"] = rng.choice([-1, 1], c["bits"].shape[1])
        if c["kind"] in ("mst", "mstconv"):
            b = c["bits"]
            c["tree"] = mst.attach_weights(mst.build_tree(mst.hamming(b), c["depth"], K=b.shape[1]), b)
    return cases


@functools.cache
def _all_cases() -> tuple:
    return tuple(_cases())


def _want(c: dict) -> np.ndarray:
    """The exact integer outputs (before the scale)."""
    if c["kind"] in ("conv", "mstconv"):
        return xnor.conv_reference(c["x"], c["w"], c["p"]).reshape(-1)
    pm1 = np.where(c["bits"], 1, -1)
    if c["kind"] == "mst":
        return mst.mst_forward(c["tree"], c["bits"], c["x"])
    return xnor.xnor_reference(c["x"], pm1)


def _activation(c: dict) -> tuple[str, np.ndarray]:
    """(C type, stored elements) of the ±1 input as the firmware holds it: int8, float16 or float32 bits."""
    x = np.asarray(c["x"]).reshape(-1)
    if c["eb"] == 1:
        return "int8_t", x.astype(np.int8)
    if c["eb"] == 2:
        return "uint16_t", (x * 0.5).astype(np.float16).view(np.uint16)  # ±0.5: only the sign is read
    return "uint32_t", (x * 3.0).astype(np.float32).view(np.uint32)


# ---- the firmware --------------------------------------------------------------------------------------------


def _arr(name: str, ctype: str, v: np.ndarray) -> str:
    vals = ",".join(str(int(t)) for t in np.asarray(v).reshape(-1)) or "0"
    return f"static const {ctype} {name}[{max(np.asarray(v).size, 1)}] __attribute__((aligned(4))) = {{{vals}}};\n"


def _program(cases: tuple) -> str:
    decl, body = [], []
    for i, c in enumerate(cases):
        eb, sc = c["eb"], repr(float(c["scale"])) + "f"
        decl.append(_arr(f"X{i}", *_activation(c)))
        if c["kind"] in ("conv", "mstconv"):
            p = c["p"]
            n_out = p["cout"] * p["oh"] * p["ow"]
            decl.append(f"static uint32_t S{i}[{xnor.conv_scratch_words(p, c['kind'] == 'mstconv')}];\n")
            fields = ", ".join(str(p[key]) for key in xnor.BCONV_KEYS)
            decl.append(f"static const edgeq_bconv_t P{i} = {{{fields}}};\n")
            if c["kind"] == "conv":
                decl.append(_arr(f"W{i}", "uint32_t", xnor.pack_conv_bits(c["w"])))
                call = f"edgeq_xnor_conv2d(&P{i}, X{i}, {eb}, W{i}, {sc}, Y{i}, S{i});"
            else:
                decl.append(_mst_struct(i, c))
                call = f"edgeq_mst_conv2d(&P{i}, &M{i}, X{i}, {eb}, {sc}, Y{i}, S{i});"
        else:
            k, n_out = c["bits"].shape[1], c["bits"].shape[0]
            decl.append(f"static uint32_t S{i}[{xnor.dense_scratch_words(k, c['kind'] == 'mst')}];\n")
            if c["kind"] == "dense":
                decl.append(_arr(f"W{i}", "uint32_t", xnor.pack_bits(c["bits"])))
                call = (f"edgeq_pack_signs(X{i}, {k}, {eb}, S{i}); "
                        f"edgeq_xnor_dense({k}, {n_out}, S{i}, W{i}, {sc}, Y{i});")
            else:
                decl.append(_mst_struct(i, c))
                call = f"edgeq_mst_dense(&M{i}, X{i}, {eb}, {sc}, Y{i}, S{i});"
        decl.append(f"static float Y{i}[{n_out + GUARD}];\n")
        decl.append(f"static __attribute__((noinline)) void run{i}(void) {{ {call} }}\n")
        body.append(f"    prep((uint32_t *)Y{i}, {n_out});\n    t0 = edgeq_instret();\n    run{i}();\n"
                    f"    t1 = edgeq_instret();\n"
                    f"    emit({i}, (const uint32_t *)Y{i}, {n_out}, (uint32_t)(t1 - t0));\n")
    return f"""#include <stdint.h>
#include "edgeq_io.h"
#include "edgeq_xnor.h"

static void prep(uint32_t *y, int n) {{
    for (int i = 0; i < n + {GUARD}; i++) y[i] = i < n ? 0x7eadbeefu : (uint32_t){CANARY};
}}
static void emit(int id, const uint32_t *y, int n, uint32_t instret) {{
    int ok = 1;
    for (int i = 0; i < {GUARD}; i++) ok &= y[n + i] == (uint32_t){CANARY};
    edgeq_puts("C ");
    edgeq_put_hex((uint32_t)id, 4);
    edgeq_puts(ok ? " 1 " : " 0 ");
    edgeq_put_hex(instret, 8);
    for (int i = 0; i < n; i++) {{ edgeq_puts(" "); edgeq_put_hex(y[i], 8); }}
    edgeq_puts("\\n");
}}
{"".join(decl)}
int main(void) {{
    uint64_t t0, t1;
{"".join(body)}    return 0;
}}
"""


def _mst_struct(i: int, c: dict) -> str:
    m = xnor.pack_mst(c["tree"], c["bits"])
    out = "".join(_arr(f"M{i}_{key}", ctype, m[key]) for key, ctype in [
        ("order", "uint16_t"), ("parent", "uint16_t"), ("count", "uint16_t"), ("root_bits", "uint32_t"),
        ("pos", "uint16_t")])
    k, n = c["bits"].shape[1], c["bits"].shape[0]
    return out + (f"static const edgeq_mst_t M{i} = {{{k}, {n}, M{i}_order, M{i}_parent, M{i}_count, "
                  f"M{i}_root_bits, M{i}_pos}};\n")


@functools.cache
def _run(target: str) -> tuple[list[np.ndarray], list[int]]:
    """(outputs, instructions per call) of every case on 'host', 'qemu' or 'qemu-zbb'."""
    cases = _all_cases()
    sources = [*xnor.c_sources()]
    include = [kernels.firmware_common()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "main.c").write_text(_program(cases))
        sources.append(tmp / "main.c")
        if target == "host":
            exe = tc.host_compile(sources, tmp / "host", include_dirs=include)
            text = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=60).stdout
        else:
            board = _zbb_board() if target == "qemu-zbb" else BOARD
            tc.compile_elf(board, sources, tmp / "fw.elf", include_dirs=include, workdir=tmp)
            text = tc.run_firmware(board, tmp / "fw.elf", timeout_s=60).stdout
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("C ")]
    assert [int(ln[1], 16) for ln in lines] == list(range(len(cases))), text[-500:]
    bad = [cases[i]["name"] for i, ln in enumerate(lines) if ln[2] != "1"]
    assert not bad, f"output guard overwritten in {bad}"
    outs = [np.array([int(t, 16) for t in ln[4:]], dtype=np.uint32).view(np.float32) for ln in lines]
    return outs, [int(ln[3], 16) for ln in lines]


def _check(target: str) -> None:
    outs, _ = _run(target)
    for c, got in zip(_all_cases(), outs):
        want = _want(c)
        scaled = (want * c["scale"]).astype(np.float32)  # exact: |acc| < 2**24 times a power of two
        assert np.array_equal(got.view(np.uint32), scaled.view(np.uint32)), \
            f"{target}: {c['name']}: got {got[:8]}, want {scaled[:8]}"
        if c["kind"] == "mst":  # and MST == plain XNOR
            assert np.array_equal(want, xnor.xnor_reference(c["x"], np.where(c["bits"], 1, -1)))
        if c["kind"] == "mstconv":
            assert np.array_equal(want.reshape(len(c["bits"]), -1)[:, :1].ravel(), _conv_mst_first_pixel(c))


def _conv_mst_first_pixel(c: dict) -> np.ndarray:
    """mst_forward on the (zero-padded) patch of output pixel (0, 0): the MST rule holds with padded taps = 0."""
    p = c["p"]
    x = np.pad(np.asarray(c["x"]), ((0, 0), (p["pt"], p["pb"]), (p["pl"], p["pr"])))
    patch = x[:, :p["dh"] * (p["kh"] - 1) + 1:p["dh"], :p["dw"] * (p["kw"] - 1) + 1:p["dw"]].reshape(-1)
    return mst.mst_forward(c["tree"], c["bits"], patch)


# ---- the tests -----------------------------------------------------------------------------------------------


def test_xnor_and_mst_kernels_on_the_host_are_exact():
    _need(_host_compiler)
    _check("host")


def test_xnor_and_mst_kernels_on_qemu_rv32_are_exact():
    _need(_qemu)
    _check("qemu")


def test_xnor_and_mst_kernels_on_qemu_rv32_with_zbb_are_exact_and_use_cpop():
    _need(_qemu)
    _check("qemu-zbb")
    _, plain = _run("qemu")
    _, zbb = _run("qemu-zbb")
    for c, a, b in zip(_all_cases(), plain, zbb):
        if c["kind"] == "dense" and c["bits"].shape[0] * c["bits"].shape[1] >= 1024:
            assert b < a, f"{c['name']}: cpop build not faster ({b} vs {a} instructions)"


def test_report_instructions(capsys):
    """Executed instructions (edgeq_instret() delta on QEMU -icount) of plain XNOR vs MST on the tfc layer."""
    _need(_qemu)
    rows = []
    for target in ("qemu", "qemu-zbb"):
        _, counts = _run(target)
        assert all(n > 0 for n in counts)
        for c, n in zip(_all_cases(), counts):
            if c.get("measure"):
                extra = ""
                if c["kind"] == "mst":
                    s = mst.stats(c["tree"])
                    extra = f" depth={s['depth']} roots={s['roots']} ops={s['ops']}/{s['xnor_ops']}"
                rows.append(f"{target:9s} {c['name']:32s} {n:8d} instructions{extra}")
    with capsys.disabled():
        print("\n" + "\n".join(rows))


def test_pack_bits_layout_and_refusals():
    assert xnor.pack_bits(np.array([1, -1, 1])).tolist() == [5]
    v = np.where(np.arange(40) % 3 == 0, 1, -1)
    p = xnor.pack_bits(v)
    assert p.shape == (2,) and p[1] >> 8 == 0  # pad bits are 0
    assert np.array_equal(xnor.unpack_bits(p, 40), v)
    assert xnor.pack_bits(np.ones((2, 3, 64))).shape == (2, 3, 2)
    with pytest.raises(EdgeqError, match="±1"):
        xnor.pack_bits(np.array([1, 0, -1]))
    with pytest.raises(EdgeqError, match="grouped"):
        xnor.conv_params((4, 5, 5), (4, 3, 3), {"group": 2}, (4, 2, 3, 3))


def test_pack_mst_layout_matches_the_tree():
    rng = np.random.default_rng(1)
    bits = _correlated(rng, 10, 45, 0.1)
    tree = mst.attach_weights(mst.build_tree(mst.hamming(bits), 2, K=45), bits)
    m = xnor.pack_mst(tree, bits)
    assert m["order"].tolist() == tree.order.tolist()
    assert "sign_bits" not in m and len(m["pos"]) == int(tree.dist.sum())  # D only, signs by list
    roots = [c for c in tree.order if tree.parent[c] < 0]
    assert np.array_equal(xnor.unpack_bits(m["root_bits"], 45), np.where(bits[roots], 1, -1))
    t = 0
    for s, c in enumerate(tree.order):
        plus, minus = int(m["count"][2 * s]), int(m["count"][2 * s + 1])
        assert m["parent"][s] == (xnor.MST_ROOT if tree.parent[c] < 0 else tree.parent[c])
        d, sign = tree.diff_pos[c], tree.diff_sign[c]
        assert m["pos"][t:t + plus].tolist() == d[sign].tolist()
        assert m["pos"][t + plus:t + plus + minus].tolist() == d[~sign].tolist()
        assert all(bits[tree.parent[c], i] for i in d[sign]) and not any(bits[tree.parent[c], i] for i in d[~sign])
        t += plus + minus
