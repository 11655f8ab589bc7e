"""The training runner: config in, run directory out, never losing work.

``run(config)`` (and ``qlabref train``) trains one model with one optimizer on one data set for a
fixed number of iterations and writes, into ``config["out"]``:

``config.json``
    the full configuration (written once, atomically; ``--resume`` reads it back).
``steps.csv``
    one row per step, appended and flushed every step: ``iter, loss, lr, evals`` and, for the QLAB
    family, ``a0, a1, a2, alpha_star, pre_lr, fallback`` (empty for other methods). ``loss`` is the
    minibatch loss at θ before the step (the loss the optimizer evaluated), ``lr`` the learning rate the
    step used (``last_step["lr"]``: α_t for QLABGrad, the group lr for SGD, ‖Δθ‖/‖∇L‖ for adaptive
    methods). Every number is written with ``repr`` (shortest round-trip form), so the file is a
    deterministic function of the configuration: two runs with the same arguments, and a run resumed
    after any interruption, give byte-identical files.
``timing.csv``
    wall-clock seconds of every step, split into ``data`` (batch assembly), ``forward_backward``,
    ``probe`` (QLAB's extra forward, FindPLR, LQA's probes), ``update`` (the rest of the optimizer's
    step) and ``records``. Wall time differs between runs, so it lives here and not in ``steps.csv``,
    which must be byte-identical between a run and its resumed twin.
``evals.csv``
    ``iter, test_loss, test_accuracy`` at iteration 0, every ``eval_every`` steps and at the end
    (model in eval mode, no graph; Schedule-Free's ``opt.eval()``/``opt.train()`` around it).
``checkpoint.json`` + ``checkpoint-<sha256>.npz``
    model, optimizer state, schedule state, data-order position, the byte length and SHA-256 of every
    record file and the environment the bit-identity depends on, every ``checkpoint_every`` steps and at
    the end: data only (arrays in the ``.npz``, read with ``allow_pickle=False``; the rest tagged JSON),
    with a format version and checksums, written atomically (:mod:`qlabref.runfolder`).
``summary.json``
    configuration, package versions, git commit, machine, status (``finished`` / ``diverged`` /
    ``failed`` / ``interrupted`` / ``running``), the reason and step where a run stopped, final test
    loss/accuracy, wall time, mean time per step split as in ``timing.csv``, and for the QLAB family
    how often the fallback α = ᾱ was taken, FindPLR ran and the probe was not finite. Rewritten at every
    checkpoint and at the end.

Resume (``resume(dir)``, ``qlabref train --resume DIR``): first the whole run folder is validated
against the checkpoint, without changing a byte: the checkpoint's own checksums and format,
``config.json`` against the configuration the checkpoint was made with, every record file (present, at
least as long as the checkpoint recorded, its first bytes unchanged (SHA-256) and parsing row by row up
to the checkpoint's iteration), and the environment (thread counts, versions, BLAS, CPU, backend: a
difference is refused unless ``allow_drift=True`` / ``--allow-drift``, and is then recorded in
``summary.json``). Any failure raises :class:`~qlabref.runfolder.RunFolderError` naming the file and the
problem, and the folder is left exactly as it was. Only then is every record file cut back to its length
at the checkpoint (rows written after it are dropped and recomputed) and the run continues. This works
after a SIGKILL at any moment: files are appended and flushed per step, checkpoints are replaced
atomically, and the rows past the checkpoint are recomputed bit-identically (same batches, same state,
same environment). A run killed before its first checkpoint restarts from iteration 0. An old
``checkpoint.pkl`` is refused (a pickle can run code when loaded).

Stops: a non-finite loss (``NonFiniteLossError`` from the optimizer, or a NaN/inf loss returned by one
that does not check) ends the run with status ``diverged``; its row is written with the non-finite
loss, everything recorded so far is kept, ``summary.json`` names the step, and the exit code of
``qlabref train`` is 3. A ``FindPLRError`` or another optimizer error gives status ``failed``
(exit code 4). Ctrl-C gives ``interrupted`` (exit code 130) and can be resumed.

Seeds: ``seed`` fixes the model's initial weights (``qr.models.*(seed=seed)``) and the data order
(``qr.data.batches(..., seed=seed)``, a permutation per epoch from ``default_rng([seed, epoch])``).
"""
from __future__ import annotations

import ast
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

