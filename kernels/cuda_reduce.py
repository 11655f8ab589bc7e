"""CUDA reductions and the few fused kernels of a device-resident training step.

- ``reduce_kernel(kind, ACC, OUT)``: MiniTorch's ``reduce`` along any set of axes. One block per output
  element (grid-stride over them); its threads walk the reduced elements (strided reads, so no
  transposed copy is made), accumulate in ``ACC`` (float64 for sums and means, the input type for a
  max, NaN propagating) and combine by a shared-memory tree. Fixed order: deterministic.
- ``place``: ``out = θ − α·g``; ``place_save``: ``saved = θ`` and ``θ ← θ − α·g`` in one pass (the
  probe point of Eq. (8) and the step of Algorithm 1, line 8). The product is rounded on its own
  (``mul_rn``: libdevice's round-to-nearest multiply on a GPU) so the compiler cannot contract
  θ − α·g into a fused multiply-add: the result is NumPy's ``θ + (−α·g)`` bit for bit.
- ``ce_forward`` / ``ce_backward``: cross-entropy's pick of −log p[label] (mean or sum) and its
  gradient (softmax − one-hot)·scale, labels read on the device.
- ``avg_pool_forward/backward``, ``max_pool_forward/backward``: one thread per output (forward) or
  per input element (backward, gathering the windows that cover it: no atomics, fixed order).

The pieces these kernels share with the others (the shared-memory trees, NumPy's NaN-propagating
maximum, strided offsets, NCHW indices, the window gather) are the device functions of
``cuda_devfuncs``.
"""
from __future__ import annotations

import math

from numba import cuda, int64

from .cuda_devfuncs import nan_max, nchw_index, strided_offset, tree_max, tree_sum, window_start
from .cuda_elementwise import MAX_BLOCKS, SIM, TPB

__all__ = ["reduce_kernel", "reduce_rows_kernel", "SHORT_ROW", "place_kernel", "log_softmax_rows_kernel",
           "place_save_kernel", "ce_forward_kernel",
           "ce_backward_kernel", "avg_pool_forward_kernel", "avg_pool_backward_kernel", "max_pool_forward_kernel",
           "max_pool_backward_kernel"]


def _mul_rn(T):
    """Round-to-nearest product that the compiler may not fuse with a following add (libdevice's
    ``fmul_rn``/``dmul_rn`` on a GPU; a plain product in the simulator, which never fuses)."""
    if SIM:
        def mul(x, y):
            return x * y
        return mul
    from numba.cuda import libdevice  # pragma: no cover - needs a GPU

    return libdevice.fmul_rn if str(T) == "float32" else libdevice.dmul_rn


_CACHE = {}


def reduce_kernel(kind, ACC, OUT):
    """``kind``: "sum" (Σ / divisor: 1 for a sum, the count for a mean, as NumPy's mean divides) or "max"."""
    key = (kind, ACC, OUT)
    if key in _CACHE:
        return _CACHE[key]
    is_max = kind == "max"

    def reduce_(out, a, k_shape, r_shape, strides, nrows, m, divisor):
        sh = cuda.shared.array(TPB, ACC)
        tid = cuda.threadIdx.x
        row = cuda.blockIdx.x
        while row < nrows:  # the same row for every thread of the block: uniform control flow
            base = strided_offset(row, 0, k_shape, strides)
            if is_max:
                acc = ACC(-math.inf)
            else:
                acc = ACC(0)
            j = tid
            while j < m:
                v = ACC(a[strided_offset(j, base, r_shape, strides)])
                if is_max:
                    acc = nan_max(acc, v)
                else:
                    acc += v
                j += TPB
            sh[tid] = acc
            if is_max:
                tree_max(sh, tid)
                if tid == 0:
                    out[row] = OUT(sh[0])
            else:
                tree_sum(sh, tid)
                if tid == 0:
                    out[row] = OUT(sh[0] / divisor)
            cuda.syncthreads()
            row += cuda.gridDim.x

    _CACHE[key] = k = cuda.jit(reduce_)
    return k


