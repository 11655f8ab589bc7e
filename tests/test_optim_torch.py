"""The torch.optim baselines (SGD, Adagrad, RMSprop, Adadelta, Adam) against torch.optim itself.

30 steps on a small tanh MLP in float64, identical initial weights and identical minibatches (new
random ones per test run from the ``rng`` fixture). After every step, each within 1e-12 relative
(OPTIMIZERS.md §1; ``assert_close``):

1. our loss and gradient against torch's autograd at the same parameters (``assert_grads_close``), and
2. the parameters after the update, torch's optimizer being stepped from *our* gradient (a copy of
   the same float64 arrays), so that this compares the two optimizers' arithmetic and nothing else.

Why torch gets our gradient instead of each side using its own: the two autograds' gradients differ
by rounding (different summation orders, and torch's kernels fuse multiply-adds; ~1e-17 absolute for
the bias gradients), and the adaptive rules amplify a gradient difference without bound where a
gradient entry is small. At Adagrad's first step θ ← θ − η·g/(|g| + ε) (g after weight decay), so
|∂θ/∂g| = η·ε/(|g| + ε)², up to η/ε = 1e5 when |g| ≲ ε = 1e-6 (Adagrad-7). Adam and RMSprop start
with the same form (RMSprop: η·ε/(√(1−α)|g| + ε)², up to 1e6 for RMSprop-8), and momentum keeps the
amplified difference in its buffer for the following steps (RMSprop-9). Example, QLABREF_TEST_SEED=43493,
Adagrad-7, step 1: b1[4] = 0.13518, ∂L/∂b1[4] = −1.3521e-3, after weight decay −2.32e-7; the two
gradients differ by 1.0e-17, so the parameters by 6.6e4 × 1.0e-17 = 6.6e-13 against a tolerance of
3.2e-13. Comparing the two end-to-end trajectories, roughly one seed in 10^3–10^4 failed this way per
adaptive case. Each of the two checks above is well conditioned (the gradient check because its
absolute floor is the network's largest gradient entry, not the tiny entry itself), so a fixed 1e-12
stays meaningful for both. What remains between the two optimizers given identical gradients is
their own rounding (torch's CPU kernels fuse ``add(alpha=)``, ``addcmul`` and ``lerp`` into FMAs,
NumPy rounds twice), measured at under 2 % of the tolerance over 2000 seeds.

The schedulers have their own file (``test_lr_scheduler.py``).
"""
from __future__ import annotations

import numpy as np
import pytest

import qlabref as qr

STEPS = 30
N_IN, N_HID, N_OUT, BATCH = 5, 7, 3, 12


def make_problem(rng, steps=STEPS):
    """Initial weights (W1, b1, W2, b2) and a list of minibatches (X, y)."""
    weights = [rng.normal(0, 0.6, (N_IN, N_HID)), rng.normal(0, 0.1, N_HID),
               rng.normal(0, 0.6, (N_HID, N_OUT)), rng.normal(0, 0.1, N_OUT)]
    batches = [(rng.normal(0, 1, (BATCH, N_IN)), rng.integers(0, N_OUT, BATCH)) for _ in range(steps)]
    return weights, batches


def qr_loss(params, X, y):
    W1, b1, W2, b2 = params
    return qr.cross_entropy((qr.tensor(X) @ W1 + b1).tanh() @ W2 + b2, y)


def torch_loss(torch, params, X, y):
    W1, b1, W2, b2 = params
    h = torch.tanh(torch.from_numpy(X) @ W1 + b1)
    return torch.nn.functional.cross_entropy(h @ W2 + b2, torch.from_numpy(y))


def assert_close(ours, theirs, what):
    """Per array: |a − b| <= 1e-12·|b| + 1e-12·max|b| (relative, with the array's own scale as floor)."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        scale = float(np.max(np.abs(b))) or 1.0
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale, err_msg=f"{what}: parameter {i}")


def torch_grads(torch, theirs, X, y):
    """torch's loss at its current parameters, with its ``.grad`` set by its own autograd."""
    for p in theirs:
        p.grad = None
    tloss = torch_loss(torch, theirs, X, y)
    tloss.backward()
    return tloss.item()


def assert_grads_close(ours, theirs, what):
    """Per gradient: |a − b| <= 1e-12·|b| + 1e-12·G, G the largest gradient entry over ALL parameters.

    Not each parameter's own largest entry (as ``assert_close`` uses for the parameters): backprop
    rounds relative to the terms it sums (per-sample contributions, of the size of the network's
    gradient), and one parameter's whole gradient can cancel to far less than those terms. ∂L/∂b2 is
    the batch mean of softmax − one-hot; e.g. QLABREF_TEST_SEED=630, SGD-3, step 23: max|∂L/∂b2| =
    1.7e-4 from terms summing to 0.35–0.48 in absolute value per entry.
    """
    scale = max(float(np.max(np.abs(b))) for b in theirs) or 1.0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale, err_msg=f"{what}: gradient of parameter {i}")


def check_grads_then_step_torch(torch, topt, ours, theirs, what):
    """Check our gradient against torch's own (well conditioned), then step torch from OUR gradient.

    The update is then compared on identical inputs: an ε-conditioned update (|∂θ/∂g| up to lr/ε)
    must not turn the autograds' rounding difference into a parameter mismatch (module docstring).
    Since torch steps from our gradient, this gradient check is what still catches autograd errors.
    """
    assert_grads_close([p.grad for p in ours], [p.grad.numpy() for p in theirs], what)
    for p, q in zip(ours, theirs):
        q.grad = torch.from_numpy(p.grad.copy())
    topt.step()


