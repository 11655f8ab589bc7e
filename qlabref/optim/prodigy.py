"""Prodigy (Mishchenko & Defazio, 2023, arXiv 2306.06101): Adam with a D-Adaptation-style d that grows faster.

Source of truth: the authors' package ``prodigyopt`` 1.1.2 (``github.com/konstmish/prodigy``), class
``Prodigy`` in ``prodigyopt/prodigy.py`` (the paper's ``prodigy_reference.py`` is the same rule
without ``slice_p`` and the β1 = 0 shortcut). With
k counting steps from 0, g the gradient (plus wd·θ when ``decouple=False``), β3 = √β2 by default,
sums over the parameters of groups with lr > 0 (every ``slice_p``-th entry for the d statistics):

    dlr ← d·lr·(√(1−β2^{k+1})/(1−β1^{k+1}) if use_bias_correction else 1)
    numerator ← β3·numerator + (d/d0)·dlr·Σ g·(x0 − θ)
    m ← β1·m + d·(1−β1)·g ;  v ← β2·v + d²·(1−β2)·g⊙g
    s ← β3·s + (d/d0)·(d if safeguard_warmup else dlr)·g
    d̂ ← d_coef·numerator/Σ‖s‖₁
    (only while d == d0:) d ← max(d, d̂) ;  d_max ← max(d_max, d̂) ;  d ← min(d_max, d·growth_rate)
    θ ← θ − dlr·wd·θ (decouple=True) ;  θ ← θ − dlr·m/(√v + d·ε)

Note the last line: dlr comes from the d BEFORE this step's update, the ε term d·ε from the d AFTER
it (as in the authors' code). With β1 = 0 there is no m and the step is θ ← θ − dlr·d·g/(√v + d·ε).
The authors recommend lr = 1, optionally with cosine annealing, and ``safeguard_warmup=True`` with
warmup or restarts; ``d_coef`` is the knob to tune (0.5 or 2 "typically work as well").

Deliberate differences from the authors' code:
- no gradient so far (Σ‖s‖₁ = 0): a step that changes nothing (``last_step["skipped"]``), as the
  authors' early return, but without first updating m and v (they are zero then anyway);
- ``s`` and ``p0`` have the parameter's shape (with ``slice_p`` > 1 only every slice_p-th entry of
  the flattened array is used, the rest stays 0), and a parameter whose initial values are all zero
  keeps a zero ``p0`` array (the authors store only the used entries, and a scalar 0 for an
  all-zero parameter, to save memory; the numbers are the same);
- the user's ``.grad`` is left untouched; ``fsdp_in_use`` is not offered.
Only group 0's ``betas``, ``beta3``, ``d_coef``, ``growth_rate``, ``decouple``, ``use_bias_correction``
are used, and ``lr`` per group must be the largest lr or 0 (as the authors' code).

``last_step``: ``lr`` = dlr (the step size in front of m/(√v + dε), from the d before the update),
``d`` (after the update), ``d_hat``, ``d_max``, ``numerator``, ``denominator`` (Σ‖s‖₁), ``skipped``.
"""
from __future__ import annotations

import math

import numpy as np

from ._lrfree import LRFreeOptimizer, check_betas, check_growth_rate, check_nonneg, check_positive
from .dadapt import _common_lr, _dot
from .registry import register_optimizer

__all__ = ["Prodigy", "prodigy_d_update"]


def prodigy_d_update(d, d0, d_max, d_hat, growth_rate):
    """Prodigy's d update: on the first growth (d == d0) d ← max(d, d̂); d_max ← max(d_max, d̂);
    d ← min(d_max, d·growth_rate). Returns ``(d, d_max)``."""
    if d == d0:
        d = max(d, d_hat)
    d_max = max(d_max, d_hat)
    return min(d_max, d * growth_rate), d_max


