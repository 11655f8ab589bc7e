"""How fast is one training step? The measuring code behind ``qlabref bench``.

One *step* is what a training loop does per minibatch before the optimizer: ``model.zero_grad()``,
the forward pass, the cross-entropy loss and ``loss.backward()``, in float32. It is timed for

- **qlabref**: the model from :mod:`qlabref.models`;
- **PyTorch CPU**: the same model with the same weights (``qlabref.interop.to_torch``), in the same
  process and with the same thread count (``torch.set_num_threads``), when torch is installed;
- **plain NumPy** (MLP only): the same step written out with ``np.matmul`` and nothing else
  (:func:`numpy_mlp_step`), the floor a NumPy engine can reach; ``qlabref / numpy`` is the engine's
  own overhead.

Method: one untimed first step per side (its losses are compared, so a broken comparison shows),
``warmup`` more untimed steps, then ``repeats`` rounds in which every side runs one step, in
alternating order (ABC, CBA, ...) so that neither side always runs right after the other; the garbage
collector is off while timing. Reported: the median, quartiles and minimum in milliseconds and the
ratio of medians qlabref/PyTorch (and qlabref/NumPy).

Thread count: NumPy's BLAS reads ``OPENBLAS_NUM_THREADS`` (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``)
once, when NumPy is imported, and cannot be told otherwise later without an extra package. So
:func:`run_child` starts a fresh interpreter (``python -m qlabref bench --_child``) with those
variables set to N, and that child calls ``torch.set_num_threads(N)`` and :func:`measure`.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import time
from typing import Callable

import numpy as np

__all__ = [
    "ModelSpec",
    "MODELS",
    "MLP_TARGET",
    "THREAD_VARIABLES",
    "example_batch",
    "our_step",
    "torch_step",
    "numpy_mlp_weights",
    "numpy_mlp_step",
    "summarize",
    "measure_model",
    "measure",
    "child_environment",
    "run_child",
    "format_table",
    "format_markdown",
]

#: The issue's target: an MLP step at most this many times PyTorch CPU's time.
MLP_TARGET = 1.15

#: The variables that fix the BLAS/OpenMP thread count of a fresh process.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

#: The line of the child's stdout that carries its JSON result.
CHILD_MARKER = "QLABREF_BENCH_RESULT "


def _mlp():
    from . import models

    return models.mlp(dtype=np.float32)


def _paper_cnn():
    from . import models

    return models.paper_cnn(dtype=np.float32)


def _resnet18():
    from . import models

    return models.resnet18(10, "cifar", dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One benchmarked model: how to build it, its input, defaults and target."""

    name: str
    title: str
    build: Callable
    input_shape: tuple  # one example, without the batch axis
    num_classes: int
    batch: int  # the batch size
    repeats: int  # default number of timed rounds (keeps the default run well under a minute)
    warmup: int
    target: float | None = None  # max ratio qlabref/PyTorch, or None (reported only)
    numpy_baseline: bool = False


MODELS = {
    "mlp": ModelSpec("mlp", "mlp() 784-1000-1000-10", _mlp, (784,), 10, 64, 100, 10,
                     target=MLP_TARGET, numpy_baseline=True),
    "cnn": ModelSpec("cnn", "paper_cnn()", _paper_cnn, (1, 28, 28), 10, 64, 20, 3),
    "resnet18": ModelSpec("resnet18", "resnet18(10, 'cifar')", _resnet18, (3, 32, 32), 10, 8, 8, 2),
}
_ALIASES = {"paper_cnn": "cnn", "resnet": "resnet18"}


def model_names(text):
    """``"mlp,cnn"`` (or ``"all"``) → ``["mlp", "cnn"]``; a clear error for an unknown name."""
    names = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "all":
            names.extend(MODELS)
            continue
        part = _ALIASES.get(part, part)
        if part not in MODELS:
            raise ValueError(f"bench: unknown model {part!r}; choose from {', '.join(MODELS)} (or 'all')")
        names.append(part)
    if not names:
        raise ValueError("bench: no model given; choose from " + ", ".join(MODELS))
    return list(dict.fromkeys(names))


