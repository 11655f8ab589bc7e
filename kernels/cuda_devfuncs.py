"""Device functions shared by the CUDA kernel modules (``@cuda.jit(device=True)``: called from inside
kernels, inlined by the compiler; in the simulator, plain Python calls).

- ``tree_sum(sh, tid)``: a block's shared-memory sum by the fixed tree (deterministic).
- ``tree_max(sh, tid)``: the same tree with NumPy's NaN-propagating maximum.
- ``nan_max(acc, v)``: NumPy's ``maximum`` (a NaN wins, and stays).
- ``strided_offset(i, off, shape, st)``: where element ``i`` (C order of ``shape``) of a strided view
  lies in its buffer.
- ``nchw_index(i, c, h, w)``: the (n, c, y, x) of flat index ``i`` of an N × C × H × W array.
- ``window_start(y, pad, d, stride, out_len)``: the output position whose window puts kernel offset
  ``d`` on input position ``y`` (the gathers of ``col2im`` and the pools' backward passes), or −1.

Numba compiles a device function for the compute capability of the *current* GPU; to compile a
kernel that calls one to PTX without a GPU, see ``cuda_resources.target_cc``.
"""
from __future__ import annotations

from numba import cuda

from .launch import lock_simulator_shared_arrays

lock_simulator_shared_arrays()  # a simulator race, see its docstring (no-op on a GPU)

__all__ = ["tree_sum", "tree_max", "nan_max", "strided_offset", "nchw_index", "window_start"]


@cuda.jit(device=True)
def tree_sum(sh, tid):
    """``sh[0] ← sh[0] + … + sh[n−1]`` (``n = len(sh)``, a power of two) by the fixed tree of ``n/2,
    n/4, ..., 1`` additions, ``syncthreads`` before the first level and after each: the same
    additions in the same order on every run. Every thread of the block calls it, in uniform
    control flow, after storing its own ``sh[tid]``."""
    cuda.syncthreads()
    s = sh.shape[0] // 2
    while s > 0:
        if tid < s:
            sh[tid] += sh[tid + s]
        cuda.syncthreads()
        s //= 2


@cuda.jit(device=True)
def nan_max(acc, v):
    """``max(acc, v)`` as NumPy's ``maximum``: a NaN ``v`` replaces ``acc``; a NaN ``acc`` stays."""
    if (v != v or v > acc) and acc == acc:
        return v
    return acc


@cuda.jit(device=True)
def tree_max(sh, tid):
    """:func:`tree_sum`'s tree with :func:`nan_max` in place of the addition."""
    cuda.syncthreads()
    s = sh.shape[0] // 2
    while s > 0:
        if tid < s:
            sh[tid] = nan_max(sh[tid], sh[tid + s])
        cuda.syncthreads()
        s //= 2


@cuda.jit(device=True)
def strided_offset(i, off, shape, st):
    """``off + Σ_d idx_d·st_d`` where ``idx`` is the multi-index of ``i`` in C order of ``shape``
    (a tuple; ``st`` the view's element strides, 0 along broadcast axes)."""
    j = off
    rem = i
    for d in range(len(shape) - 1, -1, -1):
        j += (rem % shape[d]) * st[d]
        rem //= shape[d]
    return j


@cuda.jit(device=True)
def nchw_index(i, c, h, w):
    """(n, ch, y, x) of flat index ``i`` of a C-contiguous N × c × h × w array."""
    x = i % w
    y = (i // w) % h
    ch = (i // (w * h)) % c
    n = i // (w * h * c)
    return n, ch, y, x


@cuda.jit(device=True)
def window_start(y, pad, d, stride, out_len):
    """The output position ``a`` with ``a·stride + d − pad = y`` (its window puts kernel offset ``d``
    on input position ``y``), or −1 if there is none in ``0 ≤ a < out_len``."""
    t = y + pad - d
    if t >= 0 and t % stride == 0 and t // stride < out_len:
        return t // stride
    return -1
