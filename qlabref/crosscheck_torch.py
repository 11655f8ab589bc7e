"""``qr.crosscheck``: a PyTorch training loop and the reference engine side by side, step by step.

From one initial state (a torch module or a qlabref model: the other side is built with
``qr.interop.from_torch`` / ``to_torch``, so both hold the same weights and buffers), one batch order
(``qr.data.batches(X, y, batch_size, seed)``) and one optimizer (``"qlabgrad"``, ``"qlab"``,
``"qlab-sgd"``, ``"qlab-momentum"``, ``"qlab-adam"`` from ``qlabref.torch`` against ``qr.optim``; or a
method both libraries have: ``"sgd"``, ``"adam"``, ``"adagrad"``, ``"rmsprop"``, ``"adadelta"``), run N
steps on each side and compare after every step:

- ``loss``: the minibatch loss at θ_{t−1} (L, Eq. 6),
- ``probe_loss``: g(ᾱ) (Eq. 8; QLAB methods only),
- ``alpha_star``: α* (Eq. 10; QLAB methods only; None on both sides counts as equal),
- ``lr``: α_t, the learning rate used,
- ``params``: the parameters after the step, max over tensors of max|Δ| / max(|θ_torch|, |θ_ref|),
- ``buffers``: the module buffers after the step (BatchNorm running statistics, num_batches_tracked),
  measured the same way.

Every difference is relative: |a − b| / max(|a|, |b|) (0 when both are 0). The verdict names the
first step and quantity whose difference exceeds ``tol`` (default 1e-9 in float64, 1e-3 in float32:
the two libraries round float32 differently, and QLABGrad's α* divides by a difference of two losses).

Dropout: the qlabref side's ``qr.nn.Dropout`` layers draw PyTorch's masks (``TorchDropoutSampler``:
``empty(shape).bernoulli_(1 − p)`` from a generator seeded like torch's global one, which is what
``F.dropout`` does on the CPU), so a model with dropout is compared mask for mask (CPU only; the global
torch RNG is seeded for the run and restored afterwards).

``torch_optimizer`` replaces the PyTorch side's optimizer (a callable ``params -> optimizer``), to
check your own implementation against the reference. Optimizers from ``qlabref.torch`` (and any with
``closure_forward_only = True``) get a forward-only closure; others get torch's usual closure
(``zero_grad``, forward, ``backward``, return the loss). If the optimizer has a ``last_step`` dict
(``loss``, ``probe_loss``, ``alpha_star``, ``lr``), it is compared; otherwise ``lr`` is
``param_groups[0]["lr"]``.
"""
from __future__ import annotations

import copy
import csv
import math
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["crosscheck", "check_inputs", "check_device", "check_model_fits", "CrosscheckResult", "plot",
           "TorchDropoutSampler", "QUANTITIES", "METHODS", "DEFAULT_TOL"]

#: the quantities compared after every step, in report order
QUANTITIES = ("loss", "probe_loss", "alpha_star", "lr", "params", "buffers")
#: optimizer names accepted by ``crosscheck`` (qlabref.torch / qr.optim pairs, and torch.optim baselines)
QLAB_METHODS = {"qlabgrad": ("QLABGrad", {}), "qlab": ("QLAB", {}), "qlab-sgd": ("QLAB", {"direction": "sgd"}),
                "qlab-momentum": ("QLAB", {"direction": "momentum"}), "qlab-adam": ("QLAB", {"direction": "adam"})}
BASELINES = {"sgd": "SGD", "adam": "Adam", "adagrad": "Adagrad", "rmsprop": "RMSprop", "adadelta": "Adadelta"}
METHODS = tuple(QLAB_METHODS) + tuple(BASELINES)
#: default tolerance per dtype
DEFAULT_TOL = {"float64": 1e-9, "float32": 1e-3}


