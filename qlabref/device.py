"""Device-resident arrays: what a Tensor holds after ``.to("cuda")``.

``DeviceArray`` is a C-contiguous array in GPU memory (a flat Numba device buffer plus a shape and a
dtype) that speaks the part of NumPy's protocols the ops in ``qlabref.ops`` use:

- ``__array_ufunc__``: ``+ − × ÷``, ``np.maximum``, ``np.power``, comparisons, ``np.exp/log/sqrt/tanh/
  abs/sign/sin/cos``, ``scipy.special.expit``, with NumPy's broadcasting and NumPy 2's type promotion
  (a Python scalar does not widen a float32 array), ``out=`` for in-place updates. One broadcasting
  ``zip``/``map`` kernel each (``qlabref.kernels.cuda_elementwise``).
- methods ``sum/mean/max(axis, keepdims, dtype)`` (one ``reduce`` kernel, float64 accumulation for
  sums), ``reshape``, ``ravel``, ``transpose``/``.T`` (a strided-copy kernel), ``astype``, ``copy``,
  basic indexing and assignment (ints, slices, None, ``...``), ``item()``/``float()`` (one scalar back);
- ``__array_function__``: ``np.transpose``, ``np.reshape``, ``np.expand_dims``, ``np.broadcast_to``,
  ``np.where``, ``np.empty_like``/``zeros_like``/``ones_like``, ``np.copyto``, ``np.shape``,
  ``np.ascontiguousarray``, ``np.sum``/``np.mean``/``np.max``; any other NumPy function raises
  NumPy's ``TypeError`` (no silent trip through the host).

So the NumPy code of most ops (elementwise ops, reductions, reshapes, log-softmax, BatchNorm with its
statistics, adaptive average pooling) runs unchanged on the GPU. The ops whose NumPy code uses
strided views, fancy indexing or BLAS (``linear``, ``matmul``, ``conv2d``, the pools, cross-entropy,
``sum``/``mean``/``max`` for their ``np.asarray``, indexing) have device twins in ``TWINS``
(``Function.apply`` picks the twin when an input lives on the device); they call the CUDA kernels
directly. The backend primitives (``matmul``, ``im2col``, ``col2im``, the probe) route device arrays
to ``DeviceBackend``, whatever backend is selected.

Transfers happen only at the explicit boundary: ``to_device`` (``Tensor.to("cuda")``,
``Module.to("cuda")``, a host array mixed into a device op) and ``to_host`` (``.numpy()``,
``.to("cpu")``, ``float()``/``item()`` of a scalar, ``np.asarray``/``np.array`` of a device array).
Every one is counted in ``TRAFFIC`` (``count_traffic()`` gives a per-block record), which the tests
use to pin a training step to "the minibatch in, a few scalars out".
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os

import numpy as np

__all__ = ["DeviceArray", "DEVICES", "is_device", "to_device", "to_host", "TRAFFIC", "count_traffic",
           "DeviceBackend", "BACKEND", "TWINS", "check_device_name", "tensor_to", "module_to", "empty_cache",
           "count_launches", "flat_storage", "flat_view", "poison_pool"]

DEVICES = ("cpu", "cuda")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def check_device_name(device, owner):
    if isinstance(device, str) and device.strip().lower() in DEVICES:
        return device.strip().lower()
    raise ValueError(f"{owner}: unknown device {device!r}; choose 'cpu' or 'cuda'")


_CUDA = []


def _cuda():
    """numba.cuda after checking (once) that CUDA kernels can run here (a GPU or the simulator)."""
    if not _CUDA:
        from .kernels import launch

        _CUDA.append(launch.require_cuda())
    return _CUDA[0]


def _k():
    from .kernels import cuda_elementwise

    return cuda_elementwise


def _r():
    from .kernels import cuda_reduce

    return cuda_reduce


def _nb(dtype):
    from numba import from_dtype

    return from_dtype(np.dtype(dtype))


_NB = {}


def nbtype(dtype):
    dt = np.dtype(dtype)
    t = _NB.get(dt)
    if t is None:
        t = _NB[dt] = _nb(dt)
    return t


# ------------------------------------------------------------------------------------ traffic
class _Traffic:
    """Counts of host↔device copies made by this module (calls and bytes)."""

    def __init__(self):
        self.h2d = 0
        self.h2d_bytes = 0
        self.d2h = 0
        self.d2h_bytes = 0
        self.log = []  # (direction, shape, nbytes) while a count_traffic() block is open
        self.logging = 0

    def snapshot(self):
        return dict(h2d=self.h2d, h2d_bytes=self.h2d_bytes, d2h=self.d2h, d2h_bytes=self.d2h_bytes)


TRAFFIC = _Traffic()


@contextlib.contextmanager
def count_traffic():
    """``with count_traffic() as rec: ...``: ``rec`` gets ``h2d``, ``h2d_bytes``, ``d2h``, ``d2h_bytes``
    and ``log`` (a list of ``(direction, shape, nbytes)``) for the copies made inside the block."""
    rec = {}
    start = TRAFFIC.snapshot()
    n0 = len(TRAFFIC.log)
    TRAFFIC.logging += 1
    try:
        yield rec
    finally:
        TRAFFIC.logging -= 1
        end = TRAFFIC.snapshot()
        rec.update({k: end[k] - start[k] for k in end})
        rec["log"] = TRAFFIC.log[n0:]
        if not TRAFFIC.logging:
            del TRAFFIC.log[:]


def _count(direction, shape, nbytes):
    if direction == "h2d":
        TRAFFIC.h2d += 1
        TRAFFIC.h2d_bytes += nbytes
    else:
        TRAFFIC.d2h += 1
        TRAFFIC.d2h_bytes += nbytes
    if TRAFFIC.logging:
        TRAFFIC.log.append((direction, tuple(shape), int(nbytes)))


# ------------------------------------------------------------------------------------ launches
def _count_launch(name):
    from .kernels.launch import count_launch

    count_launch(name)


def _count_copy():
    from .kernels.launch import count_copy

    count_copy()


@contextlib.contextmanager
def count_launches():
    """``with count_launches() as rec: ...``: ``rec`` gets ``kernels`` (kernel launches made inside the
    block through qlabref's CUDA code: this module and the kernel modules' entry points), ``copies``
    (device-to-device copies) and ``by_name`` (launches per kernel name, copies as ``"copy_d2d"``).
    Counted where qlabref configures a launch, so the same on a GPU and in the simulator (the
    simulator's internals are not counted; device functions are not launches)."""
    from .kernels.launch import LAUNCHES

    rec = {}
    k0, c0, by0 = LAUNCHES.snapshot()
    try:
        yield rec
    finally:
        k1, c1, by1 = LAUNCHES.snapshot()
        rec["kernels"] = k1 - k0
        rec["copies"] = c1 - c0
        rec["by_name"] = {k: v - by0.get(k, 0) for k, v in sorted(by1.items()) if v - by0.get(k, 0)}


# ------------------------------------------------------------------------------------ helpers
def is_device(x) -> bool:
    return isinstance(x, DeviceArray)


def _cstrides(shape):
    st, acc = [], 1
    for n in reversed(shape):
        st.append(acc)
        acc *= int(n)
    return tuple(reversed(st))


def _prod(shape):
    return math.prod(int(n) for n in shape)


def _launch(kernel, n, name):
    """``kernel`` configured for ``n`` threads (one per element), counted as one launch of ``name``."""
    k = _k()
    _count_launch(name)
    return kernel[k.blocks_for(n), k.TPB]


#: freed buffers by (elements, dtype), reused by the next array of that size: a training step
#: allocates the same shapes every time, and cuMemAlloc/cuMemFree per op would cost more than the
#: kernels (cuMemFree also synchronises). ``empty_cache()`` drops them.
_POOL = {}
#: every buffer the pool made, by id, held here (not only by its DeviceArray) until ``empty_cache``
#: drops it while free. This is what makes ``DeviceArray.__del__`` safe: a DeviceArray that dies in a
#: reference cycle is collected together with everything only it reaches, and CPython clears the weak
#: references of that garbage (running their callbacks) *before* it calls ``__del__``. Numba's
#: OwnedPointer frees its memory from such a callback (``weakref.finalize``), so a buffer reachable
#: only from the dying array would be freed first and then put back into the pool by ``__del__``:
#: the next array of that size would get freed memory (on a GPU: ``ReferenceError: weakly-referenced
#: object no longer exists`` in OwnedPointer, ``CUDA_ERROR_INVALID_VALUE`` from cuMemcpyDtoH, then
#: ``CUDA_ERROR_ILLEGAL_ADDRESS``). Held here, a pooled buffer is never part of such garbage.
#: Views never return a buffer: a reshape shares its owner's ``buf``, a ``flat_view`` (each parameter
#: and gradient after ``Module.flat_parameters()`` / ``flat_grads()`` on the GPU) holds a Numba slice
#: ``buf[a:b]`` of it (same memory); both have ``_pooled`` False and keep the owner in ``_base``, so the
#: owner (the only pooled one) dies, and its buffer goes back to the pool, only after every view died.
_OWNED = {}


#: the simulator's poisoning aid (``poison_pool``): off, or on (then every pooled buffer is filled
#: with all-ones bytes when it is handed out and again when it goes back to the pool)
_POISON = {"on": False}


def poison_pool(on=True):
    """Make memory errors of the device-resident path visible in Numba's CUDA simulator.

    On a GPU a pooled buffer is uninitialised when handed out, and its old values survive until the
    pool hands it to someone else; in the simulator every allocation is a fresh NumPy array that is
    never reused, so an op that reads an output it did not fully write, or an array that outlives the
    owner of its memory (the bugs of the first real-GPU run: views whose buffer went back to the pool
    under them), gives the right numbers there and wrong ones, or an illegal address, on a GPU. With
    this on, every buffer the pool hands out (fresh or reused) and every buffer that goes back to it is
    filled with all-ones bytes, a NaN in float32 and float64 and −1 as an integer, written straight
    into the simulator's host memory (no copy or launch is counted), so such a read shows up as NaN or
    a bad index in any comparison with NumPy. ``tests/gpu/conftest.py`` turns it on for every test in
    the simulator; ``QLABREF_DEVICE_POISON=1`` does from the start. Simulator only: on a GPU, use
    NVIDIA's compute-sanitizer (``ValueError`` if asked for there). Returns the previous setting."""
    on = bool(on)
    if on:
        from numba.core import config

        if not config.ENABLE_CUDASIM:
            raise ValueError("poison_pool: only in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1); on a GPU, "
                             "run under NVIDIA's compute-sanitizer (memcheck, initcheck) instead")
    old, _POISON["on"] = _POISON["on"], on
    return old


if os.environ.get("QLABREF_DEVICE_POISON") == "1":
    poison_pool(True)


def _poison(buf):
    """Fill a simulator buffer with all-ones bytes (see ``poison_pool``), in place."""
    host = getattr(buf, "_ary", None)
    if host is not None:
        host.view(np.uint8)[...] = 0xFF


def empty_cache():
    """Release the free pooled device buffers to the driver (buffers of live arrays stay theirs and
    return to the pool when those die)."""
    for free in _POOL.values():
        for buf in free:
            _OWNED.pop(id(buf), None)
    _POOL.clear()


def _empty(shape, dtype):
    shape = tuple(int(n) for n in shape)
    dt = np.dtype(dtype)
    n = max(_prod(shape), 1)
    if not _ACTIVE:
        _activate()
    free = _POOL.get((n, dt))
    if free:
        buf = free.pop()
    else:
        buf = _cuda().device_array(n, dtype=dt)
        _OWNED[id(buf)] = buf  # the pool owns it (see _OWNED)
    if _POISON["on"]:
        _poison(buf)
    out = DeviceArray(buf, shape, dt)
    out._pooled = True
    return out


def flat_storage(n, dtype, zero=False):
    """A 1-D pooled device array of ``n`` elements (zeros with ``zero``): the owner that ``flat_view``
    views share (``Module.flat_parameters()`` / ``flat_grads()`` on the GPU)."""
    return _full((int(n),), 0, dtype) if zero else _empty((int(n),), dtype)


def flat_view(flat, offset, shape):
    """Elements ``[offset, offset + prod(shape))`` of the 1-D owner ``flat`` as an array of ``shape``
    that shares its memory (a Numba device slice of ``flat.buf``; ``_base`` keeps ``flat`` alive, see
    ``_OWNED``). A write through the view is a write into ``flat`` and back."""
    if not isinstance(flat, DeviceArray) or flat._base is not None or flat.ndim != 1:
        raise AssertionError("flat_view: the owner must be a 1-D device array that owns its buffer")
    shape = tuple(int(k) for k in shape)
    n, offset = _prod(shape), int(offset)
    if offset < 0 or offset + n > flat.size:
        raise AssertionError(f"flat_view: elements {offset}..{offset + n} outside a buffer of {flat.size}")
    lo = min(offset, flat.buf.shape[0] - 1)  # an empty view still holds one element (never read)
    out = DeviceArray(flat.buf[lo:lo + max(n, 1)], shape, flat.dtype)
    out._base = flat
    out._offset = offset
    return out


def _full(shape, value, dtype):
    out = _empty(shape, dtype)
    n = out.buf.shape[0]
    _launch(_k().fill_kernel(nbtype(out.dtype)), n, "fill")(out.buf, value, n)
    return out


_CONSTS = {}


def _const(value, dtype):
    """A one-element device buffer holding ``value`` in ``dtype``, made on the device (no copy)."""
    dt = np.dtype(dtype)
    key = (dt, repr(value), type(value))
    c = _CONSTS.get(key)
    if c is None:
        if len(_CONSTS) > 4096:
            _CONSTS.clear()
        c = _CONSTS[key] = _full((), np.array(value).astype(dt)[()], dt)
    return c


def to_device(host, dtype=None) -> "DeviceArray":
    """Copy a host array (or anything ``np.asarray`` takes) to the GPU (one counted copy)."""
    if isinstance(host, DeviceArray):
        return host if dtype is None or host.dtype == np.dtype(dtype) else host.astype(dtype)
    arr = np.asarray(host if dtype is None else np.asarray(host, dtype=dtype))
    arr = arr if arr.flags.c_contiguous else arr.copy()  # (np.ascontiguousarray would make a 0-d array 1-d)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"to_device: only numbers go to the GPU, got an array of dtype {arr.dtype}")
    cuda = _cuda()
    _activate()
    flat = arr.reshape(-1) if arr.size else np.zeros(1, dtype=arr.dtype)
    buf = cuda.to_device(flat)
    _count("h2d", arr.shape, arr.nbytes)
    out = DeviceArray(buf, arr.shape, arr.dtype)
    if arr.dtype.kind in "iu" and arr.size:
        out._range = (int(arr.min()), int(arr.max()))  # labels are range-checked without a copy back
    return out


def _activate():
    if _ACTIVE:
        return
    from . import autograd, backends

    backends.route_device_arrays()  # from now on the backend primitives send device arrays to BACKEND
    autograd._device_active = True  # and Function.apply looks for device inputs
    _ACTIVE.append(True)


#: non-empty once ``_activate`` ran (until the first array goes to the GPU, the CPU path has no device checks)
_ACTIVE = []


def to_host(dev) -> np.ndarray:
    """Copy a device array back to a new host ndarray (one counted copy)."""
    if not isinstance(dev, DeviceArray):
        return np.asarray(dev)
    host = dev.buf.copy_to_host()
    _count("d2h", dev.shape, dev.nbytes)
    n = dev.size
    return host[:n].reshape(dev.shape) if n else np.zeros(dev.shape, dtype=dev.dtype)


def _basic_view(shape, index):
    """(offset, shape, strides) in elements of ``a[index]`` for a basic index, computed on a fake
    zero-size-item NumPy view (nothing is read)."""
    st = _cstrides(shape)
    fake = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=np.int8), shape=shape, strides=st)
    try:
        view = fake[index]
    except IndexError as e:
        raise IndexError(f"getitem: index {index!r} is invalid for shape {tuple(shape)}: {e}") from None
    if not isinstance(view, np.ndarray):  # an int index of every axis: a 0-d result
        # (a tuple with the Ellipsis: without it NumPy gives a scalar again, whose data pointer is not
        # into ``fake``: the offset would be garbage, an out-of-bounds index on the device)
        view = fake[(index if isinstance(index, tuple) else (index,)) + (Ellipsis,)]
    offset = view.__array_interface__["data"][0] - fake.__array_interface__["data"][0]
    return offset, view.shape, view.strides


