"""CUDA higher-order elementwise kernels on flat device buffers (MiniTorch's ``map``/``zip`` with
NumPy broadcasting, plus the strided copies that transpose, slice and broadcast).

Every array here is a 1-D contiguous device buffer; its logical shape and the element *strides* by
which a kernel reads it are passed as tuples. A broadcast operand is read with stride 0 along the
axes it is broadcast over, so one kernel covers ``a + b`` for any two broadcast-compatible shapes,
a scalar operand (a one-element buffer, every stride 0), a transposed or sliced view (permuted or
stepped strides) and ``broadcast_to`` (a copy with zero strides). Output element ``i`` (C order of
the output shape) reads operand element ``offset + Σ_d idx_d·stride_d`` where ``idx`` is ``i``'s
multi-index; an operand whose strides are the output's own contiguous strides is read at ``i``
directly (``flat`` flag), with no index arithmetic.

- ``zip_kernel(op, T, OUT)``: ``out[i] = OUT(op(T(a[·]), T(b[·])))`` (``T``: the NumPy result dtype
  the operation is computed in, so ``float32 * bool`` is a float32 product, as in NumPy);
- ``map_kernel(op, T, OUT)``: ``out[i] = OUT(op(T(a[·])))``;
- ``where_kernel(T)``: ``out[i] = x[·] if c[·] else y[·]``;
- ``gather``: ``out[i] = src[offset + Σ idx_d·stride_d]`` (transpose, slice, broadcast_to, astype);
- ``scatter``: ``dst[offset + Σ idx_d·stride_d] = src[i]`` (assignment into a basic-index view);
- ``fill``: ``out[i] = value`` (constants are made on the device: no host→device copy).

Grid-stride loops: ``blocks_for(n)`` blocks of ``TPB`` threads, capped at ``MAX_BLOCKS``.
"""
from __future__ import annotations

import math

from numba import cuda
from numba.core import config

from .cuda_devfuncs import strided_offset

__all__ = ["TPB", "MAX_BLOCKS", "SIM", "blocks_for", "zip_kernel", "map_kernel", "where_kernel", "gather_kernel",
           "scatter_kernel", "fill_kernel", "BINARY", "UNARY"]

SIM = bool(config.ENABLE_CUDASIM)
#: threads per block (small in the simulator, where every thread is a Python thread)
TPB = 8 if SIM else 256
#: grid cap; larger arrays are covered by the grid-stride loop
MAX_BLOCKS = 16 if SIM else 8192


