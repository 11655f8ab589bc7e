"""What the learning-rate-free comparators (DoG, D-Adaptation, Prodigy, Schedule-Free) share.

These methods come after the QLABGrad paper (2023-2024) and are not in its comparison; qlabref has
them as a clearly separated "beyond the paper" group (``BEYOND_PAPER``). Each follows its authors'
PyTorch package (the oracle of ``tests/test_optim_lrfree.py``) and documents where it differs.

Common behaviour:

- ``step(closure)``: 1 closure call (zero grads, forward, backward via ``Optimizer.evaluate``; a
  NaN/inf loss raises ``NonFiniteLossError`` before anything changes); ``step()`` without a closure
  uses the ``.grad`` the user produced (as the authors' ``torch.optim`` classes do). Parameters
  without a gradient are not stepped.
- All state is in ``self.state`` (per parameter), ``self.global_state`` (the method's scalars: step
  counter, d, r̄, G, ... and the train/eval mode) and ``param_groups`` (hyperparameters only), so
  ``state_dict()`` / ``load_state_dict()`` resume bit-identically.
- ``last_step``: ``loss``, ``lr`` (the method's own step size, see each class), ``grad_norm`` ‖g‖₂
  of the gradient the rule consumed (after coupled weight decay), ``step_norm`` ‖Δθ‖₂, ``evals``,
  plus the method's scalars.
- All have ``train()`` / ``eval()``. Where the evaluation point differs from the training point
  (Schedule-Free: x vs y; DoG with iterate averaging: x̄ vs x) they swap the parameters and ``step``
  in eval mode raises ``RuntimeError``; elsewhere they do nothing. A runner calls ``opt.eval()``
  before evaluating the model (or saving weights for inference) and ``opt.train()`` before the next
  ``step``; ``has_eval_mode(opt)`` says whether an optimizer (of any kind) needs it.
"""
from __future__ import annotations

import math

import numpy as np

from .optimizer import Optimizer

__all__ = ["BEYOND_PAPER", "is_beyond_paper", "has_eval_mode", "check_positive", "check_nonneg"]

#: the "beyond the paper" group, in the order tables and figures show it
BEYOND_PAPER = ("dog", "dadapt-sgd", "dadapt-adam", "prodigy", "schedulefree-sgd", "schedulefree-adamw")


def is_beyond_paper(name) -> bool:
    """Whether the registered optimizer ``name`` belongs to the beyond-the-paper group (the
    ``BEYOND_PAPER`` six and the layer-wise variant L-DoG); figures draw these dashed."""
    from .registry import OPTIMIZERS

    cls = OPTIMIZERS.get(str(name).lower())
    return cls is not None and issubclass(cls, LRFreeOptimizer)


def has_eval_mode(optimizer) -> bool:
    """True when ``optimizer`` evaluates at another point than it trains at and so needs
    ``optimizer.eval()`` before evaluation and ``optimizer.train()`` after it."""
    return bool(getattr(optimizer, "uses_eval_mode", False))


def check_positive(name, value, owner):
    if value is None or not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: invalid {name} {value!r} (must be a finite number > 0)")


def check_nonneg(name, value, owner):
    if value is None or not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: invalid {name} {value!r} (must be a finite number >= 0)")


def check_growth_rate(value, owner):
    if value is None or math.isnan(value) or value < 1:
        raise ValueError(f"{owner}: invalid growth_rate {value!r} (must be >= 1; math.inf for no limit)")


def check_betas(betas, owner, n=2):
    try:
        betas = tuple(float(b) for b in betas)
    except TypeError:
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}") from None
    if len(betas) != n:
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{owner}: invalid betas[{i}] {b!r} (must be in [0, 1))")
    return betas


class LRFreeOptimizer(Optimizer):
    """Base of the beyond-the-paper methods: closure handling, train/eval mode, the record."""

    #: atomic steps: ``_begin`` evaluates the closure (its only call) before anything changes, and the
    #: subclasses commit parameters and state after it; the registry-wide test checks every subclass
    _step_snapshot = "light"

    #: the method sets its own step size; ``lr`` (where it exists) is a multiplier left at its default
    learning_rate_free = True
    #: whether ``eval()``/``train()`` move the parameters (set per instance where it depends on options)
    uses_eval_mode = False

    def _begin(self, closure):
        """Refuse a step in eval mode; evaluate the closure (1 call) or use the existing ``.grad``."""
        if not self.global_state.get("train_mode", True):
            raise RuntimeError(f"{type(self).__name__}.step: the optimizer is in eval mode (the parameters hold the "
                               "evaluation point); call opt.train() before stepping")
        if closure is None:
            return None, 0
        return self.evaluate(closure), 1

    def _record(self, loss, evals, lr, g_sq, d_sq, **extra):
        grad_norm = math.sqrt(g_sq)
        rec = dict(loss=loss, lr=float(lr), grad_norm=grad_norm, step_norm=math.sqrt(d_sq), evals=evals)
        rec.update(extra)
        self._finish_step(rec)

    def eval(self):
        """Put the evaluation point into the parameters. Here the same as the training point: nothing
        to do (DoG with averaging and Schedule-Free override this)."""
        return self

    def train(self):
        """Put the training point back into the parameters (undoes ``eval()``); nothing to do here."""
        return self

    @property
    def training(self) -> bool:
        """True in train mode (the parameters hold the point the gradients are taken at)."""
        return bool(self.global_state.get("train_mode", True))
