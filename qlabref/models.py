"""The paper's models: ``mlp()``, ``paper_cnn()``, ``resnet18(num_classes, variant)``.

Every constructor takes ``seed=`` (all weights are drawn, in construction order, from one
``np.random.default_rng(seed)``) and ``dtype=`` (float32, PyTorch's default, or float64 for exact
cross-checks). Key names follow PyTorch/torchvision so that state_dicts move both ways
(``qr.interop``).

- ``mlp()``: the paper's MLP, 784-1000-1000-10 with ReLU ("two fully connected hidden layers, each of
  which contains 1000 neurons"). Keys ``fc1``, ``fc2``, ``fc3``.
- ``paper_cnn()``: the paper's MNIST CNN. The paper says only "two 2D convolution layers. The kernel
  size of the convolution operation is 5 and the stride is 1. The average pooling operation is
  followed by each layer, the extracted feature maps use fully connected layers and the Relu
  activation function". It gives neither channel counts nor hidden sizes. **Our choice**, documented
  here and in demos/guide-layers.md: conv1 1→32 (5×5, stride 1, no padding) → ReLU → 2×2 average pool →
  conv2 32→64 (5×5) → ReLU → 2×2 average pool → flatten (64·4·4 = 1024) → fc1 1024→512 → ReLU →
  fc2 512→10. 28×28 inputs only (the head's size is fixed by them). 582,026 parameters.
- ``resnet18()``: torchvision's BasicBlock ResNet-18 with two stems: ``"cifar"`` (3×3
  stride-1 conv, no max-pool; 32×32 inputs) and ``"imagenet"`` (7×7 stride-2 conv + 3×3 stride-2
  max-pool; used at 64×64 for Tiny-ImageNet). Projection shortcuts are named ``downsample`` and the
  head ``fc`` (torchvision); ``qr.interop`` also imports kuangliu's ``shortcut``/``linear`` names.
  ``init="pytorch"`` (default) keeps PyTorch's default layer initialisation, as the widely used
  CIFAR implementation (kuangliu/pytorch-cifar) does; ``init="torchvision"`` re-draws every conv
  weight from N(0, 2/fan_out) (kaiming_normal, mode fan_out, ReLU), as torchvision's ``resnet18``
  does. BatchNorm starts at weight 1, bias 0 either way.
"""
from __future__ import annotations

import math

import numpy as np

from .nn import functional as F
from .nn.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)
from .nn.module import Module

__all__ = ["MLP", "PaperCNN", "BasicBlock", "ResNet", "mlp", "paper_cnn", "resnet18", "get", "NAMES"]


