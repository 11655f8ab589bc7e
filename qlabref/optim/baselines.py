"""The torch.optim baselines of the paper's Table 1: SGD, Adagrad, RMSprop, Adadelta, Adam.

Source of truth: torch 2.13 ``torch/optim/{sgd,adagrad,rmsprop,adadelta,adam}.py`` (single-tensor
path), transcribed in ``functional.py``. Signatures, defaults and
step-by-step semantics are torch's (the ``foreach``/``fused``/``capturable``/``differentiable`` switches
select torch kernels and have no meaning here, so they are not accepted). Tests compare 30 steps on an
MLP with ``torch.optim`` in float64 (``tests/test_optim_torch.py``).

Where we deliberately differ from the QLABGrad paper's Table 1 (demos/guide-optimizers.md says so too):

- Adagrad, RMSprop, Adadelta, Adam: Table 1 accumulates the scalar ‖∇L‖²; the original methods (and
  we) accumulate the *elementwise* square g⊙g per parameter.
- Adam: Table 1 prints the efficient bias-correction form without ε. The default here is the torch
  form (ε added to √v̂, Kingma & Ba Algorithm 1); ``form="efficient"`` gives Kingma & Ba §2's form
  (ε added to √v, correction folded into the step size).
- Adadelta: Table 1 has no learning rate; torch (and we) keep an ``lr`` multiplier, default 1.0 =
  Zeiler's original.
- Nesterov ("NMomentum"): Table 1's recurrence is garbled; we use torch's Nesterov (§1.1).

Closure contract (demos/guide-optimizers.md): ``step(closure)`` zeroes the gradients, evaluates the
forward-only closure with graph building on and runs ``backward`` (1 closure call); ``step()``
without a closure uses the ``.grad`` the user produced. Parameters without a gradient are skipped,
as in torch. Deliberate difference from torch (the rule of ``qlabref.optim.optimizer``): a NaN/inf
loss or gradient raises ``NonFiniteLossError`` before anything changes, where torch would write NaN
into the parameters and the moments.

``last_step`` (after every step): ``loss`` (float, or None without a closure), ``lr``, ``base_lr``,
``lrs`` (per group), ``grad_norm`` ‖g‖₂ of the gradient the rule consumed (after weight decay, over
all stepped parameters), ``step_norm`` ‖Δθ‖₂, ``evals`` (closure calls: 1 or 0).

The scalar learning rate ``lr`` (what loss/learning-rate plots draw, the paper's Figure 3):

- SGD: the group learning rate η (what a scheduler sets); for momentum methods too.
- Adagrad, RMSprop, Adadelta, Adam (per-parameter adaptive): the *effective* scalar
  ``lr = ‖Δθ‖₂ / ‖g‖₂``, the length of the step per unit gradient norm. For plain gradient descent
  it equals η; for a diagonal preconditioner without momentum (Adagrad, RMSprop, Adadelta) it is the
  gradient-weighted RMS of the elementwise step sizes, √(Σ η_i² g_i² / Σ g_i²). NaN when ‖g‖ = 0.
  The group learning rate is in ``base_lr`` (for Adagrad including its lr_decay: η/(1+(t−1)·lr_decay)).
"""
from __future__ import annotations

import math

import numpy as np

from . import functional as Fn
from .optimizer import Optimizer, check_beta, check_lr
from .registry import register_optimizer

__all__ = ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam"]


def _check_nonneg(name, value, owner):
    if value is None or not np.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: invalid {name} {value!r} (must be a finite number >= 0)")


class _TorchLike(Optimizer):
    """Shared ``step`` of the per-parameter torch rules: evaluate, loop, call ``_update``, record."""

    #: whether ``last_step["lr"]`` is the group lr (SGD) or the effective ‖Δθ‖/‖g‖ (adaptive methods)
    _effective_lr = True
    #: atomic steps: one closure call, before any parameter or state array changes
    _step_snapshot = "light"

    def step(self, closure=None):
        """One step. With ``closure`` (forward only): zero grads, evaluate, backward (1 call), update;
        returns the loss as a float. Without: update from the existing ``.grad``; returns None."""
        loss = None
        evals = 0
        if closure is not None:
            loss = self.evaluate(closure)  # NaN/inf loss or gradient → NonFiniteLossError, nothing changed
            evals = 1
        else:
            self.check_grads()  # the user's .grad: NaN/inf → NonFiniteLossError, nothing changed
        g_sq = 0.0
        d_sq = 0.0
        base_lrs = []
        for group in self.param_groups:
            base_lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {})
                theta = p.data
                new_theta, g_used, base_lr = self._update(theta, p.grad, state, group)
                g_sq += _sq_norm(g_used)  # diagnostics: one BLAS dot each, no temporaries
                d_sq += _sq_norm(new_theta - theta)
                p.data[...] = new_theta
            base_lrs.append(float(base_lr))
        grad_norm = math.sqrt(g_sq)
        step_norm = math.sqrt(d_sq)
        if self._effective_lr:
            lr = step_norm / grad_norm if grad_norm > 0 else math.nan
        else:
            lr = base_lrs[0]
        self._finish_step(dict(loss=loss, lr=lr, base_lr=base_lrs[0], lrs=base_lrs, grad_norm=grad_norm,
                               step_norm=step_norm, evals=evals))
        return loss

    def _update(self, theta, grad, state, group):  # pragma: no cover - abstract
        """Return ``(theta_new, gradient used, this group's scalar lr)``; update ``state`` in place."""
        raise NotImplementedError


