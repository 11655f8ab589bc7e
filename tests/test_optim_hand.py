"""HGD, L4GD/L4Mom/L4Adam, LQA and Adam's efficient form: the first two steps computed by hand.

The problem is L(w) = (w0 − 1)² + 3(w1 + 0.5)² + 0.5 + ¼w0⁴ (not quadratic, so LQA's parabola is
not exact) with its analytic gradient. Each test writes the method's formulas out in plain NumPy
(from OPTIMIZERS.md §2–§4 and the original papers' code), independently of ``qlabref.optim``, and
compares the optimizer's parameters and reported learning rate after steps 1 and 2. The start point
is random (``rng`` fixture).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import qlabref as qr
from qlabref.autograd import is_grad_enabled, is_state_update_enabled
from qlabref.optim import NonFiniteLossError

CENTER = np.array([1.0, -0.5])


def L(w):
    return (w[0] - 1) ** 2 + 3 * (w[1] + 0.5) ** 2 + 0.5 + 0.25 * w[0] ** 4


def grad(w):
    return np.array([2 * (w[0] - 1) + w[0] ** 3, 6 * (w[1] + 0.5)])


def L_tensor(p):
    """The same loss on one (2,) parameter Tensor."""
    d = p - qr.tensor(CENTER)
    w0 = p[0]
    return d[0] * d[0] + 3.0 * (d[1] * d[1]) + 0.5 + 0.25 * (w0 * w0 * w0 * w0)


def L_split(a, b):
    """The same loss on two (1,) parameter Tensors (w0, w1), for the per-tensor Adam-HD loop."""
    return ((a - 1.0) ** 2 + 3.0 * (b + 0.5) ** 2 + 0.5 + 0.25 * a**4).sum()


def close(a, b, what=""):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=what)


@pytest.fixture
def w0(rng):
    return rng.uniform(-1.0, 1.0, 2)


def run(opt_cls, w_start, n=2, **kw):
    p = qr.tensor(w_start.copy(), requires_grad=True)
    opt = opt_cls([p], **kw)
    out = []
    for _ in range(n):
        opt.step(lambda: L_tensor(p))
        out.append((p.data.copy(), dict(opt.last_step)))
    return out, opt, p


def test_loss_and_gradient_helpers_agree(w0):
    p = qr.tensor(w0.copy(), requires_grad=True)
    loss = L_tensor(p)
    loss.backward()
    close(loss.item(), L(w0))
    close(p.grad, grad(w0))


# ------------------------------------------------------------------------------------------ HGD §2
def test_sgd_hd_first_two_steps(w0):
    eta0, beta = 0.1, 1e-3
    # step 1: u_prev = 0, so η is unchanged
    g1 = grad(w0)
    eta1 = eta0 + beta * (g1 @ np.zeros(2))
    w1 = w0 - eta1 * g1
    # step 2: η ← η + β g2·g1 BEFORE it is used (plus sign)
    g2 = grad(w1)
    eta2 = eta1 + beta * (g2 @ g1)
    w2 = w1 - eta2 * g2
    out, opt, _ = run(qr.optim.HGD, w0, lr=eta0, hypergrad_lr=beta)
    close(out[0][0], w1)
    close(out[1][0], w2)
    close(out[0][1]["lr"], eta1)
    close(out[1][1]["lr"], eta2)
    close(opt.param_groups[0]["lr"], eta2)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_hd_momentum_uses_previous_direction(w0, nesterov):
    """Three steps (from step 3 on, the previous direction differs from the previous raw gradient
    also without Nesterov); dampening τ is not applied to the first buffer."""
    eta0, beta, mu = 0.05, 1e-2, 0.9
    tau = 0.0 if nesterov else 0.1
    g1 = grad(w0)
    b1 = g1.copy()  # first buffer = g (no dampening)
    d1 = g1 + mu * b1 if nesterov else b1
    w1 = w0 - eta0 * d1
    g2 = grad(w1)
    eta2 = eta0 + beta * (g2 @ d1)  # u_prev is the previous DIRECTION, not the raw gradient
    b2 = mu * b1 + (1 - tau) * g2
    d2 = g2 + mu * b2 if nesterov else b2
    w2 = w1 - eta2 * d2
    g3 = grad(w2)
    eta3 = eta2 + beta * (g3 @ d2)
    b3 = mu * b2 + (1 - tau) * g3
    d3 = g3 + mu * b3 if nesterov else b3
    w3 = w2 - eta3 * d3
    assert abs(g3 @ d2 - g3 @ g2) > 1e-6  # the test can tell direction from gradient
    out, _, _ = run(qr.optim.HGD, w0, n=3, lr=eta0, hypergrad_lr=beta, momentum=mu, nesterov=nesterov,
                    dampening=tau)
    close(out[0][0], w1)
    close(out[1][0], w2)
    close(out[2][0], w3)
    close(out[1][1]["lr"], eta2)
    close(out[2][1]["lr"], eta3)


def test_adam_hd_per_tensor_order(w0):
    """Adam-HD: tensor k sees η already incremented by tensors 1..k−1 of the same step (adam_hd.py)."""
    eta0, beta, b1, b2, eps = 0.05, 1e-2, 0.9, 0.999, 1e-8
    a = qr.tensor(w0[:1].copy(), requires_grad=True)
    b = qr.tensor(w0[1:].copy(), requires_grad=True)
    opt = qr.optim.HGD([a, b], lr=eta0, hypergrad_lr=beta, direction="adam")
    # step 1 (t = 1): no hypergradient; efficient-form Adam for both tensors
    g = grad(w0)
    m = (1 - b1) * g
    v = (1 - b2) * g * g
    w1 = w0 - eta0 * math.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)
    opt.step(lambda: L_split(a, b))
    close(np.r_[a.data, b.data], w1)
    close(opt.last_step["lr"], eta0)
    # step 2 (t = 2)
    g2 = grad(w1)
    u_prev = math.sqrt(1 - b2) / (1 - b1) * m / (np.sqrt(v) + eps)
    m2 = b1 * m + (1 - b1) * g2
    v2 = b2 * v + (1 - b2) * g2 * g2
    c2 = math.sqrt(1 - b2**2) / (1 - b1**2)
    eta_a = eta0 + beta * g2[0] * u_prev[0]  # tensor a: only its own share
    eta_b = eta_a + beta * g2[1] * u_prev[1]  # tensor b: sees a's increment
    w2 = np.array([w1[0] - eta_a * c2 * m2[0] / (np.sqrt(v2[0]) + eps),
                   w1[1] - eta_b * c2 * m2[1] / (np.sqrt(v2[1]) + eps)])
    opt.step(lambda: L_split(a, b))
    close(np.r_[a.data, b.data], w2)
    close(opt.last_step["lr"], eta_b)
    # the "clean" alternative (one global η update before both tensors) gives different numbers
    clean_a = w1[0] - eta_b * c2 * m2[0] / (np.sqrt(v2[0]) + eps)
    assert abs(clean_a - w2[0]) > 1e-9


# ------------------------------------------------------------------------------------------ L4 §3
ALPHA, GAMMA, GAMMA0, TAU, EPS = 0.15, 0.9, 0.75, 1000.0, 1e-12


def test_l4gd_first_two_steps(w0):
    # step 1: L_min = γ0·L; v = ĝ = g
    l1, g1 = L(w0), grad(w0)
    lmin = GAMMA0 * l1
    eta1 = ALPHA * (l1 - GAMMA * lmin) / (g1 @ g1 + EPS)
    w1 = w0 - eta1 * g1
    lmin *= 1 + 1 / TAU  # forgetting, after the step
    # step 2: L_min = min(L_min, L)
    l2, g2 = L(w1), grad(w1)
    lmin2 = min(lmin, l2)
    eta2 = ALPHA * (l2 - GAMMA * lmin2) / (g2 @ g2 + EPS)
    w2 = w1 - eta2 * g2
    out, opt, _ = run(qr.optim.L4GD, w0)
    close(out[0][0], w1)
    close(out[1][0], w2)
    close(out[0][1]["lr"], eta1)
    close(out[1][1]["lr"], eta2)
    close(out[0][1]["l_min"], GAMMA0 * l1)
    close(out[1][1]["l_min"], lmin2)
    close(opt.global_state["l_min"], lmin2 * (1 + 1 / TAU))
    assert out[0][1]["evals"] == out[1][1]["evals"] == 1


def test_l4mom_first_two_steps(w0):
    l1, g1 = L(w0), grad(w0)
    ema = 0.1 * g1  # zero-started EMA with decay 0.9
    v1 = ema / (1 - 0.9)  # bias corrected: = g1
    lmin = GAMMA0 * l1
    eta1 = ALPHA * (l1 - GAMMA * lmin) / (v1 @ v1 + EPS)
    w1 = w0 - eta1 * v1
    lmin *= 1 + 1 / TAU
    l2, g2 = L(w1), grad(w1)
    ema = 0.9 * ema + 0.1 * g2
    v2 = ema / (1 - 0.9**2)
    lmin2 = min(lmin, l2)
    eta2 = ALPHA * (l2 - GAMMA * lmin2) / (v2 @ v2 + EPS)
    w2 = w1 - eta2 * v2
    out, _, _ = run(qr.optim.L4Mom, w0)
    close(out[0][0], w1)
    close(out[1][0], w2)
    close(out[1][1]["lr"], eta2)


@pytest.mark.parametrize("T_dir, T_est", [(20.0, 10.0), (5.0, 10.0), (4.0, 30.0)])
def test_l4mom_time_scales_are_the_official_knobs(w0, T_dir, T_est):
    """Official TF code: L4Mom(mom_params={'time_momentum': T}) passes T to the DIRECTION transform
    only; the gradient estimate keeps its own MomentumTransform (time 10 unless L4General's
    gradient_params says otherwise). Three steps written out from L4/L4.py."""
    w = w0.copy()
    ema_v, ema_g = np.zeros(2), np.zeros(2)
    dv, dg = 1 - 1 / T_dir, 1 - 1 / T_est
    lmin = None
    expected = []
    for t in (1, 2, 3):
        loss, g = L(w), grad(w)
        lmin = GAMMA0 * loss if t == 1 else min(lmin, loss)
        ema_v = ema_v - (ema_v - g) * (1 - dv)  # tf.train.ExponentialMovingAverage, zero-started
        ema_g = ema_g - (ema_g - g) * (1 - dg)
        v = ema_v / (1 - dv**t)
        ghat = ema_g / (1 - dg**t)
        eta = ALPHA * (loss - GAMMA * lmin) / (v @ ghat + EPS)
        w = w - eta * v
        lmin *= 1 + 1 / TAU
        expected.append((w.copy(), eta))
    kw = dict(time_momentum=T_dir) if T_est == 10.0 else dict(time_momentum=T_dir, gradient_time_momentum=T_est)
    out, _, _ = run(qr.optim.L4Mom, w0, n=3, **kw)
    for (wo, rec), (we, eta) in zip(out, expected):
        close(wo, we)
        close(rec["lr"], eta)
    # the earlier behaviour (both EMAs at T_dir) is measurably different
    both, _, _ = run(qr.optim.L4Mom, w0, n=3, time_momentum=T_dir, gradient_time_momentum=T_dir)
    assert abs(both[2][1]["lr"] - expected[2][1]) > 1e-6 * abs(expected[2][1])


def test_l4adam_first_two_steps(w0):
    """L4Adam: v = m̂/(√v̂ + 1e-4) (ε = 1e-4, the official code's, not Adam's 1e-8), ĝ = EMA(0.9)."""
    l1, g1 = L(w0), grad(w0)
    m = 0.1 * g1
    s = 0.001 * g1 * g1
    ge = 0.1 * g1
    v1 = (m / 0.1) / (np.sqrt(s / 0.001) + 1e-4)
    gh1 = ge / 0.1
    lmin = GAMMA0 * l1
    eta1 = ALPHA * (l1 - GAMMA * lmin) / (v1 @ gh1 + EPS)
    w1 = w0 - eta1 * v1
    lmin *= 1 + 1 / TAU
    l2, g2 = L(w1), grad(w1)
    m = 0.9 * m + 0.1 * g2
    s = 0.999 * s + 0.001 * g2 * g2
    ge = 0.9 * ge + 0.1 * g2
    v2 = (m / (1 - 0.9**2)) / (np.sqrt(s / (1 - 0.999**2)) + 1e-4)
    gh2 = ge / (1 - 0.9**2)
    lmin2 = min(lmin, l2)
    eta2 = ALPHA * (l2 - GAMMA * lmin2) / (v2 @ gh2 + EPS)
    w2 = w1 - eta2 * v2
    out, _, _ = run(qr.optim.L4Adam, w0)
    close(out[0][0], w1)
    close(out[1][0], w2)
    close(out[1][1]["lr"], eta2)


def test_l4gd_momentum_estimator_option(w0):
    """L4GD with ĝ = bias-corrected EMA of g (L4General-style), v = g."""
    l1, g1 = L(w0), grad(w0)
    lmin = GAMMA0 * l1
    eta1 = ALPHA * (l1 - GAMMA * lmin) / (g1 @ g1 + EPS)  # ĝ1 = g1
    w1 = w0 - eta1 * g1
    lmin *= 1 + 1 / TAU
    l2, g2 = L(w1), grad(w1)
    gh2 = (0.9 * 0.1 * g1 + 0.1 * g2) / (1 - 0.81)
    eta2 = ALPHA * (l2 - GAMMA * min(lmin, l2)) / (g2 @ gh2 + EPS)
    out, _, _ = run(qr.optim.L4GD, w0, gradient_estimator="momentum")
    close(out[1][0], w1 - eta2 * g2)


def test_l4_lmin_tracks_the_minimum_and_forgets(w0):
    """L_min falls to a lower loss, and rises by (1 + 1/τ) per step afterwards."""
    p = qr.tensor(w0.copy(), requires_grad=True)
    opt = qr.optim.L4GD([p], tau=10.0)
    losses = []
    for _ in range(6):
        losses.append(opt.step(lambda: L_tensor(p)))
    lmin = GAMMA0 * losses[0] * 1.1
    for loss in losses[1:]:
        lmin = min(lmin, loss) * 1.1
    close(opt.global_state["l_min"], lmin)


def test_l4_negative_nan_and_missing_closure(w0):
    p = qr.tensor(w0.copy(), requires_grad=True)
    for cls in (qr.optim.L4GD, qr.optim.L4Mom, qr.optim.L4Adam):
        opt = cls([p])
        with pytest.raises(ValueError, match="negative"):
            opt.step(lambda: L_tensor(p) - 100.0)
        assert np.array_equal(p.data, w0) and opt.global_state == {}
        with pytest.raises(NonFiniteLossError):
            opt.step(lambda: L_tensor(p) * float("nan"))
        assert np.array_equal(p.data, w0)
        with pytest.raises(TypeError, match="closure"):
            opt.step()


# ------------------------------------------------------------------------------------------ LQA §4
def lqa_eta(l0, lp, lm, delta):
    return (lp - lm) * delta / 2 / (lp + lm - 2 * l0 + 1e-24)


def lqa_eta_rtol(l0, lp, lm):
    """Relative rounding bound on η = ½δ(L⁺ − L⁻)/(L⁺ + L⁻ − 2L) when L, L⁺, L⁻ are each off by a few
    u·L (L here and ``L_tensor`` round differently; every term of L is >= 0, so |terms| sum to L):
    the two differences cancel, so 16u·(L⁺ + L⁻ + 2L)·(1/|L⁺ − L⁻| + 1/|L⁺ + L⁻ − 2L|), at least 1e-12."""
    s = lp + lm + 2 * l0
    return max(1e-12, 16 * np.finfo(float).eps * s * (1 / abs(lp - lm) + 1 / abs(lp + lm - 2 * l0)))


def test_lqa_paper_formula_first_two_steps(w0):
    """Default mode: probes at θ ± α∇L, A_t = ½α(L⁺ − L⁻)/(L⁺ + L⁻ − 2L) (the product, not Table 1's sum).

    Each step is compared from the optimizer's own θ, with η to the rounding bound of ``lqa_eta_rtol``:
    near the minimum (|∇L| small; step 2 often lands there) L⁺ + L⁻ − 2L = O(α²|∇L|²) cancels, and a
    fixed rtol 1e-12 on η (and on θ, which the hand computation followed) failed 164 of 22101 random
    starts (7e-3 per run; η differed by up to 6e-9 relative, at starts near the minimum). Over 20000
    starts the worst η error is now 0.043 of the bound."""
    alpha = 0.1
    p = qr.tensor(w0.copy(), requires_grad=True)
    opt = qr.optim.LQA([p], lr=alpha)
    for _ in range(2):
        w = p.data.copy()
        g = grad(w)
        lp, lm, l0 = L(w + alpha * g), L(w - alpha * g), L(w)
        eta = abs(0.5 * alpha * (lp - lm) / (lp + lm - 2 * l0))
        rtol = lqa_eta_rtol(l0, lp, lm)
        opt.step(lambda: L_tensor(p))
        rec = opt.last_step
        assert abs(rec["lr"] - eta) <= rtol * eta, (rec["lr"], eta, rtol)
        np.testing.assert_allclose(p.data, w - eta * g, rtol=1e-12, atol=rtol * eta * np.abs(g).max() + 1e-14)
        close(rec["loss_plus"], lp)
        close(rec["loss_minus"], lm)
        assert rec["evals"] == 3 and rec["fallback"] is False


@pytest.mark.parametrize("epoch, delta", [(None, 1.0), (10, 0.8), (100, 0.1)])
def test_lqa_normalized_mode_is_the_original_code(w0, epoch, delta):
    """Original code: d = g/max|g|, δ = max(1 − 0.02·epoch, 0.1), η = min(|η*|, 0.5), and the η
    fitted for d is applied to the RAW gradient (scale inconsistency reproduced)."""
    p = qr.tensor(w0.copy(), requires_grad=True)
    opt = qr.optim.LQA([p], direction="normalized")
    if epoch is not None:
        opt.set_epoch(epoch)
    for _ in range(2):
        # from the optimizer's own θ, η to its rounding bound (see test_lqa_paper_formula_first_two_steps;
        # with δ = 0.1 a fixed 1e-12/1e-14 failed 1 of 20911 starts, an η error of ~1e-13 times |∇L|)
        w = p.data.copy()
        g = grad(w)
        d = g / np.max(np.abs(g))
        l0, lp, lm = L(w), L(w + delta * d), L(w - delta * d)
        eta = min(abs(lqa_eta(l0, lp, lm, delta)), 0.5)
        rtol = lqa_eta_rtol(l0, lp, lm)
        opt.step(lambda: L_tensor(p))
        np.testing.assert_allclose(p.data, w - eta * g, rtol=1e-12, atol=rtol * eta * np.abs(g).max() + 1e-14)
        assert abs(opt.last_step["lr"] - eta) <= rtol * eta
        close(opt.last_step["delta"], delta)


def test_lqa_cap_applies_in_normalized_mode():
    """Far from the minimum the parabola wants a long step; the original caps η at 0.5."""
    p = qr.tensor(np.array([0.9, 4.0]), requires_grad=True)
    opt = qr.optim.LQA([p], direction="normalized")
    opt.step(lambda: ((p - qr.tensor(CENTER)) ** 2).sum() * 0.01)
    assert opt.last_step["eta_star"] > 0.5 and opt.last_step["lr"] == 0.5


def test_lqa_probes_change_nothing_and_see_no_grad(w0):
    """Probes run without a graph and without module-state updates; θ is restored exactly and
    ``.grad`` is the gradient at θ (the probes do not touch it). 3 closure calls per step."""
    p = qr.tensor(w0.copy(), requires_grad=True)
    calls = []

    def closure():
        calls.append((is_grad_enabled(), is_state_update_enabled(), p.data.copy()))
        return L_tensor(p)

    opt = qr.optim.LQA([p], lr=0.1)
    opt.step(closure)
    assert [c[:2] for c in calls] == [(True, True), (False, False), (False, False)]
    g = grad(w0)
    close(calls[1][2], w0 + 0.1 * g)
    close(calls[2][2], w0 - 0.1 * g)
    close(p.grad, g)
    close(p.data, w0 - opt.last_step["lr"] * g)


def test_lqa_non_finite_probe_raises_and_errors(w0):
    p = qr.tensor(w0.copy(), requires_grad=True)

    def closure():
        loss = L_tensor(p)
        return loss * float("nan") if np.max(np.abs(p.data)) > 10 else loss

    # the probes θ ± lr·∇L land at distance 20 from θ (|θ| <= √2), outside |w| <= 10 → NaN. (A fixed
    # lr = 100 left them inside when |∇L| < ~0.09, near the minimum: 16 of 39646 random starts.)
    opt = qr.optim.LQA([p], lr=20.0 / np.linalg.norm(grad(w0)))
    before = opt.state_dict()
    with pytest.raises(qr.optim.NonFiniteProbeError, match="probe"):
        opt.step(closure)
    assert np.array_equal(p.data, w0) and opt.state_dict().keys() == before.keys()
    assert opt.state_dict()["global_state"] == before["global_state"]
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    q = qr.tensor(w0.copy(), requires_grad=True)
    with pytest.raises(NonFiniteLossError):
        qr.optim.LQA([q]).step(lambda: L_tensor(q) * float("nan"))
    assert np.array_equal(q.data, w0)


def test_lqa_fallback_previous_keeps_the_last_learning_rate_like_the_original(w0):
    """The original's except-branch returns 0.01 but leaves the optimizer's lr as it was: the step
    then uses the previous learning rate (at the very first step: ``lr``, the initial one). The
    fallback is taken when η* is not finite although the probes are (here: a zero gradient in the
    normalized mode, where d = g/max|g| is undefined); a NaN probe raises instead (the bad-input
    rule of qlabref.optim.optimizer)."""
    p = qr.tensor(w0.copy(), requires_grad=True)
    flat = {"on": True}

    def closure():
        return (p * 0.0).sum() + 1.0 if flat["on"] else L_tensor(p)  # flat: zero gradient, finite loss

    opt = qr.optim.LQA([p], lr=0.1, direction="normalized", fallback_lr="previous")
    opt.step(closure)  # first step: no previous lr → lr = 0.1
    assert opt.last_step["fallback"] and opt.last_step["lr"] == 0.1
    close(p.data, w0)  # zero gradient: no move
    flat["on"] = False
    opt.step(closure)  # a good fit
    eta = opt.last_step["lr"]
    assert not opt.last_step["fallback"] and eta != 0.1
    flat["on"] = True
    opt.step(closure)  # failed fit → the previous step's η
    assert opt.last_step["fallback"] and opt.last_step["lr"] == eta
    num = qr.optim.LQA([qr.tensor(w0.copy(), requires_grad=True)], direction="normalized", fallback_lr=0.01)
    num.step(lambda: (num.params()[0] * 0.0).sum() + 1.0)
    assert num.last_step["fallback"] and num.last_step["lr"] == 0.01
    w = p.data.copy()
    with pytest.raises(qr.optim.NonFiniteProbeError):  # a NaN probe is not a fallback case
        opt.step(lambda: L_tensor(p) * float("nan") if not np.array_equal(p.data, w) else L_tensor(p))
    close(p.data, w)
    with pytest.raises(ValueError, match="fallback_lr"):
        qr.optim.LQA([p], fallback_lr="last")


# ------------------------------------------------------------------------------------------ Adam §1.5
def test_adam_efficient_form_first_two_steps(w0):
    """Kingma & Ba §2: θ ← θ − η√(1−β2^t)/(1−β1^t)·m/(√v + ε) (ε not bias-corrected)."""
    eta, b1, b2, eps = 0.01, 0.9, 0.999, 1e-3  # a large ε makes the two forms differ visibly
    w, m, v = w0.copy(), np.zeros(2), np.zeros(2)
    expected = []
    for t in (1, 2):
        g = grad(w)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - eta * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        expected.append(w.copy())
    out, _, _ = run(qr.optim.Adam, w0, lr=eta, eps=eps, form="efficient")
    close(out[0][0], expected[0])
    close(out[1][0], expected[1])
    torch_form, _, _ = run(qr.optim.Adam, w0, lr=eta, eps=eps)
    assert np.max(np.abs(torch_form[0][0] - expected[0])) > 1e-6


def test_l4_skips_parameters_without_grad(w0):
    """As the TF code filters variables without a gradient: no step, no EMA state."""
    p = qr.tensor(w0.copy(), requires_grad=True)
    idle = qr.tensor(np.ones(3), requires_grad=True)
    opt = qr.optim.L4Adam([p, idle])
    opt.step(lambda: L_tensor(p))
    assert np.array_equal(idle.data, np.ones(3)) and not opt.state.get(idle)


def test_sgd_hd_leaves_users_grad_alone(w0):
    """The original SGDHD adds weight decay to ``p.grad`` in place; we do not (same numbers)."""
    eta0, beta, wd = 0.1, 1e-3, 0.01
    p = qr.tensor(w0.copy(), requires_grad=True)
    opt = qr.optim.HGD([p], lr=eta0, hypergrad_lr=beta, weight_decay=wd)
    opt.step(lambda: L_tensor(p))
    close(p.grad, grad(w0))
    close(p.data, w0 - eta0 * (grad(w0) + wd * w0))
