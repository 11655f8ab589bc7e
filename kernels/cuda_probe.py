"""CUDA probe: ``out = θ − α·g`` and Σ g² in one pass over memory (the line-search probe of
QLABGrad's Eq. (8) and the a1 = −‖∇L‖² of Eq. (7), fused), with no allocation and no host round trip
per call.

**Bits.** ``θ − α·g`` is computed with explicitly rounded operations, ``fmul_rn``/``fsub_rn``
(float32) and ``dmul_rn``/``dsub_rn`` (float64) from libdevice: a multiply rounded to nearest, then a
subtract rounded to nearest, exactly NumPy's ``theta - alpha * g``. A plain ``theta[i] - alpha * g[i]``
is contracted by the GPU compiler into one fused multiply-add (one rounding instead of two), which
differs from NumPy in the last bit; PTX instructions with an explicit ``.rn`` are never contracted
(PTX ISA, ``mul``/``add``), and ``tests/gpu/test_ptx.py`` checks that the probe kernels' PTX has no
``fma``. The sum of squares uses ``dmul_rn``/``dadd_rn`` for the same reason, so
:func:`reference_tree_sum` replays it bit for bit on a GPU as well as in the simulator. Numba's CUDA
simulator has no libdevice (its stubs return ``None``), so there the same names are plain Python
products and differences of NumPy scalars, which round the same way.

**Reduction (deterministic, two stages, one launch).** Each kernel: a grid-stride loop (each thread
places its elements and adds their g², promoted to float64, to a private float64 sum in element
order), then a tree of ``TPB/2, TPB/4, ..., 1`` additions in shared memory (``syncthreads`` between
levels, in uniform control flow), one partial sum per block. Stage 2 runs in the same launch (one
kernel launch per probe: the launch overhead, about as long as the whole probe of 1.8M elements, is
paid once): each block's thread 0 stores its partial, ``threadfence``, and takes a ticket from an
atomic counter; the block that takes the last ticket reads all partials (through atomic adds of 0.0,
coherent in L2) and adds them with the same strided sums and tree, in the order of the block index,
whichever block comes last, then resets the counter for the next call (both stages are one device
function, ``grid_total``, that the three kernels end with; the compiler inlines it). The grid
depends only on n (``grid_for``), never on the GPU, so the sum has the same bits on every run and
every device. Only the counter's increments are atomic; no floating-point atomic changes the sum.

**Device-array entry points** (numba device arrays in, nothing copied; what the device-resident
backend calls):

- ``ws = ProbeWorkspace()``: the reusable scratch (``ws.partial``, ``MAX_BLOCKS`` float64; ``ws.counter``,
  one int32; ``ws.result``, one float64 on the device; ``ws.read()`` copies that one number to the
  host, through a pinned buffer). One default workspace per process (:func:`default_workspace`); use
  one workspace per CUDA stream if probes run on several streams at once.
- ``probe_into(theta, g, alpha, out, ws=None, result=None, index=0, max_blocks=None)``: ``out = θ − α·g``
  (``out`` may be ``theta``: in place), Σ g² written to ``result[index]`` (a float64 device array;
  default ``ws.result[0]``); returns the device array holding the sum. No host transfer.
- ``probe_save_into(theta, g, alpha, saved, ...)``: ``saved = θ``, then ``θ ← θ − α·g``, same sum.
- ``sum_sq_into(g, ...)``: Σ g² alone (the ‖∇L‖² of Eq. (7)).
- ``probe_device(theta, g, alpha, out, deterministic=True, max_blocks=None) -> float``: the old entry
  point (reads the sum back: one 8-byte copy).

Arrays are 1-D C-contiguous of one dtype, float32 or float64 (a C-contiguous N-d device array is
viewed 1-D); ``alpha`` is a host number, rounded to the arrays' dtype as NumPy does. The host wrapper
``probe_cuda`` (NumPy in, NumPy out) is kept for ``kernels.probe(device="cuda")``.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64, int32, int64
from numba.core import config

from .cuda_devfuncs import tree_sum
from .launch import blocks, count_launch

__all__ = ["TPB", "MAX_BLOCKS", "DEFAULT_BLOCKS", "PTX_KERNELS", "PROBE_PY_KERNELS", "grid_total", "ProbeWorkspace",
           "default_workspace",
           "grid_for", "probe_into", "probe_save_into", "sum_sq_into", "probe_device", "probe_cuda",
           "reference_tree_sum"]

#: threads per block (a power of two: the tree reduction halves it). 256 on a GPU; 8 in Numba's
#: simulator, which runs every thread as a Python thread: a launch costs about 1 ms per thread there
#: whatever the thread does (a 256-thread launch took 0.8 s, most of CI's simulator time, so a few
#: threads looping over many elements are far cheaper). The reduction order is fixed by TPB and the
#: grid, and the tests replay it with ``reference_tree_sum``, which reads this TPB: the same
#: assertions hold for either value.
TPB = 8 if config.ENABLE_CUDASIM else 256
#: the workspace's partial-sum slots: at most this many blocks (about one full wave of 8 blocks per SM
#: on a 132-SM H200); larger arrays are covered by the grid-stride loop.
MAX_BLOCKS = 1024
#: the grid cap when no ``max_blocks`` is given: MAX_BLOCKS on a GPU; 4 in the simulator, where a
#: launch costs about a millisecond per thread (a 1,000-element ``sum_sq`` of 32 blocks of 32 threads
#: took 0.6 s, the probe entry-point test 56 s). Fixed per process, so that the reduction order depends on
#: n only; ``reference_tree_sum`` reads it, and the tests that need more than TPB blocks (the last
#: block's strided second pass) ask for them with ``max_blocks``.
DEFAULT_BLOCKS = 4 if config.ENABLE_CUDASIM else MAX_BLOCKS

if config.ENABLE_CUDASIM:  # the simulator's libdevice is stubs: NumPy scalars round the same way
    def _mul(a, b):
        return a * b

    def _add(a, b):
        return a + b

    _ROUNDED = {"float32": (_mul, _add), "float64": (_mul, _add)}
else:
    from numba.cuda import libdevice

    _ROUNDED = {"float32": (libdevice.fmul_rn, libdevice.fadd_rn), "float64": (libdevice.dmul_rn, libdevice.dadd_rn)}
_dmul, _dadd = _ROUNDED["float64"]


@cuda.jit(device=True)
def grid_total(sh, tid, acc, partial, counter, result, index):
    """The two stages of the deterministic reduction, after each thread's grid-stride sum ``acc``:
    the block's tree → ``partial[blockIdx]``; the block that takes the last ticket adds all partials
    (strided sums, then the same tree) → ``result[index]`` and resets the counter. Called by every
    thread of every block."""
    sh[tid] = acc
    tree_sum(sh, tid)
    last = cuda.shared.array(1, int32)
    if tid == 0:
        partial[cuda.blockIdx.x] = sh[0]
        cuda.threadfence()  # the partial is visible device-wide before the ticket is taken
        last[0] = cuda.atomic.add(counter, 0, 1) == cuda.gridDim.x - 1
    cuda.syncthreads()
    if last[0]:  # uniform in the block
        nparts = cuda.gridDim.x
        acc = 0.0
        i = tid
        while i < nparts:
            acc += cuda.atomic.add(partial, i, 0.0)  # a coherent (L2) read of another block's partial
            i += TPB
        sh[tid] = acc
        tree_sum(sh, tid)
        if tid == 0:
            result[index] = sh[0]
            counter[0] = 0  # ready for the next call


def make_probe_kernels(dtype_name):
    """The plain Python kernels (probe, probe_save, sum_sq) for one dtype, with its rounded ops. Each
    is its own grid-stride loop (what it reads and writes per element) ending in :func:`grid_total`."""
    mul, add = _ROUNDED[dtype_name]

    def probe_blocks(theta, g, alpha, out, partial, counter, result, index):
        sh = cuda.shared.array(TPB, float64)
        tid = cuda.threadIdx.x
        i = cuda.blockIdx.x * TPB + tid
        stride = cuda.gridDim.x * TPB
        acc = 0.0
        while i < theta.shape[0]:
            gi = g[i]
            out[i] = add(theta[i], -mul(alpha, gi))  # Eq. (8): θ − α·g, two roundings, no FMA
            gd = float64(gi)
            acc = _dadd(acc, _dmul(gd, gd))  # Eq. (7): ‖∇L‖², in float64
            i += stride
        grid_total(sh, tid, acc, partial, counter, result, index)

    def probe_save_blocks(theta, g, alpha, saved, partial, counter, result, index):
        sh = cuda.shared.array(TPB, float64)
        tid = cuda.threadIdx.x
        i = cuda.blockIdx.x * TPB + tid
        stride = cuda.gridDim.x * TPB
        acc = 0.0
        while i < theta.shape[0]:
            gi = g[i]
            ti = theta[i]
            saved[i] = ti  # Algorithm 1: the point to return to
            theta[i] = add(ti, -mul(alpha, gi))
            gd = float64(gi)
            acc = _dadd(acc, _dmul(gd, gd))
            i += stride
        grid_total(sh, tid, acc, partial, counter, result, index)

    def sum_sq_blocks(g, partial, counter, result, index):
        sh = cuda.shared.array(TPB, float64)
        tid = cuda.threadIdx.x
        i = cuda.blockIdx.x * TPB + tid
        stride = cuda.gridDim.x * TPB
        acc = 0.0
        while i < g.shape[0]:
            gd = float64(g[i])
            acc = _dadd(acc, _dmul(gd, gd))
            i += stride
        grid_total(sh, tid, acc, partial, counter, result, index)

    return {"probe": probe_blocks, "probe_save": probe_save_blocks, "sum_sq": sum_sq_blocks}


#: the plain Python kernels by dtype name, then kind ("probe", "probe_save", "sum_sq")
PROBE_PY_KERNELS = {name: make_probe_kernels(name) for name in ("float32", "float64")}
_KERNELS = {name: {kind: cuda.jit(fn) for kind, fn in ks.items()} for name, ks in PROBE_PY_KERNELS.items()}


def _ptx_signatures():
    for t in (float32, float64):
        ks = PROBE_PY_KERNELS[str(t)]
        tail = (float64[::1], int32[::1], float64[::1], int64)  # partial, counter, result, index
        yield f"probe_blocks[{t}]", ks["probe"], (t[::1], t[::1], t, t[::1], *tail)
        yield f"probe_save_blocks[{t}]", ks["probe_save"], (t[::1], t[::1], t, t[::1], *tail)
        yield f"sum_sq_blocks[{t}]", ks["sum_sq"], (t[::1], *tail)


#: (name, python function, signature) of every kernel in this module, for the compile_ptx tests
PTX_KERNELS = list(_ptx_signatures())


class ProbeWorkspace:
    """Reusable device scratch for the probe kernels: ``partial`` (``max_blocks`` float64 partial
    sums) and ``result`` (one float64, where the sum lands unless a ``result=`` array is given).
    Allocated once; every call reuses it (calls on one stream run in order, so reuse is safe)."""

    def __init__(self, max_blocks=MAX_BLOCKS):
        self.max_blocks = int(max_blocks)
        self.partial = cuda.device_array(self.max_blocks, dtype=np.float64)
        self.result = cuda.device_array(1, dtype=np.float64)
        self.counter = cuda.to_device(np.zeros(1, dtype=np.int32))  # blocks done; the last one resets it
        self._host = cuda.pinned_array(1, dtype=np.float64)

    def read(self, result=None, index=0):
        """The sum as a Python float: one 8-byte device→host copy (synchronises)."""
        src = self.result if result is None else result
        if result is None or src.shape[0] == 1:
            src.copy_to_host(self._host)
            return float(self._host[0])
        return float(src[index:index + 1].copy_to_host()[0])


_default = {"ws": None}


def default_workspace():
    """The process's shared :class:`ProbeWorkspace` (created on first use)."""
    if _default["ws"] is None:
        _default["ws"] = ProbeWorkspace()
    return _default["ws"]