#: upper bound of a thread count (a child process with thousands of BLAS threads only thrashes)
MAX_THREADS = 256


def thread_counts(text):
    """``"1,2"`` → ``[1, 2]``; each a positive int."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            n = int(part)
        except ValueError:
            raise ValueError(f"bench: thread count {part!r} is not an integer") from None
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"bench: thread count must be between 1 and {MAX_THREADS}, got {n}")
        out.append(n)
    if not out:
        raise ValueError("bench: no thread count given")
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------- one step
def example_batch(spec: ModelSpec, batch: int, seed: int = 0):
    """A float32 input batch (standard normal) and int64 labels for ``spec``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *spec.input_shape)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, size=batch).astype(np.int64)
    return x, y


def our_step(model, x, y) -> float:
    """qlabref: zero_grad, forward, cross-entropy, backward. Returns the loss."""
    from . import tensor
    from .nn import functional as F

    model.zero_grad()
    loss = F.cross_entropy(model(tensor(x)), y)
    loss.backward()
    return float(loss.data)


def torch_step(torch, model, x, y) -> float:
    """The same step in PyTorch (``x``, ``y`` torch tensors). Returns the loss."""
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return float(loss.detach())


def numpy_mlp_weights(model):
    """The MLP's ``[(W, b), ...]`` as plain ndarrays (the model's own memory, not copies)."""
    n = len(model.sizes) - 1
    return [(getattr(model, f"fc{i}").weight.data, getattr(model, f"fc{i}").bias.data) for i in range(1, n + 1)]


