"""L4: practical loss-based step-size adaptation (Rolinek & Martius, NeurIPS 2018): L4GD, L4Mom, L4Adam.

Source of truth: the official TensorFlow code ``github.com/martius-lab/l4-optimizer``, ``L4/L4.py``
(classes L4General, L4Mom, L4Adam). Per step, with L
the minibatch loss and t = step + 1:

    L_min ← γ0·L  at the first step,  min(L_min, L) afterwards
    ĝ     ← gradient estimate (a bias-corrected EMA of g with decay 1 − 1/10 = 0.9)
    v     ← update direction (L4Mom: a second, identical EMA, so v = ĝ;
             L4Adam: m̂/(√v̂ + 1e-4) with β1 = 0.9, β2 = 0.999, ε = 1e-4 — not Adam's 1e-8)
    η_t   ← α·(L − γ·L_min)/(v·ĝ + ε)        (one scalar; v·ĝ the inner product over all parameters)
    θ     ← θ − η_t·v
    L_min ← (1 + 1/τ)·L_min                  ("forgetting": after the step)

Defaults: α = 0.15 (``alpha``, TF ``fraction``), γ = 0.9 (``gamma``, ``minloss_factor``), γ0 = 0.75
(``gamma0``, ``init_factor``), τ = 1000 (``tau``, ``minloss_forget_time``: a TIME SCALE as in the TF
code; the PyTorch port's ``tau=1e-3`` is the rate 1/τ), ε = 1e-12. The EMAs start at zero and are
updated TensorFlow's way, avg ← avg − (avg − g)(1 − decay).

The two momentum time scales, and which official knob each one is:

- ``time_momentum`` (L4Mom only): the time scale T of the DIRECTION's EMA v (decay 1 − 1/T). This is
  the official ``L4Mom(mom_params={'time_momentum': T})``, which the TF code passes to the direction
  transform only.
- ``gradient_time_momentum`` (all three): the time scale of the gradient ESTIMATE's EMA ĝ. The
  official L4Mom and L4Adam fix it at 10 (their gradient estimator gets no parameters); only
  ``L4General(gradient_params={'time_momentum': T})`` changes it.

So ``L4Mom(params, time_momentum=T)`` does exactly what the official ``L4Mom(mom_params=
{'time_momentum': T})`` does (an earlier qlabref changed both EMAs; with T ≠ 10 that moves the
learning rate by about 10%), and ``L4Mom(params, time_momentum=T, gradient_time_momentum=T)`` is
the official ``L4General(gradient_params={'time_momentum': T}, direction_estimator='momentum',
direction_params={'time_momentum': T})``. L4Adam's direction time scales are ``time_scale_grad`` and
``time_scale_var`` (the official ``adam_params``).

L4GD is not a class of the official code (the paper wraps Mom and Adam). Ours is L4General with
the plain gradient: v = g and ĝ = g by default, giving the QLABGrad paper's Table 1 formula
η = α(L − γL_min)/‖∇L‖² (+ε); ``gradient_estimator="momentum"`` uses the EMA ĝ instead (§3.1, §11).

Deliberate differences from the original code:
- bias corrections 1 − decay^t are computed in float64 (the TF code: float32, 1 − exp(t·log decay));
- a negative loss raises ``ValueError`` (the formula assumes L ≥ 0; the PyTorch port raises too);
- a NaN/inf loss, or a finite loss with a NaN/inf gradient, raises ``NonFiniteLossError`` before
  anything changes (the PyTorch port silently skips the step; the TF code would write NaN into the
  parameters);
- only one parameter group (η is one global scalar, as in the TF code).

Closure contract: L4 needs the loss value, so ``step(closure)`` is required (1 closure call: forward
and backward); ``step()`` without a closure raises ``TypeError``.
``last_step``: ``loss``, ``lr`` (η_t, the learning rate the paper plots), ``l_min`` (the value used in
η_t), ``inner`` (v·ĝ), ``evals`` (1).
"""
from __future__ import annotations

import numpy as np

from . import functional as Fn
from .optimizer import Optimizer
from .registry import register_optimizer

__all__ = ["L4GD", "L4Mom", "L4Adam"]


def _check_pos(name, value, owner, allow_zero=True):
    ok = value is not None and np.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{owner}: invalid {name} {value!r} (must be a finite number {'>=' if allow_zero else '>'} 0)")


