"""2-D test functions: analytic gradient = autodiff = central differences; minima; shapes; errors."""
from __future__ import annotations

import numpy as np
import pytest

import qlabref as qr
from qlabref import functions as F

ALL = F.names()


def _random_points(fn, rng, n):
    lo, hi = fn.bounds
    return lo + (hi - lo) * rng.random((n, 2))


def _away_from_kinks(fn, pts):
    """Eggholder is not differentiable on two lines; keep sample points a little away from them
    (central differences with eps = 1e-6 straddling a kink would compare against nonsense)."""
    if fn.name != "eggholder":
        return pts
    u = pts[:, 0] / 2 + pts[:, 1] + 47
    v = pts[:, 0] - pts[:, 1] - 47
    return pts[(np.abs(u) > 1e-2) & (np.abs(v) > 1e-2)]


@pytest.mark.parametrize("name", ALL)
def test_analytic_gradient_matches_autodiff_and_central_differences(name, rng):
    fn = F.get(name)
    pts = _away_from_kinks(fn, _random_points(fn, rng, 25))
    assert len(pts) >= 20
    for xy in pts:
        p = qr.tensor(xy.copy(), requires_grad=True)
        loss = fn.f(p)
        assert isinstance(loss, qr.Tensor) and loss.shape == ()
        assert loss.item() == pytest.approx(fn.f(xy), rel=1e-13, abs=1e-12)
        loss.backward()
        autodiff = p.grad.copy()
        analytic = fn.grad(xy)
        # step relative to the domain scale (Eggholder's box is 1024 wide)
        eps = 1e-6 * max(1.0, float(np.max(np.abs(xy))))
        central = qr.numerical_grad(fn.f, [qr.tensor(xy.copy(), requires_grad=True)], 0, eps=eps)
        assert qr.relative_error(analytic, autodiff) < 1e-12, (xy, analytic, autodiff)
        assert qr.relative_error(analytic, central) < 1e-6, (xy, analytic, central)


@pytest.mark.parametrize("name", ALL)
def test_vectorised_values_and_gradients_match_pointwise(name, rng):
    fn = F.get(name)
    grid = _random_points(fn, rng, 12).reshape(3, 4, 2)
    vals = fn.f(grid)
    grads = fn.grad(grid)
    assert vals.shape == (3, 4) and grads.shape == (3, 4, 2)
    for idx in np.ndindex(3, 4):
        assert vals[idx] == pytest.approx(fn.f(grid[idx]), rel=1e-14)
        np.testing.assert_allclose(grads[idx], fn.grad(grid[idx]), rtol=1e-14)
    assert isinstance(fn.f(grid[0, 0]), float)


@pytest.mark.parametrize("name", [n for n in ALL if n != "eggholder"])
def test_known_minima_are_stationary_with_the_stated_value(name):
    fn = F.get(name)
    for m, v in zip(fn.minima, fn.minima_values):
        assert np.linalg.norm(fn.grad(m)) < 1e-12, (m, fn.grad(m))
        assert v == pytest.approx(0.0, abs=1e-12)
        assert fn.in_domain(m)
    assert fn.f_min == pytest.approx(0.0, abs=1e-12)


def test_reference_minima_locations():
    np.testing.assert_allclose(F.booth.minima, [[1, 3]])
    np.testing.assert_allclose(F.rosenbrock.minima, [[1, 1]])
    np.testing.assert_allclose(F.beale.minima, [[3, 0.5]])
    published = [(3, 2), (-2.805118, 3.131313), (-3.779310, -3.283186), (3.584428, -1.848127)]
    np.testing.assert_allclose(F.himmelblau.minima, published, atol=1e-6)
    assert F.himmelblau.f(F.himmelblau.local_maximum) == pytest.approx(181.617, abs=1e-3)
    assert np.linalg.norm(F.himmelblau.grad(F.himmelblau.local_maximum)) < 1e-10
    # Booth's Hessian [[10, 8], [8, 10]]: gradient is linear, check it on two points
    g0, g1 = F.booth.grad(np.array([0.0, 0.0])), F.booth.grad(np.array([1.0, 0.0]))
    np.testing.assert_allclose(g1 - g0, [10, 8])


def test_eggholder_boundary_minimum_has_nonzero_x_slope():
    fn = F.eggholder
    m = np.array([512.0, 404.2319])
    assert fn.f(m) == pytest.approx(-959.6407, abs=1e-4)
    assert fn.f_min == pytest.approx(-959.640663, abs=1e-6)
    gx, gy = fn.grad(m)
    assert gx == pytest.approx(-3.39, abs=0.01)  # the boundary trap: not a stationary point
    assert abs(gy) < 1e-3
    # the polished minimum is stationary in y (to the precision of the polish)
    assert abs(fn.grad(fn.minima[0])[1]) < 1e-6
    # the function keeps decreasing outside the box
    assert fn.f(np.array([513.0, 404.2319])) < fn.f_min
    assert fn.in_domain(fn.minima[0]) and not fn.in_domain(np.array([513.0, 404.2319]))


def test_eggholder_gradient_follows_sign_convention_near_kinks():
    fn = F.eggholder
    # just either side of x/2 + y + 47 = 0 the y-slope is large and flips sign with sign(u)
    x = 100.0
    y_kink = -47 - x / 2
    left = fn.grad(np.array([x, y_kink - 1e-8]))
    right = fn.grad(np.array([x, y_kink + 1e-8]))
    assert abs(left[1]) > 100 and abs(right[1]) > 100
    assert np.sign(left[1]) != np.sign(right[1])
    # exactly on the kink: the unbounded term is defined as 0 (finite), autodiff gives NaN there
    assert np.all(np.isfinite(fn.grad(np.array([x, y_kink]))))


def test_get_and_errors():
    assert F.get("Booth") is F.booth
    assert F.get(F.beale) is F.beale
    assert qr.functions.booth is F.booth
    assert F.names()[:3] == ["booth", "himmelblau", "eggholder"]
    with pytest.raises(ValueError, match="unknown test function 'bohth'.*booth.*himmelblau"):
        F.get("bohth")
    with pytest.raises(ValueError, match=r"booth.f: expected an array of shape \(2,\).*\(3,\)"):
        F.booth.f(np.zeros(3))
    with pytest.raises(ValueError, match=r"booth.grad: .*\(2, 3\)"):
        F.booth.grad(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="Tensor of shape"):
        F.booth.f(qr.tensor(np.zeros(3)))


def test_projection_and_domain_helpers():
    fn = F.booth
    np.testing.assert_allclose(fn.project(np.array([12.0, -11.0])), [10.0, -10.0])
    assert fn.in_domain(np.array([10.0, -10.0]))
    i, point, value = F.himmelblau.nearest_minimum(np.array([3.5, -2.0]))
    assert i == 3 and value == pytest.approx(0.0, abs=1e-12)
