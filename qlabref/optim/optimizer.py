"""The torch-like shell every optimizer in ``qr.optim`` shares, and the one rule for bad input.

What users' hands know from ``torch.optim``: ``param_groups`` (list of dicts with ``"params"`` and the
hyperparameters), ``state`` (per-parameter dicts), ``zero_grad()``, ``step(closure)``,
``state_dict()`` / ``load_state_dict()``.

The closure contract (demos/guide-optimizers.md) differs from torch on purpose: **the closure is forward
only** and returns the minibatch loss as a Tensor. The optimizer zeroes the gradients, calls the
closure with graph building on, and runs ``backward`` itself (``evaluate``); probe evaluations
(QLAB's g(ᾱ), LQA's L(θ ± δd), FindPLR) call the closure under ``no_grad()`` and
``no_state_update()`` (``probe``), so a probe never builds a graph, never touches ``.grad`` and never
changes BatchNorm running statistics. Each optimizer documents how many closure calls a step makes,
and reports it as ``last_step["evals"]``.

What happens on bad input (one rule for every optimizer in ``qr.optim``, including those added later,
as long as they call the closure through ``evaluate``/``probe``):

1. **The closure's return value.** ``evaluate`` needs a 0-d float Tensor attached to the graph of at
   least one of the optimizer's parameters; ``probe`` a 0-d float Tensor. Anything else (a Python
   float, a NumPy value, ``None``, a shape-(1,) Tensor, an integer Tensor, a detached loss, a loss that
   does not depend on the parameters) is a ``TypeError`` that says what it got.
2. **Non-finite values.** A NaN/±inf loss, or a finite loss whose gradient has a NaN/±inf entry,
   raises :class:`NonFiniteLossError` before anything changes (``step()`` without a closure checks the
   ``.grad`` it is about to use the same way). A probe that comes back NaN/±inf raises
   :class:`NonFiniteProbeError` (a ``NonFiniteLossError``) unless the optimizer asked for it
   (``probe(..., allow_nonfinite=True)``) because it has a search that treats it as an overshoot (the
   QLAB family halves its step); such a search raises ``NonFiniteProbeError`` when no finite probe is
   found within its budget.
3. **Atomic steps.** If ``step`` raises for any reason -- the closure raises at any call (forward,
   backward, any probe), a check above fails, a ``KeyboardInterrupt`` arrives during a closure call --
   the parameters (``p.data``, in place, so views into flat buffers stay views), ``state``,
   ``global_state``, the hyperparameters in ``param_groups`` and ``last_step`` are what they were
   before the step. ``.grad`` is not restored (it holds whatever the last backward produced).
   Callbacks run after the step is complete; an exception in a callback propagates, the step stands.
   How it is done, cheaply: the base class wraps every subclass's ``step``. By default
   (``_step_snapshot = "full"``) it copies the parameters (into buffers reused from step to step) and
   the state before the step and restores them on an exception. The built-in optimizers declare
   ``_step_snapshot = "light"``: they change arrays only after their last closure call, or restore
   θ from the copy they keep anyway and commit their state after their probes (QLAB family, LQA), so
   the base class only saves the containers and scalars. The registry-wide test
   (``tests/test_bad_input_optim.py``) checks the rule for every registered optimizer.
4. **Optimizer state.** ``state_dict()`` records the optimizer class and a format version;
   ``load_state_dict`` refuses a state of another optimizer class, with other parameter groups,
   parameter counts, hyperparameter names, array shapes or dtypes, naming the first difference, and
   loads nothing on an error. A state without the class tag (built by hand) is refused too: nothing
   else tells, e.g., L4GD's state from L4Mom's; add ``state["optimizer"] = "<ClassName>"`` if you know
   where it came from.
5. **Hyperparameter types.** Every constructor argument whose default is a bool, a number, a string
   or a tuple of numbers must have that type (checked by the base class for every subclass, before
   the subclass's own range checks): ``lr="0.1"``, ``lr=True``, ``amsgrad=None`` are ``TypeError`` s
   naming the argument. A subclass lists other valid values in ``_also_accepts`` (``{"fallback_lr":
   ("previous",)}`` for LQA).
"""
from __future__ import annotations

