"""qr.trajectory: path/loss/lr bookkeeping, first hit, domain exit, non-finite stop, projection,
Eggholder's boundary trap, sweeps; and QLABGrad against gradient descent on Booth."""
from __future__ import annotations

import numpy as np
import pytest

import qlabref as qr
from qlabref.optim.optimizer import Optimizer
from qlabref.trajectory import sample_starts, summarize_counts, sweep


class GD(Optimizer):
    """Plain gradient descent for testing the machinery independently of qr.optim's baselines."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, dict(lr=lr))

    def step(self, closure):
        loss = self.evaluate(closure)
        lr = self.param_groups[0]["lr"]
        for p in self.params():
            p.data -= lr * p.grad
        self._finish_step({"loss": loss, "lr": lr, "evals": 1})
        return loss


def _gd_numpy(fn, start, lr, steps, tol=1e-6):
    """Independent oracle: gradient descent with the analytic gradient; first t with f − f_min < tol."""
    x = np.array(start, dtype=np.float64)
    if fn.f(x) - fn.f_min < tol:
        return 0
    with np.errstate(all="ignore"):
        for t in range(1, steps + 1):
            x = x - lr * fn.grad(x)
            fx = fn.f(x)
            if not np.isfinite(fx):
                return None
            if fx - fn.f_min < tol:
                return t
    return None


def test_result_bookkeeping_matches_an_independent_gd_loop():
    fn = qr.functions.booth
    r = qr.trajectory(fn, GD, start=(-8.0, -8.0), steps=400, lr=0.03)
    assert r.path.shape == (401, 2) and r.losses.shape == (401,) and r.lrs.shape == (400,)
    np.testing.assert_allclose(r.losses, fn.f(r.path), rtol=1e-12, atol=1e-20)
    np.testing.assert_allclose(r.lrs, 0.03)
    x = np.array([-8.0, -8.0])
    for t in range(1, 401):
        x = x - 0.03 * fn.grad(x)
    np.testing.assert_allclose(r.path[-1], x, rtol=1e-12, atol=1e-12)
    assert r.hit == _gd_numpy(fn, (-8.0, -8.0), 0.03, 400)
    assert r.hit is not None and r.losses[r.hit] < 1e-6 and r.losses[r.hit - 1] >= 1e-6
    assert r.left_domain is None and r.nonfinite is None and r.stopped == "budget"
    assert r.settings == {"lr": 0.03} and r.opt_defaults["lr"] == 0.03
    assert "hit at" in r.summary()


def test_stop_at_hit_and_gtol():
    r = qr.trajectory("booth", GD, start=(-8.0, -8.0), steps=5000, lr=0.03, stop_at_hit=True)
    assert r.stopped == "hit" and r.n_steps == r.hit and len(r.path) == r.hit + 1
    r = qr.trajectory("booth", GD, start=(-8.0, -8.0), steps=5000, lr=0.03, gtol=1e-8)
    assert r.stopped == "stationary" and r.n_steps < 5000
    assert np.linalg.norm(qr.functions.booth.grad(r.final)) < 1e-8


def test_tolerance_and_targets_are_configurable():
    fn = qr.functions.himmelblau
    loose = qr.trajectory(fn, GD, start=(0.0, 0.0), steps=300, lr=0.01, tol=1e-2)
    tight = qr.trajectory(fn, GD, start=(0.0, 0.0), steps=300, lr=0.01, tol=1e-10)
    assert loose.hit is not None and tight.hit is not None and loose.hit < tight.hit
    # the nearest known minimum is the one the run went to
    np.testing.assert_allclose(tight.target_point, (3.0, 2.0))
    explicit = qr.trajectory(fn, GD, start=(0.0, 0.0), steps=300, lr=0.01, target=1.0, tol=1e-9)
    assert explicit.hit == int(np.flatnonzero(explicit.losses < 1.0)[0])


def test_domain_exit_and_nonfinite_are_reported_not_clipped():
    fn = qr.functions.booth
    with _no_warning_context():
        r = qr.trajectory(fn, GD, start=(-8.0, -8.0), steps=2000, lr=0.3)  # 0.3 > 2/M = 0.111: diverges
    assert r.left_domain == 1
    assert r.nonfinite is not None and r.stopped == "nonfinite"
    assert np.all(np.isfinite(r.path)) and len(r.path) == r.nonfinite  # stops at the last finite point
    assert r.hit is None and not fn.in_domain(r.path[1])
    assert np.max(np.abs(r.path)) > 1e100  # the raw path, not clipped
    assert "LEFT THE DOMAIN" in r.summary() and "NON-FINITE" in r.summary()


class _no_warning_context:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error")  # overflow must not leak RuntimeWarnings to users

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_projection_is_explicit_and_counted():
    fn = qr.functions.booth
    r = qr.trajectory(fn, GD, start=(-8.0, -8.0), steps=50, lr=0.3, project=True)
    assert r.projected and r.projections > 0
    assert r.left_domain is None and r.nonfinite is None
    lo, hi = fn.bounds
    assert np.all(r.path >= lo) and np.all(r.path <= hi)


def test_eggholder_boundary_trap():
    fn = qr.functions.eggholder
    start = (505.0, 404.0)  # next to the global minimum, on the steep side of the boundary
    r = qr.trajectory(fn, GD, start=start, steps=200, lr=1.0, target="global")
    assert r.left_domain is not None  # the slope −3.39 in x pushes it out of the box
    assert np.min(r.losses) < fn.f_min  # outside the box the function keeps decreasing...
    assert r.hit is None  # ...but a point outside the box never counts as reaching the optimum
    # projected gradient descent stays in the box and reaches the boundary minimum
    p = qr.trajectory(fn, GD, start=start, steps=2000, lr=0.3, target="global", project=True)
    assert p.left_domain is None and p.hit is not None
    np.testing.assert_allclose(p.path[p.hit], fn.minima[0], atol=1e-2)


def test_eggholder_local_target_is_the_minimum_the_run_ended_in():
    fn = qr.functions.eggholder
    r = qr.trajectory(fn, GD, start=(300.0, 200.0), steps=3000, lr=3.0, target="local", gtol=1e-10)
    assert r.target_value is not None and fn.in_domain(r.target_point)
    assert np.linalg.norm(fn.grad(r.target_point)) < 1e-5  # an interior stationary point
    assert r.target_value > fn.f_min + 100  # a local, not the global, minimum
    assert r.hit is not None and r.losses[r.hit] - r.target_value < 1e-6
    with pytest.raises(ValueError, match="stop_at_hit"):
        qr.trajectory(fn, GD, steps=10, target="local", stop_at_hit=True)


def test_errors_name_the_thing():
    with pytest.raises(ValueError, match=r"start point for booth must have shape \(2,\), got shape \(3,\)"):
        qr.trajectory("booth", GD, start=(1.0, 2.0, 3.0), steps=3)
    with pytest.raises(ValueError, match="unknown test function 'boot'"):
        qr.trajectory("boot", GD, steps=3)
    with pytest.raises(ValueError, match="unknown optimizer 'nosuchopt'"):
        qr.trajectory("booth", "nosuchopt", steps=3)
    with pytest.raises(ValueError, match="target must be one of"):
        qr.trajectory("booth", GD, steps=3, target="closest")


def test_sample_starts_and_summaries():
    fn = qr.functions.himmelblau
    s1, s2 = sample_starts(fn, 6, seed=3), sample_starts(fn, 6, seed=3)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(s1[0], fn.default_start)
    assert all(fn.in_domain(s) for s in s1)
    st = summarize_counts([10, None, 30, 20, None], budget=100)
    assert st["reached"] == 3 and st["n"] == 5 and st["median"] == 20 and st["min"] == 10 and st["max"] == 30
    assert summarize_counts([None], 5)["median"] is None


def test_sweep_picks_the_setting_with_most_hits_then_lowest_median():
    fn = qr.functions.booth
    starts = sample_starts(fn, 3, seed=0)
    sw = sweep(fn, GD, starts, 600, [{"lr": 0.3}, {"lr": 0.01}, {"lr": 0.05}], stop_at_hit=True)
    assert [s["lr"] for s in sw.settings] == [0.3, 0.01, 0.05]
    assert sw.stats(0)["reached"] == 0  # diverges
    assert sw.best_settings == {"lr": 0.05}
    for r, s in zip(sw.best_runs(), starts):
        assert r.hit == _gd_numpy(fn, s, 0.05, 600)


def test_qlabgrad_beats_gradient_descent_at_its_best_fixed_lr_on_booth(rng):
    if "qlabgrad" not in qr.optim.names():
        pytest.skip("qr.optim has no 'qlabgrad' registered in this build")
    fn = qr.functions.booth
    grid = (0.005, 0.01, 0.02, 0.05, 0.08, 0.1, 0.11)  # 2/M = 0.111
    starts = [np.array([-8.0, -8.0])] + [fn.bounds[0] * 0.8 + 1.6 * fn.bounds[1] * rng.random(2) for _ in range(3)]
    for start in starts:
        gd_counts = [_gd_numpy(fn, start, lr, 5000) for lr in grid]
        best_gd = min(c for c in gd_counts if c is not None)
        r = qr.trajectory(fn, "qlabgrad", start=start, steps=5000, stop_at_hit=True)
        assert r.hit is not None, r.summary()
        # never slower than the best fixed lr of the grid; over 300 random starts it was faster on 97% and
        # tied on 3% (so a strict < on random starts fails now and then); from (−8, −8) strictly faster
        assert r.hit <= best_gd, (start, r.hit, dict(zip(grid, gd_counts)))
        if start is starts[0]:
            assert r.hit < best_gd, (start, r.hit, dict(zip(grid, gd_counts)))
