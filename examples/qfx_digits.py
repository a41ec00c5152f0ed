"""QFX on digits: float, post-training fixed point, and trained fixed point with learned binary points.

QFX ("Trainable Fixed-Point Quantization for Deep Learning Acceleration on FPGAs", :mod:`edgeq.qfx`)
learns the binary point of every tensor. This example compares, on one small CNN

    input -> conv -> BatchNorm -> ReLU -> conv -> BatchNorm -> (+ residual) -> ReLU -> maxpool -> linear

* ``float``: the float32 baseline (torch BatchNorm, no quantizers);
* ``ptq``: post-training fixed point at W bits: the float weights copied in, every binary point
  set once from calibration data (the smallest point whose range holds the largest value seen),
  then frozen. Nothing is trained;
* ``qfx``: the same fixed-point network, started from the float weights and then trained with
  its binary points learned (straight-through estimator) for W in ``--widths``;
* ``qat-frozen``: trained exactly like ``qfx`` but with every binary point frozen at its
  calibrated (PTQ) value. It separates what learning the binary points adds from what plain
  quantization-aware training of the weights adds;
* ``qfx-pow2`` / ``qfx-khot<K>``: QFX with multiplier-free weights (every weight code ``0`` or
  ``+-2**e``, or at most ``--khot-k`` non-zero CSD digits) at ``--mf-width`` bits.

In every fixed-point model all tensors are ``ap_fixed``: weights, activations, the BatchNorm scale,
shift and output, the residual Add's output, and the linear layer's bias (on its accumulator's grid,
16 bits). Each model is exported to QONNX with :func:`edgeq.qfx.export`; its accuracy is measured
by :func:`edgeq.emulate` on the export (bit-exact with the hardware), which is checked to equal the
Brevitas forward pass bit for bit. Each model is then built for Ultra96 (``edgeq build``: an HLS
project whose C simulation on the test set must equal the emulator bit for bit) and the table shows
the cost model's DSP and LUT estimate.

    python examples/qfx_digits.py                       # full run, ~1 min: build + csim every model
    python examples/qfx_digits.py --quick --out DIR     # ~15 s: fewer epochs, cost estimate without csim

Both write ``DIR/<variant>_w<W>.onnx`` for every fixed-point model, ``DIR/x_test.npy``,
``DIR/<variant>_w<W>.brevitas.npy`` (the Brevitas outputs on x_test) and ``DIR/results.json``; the
full run also keeps each model's HLS project in ``DIR/hls/``. The float baseline has no hardware
columns (it is not fixed point). Exit code 1 if any model differs from Brevitas or csim by a bit.

Your own data: everything below takes plain PyTorch DataLoaders of ``(x, y)`` batches, ``x`` float
``(N, C, H, W)`` and ``y`` integer class labels (digits is only the default)::

    from qfx_digits import run, print_table        # with examples/ on sys.path
    rows = run(train_loader, test_loader, num_classes=10, widths=(4, 6, 8), out="qfx_out")
    print_table(rows)

Bad input (a width below 2, ``--khot-k`` below 1, an ``--input-int-bits`` the width cannot hold)
is one ``error: ...`` line on stderr and exit code 2, before any training.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore")

#: torch intra-op threads. The tensors are tiny: on a 2-core machine that is busy with other work, one thread
#: trained 2 QFX epochs in 0.4 s and two threads (spinning against each other) in 5.5 s.
THREADS = 1

#: The linear layer's bias lives on its accumulator's grid; 16 bits hold it at every width used here.
BIAS_WIDTH = 16


# ---------------------------------------------------------------------------------------------
# The networks: one float, one fixed point, with the same parameter names
# ---------------------------------------------------------------------------------------------


class FloatNet(nn.Module):
    """The float32 baseline: conv-BN-ReLU, conv-BN, residual add, ReLU, 2x2 max pool, linear."""

    def __init__(self, in_channels: int, hw: tuple[int, int], num_classes: int, channels: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(channels * (hw[0] // 2) * (hw[1] // 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        z = self.bn2(self.conv2(y))
        return self.fc(torch.flatten(self.pool(torch.relu(y + z)), 1))


class FixedNet(nn.Module):
    """:class:`FloatNet` with every tensor ``width``-bit fixed point and a learned binary point (edgeq.qfx).

    ``multiplier_free`` (None, ``"pow2"`` or ``"khot"`` with ``k`` digits) constrains the weights of the two
    convolutions and the linear layer. ``input_int_bits`` fixes the input quantizer's initial binary point
    (None: from the first training batch). Bad arguments raise EdgeqError here, at construction.
    """

    def __init__(self, in_channels: int, hw: tuple[int, int], num_classes: int, width: int, channels: int = 8,
                 multiplier_free: str | None = None, k: int = 2, input_int_bits: int | None = None):
        super().__init__()
        from brevitas import nn as qnn

        from edgeq import qfx

        def weights(per_channel: bool):
            return qfx.weight_quant(width, per_channel=per_channel, multiplier_free=multiplier_free, k=k)

        self.inp = qnn.QuantIdentity(act_quant=qfx.act_quant(width, signed=False, init_int_bits=input_int_bits),
                                     return_quant_tensor=True)
        self.conv1 = qnn.QuantConv2d(in_channels, channels, 3, padding=1, bias=False, weight_quant=weights(True),
                                     output_quant=qfx.act_quant(width), return_quant_tensor=True)
        self.bn1 = qfx.QFXBatchNorm2d(channels, width)
        self.relu1 = qnn.QuantReLU(act_quant=qfx.act_quant(width, signed=False), return_quant_tensor=True)
        self.conv2 = qnn.QuantConv2d(channels, channels, 3, padding=1, bias=False, weight_quant=weights(True),
                                     output_quant=qfx.act_quant(width), return_quant_tensor=True)
        self.bn2 = qfx.QFXBatchNorm2d(channels, width)
        self.add = qfx.QFXAdd(width)
        self.relu2 = qnn.QuantReLU(act_quant=qfx.act_quant(width, signed=False), return_quant_tensor=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = qnn.QuantLinear(channels * (hw[0] // 2) * (hw[1] // 2), num_classes, bias=True,
                                  weight_quant=weights(False), bias_quant=qfx.bias_quant(BIAS_WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(self.inp(x))))
        z = self.bn2(self.conv2(y))
        out = self.fc(torch.flatten(self.pool(self.relu2(self.add(z, y))), 1))
        return getattr(out, "value", out)


# ---------------------------------------------------------------------------------------------
# Training, calibration and evaluation, all over DataLoaders
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float = 3e-3, point_lr: float = 1e-2,
          seed: int = 0) -> nn.Module:
    """Adam on cross entropy for ``epochs`` passes over ``loader`` (cosine learning rate), in place.

    Learned binary points (QFX ``int_bits`` parameters) use ``point_lr``; frozen parameters are skipped.
    A QFX model must be calibrated first (:func:`calibrate`) so that its binary points start from data.
    """
    seed_everything(seed)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    points = [p for n, p in params if n.endswith("int_bits")]
    rest = [p for n, p in params if not n.endswith("int_bits")]
    groups = [{"params": rest, "lr": lr}] + ([{"params": points, "lr": point_lr}] if points else [])
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(loader)))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def calibrate(model: nn.Module, loader: DataLoader, samples: int = 512, seed: int = 0) -> nn.Module:
    """Set every binary point from data: weights from ``max |w|``, activations from ``max |x|`` over up to
    ``samples`` training inputs, passed as one batch (QFX initialises a point on its first training batch)."""
    seed_everything(seed)
    xs, n = [], 0
    for x, _ in loader:
        xs.append(x)
        n += len(x)
        if n >= samples:
            break
    model.train()
    model(torch.cat(xs)[:samples])
    return model.eval()


def freeze(model: nn.Module, only_binary_points: bool = False) -> nn.Module:
    """Stop training every parameter, or with ``only_binary_points`` only the QFX binary points."""
    for n, p in model.named_parameters():
        if not only_binary_points or n.endswith("int_bits"):
            p.requires_grad_(False)
    return model


def from_float(fixed: nn.Module, float_model: nn.Module) -> nn.Module:
    """Copy the float weights in, by name; each BatchNorm folds into its QFXBatchNorm2d's scale and shift.

    Brevitas does the folding (``gamma / sqrt(var + eps)`` and ``beta - mean * scale``) and then reports the scale
    and shift as missing keys; the binary points (``int_bits``, ``initialized``) have no float counterpart.
    """
    res = fixed.load_state_dict(float_model.state_dict(), strict=False)
    folded = {f"{name}.{p}" for name, m in fixed.named_modules() if hasattr(m, "eps") for p in ("weight", "bias")}
    left = [k for k in res.missing_keys if k not in folded and not k.endswith((".int_bits", ".initialized"))]
    if res.unexpected_keys or left:
        raise ValueError(f"float and fixed-point networks differ: {res.unexpected_keys + left}")
    return fixed


def arrays(loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x, y) for x, y in loader])
    return torch.cat(xs).numpy().astype(np.float32), torch.cat(ys).numpy()


@torch.no_grad()
def forward(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return model(torch.from_numpy(x)).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))


# ---------------------------------------------------------------------------------------------
# Export, emulation, hardware
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table. ``width`` is W, or ``"fp32"``; hardware columns are None when not measured."""

    variant: str
    width: int | str
    accuracy: float
    emulate_equals_brevitas: bool | None = None
    csim_mismatches: int | None = None
    dsp: int | None = None
    lut: int | None = None
    onnx: str | None = None
    binary_points: dict | None = None


