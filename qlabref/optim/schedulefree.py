"""Schedule-Free SGD and AdamW (Defazio, Yang, Mehta, Mishchenko, Khaled, Cutkosky, "The Road Less
Scheduled", 2024, arXiv 2405.15682).

Source of truth: the authors' package ``schedulefree`` 1.4.1 (``github.com/facebookresearch/schedule_free``),
the reference classes ``SGDScheduleFreeReference`` / ``AdamWScheduleFreeReference``
(``schedulefree/*_reference.py``, which keep x, y, z explicitly) and the memory-efficient main classes
``SGDScheduleFree`` / ``AdamWScheduleFree`` (the same rule written on y and z only). Three sequences: z (the base SGD/Adam iterate), x (a weighted average
of z: the point to evaluate) and y (the interpolation where the gradient is taken; the parameters
hold y while training). Per group, with k counting steps from 0:

    lr_k ← lr·min(1, (k+1)/warmup_steps) ;  lr_max ← max(lr_max, lr_k)
    w ← (k+1)^r · lr_max^weight_lr_power ;  W ← W + w ;  c ← w/W      (r = 0, constant lr: c = 1/(k+1))
    g ← ∇L(y)
    SGD:    z ← z − lr_k·(g + wd·y)
    AdamW:  v ← β2·v + (1−β2)·g⊙g ;  z ← z − lr_k·wd·y − lr_k·g/(√(v/(1−β2^{k+1})) + ε)
    x ← (1−c)·x + c·z ;  y ← β·x + (1−β)·z ;  θ ← y           (β = momentum, or β1 for AdamW)

``opt.eval()`` puts x into the parameters, ``opt.train()`` puts y back (y = β·x + (1−β)·z, recomputed
from the stored x and z, so a train/eval round trip is exact). The runner must call ``opt.eval()``
before evaluating (and before saving the model weights to be used for inference) and ``opt.train()``
before the next step; ``step`` in eval mode raises ``RuntimeError``. BatchNorm running statistics
were gathered at y: recompute them at x before evaluating models that have BatchNorm (the
authors' README caveat).

Defaults are the authors': SGD lr 1.0, momentum 0.9; AdamW lr 0.0025, betas (0.9, 0.999), eps 1e-8;
both weight_decay 0, warmup_steps 0, r 0, weight_lr_power 2.

Deliberate differences from the authors' code:
- the optimizer starts in TRAIN mode (the authors' main classes start in eval mode and raise until
  ``train()`` is called; their SGD reference starts in train mode). Before the first step x = y = z,
  so the two are the same point; calling ``train()`` first, as the authors require, is harmless;
- the user's ``.grad`` is left untouched (the authors normalise and add the weight decay in place);
- AdamW's ``decay_at_z`` (reference class only) is offered, default False as in the authors' code.

``last_step["lr"]`` is lr_k, the scheduled learning rate of group 0 (the authors' ``scheduled_lr``);
also ``c`` (the averaging weight c_{k+1}), ``weight_sum``, ``k``.
"""
from __future__ import annotations

import math

import numpy as np

from ._lrfree import LRFreeOptimizer, check_betas, check_nonneg
from .dadapt import _dot
from .registry import register_optimizer

__all__ = ["SGDScheduleFree", "AdamWScheduleFree", "schedulefree_weight"]


def schedulefree_weight(k, lr, warmup_steps, r, weight_lr_power, lr_max, weight_sum):
    """The averaging weight of step k (from 0): returns ``(lr_k, lr_max, weight_sum, c)`` with
    lr_k = lr·min(1, (k+1)/warmup), w = (k+1)^r·lr_max^p, W ← W + w, c = w/W (0 when W = 0)."""
    sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
    lr_k = lr * sched
    lr_max = max(lr_k, lr_max)
    weight = ((k + 1) ** r) * (lr_max**weight_lr_power)
    weight_sum = weight_sum + weight
    c = weight / weight_sum if weight_sum != 0 else 0.0
    return lr_k, lr_max, weight_sum, c


