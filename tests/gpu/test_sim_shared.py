"""The simulator's shared arrays, made race-free by ``kernels.launch.lock_simulator_shared_arrays``.

Numba's CUDA simulator (numba-cuda 0.30.4) gives a block's threads one ``cuda.shared.array`` per call
site, created by whichever thread gets there first with an unlocked get-then-store; when the
interpreter switches threads between the two, two threads of one block get two different arrays and
a tree reduction reads memory nobody wrote (it gave a wrong ‖∇L‖² or conv weight gradient in about
one simulated QLABGrad run in 6 at a 0.1 ms switch interval). The oracle here is the definition of
shared memory: every thread of a block sees the same array. A lookup that sleeps (it releases the
GIL, so the other threads run) forces the interleaving that was rare, so the unlocked version fails
this test every time and the locked one never does. A property of the simulator only: on a GPU there
is nothing to test, so it is skipped there.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"  # as tests/gpu/conftest.py decides

pytestmark = pytest.mark.usefixtures("cuda_here")


class _SlowLookup(dict):
    """The allocation table with a lookup that yields the GIL before answering."""

    def get(self, key, default=None):
        found = super().get(key, default)
        time.sleep(0.002)
        return found


@pytest.mark.skipif(not SIM, reason="a fix of Numba's CUDA simulator; a GPU's shared memory is one per block")
def test_threads_of_a_block_share_one_array_under_interleaving():
    import qlabref.kernels.cuda_probe  # noqa: F401 - importing a kernel module applies the fix
    from numba.cuda.simulator import kernelapi

    assert getattr(kernelapi.FakeCUDAShared, "_qlabref_locked", False)
    for dtype in (np.float64, np.int32):
        shared = kernelapi.FakeCUDAShared(0)
        shared._allocations = _SlowLookup()
        got = [None] * 8
        start = threading.Barrier(len(got))

        def thread(t):
            start.wait()
            got[t] = shared.array(4, dtype)  # one call site, as in a kernel

        threads = [threading.Thread(target=thread, args=(t,)) for t in range(len(got))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert all(a is got[0] for a in got), f"{len({id(a) for a in got})} different arrays for one call site"
        assert got[0].shape == (4,) and got[0].dtype == dtype
        assert len(shared._allocations) == 1


@pytest.mark.skipif(not SIM, reason="a fix of Numba's CUDA simulator")
def test_two_call_sites_stay_two_arrays_and_dynamic_shared_memory_is_untouched():
    import qlabref.kernels.cuda_probe  # noqa: F401
    from numba.cuda.simulator import kernelapi

    shared = kernelapi.FakeCUDAShared(64)
    a = shared.array(3, np.float64)
    b = shared.array(3, np.float64)
    assert a is not b  # two lines, two arrays (the simulator's documented keying)
    a[:] = 1.0
    b[:] = 2.0
    assert np.all(a == 1.0)
    dyn = shared.array(0, np.dtype(np.float64))  # dynamic shared memory: the whole buffer, the simulator's own code
    assert dyn.shape == (8,)
