"""D-Adaptation (Defazio & Mishchenko, ICML 2023): DAdaptSGD and DAdaptAdam.

Source of truth: the authors' package ``dadaptation`` 3.2 (``github.com/facebookresearch/dadaptation``,
``dadaptation/dadapt_sgd.py`` and ``dadapt_adam.py``).
D-Adaptation estimates D = ‖x0 − x*‖ from the gradients seen so far (a lower bound d that only
grows) and steps with d instead of a tuned learning rate. ``lr`` multiplies the adapted step; the
authors say to leave it at 1.

DAdaptSGD (dual averaging; k counts steps from 0, g after coupled weight decay):

    k = 0:  ‖g0‖ ← norm of the first gradient (over all parameters)
    dlr ← d·lr/‖g0‖
    numerator ← numerator + dlr·(g·s)      (s BEFORE it is updated)
    s ← s + dlr·g
    d̂ ← 2·numerator/‖s‖ ;  d ← max(d, min(d̂, d·growth_rate))
    z ← x0 − s ;  θ ← μ·θ + (1 − μ)·z          (momentum μ as primal averaging; μ = 0: θ = x0 − s)

The step uses dlr from the d BEFORE this step's update; the new d is used by the next step.

DAdaptAdam (k from 0; all sums over parameters of groups with lr > 0; r = the group's ``layer_scale``):

    dlr ← d·lr·(√(1−β2^{k+1})/(1−β1^{k+1}) if use_bias_correction else 1)
    numerator_k ← Σ r·dlr·(g·s/(√v + ε))        (s and v BEFORE they are updated)
    m ← β1·m + r·dlr·(1−β1)·g ;  v ← β2·v + (1−β2)·g⊙g ;  s ← √β2·s + dlr·(1−√β2)·g
    numerator ← √β2·numerator + (1−√β2)·numerator_k
    d̂ ← numerator/((1−√β2)·Σ r‖s‖₁) ;  d ← max(d, min(d̂, d·growth_rate))
    θ ← θ − dlr·wd·θ (decouple=True) ;  θ ← θ − m/(√v + ε)       (m already carries dlr)

Where we follow the authors' code although it looks unintended (documented, tested by the oracle):
- DAdaptSGD computes ‖g0‖ WITHOUT the weight decay (``grad.add(...)`` is not in place there), then
  adds the weight decay in place for everything else; we compute ‖g0‖ the same way.
- Only group 0's ``weight_decay`` and ``momentum`` (DAdaptSGD) and ``betas``, ``decouple``,
  ``use_bias_correction``, ``growth_rate`` (both) are used; per group only ``lr`` (which must equal
  the largest lr or be 0, else ``ValueError``), DAdaptAdam's ``eps``, ``weight_decay`` and
  ``layer_scale``.

Deliberate differences:
- a zero first gradient (‖g0‖ = 0 for DAdaptSGD; ‖s‖ = 0 for either, i.e. no gradient so far)
  makes a step that changes nothing (``last_step["skipped"] = True``, ``lr`` 0); the authors' code
  raises ``ZeroDivisionError`` (DAdaptSGD, k = 0) or returns early;
- the user's ``.grad`` is left untouched (the authors add the weight decay into ``p.grad``);
- ``log_every`` and ``fsdp_in_use`` (logging and sharded training) are not offered.

``last_step``: ``lr`` = dlr, the step size this step used (DAdaptSGD: θ_{k+1} − θ_k = −dlr·g_k when
μ = 0; DAdaptAdam: the Adam-like step size in front of the normalised direction); ``d`` (after the
update, used by the next step), ``d_hat``, ``g0_norm`` (SGD), ``numerator``, ``skipped``.
"""
from __future__ import annotations

import math

import numpy as np

from ._lrfree import LRFreeOptimizer, check_betas, check_growth_rate, check_nonneg, check_positive
from .registry import register_optimizer

__all__ = ["DAdaptSGD", "DAdaptAdam", "d_update"]


def d_update(d, d_hat, growth_rate):
    """d ← max(d, min(d̂, d·growth_rate)): d never decreases and grows at most by ``growth_rate``."""
    return max(d, min(d_hat, d * growth_rate))


def _dot(a, b):
    return float(np.dot(a.ravel(), b.ravel()))


