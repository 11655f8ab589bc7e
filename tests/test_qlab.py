"""QLABGrad (Algorithm 1), FindPLR (Algorithm 2) and QLAB on other directions, against independent
oracles written here in plain NumPy: the exact line-search step on quadratics, FindPLR's loops on
Himmelblau with the analytic gradient, a NumPy transcription of QLAB-momentum/Adam; plus every edge
case documented in ``qlabref/optim/qlab.py``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import qlabref as qr
from qlabref.autograd import is_grad_enabled, is_state_update_enabled
from qlabref.optim import FindPLRError, NonFiniteLossError, QLAB, QLABGrad, find_plr

EPS = np.finfo(np.float64).eps


# ----------------------------------------------------------------------------------------- helpers
def spd(rng, n, lo, hi):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = rng.uniform(lo, hi, n)
    lam[0], lam[-1] = lo, hi
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T)


def himmelblau_np(t):
    x, y = t
    return (x * x + y - 11.0) ** 2 + (x + y * y - 7.0) ** 2


def himmelblau_grad_np(t):
    x, y = t
    a, b = x * x + y - 11.0, x + y * y - 7.0
    return np.array([4 * x * a + 2 * b, 2 * a + 4 * y * b])


def himmelblau_tensor(p):
    x, y = p[0], p[1]
    return (x * x + y - 11.0) ** 2 + (x + y * y - 7.0) ** 2


def mlp_problem(rng, dtype, n=64, d=8, h=16, k=2):
    """A tanh MLP regressing a teacher network (MSE): weights, inputs, closure."""
    X = rng.standard_normal((n, d))
    Y = np.tanh(X @ (rng.standard_normal((d, h)) / np.sqrt(d))) @ (rng.standard_normal((h, k)) / 4)
    init = [rng.standard_normal((d, h)) / np.sqrt(d), np.zeros(h), rng.standard_normal((h, k)) / 4]

    def build(dt):
        ps = [qr.tensor(a.astype(dt), requires_grad=True) for a in init]
        Xt, Yt = qr.tensor(X.astype(dt)), qr.tensor(Y.astype(dt))

        def closure():
            r = (Xt @ ps[0] + ps[1]).tanh() @ ps[2] - Yt
            return (r * r).mean()

        return ps, closure

    return build(dtype)


# ------------------------------------------------------------------------------ Algorithm 1 exact
def test_every_step_is_the_exact_line_search_step_on_a_50d_quadratic(rng):
    """On ½θᵀAθ, g(α) is exactly quadratic, so Eq. (10) gives ‖g‖²/(gᵀAg) for every ᾱ (rel. 1e-12)."""
    n = 50
    A = spd(rng, n, 1.0, 10.0)
    M = 10.0
    p = qr.tensor(rng.standard_normal(n), requires_grad=True)
    At = qr.tensor(A)

    def closure():
        return 0.5 * (p @ (At @ p))

    settings = [dict(pre_lr=c / M, findplr="never") for c in (0.2, 0.5, 1.0, 1.9, 3.0, 10.0)]
    settings += [dict(), dict(alpha0=1e3 / M)]  # FindPLR (loop 2 halves from a large α0)
    for kw in settings:
        p.data[...] = rng.standard_normal(n)
        opt = QLABGrad([p], **kw)
        for _ in range(15):
            theta = p.data.copy()
            g = A @ theta
            exact = (g @ g) / (g @ A @ g)
            opt.step(closure)
            rec = opt.last_step
            assert rec["a2"] > 0 and not rec["fallback"]
            assert abs(rec["lr"] - exact) <= 1e-12 * exact, (kw, rec["lr"], exact)
            assert abs(rec["alpha_star"] - (-rec["a1"] / (2 * rec["a2"]))) <= 1e-12 * exact  # Eq. (10) = Eq. (5)
            np.testing.assert_allclose(p.data, theta - exact * g, rtol=0, atol=1e-12 * np.abs(theta).max())


def test_with_a_linear_term_the_agreement_is_limited_only_by_the_rounding_of_L(rng):
    """L = ½θᵀAθ − bᵀθ: g(ᾱ) − L cancels, so |α* − exact|/exact ≲ eps·(|terms of L|)/(a2ᾱ²)."""
    n = 50
    A = spd(rng, n, 1.0, 10.0)
    b = rng.standard_normal(n)
    p = qr.tensor(5 * rng.standard_normal(n), requires_grad=True)
    At, bt = qr.tensor(A), qr.tensor(b)
    opt = QLABGrad([p], pre_lr=0.1, findplr="never")
    for _ in range(30):
        th = p.data.copy()
        g = A @ th - b
        exact = (g @ g) / (g @ A @ g)
        probe_point = th - 0.1 * g
        terms = sum(abs(0.5 * x @ A @ x) + abs(b @ x) for x in (th, probe_point))
        denom = 0.5 * 0.1**2 * (g @ A @ g)  # a2·ᾱ² exactly
        opt.step(lambda: 0.5 * (p @ (At @ p)) - bt @ p)
        bound = max(1e-12, 8 * n * EPS * terms / denom)
        assert abs(opt.last_step["lr"] - exact) <= bound * exact


def test_step_is_computed_from_the_saved_copy_and_records_the_algorithm(rng):
    """θ_t = θ_{t−1} − α_t∇L bit for bit (float32 and float64), and the record matches Eqs. (6)-(10)."""
    for dtype in (np.float64, np.float32):
        ps, closure = mlp_problem(rng, dtype)
        opt = QLABGrad(ps, pre_lr=0.5, findplr="never")
        seen = []
        opt.callbacks.append(lambda o, r: seen.append(r))
        for _ in range(3):
            before = [p.data.copy() for p in ps]
            loss = opt.step(closure)
            r = opt.last_step
            grads = [p.grad.copy() for p in ps]
            for p, b, g in zip(ps, before, grads):
                assert p.data.dtype == dtype
                np.testing.assert_array_equal(p.data, b - np.asarray(r["lr"], dtype=dtype) * g)
            gsq = sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads)
            assert r["grad_sq_norm"] == pytest.approx(gsq, rel=1e-12)
            assert r["loss"] == loss == r["a0"]  # Eq. (6)
            assert r["a1"] == -r["grad_sq_norm"]  # Eq. (7)
            assert r["a2"] == (r["probe_loss"] - r["a0"] - r["a1"] * r["pre_lr"]) / r["pre_lr"] ** 2  # Eq. (9)
            assert r["alpha_star"] == pytest.approx(r["grad_sq_norm"] * r["pre_lr"] ** 2 / (
                2 * (r["probe_loss"] - r["loss"] + r["grad_sq_norm"] * r["pre_lr"])), rel=1e-15)  # Eq. (10)
            assert r["lr"] == (r["alpha_star"] if r["a2"] > 0 else r["pre_lr"])
            assert r["fallback"] == (not r["a2"] > 0)
            assert r["evals"] == 2
            for k in ("loss", "grad_sq_norm", "probe_loss", "a0", "a1", "a2", "alpha_star", "lr", "pre_lr",
                      "fallback", "evals"):
                assert k in r
            assert isinstance(r["a2"], float) and isinstance(r["lr"], float)
        assert seen[-1] is opt.last_step and len(seen) == 3


def test_probe_sees_the_same_closure_without_graph_or_state_update(rng):
    calls = []
    p = qr.tensor(rng.standard_normal(3), requires_grad=True)

    def closure():
        calls.append((is_grad_enabled(), is_state_update_enabled()))
        return (p * p).sum()

    opt = QLABGrad([p], pre_lr=0.1, findplr="never")
    opt.step(closure)
    assert calls == [(True, True), (False, False)]
    assert opt.last_step["evals"] == len(calls) == 2
    calls.clear()
    p.data[...] = rng.standard_normal(3)  # the exact line search step above landed on the minimum 0
    opt2 = QLABGrad([p], alpha0=1e-3)  # FindPLR at step 1: its last probe is Algorithm 1's g(ᾱ)
    opt2.step(closure)
    r = opt2.last_step
    assert r["findplr_ran"] and r["evals"] == len(calls) == 1 + r["findplr_evals"]
    assert calls[0] == (True, True) and all(c == (False, False) for c in calls[1:])


def test_float32_and_float64_agree_on_a_small_mlp_over_20_steps(rng):
    seed = int(rng.integers(2**31))
    runs = {}
    for dtype in (np.float32, np.float64):
        ps, closure = mlp_problem(np.random.default_rng(seed), dtype)
        opt = QLABGrad(ps)
        lrs = []
        for _ in range(20):
            opt.step(closure)
            lrs.append(opt.last_step["lr"])
        runs[dtype] = (np.concatenate([p.data.astype(np.float64).ravel() for p in ps]), np.array(lrs))
    (t32, lr32), (t64, lr64) = runs[np.float32], runs[np.float64]
    assert np.max(np.abs(t32 - t64)) <= 1e-5 * np.max(np.abs(t64))
    np.testing.assert_allclose(lr32, lr64, rtol=1e-3)


# ----------------------------------------------------------------------------------- Algorithm 2
def findplr_numpy(f, grad, theta, alpha0):
    """Algorithm 2 written from the paper, on NumPy arrays: returns (ᾱ, doublings, halvings)."""
    g0, d = f(theta), grad(theta)
    gsq = float(d @ d)
    alpha, up, down = alpha0, 0, 0
    while f(theta - alpha * d) - g0 + alpha * gsq < 0:
        alpha, up = 2 * alpha, up + 1
    while f(theta - alpha * d) > g0:
        alpha, down = alpha / 2, down + 1
    return alpha, up, down


def test_findplr_on_himmelblau_from_minus_one_returns_alpha0_times_2_to_the_k():
    start = np.array([-1.0, -1.0])
    expected, up, down = findplr_numpy(himmelblau_np, himmelblau_grad_np, start, 1e-5)
    k = up - down
    assert up > 0  # (−1, −1) is near the local maximum: g is concave along −∇L, loop 1 runs
    p = qr.tensor(start.copy(), requires_grad=True)
    res = find_plr(lambda: himmelblau_tensor(p), [p], alpha0=1e-5, full_output=True)
    assert res.pre_lr == 1e-5 * 2.0**k == expected
    assert (res.doublings, res.halvings) == (up, down)
    assert res.evals == res.probes + 1 == 1 + up + down + 1
    np.testing.assert_array_equal(p.data, start)  # θ restored exactly
    np.testing.assert_allclose(p.grad, himmelblau_grad_np(start), rtol=1e-14)
    assert find_plr(lambda: himmelblau_tensor(p), [p], alpha0=1e-5) == expected
    # the same ᾱ when QLABGrad runs FindPLR at its first step, and the step is then Algorithm 1's
    opt = QLABGrad([p], alpha0=1e-5)
    opt.step(lambda: himmelblau_tensor(p))
    r = opt.last_step
    assert r["pre_lr"] == expected and r["findplr_ran"] and r["findplr_evals"] == 1 + up + down
    assert (r["findplr_doublings"], r["findplr_halvings"]) == (up, down)
    d = himmelblau_grad_np(start)
    assert r["probe_loss"] == pytest.approx(himmelblau_np(start - expected * d), rel=1e-14)


def test_findplr_on_a_quadratic_halves_from_a_large_alpha0(rng):
    A = spd(rng, 10, 0.5, 20.0)
    th = rng.standard_normal(10)
    expected, up, down = findplr_numpy(lambda t: 0.5 * t @ A @ t, lambda t: A @ t, th, 1e3)
    assert up == 0 and down > 0  # convex: loop 1 never runs
    p = qr.tensor(th.copy(), requires_grad=True)
    At = qr.tensor(A)
    assert find_plr(lambda: 0.5 * (p @ (At @ p)), [p], alpha0=1e3) == expected
    assert expected >= 1 / 20.0  # Lemma 3 on the rejected 2ᾱ


def test_findplr_every_k_reruns_and_once_runs_once(rng):
    A = spd(rng, 5, 1.0, 4.0)
    At = qr.tensor(A)
    p = qr.tensor(rng.standard_normal(5), requires_grad=True)
    closure = lambda: 0.5 * (p @ (At @ p))  # noqa: E731
    ran = []
    opt = QLABGrad([p], findplr="every:3")
    for _ in range(7):
        opt.step(closure)
        ran.append(opt.last_step["findplr_ran"])
    assert ran == [True, False, False, True, False, False, True]
    assert opt.global_state["findplr_runs"] == 3
    opt = QLABGrad([p], pre_lr=0.1, findplr="every:2")  # a given ᾱ: re-runs only at steps 3, 5, ...
    ran = []
    for _ in range(4):
        opt.step(closure)
        ran.append(opt.last_step["findplr_ran"])
    assert ran == [False, False, True, False]
    opt = QLABGrad([p])
    ran = []
    for _ in range(4):
        opt.step(closure)
        ran.append(opt.last_step["findplr_ran"])
    assert ran == [True, False, False, False]
    opt = QLABGrad([p], pre_lr=0.1, findplr="never")
    opt.step(closure)
    assert not opt.last_step["findplr_ran"] and opt.pre_lr == 0.1


# ------------------------------------------------------------------------------------- edge cases
def test_zero_gradient_takes_no_step_and_defers_findplr(rng):
    A = spd(rng, 4, 1.0, 3.0)
    At = qr.tensor(A)
    p = qr.tensor(np.zeros(4), requires_grad=True)  # the minimiser of ½θᵀAθ: ∇L = 0 exactly
    calls = []

    def closure():
        calls.append(1)
        return 0.5 * (p @ (At @ p))

    opt = QLABGrad([p])
    opt.step(closure)
    r = opt.last_step
    assert r["zero_grad"] and r["lr"] == 0.0 and r["alpha_star"] is None and r["evals"] == 1 == len(calls)
    assert not r["findplr_ran"] and opt.pre_lr is None and opt.global_state["findplr_due"]
    np.testing.assert_array_equal(p.data, np.zeros(4))
    p.data[...] = rng.standard_normal(4)
    opt.step(closure)
    assert opt.last_step["findplr_ran"] and opt.pre_lr is not None
    q = qr.tensor(np.zeros(4), requires_grad=True)
    with pytest.raises(FindPLRError) as e:  # standalone FindPLR has nothing to determine
        find_plr(lambda: 0.5 * (q @ (At @ q)), [q])
    assert e.value.loop == 0 and "gradient at θ is zero" in str(e.value)


def test_a2_exactly_zero_falls_back_to_the_pre_learning_rate():
    p = qr.tensor(np.array([0.0]), requires_grad=True)
    closure = lambda: p.sum() * 1.0  # noqa: E731  L(θ) = θ: g(α) = −α exactly, a2 = 0
    opt = QLABGrad([p], pre_lr=0.5, findplr="never")
    opt.step(closure)
    r = opt.last_step
    assert r["a2"] == 0.0 and r["alpha_star"] is None and r["fallback"] and r["lr"] == 0.5
    np.testing.assert_array_equal(p.data, [-0.5])


def test_negative_a2_falls_back_and_lands_on_the_probe_point(rng):
    p = qr.tensor(np.array([0.3, -0.2]), requires_grad=True)
    closure = lambda: -(p * p).sum() + 0.0 * p.sum()  # noqa: E731  concave: a2 < 0
    opt = QLABGrad([p], pre_lr=0.25, findplr="never")
    opt.step(closure)
    r = opt.last_step
    assert r["a2"] < 0 and r["alpha_star"] < 0 and r["fallback"] and r["lr"] == 0.25
    with qr.no_grad():
        assert float(closure().data) == r["probe_loss"]


def _log_barrier(p):
    return -(1.0 - (p * p) / 100.0).log().sum()  # NaN for |θ| > 10


def test_nonfinite_probe_is_an_overshoot_halved_by_findplr_loop2():
    p = qr.tensor(np.array([1.0]), requires_grad=True)
    opt = QLABGrad([p], pre_lr=1000.0, findplr="never")
    with np.errstate(invalid="ignore"):
        opt.step(lambda: _log_barrier(p))
    r = opt.last_step
    assert r["probe_nonfinite"] and math.isfinite(r["probe_loss"]) and r["probe_loss"] <= r["loss"]
    assert r["pre_lr"] == 1000.0 / 2 ** r["findplr_halvings"] and r["findplr_halvings"] == 4
    assert r["evals"] == 2 + 4 and opt.pre_lr == r["pre_lr"]
    assert np.isfinite(p.data).all() and float(_log_barrier(p).data) < r["loss"]
    # inside FindPLR a non-finite g counts as +inf: loop 1 stops, loop 2 halves
    q = qr.tensor(np.array([1.0]), requires_grad=True)
    with np.errstate(invalid="ignore"):
        res = find_plr(lambda: _log_barrier(q), [q], alpha0=1000.0, full_output=True)
    assert res.nonfinite == 1 and res.doublings == 0 and res.pre_lr == 62.5


def test_findplr_unbounded_below_raises_naming_loop_1_and_restores_theta(rng):
    th = rng.standard_normal(3)
    p = qr.tensor(th.copy(), requires_grad=True)
    closure = lambda: -(p * p).sum()  # noqa: E731  a2 < 0 for every ᾱ
    with pytest.raises(FindPLRError, match="loop 1") as e:
        find_plr(closure, [p], alpha0=0.01, max_evals=20)
    assert e.value.loop == 1 and e.value.last_alpha == 0.01 * 2**19 and e.value.evals == 20
    assert "last ᾱ" in str(e.value)
    np.testing.assert_array_equal(p.data, th)
    opt = QLABGrad([p], alpha0=0.01, max_evals=10)
    with pytest.raises(FindPLRError, match="loop 1"):
        opt.step(closure)
    np.testing.assert_array_equal(p.data, th)
    assert opt.global_state["step"] == 0


def test_findplr_that_never_sees_a_decrease_raises_naming_loop_2(rng):
    p = qr.tensor(rng.standard_normal(3), requires_grad=True)
    th = p.data.copy()

    def closure():  # probes see a different function: g(ᾱ) > g(0) for every ᾱ
        return (p * p).sum() + (0.0 if is_grad_enabled() else 1.0)

    with pytest.raises(FindPLRError, match="loop 2") as e:
        find_plr(closure, [p], alpha0=1e-3, max_evals=30)
    assert e.value.loop == 2 and e.value.last_alpha == 1e-3 * 2.0**-29
    np.testing.assert_array_equal(p.data, th)


def test_nonfinite_loss_raises_and_leaves_everything_untouched(rng):
    p = qr.tensor(rng.standard_normal(3), requires_grad=True)
    opt = QLABGrad([p], pre_lr=0.1, findplr="never")
    opt.step(lambda: (p * p).sum())
    th, state = p.data.copy(), dict(opt.global_state)
    with pytest.raises(NonFiniteLossError, match="unchanged"):
        opt.step(lambda: (p * p).sum() * float("nan"))
    with pytest.raises(NonFiniteLossError, match="gradient"):  # finite loss, infinite gradient
        q = qr.tensor(np.zeros(2), requires_grad=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            QLABGrad([q], pre_lr=0.1).step(lambda: q.sqrt().sum())
    np.testing.assert_array_equal(p.data, th)
    assert opt.global_state == state


# -------------------------------------------------------------------------- arguments and state
@pytest.mark.parametrize("kw, word", [
    (dict(pre_lr=-1.0), "pre_lr"), (dict(pre_lr=float("nan")), "pre_lr"), (dict(alpha0=0.0), "alpha0"),
    (dict(findplr="sometimes"), "findplr"), (dict(findplr="every:0"), "findplr"),
    (dict(findplr="never"), "pre_lr"), (dict(max_evals=0), "max_evals"), (dict(max_lr=-2.0), "max_lr"),
])
def test_qlabgrad_rejects_bad_arguments_naming_them(kw, word):
    p = qr.tensor(np.zeros(2), requires_grad=True)
    with pytest.raises(ValueError, match=word):
        QLABGrad([p], **kw)


@pytest.mark.parametrize("kw, word", [
    (dict(direction="nesterov"), "direction"), (dict(momentum=1.5), "momentum"), (dict(betas=(0.9, 1.0)), "betas"),
    (dict(eps=-1.0), "eps"), (dict(alpha0=-1.0), "alpha0"),
])
def test_qlab_rejects_bad_arguments_naming_them(kw, word):
    p = qr.tensor(np.zeros(2), requires_grad=True)
    with pytest.raises(ValueError, match=word):
        QLAB([p], **kw)


def test_step_needs_a_closure_and_groups_share_one_rate(rng):
    p, q = (qr.tensor(rng.standard_normal(2), requires_grad=True) for _ in range(2))
    with pytest.raises(ValueError, match="closure"):
        QLABGrad([p]).step()
    with pytest.raises(ValueError, match="one learning rate"):
        QLABGrad([{"params": [p]}, {"params": [q], "pre_lr": 0.3}], pre_lr=0.1)
    opt = QLABGrad([{"params": [p]}, {"params": [q]}], pre_lr=0.1, findplr="never")
    opt.step(lambda: (p * p).sum() + 3.0 * (q * q).sum())
    expected = float(np.sum(p.grad**2) + np.sum(q.grad**2))
    assert opt.last_step["grad_sq_norm"] == pytest.approx(expected, rel=1e-15)


def test_registry_names():
    p = qr.tensor(np.zeros(2), requires_grad=True)
    assert isinstance(qr.optim.get("qlabgrad", [p]), QLABGrad)
    for name, direction in (("qlab", "momentum"), ("qlab-sgd", "sgd"), ("qlab-momentum", "momentum"),
                            ("qlab-adam", "adam")):
        opt = qr.optim.get(name, [p])
        assert isinstance(opt, QLAB) and opt.param_groups[0]["direction"] == direction
    with pytest.raises(ValueError, match="direction"):
        qr.optim.get("qlab-adam", [p], direction="sgd")


@pytest.mark.parametrize("make", [
    lambda ps: QLABGrad(ps, findplr="every:3"),
    lambda ps: QLAB(ps, direction="momentum"),
    lambda ps: QLAB(ps, direction="adam"),
])
def test_state_dict_round_trip_continues_bit_identically(rng, make):
    seed = int(rng.integers(2**31))
    ps_a, closure_a = mlp_problem(np.random.default_rng(seed), np.float64)
    ps_b, closure_b = mlp_problem(np.random.default_rng(seed), np.float64)
    a = make(ps_a)
    for _ in range(10):
        a.step(closure_a)
    b = make(ps_b)
    for _ in range(5):
        b.step(closure_b)
    saved = b.state_dict()
    ps_c, closure_c = mlp_problem(np.random.default_rng(seed), np.float64)
    for pc, pb in zip(ps_c, ps_b):
        pc.data[...] = pb.data
    c = make(ps_c)
    c.load_state_dict(saved)
    for _ in range(5):
        c.step(closure_c)
    for pa, pc in zip(ps_a, ps_c):
        np.testing.assert_array_equal(pa.data, pc.data)
    assert a.last_step == c.last_step


# --------------------------------------------------------------------------- QLAB on a direction V
def qlab_numpy_step(f, grad, theta, st, direction, alpha0=0.01, mu=0.9, betas=(0.9, 0.999), eps=1e-8):
    """One QLAB step (OPTIMIZERS.md §8) in plain NumPy: V from the direction with lr = 1,
    a1 = −∇L·V, β = max(α0, α_{t−1}), a2 = (g(β) − a0 − a1β)/β², α* = −a1/(2a2), α_t = β if α* < 0.
    ``st`` carries t, the momentum buffer / Adam moments and α_{t−1}. Returns (θ_new, α_t, L)."""
    st["t"] = t = st.get("t", 0) + 1
    L, g = f(theta), grad(theta)
    if direction == "sgd":
        V = g
    elif direction == "momentum":
        st["buf"] = g.copy() if "buf" not in st else mu * st["buf"] + g
        V = st["buf"]
    else:
        m, v = st.get("m", np.zeros_like(g)), st.get("v", np.zeros_like(g))
        st["m"] = m = m + (1 - betas[0]) * (g - m)
        st["v"] = v = betas[1] * v + (1 - betas[1]) * g * g
        V = (m / (1 - betas[0] ** t)) / (np.sqrt(v) / math.sqrt(1 - betas[1] ** t) + eps)
    a1 = -(g @ V)
    if not a1 < 0:
        V, a1 = g, -(g @ g)
    beta = max(alpha0, st.get("prev", alpha0))
    a2 = (f(theta - beta * V) - L - a1 * beta) / beta**2
    lr = -a1 / (2 * a2) if a2 > 0 else beta
    st["prev"] = lr
    return theta - lr * V, lr, L


@pytest.mark.parametrize("direction", ["sgd", "momentum", "adam"])
def test_qlab_matches_a_numpy_transcription(rng, direction):
    """Step by step from the same θ (trajectories of a non-convex function amplify last-bit differences).

    At least 3 steps are compared; a start from which QLAB falls below L = 1e-6 within fewer steps
    (QLAB-sgd: 3 of 2975 random starts, so "compared >= 3" on one start failed ~1e-3 of runs) is
    followed by another fresh start, and every step of every start is compared."""
    compared = 0
    for _ in range(10):
        p = qr.tensor(rng.uniform(-4, 4, 2), requires_grad=True)
        opt = QLAB([p], direction=direction)
        st = {}
        for _ in range(25):
            theta = p.data.copy()
            expected, lr, L = qlab_numpy_step(himmelblau_np, himmelblau_grad_np, theta, st, direction)
            opt.step(lambda: himmelblau_tensor(p))
            r = opt.last_step
            if r["zero_grad"]:  # landed exactly on a minimum (∇L·V == 0.0): no probe, no step, by design
                assert r["evals"] == 1 and L < 1e-12 and np.array_equal(p.data, theta)
                break
            assert r["evals"] == 2 and r["direction"] == direction
            if L > 1e-6:  # far above rounding level (near a minimum g(β) − L is rounding noise)
                assert r["lr"] == pytest.approx(lr, rel=1e-9)
                np.testing.assert_allclose(p.data, expected, rtol=1e-9, atol=1e-12)
                compared += 1
            st["prev"] = r["lr"]  # keep the oracle on the implementation's path
        if compared >= 3:
            break
    assert compared >= 3


def test_qlab_uses_the_gradient_when_v_is_not_a_descent_direction(rng):
    p = qr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    opt = QLAB([p], direction="momentum", momentum=0.9)
    closure = lambda: (p * p).sum()  # noqa: E731
    opt.step(closure)
    opt.state[p]["momentum_buffer"][...] = -100.0 * p.data  # next V = 0.9·(−100θ) + 2θ: ascent
    th = p.data.copy()
    opt.step(closure)
    r = opt.last_step
    assert r["not_descent"] and r["grad_dot_dir"] == pytest.approx(float(4 * th @ th))
    np.testing.assert_allclose(p.data, th - r["lr"] * 2 * th, rtol=1e-15)
    assert r["lr"] == pytest.approx(0.5)  # exact line search along −∇L of θᵀθ


def test_qlab_probe_floor_and_fallback(rng):
    p = qr.tensor(np.array([0.5]), requires_grad=True)
    opt = QLAB([p], direction="sgd", alpha0=0.2)
    opt.step(lambda: -(p * p).sum())  # concave: a2 < 0 → α_t = β = max(α0, −) = 0.2
    r = opt.last_step
    assert r["fallback"] and r["lr"] == 0.2 == r["pre_lr"]
    opt.step(lambda: -(p * p).sum())
    assert opt.last_step["pre_lr"] == 0.2  # β = max(α0, α_{t−1})


# --------------------------------------------------------------------------------------- BatchNorm
def _bn_problem(rng, bn_forward, params_extra):
    """A batch (N, C, H, W), a per-channel weight w and a target: loss = mean((BN(x)·w − y)²)."""
    x = qr.tensor(rng.standard_normal((8, 3, 4, 4)) * 2 + 1)
    y = qr.tensor(rng.standard_normal((8, 3, 4, 4)))
    w = qr.tensor(rng.standard_normal((1, 3, 1, 1)), requires_grad=True)

    def closure():
        d = bn_forward(x) * w - y
        return (d * d).mean()

    return [w] + list(params_extra), closure


class _TestBatchNorm:
    """Training-mode batch norm written here from Tensor ops (biased batch variance for normalising,
    unbiased for running_var, momentum 0.1, as torch), honouring ``no_state_update()`` as qr.nn must."""

    def __init__(self, c):
        self.running_mean, self.running_var, self.num_batches_tracked = np.zeros(c), np.ones(c), 0

    def __call__(self, x):
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = ((x - mean) * (x - mean)).mean(axis=(0, 2, 3), keepdims=True)
        if is_state_update_enabled():
            self.running_mean = 0.9 * self.running_mean + 0.1 * mean.data.ravel()
            self.running_var = 0.9 * self.running_var + 0.1 * var.data.ravel() * n / (n - 1)
            self.num_batches_tracked += 1
        return (x - mean) / (var + 1e-5).sqrt()


def _one_step_stats(rng_seed, make_opt, make_bn):
    rng = np.random.default_rng(rng_seed)
    bn, extra = make_bn()
    params, closure = _bn_problem(rng, bn, extra)
    opt = make_opt(params)
    opt.step(closure)
    return bn, [p.grad.copy() for p in params], opt


def test_probe_leaves_batchnorm_running_statistics_alone(rng):
    """Running statistics after a QLABGrad step == after a plain SGD step with the same gradient."""
    seed = int(rng.integers(2**31))
    bn_q, g_q, opt = _one_step_stats(seed, lambda ps: QLABGrad(ps, pre_lr=0.1, findplr="never"),
                                     lambda: (_TestBatchNorm(3), []))
    bn_s, g_s, _ = _one_step_stats(seed, lambda ps: qr.optim.SGD(ps, lr=0.1), lambda: (_TestBatchNorm(3), []))
    assert opt.last_step["evals"] == 2
    for a, b in zip(g_q, g_s):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(bn_q.running_mean, bn_s.running_mean)
    np.testing.assert_array_equal(bn_q.running_var, bn_s.running_var)
    assert bn_q.num_batches_tracked == bn_s.num_batches_tracked == 1
    # FindPLR's probes (many forwards) leave them alone too
    bn_f, _, opt = _one_step_stats(seed, lambda ps: QLABGrad(ps, alpha0=1e4), lambda: (_TestBatchNorm(3), []))
    assert opt.last_step["evals"] > 3 and bn_f.num_batches_tracked == 1
    np.testing.assert_array_equal(bn_f.running_mean, bn_s.running_mean)


def test_qr_nn_batchnorm2d_running_statistics_after_qlabgrad_equal_sgd(rng):
    """The same with the real ``qr.nn.BatchNorm2d`` (its state_dict buffers, PyTorch key names)."""
    nn = qr.nn
    if not hasattr(nn, "BatchNorm2d"):
        pytest.fail("qr.nn.BatchNorm2d does not exist yet (qlabref/nn is being written by a colleague); this test "
                    "checks that QLABGrad's probe forward leaves BatchNorm running statistics untouched")
    seed = int(rng.integers(2**31))

    def make_bn():
        bn = nn.BatchNorm2d(3, dtype=np.float64)
        bn.train()
        return bn, list(bn.parameters())

    bn_q, g_q, opt = _one_step_stats(seed, lambda ps: QLABGrad(ps, pre_lr=0.1, findplr="never"), make_bn)
    bn_s, g_s, _ = _one_step_stats(seed, lambda ps: qr.optim.SGD(ps, lr=0.1), make_bn)
    assert opt.last_step["evals"] == 2
    for a, b in zip(g_q, g_s):
        np.testing.assert_array_equal(a, b)
    sq, ss = bn_q.state_dict(), bn_s.state_dict()
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_array_equal(np.asarray(sq[key]), np.asarray(ss[key]), err_msg=key)
    assert int(np.asarray(sq["num_batches_tracked"])) == 1
