"""The CUDA kernels and backend, on whatever CUDA device there is: Numba's simulator or a real GPU.

- Every test file here except the ``test_ptx*.py`` ones runs its kernels on a *CUDA device*: Numba's CUDA
  simulator (``NUMBA_ENABLE_CUDASIM=1``, set before Numba is imported; how CI runs them, small sizes)
  or, with the simulator off, a real GPU when ``numba.cuda.is_available()``. The same assertions hold
  on both: nothing here asserts a property only the simulator has (the probe's θ − α·g equals NumPy
  bit for bit on a GPU too: its kernels use explicitly rounded libdevice operations, no FMA).
  Without either they are skipped with that reason (``pytest tests`` lists them as skipped, never
  silently absent).
- ``test_ptx.py`` and ``test_ptx_resident.py`` compile every kernel for real GPU targets with
  ``cuda.compile_ptx``, which needs the simulator *off* (no GPU needed): ``pytest tests/gpu/test_ptx*.py``.

So CI runs ``NUMBA_ENABLE_CUDASIM=1 pytest tests/gpu`` and ``pytest tests/gpu/test_ptx*.py``; on a
machine with a GPU, ``pytest tests/gpu`` runs everything on the GPU.

``QLABREF_SIM_SWITCH=<seconds>`` sets the interpreter's thread switch interval under the simulator
(``sys.setswitchinterval``; Python's default, 5 ms, is kept otherwise). The simulator runs every CUDA
thread of a block as a Python thread while its main thread polls them; at 5 ms a started or unblocked
thread waits for the poller to drop the GIL (a 128-thread probe launch: 0.90 s; at 0.1 ms 0.15 s, and
the whole simulator pass about 2 min instead of about 8). ``.ci/run`` sets 0.1 ms. A fine interval
used to expose a race of the simulator itself: it creates a block's ``cuda.shared.array`` with an
unlocked get-then-store, so two threads could get two arrays (``test_cuda_backend_conv_batchnorm_
matches_numpy`` gave other parameters from one seed about 1 run in 5); the kernel modules now lock that
allocation (``qlabref.kernels.launch.lock_simulator_shared_arrays``, tested in ``test_sim_shared.py``;
54 runs of that seed without a difference afterwards).

Under the simulator every test runs with ``qlabref.device.poison_pool``: each pooled device buffer is
filled with all-ones bytes (NaN, or −1 as an index) when it is handed out and when it goes back to the
pool, so an op that reads memory it did not write, or an array that outlives the owner of its memory,
gives NaN there as it would give garbage on a GPU (the simulator otherwise never reuses memory, which
hid the first real-GPU run's failures).

All need numba-cuda (``pip install 'qlabref[cuda]'``): without it they skip, or fail when
``QLABREF_REQUIRE_CUDA=1`` (set by ``.ci/run``, where the extra is installed).
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
HAVE_NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
if SIM and os.environ.get("QLABREF_SIM_SWITCH"):
    sys.setswitchinterval(float(os.environ["QLABREF_SIM_SWITCH"]))  # see the module docstring
if SIM and HAVE_NUMBA_CUDA:
    from qlabref import device as _device

    _device.poison_pool(True)  # see the module docstring
NO_DEVICE_REASON = ("needs a CUDA device: Numba's CUDA simulator, switched on before Numba is imported "
                    "(`NUMBA_ENABLE_CUDASIM=1 pytest tests/gpu`, as .ci/run does), or a CUDA GPU")
PTX_REASON = ("cuda.compile_ptx needs the CUDA simulator off (NUMBA_ENABLE_CUDASIM is set): run "
              "`pytest tests/gpu/test_ptx.py` without it (.ci/run does)")
MISSING = "numba-cuda is not installed: pip install 'qlabref[cuda]'"

_GPU = {"checked": False, "present": False}


def gpu_present():
    """A real CUDA GPU is usable (simulator off, numba-cuda installed, driver and device found)."""
    if not _GPU["checked"]:
        _GPU["checked"] = True
        if not SIM and HAVE_NUMBA_CUDA:
            try:
                from numba import cuda

                _GPU["present"] = bool(cuda.is_available())
            except Exception:  # noqa: BLE001 - a broken driver means no GPU here
                _GPU["present"] = False
    return _GPU["present"]


def on_device():
    """Where the device tests run: "simulator", "gpu" or None."""
    return "simulator" if SIM else ("gpu" if gpu_present() else None)


def pytest_report_header(config):
    if HAVE_NUMBA_CUDA:
        return f"qlabref CUDA tests: device = {on_device() or 'none (device tests skipped)'}"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/gpu/" not in str(item.fspath).replace(os.sep, "/"):
            continue
        name = item.fspath.basename
        if name.startswith("test_ptx"):  # compile-only (test_ptx.py, test_ptx_resident.py): no device needed
            if SIM:
                item.add_marker(pytest.mark.skip(reason=PTX_REASON))
        elif HAVE_NUMBA_CUDA and on_device() is None:
            item.add_marker(pytest.mark.skip(reason=NO_DEVICE_REASON))


@pytest.fixture(autouse=True)
def _numba_cuda_installed():
    if not HAVE_NUMBA_CUDA:
        if os.environ.get("QLABREF_REQUIRE_CUDA") == "1":
            pytest.fail(f"QLABREF_REQUIRE_CUDA=1 but {MISSING}")
        pytest.skip(MISSING)


@pytest.fixture
def device():
    """"simulator" or "gpu": where the kernels of this test run (sizes may depend on it)."""
    return on_device()


@pytest.fixture
def cuda_kernels():
    """(numba.cuda, cuda_matmul, cuda_conv, cuda_probe), imported only when the test runs."""
    import importlib

    from numba import cuda

    return (cuda, *(importlib.import_module(f"qlabref.kernels.{m}") for m in ("cuda_matmul", "cuda_conv", "cuda_probe")))


@pytest.fixture
def cuda_here():
    """Skip unless CUDA kernels can launch here (the simulator or a GPU), naming what is missing."""
    from qlabref.kernels import launch

    ok, reason = launch.cuda_status()
    if not ok:
        pytest.skip(f"needs a CUDA GPU or the simulator (NUMBA_ENABLE_CUDASIM=1): {reason}")
