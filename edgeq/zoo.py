"""Real model definitions with seeded random weights, for tests, benchmarks and the demo.

* :func:`bnn_pynq` -- FINN's TFC/SFC/LFC/CNV networks shipped in ``brevitas_examples.bnn_pynq``,
  with seeded weights and non-trivial BatchNorm statistics (no download).
* :func:`minifloat_cnn` -- a digits CNN after minifloat or integer PTQ (:mod:`edgeq.ptq`), float32 scales.
* :func:`fixed_point_cnn` -- a small Brevitas CNN with power-of-two (fixed-point) quantizers,
  BatchNorm, ReLU, a residual add, max pooling, a truncating average pool (AveragePool + Trunc)
  and a quantized bias.
"""

from __future__ import annotations

from typing import Any

BNN_PYNQ = ("tfc_1w1a", "tfc_1w2a", "tfc_2w2a", "sfc_1w1a", "sfc_1w2a", "sfc_2w2a", "lfc_1w1a", "lfc_1w2a",
            "cnv_1w1a", "cnv_1w2a", "cnv_2w2a")


def _randomize_batchnorm(model: Any, gen: Any) -> None:
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(n, generator=gen) * 4 - 2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.25)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=gen) - 0.5)


def bnn_pynq(name: str, seed: int = 0):
    """(model, input_shape) for one of :data:`BNN_PYNQ`, in eval mode with seeded weights."""
    import torch
    from brevitas_examples.bnn_pynq.models import model_with_cfg

    if name not in BNN_PYNQ:
        raise ValueError(f"unknown bnn_pynq model {name!r}; choose from {', '.join(BNN_PYNQ)}")
    torch.manual_seed(seed)
    model, _ = model_with_cfg(name, pretrained=False)
    gen = torch.Generator().manual_seed(seed + 1)
    _randomize_batchnorm(model, gen)
    # TensorNorm (the float tail) keeps its statistics in buffers too.
    for m in model.modules():
        if type(m).__name__ == "TensorNorm":
            with torch.no_grad():
                m.running_mean.fill_(0.25)
                m.running_var.fill_(1.5)
                m.weight.fill_(0.8)
                m.bias.fill_(0.1)
    model.eval()
    shape = (1, 1, 28, 28) if "fc" in name else (1, 3, 32, 32)
    return model, shape


def fixed_point_cnn(seed: int = 0, bit_width: int = 8, scales: str = "power_of_two"):
    """(model, input_shape): a small quantized CNN for 1x8x8 inputs (e.g. scikit-learn digits).

    ``scales="power_of_two"`` uses Brevitas' fixed-point quantizers; ``scales="float"`` uses
    integer quantizers with learned float32 scales (exact equality with QONNX is then impossible:
    QONNX accumulates the rescaled values in float32).
    """
    import torch
    from brevitas import nn as qnn
    from brevitas.quant import fixed_point, scaled_int
    from brevitas.quant.scaled_int import Int32Bias

    if scales == "power_of_two":
        Int8ActPerTensorFixedPoint = fixed_point.Int8ActPerTensorFixedPoint
        Int8WeightPerTensorFixedPoint = fixed_point.Int8WeightPerTensorFixedPoint
        Uint8ActPerTensorFixedPoint = fixed_point.Uint8ActPerTensorFixedPoint
    elif scales == "float":
        Int8ActPerTensorFixedPoint = scaled_int.Int8ActPerTensorFloat
        Int8WeightPerTensorFixedPoint = scaled_int.Int8WeightPerTensorFloat
        Uint8ActPerTensorFixedPoint = scaled_int.Uint8ActPerTensorFloat
    else:
        raise ValueError(f"scales must be 'power_of_two' or 'float', got {scales!r}")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            kw = {"weight_quant": Int8WeightPerTensorFixedPoint, "weight_bit_width": bit_width}
            self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=bit_width,
                                         return_quant_tensor=True)
            self.conv1 = qnn.QuantConv2d(1, 8, 3, padding=1, bias=False, **kw)
            self.bn1 = torch.nn.BatchNorm2d(8)
            self.relu1 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bit_width)
            self.conv2 = qnn.QuantConv2d(8, 8, 3, padding=1, bias=False, **kw)
            self.bn2 = torch.nn.BatchNorm2d(8)
            self.relu2 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bit_width)
            self.pool = torch.nn.MaxPool2d(2)
            self.q_pool = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=bit_width,
                                            return_quant_tensor=True)
            self.avg = qnn.TruncAvgPool2d(2, return_quant_tensor=True)  # AveragePool + QONNX Trunc
            self.fc = qnn.QuantLinear(8 * 2 * 2, 10, bias=True, bias_quant=Int32Bias, **kw)

        def forward(self, x):
            x = self.inp(x)
            y = self.relu1(self.bn1(self.conv1(x)))
            z = self.relu2(self.bn2(self.conv2(y)))
            x = self.pool(y + z)  # residual add of two quantized tensors (scales may differ)
            x = self.avg(self.q_pool(x))
            return self.fc(torch.flatten(x, 1))

    torch.manual_seed(seed)
    model = Net()
    _randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    model.eval()
    return model, (1, 1, 8, 8)


