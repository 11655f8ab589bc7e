"""``qlabref trajectories``: QLABGrad, SGD and Adam on the 2-D test functions (the paper's Figure 2),
with a sweep over start points and learning rates, contour figures and an iteration table.

Protocol (printed and written with the results, so a reader can redo it):

- start points: each function's ``default_start`` first, then seeded uniform draws from the domain
  box shrunk by 10% per side (``qr.trajectory.sample_starts``);
- QLABGrad: FindPLR once at the first step (``findplr="once"``) from the implementation's default
  ``alpha0`` (or ``--alpha0``), no other setting;
- SGD, Adam (and any optimizer named with ``--optimizers`` that takes ``lr``): every learning rate of
  a small per-function grid (``--lrs`` to change it); the best one is the one with the most runs
  reaching the optimum, ties broken by the lower median count;
- "reached the optimum": the first iteration t with θ_t inside the domain and f(θ_t) − f_ref < tol
  (tol = 1e-6), f_ref = value of the nearest known minimum; on Eggholder f_ref is the local minimum
  the run ended in (its last point polished by L-BFGS-B in the box), because its global minimum sits
  on the boundary with a nonzero slope (see ``qr.trajectory`` for the exact rules);
- every optimizer gets the same step budget per function (``--steps``); runs stop early at the hit
  (known targets) or at a stationary point (‖∇f‖ < 1e-10).
- ``--optimizers beyond-paper`` adds the learning-rate-free methods that followed the paper
  (``qr.optim.BEYOND_PAPER``: dog, dadapt-sgd, dadapt-adam, prodigy, schedulefree-sgd,
  schedulefree-adamw). Methods that set their own step size (DoG, D-Adaptation, Prodigy) run with
  their authors' defaults, untuned, like QLABGrad; Schedule-Free keeps a real learning rate and gets
  the SGD grid (schedulefree-sgd) or the Adam grid (schedulefree-adamw). The path is what the
  parameters hold during training (Schedule-Free's y, DoG's un-averaged iterate), not the averaged
  point their ``eval()`` would report.
"""
from __future__ import annotations

import inspect
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NAME = "trajectories"
HELP = "QLABGrad vs SGD vs Adam on 2-D test functions: contour figures and an iteration table"
DESCRIPTION = (
    "QLABGrad (FindPLR once), SGD and Adam (best learning rate of a per-function grid) from several seeded "
    "start points on 2-D test functions. Writes contour figures with the trajectories (the paper's Figure 2), "
    "loss/learning-rate curves, and the table of iterations to reach the optimum (median, IQR, range, runs that "
    "never reached it or left the domain) next to the paper's numbers, with the protocol stated."
)

#: the paper's Figure 2 caption: iterations to reach the optimum
PAPER_COUNTS = {
    "booth": {"qlabgrad": 50, "sgd": 200, "adam": 5000},
    "eggholder": {"qlabgrad": 500, "sgd": 1500, "adam": 10000},
    "himmelblau": {"qlabgrad": 90, "sgd": 220, "adam": 5000},
}

#: learning-rate grids per function (the scales differ: Booth's 2/M is 0.11, Eggholder's box is 1024 wide)
DEFAULT_LRS = {
    "booth": {"sgd": (0.1, 0.03, 0.01), "adam": (1.0, 0.3, 0.1)},
    "himmelblau": {"sgd": (0.03, 0.01, 0.003), "adam": (0.3, 0.1, 0.03)},
    "eggholder": {"sgd": (3.0, 1.0, 0.3), "adam": (10.0, 3.0, 1.0)},
    "rosenbrock": {"sgd": (1e-3, 3e-4, 1e-4), "adam": (0.1, 0.03, 0.01)},
    "beale": {"sgd": (0.01, 0.003, 0.001), "adam": (0.1, 0.03, 0.01)},
}
#: step budget per function (the same for every optimizer on that function)
DEFAULT_STEPS = {"booth": 5000, "himmelblau": 5000, "eggholder": 5000, "rosenbrock": 20000, "beale": 20000}
DEFAULT_OPTIMIZERS = ("qlabgrad", "sgd", "adam")
#: named groups ``--optimizers`` understands
OPTIMIZER_GROUPS = {"beyond-paper": "BEYOND_PAPER"}
#: optimizers with a learning rate that borrow another method's grid
LR_GRID_OF = {"schedulefree-sgd": "sgd", "schedulefree-adamw": "adam"}
DEFAULT_FUNCTIONS = ("booth", "eggholder", "himmelblau")
GTOL = 1e-10