_BASIC = (numbers.Integral, slice, type(None), type(Ellipsis))


def _is_basic(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, _BASIC) and not isinstance(i, bool) for i in items)


def _operand(x, dtype_hint=None):
    """(DeviceArray or scalar-kind) for a ufunc operand: device arrays as they are, Python/NumPy
    scalars as values, host arrays of more than one element copied to the device (counted)."""
    if isinstance(x, DeviceArray):
        return x
    if isinstance(x, (bool, int, float)):
        return x
    if isinstance(x, np.generic) or (isinstance(x, np.ndarray) and x.ndim == 0):
        return np.asarray(x)
    if hasattr(x, "data") and isinstance(getattr(x, "data"), DeviceArray):  # a Tensor
        return x.data
    return to_device(np.asarray(x))


def _kind_of(x):
    """What np.result_type needs: a dtype for arrays, the value for weak Python scalars."""
    if isinstance(x, DeviceArray):
        return x.dtype
    if isinstance(x, np.ndarray):
        return x.dtype
    return x


def _as_dev(x, dtype):
    """A DeviceArray for operand ``x`` (a scalar becomes a one-element constant in ``dtype``)."""
    if isinstance(x, DeviceArray):
        return x
    if isinstance(x, np.ndarray):
        return _const(x[()], x.dtype)
    return _const(x, dtype)


