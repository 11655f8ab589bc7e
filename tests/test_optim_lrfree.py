"""Beyond the paper: DoG, L-DoG, D-Adaptation (SGD, Adam), Prodigy, Schedule-Free (SGD, AdamW).

Oracle: the authors' own PyTorch packages (``dog-optimizer``, ``dadaptation``, ``prodigyopt``,
``schedulefree``, in the ``test`` extra). Both sides start from the same float64 weights of a small
tanh MLP and see the same 30 minibatches; torch's optimizer is stepped from a copy of OUR gradient
(so the comparison is of the two optimizers' arithmetic and nothing else; our autograd is checked
against torch's in ``test_optim_torch.py``). After every step the parameters, and the method's
effective learning rate (DoG's η, D-Adaptation's and Prodigy's d·lr, Schedule-Free's scheduled lr)
and its d, agree to a relative 1e-10. The train/eval points (Schedule-Free's x, DoG's averaged x̄
against the authors' ``PolynomialDecayAverager``) are compared at steps 10, 20 and 30.

Where we differ from the authors on purpose, the test is a hand computation instead (bottom).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import qlabref as qr

from test_optim_torch import groups_of, make_problem, qr_loss

RTOL = 1e-10


def assert_rel(ours, theirs, what):
    """Per array: |a − b| <= 1e-10·|b| + 1e-10·max|b|."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        b = np.asarray(b, dtype=np.float64)
        scale = float(np.max(np.abs(b))) or 1.0
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * scale, err_msg=f"{what}: array {i}")


def _their_class(name):
    import dadaptation
    import dog
    import prodigyopt
    import schedulefree
    from prodigyopt.prodigy_reference import ProdigyReference

    return {
        "DoG": dog.DoG, "LDoG": dog.LDoG,
        "DAdaptSGD": dadaptation.DAdaptSGD, "DAdaptAdam": dadaptation.DAdaptAdam,
        "Prodigy": prodigyopt.Prodigy, "ProdigyReference": ProdigyReference,
        "SGDScheduleFree": schedulefree.SGDScheduleFree, "SGDScheduleFreeReference": schedulefree.SGDScheduleFreeReference,
        "AdamWScheduleFree": schedulefree.AdamWScheduleFree,
        "AdamWScheduleFreeReference": schedulefree.AdamWScheduleFreeReference,
    }[name]


# (our registry name, our kw (also given to theirs), their class, extra kw for theirs, group options, kind of lr)
CASES = [
    ("dog", {}, "DoG", {}, None, "dog"),
    ("dog", dict(weight_decay=1e-2, reps_rel=1e-4), "DoG", None, {"weight_decay": 0.05}, "dog"),
    ("dog", dict(init_eta=1e-3), "DoG", None, None, "dog"),
    ("ldog", {}, "LDoG", {}, None, "ldog"),
    ("ldog", dict(weight_decay=1e-3), "LDoG", None, {"reps_rel": 1e-3}, "ldog"),
    ("dadapt-sgd", {}, "DAdaptSGD", {}, None, "dadapt-sgd"),
    ("dadapt-sgd", dict(momentum=0.9, weight_decay=1e-2, growth_rate=1.5), "DAdaptSGD", None, None, "dadapt-sgd"),
    ("dadapt-sgd", dict(d0=1e-3), "DAdaptSGD", None, {"lr": 0.0}, "dadapt-sgd"),
    ("dadapt-adam", {}, "DAdaptAdam", {}, None, "dadapt-adam"),
    ("dadapt-adam", dict(use_bias_correction=True, weight_decay=1e-2), "DAdaptAdam", None, {"layer_scale": 0.5},
     "dadapt-adam"),
    ("dadapt-adam", dict(decouple=True, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6, growth_rate=1.1), "DAdaptAdam",
     None, {"eps": 1e-7}, "dadapt-adam"),
    ("prodigy", {}, "Prodigy", {}, None, "prodigy"),
    ("prodigy", {}, "ProdigyReference", {}, None, "prodigy"),
    ("prodigy", dict(use_bias_correction=True, weight_decay=1e-2, decouple=False, d_coef=2.0, growth_rate=1.5),
     "Prodigy", None, None, "prodigy"),
    ("prodigy", dict(safeguard_warmup=True, d0=1e-3), "Prodigy", None, None, "prodigy"),
    ("prodigy", dict(weight_decay=0.1, beta3=0.9, d0=1e-4), "ProdigyReference", None, {"eps": 1e-6}, "prodigy"),
    ("prodigy", dict(betas=(0.0, 0.99), slice_p=3), "Prodigy", None, {"weight_decay": 1e-2}, "prodigy"),
    ("schedulefree-sgd", {}, "SGDScheduleFree", {}, None, "sf"),
    ("schedulefree-sgd", {}, "SGDScheduleFreeReference", {}, None, "sf"),
    ("schedulefree-sgd", dict(lr=0.3, momentum=0.8, weight_decay=1e-2, warmup_steps=5, r=1.0, weight_lr_power=1.0),
     "SGDScheduleFree", dict(foreach=False), {"lr": 0.1}, "sf"),
    ("schedulefree-adamw", {}, "AdamWScheduleFree", {}, None, "sf"),
    ("schedulefree-adamw", {}, "AdamWScheduleFreeReference", {}, None, "sf"),
    ("schedulefree-adamw", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, warmup_steps=5, r=0.5),
     "AdamWScheduleFree", dict(foreach=False), {"weight_decay": 0.0}, "sf"),
    ("schedulefree-adamw", dict(lr=0.01, weight_decay=0.05, warmup_steps=3, decay_at_z=True),
     "AdamWScheduleFreeReference", None, None, "sf"),
]
IDS = [f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)]


