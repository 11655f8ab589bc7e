"""QLABGrad, QLAB and FindPLR as ``torch.optim.Optimizer``s: the semantics of :mod:`qlabref.optim.qlab`.

Read :mod:`qlabref.optim.qlab`'s docstring (``python -m pydoc qlabref.optim.qlab``) for the algorithm,
the edge cases and the paper's ambiguities; this module implements the very same rules on torch
tensors (CPU or CUDA, float32 or float64), with the same defaults, the same ``last_step`` keys and the
same exceptions (``qlabref.optim.NonFiniteLossError``, ``qlabref.optim.FindPLRError``). The rule
itself (Eqs. 5-10, Algorithm 1's fallback, the caps, FindPLR's decisions and loops, the records) is
*shared code*, not a copy: :mod:`qlabref.optim.qlab_rule` and :mod:`qlabref.optim.qlab`. This module
only moves tensors.

A ten-line loop::

    import torch, qlabref.torch as qt
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10))
    opt = qt.QLABGrad(model.parameters())          # ᾱ from FindPLR (alpha0 = 1.0) at the first step
    for x, y in loader:
        loss = opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
        print(opt.last_step["loss"], opt.last_step["lr"])

``step(closure)``: **the closure is forward only** and returns the minibatch loss tensor (do not call
``zero_grad`` or ``backward`` in it: the optimizer zeroes the gradients and runs ``backward``, as in
``qr.optim``). A step calls the closure 2 times (forward + backward, then the probe forward g(ᾱ) under
``torch.no_grad()``), 1 + FindPLR's probes on a FindPLR step, 1 when ∇L = 0 (``last_step["evals"]``).

What a probe does not change (the paper's g(ᾱ) is a function of θ on *this* minibatch):

- **Module buffers.** A global forward pre-hook
  (``torch.nn.modules.module.register_module_forward_pre_hook``) finds the modules that run in the
  closure whose forward can write their buffers: training-mode BatchNorm/InstanceNorm with running
  statistics, and any module of your own that has buffers (its forward is unknown, so it is guarded);
  no other ``torch.nn`` module. Their buffers are saved before a probe (with one foreach copy per
  dtype into storage kept between steps; a module seen for the first time is saved by the hook just
  before it runs) and written back after it: BatchNorm ``running_mean``/``running_var`` and
  ``num_batches_tracked`` are bit for bit as if the probe had not happened. The optimizer needs no
  reference to the model for this. (Buffers changed outside a module's ``forward`` call, e.g. by a
  functional ``F.batch_norm`` on your own tensors, are not seen.)
- **Randomness.** The torch RNG state (CPU, and CUDA on the parameters' devices) is saved before the
  main forward and set back to it before every probe, so dropout draws the same masks in the probe as
  in the forward pass; after the step it is left where the main forward left it.
- **A failed step changes nothing.** If the closure raises (in the forward or in a probe), or the loss
  or the gradient is not finite (``NonFiniteLossError``, raised before the update), the parameters,
  their ``.grad``, the optimizer state, the buffers touched by the forward and the RNG state are
  restored. (Memory: the optimizer keeps one copy of the parameters between steps, and QLAB one of its
  momentum/Adam state, refilled every step; the reference engine holds the same copies during a step.)

**Cost of a step.** An ordinary step (no FindPLR, no probe after a non-finite one, nothing
non-finite) reads the device **once**: L(θ), ‖∇L‖² (QLAB: also ∇L·V) and g(ᾱ) are stacked and read
with one ``.tolist()``. The probe θ − ᾱ∇L is therefore evaluated *before* the step knows whether ∇L is
zero or the loss finite; when it turns out that it was not needed (∇L = 0; QLAB: ∇L·V ≤ 0, which
probes again along ∇L), that forward is discarded and not counted in ``last_step["evals"]``, which
stays the reference engine's count. Every tensor operation of the optimizer is a ``torch._foreach_*``
op over all parameter tensors (one per device and dtype): θ saved with one foreach copy, ‖∇L‖² from
``torch._foreach_norm`` (a NaN/inf anywhere makes it non-finite, so the finiteness check is free;
which tensor holds the NaN is found only then, for the message), θ − α·d placed with foreach ops. So the
number of operations the optimizer dispatches does not grow with the number of parameter tensors
(``tests/test_torch_optim_cost.py`` counts them). FindPLR steps read once per probe (each probe
decides the next). The RNG needs no device read: see ``_get_rng``.

Parameter groups: there is **one** α for all parameters (‖∇L‖² and ∇L·V are sums over every group,
as the paper's scalar learning rate requires), so several groups are allowed but must not set
different options (``ValueError``, as ``qr.optim``).

``state_dict()`` is torch's, plus ``"global_state"`` (step, ᾱ, FindPLR schedule): saving it and loading
it into a fresh optimizer resumes bit-identically.

All of a0, a1, a2, α*, ‖∇L‖² are Python floats (float64) even for float32 parameters; ‖∇L‖² and ∇L·V
are accumulated in float64. The update θ ← θ − α·d is computed as ``θ_saved + (−α·d)`` (one rounding
for the product, one for the sum), the same arithmetic as the reference engine.
"""
from __future__ import annotations

