"""QFX quantizers: fixed point with a learned binary point, and multiplier-free weights.

Oracles: edgeq.formats.FixedPoint (itself tested bit-exact against ap_fixed via g++), QONNX's
execute_onnx, the edgeq emulator, and brute force over small grids.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import qonnx_reference

import edgeq
from edgeq import qfx
from edgeq.errors import EdgeqError
from edgeq.formats import OVERFLOW_MODES, ROUNDING_MODES, FixedPoint

# ---------------------------------------------------------------------------------------------
# fixed_quant == FixedPoint.quantize, bit for bit
# ---------------------------------------------------------------------------------------------


def _probe_values(width: int, int_bits: int, seed: int = 0) -> np.ndarray:
    """Random values, every tie and grid point near zero and the range ends, far overflow, signed zeros."""
    lsb = math.ldexp(1.0, int_bits - width)
    top = math.ldexp(1.0, int_bits)
    rng = np.random.default_rng(seed)
    codes = np.arange(-(1 << width) - 3, (1 << width) + 4, dtype=np.float64)
    return np.concatenate([
        rng.normal(0, top / 2, 200), rng.uniform(-3 * top, 3 * top, 200),
        codes * lsb, (codes + 0.5) * lsb, (codes + 0.25) * lsb, (codes - 0.75) * lsb,
        [0.0, -0.0, 1e-300, -1e-300, 5e-324, -5e-324, 1e30, -1e30, 1e300, -1e300, top, -top, 2 * top, -2 * top,
         np.nextafter(0.5 * lsb, 0), np.nextafter(-0.5 * lsb, 0),
         np.nextafter(0.5 * lsb, 1), -np.nextafter(0.5 * lsb, 1)],
    ])


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(np.int64 if a.dtype == np.float64 else np.int32)


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("overflow", OVERFLOW_MODES)
def test_fixed_quant_equals_fixedpoint_bit_for_bit_in_every_mode(rounding, overflow):
    for width, int_bits, signed in [(8, 3, True), (8, 3, False), (5, -2, True), (6, 9, True), (4, 0, False),
                                    (12, 12, True), (2, 1, True)]:
        fmt = FixedPoint(width, int_bits, signed, rounding, overflow)
        x = _probe_values(width, int_bits)
        want = fmt.quantize(x)
        got = qfx.fixed_quant(torch.from_numpy(x), width, int_bits, signed, rounding, overflow).numpy()
        assert np.array_equal(_bits(got), _bits(want)), f"{fmt}: {x[got != want][:5]} -> {got[got != want][:5]}"
        x32 = x.astype(np.float32)
        x32 = x32[np.isfinite(x32)]
        got32 = qfx.fixed_quant(torch.from_numpy(x32), width, int_bits, signed, rounding, overflow).numpy()
        assert got32.dtype == np.float32
        assert np.array_equal(_bits(got32), _bits(fmt.quantize(x32.astype(np.float64)).astype(np.float32))), str(fmt)


def test_fixed_quant_saturates_infinities_like_fixedpoint():
    x = np.array([np.inf, -np.inf, 3.0])
    for overflow in ("SAT", "SAT_SYM", "SAT_ZERO"):
        fmt = FixedPoint(6, 2, True, "RND_CONV", overflow)
        got = qfx.fixed_quant(torch.from_numpy(x), 6, 2, True, "RND_CONV", overflow).numpy()
        assert np.array_equal(got, fmt.quantize(x))


def test_fixed_quant_per_channel_int_bits_equal_fixedpoint_per_row():
    int_bits = [-3, 0, 2, 5, 11]
    x = np.stack([_probe_values(7, i, seed=i + 10)[:600] for i in int_bits])
    t = torch.tensor(int_bits, dtype=torch.float64).reshape(-1, 1)
    for rounding, overflow in [("RND_CONV", "SAT"), ("TRN", "WRAP"), ("RND_INF", "SAT_SYM"), ("TRN_ZERO", "SAT_ZERO")]:
        got = qfx.fixed_quant(torch.from_numpy(x), 7, t, True, rounding, overflow).numpy()
        for row, i in enumerate(int_bits):
            want = FixedPoint(7, i, True, rounding, overflow).quantize(x[row])
            assert np.array_equal(_bits(got[row].copy()), _bits(want)), (rounding, overflow, i)


def test_fixed_quant_gradient_reaches_a_learned_binary_point():
    x = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    for start, direction in [(0.0, +1), (9.0, -1)]:  # clipping pushes the point right, rounding noise left
        i = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        loss = ((qfx.fixed_quant(x, 8, i) - x) ** 2).mean()
        loss.backward()
        assert i.grad is not None and float(i.grad) * direction < 0, (start, float(i.grad))
    # the forward pass uses round(int_bits): 2.6 acts as ap_fixed<8,3>
    got = qfx.fixed_quant(x, 8, torch.tensor(2.6, dtype=torch.float64)).detach().numpy()
    assert np.array_equal(got, FixedPoint(8, 3, True, "RND_CONV", "SAT").quantize(x.numpy()))


# ---------------------------------------------------------------------------------------------
# CSD and the multiplier-free projection
# ---------------------------------------------------------------------------------------------


def _fewest_signed_powers(limit: int, width: int) -> dict[int, int]:
    """Brute force: the least number of terms +-2**e (e < width + 1) summing to each integer up to ``limit``."""
    best = {0: 0}
    frontier = {0}
    powers = [s << e for e in range(width + 1) for s in (1, -1)]
    n = 0
    while frontier:
        n += 1
        frontier = {v + p for v in frontier for p in powers if abs(v + p) <= 2 * limit} - best.keys()
        best.update({v: n for v in frontier})
    return best


def test_csd_digits_are_the_fewest_signed_powers_of_two():
    best = _fewest_signed_powers(255, 9)
    codes = np.arange(-255, 256)
    assert np.array_equal(qfx.csd_digits(codes), [best[int(c)] for c in codes])
    for c in codes:
        terms = qfx.csd(int(c))
        assert sum(s << e for s, e in terms) == c and len(terms) == best[int(c)]
        assert all(b[1] - a[1] >= 2 for a, b in zip(terms, terms[1:]))  # no two adjacent non-zero digits
    assert qfx.csd(7) == [(-1, 0), (1, 3)] and qfx.csd(0) == [] and qfx.csd(-6) == [(1, 1), (-1, 3)]
    assert qfx.csd_digits(np.array([[3.0, -4.0]])).tolist() == [[2, 1]]


@pytest.mark.parametrize("width,k,narrow", [(4, 1, True), (5, 1, False), (6, 2, True), (6, 3, False), (7, 2, True)])
def test_projection_is_the_nearest_allowed_code_with_ties_to_the_smaller_magnitude(width, k, narrow):
    lo, hi = -(1 << (width - 1)) + narrow, (1 << (width - 1)) - 1
    allowed = [c for c in range(lo, hi + 1) if qfx.csd_digits(c) <= k]
    table = torch.from_numpy(qfx.allowed_codes(width, k, narrow))
    assert table.tolist() == allowed
    mids = [(a + b) / 2 for a, b in zip(allowed, allowed[1:])]
    v = np.concatenate([np.arange(lo - 4, hi + 4, 0.125), mids,
                        np.nextafter(mids, -np.inf), np.nextafter(mids, np.inf)])
    v = torch.from_numpy(v.astype(np.float32))
    got = qfx.project_codes(v, table).numpy()

    def brute(x):
        return min(allowed, key=lambda c: (abs(x - c), abs(c)))

    want = np.array([brute(float(x)) for x in v.numpy().astype(np.float64)], dtype=np.float32)
    assert np.array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# Brevitas models: Brevitas == edgeq emulator == QONNX
# ---------------------------------------------------------------------------------------------


def _mlp(out_overflow: str = "SAT"):
    from brevitas import nn as qnn

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=qfx.act_quant(8, rounding="TRN_ZERO"), return_quant_tensor=True)
            self.fc1 = qnn.QuantLinear(10, 16, bias=True,
                                       weight_quant=qfx.weight_quant(8, per_channel=True, rounding="TRN"),
                                       bias_quant=qfx.bias_quant(16))
            self.relu = qnn.QuantReLU(act_quant=qfx.act_quant(6, signed=False, rounding="RND_INF"),
                                      return_quant_tensor=True)
            self.fc2 = qnn.QuantLinear(16, 12, bias=True, weight_quant=qfx.weight_quant(6, multiplier_free="pow2"),
                                       bias_quant=qfx.bias_quant(12), return_quant_tensor=True)
            self.act2 = qnn.QuantIdentity(act_quant=qfx.act_quant(7, rounding="RND_ZERO", overflow=out_overflow,
                                                                  init_int_bits=1), return_quant_tensor=True)
            self.fc3 = qnn.QuantLinear(12, 4, bias=False, weight_quant=qfx.weight_quant(5, multiplier_free="khot", k=2,
                                                                                         overflow="SAT"),
                                       output_quant=qfx.act_quant(10, rounding="TRN"))

        def forward(self, x):
            x = self.relu(self.fc1(self.inp(x)))
            return self.fc3(self.act2(self.fc2(x)))

    return MLP()


def _cnn():
    from brevitas import nn as qnn

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=qfx.act_quant(8), return_quant_tensor=True)
            self.conv1 = qnn.QuantConv2d(1, 6, 3, padding=1, bias=True,
                                         weight_quant=qfx.weight_quant(6, per_channel=True),
                                         bias_quant=qfx.bias_quant(16))
            self.relu1 = qnn.QuantReLU(act_quant=qfx.act_quant(8, signed=False), return_quant_tensor=True)
            self.pool = torch.nn.MaxPool2d(2)
            self.conv2 = qnn.QuantConv2d(6, 4, 3, bias=False,
                                         weight_quant=qfx.weight_quant(5, multiplier_free="khot", k=2),
                                         output_quant=qfx.act_quant(8, overflow="SAT_SYM"), return_quant_tensor=True)
            self.fc = qnn.QuantLinear(16, 3, bias=True, weight_quant=qfx.weight_quant(8, multiplier_free="pow2"),
                                      bias_quant=qfx.bias_quant(16))

        def forward(self, x):
            x = self.pool(self.relu1(self.conv1(self.inp(x))))
            x = self.conv2(x)
            return self.fc(torch.flatten(x, 1))

    return CNN()


def _calibrate(model, shape, seed=0, steps=3, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn((16,) + shape, generator=gen) * scale)
    return model.eval()


def _capture(model):
    """Forward hooks recording each QFX quantizer proxy's output value, by module path."""
    seen, hooks = {}, []
    for name, mod in qfx._qfx_proxies(model):
        def hook(m, args, out, name=name):
            v = out[0] if isinstance(out, tuple) else out
            seen.setdefault(name, []).append(getattr(v, "value", v).detach().numpy().copy())
        hooks.append(mod.register_forward_hook(hook))
    return seen, hooks


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_brevitas_forward_equals_emulator_and_qonnx_bit_for_bit(kind, tmp_path):
    torch.manual_seed(1)
    model, shape = (_mlp(), (10,)) if kind == "mlp" else (_cnn(), (1, 8, 8))
    _calibrate(model, shape)
    x = (torch.randn((64,) + shape, generator=torch.Generator().manual_seed(5)) * 2).numpy()
    path = qfx.export(model, torch.from_numpy(x[:1]), tmp_path / "m.onnx")
    meta = qfx.read_metadata(path)
    seen, hooks = _capture(model)
    with torch.no_grad():
        want = model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    want = getattr(want, "value", want).numpy()
    got = edgeq.emulate(edgeq.load(path), x)
    assert got.dtype == np.float64 and np.array_equal(got.astype(np.float32), want)
    assert np.array_equal(got, want.astype(np.float64))

    # every exported Quant node, executed by QONNX, equals the Brevitas quantizer that made it
    n = 8
    ref, ctx = qonnx_reference(path, x[:n], full_context=True)
    assert np.array_equal(ref.astype(np.float32), want[:n])
    assert len(meta["tensors"]) == len(seen)
    for tensor, spec in meta["tensors"].items():
        brev = seen[spec["module"]][0]
        if spec["module"].endswith(("weight_quant", "bias_quant")):  # a constant, repeated once per sample
            value, brev = ctx[tensor].reshape((n,) + brev.shape), np.broadcast_to(brev, (n,) + brev.shape)
        else:
            value, brev = ctx[tensor], brev[:n]
        assert np.array_equal(value, brev), f"Quant node {spec['node']} differs from Brevitas"
    # the exported weights are the multiplier-free codes Brevitas trained with
    from onnx import load, numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in load(str(path)).graph.initializer}
    assert meta["layers"]
    for weight, spec in meta["layers"].items():
        layer = dict(model.named_modules())[spec["module"]]
        w = layer.quant_weight()
        codes = (w.value / w.scale).detach().numpy()
        assert np.array_equal(inits[weight], w.value.detach().numpy())
        assert np.array_equal(codes, np.round(codes))
        assert qfx.csd_digits(codes).max() <= spec["k"] and spec["k"] == (1 if spec["multiplier_free"] == "pow2" else 2)
        assert np.count_nonzero(codes) > codes.size // 2  # not trivially all zero