class _ScheduleFree(LRFreeOptimizer):
    """The shared step and train/eval; subclasses give ``_beta(group)`` (the interpolation weight β),
    ``_init_state(p)`` and ``_z_step(group, state, y, grad, lr_k, k) -> (z, g_used, extra_state)``."""

    uses_eval_mode = True
    #: the method removes the schedule, not the learning rate: ``lr`` is a real one (tuned like SGD's/Adam's)
    learning_rate_free = False

    def _check_common(self, owner, lr, weight_decay, warmup_steps, r, weight_lr_power):
        check_nonneg("lr", lr, owner)
        check_nonneg("weight_decay", weight_decay, owner)
        if not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
            raise ValueError(f"{owner}: invalid warmup_steps {warmup_steps!r} (must be an integer >= 0)")
        check_nonneg("r", r, owner)
        check_nonneg("weight_lr_power", weight_lr_power, owner)

    def step(self, closure=None):
        """One Schedule-Free step (module docstring). Returns the loss (None without a closure)."""
        loss, evals = self._begin(closure)
        gs = self.global_state
        groups_state = gs.get("groups") or [dict(k=0, weight_sum=0.0, lr_max=-1.0) for _ in self.param_groups]
        new_groups, writes = [], []
        g_sq = d_sq = 0.0
        for group, gst in zip(self.param_groups, groups_state):
            k = gst["k"]
            lr_k, lr_max, weight_sum, c = schedulefree_weight(k, group["lr"], group["warmup_steps"], group["r"],
                                                              group["weight_lr_power"], gst["lr_max"], gst["weight_sum"])
            beta = self._beta(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                y = p.data
                st = self.state.get(p) or self._init_state(p)
                z, g_used, extra = self._z_step(group, st, y, p.grad, lr_k, k)
                x = st["x"] * (1 - c) + z * c  # x_{k+1} = (1 − c)·x_k + c·z_{k+1}
                y_new = x * beta + z * (1 - beta)  # y_{k+1} = β·x_{k+1} + (1 − β)·z_{k+1}
                g_sq += _dot(g_used, g_used)
                diff = y_new - y
                d_sq += _dot(diff, diff)
                writes.append((p, y_new, dict(st, z=z, x=x, **extra)))
            new_groups.append(dict(k=k + 1, weight_sum=weight_sum, lr_max=lr_max, scheduled_lr=lr_k, c=c))
        for p, y_new, st in writes:
            p.data[...] = y_new
            self.state[p] = st
        gs["groups"] = new_groups
        g0 = new_groups[0]
        self._record(loss, evals, g0["scheduled_lr"], g_sq, d_sq, c=g0["c"], weight_sum=g0["weight_sum"], k=g0["k"])
        return loss

    # ------------------------------------------------------------------ train / eval
    def eval(self):
        """Put x (the averaged iterate, the point to evaluate) into the parameters."""
        if not self.global_state.get("train_mode", True):
            return self
        for p in self.params():
            st = self.state.get(p)
            if st and "x" in st:
                p.data[...] = st["x"]
        self.global_state["train_mode"] = False
        return self

    def train(self):
        """Put y = β·x + (1−β)·z (the point gradients are taken at) back into the parameters."""
        if self.global_state.get("train_mode", True):
            return self
        for group in self.param_groups:
            beta = self._beta(group)
            for p in group["params"]:
                st = self.state.get(p)
                if st and "x" in st:
                    p.data[...] = st["x"] * beta + st["z"] * (1 - beta)
        self.global_state["train_mode"] = True
        return self


@register_optimizer("schedulefree-sgd")
class SGDScheduleFree(_ScheduleFree):
    """Schedule-Free SGD, the authors' ``SGDScheduleFree`` / ``SGDScheduleFreeReference``.

    ``SGDScheduleFree(params, lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0,
    weight_lr_power=2.0)``. 1 closure call per step; ``step()`` uses the existing ``.grad``.
    State: per parameter ``z``, ``x``; ``global_state``: ``groups`` (per group ``k``, ``weight_sum``,
    ``lr_max``), ``train_mode``.
    """

    def __init__(self, params, lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0):
        owner = "SGDScheduleFree"
        self._check_common(owner, lr, weight_decay, warmup_steps, r, weight_lr_power)
        if not (isinstance(momentum, (int, float)) and 0.0 < momentum < 1.0):
            raise ValueError(f"{owner}: invalid momentum {momentum!r} (must be in (0, 1), as the authors require)")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps,
                                      r=r, weight_lr_power=weight_lr_power))

    def _beta(self, group):
        return group["momentum"]

    def _init_state(self, p):
        return {"z": p.data.copy(), "x": p.data.copy()}

    def _z_step(self, group, st, y, grad, lr_k, k):
        wd = group["weight_decay"]
        g = grad + wd * y if wd != 0 else grad  # weight decay at y
        return st["z"] - lr_k * g, g, {}


@register_optimizer("schedulefree-adamw")
class AdamWScheduleFree(_ScheduleFree):
    """Schedule-Free AdamW, the authors' ``AdamWScheduleFree`` / ``AdamWScheduleFreeReference``.

    ``AdamWScheduleFree(params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0,
    r=0.0, weight_lr_power=2.0, decay_at_z=False)``. 1 closure call per step; ``step()`` uses the
    existing ``.grad``. State: per parameter ``z``, ``x``, ``exp_avg_sq``; ``global_state`` as SGD's.
    """

    def __init__(self, params, lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, decay_at_z=False):
        owner = "AdamWScheduleFree"
        self._check_common(owner, lr, weight_decay, warmup_steps, r, weight_lr_power)
        betas = check_betas(betas, owner)
        if not betas[0] > 0:
            raise ValueError(f"{owner}: invalid betas[0] {betas[0]!r} (must be in (0, 1): eval() divides by it)")
        check_nonneg("eps", eps, owner)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps,
                                      r=r, weight_lr_power=weight_lr_power, decay_at_z=bool(decay_at_z)))

    def _beta(self, group):
        return group["betas"][0]

    def _init_state(self, p):
        return {"z": p.data.copy(), "x": p.data.copy(), "exp_avg_sq": np.zeros_like(p.data)}

    def _z_step(self, group, st, y, grad, lr_k, k):
        beta2 = group["betas"][1]
        wd = group["weight_decay"]
        z = st["z"]
        if wd != 0:
            z = z - (lr_k * wd) * (z if group["decay_at_z"] else y)  # decoupled decay at y (or z)
        v = st["exp_avg_sq"] * beta2 + (1 - beta2) * (grad * grad)
        bias_correction2 = 1 - beta2 ** (k + 1)
        denom = np.sqrt(v / bias_correction2) + group["eps"]
        z = z - lr_k * (grad / denom)
        return z, grad, {"exp_avg_sq": v}