class MLP(Module):
    """784-1000-1000-10 with ReLU. Takes (N, 784) or (N, 1, 28, 28) (flattened first)."""

    def __init__(self, sizes=(784, 1000, 1000, 10), *, seed=0, dtype=np.float32):
        super().__init__()
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2:
            raise ValueError(f"MLP: need at least an input and an output size, got {sizes}")
        rng = np.random.default_rng(seed)
        self.sizes = sizes
        self.flatten = Flatten()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), 1):
            setattr(self, f"fc{i}", Linear(a, b, dtype=dtype, rng=rng))
        self.relu = ReLU()

    def forward(self, x):
        if x.ndim > 2:
            x = self.flatten(x)
        n = len(self.sizes) - 1
        for i in range(1, n + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < n:
                x = self.relu(x)
        return x


class PaperCNN(Module):
    """The paper's MNIST CNN with our documented sizes (module docstring)."""

    def __init__(self, channels=(32, 64), hidden=512, num_classes=10, *, seed=0, dtype=np.float32):
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        rng = np.random.default_rng(seed)
        self.conv1 = Conv2d(1, c1, 5, stride=1, dtype=dtype, rng=rng)
        self.pool1 = AvgPool2d(2)
        self.conv2 = Conv2d(c1, c2, 5, stride=1, dtype=dtype, rng=rng)
        self.pool2 = AvgPool2d(2)
        self.relu = ReLU()
        self.flatten = Flatten()
        self.fc1 = Linear(c2 * 4 * 4, hidden, dtype=dtype, rng=rng)
        self.fc2 = Linear(hidden, num_classes, dtype=dtype, rng=rng)

    def forward(self, x):
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1:] != (1, 28, 28):
            raise ValueError(
                f"paper_cnn: expects MNIST images of shape (N, 1, 28, 28), got {shape}; the head fc1 takes "
                f"{self.fc1.in_features} features = {self.conv2.out_channels}x4x4, which only 28x28 inputs give"
            )
        x = self.pool1(self.relu(self.conv1(x)))
        x = self.pool2(self.relu(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class BasicBlock(Module):
    """conv3×3(s) → bn1 → ReLU → conv3×3 → bn2 → + shortcut → ReLU; projection shortcut
    (1×1 conv stride s, no bias, + BN) named ``downsample`` when the shape changes."""

    expansion = 1

    def __init__(self, in_planes, planes, stride=1, *, dtype=np.float32, rng=None):
        super().__init__()
        self.conv1 = Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False, dtype=dtype, rng=rng)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.relu = ReLU()
        self.conv2 = Conv2d(planes, planes, 3, stride=1, padding=1, bias=False, dtype=dtype, rng=rng)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        if stride != 1 or in_planes != planes:
            self.downsample = Sequential(Conv2d(in_planes, planes, 1, stride=stride, bias=False, dtype=dtype, rng=rng),
                                         BatchNorm2d(planes, dtype=dtype))
        else:
            self.downsample = None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


class ResNet(Module):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a CIFAR or an ImageNet stem."""

    def __init__(self, num_classes=10, variant="cifar", *, seed=0, dtype=np.float32, init="pytorch",
                 in_channels=3):
        super().__init__()
        if variant not in ("cifar", "imagenet"):
            raise ValueError(f"resnet18: variant must be 'cifar' or 'imagenet', got {variant!r}")
        if init not in ("pytorch", "torchvision"):
            raise ValueError(f"resnet18: init must be 'pytorch' or 'torchvision', got {init!r}")
        rng = np.random.default_rng(seed)
        self.variant, self.num_classes, self.init = variant, int(num_classes), init
        if variant == "cifar":
            self.conv1 = Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False, dtype=dtype, rng=rng)
        else:
            self.conv1 = Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False, dtype=dtype, rng=rng)
        self.bn1 = BatchNorm2d(64, dtype=dtype)
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, stride=2, padding=1) if variant == "imagenet" else None
        in_planes = 64
        for i, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
            blocks = []
            for s in (stride, 1):
                blocks.append(BasicBlock(in_planes, planes, s, dtype=dtype, rng=rng))
                in_planes = planes
            setattr(self, f"layer{i}", Sequential(*blocks))
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(512, self.num_classes, dtype=dtype, rng=rng)
        if init == "torchvision":
            for m in self.modules():
                if isinstance(m, Conv2d):
                    fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                    std = math.sqrt(2.0 / fan_out)
                    m.weight.data[...] = rng.normal(0.0, std, m.weight.shape).astype(m.weight.dtype)

    def forward(self, x):
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1] != self.conv1.in_channels:
            raise ValueError(
                f"resnet18: expects images of shape (N, {self.conv1.in_channels}, H, W), got {shape}"
            )
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        x = F.flatten(self.avgpool(x), 1)
        return self.fc(x)


def mlp(sizes=(784, 1000, 1000, 10), *, seed=0, dtype=np.float32):
    """The paper's MLP: 784-1000-1000-10, ReLU (1,796,010 parameters)."""
    return MLP(sizes, seed=seed, dtype=dtype)


def paper_cnn(channels=(32, 64), hidden=512, num_classes=10, *, seed=0, dtype=np.float32):
    """The paper's MNIST CNN (two 5×5 stride-1 convs, each + ReLU + 2×2 average pool, then FC layers);
    channel and hidden sizes are our choice: 32, 64 and 512 (module docstring)."""
    return PaperCNN(channels, hidden, num_classes, seed=seed, dtype=dtype)


def resnet18(num_classes=10, variant="cifar", *, seed=0, dtype=np.float32, init="pytorch"):
    """ResNet-18; ``variant="cifar"`` (32×32, 3×3 stem, no max-pool) or ``"imagenet"`` (torchvision stem)."""
    return ResNet(num_classes, variant, seed=seed, dtype=dtype, init=init)


NAMES = ("mlp", "paper_cnn", "resnet18")


def get(name, **kw):
    """Build a model by name (``mlp``, ``paper_cnn``/``cnn``, ``resnet18``)."""
    table = {"mlp": mlp, "paper_cnn": paper_cnn, "cnn": paper_cnn, "resnet18": resnet18}
    if name not in table:
        raise ValueError(f"models.get: unknown model {name!r}; choose from {', '.join(sorted(table))}")
    return table[name](**kw)
