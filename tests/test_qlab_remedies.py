"""QLABGrad's ``max_lr_factor`` (a remedy for minibatch blow-ups, not the paper's algorithm): on a
quadratic, α* is the exact line-search step gᵀg / gᵀAg (closed form), so the capped step is known."""
from __future__ import annotations

import numpy as np
import pytest

import qlabref as qr
from qlabref.optim import QLABGrad


def quad(rng, n=6):
    Q = rng.standard_normal((n, n))
    A = Q @ Q.T + n * np.eye(n)
    return A


@pytest.mark.parametrize("factor,ratio", [(1.0, 4.0), (10.0, 4.0), (2.0, 0.5), (3.0, 4.0)])
def test_max_lr_factor_caps_at_a_multiple_of_pre_lr(rng, factor, ratio):
    A = quad(rng)
    theta0 = rng.standard_normal(6)
    g = A @ theta0
    exact = float(g @ g / (g @ A @ g))  # exact line search on ½θᵀAθ = Eq. (10) on a quadratic
    pre = exact / ratio
    p = qr.tensor(theta0.copy(), requires_grad=True)
    Aq = qr.tensor(A)
    opt = QLABGrad([p], pre_lr=pre, findplr="never", max_lr_factor=factor)
    opt.step(lambda: ((p @ Aq) @ p) * 0.5)
    lr = min(exact, factor * pre)
    # θ to the lr's own 1e-12, propagated: |Δθ| <= 1e-12·lr·|g| (a fixed atol 1e-14 failed 4 of 81449
    # draws, where a coordinate of θ − lr·g cancels to ~1e-3 and the lr's last bits show in it)
    np.testing.assert_allclose(p.data, theta0 - lr * g, rtol=1e-12, atol=1e-12 * lr * np.abs(g).max())
    assert opt.last_step["lr"] == pytest.approx(lr, rel=1e-12)
    assert opt.last_step["alpha_star"] == pytest.approx(exact, rel=1e-10)  # α* itself is reported uncapped
    assert opt.last_step["capped"] == (exact > factor * pre)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "1", True])
def test_max_lr_factor_bad_values(bad):
    with pytest.raises(ValueError, match="max_lr_factor"):
        QLABGrad([qr.tensor(np.zeros(2), requires_grad=True)], max_lr_factor=bad)
