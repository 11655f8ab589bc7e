"""CUDA convolution by im2col + the tiled matmul, and col2im for the input gradient.

Measured choice (see the README's "Backends"): im2col/col2im kernels feeding the matmul rather than
an implicit GEMM. On the CPU the same split lets the matmul stay in BLAS while Numba does the
gathers; on the GPU it reuses the one tiled matmul kernel for all three products of a convolution
(forward ``cols·Wᵀ``, weight gradient ``gᵀ·cols``, input gradient ``g·W``, operands read
transposed in place).

- ``im2col``: one thread per element of ``cols`` (N·OH·OW, C·kH·kW); padding by bounds checks.
- ``col2im``: one thread per element of the input gradient (N, C, H, W): it *gathers* the entries of
  ``gcols`` that im2col read from that pixel (kernel offsets i, then j), so there are no atomics and
  the sum has a fixed order (deterministic), the same order as the CPU kernel and the NumPy path.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64, int64

from .launch import blocks
from .cuda_matmul import matmul_device

__all__ = ["TPB", "PTX_KERNELS", "im2col_device", "col2im_device", "im2col_cuda", "col2im_cuda", "conv2d_cuda", "conv2d_grad_input_cuda",
           "conv2d_grad_weight_cuda"]

#: threads per block of the elementwise im2col/col2im kernels
TPB = 128


def im2col(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    idx = cuda.grid(1)
    nrows = cols.shape[0]
    ncols = cols.shape[1]
    if idx < nrows * ncols:
        row = idx // ncols
        col = idx - row * ncols
        b = row % ow
        a = (row // ow) % oh
        n = row // (ow * oh)
        j = col % kw
        i = (col // kw) % kh
        c = col // (kw * kh)
        y = a * sh + i - ph
        xx = b * sw + j - pw
        if 0 <= y < x.shape[2] and 0 <= xx < x.shape[3]:
            cols[row, col] = x[n, c, y, xx]
        else:
            cols[row, col] = 0


def make_col2im_kernel(dtype):
    """The plain Python col2im kernel for one dtype (its accumulator starts at ``dtype(0)``)."""

    def col2im(gcols, kh, kw, sh, sw, ph, pw, oh, ow, gx):
        idx = cuda.grid(1)
        nb = gx.shape[0]
        ch = gx.shape[1]
        h = gx.shape[2]
        w = gx.shape[3]
        if idx < nb * ch * h * w:
            xx = idx % w
            y = (idx // w) % h
            c = (idx // (w * h)) % ch
            n = idx // (w * h * ch)
            acc = dtype(0)
            for i in range(kh):
                ty = y + ph - i  # = a·sH for the output row a that read this pixel at offset i
                if ty >= 0 and ty % sh == 0 and ty // sh < oh:
                    a = ty // sh
                    for j in range(kw):
                        tx = xx + pw - j
                        if tx >= 0 and tx % sw == 0 and tx // sw < ow:
                            acc += gcols[(n * oh + a) * ow + tx // sw, (c * kh + i) * kw + j]
            gx[n, c, y, xx] = acc

    return col2im


_COL2IM_PY = {"float32": make_col2im_kernel(float32), "float64": make_col2im_kernel(float64)}
_im2col = cuda.jit(im2col)
_col2im = {name: cuda.jit(fn) for name, fn in _COL2IM_PY.items()}

#: (name, python function, signature) of every kernel in this module, for the compile_ptx tests
PTX_KERNELS = []
for _t in (float32, float64):
    _geom = (int64,) * 8
    PTX_KERNELS.append((f"im2col[{_t}]", im2col, (_t[:, :, :, :], *_geom, _t[:, :])))
    PTX_KERNELS.append((f"col2im[{_t}]", _COL2IM_PY[str(_t)], (_t[:, :], *_geom, _t[:, :, :, :])))


def im2col_device(d_x, k, s, p, out_hw, out=None):
    n, c = d_x.shape[:2]
    rows, ncols = n * out_hw[0] * out_hw[1], c * k[0] * k[1]
    cols = cuda.device_array((rows, ncols), dtype=d_x.dtype) if out is None else out
    _im2col[blocks(rows * ncols, TPB), TPB](d_x, k[0], k[1], s[0], s[1], p[0], p[1], out_hw[0], out_hw[1], cols)
    return cols


def col2im_device(d_gcols, x_shape, k, s, p, out_hw, out=None):
    gx = cuda.device_array(tuple(x_shape), dtype=d_gcols.dtype) if out is None else out
    size = int(np.prod(x_shape))
    _col2im[np.dtype(d_gcols.dtype).name][blocks(size, TPB), TPB](d_gcols, k[0], k[1], s[0], s[1], p[0], p[1], out_hw[0], out_hw[1], gx)
    return gx


def im2col_cuda(x, k, s, p, out_hw):
    """Host wrapper: the (N·OH·OW, C·kH·kW) receptive-field matrix of NCHW ``x`` as a NumPy array."""
    return im2col_device(cuda.to_device(np.ascontiguousarray(x)), k, s, p, out_hw).copy_to_host()


def col2im_cuda(gcols, x_shape, k, s, p, out_hw):
    """Host wrapper: the adjoint of :func:`im2col_cuda` (NumPy (N·OH·OW, C·kH·kW) in, NCHW out)."""
    d = cuda.to_device(np.ascontiguousarray(gcols).reshape(-1, x_shape[1] * k[0] * k[1]))
    return col2im_device(d, x_shape, k, s, p, out_hw).copy_to_host()


def conv2d_cuda(x, w, s, p, out_hw):
    """(N·OH·OW, O) = im2col(x) · W₂ᵀ on the device; returns NCHW on the host."""
    n, o = x.shape[0], w.shape[0]
    cols = im2col_device(cuda.to_device(np.ascontiguousarray(x)), w.shape[2:], s, p, out_hw)
    w2 = cuda.to_device(np.ascontiguousarray(w).reshape(o, -1))
    out = matmul_device(cols, w2, cols.shape[0], o, x.dtype, tb=True).copy_to_host()
    return np.ascontiguousarray(out.reshape(n, out_hw[0], out_hw[1], o).transpose(0, 3, 1, 2))


def _g2(gy):
    """(N·OH·OW, O) rows of the output gradient, on the device."""
    o = gy.shape[1]
    return cuda.to_device(np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).reshape(-1, o))


def conv2d_grad_input_cuda(gy, w, x_shape, s, p, out_hw):
    o = w.shape[0]
    g2 = _g2(gy)
    w2 = cuda.to_device(np.ascontiguousarray(w).reshape(o, -1))
    gcols = matmul_device(g2, w2, g2.shape[0], w2.shape[1], gy.dtype)
    return col2im_device(gcols, x_shape, w.shape[2:], s, p, out_hw).copy_to_host()


def conv2d_grad_weight_cuda(x, gy, w_shape, s, p, out_hw):
    cols = im2col_device(cuda.to_device(np.ascontiguousarray(x)), w_shape[2:], s, p, out_hw)
    g2 = _g2(gy)
    gw = matmul_device(g2, cols, w_shape[0], cols.shape[1], x.dtype, ta=True)
    return gw.copy_to_host().reshape(w_shape)