def _sq_norm(a):
    """‖a‖² as a float: a BLAS dot of the flat array with itself (no g⊙g temporary, one pass)."""
    flat = a.reshape(-1)
    return float(np.dot(flat, flat))


def _gradient_used(theta, grad, group):
    g = -grad if group.get("maximize", False) else grad
    wd = group.get("weight_decay", 0)
    return g + wd * theta if wd != 0 else g


@register_optimizer("sgd")
class SGD(_TorchLike):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay
    (torch.optim.SGD 2.13).

    ``SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, maximize=False)``.
    First momentum step: the buffer is a copy of g (no dampening); then b ← μb + (1−τ)g;
    Nesterov d = g + μb, else d = b; θ ← θ − η·d. ``last_step["lr"]`` is the group lr.
    State per parameter: ``momentum_buffer`` (only with momentum ≠ 0).
    """

    _effective_lr = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, maximize=False):
        owner = "SGD"
        check_lr("lr", lr, owner)
        _check_nonneg("momentum", momentum, owner)
        _check_nonneg("dampening", dampening, owner)
        _check_nonneg("weight_decay", weight_decay, owner)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov=True requires momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _update(self, theta, grad, state, group):
        new, buf, _ = Fn.sgd(theta, grad, state.get("momentum_buffer"), lr=group["lr"], momentum=group["momentum"],
                             dampening=group["dampening"], nesterov=group["nesterov"],
                             weight_decay=group["weight_decay"], maximize=group["maximize"])
        if group["momentum"] != 0:
            state["momentum_buffer"] = buf
        return new, _gradient_used(theta, grad, group), group["lr"]


@register_optimizer("adagrad")
class Adagrad(_TorchLike):
    """Adagrad (Duchi et al. 2011; torch.optim.Adagrad 2.13).

    ``Adagrad(params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, *,
    maximize=False)``: η_t = η/(1+(t−1)·lr_decay); S ← S + g⊙g (elementwise, not Table 1's ‖g‖²);
    θ ← θ − η_t·g/(√S + ε), ε outside the root. State: ``step``, ``sum`` (starts at
    ``initial_accumulator_value``). ``last_step["lr"]`` = ‖Δθ‖/‖g‖, ``base_lr`` = η_t.
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, *,
                 maximize=False):
        owner = "Adagrad"
        check_lr("lr", lr, owner)
        _check_nonneg("lr_decay", lr_decay, owner)
        _check_nonneg("weight_decay", weight_decay, owner)
        _check_nonneg("initial_accumulator_value", initial_accumulator_value, owner)
        _check_nonneg("eps", eps, owner)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize))
        # torch creates the state in the constructor, so the accumulator exists before the first step
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = {"step": 0,
                                 "sum": np.full_like(p.data, group["initial_accumulator_value"])}

    def _update(self, theta, grad, state, group):
        state["step"] += 1
        new, acc, clr = Fn.adagrad(theta, grad, state["sum"], state["step"], lr=group["lr"],
                                   lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                                   eps=group["eps"], maximize=group["maximize"])
        state["sum"] = acc
        return new, _gradient_used(theta, grad, group), clr


