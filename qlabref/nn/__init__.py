"""Layers and modules (``qr.nn``) with PyTorch's names, signatures, defaults and state_dict keys.

``qr.nn.functional`` (``F``) holds the functional forms; ``Module``/``Parameter`` the containers.
"""
from __future__ import annotations

from . import functional
from .layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    make_rng,
)
from .module import Module, Parameter, StateDictError

__all__ = [
    "functional",
    "Module",
    "Parameter",
    "StateDictError",
    "Linear",
    "Conv2d",
    "BatchNorm2d",
    "ReLU",
    "AvgPool2d",
    "MaxPool2d",
    "AdaptiveAvgPool2d",
    "Flatten",
    "Identity",
    "Dropout",
    "Sequential",
    "make_rng",
]
