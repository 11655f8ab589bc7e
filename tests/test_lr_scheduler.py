"""``qr.optim.lr_scheduler`` (E-, SS-, CA-, R-decay) against torch.optim.lr_scheduler, the paper's
Table 1 forms, and torch's ``step()``/``state_dict`` semantics (OPTIMIZERS.md §9)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import qlabref as qr
from qlabref.optim import lr_scheduler as S

from test_optim_torch import assert_close, make_problem, qr_loss, torch_loss

SCHEDULES = [
    ("ExponentialLR", dict(gamma=0.9)),
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("StepLR", dict(step_size=3)),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=1e-3)),  # passes T_max and rises again within 30 steps
    ("CosineAnnealingLR", dict(T_max=30)),
    ("InverseTimeLR", dict(k=0.3)),
]


def torch_scheduler(torch, name, kw, topt):
    if name == "InverseTimeLR":
        k = kw["k"]
        return torch.optim.lr_scheduler.LambdaLR(topt, lambda t: 1 / (1 + k * t))
    return getattr(torch.optim.lr_scheduler, name)(topt, **kw)


@pytest.mark.parametrize("name, kw", SCHEDULES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULES)])
def test_sgd_with_schedule_matches_torch_for_30_steps(torch, rng, name, kw):
    weights, batches = make_problem(rng)
    ours = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
    theirs = [torch.tensor(w.copy(), requires_grad=True) for w in weights]
    opt = qr.optim.SGD(ours, lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(theirs, lr=0.1, momentum=0.9)
    sched = getattr(S, name)(opt, **kw)
    tsched = torch_scheduler(torch, name, kw, topt)
    assert sched.get_last_lr() == tsched.get_last_lr() == [0.1]
    for t, (X, y) in enumerate(batches, 1):
        opt.step(lambda: qr_loss(ours, X, y))
        assert opt.last_step["lr"] == opt.param_groups[0]["lr"]
        topt.zero_grad()
        torch_loss(torch, theirs, X, y).backward()
        topt.step()
        sched.step()
        tsched.step()
        assert sched.last_epoch == tsched.last_epoch == t
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, atol=1e-16)
        assert_close([p.data for p in ours], [p.detach().numpy() for p in theirs], f"{name} step {t}")


@pytest.mark.parametrize("T_max, eta_min", [(1, 0.0), (3, 0.0), (7, 1e-3), (50, 0.0), (64, 1e-4)])
def test_cosine_closed_form_agrees_with_torch_recursion(torch, T_max, eta_min):
    """torch's chainable recursion and the closed form we evaluate agree (nothing else changes lr),
    including past T_max, where both rise again."""
    p = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([p], lr=0.1)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=T_max, eta_min=eta_min)
    opt = qr.optim.SGD([qr.tensor(np.zeros(1), requires_grad=True)], lr=0.1)
    sched = S.CosineAnnealingLR(opt, T_max=T_max, eta_min=eta_min)
    for t in range(1, 3 * T_max + 5):
        topt.step()
        tsched.step()
        sched.step()
        closed = eta_min + 0.5 * (0.1 - eta_min) * (1 + math.cos(math.pi * t / T_max))
        assert sched.get_last_lr()[0] == pytest.approx(closed, rel=1e-15, abs=1e-17)
        assert sched.get_last_lr()[0] == pytest.approx(tsched.get_last_lr()[0], rel=1e-12, abs=1e-16)


def _sgd(lr=0.1):
    return qr.optim.SGD([qr.tensor(np.zeros(2), requires_grad=True)], lr=lr)


def _run(sched, n):
    out = []
    for _ in range(n):
        sched.optimizer.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
    return np.array(out)


def test_paper_table1_forms():
    """SS-decay 2^−⌊t/T⌋, E-decay exp(−βt), R-decay 1/(1+βt), CA-decay with the standard formula."""
    t = np.arange(1, 41)
    T, beta, eta0, eta_min = 6, 0.2, 0.1, 1e-3
    np.testing.assert_array_equal(_run(S.StepLR(_sgd(), step_size=T, gamma=0.5), 40), eta0 * 2.0 ** -(t // T))
    np.testing.assert_allclose(_run(S.ExponentialLR(_sgd(), gamma=math.exp(-beta)), 40), eta0 * np.exp(-beta * t),
                               rtol=1e-13)
    np.testing.assert_allclose(_run(S.InverseTimeLR(_sgd(), k=beta), 40), eta0 / (1 + beta * t), rtol=1e-15)
    ca = _run(S.CosineAnnealingLR(_sgd(), T_max=40, eta_min=eta_min), 40)
    np.testing.assert_allclose(ca, eta_min + 0.5 * (eta0 - eta_min) * (1 + np.cos(np.pi * t / 40)), rtol=1e-15)
    assert ca[-1] == pytest.approx(eta_min)  # reaches η_min at T_max (Table 1's misprinted cos(T/π) would not)


def test_constructor_initial_step_and_initial_lr():
    opt = _sgd(0.3)
    sched = S.CosineAnnealingLR(opt, T_max=5)
    assert sched.last_epoch == 0 and opt.param_groups[0]["lr"] == 0.3
    assert opt.param_groups[0]["initial_lr"] == 0.3 and sched.base_lrs == [0.3]
    # a second scheduler keeps the recorded initial_lr (torch's setdefault), as base lr
    opt.param_groups[0]["lr"] = 0.01
    assert S.StepLR(opt, step_size=2).base_lrs == [0.3]
    with pytest.raises(KeyError, match="initial_lr"):
        S.ExponentialLR(_sgd(), gamma=0.5, last_epoch=3)


def test_step_with_epoch_uses_closed_form():
    sched = S.StepLR(_sgd(0.2), step_size=3, gamma=0.5)
    sched.step(7)
    assert sched.last_epoch == 7 and sched.get_last_lr() == [0.2 * 0.25]
    sched = S.ExponentialLR(_sgd(0.2), gamma=0.5)
    sched.step(3)
    assert sched.get_last_lr() == [0.2 * 0.125]


@pytest.mark.parametrize("name, kw", SCHEDULES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(SCHEDULES)])
def test_state_dict_round_trip_is_bit_identical(rng, name, kw):
    """Optimizer + scheduler saved after 5 steps and loaded into fresh ones continue bit-identically."""
    weights, batches = make_problem(rng, steps=10)
    ps = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
    opt = qr.optim.SGD(ps, lr=0.1, momentum=0.9)
    sched = getattr(S, name)(opt, **kw)
    for X, y in batches[:5]:
        opt.step(lambda: qr_loss(ps, X, y))
        sched.step()
    saved_params = [p.data.copy() for p in ps]
    osd, ssd = opt.state_dict(), sched.state_dict()
    for X, y in batches[5:]:
        opt.step(lambda: qr_loss(ps, X, y))
        sched.step()
    ps2 = [qr.tensor(w.copy(), requires_grad=True) for w in saved_params]
    opt2 = qr.optim.SGD(ps2, lr=0.1, momentum=0.9)
    opt2.load_state_dict(osd)
    sched2 = getattr(S, name)(opt2, **kw)
    sched2.load_state_dict(ssd)
    assert sched2.get_last_lr() == ssd["_last_lr"]
    for X, y in batches[5:]:
        opt2.step(lambda: qr_loss(ps2, X, y))
        sched2.step()
    for a, b in zip(ps, ps2):
        assert np.array_equal(a.data, b.data)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_bad_input():
    with pytest.raises(TypeError, match="Optimizer"):
        S.StepLR(object(), step_size=2)
    with pytest.raises(ValueError, match="step_size"):
        S.StepLR(_sgd(), step_size=0)
    with pytest.raises(ValueError, match="gamma"):
        S.ExponentialLR(_sgd(), gamma=-0.5)
    with pytest.raises(ValueError, match="T_max"):
        S.CosineAnnealingLR(_sgd(), T_max=0)
    with pytest.raises(ValueError, match="eta_min"):
        S.CosineAnnealingLR(_sgd(), T_max=3, eta_min=-1.0)
    with pytest.raises(ValueError, match="k"):
        S.InverseTimeLR(_sgd(), k=-1.0)
    l4 = qr.optim.L4GD([qr.tensor(np.zeros(2), requires_grad=True)])
    with pytest.raises(TypeError, match="no 'lr'"):
        S.ExponentialLR(l4, gamma=0.5)
