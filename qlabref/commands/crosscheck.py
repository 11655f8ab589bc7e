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
    from ..crosscheck_torch import MAX_BATCH, MAX_STEPS, METHODS
    from . import _args

    parser.add_argument("--model", default="mlp",
                        help="mlp | paper_cnn | resnet18 (qlabref's models, seed 0) or FILE.py:FUNCTION returning a "
                             "torch.nn.Module or a qlabref model (default mlp)")
    parser.add_argument("--data", default=None,
                        help="mnist (default for mlp/paper_cnn) | synthetic (Gaussian images, random labels; default "
                             "otherwise) | FILE.npz with arrays X and y")
    parser.add_argument("--optimizer", default="qlabgrad", choices=METHODS, help="default qlabgrad")
    parser.add_argument("--lr", type=_args.positive_float, default=None, help="learning rate (needed for sgd/adam/...)")
    parser.add_argument("--steps", type=_args.positive_int(MAX_STEPS), default=20,
                        help=f"steps per dtype (default 20, at most {MAX_STEPS})")
    parser.add_argument("--batch-size", type=_args.positive_int(MAX_BATCH), default=32,
                        help=f"minibatch size (default 32; at most the number of examples and {MAX_BATCH})")
    parser.add_argument("--seed", type=_args.seed, default=0, help="seed of the batch order (default 0)")
    parser.add_argument("--dtype", default="both", choices=["float64", "float32", "both"], help="default both")
    parser.add_argument("--tol", type=_args.positive_float, default=None,
                        help="tolerance (default 1e-9 float64, 1e-3 float32)")
    parser.add_argument("--device", default="cpu", help="device of the PyTorch side (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--backend", default=None, choices=["numpy", "numba", "cuda"],
                        help="backend of the reference side (default: the one in force); cuda keeps the reference "
                             "model and each minibatch on the GPU (qlabgrad only)")
    parser.add_argument("--limit", type=_args.bounded_int(0, None), default=2048,
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
    try:
        mod_spec = importlib.util.spec_from_file_location("_crosscheck_user_model", path)
        if mod_spec is None or mod_spec.loader is None:
            raise UsageError(f"--model: '{path}' is not a Python file (name it FILE.py)")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    except UsageError:
        raise
    except SyntaxError as exc:
        raise UsageError(f"--model: '{path}' line {exc.lineno}: SyntaxError: {exc.msg}") from None
    except Exception as exc:  # the user's module failed while it was imported: say where, not a traceback
        raise UsageError(f"--model: importing '{path}' failed: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(module, func, None)):
        raise UsageError(f"--model: '{path}' has no function '{func}'")
    try:
        model = getattr(module, func)()
    except Exception as exc:
        raise UsageError(f"--model: {func}() in '{path}' failed: {type(exc).__name__}: {exc}") from None
    return model, f"{os.path.basename(path)}:{func}"


def _load_npz(spec):
    import zipfile

    import numpy as np

    if not os.path.isfile(spec):
        raise UsageError(f"--data: no such file '{spec}' (use mnist, synthetic or FILE.npz)")
    if os.path.getsize(spec) == 0:
        raise UsageError(f"--data: '{spec}' is empty")
    with open(spec, "rb") as fh:
        magic = fh.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise UsageError(f"--data: '{spec}' holds one array (.npy), not a .npz archive with arrays X and y")
    if not magic.startswith(b"PK"):
        raise UsageError(f"--data: '{spec}' is not a .npz archive (it starts with {magic!r}); expected arrays X and y")
    try:
        f = np.load(spec, allow_pickle=False)
    except ValueError as exc:
        raise UsageError(f"--data: '{spec}' is not a readable .npz archive ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"--data: '{spec}' is not a readable .npz archive ({exc})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise UsageError(f"--data: '{spec}' holds one array, not a .npz archive with arrays X and y")
    with f:
        missing = [k for k in ("X", "y") if k not in f.files]
        if missing:
            raise UsageError(f"--data: '{spec}' has no array {' or '.join(missing)} "
                             f"(it has {', '.join(f.files) or 'none'})")
        out = []
        for k in ("X", "y"):
            try:
                out.append(f[k])
            except ValueError as exc:
                what = "Python objects (not loaded)" if "pickle" in str(exc).lower() else str(exc)
                raise UsageError(f"--data: '{spec}': array {k} holds {what}") from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise UsageError(f"--data: '{spec}': array {k} is damaged ({exc})") from None
    return out


def _load_data(spec, model_spec, limit, seed):
    import numpy as np

    if spec is None:
        spec = "mnist" if model_spec in ("mlp", "paper_cnn") else "synthetic"
    if spec == "mnist":
        from .. import data

        try:
            X, y = data.mnist("train")
        except data.DataError as exc:
            raise UsageError(str(exc)) from None
    elif spec == "synthetic":
        shape = _BUILTIN.get(model_spec)
        if shape is None:
            raise UsageError("--data synthetic needs a built-in --model (the input shape is not known); "
                             "pass --data FILE.npz with your X and y")
        rng = np.random.default_rng(seed)
        n = limit or 2048
        X, y = rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, 10, n)
    else:
        X, y = _load_npz(spec)
        if X.ndim < 2 or len(X) == 0:
            raise UsageError(f"--data: '{spec}': X has shape {X.shape}; need at least one example (N, ...)")
    shape = _BUILTIN.get(model_spec)
    if shape is not None and X.ndim >= 1 and tuple(X.shape[1:]) != shape:
        raise UsageError(f"--data: X has examples of shape {tuple(X.shape[1:])}; --model {model_spec} takes "
                         f"{shape}")
    if limit:
        X, y = X[:limit], y[:limit]
    return X, y, spec


def _check_out(path):
    """--out must be (or become) a writable folder; nothing is created yet."""
    from .. import train

    try:
        train.check_out_dir(path, resume=True, create=False)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: cannot write there (permission denied)")


def _strip(msg):
    return msg[len("crosscheck: "):] if msg.startswith("crosscheck: ") else msg


def run(args) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UsageError("qlabref crosscheck needs PyTorch: pip install 'qlabref[torch]'") from None
    from ..crosscheck_torch import check_device, check_inputs, check_model_fits, crosscheck, plot
    from ..kernels.launch import CudaUnavailableError

    if args.out:
        _check_out(args.out)
    try:
        check_device(args.device)
    except ValueError as e:
        raise UsageError(f"--device: {_strip(str(e))}") from None
    from ..crosscheck_torch import QLAB_METHODS

    if args.lr is None and args.optimizer not in QLAB_METHODS:
        raise UsageError(f"--optimizer {args.optimizer} needs --lr (a learning rate)")
    if args.backend == "cuda":
        if args.optimizer != "qlabgrad":
            raise UsageError(f"--backend cuda runs the reference side on the GPU for --optimizer qlabgrad only, "
                             f"got {args.optimizer}")
        from .. import backends

        try:
            with backends.use_backend("cuda"):  # names the missing package or GPU before any data are loaded
                pass
        except CudaUnavailableError as e:
            raise UsageError(f"--backend cuda: {_strip(str(e))}") from None
    model, model_name = _load_model(args.model)
    X, y, data_name = _load_data(args.data, args.model, args.limit, args.seed)
    try:
        check_inputs(X, y, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    except (TypeError, ValueError) as e:
        msg = _strip(str(e))
        if msg.startswith("batch_size"):
            msg = "--batch-size" + msg[len("batch_size"):] + f" (the examples after --limit {args.limit})"
        raise UsageError(f"--data {data_name}: {msg}" if not msg.startswith("--") else msg) from None
    try:
        check_model_fits(model, X, y)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--model {model_name} with --data {data_name}: {_strip(str(e))}") from None
    if args.out:  # arguments, model and data are valid: only now is the folder created
        from . import _args

        _args.ensure_writable_dir(args.out)
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
            raise UsageError(_strip(str(e))) from None
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
