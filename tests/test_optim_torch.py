"""The torch.optim baselines (SGD, Adagrad, RMSprop, Adadelta, Adam) against torch.optim itself.

30 steps on a small tanh MLP in float64, identical initial weights and identical minibatches (new
random ones per test run from the ``rng`` fixture); after every step every parameter must equal
torch's within 1e-12 relative (OPTIMIZERS.md §1). The schedulers have their own file
(``test_lr_scheduler.py``).
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
    for i, (a, b) in enumerate(zip(ours, theirs)):
        scale = float(np.max(np.abs(b))) or 1.0
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale, err_msg=f"{what}: parameter {i}")


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
        loss = opt.step(lambda: qr_loss(ours, X, y))

        def closure():
            topt.zero_grad()
            tl = torch_loss(torch, theirs, X, y)
            tl.backward()
            return tl

        tloss = topt.step(closure)
        assert loss == pytest.approx(tloss.item(), rel=1e-12)
        assert_close([p.data for p in ours], [p.detach().numpy() for p in theirs], f"{name} {kw} step {t}")
        assert opt.last_step["evals"] == 1


@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.01)),
                                      ("RMSprop", dict(lr=0.01, centered=True))])
def test_step_without_closure_uses_users_grad(torch, rng, name, kw):
    """``step()`` after the user's own backward() is the same update as torch's ``step()``."""
    weights, batches = make_problem(rng, steps=10)
    ours = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
    theirs = [torch.tensor(w.copy(), requires_grad=True) for w in weights]
    opt = getattr(qr.optim, name)(ours, **kw)
    topt = getattr(torch.optim, name)(theirs, **kw)
    for X, y in batches:
        opt.zero_grad()
        qr_loss(ours, X, y).backward()
        assert opt.step() is None
        assert opt.last_step["loss"] is None and opt.last_step["evals"] == 0
        topt.zero_grad()
        torch_loss(torch, theirs, X, y).backward()
        topt.step()
        assert_close([p.data for p in ours], [p.detach().numpy() for p in theirs], f"{name} step()")


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


def test_nan_loss_proceeds_like_torch(rng):
    """The torch baselines do not raise on a NaN loss; the NaN gradient flows into the parameters."""
    p = qr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    opt = qr.optim.SGD([p], lr=0.1)
    loss = opt.step(lambda: (p * float("nan")).sum())
    assert np.isnan(loss) and np.all(np.isnan(p.data))
