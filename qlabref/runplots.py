"""Figures from training-run records (``qlabref plot DIR [DIR ...]``): the paper's Figure 3 (learning
rate against iteration) and Figures 4–7 (training loss against iteration, raw and smoothed, with a
zoomed inset over a range the user chooses).

Each run directory written by :mod:`qlabref.train` is one legend entry, labelled from its
configuration (optimizer, the options given, schedule, seed). Conventions:

- the raw minibatch loss is drawn as a faint band (the min–max of each bucket of iterations when a
  run has more points than the figure has pixels, so no spike is hidden by thinning), the smoothed
  loss (moving average over ``smooth`` iterations) as a solid line;
- a run that stopped early (``diverged`` / ``failed`` / ``interrupted`` in ``summary.json``) says so
  in the legend, with the iteration, and ends with an ×; a run marked ``collapsed`` (by
  :mod:`qlabref.reproduce`) says so too;
- the loss figures take their y-range from the data, whatever a run's status (:func:`loss_ylimits`):
  each run's typical top (its first value or the 99th percentile of its curve, whichever is larger) is found, and the range goes up to the
  highest typical top within ``EXPLODE`` (3×) of the lower quartile of them (so up to three quarters
  of the runs may explode without setting the scale). Every value above it is
  **clipped** to the top edge and marked ▲ (the legend says "clipped ▲"), so a run that explodes,
  even one that "finished", cannot squash the runs that trained;
- iteration axes start at 0 (no negative ticks); ``log=True`` puts the y-axis on a log scale.

Every function returns the matplotlib ``Figure``; :func:`plot_runs` writes PNG and SVG.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

__all__ = ["load_run", "lr_figure", "loss_figure", "qlab_figure", "plot_runs", "run_label", "loss_ylimits"]

_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
_MAX_POINTS = 2000


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _float(text):
    """A record cell: empty → NaN; ``nan``/``inf`` as written by a diverged run; else ``ValueError``."""
    return float(text) if text != "" else math.nan


def _read_records(path, need):
    """The rows of a record CSV as dicts of floats; ``ValueError`` naming the file (and line, column) when
    it is not UTF-8 text, has NUL bytes, lacks the columns ``need``, has a row of the wrong length or a
    cell that is not a number. A last line without its newline (a run being written) is left out."""
    with open(path, "rb") as f:
        blob = f.read()
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file (byte {exc.start} is not UTF-8); is it a qlabref record?") from None
    if "\x00" in text:
        raise ValueError(f"{path}: holds NUL bytes at offset {text.index(chr(0))} (damaged)")
    lines = text.split("\n")
    lines.pop()  # "" after the last newline, or a row still being written
    if not lines:
        raise ValueError(f"{path}: empty (no header)")
    header = lines[0].split(",")
    if not set(need) <= set(header):
        raise ValueError(f"{path}: expected the columns {', '.join(need)}; line 1 is {lines[0][:80]!r}")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) != len(header):
            raise ValueError(f"{path}: line {n} has {len(cells)} cells, the header {len(header)}")
        row = {}
        for name, cell in zip(header, cells):
            try:
                row[name] = _float(cell)
            except ValueError:
                raise ValueError(f"{path}: line {n}, column {name}: {cell[:30]!r} is not a number") from None
        rows.append(row)
    return rows


def load_run(path):
    """A run directory's records as arrays: ``iter``, ``loss``, ``lr``, ``pre_lr``, ``alpha_star``,
    ``fallback`` (NaN where empty), ``evals`` rows, ``config`` and ``summary`` (dicts). A record that is
    not what ``qlabref train`` writes, or a ``steps.csv`` without a single row, is a ``ValueError``
    naming the file and the problem (never an empty or NaN-filled figure)."""
    path = os.fspath(path)
    steps_path = os.path.join(path, "steps.csv")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such run directory")
    if not os.path.isfile(steps_path):
        raise FileNotFoundError(f"{steps_path}: no such file (is {path} a qlabref run directory?)")
    rows = _read_records(steps_path, ("iter", "loss", "lr"))
    if not rows:
        raise ValueError(f"{steps_path}: no rows yet (only the header): nothing to plot")
    run = {"path": path}
    for key in ("iter", "loss", "lr", "pre_lr", "alpha_star", "fallback", "a1", "a2"):
        run[key] = np.array([r.get(key, math.nan) for r in rows], dtype=float)
    if not np.all(np.isfinite(run["iter"])):
        raise ValueError(f"{steps_path}: the iter column has empty or non-finite cells")
    run["evals"] = []
    evals_path = os.path.join(path, "evals.csv")
    if os.path.isfile(evals_path):
        run["evals"] = _read_records(evals_path, ("iter", "test_loss", "test_accuracy"))
    for name in ("config", "summary"):
        p = os.path.join(path, f"{name}.json")
        run[name] = {}
        if os.path.isfile(p):
            try:
                with open(p, "rb") as f:
                    run[name] = json.loads(f.read().decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{p}: not valid JSON ({exc})") from None
            if not isinstance(run[name], dict):
                raise ValueError(f"{p}: expected a JSON object")
    if not run["config"] and run["summary"].get("config"):
        run["config"] = run["summary"]["config"]
    return run


def run_label(run, with_seed=True):
    """``"sgd lr=0.1 + ss-decay step_size=5000 (seed 0)"`` from a run's configuration."""
    c = run.get("config") or {}
    parts = [str(c.get("optimizer", os.path.basename(run["path"].rstrip("/"))))]
    opt = c.get("opt") or {}
    if opt:
        parts.append(" ".join(f"{k}={v}" for k, v in opt.items()))
    s = c.get("schedule")
    if s:
        parts.append("+ " + " ".join([str(s.get("name"))] + [f"{k}={v}" for k, v in s.items() if k != "name"]))
    if c.get("dtype") == "float64":
        parts.append("float64")
    label = " ".join(parts)
    if with_seed and "seed" in c:
        label += f" (seed {c['seed']})"
    return label


