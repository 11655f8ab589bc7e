"""CPU Numba kernels: the twins of the CUDA kernels in ``cuda_matmul.py``, ``cuda_conv.py`` and ``cuda_probe.py``.

Every kernel is ``@njit(cache=True)`` (compiled once per dtype and layout, then loaded from Numba's
on-disk cache), works on float32 and float64, and writes every element of its output, so tests can
fill outputs with NaN first and catch an unwritten element.

- :func:`matmul_kernel`: C = A·B with row blocks in parallel (``prange``). A and B may be any
  strided views (``a.T`` is read in place, no copy). Accumulates in the output's dtype, in k order.
  This is a plain blocked loop nest: it is here as the CPU twin of the CUDA kernel and for testing;
  for speed the ``numba`` backend keeps NumPy's BLAS ``matmul`` (measured in ``qlabref bench``).
- :func:`im2col_kernel` / :func:`col2im_kernel`: the receptive-field matrix of a convolution and its
  adjoint, with the zero padding handled by bounds checks (no padded copy of the input) and the
  col2im result written straight into the unpadded NCHW input gradient (no crop, no transpose).
- :func:`probe_kernel`: ``out = θ − α·g`` and Σ g² (float64 accumulation, no float64 copy of g) in
  one pass over main memory. The sum runs over fixed chunks of ``PROBE_CHUNK`` elements whose sums
  are added in chunk order, so the result is the same bits whatever the thread count and from call
  to call: the CPU probe is always deterministic (its order within a chunk is the SIMD order LLVM
  compiled, so it can differ in the last bits from NumPy's pairwise sum and between CPUs).

Thread count: the ``parallel=True`` kernels use Numba's thread pool, by default one thread per core.
Where ``NUMBA_NUM_THREADS`` is not set but a BLAS/OpenMP thread count is (``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, in that order), importing this module sets the importing
thread's Numba thread count to that number (:func:`follow_blas_threads`), so the one setting that
already keeps BLAS off busy cores does the same for the kernels. Measured on the 2-core machine with
two other training processes running, ``OPENBLAS_NUM_THREADS=1``: a QLABGrad MLP step took 123-127 ms
with 2 Numba threads and 12.1-12.2 ms with 1 (a parallel kernel waits for its slowest thread, and on a
busy core that thread is descheduled).
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

__all__ = [
    "BLAS_THREAD_VARIABLES",
    "follow_blas_threads",
    "MATMUL_BLOCK",
    "PROBE_CHUNK",
    "matmul_kernel",
    "im2col_kernel",
    "col2im_kernel",
    "probe_kernel",
    "probe_save_kernel",
    "sum_sq_kernel",
    "copy_kernel",
]

#: the BLAS/OpenMP variables whose thread count the Numba kernels follow (first one set wins)
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def follow_blas_threads(environ=None):
    """Set this thread's Numba thread count to the BLAS thread count of ``environ`` (default
    ``os.environ``) when ``NUMBA_NUM_THREADS`` is unset and a BLAS/OpenMP count is set; capped at
    Numba's pool size. Returns the thread count now in force for the calling thread."""
    env = os.environ if environ is None else environ
    if not env.get("NUMBA_NUM_THREADS"):
        for var in BLAS_THREAD_VARIABLES:
            value = (env.get(var) or "").strip()
            if value.isdigit() and int(value) >= 1:
                numba.set_num_threads(min(int(value), numba.config.NUMBA_NUM_THREADS))
                break
    return numba.get_num_threads()


follow_blas_threads()

#: rows of C per parallel task in :func:`matmul_kernel`
MATMUL_BLOCK = 16
#: elements per parallel task of the probe (its partial sums are added in this fixed order)
PROBE_CHUNK = 1 << 14


@njit(parallel=True, cache=True)
def matmul_kernel(a, b, c):
    """c[i, j] = Σ_k a[i, k]·b[k, j] for (M, K)·(K, N) → (M, N); ``c`` is overwritten."""
    m, k = a.shape
    n = b.shape[1]
    nblocks = (m + MATMUL_BLOCK - 1) // MATMUL_BLOCK
    for blk in prange(nblocks):
        i0 = blk * MATMUL_BLOCK
        i1 = min(i0 + MATMUL_BLOCK, m)
        for i in range(i0, i1):
            for j in range(n):
                c[i, j] = 0
            for kk in range(k):
                aik = a[i, kk]
                for j in range(n):
                    c[i, j] += aik * b[kk, j]