__all__ = ["TrainConfig", "run", "resume", "load_config", "build_model", "load_data", "evaluate", "check_data",
           "parse_kv", "RunDirLocked", "RunFolderError", "STEP_COLUMNS", "TIMING_COLUMNS", "EVAL_COLUMNS",
           "EXIT_CODES", "RunStopped"]

STEP_COLUMNS = ("iter", "loss", "lr", "evals", "a0", "a1", "a2", "alpha_star", "pre_lr", "fallback")
QLAB_COLUMNS = ("a0", "a1", "a2", "alpha_star", "pre_lr", "fallback")
TIMING_COLUMNS = ("iter", "seconds", "data", "forward_backward", "probe", "update", "records")
EVAL_COLUMNS = ("iter", "test_loss", "test_accuracy")
#: exit codes of ``qlabref train``
EXIT_CODES = {"finished": 0, "usage": 2, "diverged": 3, "failed": 4, "interrupted": 130}

MODELS = ("mlp", "cnn", "resnet18")
DATASETS = ("mnist", "cifar10", "tiny-imagenet")
SCHEDULES = {
    # paper name / short name -> class in qr.optim.lr_scheduler
    "e-decay": "ExponentialLR", "exponential": "ExponentialLR", "exponentiallr": "ExponentialLR",
    "ss-decay": "StepLR", "step": "StepLR", "steplr": "StepLR",
    "ca-decay": "CosineAnnealingLR", "cosine": "CosineAnnealingLR", "cosineannealinglr": "CosineAnnealingLR",
    "r-decay": "InverseTimeLR", "inverse-time": "InverseTimeLR", "inversetimelr": "InverseTimeLR",
}

DEFAULTS = dict(
    model="mlp", data="mnist", optimizer="qlabgrad", opt={}, schedule=None, iters=30000, batch=64, seed=0,
    eval_every=1000, checkpoint_every=None, dtype="float32", out=None, data_dir=None, train_limit=None,
    test_limit=None, eval_batch=1000, flat_buffers=False,
)


from .runfolder import RunFolderError  # noqa: E402  (re-exported: a run folder that cannot be resumed)


class RunDirLocked(ValueError):
    """Another process is training into the same run directory."""


class RunStopped(RuntimeError):
    """Raised by :func:`run` with ``raise_on_stop=True`` when a run ends other than ``finished``."""

    def __init__(self, summary):
        super().__init__(f"run stopped: {summary.get('status')}: {summary.get('reason')}")
        self.summary = summary


# ---------------------------------------------------------------------------------------- config
def parse_value(text: str):
    """``key=value`` values: Python literals (``0.1``, ``1e-3``, ``(0.9, 0.999)``, ``True``), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_kv(items, what="--opt"):
    """``["lr=0.1", "momentum=0.9"]`` → ``{"lr": 0.1, "momentum": 0.9}``; a malformed item raises
    ``ValueError`` naming it."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"{what}: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise ValueError(f"{what}: {key!r} is not a valid option name (in {item!r})")
        if key in out:
            raise ValueError(f"{what}: {key} given twice")
        out[key] = parse_value(value)
    return out


class TrainConfig(dict):
    """The run's configuration: a dict with the keys of ``DEFAULTS``, checked by :meth:`validate`."""

    def __init__(self, *args, **kwargs):
        super().__init__(copy.deepcopy(DEFAULTS))
        given = dict(*args, **kwargs)
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"TrainConfig: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(DEFAULTS))}")
        self.update(copy.deepcopy(given))
        self.validate()

    def validate(self):
        from . import optim

        c = self
        if c["model"] not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {c['model']!r}")
        if c["data"] not in DATASETS:
            raise ValueError(f"data must be one of {', '.join(DATASETS)}, got {c['data']!r}")
        if str(c["optimizer"]).lower() not in optim.names():
            raise ValueError(f"unknown optimizer {c['optimizer']!r}; known: {', '.join(optim.names())}")
        c["optimizer"] = str(c["optimizer"]).lower()
        for key, lo in (("iters", 1), ("batch", 1), ("eval_every", 1), ("eval_batch", 1)):
            _check_int(key, c[key], lo)
        _check_int("seed", c["seed"], 0)
        for key in ("checkpoint_every", "train_limit", "test_limit"):
            if c[key] is not None:
                _check_int(key, c[key], 1)
        if c["dtype"] not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {c['dtype']!r}")
        if not isinstance(c["opt"], dict):
            raise ValueError(f"opt must be a dict of optimizer options, got {type(c['opt']).__name__}")
        if c["model"] == "cnn" and c["data"] != "mnist":
            raise ValueError("model cnn (the paper's MNIST CNN) takes 28x28 greyscale images: use --data mnist")
        if c["model"] == "resnet18" and c["data"] == "mnist":
            raise ValueError("model resnet18 takes 3-channel images: use --data cifar10 or tiny-imagenet")
        if c["data"] in ("cifar10", "tiny-imagenet") and not c["data_dir"]:
            raise ValueError(f"data {c['data']} is read from files you have: give data_dir (--data-dir)")
        s = c["schedule"]
        if s is not None:
            if not isinstance(s, dict) or "name" not in s:
                raise ValueError(f"schedule must be a dict with 'name' and its options, got {s!r}")
            if str(s["name"]).lower() not in SCHEDULES:
                raise ValueError(f"unknown schedule {s['name']!r}; known: {', '.join(sorted(SCHEDULES))}")
            if "every" in s:
                _check_int("schedule every", s["every"], 1)
        return self


