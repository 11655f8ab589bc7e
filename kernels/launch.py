"""Device selection and launch helpers shared by the host wrappers (NumPy + Numba only).

``device="cpu"`` runs the Numba CPU kernels of ``cpu.py``. ``device="cuda"`` needs the
``numba-cuda`` package (``pip install 'qlabref[cuda]'``) and either a CUDA GPU or Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported; that is how the kernels are
tested without a GPU). The CUDA kernel modules (``cuda_matmul.py``, ``cuda_conv.py``, ``cuda_probe.py``) are
imported only when a CUDA launch is asked for, so ``device="cpu"`` never needs numba-cuda.
"""
from __future__ import annotations

import importlib
import importlib.util

import numpy as np

__all__ = [
    "DEVICES",
    "CUDA_EXTRA_HINT",
    "CudaUnavailableError",
    "cuda_status",
    "numpy_compat_problem",
    "require_cuda",
    "cuda_module",
    "check_device",
    "check_float",
    "blocks",
    "MAX_GRID_X",
    "MAX_GRID_Y",
    "check_grid",
    "LAUNCHES",
    "count_launch",
    "count_copy",
    "lock_simulator_shared_arrays",
]

DEVICES = ("cpu", "cuda")
CUDA_EXTRA_HINT = "pip install 'qlabref[cuda]'"
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class CudaUnavailableError(RuntimeError):
    """``device="cuda"`` was asked for but cannot run here (package missing or no GPU)."""


#: the newest numba-cuda release known to register ``np.row_stack``, which NumPy 2.5 removed
NUMBA_CUDA_ROW_STACK_LAST = (0, 30, 4)


def numpy_compat_problem():
    """Why numba-cuda cannot compile kernels with this NumPy, or None. numba-cuda <= 0.30.4 registers
    an overload of ``np.row_stack`` at its first kernel compile; NumPy 2.5 removed that function, so
    every compile fails with ``AttributeError: module 'numpy' has no attribute 'row_stack'``
    (NVIDIA/numba-cuda#907; the simulator, which compiles nothing, is not affected)."""
    if hasattr(np, "row_stack"):
        return None
    try:
        from importlib.metadata import version

        v = tuple(int(p) for p in version("numba-cuda").split(".")[:3] if p.isdigit())
    except Exception:  # noqa: BLE001 - unknown version: assume affected
        v = NUMBA_CUDA_ROW_STACK_LAST
    if v > NUMBA_CUDA_ROW_STACK_LAST:
        return None
    return (f"numba-cuda {'.'.join(map(str, v))} cannot compile kernels with NumPy {np.__version__} "
            f"(it registers np.row_stack, which NumPy 2.5 removed; NVIDIA/numba-cuda#907): "
            f"pip install 'numpy<2.5' (what {CUDA_EXTRA_HINT} installs)")


def cuda_status():
    """``(ok, reason)``: whether CUDA kernels can launch here (a GPU or the simulator), and why not."""
    if importlib.util.find_spec("numba_cuda") is None:
        return False, (f"the CUDA kernels need the numba-cuda package, which is not installed: "
                       f"{CUDA_EXTRA_HINT}")
    from numba import cuda
    from numba.core import config

    if config.ENABLE_CUDASIM:  # read by Numba from NUMBA_ENABLE_CUDASIM when it was imported
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    problem = numpy_compat_problem()
    if problem is not None:
        return False, problem
    try:
        available = cuda.is_available()
    except Exception as e:  # noqa: BLE001 - a broken driver is reported, not raised
        return False, f"the CUDA driver failed to initialise: {e}"
    if not available:
        return False, ("no CUDA GPU was found (numba.cuda.is_available() is False); to run the CUDA kernels "
                       "without a GPU, set NUMBA_ENABLE_CUDASIM=1 before Numba is imported (the simulator)")
    return True, f"CUDA GPU: {cuda.get_current_device().name}"


def require_cuda():
    """Raise :class:`CudaUnavailableError` naming what is missing, else return ``numba.cuda``."""
    ok, reason = cuda_status()
    if not ok:
        raise CudaUnavailableError(f"device='cuda': {reason}")
    from numba import cuda

    return cuda


def cuda_module(name):
    """The CUDA kernel module ``qlabref.kernels.<name>`` after :func:`require_cuda`."""
    require_cuda()
    return importlib.import_module(f"{__package__}.{name}")


def check_device(device, owner):
    if device not in DEVICES:
        raise ValueError(f"{owner}: device must be 'cpu' or 'cuda', got {device!r}")
    return device