import copy
import math

import copy
import math
import weakref

from .optim import qlab_rule as rule
from .optim.optimizer import NonFiniteLossError, NonFiniteProbeError, _typed_init
from .optim.qlab import (
    DEFAULT_ALPHA0,
    DEFAULT_MAX_EVALS,
    QLAB_DEFAULT_ALPHA0,
    FindPLRError,
    FindPLRNonFiniteError,
    FindPLRResult,
    _after_probe,
    _findplr_in_step,
    _findplr_loops,
)

try:
    import torch
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError("qlabref.torch needs PyTorch: pip install 'qlabref[torch]' (or pip install torch)") from _e

__all__ = ["QLABGrad", "QLAB", "find_plr", "FindPLRError", "FindPLRNonFiniteError", "FindPLRResult",
           "NonFiniteLossError", "NonFiniteProbeError",
           "DEFAULT_ALPHA0", "QLAB_DEFAULT_ALPHA0", "DEFAULT_MAX_EVALS"]

_DIRECTIONS = rule.DIRECTIONS


# ------------------------------------------------------------------------------ foreach plumbing
def _group_index(tensors):
    """Index lists of ``tensors`` by (device, dtype), in order: one foreach call per list (a foreach op
    needs one device and dtype to take its fused multi-tensor path). One list for a usual model."""
    groups = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return list(groups.values())


def _split(groups, *lists):
    """``lists`` cut by ``groups``: yields one tuple of sub-lists per group (the lists themselves for one group)."""
    if len(groups) == 1:
        yield lists
        return
    for idx in groups:
        yield tuple([lst[i] for i in idx] for lst in lists)


def _copy_all(groups, dst, src):
    """dst[i] ← src[i] for all i: one ``torch._foreach_copy_`` per (device, dtype)."""
    with torch.no_grad():
        for d, s in _split(groups, dst, src):
            torch._foreach_copy_(d, s)


class _Mirror:
    """Preallocated copies of a list of tensors (θ, or the optimizer state, or module buffers), kept
    between steps and refilled with one foreach copy per (device, dtype): a save costs no allocation and
    a number of dispatched ops that does not grow with the number of tensors."""

    def __init__(self):
        self.key = None
        self.copies = []
        self.groups = []

    def save(self, tensors):
        key = tuple((id(t), t.shape, t.dtype, t.device) for t in tensors)
        if key != self.key:
            self.copies = [torch.empty_like(t, memory_format=torch.preserve_format) for t in tensors]
            self.groups = _group_index(tensors)
            self.key = key
        if tensors:
            _copy_all(self.groups, self.copies, tensors)
        return self.copies

    def load_into(self, tensors):
        if tensors:
            _copy_all(self.groups, tensors, self.copies)


def _sq_norm(tensors, groups=None):
    """Σ x² over all tensors as a 0-d float64 tensor (no device read): ``torch._foreach_norm`` per
    (device, dtype), accumulated in float64. A NaN/inf entry anywhere makes it NaN/inf."""
    norms = []
    for (ts,) in _split(groups or _group_index(tensors), tensors):
        norms.extend(torch._foreach_norm(ts, 2, dtype=torch.float64))
    return _on_one_device(norms).square().sum()


def _dot(xs, ys, groups=None):
    """Σ x·y over all tensor pairs as a 0-d float64 tensor (no device read), with foreach ops only:
    Σ x·y = ‖max(x·y, 0)‖₁ − ‖min(x·y, 0)‖₁, the two 1-norms accumulated in float64 (float64 inputs:
    the products are exact inputs of the same sum; float32: each product is rounded once to float32)."""
    parts = []
    for x, y in _split(groups or _group_index(xs), xs, ys):
        prods = torch._foreach_mul(x, y)
        pos = torch._foreach_norm(torch._foreach_clamp_min(prods, 0.0), 1, dtype=torch.float64)
        neg = torch._foreach_norm(torch._foreach_clamp_max(prods, 0.0), 1, dtype=torch.float64)
        parts.append(_on_one_device(pos).sum() - _on_one_device(neg).sum())
    return parts[0] if len(parts) == 1 else _on_one_device(parts).sum()


def _on_one_device(scalars):
    """0-d tensors stacked on the first one's device (a copy only for models split across devices)."""
    dev = scalars[0].device
    return torch.stack([s if s.device == dev else s.to(dev) for s in scalars])


def _read(items):
    """Python floats of ``items`` (0-d tensors or numbers) with ONE read of the device for all the
    tensors: they are stacked (as float64, exact for every float dtype) and read with ``.tolist()``."""
    tensors = [x for x in items if isinstance(x, torch.Tensor)]
    values = iter(_on_one_device([t.detach().to(torch.float64) for t in tensors]).tolist() if tensors else ())
    return [next(values) if isinstance(x, torch.Tensor) else float(x) for x in items]


