"""edgeq demo: train a small fixed-point CNN on real data, export it to QONNX, inspect it,
emulate it bit-exactly with the CLI, and prove the result against QONNX and Brevitas. Then build
FP16 firmware for a RISC-V MCU (QEMU, Zfh), run it, and prove it bit-exact against the emulator.

    make demo            # or: .venv/bin/python examples/demo.py --out demo_out

Data: scikit-learn's bundled handwritten digits (8x8, 1,797 samples), nothing is downloaded.
Exits non-zero if any output differs from QONNX's execute_onnx or from Brevitas by a single bit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def train(model, x, y, epochs: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            b = perm[i : i + 64]
            opt.zero_grad()
            out = model(xt[b])
            loss = torch.nn.functional.cross_entropy(getattr(out, "value", out), yt[b])
            loss.backward()
            opt.step()
    model.eval()
    return model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="edgeq end-to-end demo")
    ap.add_argument("--out", default="demo_out", help="output directory")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    import edgeq
    from edgeq.data import digits
    from edgeq.zoo import fixed_point_cnn

    edgeq_cli = str(Path(sys.executable).with_name("edgeq"))
    x_tr, y_tr, x_te, y_te = digits()
    print(f"[1/6] training an 8-bit fixed-point CNN on scikit-learn digits ({len(x_tr)} train / {len(x_te)} test)")
    t = time.time()
    model, shape = fixed_point_cnn(seed=0, bit_width=8)
    train(model, x_tr, y_tr, args.epochs)
    print(f"      trained in {time.time() - t:.1f} s")

    onnx_path = out / "digits_fixed8.onnx"
    print(f"[2/6] exporting to QONNX: {onnx_path}")
    edgeq.export(model, torch.zeros(shape), onnx_path)

    print("[3/6] edgeq inspect")
    subprocess.run([edgeq_cli, "inspect", str(onnx_path)], check=True)

    print("[4/6] edgeq emulate (bit-exact) on the test set, with a per-layer trace")
    np.save(out / "x_test.npy", x_te)
    subprocess.run([edgeq_cli, "--quiet", "emulate", str(onnx_path), "--input", str(out / "x_test.npy"),
                    "--output", str(out / "y_edgeq.npy"), "--trace", str(out / "trace")], check=True)
    y_emu = np.load(out / "y_edgeq.npy")

    print("[5/6] checking against QONNX execute_onnx and the Brevitas forward pass")
    mw = cleanup_model(ModelWrapper(str(onnx_path)))
    iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
    t = time.time()
    ref = np.concatenate([execute_onnx(mw, {iname: x_te[i : i + 1]})[oname] for i in range(len(x_te))])
    t_q = time.time() - t
    graph = edgeq.load(onnx_path)
    t = time.time()
    edgeq.emulate(graph, x_te)
    t_e = time.time() - t
    with torch.no_grad():
        bre = model(torch.from_numpy(x_te))
    bre = getattr(bre, "value", bre).numpy()
    mism_q = int(np.sum(np.any(y_emu != ref.astype(np.float64), axis=1)))
    mism_b = int(np.sum(np.any(y_emu != bre.astype(np.float64), axis=1)))
    acc = float(np.mean(np.argmax(y_emu, axis=1) == y_te))
    print(f"      outputs differing from execute_onnx: {mism_q} of {len(x_te)}")
    print(f"      outputs differing from Brevitas:     {mism_b} of {len(x_te)}")
    print(f"      test accuracy (emulated, bit-exact): {acc:.4f}")
    print(f"      edgeq {len(x_te) / t_e:,.0f} img/s vs execute_onnx {len(x_te) / t_q:,.0f} img/s "
          f"({t_q / t_e:.0f}x)")
    n_trace = len(list((out / "trace").iterdir()))
    print(f"      artefacts in {out}/: model, x_test.npy, y_edgeq.npy, trace/ ({n_trace} layers)")

    mcu = out / "mcu_qemu-rv32"
    print(f"[6/6] MCU: edgeq build --board qemu-rv32 (FP16 C), edgeq flash (QEMU), edgeq compare: {mcu}")
    subprocess.run([edgeq_cli, "--quiet", "build", str(onnx_path), "--board", "qemu-rv32", "--out", str(mcu),
                    "--vectors", str(out / "x_test.npy"), "--force"], check=True)
    subprocess.run([edgeq_cli, "--quiet", "flash", str(mcu), "--board", "qemu-rv32"], check=True)
    same = subprocess.run([edgeq_cli, "compare", str(mcu)], capture_output=True, text=True)
    print("      " + same.stdout.splitlines()[0])
    import json

    hw = np.load(mcu / "hw_outputs.npy")
    rep = json.loads((mcu / "report.json").read_text())
    inst = json.loads((mcu / "hw_counters.json").read_text())["total"]["instret"]
    q = rep["qonnx_distance"]
    print(f"      MCU test accuracy: {float(np.mean(np.argmax(hw, axis=1) == y_te)):.4f}; "
          f"{q['differing_values']} of {q['values']} outputs differ from the float32 QONNX model "
          f"(max |diff| {q['max_abs_diff']:.3g}, FP16 accumulation), top-1 agreement {q['argmax_agreement']:.4f}")
    print(f"      {int(np.median(inst)):,} instructions per inference, {rep['total_macs']:,} MACs; RAM "
          f"{rep['firmware']['ram_used']:,} B, flash {rep['firmware']['flash_used']:,} B")
    return 0 if mism_q == 0 and mism_b == 0 and same.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