def check_float(owner, **arrays):
    """Every array float32 or float64 and all of one dtype; returns the dtype."""
    dtypes = set()
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{owner}: {name} must be a NumPy array, got {type(a).__name__}")
        if a.dtype not in _FLOATS:
            raise TypeError(f"{owner}: {name} has dtype {a.dtype}; the kernels take float32 or float64")
        dtypes.add(a.dtype)
    if len(dtypes) > 1:
        detail = ", ".join(f"{k} {v.dtype}" for k, v in arrays.items())
        raise TypeError(f"{owner}: all arrays must have one dtype, got {detail}")
    return dtypes.pop()


#: the grid limits of every compute capability Numba supports (CUDA C++ Programming Guide, "Technical
#: Specifications"): gridDim.x up to 2³¹ − 1, gridDim.y and gridDim.z up to 65,535. Numba's simulator
#: checks none of them, so qlabref checks its 2-D grids itself (``check_grid``)
MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535


def check_grid(grid, name, what):
    """Raise ValueError, naming the kernel and ``what`` it computes, if ``grid`` exceeds a GPU's limits
    (a GPU would refuse the launch with CUDA_ERROR_INVALID_VALUE; the simulator would run it)."""
    limits = (MAX_GRID_X, MAX_GRID_Y, MAX_GRID_Y)
    for axis, (g, lim) in enumerate(zip(grid, limits)):
        if not 1 <= g <= lim:
            raise ValueError(f"{name}: grid {tuple(grid)} for {what}: gridDim.{'xyz'[axis]} = {g} is outside "
                             f"1..{lim}, a GPU's limit")


def blocks(n, per_block, cap=None):
    """⌈n / per_block⌉, at least 1, and at most ``cap`` when given (a grid-stride kernel's grid)."""
    b = max(1, (int(n) + per_block - 1) // per_block)
    return b if cap is None else min(b, int(cap))


# ------------------------------------------------------------------------------------ launch counts
class _Launches:
    """Kernel launches (and device-to-device copies) made through qlabref's CUDA entry points: the
    kernel modules' ``*_device``/``*_into`` functions and ``qlabref.device``'s launches. Counted where
    qlabref configures a launch (``kernel[grid, block]``), never inside Numba or its simulator, so a
    count is the same on a GPU and in the simulator; device functions are not launches. A copy
    (``cuMemcpyDtoD``) is not a kernel but costs a driver call as one does, so it is counted apart.
    ``qlabref.device.count_launches()`` reads them per block."""

    __slots__ = ("kernels", "copies", "by_name")

    def __init__(self):
        self.kernels = 0
        self.copies = 0
        self.by_name = {}  # name -> launches (copies under "copy_d2d")

    def snapshot(self):
        return self.kernels, self.copies, dict(self.by_name)


LAUNCHES = _Launches()


def count_launch(name):
    """Record one kernel launch called ``name`` (call it where the launch is configured)."""
    LAUNCHES.kernels += 1
    by = LAUNCHES.by_name
    by[name] = by.get(name, 0) + 1


def count_copy():
    """Record one device-to-device copy."""
    LAUNCHES.copies += 1
    by = LAUNCHES.by_name
    by["copy_d2d"] = by.get("copy_d2d", 0) + 1


# ------------------------------------------------------------------------- simulator shared memory
def lock_simulator_shared_arrays():
    """Make Numba's CUDA simulator allocate each ``cuda.shared.array`` under a lock.

    The simulator runs a block's threads as Python threads and gives them one shared array per call
    site (file, line; kept for the launch's later blocks, which run one after another), created by the
    first thread that reaches the site: ``get`` the allocation, and
    if there is none, ``np.empty`` one and store it (``numba.cuda.simulator.kernelapi.FakeCUDAShared``,
    numba-cuda 0.30.4). That check-then-store is not atomic: when the interpreter switches threads
    between the two (traceback extraction runs just before it, so a small ``sys.setswitchinterval``
    makes this likely), two threads each create their own array and no longer see each other's
    writes, so a block's tree reduction or tile load reads memory nobody wrote. Seen as a wrong
    ‖∇L‖² or conv weight gradient in about one simulated QLABGrad run in 6 at a 0.1 ms switch
    interval; never on a GPU, where shared memory is one per block by construction. This replaces
    the method by the same logic under a lock (and reads the caller's frame directly instead of
    extracting the whole stack, which is also faster). A no-op outside the simulator and when already
    applied; the dynamic shared array (shape 0) keeps the simulator's own code."""
    from numba.core import config

    if not config.ENABLE_CUDASIM:
        return
    import sys
    import threading

    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    cls = kernelapi.FakeCUDAShared
    if getattr(cls, "_qlabref_locked", False):
        return
    original = cls.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory / the simulator's own error
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)  # the simulator's key: the call site
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = np.empty(shape, dtype)
                self._allocations[caller] = res
        return res

    array.__doc__ = original.__doc__
    cls.array = array
    cls._qlabref_locked = True