def _rel(a, b):
    if a is None and b is None:
        return 0.0
    if a is None or b is None:
        return math.inf
    a, b = float(a), float(b)
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def _rel_arrays(pairs):
    worst = 0.0
    for a, b in pairs:
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0))
        diff = np.max(np.abs(a - b), initial=0.0)
        if diff == 0.0:
            continue
        worst = max(worst, math.inf if not np.isfinite(diff) or scale == 0.0 else float(diff / scale))
    return worst


@dataclass
class CrosscheckResult:
    """Per-step numbers of both sides and their relative differences (``rows``), and the verdict."""

    dtype: str
    optimizer: str
    steps: int
    tol: float
    rows: list = field(default_factory=list)
    model_name: str = "model"

    @property
    def first_failure(self):
        """``(step, quantity, difference)`` of the first difference above ``tol``, else None."""
        for r in self.rows:
            for q in QUANTITIES:
                d = r[f"d_{q}"]
                if not d <= self.tol:
                    return r["step"], q, d
        return None

    @property
    def ok(self) -> bool:
        return self.first_failure is None

    def max_diffs(self) -> dict:
        """The largest relative difference of each quantity over all steps."""
        return {q: max((r[f"d_{q}"] for r in self.rows), default=0.0) for q in QUANTITIES}

    def verdict(self) -> str:
        """One line: agreement, or the first step and quantity whose difference exceeds ``tol``."""
        where = f"{self.model_name}, {self.optimizer}, {self.dtype}, {len(self.rows)} steps"
        fail = self.first_failure
        if fail is None:
            md = self.max_diffs()
            q = max(md, key=md.get)
            return (f"AGREE ({where}): largest relative difference {md[q]:.2e} ({q}) <= tol {self.tol:.0e}")
        step, q, d = fail
        return f"DIFFER ({where}): first at step {step}: {q} differs by {d:.2e} > tol {self.tol:.0e}"

    def table(self) -> str:
        """Per-step relative differences, one line per step."""
        head = f"{'step':>4} {'loss':>10} " + " ".join(f"{'d_' + q:>12}" for q in QUANTITIES)
        lines = [head]
        for r in self.rows:
            lines.append(f"{r['step']:>4} {r['loss_torch']:>10.6f} " +
                         " ".join(f"{r['d_' + q]:>12.3e}" for q in QUANTITIES))
        return "\n".join(lines)

    def to_csv(self, path):
        """All per-step numbers (both sides and the differences) as CSV; returns the path."""
        path = os.fspath(path)
        keys = list(self.rows[0]) if self.rows else ["step"]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["dtype", *keys])
            w.writeheader()
            for r in self.rows:
                w.writerow({"dtype": self.dtype, **r})
        return path