def numpy_mlp_step(weights, x, y):
    """The MLP step in plain NumPy: the baseline that qlabref's MLP step is compared with.

    Linear layers ``h W^T + b`` with ReLU between them, mean cross-entropy, and the backward pass by
    hand (ReLU's gradient at 0 is 0, as in qlabref and PyTorch). Same dtype in, same dtype out.
    Returns ``(loss, [(dW, db), ...])``.
    """
    n = x.shape[0]
    h = x.reshape(n, -1)
    inputs = []  # the input of each layer (for the first: x; then the ReLU outputs)
    for i, (w, b) in enumerate(weights):
        inputs.append(h)
        z = np.matmul(h, w.T)
        z += b
        h = np.maximum(z, 0) if i < len(weights) - 1 else z
    rows = np.arange(n)
    shifted = h - h.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -logp[rows, y].sum() / n
    g = np.exp(logp)  # d loss / d logits = (softmax - onehot) / n
    g[rows, y] -= 1
    g *= g.dtype.type(1.0 / n)
    grads = [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        w, _ = weights[i]
        grads[i] = (np.matmul(g.T, inputs[i]), g.sum(axis=0))
        if i > 0:
            g = np.matmul(g, w)
            g *= inputs[i] > 0  # ReLU: the layer input is the previous ReLU's output
    return loss, grads


# ------------------------------------------------------------------------------------- timing
def summarize(seconds):
    """Median, quartiles and minimum of a list of durations, in milliseconds (and the samples)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(ms.min()),
            "n": int(ms.size), "samples": [round(float(v), 4) for v in ms]}


def _verdict(spec, ratio, has_torch):
    if spec.target is None:
        return "reported (no target)" if has_torch else "no PyTorch baseline"
    if ratio is None:
        return "not judged (no PyTorch baseline)"
    return "meets target" if ratio <= spec.target else "misses target"


def measure_model(name, *, batch=None, repeats=None, warmup=None, torch=None, seed=0, log=None):
    """Time one model's step; ``torch`` is the torch module or None (qlabref and NumPy only)."""
    spec = MODELS[name]
    batch = spec.batch if batch is None else int(batch)
    repeats = spec.repeats if repeats is None else int(repeats)
    warmup = spec.warmup if warmup is None else int(warmup)
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"bench: need batch >= 1, repeats >= 1, warmup >= 0; got {batch}, {repeats}, {warmup}")
    model = spec.build()
    model.train()
    x, y = example_batch(spec, batch, seed)
    sides = {"qlabref": lambda: our_step(model, x, y)}
    if torch is not None:
        from .interop import to_torch

        tmodel = to_torch(model)  # before any step: same weights and BatchNorm buffers
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        sides["torch"] = lambda: torch_step(torch, tmodel, xt, yt)
    if spec.numpy_baseline:
        weights = numpy_mlp_weights(model)
        sides["numpy"] = lambda: float(numpy_mlp_step(weights, x, y)[0])

    t0 = time.perf_counter()
    losses = {side: fn() for side, fn in sides.items()}  # the first step, untimed
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    order = list(sides)
    times = {side: [] for side in sides}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for side in (order if r % 2 == 0 else order[::-1]):
                fn = sides[side]
                start = time.perf_counter()
                fn()
                times[side].append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    stats = {side: summarize(ts) for side, ts in times.items()}
    ratio_torch = stats["qlabref"]["median"] / stats["torch"]["median"] if "torch" in stats else None
    ratio_numpy = stats["qlabref"]["median"] / stats["numpy"]["median"] if "numpy" in stats else None
    loss_diff = None
    if "torch" in losses:
        loss_diff = abs(losses["qlabref"] - losses["torch"]) / max(abs(losses["torch"]), 1e-30)
    result = {
        "model": name,
        "title": spec.title,
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "parameters": int(model.num_parameters()),
        "timings_ms": stats,
        "ratio_torch": ratio_torch,
        "ratio_numpy": ratio_numpy,
        "target": spec.target,
        "verdict": _verdict(spec, ratio_torch, torch is not None),
        "first_step_loss": losses,
        "loss_rel_diff_torch": loss_diff,
        "seconds": time.perf_counter() - t0,
    }
    if log is not None:
        log(f"  {name} (batch {batch}): {repeats} rounds in {result['seconds']:.1f} s")
    return result


def _torch_or_reason(threads, use_torch=True):
    """(torch module, None) or (None, why not)."""
    if not use_torch:
        return None, "skipped (--no-torch)"
    try:
        import torch
    except ImportError as e:
        return None, f"not installed ({e}); the PyTorch baseline needs `pip install torch`"
    torch.set_num_threads(int(threads))
    return torch, None


def _blas_name():
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - informational only (older NumPy has no mode="dicts")
        return "unknown"


def measure(models, *, threads=1, batch=None, repeats=None, warmup=None, use_torch=True, seed=0, log=None):
    """Time each model in *this* process; ``threads`` is what the environment was set to (see
    :func:`run_child`) and what torch is told. Returns one run's record (a dict, JSON-ready)."""
    torch, why_not = _torch_or_reason(threads, use_torch)
    run = {
        "threads": int(threads),
        "env": {v: os.environ.get(v) for v in THREAD_VARIABLES},
        "numpy": np.__version__,
        "blas": _blas_name(),
        "torch": torch.__version__ if torch is not None else None,
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "torch_missing": why_not,
        "results": [],
    }
    run["loadavg_start"] = _loadavg()
    for name in models:
        run["results"].append(measure_model(name, batch=batch, repeats=repeats, warmup=warmup, torch=torch,
                                            seed=seed, log=log))
    run["loadavg_end"] = _loadavg()
    return run


# ------------------------------------------------------------------------------------- child process
def child_environment(threads, base=None):
    """``base`` (default ``os.environ``) with every thread variable set to ``threads``."""
    env = dict(os.environ if base is None else base)
    for v in THREAD_VARIABLES:
        env[v] = str(int(threads))
    return env


