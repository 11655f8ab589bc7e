"""Figures: trajectories on contour plots (the paper's Figure 2), the fitted quadratic of one QLABGrad
step (the paper's Figure 1), loss and learning-rate curves, and an animated GIF of trajectories.

Every function returns the matplotlib ``Figure`` (tests inspect its artists; callers save it with
``save(fig, path)``). Every figure has labelled axes, a title and a legend. Matplotlib is imported
here only, so ``import qlabref`` never needs it; use the ``Agg`` backend on machines without a display.

Conventions on the contour plots: filled contours of f − f_min on log-spaced levels where the values
span several decades (Booth, Himmelblau, Rosenbrock, Beale), linear levels for Eggholder; known
minima are white stars, the start point a blue dot (as in the paper), each optimizer one line with
its settings in the legend. The axes are the function's domain box: a path that leaves it runs off
the picture, and its legend entry says "left the domain at t=…" (nothing is clipped). QLABGrad's
path (the paper's subject) is drawn on top of the others, in the main axes and in the zoom inset.
When a run's target is the local minimum it ended in (Eggholder), that minimum is marked with a
diamond in the run's colour and the legend says "reached its local minimum"; the star is the global
minimum.

Curves (``curves_figure``): a diverging run (non-finite, left the domain for good, or its gap grew
far above where it started) would stretch the log-scale axis over hundreds of decades and flatten
every other run; it is drawn up to the top of the others' range, clipped there, marked with a ▲ at
the first clipped point, and its legend entry says "DIVERGED, clipped". Iteration axes start at 0.
"""
from __future__ import annotations

import numpy as np

from . import functions as _functions

__all__ = [
    "contour_figure",
    "trajectory_grid",
    "curves_figure",
    "quadratic_fit_figure",
    "animate_trajectories",
    "save",
    "OPTIMIZER_COLORS",
]

