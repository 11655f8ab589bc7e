"""The device-resident path's kernels (``cuda_elementwise``, ``cuda_reduce``) compile to PTX for
compute capability 9.0 with the types a training step uses (no GPU needed, simulator off): the
typing that the simulator, which runs kernels as Python, never checks (numba casts, libdevice's
``__fmul_rn``/``__dmul_rn``, shared arrays, tuple arguments)."""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
                                reason="cuda.compile_ptx needs the CUDA simulator off")


def _cases():
    from numba import boolean, float32, float64, int64, types

    from qlabref.kernels import cuda_elementwise as ew
    from qlabref.kernels import cuda_reduce as rd

    def tup(n):
        return types.UniTuple(int64, n)

    out = []
    for name, T, OUT, A, B in (("add", float32, float32, float32, float32), ("multiply", float32, float32, float32, boolean),
                               ("true_divide", float64, float64, float64, float64), ("greater", float64, boolean, float64, float64),
                               ("logical_and", boolean, boolean, boolean, boolean), ("maximum", float32, float32, float32, float32),
                               ("power", float64, float64, float64, float64), ("subtract", int64, int64, int64, int64)):
        for nd in (1, 4):
            out.append((f"zip[{name},{T},{nd}d]", ew.zip_kernel(name, T, OUT),
                        (OUT[:], A[:], int64, tup(nd), boolean, B[:], int64, tup(nd), boolean, tup(nd), int64)))
    for name, T, OUT in (("exp", float32, float32), ("log", float64, float64), ("sqrt", float32, float32),
                         ("tanh", float64, float64), ("negative", int64, int64), ("sign", float32, float32),
                         ("expit", float32, float32), ("isneginf", float64, boolean), ("logical_not", boolean, boolean)):
        out.append((f"map[{name},{T}]", ew.map_kernel(name, T, OUT), (OUT[:], T[:], int64)))
    out.append(("where[float64]", ew.where_kernel(float64),
                (float64[:], boolean[:], tup(2), float64[:], tup(2), float64[:], tup(2), tup(2), int64)))
    for T, S in ((float32, float32), (float64, float32), (boolean, boolean), (int64, int64)):
        out.append((f"gather[{T}<-{S}]", ew.gather_kernel(T), (T[:], S[:], int64, tup(3), tup(3), int64)))
    out.append(("scatter[float32]", ew.scatter_kernel(float32), (float32[:], int64, tup(2), float32[:], tup(2), tup(2), int64)))
    for T, V in ((float32, float64), (boolean, int64), (int64, int64)):
        out.append((f"fill[{T}]", ew.fill_kernel(T), (T[:], V, int64)))
    for kind, ACC, OUT, A in (("sum", float64, float32, float32), ("sum", float64, float64, float64), ("max", float32, float32, float32),
                              ("sum", int64, int64, boolean), ("max", float64, int64, int64)):
        for factory in (rd.reduce_kernel, rd.reduce_rows_kernel):
            out.append((f"{factory.__name__}[{kind},{A}->{OUT}]", factory(kind, ACC, OUT),
                        (OUT[:], A[:], tup(3), tup(3), tup(3), int64, int64, float64)))
    for T in (float32, float64):
        out.append((f"place[{T}]", rd.place_kernel(T), (T[:], T[:], T, T[:])))
        out.append((f"place_save[{T}]", rd.place_save_kernel(T), (T[:], T[:], T, T[:])))
        out.append((f"ce_forward[{T}]", rd.ce_forward_kernel(T), (T[:, :], int64[:], T, T[:])))
        out.append((f"log_softmax_rows[{T}]", rd.log_softmax_rows_kernel(T), (T[:, :], T[:, :])))
        out.append((f"ce_backward[{T}]", rd.ce_backward_kernel, (T[:, :], int64[:], T[:], T, T[:, :])))
        geom = (int64,) * 6
        out.append((f"avg_pool_forward[{T}]", rd.avg_pool_forward_kernel(T), (T[:, :, :, :], *geom, int64, T[:, :, :, :])))
        out.append((f"avg_pool_backward[{T}]", rd.avg_pool_backward_kernel(T), (T[:, :, :, :], *geom, int64, T[:, :, :, :])))
        out.append((f"max_pool_forward[{T}]", rd.max_pool_forward_kernel(T),
                    (T[:, :, :, :], *geom, T[:, :, :, :], int64[:, :, :, :])))
        out.append((f"max_pool_backward[{T}]", rd.max_pool_backward_kernel(T),
                    (T[:, :, :, :], int64[:, :, :, :], *geom, T[:, :, :, :])))
    return out


def _params():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return [pytest.param(None, None, None, id="sim")]
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        return [pytest.param(None, None, None, id="numba-cuda-missing")]
    return [pytest.param(n, k, s, id=n) for n, k, s in _cases()]


class _CC90:
    compute_capability = (9, 0)


@pytest.mark.parametrize("name,kernel,sig", _params())
def test_resident_kernel_compiles_to_ptx(name, kernel, sig, monkeypatch):
    from numba import cuda
    from numba.cuda import dispatcher

    # The kernels call device functions, which Numba compiles for the *current* device's compute
    # capability; without a GPU, say it is 9.0 (what compile_ptx targets below).
    monkeypatch.setattr(dispatcher, "get_current_device", lambda: _CC90())

    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
    assert ".target sm_90" in ptx and ".entry" in ptx
    if name.startswith("place"):  # θ − α·g stays a separate multiply and subtract: no fused multiply-add
        assert "fma" not in ptx and ("mul.rn" in ptx)
