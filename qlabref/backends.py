"""The backend switch: which code runs the matrix products, the convolution gathers and the
line-search probe.

A backend is an object with a small set of primitives (minitorch's idea); the ops in
``qlabref.ops`` (``matmul``, ``linear``, ``conv2d``) and the QLAB optimizers call them, and do
everything else in NumPy:

- ``matmul(a, b)``: a 2-D matrix product (``a``/``b`` may be transposed views);
- ``im2col(x, k, s, p, out_hw)``: the (N·OH·OW, C·kH·kW) receptive-field matrix of an NCHW input;
- ``col2im(gcols, x_shape, k, s, p, out_hw)``: its adjoint, the NCHW input gradient;
- ``probe(theta, g, alpha, out)``: ``out = θ − α·g`` and Σ g² (float64) in one pass;
- ``probe_save(theta, g, alpha, saved)``: ``saved = θ``, ``θ ← θ − α·g`` and Σ g², in one pass.

Backends:

- ``"numpy"`` (the oracle): NumPy/BLAS matmul, NumPy strided-copy im2col/col2im (``ops.nn_ops``).
- ``"numba"`` (default): the Numba CPU im2col/col2im kernels (``qlabref.kernels.cpu``), bit for bit
  the same numbers as ``"numpy"`` (im2col is a copy; col2im adds in the same order) and measured
  faster on every convolution of the paper's CNN and ResNet-18; matmul stays in BLAS (Numba's own
  loop-nest matmul is several times slower than OpenBLAS, so it is not used).
- ``"cuda"``: matmul, im2col, col2im and the probe through the Numba CUDA kernels, NumPy arrays in
  and out (each call copies its operands to the device and the result back).

Tensors moved to the GPU (``tensor.to("cuda")``, ``model.to("cuda")``) hold ``qlabref.device``
arrays; every primitive routes those to the device primitives (``qlabref.device.DeviceBackend``)
whatever backend is selected, so a resident step never leaves the GPU.

The probe primitives are Numba kernels on the ``numpy`` and ``numba`` backends alike (one pass over
memory, float64 accumulation, no float64 copy of the gradient), CUDA on ``cuda``.

Choose with ``qr.set_backend(name)``, for a block with ``with qr.use_backend(name): ...`` (per
thread / async context), or with the environment variable ``QLABREF_BACKEND`` (read at the first
use). ``qr.get_backend()`` names the one in force.
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import numpy as np

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "set_backend", "get_backend", "use_backend", "current"]

BACKENDS = ("numpy", "numba", "cuda")
#: the backend used when neither ``set_backend`` nor ``QLABREF_BACKEND`` chose one
DEFAULT_BACKEND = "numba"
_ENV = "QLABREF_BACKEND"


_PRIMITIVES = ("matmul", "im2col", "col2im", "probe", "probe_save", "sq_norm")


#: turned on by ``qlabref.device`` when the first array goes to the GPU (``route_device_arrays``);
#: until then the primitives run unwrapped, so a CPU-only process pays nothing for the device routing
_ROUTING = {"on": False}


def route_device_arrays():
    """Route GPU-resident arrays from now on, in every backend class (those defined later too)."""
    if _ROUTING["on"]:
        return
    _ROUTING["on"] = True
    stack = [Backend]
    while stack:
        cls = stack.pop()
        _route_device_arrays(cls)
        stack.extend(cls.__subclasses__())


def _route_device_arrays(cls):
    """Wrap ``cls``'s primitives so that GPU-resident arrays (``qlabref.device.DeviceArray``, after
    ``.to("cuda")``) go to the device primitives whatever backend is selected; host arrays are untouched."""
    for name in _PRIMITIVES:
        method = cls.__dict__.get(name)
        if method is None or getattr(method, "_routes_device", False):
            continue

        def routed(self, first, *args, _method=method, _name=name, **kwargs):
            if getattr(type(first), "__qlabref_device__", False):
                from .device import BACKEND

                return getattr(BACKEND, _name)(first, *args, **kwargs)
            return _method(self, first, *args, **kwargs)

        routed._routes_device = True
        routed.__name__, routed.__doc__ = method.__name__, method.__doc__
        setattr(cls, name, routed)
    return cls


class Backend:
    """The primitives; this base class is the NumPy oracle."""

    name = "numpy"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if _ROUTING["on"]:
            _route_device_arrays(cls)

    def matmul(self, a, b):
        return np.matmul(a, b)

    def im2col(self, x, k, s, p, out_hw):
        from .ops.nn_ops import _im2col, _pad

        return _im2col(_pad(x, p), k, s, out_hw)

    def col2im(self, gcols, x_shape, k, s, p, out_hw):
        from .ops.nn_ops import _col2im

        n, c, h, w = x_shape
        xp_shape = (n, c, h + 2 * p[0], w + 2 * p[1])
        return _col2im(gcols.reshape(n, out_hw[0], out_hw[1], c, k[0], k[1]), xp_shape, k, s, p, out_hw,
                       gcols.dtype)

    def probe(self, theta, g, alpha, out):
        if theta.size < SMALL_PROBE:
            alpha = theta.dtype.type(alpha)
            total = _small_sq_norm(g)  # before writing out: out may alias g's memory in odd calls
            np.subtract(theta, alpha * g, out=out)  # θ − α·g rounded as the kernel does (no FMA)
            return total
        from .kernels import cpu

        return float(cpu.probe_kernel(theta, g, theta.dtype.type(alpha), out))

    def probe_save(self, theta, g, alpha, saved):
        if theta.size < SMALL_PROBE:
            saved[...] = theta
            return self.probe(saved, g, alpha, theta)
        from .kernels import cpu

        return float(cpu.probe_save_kernel(theta, g, theta.dtype.type(alpha), saved))

    def sq_norm(self, g):
        if g.size < SMALL_PROBE:
            return _small_sq_norm(g)
        from .kernels import cpu

        return float(cpu.sum_sq_kernel(g))

    def __repr__(self):
        return f"<qlabref backend {self.name!r}>"


#: below one probe chunk (``kernels.cpu.PROBE_CHUNK``, 16,384 elements) the CPU probe primitives use
#: NumPy: the kernel would run a single chunk anyway, but through Numba's thread pool, whose wake-up
#: cost dominates a 2-D problem (measured 5 ms per QLABGrad step on a busy 2-core machine with two
#: Numba threads, against ~0.1 ms here) and which needs compiling on the first run. Same θ − α·g
#: bits; Σ g² in float64 in NumPy's order (the last bits may differ from the kernel's SIMD order).
SMALL_PROBE = 1 << 14


def _small_sq_norm(g):
    g64 = g if g.dtype == np.float64 else g.astype(np.float64)
    return float(np.dot(g64, g64))


class NumbaBackend(Backend):
    name = "numba"

    def im2col(self, x, k, s, p, out_hw):
        from .kernels import cpu

        cols = np.empty((x.shape[0] * out_hw[0] * out_hw[1], x.shape[1] * k[0] * k[1]), dtype=x.dtype)
        cpu.im2col_kernel(x, k[0], k[1], s[0], s[1], p[0], p[1], out_hw[0], out_hw[1], cols)
        return cols

    def col2im(self, gcols, x_shape, k, s, p, out_hw):
        from .kernels import cpu

        gx = np.empty(x_shape, dtype=gcols.dtype)
        gc = np.ascontiguousarray(gcols).reshape(-1, x_shape[1] * k[0] * k[1])
        cpu.col2im_kernel(gc, k[0], k[1], s[0], s[1], p[0], p[1], out_hw[0], out_hw[1], gx)
        return gx


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self):
        from .kernels import launch

        launch.require_cuda()  # names the missing package or GPU
        self._conv = launch.cuda_module("cuda_conv")
        self._matmul = launch.cuda_module("cuda_matmul")
        self._probe = launch.cuda_module("cuda_probe")

    def matmul(self, a, b):
        if a.ndim != 2 or b.ndim != 2:
            return np.matmul(a, b)  # batched / 1-D products stay on NumPy (see demos/guide-backends.md)
        return self._matmul.matmul_cuda(a, b)

    def im2col(self, x, k, s, p, out_hw):
        return self._conv.im2col_cuda(x, k, s, p, out_hw)

    def col2im(self, gcols, x_shape, k, s, p, out_hw):
        return self._conv.col2im_cuda(gcols, x_shape, k, s, p, out_hw)

    def probe(self, theta, g, alpha, out):
        new, total = self._probe.probe_cuda(theta, g, alpha, deterministic=True)
        out[...] = new
        return total

    def probe_save(self, theta, g, alpha, saved):
        new, total = self._probe.probe_cuda(theta, g, alpha, deterministic=True)
        saved[...] = theta
        theta[...] = new
        return total

    def sq_norm(self, g):
        _, total = self._probe.probe_cuda(g, g, 0.0, deterministic=True)
        return total


_CLASSES = {"numpy": Backend, "numba": NumbaBackend, "cuda": CudaBackend}
_instances = {}
_chosen = {"name": None}  # set_backend's choice (process-wide)
_override = contextvars.ContextVar("qlabref_backend", default=None)  # use_backend's (per context)


def _check_name(name, where):
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name.strip().lower()


def _instance(name):
    if name not in _instances:
        _instances[name] = _CLASSES[name]()
    return _instances[name]


def set_backend(name):
    """Use backend ``name`` ("numpy" | "numba" | "cuda") from now on, process-wide. A backend that
    cannot run here raises at once (ImportError-like message naming ``pip install 'qlabref[cuda]'``,
    or the missing GPU) and leaves the current one in place."""
    name = _check_name(name, "set_backend")
    _instance(name)
    _chosen["name"] = name


def get_backend() -> str:
    """The name of the backend in force here."""
    return current().name


@contextlib.contextmanager
def use_backend(name):
    """``with qr.use_backend("numpy"): ...`` runs the block on that backend, then restores."""
    name = _check_name(name, "use_backend")
    _instance(name)
    token = _override.set(name)
    try:
        yield _instances[name]
    finally:
        _override.reset(token)


def current() -> Backend:
    """The backend object in force (``use_backend`` > ``set_backend`` > ``QLABREF_BACKEND`` > default)."""
    name = _override.get()
    if name is None:
        name = _chosen["name"]
    if name is None:
        env = os.environ.get(_ENV)
        name = _check_name(env, f"the environment variable {_ENV}") if env else DEFAULT_BACKEND
        _instance(name)
        _chosen["name"] = name
    return _instances[name] if name in _instances else _instance(name)
