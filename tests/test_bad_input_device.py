"""Bad input to ``qlabref.device`` outside the simulator (the device tests themselves are in tests/gpu)."""

import os

import pytest

from qlabref import device


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", reason="the simulator allows it")
def test_poison_pool_off_the_simulator_names_the_tool_to_use_instead():
    with pytest.raises(ValueError, match="only in Numba's CUDA simulator.*compute-sanitizer"):
        device.poison_pool(True)
    assert device.poison_pool(False) is False  # turning it off is always allowed, and it was off
