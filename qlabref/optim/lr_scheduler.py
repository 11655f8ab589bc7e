"""Learning-rate schedules of the paper's Table 1 (E-, SS-, CA- and R-decay), with torch's semantics.

Source of truth: torch 2.13 ``torch/optim/lr_scheduler.py``. As in torch:

- the constructor records ``initial_lr`` in every param group (``setdefault``, so a resumed
  optimizer keeps its own), sets ``base_lrs`` from it and makes the *initial step*: ``last_epoch``
  becomes 0 and the group learning rates are left as they are;
- each ``step()`` increments ``last_epoch`` and writes the new learning rate into every
  ``group["lr"]``; call it after ``optimizer.step()``. ``step(epoch)`` (deprecated in torch) jumps to
  ``last_epoch = epoch`` and uses the closed form;
- ``get_last_lr()``, ``state_dict()`` (everything but the optimizer), ``load_state_dict()``.

Per schedule (t = ``last_epoch``, η0 = base lr):

=================  ==========================================  =========================================
paper (Table 1)    class                                       learning rate after t steps
=================  ==========================================  =========================================
E-decay            ``ExponentialLR(opt, gamma)``               η0·γ^t (torch's chainable form: ×γ per step)
SS-decay           ``StepLR(opt, step_size, gamma=0.1)``       η0·γ^⌊t/s⌋ (chainable: ×γ when s divides t)
CA-decay           ``CosineAnnealingLR(opt, T_max, eta_min=0)`` η_min + ½(η0 − η_min)(1 + cos(πt/T_max))
R-decay            ``InverseTimeLR(opt, k)``                   η0·1/(1 + k·t) (= torch ``LambdaLR(lambda t: 1/(1+k t))``)
=================  ==========================================  =========================================

Notes on the paper (also in demos/guide-optimizers.md):

- E-decay: Table 1 writes f(t) = exp(−βt); that is ``ExponentialLR(gamma=exp(−β))``. The experiments
  "decrease the learning rate by a factor of ½", i.e. ``gamma=0.5`` per scheduler step.
- SS-decay: f(t) = 2^−⌊t/T⌋, "halves the learning rate every T iterations": ``StepLR(step_size=T, gamma=0.5)``
  stepped every iteration.
- CA-decay: Table 1 prints f(t) = α + ½(β − α)(1 + cos(T/π)) — a MISPRINT: π is inverted, t is
  missing (the value would be constant), and the row multiplies by α once more (−α f(t)∇L). We
  implement the standard SGDR closed form above with β = η_min (the experiments use η_min = 1e-3).
  torch computes it by a recursion (its ``get_lr``) that equals the closed form only while nothing
  else changes the learning rate; we evaluate the closed form itself (agreement with torch over 30
  steps is checked to 1e-12 in ``tests/test_lr_scheduler.py``). Past T_max it rises again (no restarts).
- R-decay: f(t) = 1/(1 + βt) (inverse time / reciprocal decay), ``InverseTimeLR(k=β)``.
"""
from __future__ import annotations

import copy
import math

from .optimizer import Optimizer, check_number

__all__ = ["LRScheduler", "ExponentialLR", "StepLR", "CosineAnnealingLR", "InverseTimeLR"]