def _bstrides(shape, out_shape):
    """Element strides that read an array of ``shape`` broadcast to ``out_shape`` (0 on broadcast axes)."""
    st = _cstrides(shape)
    extra = len(out_shape) - len(shape)
    out = [0] * extra
    for n, s, o in zip(shape, st, out_shape[extra:]):
        out.append(0 if n == 1 and o != 1 else s)
    return tuple(out)


def _kshape(shape):
    return tuple(int(n) for n in shape) or (1,)


def _binary(name, a, b, out=None):
    from .kernels.cuda_elementwise import BINARY

    fn, boolean = BINARY[name]
    a, b = _operand(a), _operand(b)
    if boolean and name in ("logical_and", "logical_or", "bitwise_and", "bitwise_or"):
        T = np.dtype(np.bool_)
    else:
        T = np.result_type(_kind_of(a), _kind_of(b))
        if name in ("true_divide", "divide") and T.kind in "biu":
            T = np.dtype(np.float64)
    out_dt = np.dtype(np.bool_) if boolean else T
    sa = getattr(a, "shape", ())
    sb = getattr(b, "shape", ())
    try:
        shape = np.broadcast_shapes(sa, sb)
    except ValueError:
        raise ValueError(f"{name}: shapes {sa} and {sb} cannot be broadcast together") from None
    if out is None:
        out = _empty(shape, out_dt)
    else:
        if not isinstance(out, DeviceArray) or out.shape != shape:
            raise ValueError(f"{name}: out= must be a device array of shape {shape}")
        out_dt = out.dtype
        out._range = None
    da, db = _as_dev(a, T), _as_dev(b, T)
    n = _prod(shape)
    if n == 0:
        return out
    kshape = _kshape(shape)
    st_a = _bstrides(da.shape, kshape) if da.shape else (0,) * len(kshape)
    st_b = _bstrides(db.shape, kshape) if db.shape else (0,) * len(kshape)
    flat_a = tuple(da.shape) == tuple(shape)
    flat_b = tuple(db.shape) == tuple(shape)
    kern = _k().zip_kernel(name, nbtype(T), nbtype(out_dt))
    _launch(kern, n, "zip_" + name)(out.buf, da.buf, 0, st_a, flat_a, db.buf, 0, st_b, flat_b, kshape, n)
    return out


def _unary(name, a, out=None):
    from .kernels.cuda_elementwise import UNARY

    fn, boolean = UNARY[name]
    if name in ("negative", "absolute", "sign"):
        T = a.dtype
    elif name in ("logical_not", "invert"):
        T = np.dtype(np.bool_)
    else:
        T = a.dtype if a.dtype in _FLOATS else np.dtype(np.float64)
    out_dt = np.dtype(np.bool_) if boolean else T
    if out is None:
        out = _empty(a.shape, out_dt)
    else:
        if not isinstance(out, DeviceArray) or out.shape != a.shape:
            raise ValueError(f"{name}: out= must be a device array of shape {a.shape}")
        out_dt = out.dtype
        out._range = None
    n = a.size
    if n:
        _launch(_k().map_kernel(name, nbtype(T), nbtype(out_dt)), n, "map_" + name)(out.buf, a.buf, n)
    return out


def _check_extent(what, size, offset, shape, strides):
    """The elements ``offset + Σ idx_d·strides_d`` a strided kernel touches lie in ``[0, size)``: an
    engine invariant checked on the host before every launch (on a GPU, an index outside the buffer
    reads or writes another array's memory, or faults and poisons the context)."""
    if not _prod(shape):
        return
    lo = hi = int(offset)
    for n, s in zip(shape, strides):
        span = (int(n) - 1) * int(s)
        if span < 0:
            lo += span
        else:
            hi += span
    if lo < 0 or hi >= size:
        raise AssertionError(f"{what}: elements {lo}..{hi} of a buffer of {size} (offset {offset}, shape "
                             f"{tuple(shape)}, strides {tuple(strides)})")