def _place(params, saved, alpha, dirs, at_saved=False, groups=None):
    """θ ← saved − α·d in place, as ``saved + (−α·d)``: the reference engine's rounding (one for the
    product, one for the sum), with three foreach ops per (device, dtype); two (−α·d, then θ += it)
    when the caller knows θ still equals ``saved`` bit for bit (``at_saved``: the step's first probe)."""
    with torch.no_grad():
        for ps, ss, ds in _split(groups or _group_index(params), params, saved, dirs):
            if alpha == 0.0:
                torch._foreach_copy_(ps, ss)
            elif at_saved:
                torch._foreach_add_(ps, torch._foreach_mul(ds, -alpha))
            else:
                torch._foreach_copy_(ps, ds)
                torch._foreach_mul_(ps, -alpha)
                torch._foreach_add_(ps, ss)


def _restore(params, saved, groups=None):
    _copy_all(groups or _group_index(params), params, saved)


# ------------------------------------------------------------------------------ module state guard
_NormBase = torch.nn.modules.batchnorm._NormBase


def _buffers_may_change(module):
    """Whether a forward of ``module`` can write its buffers: training-mode BatchNorm/InstanceNorm with
    running statistics; never another ``torch.nn`` module; any module of yours that has buffers (its
    forward is not known, so it is guarded)."""
    if not module._buffers:
        return False
    if isinstance(module, _NormBase):
        return bool(module.training and module.track_running_stats)
    return not type(module).__module__.startswith("torch.nn.")


class _BufferGuard:
    """The modules whose buffers a closure can change, and snapshots of their buffers.

    A global forward pre-hook (``register_module_forward_pre_hook``) finds the modules that run; those
    whose buffers may change (:func:`_buffers_may_change`) are remembered (weakly) for later steps.
    ``snapshot()`` saves the buffers of every remembered module with one foreach copy per (device,
    dtype) into storage kept between steps; a module seen for the first time during the guarded
    forward is saved by the hook just before it runs. ``restore()`` writes everything back."""

    def __init__(self):
        self.known = {}  # id(module) -> weakref to it
        self._slots = {}

    def snapshot(self, slot):
        snap = self._slots.get(slot)
        if snap is None:
            snap = self._slots[slot] = _BufferSnapshot(self)
        snap.take()
        return snap

    def _modules(self):
        alive = []
        for key, ref in list(self.known.items()):
            m = ref()
            if m is None:
                del self.known[key]
            elif _buffers_may_change(m):
                alive.append(m)
        return alive


class _BufferSnapshot:
    def __init__(self, guard):
        self.guard = guard
        self.entries = []  # (module, name, buffer) saved in ``mirror``
        self.extra = []  # (module, name, buffer, clone) saved by the hook during the forward
        self.seen = set()
        self.mirror = _Mirror()

    def take(self):
        self.entries = [(m, n, b) for m in self.guard._modules() for n, b in m._buffers.items() if b is not None]
        self.mirror.save([b for _, _, b in self.entries])
        self.extra = []
        self.seen = {id(m) for m, _, _ in self.entries}

    def _hook(self, module, args):
        if id(module) not in self.seen and _buffers_may_change(module):
            self.seen.add(id(module))
            self.guard.known[id(module)] = weakref.ref(module)
            self.extra.extend((module, n, b, b.detach().clone()) for n, b in module._buffers.items() if b is not None)

    def __enter__(self):
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False

    def restore(self):
        with torch.no_grad():
            for module, name, obj in self.entries:
                module._buffers[name] = obj  # (a module that replaced a buffer object gets it back)
            self.mirror.load_into([b for _, _, b in self.entries])
            for module, name, obj, clone in self.extra:
                obj.copy_(clone)
                module._buffers[name] = obj


# ------------------------------------------------------------------------------------------- RNG
# The torch RNG is saved before the main forward and set back before every probe (dropout draws the
# forward's masks). ``torch.get_rng_state``/``torch.cuda.get_rng_state`` read the generators' state on
# the host: the CPU generator's state, and for CUDA the seed and the Philox offset, which the CUDA
# generator keeps in host memory (kernels receive them as launch arguments). Neither reads the device
# or synchronises it, so this costs no device read on any step.
def _rng_devices(params):
    return sorted({p.device.index if p.device.index is not None else torch.cuda.current_device()
                   for p in params if p.device.type == "cuda"})


def _get_rng(devices):
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng(state, devices):
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1]):
        torch.cuda.set_rng_state(s, d)


