"""``qlabref plot DIR [DIR ...]``: learning-rate (Figure 3) and training-loss (Figures 4–7) figures
from the records of training runs; see :mod:`qlabref.runplots`."""
from __future__ import annotations

import os

from ..errors import UsageError

NAME = "plot"
HELP = "figures from training runs: learning rate (the paper's Figure 3) and training loss with a zoomed inset (Figures 4-7)"
DESCRIPTION = (
    "Draw the learning rate against the iteration (Figure 3) and the training loss, raw and smoothed, with an "
    "optional zoomed inset (Figures 4-7), one legend entry per run directory written by `qlabref train`. Runs "
    "that diverged are marked and clipped (the legend says so). Writes lr.png/svg and loss.png/svg, and qlab.png/svg (α*, ᾱ, ‖∇L‖², a2, loss per step) when a run is of the QLAB family."
)


def _zoom(text):
    import argparse

    parts = text.split(":")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0:X1:Y0:Y1 (numbers), got {text!r}") from None
    if len(vals) != 4 or not (vals[0] < vals[1] and vals[2] < vals[3]):
        raise argparse.ArgumentTypeError(f"expected X0:X1:Y0:Y1 with X0 < X1 and Y0 < Y1, got {text!r}")
    return tuple(vals)


def _smooth(text):
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= v <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected 1..1000000, got {v}")
    return v


def add_arguments(parser):
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (from qlabref train)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where to write the figures (default: DIR/figures of the first run)")
    parser.add_argument("--smooth", type=_smooth, default=100, help="moving-average window in iterations (default 100)")
    parser.add_argument("--zoom", type=_zoom, default=None, metavar="X0:X1:Y0:Y1",
                        help="zoomed inset of the loss figure, e.g. 0:10000:0:0.2 (the paper's Figure 4)")
    parser.add_argument("--log-lr", action="store_true", help="log-scale learning-rate axis")
    parser.add_argument("--log-loss", action="store_true", help="log-scale loss axis")
    parser.add_argument("--title", default=None, help="figure title prefix")


def run(args) -> int:
    from .. import runplots
    from ..train import check_out_dir

    for d in args.dirs:
        if not os.path.isdir(d):
            raise UsageError(f"{d}: no such run directory")
        if not os.path.isfile(os.path.join(d, "steps.csv")):
            raise UsageError(f"{d}: not a run directory (no steps.csv)")
    out = args.out or os.path.join(args.dirs[0], "figures")
    try:
        check_out_dir(out, resume=True, create=False)  # created once the records have been read
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        paths = runplots.plot_runs(args.dirs, out, smooth=args.smooth, zoom=args.zoom, log_lr=args.log_lr,
                                   log_loss=args.log_loss, title=args.title)
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    for p in paths:
        print(p)
    return 0
