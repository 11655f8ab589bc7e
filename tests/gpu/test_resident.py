"""Device-resident tensors (``qlabref.device``): after ``model.to("cuda")`` a whole QLABGrad step runs
on the GPU and agrees with the ``numpy`` backend, and a step moves only the minibatch in and a few
scalars out.

Runs in Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1 pytest tests/gpu``) **and** on a real GPU
(simulator off: the file is not a ``test_sim_*`` one, so conftest.py does not skip it there); skipped
where neither is available. Nothing here relies on a simulator-only property: comparisons are within
tolerances (a GPU contracts a·b + c into a fused multiply-add and sums in another order), float64 to
1e-12 relative, float32 to 1e-5. Sizes are small: the simulator runs every GPU thread as Python.

The oracle is the ``numpy`` backend on the host (independent code: BLAS products, NumPy strided
views), fed the same fresh random inputs.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qlabref as qr
import qlabref.nn.functional as F
from qlabref.models import BasicBlock

pytestmark = pytest.mark.usefixtures("cuda_here")

nn = qr.nn


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def tiny_resnet(dtype, seed=5):
    """ResNet-18's op set at simulator sizes: the ImageNet stem (3×3 conv, BN, ReLU, 3×3/2 max-pool
    with padding), a BasicBlock with the identity shortcut, one with the 1×1/2 projection
    (``downsample``), adaptive average pooling and the fc head — the layer classes of
    ``qr.models.resnet18``."""
    rng = np.random.default_rng(seed)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False, dtype=dtype, rng=rng)
            self.bn1 = nn.BatchNorm2d(4, dtype=dtype)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.layer1 = BasicBlock(4, 4, 1, dtype=dtype, rng=rng)
            self.layer2 = BasicBlock(4, 6, 2, dtype=dtype, rng=rng)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(6, 3, dtype=dtype, rng=rng)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer2(self.layer1(x))
            return self.fc(F.flatten(self.avgpool(x), 1))

    return Tiny()


def _host_params(model):
    return [np.array(p.data, copy=True) for p in model.parameters()]  # a device array comes back as a host copy


def qlab_synced(make, x, y, steps, pre_lr, dtype):
    """``steps`` QLABGrad steps on "cuda" (model and minibatch moved once, up front), each checked
    against the ``numpy`` backend taking the same step **from the GPU's parameters**: before every
    step the oracle gets a host copy of the GPU model's state (parameters and BatchNorm buffers) and
    the same ᾱ, so that the comparison is of one step at a time and the GPU's rounding does not
    compound through Eq. (10) over the steps (the comparison of independent runs could not have a
    bound that also fails for a wrong kernel).

    Tolerances, with ``tol`` = TOL[dtype] the relative error allowed for a loss, ‖∇L‖² or g(ᾱ) (the
    device sums in another order; float32 losses are summed in float64 on both sides):
    - L, ‖∇L‖², g(ᾱ): ``tol`` (the same θ on both sides: nothing amplifies them).
    - α_t: Eq. (10)'s α* = ᾱ²‖∇L‖² / (2(g(ᾱ) − L + ᾱ‖∇L‖²)) divides by a difference of nearly equal
      numbers; its relative error is at most about (κ + 2)·tol with the condition number
      κ = (|g(ᾱ)| + |L| + ᾱ‖∇L‖²) / |g(ᾱ) − L + ᾱ‖∇L‖²|, taken from the oracle's record (κ is in the
      thousands on these small random problems, up to 6e5 in float32: why a fixed tolerance on α
      could not be both safe and tight). Allowed: 4(κ + 2)·tol. Whether the fallback fired is
      compared where that bound is below 0.1 (else the sign of the denominator is not determined).
    - θ_{t+1} = θ_t − α_t∇L: |Δθ| ≤ Δα·max|∇L| + tol·max(1, |θ|) elementwise in the max norm.
    - BatchNorm buffers: ``tol`` (batch statistics of the same θ).
    A wrong kernel is off by O(1) in the losses or the gradient, which the first two checks catch
    at every step. Returns the list of κ_t (for the assertion messages)."""
    tol = TOL[dtype]
    model = make()
    xb, yb = qr.tensor(x).to("cuda"), qr.tensor(y).to("cuda")
    model.to("cuda")
    assert all(p.device == "cuda" for p in model.parameters())
    opt = qr.optim.QLABGrad(model.parameters(), pre_lr=pre_lr, findplr="never")
    kappas = []
    for t in range(steps):
        state = model.state_dict()  # host copies of the GPU's θ_t and buffers
        opt.step(lambda: F.cross_entropy(model(xb), yb))
        got = dict(opt.last_step)
        assert all(p.device == "cuda" and p.grad.__class__.__name__ == "DeviceArray" for p in model.parameters())
        oracle = make()
        oracle.load_state_dict(state)
        with qr.use_backend("numpy"):
            ref_opt = qr.optim.QLABGrad(oracle.parameters(), pre_lr=got["pre_lr"], findplr="never")
            ref_opt.step(lambda: F.cross_entropy(oracle(qr.tensor(x)), qr.tensor(y)))
        want = dict(ref_opt.last_step)
        assert got["pre_lr"] == want["pre_lr"] == pre_lr, t  # findplr="never": ᾱ throughout
        for key in ("loss", "grad_sq_norm", "probe_loss"):
            assert abs(got[key] - want[key]) <= tol * max(1.0, abs(want[key])), (t, key, got[key], want[key])
        L, P, gsq, ab = want["loss"], want["probe_loss"], want["grad_sq_norm"], want["pre_lr"]
        kappa = (abs(P) + abs(L) + ab * gsq) / max(abs(P - L + ab * gsq), np.finfo(np.float64).tiny)
        kappas.append(kappa)
        lr_tol = 4 * (kappa + 2) * tol * abs(want["lr"])
        assert abs(got["lr"] - want["lr"]) <= lr_tol, (t, got["lr"], want["lr"], kappa)
        if lr_tol < 0.1 * abs(want["lr"]):
            assert got["fallback"] == want["fallback"], (t, kappa)
        gmax = max(float(np.max(np.abs(p.grad))) for p in oracle.parameters())
        for u, v in zip(_host_params(model), _host_params(oracle)):
            assert u.dtype == v.dtype
            bound = lr_tol * gmax + tol * max(1.0, float(np.max(np.abs(v))))
            assert float(np.max(np.abs(u.astype(np.float64) - v))) <= bound, (t, kappa)
        after, ref_after = model.state_dict(), oracle.state_dict()
        assert list(after) == list(ref_after)
        for key, v in ref_after.items():
            if key not in dict(oracle.named_parameters()):
                assert _rel(after[key], v) <= tol, (t, key)
    return kappas


TOL = {"float64": 1e-12, "float32": 1e-5}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mlp_qlabgrad_steps_on_device_match_numpy(dtype):
    rng = np.random.default_rng()
    x = rng.standard_normal((8, 12)).astype(dtype)
    y = rng.integers(0, 3, 8)
    seed = int(rng.integers(1000))
    qlab_synced(lambda: qr.models.mlp((12, 10, 9, 3), dtype=dtype, seed=seed), x, y, 3, 0.5, dtype)


@pytest.mark.slow
def test_paper_cnn_qlabgrad_steps_on_device_match_numpy():
    rng = np.random.default_rng()
    x = rng.standard_normal((2, 1, 28, 28))
    y = rng.integers(0, 3, 2)
    seed = int(rng.integers(1000))
    qlab_synced(lambda: qr.models.paper_cnn((2, 3), 8, 3, dtype=np.float64, seed=seed), x, y, 1, 0.1, "float64")


@pytest.mark.slow
def test_tiny_resnet_qlabgrad_steps_on_device_match_numpy():
    # BatchNorm (batch statistics, running-statistics update, probe forward without it), max and
    # adaptive pooling, projection shortcuts: parameters and BN buffers agree after each of 2 steps.
    rng = np.random.default_rng()
    x = rng.standard_normal((3, 3, 8, 8))
    y = rng.integers(0, 3, 3)
    seed = int(rng.integers(1000))
    qlab_synced(lambda: tiny_resnet(np.float64, seed=seed), x, y, 2, 0.1, "float64")


# ---------------------------------------------------------------------------------------- traffic
class _Counter:
    """Counts host→device and device→host copies at Numba's own entry points (independent of
    qlabref.device's bookkeeping): ``numba.cuda.to_device``, ``copy_to_host`` of the device array
    class, and ``copy_to_device`` when its source is a host array."""

    def __init__(self, monkeypatch):
        from numba import cuda

        self.h2d, self.d2h = [], []
        cls = type(cuda.device_array(1))
        real_to_device, real_copy_to_host, real_copy_to_device = cuda.to_device, cls.copy_to_host, cls.copy_to_device
        counter = self

        self.inside = False

        def to_device(obj, *args, **kw):
            counter.h2d.append(np.asarray(obj).nbytes)
            counter.inside = True  # Numba's to_device may call copy_to_device itself: one copy, counted once
            try:
                return real_to_device(obj, *args, **kw)
            finally:
                counter.inside = False

        def copy_to_host(self, *args, **kw):
            out = real_copy_to_host(self, *args, **kw)
            counter.d2h.append(out.nbytes)
            return out

        def copy_to_device(self, ary, *args, **kw):
            if isinstance(ary, np.ndarray) and not counter.inside:
                counter.h2d.append(ary.nbytes)
            return real_copy_to_device(self, ary, *args, **kw)

        monkeypatch.setattr(cuda, "to_device", to_device)
        monkeypatch.setattr(cls, "copy_to_host", copy_to_host)
        monkeypatch.setattr(cls, "copy_to_device", copy_to_device)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["mlp", "tiny_resnet"])
def test_a_step_moves_only_the_minibatch_in_and_scalars_out(monkeypatch, which):
    from qlabref import device

    rng = np.random.default_rng()
    if which == "mlp":
        model = qr.models.mlp((12, 10, 9, 3), dtype=np.float32, seed=1)
        x = rng.standard_normal((8, 12)).astype(np.float32)
    else:
        model = tiny_resnet(np.float32)
        x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, x.shape[0])
    model.to("cuda")
    opt = qr.optim.QLABGrad(model.parameters(), pre_lr=0.1, findplr="never")
    for step in range(2 if which == "mlp" else 1):  # MLP: a second step too (nothing cached on the host)
        counter = _Counter(monkeypatch)
        with device.count_traffic() as rec:
            xb, yb = qr.tensor(x).to("cuda"), qr.tensor(y).to("cuda")  # the minibatch goes in: 2 copies
            loss = opt.step(lambda: F.cross_entropy(model(xb), yb))
        monkeypatch.undo()
        assert np.isfinite(loss)
        # in: exactly the minibatch
        assert sorted(counter.h2d) == sorted([x.nbytes, y.nbytes]), counter.h2d
        assert rec["h2d"] == 2 and rec["h2d_bytes"] == x.nbytes + y.nbytes
        # out: three scalars (the loss, ‖∇L‖² of Eq. (7), g(ᾱ) of Eq. (8)) and no array; 4 allowed
        assert len(counter.d2h) <= 4 and all(n <= 8 for n in counter.d2h), counter.d2h
        assert rec["d2h"] == len(counter.d2h) and all(n <= 8 for _, _, n in rec["log"] if _ == "d2h")
    assert all(p.device == "cuda" for p in model.parameters())


# ---------------------------------------------------------------------------------------- ops
@pytest.mark.parametrize("mode", ["rows", "block"])
def test_reductions_match_numpy_with_either_kernel(monkeypatch, mode):
    from qlabref import device

    monkeypatch.setattr(device, "REDUCE_MODE", mode)
    rng = np.random.default_rng()
    a = rng.standard_normal((3, 4, 5))
    a[1, 2, 3] = 7.5  # a unique maximum
    d = device.to_device(a)
    for axis in (None, 0, 1, 2, (0, 2), (1, 2)):
        for keep in (False, True):
            assert np.allclose(d.sum(axis=axis, keepdims=keep).get(), a.sum(axis=axis, keepdims=keep), rtol=1e-13, atol=0)
            assert np.allclose(d.mean(axis=axis, keepdims=keep).get(), a.mean(axis=axis, keepdims=keep), rtol=1e-13, atol=0)
            assert np.array_equal(d.max(axis=axis, keepdims=keep).get(), a.max(axis=axis, keepdims=keep))
    b = a.copy()
    b[0, 0, 0] = np.nan
    assert np.isnan(device.to_device(b).max(axis=2).get()[0, 0])


def test_broadcasting_ufuncs_match_numpy():
    from qlabref import device

    rng = np.random.default_rng()
    shapes = [((2, 3, 4), (3, 1)), ((4,), (2, 1, 4)), ((1, 3, 1), (2, 1, 5)), ((), (2, 3))]
    for sa, sb in shapes:
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb)
        da, db = device.to_device(a), device.to_device(b)
        for name in ("add", "subtract", "multiply", "true_divide", "maximum", "greater"):
            f = getattr(np, name)
            assert np.allclose(f(da, db).get(), f(a, b), rtol=1e-6), name
            assert f(da, db).dtype == f(a, b).dtype, name
        # a Python scalar does not widen float32 (NumPy 2's rule)
        assert (da * 2.5).dtype == np.float32 and np.allclose((da * 2.5).get(), a * 2.5)
        assert np.allclose(np.exp(db).get(), np.exp(b), rtol=1e-13)
        assert np.allclose(np.broadcast_to(da, np.broadcast_shapes(sa, sb)).get(), np.broadcast_to(a, np.broadcast_shapes(sa, sb)))


def test_ops_forward_backward_on_device_match_numpy():
    rng = np.random.default_rng()
    x = rng.standard_normal((2, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    cases = [
        ("max_pool2d", lambda t: F.max_pool2d(t, 3, 2, 1), (x,)),
        ("avg_pool2d", lambda t: F.avg_pool2d(t, 2), (x,)),
        ("avg_pool2d pad", lambda t: F.avg_pool2d(t, 3, 2, 1, count_include_pad=False), (x,)),
        ("adaptive", lambda t: F.adaptive_avg_pool2d(t, 1), (x,)),
        ("conv2d", lambda t, u: F.conv2d(t, u, padding=1, stride=2), (x, w)),
        ("batch_norm", lambda t, a, b: F.batch_norm(t, None, None, a, b, training=True),
         (x, rng.standard_normal(3), rng.standard_normal(3))),
        ("linear", lambda t, u, b: F.linear(t, u, b), (rng.standard_normal((4, 5)), rng.standard_normal((3, 5)),
                                                       rng.standard_normal(3))),
        ("matmul", lambda a, b: a @ b, (rng.standard_normal((4, 5)), rng.standard_normal((5, 2)))),
        ("elementwise", lambda a: (a.exp() * 2 - a.tanh() / 3 + a.sigmoid()).relu().sum(axis=1),
         (rng.standard_normal((3, 4)),)),
        ("indexing", lambda t: t[:, 1:, ::2].transpose(0, 2, 3, 1).max(axis=-1), (x,)),
        ("log_softmax", lambda t: t.log_softmax(axis=1), (rng.standard_normal((4, 6)),)),
    ]
    for name, f, arrays in cases:
        host = [qr.tensor(a, requires_grad=True) for a in arrays]
        dev = [qr.tensor(a).to("cuda").requires_grad_() for a in arrays]
        out_h, out_d = f(*host), f(*dev)
        assert out_d.device == "cuda", name
        g = rng.standard_normal(out_h.shape)
        out_h.backward(g)
        out_d.backward(qr.tensor(g).to("cuda"))
        assert _rel(out_d.numpy(), out_h.numpy()) < 1e-13, name
        for a, b in zip(host, dev):
            assert _rel(b.grad, a.grad) < 1e-13, name


def test_boundary_and_errors():
    rng = np.random.default_rng()
    a = rng.standard_normal((3, 4))
    t = qr.tensor(a).to("cuda")
    assert t.device == "cuda" and t.to("cuda") is t and t.shape == (3, 4) and t.dtype == np.float64
    assert np.array_equal(t.numpy(), a) and np.array_equal(t.to("cpu").data, a) and t.cpu().device == "cpu"
    assert "device='cuda'" in repr(t)
    assert t.sum().item() == pytest.approx(a.sum(), rel=1e-13)
    with pytest.raises(IndexError, match="basic indices"):
        t[np.array([0, 2])]
    with pytest.raises(ValueError, match="unknown device"):
        t.to("gpu")
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        F.cross_entropy(t[:, :3], qr.tensor(np.array([0, 1, 3])).to("cuda"))
    m = qr.models.mlp((4, 5, 2), dtype=np.float64, seed=0)
    sd = m.state_dict()
    m.to("cuda")
    sd2 = m.state_dict()  # host copies of the device arrays
    assert all(isinstance(v, np.ndarray) and np.array_equal(v, sd[k]) for k, v in sd2.items())
    m.to("cpu")
    assert all(p.device == "cpu" and isinstance(p.data, np.ndarray) for p in m.parameters())


@pytest.mark.slow
def test_findplr_step_on_device_matches_numpy():
    # QLABGrad's defaults: FindPLR (Algorithm 2) picks ᾱ at the first step from the same probes.
    rng = np.random.default_rng()
    x = rng.standard_normal((8, 12))
    y = rng.integers(0, 3, 8)
    runs = []
    for device in ("cpu", "cuda"):
        model = qr.models.mlp((12, 10, 3), dtype=np.float64, seed=2)
        xb, yb = qr.tensor(x), qr.tensor(y)
        if device == "cuda":
            model.to("cuda")
            xb, yb = xb.to("cuda"), yb.to("cuda")
        opt = qr.optim.QLABGrad(model.parameters())
        with qr.use_backend("numpy"):
            opt.step(lambda: F.cross_entropy(model(xb), yb))
        model.to("cpu")
        runs.append((dict(opt.last_step), [p.data for p in model.parameters()]))
    (a, pa), (b, pb) = runs
    assert a["findplr_ran"] and b["findplr_ran"] and a["findplr_evals"] == b["findplr_evals"]
    assert b["pre_lr"] == a["pre_lr"]  # powers of two of alpha0: the same decisions
    assert abs(a["lr"] - b["lr"]) <= 1e-10 * abs(a["lr"])
    assert all(_rel(u, v) < 1e-10 for u, v in zip(pb, pa))


@settings(max_examples=12, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3),
       op=st.sampled_from(["add", "subtract", "multiply", "maximum", "less_equal"]),
       dtypes=st.sampled_from([("float32", "float32"), ("float64", "float32"), ("float32", "bool")]),
       keep=st.booleans(), data=st.data())
def test_broadcast_ufunc_then_reduce_matches_numpy(shapes, op, dtypes, keep, data):
    from qlabref import device

    rng = np.random.default_rng()
    a = rng.standard_normal(shapes.input_shapes[0]).astype(dtypes[0])
    b = (rng.standard_normal(shapes.input_shapes[1]) > 0 if dtypes[1] == "bool"
         else rng.standard_normal(shapes.input_shapes[1]).astype(dtypes[1]))
    want = getattr(np, op)(a, b)
    got = getattr(np, op)(device.to_device(a), device.to_device(b))
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.array_equal(got.get(), want)  # one rounding of the same operands: exact
    if want.ndim:
        axis = data.draw(st.sampled_from([None] + list(range(want.ndim))))
        w = want.astype(np.float64).sum(axis=axis, keepdims=keep)
        assert np.allclose(got.astype(np.float64).sum(axis=axis, keepdims=keep).get(), w, rtol=1e-12, atol=1e-12)


def test_eval_mode_forward_on_device_matches_numpy():
    # BatchNorm in eval mode normalises with the running statistics, which stay on the GPU.
    rng = np.random.default_rng()
    x = rng.standard_normal((2, 3, 6, 6))
    model = tiny_resnet(np.float64, seed=int(rng.integers(1000)))
    for name, buf in model.named_buffers():
        if buf.dtype.kind == "f":
            buf[...] = rng.uniform(0.5, 1.5, buf.shape) if name.endswith("var") else rng.standard_normal(buf.shape)
    model.eval()
    with qr.use_backend("numpy"), qr.no_grad():
        want = model(qr.tensor(x)).numpy()
    model.to("cuda")
    with qr.no_grad():
        got = model(qr.tensor(x).to("cuda"))
    assert got.device == "cuda" and _rel(got.numpy(), want) < 1e-13


def test_non_finite_gradient_on_device_raises_before_the_step():
    # loss = Σ sqrt(|w|) at w = 0 is finite (0), its gradient 0·∞ = NaN: the step must refuse.
    w = qr.tensor(np.array([0.0, 1.0, 4.0])).to("cuda").requires_grad_()
    opt = qr.optim.QLABGrad([w], pre_lr=0.1, findplr="never")
    with pytest.raises(qr.optim.NonFiniteLossError, match="not finite"):
        opt.step(lambda: w.abs().sqrt().sum())
    assert np.array_equal(w.numpy(), [0.0, 1.0, 4.0]) and w.device == "cuda"
