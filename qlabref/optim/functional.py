"""Pure update rules of the baseline optimizers, on NumPy arrays (optax-style).

Every function takes the current parameter array, its gradient and the method's state arrays, and
returns *new* arrays (inputs are never modified), so each rule can be tested alone and reads like the
equations of each method's paper and of torch's documentation (cited per class). The ``Optimizer`` classes in ``baselines.py``,
``hypergrad.py``, ``l4.py`` and ``lqa.py`` only loop over parameters, call these and write the
results back.

The arithmetic follows torch 2.13's single-tensor code path (``torch/optim/*.py``,
``_single_tensor_*``) operation by operation, so float64 results agree with
``torch.optim`` to rounding. Notation: θ parameter, g gradient, t the 1-based step counter
(incremented *before* use, as in torch), wd coupled L2 weight decay (g ← g + wd·θ).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "sgd",
    "adagrad",
    "rmsprop",
    "adadelta",
    "adam",
    "adam_direction_efficient",
    "hypergrad_lr_update",
    "ema",
    "bias_correction",
    "l4_lr",
    "lqa_lr",
]


def _prepare(theta, g, weight_decay, maximize):
    """torch's first two lines of every rule: flip for ``maximize``, then coupled weight decay."""
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * theta
    return g


# --------------------------------------------------------------------------------------------- §1.1
def sgd(theta, g, buf, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, maximize=False):
    """SGD with momentum, dampening, Nesterov and weight decay (torch form, ``torch/optim/sgd.py``).

    ``buf`` is the momentum buffer, ``None`` before the first momentum step. Returns
    ``(theta_new, buf_new, d)`` with ``d`` the direction applied (θ_new = θ − lr·d).
    First momentum step: ``b = g`` (dampening NOT applied); later ``b = μb + (1 − τ)g``.
    """
    g = _prepare(theta, g, weight_decay, maximize)
    if momentum != 0:
        if buf is None:
            buf = g.copy()
        else:
            buf = buf * momentum + (1 - dampening) * g
        d = g + momentum * buf if nesterov else buf
    else:
        d = g
    return theta - lr * d, buf, d


# --------------------------------------------------------------------------------------------- §1.2
def adagrad(theta, g, acc, t, *, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False):
    """Adagrad (torch form, §1.2): η_t = η/(1 + (t−1)·lr_decay); S ← S + g⊙g; θ ← θ − η_t g/(√S + ε).

    ε sits outside the square root. Returns ``(theta_new, acc_new, clr)``, ``clr`` = η_t.
    """
    g = _prepare(theta, g, weight_decay, maximize)
    clr = lr / (1 + (t - 1) * lr_decay)
    acc = acc + g * g  # elementwise g⊙g (Table 1 prints the scalar ‖∇L‖²)
    std = np.sqrt(acc) + eps
    return theta - clr * (g / std), acc, clr


# --------------------------------------------------------------------------------------------- §1.3
def rmsprop(theta, g, square_avg, grad_avg, buf, *, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
            centered=False, maximize=False):
    """RMSprop (torch form, §1.3): no bias correction, ε outside the square root; optional centering
    (subtract the squared EMA of g) and momentum on g/D (buffer starts at 0).

    ``grad_avg`` / ``buf`` are only used (and returned non-None) when ``centered`` / ``momentum > 0``.
    Returns ``(theta_new, square_avg, grad_avg, buf)``.
    """
    g = _prepare(theta, g, weight_decay, maximize)
    square_avg = square_avg * alpha + (1 - alpha) * (g * g)  # elementwise (Table 1: ‖∇L‖²)
    if centered:
        grad_avg = grad_avg + (1 - alpha) * (g - grad_avg)  # torch: lerp(grad, 1 − α)
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum > 0:
        buf = buf * momentum + g / avg
        return theta - lr * buf, square_avg, grad_avg, buf
    return theta - lr * (g / avg), square_avg, grad_avg, buf