@register_optimizer("rmsprop")
class RMSprop(_TorchLike):
    """RMSprop (Tieleman & Hinton 2012; torch.optim.RMSprop 2.13).

    ``RMSprop(params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, *,
    maximize=False)``: s ← αs + (1−α)g⊙g (elementwise; no bias correction); centered: D = √(s − ḡ²) + ε,
    else √s + ε; momentum: b ← μb + g/D, θ ← θ − ηb, else θ ← θ − ηg/D. All buffers start at 0.
    State: ``step``, ``square_avg``, ``grad_avg`` (centered), ``momentum_buffer`` (momentum > 0).
    ``last_step["lr"]`` = ‖Δθ‖/‖g‖, ``base_lr`` = η.
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, *,
                 maximize=False):
        owner = "RMSprop"
        check_lr("lr", lr, owner)
        _check_nonneg("eps", eps, owner)
        _check_nonneg("momentum", momentum, owner)
        _check_nonneg("weight_decay", weight_decay, owner)
        _check_nonneg("alpha", alpha, owner)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize))

    def _update(self, theta, grad, state, group):
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(theta)
            if group["momentum"] > 0:
                state["momentum_buffer"] = np.zeros_like(theta)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(theta)
        state["step"] += 1
        new, sq, ga, buf = Fn.rmsprop(theta, grad, state["square_avg"], state.get("grad_avg"),
                                      state.get("momentum_buffer"), lr=group["lr"], alpha=group["alpha"],
                                      eps=group["eps"], weight_decay=group["weight_decay"],
                                      momentum=group["momentum"], centered=group["centered"],
                                      maximize=group["maximize"])
        state["square_avg"] = sq
        if group["centered"]:
            state["grad_avg"] = ga
        if group["momentum"] > 0:
            state["momentum_buffer"] = buf
        return new, _gradient_used(theta, grad, group), group["lr"]


@register_optimizer("adadelta")
class Adadelta(_TorchLike):
    """Adadelta (Zeiler 2012; torch.optim.Adadelta 2.13).

    ``Adadelta(params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False)``:
    s ← ρs + (1−ρ)g⊙g; Δ = √(u+ε)/√(s+ε)·g (ε inside both roots); u ← ρu + (1−ρ)Δ⊙Δ; θ ← θ − ηΔ.
    Table 1 has no learning rate; ``lr=1.0`` is Zeiler's method, torch keeps the multiplier.
    State: ``step``, ``square_avg``, ``acc_delta``. ``last_step["lr"]`` = ‖Δθ‖/‖g‖, ``base_lr`` = η.
    """

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, maximize=False):
        owner = "Adadelta"
        check_lr("lr", lr, owner)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Adadelta: invalid rho {rho!r} (must be in [0, 1])")
        _check_nonneg("eps", eps, owner)
        _check_nonneg("weight_decay", weight_decay, owner)
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize))

    def _update(self, theta, grad, state, group):
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(theta)
            state["acc_delta"] = np.zeros_like(theta)
        state["step"] += 1
        new, sq, acc = Fn.adadelta(theta, grad, state["square_avg"], state["acc_delta"], lr=group["lr"],
                                   rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"],
                                   maximize=group["maximize"])
        state["square_avg"], state["acc_delta"] = sq, acc
        return new, _gradient_used(theta, grad, group), group["lr"]


@register_optimizer("adam")
class Adam(_TorchLike):
    """Adam (Kingma & Ba 2015; torch.optim.Adam 2.13).

    ``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *, maximize=False,
    decoupled_weight_decay=False, form="torch")``.

    - ``form="torch"`` (default, = Kingma & Ba Algorithm 1 = torch.optim.Adam):
      θ ← θ − η·m̂/(√v̂ + ε), m̂ = m/(1−β1^t), v̂ = v/(1−β2^t).
    - ``form="efficient"`` (Kingma & Ba §2; old torch ≤ 1.x; the form Table 1 prints, but with ε):
      θ ← θ − η√(1−β2^t)/(1−β1^t)·m/(√v + ε). Deliberate difference from Table 1: Table 1 has no ε
      and accumulates ‖g‖² instead of g⊙g.
    - ``amsgrad``: v_max ← max(v_max, v) in the denominator. ``decoupled_weight_decay``: AdamW.

    State: ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).
    ``last_step["lr"]`` = ‖Δθ‖/‖g‖, ``base_lr`` = η.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 maximize=False, decoupled_weight_decay=False, form="torch"):
        owner = "Adam"
        check_lr("lr", lr, owner)
        _check_nonneg("eps", eps, owner)
        _check_nonneg("weight_decay", weight_decay, owner)
        if len(tuple(betas)) != 2:
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        check_beta("betas[0]", betas[0], owner)
        check_beta("betas[1]", betas[1], owner)
        if form not in ("torch", "efficient"):
            raise ValueError(f"Adam: invalid form {form!r} (must be 'torch' or 'efficient')")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, form=form))

    def _update(self, theta, grad, state, group):
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(theta)
            state["exp_avg_sq"] = np.zeros_like(theta)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(theta)
        state["step"] += 1
        new, m, v, vmax = Fn.adam(theta, grad, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"),
                                  state["step"], lr=group["lr"], betas=group["betas"], eps=group["eps"],
                                  weight_decay=group["weight_decay"], amsgrad=group["amsgrad"], form=group["form"],
                                  maximize=group["maximize"], decoupled_weight_decay=group["decoupled_weight_decay"])
        state["exp_avg"], state["exp_avg_sq"] = m, v
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = vmax
        g_used = _gradient_used(theta, grad, group) if not group["decoupled_weight_decay"] else (
            -grad if group["maximize"] else grad)
        return new, g_used, group["lr"]
