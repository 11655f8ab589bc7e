"""Every CUDA kernel compiles to PTX for compute capabilities 8.0 and 9.0 (no GPU needed, simulator
off): the type check that the simulator, which runs the kernels as Python, does not make."""
from __future__ import annotations

import importlib

import pytest

MODULES = ("cuda_matmul", "cuda_conv", "cuda_probe")


def _kernels():
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        return [pytest.param(None, None, None, id="numba-cuda-missing")]
    out = []
    for m in MODULES:
        for name, fn, sig in importlib.import_module(f"qlabref.kernels.{m}").PTX_KERNELS:
            out.append(pytest.param(name, fn, sig, id=name))
    return out


def _collectable():
    import os

    return os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["cc80", "cc90"])
@pytest.mark.parametrize("name,fn,sig", _kernels() if _collectable() else [pytest.param(None, None, None, id="sim")])
def test_kernel_compiles_to_ptx(name, fn, sig, cc):
    from numba import cuda

    ptx, resty = cuda.compile_ptx(fn, sig, cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    assert ".entry" in ptx  # a kernel, not a device function


def test_every_kernel_is_listed():
    # a kernel added to a module without a PTX_KERNELS entry would escape the compile check
    from numba import cuda  # noqa: F401

    for m in MODULES:
        mod = importlib.import_module(f"qlabref.kernels.{m}")
        listed = {fn for _, fn, _ in mod.PTX_KERNELS}
        launched = [v for k, v in vars(mod).items() if type(v).__name__ in ("CUDADispatcher", "FakeCUDAKernel")]
        for disp in launched:
            assert disp.py_func in listed, f"{m}: kernel {disp.py_func.__name__} has no PTX_KERNELS entry"
        for k, v in vars(mod).items():
            if isinstance(v, dict):
                for d in v.values():
                    if type(d).__name__ in ("CUDADispatcher", "FakeCUDAKernel"):
                        assert d.py_func in listed, f"{m}: kernel {d.py_func.__name__} has no PTX_KERNELS entry"