def _their_lr(kind, topt, pre):
    """The effective learning rate their optimizer used in the step just taken."""
    g = topt.param_groups[0]
    lr = max(grp["lr"] for grp in topt.param_groups)
    if kind == "dog":
        return float(g["eta"][0])
    if kind == "dadapt-sgd":
        return pre["d"] * lr / g["g0_norm"]
    if kind in ("dadapt-adam", "prodigy"):
        b1, b2 = g["betas"]
        k = pre["k"]
        bc = ((1 - b2 ** (k + 1)) ** 0.5) / (1 - b1 ** (k + 1)) if g["use_bias_correction"] else 1
        return pre["d"] * lr * bc
    if kind == "sf":
        return g["scheduled_lr"]
    raise AssertionError(kind)


@pytest.mark.torch
@pytest.mark.parametrize("name, kw, their_name, their_kw, group_kw, kind", CASES, ids=IDS)
def test_matches_the_authors_package_for_30_steps(torch, rng, name, kw, their_name, their_kw, group_kw, kind):
    weights, batches = make_problem(rng)
    ours = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
    theirs = [torch.nn.Parameter(torch.tensor(w.copy())) for w in weights]
    opt = qr.optim.get(name, groups_of(ours, group_kw), **kw)
    topt = _their_class(their_name)(groups_of(theirs, group_kw), **kw, **(their_kw or {}))
    averager = None
    if kind in ("dog", "ldog"):
        from dog import PolynomialDecayAverager

        holder = torch.nn.Module()
        holder.ps = torch.nn.ParameterList(theirs)
        averager = PolynomialDecayAverager(holder, gamma=8.0)
    if kind == "sf":
        topt.train()  # the authors' main classes start in eval mode
    for t, (X, y) in enumerate(batches, 1):
        what = f"{name} {kw} vs {their_name} step {t}"
        g0 = topt.param_groups[0]
        pre = {"d": g0.get("d"), "k": g0.get("k")}
        loss = opt.step(lambda: qr_loss(ours, X, y))
        assert opt.last_step["evals"] == 1 and opt.last_step["loss"] == loss
        for p, q in zip(ours, theirs):
            q.grad = torch.from_numpy(p.grad.copy())
        topt.step()
        if averager is not None:
            averager.step()
        assert_rel([p.data for p in ours], [q.detach().numpy() for q in theirs], what + ": parameters")
        if kind == "ldog":
            their_etas = [float(e) for grp in topt.param_groups for e in grp["eta"]]
            assert_rel([np.array(opt.last_step["etas"])], [np.array(their_etas)], what + ": per-tensor η")
        else:
            assert_rel([opt.last_step["lr"]], [_their_lr(kind, topt, pre)], what + ": effective lr")
        if kind in ("dadapt-sgd", "dadapt-adam", "prodigy"):
            assert_rel([opt.last_step["d"]], [g0["d"]], what + ": d")
        if t % 10 == 0 and (averager is not None or kind == "sf"):
            opt.eval()
            if kind == "sf":
                topt.eval()
                evaluated = [q.detach().numpy().copy() for q in theirs]
            else:
                evaluated = [q.detach().numpy().copy() for q in averager.averaged_model.ps]
            assert_rel([p.data for p in ours], evaluated, what + ": evaluation point (eval())")
            opt.train()
            if kind == "sf":
                topt.train()
            assert_rel([p.data for p in ours], [q.detach().numpy() for q in theirs], what + ": back to train()")


# ------------------------------------------------------------------------------ hand computations
def _quadratic(p):
    return (p * p).sum() * 0.5  # f = ½‖θ‖², ∇f = θ