def depthwise_cnn(seed: int = 0, bit_width: int = 8):
    """(model, input_shape): a small MobileNet-style fixed-point CNN on 3x16x16 inputs.

    A 3x3 stem, a depthwise-separable block (3x3 depthwise, BatchNorm, ReLU; 1x1 pointwise, BatchNorm) with a
    residual Add, a stride-2 depthwise conv, max pooling, and a Dense head with an Int32 bias.
    """
    import torch
    from brevitas import nn as qnn
    from brevitas.quant.fixed_point import (
        Int8ActPerTensorFixedPoint,
        Int8WeightPerTensorFixedPoint,
        Uint8ActPerTensorFixedPoint,
    )
    from brevitas.quant.scaled_int import Int32Bias

    kw = {"weight_quant": Int8WeightPerTensorFixedPoint, "weight_bit_width": bit_width, "bias": False}
    act = {"act_quant": Int8ActPerTensorFixedPoint, "bit_width": bit_width}
    relu = {"act_quant": Uint8ActPerTensorFixedPoint, "bit_width": bit_width}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(**act, return_quant_tensor=True)
            self.stem = qnn.QuantConv2d(3, 16, 3, padding=1, **kw)
            self.bn0 = torch.nn.BatchNorm2d(16)
            self.relu0 = qnn.QuantReLU(**relu)
            self.dw = qnn.QuantConv2d(16, 16, 3, padding=1, groups=16, **kw)
            self.bn1 = torch.nn.BatchNorm2d(16)
            self.relu1 = qnn.QuantReLU(**relu)
            self.pw = qnn.QuantConv2d(16, 16, 1, **kw)
            self.bn2 = torch.nn.BatchNorm2d(16)
            self.q2 = qnn.QuantIdentity(**act)
            self.q_add = qnn.QuantIdentity(**act, return_quant_tensor=True)
            self.dw2 = qnn.QuantConv2d(16, 16, 3, stride=2, padding=1, groups=16, **kw)
            self.bn3 = torch.nn.BatchNorm2d(16)
            self.relu3 = qnn.QuantReLU(**relu, return_quant_tensor=True)
            self.pool = torch.nn.MaxPool2d(2)
            self.fc = qnn.QuantLinear(16 * 4 * 4, 10, bias=True, bias_quant=Int32Bias,
                                      weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=bit_width)

        def forward(self, x):
            x = self.inp(x)
            y = self.relu0(self.bn0(self.stem(x)))
            z = self.q2(self.bn2(self.pw(self.relu1(self.bn1(self.dw(y))))))
            x = self.relu3(self.bn3(self.dw2(self.q_add(y + z))))  # residual add of two quantized tensors
            return self.fc(torch.flatten(self.pool(x), 1))

    torch.manual_seed(seed)
    model = Net()
    _randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    model.eval()
    return model, (1, 3, 16, 16)


def minifloat_mlp(seed: int = 0, power_of_two_scales: bool = True):
    """(model, input_shape): FP8 E4M3 (OCP) activations and weights, for 1x8x8 inputs.

    Exported as QONNX FloatQuant on both the input activation and the (transposed) weights.
    With ``power_of_two_scales`` the Brevitas scales are restricted to powers of two.
    """
    import torch
    from brevitas import nn as qnn
    from brevitas.core.restrict_val import RestrictValueType
    from brevitas.quant.experimental import float_quant_ocp as ocp

    act, weight = ocp.Fp8e4m3OCPActPerTensorFloat, ocp.Fp8e4m3OCPWeightPerTensorFloat
    if power_of_two_scales:
        act = act.let(restrict_scaling_type=RestrictValueType.POWER_OF_TWO)
        weight = weight.let(restrict_scaling_type=RestrictValueType.POWER_OF_TWO)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(qnn.QuantIdentity(act_quant=act), torch.nn.Flatten(),
                              qnn.QuantLinear(64, 10, bias=False, weight_quant=weight))
    return net.eval(), (1, 1, 8, 8)