def grid_for(n, max_blocks=None):
    """Blocks launched for n elements: one element per thread, capped at ``max_blocks``
    (default ``DEFAULT_BLOCKS``); beyond the cap every thread loops over several elements."""
    return blocks(n, TPB, DEFAULT_BLOCKS if max_blocks is None else max_blocks)


def _flat(a):
    return a if a.ndim == 1 else a.reshape(a.size)


def _launch(kind, dtype, args, n, ws, result, index, max_blocks):
    ws = default_workspace() if ws is None else ws
    grid = grid_for(n, max_blocks)
    if grid > ws.max_blocks:
        raise ValueError(f"cuda_probe: grid of {grid} blocks exceeds the workspace's {ws.max_blocks} partial slots")
    res = ws.result if result is None else result
    count_launch(kind)
    _KERNELS[np.dtype(dtype).name][kind][grid, TPB](*args, ws.partial, ws.counter, res, index)
    return res


def probe_into(theta, g, alpha, out, ws=None, result=None, index=0, max_blocks=None):
    """``out = θ − α·g`` and Σ g² → ``result[index]`` (device float64; default ``ws.result``), on
    device arrays; returns the device array that holds the sum. ``out`` may be ``theta``."""
    theta, g, out = _flat(theta), _flat(g), _flat(out)
    alpha = theta.dtype.type(alpha)
    return _launch("probe", theta.dtype, (theta, g, alpha, out), theta.shape[0], ws, result, index, max_blocks)


