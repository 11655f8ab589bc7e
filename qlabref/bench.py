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
:func:`run_child` starts a fresh interpreter (``qlabref bench --_child``) with those
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
    "CNN_TARGET",
    "QLAB_SGD_TARGET",
    "PROBE_SPEEDUP_TARGET",
    "PROBE_COPY_TARGET",
    "PARTS",
    "DEFAULT_PARTS",
    "measure_probe",
    "measure_qlab",
    "measure_gpu",
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

#: Targets (ratios of medians, one process, one thread): an MLP step at most this many times
#: PyTorch CPU's; the paper CNN's step likewise; one QLABGrad step at most this many SGD steps; the
#: fused probe at least this many times faster than NumPy's two passes and at least this fraction of
#: a parallel copy's bandwidth.
MLP_TARGET = 0.85
CNN_TARGET = 2.0
QLAB_SGD_TARGET = 1.35
PROBE_SPEEDUP_TARGET = 2.0
PROBE_COPY_TARGET = 0.8
#: the parts ``qlabref bench`` can measure (``--parts``)
PARTS = ("steps", "probe", "qlab", "tiny", "torch-optim", "gpu")  # tiny: a 2-D optimizer step (bench_tiny.py)
#: what a plain ``qlabref bench`` measures; the others on request (``--parts tiny,torch-optim,gpu`` or ``all``)
DEFAULT_PARTS = ("steps", "probe", "qlab")

#: The variables that fix the BLAS/OpenMP thread count of a fresh process.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMBA_NUM_THREADS")  # the Numba kernels (parallel=True) use as many threads as BLAS

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
    "cnn": ModelSpec("cnn", "paper_cnn()", _paper_cnn, (1, 28, 28), 10, 64, 20, 3, target=CNN_TARGET),
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


def part_names(text):
    """``"steps,probe"`` (or ``"all"``) → ``["steps", "probe"]``; a clear error for an unknown part."""
    names = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "all":
            names.extend(PARTS)
            continue
        if part not in PARTS:
            raise ValueError(f"bench: unknown part {part!r}; choose from {', '.join(PARTS)} (or 'all')")
        names.append(part)
    if not names:
        raise ValueError("bench: no part given; choose from " + ", ".join(PARTS))
    return list(dict.fromkeys(names))


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


def measure(models, *, threads=1, batch=None, repeats=None, warmup=None, use_torch=True, seed=0, log=None,
            parts=PARTS):
    """Time each model in *this* process; ``threads`` is what the environment was set to (see
    :func:`run_child`) and what torch is told. ``parts``: "steps" (training step vs PyTorch),
    "probe" (the fused probe kernel vs NumPy and a copy), "qlab" (QLABGrad step vs SGD step on the
    chosen models among mlp/cnn). Returns one run's record (a dict, JSON-ready)."""
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
    from . import backends

    run["backend"] = backends.get_backend()
    run["loadavg_start"] = _loadavg()
    if "steps" in parts:
        for name in models:
            run["results"].append(measure_model(name, batch=batch, repeats=repeats, warmup=warmup, torch=torch,
                                                seed=seed, log=log))
    if "probe" in parts:
        run["probe"] = measure_probe(repeats=repeats, warmup=warmup, seed=seed, log=log)
    if "qlab" in parts:
        run["qlab"] = [measure_qlab(name, batch=batch, repeats=repeats, warmup=warmup, seed=seed, log=log)
                       for name in models if name in ("mlp", "cnn")]
    if "tiny" in parts:
        from .bench_tiny import measure_tiny

        run["tiny"] = measure_tiny(repeats=repeats, warmup=warmup, log=log)
    if "torch-optim" in parts:  # qlabref.torch.QLABGrad vs torch SGD and a lean QLAB step (bench_torch_optim)
        from . import bench_torch_optim

        run["torch_optim"] = bench_torch_optim.measure(torch, models, batch=batch, repeats=repeats, warmup=warmup,
                                                       seed=seed, log=log)
    if "gpu" in parts:  # the kernels (bench_gpu), then one QLABGrad step of resident models (bench_gpu_models)
        run["gpu"] = measure_gpu(torch, log=log)
        if run["gpu"].get("available"):
            from . import bench_gpu_models

            run["gpu_models"] = bench_gpu_models.measure_model_steps(log=log)
    run["loadavg_end"] = _loadavg()
    return run