def plot(results, path=None, title=None):
    """Figure: the relative difference of each quantity against the step, one panel per result
    (e.g. float64 and float32), with the tolerance as a dashed line. Differences that are exactly 0
    are drawn at the bottom edge (marked "exact"). Returns the figure (saved to ``path`` if given)."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    results = [results] if isinstance(results, CrosscheckResult) else list(results)
    fig, axes = plt.subplots(1, len(results), figsize=(6.0 * len(results), 4.2), squeeze=False)
    markers = dict(zip(QUANTITIES, "os^vDx"))
    for ax, res in zip(axes[0], results):
        vals = [r[f"d_{q}"] for r in res.rows for q in QUANTITIES if 0 < r[f"d_{q}"] < math.inf]
        floor = min(min(vals, default=res.tol) / 10.0, res.tol / 1e3, 1e-17)
        steps = [r["step"] for r in res.rows]
        for q in QUANTITIES:
            ys = [r[f"d_{q}"] for r in res.rows]
            ys = [floor if y == 0 else (1.0 if y == math.inf else y) for y in ys]
            ax.semilogy(steps, ys, marker=markers[q], ms=4, lw=1, label=q)
        ax.axhline(res.tol, ls="--", color="k", lw=1, label=f"tol {res.tol:.0e}")
        ax.axhline(floor, ls=":", color="grey", lw=0.8)
        ax.text(steps[0] if steps else 0, floor, " exact (0)", va="bottom", fontsize=7, color="grey")
        ax.set_xlabel("step t")
        ax.set_ylabel("relative difference, PyTorch vs qlabref")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fail = res.first_failure
        ax.set_title(f"{res.model_name}, {res.optimizer}, {res.dtype}: " +
                     ("agree" if fail is None else f"first difference at step {fail[0]} ({fail[1]})"), fontsize=9)
        ax.legend(fontsize=7, loc="best")
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(title or "PyTorch vs qlabref reference engine, per step", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    if path is not None:
        fig.savefig(os.fspath(path), dpi=120)
        plt.close(fig)
    return fig


# ------------------------------------------------------------------------------------------- runner
def _torch_dtype(torch, dtype):
    return {"float32": torch.float32, "float64": torch.float64}[dtype]


def _make_models(model, dtype, device):
    """(torch module, qlabref model) with identical weights and buffers, in ``dtype``."""
    import torch

    from . import interop
    from .nn.module import Module

    if isinstance(model, torch.nn.Module):
        tm = copy.deepcopy(model)
    elif isinstance(model, Module):
        tm = interop.to_torch(model)
    else:
        raise TypeError(f"crosscheck: model must be a torch.nn.Module or a qr.nn.Module, got {type(model).__name__}")
    tm = tm.to(dtype=_torch_dtype(torch, dtype))
    qm = interop.from_torch(tm)  # reads the weights before they move to the device
    tm = tm.to(device)
    return tm, qm


def _make_optimizers(name, tparams, qparams, options, torch_optimizer):
    import torch

    from . import optim
    from . import torch as qt

    key = str(name).lower()
    if key not in METHODS:
        raise ValueError(f"crosscheck: unknown optimizer {name!r}; choose from {', '.join(METHODS)}")
    options = dict(options or {})
    if key in QLAB_METHODS:
        cls, extra = QLAB_METHODS[key]
        qo = getattr(optim, cls)(qparams, **extra, **options)
        to = torch_optimizer(tparams) if torch_optimizer else getattr(qt, cls)(tparams, **extra, **options)
    else:
        if "lr" not in options:
            raise ValueError(f"crosscheck: optimizer {name!r} needs a learning rate (--lr on the command line, "
                             f"options={{'lr': ...}} in Python)")
        qo = optim.get(key, qparams, **options)
        to = torch_optimizer(tparams) if torch_optimizer else getattr(torch.optim, BASELINES[key])(tparams, **options)
    return to, qo


def _loss_fns(loss):
    import torch

    from . import ops

    if loss == "cross_entropy":
        return torch.nn.functional.cross_entropy, ops.cross_entropy
    if isinstance(loss, tuple) and len(loss) == 2 and all(callable(f) for f in loss):
        return loss
    raise ValueError(f"crosscheck: loss must be 'cross_entropy' or a pair (torch_fn, qlabref_fn) of callables "
                     f"(logits, targets) -> scalar loss, got {loss!r}")


class TorchDropoutSampler:
    """A ``keep_sampler`` for ``qr.nn.Dropout`` that draws the masks PyTorch's CPU dropout draws:
    ``torch.empty(shape, dtype).bernoulli_(1 − p, generator=generator)``."""

    def __init__(self, generator, dtype):
        self.generator, self.dtype = generator, dtype

    def __call__(self, shape, p):
        import torch

        keep = torch.empty(shape, dtype=self.dtype).bernoulli_(1.0 - p, generator=self.generator)
        return keep.numpy() != 0


def _paired_buffers(tm, qm):
    """The names of the torch module's buffers and of ours, paired (kuangliu names translated)."""
    from . import interop

    qb = dict(qm.named_buffers())
    pairs = []
    for name, b in tm.named_buffers():
        key = next(iter(interop.translate_keys({name: 0}, set(qb))))
        if key not in qb:
            raise ValueError(f"crosscheck: the torch module's buffer '{name}' has no counterpart in the qlabref model")
        qb.pop(key)
        pairs.append((name, key))
    if qb:
        raise ValueError(f"crosscheck: the qlabref model's buffers {sorted(qb)} have no counterpart in the torch module")
    return pairs


