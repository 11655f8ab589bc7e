"""``qlabref crosscheck``: a PyTorch run and the reference engine side by side (``qr.crosscheck``).

Prints the per-step relative differences (loss, probe loss, α*, α_t, parameters, BatchNorm buffers)
and a one-line verdict per dtype, and with ``--out DIR`` writes ``crosscheck.csv`` and
``crosscheck.png`` (differences against the step).

Exit code 1 if the float64 check differs (or, with ``--dtype float32`` alone, the float32 one). In
float32 two correct implementations part after some steps by rounding alone (the libraries round the
float32 forward pass differently, Eq. (10)'s denominator is a difference of two nearly equal losses,
and each α_t feeds the next step): with ``--dtype both`` the float32 verdict says after how many steps
that happens, for information.

Your own model and data: ``--model path/to/file.py:build`` (a function returning a torch.nn.Module
or a qlabref model) and ``--data path/to/data.npz`` (arrays ``X`` and ``y``).
"""
from __future__ import annotations

import os
import sys

from ..errors import UsageError

NAME = "crosscheck"
HELP = "run a PyTorch loop and the reference engine side by side; per-step differences and a verdict"
DESCRIPTION = (
    "From one initial state, one batch order and one optimizer, run PyTorch (qlabref.torch or torch.optim) and "
    "qlabref's reference engine for N steps and report per step the relative differences of the loss, the probe "
    "loss g(prelr), alpha*, the learning rate alpha_t, the parameters and the BatchNorm buffers, with a verdict "
    "naming the first step and quantity above the tolerance. Exit code 1 if the float64 check differs (float32 runs "
    "part after some steps by rounding alone; with --dtype both their verdict is for information)."
)

_BUILTIN = {"mlp": (1, 28, 28), "paper_cnn": (1, 28, 28), "resnet18": (3, 32, 32)}


def add_arguments(parser):
    from ..crosscheck_torch import METHODS

    parser.add_argument("--model", default="mlp",
                        help="mlp | paper_cnn | resnet18 (qlabref's models, seed 0) or FILE.py:FUNCTION returning a "
                             "torch.nn.Module or a qlabref model (default mlp)")
    parser.add_argument("--data", default=None,
                        help="mnist (default for mlp/paper_cnn) | synthetic (Gaussian images, random labels; default "
                             "otherwise) | FILE.npz with arrays X and y")
    parser.add_argument("--optimizer", default="qlabgrad", choices=METHODS, help="default qlabgrad")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (needed for sgd/adam/...)")
    parser.add_argument("--steps", type=int, default=20, help="steps per dtype (default 20)")
    parser.add_argument("--batch-size", type=int, default=32, help="minibatch size (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch order (default 0)")
    parser.add_argument("--dtype", default="both", choices=["float64", "float32", "both"], help="default both")
    parser.add_argument("--tol", type=float, default=None, help="tolerance (default 1e-9 float64, 1e-3 float32)")
    parser.add_argument("--device", default="cpu", help="device of the PyTorch side (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--backend", default=None, choices=["numpy", "numba", "cuda"],
                        help="backend of the reference side (default: the one in force); cuda keeps the reference "
                             "model and each minibatch on the GPU (qlabgrad only)")
    parser.add_argument("--limit", type=int, default=2048,
                        help="use only the first LIMIT examples of the data (default 2048; 0 = all)")
    parser.add_argument("--out", default=None, help="folder for crosscheck.csv and crosscheck.png")
    parser.add_argument("--quiet", action="store_true", help="print only the verdicts")


