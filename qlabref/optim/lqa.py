"""LQA: learning rate by local quadratic approximation (Zhu, Huang, Gao, Wu, Chen, Zhang, Wang;
Neural Networks 141, 2021; arXiv 2004.03260).

Along a direction d the loss is modelled as a parabola in the learning rate, f(η) = L(θ − ηd)
≈ aη² + bη + c, fitted from three values: L₀ = L(θ) and two probes L± = L(θ ± δd). Central
differences give b = (L⁻ − L⁺)/(2δ), a = (L⁺ + L⁻ − 2L₀)/(2δ²), and the minimiser
η* = −b/(2a) = δ(L⁺ − L⁻)/(2(L⁺ + L⁻ − 2L₀)) (``functional.lqa_lr``). The step is θ ← θ − η·∇L.

Sources of truth: the authors'-style PyTorch function ``LQA_delta`` and the
QLABGrad paper's Table 1 row for LQA. The two differ, so both are offered:

- ``direction="gradient"`` (DEFAULT): the QLABGrad paper's Table 1 — probes at θ ± α∇L with
  α = ``lr`` (the paper's experiments use α = 0.1 for every competing method) and
  A_t = ½α(L⁺ − L⁻)/(L⁺ + L⁻ − 2L). Table 1 prints a SUM, ½α + (L⁺ − L⁻)/(…); the derivation gives
  the PRODUCT, which we use (§11). The parabola is fitted along the raw gradient and the step is
  taken along the raw gradient, so η is in the right units and its curve compares directly with
  QLABGrad's in the paper's Figure 3. That is why it is the default.
- ``direction="normalized"``: the original code. d = g/max_k|g_k| (∞-norm over ALL tensors),
  δ = ``delta``·max(1 − ``delta_decay``·epoch, ``delta_min_factor``) (δ = 1 when no epoch was set,
  see ``set_epoch``), η = min(|η*|, 0.5) and — the original's SCALE INCONSISTENCY, reproduced on
  purpose — η fitted for d is then applied to the raw gradient g (the wrapped torch optimizer
  steps θ − η·g). The two agree only when max|g| = 1.

Safeguards (both modes): η = |η*| (the original's ``abs``, which also turns a concave fit's negative
η* into a positive step — Table 1 shows no safeguard, so this is a deliberate difference from it);
the cap ``max_lr`` (default 0.5 for "normalized" as in the original; none for "gradient", where 0.5
in ∞-normalised units has no meaning); ε = 1e-24 added to the denominator as in the original.

A NaN/inf probe loss raises ``NonFiniteProbeError`` (a ``NonFiniteLossError``) with θ and the state
unchanged: LQA has no search for a finite probe, and the parabola cannot be fitted without both (the
rule of ``qlabref.optim.optimizer``). Deliberate difference from the original, which steps on (see
below) or writes NaN into the learning rate (``min(abs(nan), 0.5)`` is NaN in Python, no exception
is raised).

When η* is not finite although both probes are (all gradients are 0 so d is undefined, or the fit's
denominator is 0), the step uses ``fallback_lr`` and records ``fallback=True``:

- a number (default 0.01): that learning rate. This is OUR safeguard, not the original's behaviour.
  The original code's ``except`` branch sets its return value to 0.01 but never writes it into the
  optimizer, so its step keeps the optimizer's previous learning rate.
- ``"previous"``: keep the learning rate of the previous step, as the original's exception path does.
  At the first step there is none; we then use ``lr`` (0.1, the paper's initial learning rate for
  every method), where the original would use the wrapped optimizer's initial lr.

Probes: both run inside ``Optimizer.probe``: no graph, no ``.grad`` change and no module-state
update. Difference from the original on purpose: the original probes a deepcopy in ``eval()`` mode
(BatchNorm running statistics, dropout off) while L₀ comes from the train-mode forward pass, so the
parabola mixes two different functions (§10.3). We probe in TRAIN mode with BatchNorm running
statistics frozen (``no_state_update``), so L₀, L⁺ and L⁻ are values of the same function; the
parameters are restored from a saved copy, not by subtracting the probe step.

Cost: 3 closure calls per step (1 forward + backward, 2 probe forwards); ``last_step["evals"] == 3``
(1 when all gradients are zero in "normalized" mode: no probe is made). The closure is required.
A NaN/inf loss or gradient at θ raises ``NonFiniteLossError`` before anything changes.

``last_step``: ``loss`` (L₀), ``lr`` (η applied to the gradient: the learning rate the paper plots),
``eta_star`` (the raw parabola minimiser), ``delta`` (probe distance δ), ``loss_plus``, ``loss_minus``,
``a``, ``b`` (parabola coefficients in the units of d), ``fallback``, ``evals``.
"""
from __future__ import annotations

import math

import numpy as np

from . import functional as Fn
from .optimizer import Optimizer, check_lr, check_number
from .registry import register_optimizer

__all__ = ["LQA"]