# ------------------------------------------------------------------------------------ the closure
def _check_loss(loss, owner, where=""):
    """The closure's return value must be a 0-d float tensor (the reference engine's rule 1); no device read."""
    if not isinstance(loss, torch.Tensor):
        got = "None" if loss is None else f"a {type(loss).__name__}" + (
            f" ({loss!r})" if isinstance(loss, (bool, int, float)) else "")
        raise TypeError(f"{owner}: the closure must return the loss as a 0-d float torch.Tensor built from the "
                        f"parameters{where}, got {got}")
    if loss.dim() != 0:
        raise TypeError(f"{owner}: the closure must return a 0-d (scalar) loss tensor{where}, got a tensor of shape "
                        f"{tuple(loss.shape)}; reduce it with .sum() or .mean()")
    if not loss.is_floating_point():
        raise TypeError(f"{owner}: the closure must return a float loss tensor{where}, got dtype {loss.dtype}")
    return loss


def _loss_value(loss, owner, where=""):
    """The closure's return value as a float (one device read)."""
    return float(_check_loss(loss, owner, where).detach().item())


# ------------------------------------------------------------------------------------ the shell
class _QLABBase(torch.optim.Optimizer):
    """What QLABGrad and QLAB share: closure evaluation, probes, atomic steps, global state.

    Cost of an ordinary step (no FindPLR, no fallback probe, nothing non-finite): every tensor
    operation is a foreach op over all parameter tensors (one per device and dtype), and the device
    is read once, for L(θ), ‖∇L‖² (∇L·V) and g(ᾱ) together; see the module docstring."""

    def __init__(self, params, defaults):
        self.global_state = {}
        #: numbers of the last step (see :mod:`qlabref.optim.qlab`)
        self.last_step = {}
        #: functions called as ``cb(optimizer, last_step)`` after every step
        self.callbacks = []
        self._saved_params = _Mirror()
        self._saved_state = _Mirror()
        self._guard = _BufferGuard()
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        self._saved_params, self._saved_state, self._guard = _Mirror(), _Mirror(), _BufferGuard()

    def add_param_group(self, param_group):
        owner = type(self).__name__
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for i, p in enumerate(group["params"]):
            if p.dtype not in (torch.float32, torch.float64):
                self.param_groups.pop()
                raise TypeError(f"{owner}: parameter {i} of group {len(self.param_groups)} has dtype {p.dtype}; "
                                "need float32 or float64")
        for k, v in self.defaults.items():
            if group[k] != v:
                self.param_groups.pop()
                raise ValueError(
                    f"{owner}: parameter group {len(self.param_groups)} sets {k}={group[k]!r} but the optimizer has "
                    f"{k}={v!r}; {owner} uses one learning rate for all parameters (‖∇L‖² is over all of them), "
                    "so per-group options are not supported")

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def _grads(self, params):
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]

    def _nonfinite_loss(self, loss_value):
        return NonFiniteLossError(f"{type(self).__name__}: the loss at the current parameters is {loss_value}; "
                                  "parameters and optimizer state unchanged")

    def _raise_if_nonfinite_loss(self, loss):
        value = float(loss.detach().item())  # (only on a path that has failed already)
        if not math.isfinite(value):
            raise self._nonfinite_loss(value)

    def _check_finite(self, loss, gsq, params, gsq_message=None):
        """The reference engine's rules 1-2 on the numbers read: a non-finite loss, then a NaN/inf entry
        of a gradient (the per-tensor search runs only here, once ‖∇L‖² has come out non-finite), then a
        ‖∇L‖² that overflowed."""
        owner = type(self).__name__
        if not math.isfinite(loss):
            raise self._nonfinite_loss(loss)
        if math.isfinite(gsq):
            return
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            bad = int((~torch.isfinite(p.grad)).sum())
            if bad:
                raise NonFiniteLossError(
                    f"{owner}: the gradient of parameter {i} (shape {tuple(p.shape)}) has {bad} NaN/inf "
                    f"entr{'y' if bad == 1 else 'ies'} although the loss is {loss!r}; parameters and optimizer "
                    "state unchanged")
        raise NonFiniteLossError(gsq_message(gsq, loss) if gsq_message else
                                 rule.nonfinite_gradient_message(owner, gsq, loss))

    def _evaluate(self, closure, params):
        """Forward with graph, the closure's checks, backward. Returns the loss as a 0-d tensor (not read:
        its finiteness is checked with the step's one read, by :meth:`_check_finite`)."""
        owner = type(self).__name__
        if not callable(closure):
            raise TypeError(f"{owner}.step: closure must be a callable returning the loss, got {type(closure).__name__}")
        with torch.enable_grad():
            loss = closure()
        _check_loss(loss, owner)
        if not loss.requires_grad:
            raise TypeError(f"{owner}: the closure returned a loss tensor that is not attached to any graph "
                            "(requires_grad=False: computed under torch.no_grad(), detached, or from constants only)")
        for p in params:
            p.grad = None  # (so that a loss built from none of the parameters is recognised below)
        try:
            loss.backward()
        except RuntimeError as e:
            self._raise_if_nonfinite_loss(loss)  # the reference checks the loss before backward
            if "second time" in str(e):
                raise RuntimeError(f"{owner}: the closure must be forward only (return the loss; the optimizer "
                                   f"calls zero_grad and backward itself): {e}") from e
            raise
        if all(p.grad is None for p in params):
            self._raise_if_nonfinite_loss(loss)
            raise TypeError(f"{owner}: the closure returned a loss that does not depend on any of the optimizer's "
                            f"{len(params)} parameters (was the model rebuilt, or the optimizer given other tensors?)")
        return loss.detach()

    def _probe(self, closure):
        """One forward at the current parameters: no graph, same RNG as the main forward, buffers kept.
        Returns the loss as a 0-d tensor (not read; :func:`_read` reads it; a float is accepted too)."""
        _set_rng(self._rng_before, self._rng_devs)
        guard = self._guard.snapshot("probe")
        try:
            with torch.no_grad(), guard:
                loss = closure()
            return _check_loss(loss, type(self).__name__, " (at a probe evaluation)")
        finally:
            guard.restore()

    def _probe_value(self, closure):
        """:meth:`_probe` read as a float (FindPLR's loops decide after every probe)."""
        return _read([self._probe(closure)])[0]

    def _atomic(self, closure, body):
        """Run ``body(params, loss, saved)`` after the main forward + backward (``loss``: a 0-d tensor,
        ``saved``: copies of the parameters from before it); on any exception put back the parameters,
        their ``.grad``, the optimizer state, the buffers the forward touched and the RNG state."""
        params = self._params()
        self._rng_devs = _rng_devices(params)
        self._rng_before = _get_rng(self._rng_devs)
        saved_params = self._saved_params.save(params)  # θ_{t−1}: one foreach copy
        state_tensors = [v for s in self.state.values() for v in s.values() if torch.is_tensor(v)]
        self._saved_state.save(state_tensors)  # QLAB's momentum/Adam state: one foreach copy
        saved_state = {p: dict(s) for p, s in self.state.items()}
        saved_other = {p: {k: copy.deepcopy(v) for k, v in s.items() if not torch.is_tensor(v)}
                       for p, s in self.state.items()}
        saved_global = copy.deepcopy(self.global_state)
        saved_grads = [p.grad for p in params]
        guard = self._guard.snapshot("main")
        try:
            with guard:
                loss = self._evaluate(closure, params)
            rng_after = _get_rng(self._rng_devs)
            result = body(params, loss, saved_params)
            _set_rng(rng_after, self._rng_devs)
        except BaseException:
            _restore(params, saved_params, self._saved_params.groups)
            for p, g in zip(params, saved_grads):
                p.grad = g
            self._saved_state.load_into(state_tensors)
            self.state.clear()
            for p, s in saved_state.items():
                self.state[p] = s
                s.update(saved_other[p])
            self.global_state = saved_global
            guard.restore()
            _set_rng(self._rng_before, self._rng_devs)
            raise
        record = self.__dict__.pop("_pending_record", None)
        if record is not None:  # callbacks run once the step is complete; if one raises, the step stands
            self.last_step = record
            for cb in self.callbacks:
                cb(self, record)
        return result

    def _move(self, params, saved, alpha, dirs, kind):
        """θ ← θ_saved − α·d; ``kind`` is ``"probe"`` (a point g(α) is evaluated at) or ``"update"``
        (Algorithm 1, line 8). One method, so a subclass can change it (e.g. to test ``crosscheck``)."""
        at_saved = self.__dict__.pop("_at_saved", False)
        _place(params, saved, alpha, dirs, at_saved=at_saved, groups=self._groups(saved))

    def _groups(self, saved):
        """The (device, dtype) groups of the parameters when ``saved`` is this step's saved copy (known
        since the save), else None (computed where needed)."""
        return self._saved_params.groups if saved is self._saved_params.copies else None

    def _first_probe(self, closure, params, saved, alpha, dirs, scalars):
        """The step's probe at ``alpha`` along ``dirs``, made before anything is read, then ONE read of
        ``scalars`` (the step's 0-d tensors) and of g(α) together. Returns the floats, g(α) last.
        If the probe raises, the scalars are read first: a non-finite loss or gradient is the cause."""
        self._at_saved = True  # θ is θ_{t−1} bit for bit: the probe point is one product and one sum
        self._move(params, saved, alpha, dirs, "probe")
        self.__dict__.pop("_at_saved", None)
        try:
            probe = self._probe(closure)
        except BaseException:
            self._check_finite(*_read(scalars[:2]), params)
            raise
        return _read([*scalars, probe])

    def _finish_step(self, record):
        self._pending_record = record  # published by _atomic when the step is complete

    def state_dict(self):
        """torch's state_dict plus ``"optimizer"`` (the class name) and ``"global_state"``."""
        sd = super().state_dict()
        sd["optimizer"] = type(self).__name__
        sd["global_state"] = copy.deepcopy(self.global_state)
        return sd

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()`` of the same class (``TypeError``/``ValueError`` naming the problem,
        as the reference engine's ``load_state_dict``; torch then checks groups and sizes)."""
        owner = type(self).__name__
        where = f"{owner}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{where}: expected the dict that state_dict() returns, got {type(state_dict).__name__}")
        saved_cls = state_dict.get("optimizer")
        if saved_cls is None:
            raise ValueError(f"{where}: the state has no 'optimizer' entry naming the optimizer class that saved it "
                             f"(torch.optim's, or built by hand?); if it is {owner}'s, set state['optimizer'] = '{owner}'")
        if saved_cls != owner:
            raise ValueError(f"{where}: the state was saved by {saved_cls}, not {owner}; an optimizer's state only "
                             "loads into the same optimizer class")
        if "global_state" not in state_dict:
            raise ValueError(f"{where}: the state has no 'global_state' entry")
        saved = state_dict["param_groups"]
        for k in self.defaults:
            for i, g in enumerate(saved):
                if k not in g:
                    raise KeyError(f"{owner}.load_state_dict: parameter group {i} has no option '{k}' "
                                   f"(another optimizer's state?)")
        sd = dict(state_dict)
        gs = sd.pop("global_state")
        sd.pop("optimizer")
        super().load_state_dict(sd)
        self.defaults.update({k: v for k, v in self.param_groups[0].items() if k in self.defaults})
        self.global_state = copy.deepcopy(gs)



