"""Kernel launches of a QLABGrad step on the ``cuda`` backend, and the storage rules that keep them
down: gradients adopted without a device-to-device copy, and flat parameter/gradient buffers on the
GPU (``model.flat_parameters()``, ``model.flat_grads()``) with which the probe θ − ᾱ∇L, the saved
θ_{t−1} and ‖∇L‖² (Algorithm 1, Eqs. (3), (7), (8)) are one launch each whatever the number of
parameters.

Launches are counted by ``qlabref.device.count_launches()``, where qlabref configures a launch (the
device module and the kernel modules' entry points), so the counts are the same in Numba's CUDA
simulator and on a GPU; nothing here times anything. Every run is also compared with the ``numpy``
backend on the host (the independent oracle) on fresh random data: float64 losses and ‖∇L‖² to 1e-12
relative, parameters after the steps to 1e-10 (Eq. (10)'s cancellation, see below; a GPU fuses
a·b + c and sums in another order; a wrong kernel or a lost accumulation is off by far more). Sizes are tiny: the simulator runs every GPU thread as Python.

Counts seen in the simulator when this file was written (float64; kernels + d2d copies per step after
the first): ``mlp((12, 10, 9, 3))`` per-parameter 60 + 0 (sum_sq 6, place_save 6, place 6), flat
47 + 0 (1, 1, 1); the tiny ResNet of test_resident.py (20 parameters, batch 2, 6×6) per-parameter 429 + 0, flat 374
+ 0. The assertion messages print the counts of the run at hand.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

import qlabref as qr
import qlabref.nn.functional as F

from test_resident import _rel  # tests/gpu is on sys.path (its conftest.py), as for tiny_resnet below

pytestmark = pytest.mark.usefixtures("cuda_here")

PROBE = ("sum_sq", "place_save", "place")  # ‖∇L‖², θ_{t−1} saved + first probe point, each later point




def _probe_launches(rec):
    return {k: rec["by_name"].get(k, 0) for k in PROBE}


def qlab_steps(make, x, y, steps, device, flat, pre_lr=0.5):
    """``steps`` QLABGrad steps (ᾱ fixed: no FindPLR); returns (parameters on the host, the launch
    record of each step, the step records)."""
    from qlabref.device import count_launches

    model = make()
    xb, yb = qr.tensor(x), qr.tensor(y)
    if device == "cuda":
        model.to("cuda")
        xb, yb = xb.to("cuda"), yb.to("cuda")
    if flat:
        model.flat_parameters()
        model.flat_grads()
    opt = qr.optim.QLABGrad(model.parameters(), pre_lr=pre_lr, findplr="never")
    launches, records = [], []
    for _ in range(steps):
        with count_launches() as rec:
            opt.step(lambda: F.cross_entropy(model(xb), yb))
        launches.append(rec)
        records.append(dict(opt.last_step))
    if device == "cuda":
        model.to("cpu")
    return [p.data.copy() for p in model.parameters()], launches, records


def _mlp(sizes, seed):
    return lambda: qr.models.mlp(sizes, dtype=np.float64, seed=seed)


def test_flat_buffers_make_the_probe_launches_independent_of_the_parameter_count():
    rng = np.random.default_rng()
    seed = int(rng.integers(1000))
    x = rng.standard_normal((6, 8))
    y = rng.integers(0, 3, 6)
    with qr.use_backend("numpy"):
        oracle = {n: qlab_steps(_mlp(s, seed), x, y, 3, "cpu", False)
                  for n, s in ((2, (8, 7, 3)), (4, (8, 7, 6, 5, 3)))}
    runs = {}
    for layers, sizes in ((2, (8, 7, 3)), (4, (8, 7, 6, 5, 3))):
        for flat in (False, True):
            params, launches, records = qlab_steps(_mlp(sizes, seed), x, y, 3, "cuda", flat)
            runs[layers, flat] = launches
            assert all(r["flat_storage"] is flat for r in records)
            # the result is the numpy backend's, flat or not: the first step's L, ‖∇L‖² (Eq. 7) and
            # g(ᾱ) (Eq. 8) to 1e-12 (the same θ on both sides), and its α_t to 4(κ + 2)·1e-12 with κ the
            # condition number of Eq. (10)'s denominator g(ᾱ) − L + ᾱ‖∇L‖² (tests/gpu/test_resident.py,
            # qlab_synced). Later steps start from parameters that already differ by that amount, which
            # Eq. (10) can amplify without bound (1.05e-12, then more, seen after 3 steps), so they are
            # not compared here: test_resident.py compares every step from the GPU's own parameters.
            # A wrong kernel or a lost gradient accumulation is off by far more.
            want_params, _, want_records = oracle[layers]
            got, want = records[0], want_records[0]
            for key in ("loss", "grad_sq_norm", "probe_loss"):
                assert abs(got[key] - want[key]) <= 1e-12 * max(1.0, abs(want[key])), (layers, flat, key, got[key], want[key])
            L, P, gsq, ab = want["loss"], want["probe_loss"], want["grad_sq_norm"], want["pre_lr"]
            kappa = (abs(P) + abs(L) + ab * gsq) / max(abs(P - L + ab * gsq), np.finfo(np.float64).tiny)
            assert abs(got["lr"] - want["lr"]) <= 4 * (kappa + 2) * 1e-12 * abs(want["lr"]), (layers, flat, kappa)
    counts = {k: [(r["kernels"], r["copies"], _probe_launches(r)) for r in v] for k, v in runs.items()}
    msg = f"launches per step (kernels, d2d copies, probe family) by (layers, flat): {counts}"
    for (layers, flat), launches in runs.items():
        # stable across steps once the first one made its constants
        assert launches[1]["kernels"] == launches[2]["kernels"], msg
        assert launches[1]["by_name"] == launches[2]["by_name"], msg
        # adopted gradients: no device-to-device copy in a step
        assert all(r["copies"] == 0 for r in launches), msg
    # flat: one launch each for ‖∇L‖², the save + first probe point and the step, at any depth
    for layers in (2, 4):
        assert _probe_launches(runs[layers, True][2]) == dict.fromkeys(PROBE, 1), msg
    # per parameter they grow with the parameters (so the comparison above can fail), flat they don't
    assert sum(_probe_launches(runs[4, False][2]).values()) > sum(_probe_launches(runs[2, False][2]).values()), msg
    assert runs[4, True][2]["kernels"] < runs[4, False][2]["kernels"], msg
    print(msg)


@pytest.mark.slow
def test_tiny_resnet_step_on_flat_device_buffers_matches_numpy():
    from test_resident import tiny_resnet

    rng = np.random.default_rng()
    seed = int(rng.integers(1000))
    x = rng.standard_normal((2, 3, 6, 6))
    y = rng.integers(0, 3, 2)
    make = lambda: tiny_resnet(np.float64, seed=seed)  # noqa: E731
    with qr.use_backend("numpy"):
        cpu, _, cpu_records = qlab_steps(make, x, y, 1, "cpu", False, pre_lr=0.1)
    start = [p.data.copy() for p in make().parameters()]
    flat, launches, records = qlab_steps(make, x, y, 1, "cuda", True, pre_lr=0.1)
    rec = launches[0]
    msg = (f"tiny ResNet ({len(cpu)} parameters), flat buffers, one QLABGrad step: {rec['kernels']} kernel launches, "
           f"{rec['copies']} d2d copies; by kernel {rec['by_name']}")
    assert records[0]["flat_storage"] is True
    assert _probe_launches(rec) == dict.fromkeys(PROBE, 1), msg
    assert rec["copies"] == 0, msg  # BatchNorm's statistics and gradients are not copied either
    # θ_1 = θ_0 − α_1∇L: α_1 to 4(κ + 2)·1e-12 relative (κ: Eq. (10)'s condition number, as above), so
    # each parameter to that times its step |θ_1 − θ_0|, plus 1e-12 of its size
    want = cpu_records[0]
    L, P, gsq, ab = want["loss"], want["probe_loss"], want["grad_sq_norm"], want["pre_lr"]
    rel_lr = 4 * (abs(P) + abs(L) + ab * gsq) / max(abs(P - L + ab * gsq), np.finfo(np.float64).tiny) * 1e-12 + 8e-12
    for u, v, u0 in zip(flat, cpu, start):
        bound = rel_lr * np.abs(v - u0) + 1e-12 * max(1.0, float(np.max(np.abs(v))))
        assert np.all(np.abs(u - v) <= bound), msg
    print(msg)


# ----------------------------------------------------------------------------------- adoption
def _host(a):
    return np.asarray(a)


def test_device_gradients_are_adopted_as_on_the_host():
    from qlabref.device import count_launches

    rng = np.random.default_rng()
    data = [rng.standard_normal(s) for s in ((4, 3), (3, 5), (5,))]
    grads = {}
    for dev in ("cpu", "cuda"):
        x, w, b = (qr.tensor(d.copy(), requires_grad=True) for d in data)
        if dev == "cuda":
            x, w, b = (t.to("cuda") for t in (x, w, b))
        with qr.use_backend("numpy"):
            loss = F.cross_entropy(x @ w + b, qr.tensor(np.array([0, 4, 2, 1])).to(dev))
            with count_launches() as rec:
                loss.backward()
        grads[dev] = [_host(t.grad) for t in (x, w, b)]
        if dev == "cuda":
            # every leaf's gradient is a fresh array of the pass: assigned, not copied device to device
            assert rec["copies"] == 0, rec
            assert all(t.grad.base is None for t in (x, w, b))
    for u, v in zip(grads["cuda"], grads["cpu"]):
        assert _rel(u, v) < 1e-12


def test_a_gradient_two_leaves_share_is_copied_for_the_second():
    from qlabref.device import count_launches

    rng = np.random.default_rng()
    a0, b0 = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    a, b = (qr.tensor(v, requires_grad=True).to("cuda") for v in (a0, b0))
    with count_launches() as rec:
        (a + b).sum().backward()  # Add hands one array to both inputs
    assert rec["copies"] == 1, rec  # one leaf takes it, the other gets a copy
    assert a.grad is not b.grad
    before = _host(b.grad)
    np.testing.assert_array_equal(before, np.ones((3, 4)))
    a.grad[...] = 5.0  # in place on one leaf's gradient ...
    np.testing.assert_array_equal(_host(b.grad), before)  # ... leaves the other alone
    np.testing.assert_array_equal(_host(a.grad), np.full((3, 4), 5.0))


def test_the_callers_gradient_and_views_are_copied():
    rng = np.random.default_rng()
    a0 = rng.standard_normal((2, 3))
    a = qr.tensor(a0, requires_grad=True).to("cuda")
    g = qr.tensor(rng.standard_normal((2, 3))).to("cuda")
    expect = _host(g.data)
    a.backward(grad=g)  # the caller's array reaches the leaf as it is
    g.data[...] = 0.0  # and changes afterwards: a.grad must not
    np.testing.assert_array_equal(_host(a.grad), expect)
    c = qr.tensor(a0, requires_grad=True).to("cuda")
    c.reshape(6).backward(grad=qr.tensor(np.arange(6.0)).to("cuda"))  # Reshape's backward returns a view
    assert c.grad.base is None
    np.testing.assert_array_equal(_host(c.grad), np.arange(6.0).reshape(2, 3))


# ----------------------------------------------------------------------------------- flat on device
def test_flat_device_buffers_are_views_and_backward_accumulates_into_them():
    from qlabref.device import DeviceArray

    rng = np.random.default_rng()
    seed = int(rng.integers(1000))
    x = rng.standard_normal((5, 6))
    y = rng.integers(0, 3, 5)
    make = lambda: qr.models.mlp((6, 4, 3), dtype=np.float64, seed=seed)  # noqa: E731
    ref = make()
    with qr.use_backend("numpy"):
        for _ in range(2):  # two backward passes without zero_grad: the gradients add up
            F.cross_entropy(ref(qr.tensor(x)), qr.tensor(y)).backward()
    model = make().to("cuda")
    flat, gflat = model.flat_parameters(), model.flat_grads()
    assert isinstance(flat, DeviceArray) and flat.shape == (sum(p.data.size for p in model.parameters()),)
    assert model.flat_parameters() is flat and model.flat_grads() is gflat
    host_flat = np.concatenate([p.data.ravel() for p in ref.parameters()])
    np.testing.assert_array_equal(_host(flat), host_flat)  # the values moved in, in parameters() order
    for p in model.parameters():
        assert p.data.base is flat and p.grad.base is gflat
    xb, yb = qr.tensor(x).to("cuda"), qr.tensor(y).to("cuda")
    for _ in range(2):
        F.cross_entropy(model(xb), yb).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert p.grad.base is gflat  # still the views
        assert _rel(_host(p.grad), q.grad) < 1e-12
    np.testing.assert_allclose(_host(gflat), np.concatenate([q.grad.ravel() for q in ref.parameters()]),
                               rtol=1e-12, atol=1e-14)
    # a write through a view is a write into the buffer
    p0 = model.parameters()[1]
    p0.data[...] = 7.0
    assert np.all(_host(flat)[p0.data._offset:p0.data._offset + p0.data.size] == 7.0)
    # zero_grad (module's and optimizer's, set_to_none by default) zeroes the views in place
    model.zero_grad()
    assert all(p.grad.base is gflat for p in model.parameters())
    assert not np.any(_host(gflat))
    F.cross_entropy(model(xb), yb).backward()
    opt = qr.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    assert all(p.grad.base is gflat for p in model.parameters()) and not np.any(_host(gflat))


def test_a_flat_model_moves_to_the_gpu_and_back():
    rng = np.random.default_rng()
    model = qr.models.mlp((5, 4, 3), dtype=np.float64, seed=int(rng.integers(1000)))
    host_flat = model.flat_parameters()
    model.flat_grads()
    values = [p.data.copy() for p in model.parameters()]
    model.to("cuda")
    assert "_flat_params" not in model.__dict__ and "_flat_grads" not in model.__dict__
    dflat = model.flat_parameters()
    assert all(p.data.base is dflat for p in model.parameters())
    for p, v in zip(model.parameters(), values):
        np.testing.assert_array_equal(_host(p.data), v)
    model.to("cpu")
    assert all(isinstance(p.data, np.ndarray) and not np.shares_memory(p.data, host_flat) for p in model.parameters())
    again = model.flat_parameters()
    for p, v in zip(model.parameters(), values):
        assert np.shares_memory(p.data, again)
        np.testing.assert_array_equal(p.data, v)
    mixed = qr.models.mlp((5, 4, 3), dtype=np.float64, seed=1)
    mixed.parameters()[0].data = mixed.parameters()[0].to("cuda").data
    with pytest.raises(ValueError, match="some parameters are on the GPU"):
        mixed.flat_parameters()


def test_flat_views_keep_their_buffer_when_the_model_is_gone():
    """A parameter's device view outlives the module and the flat buffer's other references (its
    ``_base`` holds the owner): arrays made afterwards, from the pool, never get that memory."""
    from qlabref import device

    rng = np.random.default_rng()
    model = qr.models.mlp((5, 4, 3), dtype=np.float64, seed=int(rng.integers(1000))).to("cuda")
    flat = model.flat_parameters()
    n = flat.size
    p = model.parameters()[2]
    want = _host(p.data)
    del model, flat
    gc.collect()
    others = [device.to_device(rng.standard_normal(n)) * 1.0 for _ in range(4)]  # pooled arrays of that size
    for o in others:
        o[...] = -1.0
    np.testing.assert_array_equal(_host(p.data), want)