def test_wrap_overflow_trains_wraps_and_is_recorded_for_the_emulator(tmp_path):
    torch.manual_seed(2)
    model = _calibrate(_mlp(out_overflow="WRAP"), (10,))
    x = (torch.randn(64, 10, generator=torch.Generator().manual_seed(6)) * 3).numpy()
    path = qfx.export(model, torch.from_numpy(x[:1]), tmp_path / "wrap.onnx")
    meta = qfx.read_metadata(path)
    wrapped = [t for t, s in meta["tensors"].items() if s["overflow"] == "WRAP"]
    assert len(wrapped) == 1 and meta["tensors"][wrapped[0]]["module"] == "act2.act_quant"
    seen, hooks = _capture(model)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
        pre = model.fc2(model.relu(model.fc1(model.inp(torch.from_numpy(x))))).value.numpy()
    for h in hooks:
        h.remove()
    i = int(qfx.binary_points(model)["act2.act_quant"])
    act2 = seen["act2.act_quant"][0]
    assert np.array_equal(act2, FixedPoint(7, i, True, "RND_ZERO", "WRAP").quantize(pre))
    assert not np.array_equal(act2, FixedPoint(7, i, True, "RND_ZERO", "SAT").quantize(pre))  # it did overflow
    assert np.array_equal(edgeq.emulate(edgeq.load(path), x), want.astype(np.float64))


