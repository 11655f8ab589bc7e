"""``qlabref explore``: write one self-contained HTML page for teaching.

In the page a student picks a 2-D test function, clicks a start point on its contour map and steps
through the runs of QLABGrad (FindPLR), SGD, Adam and the learning-rate-free methods after the paper,
with the loss against the step and, for the current QLABGrad step, the paper's Figure 1 drawn from the
engine's own numbers (a0, a1, a2, ᾱ, α*, the step taken, the fallback). Everything is computed here,
in Python (``qlabref.explore``); the page needs no server and no network.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

NAME = "explore"
HELP = "write one self-contained HTML page: click a start point, step through QLABGrad vs SGD/Adam/LR-free runs"
DESCRIPTION = (
    "Write one self-contained HTML file (no server, no network; open it from disk or put it on a course website) in "
    "which a student picks a 2-D test function, clicks a start point on its contour map and steps through the runs "
    "of QLABGrad (FindPLR), SGD, Adam (at the learning rates of the demo's sweep) and DoG, D-Adaptation, Prodigy and "
    "Schedule-Free, with the loss against the step and, for the current QLABGrad step, the paper's Figure 1 drawn "
    "from the engine's own float64 numbers. The runs start from a --grid x --grid lattice of start points per "
    "function (a click picks the nearest) and are computed when the file is written."
)


def add_arguments(parser):
    from .. import explore as E
    from .. import functions as F
    from . import _args

    parser.add_argument("--out", default="qlabref-out/explore.html",
                        help="the HTML file to write (default ./qlabref-out/explore.html)")
    parser.add_argument("--functions", nargs="+", default=None, metavar="NAME",
                        help=f"test functions (default all: {', '.join(F.names())})")
    parser.add_argument("--grid", type=_args.bounded_int(2, E.MAX_GRID), default=E.DEFAULT_GRID,
                        help=f"start points per side: grid × grid starts per function (default {E.DEFAULT_GRID}, "
                        f"from 2 to {E.MAX_GRID}); the time and the file size grow with grid²")
    parser.add_argument("--steps", type=_args.positive_int(E.MAX_STEPS), default=E.DEFAULT_STEPS,
                        help=f"step budget of every run (default {E.DEFAULT_STEPS}, at most {E.MAX_STEPS})")
    parser.add_argument("--jobs", type=_args.positive_int(256), default=1,
                        help="worker processes for the runs (default 1)")
    parser.add_argument("--resweep", action="store_true",
                        help="recompute the SGD/Adam/Schedule-Free learning rates by rerunning the demo's sweep "
                        "(about 20 s per function) instead of using the recorded ones (qlabref.explore.DEMO_LRS)")


def _check_out(path):
    from ..errors import UsageError
    from . import _args

    p = Path(path).expanduser()
    if p.exists() and p.is_dir():
        raise UsageError(f"--out '{path}' is a folder; give the HTML file to write, e.g. {p / 'explore.html'}")
    if p.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out '{path}' should end in .html (the page is one HTML file)")
    _args.ensure_writable_dir(p.parent if str(p.parent) else ".", option="--out's folder")
    return p


def run(args) -> int:
    from .. import explore as E
    from .. import functions as F
    from ..errors import UsageError

    names = args.functions or F.names()
    try:
        fns = [F.get(n).name for n in names]
    except ValueError as e:
        raise UsageError(str(e)) from None
    twice = sorted({n for n in fns if fns.count(n) > 1})
    if twice:
        raise UsageError(f"test function {twice[0]} is given more than once in --functions")
    out = _check_out(args.out)

    t0 = time.perf_counter()
    lrs = E.DEMO_LRS
    if args.resweep:
        print(f"qlabref explore: rerunning the demo's learning-rate sweep on {', '.join(fns)} …", flush=True)
        lrs = E.lrs_from_sweep(fns, progress=True)
        for f in fns:
            print(f"  {f}: " + ", ".join(f"{o} lr={v:g}" for o, v in lrs[f].items()), flush=True)
    total = len(fns) * args.grid * args.grid * len(E.OPTIMIZERS)
    print(f"qlabref explore: {total} runs ({', '.join(fns)} × {args.grid}×{args.grid} starts × {len(E.OPTIMIZERS)} "
          f"optimizers), at most {args.steps} steps each; writing {out}", flush=True)

    from tqdm import tqdm

    tty = sys.stderr.isatty()  # on a terminal a live bar; in a log a line every 15 s
    bar = tqdm(total=total, desc="explore", unit="run", file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if tty else 15.0)

    def progress(n, what):
        bar.set_postfix_str(what, refresh=False)
        bar.update(n)

    try:
        data = E.build_data(fns, grid=args.grid, steps=args.steps, lrs=lrs, jobs=args.jobs, progress=progress)
    finally:
        bar.close()
    path, size = E.write_page(out, data)
    print(f"qlabref explore: wrote {path} ({size / 1e6:.2f} MB) in {time.perf_counter() - t0:.1f} s; "
          f"open it in a browser (it needs no server).")
    return 0
