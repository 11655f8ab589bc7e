"""Optimizer trajectories on the 2-D test functions (the paper's Figure 2), and sweeps over start
points and learning rates so comparisons do not rest on one lucky start.

``trajectory(fn, optimizer, start, steps, ...)`` puts the start point into one float64 parameter
Tensor ``p`` of shape (2,), builds the optimizer with ``qr.optim.get(optimizer, [p], **opt_kw)`` and
calls ``opt.step(lambda: fn.f(p))`` ``steps`` times (the closure is forward only; the optimizer
differentiates it). After each step it records the new point, its value and ``opt.last_step["lr"]``.

Iteration counting: ``path[0]`` is the start (iteration 0) and ``path[t]`` is the point after ``t``
steps. ``hit`` is the first ``t`` such that ``path[t]`` **lies in the domain box** and

    f(path[t]) − f_ref < tol          (tol = 1e-6 by default)

where ``f_ref`` depends on ``target``:

- ``"nearest"`` (default): the value of the known minimum nearest to ``path[t]`` (for Booth,
  Rosenbrock, Beale and Himmelblau every known minimum is global, so this is f − f_min);
- ``"global"``: ``fn.f_min``;
- ``"local"``: the local minimum the run ended in: the last in-domain finite point is polished with
  SciPy's L-BFGS-B (analytic gradient, inside the box) and ``f_ref`` is the smaller of the polished
  and the unpolished value. This is what "reaching the optimum" can mean on Eggholder, whose global
  minimum sits on the boundary with a nonzero slope (unconstrained gradient methods stop in an
  interior local minimum or leave the box); the paper's Figure 2 caption speaks of reaching "the
  local minimum value". A hit must then also lie within 1% of the domain width of that local
  minimum (so passing through a deeper basin on the way does not count), and a run whose final point
  is outside the box has no local target (hit None). ``result.target_point`` says which minimum it
  was, so a table can show it.
- a number: that value.

The in-domain condition matters for Eggholder, whose value keeps falling outside its box: a point
outside is never counted as a hit.

Domain and non-finite values are reported, never hidden: ``left_domain`` is the first iteration
outside the box (or None), ``nonfinite`` the first iteration whose point or loss is NaN/inf (the run
stops there, and ``path`` ends at the last finite point). Nothing is clipped unless
``project=True``: then every point the optimizer produces is projected onto the box (projected
gradient method; the optimizer's internal state and QLABGrad's probe are not projected) and
``projections`` counts how often the projection moved the point.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import functions as _functions
from .optim.optimizer import NonFiniteLossError
from .tensor import Tensor

__all__ = ["TrajectoryResult", "trajectory", "sample_starts", "sweep", "summarize_counts", "SweepResult"]

_TARGETS = ("nearest", "global", "local")
#: target="local": a hit must also lie within this fraction of the domain width of the local minimum
_LOCAL_RADIUS = 0.01


@dataclass
class TrajectoryResult:
    """What one run did. Arrays are float64; iteration numbers count optimizer steps from 0."""

    function: str
    optimizer: str
    settings: dict  # the keyword arguments the optimizer was built with
    start: np.ndarray
    steps: int  # steps requested
    path: np.ndarray  # (n + 1, 2); n = steps unless the run stopped early
    losses: np.ndarray  # (n + 1,) f at each path point
    lrs: np.ndarray  # (n,) learning rate used by each step (opt.last_step["lr"])
    tol: float
    target: object  # "nearest" | "global" | "local" | a number
    hit: int | None  # first iteration within tol of the target (inside the domain), or None
    left_domain: int | None  # first iteration outside the domain box, or None
    nonfinite: int | None  # iteration at which the point or loss became NaN/inf (run stopped), or None
    stopped: str  # "budget" | "nonfinite" | "hit" (stop_at_hit) | "stationary" (gtol)
    projected: bool
    projections: int
    evals: int  # closure evaluations made by the optimizer (sum of last_step["evals"] where given)
    seconds: float
    resolved: dict = field(default_factory=dict)  # settings the optimizer chose itself (QLABGrad's pre_lr)
    opt_defaults: dict = field(default_factory=dict)  # every hyperparameter in effect (optimizer.defaults)
    target_value: float | None = None  # f_ref for "global"/"local"/number targets
    target_point: np.ndarray | None = None  # the minimum the hit refers to (nearest/local/global)
    records: list | None = None  # copies of opt.last_step per step (keep_records=True)

    @property
    def n_steps(self) -> int:
        return len(self.path) - 1

    @property
    def reached(self) -> bool:
        return self.hit is not None

    @property
    def final(self) -> np.ndarray:
        return self.path[-1]

    @property
    def in_domain_at_end(self) -> bool:
        return _functions.get(self.function).in_domain(self.path[-1])

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])

    @property
    def label(self) -> str:
        """A legend label: optimizer name and its stated settings (``sgd lr=0.01``)."""
        shown = {k: v for k, v in self.settings.items() if k not in ("findplr",)}
        parts = [self.optimizer] + [f"{k}={_fmt(v)}" for k, v in shown.items()]
        if "pre_lr" in self.resolved and "pre_lr" not in self.settings:
            parts.append(f"ᾱ={_fmt(self.resolved['pre_lr'])}")
        return " ".join(parts)

    def summary(self) -> str:
        """One human-readable line."""
        s = f"{self.function}/{self.label}: start {_pt(self.start)}, "
        s += f"hit at {self.hit}" if self.hit is not None else f"not within {self.tol:g} of the target in {self.n_steps} steps"
        s += f", final f = {self.final_loss:.6g} at {_pt(self.final)}"
        if self.left_domain is not None:
            s += f", LEFT THE DOMAIN at iteration {self.left_domain}"
        if self.nonfinite is not None:
            s += f", NON-FINITE at iteration {self.nonfinite}"
        if self.projected:
            s += f", projected onto the box {self.projections} times"
        return s


def _pt(x):
    return f"({float(x[0]):.6g}, {float(x[1]):.6g})"


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _build_optimizer(optimizer, params, opt_kw):
    if isinstance(optimizer, str):
        from . import optim

        return optimizer.lower(), optim.get(optimizer, params, **opt_kw)
    if callable(optimizer):  # an Optimizer class or a factory(params, **kw)
        return getattr(optimizer, "__name__", type(optimizer).__name__).lower(), optimizer(params, **opt_kw)
    raise TypeError(f"trajectory: optimizer must be a name from qr.optim.names() or a class, got {type(optimizer).__name__}")


def _check_start(fn, start):
    arr = np.array(start, dtype=np.float64)
    if arr.shape != (2,):
        raise ValueError(f"trajectory: start point for {fn.name} must have shape (2,), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"trajectory: start point {arr} is not finite")
    return arr


def trajectory(
    fn,
    optimizer,
    start=None,
    steps=1000,
    tol=1e-6,
    target="nearest",
    project=False,
    stop_at_hit=False,
    gtol=None,
    keep_records=False,
    **opt_kw,
) -> TrajectoryResult:
    """Run ``optimizer`` on the test function ``fn`` from ``start`` for ``steps`` steps.

    ``fn``: a TestFunction or its name. ``optimizer``: a name from ``qr.optim.names()`` (or an
    Optimizer class). ``start``: shape (2,), default ``fn.default_start``. ``opt_kw`` go to the
    optimizer (``lr=0.01`` for SGD/Adam; QLABGrad needs none). See the module docstring for
    ``tol``/``target``/``project``. ``stop_at_hit=True`` stops at the hit (not with
    ``target="local"``, whose reference is known only at the end); ``gtol`` stops when the analytic
    gradient norm falls below it (a stationary point: later steps would not move). ``keep_records``
    keeps a copy of ``opt.last_step`` for every step (QLABGrad's a0, a1, a2, α*, ...).
    """
    fn = _functions.get(fn)
    start = fn.default_start if start is None else start
    start = _check_start(fn, start)
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"trajectory: steps must be >= 0, got {steps}")
    if not (isinstance(target, str) and target in _TARGETS) and not isinstance(target, (int, float)):
        raise ValueError(f"trajectory: target must be one of {', '.join(_TARGETS)} or a number, got {target!r}")
    if stop_at_hit and target == "local":
        raise ValueError("trajectory: stop_at_hit needs a target known in advance ('nearest', 'global' or a number), not 'local'")
    if not tol > 0:
        raise ValueError(f"trajectory: tol must be > 0, got {tol!r}")

    p = Tensor(start.copy(), requires_grad=True)
    opt_name, opt = _build_optimizer(optimizer, [p], dict(opt_kw))
    lo, hi = fn.bounds

    def closure():
        return fn.f(p)

    fixed_ref = None
    if target == "global":
        fixed_ref = fn.f_min
    elif not isinstance(target, str):
        fixed_ref = float(target)

    def ref_of(x):
        if fixed_ref is not None:
            return fixed_ref
        return fn.nearest_minimum(x)[2]

    # f_ref <= ref_max for every point, so fx - ref_max >= tol rules a hit out exactly (subtraction
    # rounds monotonically) without the nearest-minimum search: most steps of a run are far from it
    ref_max = fixed_ref if fixed_ref is not None else float(np.max(fn.minima_values))

    path = [start.copy()]
    losses = [fn.f(start)]
    lrs = []
    records = [] if keep_records else None
    resolved = {}
    evals = 0
    hit = left = nonfinite = None
    projections = 0
    stopped = "budget"
    t0 = time.perf_counter()

    (x_lo, y_lo), (x_hi, y_hi) = (float(v) for v in lo), (float(v) for v in hi)

    def inside(x):  # x: a finite point of shape (2,)
        return x_lo <= x[0] <= x_hi and y_lo <= x[1] <= y_hi

    if target != "local" and inside(start) and losses[0] - ref_of(start) < tol:
        hit = 0
    if not inside(start):
        left = 0

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in range(1, steps + 1):
            if stop_at_hit and hit is not None:
                stopped = "hit"
                break
            if gtol is not None:
                gx, gy = fn._grad(path[-1][0], path[-1][1])  # the analytic gradient, as fn.grad
                if math.sqrt(gx * gx + gy * gy) < gtol:
                    stopped = "stationary"
                    break
            try:
                opt.step(closure)
            except NonFiniteLossError:
                nonfinite, stopped = t - 1, "nonfinite"
                break
            rec = opt.last_step
            lrs.append(float(rec.get("lr", math.nan)))
            evals += int(rec.get("evals", 1) or 0)
            if t == 1 and "pre_lr" in rec:
                resolved["pre_lr"] = float(rec["pre_lr"])
            if keep_records:
                records.append(dict(rec))
            x = p.data.copy()
            if project:
                xp = np.clip(x, lo, hi)
                if not np.array_equal(xp, x):
                    projections += 1
                    p.data[...] = xp
                    x = xp
            finite = math.isfinite(x[0]) and math.isfinite(x[1])
            fx = fn.f(x) if finite else math.nan
            if not (finite and math.isfinite(fx)):
                nonfinite, stopped = t, "nonfinite"
                break
            path.append(x)
            losses.append(fx)
            ins = inside(x)
            if left is None and not ins:
                left = t
            if hit is None and target != "local" and ins and fx - ref_max < tol and fx - ref_of(x) < tol:
                hit = t

    path = np.array(path)
    losses = np.array(losses, dtype=np.float64)
    target_value = fixed_ref
    target_point = None
    if target == "global":
        target_point = fn.minima[int(np.argmin(fn.minima_values))].copy()
    elif target == "nearest":
        _, target_point, target_value = fn.nearest_minimum(path[-1] if hit is None else path[hit])
    elif target == "local":
        target_point, target_value = _local_reference(fn, path, losses)
        if target_value is not None:
            near = np.linalg.norm(path - target_point, axis=1) < _LOCAL_RADIUS * float(np.max(hi - lo))
            ok = np.all((path >= lo) & (path <= hi), axis=1) & (losses - target_value < tol) & near
            idx = np.flatnonzero(ok)
            hit = int(idx[0]) if idx.size else None

    return TrajectoryResult(
        function=fn.name,
        optimizer=opt_name,
        settings=dict(opt_kw),
        start=start,
        steps=steps,
        path=path,
        losses=losses,
        lrs=np.array(lrs, dtype=np.float64),
        tol=float(tol),
        target=target,
        hit=hit,
        left_domain=left,
        nonfinite=nonfinite,
        stopped=stopped,
        projected=bool(project),
        projections=projections,
        evals=evals,
        seconds=time.perf_counter() - t0,
        resolved=resolved,
        opt_defaults={k: v for k, v in getattr(opt, "defaults", {}).items()},
        target_value=target_value,
        target_point=target_point,
        records=records,
    )


def _local_reference(fn, path, losses):
    """The local minimum a run ended in: its final point polished with L-BFGS-B inside the box.

    None if the final point is outside the box (the run did not end at an interior minimum)."""
    from scipy.optimize import minimize

    lo, hi = fn.bounds
    x0 = path[-1]
    f0 = float(losses[-1])
    if not (np.all(x0 >= lo) and np.all(x0 <= hi)):
        return None, None
    with np.errstate(all="ignore"):
        res = minimize(fn.f, x0, jac=fn.grad, method="L-BFGS-B", bounds=list(zip(lo, hi)),
                       options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000})
    if np.all(np.isfinite(res.x)) and math.isfinite(float(res.fun)) and float(res.fun) < f0:
        return np.asarray(res.x, dtype=np.float64), float(res.fun)
    return x0.copy(), f0


# ------------------------------------------------------------------------------------ sweeps
def sample_starts(fn, n, seed=0, margin=0.1):
    """``n`` start points for ``fn``: its ``default_start`` first, then points drawn uniformly from the
    domain shrunk by ``margin`` (a fraction of each side) with ``np.random.default_rng(seed)``.
    Points closer than 5% of the domain width to a known minimum are redrawn (no free wins)."""
    fn = _functions.get(fn)
    if n < 1:
        raise ValueError(f"sample_starts: need n >= 1, got {n}")
    lo, hi = fn.bounds
    width = hi - lo
    a, b = lo + margin * width, hi - margin * width
    rng = np.random.default_rng(seed)
    starts = [np.array(fn.default_start, dtype=np.float64)]
    while len(starts) < n:
        x = a + (b - a) * rng.random(2)
        if np.min(np.linalg.norm((fn.minima - x) / width, axis=1)) < 0.05:
            continue
        starts.append(x)
    return np.array(starts)


def summarize_counts(hits, budget):
    """Median and spread of iteration counts. ``hits``: list of int or None (not reached).

    Returns a dict: n, reached, median, q1, q3, min, max (over the runs that reached; None if none).
    """
    reached = [h for h in hits if h is not None]
    out = {"n": len(hits), "reached": len(reached), "budget": int(budget)}
    if reached:
        arr = np.array(reached, dtype=np.float64)
        out.update(median=float(np.median(arr)), q1=float(np.percentile(arr, 25)), q3=float(np.percentile(arr, 75)),
                   min=int(arr.min()), max=int(arr.max()))
    else:
        out.update(median=None, q1=None, q3=None, min=None, max=None)
    return out


@dataclass
class SweepResult:
    """All runs of one optimizer on one function over starts × settings, and the chosen setting."""

    function: str
    optimizer: str
    starts: np.ndarray
    settings: list  # list of opt_kw dicts tried (e.g. one per lr)
    runs: dict  # setting index -> list of TrajectoryResult (one per start)
    best: int  # index into settings of the best setting (most runs reached, then lowest median)
    steps: int

    def stats(self, i=None):
        i = self.best if i is None else i
        return summarize_counts([r.hit for r in self.runs[i]], self.steps)

    @property
    def best_settings(self) -> dict:
        return self.settings[self.best]

    def best_runs(self):
        return self.runs[self.best]


def _rank_key(stats):
    # more runs reaching the target first, then the lower median count
    return (-stats["reached"], stats["median"] if stats["median"] is not None else math.inf)


def sweep(fn, optimizer, starts, steps, settings=None, progress=None, **traj_kw) -> SweepResult:
    """Run ``optimizer`` from every start point with every setting (``settings``: list of optimizer
    keyword dicts, e.g. ``[{"lr": 0.01}, {"lr": 0.001}]``; default one empty setting) and pick the best
    setting: the most runs within tolerance, ties broken by the lower median count. ``progress`` is
    called as ``progress(done, total)`` after every run. ``traj_kw`` go to :func:`trajectory`."""
    fn = _functions.get(fn)
    settings = [dict(s) for s in (settings or [{}])]
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    runs = {}
    total = len(settings) * len(starts)
    done = 0
    for i, kw in enumerate(settings):
        runs[i] = []
        for s in starts:
            runs[i].append(trajectory(fn, optimizer, s, steps, **traj_kw, **kw))
            done += 1
            if progress is not None:
                progress(done, total)
    keys = [_rank_key(summarize_counts([r.hit for r in runs[i]], steps)) for i in range(len(settings))]
    best = min(range(len(settings)), key=lambda i: keys[i])
    name = runs[best][0].optimizer if runs[best] else str(optimizer)
    return SweepResult(fn.name, name, starts, settings, runs, best, int(steps))


# ------------------------------------------------------------------------------------ qr.trajectory
# ``qr.trajectory`` is this module's ``trajectory`` function, but importing the submodule
# (``import qlabref.trajectory`` / ``from qlabref.trajectory import sweep``) makes Python bind the
# *module* to ``qlabref.trajectory``. Making the module callable (same signature) keeps
# ``qr.trajectory(fn, optimizer, start, steps, ...)`` working whichever import came first.
class _CallableModule(sys.modules[__name__].__class__):
    def __call__(self, *args, **kwargs):
        return trajectory(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