def blocks_for(n):
    return max(1, min(MAX_BLOCKS, (int(n) + TPB - 1) // TPB))


# ----------------------------------------------------------------------------- scalar functions
def _add(x, y):
    return x + y


def _sub(x, y):
    return x - y


def _mul(x, y):
    return x * y


def _div(x, y):
    return x / y


def _maximum(x, y):
    if x != x:  # NaN propagates, as np.maximum
        return x
    if y != y:
        return y
    return x if x >= y else y


def _minimum(x, y):
    if x != x:
        return x
    if y != y:
        return y
    return x if x <= y else y


def _power(x, y):
    return x ** y


def _gt(x, y):
    return x > y


def _ge(x, y):
    return x >= y


def _lt(x, y):
    return x < y


def _le(x, y):
    return x <= y


def _eq(x, y):
    return x == y


def _ne(x, y):
    return x != y


def _and(x, y):
    return x and y


def _or(x, y):
    return x or y


def _neg(x):
    return -x


def _exp(x):
    return math.exp(x)


def _log(x):
    return math.log(x)  # on a GPU: -inf at 0 and NaN below (libdevice), as NumPy


def _sqrt(x):
    return math.sqrt(x)


def _tanh(x):
    return math.tanh(x)


def _abs(x):
    return abs(x)


def _sign(x):
    if x > 0:
        return 1
    if x < 0:
        return -1
    return x  # 0 (keeps -0.0 as 0 in the sum) and NaN


def _sin(x):
    return math.sin(x)


def _cos(x):
    return math.cos(x)


def _expit(x):
    # 1 / (1 + e^{-x}) without overflow for large |x| (scipy.special.expit's values)
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)
    return e / (1 + e)


def _isneginf(x):
    return x == -math.inf


def _not(x):
    return not x


if SIM:  # the simulator runs these in Python: NumPy's scalar functions give NumPy's inf/NaN, no exceptions
    import numpy as _np

    def _add(x, y):
        with _np.errstate(all="ignore"):
            return x + y

    def _sub(x, y):
        with _np.errstate(all="ignore"):
            return x - y

    def _mul(x, y):
        with _np.errstate(all="ignore"):
            return x * y

    def _div(x, y):
        with _np.errstate(all="ignore"):
            return x / y

    def _power(x, y):
        with _np.errstate(all="ignore"):
            return _np.power(x, y)

    def _exp(x):
        with _np.errstate(all="ignore"):
            return _np.exp(x)

    def _log(x):
        with _np.errstate(all="ignore"):
            return _np.log(x)

    def _sqrt(x):
        with _np.errstate(all="ignore"):
            return _np.sqrt(x)

    def _tanh(x):
        return _np.tanh(x)

    def _sin(x):
        return _np.sin(x)

    def _cos(x):
        return _np.cos(x)

    def _expit(x):
        with _np.errstate(all="ignore"):
            if x >= 0:
                return 1 / (1 + _np.exp(-x))
            e = _np.exp(x)
            return e / (1 + e)


#: NumPy ufunc name → (scalar function, returns bool)
BINARY = {"add": (_add, False), "subtract": (_sub, False), "multiply": (_mul, False), "true_divide": (_div, False),
          "divide": (_div, False), "maximum": (_maximum, False), "minimum": (_minimum, False),
          "power": (_power, False), "greater": (_gt, True), "greater_equal": (_ge, True), "less": (_lt, True),
          "less_equal": (_le, True), "equal": (_eq, True), "not_equal": (_ne, True), "logical_and": (_and, True),
          "bitwise_and": (_and, True), "logical_or": (_or, True), "bitwise_or": (_or, True)}
UNARY = {"negative": (_neg, False), "exp": (_exp, False), "log": (_log, False), "sqrt": (_sqrt, False),
         "tanh": (_tanh, False), "absolute": (_abs, False), "sign": (_sign, False), "sin": (_sin, False),
         "cos": (_cos, False), "expit": (_expit, False), "isneginf": (_isneginf, True),
         "logical_not": (_not, True), "invert": (_not, True)}


# ----------------------------------------------------------------------------- kernels
_CACHE = {}


def _device_fn(fn):
    key = ("dev", fn)
    if key not in _CACHE:
        _CACHE[key] = cuda.jit(device=True)(fn)
    return _CACHE[key]


def _to_bool(x):
    return x != 0


def _cast(T):
    """The conversion a kernel applies: the numba type itself for numbers, ``x != 0`` for booleans
    (NumPy's rule; a numba boolean type is not callable as a cast on every target)."""
    if str(T) == "bool":
        return _device_fn(_to_bool)
    return T


def zip_kernel(name, T, OUT):
    """The broadcasting binary kernel of ufunc ``name`` computed in numba type ``T``, stored as ``OUT``."""
    key = ("zip", name, T, OUT)
    if key in _CACHE:
        return _CACHE[key]
    f = _device_fn(BINARY[name][0])
    T, OUT = _cast(T), _cast(OUT)

    def zip_(out, a, a_off, a_st, a_flat, b, b_off, b_st, b_flat, shape, n):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            ia = i if a_flat else strided_offset(i, a_off, shape, a_st)
            ib = i if b_flat else strided_offset(i, b_off, shape, b_st)
            out[i] = OUT(f(T(a[ia]), T(b[ib])))
            i += step

    _CACHE[key] = k = cuda.jit(zip_)
    return k


def map_kernel(name, T, OUT):
    """The unary kernel of ufunc ``name`` (contiguous input) computed in ``T``, stored as ``OUT``."""
    key = ("map", name, T, OUT)
    if key in _CACHE:
        return _CACHE[key]
    f = _device_fn(UNARY[name][0])
    T, OUT = _cast(T), _cast(OUT)

    def map_(out, a, n):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            out[i] = OUT(f(T(a[i])))
            i += step

    _CACHE[key] = k = cuda.jit(map_)
    return k


def where_kernel(T):
    key = ("where", T)
    if key in _CACHE:
        return _CACHE[key]
    T = _cast(T)

    def where_(out, c, c_st, x, x_st, y, y_st, shape, n):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:  # one multi-index for three strided operands (its divisions done once)
            ic = 0
            ix = 0
            iy = 0
            rem = i
            for d in range(len(shape) - 1, -1, -1):
                idx = rem % shape[d]
                rem //= shape[d]
                ic += idx * c_st[d]
                ix += idx * x_st[d]
                iy += idx * y_st[d]
            out[i] = T(x[ix]) if c[ic] else T(y[iy])
            i += step

    _CACHE[key] = k = cuda.jit(where_)
    return k


def gather_kernel(OUT):
    key = ("gather", OUT)
    if key in _CACHE:
        return _CACHE[key]
    OUT = _cast(OUT)

    def gather(out, src, off, st, shape, n):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            out[i] = OUT(src[strided_offset(i, off, shape, st)])
            i += step

    _CACHE[key] = k = cuda.jit(gather)
    return k


def scatter_kernel(OUT):
    key = ("scatter", OUT)
    if key in _CACHE:
        return _CACHE[key]
    OUT = _cast(OUT)

    def scatter(dst, off, st, src, s_st, shape, n):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:  # one multi-index for both views (its divisions done once)
            j = off
            k = 0
            rem = i
            for d in range(len(shape) - 1, -1, -1):
                idx = rem % shape[d]
                rem //= shape[d]
                j += idx * st[d]
                k += idx * s_st[d]
            dst[j] = OUT(src[k])
            i += step

    _CACHE[key] = k = cuda.jit(scatter)
    return k


def fill_kernel(OUT):
    key = ("fill", OUT)
    if key in _CACHE:
        return _CACHE[key]
    OUT = _cast(OUT)

    def fill(out, value, n):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < n:
            out[i] = OUT(value)
            i += step

    _CACHE[key] = k = cuda.jit(fill)
    return k
