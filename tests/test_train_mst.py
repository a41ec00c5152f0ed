"""The differentiable MST-distance regularizer (edgeq.train.mst_regularizer) on real Brevitas layers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
qnn = pytest.importorskip("brevitas.nn")

from brevitas.quant import Int8WeightPerTensorFloat, SignedBinaryWeightPerTensorConst  # noqa: E402

from edgeq import mst  # noqa: E402
from edgeq.errors import EdgeqError  # noqa: E402
from edgeq.train import layer_bits, mst_regularizer  # noqa: E402


def binary_mlp(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        qnn.QuantLinear(64, 32, bias=False, weight_quant=SignedBinaryWeightPerTensorConst),
        torch.nn.ReLU(),
        qnn.QuantLinear(32, 16, bias=False, weight_quant=SignedBinaryWeightPerTensorConst),
    )


def real_total_distance(model) -> int:
    """Σ total MST distance from the exported signs, computed independently of the regularizer."""
    total = 0
    for m in model.modules():
        if isinstance(m, qnn.QuantLinear) and float(m.quant_weight().bit_width) == 1:
            bits = layer_bits(m)
            tree = mst.build_tree(mst.hamming(bits), None, K=bits.shape[1])
            total += mst.stats(tree)["total_distance"]
    return total


def test_loss_is_differentiable_and_reaches_the_latent_weights():
    model = binary_mlp()
    for surrogate in ("tanh", "l1"):
        reg = mst_regularizer(model, surrogate=surrogate)
        model.zero_grad()
        loss = reg()
        assert loss.ndim == 0 and loss.requires_grad and float(loss) > 0
        loss.backward()
        for m in (model[1], model[3]):
            assert m.weight.grad is not None
            assert torch.isfinite(m.weight.grad).all()
            assert m.weight.grad.abs().sum() > 0


def test_layer_bits_are_the_exported_signs():
    model = binary_mlp()
    bits = layer_bits(model[1])
    assert bits.shape == (32, 64)
    assert np.array_equal(bits, model[1].quant_weight().value.detach().numpy() > 0)


@pytest.mark.parametrize("surrogate,max_depth", [("tanh", None), ("l1", None), ("l1", 2)])
def test_sgd_on_the_regularizer_alone_cuts_the_real_total_distance(surrogate, max_depth):
    model = binary_mlp()
    reg = mst_regularizer(model, max_depth=max_depth, refresh_every=25, surrogate=surrogate)
    before = real_total_distance(model)
    assert reg.total_distance() >= before  # a depth bound can only cost more than the exact MST
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        reg().backward()
        opt.step()
    after = real_total_distance(model)
    assert after < 0.8 * before, (before, after)
    stats = reg.stats()
    assert set(stats) == {"1", "3"}
    for s in stats.values():
        assert s["dense_distance"] == s["K"] * (s["channels"] - 1)
        assert s["compression"] > 0 and s["op_ratio"] > 0
        if max_depth is not None:
            assert s["depth"] <= max_depth


def test_the_tree_is_refreshed_every_refresh_every_calls():
    model = binary_mlp()
    reg = mst_regularizer(model, refresh_every=10, surrogate="l1")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    parents = []
    for _ in range(30):
        opt.zero_grad()
        reg().backward()
        opt.step()
        parents.append(reg.layers[0].parent.clone())
    assert reg.calls == 30 and reg.refreshes == 3
    assert all(torch.equal(parents[0], p) for p in parents[:10])  # fixed between refreshes
    # after a refresh the tree is the exact MST of the current signs
    reg.refresh()
    bits = layer_bits(model[1])
    tree = mst.build_tree(mst.hamming(bits), None, K=64)
    kids = np.flatnonzero(tree.parent >= 0)
    assert np.array_equal(reg.layers[0].child.numpy(), kids)
    assert np.array_equal(reg.layers[0].parent.numpy(), tree.parent[kids])
    assert reg.refreshes == 4


def test_bnn_pynq_binary_layers_are_found():
    from edgeq import zoo

    model, _ = zoo.bnn_pynq("tfc_1w1a")
    reg = mst_regularizer(model, refresh_every=5)
    assert len(reg.layers) == 4  # the three hidden QuantLinear + the output QuantLinear, all 1-bit
    loss = reg()
    loss.backward()
    assert all(layer.module.weight.grad.abs().sum() > 0 for layer in reg.layers)


def test_non_binary_model_is_refused_clearly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(qnn.QuantLinear(64, 10, bias=False, weight_quant=Int8WeightPerTensorFloat))
    with pytest.raises(EdgeqError, match="no binary layer"):
        mst_regularizer(model)
    with pytest.raises(EdgeqError, match="no binary layer"):
        mst_regularizer(torch.nn.Linear(4, 4))


@pytest.mark.parametrize("kw,needle", [({"max_depth": 0}, "depth bound must be >= 1"),
                                       ({"refresh_every": 0}, "refresh_every"),
                                       ({"surrogate": "l2"}, "unknown MST surrogate")])
def test_bad_options_are_refused(kw, needle):
    with pytest.raises(EdgeqError, match=needle):
        mst_regularizer(binary_mlp(), **kw)


def digits_bnn(hidden: int = 64, seed: int = 0):
    """For 8x8 digits: an 8-bit first layer, then binary layers (±1 weights, ±1 inputs), BatchNorm between."""
    from brevitas.quant import Int8WeightPerTensorFixedPoint, SignedBinaryActPerTensorConst

    torch.manual_seed(seed)

    def binary(cin, cout):
        return qnn.QuantLinear(cin, cout, bias=False, weight_quant=SignedBinaryWeightPerTensorConst,
                               weight_scaling_const=1.0)

    def sign():
        return qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst)

    first = qnn.QuantLinear(64, hidden, bias=False, weight_quant=Int8WeightPerTensorFixedPoint)
    return torch.nn.Sequential(torch.nn.Flatten(), first, torch.nn.BatchNorm1d(hidden), sign(),
                               binary(hidden, hidden), torch.nn.BatchNorm1d(hidden), sign(),
                               binary(hidden, 10), torch.nn.BatchNorm1d(10))


def train_digits(lam: float, epochs: int = 12, seed: int = 0):
    """(test accuracy, real total distance) of digits_bnn trained with loss + lam * regularizer (tanh), from
    ``seed`` (weights and shuffling)."""
    from edgeq import data

    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in data.digits(seed=0))
    model = digits_bnn(seed=seed)
    reg = mst_regularizer(model, refresh_every=25) if lam else None
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            if reg is not None:
                loss = loss + lam * reg()
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x_test).argmax(1) == y_test).float().mean())
    return acc, real_total_distance(model)


def test_training_on_digits_with_the_regularizer_cuts_the_distance_at_a_small_accuracy_cost():
    """Margins measured over seeds 0-7 (12 epochs, lam 0.3, one torch thread, deterministic algorithms):
    plain accuracy 0.953-0.975, distance 1404-1469; regularized distance 0.34-0.39x plain, accuracy cost
    0.3-2.8 points (the cost at lam 1.0 reached 9.7 points on seed 5, so lam 0.3 is what is claimed)."""
    acc_plain, dist_plain = train_digits(0.0)
    acc_reg, dist_reg = train_digits(0.3)
    assert acc_plain > 0.94, acc_plain
    assert dist_reg < 0.45 * dist_plain, (dist_plain, dist_reg)
    assert acc_reg > acc_plain - 0.04, (acc_plain, acc_reg)
