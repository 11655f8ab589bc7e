"""The data behind ``qlabref explore``: one self-contained HTML page for teaching.

Everything is computed here, in Python, when the page is written; the page (``explore_page.html``,
plain JavaScript, no framework, no network) only draws. For every 2-D test function of
:mod:`qlabref.functions` and every start of a ``grid × grid`` lattice over its domain box, each
optimizer of :data:`OPTIMIZERS` runs with :func:`qlabref.trajectory.trajectory`:

- QLABGrad with FindPLR once at the first step (``findplr="once"``, the demo's setting), no learning rate;
- SGD, Adam and the two Schedule-Free methods at the learning rate the sweep of ``qlabref demo``
  chose for that function (:data:`DEMO_LRS`; ``lrs_from_sweep`` recomputes it);
- DoG, D-Adaptation (SGD, Adam) and Prodigy with their authors' defaults (they set their own step).

A run stops, as in the demo, at the hit (the first in-domain iterate with f − f(nearest known
minimum) < 1e-6; on Eggholder the local minimum the run ended in, see ``qr.trajectory``), at a
stationary point (‖∇f‖ < 1e-10), at a non-finite value, or after ``steps`` steps.

What the page receives (``build_data`` returns it; ``page_html`` embeds it as compact JSON):

The data goes into the page as gzip-compressed JSON in base64 (:func:`encode_data`).

- for drawing, every path quantized to 1/:data:`QUANT` of the domain width, delta-encoded, and the
  losses to 4 significant digits;
- for QLABGrad, the engine's own float64 numbers, exactly (JSON keeps a float64 exactly: Python writes
  the shortest representation that reads back to the same double, and JavaScript reads it back to that
  double): every iterate θ_t, f(θ_t) and, per step, ``opt.last_step``'s a0 (Eq. 6), a1 (Eq. 7), a2
  (Eq. 9), α* (Eq. 10), ᾱ, the step α_t taken, g(ᾱ) and whether the fallback of Algorithm 1
  (lines 4–7) fired (a0 and α_t as null where they equal f(θ_{t−1}) and α* bit for bit); plus g(α) = f(θ − α∇f(θ)) (Eq. 3) sampled at :data:`G_POINTS` points of
  [0, max(ᾱ, α_t, 2α*)] (only for drawing, so quantized to 1/1000 of its range);
- the contour map: f on a :data:`MAP_RES`² grid, as the colour scale's position (log f − f_min for the
  functions whose values span decades, like ``qlabref``'s contour figures; linear for Eggholder),
  quantized to 0..999.
"""
from __future__ import annotations

import base64
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np

from . import functions as _functions

__all__ = ["OPTIMIZERS", "DEMO_LRS", "DEFAULT_GRID", "DEFAULT_STEPS", "start_grid", "settings_for", "run_start",
           "build_data", "page_html", "write_page", "lrs_from_sweep", "decode_path", "encode_data", "decode_data",
           "data_from_page"]

#: what the page draws: the paper's three, then the learning-rate-free methods after the paper
OPTIMIZERS = ("qlabgrad", "sgd", "adam", "dog", "dadapt-sgd", "dadapt-adam", "prodigy", "schedulefree-sgd",
              "schedulefree-adamw")