def _check_int(key, value, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{key} must be an integer >= {lo}, got {value!r}")


def load_config(out) -> TrainConfig:
    path = os.path.join(out, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (is {out} a qlabref run directory?)")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    try:
        return TrainConfig(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------- building blocks
def load_data(config):
    """``(X_train, y_train, X_test, y_test)`` for the config (limits applied)."""
    from . import data

    name, root = config["data"], config["data_dir"]
    if name == "mnist":
        Xtr, ytr = data.mnist("train", root=root)
        Xte, yte = data.mnist("test", root=root)
    elif name == "cifar10":
        Xtr, ytr = data.cifar10(root, "train")
        Xte, yte = data.cifar10(root, "test")
    else:
        Xtr, ytr = data.tiny_imagenet(root, "train")
        Xte, yte = data.tiny_imagenet(root, "val")
    if config["train_limit"]:
        Xtr, ytr = Xtr[:config["train_limit"]], ytr[:config["train_limit"]]
    if config["test_limit"]:
        Xte, yte = Xte[:config["test_limit"]], yte[:config["test_limit"]]
    return Xtr, ytr, Xte, yte


def build_model(config, sample_shape, num_classes):
    from . import models

    dtype = np.dtype(config["dtype"]).type
    name = config["model"]
    if name == "mlp":
        return models.mlp((int(np.prod(sample_shape)), 1000, 1000, num_classes), seed=config["seed"], dtype=dtype)
    if name == "cnn":
        return models.paper_cnn(num_classes=num_classes, seed=config["seed"], dtype=dtype)
    variant = "imagenet" if config["data"] == "tiny-imagenet" else "cifar"
    return models.resnet18(num_classes=num_classes, variant=variant, seed=config["seed"], dtype=dtype)


def build_schedule(config, opt):
    from .optim import lr_scheduler

    s = config["schedule"]
    if s is None:
        return None, 1
    kwargs = {k: v for k, v in s.items() if k not in ("name", "every")}
    cls = getattr(lr_scheduler, SCHEDULES[str(s["name"]).lower()])
    try:
        return cls(opt, **kwargs), int(s.get("every", 1))
    except TypeError as exc:
        raise ValueError(f"schedule {s['name']}: {exc}") from None


def evaluate(model, X, y, batch=1000, dtype=np.float32):
    """Mean cross-entropy and accuracy of ``model`` on ``(X, y)`` in eval mode, without a graph."""
    from . import no_grad, tensor
    from .nn import functional as F

    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    try:
        with no_grad():
            for i in range(0, len(X), batch):
                xb = tensor(np.asarray(X[i:i + batch], dtype=dtype))
                yb = np.asarray(y[i:i + batch])
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                total_loss += float(loss.data) * len(yb)
                correct += int(np.sum(np.argmax(logits.data, axis=1) == yb))
    finally:
        model.train(was_training)
    return total_loss / len(X), correct / len(X)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(float(value))


def _versions():
    out = {"python": platform.python_version()}
    for mod in ("numpy", "scipy", "numba", "matplotlib"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            out[mod] = None
    from . import __version__

    out["qlabref"] = __version__
    return out


def git_commit():
    """The commit of the qlabref source tree, when it is a git checkout (with ``+dirty`` if modified)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info():
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "hostname": platform.node()}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "QLABREF_BACKEND"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    return info


def _atomic_write_bytes(path, data: bytes):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_json(path, obj):
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def check_out_dir(out, resume=False, create=True):
    """Check that ``out`` can be the run folder and (``create``) create it; raise ``ValueError`` naming
    the problem. With ``create=False`` nothing is created: an existing folder is test-written, a missing
    one needs a writable existing parent (so a failing command leaves no empty run folder behind)."""
    if out is None:
        raise ValueError("no output folder given (out / --out)")
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out}: exists and is a file, not a folder")
    if not create and not os.path.exists(out):
        parent = os.path.dirname(os.path.abspath(out))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ValueError(f"--out {out}: cannot be created: {parent} is a file")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"--out {out}: cannot be created: {parent} is not writable")
        return out
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".qlabref-write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    if not resume and os.path.exists(os.path.join(out, "steps.csv")):
        raise ValueError(f"--out {out}: already holds a run (steps.csv); use --resume {out} to continue it, "
                         f"or choose another folder")
    return out


#: the image shape each data set's records stand for, and its number of classes
DATA_SHAPES = {"mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10), "tiny-imagenet": ((3, 64, 64), 200)}


def check_data(config, data):
    """``data`` = ``(X_train, y_train, X_test, y_test)`` checked against ``config`` before anything is
    created: array-likes of numbers (lists are converted), images of the shape ``config["data"]`` stands
    for (``(1, 28, 28)`` for mnist, ``(3, 32, 32)`` cifar10, ``(3, 64, 64)`` tiny-imagenet), all finite,
    integer labels in ``[0, classes)``, one label per image, neither split empty. Returns the four
    arrays; ``ValueError`` naming the array and the problem otherwise."""
    if not isinstance(data, (tuple, list)) or len(data) != 4:
        got = type(data).__name__ + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        raise ValueError(f"data must be a tuple (X_train, y_train, X_test, y_test), got {got}")
    shape, classes = DATA_SHAPES[config["data"]]
    out = []
    for name, arr in zip(("X_train", "y_train", "X_test", "y_test"), data):
        try:
            a = np.asarray(arr)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"data: {name} is not an array ({str(exc)[:80]})") from None
        if a.dtype.hasobject or a.dtype.kind not in "biuf":
            raise ValueError(f"data: {name} must hold numbers, got dtype {a.dtype}")
        out.append(a)
    Xtr, ytr, Xte, yte = out
    for xn, X, yn, y in (("X_train", Xtr, "y_train", ytr), ("X_test", Xte, "y_test", yte)):
        if X.shape[1:] != shape or X.ndim != 4:
            raise ValueError(f"data: {xn} has shape {X.shape}; data={config['data']!r} needs images of shape "
                             f"(N, {', '.join(map(str, shape))})")
        if len(X) == 0:
            raise ValueError(f"data: {xn} is empty")
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"data: {yn} has shape {y.shape}; need one label per image ({len(X)},)")
        if y.dtype.kind not in "iu":
            raise ValueError(f"data: {yn} must hold integer class labels, got dtype {y.dtype}")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= classes:
            raise ValueError(f"data: {yn} holds labels from {lo} to {hi}; data={config['data']!r} has classes "
                             f"0..{classes - 1}")
        if X.dtype.kind == "f" and not np.isfinite(X).all():
            raise ValueError(f"data: {xn} holds {int(np.size(X) - np.isfinite(X).sum())} NaN/inf values")
    return Xtr, ytr.astype(np.int64, copy=False), Xte, yte.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------- the run
class _Records:
    """The three CSV files, appended and flushed row by row; cut back to a checkpoint on resume."""

    def __init__(self, out, sizes=None):
        self.paths = {"steps": os.path.join(out, "steps.csv"), "timing": os.path.join(out, "timing.csv"),
                      "evals": os.path.join(out, "evals.csv")}
        headers = {"steps": STEP_COLUMNS, "timing": TIMING_COLUMNS, "evals": EVAL_COLUMNS}
        self.files = {}
        for key, path in self.paths.items():
            if sizes is not None:
                with open(path, "r+b") as f:  # drop the rows written after the checkpoint
                    f.truncate(sizes[key])
                self.files[key] = open(path, "ab")
            else:
                self.files[key] = open(path, "wb")
                self.write(key, headers[key])

    def write(self, key, values):
        f = self.files[key]
        f.write((",".join(v if isinstance(v, str) else _fmt(v) for v in values) + "\n").encode())
        f.flush()

    def sizes(self):
        return {key: f.tell() for key, f in self.files.items()}

    def close(self):
        for f in self.files.values():
            f.close()


def _summarize_records(out):
    """QLAB statistics and timing means, read back from the record files (so they survive resumes)."""
    stats = {}
    steps = _read_csv(os.path.join(out, "steps.csv"))
    if steps:
        stats["steps_recorded"] = len(steps)
        losses = [float(r["loss"]) for r in steps]
        tail = losses[-min(len(losses), 100):]
        stats["final_train_loss_mean_last_100"] = float(np.mean(tail)) if tail else None
        fb = [r["fallback"] for r in steps if r["fallback"] != ""]
        if fb:
            stats["qlab_steps"] = len(fb)
            stats["fallback_steps"] = int(sum(v == "1" for v in fb))
            stats["fallback_fraction"] = stats["fallback_steps"] / len(fb)
            stars = [float(r["alpha_star"]) for r in steps if r["alpha_star"] not in ("",)]
            stats["alpha_star_max"] = max(stars) if stars else None
            lrs = [float(r["lr"]) for r in steps if r["lr"] != ""]
            stats["lr_median"] = float(np.median(lrs)) if lrs else None
            stats["lr_max"] = max(lrs) if lrs else None
    timing = _read_csv(os.path.join(out, "timing.csv"))
    if timing:
        cols = [c for c in TIMING_COLUMNS if c != "iter"]
        means = {c: float(np.mean([float(r[c]) for r in timing])) for c in cols}
        stats["time_per_step_ms"] = {c: 1000 * v for c, v in means.items()}
        step_total = means["seconds"]
        stats["overhead_fraction"] = {
            "data": means["data"] / step_total if step_total else None,
            "records": means["records"] / step_total if step_total else None,
        }
    return stats


def _read_csv(path):
    import csv

    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _qlab_fields(record):
    if "alpha_star" not in record and "pre_lr" not in record:
        return [None] * len(QLAB_COLUMNS)
    pre = record.get("pre_lr", record.get("beta"))
    return [record.get("a0"), record.get("a1"), record.get("a2"), record.get("alpha_star"), pre,
            bool(record.get("fallback", False))]


class _Progress:
    """tqdm on a terminal; plain lines (about 20 per run, at least every 30 s) otherwise; nothing when quiet."""

    def __init__(self, total, initial, quiet, label):
        self.quiet, self.total, self.label = quiet, total, label
        self.bar = None
        self.last_line = time.monotonic()
        self.t0, self.i0 = time.monotonic(), initial
        self.every = max(1, total // 20)
        if quiet:
            return
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit="it", dynamic_ncols=True, mininterval=0.5)
        else:
            print(f"{label}: {total} iterations, starting at {initial}", file=sys.stderr, flush=True)

    def update(self, it, loss, lr):
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(1)
            if it % 10 == 0 or it == self.total:
                self.bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.3g}" if lr is not None else "-", refresh=False)
            return
        now = time.monotonic()
        if it % self.every == 0 or it == self.total or now - self.last_line > 30:
            self.last_line = now
            rate = (it - self.i0) / max(now - self.t0, 1e-9)
            left = (self.total - it) / rate if rate > 0 else float("nan")
            lr_s = f"{lr:.3g}" if lr is not None else "-"
            print(f"{self.label}: iter {it}/{self.total}  loss {loss:.4g}  lr {lr_s}  {rate:.1f} it/s  "
                  f"{left:.0f} s left", file=sys.stderr, flush=True)

    def write(self, msg):
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run(config, data=None, quiet=False, raise_on_stop=False, _resume=False, _allow_drift=False):
    """Train as ``config`` says (a dict or :class:`TrainConfig`); returns the summary dict.

    ``data``: optional ``(X_train, y_train, X_test, y_test)`` arrays instead of ``config["data"]``
    (the configuration still names the data set for the records, so the images must have its shape and
    the labels its classes: :func:`check_data`). The configuration, the output folder and the data are
    checked before the run folder is created. With ``raise_on_stop`` a run that does not finish raises
    :class:`RunStopped` (its summary attached) after writing everything."""
    config = TrainConfig(config)
    check_out_dir(config["out"], resume=_resume, create=False)
    data = check_data(config, load_data(config) if data is None else data)
    existed = os.path.isdir(config["out"])
    out = check_out_dir(config["out"], resume=_resume)
    lock = _lock_run_dir(out)  # one writer per run directory (held until this process ends)
    try:
        return _run_locked(config, out, data, quiet, raise_on_stop, _resume, _allow_drift)
    except BaseException:
        if not existed:
            _remove_unstarted(out)
        raise
    finally:
        _unlock(lock)


def _remove_unstarted(out):
    """Remove a run folder this call created when it failed before writing any record."""
    try:
        names = set(os.listdir(out))
        if names <= {".lock", "config.json"}:
            for n in names:
                os.unlink(os.path.join(out, n))
            os.rmdir(out)
    except OSError:  # pragma: no cover - leave it
        pass


def _lock_run_dir(out):
    """An exclusive, non-blocking lock on ``out/.lock`` (POSIX ``flock``; released by the OS when the
    process dies, so a SIGKILLed run never leaves a stale lock). Two processes training into one folder
    would interleave their records; the second one is refused instead."""
    path = os.path.join(out, ".lock")
    f = open(path, "a+")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory lock, documented
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RunDirLocked(f"{out}: another qlabref process is training into this folder (it holds {path})") from None
    return f


def _unlock(f):
    try:
        f.close()
    except OSError:  # pragma: no cover
        pass


def _run_locked(config, out, data, quiet, raise_on_stop, _resume, allow_drift=False):
    from . import optim, runfolder, tensor
    from .nn import functional as F
    from .optim import NonFiniteLossError

    dtype = np.dtype(config["dtype"]).type

    Xtr, ytr, Xte, yte = data
    num_classes = DATA_SHAPES[config["data"]][1]
    model = build_model(config, Xtr.shape[1:], num_classes)
    opt_kwargs = dict(config["opt"])
    try:
        opt = optim.get(config["optimizer"], model.parameters(), **opt_kwargs)
    except TypeError as exc:
        raise ValueError(f"optimizer {config['optimizer']}: {exc}") from None
    sched, sched_every = build_schedule(config, opt)
    batches = __import__("qlabref.data", fromlist=["batches"]).batches(Xtr, ytr, config["batch"], seed=config["seed"])
    ckpt_every = config["checkpoint_every"] or config["eval_every"]

    start, elapsed_before, sizes = 0, 0.0, None
    environment = runfolder.determinism_info()
    drift_history = []
    ckpt_json = os.path.join(out, runfolder.CHECKPOINT_JSON)
    config_json = _config_json(config)
    if _resume:
        # validate the whole run folder against the checkpoint before anything in it changes
        ckpt = _validated_checkpoint(out, config_json, environment, allow_drift)
        if ckpt is not None:
            body, state, drift_history = ckpt
            start = body["iter"]
            try:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
                if sched is not None:
                    sched.load_state_dict(state["scheduler"])
                batches.load_state_dict(state["batches"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise RunFolderError(f"{ckpt_json}: its state does not fit the run config.json describes "
                                     f"({type(exc).__name__}: {str(exc)[:120]})") from None
            elapsed_before = float(body["elapsed"])
            sizes = {k: v["size"] for k, v in body["records"].items()}
    if not _resume:
        _atomic_json(os.path.join(out, "config.json"), dict(config))
    if config["flat_buffers"]:
        # one contiguous parameter and gradient buffer (QLABGrad then works on two flat arrays); made
        # after any checkpoint load, so a fresh and a resumed run take the same numerical path
        model.flat_parameters()
        model.flat_grads()
    records = _Records(out, sizes)
    label = f"{config['optimizer']} {config['model']}/{config['data']} seed {config['seed']}"
    progress = _Progress(config["iters"], start, quiet, label)
    status, reason, stop_iter = "running", None, None
    base_summary = {
        "config": dict(config), "versions": _versions(), "git_commit": git_commit(), "machine": machine_info(),
        "command": " ".join(sys.argv) if sys.argv else None, "num_parameters": int(model.num_parameters()),
        "train_examples": int(len(Xtr)), "test_examples": int(len(Xte)),
    }
    session_t0 = time.perf_counter()
    last_ckpt = [start]

    def write_summary(final=False, test=None):
        s = dict(base_summary)
        s.update(status=status, reason=reason, stopped_at_iter=stop_iter, last_checkpoint=last_ckpt[0],
                 iters_done=it_done, wall_seconds=elapsed_before + (time.perf_counter() - session_t0))
        s["determinism"] = {"environment": environment, "drift": drift_history,
                            "bit_identical_resumes": not drift_history}
        if test is not None:
            s["final_test_loss"], s["final_test_accuracy"] = test
        s.update(_summarize_records(out))
        _atomic_json(os.path.join(out, "summary.json"), s)
        return s

    def do_eval(it):
        swap = getattr(opt, "eval", None)
        if callable(swap):
            swap()
        try:
            res = evaluate(model, Xte, yte, config["eval_batch"], dtype)
        finally:
            back = getattr(opt, "train", None)
            if callable(back):
                back()
        records.write("evals", [it, res[0], res[1]])
        return res

    def checkpoint(it):
        records_sizes = records.sizes()
        body = {
            "iter": it, "elapsed": elapsed_before + (time.perf_counter() - session_t0), "config": config_json,
            "records": {k: {"size": n, "sha256": runfolder.record_digest(records.paths[k], n)}
                        for k, n in records_sizes.items()},
            "environment": environment, "drift": drift_history,
        }
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict() if sched is not None else None, "batches": batches.state_dict()}
        runfolder.write_checkpoint(out, body, state)
        last_ckpt[0] = it

    it_done = start
    last_test = None
    try:
        if start == 0:
            last_test = do_eval(0)
        for it in range(start + 1, config["iters"] + 1):
            t0 = time.perf_counter()
            xb_np, yb = next(batches)
            xb = tensor(np.asarray(xb_np, dtype=dtype))
            t1 = time.perf_counter()

            def closure():
                return F.cross_entropy(model(xb), yb)

            opt.reset_timing()
            nonfinite = None
            try:
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    loss = opt.step(closure)  # a diverging run is reported below, not warned about
            except NonFiniteLossError as exc:
                nonfinite = exc
                loss = math.nan
            t2 = time.perf_counter()
            record = opt.last_step if nonfinite is None else {}
            if nonfinite is not None or loss is None or not math.isfinite(loss):
                lossval = loss
                if nonfinite is not None:  # the optimizer refused the step: read the loss itself
                    lossval = _probe_loss(closure)
                records.write("steps", [it, lossval, None, None] + [None] * len(QLAB_COLUMNS))
                status, stop_iter = "diverged", it
                reason = (f"non-finite loss or gradient at iteration {it} (loss {lossval})" +
                          (f": {nonfinite}" if nonfinite is not None else ""))
                break
            lr = record.get("lr")
            records.write("steps", [it, loss, lr, record.get("evals")] + _qlab_fields(record))
            if sched is not None and it % sched_every == 0:
                sched.step()
            t3 = time.perf_counter()
            fb, pr = opt.timing["forward_backward"], opt.timing["probe"]
            records.write("timing", [it, t3 - t0, t1 - t0, fb, pr, max(t2 - t1 - fb - pr, 0.0), t3 - t2])
            it_done = it
            progress.update(it, loss, lr)
            if it % config["eval_every"] == 0 or it == config["iters"]:
                last_test = do_eval(it)
            if it % ckpt_every == 0 or it == config["iters"]:
                checkpoint(it)
                if it != config["iters"]:
                    write_summary()
        else:
            status = "finished"
    except KeyboardInterrupt:
        status, reason, stop_iter = "interrupted", f"interrupted (Ctrl-C) after iteration {it_done}; " \
                                                   f"continue with: qlabref train --resume {out}", it_done
    except Exception as exc:  # FindPLRError and other optimizer failures: keep the records, say why
        status, stop_iter = "failed", it_done + 1
        reason = f"{type(exc).__name__} at iteration {it_done + 1}: {exc}"
    finally:
        progress.close()
    if status == "diverged":
        last_test = do_eval(stop_iter)
    records.close()
    summary = write_summary(final=True, test=last_test)
    if status != "finished":
        print(f"qlabref train: {status}: {reason}", file=sys.stderr, flush=True)
    elif not quiet:
        print(f"qlabref train: finished {config['iters']} iterations in {summary['wall_seconds']:.1f} s; "
              f"test accuracy {summary.get('final_test_accuracy', float('nan')):.4f}; records in {out}",
              file=sys.stderr, flush=True)
    if raise_on_stop and status != "finished":
        raise RunStopped(summary)
    return summary


def _probe_loss(closure):
    from .autograd import no_grad, no_state_update

    try:
        with no_grad(), no_state_update():
            return float(closure().data)
    except Exception:  # the loss itself cannot be computed: record it as NaN
        return math.nan


def _config_json(config):
    """The configuration as JSON gives it back (tuples as lists), without the folder (runs move)."""
    return {k: v for k, v in json.loads(json.dumps(dict(config), default=_json_default)).items() if k != "out"}


def _read_checkpoint_for(out, config_json):
    """The validated checkpoint of ``out`` for a run configured as ``config_json`` (``None``: there is
    none and the run may start over); ``RunFolderError`` naming the file and the problem otherwise."""
    from . import runfolder

    ckpt = runfolder.read_checkpoint(out)
    path = os.path.join(out, runfolder.CHECKPOINT_JSON)
    if ckpt is None:
        summary = os.path.join(out, "summary.json")
        try:
            with open(summary) as f:
                last = json.load(f).get("last_checkpoint")
        except (OSError, ValueError, AttributeError):
            last = None
        if isinstance(last, int) and last > 0:
            raise RunFolderError(f"{path}: missing, but {summary} records a checkpoint at iteration {last}; "
                                 f"not starting over on top of the run")
        return None
    body, state = ckpt
    problems = []
    for key, kind in (("iter", int), ("elapsed", (int, float)), ("config", dict), ("records", dict),
                      ("environment", dict), ("drift", list)):
        if not isinstance(body.get(key), kind) or isinstance(body.get(key), bool):
            problems.append(key)
    if not problems:
        for k in ("steps", "timing", "evals"):
            r = body["records"].get(k)
            if not (isinstance(r, dict) and isinstance(r.get("size"), int) and r["size"] > 0
                    and isinstance(r.get("sha256"), str)):
                problems.append(f"records.{k}")
    if not isinstance(state, dict) or not {"model", "optimizer", "scheduler", "batches"} <= set(state):
        problems.append("state")
    if problems:
        raise RunFolderError(f"{path}: entries {', '.join(problems)} missing or of the wrong type")
    if not 0 < body["iter"] <= config_json["iters"]:
        raise RunFolderError(f"{path}: iteration {body['iter']} is outside 1..{config_json['iters']}")
    saved = body["config"]
    diff = [k for k in sorted(set(saved) | set(config_json)) if saved.get(k) != config_json.get(k)]
    if diff:
        named = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {config_json.get(k)!r} in config.json"
                          for k in diff)
        raise RunFolderError(f"{os.path.join(out, 'config.json')}: differs from the checkpoint's configuration "
                             f"({named}); restore it, or start a new run")
    return body, state


def _validated_checkpoint(out, config_json, environment, allow_drift):
    """``(body, state, drift history)`` of the checkpoint of ``out`` once the folder has passed every
    check (checkpoint, config.json, environment unless ``allow_drift``, record files), reading only;
    ``None`` when there is no checkpoint; ``RunFolderError`` naming the file and the problem."""
    from . import runfolder

    ckpt = _read_checkpoint_for(out, config_json)
    if ckpt is None:
        return None
    body, state = ckpt
    changes = runfolder.drift(body["environment"], environment)
    history = list(body.get("drift", []))
    if changes and not allow_drift:
        named = "; ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in changes.items())
        raise RunFolderError(
            f"{os.path.join(out, runfolder.CHECKPOINT_JSON)}: resuming here would not be bit-identical to an "
            f"uninterrupted run ({named}); resume with the settings of the checkpoint, or pass --allow-drift "
            f"(allow_drift=True) to continue anyway and record the difference in summary.json")
    if changes:
        history.append({"at_iter": body["iter"], "changes": changes})
    runfolder.check_records(out, body["records"], body["iter"])
    return body, state, history


def resume(out, data=None, quiet=False, raise_on_stop=False, allow_drift=False):
    """Continue the run in ``out`` from its last checkpoint (module docstring); a finished run is
    returned as it is. ``allow_drift``: resume even when thread counts, versions, BLAS, CPU or backend
    differ from the checkpoint's (the result is then not bit-identical; ``summary.json`` says so)."""
    out = os.fspath(out)
    config = load_config(out)
    config["out"] = out
    summary_path = os.path.join(out, "summary.json")
    if os.path.isfile(summary_path):
        try:
            with open(summary_path) as f:
                prev = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError):
            prev = {}
        if isinstance(prev, dict) and prev.get("status") == "finished":
            from . import runfolder

            ckpt = _read_checkpoint_for(out, _config_json(config))  # a finished run's records are checked too
            if ckpt is not None:
                runfolder.check_records(out, ckpt[0]["records"], ckpt[0]["iter"])
            if not quiet:
                print(f"qlabref train: {out} already finished ({config['iters']} iterations)", file=sys.stderr)
            return prev
    # the folder is checked before any data are loaded (a refusal costs no MNIST load or download); run()
    # checks it again under the run-folder lock before it changes anything. Without a checkpoint (killed
    # before the first one) run() starts over at iteration 0.
    from . import runfolder

    _validated_checkpoint(out, _config_json(config), runfolder.determinism_info(), allow_drift)
    return run(config, data=data, quiet=quiet, raise_on_stop=raise_on_stop, _resume=True, _allow_drift=allow_drift)