import copy
import functools
import inspect
import math
import numbers
import time

import numpy as np

from ..autograd import _topological_order, enable_grad, no_grad, no_state_update
from ..autograd import backward as _backward
from ..tensor import Tensor

__all__ = ["Optimizer", "NonFiniteLossError", "NonFiniteProbeError", "check_lr", "check_beta", "check_number",
           "STATE_DICT_FORMAT"]

#: group keys every optimizer accepts besides its hyperparameters (``initial_lr``: set by the schedulers)
_GROUP_EXTRAS = frozenset({"params", "initial_lr"})

#: version of the ``state_dict()`` layout (stored under ``"format"``)
STATE_DICT_FORMAT = 1


class NonFiniteLossError(FloatingPointError):
    """The loss (or its gradient) at the current parameters is NaN or ±inf; nothing was changed."""


class NonFiniteProbeError(NonFiniteLossError):
    """A probe evaluation of the loss was NaN/±inf and the optimizer could not find a finite one;
    nothing was changed."""


def check_number(name, value, owner):
    """TypeError unless ``value`` is a real number (not a bool, not a string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r} ({type(value).__name__})")


def check_lr(name, lr, owner):
    check_number(name, lr, owner)
    if lr is None or not np.isfinite(lr) or lr < 0:
        raise ValueError(f"{owner}: invalid {name} {lr!r} (must be a finite number >= 0)")


def check_beta(name, beta, owner):
    check_number(name, beta, owner)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{owner}: invalid {name} {beta!r} (must be in [0, 1))")


def _copy_tree(obj):
    """A copy of a state container: dicts/lists/tuples rebuilt, arrays copied, scalars shared."""
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        return {k: _copy_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_copy_tree(v) for v in obj)
    if obj is None or isinstance(obj, (bool, int, float, str, np.generic)):
        return obj
    return copy.deepcopy(obj)


def _shallow_tree(obj):
    """Containers rebuilt two levels deep, leaves (arrays included) shared: for "light" snapshots."""
    if isinstance(obj, dict):
        return {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in obj.items()}
    return obj


def _check_hyper_type(owner, name, value, default):
    """Type check of one constructor argument against its default (rule 5 of the module docstring)."""
    if default is inspect.Parameter.empty or default is None:
        return
    if isinstance(default, bool):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    elif isinstance(default, numbers.Real):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{owner}: {name} must be a number, got {value!r} ({type(value).__name__})")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise TypeError(f"{owner}: {name} must be a string, got {value!r} ({type(value).__name__})")
    elif isinstance(default, tuple) and all(isinstance(d, numbers.Real) and not isinstance(d, bool) for d in default):
        if (not isinstance(value, (tuple, list))
                or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) for v in value)):
            raise TypeError(f"{owner}: {name} must be a tuple of {len(default)} numbers, got {value!r}")
        if len(value) != len(default):
            raise ValueError(f"{owner}: {name} must be a tuple of {len(default)} numbers, got {value!r}")


def _typed_init(init):
    """Wrap a subclass's ``__init__``: every argument whose default is a bool, number, string or tuple of
    numbers must have that type (a string "0.1", a bool for a number, None for a flag are TypeErrors
    naming the argument) before the subclass's own range checks run."""
    try:
        sig = inspect.signature(init)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return init

    @functools.wraps(init)
    def typed_init(self, *args, **kwargs):
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError:
            return init(self, *args, **kwargs)  # Python's own message for a wrong call
        owner = type(self).__name__
        also = getattr(type(self), "_also_accepts", {})
        for name, value in list(bound.arguments.items())[1:]:
            prm = sig.parameters[name]
            if name == "params" or prm.kind in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD):
                continue
            alternatives = also.get(name, ())
            if any(value is v or (type(value) is type(v) and value == v) for v in alternatives):
                continue
            if any(type(value) is type(v) for v in alternatives):  # the right type, not an accepted value
                raise ValueError(f"{owner}: invalid {name} {value!r} (a number, or one of "
                                 f"{', '.join(repr(v) for v in alternatives)})")
            _check_hyper_type(owner, name, value, prm.default)
        return init(self, *args, **kwargs)

    typed_init._qlabref_typed = True
    return typed_init


