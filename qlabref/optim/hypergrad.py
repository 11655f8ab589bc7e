"""Hypergradient descent (Baydin, Cornish, Martínez Rubio, Schmidt, Wood; ICLR 2018): SGD-HD and Adam-HD.

Source of truth: the authors' code ``github.com/gbaydin/hypergradient-descent``,
``hypergrad/sgd_hd.py`` (class SGDHD) and ``hypergrad/adam_hd.py`` (class AdamHD),
including the update order:

- SGD-HD (``direction="sgd"``): one flat gradient vector over all parameters; h = g_t·u_{t−1} with
  u_{t−1} the previous *update direction* (the momentum/Nesterov direction when μ ≠ 0, zeros at
  t = 1); η ← η + β·h (PLUS sign) is applied BEFORE η is used: θ ← θ − η_t·d_t.
- Adam-HD (``direction="adam"``): a loop over parameter tensors; for t > 1 each tensor adds
  β·(g·u_prev) over THIS tensor only to the group's η, so tensor k already sees η incremented by
  tensors 1…k−1 of the same step; u_prev and the update use the efficient-form Adam
  (η√(1−β2^t)/(1−β1^t)·m/(√v + ε)).

Table 1 of the QLABGrad paper writes A_t = A_{t−1} + β∇L(θ_{t−2})·∇L(θ_{t−1}): same (correct) sign
as the code for plain SGD-HD (§2.1, §11); with momentum the code uses the previous update direction
rather than the previous raw gradient, and so do we.

Deliberate differences from the original code (none change the numbers):
- SGDHD adds the weight decay to ``p.grad`` IN PLACE (``view.add_`` on a view of ``.grad``); we
  leave the user's ``.grad`` untouched.
- SGDHD keeps its state in ``state[first parameter]``; we keep ``grad_prev`` (flat) and the momentum
  buffer in ``global_state``.

Defaults are the classes': ``lr`` 1e-3 (AdamHD's default; SGDHD requires it), ``hypergrad_lr``
1e-6 for SGD-HD and 1e-8 for Adam-HD. The QLABGrad paper's experiments use lr = 0.1 (all competing
methods) and β = 1e-3 for SGD-HD; Baydin et al.'s run.sh uses α0 = 1e-3, β = 1e-3 (SGD-HD) and
β = 1e-7 (Adam-HD, MLP).

``last_step["lr"]`` is the adapted η after the step (for SGD-HD the η used by this step; for Adam-HD
the η after the last tensor's increment, i.e. the one the last tensor used). Also recorded:
``hypergradient`` (h summed over the step), ``loss``, ``evals``.
"""
from __future__ import annotations

import numpy as np

from . import functional as Fn
from .optimizer import Optimizer, check_beta, check_lr, check_number
from .registry import register_optimizer

__all__ = ["HGD"]


def _check_nonneg(name, value, owner):
    check_number(name, value, owner)
    if value is None or not np.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: invalid {name} {value!r} (must be a finite number >= 0)")