def export_and_check(model: nn.Module, variant: str, width: int, x_test: np.ndarray, y_test: np.ndarray,
                     out: Path) -> Row:
    """Export ``model`` to ``out/<variant>_w<width>.onnx`` and save its Brevitas outputs on ``x_test`` next to it.

    The accuracy is edgeq.emulate's on the export; ``emulate_equals_brevitas`` compares the two bit for bit.
    """
    import edgeq
    from edgeq import qfx

    name = f"{variant}_w{width}"
    path = qfx.export(model, torch.from_numpy(x_test[:1]), out / f"{name}.onnx")
    want = forward(model, x_test)
    np.save(out / f"{name}.brevitas.npy", want)
    got = edgeq.emulate(edgeq.load(path), x_test)
    same = bool(np.array_equal(got, want.astype(np.float64)))
    points = {k: v.flatten().tolist() if v.numel() > 1 else int(v) for k, v in qfx.binary_points(model).items()}
    return Row(variant, width, accuracy(got, y_test), same, onnx=str(path), binary_points=points)


def hardware(row: Row, vectors: Path, out: Path, csim: bool) -> Row:
    """Fill DSP/LUT (Ultra96 cost model) and, with ``csim``, run ``edgeq build`` and record its mismatches."""
    import edgeq
    from edgeq.backends.hls import cost
    from edgeq.backends.hls.build import BuildConfig, BuildFailed, build, cost_rows
    from edgeq.backends.hls.lower import lower
    from edgeq.board import get_board

    cfg = BuildConfig(model=Path(row.onnx), board="ultra96", out=out / "hls" / Path(row.onnx).stem, vectors=vectors,
                      force=True)
    if csim:
        try:
            build(cfg)
        except BuildFailed:
            pass  # the report says how many outputs differ; the table shows it
        report = json.loads((cfg.out / "report.json").read_text())
        totals, row.csim_mismatches = report["totals"], int(report["csim"]["mismatches"])
    else:
        totals = cost.estimate(cost_rows(lower(edgeq.load(cfg.model), cfg.parallel)), get_board(cfg.board))["totals"]
    row.dsp, row.lut = int(totals["dsp"]), int(totals["lut"])
    return row