def run_child(threads, models, *, batch=None, repeats=None, warmup=None, use_torch=True, seed=0):
    """Run :func:`measure` in a fresh ``python -m qlabref bench --_child`` whose BLAS and torch use
    ``threads`` threads. The child's progress goes to our stderr; its result comes back as JSON."""
    cmd = [sys.executable, "-m", "qlabref", "bench", "--_child", "--threads", str(int(threads)),
           "--models", ",".join(models), "--seed", str(int(seed))]
    for flag, value in (("--batch", batch), ("--repeats", repeats), ("--warmup", warmup)):
        if value is not None:
            cmd += [flag, str(int(value))]
    if not use_torch:
        cmd.append("--no-torch")
    proc = subprocess.run(cmd, env=child_environment(threads), stdout=subprocess.PIPE, stderr=None, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"bench: the measuring process ({' '.join(cmd)}) failed with exit code {proc.returncode}; "
            f"its output:\n{proc.stdout}"
        )
    return json.loads(lines[-1][len(CHILD_MARKER):])


def child_main(models, *, threads, batch=None, repeats=None, warmup=None, use_torch=True, seed=0) -> int:
    """Entry point of the child: measure, print the result as one marked JSON line."""
    run = measure(models, threads=threads, batch=batch, repeats=repeats, warmup=warmup, use_torch=use_torch,
                  seed=seed, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(CHILD_MARKER + json.dumps(run), flush=True)
    return 0


def _loadavg():
    """The 1, 5 and 15 minute load averages (None where the OS has none): other processes' work
    makes timings noisy, and multi-threaded BLAS suffers most when the load exceeds the cores."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment():
    """Machine facts worth keeping next to timings."""
    return {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or None, "cpu_count": os.cpu_count(), "loadavg": _loadavg()}


# ------------------------------------------------------------------------------------- reports
def _fmt_ms(stats):
    if stats is None:
        return "—"
    return f"{stats['median']:.2f} [{stats['q1']:.2f}–{stats['q3']:.2f}]"


def _fmt_ratio(r):
    return "—" if r is None else f"{r:.2f}×"


def _rows(runs):
    rows = []
    for run in runs:
        for r in run["results"]:
            t = r["timings_ms"]
            target = "—" if r["target"] is None else f"≤ {r['target']:.2f}×"
            rows.append([str(run["threads"]), r["model"], str(r["batch"]), _fmt_ms(t["qlabref"]),
                         _fmt_ms(t.get("torch")), _fmt_ratio(r["ratio_torch"]), target, r["verdict"],
                         _fmt_ms(t.get("numpy")), _fmt_ratio(r["ratio_numpy"])])
    return rows


_HEADER = ["threads", "model", "batch", "qlabref ms", "PyTorch ms", "qlabref/PyTorch", "target", "verdict",
           "NumPy ms", "qlabref/NumPy"]


def format_table(runs):
    """A plain-text table of every run (one line per thread count and model)."""
    rows = [_HEADER] + _rows(runs)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(record):
    """The record as a Markdown report."""
    env = record["environment"]
    lines = [
        "# qlabref bench",
        "",
        f"{record['created']} · Python {env['python']} · {env['platform']} · {env['cpu_count']} CPUs · "
        f"load average {env['loadavg']}",
        "",
        "One training step (zero_grad, forward, cross-entropy, backward), float32. Times: median "
        "[quartiles] in ms over the repeats; ratios are of medians. NumPy = the same MLP step in plain "
        "NumPy (np.matmul), same process.",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(record["runs"])]
    lines.append("")
    for run in record["runs"]:
        lines.append(f"- {run['threads']} thread(s): NumPy {run['numpy']} ({run['blas']}), "
                     f"PyTorch {run['torch'] or run['torch_missing']}; load average "
                     f"{run.get('loadavg_start')} before, {run.get('loadavg_end')} after")
    return "\n".join(lines) + "\n"