def fixed_point_resblock(seed: int = 0, channels: int = 4, hw: int = 6):
    """A ResNet-style block with every tensor in fixed point: conv -> BatchNorm -> ReLU -> conv -> BatchNorm ->
    residual Add, each output quantized with a power-of-two (fixed-point) Brevitas quantizer. BatchNorm is
    Brevitas ``BatchNorm2dToQuantScaleBias``: a fixed-point scale and shift (quantized weight and bias), so it
    exports as Mul/Add by quantized constants, which edgeq ingests as exact fixed point (no float glue)."""
    import torch
    from brevitas import nn as qnn
    from brevitas.quant.fixed_point import Int8ActPerTensorFixedPoint as Act
    from brevitas.quant.fixed_point import Int8BiasPerTensorFixedPointInternalScaling as Bias
    from brevitas.quant.fixed_point import Int8WeightPerTensorFixedPoint as Weight

    class ResBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            c = channels
            self.inp = qnn.QuantIdentity(act_quant=Act)
            self.conv1 = qnn.QuantConv2d(c, c, 3, padding=1, bias=False, weight_quant=Weight, output_quant=Act)
            self.bn1 = qnn.BatchNorm2dToQuantScaleBias(c, weight_quant=Weight, bias_quant=Bias, output_quant=Act)
            self.relu = torch.nn.ReLU()
            self.conv2 = qnn.QuantConv2d(c, c, 3, padding=1, bias=False, weight_quant=Weight, output_quant=Act)
            self.bn2 = qnn.BatchNorm2dToQuantScaleBias(c, weight_quant=Weight, bias_quant=Bias, output_quant=Act)
            self.out = qnn.QuantIdentity(act_quant=Act)

        def forward(self, x):
            x = self.inp(x)
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.out(y + x)

    torch.manual_seed(seed)
    return _calibrated_block(ResBlock(), seed, channels, hw, batches=5)


def _calibrated_block(model: Any, seed: int, channels: int, hw: int, batches: int):
    """Seeded BatchNorm scales and shifts, then ``batches`` training-mode batches that set every activation
    quantizer's binary point; the model in eval mode and its input shape."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
            bn.bias.copy_(torch.rand(channels, generator=gen) - 0.5)
        model.train()
        for _ in range(batches):
            model(torch.randn(8, channels, hw, hw, generator=gen))
    return model.eval(), (1, channels, hw, hw)


def qfx_resblock(seed: int = 0, channels: int = 4, hw: int = 6, width: int = 8):
    """The QFX ResNet-style block: conv -> BatchNorm -> ReLU -> conv -> BatchNorm -> Add, every tensor
    ``width``-bit fixed point with a learned binary point (:mod:`edgeq.qfx`: QFXBatchNorm2d is a fixed-point
    scale and shift, QFXAdd a fixed-point residual add). Export it with :func:`edgeq.qfx.export`."""
    import torch
    from brevitas import nn as qnn

    from edgeq import qfx

    class QFXResBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            c = channels
            self.inp = qnn.QuantIdentity(act_quant=qfx.act_quant(width), return_quant_tensor=True)
            self.conv1 = qnn.QuantConv2d(c, c, 3, padding=1, bias=False, weight_quant=qfx.weight_quant(width),
                                         output_quant=qfx.act_quant(width), return_quant_tensor=True)
            self.bn1 = qfx.QFXBatchNorm2d(c, width)
            self.relu = qnn.QuantReLU(act_quant=None, return_quant_tensor=True)
            self.conv2 = qnn.QuantConv2d(c, c, 3, padding=1, bias=False, weight_quant=qfx.weight_quant(width),
                                         output_quant=qfx.act_quant(width), return_quant_tensor=True)
            self.bn2 = qfx.QFXBatchNorm2d(c, width)
            self.add = qfx.QFXAdd(width, return_quant_tensor=False)

        def forward(self, x):
            x = self.inp(x)
            y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.add(y, x)

    torch.manual_seed(seed)
    return _calibrated_block(QFXResBlock(), seed, channels, hw, batches=3)


def digits_cnn():
    """(float model, example input): conv 1->16, conv 16->32 (each with BatchNorm, ReLU and 2x2 max pooling), then
    linear 128->10, for scikit-learn's 8x8 digits (the model of ``bench/minifloat_dse.py``)."""
    import torch
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 10),
    ), torch.zeros(1, 1, 8, 8)


def train(net: Any, x: Any, y: Any, epochs: int, seed: int | None = None, lr: float = 3e-3, batch: int = 64) -> Any:
    """Train ``net`` with Adam on (x, y) numpy arrays (cross entropy; shuffles from torch's generator, reseeded
    with ``seed`` when given); returns it in eval mode."""
    import torch
    from torch import nn

    if seed is not None:
        torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def minifloat_cnn(weights: str = "e2m1", acts: str = "e4m3", epochs: int = 3, seed: int = 0, calib_images: int = 512):
    """(model, example input): :func:`digits_cnn` trained on digits for ``epochs``, then post-training quantized by
    :func:`edgeq.ptq.quantize` to ``weights`` x ``acts`` (e.g. "e2m1" x "e4m3", or mixed "int8" x "e4m3") with
    Brevitas' learned float32 scales (per-channel weights, BatchNorm merged, bias correction)."""
    import torch

    from edgeq import ptq
    from edgeq.data import digits

    x_tr, y_tr, _, _ = digits()
    torch.manual_seed(seed)
    net, example = digits_cnn()
    train(net, x_tr, y_tr, epochs)
    calib = [torch.from_numpy(x_tr[i:i + 64]) for i in range(0, calib_images, 64)]
    return ptq.quantize(net, calib, weights=weights, acts=acts), example
