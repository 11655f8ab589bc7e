"""Every baseline optimizer: the registry (``qr.optim.get``/``names``), ``state_dict`` round trips that
continue bit-identically, closure-call counts, ``last_step`` fields, and bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import qlabref as qr

from test_optim_torch import make_problem, qr_loss

# name → keyword arguments that exercise every state branch
CONFIGS = [
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("rmsprop", dict(lr=0.01, centered=True, momentum=0.9)),
    ("adadelta", dict()),
    ("adam", dict(lr=0.01, amsgrad=True)),
    ("adam", dict(lr=0.01, form="efficient", weight_decay=1e-3)),
    ("hgd", dict(lr=0.1, hypergrad_lr=1e-3, momentum=0.9)),
    ("hgd", dict(lr=0.01, hypergrad_lr=1e-4, direction="adam")),
    ("l4gd", dict()),
    ("l4mom", dict()),
    ("l4adam", dict()),
    ("lqa", dict(lr=0.1)),
    ("lqa", dict(direction="normalized")),
    # beyond the paper (issue 14)
    ("dog", dict()),
    ("ldog", dict(weight_decay=1e-3, avg_gamma=None)),
    ("dadapt-sgd", dict(momentum=0.9)),
    ("dadapt-adam", dict(use_bias_correction=True, weight_decay=1e-3)),
    ("prodigy", dict(safeguard_warmup=True, slice_p=2)),
    ("schedulefree-sgd", dict(lr=0.1, warmup_steps=3)),
    ("schedulefree-adamw", dict(weight_decay=1e-2)),
]
OURS = ["sgd", "adagrad", "rmsprop", "adadelta", "adam", "hgd", "l4gd", "l4mom", "l4adam", "lqa",
        "dog", "ldog", "dadapt-sgd", "dadapt-adam", "prodigy", "schedulefree-sgd", "schedulefree-adamw"]
EVALS = {"lqa": 3}
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)]


def test_registry_has_every_baseline():
    names = qr.optim.names()
    for name in OURS:
        assert name in names
        p = qr.tensor(np.zeros(2), requires_grad=True)
        opt = qr.optim.get(name.upper(), [p])
        assert isinstance(opt, qr.optim.Optimizer)
    assert isinstance(qr.optim.get("sgd", [qr.tensor(np.zeros(1), requires_grad=True)]), qr.optim.SGD)
    with pytest.raises(ValueError, match="unknown optimizer"):
        qr.optim.get("no-such-method", [qr.tensor(np.zeros(1), requires_grad=True)])


@pytest.mark.parametrize("name, kw", CONFIGS, ids=IDS)
def test_state_dict_round_trip_continues_bit_identically(rng, name, kw):
    weights, batches = make_problem(rng, steps=10)
    ps = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
    opt = qr.optim.get(name, ps, **kw)
    if name == "lqa" and kw.get("direction") == "normalized":
        opt.set_epoch(20)
    for X, y in batches[:5]:
        opt.step(lambda: qr_loss(ps, X, y))
    saved_params = [p.data.copy() for p in ps]
    sd = opt.state_dict()
    sd_copy = copy.deepcopy(sd)
    lrs = []
    for X, y in batches[5:]:
        opt.step(lambda: qr_loss(ps, X, y))
        lrs.append(opt.last_step["lr"])
    # the saved dict is a snapshot, not a view of the live state
    for i, s in sd["state"].items():
        for k, v in s.items():
            if isinstance(v, np.ndarray):
                assert np.array_equal(v, sd_copy["state"][i][k])
    ps2 = [qr.tensor(w.copy(), requires_grad=True) for w in saved_params]
    opt2 = qr.optim.get(name, ps2, **kw)
    opt2.load_state_dict(sd)
    lrs2 = []
    for X, y in batches[5:]:
        opt2.step(lambda: qr_loss(ps2, X, y))
        lrs2.append(opt2.last_step["lr"])
    for a, b in zip(ps, ps2):
        assert np.array_equal(a.data, b.data)
    assert lrs == lrs2


@pytest.mark.parametrize("name, kw", CONFIGS, ids=IDS)
def test_closure_calls_and_last_step(rng, name, kw):
    weights, batches = make_problem(rng, steps=3)
    ps = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
    opt = qr.optim.get(name, ps, **kw)
    seen = []
    opt.callbacks.append(lambda o, rec: seen.append(rec))
    for X, y in batches:
        calls = []

        def closure():
            calls.append(1)
            return qr_loss(ps, X, y)

        loss = opt.step(closure)
        rec = opt.last_step
        assert len(calls) == rec["evals"] == EVALS.get(name, 1)
        assert isinstance(loss, float) and rec["loss"] == loss
        assert np.isfinite(rec["lr"]) and rec["lr"] >= 0
    assert len(seen) == 3


# ------------------------------------------------------------------------------------------ bad input
def _p():
    return [qr.tensor(np.zeros(3), requires_grad=True)]


WITH_LR = ["sgd", "adagrad", "rmsprop", "adadelta", "adam", "hgd", "lqa", "dog", "ldog", "dadapt-sgd", "dadapt-adam",
           "prodigy", "schedulefree-sgd", "schedulefree-adamw"]


@pytest.mark.parametrize("name", WITH_LR)
def test_negative_lr_is_rejected(name):
    with pytest.raises(ValueError, match="lr"):
        qr.optim.get(name, _p(), lr=-0.1)


@pytest.mark.parametrize("name", OURS)
def test_empty_parameter_list_is_rejected(name):
    with pytest.raises(ValueError, match="params"):
        qr.optim.get(name, [])


@pytest.mark.parametrize("name, kw", [("adam", {}), ("hgd", {"direction": "adam"}), ("hgd", {})])
@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999), (0.9, -1e-3)])
def test_betas_outside_unit_interval_are_rejected(name, kw, betas):
    with pytest.raises(ValueError, match="betas"):
        qr.optim.get(name, _p(), betas=betas, **kw)


@pytest.mark.parametrize("name, kw, arg", [
    ("sgd", dict(momentum=-0.1), "momentum"),
    ("sgd", dict(weight_decay=-1e-4), "weight_decay"),
    ("sgd", dict(dampening=-0.5), "dampening"),
    ("sgd", dict(nesterov=True), "nesterov"),
    ("sgd", dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
    ("adagrad", dict(eps=-1e-10), "eps"),
    ("adagrad", dict(lr_decay=-1.0), "lr_decay"),
    ("adagrad", dict(initial_accumulator_value=-0.1), "initial_accumulator_value"),
    ("rmsprop", dict(eps=-1.0), "eps"),
    ("rmsprop", dict(momentum=-0.9), "momentum"),
    ("rmsprop", dict(alpha=-0.5), "alpha"),
    ("rmsprop", dict(weight_decay=-1.0), "weight_decay"),
    ("adadelta", dict(rho=1.5), "rho"),
    ("adadelta", dict(eps=-1e-6), "eps"),
    ("adam", dict(eps=-1e-8), "eps"),
    ("adam", dict(weight_decay=-0.1), "weight_decay"),
    ("adam", dict(form="kingma"), "form"),
    ("adam", dict(betas=(0.9,)), "betas"),
    ("hgd", dict(hypergrad_lr=-1e-3), "hypergrad_lr"),
    ("hgd", dict(direction="rmsprop"), "direction"),
    ("hgd", dict(nesterov=True), "nesterov"),
    ("l4gd", dict(alpha=-0.15), "alpha"),
    ("l4gd", dict(gamma=1.5), "gamma"),
    ("l4mom", dict(gamma0=-0.1), "gamma0"),
    ("l4adam", dict(tau=0.0), "tau"),
    ("l4gd", dict(eps=-1.0), "eps"),
    ("l4gd", dict(gradient_estimator="adam"), "gradient_estimator"),
    ("lqa", dict(direction="sideways"), "direction"),
    ("lqa", dict(lr=0.0), "lr"),
    ("lqa", dict(max_lr=-1.0), "max_lr"),
    ("lqa", dict(delta=-1.0), "delta"),
])
def test_bad_hyperparameter_names_the_argument(name, kw, arg):
    with pytest.raises(ValueError, match=arg):
        qr.optim.get(name, _p(), **kw)


@pytest.mark.parametrize("name", ["hgd", "l4gd", "lqa"])
def test_global_scalar_methods_reject_several_groups(name):
    groups = [{"params": _p()}, {"params": _p()}]
    with pytest.raises(ValueError, match="one parameter group"):
        qr.optim.get(name, groups)


def test_adam_hd_allows_groups_each_with_its_own_lr():
    a, b = _p(), _p()
    opt = qr.optim.HGD([{"params": a}, {"params": b, "lr": 0.5}], lr=0.1, direction="adam")
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
