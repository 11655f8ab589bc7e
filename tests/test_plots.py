"""Figures: inspect the matplotlib objects (contour sets, labelled lines, axes labels, titles), not pixels."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.contour import ContourSet  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

import qlabref as qr  # noqa: E402
from qlabref import plots  # noqa: E402
from qlabref.optim.optimizer import Optimizer  # noqa: E402


class GD(Optimizer):
    def __init__(self, params, lr=0.01):
        super().__init__(params, dict(lr=lr))

    def step(self, closure):
        loss = self.evaluate(closure)
        for p in self.params():
            p.data -= self.param_groups[0]["lr"] * p.grad
        self._finish_step({"loss": loss, "lr": self.param_groups[0]["lr"], "evals": 1})
        return loss


class Momentum(GD):
    """A second 'optimizer' so figures can be checked with several named lines."""

    def step(self, closure):
        loss = self.evaluate(closure)
        for p in self.params():
            v = self.state.setdefault(p, {"v": np.zeros_like(p.data)})
            v["v"] = 0.9 * v["v"] + p.grad
            p.data -= self.param_groups[0]["lr"] * v["v"]
        self._finish_step({"loss": loss, "lr": self.param_groups[0]["lr"], "evals": 1})
        return loss


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _labelled_lines(ax):
    return [line for line in ax.get_lines() if isinstance(line, Line2D) and not line.get_label().startswith("_")]


def _runs(fn="booth", start=(-8.0, -8.0)):
    return [
        qr.trajectory(fn, GD, start=start, steps=150, lr=0.02),
        qr.trajectory(fn, Momentum, start=start, steps=150, lr=0.005),
        qr.trajectory(fn, GD, start=start, steps=20, lr=0.3),  # leaves the domain
    ]


def _check_axes(ax):
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    assert ax.get_legend() is not None


@pytest.mark.parametrize("name", qr.functions.names())
def test_contour_figure_has_contours_one_line_per_run_minima_and_start(name):
    fn = qr.functions.get(name)
    runs = [qr.trajectory(fn, GD, steps=30, lr=1e-4), qr.trajectory(fn, Momentum, steps=30, lr=1e-4)]
    fig = plots.contour_figure(fn, runs)
    ax = fig.axes[0]
    _check_axes(ax)
    assert any(isinstance(c, ContourSet) for c in ax.collections), ax.collections
    lines = _labelled_lines(ax)
    assert len(lines) == len(runs)
    for line, r in zip(lines, runs):
        np.testing.assert_allclose(np.asarray(line.get_xydata()), r.path)
        assert r.optimizer in line.get_label()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith(("global minimum", "known minim")) for t in labels) and any(t.startswith("start") for t in labels)
    assert (ax.get_xlim(), ax.get_ylim()) == (tuple(fn.domain[0]), tuple(fn.domain[1]))
    cbar_axes = [a for a in fig.axes if a is not ax]
    assert cbar_axes and cbar_axes[0].get_ylabel().startswith("f(x, y)")


def test_log_levels_where_the_range_is_large():
    fig = plots.contour_figure("booth", [])
    cs = next(c for c in fig.axes[0].collections if isinstance(c, ContourSet))
    levels = np.asarray(cs.levels)
    ratios = levels[1:] / levels[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)  # geometric spacing
    assert levels[-1] / levels[0] > 1e6
    fig = plots.contour_figure("eggholder", [])
    cs = next(c for c in fig.axes[0].collections if isinstance(c, ContourSet))
    assert np.allclose(np.diff(cs.levels), np.diff(cs.levels)[0])  # linear for Eggholder's −960..1050


def test_a_run_that_left_the_domain_says_so_in_the_legend():
    runs = _runs()
    fig = plots.contour_figure("booth", runs)
    lines = _labelled_lines(fig.axes[0])
    assert "LEFT THE DOMAIN at t=1" in lines[2].get_label()
    assert "LEFT THE DOMAIN" not in lines[0].get_label()
    assert len(lines[2].get_xydata()) == 2  # drawn up to its first point outside; the rest is dotted, unlabelled


def test_trajectory_grid_one_panel_per_function():
    runs = {"booth": _runs()[:2], "himmelblau": [qr.trajectory("himmelblau", GD, steps=50, lr=0.01)],
            "eggholder": [qr.trajectory("eggholder", GD, steps=50, lr=1.0, target="local")]}
    fig = plots.trajectory_grid(runs)
    panels = [ax for ax in fig.axes if ax.get_title() in ("Booth", "Himmelblau", "Eggholder")]
    assert len(panels) == 3
    for ax, (name, rs) in zip(panels, runs.items()):
        assert any(isinstance(c, ContourSet) for c in ax.collections)
        assert len(_labelled_lines(ax)) == len(rs)
        _check_axes(ax)
    assert fig._suptitle is not None and fig._suptitle.get_text()


def test_curves_figure_loss_gap_and_learning_rate():
    runs = _runs()[:2]
    fig = plots.curves_figure(runs)
    ax1, ax2 = fig.axes
    for ax in (ax1, ax2):
        _check_axes(ax)
    assert ax1.get_yscale() == "log" and ax2.get_yscale() == "log"
    run_lines = [line for line in _labelled_lines(ax1) if not line.get_label().startswith("tolerance")]
    assert len(run_lines) == 2 and len(_labelled_lines(ax2)) == 2
    np.testing.assert_allclose(_labelled_lines(ax2)[0].get_ydata(), runs[0].lrs)


def test_quadratic_fit_figure_marks_pre_lr_alpha_star_and_landing():
    fn = qr.functions.himmelblau
    theta = np.array([3.5, 3.0])
    g = fn.grad(theta)
    a0, a1, pre = fn.f(theta), -float(g @ g), 0.002
    a2 = (fn.f(theta - pre * g) - a0 - a1 * pre) / pre**2
    assert a2 > 0
    star = -a1 / (2 * a2)
    alphas = np.linspace(0, 2 * star, 50)
    gv = [fn.f(theta - a * g) for a in alphas]
    fig = plots.quadratic_fit_figure(alphas, gv, a0, a1, a2, pre, star, star, g_lr=fn.f(theta - star * g))
    ax = fig.axes[0]
    _check_axes(ax)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("true g(α)") for t in labels)
    assert any(t.startswith("fitted g₁(α)") for t in labels)
    assert any(t.startswith("ᾱ = ") for t in labels)
    assert any(t.startswith("α* = ") for t in labels)
    assert any(t.startswith("step lands at") for t in labels)
    fitted = next(line for line in ax.get_lines() if line.get_label().startswith("fitted"))
    np.testing.assert_allclose(fitted.get_ydata(), a0 + a1 * alphas + a2 * alphas**2)
    # fallback case (a2 <= 0): no α* marker, the label says fallback
    fig = plots.quadratic_fit_figure(alphas, gv, a0, a1, -1.0, pre, float("nan"), pre, fallback=True)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert not any(t.startswith("α* = ") for t in labels) and any("fallback" in t for t in labels)


def test_save_and_animate(tmp_path):
    runs = _runs()[:2]
    png = plots.save(plots.contour_figure("booth", runs), tmp_path / "sub" / "booth.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    gif = plots.animate_trajectories("booth", runs, tmp_path / "booth.gif", max_frames=4, dpi=40)
    assert open(gif, "rb").read(4) == b"GIF8"


# ------------------------------------------------------------------ bad input: diverging runs, axes
def test_a_diverging_run_is_clipped_marked_and_named_so_the_others_stay_readable():
    from qlabref.trajectory import trajectory

    fn = qr.functions.himmelblau
    good = trajectory(fn, "qlabgrad", steps=60)
    bad = trajectory(fn, "sgd", steps=60, lr=0.2)  # overflows within a few steps
    assert bad.nonfinite is not None or bad.losses[-1] > 1e100
    fig = plots.curves_figure([good, bad])
    ax = fig.axes[0]
    top = ax.get_ylim()[1]
    assert top < 1e8, "the diverging run still stretches the axis"  # the good run starts near 1e2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("DIVERGED" in t and "sgd" in t for t in labels)
    assert not any("DIVERGED" in t and "qlabgrad" in t for t in labels)
    for a in fig.axes[:2]:
        assert a.get_xlim()[0] == 0  # iterations start at 0: no negative ticks
        assert all(t >= 0 for t in a.get_xticks() if a.get_xlim()[0] <= t <= a.get_xlim()[1])
    plots._plt().close(fig)


def test_eggholder_local_target_is_labelled_and_marked_and_qlabgrad_is_on_top():
    from qlabref.trajectory import trajectory

    eg = qr.functions.eggholder
    runs = [trajectory(eg, "qlabgrad", steps=200, target="local"), trajectory(eg, "adam", steps=200, lr=3.0, target="local")]
    assert runs[0].hit is not None
    fig = plots.contour_figure(eg, runs)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("global minimum") for t in labels)
    q = [t for t in labels if t.startswith("qlabgrad")][0]
    assert "local minimum" in q and f"t={runs[0].hit}" in q
    lines = {line.get_label().split()[0]: line for line in ax.lines if line.get_label().startswith(("qlabgrad", "adam"))}
    assert lines["qlabgrad"].get_zorder() > lines["adam"].get_zorder()
    inset = [a for a in ax.child_axes]
    if inset:  # the zoom: QLABGrad on top there too
        z = sorted(inset[0].lines, key=lambda line: line.get_zorder())
        assert z[-1].get_color() == plots.OPTIMIZER_COLORS["qlabgrad"]
    plots._plt().close(fig)