# ----------------------------------------------------------------------------------- Algorithm 1
class QLABGrad(_QLABBase):
    """QLABGrad (Algorithm 1) with FindPLR (Algorithm 2), as ``qlabref.optim.QLABGrad``.

    ``QLABGrad(params, pre_lr=None, alpha0=1.0, findplr="once", max_evals=50, max_lr=None,
    max_lr_factor=None)``; see
    :class:`qlabref.optim.QLABGrad` for the options and this module's docstring for the torch side.
    """

    @_typed_init  # argument types checked as in qr.optim (a string or a bool for a number is a TypeError)
    def __init__(self, params, pre_lr=None, alpha0=DEFAULT_ALPHA0, findplr="once", max_evals=DEFAULT_MAX_EVALS,
                 max_lr=None, max_lr_factor=None):
        options = rule.qlabgrad_options(pre_lr, alpha0, findplr, max_evals, max_lr, max_lr_factor)
        super().__init__(params, options)
        pre_lr = options["pre_lr"]
        self.global_state.update(step=0, pre_lr=pre_lr, findplr_due=pre_lr is None, findplr_runs=0, last_lr=None)

    pre_lr = rule.PRE_LR

    def step(self, closure=None):
        if closure is None:
            raise ValueError(rule.needs_closure_message("QLABGrad"))
        return self._atomic(closure, lambda params, loss, saved: self._step(closure, params, loss, saved))

    def _step(self, closure, params, loss_t, saved):
        group = self.param_groups[0]
        mode, every = rule.parse_findplr(group["findplr"], "QLABGrad")
        gs = self.global_state
        t = gs["step"] + 1
        grads = self._grads(params)
        gsq_t = _sq_norm(grads, self._groups(saved))  # ‖∇L(θ_{t−1})‖² over every parameter (one α for all)
        findplr_due = rule.findplr_is_due(gs["findplr_due"], mode, every, t)
        pre = gs["pre_lr"]
        probe = None
        if findplr_due:  # FindPLR decides after every probe: read L and ‖∇L‖² now
            loss, gsq = _read([loss_t, gsq_t])
            self._check_finite(loss, gsq, params)
        else:  # the ordinary step: probe g(ᾱ) first (Eq. 8), then one read decides the step
            loss, gsq, probe = self._first_probe(closure, params, saved, pre, grads, [loss_t, gsq_t])
            self._check_finite(loss, gsq, params)
        record = rule.qlabgrad_record(t, loss, gsq, gs["pre_lr"], flat_storage=False)  # a0, a1: Eqs. (6), (7)
        if gsq == 0.0:
            # ∇L = 0: g(α) = L for every α; no step (a due FindPLR waits for the next step). The probe
            # made before the read (at θ − ᾱ·0 = θ) is not counted: evals = 1, as the reference engine.
            _restore(params, saved)
            record["zero_grad"] = True
            gs.update(step=t, last_lr=0.0, findplr_due=findplr_due)
            self._finish_step(record)
            return loss

        # ``saved``: θ_{t−1} (copied before the forward pass), every point is computed from it

        def g_at(alpha):  # Eq. (3): g(α) = L(θ_{t−1} − α∇L(θ_{t−1})), one probe forward
            self._move(params, saved, alpha, grads, "probe")
            return self._probe_value(closure)

        findplr_runs = gs["findplr_runs"]
        if findplr_due:  # Algorithm 2 on this θ and minibatch (shared with qr.optim)
            pre, probe = _findplr_in_step(g_at, loss, gsq, group["alpha0"], pre, group["max_evals"], "QLABGrad",
                                          record)
            findplr_due = False
            findplr_runs += 1
        else:  # g(ᾱ) made above (Eq. 8); a non-finite one is an overshoot (shared with qr.optim)
            pre, probe = _after_probe(g_at, loss, pre, probe, group["max_evals"], "QLABGrad", record)

        a2, alpha_star = rule.qlabgrad_fit(loss, gsq, pre, probe)  # Eqs. (9), (10)
        # Algorithm 1, lines 4–7 (fallback α_t = ᾱ), then the optional caps (remedies, qr.optim.QLABGrad)
        lr, fallback, capped = rule.choose_lr(alpha_star, a2, pre, group["max_lr"], group["max_lr_factor"])
        self._move(params, saved, lr, grads, "update")  # Algorithm 1, line 8: θ_t = θ_{t−1} − α_t∇L(θ_{t−1})

        gs.update(step=t, last_lr=lr, pre_lr=pre, findplr_due=findplr_due, findplr_runs=findplr_runs)
        record.update(probe_loss=probe, a2=a2, alpha_star=alpha_star, lr=lr, pre_lr=pre, fallback=fallback,
                      capped=capped)
        self._finish_step(record)
        return loss


