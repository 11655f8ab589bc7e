"""Differentiable ops: the ``Function`` classes (``core``), their table (``REGISTRY``) and the
functional spellings users call (``qr.concatenate``, ``qr.cross_entropy``, ...)."""
from __future__ import annotations

from . import core, nn_ops
from .registry import REGISTRY, register

__all__ = [
    "REGISTRY",
    "register",
    "concatenate",
    "stack",
    "maximum",
    "relu",
    "tanh",
    "sigmoid",
    "exp",
    "log",
    "sqrt",
    "log_softmax",
    "cross_entropy",
]


def concatenate(tensors, axis=0):
    """Join tensors along an existing axis (``np.concatenate``)."""
    return core.Concatenate.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join same-shaped tensors along a new axis (``np.stack``)."""
    return core.Stack.apply(*tensors, axis=axis)


def maximum(a, b):
    return core.Maximum.apply(a, b)


def relu(x):
    return core.ReLU.apply(x)


def tanh(x):
    return core.Tanh.apply(x)


def sigmoid(x):
    return core.Sigmoid.apply(x)


def exp(x):
    return core.Exp.apply(x)


def log(x):
    return core.Log.apply(x)


def sqrt(x):
    return core.Sqrt.apply(x)


def log_softmax(x, axis=-1):
    """log softmax along ``axis``, computed from max-shifted logits (stable for logits of ±1e4)."""
    return core.LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, labels, reduction="mean"):
    """Cross-entropy of ``logits`` (N, C) against integer ``labels`` (N,); mean over the batch by default."""
    return core.CrossEntropy.apply(logits, labels=labels, reduction=reduction)