# ------------------------------------------------------------------------------------- probe, QLAB
def _interleaved(sides, repeats, warmup):
    """Run every side once untimed, ``warmup`` more times, then ``repeats`` rounds in alternating
    order with the garbage collector off; returns ``{side: summarize(...)}``."""
    for fn in sides.values():
        fn()
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    order = list(sides)
    times = {side: [] for side in sides}
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for side in (order if r % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                sides[side]()
                times[side].append(time.perf_counter() - start)
    finally:
        if was:
            gc.enable()
    return {side: summarize(ts) for side, ts in times.items()}


def measure_probe(n=None, *, repeats=None, warmup=None, seed=0, dtype=np.float32, log=None):
    """The fused probe (``qlabref.kernels.cpu.probe_kernel``: θ − αg and Σg² in float64, one pass)
    against NumPy's two passes (Σg² through a float64 copy of g, then θ − αg) and against a parallel
    copy that moves the same bytes. ``n`` defaults to the size of ``mlp()``'s flat parameter buffer."""
    from .kernels import cpu

    n = 1_796_010 if n is None else int(n)
    repeats = 30 if repeats is None else max(int(repeats), 1)
    warmup = 3 if warmup is None else int(warmup)
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    out = np.empty_like(theta)
    out_np = np.empty_like(theta)
    alpha = 0.01
    a = dtype(alpha)
    m = 3 * n // 2  # the copy reads m and writes m elements: 3n elements moved, as the probe's θ, g, out
    src = rng.standard_normal(m).astype(dtype)
    dst = np.empty_like(src)

    def numpy_two_pass():
        g64 = g.astype(np.float64)
        s = float(np.dot(g64, g64))  # pass 1: Σ g² accumulated in float64
        np.multiply(g, -alpha, out=out_np)  # pass 2: θ − αg
        np.add(out_np, theta, out=out_np)
        return s

    sides = {"probe": lambda: cpu.probe_kernel(theta, g, a, out), "numpy_two_pass": numpy_two_pass,
             "copy": lambda: cpu.copy_kernel(src, dst)}
    t0 = time.perf_counter()
    stats = _interleaved(sides, repeats, warmup)
    check = abs(float(cpu.probe_kernel(theta, g, a, out)) - numpy_two_pass()) / numpy_two_pass()
    item = np.dtype(dtype).itemsize
    gbps = {"probe": 3 * n * item / stats["probe"]["median"] / 1e6,
            "numpy_two_pass": 3 * n * item / stats["numpy_two_pass"]["median"] / 1e6,
            "copy": 2 * m * item / stats["copy"]["median"] / 1e6}
    speedup = stats["numpy_two_pass"]["median"] / stats["probe"]["median"]
    of_copy = gbps["probe"] / gbps["copy"]
    if log is not None:
        log(f"  probe (n={n}): {repeats} rounds in {time.perf_counter() - t0:.1f} s")
    return {"n": n, "dtype": np.dtype(dtype).name, "repeats": repeats, "timings_ms": stats, "gbps": gbps,
            "speedup_vs_numpy": speedup, "fraction_of_copy": of_copy, "sum_rel_diff": check,
            "targets": {"speedup_vs_numpy": PROBE_SPEEDUP_TARGET, "fraction_of_copy": PROBE_COPY_TARGET},
            "verdict": ("meets target" if speedup >= PROBE_SPEEDUP_TARGET and of_copy >= PROBE_COPY_TARGET
                        else "misses target")}


def measure_qlab(name, *, batch=None, repeats=None, warmup=None, seed=0, log=None):
    """One QLABGrad step (steady state: ᾱ fixed, so no FindPLR; forward + backward, one probe
    forward, the probe kernel's passes) against one ``qr.optim.SGD`` step (the target's baseline) and
    one lean SGD step (zero_grad, forward, backward, θ −= η∇L, nothing recorded),
    on the model with per-parameter arrays and with ``flat_parameters()``/``flat_grads()``; also a
    forward under ``no_grad`` for the floor 1 + forward/(lean SGD step) (the probe is one forward)."""
    from . import optim, tensor
    from .autograd import no_grad, no_state_update
    from .nn import functional as F

    spec = MODELS[name]
    batch = spec.batch if batch is None else int(batch)
    repeats = (30 if name == "mlp" else 10) if repeats is None else int(repeats)
    warmup = 2 if warmup is None else int(warmup)
    x, y = example_batch(spec, batch, seed)
    xt = tensor(x)
    sides, fwd_model = {}, None
    for layout in ("per-parameter", "flat"):
        for kind in ("sgd", "sgd-lean", "qlabgrad"):
            model = spec.build()
            model.train()
            if layout == "flat":
                model.flat_parameters()
                model.flat_grads()

            def closure(model=model):
                return F.cross_entropy(model(xt), y)

            if kind == "sgd":
                opt = optim.SGD(model.parameters(), lr=1e-3)

                def step(opt=opt, closure=closure):
                    opt.step(closure)  # zero_grad, forward, backward, update (and its ‖∇L‖, ‖Δθ‖ records)
            elif kind == "sgd-lean":
                params = model.parameters()

                def step(model=model, params=params, closure=closure):
                    # the lean SGD step a training loop does (torch.optim.SGD without momentum):
                    # zero_grad, forward, backward, θ ← θ − η∇L in place. (qr.optim.SGD also records
                    # ‖∇L‖ and ‖Δθ‖ every step, extra passes that would flatter the ratio.)
                    model.zero_grad()
                    closure().backward()
                    for p in params:
                        p.data -= 1e-3 * p.grad
            else:
                opt = optim.QLABGrad(model.parameters(), pre_lr=1e-2, findplr="never", max_lr=1.0)

                def step(opt=opt, closure=closure):
                    opt.step(closure)
            sides[f"{kind}/{layout}"] = step
            fwd_model = model

    def forward():
        with no_grad(), no_state_update():
            F.cross_entropy(fwd_model(xt), y)

    sides["forward"] = forward
    t0 = time.perf_counter()
    stats = _interleaved(sides, repeats, warmup)
    med = {k: v["median"] for k, v in stats.items()}
    layouts = ("per-parameter", "flat")
    ratios = {layout: med[f"qlabgrad/{layout}"] / med[f"sgd/{layout}"] for layout in layouts}
    ratios_lean = {layout: med[f"qlabgrad/{layout}"] / med[f"sgd-lean/{layout}"] for layout in layouts}
    floor = 1.0 + med["forward"] / med["sgd-lean/per-parameter"]
    if log is not None:
        log(f"  qlab vs sgd {name} (batch {batch}): {repeats} rounds in {time.perf_counter() - t0:.1f} s")
    return {"model": name, "batch": batch, "repeats": repeats, "timings_ms": stats, "ratios": ratios,
            "ratios_lean": ratios_lean, "floor": floor, "target": QLAB_SGD_TARGET,
            "verdict": "meets target" if max(ratios.values()) <= QLAB_SGD_TARGET else "misses target"}


def measure_gpu(torch=None, log=None, quick=False):
    """``--parts gpu``: with a CUDA GPU (not the simulator), the kernels on device arrays against
    PyTorch CUDA (:func:`qlabref.bench_gpu.measure_kernels`: launch overhead, matmul vs cuBLAS, probe
    vs a device copy). Otherwise ``{"available": False, "reason": ...}``. ``torch`` is unused (the
    GPU part imports it itself) and kept for callers of the earlier version."""
    from . import bench_gpu

    return bench_gpu.measure_kernels(log=log, quick=quick)


# ------------------------------------------------------------------------------------- child process
def child_environment(threads, base=None):
    """``base`` (default ``os.environ``) with every thread variable set to ``threads``."""
    env = dict(os.environ if base is None else base)
    for v in THREAD_VARIABLES:
        env[v] = str(int(threads))
    return env


def run_child(threads, models, *, batch=None, repeats=None, warmup=None, use_torch=True, seed=0, parts=PARTS):
    """Run :func:`measure` in a fresh ``qlabref bench --_child`` process whose BLAS and torch use
    ``threads`` threads. The child's progress goes to our stderr; its result comes back as JSON."""
    # The child must not import qlabref from the working directory: `python -m qlabref` puts it first
    # on sys.path, and in a repository checkout with a non-editable install that is the source folder
    # qlabref/, which lacks the kernels (installed from kernels/ as qlabref.kernels). So the child drops
    # that entry (PYTHONPATH and site-packages keep their order) and falls back to this process's copy.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    boot = (f"import sys; sys.path[:] = sys.path[1:] + [{root!r}]; from qlabref.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", boot, "bench", "--_child", "--threads", str(int(threads)),
           "--models", ",".join(models), "--seed", str(int(seed)), "--parts", ",".join(parts)]
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


