"""Differentiable layer ops: ``linear``, ``conv2d``, ``max_pool2d``, ``avg_pool2d``,
``adaptive_avg_pool2d``, ``batch_norm``. Same conventions as ``core.py``: forward and backward on raw
ndarrays, registered in the one table (``REGISTRY``) that the gradient tests walk.

Layouts and semantics are PyTorch's (``torch.nn`` documentation): images are NCHW, a conv weight is
(out, in, kH, kW), a linear weight is (out, in) and y = x Wᵀ + b.

How the convolution is vectorised (no Python loop over pixels): **im2col**. A strided *view* of the
padded input, shape (N, C, kH, kW, OH, OW), lists every receptive field without copying; it is copied
into the matrix ``cols`` (N·OH·OW, C·kH·kW), one kernel offset at a time (``_im2col``), and the
convolution is one matrix product ``cols @ W.reshape(out, -1).T``. The backward pass is two more
matrix products; the input gradient is scattered back with **col2im**, a loop over the kH·kW kernel
offsets (25 for a 5×5 kernel), each iteration one vectorised strided add over all pixels at once.
Pooling uses the same strided views. The three gathers/products of a convolution (im2col, the
matrix products, col2im) and ``linear``'s products go through the backend in force
(``qlabref.backends``): the functions below are the ``"numpy"`` backend, the oracle; ``"numba"`` runs
Numba kernels for im2col/col2im (the same numbers) and ``"cuda"`` the CUDA kernels.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import backends
from ..autograd import Function
from .registry import register

__all__ = [
    "Linear",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "BatchNorm",
    "pair",
    "conv_output_size",
]


def pair(value, name, owner, minimum=1):
    """``k`` or ``(kh, kw)`` → ``(kh, kw)`` of ints ≥ ``minimum``; a clear error otherwise."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{owner}: {name} must be an int or a pair of ints, got {value!r}")
        out = tuple(value)
    else:
        out = (value, value)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"{owner}: {name} must be an int >= {minimum} (or a pair of them), got {value!r}")
    return int(out[0]), int(out[1])


def conv_output_size(size, kernel, stride, padding):
    """⌊(size + 2·padding − kernel) / stride⌋ + 1 (PyTorch's formula without dilation/ceil_mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def _check_image(name, x, channels=None, what="input"):
    if x.ndim != 4:
        raise ValueError(f"{name}: {what} must be 4-D (N, C, H, W), got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: weight has {channels} input channels, {what} has {x.shape[1]} (input shape {x.shape})")


def _out_hw(name, x_shape, k, s, p):
    oh = conv_output_size(x_shape[2], k[0], s[0], p[0])
    ow = conv_output_size(x_shape[3], k[1], s[1], p[1])
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{name}: input of spatial size {x_shape[2]}x{x_shape[3]} (padding {p}) is smaller than the "
            f"kernel {k[0]}x{k[1]}"
        )
    return oh, ow


def _pad(x, p, value=0.0):
    if p == (0, 0):
        return x
    return np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=value)


def _windows(xp, k, s, out_hw):
    """Read-only strided view (N, C, kH, kW, OH, OW): element [n, c, i, j, a, b] is
    xp[n, c, a·sH + i, b·sW + j]. No copy."""
    n, c = xp.shape[:2]
    sn, sc, sh, sw = xp.strides
    return as_strided(
        xp,
        shape=(n, c, k[0], k[1], out_hw[0], out_hw[1]),
        strides=(sn, sc, sh, sw, sh * s[0], sw * s[1]),
        writeable=False,
    )


def _window_rows(xp, k, s, out_hw):
    """(N, C, OH, OW, kH·kW): each pooling window's elements in row-major order (a copy)."""
    n, c = xp.shape[:2]
    return _windows(xp, k, s, out_hw).transpose(0, 1, 4, 5, 2, 3).reshape(n, c, *out_hw, -1)