@register_optimizer("hgd")
class HGD(Optimizer):
    """Hypergradient descent: SGD-HD (``direction="sgd"``) or Adam-HD (``direction="adam"``).

    ``HGD(params, lr=1e-3, hypergrad_lr=None, direction="sgd", momentum=0, dampening=0,
    weight_decay=0, nesterov=False, betas=(0.9, 0.999), eps=1e-8)``; ``hypergrad_lr=None`` means the
    original class default (1e-6 for SGD-HD, 1e-8 for Adam-HD). Momentum/dampening/nesterov apply to
    SGD-HD, betas/eps to Adam-HD. The adapted η lives in ``param_groups[g]["lr"]`` (as in the original
    code), so it is saved by ``state_dict``. SGD-HD supports one parameter group only (as SGDHD).

    ``step(closure)``: 1 closure call (zero grads, forward, backward), then the update; ``step()``
    uses the existing ``.grad``. A NaN/inf loss or gradient raises ``NonFiniteLossError`` before anything
    changes (the original code proceeds and writes NaN into θ and η).
    """

    #: atomic steps: one closure call, before any parameter or state array changes
    _step_snapshot = "light"

    def __init__(self, params, lr=1e-3, hypergrad_lr=None, direction="sgd", momentum=0, dampening=0,
                 weight_decay=0, nesterov=False, betas=(0.9, 0.999), eps=1e-8):
        owner = "HGD"
        if direction not in ("sgd", "adam"):
            raise ValueError(f"HGD: invalid direction {direction!r} (must be 'sgd' or 'adam')")
        if hypergrad_lr is None:
            hypergrad_lr = 1e-6 if direction == "sgd" else 1e-8
        check_lr("lr", lr, owner)
        _check_nonneg("hypergrad_lr", hypergrad_lr, owner)
        _check_nonneg("momentum", momentum, owner)
        _check_nonneg("dampening", dampening, owner)
        _check_nonneg("weight_decay", weight_decay, owner)
        _check_nonneg("eps", eps, owner)
        if len(tuple(betas)) != 2:
            raise ValueError(f"HGD: betas must be a pair (beta1, beta2), got {betas!r}")
        check_beta("betas[0]", betas[0], owner)
        check_beta("betas[1]", betas[1], owner)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("HGD: nesterov=True requires momentum > 0 and dampening = 0")
        if direction == "adam" and (momentum != 0 or nesterov):
            raise ValueError("HGD: momentum/nesterov apply to direction='sgd' only (Adam-HD has betas)")
        super().__init__(params, dict(lr=lr, hypergrad_lr=hypergrad_lr, direction=direction, momentum=momentum,
                                      dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                                      betas=tuple(betas), eps=eps))
        if direction == "sgd" and len(self.param_groups) != 1:
            raise ValueError("HGD: direction='sgd' supports one parameter group only (as SGDHD)")

    def step(self, closure=None):
        loss = None
        evals = 0
        if closure is not None:
            loss = self.evaluate(closure)  # NaN/inf loss or gradient → NonFiniteLossError, nothing changed
            evals = 1
        else:
            self.check_grads()
        if self.defaults["direction"] == "sgd":
            h = self._step_sgd()
        else:
            h = self._step_adam()
        self._finish_step(dict(loss=loss, lr=float(self.param_groups[0]["lr"]),
                               lrs=[float(g["lr"]) for g in self.param_groups], hypergradient=h, evals=evals))
        return loss

    # ------------------------------------------------------------------ SGD-HD (§2.1, sgd_hd.py)
    def _step_sgd(self):
        group = self.param_groups[0]
        params = group["params"]
        wd, mu, tau = group["weight_decay"], group["momentum"], group["dampening"]
        # _gather_flat_grad_with_weight_decay: zeros for a missing grad, g + wd·θ
        views = []
        for p in params:
            g = p.grad if p.grad is not None else np.zeros_like(p.data)
            g = g.reshape(-1)
            if wd != 0:
                g = g + wd * p.data.reshape(-1)
            views.append(g)
        grad = np.concatenate(views)
        gs = self.global_state
        if "grad_prev" not in gs:
            gs["grad_prev"] = np.zeros_like(grad)
        # η ← η + β·(g_t·u_{t−1}), before η is used
        group["lr"], h = Fn.hypergrad_lr_update(group["lr"], group["hypergrad_lr"], grad, gs["grad_prev"])
        if mu != 0:
            if "momentum_buffer" not in gs:
                buf = grad.copy()
            else:
                buf = gs["momentum_buffer"] * mu + (1 - tau) * grad
            gs["momentum_buffer"] = buf
            d = grad + mu * buf if group["nesterov"] else buf
        else:
            d = grad
        gs["grad_prev"] = d.copy()
        lr = group["lr"]
        offset = 0
        for p in params:
            n = p.data.size
            p.data[...] = p.data - lr * d[offset:offset + n].reshape(p.data.shape)
            offset += n
        return h

    # ------------------------------------------------------------------ Adam-HD (§2.2, adam_hd.py)
    def _step_adam(self):
        h_total = 0.0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {})
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = np.zeros_like(p.data)
                    state["exp_avg_sq"] = np.zeros_like(p.data)
                state["step"] += 1
                t = state["step"]
                g = p.grad
                if group["weight_decay"] != 0:
                    g = g + group["weight_decay"] * p.data
                if t > 1:
                    u_prev = Fn.adam_direction_efficient(state["exp_avg"], state["exp_avg_sq"], t - 1,
                                                         group["betas"], group["eps"])
                    # this tensor's share of the hypergradient, added to η before the next tensor
                    group["lr"], h = Fn.hypergrad_lr_update(group["lr"], group["hypergrad_lr"], g, u_prev)
                    h_total += h
                new, m, v, _ = Fn.adam(p.data, g, state["exp_avg"], state["exp_avg_sq"], None, t, lr=group["lr"],
                                       betas=group["betas"], eps=group["eps"], form="efficient")
                state["exp_avg"], state["exp_avg_sq"] = m, v
                p.data[...] = new
        return h_total