#: The learning rate of each optimizer that takes one, per function: the best of the demo's grid
#: (``qlabref.commands.trajectories.DEFAULT_LRS``) in the sweep of ``qlabref demo`` (5 seeded start
#: points, seed 0, 2000 steps; the same protocol through ``qlabref trajectories --starts 5 --steps 2000
#: --optimizers beyond-paper`` for Rosenbrock and Beale, which the demo does not run). Recorded from
#: that sweep (``lrs_from_sweep()``; ``qlabref explore --resweep`` recomputes it; a test checks it).
#: On Rosenbrock no SGD learning rate of the grid reached the minimum within 2000 steps: the first
#: (largest) is kept, as the sweep's tie rule does.
DEMO_LRS = {
    "booth": {"sgd": 0.1, "adam": 1.0, "schedulefree-sgd": 0.1, "schedulefree-adamw": 1.0},
    "himmelblau": {"sgd": 0.01, "adam": 0.1, "schedulefree-sgd": 0.03, "schedulefree-adamw": 0.3},
    "eggholder": {"sgd": 3.0, "adam": 3.0, "schedulefree-sgd": 3.0, "schedulefree-adamw": 10.0},
    "rosenbrock": {"sgd": 0.001, "adam": 0.1, "schedulefree-sgd": 0.001, "schedulefree-adamw": 0.1},
    "beale": {"sgd": 0.01, "adam": 0.1, "schedulefree-sgd": 0.01, "schedulefree-adamw": 0.1},
}
#: the optimizers that take a learning rate from :data:`DEMO_LRS`
LR_OPTIMIZERS = ("sgd", "adam", "schedulefree-sgd", "schedulefree-adamw")

DEFAULT_GRID = 9  # starts per side: 81 start points per function
DEFAULT_STEPS = 100  # step budget of every run
MAX_GRID = 41
MAX_STEPS = 5000
#: the start lattice covers the domain box shrunk by this fraction of its width on every side
GRID_MARGIN = 0.05
#: paths are drawn from integer coordinates: 1/QUANT of the domain width (well under a pixel)
QUANT = 4000
#: points of g(α) sampled per QLABGrad step, and resolution of the contour-map grid
G_POINTS = 33
MAP_RES = 129
N_LEVELS = 30
TOL = 1e-6
GTOL = 1e-10

_DEMO_STARTS = 5
_DEMO_STEPS = 2000
_DEMO_SEED = 0


# ------------------------------------------------------------------------------------ settings
def start_grid(fn, grid):
    """The ``grid × grid`` start points of ``fn``: ``np.linspace`` over the domain box shrunk by
    :data:`GRID_MARGIN` of its width per side, x varying fastest. Shape ``(grid * grid, 2)``."""
    fn = _functions.get(fn)
    (x0, x1), (y0, y1) = fn.domain
    mx, my = GRID_MARGIN * (x1 - x0), GRID_MARGIN * (y1 - y0)
    xs = np.linspace(x0 + mx, x1 - mx, int(grid))
    ys = np.linspace(y0 + my, y1 - my, int(grid))
    X, Y = np.meshgrid(xs, ys)
    return np.stack([X.ravel(), Y.ravel()], axis=1)


def settings_for(fname, opt, lrs=None):
    """The optimizer keyword arguments of ``opt`` on the function ``fname`` (``lrs``: a table like
    :data:`DEMO_LRS`, default that one)."""
    lrs = DEMO_LRS if lrs is None else lrs
    if opt == "qlabgrad":
        return {"findplr": "once"}
    if opt in LR_OPTIMIZERS:
        return {"lr": float(lrs[fname][opt])}
    return {}


def lrs_from_sweep(functions=None, progress=False):
    """Recompute :data:`DEMO_LRS` by running the demo's sweep (``qlabref demo``'s start points, seed
    and step budget over ``qlabref trajectories``' learning-rate grids) for SGD, Adam and the two
    Schedule-Free methods. Returns ``{function: {optimizer: lr}}``."""
    from .commands import trajectories as traj

    functions = list(functions or _functions.names())
    comp = traj.compare(functions=functions, optimizers=list(LR_OPTIMIZERS), n_starts=_DEMO_STARTS, seed=_DEMO_SEED,
                        steps=_DEMO_STEPS, progress=progress)
    return {f: {o: float(sw.best_settings["lr"]) for o, sw in by.items()} for f, by in comp.sweeps.items()}