@register_optimizer("prodigy")
class Prodigy(LRFreeOptimizer):
    """Prodigy, the authors' ``prodigyopt.Prodigy``.

    ``Prodigy(params, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0.0, decouple=True,
    use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=math.inf,
    slice_p=1)``: the authors' defaults (``beta3=None`` means √β2). 1 closure call per step;
    ``step()`` uses the existing ``.grad``.
    State: per parameter ``step``, ``s``, ``p0`` (x0; both used at every ``slice_p``-th entry), ``exp_avg``
    (β1 > 0), ``exp_avg_sq``; ``global_state``: ``k``, ``d``, ``d_max``, ``numerator``.
    """

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0.0, decouple=True,
                 use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=math.inf,
                 slice_p=1):
        owner = "Prodigy"
        check_positive("lr", lr, owner)
        betas = check_betas(betas, owner)
        if beta3 is not None and not 0.0 <= beta3 < 1.0:
            raise ValueError(f"{owner}: invalid beta3 {beta3!r} (must be in [0, 1), or None for sqrt(beta2))")
        check_positive("eps", eps, owner)
        check_nonneg("weight_decay", weight_decay, owner)
        check_positive("d0", d0, owner)
        check_positive("d_coef", d_coef, owner)
        check_growth_rate(growth_rate, owner)
        if not isinstance(slice_p, (int, np.integer)) or slice_p < 1:
            raise ValueError(f"{owner}: invalid slice_p {slice_p!r} (must be an integer >= 1)")
        super().__init__(params, dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay,
                                      decouple=bool(decouple), use_bias_correction=bool(use_bias_correction),
                                      safeguard_warmup=bool(safeguard_warmup), d0=d0, d_coef=d_coef,
                                      growth_rate=growth_rate, slice_p=int(slice_p)))

    def step(self, closure=None):
        """One Prodigy step (module docstring). Returns the loss (None without a closure)."""
        lr = _common_lr(self.param_groups, "Prodigy")
        loss, evals = self._begin(closure)
        g0 = self.param_groups[0]
        beta1, beta2 = g0["betas"]
        beta3 = g0["beta3"] if g0["beta3"] is not None else math.sqrt(beta2)
        decouple, growth, d_coef = g0["decouple"], g0["growth_rate"], g0["d_coef"]
        gs = self.global_state
        k = gs.get("k", 0)
        d = gs.get("d", g0["d0"])
        d_max = gs.get("d_max", g0["d0"])
        bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) if g0["use_bias_correction"] else 1
        dlr = d * lr * bias_correction
        numerator = gs.get("numerator", 0.0) * beta3
        delta_numerator = 0.0
        d_denom = 0.0
        new = []
        for group in self.param_groups:
            decay, d0, sp = group["weight_decay"], group["d0"], group["slice_p"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + decay * p.data if decay != 0 and not decouple else p.grad
                st = self.state.get(p)
                if st is None:
                    # s and x0 keep the parameter's shape; with slice_p > 1 only every slice_p-th entry
                    # of the flattened array is used (the authors store just those entries)
                    st = {"step": 0, "s": np.zeros_like(p.data), "p0": p.data.copy(), "exp_avg_sq": np.zeros_like(p.data)}
                    if beta1 > 0:
                        st["exp_avg"] = np.zeros_like(p.data)
                m, v, s = st.get("exp_avg"), st["exp_avg_sq"], st["s"]
                if group["lr"] > 0:
                    sliced = g.ravel()[::sp]
                    # d/d0 instead of d keeps the numbers away from underflow (authors' comment)
                    delta_numerator += (d / d0) * dlr * _dot(sliced, st["p0"].ravel()[::sp] - p.data.ravel()[::sp])
                    if beta1 > 0:
                        m = m * beta1 + (d * (1 - beta1)) * g
                    v = v * beta2 + (d * d * (1 - beta2)) * (g * g)
                    s_sliced = s.ravel()[::sp] * beta3 + ((d / d0) * (d if group["safeguard_warmup"] else dlr)) * sliced
                    s = np.zeros_like(p.data)
                    s.reshape(-1)[::sp] = s_sliced
                    d_denom += float(np.sum(np.abs(s_sliced)))
                new.append((p, group, st, m, v, s, g))
        if d_denom == 0:
            self._record(loss, evals, 0.0, 0.0, 0.0, d=d, d_hat=math.nan, d_max=d_max,
                         numerator=gs.get("numerator", 0.0), denominator=0.0, skipped=True)
            return loss
        numerator = numerator + delta_numerator
        d_hat = d_coef * numerator / d_denom
        # the authors compare with the d0 of the LAST group of their loop
        d, d_max = prodigy_d_update(d, self.param_groups[-1]["d0"], d_max, d_hat, growth)
        g_sq = d_sq = 0.0
        for p, group, st, m, v, s, g in new:
            denom = np.sqrt(v) + d * group["eps"]  # the NEW d
            theta = p.data
            if group["weight_decay"] != 0 and decouple:
                theta = theta - (group["weight_decay"] * dlr) * theta
            if beta1 > 0:
                theta = theta - dlr * (m / denom)
            else:
                theta = theta - (dlr * d) * (g / denom)
            g_sq += _dot(g, g)
            diff = theta - p.data
            d_sq += _dot(diff, diff)
            p.data[...] = theta
            new_st = {"step": st["step"] + 1, "s": s, "p0": st["p0"], "exp_avg_sq": v}
            if m is not None:
                new_st["exp_avg"] = m
            self.state[p] = new_st
        gs.update(k=k + 1, d=d, d_max=d_max, numerator=numerator)
        self._record(loss, evals, dlr, g_sq, d_sq, d=d, d_hat=d_hat, d_max=d_max, numerator=numerator,
                     denominator=d_denom, skipped=False)
        return loss
