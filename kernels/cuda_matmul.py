"""CUDA matmul: a shared-memory tiled kernel (any M, N, K; float32 and float64; transposed operands
read in place).

Each block computes one ``TILE × TILE`` tile of C. It walks the inner dimension in
⌈K / TILE⌉ steps (never over ``gridDim``); at each step every thread loads one element of A's tile
and one of B's tile into shared memory (zeros outside the matrices: every load is bounds-checked),
the block synchronises, and each thread adds TILE products to its accumulator. ``syncthreads`` is
only reached in uniform control flow (every thread runs every step), and only threads inside C
store. ``ta``/``tb`` say that the array passed is the *transpose* of the operand (A is stored K×M,
B is stored N×K): the backward pass's ``gᵀ·x`` and ``g·Wᵀ`` then read ``g`` and ``W`` as they are,
with no transposed copy. Accumulation is in the operands' dtype, in k order.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64

from .launch import blocks

__all__ = ["TILE", "make_matmul_kernel", "MATMUL_KERNELS", "PTX_KERNELS", "matmul_device", "matmul_cuda"]

#: tile edge: a block is TILE × TILE threads and holds two TILE × TILE tiles in shared memory
TILE = 16


def make_matmul_kernel(dtype):
    """The plain Python kernel function for one dtype (a Numba type; shared arrays need it fixed)."""

    def matmul_tiled(a, b, c, ta, tb):
        sa = cuda.shared.array((TILE, TILE), dtype)
        sb = cuda.shared.array((TILE, TILE), dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.y * TILE + ty
        col = cuda.blockIdx.x * TILE + tx
        m = c.shape[0]
        n = c.shape[1]
        k = a.shape[0] if ta else a.shape[1]
        acc = dtype(0)
        for t in range((k + TILE - 1) // TILE):
            kk = t * TILE + tx  # A's column for this thread's load
            if row < m and kk < k:
                sa[ty, tx] = a[kk, row] if ta else a[row, kk]
            else:
                sa[ty, tx] = 0
            kk = t * TILE + ty  # B's row for this thread's load
            if col < n and kk < k:
                sb[ty, tx] = b[col, kk] if tb else b[kk, col]
            else:
                sb[ty, tx] = 0
            cuda.syncthreads()
            for j in range(TILE):
                acc += sa[ty, j] * sb[j, tx]
            cuda.syncthreads()
        if row < m and col < n:
            c[row, col] = acc

    return matmul_tiled


#: the plain Python kernel functions (what ``cuda.compile_ptx`` takes), by dtype name
PY_KERNELS = {"float32": make_matmul_kernel(float32), "float64": make_matmul_kernel(float64)}
#: the launchable kernels
MATMUL_KERNELS = {name: cuda.jit(fn) for name, fn in PY_KERNELS.items()}


def _ptx_signatures():
    from numba import boolean

    for name, t in (("float32", float32), ("float64", float64)):
        yield f"matmul_tiled[{name}]", PY_KERNELS[name], (t[:, :], t[:, :], t[:, :], boolean, boolean)


#: (name, python function, signature) of every kernel in this module, for the compile_ptx tests
PTX_KERNELS = list(_ptx_signatures())


def _operand(x):
    """(C-contiguous array to pass, transposed?) without copying when ``x`` is a transposed view."""
    if x.flags.c_contiguous:
        return x, False
    if x.flags.f_contiguous:
        return x.T, True  # x.T is C-contiguous: pass it and read it transposed
    return np.ascontiguousarray(x), False


def matmul_device(a, b, m, n, dtype, ta=False, tb=False, out=None):
    """C = op(A)·op(B) on device arrays (``a``/``b`` already stored as the kernel reads them)."""
    c = cuda.device_array((m, n), dtype=dtype) if out is None else out
    grid = (blocks(n, TILE), blocks(m, TILE))
    MATMUL_KERNELS[np.dtype(dtype).name][grid, (TILE, TILE)](a, b, c, ta, tb)
    return c


def matmul_cuda(a, b):
    """Host wrapper: NumPy (M, K) · (K, N) → NumPy (M, N), through the tiled kernel."""
    sa, ta = _operand(a)
    sb, tb = _operand(b)
    m, n = a.shape[0], b.shape[1]
    c = matmul_device(cuda.to_device(sa), cuda.to_device(sb), m, n, a.dtype, ta, tb)
    return c.copy_to_host()