# ------------------------------------------------------------------------------------ one run
def _quantize(fn, path):
    """Integer drawing coordinates of ``path`` (n, 2): (θ − lower corner) / width × QUANT, delta-encoded
    and flattened ``[qx0, qy0, dqx1, dqy1, ...]``."""
    lo, hi = fn.bounds
    with np.errstate(over="ignore", invalid="ignore"):  # far outside the box: clip (drawn off the map anyway)
        q = np.rint(np.clip((path - lo) / (hi - lo) * QUANT, -2.0**40, 2.0**40)).astype(np.int64)
    d = np.diff(q, axis=0, prepend=np.zeros((1, 2), dtype=np.int64))
    return d.ravel().tolist()


def decode_path(fn, codes):
    """Inverse of the page's drawing encoding (for tests): the (n, 2) float coordinates, to 1/QUANT."""
    fn = _functions.get(fn)
    lo, hi = fn.bounds
    q = np.cumsum(np.asarray(codes, dtype=np.int64).reshape(-1, 2), axis=0)
    return lo + q / QUANT * (hi - lo)


def _sig4(v):
    v = float(v)
    return float(f"{v:.4g}") if math.isfinite(v) else None


def _exact(v):
    """A float64 for JSON, unchanged (None for NaN/inf/None, which JSON cannot hold)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _same(a, b):
    """True if a and b are the same finite float64, bit for bit (so one can stand for the other)."""
    if a is None or b is None:
        return False
    a, b = float(a), float(b)
    return math.isfinite(a) and np.float64(a).tobytes() == np.float64(b).tobytes()


def _g_samples(fn, theta, rec):
    """g(α) = f(θ − α∇f(θ)) (Eq. 3) at G_POINTS points of [0, top], top = max(ᾱ, α_t, 2α*) (2α* only
    when α* > 0), ∇f the analytic gradient. Returns (top, gmin, gmax, ints 0..999 or -1 for a
    non-finite value) for drawing."""
    pre, lr, ast = rec.get("pre_lr"), rec.get("lr"), rec.get("alpha_star")
    marks = [float(v) for v in (pre, lr) if v is not None and math.isfinite(float(v)) and float(v) > 0]
    if ast is not None and math.isfinite(float(ast)) and float(ast) > 0:
        marks.append(2.0 * float(ast))
    top = max(marks) if marks else 1.0
    alphas = np.linspace(0.0, top, G_POINTS)
    grad = fn.grad(theta)
    with np.errstate(all="ignore"):
        g = fn.f(theta[None, :] - alphas[:, None] * grad[None, :])
    ok = np.isfinite(g)
    if not ok.any():
        return top, None, None, [-1] * G_POINTS
    gmin, gmax = float(g[ok].min()), float(g[ok].max())
    span = gmax - gmin if gmax > gmin else 1.0
    q = np.where(ok, np.rint((np.where(ok, g, gmin) - gmin) / span * 999), -1).astype(int)
    return top, gmin, gmax, q.tolist()


def run_start(fname, opt, start, steps, settings):
    """Run ``opt`` (with ``settings``) on ``fname`` from ``start`` for at most ``steps`` steps and return
    the page's compact record of the run (see the module docstring)."""
    from .trajectory import trajectory

    fn = _functions.get(fname)
    target = "local" if fn.name == "eggholder" else "nearest"
    qlab = opt == "qlabgrad"
    r = trajectory(fn, opt, np.asarray(start, dtype=np.float64), steps, tol=TOL, target=target,
                   stop_at_hit=(target != "local"), gtol=GTOL, keep_records=qlab, **settings)
    n = len(r.path) - 1
    if target == "local" and r.hit is not None:
        n = r.hit  # shown up to the hit, as for the known targets
    out = {
        "p": _quantize(fn, r.path[: n + 1]),
        "f": [_sig4(v) for v in r.losses[: n + 1]],
        "hit": r.hit,
        "left": r.left_domain if (r.left_domain is None or r.left_domain <= n) else None,
        "stop": "hit" if (r.hit is not None and r.hit == n) else r.stopped,
        "nf": r.nonfinite,
    }
    if qlab:
        recs = r.records[:n]
        q = {"x": [_exact(v) for v in r.path[: n + 1, 0]], "y": [_exact(v) for v in r.path[: n + 1, 1]],
             "f": [_exact(v) for v in r.losses[: n + 1]]}
        for key in ("a1", "a2", "alpha_star", "pre_lr", "probe_loss"):
            q[key] = [_exact(rec.get(key)) for rec in recs]
        # Two numbers usually repeat another one bit for bit; they are then stored as null and the page
        # shows the one they equal (``a0 ?? f``, ``lr ?? alpha_star``), which keeps the file a third smaller:
        # a0 of step k is the loss at θ_{k−1} (f[k−1]); the step taken is α* unless the fallback fired.
        q["a0"] = [None if _same(rec.get("a0"), r.losses[t]) else _exact(rec.get("a0")) for t, rec in enumerate(recs)]
        q["lr"] = [None if _same(rec.get("lr"), rec.get("alpha_star")) else _exact(rec.get("lr")) for rec in recs]
        q["fallback"] = [int(bool(rec.get("fallback", False))) for rec in recs]
        q["findplr"] = [int(bool(rec.get("findplr_ran", False))) for rec in recs]
        q["evals"] = [int(rec.get("evals", 0) or 0) for rec in recs]
        q["zero_grad"] = [int(bool(rec.get("zero_grad", False))) for rec in recs]
        tops, gmins, gmaxs, gs = [], [], [], []
        for t, rec in enumerate(recs):
            top, gmin, gmax, codes = _g_samples(fn, r.path[t], rec)
            tops.append(_exact(top))
            gmins.append(None if gmin is None else float(f"{gmin:.6g}"))
            gmaxs.append(None if gmax is None else float(f"{gmax:.6g}"))
            gs.append(codes)
        q["g_top"], q["g_min"], q["g_max"], q["g"] = tops, gmins, gmaxs, gs
        out["q"] = q
    return out


