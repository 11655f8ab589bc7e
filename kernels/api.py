"""The host wrappers: NumPy arrays in, NumPy arrays out, ``device="cpu"`` (Numba CPU kernels) or
``device="cuda"`` (Numba CUDA kernels; a GPU, or the simulator under ``NUMBA_ENABLE_CUDASIM=1``).

Shapes and layouts are PyTorch's: images NCHW, conv weights (O, C, kH, kW). Inputs are checked here
(errors name the argument and the shapes); the kernels assume valid input.
"""
from __future__ import annotations

import numpy as np

from . import cpu
from .launch import check_device, check_float, cuda_module

__all__ = ["matmul", "im2col", "col2im", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "probe",
           "conv_geometry"]


def _pair(value, name, owner, minimum):
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


def conv_geometry(owner, x_shape, w_shape, stride, padding):
    """Checked ``(k, s, p, (OH, OW))`` of a convolution of an NCHW input by an (O, C, kH, kW) weight."""
    if len(x_shape) != 4:
        raise ValueError(f"{owner}: input must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(f"{owner}: weight must be 4-D (out, in, kH, kW), got shape {tuple(w_shape)}")
    if x_shape[1] != w_shape[1]:
        raise ValueError(f"{owner}: weight has {w_shape[1]} input channels, input has {x_shape[1]} "
                         f"(input shape {tuple(x_shape)})")
    s = _pair(stride, "stride", owner, 1)
    p = _pair(padding, "padding", owner, 0)
    k = (int(w_shape[2]), int(w_shape[3]))
    oh = (x_shape[2] + 2 * p[0] - k[0]) // s[0] + 1
    ow = (x_shape[3] + 2 * p[1] - k[1]) // s[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"{owner}: input of spatial size {x_shape[2]}x{x_shape[3]} (padding {p}) is smaller than "
                         f"the kernel {k[0]}x{k[1]}")
    return k, s, p, (oh, ow)


# ------------------------------------------------------------------------------------------ matmul
def matmul(a, b, device="cpu"):
    """``a @ b`` for 2-D float arrays of one dtype (any strides; ``x.T`` views are read in place)."""
    owner = "kernels.matmul"
    check_device(device, owner)
    dtype = check_float(owner, a=a, b=b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{owner}: operands must be 2-D, got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"{owner}: shapes {a.shape} and {b.shape} are not aligned "
                         f"({a.shape[1]} != {b.shape[0]} in the inner dimension)")
    if device == "cuda":
        return cuda_module("cuda_matmul").matmul_cuda(a, b)
    c = np.empty((a.shape[0], b.shape[1]), dtype=dtype)
    cpu.matmul_kernel(a, b, c)
    return c


# ------------------------------------------------------------------------------------------ conv
def im2col(x, k, stride=1, padding=0, device="cpu"):
    """The receptive-field matrix (N·OH·OW, C·kH·kW) of an NCHW input for a kH×kW kernel: row
    (n, a, b), column (c, i, j) holds x[n, c, a·sH + i − pH, b·sW + j − pW] (0 in the padding)."""
    owner = "kernels.im2col"
    check_device(device, owner)
    check_float(owner, x=x)
    kk = _pair(k, "k", owner, 1)
    k, s, p, out_hw = conv_geometry(owner, x.shape, (1, x.shape[1] if x.ndim == 4 else 0, *kk), stride, padding)
    if device == "cuda":
        return cuda_module("cuda_conv").im2col_cuda(x, k, s, p, out_hw)
    cols = np.empty((x.shape[0] * out_hw[0] * out_hw[1], x.shape[1] * k[0] * k[1]), dtype=x.dtype)
    cpu.im2col_kernel(x, k[0], k[1], s[0], s[1], p[0], p[1], out_hw[0], out_hw[1], cols)
    return cols


def col2im(gcols, x_shape, k, stride=1, padding=0, device="cpu"):
    """The adjoint of :func:`im2col`: sums the entries of ``gcols`` back onto an NCHW array of shape
    ``x_shape`` (every pixel gets the entries im2col read from it)."""
    owner = "kernels.col2im"
    check_device(device, owner)
    check_float(owner, gcols=gcols)
    x_shape = tuple(int(v) for v in x_shape)
    kk = _pair(k, "k", owner, 1)
    k, s, p, out_hw = conv_geometry(owner, x_shape, (1, x_shape[1] if len(x_shape) == 4 else 0, *kk), stride,
                                    padding)
    want = (x_shape[0] * out_hw[0] * out_hw[1], x_shape[1] * k[0] * k[1])
    if gcols.size != want[0] * want[1]:
        raise ValueError(f"{owner}: gcols has shape {gcols.shape}, input shape {x_shape} with kernel {k} needs {want}")
    if device == "cuda":
        return cuda_module("cuda_conv").col2im_cuda(gcols, x_shape, k, s, p, out_hw)
    gx = np.empty(x_shape, dtype=gcols.dtype)
    cpu.col2im_kernel(gcols.reshape(want), k[0], k[1], s[0], s[1], p[0], p[1], out_hw[0], out_hw[1], gx)
    return gx


