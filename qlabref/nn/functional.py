"""The functional layer API (``import qlabref.nn.functional as F``), PyTorch's signatures.

Each function is a thin, documented call into a registered op (``qlabref/ops``); the one with state,
``batch_norm``, updates the running statistics here, outside the differentiable op, and only when
``qr.no_state_update()`` is not active (QLAB's probe forward runs inside it).
"""
from __future__ import annotations

import numpy as np

from ..autograd import is_state_update_enabled
from ..ops import core, nn_ops
from ..ops import cross_entropy as _cross_entropy
from ..ops import log_softmax as _log_softmax
from ..tensor import Tensor, as_tensor

__all__ = [
    "linear",
    "conv2d",
    "avg_pool2d",
    "max_pool2d",
    "adaptive_avg_pool2d",
    "batch_norm",
    "relu",
    "flatten",
    "dropout",
    "dropout_mask",
    "log_softmax",
    "cross_entropy",
]


def linear(x, weight, bias=None):
    """y = x Wᵀ + b; x (..., in), weight (out, in), bias (out,) or None."""
    args = (x, weight) if bias is None else (x, weight, bias)
    return nn_ops.Linear.apply(*args)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D convolution (cross-correlation) of an NCHW input with an (out, in, kH, kW) weight."""
    args = (x, weight) if bias is None else (x, weight, bias)
    return nn_ops.Conv2d.apply(*args, stride=stride, padding=padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Average pooling; ``stride`` defaults to ``kernel_size`` (PyTorch)."""
    return nn_ops.AvgPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding,
                                  count_include_pad=count_include_pad)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling; ``stride`` defaults to ``kernel_size``; padding counts as −∞ (PyTorch)."""
    return nn_ops.MaxPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding)


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling to ``output_size`` (int or pair), PyTorch's cell boundaries."""
    return nn_ops.AdaptiveAvgPool2d.apply(x, output_size=output_size)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               num_batches_tracked=None):
    """Batch normalisation over axis 1 of an (N, C) or (N, C, H, W) input (PyTorch's ``F.batch_norm``).

    Training (``training=True``): normalise with the batch mean and the **biased** batch variance; then,
    unless inside ``qr.no_state_update()``, update the running statistics in place with the
    **unbiased** variance: running ← (1 − momentum)·running + momentum·batch_stat, var × n/(n − 1),
    n = N·H·W. ``momentum=None`` gives PyTorch's cumulative average (factor 1/num_batches_tracked;
    pass ``num_batches_tracked`` already incremented). ``running_mean``/``running_var`` may be None
    (``track_running_stats=False``). Eval: normalise with the running statistics.
    """
    xt = as_tensor(x)
    if xt.ndim not in (2, 4):
        raise ValueError(f"batch_norm: input must be (N, C) or (N, C, H, W), got shape {xt.shape}")
    c = xt.shape[1]
    for name, arr in (("running_mean", running_mean), ("running_var", running_var)):
        if arr is not None and np.shape(arr) != (c,):
            raise ValueError(f"batch_norm: {name} has shape {np.shape(arr)}, input {xt.shape} has {c} channels")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"batch_norm: {name} has shape {tuple(t.shape)}, input {xt.shape} has {c} channels")
    if (weight is None) != (bias is None):
        raise ValueError("batch_norm: pass both weight and bias, or neither")
    if training:
        mean, var, n = nn_ops.batch_norm_statistics(xt.data)
        if n <= 1:
            raise ValueError(
                f"batch_norm: expected more than 1 value per channel when training, got input shape {xt.shape}"
            )
        if running_mean is not None and is_state_update_enabled():
            factor = momentum if momentum is not None else 1.0 / float(num_batches_tracked)
            unbiased = var * (n / (n - 1))
            running_mean *= 1 - factor
            running_mean += factor * mean.astype(running_mean.dtype, copy=False)
            running_var *= 1 - factor
            running_var += factor * unbiased.astype(running_var.dtype, copy=False)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: eval mode needs running_mean and running_var")
        if getattr(type(xt.data), "__qlabref_device__", False):  # GPU-resident: stay there
            mean, var = running_mean.astype(xt.dtype, copy=False), running_var.astype(xt.dtype, copy=False)
        else:
            mean = np.asarray(running_mean, dtype=xt.dtype)
            var = np.asarray(running_var, dtype=xt.dtype)
    affine = () if weight is None else (weight, bias)
    return nn_ops.BatchNorm.apply(xt, *affine, mean=mean, var=var, eps=eps, training=bool(training))


def relu(x):
    return core.ReLU.apply(x)


def flatten(x, start_dim=1, end_dim=-1):
    """Merge axes ``start_dim..end_dim`` into one (PyTorch's ``torch.flatten``)."""
    xt = as_tensor(x)
    nd = max(xt.ndim, 1)
    for name, dim in (("start_dim", start_dim), ("end_dim", end_dim)):
        if not -nd <= dim < nd:
            raise ValueError(f"flatten: {name} {dim} is out of range for an input of shape {xt.shape}")
    s, e = start_dim % nd, end_dim % nd
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {xt.shape}")
    shape = xt.shape[:s] + (int(np.prod(xt.shape[s:e + 1])),) + xt.shape[e + 1:]
    return xt.reshape(shape)


def dropout_mask(shape, p, dtype, rng):
    """PyTorch's dropout mask: 1/(1 − p) where an element is kept (probability 1 − p), 0 elsewhere,
    in ``dtype`` (``keep / (1 − p)`` rounded once, as torch's ``noise.div_(1 − p)``). ``rng``: a NumPy
    Generator (keep = ``rng.random(shape) >= p``) or a callable ``(shape, p) -> bool array of keeps``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p!r}")
    dt = np.dtype(dtype)
    if p == 1.0:
        return np.zeros(shape, dtype=dt)
    keep = rng(tuple(shape), p) if callable(rng) else rng.random(shape) >= p
    keep = np.asarray(keep)
    if keep.shape != tuple(shape):
        raise ValueError(f"dropout: the mask sampler returned shape {keep.shape}, expected {tuple(shape)}")
    return keep.astype(dt) / dt.type(1.0 - p)


def dropout(x, p=0.5, training=True, rng=None, mask=None):
    """Dropout with an explicit source of randomness: ``x · mask`` with ``mask = dropout_mask(x.shape,
    p, x.dtype, rng)`` unless ``mask`` is given (to replay one). Identity when not ``training`` or
    ``p == 0``. The gradient is ``mask`` (the product's backward), so replaying the mask replays the
    function exactly."""
    xt = as_tensor(x)
    if not training or p == 0:
        return xt
    if mask is None:
        if rng is None:
            raise ValueError("dropout: pass rng (a numpy Generator) or mask; qlabref has no global RNG")
        mask = dropout_mask(xt.shape, p, xt.dtype, rng)
    mask = np.asarray(mask)
    if mask.shape != tuple(xt.shape):
        raise ValueError(f"dropout: mask has shape {mask.shape}, input has {tuple(xt.shape)}")
    return xt * Tensor(mask.astype(xt.dtype, copy=False))


def log_softmax(x, axis=-1):
    return _log_softmax(x, axis=axis)


def cross_entropy(logits, labels, reduction="mean"):
    """Mean (default) or sum over the batch of −log softmax(logits)[label]; ``labels`` an int array."""
    if isinstance(labels, Tensor):
        labels = labels.data
    return _cross_entropy(logits, labels, reduction=reduction)