def _run_block(task):
    fname, opt, starts, steps, settings = task
    return [run_start(fname, opt, s, steps, settings) for s in starts]


# ------------------------------------------------------------------------------------ the map
def _map_codes(fn):
    """The contour map: the colour-scale position of f on a MAP_RES² grid over the domain (row j = y_j,
    column i = x_i, y from the bottom), quantized to 0..999, and the scale's description."""
    (x0, x1), (y0, y1) = fn.domain
    X, Y = np.meshgrid(np.linspace(x0, x1, MAP_RES), np.linspace(y0, y1, MAP_RES))
    Z = fn.f(np.stack([X, Y], axis=-1))
    if fn.log_levels:  # as qlabref.plots: f − f_min on log-spaced levels, floored at top·1e-7
        D = Z - fn.f_min
        top = float(np.max(D))
        floor = max(top * 1e-7, 1e-6)
        u = (np.log10(np.maximum(D, floor)) - math.log10(floor)) / (math.log10(top) - math.log10(floor))
        scale = {"kind": "log", "lo": floor, "hi": top, "label": "f − f_min (log scale)"}
    else:
        lo, hi = float(Z.min()), float(Z.max())
        u = (Z - lo) / (hi - lo)
        scale = {"kind": "linear", "lo": lo, "hi": hi, "label": "f"}
    codes = np.clip(np.rint(u * 999), 0, 999).astype(int)
    return codes.ravel().tolist(), scale