def test_dog_first_two_steps_by_hand():
    """r̄0 = reps_rel(1 + ‖x0‖), G0 = ‖g0‖² + eps, η0 = r̄0/√G0; then r̄1 = max(r̄0, ‖x1 − x0‖)."""
    x0 = np.array([3.0, 4.0])
    p = qr.tensor(x0.copy(), requires_grad=True)
    opt = qr.optim.DoG([p])
    opt.step(lambda: _quadratic(p))
    eta0 = 1e-6 * 6 / math.sqrt(25 + 1e-8)
    x1 = x0 - eta0 * x0
    np.testing.assert_allclose(p.data, x1, rtol=1e-15)
    assert opt.last_step["lr"] == pytest.approx(eta0, rel=1e-15)
    opt.step(lambda: _quadratic(p))
    rbar1 = max(1e-6 * 6, np.linalg.norm(x1 - x0))
    eta1 = rbar1 / math.sqrt(25 + 1e-8 + x1 @ x1)
    np.testing.assert_allclose(p.data, x1 - eta1 * x1, rtol=1e-15)
    assert opt.last_step["lr"] == pytest.approx(eta1, rel=1e-14)
    # the averager: x̄1 = x1 (weight 1), x̄2 = (1 − 9/10)·x̄1 + (9/10)·x2
    opt.eval()
    np.testing.assert_allclose(p.data, 0.1 * x1 + 0.9 * (x1 - eta1 * x1), rtol=1e-15)
    opt.train()
    np.testing.assert_allclose(p.data, x1 - eta1 * x1, rtol=1e-15)


def test_dog_without_averaging_has_no_eval_point():
    p = qr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    opt = qr.optim.DoG([p], avg_gamma=None)
    opt.step(lambda: _quadratic(p))
    before = p.data.copy()
    assert not qr.optim.has_eval_mode(opt)
    opt.eval()
    assert np.array_equal(p.data, before)
    opt.step(lambda: _quadratic(p))  # still steps: eval() had nothing to do


def test_dadapt_sgd_first_step_by_hand():
    """k = 0: dlr = d0/‖g0‖, num = 0 (s = 0), s = dlr·g0, d̂ = 0 → d = d0, θ1 = x0 − s."""
    x0 = np.array([3.0, 4.0])
    p = qr.tensor(x0.copy(), requires_grad=True)
    opt = qr.optim.DAdaptSGD([p])
    opt.step(lambda: _quadratic(p))
    dlr = 1e-6 / 5.0
    np.testing.assert_allclose(p.data, x0 - dlr * x0, rtol=1e-15)
    assert opt.last_step["lr"] == pytest.approx(dlr, rel=1e-15) and opt.last_step["d"] == 1e-6


@pytest.mark.parametrize("name", ["dadapt-sgd", "dadapt-adam", "prodigy"])
def test_zero_gradient_makes_a_step_that_changes_nothing(name):
    """Differs from the authors: DAdaptSGD raises ZeroDivisionError at ‖g0‖ = 0; we skip the step."""
    p = qr.tensor(np.zeros(3), requires_grad=True)
    opt = qr.optim.get(name, [p])
    opt.step(lambda: _quadratic(p))
    assert opt.last_step["skipped"] and opt.last_step["lr"] == 0.0
    assert np.array_equal(p.data, np.zeros(3)) and opt.global_state.get("k", 0) == 0


def test_prodigy_first_step_by_hand():
    """d = d0: dlr = d0; num = 0 (θ = x0); m = d0(1−β1)g, v = d0²(1−β2)g², s = dlr·g (β3 s = 0);
    d̂ = 0 → d stays d0; θ1 = x0 − dlr·m/(√v + d0·ε)."""
    x0 = np.array([3.0, -4.0])
    p = qr.tensor(x0.copy(), requires_grad=True)
    opt = qr.optim.Prodigy([p])
    opt.step(lambda: _quadratic(p))
    d0 = 1e-6
    m = d0 * 0.1 * x0
    v = d0 * d0 * 0.001 * x0 * x0
    np.testing.assert_allclose(p.data, x0 - d0 * m / (np.sqrt(v) + d0 * 1e-8), rtol=1e-14)
    assert opt.last_step["d"] == d0 and opt.last_step["lr"] == d0