def _common_lr(groups, owner):
    """The authors' rule: the step uses the largest group lr; other groups must have it or 0."""
    lr = max(g["lr"] for g in groups)
    for i, g in enumerate(groups):
        if g["lr"] not in (lr, 0.0):
            raise ValueError(f"{owner}: parameter group {i} has lr {g['lr']!r}; D-Adaptation allows only the largest "
                             f"lr ({lr!r}) or 0 per group")
    return lr


@register_optimizer("dadapt-sgd")
class DAdaptSGD(LRFreeOptimizer):
    """SGD with D-Adaptation (dual averaging form), the authors' ``DAdaptSGD`` v3.

    ``DAdaptSGD(params, lr=1.0, momentum=0.0, weight_decay=0.0, d0=1e-6, growth_rate=math.inf)``:
    the authors' defaults. 1 closure call per step; ``step()`` uses the existing ``.grad``.
    State: per parameter ``z``, ``s``, ``x0``; ``global_state``: ``k``, ``d``, ``numerator``, ``g0_norm``.
    """

    def __init__(self, params, lr=1.0, momentum=0.0, weight_decay=0.0, d0=1e-6, growth_rate=math.inf):
        owner = "DAdaptSGD"
        check_positive("lr", lr, owner)
        check_positive("d0", d0, owner)
        check_nonneg("weight_decay", weight_decay, owner)
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ValueError(f"{owner}: invalid momentum {momentum!r} (must be in [0, 1))")
        check_growth_rate(growth_rate, owner)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, d0=d0,
                                      growth_rate=growth_rate))

    def step(self, closure=None):
        """One D-Adapted SGD step (module docstring). Returns the loss (None without a closure)."""
        owner = "DAdaptSGD"
        lr = _common_lr(self.param_groups, owner)
        loss, evals = self._begin(closure)
        g0 = self.param_groups[0]
        decay, momentum, growth = g0["weight_decay"], g0["momentum"], g0["growth_rate"]
        ck = 1 - momentum
        gs = self.global_state
        k = gs.get("k", 0)
        d = gs.get("d", g0["d0"])
        numerator = gs.get("numerator", 0.0)
        active = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if k == 0:
            # ‖g0‖ of the raw gradient: the authors' ``grad.add(p.data, alpha=decay)`` is not in place
            g0_norm = math.sqrt(sum(_dot(p.grad, p.grad) for group, p in active if group["lr"] > 0))
        else:
            g0_norm = gs["g0_norm"]
        if g0_norm == 0:
            return self._skip(loss, evals, d)
        dlr = d * lr / g0_norm
        new = []
        sk_sq = 0.0
        for group, p in active:
            st = self.state.get(p) or {"z": p.data.copy(), "s": np.zeros_like(p.data), "x0": p.data.copy()}
            g = p.grad + decay * p.data if decay != 0 else p.grad
            s = st["s"]
            if group["lr"] > 0:
                numerator += dlr * _dot(g, s)  # s before this step's update
                s = s + dlr * g
                sk_sq += _dot(s, s)
            new.append((p, st, s, g))
        if sk_sq == 0:
            return self._skip(loss, evals, d)
        d_hat = 2 * numerator / math.sqrt(sk_sq)
        d = d_update(d, d_hat, growth)
        g_sq = d_sq = 0.0
        for p, st, s, g in new:
            z = st["x0"] - s
            theta = p.data * (1 - ck) + z * ck  # θ ← μθ + (1−μ)z
            g_sq += _dot(g, g)
            diff = theta - p.data
            d_sq += _dot(diff, diff)
            p.data[...] = theta
            self.state[p] = {"z": z, "s": s, "x0": st["x0"]}
        gs.update(k=k + 1, d=d, numerator=numerator, g0_norm=g0_norm)
        self._record(loss, evals, dlr, g_sq, d_sq, d=d, d_hat=d_hat, g0_norm=g0_norm, numerator=numerator,
                     skipped=False)
        return loss

    def _skip(self, loss, evals, d):
        self._record(loss, evals, 0.0, 0.0, 0.0, d=d, d_hat=math.nan, g0_norm=self.global_state.get("g0_norm", 0.0),
                     numerator=self.global_state.get("numerator", 0.0), skipped=True)
        return loss


