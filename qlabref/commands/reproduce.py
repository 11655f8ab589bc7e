"""``qlabref reproduce mnist-mlp | mnist-cnn``: the paper's MNIST grid, resumable, local or on Dask;
see :mod:`qlabref.reproduce` for the protocol and every choice made where the paper is silent."""
from __future__ import annotations

import os
import time

from ..errors import UsageError

NAME = "reproduce"
HELP = "reproduce the paper's MNIST experiments (Table 2, Figures 3-5 and 8, time per step): resumable grid"
DESCRIPTION = (
    "Run the paper's MNIST grid (QLABGrad, SGD, RMSprop, Adagrad, Adam, HGD, L4GD, LQA, SGD with SS/E/CA decay, "
    "RMSprop and Adam at lr 1e-3; seeds 0-2) with `qlabref train`, local processes (one BLAS thread each) or a Dask "
    "cluster (--dask ADDRESS), never re-running a finished run and resuming interrupted ones; then write "
    "RESULTS/<grid>.md with the tables, figures, FindPLR trace and time per step. --quick runs the same pipeline "
    "small (300 iterations, one seed)."
)


#: seconds to wait for the Dask scheduler of --dask before giving up (checked before anything runs)
DASK_CONNECT_TIMEOUT = 5


def add_arguments(parser):
    from .. import reproduce
    from . import _args

    parser.add_argument("grid", choices=sorted(reproduce.GRIDS), help="which experiment")
    parser.add_argument("--quick", action="store_true", help="300 iterations, seed 0 (checks the pipeline in minutes)")
    parser.add_argument("--jobs", type=_args.bounded_int(1, 64), default=None,
                        help="parallel local runs, 1..64 (default: the number of cores)")
    parser.add_argument("--dask", default=None, metavar="ADDRESS",
                        help=f"send the runs to this Dask scheduler (e.g. tcp://host:8786; it must answer within "
                        f"{DASK_CONNECT_TIMEOUT} s, checked before anything runs)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="M", help="only these methods (default all)")
    parser.add_argument("--seeds", nargs="+", type=_args.seed, default=None, metavar="S",
                        help="only these seeds (integers 0..2**63-1)")
    parser.add_argument("--runs-dir", default="runs/reproduce", metavar="DIR",
                        help="where run directories (checkpoints, full records) go (default runs/reproduce)")
    parser.add_argument("--results", default="demos/results", metavar="DIR",
                        help="where the small per-run records, tables and figures go (default demos/results)")
    parser.add_argument("--tables-only", action="store_true",
                        help="run no training; rebuild the tables and figures from the committed records (the time per "
                             "step is the committed one, RESULTS/<grid>/timing.json, unless --measure-time)")
    parser.add_argument("--measure-time", action="store_true",
                        help="measure the time per step again (one process, one BLAS thread; minutes) and keep it in "
                             "RESULTS/<grid>/timing.json with the machine, the BLAS and the load")
    parser.add_argument("--no-timing", action="store_true", help="leave the time per step out of the tables")
    parser.add_argument("--no-findplr", action="store_true", help="skip the FindPLR trace")


def run(args) -> int:
    from .. import reproduce
    from ..train import check_out_dir

    if args.measure_time and args.no_timing:
        raise UsageError("--measure-time and --no-timing contradict each other: give one")
    if args.methods is not None:
        unknown = sorted(set(args.methods) - set(reproduce.METHODS))
        if unknown:
            raise UsageError(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(reproduce.ORDER)}")
        outside = [m for m in reproduce.ORDER if m in args.methods and m not in reproduce.GRIDS[args.grid]["seeds"]]
        if outside:
            raise UsageError(f"--methods: {', '.join(outside)} not in the {args.grid} grid; its methods: "
                             + ", ".join(m for m in reproduce.ORDER if m in reproduce.GRIDS[args.grid]["seeds"]))
    client = None
    if args.dask is not None:
        try:
            import dask.distributed  # noqa: F401
        except ImportError:
            raise UsageError("--dask needs dask.distributed: pip install 'qlabref[dask]'") from None
        client = _connect(args.dask)
    try:
        for d in ((args.results,) if args.tables_only else (args.runs_dir, args.results)):
            try:
                check_out_dir(d, resume=True)
            except ValueError as exc:
                raise UsageError(str(exc).replace("--out", "folder")) from None
        return _run(args, client)
    finally:
        if client is not None:
            client.close()


def _connect(address):
    """A dask Client for ``address``, or a one-line UsageError within DASK_CONNECT_TIMEOUT seconds."""
    import logging

    from dask.distributed import Client

    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the one-line error below says it; no log lines before it
    try:
        return Client(address, timeout=f"{DASK_CONNECT_TIMEOUT}s")
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise UsageError(f"--dask {address}: no Dask scheduler answered within {DASK_CONNECT_TIMEOUT} s "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
    finally:
        quiet.setLevel(level)


def _run(args, client):
    import sys

    from .. import reproduce

    t0 = time.time()
    statuses = {}
    if not args.tables_only:
        # the data must be there before parallel runs start (one fetch, not one per process)
        from .. import data

        if data.mnist_cache_info()["exists"] is False:
            try:
                data.fetch_mnist()
            except data.DataError as exc:
                raise UsageError(str(exc)) from None
        statuses = reproduce.run_grid(args.grid, args.runs_dir, args.results, jobs=args.jobs, quick=args.quick,
                                      methods=args.methods, seeds=args.seeds,
                                      dask=client if client is not None else None)
    cmd = "qlabref reproduce " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else f"qlabref reproduce {args.grid}"
    path = reproduce.write_results(args.grid, args.results, quick=args.quick, command=cmd, wall=time.time() - t0,
                                   with_timing=not args.no_timing, with_findplr=not args.no_findplr,
                                   measure_time=args.measure_time)
    print(path)
    bad = [k for k, v in statuses.items() if v not in ("finished", "diverged", "failed")]
    if bad:
        print(f"qlabref reproduce: {len(bad)} run(s) did not complete: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0
