"""The QLAB rule, once: small pure functions of Python scalars that both engines call.

:mod:`qlabref.optim.qlab` (NumPy/Numba) and :mod:`qlabref.torch` (PyTorch) differ in how they move
tensors (saved copies, probes, foreach ops); *what* a step decides is written here and nowhere else:
the coefficients of the quadratic fit (Eqs. 6-10 of the paper, Eq. 5 for QLAB on a direction V), the
fallback of Algorithm 1 (lines 4-7), the optional caps, FindPLR's scheduling and the two loop
conditions of Algorithm 2 (lines 4 and 8), the probe step β of QLAB, the ``last_step`` record and the
options' validation. Every function takes and returns Python numbers (float64), never arrays, so the
rule reads the same whichever library computed ‖∇L‖², L(θ) and g(ᾱ).
"""
from __future__ import annotations

import math
import numbers

from .optimizer import check_beta

__all__ = [
    "qlabgrad_options", "qlab_options", "findplr_is_due", "qlabgrad_record", "qlab_record",
    "qlabgrad_fit", "qlab_fit", "choose_lr", "qlab_probe_step", "keeps_doubling", "keeps_halving",
    "nonfinite_gradient_message", "DIRECTIONS",
]

#: QLAB's descent directions V (the step of SGD, momentum or Adam with lr = 1; OPTIMIZERS.md §8)
DIRECTIONS = ("sgd", "momentum", "adam")


# ------------------------------------------------------------------------------------ options
def check_positive(name, value, owner, allow_none=False):
    """``value`` as a finite float > 0 (``None`` passes with ``allow_none``); ``ValueError`` naming it."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, str, bytes)) or type(value).__name__ == "bool_":
        raise ValueError(f"{owner}: {name} must be a positive number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return v


def check_max_evals(max_evals, owner):
    """FindPLR's probe budget as an int >= 1."""
    if isinstance(max_evals, bool) or not isinstance(max_evals, numbers.Integral) or max_evals < 1:
        raise ValueError(f"{owner}: max_evals must be an integer >= 1, got {max_evals!r}")
    return int(max_evals)


def parse_findplr(findplr, owner):
    """'once' | 'never' | 'every:K' → (mode, K)."""
    if isinstance(findplr, str):
        s = findplr.strip().lower()
        if s in ("once", "never"):
            return s, None
        if s.startswith("every:"):
            try:
                k = int(s[len("every:"):])
            except ValueError:
                k = 0
            if k >= 1:
                return "every", k
    raise ValueError(f"{owner}: findplr must be 'once', 'never' or 'every:K' with an integer K >= 1, got {findplr!r}")


def qlabgrad_options(pre_lr, alpha0, findplr, max_evals, max_lr, max_lr_factor, owner="QLABGrad"):
    """QLABGrad's validated options (the ``defaults`` dict of both engines)."""
    pre_lr = check_positive("pre_lr", pre_lr, owner, allow_none=True)
    alpha0 = check_positive("alpha0", alpha0, owner)
    mode, _ = parse_findplr(findplr, owner)
    if mode == "never" and pre_lr is None:
        raise ValueError(f"{owner}: findplr='never' needs a pre-learning rate: pass pre_lr (0 < ᾱ < 2/M)")
    max_evals = check_max_evals(max_evals, owner)
    max_lr = check_positive("max_lr", max_lr, owner, allow_none=True)
    max_lr_factor = check_positive("max_lr_factor", max_lr_factor, owner, allow_none=True)
    return dict(pre_lr=pre_lr, alpha0=alpha0, findplr=findplr, max_evals=max_evals, max_lr=max_lr,
                max_lr_factor=max_lr_factor)