def child_main(models, *, threads, batch=None, repeats=None, warmup=None, use_torch=True, seed=0,
               parts=PARTS) -> int:
    """Entry point of the child: measure, print the result as one marked JSON line."""
    run = measure(models, threads=threads, batch=batch, repeats=repeats, warmup=warmup, use_torch=use_torch,
                  seed=seed, log=lambda s: print(s, file=sys.stderr, flush=True), parts=parts)
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


def format_extras(runs):
    """Lines for the probe, QLABGrad-vs-SGD and GPU parts of every run."""
    lines = []
    for run in runs:
        tag = f"{run['threads']} thread(s), backend {run.get('backend', '?')}"
        p = run.get("probe")
        if p:
            t = p["timings_ms"]
            lines.append(
                f"probe ({tag}, n = {p['n']} {p['dtype']}): fused {_fmt_ms(t['probe'])} ms, NumPy two-pass "
                f"{_fmt_ms(t['numpy_two_pass'])} ms, copy of the same bytes {_fmt_ms(t['copy'])} ms; "
                f"{p['speedup_vs_numpy']:.2f}× faster than NumPy (target ≥ {p['targets']['speedup_vs_numpy']:.1f}×), "
                f"{p['gbps']['probe']:.1f} GB/s = {100 * p['fraction_of_copy']:.0f}% of the copy's "
                f"{p['gbps']['copy']:.1f} GB/s (target ≥ {100 * p['targets']['fraction_of_copy']:.0f}%): {p['verdict']}")
        for q in run.get("qlab", []):
            t = q["timings_ms"]
            lines.append(
                f"QLABGrad step / SGD step ({tag}, {q['model']}, batch {q['batch']}): "
                f"{q['ratios']['per-parameter']:.2f}× per-parameter ({_fmt_ms(t['qlabgrad/per-parameter'])} vs "
                f"{_fmt_ms(t['sgd/per-parameter'])} ms), {q['ratios']['flat']:.2f}× flat buffers "
                f"({_fmt_ms(t['qlabgrad/flat'])} vs {_fmt_ms(t['sgd/flat'])} ms); against a lean SGD step "
                f"(θ −= η∇L, nothing recorded): {q['ratios_lean']['per-parameter']:.2f}× / "
                f"{q['ratios_lean']['flat']:.2f}×; floor 1 + forward/step = {q['floor']:.2f}; "
                f"target ≤ {q['target']:.2f}× (vs qr.optim.SGD): {q['verdict']}")
        from .bench_tiny import format_tiny

        lines += format_tiny(run.get("tiny"), tag)
        from . import bench_torch_optim

        lines += bench_torch_optim.format_lines(run.get("torch_optim"), f" ({tag})")
        gpu = run.get("gpu")
        if gpu is not None:
            from . import bench_gpu

            lines += [line[2:] if line.startswith("- ") else line
                      for line in bench_gpu.format_kernels(gpu) if line and not line.startswith("|")]
        if run.get("gpu_models") is not None:
            from . import bench_gpu_models

            lines += bench_gpu_models.format_lines(run["gpu_models"])
    return lines


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
    lines += [f"- {line}" for line in format_extras(record["runs"])]
    lines.append("")
    for run in record["runs"]:
        lines.append(f"- {run['threads']} thread(s): NumPy {run['numpy']} ({run['blas']}), "
                     f"PyTorch {run['torch'] or run['torch_missing']}; load average "
                     f"{run.get('loadavg_start')} before, {run.get('loadavg_end')} after")
    return "\n".join(lines) + "\n"
