"""Training runs on a chosen backend, and their comparison: shared by the backend tests
(``test_kernels_cpu.py``, ``gpu/test_sim_backend.py``)."""
from __future__ import annotations

import numpy as np

import qlabref as qr
import qlabref.nn.functional as F


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def conv_bn_model(dtype):
    rng = np.random.default_rng(7)
    return qr.nn.Sequential(qr.nn.Conv2d(2, 3, 3, padding=1, stride=2, rng=rng, dtype=dtype), qr.nn.BatchNorm2d(3, dtype=dtype),
                            qr.nn.ReLU(), qr.nn.Conv2d(3, 4, 2, rng=rng, dtype=dtype), qr.nn.Flatten(),
                            qr.nn.Linear(4 * 2 * 2, 5, rng=rng, dtype=dtype))


def train_qlabgrad(backend, make_model, x, y, steps=5, flat=False, pre_lr=None):
    """5 QLABGrad steps on ``backend``; returns the parameters, the records and the BN buffers."""
    with qr.use_backend(backend):
        model = make_model()
        if flat:
            model.flat_parameters()
            model.flat_grads()
        kw = {} if pre_lr is None else dict(pre_lr=pre_lr, findplr="never")
        opt = qr.optim.QLABGrad(model.parameters(), **kw)
        records = []
        for _ in range(steps):
            opt.step(lambda: F.cross_entropy(model(qr.tensor(x)), y))
            records.append(dict(opt.last_step))
        return [p.data.copy() for p in model.parameters()], records, model.state_dict()


def assert_runs_match(a, b, tol=1e-10):
    pa, ra, sa = a
    pb, rb, sb = b
    for u, v in zip(pa, pb):
        assert _rel(u, v) < tol
    for u, v in zip(ra, rb):
        for key in ("loss", "grad_sq_norm", "probe_loss", "lr", "pre_lr"):
            assert abs(u[key] - v[key]) <= tol * max(1.0, abs(v[key])), key
        assert u["evals"] == v["evals"] and u["fallback"] == v["fallback"]
    for key in sa:
        assert _rel(np.asarray(sa[key], dtype=np.float64), np.asarray(sb[key], dtype=np.float64)) < tol, key