def groups_of(params, group_kw):
    """``group_kw`` None: one plain list; else two groups (W1, b1) and (W2, b2) with per-group options."""
    if group_kw is None:
        return params
    return [dict(params=params[:2], **group_kw), dict(params=params[2:])]


CASES = [
    ("SGD", dict(lr=0.1), None),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1), None),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True), None),
    ("SGD", dict(lr=0.1, weight_decay=0.01), None),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.02, maximize=False), {"lr": 0.2}),
    ("Adagrad", dict(lr=0.1), None),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.1), None),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, eps=1e-6), {"lr_decay": 0.2}),
    ("RMSprop", dict(lr=0.01), None),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.9), None),
    ("RMSprop", dict(lr=0.005, alpha=0.9, weight_decay=0.01, momentum=0.5, eps=1e-6), None),
    ("RMSprop", dict(lr=0.01, centered=True), {"alpha": 0.95}),
    ("Adadelta", dict(), None),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.01), None),
    ("Adam", dict(lr=0.01), None),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01), None),
    ("Adam", dict(lr=0.01, amsgrad=True), None),
    ("Adam", dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True), None),
    ("Adam", dict(lr=0.01, maximize=True), None),
    ("Adam", dict(lr=0.003), {"lr": 0.02, "betas": (0.5, 0.9)}),
]


@pytest.mark.parametrize("name, kw, group_kw", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_torch_for_30_steps(torch, rng, name, kw, group_kw):
    weights, batches = make_problem(rng)
    ours = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
    theirs = [torch.tensor(w.copy(), requires_grad=True) for w in weights]
    opt = getattr(qr.optim, name)(groups_of(ours, group_kw), **kw)
    topt = getattr(torch.optim, name)(groups_of(theirs, group_kw), **kw)
    for t, (X, y) in enumerate(batches, 1):
        what = f"{name} {kw} step {t}"
        loss = opt.step(lambda: qr_loss(ours, X, y))  # our closure path: our autograd, then the update
        assert opt.last_step["evals"] == 1
        assert loss == pytest.approx(torch_grads(torch, theirs, X, y), rel=1e-12)
        check_grads_then_step_torch(torch, topt, ours, theirs, what)
        assert_close([p.data for p in ours], [p.detach().numpy() for p in theirs], what)


@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01)),
                                      ("RMSprop", dict(lr=0.01, centered=True))])
def test_step_without_closure_uses_users_grad(torch, rng, name, kw):
    """``step()`` after the user's own backward() is the same update as torch's ``step()``."""
    weights, batches = make_problem(rng, steps=10)
    ours = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
    theirs = [torch.tensor(w.copy(), requires_grad=True) for w in weights]
    opt = getattr(qr.optim, name)(ours, **kw)
    topt = getattr(torch.optim, name)(theirs, **kw)
    for t, (X, y) in enumerate(batches, 1):
        opt.zero_grad()
        qr_loss(ours, X, y).backward()
        assert opt.step() is None
        assert opt.last_step["loss"] is None and opt.last_step["evals"] == 0
        torch_grads(torch, theirs, X, y)
        check_grads_then_step_torch(torch, topt, ours, theirs, f"{name} step() {t}")  # same gradient: see top
        assert_close([p.data for p in ours], [p.detach().numpy() for p in theirs], f"{name} step() {t}")


def test_parameter_without_grad_is_skipped_like_torch(torch, rng):
    """A parameter that got no gradient is left alone and gets no state (torch semantics)."""
    weights, batches = make_problem(rng, steps=3)
    ours = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
    extra = qr.tensor(rng.normal(size=4), requires_grad=True)
    opt = qr.optim.Adam(ours + [extra], lr=0.01)
    before = extra.data.copy()
    for X, y in batches:
        opt.step(lambda: qr_loss(ours, X, y))
    assert np.array_equal(extra.data, before)
    assert extra not in opt.state or not opt.state[extra]


def test_effective_lr_definition(rng):
    """``last_step["lr"]``: the group lr for SGD (also with momentum); ‖Δθ‖/‖g‖ for the adaptive methods."""
    weights, batches = make_problem(rng, steps=4)
    for name, kw in (("SGD", dict(lr=0.1, momentum=0.9)), ("Adagrad", dict(lr=0.1)), ("RMSprop", dict(lr=0.01)),
                     ("Adadelta", dict()), ("Adam", dict(lr=0.01))):
        ps = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
        opt = getattr(qr.optim, name)(ps, **kw)
        for X, y in batches:
            before = [p.data.copy() for p in ps]
            opt.step(lambda: qr_loss(ps, X, y))
            rec = opt.last_step
            step_norm = np.sqrt(sum(np.sum((p.data - b) ** 2) for p, b in zip(ps, before)))
            grad_norm = np.sqrt(sum(np.sum(p.grad**2) for p in ps))
            assert rec["step_norm"] == pytest.approx(step_norm, rel=1e-12)
            assert rec["grad_norm"] == pytest.approx(grad_norm, rel=1e-12)
            if name == "SGD":
                assert rec["lr"] == rec["base_lr"] == 0.1
            else:
                assert rec["lr"] == pytest.approx(step_norm / grad_norm, rel=1e-12)
                assert rec["base_lr"] == kw.get("lr", 1.0)


def test_nan_loss_raises_where_torch_would_proceed(rng):
    """Deliberate difference from torch: a NaN loss raises before anything changes (torch would write
    NaN into the parameters)."""
    p = qr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    opt = qr.optim.SGD([p], lr=0.1)
    with pytest.raises(qr.optim.NonFiniteLossError, match="loss"):
        opt.step(lambda: (p * float("nan")).sum())
    assert np.array_equal(p.data, [1.0, 2.0])