def test_schedulefree_sgd_by_hand_and_train_eval():
    """c_{k+1} = 1/(k+1) for constant lr; z ← z − lr·g(y); x ← (1−c)x + cz; y = βx + (1−β)z."""
    x0 = np.array([1.0, -2.0])
    p = qr.tensor(x0.copy(), requires_grad=True)
    opt = qr.optim.SGDScheduleFree([p], lr=0.1, momentum=0.9)
    assert opt.training and qr.optim.has_eval_mode(opt)
    z, x, y = x0.copy(), x0.copy(), x0.copy()
    for k in range(4):
        opt.step(lambda: _quadratic(p))
        z = z - 0.1 * y
        c = 1 / (k + 1)
        x = (1 - c) * x + c * z
        y = 0.9 * x + 0.1 * z
        np.testing.assert_allclose(p.data, y, rtol=1e-14)
        assert opt.last_step["c"] == pytest.approx(c) and opt.last_step["lr"] == 0.1
    opt.eval()
    np.testing.assert_allclose(p.data, x, rtol=1e-14)
    assert not opt.training
    with pytest.raises(RuntimeError, match="train"):
        opt.step(lambda: _quadratic(p))
    np.testing.assert_allclose(p.data, x, rtol=1e-14)  # the refused step changed nothing
    opt.eval()  # twice is harmless
    opt.train()
    np.testing.assert_allclose(p.data, y, rtol=1e-14)


def test_eval_before_the_first_step_changes_nothing():
    for name in ("schedulefree-sgd", "schedulefree-adamw", "dog"):
        p = qr.tensor(np.array([1.0, 2.0]), requires_grad=True)
        opt = qr.optim.get(name, [p])
        opt.eval()
        assert np.array_equal(p.data, [1.0, 2.0])
        opt.train()
        opt.step(lambda: _quadratic(p))


@pytest.mark.parametrize("name, kw", [("schedulefree-adamw", dict(weight_decay=0.1)), ("dog", dict(weight_decay=0.1)),
                                      ("dadapt-sgd", dict(weight_decay=0.1)), ("prodigy", dict(weight_decay=0.1,
                                                                                              decouple=False))])
def test_step_without_closure_uses_and_keeps_the_users_grad(name, kw):
    p = qr.tensor(np.array([1.0, -2.0, 0.5]), requires_grad=True)
    opt = qr.optim.get(name, [p], **kw)
    _quadratic(p).backward()
    g = p.grad.copy()
    assert opt.step() is None and opt.last_step["evals"] == 0
    assert np.array_equal(p.grad, g)  # weight decay was not added into the user's .grad
    assert not np.array_equal(p.data, [1.0, -2.0, 0.5])


@pytest.mark.parametrize("name", ["schedulefree-sgd", "schedulefree-adamw", "dog"])
def test_state_dict_saved_in_eval_mode_resumes_bit_identically(rng, name):
    """The authors' advice: save checkpoints in eval mode. The saved weights are then x (x̄); after
    loading, train() puts y back and training continues exactly as without the interruption."""
    weights, batches = make_problem(rng, steps=8)
    kw = {"lr": 0.05} if name == "schedulefree-sgd" else {}
    ps = [qr.tensor(w.copy(), requires_grad=True) for w in weights]
    opt = qr.optim.get(name, ps, **kw)
    for X, y in batches[:4]:
        opt.step(lambda: qr_loss(ps, X, y))
    opt.eval()
    sd = copy.deepcopy(opt.state_dict())
    saved = [p.data.copy() for p in ps]
    opt.train()
    for X, y in batches[4:]:
        opt.step(lambda: qr_loss(ps, X, y))
    ps2 = [qr.tensor(w.copy(), requires_grad=True) for w in saved]
    opt2 = qr.optim.get(name, ps2, **kw)
    opt2.load_state_dict(sd)
    assert not opt2.training
    opt2.train()
    for X, y in batches[4:]:
        opt2.step(lambda: qr_loss(ps2, X, y))
    for a, b in zip(ps, ps2):
        assert np.array_equal(a.data, b.data)


