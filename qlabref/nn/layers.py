"""Layers with PyTorch's signatures, defaults, parameter names and initialisation.

Initialisation (torch's ``reset_parameters``): PyTorch's default for ``Linear`` and ``Conv2d`` is
kaiming_uniform with a = √5, which is exactly U(−1/√fan_in, 1/√fan_in) for the weight, and the bias
is drawn from the same U(−1/√fan_in, 1/√fan_in); fan_in = in_features or in_channels·kH·kW.
NumPy cannot reproduce PyTorch's random stream, so the draws come from a seeded ``np.random.Generator``
(``rng=`` or ``seed=``): same seed, same weights; cross-checks import weights instead.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import is_state_update_enabled
from ..ops.nn_ops import pair
from . import functional as F
from .module import Module, Parameter

__all__ = [
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
    "uniform_",
]


def make_rng(rng=None, seed=None):
    """The Generator a layer draws from: ``rng`` if given, else ``default_rng(seed)`` (seed None = fresh)."""
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return rng
    return np.random.default_rng(seed)


def _dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def uniform_(rng, shape, bound, dtype):
    """U(−bound, bound) of ``shape``, drawn in float64 then cast (same draws for both dtypes)."""
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _check_dtype(layer, x, dtype):
    """A float32 layer fed float64 (or the reverse) would silently compute in the wider type; PyTorch
    refuses, and so do we, naming the layer and both dtypes."""
    xd = np.dtype(x.dtype)
    if xd != dtype:
        raise ValueError(
            f"{layer.path()} ({type(layer).__name__}): input has dtype {xd}, the layer's parameters are {dtype}; "
            f"convert the input (x.astype(np.{dtype})) or the model (model.to(np.{xd}))"
        )


def _located(layer, fn, *args, **kwargs):
    """Call a functional op; a ValueError it raises is re-raised with the layer's name in front."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise ValueError(f"{layer.path()} ({type(layer).__name__}): {e}") from None


def _positive_int(value, name, owner):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


class Linear(Module):
    """y = x Wᵀ + b; weight (out_features, in_features), bias (out_features,)."""

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None, seed=None):
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features", "Linear")
        self.out_features = _positive_int(out_features, "out_features", "Linear")
        dt, g = _dtype(dtype), make_rng(rng, seed)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(uniform_(g, (self.out_features, self.in_features), bound, dt))
        self.bias = Parameter(uniform_(g, (self.out_features,), bound, dt)) if bias else None

    def forward(self, x):
        shape = tuple(x.shape)
        if len(shape) < 1 or shape[-1] != self.in_features:
            raise ValueError(
                f"{self.path()} (Linear {self.in_features}->{self.out_features}): input has "
                f"{shape[-1] if shape else 0} features (input shape {shape}), expected {self.in_features}"
            )
        _check_dtype(self, x, self.weight.dtype)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution; weight (out_channels, in_channels, kH, kW), bias (out_channels,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, *,
                 dtype=np.float32, rng=None, seed=None):
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels", "Conv2d")
        self.out_channels = _positive_int(out_channels, "out_channels", "Conv2d")
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = pair(stride, "stride", "Conv2d")
        self.padding = pair(padding, "padding", "Conv2d", minimum=0)
        dt, g = _dtype(dtype), make_rng(rng, seed)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Parameter(uniform_(g, (self.out_channels, self.in_channels, *self.kernel_size), bound, dt))
        self.bias = Parameter(uniform_(g, (self.out_channels,), bound, dt)) if bias else None

    def forward(self, x):
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1] != self.in_channels:
            got = f"{shape[1]} channels" if len(shape) == 4 else f"a {len(shape)}-D input"
            raise ValueError(
                f"{self.path()} (Conv2d): weight has {self.in_channels} input channels, got {got} "
                f"(input shape {shape}; expected (N, {self.in_channels}, H, W))"
            )
        _check_dtype(self, x, self.weight.dtype)
        return _located(self, F.conv2d, x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}")


