"""Every CUDA kernel compiles to PTX for compute capabilities 8.0 and 9.0 (no GPU needed, simulator
off): the type check that the simulator, which runs the kernels as Python, does not make. And the
probe kernels contain no fused multiply-add: θ − α·g and the float64 sum of squares use explicitly
rounded ``mul.rn``/``add.rn`` instructions, which ptxas never contracts (PTX ISA: only mul/add
*without* a rounding modifier may be fused), so the probe's bits equal NumPy's on hardware."""
from __future__ import annotations

import importlib
import re

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

    from qlabref.kernels.cuda_resources import target_cc

    with target_cc(cc):  # the device functions a kernel calls are compiled for cc too (no GPU here)
        ptx, resty = cuda.compile_ptx(fn, sig, cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    assert ".entry" in ptx  # a kernel, not a device function
    if "_blocks[" in name:  # the probe kernels (probe, probe_save, sum_sq)
        assert "fma" not in ptx, f"{name}: a fused multiply-add in the probe (θ − α·g would differ from NumPy)"
        # and no multiply without a rounding modifier, which ptxas could still fuse with an add
        assert not re.search(r"\bmul\.f(32|64)\b", ptx), f"{name}: a contractible multiply"
        assert "mul.rn.f64" in ptx and "add.rn.f64" in ptx  # Σ g², rounded
        if name.startswith(("probe_blocks", "probe_save_blocks")):
            t = "f32" if "float32" in name else "f64"
            assert f"mul.rn.{t}" in ptx and f"add.rn.{t}" in ptx, name  # θ − α·g, rounded


def test_plain_expression_would_be_contractible():
    # the control: the same update written plainly compiles to mul/sub *without* rounding modifiers,
    # which ptxas contracts into an FFMA on the GPU (the last-bit difference measured on an H200), so
    # the check above can fail
    from numba import cuda, float32

    def plain(theta, g, alpha, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = theta[i] - alpha * g[i]

    ptx, _ = cuda.compile_ptx(plain, (float32[::1], float32[::1], float32, float32[::1]), cc=(9, 0))
    assert re.search(r"\bmul\.f32\b", ptx) and "mul.rn.f32" not in ptx


def _dispatchers(value):
    """Every kernel dispatcher in a module attribute (nested dicts included)."""
    if type(value).__name__ in ("CUDADispatcher", "FakeCUDAKernel"):
        if not value.targetoptions.get("device"):  # device functions are compiled inside the kernels
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _dispatchers(v)


def test_every_kernel_is_listed():
    # a kernel added to a module without a PTX_KERNELS entry would escape the compile check
    from numba import cuda  # noqa: F401

    for m in MODULES:
        mod = importlib.import_module(f"qlabref.kernels.{m}")
        listed = {fn for _, fn, _ in mod.PTX_KERNELS}
        for k, v in vars(mod).items():
            for disp in _dispatchers(v):
                assert disp.py_func in listed, f"{m}: kernel {disp.py_func.__name__} ({k}) has no PTX_KERNELS entry"