# ------------------------------------------------------------------------------------ everything
def build_data(functions=None, grid=DEFAULT_GRID, steps=DEFAULT_STEPS, lrs=None, jobs=1, progress=None):
    """Run every optimizer of :data:`OPTIMIZERS` from every start of :func:`start_grid` on each function
    and return the page's data (a dict, JSON-ready). ``progress(n_runs_done, description)`` is called
    after each block of runs; ``jobs > 1`` runs blocks in that many processes."""
    from . import __version__

    fns = [_functions.get(f) for f in (functions or _functions.names())]
    lrs = DEMO_LRS if lrs is None else lrs
    t0 = time.perf_counter()
    tasks, slots = [], []
    data_fns = []
    for fn in fns:
        starts = start_grid(fn, grid)
        codes, scale = _map_codes(fn)
        entry = {
            "name": fn.name, "formula": fn.formula, "notes": fn.notes, "domain": [list(map(float, d)) for d in fn.domain],
            "minima": fn.minima.tolist(), "f_min": fn.f_min, "log_levels": bool(fn.log_levels),
            "starts": starts.tolist(), "map": {"res": MAP_RES, "codes": codes, "scale": scale, "levels": N_LEVELS},
            "settings": {o: settings_for(fn.name, o, lrs) for o in OPTIMIZERS}, "runs": {},
        }
        data_fns.append(entry)
        # blocks of starts small enough for a lively progress bar and an even spread over processes
        size = max(1, len(starts) // 8)
        for opt in OPTIMIZERS:
            entry["runs"][opt] = [None] * len(starts)
            for i in range(0, len(starts), size):
                tasks.append((fn.name, opt, [list(s) for s in starts[i:i + size]], int(steps), entry["settings"][opt]))
                slots.append((entry, opt, i))

    def place(k, block):
        entry, opt, i = slots[k]
        entry["runs"][opt][i:i + len(block)] = block
        if progress is not None:
            progress(len(block), f"{entry['name']} / {opt}")

    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # "spawn": fork() is unsafe once Numba's OpenMP threads exist in this process
        with ProcessPoolExecutor(max_workers=int(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            for k, block in enumerate(pool.map(_run_block, tasks)):
                place(k, block)
    else:
        for k, task in enumerate(tasks):
            place(k, _run_block(task))
    return {
        "version": __version__,
        "grid": int(grid), "steps": int(steps), "margin": GRID_MARGIN, "quant": QUANT, "tol": TOL, "gtol": GTOL,
        "g_points": G_POINTS, "optimizers": list(OPTIMIZERS), "lr_optimizers": list(LR_OPTIMIZERS),
        "lr_source": ("recomputed by the demo's sweep" if lrs is not DEMO_LRS else "recorded from the demo's sweep"),
        "demo": {"starts": _DEMO_STARTS, "seed": _DEMO_SEED, "steps": _DEMO_STEPS},
        "functions": data_fns,
        "seconds": time.perf_counter() - t0,
    }


def _template():
    return (Path(__file__).with_name("explore_page.html")).read_text(encoding="utf-8")


def encode_data(data):
    """The data as the page holds it: compact JSON, gzip-compressed, base64 (ASCII only, so nothing in
    it can close the ``<script>`` element). The page reads it back with the browser's own
    ``DecompressionStream("gzip")`` and ``JSON.parse``; both keep every float64 exactly."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return base64.b64encode(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)).decode("ascii")


def decode_data(blob):
    """Inverse of :func:`encode_data` (tests, and anyone reading a written page back)."""
    return json.loads(gzip.decompress(base64.b64decode(blob)).decode("utf-8"))


def data_from_page(html):
    """The data embedded in a page written by :func:`write_page`."""
    start = html.index(_OPEN) + len(_OPEN)
    return decode_data(html[start:html.index("</script>", start)].strip())


_OPEN = '<script id="explore-data" type="application/octet-stream">'


def page_html(data):
    """The page: the template with the encoded data in ``<script id="explore-data">``."""
    html = _template()
    marker = _OPEN + "</script>"
    if marker not in html:  # pragma: no cover - the packaged template always has it
        raise RuntimeError("qlabref/explore_page.html lacks the data element")
    return html.replace(marker, _OPEN + encode_data(data) + "</script>")


def write_page(path, data):
    """Write the page to ``path`` (atomically: a temporary file, then renamed). Returns (path, bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    html = page_html(data).encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(html)
    tmp.replace(path)
    return path, len(html)