class LRScheduler:
    """Base class (torch's ``LRScheduler``): subclasses write ``get_lr`` (the value after the
    increment of ``last_epoch``) and ``_closed_form_lr``."""

    def __init__(self, optimizer, last_epoch=-1):
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: {type(optimizer).__name__} is not a qlabref Optimizer")
        for i, group in enumerate(optimizer.param_groups):
            if "lr" not in group:
                raise TypeError(f"{name}: param_groups[{i}] of {type(optimizer).__name__} has no 'lr' to schedule")
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"{name}: param 'initial_lr' is not specified in param_groups[{i}] when "
                                   f"resuming a scheduler with last_epoch >= 0 (load the optimizer state first)")
        self.optimizer = optimizer
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _closed_form_lr(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, epoch=None):
        """Advance one step (``last_epoch += 1``) and set every group's lr; with ``epoch``, jump there
        (closed form)."""
        self._step_count += 1
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = int(epoch)
            values = self._closed_form_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        """The learning rates set by the last ``step()`` (one per param group)."""
        return list(self._last_lr)

    def state_dict(self):
        """Everything but the optimizer (as torch), plus ``"scheduler"``: the class name."""
        sd = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "optimizer"}
        sd["scheduler"] = type(self).__name__
        return sd

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()`` of the same scheduler class; refuses another class's state or other
        keys, naming the first difference, and then loads nothing."""
        owner = type(self).__name__
        if not isinstance(state_dict, dict):
            raise TypeError(f"{owner}.load_state_dict: expected the dict that state_dict() returns, got "
                            f"{'None' if state_dict is None else type(state_dict).__name__}")
        saved = state_dict.get("scheduler")
        if saved != owner:
            what = "has no 'scheduler' entry naming its class" if saved is None else f"was saved by {saved}"
            raise ValueError(f"{owner}.load_state_dict: the state {what}, not {owner}")
        have, mine = set(state_dict) - {"scheduler"}, set(self.__dict__) - {"optimizer"}
        if have != mine:
            missing, extra = sorted(mine - have), sorted(have - mine)
            what = f"lacks '{missing[0]}'" if missing else f"has unknown entry '{extra[0]}'"
            raise ValueError(f"{owner}.load_state_dict: the state {what}")
        self.__dict__.update(copy.deepcopy({k: v for k, v in state_dict.items() if k != "scheduler"}))

    def _current(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def __repr__(self):
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()
                          if not k.startswith("_") and k not in ("optimizer", "base_lrs", "last_epoch"))
        return f"{type(self).__name__}({hyper})"


def _check_factor(name, value, owner):
    check_number(name, value, owner)
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: invalid {name} {value!r} (must be a finite number > 0)")


class ExponentialLR(LRScheduler):
    """E-decay: η_t = η0·γ^t, computed as torch does (×γ per step, chainable).

    The paper's f(t) = exp(−βt) is ``gamma=math.exp(-beta)``."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        _check_factor("gamma", gamma, "ExponentialLR")
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def _closed_form_lr(self):
        return [base * self.gamma**self.last_epoch for base in self.base_lrs]


class StepLR(LRScheduler):
    """SS-decay: η_t = η0·γ^⌊t/step_size⌋ (torch: ×γ whenever step_size divides t > 0).

    The paper's SS-decay ("halves every T iterations") is ``StepLR(opt, step_size=T, gamma=0.5)``."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size <= 0:
            raise ValueError(f"StepLR: invalid step_size {step_size!r} (must be a positive int)")
        _check_factor("gamma", gamma, "StepLR")
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def _closed_form_lr(self):
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """CA-decay (Loshchilov & Hutter, SGDR, without restarts):
    η_t = η_min + ½(η0 − η_min)(1 + cos(π·t/T_max)).

    The standard closed form, evaluated directly (torch uses an equivalent recursion; see the module
    docstring). Table 1's printed f(t) = α + ½(β − α)(1 + cos(T/π)) is a misprint of this formula.
    The initial step leaves the learning rate untouched (t = 0 gives η0)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        if not (isinstance(T_max, (int, float)) and not isinstance(T_max, bool) and T_max > 0):
            raise ValueError(f"CosineAnnealingLR: invalid T_max {T_max!r} (must be > 0)")
        check_number("eta_min", eta_min, "CosineAnnealingLR")
        if eta_min is None or not math.isfinite(eta_min) or eta_min < 0:
            raise ValueError(f"CosineAnnealingLR: invalid eta_min {eta_min!r} (must be a finite number >= 0)")
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return self._current()
        return self._closed_form_lr()

    def _closed_form_lr(self):
        return [self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base in self.base_lrs]


class InverseTimeLR(LRScheduler):
    """R-decay (inverse time / reciprocal): η_t = η0·f(t), f(t) = 1/(1 + k·t) (Table 1's β = k).

    Computed as torch's ``LambdaLR(opt, lambda t: 1 / (1 + k * t))`` computes it: base_lr·f(t)."""

    def __init__(self, optimizer, k, last_epoch=-1):
        check_number("k", k, "InverseTimeLR")
        if k is None or not math.isfinite(k) or k < 0:
            raise ValueError(f"InverseTimeLR: invalid k {k!r} (must be a finite number >= 0)")
        self.k = k
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            # f(0) = 1, so a fresh run gets base_lr as torch's LambdaLR does; unlike LambdaLR, a scheduler
            # built on an optimizer whose state was already loaded (resume) keeps the loaded lr
            return self._current()
        return self._closed_form_lr()

    def _closed_form_lr(self):
        return [base * (1 / (1 + self.k * self.last_epoch)) for base in self.base_lrs]