@register_optimizer("lqa")
class LQA(Optimizer):
    """Learning rate by local quadratic approximation along the gradient (see the module docstring).

    ``LQA(params, lr=0.1, direction="gradient" | "normalized", delta=1.0, delta_decay=0.02,
    delta_min_factor=0.1, max_lr=None, fallback_lr=0.01 | "previous", eps=1e-24)``.
    ``lr`` is the probe distance α of the "gradient" mode (not the step size); ``delta`` and the epoch
    schedule are the "normalized" mode's probe distance. ``max_lr=None`` means 0.5 for "normalized"
    and no cap for "gradient". One parameter group only. ``set_epoch(e)`` sets the epoch used by the
    normalized mode's δ schedule (the original's ``epoch`` argument).
    """

    #: atomic steps: θ is restored after the probes, everything else changes after them
    _step_snapshot = "light"
    #: constructor values of another type than the default's that are valid
    _also_accepts = {"fallback_lr": ("previous",)}

    def __init__(self, params, lr=0.1, direction="gradient", delta=1.0, delta_decay=0.02, delta_min_factor=0.1,
                 max_lr=None, fallback_lr=0.01, eps=1e-24):
        owner = "LQA"
        if direction not in ("gradient", "normalized"):
            raise ValueError(f"LQA: invalid direction {direction!r} (must be 'gradient' or 'normalized')")
        check_lr("lr", lr, owner)
        if lr == 0:
            raise ValueError("LQA: invalid lr 0 (the probe distance must be > 0)")
        check_lr("delta", delta, owner)
        if delta == 0:
            raise ValueError("LQA: invalid delta 0 (the probe distance must be > 0)")
        check_lr("delta_decay", delta_decay, owner)
        check_lr("delta_min_factor", delta_min_factor, owner)
        if fallback_lr != "previous":
            if isinstance(fallback_lr, str):
                raise ValueError(f"LQA: invalid fallback_lr {fallback_lr!r} (a number >= 0, or 'previous')")
            check_lr("fallback_lr", fallback_lr, owner)
        check_lr("eps", eps, owner)
        if max_lr is None:
            max_lr = 0.5 if direction == "normalized" else math.inf
        check_number("max_lr", max_lr, owner)
        if max_lr is None or math.isnan(max_lr) or max_lr <= 0:
            raise ValueError(f"LQA: invalid max_lr {max_lr!r} (must be > 0; math.inf for no cap)")
        super().__init__(params, dict(lr=lr, direction=direction, delta=delta, delta_decay=delta_decay,
                                      delta_min_factor=delta_min_factor, max_lr=max_lr, fallback_lr=fallback_lr,
                                      eps=eps))
        if len(self.param_groups) != 1:
            raise ValueError("LQA: supports one parameter group only (η is one global scalar)")

    def set_epoch(self, epoch):
        """Set the epoch for the "normalized" mode's probe schedule δ = delta·max(1 − 0.02·epoch, 0.1)."""
        if epoch is not None and epoch < 0:
            raise ValueError(f"LQA.set_epoch: invalid epoch {epoch!r} (must be >= 0)")
        self.global_state["epoch"] = epoch

    def _delta(self, group):
        if group["direction"] == "gradient":
            return group["lr"]
        epoch = self.global_state.get("epoch")
        if not epoch:  # the original: ``if not epoch: delta_try = 1``
            return group["delta"]
        return group["delta"] * max(1 - epoch * group["delta_decay"], group["delta_min_factor"])

    def step(self, closure=None):
        if closure is None:
            raise TypeError("LQA.step needs the closure: it evaluates the loss at θ and at two probe points")
        group = self.param_groups[0]
        l0 = self.evaluate(closure)  # NaN/inf → NonFiniteLossError, nothing changed
        params = group["params"]
        grads = [p.grad.copy() if p.grad is not None else np.zeros_like(p.data) for p in params]
        delta = self._delta(group)
        evals = 1
        l_plus = l_minus = math.nan
        if group["direction"] == "normalized":
            scale = max((float(np.max(np.abs(g))) for g in grads if g.size), default=0.0)
            d = [g / scale for g in grads] if scale > 0 and math.isfinite(scale) else None
        else:
            d = grads
        if d is not None:
            theta0 = [p.data.copy() for p in params]
            try:
                for p, t0, di in zip(params, theta0, d):
                    p.data[...] = t0 + delta * di
                l_plus = self.probe(closure)
                for p, t0, di in zip(params, theta0, d):
                    p.data[...] = t0 - delta * di
                l_minus = self.probe(closure)
            finally:
                for p, t0 in zip(params, theta0):
                    p.data[...] = t0
            evals = 3
            with np.errstate(all="ignore"):
                eta_star = Fn.lqa_lr(l0, l_plus, l_minus, delta, group["eps"])
        else:
            eta_star = math.nan
        fallback = not math.isfinite(eta_star)
        if not fallback:
            eta = min(abs(eta_star), group["max_lr"])
        elif group["fallback_lr"] == "previous":  # the original: the optimizer's lr is left as it was
            eta = self.global_state.get("lr", group["lr"])
        else:
            eta = group["fallback_lr"]
        for p, g in zip(params, grads):
            p.data[...] = p.data - eta * g
        self.global_state["lr"] = eta
        a = (l_plus + l_minus - 2 * l0) / (2 * delta**2)
        b = (l_minus - l_plus) / (2 * delta)
        self._finish_step(dict(loss=l0, lr=float(eta), eta_star=float(eta_star), delta=float(delta),
                               loss_plus=l_plus, loss_minus=l_minus, a=a, b=b, fallback=fallback, evals=evals))
        return l0
