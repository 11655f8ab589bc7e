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
    """Two runs of the same steps agree: losses, ‖∇L‖² and g(ᾱ) to ``tol`` (relative); α_t to
    4(κ_t + 2)·tol with κ_t = (|g(ᾱ)| + |L| + ᾱ‖∇L‖²) / |g(ᾱ) − L + ᾱ‖∇L‖²| the condition number of
    Eq. (10)'s denominator (from ``b``, the oracle), which amplifies the kernels' different summation
    order once a small batch is memorised (tests/gpu/test_resident.py, qlab_synced: κ up to 6e5);
    the fallback where that bound is below 0.1; the parameters and buffers to ``tol`` plus what those
    α differences can move them, Σ_t Δα_t·‖∇L_t‖ (|Δθ| ≤ Δα·‖∇L‖ at each step). A wrong kernel is off
    by far more: O(1) in the losses or the gradient.

    Once an α_t differs by more than rounding (1000 eps; only Eq. (10)'s conditioning allowed it), the runs have
    parted: the next step's L, ‖∇L‖² and g(ᾱ) are taken at parameters that legitimately differ, and its
    gradients with them, which the drift bound does not cover. The comparison stops after that step
    (every step before it, and its own L, ‖∇L‖², g(ᾱ) and α_t, compared as above). CI, QLABREF_TEST_SEED=
    3405815230, flat MLP: α_3 = 10769 (κ ~ 1e6) differed by 1.8e-10 relative, and the run, blown up to a
    loss of 1.9e8 at step 4, gave a probe loss 1.1e-9 apart there."""
    pa, ra, sa = a
    pb, rb, sb = b
    drift = 0.0
    for u, v in zip(ra, rb):
        for key in ("loss", "grad_sq_norm", "probe_loss", "pre_lr"):
            assert abs(u[key] - v[key]) <= tol * max(1.0, abs(v[key])), (v["step"], key, u[key], v[key])
        L, P, gsq, ab = v["loss"], v["probe_loss"], v["grad_sq_norm"], v["pre_lr"]
        kappa = (abs(P) + abs(L) + ab * gsq) / max(abs(P - L + ab * gsq), np.finfo(np.float64).tiny)
        lr_tol = 4 * (kappa + 2) * tol * max(1.0, abs(v["lr"]))
        assert abs(u["lr"] - v["lr"]) <= lr_tol, (v["step"], u["lr"], v["lr"], kappa)
        assert u["evals"] == v["evals"]
        if lr_tol < 0.1 * abs(v["lr"]):
            assert u["fallback"] == v["fallback"], (v["step"], kappa)
        drift += lr_tol * float(np.sqrt(gsq))
        if abs(u["lr"] - v["lr"]) > 1e3 * np.finfo(np.float64).eps * max(1.0, abs(v["lr"])):
            return  # the runs have parted: α_t apart by more than rounding (see the docstring)
    for u, v in zip(pa, pb):
        assert _rel(u, v) < tol + drift, (_rel(u, v), drift)
    for key in sa:
        assert _rel(np.asarray(sa[key], dtype=np.float64), np.asarray(sb[key], dtype=np.float64)) < tol + drift, key