@pytest.mark.parametrize("name, kw, arg", [
    ("dog", dict(lr=0.0), "lr"),
    ("dog", dict(reps_rel=-1.0), "reps_rel"),
    ("dog", dict(init_eta=0.0), "init_eta"),
    ("ldog", dict(eps=-1.0), "eps"),
    ("dog", dict(avg_gamma=-1.0), "avg_gamma"),
    ("dadapt-sgd", dict(momentum=1.0), "momentum"),
    ("dadapt-sgd", dict(d0=0.0), "d0"),
    ("dadapt-sgd", dict(growth_rate=0.5), "growth_rate"),
    ("dadapt-adam", dict(betas=(0.9, 1.0)), "betas"),
    ("dadapt-adam", dict(eps=0.0), "eps"),
    ("prodigy", dict(beta3=1.5), "beta3"),
    ("prodigy", dict(d_coef=0.0), "d_coef"),
    ("prodigy", dict(slice_p=0), "slice_p"),
    ("schedulefree-sgd", dict(momentum=0.0), "momentum"),
    ("schedulefree-sgd", dict(warmup_steps=-1), "warmup_steps"),
    ("schedulefree-adamw", dict(betas=(0.0, 0.999)), "betas"),
    ("schedulefree-adamw", dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameter_names_the_argument(name, kw, arg):
    with pytest.raises(ValueError, match=arg):
        qr.optim.get(name, [qr.tensor(np.zeros(2), requires_grad=True)], **kw)


@pytest.mark.parametrize("name", ["dadapt-sgd", "dadapt-adam", "prodigy"])
def test_groups_with_different_nonzero_lr_are_refused_before_anything_changes(name):
    a = qr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = qr.tensor(np.array([3.0]), requires_grad=True)
    opt = qr.optim.get(name, [{"params": [a]}, {"params": [b], "lr": 0.5}])
    with pytest.raises(ValueError, match="lr"):
        opt.step(lambda: _quadratic(a) + _quadratic(b))
    assert np.array_equal(a.data, [1.0, 2.0]) and not opt.state and not opt.global_state


def test_beyond_paper_group_is_registered_with_the_authors_defaults():
    assert qr.optim.BEYOND_PAPER == ("dog", "dadapt-sgd", "dadapt-adam", "prodigy", "schedulefree-sgd",
                                     "schedulefree-adamw")
    p = [qr.tensor(np.zeros(2), requires_grad=True)]
    expected = {
        "dog": dict(reps_rel=1e-6, lr=1.0, weight_decay=0.0, eps=1e-8, init_eta=None, avg_gamma=8.0),
        "dadapt-sgd": dict(lr=1.0, momentum=0.0, weight_decay=0.0, d0=1e-6, growth_rate=math.inf),
        "dadapt-adam": dict(lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decouple=False,
                            use_bias_correction=False, d0=1e-6, growth_rate=math.inf),
        "prodigy": dict(lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0.0, decouple=True,
                        use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=math.inf,
                        slice_p=1),
        "schedulefree-sgd": dict(lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0),
        "schedulefree-adamw": dict(lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0, r=0.0,
                                   weight_lr_power=2.0),
    }
    for name in qr.optim.BEYOND_PAPER:
        opt = qr.optim.get(name, p)
        for k, v in expected[name].items():
            assert opt.defaults[k] == v, (name, k)
        assert qr.optim.has_eval_mode(opt) == (name in ("dog",) or name.startswith("schedulefree"))
        assert opt.eval() is opt and opt.train() is opt  # every member has both (no-ops where x = y)
    assert not qr.optim.has_eval_mode(qr.optim.SGD(p, lr=0.1))
    assert qr.optim.is_beyond_paper("ldog") and not qr.optim.is_beyond_paper("qlabgrad")


# ------------------------------------------------------------------------------ shapes (hypothesis)
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SHAPES = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4)
SHAPE_CASES = [("dog", {}, "DoG"), ("ldog", {}, "LDoG"), ("dadapt-sgd", dict(momentum=0.5), "DAdaptSGD"),
               ("dadapt-adam", {}, "DAdaptAdam"), ("prodigy", dict(slice_p=2), "Prodigy"),
               ("schedulefree-sgd", dict(lr=0.1), "SGDScheduleFree"), ("schedulefree-adamw", {}, "AdamWScheduleFree")]


@pytest.mark.torch
@pytest.mark.parametrize("name, kw, their_name", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
@given(shapes=SHAPES, seed=st.integers(0, 2**32 - 1))
def test_any_parameter_shapes_match_the_authors_package(torch, name, kw, their_name, shapes, seed):
    """Scalars, vectors, matrices, 3-d tensors, size-1 axes: ``step()`` from the same random gradients
    (set directly on both sides), 5 steps, parameters equal to 1e-10."""
    r = np.random.default_rng(seed)
    init = [r.normal(size=s) for s in shapes]
    ours = [qr.tensor(w.copy(), requires_grad=True) for w in init]
    theirs = [torch.nn.Parameter(torch.tensor(w.copy())) for w in init]
    opt = qr.optim.get(name, ours, **kw)
    topt = _their_class(their_name)(theirs, **kw)
    if name.startswith("schedulefree"):
        topt.train()
    for t in range(5):
        for p, q in zip(ours, theirs):
            g = r.normal(size=p.shape)
            p.grad = g.copy()
            q.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
        assert_rel([p.data for p in ours], [q.detach().numpy() for q in theirs], f"{name} shapes {shapes} step {t}")