# ------------------------------------------------------------------------- QLAB on a direction V
class QLAB(_QLABBase):
    """QLAB on the descent direction V of SGD, momentum or Adam, as ``qlabref.optim.QLAB``.

    ``QLAB(params, direction="momentum" (None = momentum), alpha0=0.01, momentum=0.9, betas=(0.9, 0.999), eps=1e-8,
    max_evals=50, max_lr=None)``. Per-parameter state: ``momentum_buffer`` or ``exp_avg`` /
    ``exp_avg_sq`` (torch's names). ``last_step`` as QLABGrad's plus ``direction``, ``not_descent``,
    ``grad_dot_dir``; ``pre_lr`` holds β = max(α0, α_{t−1}).
    """

    @_typed_init
    def __init__(self, params, direction=None, alpha0=QLAB_DEFAULT_ALPHA0, momentum=0.9, betas=(0.9, 0.999),
                 eps=1e-8, max_evals=DEFAULT_MAX_EVALS, max_lr=None):
        owner = type(self).__name__
        direction = "momentum" if direction is None else direction
        super().__init__(params, rule.qlab_options(direction, alpha0, momentum, betas, eps, max_evals, max_lr, owner))
        self.global_state.update(step=0, prev_lr=None)

    def _direction(self, params, grads, t, group):
        """The direction's own step with lr = 1 (updates its state in place), in the reference's
        arithmetic, with foreach ops (per tensor only where a state tensor is created, at the first step)."""
        direction = group["direction"]
        if direction == "sgd":
            return grads
        groups = _group_index(params)
        with torch.no_grad():
            if direction == "momentum":
                mu = group["momentum"]
                bufs, fresh = [], []
                for p, g in zip(params, grads):
                    st = self.state[p]
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = g.clone()  # torch: the first buffer is a copy of the gradient
                        fresh.append(True)
                    else:
                        fresh.append(False)
                    bufs.append(buf)
                if all(fresh):
                    return bufs
                old = [i for i, f in enumerate(fresh) if not f]
                ob, og = [bufs[i] for i in old], [grads[i] for i in old]
                for b, g in _split(_group_index(ob), ob, og):
                    torch._foreach_mul_(b, mu)  # b ← μb + ∇L
                    torch._foreach_add_(b, g)
                return bufs
            b1, b2 = group["betas"]
            eps = group["eps"]
            bc1 = 1.0 - b1**t
            bc2 = 1.0 - b2**t
            ms, vs = [], []
            for p in params:
                st = self.state[p]
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ms.append(st["exp_avg"])
                vs.append(st["exp_avg_sq"])
            dirs = [None] * len(params)
            for idx in groups:
                m, v, g = [ms[i] for i in idx], [vs[i] for i in idx], [grads[i] for i in idx]
                diff = torch._foreach_sub(g, m)
                torch._foreach_mul_(diff, 1.0 - b1)
                torch._foreach_add_(m, diff)  # torch: exp_avg.lerp_(grad, 1 − β1)
                torch._foreach_mul_(v, b2)
                gg = torch._foreach_mul(g, g)
                torch._foreach_mul_(gg, 1.0 - b2)
                torch._foreach_add_(v, gg)
                denom = torch._foreach_sqrt(v)
                torch._foreach_div_(denom, math.sqrt(bc2))
                torch._foreach_add_(denom, eps)
                d = torch._foreach_div(m, denom)
                torch._foreach_mul_(d, 1.0 / bc1)  # torch: step_size·m/denom with lr = 1
                for i, x in zip(idx, d):
                    dirs[i] = x
        return dirs

    def step(self, closure=None):
        owner = type(self).__name__
        if closure is None:
            raise ValueError(rule.needs_closure_message(owner))
        return self._atomic(closure, lambda params, loss, saved: self._step(closure, params, loss, saved))

    def _step(self, closure, params, loss_t, saved):
        owner = type(self).__name__
        group = self.param_groups[0]
        gs = self.global_state
        t = gs["step"] + 1
        grads = self._grads(params)
        gsq_t = _sq_norm(grads, self._groups(saved))
        dirs = self._direction(params, grads, t, group)
        gdotv_t = gsq_t if dirs is grads else _dot(grads, dirs, self._groups(saved))  # ∇L·V
        beta = rule.qlab_probe_step(group["alpha0"], gs["prev_lr"])  # β = max(α0, α_{t−1})
        # probe g(β) along V before anything is read (Eq. 8), then one read decides the step
        loss, gsq, gdotv, probe = self._first_probe(closure, params, saved, beta, dirs, [loss_t, gsq_t, gdotv_t])
        self._check_finite(loss, gsq, params)
        not_descent = not gdotv > 0
        if not_descent:  # V is not a descent direction (or ∇L·V is NaN): use the gradient this step
            dirs, gdotv = grads, gsq
        record = rule.qlab_record(t, loss, gsq, gdotv, beta, group["direction"], not_descent)  # Eqs. (6), (7)
        if gdotv == 0.0:  # ∇L = 0: nothing to do (the direction's state was still updated)
            _restore(params, saved)  # (the probe made before the read is not counted, as in QLABGrad)
            gs["step"] = t
            record["zero_grad"] = True
            self._finish_step(record)
            return loss

        def g_at(alpha):  # g(α) = L(θ − αV), one probe forward from the saved θ
            self._move(params, saved, alpha, dirs, "probe")
            return self._probe_value(closure)

        if not_descent:  # the probe along V is discarded: g(β) along ∇L
            probe = g_at(beta)
        beta, probe = _after_probe(g_at, loss, beta, probe, group["max_evals"], owner, record)

        a2, alpha_star = rule.qlab_fit(loss, gdotv, beta, probe)  # Eqs. (9), (5)
        lr, fallback, capped = rule.choose_lr(alpha_star, a2, beta, group["max_lr"])  # α* < 0 → α_t = β
        self._move(params, saved, lr, dirs, "update")  # θ_t = θ_{t−1} − α_t V
        gs.update(step=t, prev_lr=lr)
        record.update(probe_loss=probe, a2=a2, alpha_star=alpha_star, lr=lr, pre_lr=beta, fallback=fallback,
                      capped=capped)
        self._finish_step(record)
        return loss