def reduce_rows_kernel(kind, ACC, OUT):
    """The same reduction with one *thread* per output element (no shared memory, no barriers): for
    short rows (log-softmax over classes, tiny reductions), where a block per row would idle."""
    key = ("rows", kind, ACC, OUT)
    if key in _CACHE:
        return _CACHE[key]
    is_max = kind == "max"

    def reduce_rows(out, a, k_shape, r_shape, strides, nrows, m, divisor):
        row = cuda.grid(1)
        step = cuda.gridsize(1)
        while row < nrows:
            base = strided_offset(row, 0, k_shape, strides)
            if is_max:
                acc = ACC(-math.inf)
            else:
                acc = ACC(0)
            for j in range(m):
                v = ACC(a[strided_offset(j, base, r_shape, strides)])
                if is_max:
                    acc = nan_max(acc, v)
                else:
                    acc += v
            if is_max:
                out[row] = OUT(acc)
            else:
                out[row] = OUT(acc / divisor)
            row += step

    _CACHE[key] = k = cuda.jit(reduce_rows)
    return k


#: rows up to this long are reduced one thread per row (``reduce_rows_kernel``)
SHORT_ROW = 64


def place_kernel(T):
    """out = θ − α·g (Eq. 8's probe point; Algorithm 1, line 8), the product rounded on its own."""
    key = ("place", T)
    if key in _CACHE:
        return _CACHE[key]
    mul = _mul_rn(T)

    def place(theta, g, alpha, out):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < theta.shape[0]:
            out[i] = theta[i] - mul(alpha, g[i])
            i += step

    _CACHE[key] = k = cuda.jit(place)
    return k


def place_save_kernel(T):
    """saved = θ; θ ← θ − α·g, one pass."""
    key = ("place_save", T)
    if key in _CACHE:
        return _CACHE[key]
    mul = _mul_rn(T)

    def place_save(theta, g, alpha, saved):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < theta.shape[0]:
            t = theta[i]
            saved[i] = t
            theta[i] = t - mul(alpha, g[i])
            i += step

    _CACHE[key] = k = cuda.jit(place_save)
    return k


def log_softmax_rows_kernel(T):
    """One thread per row of (N, C) logits: logp = (x − max) − log Σ exp(x − max), the same steps as
    the NumPy op's max-shifted formula (stable for logits of ±1e4)."""
    key = ("lsm_rows", T)
    if key in _CACHE:
        return _CACHE[key]

    def log_softmax_rows(x, out):
        r = cuda.grid(1)
        step = cuda.gridsize(1)
        c = x.shape[1]
        while r < x.shape[0]:
            m = x[r, 0]
            for j in range(1, c):
                m = nan_max(m, x[r, j])
            s = T(0)
            for j in range(c):
                s += math.exp(x[r, j] - m)
            ls = math.log(s)
            for j in range(c):
                out[r, j] = (x[r, j] - m) - ls
            r += step

    _CACHE[key] = k = cuda.jit(log_softmax_rows)
    return k


def ce_forward_kernel(T):
    key = ("ce_f", T)
    if key in _CACHE:
        return _CACHE[key]

    def ce_forward(logp, labels, scale, out):
        """One block: out[0] = −(Σ_n logp[n, label_n])·scale, summed in T by a fixed tree."""
        sh = cuda.shared.array(TPB, T)
        tid = cuda.threadIdx.x
        n = logp.shape[0]
        c = logp.shape[1]
        acc = T(0)
        i = tid
        while i < n:
            lab = labels[i]
            if lab >= 0 and lab < c:  # the host checked the range; a label outside it never reads
                acc += logp[i, lab]  # outside the row (a negative index would wrap round): NaN loss
            else:
                acc += T(math.nan)
            i += TPB
        sh[tid] = acc
        tree_sum(sh, tid)
        if tid == 0:
            out[0] = -sh[0] * scale

    _CACHE[key] = k = cuda.jit(ce_forward)
    return k