#: upper bounds of the sizes (a run is ~0.05-0.5 ms per step; these keep one command under hours)
MAX_STARTS = 1000
MAX_STEPS = 200_000


def add_arguments(parser):
    from .. import functions as F
    from . import _args

    parser.add_argument("--functions", nargs="+", default=list(DEFAULT_FUNCTIONS), metavar="NAME",
                        help=f"test functions (default: the paper's three; known: {', '.join(F.names())})")
    parser.add_argument("--optimizers", nargs="+", default=[], metavar="NAME",
                        help="extra optimizers from qr.optim to add to qlabgrad, sgd and adam; 'beyond-paper' adds "
                        "the learning-rate-free methods after the paper (dog, dadapt-sgd, dadapt-adam, prodigy, "
                        "schedulefree-sgd, schedulefree-adamw)")
    parser.add_argument("--starts", type=_args.positive_int(MAX_STARTS), default=10,
                        help=f"start points per function (default 10, at most {MAX_STARTS})")
    parser.add_argument("--seed", type=_args.seed, default=0, help="seed of the random start points (default 0)")
    parser.add_argument("--steps", type=_args.positive_int(MAX_STEPS), default=None,
                        help="step budget for every run (default per function: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()) + f"; at most {MAX_STEPS})")
    parser.add_argument("--lrs", action="append", default=[], metavar="[OPT=]LR,LR,...",
                        help="learning-rate grid: 'sgd=0.1,0.01' for one optimizer, '0.1,0.01' for all "
                        "that take lr (repeatable; default: a per-function grid, printed). QLABGrad takes none.")
    parser.add_argument("--alpha0", type=_args.positive_float, default=None,
                        help="QLABGrad's FindPLR start value (default: the optimizer's)")
    parser.add_argument("--tol", type=_args.positive_float, default=1e-6, help="tolerance on f − f_ref (default 1e-6)")
    parser.add_argument("--target", choices=["auto", "nearest", "global", "local"], default="auto",
                        help="what 'reached' refers to (default auto: nearest known minimum; local minimum on Eggholder)")
    parser.add_argument("--project", action="store_true", help="project every iterate onto the domain box (projected gradient)")
    parser.add_argument("--animate", action="store_true", help="also write an animated GIF per function")
    parser.add_argument("--out", default="qlabref-out/trajectories", help="output folder (default ./qlabref-out/trajectories)")


# --------------------------------------------------------------------------------- progress
class Progress:
    """A one-line progress bar on stderr (a line per finished block when stderr is not a terminal)."""

    def __init__(self, total, stream=None, width=28):
        self.total = max(int(total), 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()

    def update(self, n, what):
        self.done += n
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * self.width) + "-" * (self.width - int(frac * self.width))
        msg = f"[{bar}] {self.done}/{self.total} runs  {time.perf_counter() - self.t0:5.1f}s  {what}"
        if self.tty:
            self.stream.write("\r" + msg.ljust(100)[:100])
        self.stream.flush()

    def block_done(self, what):
        if not self.tty:
            self.stream.write(f"  {what}: done ({self.done}/{self.total} runs, {time.perf_counter() - self.t0:.1f}s)\n")
            self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------------- the comparison
@dataclass
class Comparison:
    """Sweeps per function and optimizer, plus the protocol that produced them."""

    sweeps: dict  # function -> {optimizer: SweepResult}
    protocol: dict
    seconds: float = 0.0
    notes: list = field(default_factory=list)


