"""CUDA matmul: a register-tiled shared-memory kernel (any M, N, K; float32 and float64; transposed
operands read in place, no transposed copy).

**Tiling.** A block of 16 × 16 = 256 threads (``THREADS`` × ``THREADS``; see the simulator note below) computes a ``BM × BN`` tile of C, ``BM = 16·TM`` and
``BN = 16·TN``: each thread owns a ``TM × TN`` micro-tile of outputs in registers (rows
``ty + 16·i``, columns ``tx + 16·j``: neighbouring threads own neighbouring columns, so the
shared-memory reads have no bank conflicts and the stores to C are coalesced). The block walks the
inner dimension in steps of ``BK``: all 256 threads stage a ``BK × BM`` slice of A and a ``BK × BN``
slice of B in shared memory (every global load bounds-checked, zeros outside the matrices, loads laid
out so that neighbouring threads read neighbouring addresses for either storage order), synchronise,
and then, for each of the ``BK`` steps, read TM values of A and TN of B into registers and do
TM·TN multiply-adds. ``syncthreads`` is reached in uniform control flow only; only threads inside C
store. Row tiles go on ``blockIdx.x`` and column tiles on ``blockIdx.y``: a GPU allows 2³¹ − 1 blocks
on x but only 65,535 on y, and a convolution's M = N·OH·OW is the long side (8,388,608 rows at CIFAR
size, batch 8192, would need 65,536 row tiles of 128); N may have up to 65,535 column tiles (8.4M
columns of 128, 2.1M of 32), past which ``check_grid`` raises ValueError naming the shape. (A grid-stride
loop over row tiles instead cost the 128×128 tiles 36–54 more registers, halving float32's blocks per SM
and spilling float64's prefetching tile.)

Accumulation is in the operands' dtype (fused multiply-adds on a GPU: equal to NumPy to rounding, not
bit for bit, since the summation order differs from BLAS anyway).

Configurations (``CONFIGS``: name → (TM, TN, BK, prefetch)): ``"128x128"`` (8 × 8 per thread),
``"128x128p"`` (the same with the next K step's global loads prefetched into registers: float64's
large tile), ``"64x64"`` (4 × 4) and ``"32x32"`` (2 × 2). :func:`choose_config` takes the largest
tile that still gives at least one block per multiprocessor, so small products (the MLP's
64 × 784 · 784 × 1000) spread over the GPU instead of running on a handful of SMs.

**Device-array entry points** (numba device arrays, nothing copied, nothing read back):

- ``matmul_into(a, b, out=None, config=None)``: ``a @ b`` where ``a``/``b`` are 2-D device arrays,
  C-contiguous or transposed views of C-contiguous arrays (``x.T``: F-contiguous), read in place;
  ``out`` a preallocated C-contiguous (M, N) device array (allocated if None); returns ``out``.
- ``matmul_device(a, b, m, n, dtype, ta=False, tb=False, out=None, config=None)``: the low-level
  launch: ``a`` is A (M × K) or, with ``ta``, Aᵀ stored K × M; ``b`` is B (K × N) or, with ``tb``,
  Bᵀ stored N × K; both C-contiguous.

**In Numba's simulator** (``NUMBA_ENABLE_CUDASIM=1``), which runs every CUDA thread as a Python thread
and every ``syncthreads`` as a barrier of those threads, ``THREADS`` is 4: the same kernels with 4 × 4
threads per block and block tiles of ``4·TM × 4·TN`` (the configurations keep their hardware names).
A 256-thread block made the simulator tests of a small ResNet step spend half their time in matmul,
mostly on padding; the factory takes ``threads=16`` to run the hardware geometry there too (one test
does), and the PTX/SASS tests compile the 16 × 16 kernels.

``matmul_cuda(a, b)`` is the host wrapper (NumPy in, NumPy out) behind ``kernels.matmul(device="cuda")``.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64
from numba.core import config as _nb_config

from .launch import blocks, check_grid, count_launch, lock_simulator_shared_arrays

lock_simulator_shared_arrays()  # a simulator race, see its docstring (no-op on a GPU)

__all__ = ["THREADS", "CONFIGS", "LARGE", "TILE", "ORDERS", "make_matmul_kernel", "MATMUL_KERNELS", "PTX_KERNELS",
           "choose_config", "matmul_into", "matmul_device", "matmul_cuda"]

#: threads per block along x and y (the block is THREADS × THREADS): 16 on a GPU, 4 in the simulator
HW_THREADS = 16
THREADS = 4 if _nb_config.ENABLE_CUDASIM else HW_THREADS
#: name → (TM, TN, BK, prefetch): per-thread micro-tile, K step, software pipelining; the block tile
#: is 16·TM × 16·TN. "128x128p" is the float64 large tile: at 198-215 registers one block fits per
#: multiprocessor, and the prefetch hides the global loads that a second block would otherwise cover.
CONFIGS = {"128x128": (8, 8, 8, False), "128x128p": (8, 8, 8, True), "64x64": (4, 4, 16, False),
           "32x32": (2, 2, 32, False)}
#: the large tile per dtype (the first configuration choose_config tries)
LARGE = {"float32": "128x128", "float64": "128x128p"}
#: the largest block tile edge (kept under the old name: the tile of the first row of CONFIGS)
TILE = THREADS * CONFIGS["128x128"][0]
#: shared-memory row padding (elements): spreads the staging stores over the banks
_PAD = 4


def make_matmul_kernel(dtype, tm, tn, bk, ta=False, tb=False, prefetch=False, threads=None):
    """The plain Python kernel for one dtype (a Numba type), configuration (TM, TN, BK, prefetch) and
    storage order of the operands (``ta``: A is passed stored K × M; ``tb``: B stored N × K). The
    storage order is a compile-time constant: one kernel per case needs fewer registers than a runtime
    branch (ptxas, sm_90, float32 128×128: 128 registers instead of 152; 32×32: 72-80 instead of 126),
    so more blocks fit on a multiprocessor. ``prefetch``: the global loads of the next K step are
    issued into registers before the current step's multiply-adds (software pipelining: their
    latency hides behind the arithmetic, worth it where only one block fits per multiprocessor).
    ``threads``: the block edge (default ``THREADS``); launch the kernel with ``(threads, threads)``."""
    nt_edge = THREADS if threads is None else int(threads)
    nt = nt_edge * nt_edge
    bm, bn = nt_edge * tm, nt_edge * tn
    la, lb = bm * bk // nt, bn * bk // nt  # staging loads per thread and K step
    assert la * nt == bm * bk and lb * nt == bn * bk, "tile sizes must be multiples of the block's threads"
    sa_shape, sb_shape = (bk, bm + _PAD), (bk, bn + _PAD)  # constants: shared arrays need fixed shapes
    lag = 1 if prefetch else 0  # steps between a tile's global load and its multiply-adds
    load_phase = 1 if prefetch else 0  # load after (prefetch) or before storing the registers

    @cuda.jit(device=True)
    def slot_a(e):
        """(kk, mm): where staging load ``e`` (0 ≤ e < BM·BK) of the block puts its element of A in
        ``sa``. Neighbouring threads (neighbouring e) read neighbouring addresses of A as stored."""
        if ta:  # stored K × M: neighbouring threads read neighbouring m
            kk = e // bm
            return kk, e - kk * bm
        mm = e // bk  # stored M × K: neighbouring threads read neighbouring k
        return e - mm * bk, mm

    @cuda.jit(device=True)
    def slot_b(e):
        """(kk, nn): where staging load ``e`` puts its element of B in ``sb``."""
        if tb:  # stored N × K
            nn = e // bk
            return e - nn * bk, nn
        kk = e // bn  # stored K × N
        return kk, e - kk * bn

    @cuda.jit(device=True)
    def load_a(a, gk, gm, k, m):
        """A[gm, gk] read from A as stored (Aᵀ if ``ta``); zero outside the matrix."""
        if gk < k and gm < m:
            return a[gk, gm] if ta else a[gm, gk]
        return dtype(0)

    @cuda.jit(device=True)
    def load_b(b, gk, gn, k, n):
        """B[gk, gn] read from B as stored (Bᵀ if ``tb``); zero outside the matrix."""
        if gk < k and gn < n:
            return b[gn, gk] if tb else b[gk, gn]
        return dtype(0)

    @cuda.jit(device=True)
    def multiply_tile(sa, sb, acc, ra, rb, tx, ty):
        """One K step from shared memory: for each of the BK inner indices, TM values of A and TN
        of B into registers, then the TM·TN multiply-adds into this thread's micro-tile ``acc``."""
        for kk in range(bk):
            for i in range(tm):
                ra[i] = sa[kk, ty + nt_edge * i]
            for j in range(tn):
                rb[j] = sb[kk, tx + nt_edge * j]
            for i in range(tm):
                for j in range(tn):
                    acc[i, j] += ra[i] * rb[j]

    @cuda.jit(device=True)
    def store_tile(c, acc, m0, n0, tx, ty):
        """This thread's micro-tile into C (rows ty + 16·i, columns tx + 16·j), inside C only."""
        for i in range(tm):
            gm = m0 + ty + nt_edge * i
            if gm < c.shape[0]:
                for j in range(tn):
                    gn = n0 + tx + nt_edge * j
                    if gn < c.shape[1]:
                        c[gm, gn] = acc[i, j]

    def matmul_rt_plain(a, b, c):
        sa = cuda.shared.array(sa_shape, dtype)
        sb = cuda.shared.array(sb_shape, dtype)
        acc = cuda.local.array((tm, tn), dtype)
        ra = cuda.local.array(tm, dtype)
        rb = cuda.local.array(tn, dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        t = ty * nt_edge + tx
        m = c.shape[0]
        n = c.shape[1]
        k = a.shape[0] if ta else a.shape[1]
        m0 = cuda.blockIdx.x * bm  # row tiles on x: a GPU allows 2³¹ − 1 of them there, 65,535 on y
        n0 = cuda.blockIdx.y * bn
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = dtype(0)
        for k0 in range(0, k, bk):
            for r in range(la):  # stage A[m0:m0+bm, k0:k0+bk] as sa[kk, mm]
                kk, mm = slot_a(t + r * nt)
                sa[kk, mm] = load_a(a, k0 + kk, m0 + mm, k, m)
            for r in range(lb):  # stage B[k0:k0+bk, n0:n0+bn] as sb[kk, nn]
                kk, nn = slot_b(t + r * nt)
                sb[kk, nn] = load_b(b, k0 + kk, n0 + nn, k, n)
            cuda.syncthreads()
            multiply_tile(sa, sb, acc, ra, rb, tx, ty)
            cuda.syncthreads()
        store_tile(c, acc, m0, n0, tx, ty)

    def matmul_rt(a, b, c):  # the pipelined variant
        sa = cuda.shared.array(sa_shape, dtype)
        sb = cuda.shared.array(sb_shape, dtype)
        acc = cuda.local.array((tm, tn), dtype)
        ra = cuda.local.array(tm, dtype)
        rb = cuda.local.array(tn, dtype)
        pa = cuda.local.array(la, dtype)  # this thread's staged elements of A and B
        pb = cuda.local.array(lb, dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        t = ty * nt_edge + tx
        m = c.shape[0]
        n = c.shape[1]
        k = a.shape[0] if ta else a.shape[1]
        m0 = cuda.blockIdx.x * bm  # row tiles on x: a GPU allows 2³¹ − 1 of them there, 65,535 on y
        n0 = cuda.blockIdx.y * bn
        nk = (k + bk - 1) // bk
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = dtype(0)
        for step in range(nk + lag):
            for phase in range(2):
                if phase == load_phase and step < nk:  # global → registers, K step `step`
                    k0 = step * bk
                    for r in range(la):  # A[m0:m0+bm, k0:k0+bk]
                        kk, mm = slot_a(t + r * nt)
                        pa[r] = load_a(a, k0 + kk, m0 + mm, k, m)
                    for r in range(lb):  # B[k0:k0+bk, n0:n0+bn]
                        kk, nn = slot_b(t + r * nt)
                        pb[r] = load_b(b, k0 + kk, n0 + nn, k, n)
                if phase == 0 and step >= lag:  # registers → shared memory (the step to multiply)
                    for r in range(la):
                        kk, mm = slot_a(t + r * nt)
                        sa[kk, mm] = pa[r]
                    for r in range(lb):
                        kk, nn = slot_b(t + r * nt)
                        sb[kk, nn] = pb[r]
                    cuda.syncthreads()
            if step >= lag:
                multiply_tile(sa, sb, acc, ra, rb, tx, ty)
                cuda.syncthreads()
        store_tile(c, acc, m0, n0, tx, ty)

    if not prefetch:  # the straight loop: fewer registers (float32 128×128: 128 instead of 145)
        matmul_rt_plain.__name__ = "matmul_rt"
        return matmul_rt_plain
    return matmul_rt


#: the storage orders (ta, tb) of the operands
ORDERS = ((False, False), (True, False), (False, True), (True, True))
#: the plain Python kernels (what ``cuda.compile_ptx`` takes), keyed (dtype name, config, ta, tb)
PY_KERNELS = {(str(t), cfg, ta, tb): make_matmul_kernel(t, *CONFIGS[cfg][:3], ta, tb, CONFIGS[cfg][3])
              for t in (float32, float64) for cfg in CONFIGS for ta, tb in ORDERS}
#: the launchable kernels, same keys (compiled on first launch)
MATMUL_KERNELS = {key: cuda.jit(fn) for key, fn in PY_KERNELS.items()}


def _ptx_signatures():
    for (name, cfg, ta, tb), fn in PY_KERNELS.items():
        t = float32 if name == "float32" else float64
        arr = t[:, ::1]
        tag = ("A" if not ta else "At") + ("B" if not tb else "Bt")
        yield f"matmul_rt[{name},{cfg},{tag}]", fn, (arr, arr, arr)


#: (name, python function, signature) of every kernel in this module, for the compile_ptx tests
PTX_KERNELS = list(_ptx_signatures())

_SMS = {"n": None}


def _sm_count():
    """Multiprocessors of the current GPU (132 on an H200; the simulator has none: 132 is assumed,
    so that it picks the same configurations as an H200)."""
    if _SMS["n"] is None:
        try:
            _SMS["n"] = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
        except Exception:  # noqa: BLE001 - the simulator's fake device has no attributes
            _SMS["n"] = 132
    return _SMS["n"]


def choose_config(m, n, dtype=np.float32):
    """The largest block tile (``LARGE[dtype]``, then ``"64x64"``) that gives at least one block per
    multiprocessor, else ``"32x32"``."""
    sms = _sm_count()
    for cfg in (LARGE[np.dtype(dtype).name], "64x64"):
        tm, tn = CONFIGS[cfg][:2]
        if blocks(m, THREADS * tm) * blocks(n, THREADS * tn) >= sms:
            return cfg
    return "32x32"


def matmul_device(a, b, m, n, dtype, ta=False, tb=False, out=None, config=None):
    """C = op(A)·op(B) on device arrays (``a``/``b`` C-contiguous, already stored as the kernel
    reads them: ``ta``/``tb`` say they hold Aᵀ (K × M) / Bᵀ (N × K)). Returns ``out`` (allocated if
    None; it must be a C-contiguous (m, n) device array of ``dtype``)."""
    c = cuda.device_array((m, n), dtype=dtype) if out is None else out
    cfg = choose_config(m, n, dtype) if config is None else config
    tm, tn = CONFIGS[cfg][:2]
    grid = (blocks(m, THREADS * tm), blocks(n, THREADS * tn))  # rows on x (M = N·OH·OW for a conv)
    check_grid(grid, "matmul", f"C of {m} × {n} in {cfg} tiles")
    count_launch("matmul")
    MATMUL_KERNELS[np.dtype(dtype).name, cfg, bool(ta), bool(tb)][grid, (THREADS, THREADS)](a, b, c)
    return c


def _dev_operand(x, name):
    """(C-contiguous device array, transposed?) for a 2-D device array or its ``.T`` view."""
    if x.ndim != 2:
        raise ValueError(f"cuda_matmul.matmul_into: {name} must be 2-D, got shape {tuple(x.shape)}")
    if x.is_c_contiguous():
        return x, False
    if x.is_f_contiguous():
        return x.T, True
    raise ValueError(f"cuda_matmul.matmul_into: {name} must be C-contiguous or a transposed view of a "
                     f"C-contiguous array (strides {x.strides})")


def matmul_into(a, b, out=None, config=None):
    """``a @ b`` on 2-D device arrays (C-contiguous or ``.T`` views, read in place) into ``out``."""
    sa, ta = _dev_operand(a, "a")
    sb, tb = _dev_operand(b, "b")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"cuda_matmul.matmul_into: shapes {tuple(a.shape)} and {tuple(b.shape)} are not aligned")
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"cuda_matmul.matmul_into: operands must be both float32 or both float64, got "
                        f"{a.dtype} and {b.dtype}")
    m, n = a.shape[0], b.shape[1]
    if out is not None and (tuple(out.shape) != (m, n) or out.dtype != a.dtype or not out.is_c_contiguous()):
        raise ValueError(f"cuda_matmul.matmul_into: out must be a C-contiguous {a.dtype} device array of shape "
                         f"{(m, n)}, got {out.dtype} {tuple(out.shape)}")
    return matmul_device(sa, sb, m, n, a.dtype, ta, tb, out=out, config=config)


def _operand(x):
    """(C-contiguous array to pass, transposed?) without copying when ``x`` is a transposed view."""
    if x.flags.c_contiguous:
        return x, False
    if x.flags.f_contiguous:
        return x.T, True  # x.T is C-contiguous: pass it and read it transposed
    return np.ascontiguousarray(x), False


def matmul_cuda(a, b, config=None):
    """Host wrapper: NumPy (M, K) · (K, N) → NumPy (M, N), through the register-tiled kernel."""
    sa, ta = _operand(a)
    sb, tb = _operand(b)
    m, n = a.shape[0], b.shape[1]
    c = matmul_device(cuda.to_device(sa), cuda.to_device(sb), m, n, a.dtype, ta, tb, config=config)
    return c.copy_to_host()