def _atomic(step):
    """Wrap a subclass's ``step``: snapshot before, restore on any exception, callbacks after."""

    @functools.wraps(step)
    def atomic_step(self, *args, **kwargs):
        if getattr(self, "_in_step", False):  # a subclass's step calling super().step()
            return step(self, *args, **kwargs)
        snapshot = self._snapshot()
        self._in_step = True
        self._pending_record = None
        try:
            if (args[0] if args else kwargs.get("closure")) is None:
                self.check_grads()  # step() on the user's .grad: NaN/inf → NonFiniteLossError, nothing changed
            result = step(self, *args, **kwargs)
        except BaseException:
            self._restore(snapshot)
            raise
        finally:
            self._in_step = False
        record, self._pending_record = self._pending_record, None
        if record is not None:
            for cb in self.callbacks:
                cb(self, record)
        return result

    atomic_step._qlabref_atomic = True
    return atomic_step



def flat_buffer(arrays):
    """The 1-D buffer that ``arrays`` tile exactly, in order, as contiguous views (what
    ``qr.nn.Module.flat_parameters()`` / ``flat_grads()`` make, on the host or on the GPU), else None."""
    if not arrays or arrays[0] is None:
        return None
    first = arrays[0]
    if type(first) is not np.ndarray and getattr(type(first), "__qlabref_device__", False):
        base = first.base  # GPU-resident views (qlabref.device.flat_view): the owner and an element offset
        if base is None or base.ndim != 1:
            return None
        offset = 0
        for a in arrays:
            if not getattr(type(a), "__qlabref_device__", False) or a.base is not base or a._offset != offset:
                return None
            offset += a.size
        return base if offset == base.size else None
    base = first.base
    if base is None or not isinstance(base, np.ndarray) or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    address = base.__array_interface__["data"][0]
    for a in arrays:
        if (not isinstance(a, np.ndarray) or a.base is not base or not a.flags.c_contiguous
                or a.__array_interface__["data"][0] != address):
            return None
        address += a.nbytes
    return base if address == base.__array_interface__["data"][0] + base.nbytes else None