def _stopped(run):
    s = run.get("summary") or {}
    status = s.get("status")
    if status in ("diverged", "failed", "interrupted"):
        return status, s.get("stopped_at_iter")
    return None, None


def _moving_average(y, window):
    y = np.asarray(y, dtype=float)
    if window <= 1 or len(y) < 2:
        return y
    window = min(window, len(y))
    finite = np.isfinite(y)
    yz = np.where(finite, y, 0.0)
    c = np.cumsum(np.insert(yz, 0, 0.0))
    n = np.cumsum(np.insert(finite.astype(float), 0, 0.0))
    out = np.empty_like(y)
    for_idx = np.arange(len(y))
    lo = np.maximum(for_idx - window + 1, 0)
    counts = n[for_idx + 1] - n[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (c[for_idx + 1] - c[lo]) / counts
    out[counts == 0] = np.nan
    return out


def _envelope(x, y, max_points=_MAX_POINTS):
    """(x, lo, hi) of buckets so at most ``max_points`` are drawn; min–max per bucket."""
    if len(x) <= max_points:
        return x, y, y
    k = int(math.ceil(len(x) / max_points))
    m = len(x) // k * k
    xb = x[:m].reshape(-1, k)[:, 0]
    yb = y[:m].reshape(-1, k)
    with np.errstate(all="ignore"):
        lo = np.nanmin(np.where(np.isfinite(yb), yb, np.nan), axis=1)
        hi = np.nanmax(np.where(np.isfinite(yb), yb, np.nan), axis=1)
    return xb, lo, hi


def _ylimits(runs, key, log, smooth):
    """y-range from the runs that did not stop early (all runs if every one did)."""
    good = [r for r in runs if _stopped(r)[0] is None] or runs
    vals = []
    for r in good:
        y = r[key]
        y = y[np.isfinite(y)]
        if log:
            y = y[y > 0]
        if len(y):
            vals.append(y)
    if not vals:
        return None
    allv = np.concatenate(vals)
    lo, hi = float(np.min(allv)), float(np.max(allv))
    if log:
        return lo / 1.5, hi * 1.5
    pad = 0.05 * (hi - lo if hi > lo else abs(hi) or 1.0)
    return min(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad


#: a run whose typical top is more than this many times the median run's is clipped in the loss figures
EXPLODE = 3.0


def loss_ylimits(curves, log=False, explode=EXPLODE):
    """``(lo, hi)`` for a loss figure from the curves themselves (one array per run, any status): the
    typical top of a run is the larger of its first finite value and the 99th percentile of its finite
    values; ``hi`` is the largest typical top
    not above ``explode`` × the median typical top, padded by 5% (×1.5 on a log scale). Values above
    ``hi`` are to be clipped and marked. ``None`` when no curve has a finite value."""
    tops, lows = [], []
    for y in curves:
        y = np.asarray(y, dtype=float)
        y = y[np.isfinite(y)]
        if log:
            y = y[y > 0]
        if len(y):  # the start counts: every run starts from the initial loss, a scale all runs share
            tops.append(max(float(np.percentile(y, 99)), float(y[0])))
            lows.append(float(np.min(y)))
    if not tops:
        return None
    ref = float(np.percentile(tops, 25))  # robust: up to three quarters of the runs may explode
    hi = max(t for t in tops if t <= explode * ref) if ref > 0 else max(tops)
    lo = min(lows)
    if log:
        return lo / 1.5, hi * 1.5
    pad = 0.05 * (hi - lo if hi > lo else abs(hi) or 1.0)
    return (min(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad


def _label_with_status(run, clipped):
    label = run_label(run)
    status, at = _stopped(run)
    if status:
        label += f" — {status} at t={at}"
    elif (run.get("summary") or {}).get("status") == "collapsed":
        label += f" — collapsed by t={(run.get('summary') or {}).get('stopped_at_iter')}"
    if clipped:
        label += ", clipped ▲"
    return label


def lr_figure(runs, log=False, title=None):
    """Figure 3: the learning rate each step used against the iteration."""
    plt = _plt()
    runs = [load_run(r) if isinstance(r, (str, os.PathLike)) else r for r in runs]
    fig, ax = plt.subplots(figsize=(9, 5))
    ylim = _ylimits(runs, "lr", log, 1)
    for i, r in enumerate(runs):
        x, y = r["iter"], r["lr"]
        ok = np.isfinite(y)
        clipped = ylim is not None and bool(np.any(y[ok] > ylim[1]))
        if clipped:
            y = np.minimum(y, ylim[1])  # drawn along the top edge; the legend says "clipped" 
        color = _COLORS[i % len(_COLORS)]
        xe, lo, hi = _envelope(x[ok], y[ok])
        if len(xe) < len(x[ok]):
            ax.fill_between(xe, lo, hi, color=color, alpha=0.35, lw=0)
            ax.plot(xe, (lo + hi) / 2, color=color, lw=0.8, label=_label_with_status(r, clipped))
        else:
            ax.plot(x[ok], y[ok], color=color, lw=0.8, label=_label_with_status(r, clipped))
        status, at = _stopped(r)
        if status and len(x[ok]):
            ax.plot([x[ok][-1]], [min(y[ok][-1], ylim[1]) if ylim else y[ok][-1]], "x", color=color, ms=9, mew=2)
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(ylim[0], ylim[1] * (1.5 if log else 1.03))
    ax.set_xlim(left=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate α_t" + (" (log scale)" if log else ""))
    ax.set_title(title or "Learning rate per step (the paper's Figure 3)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def loss_figure(runs, smooth=100, zoom=None, log=False, title=None, raw=True):
    """Figures 4–7: training (minibatch) loss against the iteration, raw (faint band) and smoothed
    (moving average over ``smooth`` iterations); ``zoom=(x0, x1, y0, y1)`` adds an inset."""
    plt = _plt()
    runs = [load_run(r) if isinstance(r, (str, os.PathLike)) else r for r in runs]
    fig, ax = plt.subplots(figsize=(9, 5.5 + (0.2 * ((len(runs) + 1) // 2) if zoom is not None else 0.0)))
    for r in runs:
        r["_smooth"] = _moving_average(r["loss"], smooth)
    ylim = loss_ylimits([r["_smooth"] if not raw else r["loss"] for r in runs], log)
    if ylim is not None and not log:
        ylim = (max(ylim[0], 0.0) if min(np.nanmin(r["loss"]) for r in runs if len(r["loss"])) >= 0 else ylim[0],
                ylim[1])
    axes = [ax]
    inset = None
    if zoom is not None:
        x0, x1, y0, y1 = zoom
        inset = ax.inset_axes([0.45, 0.45, 0.52, 0.5])
        axes.append(inset)
    for i, r in enumerate(runs):
        color = _COLORS[i % len(_COLORS)]
        x, y, ys = r["iter"], r["loss"], r["_smooth"]
        hi_lim = ylim[1] if ylim else np.inf
        shown = ys if not raw else y
        over = ~np.isfinite(shown) | (np.isfinite(shown) & (shown > hi_lim))
        clipped = bool(np.any(over))
        for a in axes:
            yc = np.where(np.isfinite(y), y, hi_lim) if np.isfinite(hi_lim) else y
            yc = np.minimum(yc, hi_lim)  # clipped runs run along the top edge
            if raw:
                xe, lo, hi = _envelope(x, yc)
                if len(xe) < len(x):
                    a.fill_between(xe, lo, hi, color=color, alpha=0.18, lw=0)
                else:
                    a.plot(x, yc, color=color, lw=0.6, alpha=0.3)
            a.plot(x, np.minimum(ys, hi_lim) if np.isfinite(hi_lim) else ys, color=color, lw=1.3,
                   label=_label_with_status(r, clipped) if a is ax else None)
            status, at = _stopped(r)
            if status and len(x):
                last = np.nanmax(ys[np.isfinite(ys)][-1:]) if np.any(np.isfinite(ys)) else hi_lim
                a.plot([x[-1]], [min(last, hi_lim)], "x", color=color, ms=9, mew=2)
        if clipped and np.isfinite(hi_lim) and len(x):
            # ▲ at the start of every stretch above the range (at most 20 per run), on the main panel
            starts = np.flatnonzero(over & ~np.concatenate(([False], over[:-1])))[:20]
            ax.plot(x[starts], np.full(len(starts), hi_lim), "^", color=color, ms=7, clip_on=False)
    if log:
        for a in axes:
            a.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(ylim[0], ylim[1] * (1.5 if log else 1.03))
    ax.set_xlim(left=0)
    if inset is not None:
        inset.set_xlim(max(x0, 0), x1)
        inset.set_ylim(y0, y1)
        inset.set_title(f"zoom: iterations {x0:g}–{x1:g}", fontsize=8)
        inset.tick_params(labelsize=7)
        inset.grid(alpha=0.3)
        ax.indicate_inset_zoom(inset, edgecolor="0.4")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (minibatch cross-entropy)" + (", log scale" if log else ""))
    ax.set_title(title or f"Training loss (the paper's Figures 4–7): band = raw, line = moving average over {smooth}")
    ax.grid(alpha=0.3)
    if inset is not None:  # below the axes: a legend inside would cover the inset or the curves
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2, frameon=False)
    else:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _bucket_max(x, y, max_points=_MAX_POINTS):
    xe, lo, hi = _envelope(x, y, max_points)
    return xe, lo, hi


def qlab_figure(runs, title=None, xlim=None):
    """Why a QLAB run's step size behaves as it does: per step, against the iteration (log scales),
    α* (Eq. 10) and ᾱ; ‖∇L‖² (= −a1, Eq. 7); the curvature a2 (Eq. 9); the minibatch loss a0. With
    α* = ‖∇L‖²/(2a2), a step blows up when a2 falls faster than ‖∇L‖² -- visible here directly."""
    plt = _plt()
    runs = [load_run(r) if isinstance(r, (str, os.PathLike)) else r for r in runs]
    runs = [r for r in runs if np.any(np.isfinite(r["a2"]))]
    if xlim is not None:  # draw every step of the window (no bucketing)
        sel = []
        for r in runs:
            m = (r["iter"] >= xlim[0]) & (r["iter"] <= xlim[1])
            sel.append({**r, **{k: r[k][m] for k in ("iter", "loss", "lr", "pre_lr", "alpha_star", "fallback", "a1", "a2")}})
        runs = sel
    if not runs:
        raise ValueError("qlab_figure: none of the runs has QLAB columns (a0, a1, a2, alpha_star, pre_lr)")
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    panels = [("alpha_star", "α* (Eq. 10), and ᾱ (dashed)"), ("gsq", "‖∇L‖² = −a1 (Eq. 7)"),
              ("a2", "a2 (Eq. 9); a2 ≤ 0 → fallback α = ᾱ (not drawn)"), ("loss", "minibatch loss a0")]
    for i, r in enumerate(runs):
        color = _COLORS[i % len(_COLORS)]
        x = r["iter"]
        series = {"alpha_star": r["alpha_star"], "gsq": -r["a1"], "a2": r["a2"], "loss": r["loss"]}
        for ax, (key, _) in zip(axes, panels):
            y = series[key]
            ok = np.isfinite(y) & (y > 0)
            if not np.any(ok):
                continue
            xe, lo, hi = _envelope(x[ok], y[ok])
            if len(xe) < ok.sum():
                ax.fill_between(xe, lo, hi, color=color, alpha=0.3, lw=0)
                ax.plot(xe, np.sqrt(lo * hi), color=color, lw=0.7, label=run_label(r) if key == "alpha_star" else None)
            else:
                ax.plot(x[ok], y[ok], color=color, lw=0.7, label=run_label(r) if key == "alpha_star" else None)
            if key == "alpha_star":
                pre = r["pre_lr"]
                okp = np.isfinite(pre) & (pre > 0)
                ax.plot(x[okp], pre[okp], color=color, lw=1.0, ls="--")
        status, at = _stopped(r)
        if status:
            for ax in axes:
                ax.axvline(at, color=color, ls=":", lw=1)
    for ax, (_, label) in zip(axes, panels):
        ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3, which="both")
    axes[-1].set_xlabel("iteration")
    if xlim is not None:
        lo, hi = max(float(xlim[0]), 0.0), float(xlim[1])
        axes[-1].set_xlim(lo, hi)
    else:
        axes[-1].set_xlim(left=0)
    axes[0].legend(fontsize=7)
    axes[0].set_title(title or "QLAB diagnostics per step (band = min-max per bucket; dotted line = run stopped)")
    fig.tight_layout()
    return fig


def plot_runs(dirs, out, smooth=100, zoom=None, log_lr=False, log_loss=False, formats=("png", "svg"), title=None):
    """Write ``lr.{png,svg}`` and ``loss.{png,svg}`` for the runs in ``dirs`` into ``out``; returns the paths."""
    plt = _plt()
    runs = [load_run(d) for d in dirs]
    os.makedirs(out, exist_ok=True)
    written = []
    for name, fig in (("lr", lr_figure(runs, log=log_lr, title=title and f"{title}: learning rate")),
                      ("loss", loss_figure(runs, smooth=smooth, zoom=zoom, log=log_loss,
                                           title=title and f"{title}: training loss"))):
        for fmt in formats:
            path = os.path.join(out, f"{name}.{fmt}")
            fig.savefig(path, dpi=130)
            written.append(path)
        plt.close(fig)
    if any(np.any(np.isfinite(r["a2"])) for r in runs):
        fig = qlab_figure(runs, title=title and f"{title}: QLAB diagnostics")
        for fmt in formats:
            path = os.path.join(out, f"qlab.{fmt}")
            fig.savefig(path, dpi=130)
            written.append(path)
        plt.close(fig)
    return written