def _gather(src, offset, shape, strides, dtype=None):
    """A new contiguous array: element i = src[offset + Σ idx_d·strides_d] (cast to ``dtype``)."""
    out = _empty(shape, src.dtype if dtype is None else dtype)
    n = _prod(shape)
    if n:
        _check_extent("gather", src.size, offset, shape, strides)
        ks = _kshape(shape)
        st = tuple(int(s) for s in strides) or (0,)
        _launch(_k().gather_kernel(nbtype(out.dtype)), n, "gather")(out.buf, src.buf, int(offset), st, ks, n)
    return out


def _norm_axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(sorted(np.lib.array_utils.normalize_axis_tuple(tuple(axes), max(ndim, 1) if ndim else 1)))


#: "auto" (one thread per row for short rows, and in the simulator where barriers are slow; else one
#: block per row), or "rows" / "block" to force one kernel (tests run both)
REDUCE_MODE = "auto"


def _reduce(a, kind, axis=None, keepdims=False, dtype=None):
    axes = _norm_axes(axis, a.ndim) if a.ndim else ()
    if kind == "max":
        if a.size == 0:
            raise ValueError(f"max: cannot reduce an empty array of shape {a.shape}")
        out_dt = a.dtype
        acc = a.dtype if a.dtype in _FLOATS else np.dtype(np.float64)
    elif kind == "mean":
        out_dt = np.dtype(dtype) if dtype is not None else (a.dtype if a.dtype in _FLOATS else np.dtype(np.float64))
        acc = np.dtype(np.float64)
    else:
        if dtype is not None:
            out_dt = np.dtype(dtype)
        elif a.dtype.kind in "bi":
            out_dt = np.dtype(np.int64)
        elif a.dtype.kind == "u":
            out_dt = np.dtype(np.uint64)
        else:
            out_dt = a.dtype
        acc = np.dtype(np.float64) if out_dt.kind == "f" else np.dtype(np.int64)
    kept = tuple(n for i, n in enumerate(a.shape) if i not in axes)
    out_shape = tuple(1 if i in axes else n for i, n in enumerate(a.shape)) if keepdims else kept
    m = _prod(a.shape[i] for i in axes)
    nrows = _prod(kept)
    out = _empty(out_shape, out_dt)
    if nrows == 0:
        return out
    shape = _kshape(a.shape)
    k_shape = tuple(1 if i in axes else n for i, n in enumerate(shape))
    r_shape = tuple(n if i in axes else 1 for i, n in enumerate(shape))
    strides = _cstrides(shape)
    divisor = float(m) if kind == "mean" else 1.0
    ke, r = _k(), _r()
    op = "max" if kind == "max" else "sum"
    rows = REDUCE_MODE == "rows" or (REDUCE_MODE == "auto" and (m <= r.SHORT_ROW or ke.SIM))
    if rows:  # one thread per output element
        kern = r.reduce_rows_kernel(op, nbtype(acc), nbtype(out_dt))
        _launch(kern, nrows, "reduce_rows")(out.buf, a.buf, k_shape, r_shape, strides, nrows, m, divisor)
    else:  # one block per output element, a shared-memory tree
        kern = r.reduce_kernel(op, nbtype(acc), nbtype(out_dt))
        grid = max(1, min(nrows, ke.MAX_BLOCKS))
        _count_launch("reduce_block")
        kern[grid, ke.TPB](out.buf, a.buf, k_shape, r_shape, strides, nrows, m, divisor)
    return out


# ------------------------------------------------------------------------------------ the array
class _Flags:
    c_contiguous = True
    f_contiguous = False
    writeable = True
    owndata = True