class BatchNorm2d(Module):
    """Batch normalisation over the channels of an NCHW input (PyTorch's ``BatchNorm2d``).

    Parameters ``weight`` (1) and ``bias`` (0); buffers ``running_mean`` (0), ``running_var`` (1) and
    ``num_batches_tracked`` (int64 0-d). Training mode normalises with the biased batch variance and
    updates the running statistics with the unbiased one — except inside ``qr.no_state_update()``
    (QLAB's probe), where it still normalises with batch statistics but changes nothing.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 dtype=np.float32):
        super().__init__()
        self.num_features = _positive_int(num_features, "num_features", "BatchNorm2d")
        self.eps, self.momentum = float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        dt = _dtype(dtype)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_features, dtype=dt))
            self.bias = Parameter(np.zeros(self.num_features, dtype=dt))
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(self.num_features, dtype=dt))
            self.register_buffer("running_var", np.ones(self.num_features, dtype=dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def forward(self, x):
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1] != self.num_features:
            raise ValueError(
                f"{self.path()} (BatchNorm2d): expected input (N, {self.num_features}, H, W), got shape {shape}"
            )
        if self.affine:
            _check_dtype(self, x, self.weight.dtype)
        elif self.track_running_stats:
            _check_dtype(self, x, self._buffers["running_mean"].dtype)
        use_batch = self.training or not self.track_running_stats
        nbt = None
        if self.training and self.track_running_stats and is_state_update_enabled():
            self.num_batches_tracked = self._buffers["num_batches_tracked"] + 1
            nbt = int(self._buffers["num_batches_tracked"])
        # None when track_running_stats=False: then batch statistics are used in eval mode too
        rm, rv = self._buffers.get("running_mean"), self._buffers.get("running_var")
        return _located(self, F.batch_norm, x, rm, rv, self.weight if self.affine else None,
                        self.bias if self.affine else None, training=use_batch, momentum=self.momentum, eps=self.eps,
                        num_batches_tracked=nbt)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad

    def forward(self, x):
        return _located(self, F.avg_pool2d, x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return _located(self, F.max_pool2d, x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return _located(self, F.adaptive_avg_pool2d, x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return _located(self, F.flatten, x, self.start_dim, self.end_dim)


class Dropout(Module):
    """PyTorch's ``Dropout(p)``: in training mode each element is zeroed with probability ``p`` and the
    others are scaled by 1/(1 − p); identity in eval mode.

    The mask comes from an explicit NumPy Generator (``rng=`` or ``seed=``; PyTorch's random stream
    cannot be reproduced, so the masks differ from torch's for the same seed). Inside
    ``qr.no_state_update()`` -- an optimizer's probe forward -- the mask of the last training forward
    is reused and the generator does not advance: the probe g(ᾱ) sees the same mask as the forward
    pass, as ``qlabref.torch`` does by replaying torch's RNG state. ``keep_sampler``: optional callable
    ``(shape, p) -> bool array`` that replaces the generator (``qr.crosscheck`` uses it to draw torch's
    masks). The generator's state is not part of ``state_dict()``.
    """

    def __init__(self, p=0.5, *, rng=None, seed=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = make_rng(rng, seed)
        self.keep_sampler = None
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if is_state_update_enabled():
            self._mask = F.dropout_mask(x.shape, self.p, x.dtype, self.keep_sampler or self.rng)
        elif self._mask is None or self._mask.shape != tuple(x.shape) or self._mask.dtype != x.dtype:
            raise RuntimeError(
                f"{self.path()} (Dropout): a probe forward (inside qr.no_state_update()) reuses the mask of the last "
                f"training forward, but there is none for an input of shape {tuple(x.shape)}; run the forward pass "
                "first (an optimizer's closure does)")
        return F.dropout(x, self.p, True, mask=self._mask)

    def extra_repr(self):
        return f"p={self.p}"


class Identity(Module):
    def forward(self, x):
        return x


class Sequential(Module):
    """Children named "0", "1", ... (PyTorch's keys), applied in order."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {i} is a {type(m).__name__}, not a Module")
            setattr(self, str(i), m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):
            return Sequential(*mods[i])
        return mods[i]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x