def _load_model(spec):
    import importlib.util

    from .. import models

    if spec in _BUILTIN:
        import numpy as np

        return models.get(spec, dtype=np.float64), spec
    if ":" not in spec:
        raise UsageError(f"--model: unknown model {spec!r}; use mlp, paper_cnn, resnet18 or FILE.py:FUNCTION")
    path, func = spec.rsplit(":", 1)
    if not os.path.isfile(path):
        raise UsageError(f"--model: no such file '{path}'")
    mod_spec = importlib.util.spec_from_file_location("_crosscheck_user_model", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not callable(getattr(module, func, None)):
        raise UsageError(f"--model: '{path}' has no function '{func}'")
    return getattr(module, func)(), f"{os.path.basename(path)}:{func}"


def _load_data(spec, model_spec, limit, seed):
    import numpy as np

    if spec is None:
        spec = "mnist" if model_spec in ("mlp", "paper_cnn") else "synthetic"
    if spec == "mnist":
        from .. import data

        X, y = data.mnist("train")
    elif spec == "synthetic":
        shape = _BUILTIN.get(model_spec)
        if shape is None:
            raise UsageError("--data synthetic needs a built-in --model (the input shape is not known); "
                             "pass --data FILE.npz with your X and y")
        rng = np.random.default_rng(seed)
        n = limit or 2048
        X, y = rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, 10, n)
    else:
        if not os.path.isfile(spec):
            raise UsageError(f"--data: no such file '{spec}' (use mnist, synthetic or FILE.npz)")
        with np.load(spec, allow_pickle=False) as f:
            missing = [k for k in ("X", "y") if k not in f.files]
            if missing:
                raise UsageError(f"--data: '{spec}' has no array {' or '.join(missing)} (it has {', '.join(f.files)})")
            X, y = f["X"], f["y"]
    if limit:
        X, y = X[:limit], y[:limit]
    return X, y, spec


def run(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("qlabref crosscheck needs PyTorch: pip install 'qlabref[torch]'") from None
    from ..crosscheck_torch import crosscheck, plot
    from ..kernels.launch import CudaUnavailableError

    if args.steps < 1 or args.batch_size < 1:
        raise UsageError("--steps and --batch-size must be >= 1")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        if not os.access(args.out, os.W_OK):
            raise UsageError(f"--out: cannot write to '{args.out}'")
    model, model_name = _load_model(args.model)
    X, y, data_name = _load_data(args.data, args.model, args.limit, args.seed)
    options = {} if args.lr is None else {"lr": args.lr}
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    print(f"qlabref crosscheck: {model_name} on {data_name} ({len(X)} examples), {args.optimizer}, "
          f"batch {args.batch_size}, seed {args.seed}, {args.steps} steps, PyTorch on {args.device}"
          + (f", reference on the {args.backend} backend" if args.backend else ""))
    results = []
    for dt in dtypes:
        bar = None
        if sys.stderr.isatty():  # a progress bar on a terminal (the table follows each dtype's run)
            from tqdm import tqdm

            bar = tqdm(total=args.steps, desc=f"crosscheck {dt}", unit="step", file=sys.stderr, leave=False)
        try:
            res = crosscheck(model, X, y, optimizer=args.optimizer, steps=args.steps, batch_size=args.batch_size,
                             seed=args.seed, dtype=dt, options=options, tol=args.tol, device=args.device,
                             model_name=model_name, callback=(lambda row: bar.update(1)) if bar else None,
                             backend=args.backend)
        except (TypeError, ValueError, CudaUnavailableError) as e:
            raise UsageError(f"crosscheck: {e}") from e
        finally:
            if bar is not None:
                bar.close()
        results.append(res)
        if not args.quiet:
            print(f"[{dt}]")
            print(res.table())
    for res in results:
        print(res.verdict())
    if args.out:
        csv_path = os.path.join(args.out, "crosscheck.csv")
        rows = [dict(dtype=r.dtype, **row) for r in results for row in r.rows]
        import csv

        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        png = os.path.join(args.out, "crosscheck.png")
        plot(results, png, title=f"PyTorch vs qlabref: {model_name}, {args.optimizer}, batch {args.batch_size}")
        print(f"wrote {csv_path} and {png}")
    decisive = [r for r in results if r.dtype == "float64"] or results
    if any(not r.ok for r in results if r not in decisive):
        print("(float32 runs part by rounding alone after some steps; the exit status follows the float64 check)")
    return 0 if all(r.ok for r in decisive) else 1
