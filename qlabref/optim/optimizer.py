"""The torch-like shell every optimizer in ``qr.optim`` shares.

What users' hands know from ``torch.optim``: ``param_groups`` (list of dicts with ``"params"`` and the
hyperparameters), ``state`` (per-parameter dicts), ``zero_grad()``, ``step(closure)``,
``state_dict()`` / ``load_state_dict()``.

The closure contract (``shared/API.md``) differs from torch on purpose: **the closure is forward
only** and returns the minibatch loss as a Tensor. The optimizer zeroes the gradients, calls the
closure with graph building on, and runs ``backward`` itself (``evaluate``); probe evaluations
(QLAB's g(ᾱ), LQA's L(θ ± δd), FindPLR) call the closure under ``no_grad()`` and
``no_state_update()`` (``probe``), so a probe never builds a graph, never touches ``.grad`` and never
changes BatchNorm running statistics. Each optimizer documents how many closure calls a step makes,
and reports it as ``last_step["evals"]``.
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np

from ..autograd import enable_grad, no_grad, no_state_update
from ..tensor import Tensor

__all__ = ["Optimizer", "NonFiniteLossError", "check_lr", "check_beta"]


class NonFiniteLossError(FloatingPointError):
    """The loss at the current parameters is NaN or ±inf; the parameters were not changed."""


def check_lr(name, lr, owner):
    if lr is None or not np.isfinite(lr) or lr < 0:
        raise ValueError(f"{owner}: invalid {name} {lr!r} (must be a finite number >= 0)")


def check_beta(name, beta, owner):
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{owner}: invalid {name} {beta!r} (must be in [0, 1))")


class Optimizer:
    """Base class: holds parameter groups and per-parameter state; subclasses write ``step``."""

    def __init__(self, params, defaults):
        owner = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(f"{owner}: params must be an iterable of Tensors (or of group dicts), got one Tensor")
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
        seen = set()
        for group in groups:
            group = dict(group)
            ps = group["params"]
            ps = [ps] if isinstance(ps, Tensor) else list(ps)
            for i, p in enumerate(ps):
                if not isinstance(p, Tensor):
                    raise TypeError(f"{owner}: parameter {i} is a {type(p).__name__}, not a qlabref Tensor")
                if p.data.dtype not in (np.float32, np.float64):
                    raise TypeError(f"{owner}: parameter {i} has dtype {p.data.dtype}; need float32 or float64")
                if id(p) in seen:
                    raise ValueError(f"{owner}: parameter {i} appears more than once")
                seen.add(id(p))
            group["params"] = ps
            for k, v in self.defaults.items():
                group.setdefault(k, v)
            self.param_groups.append(group)

    # ------------------------------------------------------------------ parameters and gradients
    def params(self):
        """All parameters, group by group, in order."""
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none=False):
        """Zero every parameter's ``.grad``. Gradients that are views into a flat buffer are filled
        with 0 in place (so they stay views); ``set_to_none=True`` drops them instead."""
        for p in self.params():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def grads(self):
        """The gradient arrays, zeros for parameters that got none."""
        return [p.grad if p.grad is not None else np.zeros_like(p.data) for p in self.params()]

    # ------------------------------------------------------------------ closure evaluation
    def evaluate(self, closure, check_finite=True) -> float:
        """Zero the gradients, ``loss = closure()`` with graph building on, ``loss.backward()``.

        Returns the loss as a float. With ``check_finite`` a NaN/inf loss raises
        ``NonFiniteLossError`` before any gradient or parameter is touched.
        """
        t0 = time.perf_counter()
        try:
            value = self._evaluate(closure, check_finite)
        finally:
            self._add_time("forward_backward", time.perf_counter() - t0)
        return value

    def _evaluate(self, closure, check_finite):
        with enable_grad():
            loss = closure()
        loss_t = _as_loss_tensor(loss, type(self).__name__)
        value = float(loss_t.data)
        if check_finite and not math.isfinite(value):
            raise NonFiniteLossError(
                f"{type(self).__name__}: the loss at the current parameters is {value}; parameters unchanged"
            )
        self.zero_grad()
        if loss_t.requires_grad:
            loss_t.backward()
        return value

    def probe(self, closure) -> float:
        """One forward at the current parameters with no graph and no module-state update."""
        t0 = time.perf_counter()
        try:
            with no_grad(), no_state_update():
                loss = closure()
            return float(_as_loss_tensor(loss, type(self).__name__, need_grad=False).data)
        finally:
            self._add_time("probe", time.perf_counter() - t0)

    def _add_time(self, key, seconds):
        timing = self.__dict__.setdefault("timing", {"forward_backward": 0.0, "probe": 0.0})
        timing[key] = timing.get(key, 0.0) + seconds

    def reset_timing(self):
        """Zero ``timing`` (the runner calls it before every step)."""
        self.timing = {"forward_backward": 0.0, "probe": 0.0}

    def _finish_step(self, record):
        self.last_step = record
        for cb in self.callbacks:
            cb(self, record)

    # ------------------------------------------------------------------ state_dict
    def state_dict(self):
        """A deep copy: ``{"state": {index: {...}}, "param_groups": [...], "global_state": {...}}``.

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
        return {"state": state, "param_groups": groups, "global_state": copy.deepcopy(self.global_state)}

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()``; checks group and parameter counts and every array's shape."""
        owner = type(self).__name__
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise KeyError(f"{owner}.load_state_dict: missing key '{key}'")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{owner}.load_state_dict: {len(groups)} parameter groups saved, optimizer has {len(self.param_groups)}")
        for gi, (saved, mine) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(mine["params"]):
                raise ValueError(
                    f"{owner}.load_state_dict: group {gi} saved {len(saved['params'])} parameters, optimizer has {len(mine['params'])}"
                )
        params = self.params()
        new_state = {}
        for i, s in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(f"{owner}.load_state_dict: state for parameter {i}, optimizer has {len(params)}")
            p = params[i]
            for k, v in s.items():
                if isinstance(v, np.ndarray) and v.ndim and v.shape != p.shape:
                    raise ValueError(f"{owner}.load_state_dict: state['{k}'] of parameter {i} has shape {v.shape}, parameter has {p.shape}")
            new_state[p] = copy.deepcopy(s)
        for saved, mine in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    mine[k] = copy.deepcopy(v)
        self.state = new_state
        self.global_state = copy.deepcopy(state_dict.get("global_state", {}))

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({hyper})"


def _as_loss_tensor(loss, owner, need_grad=True):
    if not isinstance(loss, Tensor):
        if isinstance(loss, (int, float, np.floating, np.ndarray)) and np.size(loss) == 1:
            loss = Tensor(np.asarray(loss, dtype=np.float64))
        else:
            raise TypeError(f"{owner}: the closure must return the loss as a Tensor, got {type(loss).__name__}")
    if loss.data.size != 1:
        raise ValueError(f"{owner}: the closure must return a scalar loss, got shape {loss.shape}")
    return loss
