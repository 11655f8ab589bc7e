"""The CUDA kernels without a GPU: two separate pytest runs (``.ci/run`` makes both).

- ``test_sim_*.py`` run the kernels in Numba's CUDA simulator, which must be switched on *before*
  Numba is imported: ``NUMBA_ENABLE_CUDASIM=1 pytest tests/gpu``. Without it they are skipped
  with that reason (so ``pytest tests`` lists them as skipped, never silently absent).
- ``test_ptx.py`` compiles every kernel for real GPU targets with ``cuda.compile_ptx``, which needs
  the simulator *off*: ``pytest tests/gpu/test_ptx.py``.

Both need numba-cuda (``pip install 'qlabref[cuda]'``): without it they skip, or fail when
``QLABREF_REQUIRE_CUDA=1`` (set by ``.ci/run``, where the extra is installed).
"""
from __future__ import annotations

import importlib.util
import os

import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
SIM_REASON = ("needs Numba's CUDA simulator, switched on before Numba is imported: run "
              "`NUMBA_ENABLE_CUDASIM=1 pytest tests/gpu` (.ci/run does)")
PTX_REASON = ("cuda.compile_ptx needs the CUDA simulator off (NUMBA_ENABLE_CUDASIM is set): run "
              "`pytest tests/gpu/test_ptx.py` without it (.ci/run does)")
MISSING = "numba-cuda is not installed: pip install 'qlabref[cuda]'"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gpu/" not in str(item.fspath).replace(os.sep, "/"):
            continue
        name = item.fspath.basename
        if name.startswith("test_sim_") and not SIM:
            item.add_marker(pytest.mark.skip(reason=SIM_REASON))
        elif name == "test_ptx.py" and SIM:
            item.add_marker(pytest.mark.skip(reason=PTX_REASON))


@pytest.fixture(autouse=True)
def _numba_cuda_installed():
    if importlib.util.find_spec("numba_cuda") is None:
        if os.environ.get("QLABREF_REQUIRE_CUDA") == "1":
            pytest.fail(f"QLABREF_REQUIRE_CUDA=1 but {MISSING}")
        pytest.skip(MISSING)


@pytest.fixture
def cuda_kernels():
    """(numba.cuda, cuda_matmul, cuda_conv, cuda_probe), imported only when the test runs."""
    import importlib

    from numba import cuda

    return (cuda, *(importlib.import_module(f"qlabref.kernels.{m}") for m in ("cuda_matmul", "cuda_conv", "cuda_probe")))