def conv2d(x, w, stride=1, padding=0, device="cpu"):
    """PyTorch's ``F.conv2d(x, w, stride=stride, padding=padding)`` (no bias, groups = dilation = 1)."""
    owner = "kernels.conv2d"
    check_device(device, owner)
    check_float(owner, x=x, w=w)
    k, s, p, out_hw = conv_geometry(owner, x.shape, w.shape, stride, padding)
    if device == "cuda":
        return cuda_module("cuda_conv").conv2d_cuda(x, w, s, p, out_hw)
    n, o = x.shape[0], w.shape[0]
    cols = im2col(x, k, s, p, device="cpu")
    out = np.matmul(cols, np.ascontiguousarray(w).reshape(o, -1).T)  # BLAS: see cpu.matmul_kernel
    return np.ascontiguousarray(out.reshape(n, out_hw[0], out_hw[1], o).transpose(0, 3, 1, 2))


def conv2d_grad_input(gy, w, x_shape, stride=1, padding=0, device="cpu"):
    """∂L/∂x of ``conv2d`` given ∂L/∂y = ``gy`` (N, O, OH, OW): col2im(g₂·W₂)."""
    owner = "kernels.conv2d_grad_input"
    check_device(device, owner)
    check_float(owner, gy=gy, w=w)
    x_shape = tuple(int(v) for v in x_shape)
    k, s, p, out_hw = conv_geometry(owner, x_shape, w.shape, stride, padding)
    _check_gy(owner, gy, x_shape, w.shape, out_hw)
    if device == "cuda":
        return cuda_module("cuda_conv").conv2d_grad_input_cuda(gy, w, x_shape, s, p, out_hw)
    o = w.shape[0]
    g2 = gy.transpose(0, 2, 3, 1).reshape(-1, o)
    gcols = np.matmul(g2, np.ascontiguousarray(w).reshape(o, -1))
    return col2im(gcols, x_shape, k, s, p, device="cpu")


def conv2d_grad_weight(x, gy, w_shape, stride=1, padding=0, device="cpu"):
    """∂L/∂W of ``conv2d`` given ∂L/∂y = ``gy``: g₂ᵀ·im2col(x), reshaped to ``w_shape``."""
    owner = "kernels.conv2d_grad_weight"
    check_device(device, owner)
    check_float(owner, x=x, gy=gy)
    w_shape = tuple(int(v) for v in w_shape)
    k, s, p, out_hw = conv_geometry(owner, x.shape, w_shape, stride, padding)
    _check_gy(owner, gy, x.shape, w_shape, out_hw)
    if device == "cuda":
        return cuda_module("cuda_conv").conv2d_grad_weight_cuda(x, gy, w_shape, s, p, out_hw)
    cols = im2col(x, k, s, p, device="cpu")
    g2 = gy.transpose(0, 2, 3, 1).reshape(-1, w_shape[0])
    return np.matmul(g2.T, cols).reshape(w_shape)


def _check_gy(owner, gy, x_shape, w_shape, out_hw):
    want = (x_shape[0], w_shape[0], *out_hw)
    if gy.shape != want:
        raise ValueError(f"{owner}: gy has shape {gy.shape}, the convolution's output has shape {want}")


# ------------------------------------------------------------------------------------------ probe
def probe(theta, g, alpha, device="cpu", deterministic=False, out=None):
    """``(theta − alpha·g, Σ g²)`` in one pass over memory; Σ g² accumulated in float64.

    ``alpha`` is rounded to the arrays' dtype first (as NumPy does with ``theta - alpha * g``).
    The probe is deterministic on both devices (the same bits on every call); ``deterministic`` is
    accepted for callers of the earlier CUDA version, which also had an atomic-add variant. On CUDA,
    θ − α·g equals NumPy's ``theta - alpha * g`` bit for bit (rounded multiply and subtract, no
    fused multiply-add). ``out`` (CPU only) receives the new point in place (it may be ``theta``)."""
    owner = "kernels.probe"
    check_device(device, owner)
    check_float(owner, theta=theta, g=g)
    if theta.shape != g.shape:
        raise ValueError(f"{owner}: theta has shape {theta.shape}, g has shape {g.shape}")
    alpha = float(alpha)
    if not np.isfinite(alpha):
        raise ValueError(f"{owner}: alpha must be finite, got {alpha!r}")
    shape = theta.shape
    t1 = np.ascontiguousarray(theta).reshape(-1)
    g1 = np.ascontiguousarray(g).reshape(-1)
    if device == "cuda":
        if out is not None:
            raise ValueError(f"{owner}: out= is for device='cpu' (the CUDA wrapper returns a new host array)")
        new, total = cuda_module("cuda_probe").probe_cuda(t1, g1, alpha, deterministic)
        return new.reshape(shape), total
    if out is None:
        out = np.empty(shape, dtype=theta.dtype)
    elif out.shape != shape or out.dtype != theta.dtype or not out.flags.c_contiguous:
        raise ValueError(f"{owner}: out must be a C-contiguous {theta.dtype} array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    total = cpu.probe_kernel(t1, g1, theta.dtype.type(alpha), out.reshape(-1))
    return out, float(total)