class DeviceArray:
    """A C-contiguous array in GPU memory. ``buf`` is the flat Numba device buffer (at least one
    element), ``shape``/``dtype`` the logical view. Views made by ``reshape``/``ravel`` share ``buf``;
    everything else makes a new array."""

    __slots__ = ("buf", "shape", "dtype", "_range", "_pooled", "_base", "_offset", "__weakref__")
    __qlabref_device__ = True  # what autograd/tensor test for (they never import this module)
    __array_priority__ = 1000
    flags = _Flags()
    device = "cuda"

    def __init__(self, buf, shape, dtype):
        self.buf = buf
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._range = None
        self._pooled = False  # True: ``buf`` goes back to the pool when this owner dies
        self._base = None  # the owner of ``buf`` for a view (keeps it, and so the buffer, alive)
        self._offset = 0  # a view's first element in its owner's buffer (``flat_view``; 0 for reshapes)

    @property
    def base(self):
        """The array whose memory this one views (NumPy's ``.base``: None for an array that owns its
        buffer). The optimizers and the engine read it as on the host: a view is zeroed in place
        rather than dropped, and is never adopted as a gradient."""
        return self._base

    def __del__(self):
        # Only a buffer the pool still owns goes back (always the case, unless the interpreter is
        # shutting down); _OWNED kept it alive, so its memory is valid even if this array died in a cycle.
        if self._pooled:
            try:
                buf = self.buf
                if _OWNED.get(id(buf)) is buf:
                    if _POISON["on"]:
                        _poison(buf)
                    _POOL.setdefault((buf.shape[0], self.dtype), []).append(buf)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass

    # ------------------------------------------------------------------ properties
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return _prod(self.shape)

    @property
    def itemsize(self):
        return self.dtype.itemsize

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize

    @property
    def T(self):
        return self.transpose()

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d device array")
        return self.shape[0]

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    __hash__ = object.__hash__

    # ------------------------------------------------------------------ host boundary
    def get(self) -> np.ndarray:
        """A host copy (counted)."""
        return to_host(self)

    def __array__(self, dtype=None, copy=None):
        host = to_host(self)
        return host if dtype is None else host.astype(dtype)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item: only a one-element array converts to a Python number, shape {self.shape}")
        return to_host(self).reshape(()).item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())

    # ------------------------------------------------------------------ shape
    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if len(shape) == 1 and isinstance(shape[0], numbers.Integral):
            shape = (int(shape[0]),)
        shape = tuple(int(n) for n in shape)
        if shape.count(-1) > 1:
            raise ValueError("reshape: can only specify one unknown dimension")
        if -1 in shape:
            known = _prod(n for n in shape if n != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape array of size {self.size} into shape {shape}")
            shape = tuple(self.size // known if n == -1 else n for n in shape)
        if _prod(shape) != self.size:
            raise ValueError(f"cannot reshape array of size {self.size} into shape {shape}")
        out = DeviceArray(self.buf, shape, self.dtype)
        out._base = self if self._base is None else self._base
        out._offset = self._offset
        return out

    def ravel(self):
        return self.reshape(-1)

    def flatten(self):
        return self.copy().reshape(-1)

    def transpose(self, *axes):
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        if not axes:
            axes = tuple(range(self.ndim))[::-1]
        axes = tuple(int(a) % max(self.ndim, 1) for a in axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: axes {axes} don't match an array of {self.ndim} dimensions")
        if axes == tuple(range(self.ndim)):
            return self.copy()
        st = _cstrides(self.shape)
        return _gather(self, 0, tuple(self.shape[a] for a in axes), tuple(st[a] for a in axes))

    def swapaxes(self, a, b):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(axes)

    def copy(self):
        out = _empty(self.shape, self.dtype)
        _count_copy()
        out.buf.copy_to_device(self.buf)  # device to device
        return out

    def astype(self, dtype, copy=True):
        dt = np.dtype(dtype)
        if dt == self.dtype:
            return self.copy() if copy else self
        return _gather(self, 0, self.shape, _cstrides(self.shape), dt)

    # ------------------------------------------------------------------ reductions
    def sum(self, axis=None, keepdims=False, dtype=None, out=None):
        return _reduce(self, "sum", axis, keepdims, dtype)

    def mean(self, axis=None, keepdims=False, dtype=None, out=None):
        return _reduce(self, "mean", axis, keepdims, dtype)

    def max(self, axis=None, keepdims=False, out=None):
        return _reduce(self, "max", axis, keepdims)

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, index):
        if isinstance(index, DeviceArray) or not _is_basic(index):
            raise IndexError("device arrays take basic indices only (ints, slices, None, ...); move the tensor "
                             "to the CPU with .to('cpu') for fancy indexing")
        offset, shape, strides = _basic_view(self.shape, index)
        return _gather(self, offset, shape, strides)

    def __setitem__(self, index, value):
        if isinstance(index, DeviceArray) or not _is_basic(index):
            raise IndexError("device arrays take basic indices only in assignments (ints, slices, None, ...)")
        offset, shape, strides = _basic_view(self.shape, index)
        n = _prod(shape)
        if n == 0:
            return
        self._range = None  # the values change: a cached label range no longer holds
        whole = offset == 0 and tuple(shape) == self.shape
        if not isinstance(value, DeviceArray):
            v = np.asarray(value) if not isinstance(value, (bool, int, float)) else value
            if isinstance(v, np.ndarray) and v.ndim > 0 and v.size != 1:
                value = to_device(v)
            else:
                scalar = v.reshape(-1)[0] if isinstance(v, np.ndarray) else v
                if whole:
                    _launch(_k().fill_kernel(nbtype(self.dtype)), n, "fill")(self.buf, scalar, n)
                    return
                value = _const(scalar, self.dtype)
        if whole and value.shape == self.shape and value.dtype == self.dtype:
            _count_copy()
            self.buf.copy_to_device(value.buf)
            return
        shape = tuple(shape)
        given = value.shape
        extra = value.ndim - len(shape)
        if extra > 0 and all(k == 1 for k in given[:extra]):  # NumPy drops leading axes of length 1
            value = value.reshape(given[extra:])
        try:
            fits = np.broadcast_shapes(value.shape, shape) == shape
        except ValueError:
            fits = False
        if not fits:  # NumPy's rule: the value broadcasts *to* the target's shape
            raise ValueError(f"setitem: could not broadcast a value of shape {given} into shape {shape}")
        _check_extent("setitem", self.size, offset, shape, strides)
        ks = _kshape(shape)
        st = tuple(int(s) for s in strides) or (0,)
        src_st = _bstrides(value.shape, ks) if value.shape else (0,) * len(ks)
        _launch(_k().scatter_kernel(nbtype(self.dtype)), n, "scatter")(self.buf, int(offset), st, value.buf, src_st, ks, n)

    # ------------------------------------------------------------------ NumPy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        from .kernels.cuda_elementwise import BINARY, UNARY

        if method != "__call__" or kwargs:
            return NotImplemented
        target = None
        if out is not None:
            target = out[0] if isinstance(out, tuple) else out
        name = ufunc.__name__
        if ufunc.nin == 2 and name in BINARY:
            return _binary(name, inputs[0], inputs[1], out=target)
        if ufunc.nin == 1 and name in UNARY:
            a = _operand(inputs[0])
            if not isinstance(a, DeviceArray):
                return NotImplemented
            return _unary(name, a, out=target)
        return NotImplemented

    def __array_function__(self, func, types, args, kwargs):
        impl = _FUNCTIONS.get(func)
        if impl is None:
            return NotImplemented
        return impl(*args, **kwargs)

    # ------------------------------------------------------------------ operators
    def __add__(self, o):
        return _binary("add", self, o)

    def __radd__(self, o):
        return _binary("add", o, self)

    def __sub__(self, o):
        return _binary("subtract", self, o)

    def __rsub__(self, o):
        return _binary("subtract", o, self)

    def __mul__(self, o):
        return _binary("multiply", self, o)

    def __rmul__(self, o):
        return _binary("multiply", o, self)

    def __truediv__(self, o):
        return _binary("true_divide", self, o)

    def __rtruediv__(self, o):
        return _binary("true_divide", o, self)

    def __pow__(self, o):
        return _binary("power", self, o)

    def __rpow__(self, o):
        return _binary("power", o, self)

    def __iadd__(self, o):
        return _binary("add", self, o, out=self)

    def __isub__(self, o):
        return _binary("subtract", self, o, out=self)

    def __imul__(self, o):
        return _binary("multiply", self, o, out=self)

    def __itruediv__(self, o):
        return _binary("true_divide", self, o, out=self)

    def __neg__(self):
        return _unary("negative", self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _unary("absolute", self)

    def __gt__(self, o):
        return _binary("greater", self, o)

    def __ge__(self, o):
        return _binary("greater_equal", self, o)

    def __lt__(self, o):
        return _binary("less", self, o)

    def __le__(self, o):
        return _binary("less_equal", self, o)

    def __eq__(self, o):
        return _binary("equal", self, o)

    def __ne__(self, o):
        return _binary("not_equal", self, o)

    def __and__(self, o):
        return _binary("logical_and", self, o)

    def __or__(self, o):
        return _binary("logical_or", self, o)

    def __invert__(self):
        return _unary("logical_not", self)

    def __matmul__(self, o):
        return BACKEND.matmul(self, _operand(o))


# ------------------------------------------------------------------------------------ NumPy functions
def _np_transpose(a, axes=None):
    return a.transpose(axes)


def _np_reshape(a, *args, **kw):
    shape = kw.get("shape", kw.get("newshape", args[0] if args else None))
    return a.reshape(shape)


def _np_expand_dims(a, axis):
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    nd = a.ndim + len(axes)
    axes = np.lib.array_utils.normalize_axis_tuple(tuple(axes), nd)
    it = iter(a.shape)
    return a.reshape(tuple(1 if i in axes else next(it) for i in range(nd)))


def _np_broadcast_to(a, shape, subok=False):
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    np.broadcast_shapes(a.shape, shape)
    if tuple(shape) == a.shape:
        return a
    return _gather(a, 0, shape, _bstrides(a.shape, shape) if a.shape else (0,) * len(shape))


def _np_where(cond, x, y):
    c = _operand(cond)
    xs, ys = _operand(x), _operand(y)
    T = np.result_type(_kind_of(xs), _kind_of(ys))
    dc = _as_dev(c, np.bool_)
    dx, dy = _as_dev(xs, T), _as_dev(ys, T)
    shape = np.broadcast_shapes(dc.shape if isinstance(c, DeviceArray) else (), dx.shape if isinstance(xs, DeviceArray) else (),
                                dy.shape if isinstance(ys, DeviceArray) else ())
    out = _empty(shape, T)
    n = _prod(shape)
    if n:
        ks = _kshape(shape)

        def st(d, real):
            return _bstrides(d.shape, ks) if real and d.shape else (0,) * len(ks)

        kern = _k().where_kernel(nbtype(T))
        _launch(kern, n, "where")(out.buf, dc.buf, st(dc, isinstance(c, DeviceArray)), dx.buf, st(dx, isinstance(xs, DeviceArray)),
                         dy.buf, st(dy, isinstance(ys, DeviceArray)), ks, n)
    return out


def _like_dtype(a, dtype):
    return a.dtype if dtype is None else np.dtype(dtype)


def _np_empty_like(a, dtype=None, order="K", subok=True, shape=None, **kw):
    return _empty(a.shape if shape is None else shape, _like_dtype(a, dtype))


def _np_zeros_like(a, dtype=None, order="K", subok=True, shape=None, **kw):
    return _full(a.shape if shape is None else shape, 0, _like_dtype(a, dtype))


def _np_ones_like(a, dtype=None, order="K", subok=True, shape=None, **kw):
    return _full(a.shape if shape is None else shape, 1, _like_dtype(a, dtype))


def _np_full_like(a, fill_value, dtype=None, **kw):
    return _full(a.shape, fill_value, _like_dtype(a, dtype))


def _np_copyto(dst, src, casting="same_kind", where=True):
    if where is not True:
        raise TypeError("copyto: where= is not supported on device arrays")
    if not isinstance(dst, DeviceArray):
        raise TypeError("copyto: copying a device array into a host array needs .numpy() / qr.device.to_host")
    dst[...] = src


def _np_shape(a):
    return a.shape


def _np_ndim(a):
    return a.ndim


def _np_size(a, axis=None):
    return a.size if axis is None else a.shape[axis]


def _np_ascontiguousarray(a, dtype=None, **kw):
    return a if dtype is None else a.astype(dtype, copy=False)


def _np_sum(a, axis=None, dtype=None, out=None, keepdims=False, **kw):
    return a.sum(axis=axis, keepdims=keepdims, dtype=dtype)


def _np_mean(a, axis=None, dtype=None, out=None, keepdims=False, **kw):
    return a.mean(axis=axis, keepdims=keepdims, dtype=dtype)


def _np_max(a, axis=None, out=None, keepdims=False, **kw):
    return a.max(axis=axis, keepdims=keepdims)


def _np_copy(a, **kw):
    return a.copy()


def _np_swapaxes(a, axis1, axis2):
    return a.swapaxes(axis1, axis2)


_FUNCTIONS = {np.transpose: _np_transpose, np.reshape: _np_reshape, np.expand_dims: _np_expand_dims,
              np.broadcast_to: _np_broadcast_to, np.where: _np_where, np.empty_like: _np_empty_like,
              np.zeros_like: _np_zeros_like, np.ones_like: _np_ones_like, np.full_like: _np_full_like,
              np.copyto: _np_copyto, np.shape: _np_shape, np.ndim: _np_ndim, np.size: _np_size,
              np.ascontiguousarray: _np_ascontiguousarray, np.sum: _np_sum, np.mean: _np_mean, np.max: _np_max,
              np.amax: _np_max, np.copy: _np_copy, np.swapaxes: _np_swapaxes}


# ------------------------------------------------------------------------------------ primitives
def _view(a):
    """The Numba device array of ``a``'s logical shape (a view of its buffer)."""
    if a.ndim == 0:
        return a.buf
    return a.buf.reshape(a.shape)


def _mm(a, b, ta=False, tb=False, shape=None):
    """C = op(A)·op(B) on device arrays. ``ta``/``tb``: the array passed is the transpose of the operand
    (read in place, no transposed copy). ``shape``: the result's shape when not (m, n) (same elements;
    an array that owns its buffer, not a reshaped view, so that backward can adopt it as a ``.grad``)."""
    from .kernels import cuda_matmul

    m = a.shape[1] if ta else a.shape[0]
    k = a.shape[0] if ta else a.shape[1]
    k2 = b.shape[1] if tb else b.shape[0]
    n = b.shape[0] if tb else b.shape[1]
    if k != k2:
        raise ValueError(f"matmul: shapes {a.shape}{'ᵀ' if ta else ''} and {b.shape}{'ᵀ' if tb else ''} are not aligned")
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: device operands must have one dtype, got {a.dtype} and {b.dtype}")
    if shape is not None and _prod(shape) != m * n:
        raise AssertionError(f"matmul: a result of shape {(m, n)} cannot be stored as shape {tuple(shape)}")
    out = _empty((m, n) if shape is None else shape, a.dtype)
    if m and n:
        if k == 0:
            out[...] = 0
        else:
            cuda_matmul.matmul_device(_view(a), _view(b), m, n, a.dtype, ta, tb, out=out.buf.reshape((m, n)))
    return out


class DeviceBackend:
    """The backend primitives on device arrays (``backends.Backend`` routes device arrays here)."""

    name = "cuda"

    def matmul(self, a, b):
        if not isinstance(b, DeviceArray):
            b = to_device(np.asarray(b))
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"matmul: device arrays multiply as 2-D matrices, got shapes {a.shape} and {b.shape}")
        return _mm(a, b)

    def im2col(self, x, k, s, p, out_hw):
        from .kernels import cuda_conv

        n, c = x.shape[:2]
        rows, ncols = n * out_hw[0] * out_hw[1], c * k[0] * k[1]
        out = _empty((rows, ncols), x.dtype)
        cuda_conv.im2col_device(_view(x), k, s, p, out_hw, out=_view(out))
        return out

    def col2im(self, gcols, x_shape, k, s, p, out_hw):
        from .kernels import cuda_conv

        gx = _empty(x_shape, gcols.dtype)
        g2 = gcols.reshape(-1, x_shape[1] * k[0] * k[1])
        cuda_conv.col2im_device(_view(g2), x_shape, k, s, p, out_hw, out=_view(gx))
        return gx

    def probe(self, theta, g, alpha, out):
        """out = θ − α·g on the device. Returns None: Σ g² is ``sq_norm``'s (computing it here would
        cost a copy back that ``_place`` never reads)."""
        n = theta.size
        if n:
            T = nbtype(theta.dtype)
            _launch(_r().place_kernel(T), n, "place")(theta.buf, g.buf, theta.dtype.type(alpha), out.buf)
        return None

    def probe_save(self, theta, g, alpha, saved):
        n = theta.size
        if n:
            T = nbtype(theta.dtype)
            _launch(_r().place_save_kernel(T), n, "place_save")(theta.buf, g.buf, theta.dtype.type(alpha), saved.buf)
        return None

    def sq_norm(self, g):
        """Σ g² in float64 as a 0-d device array (a Python float only when someone asks: ``float()``):
        ``kernels.cuda_probe.sum_sq_into``, one launch (both reduction stages) into the pooled result,
        its scratch the process's probe workspace (no allocation per call)."""
        from .kernels import cuda_probe

        n = g.size
        if n == 0 or g.dtype not in _FLOATS:
            return _reduce(g * g, "sum", dtype=np.float64) if n else _full((), 0.0, np.float64)
        out = _empty((), np.float64)
        cuda_probe.sum_sq_into(g.buf if g.buf.shape[0] == n else g.buf[:n], result=out.buf, index=0)
        return out

    def __repr__(self):
        return "<qlabref device backend 'cuda'>"


BACKEND = DeviceBackend()


# ------------------------------------------------------------------------------------ twins
def _make_twins():
    """Device versions of the ops whose NumPy code uses strided views, fancy indexing, BLAS or
    ``np.asarray``. Same checks and error messages as the host ops (they call the same helpers)."""
    from .ops import core, nn_ops
    from .ops.core import _norm_axis

    class DSum(core.Sum):
        @staticmethod
        def forward(ctx, a, axis=None, keepdims=False):
            ctx.axes = _norm_axis(axis, a.ndim, "sum")
            ctx.shape, ctx.keepdims = a.shape, keepdims
            return a.sum(axis=ctx.axes, keepdims=keepdims)

    class DMean(core.Mean):
        @staticmethod
        def forward(ctx, a, axis=None, keepdims=False):
            ctx.axes = _norm_axis(axis, a.ndim, "mean")
            ctx.shape, ctx.keepdims = a.shape, keepdims
            ctx.count = int(np.prod([a.shape[i] for i in ctx.axes])) if a.ndim else 1
            return a.mean(axis=ctx.axes, keepdims=keepdims)

    class DMax(core.Max):
        @staticmethod
        def forward(ctx, a, axis=None, keepdims=False):
            if a.size == 0:
                raise ValueError(f"max: cannot reduce an empty array of shape {a.shape}")
            ctx.axes = _norm_axis(axis, a.ndim, "max")
            ctx.keepdims = keepdims
            out = a.max(axis=ctx.axes, keepdims=keepdims)
            ctx.save(a, out)
            return out

    class DMatMul(core.MatMul):
        @staticmethod
        def forward(ctx, a, b):
            if a.ndim != 2 or b.ndim != 2:
                raise ValueError(f"matmul: on the GPU both operands must be 2-D, got shapes {a.shape} and {b.shape}")
            if a.shape[1] != b.shape[0]:
                raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned "
                                 f"({a.shape[1]} != {b.shape[0]} in the inner dimension)")
            ctx.save(a, b)
            return _mm(a, b)

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved
            ga = _mm(g, b, tb=True) if ctx.needs_input_grad[0] else None  # g·bᵀ
            gb = _mm(a, g, ta=True) if ctx.needs_input_grad[1] else None  # aᵀ·g
            return ga, gb

    class DLinear(nn_ops.Linear):
        @staticmethod
        def forward(ctx, x, w, *bias):
            if w.ndim != 2:
                raise ValueError(f"linear: weight must be 2-D (out_features, in_features), got shape {w.shape}")
            if x.ndim < 1 or x.shape[-1] != w.shape[1]:
                raise ValueError(
                    f"linear: input has {x.shape[-1] if x.ndim else 0} features (input shape {x.shape}), "
                    f"weight expects {w.shape[1]} (weight shape {w.shape})")
            if bias and bias[0].shape != (w.shape[0],):
                raise ValueError(f"linear: bias has shape {bias[0].shape}, weight {w.shape} needs ({w.shape[0]},)")
            ctx.save(x, w)
            out = _mm(x.reshape(-1, x.shape[-1]), w, tb=True)  # x·Wᵀ, W read in place
            if bias:
                out += bias[0]
            return out.reshape(*x.shape[:-1], w.shape[0])

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved
            need = ctx.needs_input_grad
            g2 = g.reshape(-1, g.shape[-1])
            gx = _mm(g2, w).reshape(*g.shape[:-1], w.shape[1]) if need[0] else None
            gw = _mm(g2, x.reshape(-1, x.shape[-1]), ta=True) if need[1] else None  # gᵀ·x
            if len(need) == 3:
                return gx, gw, (g2.sum(axis=0) if need[2] else None)
            return gx, gw

    class DConv2d(nn_ops.Conv2d):
        @staticmethod
        def forward(ctx, x, w, *bias, stride=1, padding=0):
            s = nn_ops.pair(stride, "stride", "conv2d")
            p = nn_ops.pair(padding, "padding", "conv2d", minimum=0)
            if w.ndim != 4:
                raise ValueError(f"conv2d: weight must be 4-D (out, in, kH, kW), got shape {w.shape}")
            nn_ops._check_image("conv2d", x, channels=w.shape[1])
            if bias and bias[0].shape != (w.shape[0],):
                raise ValueError(f"conv2d: bias has shape {bias[0].shape}, weight {w.shape} needs ({w.shape[0]},)")
            k = w.shape[2:]
            oh, ow = nn_ops._out_hw("conv2d", x.shape, k, s, p)
            n, o = x.shape[0], w.shape[0]
            cols = BACKEND.im2col(x, k, s, p, (oh, ow))  # (N·OH·OW, C·kH·kW)
            out = _mm(cols, w.reshape(o, -1), tb=True)  # (N·OH·OW, O)
            if bias:
                out += bias[0]
            ctx.save(cols, w)
            ctx.geom = (x.shape, k, s, p, (oh, ow))
            return out.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)

        @staticmethod
        def backward(ctx, g):
            cols, w = ctx.saved
            x_shape, k, s, p, out_hw = ctx.geom
            need = ctx.needs_input_grad
            o = g.shape[1]
            g2 = g.transpose(0, 2, 3, 1).reshape(-1, o)  # (N·OH·OW, O)
            gx = gw = gb = None
            if need[1]:
                gw = _mm(g2, cols, ta=True, shape=w.shape)  # gᵀ·cols
            if need[0]:
                gcols = _mm(g2, w.reshape(o, -1))
                gx = BACKEND.col2im(gcols, x_shape, k, s, p, out_hw)
            if len(need) == 3:
                gb = g.sum(axis=(0, 2, 3)) if need[2] else None
                return gx, gw, gb
            return gx, gw

    class DAvgPool2d(nn_ops.AvgPool2d):
        @staticmethod
        def forward(ctx, x, kernel_size, stride=None, padding=0, count_include_pad=True):
            k, s, p, out_hw = nn_ops._pool_geometry("avg_pool2d", x, kernel_size, stride, padding)
            div = k[0] * k[1] if (count_include_pad or p == (0, 0)) else 0
            out = _empty((*x.shape[:2], *out_hw), x.dtype)
            n = out.size
            kern = _r().avg_pool_forward_kernel(nbtype(x.dtype))
            _launch(kern, n, "avg_pool_forward")(_view(x), k[0], k[1], s[0], s[1], p[0], p[1], div, _view(out))
            ctx.geom = (x.shape, k, s, p, div)
            return out

        @staticmethod
        def backward(ctx, g):
            x_shape, k, s, p, div = ctx.geom
            gx = _empty(x_shape, g.dtype)
            kern = _r().avg_pool_backward_kernel(nbtype(g.dtype))
            _launch(kern, gx.size, "avg_pool_backward")(_view(g), k[0], k[1], s[0], s[1], p[0], p[1], div, _view(gx))
            return (gx,)

    class DMaxPool2d(nn_ops.MaxPool2d):
        @staticmethod
        def forward(ctx, x, kernel_size, stride=None, padding=0):
            k, s, p, out_hw = nn_ops._pool_geometry("max_pool2d", x, kernel_size, stride, padding)
            out = _empty((*x.shape[:2], *out_hw), x.dtype)
            idx = _empty(out.shape, np.int64)
            kern = _r().max_pool_forward_kernel(nbtype(x.dtype))
            _launch(kern, out.size, "max_pool_forward")(_view(x), k[0], k[1], s[0], s[1], p[0], p[1], _view(out), _view(idx))
            ctx.save(idx)
            ctx.geom = (x.shape, k, s, p)
            return out

        @staticmethod
        def backward(ctx, g):
            (idx,) = ctx.saved
            x_shape, k, s, p = ctx.geom
            gx = _empty(x_shape, g.dtype)
            kern = _r().max_pool_backward_kernel(nbtype(g.dtype))
            _launch(kern, gx.size, "max_pool_backward")(_view(g), _view(idx), k[0], k[1], s[0], s[1], p[0], p[1], _view(gx))
            return (gx,)

    class DCrossEntropy(core.CrossEntropy):
        @staticmethod
        def forward(ctx, logits, *, labels, reduction="mean"):
            if hasattr(labels, "data") and not isinstance(labels, (np.ndarray, DeviceArray)):
                labels = labels.data
            if logits.ndim != 2:
                raise ValueError(f"cross_entropy: logits must have shape (N, C), got {logits.shape}")
            n, c = logits.shape
            if not isinstance(labels, DeviceArray):
                labels = np.asarray(labels)
            if tuple(labels.shape) != (n,):
                raise ValueError(f"cross_entropy: labels must have shape ({n},) to match logits {logits.shape}, "
                                 f"got {tuple(labels.shape)}")
            if labels.dtype.kind not in "iu":
                raise ValueError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
            if reduction not in ("mean", "sum"):
                raise ValueError(f"cross_entropy: reduction must be 'mean' or 'sum', got {reduction!r}")
            if n:
                if isinstance(labels, DeviceArray):
                    lo_hi = labels._range
                    if lo_hi is None:  # labels made on the device: two scalars back, once per array
                        lo_hi = labels._range = (-int((-labels).max().item()), int(labels.max().item()))
                    lo, hi = lo_hi
                    if lo < 0 or hi >= c:
                        raise ValueError(f"cross_entropy: label {lo if lo < 0 else hi} is out of range for {c} classes")
                else:
                    if labels.min() < 0 or labels.max() >= c:
                        bad = labels[(labels < 0) | (labels >= c)][0]
                        raise ValueError(f"cross_entropy: label {bad} is out of range for {c} classes")
                    labels = to_device(labels)
            logp = _empty(logits.shape, logits.dtype)  # log-softmax of the rows, one fused kernel
            if logp.size:
                _launch(_r().log_softmax_rows_kernel(nbtype(logits.dtype)), n, "log_softmax_rows")(_view(logits), _view(logp))
            ctx.save(logp, labels)
            ctx.scale = 1.0 / n if reduction == "mean" else 1.0
            out = _empty((), logits.dtype)
            T = nbtype(logits.dtype)
            if n:
                _count_launch("ce_forward")
                _r().ce_forward_kernel(T)[1, _k().TPB](_view(logp), labels.buf, logits.dtype.type(ctx.scale), out.buf)
            else:
                out[...] = 0
            return out

        @staticmethod
        def backward(ctx, g):
            logp, labels = ctx.saved
            out = _empty(logp.shape, logp.dtype)
            if out.size:
                _launch(_r().ce_backward_kernel, out.size, "ce_backward")(_view(logp), labels.buf, g.buf, logp.dtype.type(ctx.scale),
                                                           _view(out))
            return (out,)

    class DGetItem(core.GetItem):
        @staticmethod
        def forward(ctx, a, index):
            if hasattr(index, "data") and not isinstance(index, np.ndarray):
                index = index.data
            ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
            return a[index]

        @staticmethod
        def backward(ctx, g):
            out = _full(ctx.shape, 0, g.dtype)
            out[ctx.index] = g
            return (out,)

    def _unsupported(cls, why):
        class Unsupported(cls):
            @staticmethod
            def forward(ctx, *args, **kw):
                raise TypeError(f"{cls.name}: {why} does not run on the GPU; move the tensors to the CPU "
                                "with .to('cpu') first")
        return Unsupported

    return {core.Sum: DSum, core.Mean: DMean, core.Max: DMax, core.MatMul: DMatMul, nn_ops.Linear: DLinear,
            nn_ops.Conv2d: DConv2d, nn_ops.AvgPool2d: DAvgPool2d, nn_ops.MaxPool2d: DMaxPool2d,
            core.CrossEntropy: DCrossEntropy, core.GetItem: DGetItem,
            core.Concatenate: _unsupported(core.Concatenate, "concatenate"),
            core.Stack: _unsupported(core.Stack, "stack")}