def parse_lrs(specs, optimizers):
    """``["sgd=0.1,0.01", "0.3"]`` → {"sgd": (0.1, 0.01), other lr-optimizers: (0.3,)}."""
    out = {}
    for spec in specs:
        name, _, values = spec.rpartition("=")
        try:
            lrs = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"--lrs: cannot read learning rates from '{spec}' (expected e.g. 'sgd=0.1,0.01' or '0.1,0.01')") from None
        if not lrs or any(not lr > 0 for lr in lrs):
            raise ValueError(f"--lrs: need positive learning rates in '{spec}'")
        if name:
            if name.lower() not in optimizers:
                raise ValueError(f"--lrs: '{name}' is not one of the optimizers being run ({', '.join(optimizers)})")
            if not _takes_lr(name.lower()):
                hint = " (it sets its own; --alpha0 is FindPLR's start value)" if name.lower() == "qlabgrad" else ""
                raise ValueError(f"--lrs: {name} takes no learning rate{hint}, so '{spec}' would be ignored")
            out[name.lower()] = lrs
        else:
            takers = [opt for opt in optimizers if _takes_lr(opt)]
            if not takers:
                raise ValueError(f"--lrs '{spec}': none of the optimizers being run takes a learning rate")
            for opt in takers:
                out.setdefault(opt, lrs)
    return out


def _takes_lr(name):
    from ..optim import registry

    cls = registry.OPTIMIZERS.get(name)
    if cls is None:
        return False
    try:
        return "lr" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def expand_optimizers(names):
    """Lower-case the names and replace a group name (``beyond-paper``) by its members, keeping order
    and dropping repeats."""
    from .. import optim

    out = []
    for name in names:
        key = name.lower()
        members = getattr(optim, OPTIMIZER_GROUPS[key]) if key in OPTIMIZER_GROUPS else (key,)
        out.extend(m for m in members if m not in out)
    return out


def _learning_rate_free(name):
    from ..optim import registry

    return bool(getattr(registry.OPTIMIZERS[name], "learning_rate_free", False))


def _settings_for(fn_name, opt, lrs_override, alpha0):
    if opt == "qlabgrad":
        kw = {"findplr": "once"}
        if alpha0 is not None:
            kw["alpha0"] = alpha0
        return [kw]
    grid = lrs_override.get(opt)
    if not _takes_lr(opt) or (grid is None and _learning_rate_free(opt)):
        return [{}]  # no learning rate, or one the method sets itself: the authors' defaults
    if grid is None:
        grids = DEFAULT_LRS.get(fn_name, DEFAULT_LRS["booth"])
        grid = grids.get(opt, grids[LR_GRID_OF.get(opt, "adam" if opt == "adam" else "sgd")])
    return [{"lr": float(lr)} for lr in grid]


def check_optimizers(optimizers):
    from .. import optim

    known = optim.names()
    missing = [o for o in optimizers if o not in known]
    if missing:
        raise ValueError(f"unknown optimizer(s) {', '.join(missing)}; qr.optim has: {', '.join(known) or '(none registered)'}")


