"""The kernels fit real hardware: each one's PTX, assembled to SASS for sm_90 and sm_80 by nvJitLink
(ptxas in process; no GPU, no driver, simulator off), uses no spill stores or loads (registers that
did not fit, moved through local memory), at most 255 registers per thread, and one block of it fits
a multiprocessor: registers (allocated 8 per thread at a time) × threads ≤ 65536, static shared memory
≤ 48 KiB. Every matmul configuration in ``CONFIGS``, float32 and float64, every storage order; the
probe kernels and the resident ``place``/``place_save``. A control shows the spill check can fail.

Skipped with a reason without nvJitLink (``pip install cuda-bindings nvidia-nvjitlink``); fails then
under ``QLABREF_REQUIRE_CUDA=1``."""
from __future__ import annotations

import importlib.util
import os

import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
CCS = [pytest.param((9, 0), id="sm90"), pytest.param((8, 0), id="sm80")]


def _cases():
    if SIM:
        return [pytest.param(None, None, None, None, id="sim")]
    if importlib.util.find_spec("numba_cuda") is None:
        return [pytest.param(None, None, None, None, id="numba-cuda-missing")]
    from numba import float32, float64

    from qlabref.kernels import cuda_matmul as mm
    from qlabref.kernels import cuda_probe as pr
    from qlabref.kernels import cuda_reduce as rd

    out = [pytest.param(name, fn, sig, mm.THREADS * mm.THREADS, id=name) for name, fn, sig in mm.PTX_KERNELS]
    out += [pytest.param(name, fn, sig, pr.TPB, id=name) for name, fn, sig in pr.PTX_KERNELS]
    for t in (float32, float64):
        for kind, factory in (("place", rd.place_kernel), ("place_save", rd.place_save_kernel)):
            out.append(pytest.param(f"{kind}[{t}]", factory(t).py_func, (t[::1], t[::1], t, t[::1]), rd.TPB,
                                    id=f"{kind}[{t}]"))
    return out


@pytest.fixture
def resources():
    """qlabref.kernels.cuda_resources, once nvJitLink is known to work here."""
    from qlabref.kernels import cuda_resources

    reason = cuda_resources.resource_reason()
    if reason:
        if os.environ.get("QLABREF_REQUIRE_CUDA") == "1":
            pytest.fail(f"QLABREF_REQUIRE_CUDA=1 but {reason}")
        pytest.skip(reason)
    return cuda_resources


def test_every_matmul_configuration_is_covered():
    if SIM:
        pytest.skip("compile-only test: run without NUMBA_ENABLE_CUDASIM")
    from qlabref.kernels import cuda_matmul as mm

    names = {n for n, *_ in (p.values for p in _cases())}
    for dt in ("float32", "float64"):
        for cfg in mm.CONFIGS:
            for tag in ("AB", "AtB", "ABt", "AtBt"):
                assert f"matmul_rt[{dt},{cfg},{tag}]" in names


@pytest.mark.parametrize("cc", CCS)
@pytest.mark.parametrize("name,fn,sig,threads", _cases())
def test_kernel_fits_a_multiprocessor_without_spills(resources, name, fn, sig, threads, cc):
    info = resources.kernel_resources(fn, sig, cc)
    problems = resources.block_problems(info, threads)
    assert not problems, f"{name} on sm_{cc[0]}{cc[1]}: " + "; ".join(problems) + "\n" + info["log"]
    assert info["stack"] == 0, f"{name}: {info['stack']} bytes of stack frame (local memory)\n{info['log']}"
    assert 0 < info["registers"] <= resources.LIMITS["registers_per_thread"]


def test_spill_check_can_fail(resources):
    # the control: the float64 128×128 tile (about 200 registers) squeezed into 64 registers per thread
    # must spill, and the check must say so (so a spill in a real configuration would be seen)
    from qlabref.kernels import cuda_matmul as mm

    name, fn, sig = next(k for k in mm.PTX_KERNELS if k[0] == "matmul_rt[float64,128x128,AB]")
    info = resources.kernel_resources(fn, sig, (9, 0), options=("-maxrregcount=64",))
    assert info["registers"] <= 64
    assert info["spill_stores"] > 0 and info["spill_loads"] > 0
    assert any(p.startswith("spills") for p in resources.block_problems(info, 256))


def test_block_limits_can_fail(resources):
    # the register-file and shared-memory checks, on reports that exceed them
    base = {"registers": 255, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0}
    assert not resources.block_problems(base, 256)  # 256 (255 rounded up to 8s) × 256 = 65536: fits
    assert resources.block_problems({**base, "registers": 129}, 512)  # 136 × 512 > 65536
    assert resources.block_problems({**base, "smem": 48 * 1024 + 1}, 256)