class _L4(Optimizer):
    """L4General: a direction (``"gradient"``, ``"momentum"``, ``"adam"``) and a gradient estimate
    (``"gradient"``, ``"momentum"``), both built from per-parameter EMAs."""

    #: atomic steps: one closure call, before any parameter or state array changes
    _step_snapshot = "light"

    def __init__(self, params, alpha, gamma, gamma0, tau, eps, direction, gradient_estimator, time_momentum=10.0,
                 time_scale_grad=10.0, time_scale_var=1000.0, adam_eps=1e-4, gradient_time_momentum=10.0):
        owner = type(self).__name__
        _check_pos("alpha", alpha, owner)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"{owner}: invalid gamma {gamma!r} (must be in [0, 1])")
        if not 0.0 <= gamma0 <= 1.0:
            raise ValueError(f"{owner}: invalid gamma0 {gamma0!r} (must be in [0, 1])")
        _check_pos("tau", tau, owner, allow_zero=False)
        _check_pos("eps", eps, owner)
        _check_pos("adam_eps", adam_eps, owner)
        for name, ts in (("time_momentum", time_momentum), ("gradient_time_momentum", gradient_time_momentum),
                         ("time_scale_grad", time_scale_grad), ("time_scale_var", time_scale_var)):
            if not (np.isfinite(ts) and ts >= 1):
                raise ValueError(f"{owner}: invalid {name} {ts!r} (a time scale >= 1: the EMA decay is 1 − 1/{name})")
        if direction not in ("gradient", "momentum", "adam"):
            raise ValueError(f"{owner}: invalid direction {direction!r}")
        if gradient_estimator not in ("gradient", "momentum"):
            raise ValueError(f"{owner}: invalid gradient_estimator {gradient_estimator!r} (must be 'gradient' or 'momentum')")
        super().__init__(params, dict(alpha=alpha, gamma=gamma, gamma0=gamma0, tau=tau, eps=eps, direction=direction,
                                      gradient_estimator=gradient_estimator, time_momentum=time_momentum,
                                      gradient_time_momentum=gradient_time_momentum, time_scale_grad=time_scale_grad,
                                      time_scale_var=time_scale_var,
                                      adam_eps=adam_eps))
        if len(self.param_groups) != 1:
            raise ValueError(f"{owner}: supports one parameter group only (η is one global scalar)")

    def step(self, closure=None):
        owner = type(self).__name__
        if closure is None:
            raise TypeError(f"{owner}.step needs the closure: L4 uses the loss value (step(closure), closure returns the loss)")
        loss = self.evaluate(closure)  # NaN/inf → NonFiniteLossError, nothing changed
        if loss < 0:
            raise ValueError(f"{owner}: the loss is negative ({loss!r}); L4's step α(L − γL_min)/(v·ĝ) assumes L >= 0")
        h = self.param_groups[0]
        gs = self.global_state
        k = gs.get("step", 0)  # TF global_step before this update
        t = k + 1
        l_min = h["gamma0"] * loss if k == 0 else min(gs["l_min"], loss)

        # as the TF code ("Filter variables without a gradient"): a parameter without .grad is not
        # stepped and its EMAs are not advanced
        params = [p for p in h["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        mom_decay = 1.0 - 1.0 / h["time_momentum"]  # the direction's EMA (official mom_params)
        est_decay = 1.0 - 1.0 / h["gradient_time_momentum"]  # ĝ's EMA (official gradient_params; 10 in L4Mom/L4Adam)
        directions, estimates = [], []
        for p, g in zip(params, grads):
            st = self.state.setdefault(p, {})
            # gradient estimate ĝ
            if h["gradient_estimator"] == "momentum":
                st["g_ema"] = Fn.ema(st.get("g_ema", np.zeros_like(g)), g, est_decay)
                ghat = st["g_ema"] / Fn.bias_correction(est_decay, t)
            else:
                ghat = g
            # direction v
            if h["direction"] == "momentum":
                st["v_ema"] = Fn.ema(st.get("v_ema", np.zeros_like(g)), g, mom_decay)
                v = st["v_ema"] / Fn.bias_correction(mom_decay, t)
            elif h["direction"] == "adam":
                d1 = 1.0 - 1.0 / h["time_scale_grad"]
                d2 = 1.0 - 1.0 / h["time_scale_var"]
                st["exp_avg"] = Fn.ema(st.get("exp_avg", np.zeros_like(g)), g, d1)
                st["exp_avg_sq"] = Fn.ema(st.get("exp_avg_sq", np.zeros_like(g)), g * g, d2)
                m_hat = st["exp_avg"] / Fn.bias_correction(d1, t)
                v_hat = st["exp_avg_sq"] / Fn.bias_correction(d2, t)
                v = m_hat / (np.sqrt(v_hat) + h["adam_eps"])
            else:
                v = g
            directions.append(v)
            estimates.append(ghat)

        eta, inner = Fn.l4_lr(loss, l_min, directions, estimates, alpha=h["alpha"], gamma=h["gamma"], eps=h["eps"])
        for p, v in zip(params, directions):
            p.data[...] = p.data - eta * v
        gs["l_min"] = (1.0 + 1.0 / h["tau"]) * l_min
        gs["step"] = t
        self._finish_step(dict(loss=loss, lr=float(eta), l_min=float(l_min), inner=inner, evals=1))
        return loss


@register_optimizer("l4gd")
class L4GD(_L4):
    """L4 on the plain gradient (the QLABGrad paper's "L4GD", Table 1): η_t = α(L − γL_min)/(v·ĝ + ε)
    with v = g and ĝ = g (``gradient_estimator="gradient"``, default) or ĝ = bias-corrected EMA(0.9)
    of g (``"momentum"``, L4General-style). Not a class of the official code (see module docstring).

    ``L4GD(params, alpha=0.15, gamma=0.9, gamma0=0.75, tau=1000.0, eps=1e-12, gradient_estimator="gradient",
    gradient_time_momentum=10.0)``; ``gradient_time_momentum`` is ĝ's EMA time scale (with
    ``gradient_estimator="momentum"``; the official ``L4General(gradient_params={'time_momentum': T})``).
    1 closure call per step; closure required; negative loss → ValueError.
    """

    def __init__(self, params, alpha=0.15, gamma=0.9, gamma0=0.75, tau=1000.0, eps=1e-12,
                 gradient_estimator="gradient", gradient_time_momentum=10.0):
        super().__init__(params, alpha, gamma, gamma0, tau, eps, "gradient", gradient_estimator,
                         gradient_time_momentum=gradient_time_momentum)


@register_optimizer("l4mom")
class L4Mom(_L4):
    """L4Mom (official ``L4Mom``): v = ĝ = bias-corrected EMA(0.9) of g (two identical EMAs, as the TF
    code keeps), η_t = α(L − γL_min)/(‖ĝ‖² + ε) with the defaults; in general η_t = α(L − γL_min)/(v·ĝ + ε).

    ``L4Mom(params, alpha=0.15, gamma=0.9, gamma0=0.75, tau=1000.0, eps=1e-12, time_momentum=10.0,
    gradient_time_momentum=10.0)``: ``time_momentum`` is the direction v's EMA time scale = the
    official ``mom_params={'time_momentum': T}``; ``gradient_time_momentum`` is ĝ's (fixed at 10 in the
    official L4Mom; ``L4General``'s ``gradient_params``). With ``time_momentum`` ≠ 10 the two EMAs differ.
    1 closure call per step; closure required; negative loss → ValueError.
    """

    def __init__(self, params, alpha=0.15, gamma=0.9, gamma0=0.75, tau=1000.0, eps=1e-12, time_momentum=10.0,
                 gradient_time_momentum=10.0):
        super().__init__(params, alpha, gamma, gamma0, tau, eps, "momentum", "momentum", time_momentum=time_momentum,
                         gradient_time_momentum=gradient_time_momentum)


@register_optimizer("l4adam")
class L4Adam(_L4):
    """L4Adam (official ``L4Adam``): v = m̂/(√v̂ + 1e-4) (Adam transform, time scales 10 and 1000, i.e.
    β1 = 0.9, β2 = 0.999, ε = 1e-4), ĝ = bias-corrected EMA(0.9) of g; η_t = α(L − γL_min)/(v·ĝ + ε).

    ``L4Adam(params, alpha=0.15, gamma=0.9, gamma0=0.75, tau=1000.0, eps=1e-12, time_scale_grad=10.0,
    time_scale_var=1000.0, adam_eps=1e-4, gradient_time_momentum=10.0)``: ``time_scale_grad``,
    ``time_scale_var``, ``adam_eps`` are the official ``adam_params`` (the direction);
    ``gradient_time_momentum`` is ĝ's EMA time scale (fixed at 10 in the official L4Adam).
    1 closure call per step; closure required; negative loss → ValueError.
    """

    def __init__(self, params, alpha=0.15, gamma=0.9, gamma0=0.75, tau=1000.0, eps=1e-12, time_scale_grad=10.0,
                 time_scale_var=1000.0, adam_eps=1e-4, gradient_time_momentum=10.0):
        super().__init__(params, alpha, gamma, gamma0, tau, eps, "adam", "momentum",
                         gradient_time_momentum=gradient_time_momentum, time_scale_grad=time_scale_grad,
                         time_scale_var=time_scale_var, adam_eps=adam_eps)