def plan_runs(functions=DEFAULT_FUNCTIONS, optimizers=DEFAULT_OPTIMIZERS, n_starts=10, seed=0, steps=None, lrs=None,
              alpha0=None, target="auto"):
    """Check every argument and return the plan: ``(functions, optimizers, lrs, [(fn, opt, starts, budget,
    target, settings)], total runs, total step budget)``. Raises ``ValueError`` naming a bad argument
    before any run starts."""
    from .. import functions as F
    from ..trajectory import sample_starts

    fns = [F.get(f) for f in functions]
    optimizers = [o.lower() for o in optimizers]
    for kind, names in (("test function", [fn.name for fn in fns]), ("optimizer", optimizers)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{kind} {twice[0]} is given more than once")
    check_optimizers(optimizers)
    if alpha0 is not None and "qlabgrad" not in optimizers:
        raise ValueError("alpha0 is QLABGrad's FindPLR start value, and qlabgrad is not being run")
    lrs = parse_lrs(lrs or [], optimizers) if not isinstance(lrs, dict) else lrs
    plan = []
    for fn in fns:
        starts = sample_starts(fn, n_starts, seed=seed)
        budget = int(steps) if steps is not None else DEFAULT_STEPS.get(fn.name, 5000)
        tgt = target if target != "auto" else ("local" if fn.name == "eggholder" else "nearest")
        for opt in optimizers:
            plan.append((fn, opt, starts, budget, tgt, _settings_for(fn.name, opt, lrs, alpha0)))
    total = sum(len(p[2]) * len(p[5]) for p in plan)
    budget = sum(len(p[2]) * len(p[5]) * p[3] for p in plan)
    return fns, optimizers, lrs, plan, total, budget


def _protocol(fns, optimizers, sweeps, n_starts, seed, tol, target, project):
    return {
        "functions": [fn.name for fn in fns],
        "optimizers": optimizers,
        "n_starts": n_starts,
        "seed": seed,
        "starts": {fn.name: sweeps[fn.name][optimizers[0]].starts.tolist() for fn in fns},
        "steps": {fn.name: sweeps[fn.name][optimizers[0]].steps for fn in fns},
        "settings": {fn.name: {o: sweeps[fn.name][o].settings for o in optimizers} for fn in fns},
        "tol": tol,
        "target": {fn.name: (target if target != "auto" else ("local" if fn.name == "eggholder" else "nearest")) for fn in fns},
        "project": project,
        "gtol": GTOL,
    }


def compare(functions=DEFAULT_FUNCTIONS, optimizers=DEFAULT_OPTIMIZERS, n_starts=10, seed=0, steps=None,
            lrs=None, alpha0=None, tol=1e-6, target="auto", project=False, progress=True,
            on_function=None) -> Comparison:
    """Run every optimizer from every start on every function over its settings grid.

    ``on_function(partial)``, if given, is called with the :class:`Comparison` of the functions done so
    far each time a function's sweeps are complete (so callers can write results as they come)."""
    from ..trajectory import sweep

    fns, optimizers, lrs, plan, total, _ = plan_runs(functions, optimizers, n_starts, seed, steps, lrs, alpha0,
                                                      target)
    bar = Progress(total) if progress else None
    t0 = time.perf_counter()
    sweeps = {fn.name: {} for fn in fns}
    done = []
    for fn, opt, starts, budget, tgt, settings in plan:
        what = f"{fn.name} / {opt}"

        def cb(done_runs, _total, what=what):
            if bar:
                bar.update(1, what)

        sweeps[fn.name][opt] = sweep(fn, opt, starts, budget, settings, progress=cb, tol=tol, target=tgt,
                                     project=project, stop_at_hit=(tgt != "local"), gtol=GTOL)
        if bar:
            bar.block_done(what)
        if len(sweeps[fn.name]) == len(optimizers):
            done.append(fn)
            if on_function is not None:
                part = {f.name: sweeps[f.name] for f in done}
                on_function(Comparison(part, _protocol(done, optimizers, part, n_starts, seed, tol, target, project),
                                       time.perf_counter() - t0))
    if bar:
        bar.close()
    protocol = _protocol(fns, optimizers, sweeps, n_starts, seed, tol, target, project)
    return Comparison(sweeps, protocol, time.perf_counter() - t0)


# --------------------------------------------------------------------------------- tables
def _fmt_count(st):
    if st["median"] is None:
        return "—"
    med = f"{st['median']:g}"
    return f"{med} [{st['q1']:g}–{st['q3']:g}] ({st['min']}–{st['max']})"


def _fmt_setting(res_setting, run):
    if "lr" in res_setting:
        return f"lr={res_setting['lr']:g}"
    if run is not None and "pre_lr" in run.resolved:
        a0 = run.opt_defaults.get("alpha0")
        s = f"FindPLR α0={a0:g} → ᾱ={run.resolved['pre_lr']:.3g}" if a0 is not None else f"ᾱ={run.resolved['pre_lr']:.3g}"
        return s
    return "defaults"


def summary_rows(comp, all_settings=False):
    """Rows (dicts) of the iteration table; with ``all_settings`` one row per learning rate tried."""
    rows = []
    for fname, by_opt in comp.sweeps.items():
        for opt, sw in by_opt.items():
            idxs = range(len(sw.settings)) if all_settings else [sw.best]
            for i in idxs:
                runs = sw.runs[i]
                st = sw.stats(i)
                first = runs[0] if runs else None
                pre = sorted({round(r.resolved["pre_lr"], 12) for r in runs if "pre_lr" in r.resolved})
                setting = _fmt_setting(sw.settings[i], first)
                if len(pre) > 1:
                    setting = f"FindPLR α0={first.opt_defaults.get('alpha0', float('nan')):g} → ᾱ∈[{pre[0]:.3g}, {pre[-1]:.3g}]"
                rows.append({
                    "function": fname,
                    "optimizer": opt,
                    "setting": setting,
                    "best": i == sw.best,
                    "reached": f"{st['reached']}/{st['n']}",
                    "count": _fmt_count(st),
                    "median": st["median"],
                    "default_start": first.hit if first is not None else None,
                    "left_domain": sum(r.left_domain is not None for r in runs),
                    "nonfinite": sum(r.nonfinite is not None for r in runs),
                    "final_f": float(np.median([r.final_loss for r in runs])) if runs else None,
                    "paper": PAPER_COUNTS.get(fname, {}).get(opt),
                    "budget": sw.steps,
                })
    return rows


def markdown_table(rows, with_paper=True):
    head = ["function", "optimizer", "setting", "reached", "iterations: median [IQR] (min–max)",
            "default start", "left domain", "median final f"]
    if with_paper:
        head.append("paper")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    from ..optim import is_beyond_paper

    beyond = any(is_beyond_paper(r["optimizer"]) for r in rows)
    for r in rows:
        name = r["optimizer"] + (" ‡" if is_beyond_paper(r["optimizer"]) else "")
        cells = [r["function"], name, r["setting"], r["reached"], r["count"],
                 "—" if r["default_start"] is None else str(r["default_start"]),
                 str(r["left_domain"]) + (f" ({r['nonfinite']} non-finite)" if r["nonfinite"] else ""),
                 f"{r['final_f']:.6g}" if r["final_f"] is not None else "—"]
        if with_paper:
            cells.append("—" if r["paper"] is None else str(r["paper"]))
        lines.append("| " + " | ".join(cells) + " |")
    if beyond:
        lines.append("")
        lines.append("‡ beyond the paper: a learning-rate-free method published after it (not in its comparison), "
                     "run with its authors' defaults (Schedule-Free: the best lr of the grid)")
    return "\n".join(lines)


def protocol_text(comp):
    from .. import functions as F

    p = comp.protocol
    lines = ["Protocol:"]
    for fname in p["functions"]:
        fn = F.get(fname)
        starts = ", ".join(f"({x:.4g}, {y:.4g})" for x, y in p["starts"][fname])
        tgt = p["target"][fname]
        tdesc = {"nearest": "f − f(nearest known minimum)", "global": "f − f_min (global)",
                 "local": "f − f(local minimum the run ended in, polished by L-BFGS-B)"}.get(tgt, str(tgt))
        lines.append(f"- {fname}: domain {fn.domain[0]}×{fn.domain[1]}, budget {p['steps'][fname]} steps, "
                     f"reached = first in-domain iterate with {tdesc} < {p['tol']:g}; starts (first = Figure-2 start): {starts}")
        for opt, settings in p["settings"][fname].items():
            lines.append(f"  - {opt}: " + ("; ".join(", ".join(f"{k}={v}" for k, v in s.items()) or "defaults" for s in settings)))
    lines.append(f"- runs stop early at the hit (known targets) or when ‖∇f‖ < {p['gtol']:g}; "
                 f"projection onto the box: {'on' if p['project'] else 'off'}; start seed {p['seed']}.")
    lines.append("- best setting per optimizer: most runs reaching the optimum, then the lowest median count. "
                 "IQR = 25th–75th percentile over the runs that reached it; 'left domain' = runs with an iterate outside the box.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- outputs
def write_function_outputs(fname, by_opt, out, animate=False, title_suffix=""):
    """The figures of one function (contours with the Figure-2 start's runs, curves, all runs of the
    sweep, optionally a GIF). Returns the paths written."""
    from .. import functions as F
    from .. import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    runs = [sw.best_runs()[0] for sw in by_opt.values() if sw.best_runs()]
    fn = F.get(fname)
    fig = plots.contour_figure(fn, runs, title=f"{fname.capitalize()}: {fn.formula}\n"
                               f"start {tuple(float(v) for v in runs[0].start)}, best setting of each optimizer{title_suffix}")
    written.append(plots.save(fig, out / f"{fname}.png"))
    written.append(plots.save(plots.curves_figure(runs, title=f"{fname}: gap to the optimum and learning rate (Figure-2 start)"),
                              out / f"{fname}_curves.png"))
    all_runs = [r for sw in by_opt.values() for r in sw.best_runs()]
    fig = plots.contour_figure(fn, [], title=f"{fname.capitalize()}: all {len(all_runs)} runs of the sweep (best settings)")
    _sweep_lines(fig.axes[0], by_opt)
    written.append(plots.save(fig, out / f"{fname}_sweep.png"))
    if animate:
        written.append(plots.animate_trajectories(fn, runs, out / f"{fname}.gif"))
    return written


def write_summary(comp, out, partial=False):
    """The overview figure, ``table.md`` and ``results.json`` for the functions in ``comp`` (written
    again, complete, at the end; ``partial`` marks an intermediate version: table and JSON only, the
    overview figure is drawn once, at the end)."""
    from .. import plots

    out = Path(out)
    written = []
    if not partial:  # the overview figure once, at the end (each function's own figures are already out)
        first_runs = {fname: [sw.best_runs()[0] for sw in by_opt.values() if sw.best_runs()]
                      for fname, by_opt in comp.sweeps.items()}
        written.append(plots.save(plots.trajectory_grid(first_runs), out / "trajectories.png"))
    rows = summary_rows(comp)
    note = ["", f"(partial: {', '.join(comp.sweeps)} done so far; the run is still going)"] if partial else []
    md = ["# Iterations to reach the optimum: qlabref vs the paper's Figure 2", *note, "",
          markdown_table(rows), "", protocol_text(comp), "",
          "## Every setting tried", "", markdown_table(summary_rows(comp, all_settings=True), with_paper=False), ""]
    table_path = out / "table.md"
    _write_atomic(table_path, "\n".join(md))
    written.append(str(table_path))
    record = {"protocol": comp.protocol, "rows": summary_rows(comp, all_settings=True), "seconds": comp.seconds,
              "partial": partial}
    json_path = out / "results.json"
    _write_atomic(json_path, json.dumps(record, indent=1, default=_json_default))
    written.append(str(json_path))
    return written


def _write_atomic(path, text):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_outputs(comp, out, animate=False, title_suffix=""):
    """Figures (per function, a 3-panel overview, loss/lr curves), the Markdown table and a JSON
    record. Returns the list of paths written."""
    written = []
    for fname, by_opt in comp.sweeps.items():
        written += write_function_outputs(fname, by_opt, out, animate, title_suffix)
    return written + write_summary(comp, out)


def _sweep_lines(ax, by_opt):
    from .. import plots

    for i, (opt, sw) in enumerate(by_opt.items()):
        color = plots._color(opt, i)
        runs = sw.best_runs()
        pre = sorted({r.resolved["pre_lr"] for r in runs if "pre_lr" in r.resolved})
        setting = _fmt_setting(sw.best_settings, runs[0]) if len(pre) <= 1 else f"ᾱ∈[{pre[0]:.3g}, {pre[-1]:.3g}]"
        left = sum(r.left_domain is not None for r in runs)
        for j, r in enumerate(runs):
            cut = len(r.path) if r.left_domain is None else r.left_domain + 1
            ax.plot(r.path[:cut, 0], r.path[:cut, 1], plots._ls(opt), color=color, lw=1.0, alpha=0.8,
                    zorder=5 + plots._zorder(r),
                    label=f"{opt} {setting} ({sw.stats()['reached']}/{len(runs)} reached, {left} left the domain)" if j == 0 else None)
        ax.scatter(sw.starts[:, 0], sw.starts[:, 1], s=25, c="#1f3bff", edgecolors="white", zorder=8,
                   label="start points" if i == 0 else None)
    plots._legend_below(ax)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def run(args) -> int:
    from ..errors import UsageError
    from . import _args

    extra = [o.lower() for o in args.optimizers]
    twice = sorted({o for o in extra if extra.count(o) > 1})
    if twice:
        raise UsageError(f"optimizer {twice[0]} is given more than once in --optimizers")
    already = sorted(set(extra) & set(DEFAULT_OPTIMIZERS))
    if already:
        _args.warn("trajectories", f"--optimizers {' '.join(already)}: always run (the defaults are "
                   f"{', '.join(DEFAULT_OPTIMIZERS)}); --optimizers adds others")
    optimizers = expand_optimizers(list(DEFAULT_OPTIMIZERS) + extra)
    return run_and_report("trajectories", args.functions, optimizers, args.out, n_starts=args.starts, seed=args.seed,
                          steps=args.steps, lrs=args.lrs, alpha0=args.alpha0, tol=args.tol, target=args.target,
                          project=args.project, animate=args.animate)


def run_and_report(command, functions, optimizers, out, animate=False, **kw):
    """Check everything, prepare ``out``, run the comparison writing each function's figures and the
    (partial) table as soon as that function is done, then print the table and the list of files."""
    from ..errors import UsageError
    from . import _args

    try:
        fns, opts, _, plan, total, budget = plan_runs(functions, optimizers, kw.get("n_starts", 10), kw.get("seed", 0),
                                                      kw.get("steps"), kw.get("lrs"), kw.get("alpha0"),
                                                      kw.get("target", "auto"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = _args.ensure_writable_dir(out)
    print(f"qlabref {command}: {total} runs ({', '.join(f.name for f in fns)} × {', '.join(opts)}, every start and "
          f"setting), at most {budget:,} steps in total; writing to {out}", flush=True)
    written = []

    def on_function(partial):
        fname = list(partial.sweeps)[-1]
        written.extend(write_function_outputs(fname, partial.sweeps[fname], out, animate=animate))
        if len(partial.sweeps) < len(fns):
            write_summary(partial, out, partial=True)

    comp = compare(functions, optimizers, on_function=on_function, **kw)
    written += write_summary(comp, out)
    rows = summary_rows(comp)
    print(markdown_table(rows))
    print()
    print(protocol_text(comp))
    print()
    print(f"{total} runs in {comp.seconds:.1f} s. Wrote:")
    for w in written:
        print(f"  {w}")
    return 0


def report(comp, out, animate=False):
    """Print the table of a finished comparison and write every output (library use)."""
    rows = summary_rows(comp)
    print(markdown_table(rows))
    print()
    print(protocol_text(comp))
    written = write_outputs(comp, out, animate=animate)
    print()
    print(f"{sum(len(sw.settings) * len(sw.starts) for by in comp.sweeps.values() for sw in by.values())} runs in {comp.seconds:.1f} s. Wrote:")
    for w in written:
        print(f"  {w}")
    return 0
