"""CUDA convolution by im2col + the register-tiled matmul, and col2im for the input gradient.

Measured choice (see demos/guide-backends.md): im2col/col2im kernels feeding the matmul rather than
an implicit GEMM. On the CPU the same split lets the matmul stay in BLAS while Numba does the
gathers; on the GPU it reuses the one matmul kernel for all three products of a convolution
(forward ``cols·Wᵀ``, weight gradient ``gᵀ·cols``, input gradient ``g·W``, operands read
transposed in place).

- ``im2col``: one thread per element of ``cols`` (N·OH·OW, C·kH·kW); padding by bounds checks.
- ``col2im``: one thread per element of the input gradient (N, C, H, W): it *gathers* the entries of
  ``gcols`` that im2col read from that pixel (kernel offsets i, then j), so there are no atomics and
  the sum has a fixed order (deterministic), the same order as the CPU kernel and the NumPy path.
- ``rows_to_nchw`` / ``nchw_to_rows``: the (N·OH·OW, O) ↔ (N, O, OH, OW) permutations between the
  matmul's row layout and NCHW, on the device.

All four are grid-stride loops ("one thread per element" while the grid covers the array): on a GPU
the grid is ⌈n/128⌉ blocks of 128 threads up to 65,535 blocks; in Numba's simulator, which runs every
thread as a Python thread, 8 threads per block and at most 16 blocks (as in ``cuda_elementwise``), so
the simulator tests loop over the elements in each thread instead of starting thousands of threads.

**Device-array entry points** (numba device arrays in and out, C-contiguous; nothing copied to or
from the host; every buffer can be passed preallocated and reused across calls):

- ``im2col_device(d_x, k, s, p, out_hw, out=None)`` → cols (N·OH·OW, C·kH·kW);
- ``col2im_device(d_gcols, x_shape, k, s, p, out_hw, out=None)`` → gx (N, C, H, W);
- ``conv2d_device(d_x, d_w, s, p, out=None, cols=None, rows=None)`` → y (N, O, OH, OW)
  (``cols``: im2col scratch, ``rows``: (N·OH·OW, O) scratch);
- ``conv2d_grad_input_device(d_gy, d_w, x_shape, s, p, out=None, rows=None, gcols=None)`` → gx;
- ``conv2d_grad_weight_device(d_x, d_gy, w_shape, s, p, out=None, cols=None, rows=None)`` → gW;
- ``conv_out_hw(x_shape, k, s, p)``: (OH, OW); ``s``, ``p``, ``k`` are pairs of ints.

The ``*_cuda`` functions are the host wrappers (NumPy in, NumPy out) behind ``kernels.conv2d`` etc.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64, int64
from numba.core import config

from .cuda_devfuncs import nchw_index, window_start
from .cuda_matmul import matmul_device
from .launch import blocks, count_launch

__all__ = ["TPB", "PTX_KERNELS", "conv_out_hw", "im2col_device", "col2im_device", "conv2d_device",
           "conv2d_grad_input_device", "conv2d_grad_weight_device", "im2col_cuda", "col2im_cuda", "conv2d_cuda",
           "conv2d_grad_input_cuda", "conv2d_grad_weight_cuda", "rows_to_nchw_device", "nchw_to_rows_device"]

#: threads per block of the elementwise im2col/col2im kernels (8 in the simulator: see above)
TPB = 8 if config.ENABLE_CUDASIM else 128
#: the grid cap; larger arrays are covered by the grid-stride loop (16 in the simulator)
MAX_BLOCKS = 16 if config.ENABLE_CUDASIM else 65535


def im2col(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    idx = cuda.grid(1)
    stride = cuda.gridsize(1)
    nrows = cols.shape[0]
    ncols = cols.shape[1]
    while idx < nrows * ncols:
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
        idx += stride


def make_col2im_kernel(dtype):
    """The plain Python col2im kernel for one dtype (its accumulator starts at ``dtype(0)``)."""

    def col2im(gcols, kh, kw, sh, sw, ph, pw, oh, ow, gx):
        idx = cuda.grid(1)
        stride = cuda.gridsize(1)
        nb = gx.shape[0]
        ch = gx.shape[1]
        h = gx.shape[2]
        w = gx.shape[3]
        while idx < nb * ch * h * w:
            n, c, y, xx = nchw_index(idx, ch, h, w)
            acc = dtype(0)
            for i in range(kh):
                a = window_start(y, ph, i, sh, oh)  # the output row that read this pixel at offset i
                if a >= 0:
                    for j in range(kw):
                        b = window_start(xx, pw, j, sw, ow)
                        if b >= 0:
                            acc += gcols[(n * oh + a) * ow + b, (c * kh + i) * kw + j]
            gx[n, c, y, xx] = acc
            idx += stride

    return col2im


def rows_to_nchw(rows, oh, ow, y):
    """y[n, o, a, b] = rows[(n·OH + a)·OW + b, o]: one thread per element of y (coalesced writes)."""
    idx = cuda.grid(1)
    stride = cuda.gridsize(1)
    nb = y.shape[0]
    oc = y.shape[1]
    while idx < nb * oc * oh * ow:
        n, o, a, b = nchw_index(idx, oc, oh, ow)
        y[n, o, a, b] = rows[(n * oh + a) * ow + b, o]
        idx += stride


def nchw_to_rows(g, oh, ow, rows):
    """rows[(n·OH + a)·OW + b, o] = g[n, o, a, b]: one thread per element of rows."""
    idx = cuda.grid(1)
    stride = cuda.gridsize(1)
    oc = rows.shape[1]
    while idx < rows.shape[0] * oc:
        r = idx // oc
        o = idx - r * oc
        b = r % ow
        a = (r // ow) % oh
        n = r // (ow * oh)
        rows[r, o] = g[n, o, a, b]
        idx += stride


_COL2IM_PY = {"float32": make_col2im_kernel(float32), "float64": make_col2im_kernel(float64)}
_im2col = cuda.jit(im2col)
_col2im = {name: cuda.jit(fn) for name, fn in _COL2IM_PY.items()}
_rows_to_nchw = cuda.jit(rows_to_nchw)
_nchw_to_rows = cuda.jit(nchw_to_rows)

#: (name, python function, signature) of every kernel in this module, for the compile_ptx tests
PTX_KERNELS = []
for _t in (float32, float64):
    _geom = (int64,) * 8
    PTX_KERNELS.append((f"im2col[{_t}]", im2col, (_t[:, :, :, :], *_geom, _t[:, :])))
    PTX_KERNELS.append((f"col2im[{_t}]", _COL2IM_PY[str(_t)], (_t[:, :], *_geom, _t[:, :, :, :])))
    PTX_KERNELS.append((f"rows_to_nchw[{_t}]", rows_to_nchw, (_t[:, ::1], int64, int64, _t[:, :, :, ::1])))
    PTX_KERNELS.append((f"nchw_to_rows[{_t}]", nchw_to_rows, (_t[:, :, :, ::1], int64, int64, _t[:, ::1])))


def conv_out_hw(x_shape, k, s, p):
    """(OH, OW) of a convolution (kernel k, stride s, padding p: pairs of ints)."""
    return ((x_shape[2] + 2 * p[0] - k[0]) // s[0] + 1, (x_shape[3] + 2 * p[1] - k[1]) // s[1] + 1)


def _buffer(buf, shape, dtype, name):
    """``buf`` checked against (shape, dtype), or a new device array."""
    shape = tuple(int(v) for v in shape)
    if buf is None:
        return cuda.device_array(shape, dtype=dtype)
    if tuple(buf.shape) != shape or buf.dtype != np.dtype(dtype):
        raise ValueError(f"cuda_conv: {name} must be a {np.dtype(dtype)} device array of shape {shape}, got "
                         f"{buf.dtype} {tuple(buf.shape)}")
    return buf


def im2col_device(d_x, k, s, p, out_hw, out=None):
    """The (N·OH·OW, C·kH·kW) receptive-field matrix of the NCHW device array ``d_x``, on the device."""
    n, c = d_x.shape[:2]
    rows, ncols = n * out_hw[0] * out_hw[1], c * k[0] * k[1]
    cols = _buffer(out, (rows, ncols), d_x.dtype, "out")
    count_launch("im2col")
    _im2col[blocks(rows * ncols, TPB, MAX_BLOCKS), TPB](d_x, k[0], k[1], s[0], s[1], p[0], p[1], out_hw[0], out_hw[1], cols)
    return cols


def col2im_device(d_gcols, x_shape, k, s, p, out_hw, out=None):
    """The adjoint of :func:`im2col_device`: (N·OH·OW, C·kH·kW) → NCHW ``x_shape``, gathered."""
    gx = _buffer(out, x_shape, d_gcols.dtype, "out")
    size = int(np.prod(x_shape))
    count_launch("col2im")
    _col2im[np.dtype(d_gcols.dtype).name][blocks(size, TPB, MAX_BLOCKS), TPB](d_gcols, k[0], k[1], s[0], s[1], p[0], p[1],
                                                                   out_hw[0], out_hw[1], gx)
    return gx


def _w2(d_w):
    """The (O, C·kH·kW) view of a C-contiguous (O, C, kH, kW) device weight (no copy)."""
    o = d_w.shape[0]
    return d_w.reshape(o, d_w.size // o)


def rows_to_nchw_device(rows, n, out_hw, out=None):
    """(N·OH·OW, O) → (N, O, OH, OW) on the device."""
    oc = rows.shape[1]
    y = _buffer(out, (n, oc, out_hw[0], out_hw[1]), rows.dtype, "out")
    count_launch("rows_to_nchw")
    _rows_to_nchw[blocks(y.size, TPB, MAX_BLOCKS), TPB](rows, out_hw[0], out_hw[1], y)
    return y


def nchw_to_rows_device(g, out=None):
    """(N, O, OH, OW) → (N·OH·OW, O) on the device."""
    n, oc, oh, ow = g.shape
    rows = _buffer(out, (n * oh * ow, oc), g.dtype, "rows")
    count_launch("nchw_to_rows")
    _nchw_to_rows[blocks(rows.size, TPB, MAX_BLOCKS), TPB](g, oh, ow, rows)
    return rows


def conv2d_device(d_x, d_w, s, p, out=None, cols=None, rows=None):
    """y = conv2d(x, W) (N, O, OH, OW) on device arrays: im2col, cols·W₂ᵀ, permute to NCHW."""
    k = tuple(d_w.shape[2:])
    out_hw = conv_out_hw(d_x.shape, k, s, p)
    cols = im2col_device(d_x, k, s, p, out_hw, out=cols)
    o = d_w.shape[0]
    rows = matmul_device(cols, _w2(d_w), cols.shape[0], o, d_x.dtype, tb=True,
                         out=_buffer(rows, (cols.shape[0], o), d_x.dtype, "rows"))
    return rows_to_nchw_device(rows, d_x.shape[0], out_hw, out=out)


def conv2d_grad_input_device(d_gy, d_w, x_shape, s, p, out=None, rows=None, gcols=None):
    """∂L/∂x = col2im(g₂·W₂) on device arrays (g₂: ∂L/∂y as (N·OH·OW, O) rows)."""
    k = tuple(d_w.shape[2:])
    out_hw = tuple(d_gy.shape[2:])
    g2 = nchw_to_rows_device(d_gy, out=rows)
    w2 = _w2(d_w)
    gc = matmul_device(g2, w2, g2.shape[0], w2.shape[1], d_gy.dtype,
                       out=_buffer(gcols, (g2.shape[0], w2.shape[1]), d_gy.dtype, "gcols"))
    return col2im_device(gc, tuple(x_shape), k, s, p, out_hw, out=out)


def conv2d_grad_weight_device(d_x, d_gy, w_shape, s, p, out=None, cols=None, rows=None):
    """∂L/∂W = g₂ᵀ·im2col(x), as (O, C, kH, kW), on device arrays."""
    k = tuple(w_shape[2:])
    out_hw = tuple(d_gy.shape[2:])
    cols = im2col_device(d_x, k, s, p, out_hw, out=cols)
    g2 = nchw_to_rows_device(d_gy, out=rows)
    o = int(w_shape[0])
    gw = _buffer(out, tuple(w_shape), d_x.dtype, "out")
    matmul_device(g2, cols, o, cols.shape[1], d_x.dtype, ta=True, out=gw.reshape(o, gw.size // o))
    return gw


def im2col_cuda(x, k, s, p, out_hw):
    """Host wrapper: the (N·OH·OW, C·kH·kW) receptive-field matrix of NCHW ``x`` as a NumPy array."""
    return im2col_device(cuda.to_device(np.ascontiguousarray(x)), k, s, p, out_hw).copy_to_host()


def col2im_cuda(gcols, x_shape, k, s, p, out_hw):
    """Host wrapper: the adjoint of :func:`im2col_cuda` (NumPy (N·OH·OW, C·kH·kW) in, NCHW out)."""
    d = cuda.to_device(np.ascontiguousarray(gcols).reshape(-1, x_shape[1] * k[0] * k[1]))
    return col2im_device(d, x_shape, k, s, p, out_hw).copy_to_host()


def conv2d_cuda(x, w, s, p, out_hw=None):
    """Host wrapper: NCHW NumPy ``x``, (O, C, kH, kW) ``w`` → NCHW NumPy y (one copy each way)."""
    return conv2d_device(cuda.to_device(np.ascontiguousarray(x)), cuda.to_device(np.ascontiguousarray(w)), s,
                         p).copy_to_host()


def conv2d_grad_input_cuda(gy, w, x_shape, s, p, out_hw=None):
    """Host wrapper: ∂L/∂x of conv2d given ∂L/∂y = ``gy`` (NumPy in and out)."""
    return conv2d_grad_input_device(cuda.to_device(np.ascontiguousarray(gy)), cuda.to_device(np.ascontiguousarray(w)),
                                    x_shape, s, p).copy_to_host()


def conv2d_grad_weight_cuda(x, gy, w_shape, s, p, out_hw=None):
    """Host wrapper: ∂L/∂W of conv2d given ∂L/∂y = ``gy`` (NumPy in and out)."""
    return conv2d_grad_weight_device(cuda.to_device(np.ascontiguousarray(x)), cuda.to_device(np.ascontiguousarray(gy)),
                                     w_shape, s, p).copy_to_host()