#: fixed colours so an optimizer looks the same in every figure
OPTIMIZER_COLORS = {"qlabgrad": "#d62728", "sgd": "#1f77b4", "adam": "#2ca02c", "gd": "#9467bd"}
_EXTRA_COLORS = ["#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def _plt():
    # matplotlib falls back to the Agg backend by itself on machines without a display
    import matplotlib.pyplot as plt

    return plt


def _color(name, i):
    return OPTIMIZER_COLORS.get(name, _EXTRA_COLORS[i % len(_EXTRA_COLORS)])


def save(fig, path, dpi=130):
    """Save ``fig`` to ``path`` (parent folders created) and close it. Returns the path as a string."""
    from pathlib import Path

    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _grid(fn, n=300, xlim=None, ylim=None):
    (x0, x1), (y0, y1) = fn.domain
    if xlim is not None:
        x0, x1 = xlim
    if ylim is not None:
        y0, y1 = ylim
    X, Y = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
    Z = fn.f(np.stack([X, Y], axis=-1))
    return X, Y, Z


def _draw_surface(ax, fn, n_levels=30, xlim=None, ylim=None, colorbar=True, image=False):
    """Filled contours plus thin contour lines of ``fn`` on ``ax``; returns the filled ContourSet.
    ``image=True`` draws the colours as an image instead of filled contours (much faster to redraw,
    used for animation frames)."""
    from matplotlib.colors import LogNorm

    X, Y, Z = _grid(fn, n=200 if image else 300, xlim=xlim, ylim=ylim)
    if image:
        ext = (X.min(), X.max(), Y.min(), Y.max())
        if fn.log_levels:
            D = np.maximum(Z - fn.f_min, max(float(np.max(Z - fn.f_min)) * 1e-7, 1e-6))
            im = ax.imshow(D, origin="lower", extent=ext, norm=LogNorm(), cmap="viridis", alpha=0.85, aspect="auto")
            ax.contour(X, Y, D, levels=np.geomspace(D.min(), D.max(), n_levels // 2), colors="k", linewidths=0.3, alpha=0.5)
        else:
            im = ax.imshow(Z, origin="lower", extent=ext, cmap="viridis", alpha=0.85, aspect="auto")
            ax.contour(X, Y, Z, levels=n_levels // 2, colors="k", linewidths=0.3, alpha=0.5)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        return im
    if fn.log_levels:
        D = Z - fn.f_min
        top = float(np.max(D))
        floor = max(top * 1e-7, 1e-6)
        D = np.maximum(D, floor)
        levels = np.geomspace(floor, top * 1.0001, n_levels)
        cs = ax.contourf(X, Y, D, levels=levels, norm=LogNorm(vmin=floor, vmax=top), cmap="viridis", alpha=0.85)
        ax.contour(X, Y, D, levels=levels[::2], norm=LogNorm(vmin=floor, vmax=top), colors="k", linewidths=0.3, alpha=0.5)
        clabel = "f(x, y) − f_min (log scale)"
    else:
        levels = np.linspace(float(Z.min()), float(Z.max()), n_levels)
        cs = ax.contourf(X, Y, Z, levels=levels, cmap="viridis", alpha=0.85)
        ax.contour(X, Y, Z, levels=levels[::2], colors="k", linewidths=0.3, alpha=0.5)
        clabel = "f(x, y)"
    if colorbar:
        cb = ax.figure.colorbar(cs, ax=ax, shrink=0.85)
        if fn.log_levels:
            from matplotlib.ticker import LogFormatterSciNotation, NullLocator

            lo_e, hi_e = int(np.ceil(np.log10(levels[0]))), int(np.floor(np.log10(levels[-1])))
            step = max(1, (hi_e - lo_e) // 6)
            cb.set_ticks(10.0 ** np.arange(lo_e, hi_e + 1, step))
            cb.ax.yaxis.set_major_formatter(LogFormatterSciNotation())
            cb.ax.yaxis.set_minor_locator(NullLocator())
        cb.set_label(clabel)
    ax.set_xlim(X.min(), X.max())
    ax.set_ylim(Y.min(), Y.max())
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_aspect("equal" if fn.name != "rosenbrock" else "auto")
    return cs


def _mark_minima(ax, fn):
    m = fn.minima
    if len(m) == 1:
        label = f"global minimum f={float(np.min(fn.minima_values)):.6g}"
    else:
        label = "known minima" if np.ptp(fn.minima_values) > 1e-9 else f"known minima (f={float(fn.minima_values[0]):.6g})"
    ax.scatter(m[:, 0], m[:, 1], marker="*", s=220, c="white", edgecolors="k", linewidths=0.8, zorder=6,
               clip_on=False, label=label)


def _local_target(r):
    """True when the run's reference is the local minimum it ended in (not a known minimum)."""
    return r.target == "local" and r.target_point is not None


def _beyond_paper(name):
    """Methods after the paper (``qr.optim.is_beyond_paper``): drawn dashed, labelled as such."""
    from .optim import is_beyond_paper

    return is_beyond_paper(name)


def _ls(name):
    return "--" if _beyond_paper(name) else "-"


def _label(r):
    return r.label + (" [beyond the paper]" if _beyond_paper(r.optimizer) else "")


def _run_label(r):
    label = _label(r)
    if r.hit is not None and _local_target(r):
        label += f" — reached its local minimum (◆, f={r.target_value:.6g}) at t={r.hit}"
    elif r.hit is not None:
        label += f" — reached at t={r.hit}"
    else:
        label += f" — not reached in {r.n_steps}"
    if r.left_domain is not None:
        label += f"; LEFT THE DOMAIN at t={r.left_domain}"
    if r.nonfinite is not None:
        label += f"; non-finite at t={r.nonfinite}"
    if r.projected and r.projections:
        label += f"; projected {r.projections}×"
    return label


def _draw_paths(ax, results, markers=True):
    """One labelled line per run. A run that left the domain and did not come back is drawn solid up
    to its first point outside (so it visibly runs off the picture) and thin and dotted afterwards
    (unlabelled), so a diverging run does not paint over the picture; the legend entry says where it
    left."""
    lines = []
    for i, r in enumerate(results):
        color = _color(r.optimizer, i)
        ends_inside = r.nonfinite is None and r.in_domain_at_end
        cut = len(r.path) if (r.left_domain is None or ends_inside) else r.left_domain + 1
        head = r.path[:cut]
        z = _zorder(r)  # the subject of the paper is drawn on top
        (line,) = ax.plot(head[:, 0], head[:, 1], _ls(r.optimizer), color=color, lw=2.0 if z else 1.6, alpha=0.95,
                          zorder=5 + z, marker="o" if markers else None, markersize=2.5,
                          markevery=max(1, len(head) // 60), label=_run_label(r))
        if cut < len(r.path):
            tail = r.path[cut - 1:]
            ax.plot(tail[:, 0], tail[:, 1], ":", color=color, lw=0.7, alpha=0.5, zorder=4)
        if ends_inside:
            ax.scatter([r.path[-1, 0]], [r.path[-1, 1]], marker="X", s=60, color=color, edgecolors="k",
                       linewidths=0.6, zorder=7 + z)
        if r.hit is not None and _local_target(r):
            ax.scatter([r.target_point[0]], [r.target_point[1]], marker="D", s=70, facecolors="none",
                       edgecolors=color, linewidths=1.6, zorder=7.2 + z)
        lines.append(line)
    return lines


def _zorder(r):
    """0.5 extra for QLABGrad, so that its path is drawn over the others."""
    return 0.5 if r.optimizer == "qlabgrad" else 0.0


def contour_figure(fn, results=(), title=None, n_levels=30, xlim=None, ylim=None, figsize=(8.5, 6.8), ax=None,
                   zoom=True):
    """Contour plot of ``fn`` with one line per trajectory result (``qr.trajectory`` output).

    Known minima are white stars, the start point (of the first result) a blue dot, each path's end an
    X in the path's colour. ``xlim``/``ylim`` zoom in (default: the domain); with ``zoom`` an inset
    magnifies the paths when they all stay within 20% of the domain width. Returns the Figure.
    """
    fn = _functions.get(fn)
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    _draw_surface(ax, fn, n_levels=n_levels, xlim=xlim, ylim=ylim)
    _mark_minima(ax, fn)
    results = list(results)
    starts = {tuple(np.round(r.start, 12)) for r in results}
    for j, s in enumerate(sorted(starts)):
        ax.scatter([s[0]], [s[1]], s=90, c="#1f3bff", edgecolors="white", linewidths=1.2, zorder=8,
                   label=f"start ({s[0]:.4g}, {s[1]:.4g})" if len(starts) == 1 else ("start points" if j == 0 else None))
    _draw_paths(ax, results)
    if title is None:
        title = f"{fn.name.capitalize()}: {fn.formula}"
    ax.set_title(title, fontsize=10)
    _legend_below(ax)
    if zoom and results and xlim is None and ylim is None:
        _zoom_inset(ax, fn, results)
    return fig


def _zoom_inset(ax, fn, results, threshold=0.2):
    """When every path stays in a small part of the domain (Eggholder's box is 1024 wide), add an
    inset that zooms on the paths, so the steps can be seen."""
    lo, hi = fn.bounds
    pts = np.concatenate([r.path[np.all((r.path >= lo) & (r.path <= hi), axis=1)] for r in results])
    if len(pts) < 2:
        return None
    a, b = pts.min(axis=0), pts.max(axis=0)
    span = float(np.max(b - a))
    width = float(np.max(hi - lo))
    if span > threshold * width:
        return None
    half = max(span * 0.6, 0.01 * width)
    c = (a + b) / 2
    # the corner of the axes farthest from the paths
    frac = (c - lo) / (hi - lo)
    x0 = 0.1 if frac[0] > 0.5 else 0.58
    y0 = 0.1 if frac[1] > 0.5 else 0.56
    inset = ax.inset_axes([x0, y0, 0.36, 0.36])
    inset.set_zorder(20)
    _draw_surface(inset, fn, n_levels=20, xlim=(c[0] - half, c[0] + half), ylim=(c[1] - half, c[1] + half), colorbar=False)
    for i, r in enumerate(results):
        z = _zorder(r)
        inset.plot(r.path[:, 0], r.path[:, 1], "-o", color=_color(r.optimizer, i), lw=1.6 if z else 1.2,
                   markersize=2, zorder=5 + z)
        if r.hit is not None and _local_target(r):
            inset.scatter([r.target_point[0]], [r.target_point[1]], marker="D", s=50, facecolors="none",
                          edgecolors=_color(r.optimizer, i), linewidths=1.4, zorder=7 + z)
        inset.scatter([r.start[0]], [r.start[1]], s=40, c="#1f3bff", edgecolors="white", zorder=8)
    inset.set_xlim(c[0] - half, c[0] + half)
    inset.set_ylim(c[1] - half, c[1] + half)
    inset.set_xlabel("x (zoom)", fontsize=7)
    inset.set_ylabel("y (zoom)", fontsize=7)
    inset.set_title("zoom on the paths", fontsize=7)
    inset.tick_params(labelsize=6)
    ax.indicate_inset_zoom(inset, edgecolor="white")
    return inset


def _legend_below(ax):
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.1), fontsize=7.5, framealpha=0.9, ncol=1)


def trajectory_grid(runs_by_function, title="Optimizer trajectories on the paper's test functions", ncols=3):
    """One contour panel per function, like the paper's Figure 2. ``runs_by_function``: dict
    name → list of TrajectoryResult. Returns the Figure."""
    plt = _plt()
    names = list(runs_by_function)
    ncols = min(ncols, len(names))
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 6.6 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        contour_figure(name, runs_by_function[name], ax=ax, title=f"{name.capitalize()}")
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _diverged(r, gap):
    """A run that would stretch a log axis: non-finite, left the domain for good, or its gap ended far
    (1e3×) above where it started and above every value it had before."""
    if r.nonfinite is not None or (r.left_domain is not None and not r.in_domain_at_end):
        return True
    finite = gap[np.isfinite(gap)]
    return bool(len(finite) > 1 and finite[-1] > 1e3 * max(finite[0], 1e-300))


def _clip_top(values_by_run, diverged, floor=1e-16):
    """The top of a log axis: 10× the largest value of the runs that did not diverge (if all diverged,
    1e3× the largest starting value); None when nothing has to be clipped."""
    calm = [v[np.isfinite(v)] for v, d in zip(values_by_run, diverged) if not d]
    calm = [v for v in calm if len(v)]
    if calm:
        top = 10.0 * max(float(np.max(v)) for v in calm)
    else:
        starts = [float(v[np.isfinite(v)][0]) for v in values_by_run if np.isfinite(v).any()]
        top = 1e3 * max(starts) if starts else 1.0
    top = max(top, 10 * floor)
    needed = any(d and (np.any(~np.isfinite(v)) or np.nanmax(np.where(np.isfinite(v), v, np.nan)) > top)
                 for v, d in zip(values_by_run, diverged) if np.isfinite(v).any())
    return top if needed else None


def _plot_clipped(ax, x, y, top, color, label, zorder, ls="-"):
    """``y`` on a log axis, clipped at ``top`` (non-finite values count as above it); a ▲ marks the first
    clipped point. Returns True if anything was clipped."""
    over = ~np.isfinite(y) | (y > top) if top is not None else np.zeros(len(y), bool)
    yc = np.where(over, top if top is not None else np.nan, y)
    ax.plot(x, yc, color=color, ls=ls, label=label, zorder=zorder)
    if over.any():
        k = int(np.argmax(over))
        ax.scatter([x[k]], [top], marker="^", s=60, color=color, edgecolors="k", linewidths=0.6, zorder=zorder + 1,
                   clip_on=False)
        return True
    return False


def curves_figure(results, title=None):
    """Two panels against the iteration: the gap f(θ_t) − f_ref (log scale) and the learning rate.
    f_ref is each run's target value (or its nearest known minimum). A diverging run is clipped at the
    top of the other runs' range and says so in the legend (module docstring). Returns the Figure."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    fname = results[0].function if results else ""
    gaps, lrs = [], []
    for r in results:
        fn = _functions.get(r.function)
        ref = r.target_value if r.target_value is not None else fn.f_min
        with np.errstate(invalid="ignore"):
            gaps.append(np.where(np.isfinite(r.losses), np.maximum(r.losses - ref, 1e-16), np.inf))
        lr = np.asarray(r.lrs, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            lrs.append(np.where(lr > 0, lr, np.nan) if len(lr) else lr)
    diverged = [_diverged(r, g) for r, g in zip(results, gaps)]
    top_gap = _clip_top(gaps, diverged)
    top_lr = _clip_top([v if len(v) else np.array([np.nan]) for v in lrs], diverged) if results else None
    for i, (r, gap, lr, d) in enumerate(zip(results, gaps, lrs, diverged)):
        color = _color(r.optimizer, i)
        z = 2 + _zorder(r)
        ls = _ls(r.optimizer)
        clipped = _plot_clipped(ax1, np.arange(len(gap)), gap, top_gap if d else None, color, _label(r), z, ls)
        if clipped:
            ax1.lines[-1].set_label(f"{_label(r)} — DIVERGED, clipped at the top (▲)")
        if r.hit is not None:
            ax1.axvline(r.hit, color=color, ls=":", lw=1)
        if len(lr):
            clipped = _plot_clipped(ax2, np.arange(1, len(lr) + 1), lr, top_lr if d else None, color, _label(r), z, ls)
            if clipped:
                ax2.lines[-1].set_label(f"{_label(r)} — DIVERGED, clipped at the top (▲)")
    if results:
        ax1.axhline(results[0].tol, color="k", ls="--", lw=0.8, label=f"tolerance {results[0].tol:g}")
    ax1.set_yscale("log")
    ax2.set_yscale("log")
    if top_gap is not None:
        ax1.set_ylim(top=top_gap * 3)
    if top_lr is not None:
        ax2.set_ylim(top=top_lr * 3)
    ax1.set_xlabel("iteration t")
    ax1.set_ylabel("f(θ_t) − f_ref")
    ax1.set_title("distance to the optimum (dotted: first hit)")
    ax2.set_xlabel("iteration t")
    ax2.set_ylabel("learning rate α_t")
    ax2.set_title("learning rate per step")
    n = max((len(g) for g in gaps), default=1)
    for ax in (ax1, ax2):
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(0, max(n - 1, 1))  # iterations are >= 0: no negative ticks
        ax.legend(fontsize=7)
    fig.suptitle(title or f"{fname}: loss and learning rate")
    fig.tight_layout()
    return fig


def quadratic_fit_figure(alphas, g, a0, a1, a2, pre_lr, alpha_star, lr, title=None, fallback=None, g_lr=None):
    """The paper's Figure 1 from real numbers: the true g(α) = L(θ − α∇L) on ``alphas`` against the
    fitted g₁(α) = a₀ + a₁α + a₂α² (Eq. 4), with ᾱ (the probe, Eq. 8), α* = −a₁/(2a₂) (Eq. 5/10) and
    the point where the step lands, (α_t, g(α_t)), marked. ``g`` is an array of the true values on
    ``alphas`` (a callable is evaluated on them); ``g_lr`` is g at the landing α (default: read off
    the grid). A NaN ``lr`` draws no landing point. Returns the Figure."""
    plt = _plt()
    alphas = np.asarray(alphas, dtype=np.float64)
    gv = np.array([g(a) for a in alphas]) if callable(g) else np.asarray(g, dtype=np.float64)
    g1 = a0 + a1 * alphas + a2 * alphas**2
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.plot(alphas, gv, color="k", lw=2, label="true g(α) = L(θ − α∇L)  (Eq. 3)")
    ax.plot(alphas, g1, color="#d62728", lw=1.8, ls="--", label=f"fitted g₁(α) = a₀ + a₁α + a₂α²  (Eq. 4)\n"
            f"a₀={a0:.6g}, a₁={a1:.6g}, a₂={a2:.6g}")
    ax.plot(alphas, a0 + a1 * alphas, color="0.5", lw=1, ls=":", label="tangent a₀ + a₁α  (a₁ = −‖∇L‖², Eq. 7)")
    g_at = np.interp
    ax.scatter([0.0], [a0], color="k", zorder=6, label=f"α = 0: g(0) = a₀ = {a0:.6g}  (Eq. 6)")
    g_pre = a0 + a1 * pre_lr + a2 * pre_lr**2  # equals the probed g(ᾱ) by construction (Eq. 8)
    ax.scatter([pre_lr], [g_pre], marker="s", s=60, color="#ff7f0e", zorder=6,
               label=f"ᾱ = {pre_lr:.4g}: probe g(ᾱ) = {g_pre:.6g}  (Eq. 8)")
    ax.axvline(pre_lr, color="#ff7f0e", lw=0.8, ls="--")
    if alpha_star is not None and np.isfinite(alpha_star) and a2 > 0:
        ax.scatter([alpha_star], [a0 + a1 * alpha_star + a2 * alpha_star**2], marker="v", s=70, color="#d62728",
                   zorder=6, label=f"α* = −a₁/(2a₂) = {alpha_star:.4g}: min of g₁  (Eq. 5, 10)")
        ax.axvline(alpha_star, color="#d62728", lw=0.8, ls="--")
    if g_lr is not None and np.isfinite(lr):
        g_land = float(g_lr)
    else:
        g_land = g_at(lr, alphas, gv) if alphas.min() <= lr <= alphas.max() else None
    if g_land is not None:
        note = " (fallback to ᾱ: a₂ ≤ 0)" if fallback else ""
        ax.scatter([lr], [g_land], marker="o", s=90, facecolors="none", edgecolors="#2ca02c", linewidths=2, zorder=7,
                   label=f"step lands at α_t = {lr:.4g}: g(α_t) = {g_land:.6g}{note}")
    ax.set_xlabel("learning rate α along −∇L")
    ax.set_ylabel("loss g(α)")
    ax.set_title(title or "QLAB: the quadratic fit of one step (the paper's Figure 1)")
    lo = min(float(np.min(gv)), float(np.min(g1)))
    hi = max(float(np.max(gv[np.isfinite(gv)])), a0)
    pad = 0.08 * (hi - lo if hi > lo else 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def animate_trajectories(fn, results, path, fps=12, max_frames=50, dpi=80):
    """Write a GIF (matplotlib's PillowWriter) of the trajectories growing step by step; paths are
    subsampled to at most ``max_frames`` frames. Returns the path written."""
    from pathlib import Path

    from matplotlib.animation import FuncAnimation, PillowWriter

    fn = _functions.get(fn)
    plt = _plt()
    results = list(results)
    fig, ax = plt.subplots(figsize=(7, 6))
    _draw_surface(ax, fn, image=True)
    _mark_minima(ax, fn)
    for s in {tuple(r.start) for r in results}:
        ax.scatter([s[0]], [s[1]], s=90, c="#1f3bff", edgecolors="white", linewidths=1.2, zorder=8)
    ax.set_title(f"{fn.name.capitalize()}: trajectories (animated)", fontsize=10)
    n = max(len(r.path) for r in results) if results else 1
    frames = np.unique(np.round(np.geomspace(1, n, min(max_frames, n))).astype(int))
    lines = []
    for i, r in enumerate(results):
        (line,) = ax.plot([], [], "-o", color=_color(r.optimizer, i), lw=1.6, markersize=2.5, label=_run_label(r),
                          zorder=5 + _zorder(r))
        lines.append(line)
    counter = ax.text(0.98, 0.02, "", transform=ax.transAxes, ha="right", va="bottom", fontsize=9,
                      bbox=dict(facecolor="white", alpha=0.8))
    ax.legend(loc="upper left", fontsize=7, framealpha=0.9)

    def update(k):
        for line, r in zip(lines, results):
            line.set_data(r.path[:k, 0], r.path[:k, 1])
        counter.set_text(f"t = {k - 1}")
        return (*lines, counter)

    anim = FuncAnimation(fig, update, frames=frames, blit=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(path, writer=PillowWriter(fps=fps), dpi=dpi)
    plt.close(fig)
    return str(path)
