"""``qlabref demo``: the README's main job.

QLABGrad (with FindPLR), SGD and Adam on the paper's three test functions (Booth, Eggholder,
Himmelblau): a modest sweep over start points and SGD/Adam learning rates, the contour figures (the
paper's Figure 2), loss and learning-rate curves, one picture of QLABGrad's quadratic fit (the
paper's Figure 1) and the iteration table next to the paper's numbers, all written to ``--out``.
``qlabref trajectories`` runs the same comparison with more starts and every option.
"""
from __future__ import annotations

import time
from pathlib import Path

NAME = "demo"
HELP = "QLABGrad vs SGD vs Adam on Booth, Eggholder, Himmelblau: figures and iteration table (< 1 min)"
DESCRIPTION = (
    "QLABGrad (with FindPLR), SGD and Adam on the paper's Booth, Eggholder and Himmelblau: a modest sweep over "
    "start points and SGD/Adam learning rates; writes the contour figures (the paper's Figure 2), loss and "
    "learning-rate curves, QLABGrad's quadratic fit at one step (Figure 1) and the iteration table next to the "
    "paper's numbers. `qlabref trajectories` runs the same comparison with more starts and every option."
)

DEMO_STARTS = 5
DEMO_STEPS = 2000


MAX_STARTS = 100
MAX_STEPS = 100_000


def add_arguments(parser):
    from . import _args

    parser.add_argument("--out", default="qlabref-out/demo", help="output folder (default ./qlabref-out/demo)")
    parser.add_argument("--starts", type=_args.positive_int(MAX_STARTS), default=DEMO_STARTS,
                        help=f"start points per function (default {DEMO_STARTS}, at most {MAX_STARTS})")
    parser.add_argument("--steps", type=_args.positive_int(MAX_STEPS), default=DEMO_STEPS,
                        help=f"step budget of every run (default {DEMO_STEPS}, at most {MAX_STEPS})")
    parser.add_argument("--seed", type=_args.seed, default=0, help="seed of the random start points (default 0)")
    parser.add_argument("--optimizers", nargs="+", default=[], metavar="NAME",
                        help="extra optimizers to add (as in `qlabref trajectories`); 'beyond-paper' adds dog, "
                        "dadapt-sgd, dadapt-adam, prodigy, schedulefree-sgd, schedulefree-adamw (default: none)")


def run(args) -> int:
    from . import explain as explain_cmd
    from . import trajectories as traj
    from .. import plots

    t0 = time.perf_counter()
    optimizers = traj.expand_optimizers(list(traj.DEFAULT_OPTIMIZERS) + list(args.optimizers))
    extra = optimizers[len(traj.DEFAULT_OPTIMIZERS):]
    print("qlabref demo: QLABGrad (FindPLR once) vs SGD and Adam (best lr of a small grid)"
          + (f" and {', '.join(extra)}" if extra else "") + " on the paper's "
          f"Booth, Eggholder and Himmelblau; {args.starts} start points each, {args.steps} steps per run at most.",
          flush=True)
    status = traj.run_and_report("demo", traj.DEFAULT_FUNCTIONS, optimizers, args.out,
                                 n_starts=args.starts, seed=args.seed, steps=args.steps)
    if status:
        return status

    # the paper's Figure 1 from real numbers: QLABGrad's second step on Himmelblau (a quartic, so the
    # quadratic is a real approximation; on Booth, a quadratic, the fit would be exact)
    import qlabref as qr

    fn = qr.functions.himmelblau
    p = qr.tensor(traj_start(fn), requires_grad=True)
    r = explain_cmd.explain_step([p], lambda: fn.f(p), "qlabgrad", step=2)
    fig = plots.quadratic_fit_figure(r["alphas"], r["g"], r["a0"], r["a1"], r["a2"], r["pre_lr"], r["alpha_star"],
                                     r["lr"], fallback=r["fallback"], g_lr=r["g_lr"],
                                     title=f"himmelblau from {tuple(float(v) for v in fn.default_start)}: "
                                     "QLABGrad's quadratic fit at step 2 (the paper's Figure 1)")
    path = plots.save(fig, Path(args.out) / "quadratic_fit_himmelblau_step2.png")
    print(f"  {path}")
    print(f"qlabref demo: done in {time.perf_counter() - t0:.1f} s. Open {Path(args.out) / 'trajectories.png'} "
          f"and {Path(args.out) / 'table.md'}; `qlabref trajectories --help` and `qlabref explain --help` for more.")
    return 0


def traj_start(fn):
    import numpy as np

    return np.array(fn.default_start, dtype=np.float64)