# ---------------------------------------------------------------------------------------------
# The whole comparison
# ---------------------------------------------------------------------------------------------


def run(train_loader: DataLoader, test_loader: DataLoader, num_classes: int, *, widths=(4, 6, 8),
        mf_width: int = 8, khot_k: int = 2, multiplier_free=("pow2", "khot"), input_int_bits: int | None = None,
        float_epochs: int = 30, qfx_epochs: int = 15, out: str | Path = "qfx_out", csim: bool = True,
        seed: int = 0, say=print) -> list[Row]:
    """Train every variant on ``train_loader``, test it on ``test_loader``; returns the table rows.

    ``widths`` are the PTQ/QFX widths W; ``multiplier_free`` ("pow2", "khot") run at ``mf_width`` bits, K-hot with
    ``khot_k`` digits. Writes into ``out``: every fixed-point model as ``<variant>_w<W>.onnx`` with its Brevitas
    outputs on the test inputs (``.brevitas.npy``), ``x_test.npy``, ``float.pt`` and ``results.json``; with
    ``csim``, each model's Ultra96 HLS project in ``hls/<variant>_w<W>/`` (``edgeq build``, C simulation over the
    test inputs). Without ``csim``, DSP/LUT come from the same cost model and no project is written. Bad arguments
    raise EdgeqError before anything is trained or written.
    """
    from edgeq.errors import EdgeqError

    x_test, y_test = arrays(test_loader)
    shape = x_test.shape[1:]
    net = {"in_channels": shape[0], "hw": shape[1:], "num_classes": num_classes}

    # Every fixed-point model is made first: a bad width, k or binary point fails here, before any training.
    plan = [(v, w, None) for v in ("ptq", "qat-frozen", "qfx") for w in widths]
    plan += [("qfx-pow2" if mf == "pow2" else f"qfx-khot{khot_k}", mf_width, mf) for mf in multiplier_free]
    seed_everything(seed)
    models = []
    for variant, w, mf in plan:
        try:
            models.append(FixedNet(**net, width=w, multiplier_free=mf, k=khot_k, input_int_bits=input_int_bits))
        except EdgeqError as e:
            raise EdgeqError(f"{variant} W={w}: {e}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "x_test.npy", x_test)

    t = time.time()
    seed_everything(seed)
    float_model = train(FloatNet(**net), train_loader, float_epochs, seed=seed)
    rows = [Row("float", "fp32", accuracy(forward(float_model, x_test), y_test))]
    say(f"float: trained in {time.time() - t:.1f} s, test accuracy {rows[0].accuracy:.4f}")
    torch.save(float_model.state_dict(), out / "float.pt")

    for (variant, w, _), model in zip(plan, models):
        t = time.time()
        model = calibrate(from_float(model, float_model), train_loader, seed=seed)
        if variant == "ptq":
            freeze(model)
        else:
            if variant == "qat-frozen":
                freeze(model, only_binary_points=True)
            train(model, train_loader, qfx_epochs, lr=1e-3, seed=seed)
        row = export_and_check(model, variant, w, x_test, y_test, out)
        hardware(row, out / "x_test.npy", out, csim)
        rows.append(row)
        say(f"{variant} W={w}: {time.time() - t:.1f} s, test accuracy {row.accuracy:.4f}"
            + (f", csim {row.csim_mismatches} mismatches" if csim else ""))
    (out / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return rows


def print_table(rows: list[Row], file=sys.stdout) -> None:
    def cell(v):
        return "-" if v is None else ("yes" if v is True else "NO" if v is False else str(v))

    head = ("variant", "W", "test acc", "emulate==Brevitas", "csim mismatches", "DSP", "LUT")
    body = [(r.variant, str(r.width), f"{r.accuracy:.4f}", cell(r.emulate_equals_brevitas), cell(r.csim_mismatches),
             cell(r.dsp), cell(r.lut)) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    for line in [head, tuple("-" * w for w in widths), *body]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip(), file=file)


def digits_loaders(batch_size: int = 64, split_seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's digits (offline) as (train, test) DataLoaders; ``split_seed`` picks the 80/20 split."""
    from edgeq.data import digits

    x_tr, y_tr, x_te, y_te = digits(seed=split_seed)
    train_ds = TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr))
    test_ds = TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te))
    # shuffling draws from torch's global generator, which train() and calibrate() seed
    return DataLoader(train_ds, batch_size, shuffle=True), DataLoader(test_ds, 256)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, like every other bad input
        from edgeq.errors import EdgeqError

        raise EdgeqError(message)


