"""Optimizers: QLABGrad (Algorithms 1 and 2 of the paper), QLAB on other descent directions, and the
competing schemes of the paper's Table 1, all behind one torch-like ``Optimizer`` shell."""
from __future__ import annotations

from .optimizer import NonFiniteLossError, Optimizer
from .registry import get, names, register_optimizer

__all__ = ["Optimizer", "NonFiniteLossError", "get", "names", "register_optimizer"]
