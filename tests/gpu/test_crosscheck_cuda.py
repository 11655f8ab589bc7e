"""``qr.crosscheck(..., backend="cuda")`` and ``qlabref crosscheck --backend cuda``: the reference side runs on
the CUDA device (the model ``.to("cuda")``, each minibatch moved in), PyTorch on the CPU is the oracle.

Runs on whatever CUDA device there is (the simulator in CI, a GPU where present; tests/gpu/conftest.py)
and needs PyTorch (the ``torch`` fixture: skipped without it, failed when ``QLABREF_REQUIRE_TORCH=1``).
Sizes are small: the simulator runs every GPU thread as Python. The deliberately wrong PyTorch variant
(a probe that updates BatchNorm's running statistics) must still be caught at step 1 with the
reference side on the device, so the agreement below cannot be vacuous."""
from __future__ import annotations

import numpy as np
import pytest

import qlabref as qr

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.usefixtures("cuda_here")]


def _bn_net(torch):
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(2 * 3 * 3, 3))


def test_crosscheck_on_the_device_agrees_with_pytorch(torch, rng):
    X, y = rng.normal(size=(16, 1, 6, 6)), rng.integers(0, 3, 16)
    res = qr.crosscheck(_bn_net(torch), X, y, steps=2, batch_size=8, seed=int(rng.integers(100)), backend="cuda")
    assert res.ok, res.table()
    assert len(res.rows) == 2 and res.tol <= 1e-9  # float64's default tolerance


def test_crosscheck_on_the_device_catches_a_wrong_probe(torch, rng):
    from test_crosscheck import _wrong_variants  # tests/test_crosscheck.py: a probe that moves BN statistics

    X, y = rng.normal(size=(16, 1, 6, 6)), rng.integers(0, 3, 16)
    cls = _wrong_variants()["buffers"]
    res = qr.crosscheck(_bn_net(torch), X, y, steps=2, batch_size=8, backend="cuda", torch_optimizer=lambda p: cls(p))
    step, quantity, diff = res.first_failure
    assert step == 1 and quantity == "buffers" and diff > 1e-6, res.table()


def test_crosscheck_command_with_backend_cuda(torch, rng, tmp_path, capsys):
    from qlabref import cli

    X, y = rng.normal(size=(16, 4, 4)), rng.integers(0, 3, 16)
    np.savez(tmp_path / "d.npz", X=X.astype(np.float32), y=y)
    (tmp_path / "m.py").write_text("import torch\n"
                                   "def build():\n"
                                   "    torch.manual_seed(1)\n"
                                   "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 6),\n"
                                   "                               torch.nn.ReLU(), torch.nn.Linear(6, 3))\n")
    out = tmp_path / "out"
    rc = cli.main(["crosscheck", "--model", f"{tmp_path / 'm.py'}:build", "--data", str(tmp_path / "d.npz"),
                   "--steps", "2", "--batch-size", "8", "--backend", "cuda", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "AGREE" in text and "DIFFER" not in text
    assert len((out / "crosscheck.csv").read_text().splitlines()) >= 1 + 2