@njit(parallel=True, cache=True)
def im2col_kernel(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    """cols[(n·OH + a)·OW + b, (c·kH + i)·kW + j] = x[n, c, a·sH + i − pH, b·sW + j − pW] (0 outside).

    Each row of ``cols`` is written in order; a kernel row that lies wholly inside the input is a
    copy of kW contiguous values (no bounds checks), only rows touching the padding check each one."""
    nb, ch, h, w = x.shape
    for n in prange(nb):
        for a in range(oh):
            for b in range(ow):
                r = cols[(n * oh + a) * ow + b]
                x0 = b * sw - pw
                inside_x = x0 >= 0 and x0 + kw <= w
                col = 0
                for c in range(ch):
                    for i in range(kh):
                        y = a * sh + i - ph
                        if inside_x and 0 <= y < h:
                            src = x[n, c, y]
                            for j in range(kw):
                                r[col + j] = src[x0 + j]
                        else:
                            for j in range(kw):
                                xx = x0 + j
                                if 0 <= y < h and 0 <= xx < w:
                                    r[col + j] = x[n, c, y, xx]
                                else:
                                    r[col + j] = 0
                        col += kw


@njit(parallel=True, cache=True)
def col2im_kernel(gcols, kh, kw, sh, sw, ph, pw, oh, ow, gx):
    """Adjoint of :func:`im2col_kernel`: gx[n, c, y, x] = Σ of the gcols entries that im2col read from
    x[n, c, y, x]. ``gx`` (N, C, H, W) is overwritten. Each element's terms are added in kernel-offset
    order (i, then j), as in the NumPy path's col2im loop."""
    nb, ch, h, w = gx.shape
    for n in prange(nb):
        for c in range(ch):
            for y in range(h):
                for xx in range(w):
                    gx[n, c, y, xx] = 0
            for i in range(kh):
                for j in range(kw):
                    col = (c * kh + i) * kw + j
                    for a in range(oh):
                        y = a * sh + i - ph
                        if y < 0 or y >= h:
                            continue
                        for b in range(ow):
                            xx = b * sw + j - pw
                            if 0 <= xx < w:
                                gx[n, c, y, xx] += gcols[(n * oh + a) * ow + b, col]


@njit(fastmath={"reassoc"}, cache=True)
def _sum_sq(g):
    """Σ g² in float64 over one chunk. ``reassoc`` lets LLVM split the sum over SIMD lanes (4x faster
    than one sequential chain); the compiled order is fixed, so repeated calls give the same bits."""
    s = 0.0
    for i in range(g.shape[0]):
        d = np.float64(g[i])
        s += d * d
    return s


@njit(cache=True)
def _place_chunk(theta, g, alpha, out):
    """out = θ − α·g over one chunk (``out`` may be ``theta``); returns the chunk's Σ g², read while
    the chunk is still in cache."""
    for i in range(theta.shape[0]):
        out[i] = theta[i] - alpha * g[i]
    return _sum_sq(g)


@njit(parallel=True, cache=True)
def probe_kernel(theta, g, alpha, out):
    """out = θ − α·g (``alpha`` in the arrays' dtype; ``out`` may be ``theta`` itself) and Σ g² in
    float64, one pass over main memory for 1-D contiguous arrays: each chunk of ``PROBE_CHUNK``
    elements is placed, then summed while it sits in cache. The chunk sums are added in order, so
    the result does not depend on the thread count."""
    n = theta.shape[0]
    nchunks = (n + PROBE_CHUNK - 1) // PROBE_CHUNK
    partial = np.empty(nchunks, dtype=np.float64)
    for ck in prange(nchunks):
        s = ck * PROBE_CHUNK
        e = min(s + PROBE_CHUNK, n)
        partial[ck] = _place_chunk(theta[s:e], g[s:e], alpha, out[s:e])
    total = 0.0
    for ck in range(nchunks):
        total += partial[ck]
    return total


@njit(parallel=True, cache=True)
def sum_sq_kernel(g):
    """Σ g² in float64 for a 1-D contiguous array: the probe's sum alone (same chunks, same order)."""
    n = g.shape[0]
    nchunks = (n + PROBE_CHUNK - 1) // PROBE_CHUNK
    partial = np.empty(nchunks, dtype=np.float64)
    for ck in prange(nchunks):
        s = ck * PROBE_CHUNK
        partial[ck] = _sum_sq(g[s:min(s + PROBE_CHUNK, n)])
    total = 0.0
    for ck in range(nchunks):
        total += partial[ck]
    return total


@njit(parallel=True, cache=True)
def probe_save_kernel(theta, g, alpha, saved):
    """The fused first probe of a QLAB step: saved = θ, θ ← θ − α·g in place, and Σ g² (float64),
    with θ and g read from main memory once. Same chunks and summation as :func:`probe_kernel`."""
    n = theta.shape[0]
    nchunks = (n + PROBE_CHUNK - 1) // PROBE_CHUNK
    partial = np.empty(nchunks, dtype=np.float64)
    for ck in prange(nchunks):
        s = ck * PROBE_CHUNK
        e = min(s + PROBE_CHUNK, n)
        th = theta[s:e]
        sv = saved[s:e]
        for i in range(th.shape[0]):
            sv[i] = th[i]
        partial[ck] = _place_chunk(sv, g[s:e], alpha, th)
    total = 0.0
    for ck in range(nchunks):
        total += partial[ck]
    return total


@njit(parallel=True, cache=True)
def copy_kernel(src, dst):
    """dst = src, in parallel chunks: the memory-bandwidth yardstick ``qlabref bench`` holds the probe
    against (a pass that moves the same bytes and does no arithmetic)."""
    n = src.shape[0]
    nchunks = (n + PROBE_CHUNK - 1) // PROBE_CHUNK
    for ck in prange(nchunks):
        s = ck * PROBE_CHUNK
        e = min(s + PROBE_CHUNK, n)
        d = dst[s:e]
        sr = src[s:e]
        for i in range(d.shape[0]):
            d[i] = sr[i]