@register_optimizer("dadapt-adam")
class DAdaptAdam(LRFreeOptimizer):
    """Adam with D-Adaptation, the authors' ``DAdaptAdam`` (v3.2).

    ``DAdaptAdam(params, lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decouple=False,
    use_bias_correction=False, d0=1e-6, growth_rate=math.inf)``: the authors' defaults. A group may
    set ``layer_scale`` (default 1.0) to scale its step relative to the others.
    1 closure call per step; ``step()`` uses the existing ``.grad``.
    State: per parameter ``step``, ``s``, ``exp_avg``, ``exp_avg_sq``; ``global_state``: ``k``, ``d``,
    ``numerator``.
    """

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decouple=False,
                 use_bias_correction=False, d0=1e-6, growth_rate=math.inf):
        owner = "DAdaptAdam"
        check_positive("lr", lr, owner)
        betas = check_betas(betas, owner)
        check_positive("eps", eps, owner)
        check_nonneg("weight_decay", weight_decay, owner)
        check_positive("d0", d0, owner)
        check_growth_rate(growth_rate, owner)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decouple=bool(decouple),
                                      use_bias_correction=bool(use_bias_correction), d0=d0, growth_rate=growth_rate,
                                      layer_scale=1.0))

    def step(self, closure=None):
        """One D-Adapted Adam step (module docstring). Returns the loss (None without a closure)."""
        lr = _common_lr(self.param_groups, "DAdaptAdam")
        loss, evals = self._begin(closure)
        g0 = self.param_groups[0]
        beta1, beta2 = g0["betas"]
        decouple, growth = g0["decouple"], g0["growth_rate"]
        gs = self.global_state
        k = gs.get("k", 0)
        d = gs.get("d", g0["d0"])
        numerator = gs.get("numerator", 0.0)
        bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) if g0["use_bias_correction"] else 1
        dlr = d * lr * bias_correction
        sqrt_beta2 = beta2**0.5
        numerator_acum = 0.0
        sk_l1 = 0.0
        new = []
        for group in self.param_groups:
            decay, eps, r = group["weight_decay"], group["eps"], group["layer_scale"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + decay * p.data if decay != 0 and not decouple else p.grad
                st = self.state.get(p) or {"step": 0, "s": np.zeros_like(p.data), "exp_avg": np.zeros_like(p.data),
                                           "exp_avg_sq": np.zeros_like(p.data)}
                m, v, s = st["exp_avg"], st["exp_avg_sq"], st["s"]
                if group["lr"] > 0:
                    denom = np.sqrt(v) + eps  # v before this step's update
                    numerator_acum += r * dlr * _dot(g, s / denom)
                    m = m * beta1 + (r * dlr * (1 - beta1)) * g
                    v = v * beta2 + (1 - beta2) * (g * g)
                    s = s * sqrt_beta2 + (dlr * (1 - sqrt_beta2)) * g
                    sk_l1 += r * float(np.sum(np.abs(s)))
                new.append((p, group, st, m, v, s, g))
        numerator = sqrt_beta2 * numerator + (1 - sqrt_beta2) * numerator_acum
        if sk_l1 == 0:
            self._record(loss, evals, 0.0, 0.0, 0.0, d=d, d_hat=math.nan, numerator=gs.get("numerator", 0.0),
                         skipped=True)
            return loss
        d_hat = numerator / ((1 - sqrt_beta2) * sk_l1)
        d = d_update(d, d_hat, growth)
        g_sq = d_sq = 0.0
        for p, group, st, m, v, s, g in new:
            denom = np.sqrt(v) + group["eps"]  # v after the update
            theta = p.data
            if group["weight_decay"] != 0 and decouple:
                theta = theta - (group["weight_decay"] * dlr) * theta  # AdamW-style, with this step's dlr
            theta = theta - m / denom
            g_sq += _dot(g, g)
            diff = theta - p.data
            d_sq += _dot(diff, diff)
            p.data[...] = theta
            self.state[p] = {"step": st["step"] + 1, "s": s, "exp_avg": m, "exp_avg_sq": v}
        gs.update(k=k + 1, d=d, numerator=numerator)
        self._record(loss, evals, dlr, g_sq, d_sq, d=d, d_hat=d_hat, numerator=numerator, skipped=False)
        return loss