def _int_list(text: str) -> tuple[int, ...]:
    from edgeq.errors import EdgeqError

    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise EdgeqError(f"--widths: expected integers separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    from edgeq.errors import EdgeqError

    ap = _Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few epochs, cost estimate without csim (< 1 min)")
    ap.add_argument("--out", default="qfx_out", help="output directory (default: qfx_out)")
    ap.add_argument("--widths", default="4,6,8", help="PTQ/QFX widths W, comma separated (default: 4,6,8)")
    ap.add_argument("--mf-width", type=int, default=8, help="width of the multiplier-free models (default: 8)")
    ap.add_argument("--khot-k", type=int, default=2, help="non-zero CSD digits per K-hot weight (default: 2)")
    ap.add_argument("--input-int-bits", type=int, default=None,
                    help="fix the input's initial binary point (default: from the data)")
    ap.add_argument("--csim", action=argparse.BooleanOptionalAction, default=None,
                    help="build every model with csim (default: on, off with --quick)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (the test split is fixed)")
    try:
        args = ap.parse_args(argv)
        widths = _int_list(args.widths)
        if not widths:
            raise EdgeqError("--widths: give at least one width")
        torch.set_num_threads(THREADS)
        t0 = time.time()
        train_loader, test_loader = digits_loaders()
        rows = run(train_loader, test_loader, 10, widths=widths, mf_width=args.mf_width, khot_k=args.khot_k,
                   input_int_bits=args.input_int_bits, float_epochs=8 if args.quick else 30,
                   qfx_epochs=3 if args.quick else 15, out=args.out,
                   csim=(not args.quick) if args.csim is None else args.csim, seed=args.seed)
    except EdgeqError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print_table(rows)
    print(f"\n{time.time() - t0:.0f} s; models, Brevitas outputs and results.json in {args.out}/")
    bad = [r for r in rows[1:] if not r.emulate_equals_brevitas or r.csim_mismatches]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