class Optimizer:
    """Base class: holds parameter groups and per-parameter state; subclasses write ``step``.

    Every ``step`` a subclass defines is wrapped so that it is atomic (module docstring, item 3).
    ``_step_snapshot``: ``"full"`` (default, safe for any subclass) or ``"light"`` for a subclass whose
    step changes parameters and state arrays only after its last closure call (or restores them
    itself, and commits its state after its probes).
    """

    _step_snapshot = "full"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "_qlabref_atomic", False):
            cls.step = _atomic(step)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_qlabref_typed", False):
            cls.__init__ = _typed_init(init)
        if cls._step_snapshot not in ("full", "light"):
            raise ValueError(f"{cls.__name__}._step_snapshot must be 'full' or 'light', got {cls._step_snapshot!r}")

    def __init__(self, params, defaults):
        owner = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(f"{owner}: params must be an iterable of Tensors (or of group dicts), got one Tensor")
        if isinstance(params, (str, bytes, dict)) or not hasattr(params, "__iter__"):
            raise TypeError(f"{owner}: params must be an iterable of Tensors (or of group dicts), "
                            f"got {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError(f"{owner}: got an empty parameter list (params)")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        #: optimizer-wide state that is not per parameter (step counters, global learning rates)
        self.global_state = {}
        #: numbers of the last step (loss, lr, ...), see each optimizer's docstring
        self.last_step = {}
        #: functions called as ``cb(optimizer, last_step)`` after every step
        self.callbacks = []
        #: seconds spent in ``evaluate`` (forward + backward) and ``probe`` (probe forwards) since the
        #: last ``reset_timing()``; the training runner splits each step's time with it
        self.timing = {"forward_backward": 0.0, "probe": 0.0}
        self._in_step = False
        self._pending_record = None
        self._param_buffers = {}
        seen = set()
        for gi, group in enumerate(groups):
            if not isinstance(group, dict):
                raise TypeError(f"{owner}: parameter group {gi} is a {type(group).__name__}; when the first entry of "
                                "params is a dict, every entry must be a dict with a 'params' key")
            if "params" not in group:
                raise ValueError(f"{owner}: parameter group {gi} has no 'params' key")
            group = dict(group)
            ps = group["params"]
            ps = [ps] if isinstance(ps, Tensor) else list(ps)
            if not ps:
                raise ValueError(f"{owner}: parameter group {gi} is empty")
            for i, p in enumerate(ps):
                if not isinstance(p, Tensor):
                    raise TypeError(f"{owner}: parameter {i} is a {type(p).__name__}, not a qlabref Tensor")
                if p.data.dtype not in (np.float32, np.float64):
                    raise TypeError(f"{owner}: parameter {i} has dtype {p.data.dtype}; need float32 or float64")
                if not p.requires_grad:
                    raise ValueError(f"{owner}: parameter {i} (shape {p.shape}) has requires_grad=False, so it would "
                                     "never get a gradient nor be updated; leave it out (or requires_grad_())")
                if id(p) in seen:
                    raise ValueError(f"{owner}: parameter {i} appears more than once")
                seen.add(id(p))
            group["params"] = ps
            unknown = sorted(k for k in group if k not in self.defaults and k not in _GROUP_EXTRAS)
            if unknown:
                raise ValueError(f"{owner}: parameter group {gi} sets unknown option(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(self.defaults)) or '(none)'}")
            for k in group:
                if k in self.defaults:
                    _check_hyper_type(owner, f"parameter group {gi}'s {k}", group[k], self.defaults[k])
            for k, v in self.defaults.items():
                group.setdefault(k, v)
            self.param_groups.append(group)

    # ------------------------------------------------------------------ parameters and gradients
    #: True where step() computes ‖∇L‖² and raises NonFiniteLossError on a non-finite one before
    #: changing anything (QLABGrad, find_plr): check_grads then skips its own pass over GPU gradients
    _step_checks_grad_sq_norm = False

    def params(self):
        """All parameters, group by group, in order."""
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none=True):
        """Reset every parameter's ``.grad`` before a backward pass, as ``torch.optim`` (≥ 2.0) does.

        ``set_to_none=True`` (the default, torch's): ``.grad`` becomes None and the next backward
        assigns a fresh gradient (one copy, no zero-fill and no ``+=``); a parameter that backward
        does not reach keeps None and every optimizer skips it (as torch does). A ``.grad`` that is a
        view into another buffer (``model.flat_grads()``) is filled with 0 in place instead, so it
        stays a view. ``set_to_none=False`` fills every ``.grad`` with 0 in place."""
        grads = [p._grad for g in self.param_groups for p in g["params"]]
        if grads and all(g is not None for g in grads):
            flat = flat_buffer(grads)
            if flat is not None:  # every .grad a view of one flat buffer: one fill (one launch on the GPU)
                flat[...] = 0
                return
        for g in self.param_groups:
            for p in g["params"]:
                grad = p._grad
                if grad is not None:
                    if set_to_none and grad.base is None:
                        p._grad = None
                    else:
                        grad[...] = 0

    def grads(self):
        """The gradient arrays, zeros for parameters that got none."""
        return [p.grad if p.grad is not None else np.zeros_like(p.data) for p in self.params()]

    def check_grads(self, loss=None):
        """Raise ``NonFiniteLossError`` if a ``.grad`` has a NaN/inf entry or a wrong shape (rule 2).

        One BLAS dot product g·g per gradient, the fastest full pass NumPy offers (a NaN/inf entry makes
        it non-finite; an overflow of finite entries is told apart by an exact ``isfinite`` check)."""
        owner = None
        on_gpu = None  # Σ g² of the GPU-resident gradients, summed on the device: one scalar back
        for i, p in enumerate(self.params()):
            g = p._grad
            if g is None:
                continue
            owner = type(self).__name__
            if type(g) is not np.ndarray and getattr(type(g), "__qlabref_device__", False) and g.shape == p._data.shape:
                if self._step_checks_grad_sq_norm:
                    continue  # the step's own ‖∇L‖² (one pass, one scalar) raises on NaN/inf first
                from ..device import BACKEND

                s = BACKEND.sq_norm(g)
                on_gpu = s if on_gpu is None else on_gpu + s
                continue
            if not isinstance(g, np.ndarray) or g.shape != p.data.shape:
                raise ValueError(f"{owner}: the .grad of parameter {i} is "
                                 f"{'an array of shape ' + str(g.shape) if isinstance(g, np.ndarray) else type(g).__name__}"
                                 f"; the parameter has shape {p.data.shape}")
            flat = g.reshape(-1)
            if not math.isfinite(np.dot(flat, flat)) and not np.isfinite(g).all():
                bad = int(np.size(g) - np.count_nonzero(np.isfinite(g)))
                at = "" if loss is None else f" although the loss is {loss!r}"
                raise NonFiniteLossError(
                    f"{owner}: the gradient of parameter {i} (shape {p.data.shape}) has {bad} NaN/inf "
                    f"entr{'y' if bad == 1 else 'ies'}{at}; parameters and optimizer state unchanged")
        if on_gpu is not None and not math.isfinite(float(on_gpu)):
            at = "" if loss is None else f" although the loss is {loss!r}"
            raise NonFiniteLossError(f"{owner}: a gradient on the GPU has NaN/inf entries{at}; parameters and "
                                     "optimizer state unchanged")

    # ------------------------------------------------------------------ closure evaluation
    def _check_loss(self, loss, where):
        if type(loss) is Tensor and loss._data.ndim == 0 and loss._data.dtype.kind == "f":
            return loss  # the common case, checked in one line
        owner = type(self).__name__
        if not isinstance(loss, Tensor):
            if isinstance(loss, (bool, int, float, np.generic)):
                got = f"a {type(loss).__name__} ({loss!r})"
            elif isinstance(loss, np.ndarray):
                got = f"a NumPy array of shape {loss.shape}"
            else:
                got = "None" if loss is None else f"a {type(loss).__name__}"
            raise TypeError(f"{owner}: the closure must return the loss as a 0-d float Tensor built from the "
                            f"parameters{where}, got {got}")
        if loss.data.ndim != 0:
            raise TypeError(f"{owner}: the closure must return a 0-d (scalar) loss Tensor{where}, got a Tensor of "
                            f"shape {loss.shape}; reduce it with .sum() or .mean()")
        if loss.data.dtype.kind != "f":
            raise TypeError(f"{owner}: the closure must return a float loss Tensor{where}, got dtype {loss.data.dtype}")
        return loss

    def evaluate(self, closure) -> float:
        """Zero the gradients, ``loss = closure()`` with graph building on, ``loss.backward()``.

        Returns the loss as a float. Checks (module docstring, rules 1-2), each before anything the
        step changes: the return value is a 0-d float Tensor attached to the graph of at least one
        parameter (else ``TypeError``), the loss is finite and then every gradient is finite (else
        ``NonFiniteLossError``; ``.grad`` then holds the non-finite gradient).
        """
        if not callable(closure):
            raise TypeError(f"{type(self).__name__}.step: closure must be a callable returning the loss, got "
                            f"{type(closure).__name__}")
        t0 = time.perf_counter()
        try:
            return self._evaluate(closure)
        finally:
            self._add_time("forward_backward", time.perf_counter() - t0)

    def _evaluate(self, closure):
        with enable_grad():
            loss = closure()
        loss = self._check_loss(loss, "")
        if not loss.requires_grad:
            raise TypeError(f"{type(self).__name__}: the closure returned a loss Tensor that is not attached to any "
                            "graph (requires_grad=False: computed under no_grad(), detached, or from constants only)")
        params = self.params()
        order = _topological_order(loss)  # computed once: the check below and backward share it
        leaves = {id(n) for n in order if n._node is None}
        if not any(id(p) in leaves for p in params):
            raise TypeError(f"{type(self).__name__}: the closure returned a loss that does not depend on any of the "
                            f"optimizer's {len(params)} parameters (was the model rebuilt, or the optimizer given "
                            "other tensors?)")
        value = float(loss._data)
        if not math.isfinite(value):
            raise NonFiniteLossError(f"{type(self).__name__}: the loss at the current parameters is {value}; "
                                     "parameters and optimizer state unchanged")
        self.zero_grad()
        _backward(loss, _order=order)
        self.check_grads(value)
        return value

    def probe(self, closure, allow_nonfinite=False) -> float:
        """One forward at the current parameters with no graph and no module-state update.

        The return value must be a 0-d float Tensor (``TypeError`` otherwise). A NaN/inf value raises
        ``NonFiniteProbeError`` unless ``allow_nonfinite`` (the caller then treats it, e.g. as an
        overshoot, and must raise ``NonFiniteProbeError`` itself if it finds no finite probe)."""
        t0 = time.perf_counter()
        try:
            with no_grad(), no_state_update():
                loss = closure()
            value = float(self._check_loss(loss, " (at a probe evaluation)").data)
        finally:
            self._add_time("probe", time.perf_counter() - t0)
        if not allow_nonfinite and not math.isfinite(value):
            raise NonFiniteProbeError(f"{type(self).__name__}: a probe evaluation of the loss returned {value}; "
                                      "parameters and optimizer state unchanged")
        return value

    def _add_time(self, key, seconds):
        timing = self.__dict__.get("timing")
        if timing is None:
            timing = self.timing = {"forward_backward": 0.0, "probe": 0.0}
        timing[key] = timing.get(key, 0.0) + seconds

    def reset_timing(self):
        """Zero ``timing`` (the runner calls it before every step)."""
        self.timing = {"forward_backward": 0.0, "probe": 0.0}

    def _finish_step(self, record):
        """Publish the step's record; callbacks run once the step is complete (after the atomic wrapper)."""
        self.last_step = record
        if self._in_step:
            self._pending_record = record
        else:
            for cb in self.callbacks:
                cb(self, record)

    # ------------------------------------------------------------------ atomic steps
    def _snapshot(self):
        full = self._step_snapshot == "full"
        params = []
        for p in self.params():
            saved = None
            if full:
                buf = self._param_buffers.get(id(p))
                if buf is None or buf.shape != p.data.shape or buf.dtype != p.data.dtype:
                    buf = self._param_buffers[id(p)] = np.empty_like(p.data)
                np.copyto(buf, p.data)
                saved = buf
            params.append((p, p.data, saved))
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        tree = _copy_tree if full else _shallow_tree
        return dict(params=params, groups=_copy_tree(groups) if full else groups, state=tree(self.state),
                    global_state=tree(self.global_state), last_step=self.last_step)

    def _restore(self, snap):
        for p, data, saved in snap["params"]:
            if p.data is not data:
                p.data = data
            if saved is not None:
                np.copyto(data, saved)
        for g, saved in zip(self.param_groups, snap["groups"]):
            for k in [k for k in g if k != "params" and k not in saved]:
                del g[k]
            g.update(saved)
        self.state = snap["state"]
        self.global_state = snap["global_state"]
        self.last_step = snap["last_step"]
        self._pending_record = None

    # ------------------------------------------------------------------ state_dict
    def state_dict(self):
        """A deep copy: ``{"optimizer": class name, "format": 1, "state": {index: {...}},
        "param_groups": [...], "global_state": {...}}``.

        Parameters are referred to by their position (as in torch), so a state saved from one model
        loads into an identically built one.
        """
        index = {id(p): i for i, p in enumerate(self.params())}
        state = {index[id(p)]: copy.deepcopy(s) for p, s in self.state.items() if id(p) in index}
        groups = []
        for g in self.param_groups:
            entry = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            entry["params"] = [index[id(p)] for p in g["params"]]
            groups.append(entry)
        return {"optimizer": type(self).__name__, "format": STATE_DICT_FORMAT, "state": state,
                "param_groups": groups, "global_state": copy.deepcopy(self.global_state)}

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()`` of the same optimizer class on identically shaped parameters.

        Checks, in order, and names the first difference (``TypeError``/``ValueError``); nothing is
        loaded on an error: a dict; the optimizer class (``"optimizer"``) and format; the number of
        parameter groups, each group's parameter indices and hyperparameter names; every state
        entry's parameter index and array shapes/dtypes; the ``global_state`` keys this optimizer
        keeps.
        """
        owner = type(self).__name__
        where = f"{owner}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{where}: expected the dict that state_dict() returns, got "
                            f"{'None' if state_dict is None else type(state_dict).__name__}")
        saved_cls = state_dict.get("optimizer")
        if saved_cls is None:
            raise ValueError(f"{where}: the state has no 'optimizer' entry naming the optimizer class that saved it "
                             f"(built by hand?); if it is {owner}'s, set state['optimizer'] = '{owner}'")
        if saved_cls != owner:
            raise ValueError(f"{where}: the state was saved by {saved_cls}, not {owner}; an optimizer's state only "
                             "loads into the same optimizer class")
        fmt = state_dict.get("format")
        if fmt != STATE_DICT_FORMAT:
            raise ValueError(f"{where}: state format {fmt!r} is not supported (this version reads format "
                             f"{STATE_DICT_FORMAT})")
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"{where}: missing key '{key}'")
        groups = state_dict["param_groups"]
        if not isinstance(groups, (list, tuple)):
            raise TypeError(f"{where}: 'param_groups' must be a list, got {type(groups).__name__}")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{where}: {len(groups)} parameter groups saved, optimizer has {len(self.param_groups)}")
        offset = 0
        for gi, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"{where}: parameter group {gi} is not a dict with a 'params' list")
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(
                    f"{where}: group {gi} saved {len(saved['params'])} parameters, optimizer has {len(mine['params'])}")
            expected = list(range(offset, offset + len(mine["params"])))
            if [int(i) for i in saved["params"]] != expected:
                raise ValueError(f"{where}: group {gi} refers to parameters {list(saved['params'])}, expected {expected}")
            offset += len(mine["params"])
            have, want = set(saved) - _GROUP_EXTRAS, set(mine) - _GROUP_EXTRAS
            missing, extra = sorted(want - have), sorted(have - want)
            if missing or extra:
                what = f"lacks option '{missing[0]}'" if missing else f"has unknown option '{extra[0]}'"
                raise ValueError(f"{where}: parameter group {gi} {what}")
        params = self.params()
        states = state_dict["state"]
        if not isinstance(states, dict):
            raise TypeError(f"{where}: 'state' must be a dict {{parameter index: dict}}, got {type(states).__name__}")
        new_state = {}
        for i, s in states.items():
            try:
                i = int(i)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: state key {i!r} is not a parameter index") from None
            if not 0 <= i < len(params):
                raise ValueError(f"{where}: state for parameter {i}, optimizer has {len(params)}")
            if not isinstance(s, dict):
                raise TypeError(f"{where}: state of parameter {i} is a {type(s).__name__}, not a dict")
            p = params[i]
            for k, v in s.items():
                if isinstance(v, np.ndarray) and v.ndim:
                    if v.shape != p.shape:
                        raise ValueError(f"{where}: state['{k}'] of parameter {i} has shape {v.shape}, parameter has "
                                         f"{p.shape}")
                    if v.dtype != p.data.dtype:
                        raise ValueError(f"{where}: state['{k}'] of parameter {i} has dtype {v.dtype}, parameter has "
                                         f"{p.data.dtype}")
            new_state[p] = copy.deepcopy(s)
        gstate = state_dict.get("global_state", {})
        if not isinstance(gstate, dict):
            raise TypeError(f"{where}: 'global_state' must be a dict, got {type(gstate).__name__}")
        missing = sorted(set(self.global_state) - set(gstate))
        if missing:
            raise ValueError(f"{where}: global_state lacks '{missing[0]}', which {owner} keeps")
        for saved, mine in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    mine[k] = copy.deepcopy(v)
        self.state = new_state
        self.global_state = copy.deepcopy(gstate)

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({hyper})"