@cuda.jit
def ce_backward_kernel(logp, labels, g, scale, out):
    """out[n, c] = (exp(logp[n, c]) − [c = label_n]) · (g·scale)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    c = logp.shape[1]
    total = logp.shape[0] * c
    factor = g[0] * scale
    while i < total:
        r = i // c
        col = i - r * c
        v = math.exp(logp[r, col])
        if col == labels[r]:
            v -= 1
        out[r, col] = v * factor
        i += step


def avg_pool_forward_kernel(T):
    key = ("avg_f", T)
    if key in _CACHE:
        return _CACHE[key]

    def avg_pool_forward(x, kh, kw, sh, sw, ph, pw, div, out):
        """out[n,c,a,b] = Σ_window x / div (zero padding; div = kH·kW or the real-element count)."""
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        nb, c, oh, ow = out.shape
        h = x.shape[2]
        w = x.shape[3]
        while i < nb * c * oh * ow:
            n, ch, a, b = nchw_index(i, c, oh, ow)
            acc = T(0)
            cnt = 0
            for di in range(kh):
                y = a * sh + di - ph
                for dj in range(kw):
                    xx = b * sw + dj - pw
                    if 0 <= y < h and 0 <= xx < w:
                        acc += x[n, ch, y, xx]
                        cnt += 1
            d = T(div) if div > 0 else T(cnt)
            out[n, ch, a, b] = acc / d
            i += step

    _CACHE[key] = k = cuda.jit(avg_pool_forward)
    return k


def avg_pool_backward_kernel(T):
    key = ("avg_b", T)
    if key in _CACHE:
        return _CACHE[key]

    def avg_pool_backward(g, kh, kw, sh, sw, ph, pw, div, gx):
        """gx[n,c,y,x] = Σ over the windows covering (y, x) of g / div (kernel offsets i, then j)."""
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        nb, c, h, w = gx.shape
        oh = g.shape[2]
        ow = g.shape[3]
        while i < nb * c * h * w:
            n, ch, y, xx = nchw_index(i, c, h, w)
            acc = T(0)
            for di in range(kh):
                a = window_start(y, ph, di, sh, oh)
                if a >= 0:
                    for dj in range(kw):
                        b = window_start(xx, pw, dj, sw, ow)
                        if b >= 0:
                            if div > 0:
                                d = T(div)
                            else:  # count_include_pad=False: the window's real elements
                                cnt = 0
                                for ei in range(kh):
                                    yy = a * sh + ei - ph
                                    for ej in range(kw):
                                        x2 = b * sw + ej - pw
                                        if 0 <= yy < h and 0 <= x2 < w:
                                            cnt += 1
                                d = T(cnt)
                            acc += g[n, ch, a, b] / d
            gx[n, ch, y, xx] = acc
            i += step

    _CACHE[key] = k = cuda.jit(avg_pool_backward)
    return k


def max_pool_forward_kernel(T):
    key = ("max_f", T)
    if key in _CACHE:
        return _CACHE[key]

    def max_pool_forward(x, kh, kw, sh, sw, ph, pw, out, idx):
        """out = max over the window (padding = −∞, NaN wins), idx = its first position (row-major
        in the window); a window of only −∞ points at its first real element (PyTorch)."""
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        nb, c, oh, ow = out.shape
        h = x.shape[2]
        w = x.shape[3]
        while i < nb * c * oh * ow:
            n, ch, a, b = nchw_index(i, c, oh, ow)
            best = T(-math.inf)
            best_k = int64(-1)
            first_real = int64(-1)
            for di in range(kh):
                y = a * sh + di - ph
                for dj in range(kw):
                    xx = b * sw + dj - pw
                    if 0 <= y < h and 0 <= xx < w:
                        k = di * kw + dj
                        if first_real < 0:
                            first_real = k
                        v = x[n, ch, y, xx]
                        if best == best and (v != v or v > best):
                            best = v
                            best_k = k
            if best_k < 0:
                best_k = first_real
            out[n, ch, a, b] = best
            idx[n, ch, a, b] = best_k
            i += step

    _CACHE[key] = k = cuda.jit(max_pool_forward)
    return k


def max_pool_backward_kernel(T):
    key = ("max_b", T)
    if key in _CACHE:
        return _CACHE[key]

    def max_pool_backward(g, idx, kh, kw, sh, sw, ph, pw, gx):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        nb, c, h, w = gx.shape
        oh = g.shape[2]
        ow = g.shape[3]
        while i < nb * c * h * w:
            n, ch, y, xx = nchw_index(i, c, h, w)
            acc = T(0)
            for di in range(kh):
                a = window_start(y, ph, di, sh, oh)
                if a >= 0:
                    for dj in range(kw):
                        b = window_start(xx, pw, dj, sw, ow)
                        if b >= 0:
                            if idx[n, ch, a, b] == di * kw + dj:
                                acc += g[n, ch, a, b]
            gx[n, ch, y, xx] = acc
            i += step

    _CACHE[key] = k = cuda.jit(max_pool_backward)
    return k
