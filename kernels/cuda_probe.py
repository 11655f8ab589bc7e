"""CUDA probe: ``out = θ − α·g`` and Σ g² in one pass over memory (the line-search probe of
QLABGrad's Eq. (8) and the a1 = −‖∇L‖² of Eq. (7), fused).

``probe_blocks``: a grid-stride loop (each thread places its elements and adds their g², promoted
to float64, to a private float64 sum), then a block reduction in shared memory (a tree of
``TPB/2, TPB/4, ..., 1`` additions, ``syncthreads`` between levels, in uniform control flow), then
either **one atomic add per block** into the result (``atomic=True``: fast, but the order of the
atomic adds, hence the last bits, can change from run to run) or one partial sum per block
(``atomic=False``), which ``reduce_partials`` (one block, same tree) adds up: the **deterministic
two-pass** reduction, the same bits on every run for a given grid.
"""
from __future__ import annotations

import numpy as np
from numba import boolean, cuda, float32, float64

from .launch import blocks

__all__ = ["TPB", "MAX_BLOCKS", "PTX_KERNELS", "grid_for", "probe_device", "probe_cuda", "reference_tree_sum"]

#: threads per block (a power of two: the tree reduction halves it)
TPB = 128
#: at most this many blocks; larger arrays are covered by the grid-stride loop
MAX_BLOCKS = 1024


def probe_blocks(theta, g, alpha, out, result, partial, atomic):
    sh = cuda.shared.array(TPB, float64)
    tid = cuda.threadIdx.x
    n = theta.shape[0]
    i = cuda.blockIdx.x * TPB + tid
    stride = cuda.gridDim.x * TPB
    acc = 0.0
    while i < n:
        gi = g[i]
        out[i] = theta[i] - alpha * gi
        gd = float64(gi)
        acc += gd * gd
        i += stride
    sh[tid] = acc
    cuda.syncthreads()
    s = TPB // 2
    while s > 0:
        if tid < s:
            sh[tid] += sh[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        if atomic:
            cuda.atomic.add(result, 0, sh[0])
        else:
            partial[cuda.blockIdx.x] = sh[0]


def reduce_partials(partial, result):
    """One block: result[0] = Σ partial, in a fixed order (deterministic)."""
    sh = cuda.shared.array(TPB, float64)
    tid = cuda.threadIdx.x
    acc = 0.0
    i = tid
    while i < partial.shape[0]:
        acc += partial[i]
        i += TPB
    sh[tid] = acc
    cuda.syncthreads()
    s = TPB // 2
    while s > 0:
        if tid < s:
            sh[tid] += sh[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        result[0] = sh[0]


_probe_blocks = cuda.jit(probe_blocks)
_reduce_partials = cuda.jit(reduce_partials)

#: (name, python function, signature) of every kernel in this module, for the compile_ptx tests
PTX_KERNELS = [
    (f"probe_blocks[{t}]", probe_blocks, (t[:], t[:], t, t[:], float64[:], float64[:], boolean))
    for t in (float32, float64)
] + [("reduce_partials", reduce_partials, (float64[:], float64[:]))]


def grid_for(n, max_blocks=None):
    """Blocks launched for n elements: one element per thread, capped at ``max_blocks``
    (default ``MAX_BLOCKS``); beyond the cap every thread loops over several elements."""
    return min(blocks(n, TPB), MAX_BLOCKS if max_blocks is None else int(max_blocks))


def probe_device(theta, g, alpha, out, deterministic=False, max_blocks=None):
    """Launch on device arrays; returns Σ g² (a Python float, copied back)."""
    n = theta.shape[0]
    grid = grid_for(n, max_blocks)
    result = cuda.to_device(np.zeros(1, dtype=np.float64))
    partial = cuda.device_array(grid, dtype=np.float64)
    alpha = theta.dtype.type(alpha)
    _probe_blocks[grid, TPB](theta, g, alpha, out, result, partial, not deterministic)
    if deterministic:
        _reduce_partials[1, TPB](partial, result)
    return float(result.copy_to_host()[0])


def probe_cuda(theta, g, alpha, deterministic=False, max_blocks=None, out=None):
    """Host wrapper: 1-D contiguous NumPy θ, g → (θ − α·g as NumPy, Σ g²). ``max_blocks`` caps the
    grid (tests use a small cap to exercise the grid-stride loop on small arrays); ``out``, a host
    array, is copied to the device as the output buffer (tests pass one filled with NaN)."""
    d_theta = cuda.to_device(theta)
    d_g = cuda.to_device(g)
    d_out = cuda.device_array_like(theta) if out is None else cuda.to_device(out)
    total = probe_device(d_theta, d_g, alpha, d_out, deterministic, max_blocks)
    return d_out.copy_to_host(), total


def _tree(a):
    """The shared-memory tree of the kernels on the last axis (length TPB), step by step."""
    a = a.copy()
    s = TPB // 2
    while s > 0:
        a[..., :s] = a[..., :s] + a[..., s:2 * s]
        s //= 2
    return a[..., 0]


def reference_tree_sum(g, max_blocks=None):
    """The deterministic kernel's Σ g², reproduced in NumPy addition by addition (same grid, same
    grid-stride order per thread, same tree, same second pass). A test oracle for exact equality
    (valid where the device does not contract ``acc + gd·gd`` into a fused multiply-add: the
    simulator; on a GPU compare within a tolerance)."""
    sq = np.asarray(g, dtype=np.float64).ravel() ** 2
    n = sq.size
    grid = grid_for(n, max_blocks)
    width = grid * TPB
    rounds = -(-n // width)
    padded = np.zeros(rounds * width)
    padded[:n] = sq
    acc = np.zeros(width)
    for r in range(rounds):  # each thread's sequential grid-stride sum
        acc = acc + padded[r * width:(r + 1) * width]
    partial = _tree(acc.reshape(grid, TPB))
    second = np.zeros(TPB)
    for start in range(0, grid, TPB):  # reduce_partials' strided sums
        chunk = partial[start:start + TPB]
        second[:chunk.size] = second[:chunk.size] + chunk
    return float(_tree(second))