def probe_save_into(theta, g, alpha, saved, ws=None, result=None, index=0, max_blocks=None):
    """``saved = θ``, ``θ ← θ − α·g`` (in place) and Σ g² → ``result[index]``, on device arrays."""
    theta, g, saved = _flat(theta), _flat(g), _flat(saved)
    alpha = theta.dtype.type(alpha)
    return _launch("probe_save", theta.dtype, (theta, g, alpha, saved), theta.shape[0], ws, result, index,
                   max_blocks)


def sum_sq_into(g, ws=None, result=None, index=0, max_blocks=None):
    """Σ g² (float64, same order as the probe) → ``result[index]``, on a device array."""
    g = _flat(g)
    return _launch("sum_sq", g.dtype, (g,), g.shape[0], ws, result, index, max_blocks)


def probe_device(theta, g, alpha, out, deterministic=True, max_blocks=None):
    """Launch on device arrays and return Σ g² as a Python float (an 8-byte copy back). The
    reduction is always the deterministic two-stage one; ``deterministic`` is kept for callers of
    the earlier version, which also had a one-atomic-per-block variant."""
    ws = default_workspace()
    probe_into(theta, g, alpha, out, ws=ws, max_blocks=max_blocks)
    return ws.read()


def probe_cuda(theta, g, alpha, deterministic=True, max_blocks=None, out=None):
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
    """The kernels' Σ g², reproduced in NumPy addition by addition (same grid, same grid-stride
    order per thread, same tree, same second pass). A test oracle for exact equality, on a GPU as
    in the simulator (the kernels round every product and sum: no fused multiply-add)."""
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
    for start in range(0, grid, TPB):  # the last block's strided sums
        chunk = partial[start:start + TPB]
        second[:chunk.size] = second[:chunk.size] + chunk
    return float(_tree(second))