def test_per_channel_activation_binary_points_quantize_each_channel_like_fixedpoint():
    from brevitas import nn as qnn

    q = qnn.QuantIdentity(act_quant=qfx.act_quant(6, per_channel=True, rounding="RND_INF"),
                          per_channel_broadcastable_shape=(1, 3, 1, 1), scaling_stats_permute_dims=(1, 0, 2, 3)).train()
    spread = torch.tensor([0.1, 1.0, 10.0]).view(1, 3, 1, 1)
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(7)) * spread
    y = q(x).detach().numpy()
    points = qfx.binary_points(q)["act_quant"].flatten().tolist()
    assert points == sorted(points) and points[0] < points[2]  # initialised from each channel's max |x|
    for c, i in enumerate(points):
        assert np.array_equal(y[:, c], FixedPoint(6, int(i), True, "RND_INF", "SAT").quantize(x[:, c].numpy()))


def test_fixed_point_batchnorm_and_residual_add_equal_the_emulator_in_fixed_point(tmp_path):
    from brevitas import nn as qnn

    from edgeq.formats import Float32

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=qfx.act_quant(8), return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(3, 3, 3, padding=1, bias=False, weight_quant=qfx.weight_quant(8),
                                        output_quant=qfx.act_quant(8), return_quant_tensor=True)
            self.bn = qfx.QFXBatchNorm2d(3, 8)
            self.add = qfx.QFXAdd(8, return_quant_tensor=False)

        def forward(self, x):
            x = self.inp(x)
            return self.add(self.bn(self.conv(x)), x)

    torch.manual_seed(8)
    model = Block()
    with torch.no_grad():
        model.bn.weight.copy_(torch.rand(3) + 0.5)
        model.bn.bias.copy_(torch.rand(3) - 0.5)
    _calibrate(model, (3, 6, 6))
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = model(x).numpy()
    points = qfx.binary_points(model)
    assert points["bn.output_quant"] != points["inp.act_quant"]  # the residual add aligns two binary points
    g = edgeq.load(qfx.export(model, x[:1], tmp_path / "block.onnx"))
    assert not [lay.op for lay in g.layers if isinstance(g.tensors[lay.output].format, Float32)]
    assert np.array_equal(edgeq.emulate(g, x.numpy()), want.astype(np.float64))