def _offset_slices(i, j, s, out_hw):
    """The slice of the padded input touched by kernel offset (i, j) at every output position."""
    return (slice(None), slice(None), slice(i, i + s[0] * (out_hw[0] - 1) + 1, s[0]),
            slice(j, j + s[1] * (out_hw[1] - 1) + 1, s[1]))


def _im2col(xp, k, s, out_hw):
    """The matrix ``cols`` (N·OH·OW, C·kH·kW) of the receptive fields of the padded input ``xp``:
    row (n, a, b), column (c, i, j) holds xp[n, c, a·sH + i, b·sW + j]. Equal to
    ``_windows(xp, ...).transpose(0, 4, 5, 1, 2, 3).reshape(N·OH·OW, -1)`` (a pure copy, so the same
    numbers), but filled by kH·kW strided copies of (N, OH, OW, C) blocks, one per kernel offset,
    instead of one copy whose innermost run is only kW values long: 2-4x faster for ResNet-18's 3×3
    convolutions, as fast for paper_cnn's 5×5 ones."""
    n, c = xp.shape[:2]
    cols = np.empty((n, out_hw[0], out_hw[1], c, k[0], k[1]), dtype=xp.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            _, _, rows, columns = _offset_slices(i, j, s, out_hw)
            cols[:, :, :, :, i, j] = xp[:, :, rows, columns].transpose(0, 2, 3, 1)
    return cols.reshape(n * out_hw[0] * out_hw[1], -1)


def _col2im(gcols, xp_shape, k, s, p, out_hw, dtype):
    """Adjoint of im2col. ``gcols``: (N, OH, OW, C, kH, kW). Returns the input gradient (N, C, H, W),
    padding cropped, contiguous.

    The sum runs in NHWC order: each kernel offset's strided add then moves runs of C contiguous
    values and reads ``gcols`` along its own (OH, OW, C) order, instead of writing rows of only OW
    values (4 in ResNet-18's last stage) while gathering ``gcols`` at a stride of C·kH·kW. Every
    element receives the same additions in the same order as in an NCHW loop (bitwise equal)."""
    n, c = xp_shape[0], xp_shape[1]
    hp, wp = xp_shape[2], xp_shape[3]
    gxp = np.zeros((n, hp, wp, c), dtype=dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            _, _, rows, cols = _offset_slices(i, j, s, out_hw)
            gxp[:, rows, cols, :] += gcols[:, :, :, :, i, j]
    return np.ascontiguousarray(gxp[:, p[0]:hp - p[0], p[1]:wp - p[1], :].transpose(0, 3, 1, 2))


def _crop(gxp, p):
    if p == (0, 0):
        return gxp
    return gxp[:, :, p[0]:gxp.shape[2] - p[0], p[1]:gxp.shape[3] - p[1]]


# ----------------------------------------------------------------------------------------- linear
@register("linear")
class Linear(Function):
    """y = x Wᵀ + b (PyTorch's ``F.linear``); x is (..., in), W is (out, in), b is (out,) or absent."""

    @staticmethod
    def forward(ctx, x, w, *bias):
        if w.ndim != 2:
            raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {w.shape}")
        if x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(
                f"linear: input has {x.shape[-1] if x.ndim else 0} features (input shape {x.shape}), "
                f"weight expects {w.shape[1]} (weight shape {w.shape})"
            )
        if bias and bias[0].shape != (w.shape[0],):
            raise ValueError(f"linear: bias has shape {bias[0].shape}, weight {w.shape} needs ({w.shape[0]},)")
        ctx.save(x, w)
        be = backends.current()
        out = be.matmul(x.reshape(-1, x.shape[-1]), w.T).reshape(*x.shape[:-1], w.shape[0])
        if bias:
            out += bias[0]
        return out

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved
        need = ctx.needs_input_grad
        be = backends.current()
        g2 = g.reshape(-1, g.shape[-1])
        gx = be.matmul(g2, w).reshape(*g.shape[:-1], w.shape[1]) if need[0] else None
        gw = be.matmul(g2.T, x.reshape(-1, x.shape[-1])) if need[1] else None
        if len(need) == 3:
            return gx, gw, (g2.sum(axis=0) if need[2] else None)
        return gx, gw


# ----------------------------------------------------------------------------------------- conv2d
@register("conv2d")
class Conv2d(Function):
    """2-D cross-correlation, PyTorch's ``F.conv2d`` (groups = dilation = 1), by im2col.

    x: (N, C, H, W); w: (O, C, kH, kW); optional bias (O,). Output (N, O, OH, OW) with
    OH = ⌊(H + 2p − kH)/s⌋ + 1.
    """

    @staticmethod
    def forward(ctx, x, w, *bias, stride=1, padding=0):
        s = pair(stride, "stride", "conv2d")
        p = pair(padding, "padding", "conv2d", minimum=0)
        if w.ndim != 4:
            raise ValueError(f"conv2d: weight must be 4-D (out, in, kH, kW), got shape {w.shape}")
        _check_image("conv2d", x, channels=w.shape[1])
        if bias and bias[0].shape != (w.shape[0],):
            raise ValueError(f"conv2d: bias has shape {bias[0].shape}, weight {w.shape} needs ({w.shape[0]},)")
        k = w.shape[2:]
        oh, ow = _out_hw("conv2d", x.shape, k, s, p)
        n, o = x.shape[0], w.shape[0]
        be = backends.current()
        cols = be.im2col(x, k, s, p, (oh, ow))  # (N·OH·OW, C·kH·kW), the one big copy of the forward pass
        w2 = w.reshape(o, -1)
        out = be.matmul(cols, w2.T)  # (N·OH·OW, O)
        if bias:
            out += bias[0]
        ctx.save(cols, w)
        ctx.geom = (x.shape, k, s, p, (oh, ow))
        return np.ascontiguousarray(out.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))

    @staticmethod
    def backward(ctx, g):
        cols, w = ctx.saved
        x_shape, k, s, p, out_hw = ctx.geom
        need = ctx.needs_input_grad
        be = backends.current()
        o = g.shape[1]
        g2 = g.transpose(0, 2, 3, 1).reshape(-1, o)  # (N·OH·OW, O)
        gx = gw = gb = None
        if need[1]:
            gw = be.matmul(g2.T, cols).reshape(w.shape)
        if need[0]:
            gcols = be.matmul(g2, w.reshape(o, -1))  # (N·OH·OW, C·kH·kW)
            gx = be.col2im(gcols, x_shape, k, s, p, out_hw)
        if len(need) == 3:
            gb = g.sum(axis=(0, 2, 3)) if need[2] else None
            return gx, gw, gb
        return gx, gw


# ----------------------------------------------------------------------------------------- pools
def _pool_geometry(name, x, kernel_size, stride, padding):
    _check_image(name, x)
    k = pair(kernel_size, "kernel_size", name)
    s = k if stride is None else pair(stride, "stride", name)
    p = pair(padding, "padding", name, minimum=0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{name}: padding {p} must be at most half the kernel size {k} (PyTorch's rule)")
    return k, s, p, _out_hw(name, x.shape, k, s, p)


@register("max_pool2d")
class MaxPool2d(Function):
    """Max over each kH×kW window (PyTorch's ``F.max_pool2d``; padding counts as −∞). The gradient
    goes to the first maximal element of each window in row-major order, as PyTorch's CPU kernel."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride=None, padding=0):
        k, s, p, out_hw = _pool_geometry("max_pool2d", x, kernel_size, stride, padding)
        xp = _pad(x, p, value=-np.inf)
        win = _window_rows(xp, k, s, out_hw)
        idx = np.argmax(win, axis=-1)  # first maximum (NaN counts as maximal, so NaN propagates)
        out = np.take_along_axis(win, idx[..., None], axis=-1)[..., 0]
        if p != (0, 0) and np.isneginf(out).any():
            # A window whose real elements are all −inf ties with the −inf padding; PyTorch scans only
            # real elements, so its index is the window's first non-padding position.
            real = _pad(np.ones((1, 1, *x.shape[2:]), dtype=bool), p, value=False)
            real_win = _window_rows(real, k, s, out_hw)
            first_real = np.broadcast_to(np.argmax(real_win, axis=-1), idx.shape)
            idx = np.where(np.isneginf(out), first_real, idx)
        ctx.save(idx)
        ctx.geom = (xp.shape, k, s, p, out_hw)
        return out

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved
        xp_shape, k, s, p, out_hw = ctx.geom
        gxp = np.zeros(xp_shape, dtype=g.dtype)
        for i in range(k[0]):
            for j in range(k[1]):
                gxp[_offset_slices(i, j, s, out_hw)] += np.where(idx == i * k[1] + j, g, 0)
        return (_crop(gxp, p),)


@register("avg_pool2d")
class AvgPool2d(Function):
    """Mean over each kH×kW window (PyTorch's ``F.avg_pool2d``, ceil_mode=False). Zero padding; with
    ``count_include_pad=True`` (PyTorch's default) every window divides by kH·kW, otherwise by the
    number of non-padding elements in it."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride=None, padding=0, count_include_pad=True):
        k, s, p, out_hw = _pool_geometry("avg_pool2d", x, kernel_size, stride, padding)
        xp = _pad(x, p)
        total = np.zeros((*x.shape[:2], *out_hw), dtype=x.dtype)
        for i in range(k[0]):
            for j in range(k[1]):
                total += xp[_offset_slices(i, j, s, out_hw)]
        if count_include_pad or p == (0, 0):
            divisor = np.asarray(k[0] * k[1], dtype=x.dtype)
        else:
            ones = _pad(np.ones((1, 1, *x.shape[2:]), dtype=x.dtype), p)
            divisor = np.zeros((1, 1, *out_hw), dtype=x.dtype)
            for i in range(k[0]):
                for j in range(k[1]):
                    divisor += ones[_offset_slices(i, j, s, out_hw)]
        ctx.divisor = divisor
        ctx.geom = (xp.shape, k, s, p, out_hw)
        return total / divisor

    @staticmethod
    def backward(ctx, g):
        xp_shape, k, s, p, out_hw = ctx.geom
        gd = g / ctx.divisor
        gxp = np.zeros(xp_shape, dtype=g.dtype)
        for i in range(k[0]):
            for j in range(k[1]):
                gxp[_offset_slices(i, j, s, out_hw)] += gd
        return (_crop(gxp, p),)


def _adaptive_matrix(size, out, dtype):
    """(out, size) averaging matrix of PyTorch's adaptive pooling: row i averages
    [⌊i·size/out⌋, ⌈(i+1)·size/out⌉)."""
    m = np.zeros((out, size), dtype=dtype)
    for i in range(out):  # one row per *output* cell along one axis (1 for ResNet's head)
        start = (i * size) // out
        end = -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


@register("adaptive_avg_pool2d")
class AdaptiveAvgPool2d(Function):
    """PyTorch's ``F.adaptive_avg_pool2d``: output (N, C, oh, ow); cell (i, j) averages rows
    [⌊iH/oh⌋, ⌈(i+1)H/oh⌉) × columns [⌊jW/ow⌋, ⌈(j+1)W/ow⌉). Written as out = Pₕ x Pᵥᵀ with two small
    averaging matrices, so any output size is one vectorised product."""

    @staticmethod
    def forward(ctx, x, output_size):
        _check_image("adaptive_avg_pool2d", x)
        oh, ow = pair(output_size, "output_size", "adaptive_avg_pool2d")
        if (oh, ow) == (1, 1):
            ctx.mode = "global"
            ctx.hw = x.shape[2:]
            return x.mean(axis=(2, 3), keepdims=True)
        ph = _adaptive_matrix(x.shape[2], oh, x.dtype)
        pw = _adaptive_matrix(x.shape[3], ow, x.dtype)
        ctx.mode = "matrix"
        ctx.save(ph, pw)
        return np.matmul(np.matmul(ph, x), pw.T)

    @staticmethod
    def backward(ctx, g):
        if ctx.mode == "global":
            h, w = ctx.hw
            return (np.broadcast_to(g / (h * w), (*g.shape[:2], h, w)),)
        ph, pw = ctx.saved
        return (np.matmul(np.matmul(ph.T, g), pw),)


# ----------------------------------------------------------------------------------------- batch norm
@register("batch_norm")
class BatchNorm(Function):
    """y = (x − μ)/√(σ² + ε)·γ + β per channel (axis 1) of an (N, C) or (N, C, H, W) input.

    ``mean`` and ``var`` are passed in by ``F.batch_norm``: the *biased* batch statistics in training
    mode (and then the backward pass differentiates through them), the running statistics in eval
    mode (constants). γ, β are optional (``affine=False``).
    """

    @staticmethod
    def forward(ctx, x, *affine, mean, var, eps, training):
        c = x.shape[1]
        bshape = (1, c) + (1,) * (x.ndim - 2)
        invstd = 1.0 / np.sqrt(var.reshape(bshape) + eps)
        xhat = (x - mean.reshape(bshape)) * invstd
        out = xhat
        if affine:
            out = xhat * affine[0].reshape(bshape) + affine[1].reshape(bshape)
        ctx.save(xhat, invstd, affine[0] if affine else None)
        ctx.training = training
        ctx.axes = (0,) + tuple(range(2, x.ndim))
        return out.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        xhat, invstd, gamma = ctx.saved
        axes, need = ctx.axes, ctx.needs_input_grad
        bshape = invstd.shape
        dxhat = g * gamma.reshape(bshape) if gamma is not None else g
        gx = None
        if need[0]:
            if ctx.training:
                # μ and σ² depend on x: dx = (1/σ̂)·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), σ̂ = √(σ² + ε)
                m1 = _acc_mean(dxhat, axes).astype(g.dtype, copy=False)
                m2 = _acc_mean(dxhat * xhat, axes).astype(g.dtype, copy=False)
                gx = (dxhat - m1 - xhat * m2) * invstd
            else:
                gx = dxhat * invstd
        if gamma is None:
            return (gx,)
        # (copy=False: in float64 the fresh sums themselves, which backward adopts as the .grad)
        gw = (g * xhat).sum(axis=axes, dtype=np.float64).astype(g.dtype, copy=False) if need[1] else None
        gb = g.sum(axis=axes, dtype=np.float64).astype(g.dtype, copy=False) if need[2] else None
        return gx, gw, gb


def _acc_mean(a, axes):
    """Mean over ``axes`` (keepdims) accumulated in float64, as PyTorch's CPU batch norm does
    (``acc_type<float>`` is double). NumPy sums over non-contiguous axes one slice after another, so
    a float32 accumulator would lose ~n·2⁻²⁴ relative over the n = N·H·W values of a channel."""
    return a.mean(axis=axes, keepdims=True, dtype=np.float64)


def batch_norm_statistics(x):
    """Biased per-channel mean and variance over every axis but 1 (what training mode normalises
    with), and the element count n per channel. Accumulated in float64 (see ``_acc_mean``), returned
    in the input's dtype."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = _acc_mean(x, axes)
    d = x - mean
    var = _acc_mean(d * d, axes)
    n = math.prod(x.shape[i] for i in axes)
    return mean.ravel().astype(x.dtype, copy=False), var.ravel().astype(x.dtype, copy=False), n  # (no copy in float64)