# --------------------------------------------------------------------------------------------- §1.4
def adadelta(theta, g, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
    """Adadelta (torch form, §1.4; Zeiler 2012 with an lr multiplier, η = 1 is the original):
    s ← ρs + (1−ρ)g⊙g; Δ = √(u + ε)/√(s + ε) ⊙ g (ε inside both roots); u ← ρu + (1−ρ)Δ⊙Δ; θ ← θ − ηΔ.

    Returns ``(theta_new, square_avg, acc_delta)``.
    """
    g = _prepare(theta, g, weight_decay, maximize)
    square_avg = square_avg * rho + (1 - rho) * (g * g)  # elementwise (Table 1: ‖∇L‖²)
    std = np.sqrt(square_avg + eps)
    delta = np.sqrt(acc_delta + eps) / std * g
    acc_delta = acc_delta * rho + (1 - rho) * (delta * delta)
    return theta - lr * delta, square_avg, acc_delta


# --------------------------------------------------------------------------------------------- §1.5
def adam(theta, g, m, v, vmax, t, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
         form="torch", maximize=False, decoupled_weight_decay=False):
    """Adam (§1.5). ``form="torch"`` (default; = Kingma & Ba Algorithm 1 = torch.optim.Adam):
    θ ← θ − [η/(1−β1^t)]·m/(√v/√(1−β2^t) + ε).
    ``form="efficient"`` (Kingma & Ba §2, old torch, Adam-HD, L4's Adam): θ ← θ − η√(1−β2^t)/(1−β1^t)·m/(√v + ε),
    i.e. the torch form with ε replaced by ε·√(1−β2^t).
    ``amsgrad``: v_max ← max(v_max, v) replaces v in the denominator (``vmax`` None otherwise).
    ``decoupled_weight_decay``: AdamW, θ ← θ(1 − η·wd) before the step instead of g ← g + wd·θ.
    Returns ``(theta_new, m, v, vmax)``.
    """
    if form not in ("torch", "efficient"):
        raise ValueError(f"adam: form must be 'torch' or 'efficient', got {form!r}")
    beta1, beta2 = betas
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled_weight_decay:
            theta = theta * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * theta
    m = m + (1 - beta1) * (g - m)  # torch: exp_avg.lerp_(grad, 1 − β1)
    v = v * beta2 + (1 - beta2) * (g * g)  # elementwise (Table 1: ‖∇L‖²)
    if amsgrad:
        vmax = np.maximum(vmax, v)
        v_used = vmax
    else:
        v_used = v
    bc1 = 1 - beta1**t
    bc2 = 1 - beta2**t
    if form == "torch":
        step_size = lr / bc1
        denom = np.sqrt(v_used) / math.sqrt(bc2) + eps
    else:
        step_size = lr * math.sqrt(bc2) / bc1
        denom = np.sqrt(v_used) + eps  # Table 1 prints this form without ε
    return theta - step_size * (m / denom), m, v, vmax


def adam_direction_efficient(m, v, t, betas, eps):
    """The efficient-form Adam direction √(1−β2^t)/(1−β1^t)·m/(√v + ε) (Adam-HD's u_{t}, §2.2).

    Computed as Baydin et al.'s ``adam_hd.py`` does: (m/(√v + ε))·√(bc2)/bc1."""
    beta1, beta2 = betas
    return (m / (np.sqrt(v) + eps)) * (math.sqrt(1 - beta2**t) / (1 - beta1**t))


# --------------------------------------------------------------------------------------------- §2
def hypergrad_lr_update(lr, hypergrad_lr, g, u_prev):
    """One hypergradient step on the learning rate (§2.1): η ← η + β·(g_t·u_{t−1}) (PLUS sign:
    ∂L(θ_t)/∂η = −∇L(θ_t)·u_{t−1}). ``g`` and ``u_prev`` are flat arrays (or same-shape arrays)."""
    h = float(np.dot(np.ravel(g), np.ravel(u_prev)))
    return lr + hypergrad_lr * h, h


# --------------------------------------------------------------------------------------------- §3
def ema(avg, value, decay):
    """TensorFlow's ``assign_moving_average`` (used by the official L4 code, §3.1), starting from 0:
    avg ← avg − (avg − value)·(1 − decay)."""
    return avg - (avg - value) * (1 - decay)


def bias_correction(decay, t):
    """1 − decay^t, the Kingma & Ba correction of a zero-started EMA after t updates (L4's ``time_factor``).

    The official TF code evaluates it in float32 as 1 − exp(t·log(decay)); we use float64."""
    return 1.0 - decay**t


def l4_lr(loss, l_min, v, ghat, *, alpha=0.15, gamma=0.9, eps=1e-12):
    """The L4 step size (§3.1): η = α(L − γ·L_min)/(v·ĝ + ε), v·ĝ the full inner product over all
    parameters (``v`` and ``ghat`` are lists of arrays). Returns ``(eta, inner)``."""
    inner = float(sum(np.sum(a * b) for a, b in zip(v, ghat)))
    return alpha * (loss - gamma * l_min) / (inner + eps), inner


# --------------------------------------------------------------------------------------------- §4
def lqa_lr(l0, l_plus, l_minus, delta, eps=1e-24):
    """LQA's parabola minimiser (§4.2): with probes L± = L(θ ± δd) along the direction d and
    f(η) = L(θ − ηd) ≈ aη² + bη + c, central differences give η* = −b/(2a) =
    δ(L⁺ − L⁻)/(2(L⁺ + L⁻ − 2L₀)). Computed in the original code's order,
    (L⁺ − L⁻)·δ/2/(L⁺ + L⁻ − 2L₀ + 1e-24).

    The QLABGrad paper's Table 1 prints A_t = ½α + (L⁺ − L⁻)/(…); the derivation gives the product
    ½α·(L⁺ − L⁻)/(…) (demos/guide-optimizers.md lists this correction), which is what this returns with δ = α.
    """
    return (l_plus - l_minus) * delta / 2 / (l_plus + l_minus - 2 * l0 + eps)