# ----------------------------------------------------------------------------------- Algorithm 2
class _FindPLRShell(_QLABBase):
    def __init__(self, params):
        super().__init__(params, {})


_FindPLRShell.__name__ = "find_plr"


def find_plr(closure, params, alpha0=DEFAULT_ALPHA0, max_evals=DEFAULT_MAX_EVALS, full_output=False):
    """Algorithm 2 (FindPLR) on torch parameters, as ``qlabref.optim.find_plr``.

    ``closure``: forward only, returns the loss tensor. One forward + backward (g(0), ∇L; ``.grad`` is
    left holding ∇L(θ)), then one probe forward per ᾱ tried (no graph, buffers and RNG as in a step).
    θ is restored exactly before returning or raising. Returns ᾱ (float), or a
    :class:`~qlabref.optim.FindPLRResult` with ``full_output=True``. Raises ``FindPLRError`` after
    ``max_evals`` probes or when ∇L = 0, ``NonFiniteLossError`` when g(0) or ∇L is not finite.
    """
    owner = "find_plr"
    alpha0 = rule.check_positive("alpha0", alpha0, owner)
    max_evals = rule.check_max_evals(max_evals, owner)
    shell = _FindPLRShell(params)

    def body(ps, g0_t, saved):
        grads = shell._grads(ps)
        g0, gsq = _read([g0_t, _sq_norm(grads)])  # line 2: g(0), and ‖∇L(θ)‖² over all parameters
        shell._check_finite(g0, gsq, ps, lambda gsq, loss: f"find_plr: the gradient at θ is not finite "
                                                           f"(‖∇L‖² = {gsq}); parameters unchanged")
        if gsq == 0.0:
            raise FindPLRError(
                f"find_plr: the gradient at θ is zero (g(0) = {g0!r}), so g(ᾱ) = g(0) for every ᾱ and there is no "
                f"pre-learning rate to determine; last ᾱ = {alpha0!r}",
                0, alpha0, g0, 0,
            )

        def g_at(alpha):
            _place(ps, saved, alpha, grads)
            return shell._probe_value(closure)

        try:
            result = _findplr_loops(g_at, g0, gsq, alpha0, max_evals, owner)
        finally:
            _restore(ps, saved)
        result.evals = result.probes + 1
        return result

    result = shell._atomic(closure, body)
    return result if full_output else result.pre_lr