# ---------------------------------------------------------------------------------------------
# Training the binary point
# ---------------------------------------------------------------------------------------------


def test_a_training_step_changes_every_binary_point():
    torch.manual_seed(3)
    model = _calibrate(_mlp(), (10,)).train()
    points = {n: p for n, p in model.named_parameters() if n.endswith("int_bits")}
    assert len(points) == 7  # 4 activation/output + 3 weight quantizers (biases follow the accumulator)
    before = {n: p.detach().clone() for n, p in points.items()}
    x = torch.randn(32, 10)
    loss = ((model(x) - 0.5) ** 2).mean()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for n, p in points.items():
        assert p.grad is not None and bool(torch.any(p.grad != 0)), n
        assert not torch.equal(p.detach(), before[n]), n


def test_training_moves_a_badly_initialised_binary_point_to_a_sensible_position():
    from brevitas import nn as qnn

    gen = torch.Generator().manual_seed(4)
    for start in (-4, 14):  # everything clips / everything rounds to zero
        q = qnn.QuantIdentity(act_quant=qfx.act_quant(8, init_int_bits=start)).train()
        # The binary point's gradient scales with the error (~lsb^2 once nothing clips): a short second-moment
        # memory keeps Adam's steps from shrinking on the way down from a far too coarse grid.
        opt = torch.optim.Adam(q.parameters(), lr=0.05, betas=(0.9, 0.9))
        for _ in range(300):
            x = torch.randn(256, generator=gen) * 1.5
            loss = ((q(x) - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        # N(0, 1.5^2) in 8 bits: I = 4 (range +-8) or 3 (range +-4) minimise the error
        assert int(qfx.binary_points(q)["act_quant"]) in (3, 4), (start, qfx.binary_points(q))
        assert float(loss) < 0.01

    # a per-channel weight binary point, initialised far too small, on a regression with pretrained weights
    target = torch.tensor([[0.9, -0.2, 0.1, 0.05], [0.02, -0.03, 0.01, 0.015]])
    fc = qnn.QuantLinear(4, 2, bias=False, weight_quant=qfx.weight_quant(8, per_channel=True))
    with torch.no_grad():
        fc.weight.copy_(target + 0.01)
        fc(torch.zeros(1, 4))
        fc.weight_quant.tensor_quant.scaling_impl.int_bits.fill_(-9.0)
    opt = torch.optim.Adam(fc.parameters(), lr=0.05, betas=(0.9, 0.9))
    for _ in range(300):
        x = torch.randn(128, 4, generator=gen)
        loss = ((fc(x) - x @ target.T) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    points = qfx.binary_points(fc)["weight_quant"].flatten().tolist()
    # one point per channel, within one position of the smallest range holding max |w| (0.9 -> 1, 0.03 -> -4);
    # a point oscillates across the boundary where clipping and rounding noise balance
    assert abs(points[0] - 1) <= 1 and abs(points[1] + 4) <= 1, points
    assert float(loss) < 1e-3


# ---------------------------------------------------------------------------------------------
# Bad input: one EdgeqError line each
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,words", [
    (lambda: qfx.weight_quant(1), "width"),
    (lambda: qfx.act_quant(25), "width"),
    (lambda: qfx.bias_quant(1), "width"),
    (lambda: qfx.fixed_quant(torch.zeros(2), 1, 0), "width"),
    (lambda: qfx.weight_quant(8, multiplier_free="khot", k=0), "k must be"),
    (lambda: qfx.weight_quant(8, multiplier_free="ternary"), "ternary"),
    (lambda: qfx.weight_quant(20, multiplier_free="pow2"), "16 bits"),
    (lambda: qfx.weight_quant(8, multiplier_free="pow2", overflow="WRAP"), "WRAP"),
    (lambda: qfx.act_quant(8, rounding="RND"), "RND has no QONNX"),
    (lambda: qfx.act_quant(8, rounding="RND_MIN_INF"), "RND_MIN_INF"),
    (lambda: qfx.weight_quant(8, rounding="CEIL"), "CEIL"),
    (lambda: qfx.act_quant(8, rounding="NEAREST"), "NEAREST"),
    (lambda: qfx.act_quant(8, overflow="CLAMP"), "CLAMP"),
    (lambda: qfx.act_quant(8, init_int_bits=40), "binary point outside"),
    (lambda: qfx.act_quant(8, init_int_bits=[0, -17]), "binary point outside"),
    (lambda: qfx.fixed_quant(torch.zeros(2), 8, 25), "binary point outside"),
    (lambda: qfx.fixed_quant(torch.zeros(2), 8, 2.5), "int_bits must be an integer"),
])
def test_bad_input_raises_one_clear_edgeq_error(call, words):
    with pytest.raises(EdgeqError) as e:
        call()
    msg = str(e.value)
    assert words in msg and "\n" not in msg and msg.startswith("qfx."), msg


def test_the_binary_point_rule_is_sixteen_bits_beyond_either_end_of_the_word():
    assert qfx.int_bits_range(8) == (-16, 24)
    for i in (-16, 24):
        qfx.fixed_quant(torch.zeros(1), 8, i)
    for i, width in itertools.product((-17, 25), (8,)):
        with pytest.raises(EdgeqError):
            qfx.fixed_quant(torch.zeros(1), width, i)
    # a learned point is clamped into the range instead
    y = qfx.fixed_quant(torch.tensor([1e9]), 8, torch.tensor(90.0))
    assert float(y) == FixedPoint(8, 24, True, "RND_CONV", "SAT").quantize(np.array([1e9]))[0]