class _Twins(dict):
    def __missing__(self, cls):
        if not self.get("_built"):
            dict.update(self, _make_twins())
            dict.__setitem__(self, "_built", True)
            if cls in self:
                return self[cls]
        return cls  # the op's own NumPy code runs on device arrays through the protocols


TWINS = _Twins()


def twin(cls):
    """The Function to run when an input lives on the device."""
    return TWINS[cls]


# ------------------------------------------------------------------------------------ Tensor / Module
def convert(arr, device):
    """``arr`` (ndarray or DeviceArray) on ``device``."""
    if arr is None:
        return None
    if device == "cuda":
        return arr if isinstance(arr, DeviceArray) else to_device(arr)
    return to_host(arr) if isinstance(arr, DeviceArray) else arr


def tensor_to(t, device):
    """``Tensor.to(device)``: the same tensor if it is there already, else a new leaf holding a copy
    (``requires_grad`` kept), as ``torch.Tensor.to``."""
    from .tensor import Tensor

    if not isinstance(device, str) or device.strip().lower() not in DEVICES:
        try:
            dt = np.dtype(device)  # t.to(np.float64): a cast, as torch.Tensor.to(dtype)
        except TypeError:
            dt = None
        if dt is not None and not isinstance(device, str):
            return t.astype(dt)
    device = check_device_name(device, "to")
    if (device == "cuda") == isinstance(t._data, DeviceArray):
        return t
    out = Tensor._from_op(convert(t._data, device), requires_grad=t.requires_grad)
    return out


def module_to(module, device):
    """``Module.to(device)``: move every parameter (and its gradient) and every float buffer, in place."""
    device = check_device_name(device, f"{type(module).__name__}.to")
    for p in module.parameters():
        p._data = convert(p._data, device)
        if p._grad is not None:
            p._grad = convert(p._grad, device)
    for m in module.modules():
        for k, b in list(m._buffers.items()):
            if b is not None and getattr(b, "dtype", None) is not None and np.dtype(b.dtype).kind == "f":
                m._buffers[k] = convert(b, device)
    module.__dict__.pop("_flat_params", None)
    module.__dict__.pop("_flat_grads", None)
    return module