def qlab_options(direction, alpha0, momentum, betas, eps, max_evals, max_lr, owner):
    """QLAB's validated options (``direction`` already defaulted by the caller)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"{owner}: direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    alpha0 = check_positive("alpha0", alpha0, owner)
    if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
        raise ValueError(f"{owner}: invalid momentum {momentum!r} (must be in [0, 1))")
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}") from None
    check_beta("betas[0]", b1, owner)
    check_beta("betas[1]", b2, owner)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{owner}: invalid eps {eps!r} (must be a finite number >= 0)")
    max_evals = check_max_evals(max_evals, owner)
    max_lr = check_positive("max_lr", max_lr, owner, allow_none=True)
    return dict(direction=direction, alpha0=alpha0, momentum=float(momentum), betas=(float(b1), float(b2)), eps=float(eps),
                max_evals=max_evals, max_lr=max_lr)


# ------------------------------------------------------------------------------- one step's rule
def findplr_is_due(due, mode, every, t):
    """Whether step ``t`` runs FindPLR (Algorithm 2): pending (first step, or postponed by a zero
    gradient), or ``findplr="every:K"`` at steps K+1, 2K+1, ... (the paper: "a number of times")."""
    return bool(due) or (mode == "every" and t > 1 and (t - 1) % every == 0)


def qlabgrad_record(t, loss, gsq, pre_lr, **extra):
    """QLABGrad's ``last_step`` before the probe: a0 = g(0) = L(θ_{t−1}) (Eq. 6), a1 = g'(0) = −‖∇L‖² (Eq. 7)."""
    record = dict(step=t, loss=loss, grad_sq_norm=gsq, probe_loss=None, a0=loss, a1=-gsq, a2=None, alpha_star=None,
                  lr=0.0, pre_lr=pre_lr, fallback=False, evals=1, findplr_ran=False, findplr_evals=0,
                  findplr_doublings=0, findplr_halvings=0, probe_nonfinite=False, zero_grad=False, capped=False)
    record.update(extra)
    return record


def qlab_record(t, loss, gsq, gdotv, beta, direction, not_descent):
    """QLAB's ``last_step`` before the probe: a0 = L (Eq. 6), a1 = g'(0) = −∇L·V (Eq. 7 along V)."""
    return dict(step=t, loss=loss, grad_sq_norm=gsq, grad_dot_dir=gdotv, probe_loss=None, a0=loss, a1=-gdotv,
                a2=None, alpha_star=None, lr=0.0, pre_lr=beta, fallback=False, evals=1, direction=direction,
                not_descent=not_descent, probe_nonfinite=False, findplr_halvings=0, zero_grad=False, capped=False)


def qlabgrad_fit(loss, gsq, pre, probe):
    """(a2, α*) of QLABGrad from L(θ_{t−1}), ‖∇L‖², ᾱ and g(ᾱ); α* is None when a2 = 0."""
    a0, a1 = loss, -gsq  # Eq. (6), Eq. (7)
    a2 = (probe - a0 - a1 * pre) / pre**2  # Eq. (9)
    denom = probe - loss + gsq * pre  # g(ᾱ) − L(θ_{t−1}) + ‖∇L‖²ᾱ  (= a2·ᾱ²)
    alpha_star = gsq * pre**2 / (2.0 * denom) if denom != 0.0 else None  # Eq. (10)
    return a2, alpha_star


def qlab_fit(loss, gdotv, beta, probe):
    """(a2, α*) of QLAB along V from L, ∇L·V, β and g(β); α* is None when a2 = 0."""
    a0, a1 = loss, -gdotv  # Eq. (6), Eq. (7) along V
    a2 = (probe - a0 - a1 * beta) / beta**2  # Eq. (9)
    alpha_star = -a1 / (2.0 * a2) if a2 != 0.0 else None  # Eq. (5)
    return a2, alpha_star


def choose_lr(alpha_star, a2, pre, max_lr=None, max_lr_factor=None):
    """α_t from α*: (lr, fallback, capped).

    Algorithm 1, line 4: α_t = α*; lines 5-7: α* < 0 → α_t = ᾱ. With a1 < 0, "α* < 0" is "a2 < 0";
    the fallback is also taken for a2 = 0 (Eq. 10 divides by zero) and for an α* that overflowed
    (never a non-finite step). Then the optional caps (remedies, not the paper's algorithm):
    α_t ≤ ``max_lr`` and α_t ≤ ``max_lr_factor``·ᾱ."""
    lr = alpha_star  # Algorithm 1, line 4
    fallback = not (a2 > 0 and alpha_star is not None and math.isfinite(alpha_star))
    if fallback:  # Algorithm 1, lines 5-7
        lr = pre
    capped = False
    if max_lr is not None and lr > max_lr:
        lr, capped = max_lr, True
    if max_lr_factor is not None and lr > max_lr_factor * pre:
        lr, capped = max_lr_factor * pre, True
    return lr, fallback, capped


def qlab_probe_step(alpha0, prev_lr):
    """QLAB's probe step β = max(α0, α_{t−1}) (α0 at the first step)."""
    return max(alpha0, prev_lr if prev_lr is not None else alpha0)


def keeps_doubling(g_alpha, g0, alpha, gsq):
    """Algorithm 2, line 4: a2 = g(ᾱ) − g(0) + ᾱ‖∇L‖² < 0 (Eq. 9 times ᾱ², same sign)."""
    return g_alpha - g0 + alpha * gsq < 0


def keeps_halving(g_alpha, g0):
    """Algorithm 2, line 8: g(ᾱ) > g(0), a non-finite g(ᾱ) counted as +inf (an overshoot, Lemma 3)."""
    return not (math.isfinite(g_alpha) and g_alpha <= g0)


def nonfinite_gradient_message(owner, gsq, loss):
    """The error for a finite loss whose ‖∇L‖² is NaN/inf (overflow, or a NaN/inf gradient entry)."""
    return (f"{owner}: the gradient at the current parameters is not finite (‖∇L‖² = {gsq}) although the loss is "
            f"{loss}; parameters unchanged")


def needs_closure_message(owner):
    """The error for ``step()`` without a closure: the probe evaluates the loss a second time."""
    if owner == "QLABGrad":
        return ("QLABGrad.step: needs a closure (forward only, returning the minibatch loss): Algorithm 1 evaluates "
                "the loss a second time at θ − ᾱ∇L")
    return (f"{owner}.step: needs a closure (forward only, returning the minibatch loss): QLAB evaluates the loss a "
            "second time at θ − βV")


#: QLABGrad's ``pre_lr`` property (both engines): ᾱ from ``global_state``
PRE_LR = property(lambda self: self.global_state["pre_lr"],
                  doc="The current pre-learning rate ᾱ (None before FindPLR has run).")