#: upper bounds of a crosscheck's size (a step runs both engines; these keep a typo from hanging the machine)
MAX_STEPS = 100_000
MAX_BATCH = 65_536


def check_device(device):
    """``ValueError`` unless ``device`` names a PyTorch device usable here (cpu; cuda[:i] with that GPU)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"crosscheck: device {device!r} is not a PyTorch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"crosscheck: device {device!r}: PyTorch sees no CUDA GPU here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"crosscheck: device {device!r}: there are {torch.cuda.device_count()} CUDA GPU(s) here")
    elif dev.type != "cpu":
        raise ValueError(f"crosscheck: device {device!r}: only cpu and cuda are supported")
    return dev


def check_inputs(X, y, *, steps, batch_size, seed=0, dtype="float64", loss="cross_entropy"):
    """The data and sizes of a crosscheck, checked before anything runs; returns ``(X, y)`` as NumPy
    arrays (X in ``dtype``). ``ValueError``/``TypeError`` naming the problem: not numbers, empty, X and
    y of different lengths, y not 1-D integers (for cross_entropy), negative labels, NaN/inf in X (or
    values that overflow ``dtype``), ``steps`` not in [1, MAX_STEPS], ``batch_size`` not in [1, len(X)]."""
    import torch

    def whole(name, v, lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise ValueError(f"crosscheck: {name} must be an integer between {lo} and {hi}, got {v!r}")

    whole("steps", steps, 1, MAX_STEPS)
    whole("seed", seed, 0, 2**63 - 1)
    arrays = []
    for name, a in (("X", X), ("y", y)):
        if torch.is_tensor(a):
            a = a.detach().cpu().numpy()
        try:
            a = np.asarray(a)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"crosscheck: {name} is not an array ({str(exc)[:80]})") from None
        if a.dtype.hasobject or a.dtype.kind not in "biuf":
            raise TypeError(f"crosscheck: {name} must be numeric, got dtype {a.dtype}")
        arrays.append(a)
    X, y = arrays
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(f"crosscheck: X must hold at least one example (shape (N, ...)), got shape {X.shape}")
    if y.ndim == 0 or len(y) != len(X):
        raise ValueError(f"crosscheck: X has {len(X)} examples and y shape {y.shape}; need one target per example")
    whole("batch_size", batch_size, 1, min(len(X), MAX_BATCH))
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise ValueError(f"crosscheck: X holds {int(X.size - np.isfinite(X).sum())} NaN/inf values")
    with np.errstate(over="ignore"):  # reported below, by name
        X = X.astype(dtype, copy=False)
    if not np.isfinite(X).all():
        raise ValueError(f"crosscheck: X has values too large for {dtype} (they become inf)")
    if loss == "cross_entropy":
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise TypeError(f"crosscheck: y must hold integer class labels (1-D) for cross_entropy, got dtype "
                            f"{y.dtype} shape {y.shape}")
        if y.min() < 0:
            raise ValueError(f"crosscheck: y holds negative labels (min {int(y.min())})")
        y = y.astype(np.int64, copy=False)
    return X, y


def check_model_fits(model, X, y, dtype="float64", loss="cross_entropy"):
    """``ValueError`` unless ``model`` takes ``X``'s examples and (cross_entropy) has an output for every
    label of ``y``: one forward pass of the qlabref copy on the first example, nothing trained."""
    X, y = check_inputs(X, y, steps=1, batch_size=1, dtype=dtype, loss=loss)
    _, qm = _make_models(model, dtype, "cpu")
    _check_fits_model(qm, X, y, loss)


def _check_fits_model(qm, X, y, loss):
    """One forward pass of the qlabref model on the first example: X's shape must fit the model, and
    with cross_entropy every label must be one of its outputs."""
    from .autograd import no_grad, no_state_update
    from .tensor import Tensor

    was = qm.training
    qm.eval()
    try:
        with no_grad(), no_state_update():
            out = qm(Tensor(np.ascontiguousarray(X[:1])))
    except Exception as exc:
        raise ValueError(f"crosscheck: X has examples of shape {X.shape[1:]}, which the model does not take "
                         f"({type(exc).__name__}: {str(exc)[:100]})") from None
    finally:
        qm.train(was)
    if loss == "cross_entropy":
        shape = getattr(out, "shape", ())
        if len(shape) != 2:
            raise ValueError(f"crosscheck: the model's output has shape {shape}; cross_entropy needs (N, classes)")
        if int(y.max()) >= shape[1]:
            raise ValueError(f"crosscheck: y holds labels up to {int(y.max())}, but the model has {shape[1]} outputs "
                             f"(classes 0..{shape[1] - 1})")


def crosscheck(model, X, y, *, optimizer="qlabgrad", steps=20, batch_size=32, seed=0, dtype="float64",
               options=None, tol=None, loss="cross_entropy", torch_optimizer=None, device="cpu", model_name=None,
               callback=None, backend=None):
    """Run the PyTorch loop and the qlabref loop side by side for ``steps`` steps (module docstring).

    ``model``: a ``torch.nn.Module`` (supported by ``qr.interop.from_torch``) or a qlabref model
    (supported by ``to_torch``); it is copied, never trained in place. ``X``, ``y``: the data (NumPy
    arrays or torch tensors; ``y`` integer class labels for ``loss="cross_entropy"``), drawn in the
    order of ``qr.data.batches(X, y, batch_size, seed)``. ``dtype``: ``"float64"`` or ``"float32"`` for
    both sides (X is cast to it). ``options``: keyword arguments of the optimizer, on both sides.
    ``callback(row)`` is called after every step. ``backend``: the qlabref backend of the reference
    side (``"numpy"``, ``"numba"``, ``"cuda"``; default: the one in force). With ``"cuda"`` the
    reference model and each minibatch live on the GPU (``qlabref.device``): the whole reference step
    runs there and only the compared numbers come back. Returns a :class:`CrosscheckResult`.
    """
    import torch

    from .nn.layers import Dropout

    if dtype not in DEFAULT_TOL:
        raise ValueError(f"crosscheck: dtype must be 'float64' or 'float32', got {dtype!r}")
    tol = DEFAULT_TOL[dtype] if tol is None else tol
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) or not 0 < tol < math.inf:
        raise ValueError(f"crosscheck: tol must be a finite number > 0, got {tol!r}")
    tol = float(tol)
    check_device(device)
    X, y = check_inputs(X, y, steps=steps, batch_size=batch_size, seed=seed, dtype=dtype, loss=loss)
    from . import backends

    backend = backends.get_backend() if backend is None else backends._check_name(backend, "crosscheck")
    if backend == "cuda" and (optimizer != "qlabgrad" or loss != "cross_entropy"):  # (torch_optimizer: the PyTorch side)
        raise ValueError("crosscheck: backend='cuda' runs the reference side on the GPU for optimizer 'qlabgrad' "
                         f"with the cross_entropy loss; got optimizer {optimizer!r}, loss {loss!r}")
    tloss, qloss = _loss_fns(loss)
    tm, qm = _make_models(model, dtype, device)
    _check_fits_model(qm, X, y, loss)
    tparams = [p for p in tm.parameters() if p.requires_grad]
    qparams = qm.parameters()
    to, qo = _make_optimizers(optimizer, tparams, qparams, options, torch_optimizer)

    drops = [m for m in qm.modules() if isinstance(m, Dropout) and m.p > 0]
    if drops and torch.device(device).type != "cpu":
        raise ValueError("crosscheck: a model with dropout can be compared only on the CPU (PyTorch's CUDA dropout "
                         "masks cannot be reproduced)")
    if backend == "cuda" and drops:
        raise ValueError("crosscheck: backend='cuda' does not run dropout (its masks are drawn on the host)")
    with torch.random.fork_rng(devices=[]), backends.use_backend(backend):
        if backend == "cuda":
            qm.to("cuda")  # the reference side's parameters, gradients and buffers now live on the GPU
        if drops:
            torch.manual_seed(seed)
            sampler = TorchDropoutSampler(torch.Generator().manual_seed(seed), _torch_dtype(torch, dtype))
            for m in drops:
                m.keep_sampler = sampler
        return _loop(result_args=(dtype, optimizer, steps, tol, model_name or type(model).__name__), X=X, y=y,
                     batch_size=batch_size, seed=seed, tm=tm, qm=qm, to=to, qo=qo, tparams=tparams, qparams=qparams,
                     tloss=tloss, qloss=qloss, device=device, callback=callback)


def _loop(result_args, X, y, batch_size, seed, tm, qm, to, qo, tparams, qparams, tloss, qloss, device, callback):
    import torch

    from . import data
    from . import torch as qt
    from .tensor import Tensor

    dtype, optimizer, steps, tol, model_name = result_args
    forward_only = isinstance(to, qt._QLABBase) or getattr(to, "closure_forward_only", False)
    buffer_names = _paired_buffers(tm, qm)
    order = data.batches(X, y, batch_size, seed=seed)
    result = CrosscheckResult(dtype=dtype, optimizer=str(optimizer), steps=int(steps), tol=tol,
                              model_name=model_name)
    for t in range(1, int(steps) + 1):
        xb, yb = next(order)
        xt, yt = torch.from_numpy(np.ascontiguousarray(xb)).to(device), torch.from_numpy(np.ascontiguousarray(yb))
        yt = yt.to(device)
        xq = Tensor(np.ascontiguousarray(xb))
        if getattr(qparams[0], "device", "cpu") == "cuda":  # backend="cuda": the minibatch goes to the GPU
            xq, yb = xq.to("cuda"), Tensor(np.ascontiguousarray(yb)).to("cuda")

        if forward_only:
            def tclosure():
                return tloss(tm(xt), yt)
        else:
            def tclosure():
                to.zero_grad()
                out = tloss(tm(xt), yt)
                out.backward()
                return out
        tret = to.step(tclosure)
        qret = qo.step(lambda: qloss(qm(xq), yb))
        ts = dict(getattr(to, "last_step", None) or {})
        qs = dict(qo.last_step or {})
        tl = ts.get("loss", float(tret.detach()) if torch.is_tensor(tret) else tret)
        ql = qs.get("loss", float(qret) if qret is not None else None) if ts else float(qret)
        if ts:  # both report α_t in last_step
            tlr, qlr = ts.get("lr"), qs.get("lr")
        else:  # a torch.optim method: compare the learning rates of the groups
            tlr, qlr = to.param_groups[0].get("lr"), qo.param_groups[0].get("lr")
        row = dict(step=t, loss_torch=tl, loss_ref=ql, probe_loss_torch=ts.get("probe_loss"),
                   probe_loss_ref=qs.get("probe_loss"), alpha_star_torch=ts.get("alpha_star"),
                   alpha_star_ref=qs.get("alpha_star"), lr_torch=tlr, lr_ref=qlr)
        row["d_loss"] = _rel(tl, ql)
        row["d_probe_loss"] = _rel(row["probe_loss_torch"], row["probe_loss_ref"])
        row["d_alpha_star"] = _rel(row["alpha_star_torch"], row["alpha_star_ref"])
        row["d_lr"] = _rel(tlr, qlr)
        row["d_params"] = _rel_arrays((p.detach().cpu().numpy(), np.asarray(q.data)) for p, q in zip(tparams, qparams))
        tb, qb = dict(tm.named_buffers()), dict(qm.named_buffers())  # BatchNorm may replace its arrays
        row["d_buffers"] = _rel_arrays((tb[a].detach().cpu().numpy(), np.asarray(qb[b])) for a, b in buffer_names)
        result.rows.append(row)
        if callback is not None:
            callback(row)
    return result
