"""QLABGrad (Algorithm 1), FindPLR (Algorithm 2) and QLAB on other descent directions.

Put this file beside ``paper/QLABGrad-paper.md``: every line that implements an equation carries its
number. Notation: θ the parameters (all of them, as one vector), ∇L the gradient of the minibatch
loss at θ, g(α) = L(θ − α∇L) (Eq. 3), ᾱ the pre-learning rate.

One step of :class:`QLABGrad` (Algorithm 1), on one minibatch (the closure):

1. ``L(θ)`` and ``∇L(θ)``: one forward + backward (``Optimizer.evaluate``).
   ``a0 = L(θ)`` (Eq. 6), ``a1 = −‖∇L‖²`` (Eq. 7); ‖∇L‖² is summed over **all** parameters, so
   there is one scalar learning rate for the whole model.
2. ``g(ᾱ) = L(θ − ᾱ∇L)``: one probe forward (no graph, no BatchNorm running-statistics update,
   same minibatch) (Eq. 8).
3. ``a2 = (g(ᾱ) − a0 − a1ᾱ)/ᾱ²`` (Eq. 9), ``α* = ‖∇L‖²ᾱ² / (2[g(ᾱ) − L + ‖∇L‖²ᾱ])`` (Eq. 10).
4. ``α_t = α*``, or ``α_t = ᾱ`` when α* < 0 (Algorithm 1, lines 4–7).
5. ``θ ← θ − α_t∇L`` (line 8), computed from a saved copy of θ (never by undoing the probe).

So a step makes **2 closure calls** (``last_step["evals"] == 2``), plus FindPLR's probes on the
steps where FindPLR runs. All of a0, a1, a2, α* are computed in float64 (Python floats) even for
float32 parameters (the difference g(ᾱ) − L + ‖∇L‖²ᾱ cancels badly in low precision).

FindPLR (Algorithm 2, :func:`find_plr`) from ``alpha0``: loop 1 doubles ᾱ while
``a2 = g(ᾱ) − g(0) + ᾱ‖∇L‖² < 0`` (lines 4–7; this "a2" is the paper's Eq. 9 times ᾱ², same sign),
loop 2 halves ᾱ while ``g(ᾱ) > g(0)`` (lines 8–11). Each evaluation is one probe forward; θ is
restored exactly afterwards. Minibatch use (section "QLABGrad for Deep Learning with Minibatch"):
``findplr="once"`` (default) runs it at the first step on that step's minibatch; ``"every:K"`` also
re-runs it at steps K+1, 2K+1, ... (the paper recommends calling it "a number of times"), starting
from the current ᾱ; ``"never"`` uses the given ``pre_lr`` throughout. FindPLR inside a step shares
Algorithm 1's forward + backward (g(0) and ∇L are the same numbers) and its last evaluation *is*
g(ᾱ) at the same θ on the same minibatch, so Algorithm 1's probe reuses it: such a step makes
1 + (FindPLR probes) closure calls.

:class:`QLAB` applies the same quadratic fit along another descent direction V (the step of SGD,
momentum or Adam with lr = 1; the v1 paper, arXiv:2302.00252v1): g(α) = L(θ − αV), a0 = L,
a1 = −∇L·V, probe at β = max(α0, α_{t−1}), a2 = (g(β) − a0 − a1β)/β², α* = −a1/(2a2), and
α_t = β when α* < 0; θ ← θ − α_tV.

``last_step`` (also passed to every callback ``cb(opt, record)``) holds: ``step``, ``loss`` (= a0),
``grad_sq_norm`` (‖∇L‖²), ``probe_loss`` (g(ᾱ)), ``a0``, ``a1``, ``a2``, ``alpha_star`` (α*, None when
a2 = 0 or the gradient is zero), ``lr`` (α_t actually used), ``pre_lr`` (ᾱ of this step),
``fallback`` (α_t = ᾱ was taken), ``evals`` (closure calls this step), ``findplr_ran``,
``findplr_evals`` (FindPLR probes this step), ``findplr_doublings``, ``findplr_halvings``,
``probe_nonfinite`` (the probe at the stored ᾱ was NaN/inf), ``zero_grad`` (no step taken because
∇L = 0), ``capped`` (``max_lr`` limited the step), ``flat_storage`` (the step worked on the model's
flat parameter and gradient buffers, ``model.flat_parameters()``/``flat_grads()``: one array each). Whether the step raised the loss is only known from
the next step's ``loss`` (on the next minibatch); on a full batch compare consecutive ``loss`` values.

Edge cases (each one tested in ``tests/test_qlab.py``):

- **Non-finite loss at θ**: ``NonFiniteLossError`` from ``evaluate`` before anything is touched;
  parameters, ᾱ and the step counter are unchanged. A finite loss with a non-finite gradient raises
  the same error (parameters unchanged).
- **Zero gradient** (‖∇L‖² = 0): θ is a stationary point of this minibatch loss and every g(α) equals
  L. No probe, no step, no division: ``lr = 0``, ``alpha_star = None``, ``zero_grad = True``,
  ``evals = 1``. A FindPLR that was due waits for the next step with a non-zero gradient.
- **a2 = 0 exactly**: Eq. (10) divides by zero. Lemma 2 and Theorem 1 only use α* when a2 > 0, and
  with a1 < 0 "α* < 0" is the same as "a2 < 0"; we take the fallback α_t = ᾱ for every a2 ≤ 0
  (``alpha_star = None`` when a2 = 0). g(ᾱ) ≤ L − ᾱ‖∇L‖² then holds, which is what the fallback
  case of Theorem 1's proof (Eq. 16) uses. A positive a2 so small that α* overflows to inf is
  treated the same way (fallback, never a non-finite step).
- **Non-finite probe** g(ᾱ) (NaN/inf, e.g. overflow at a too large ᾱ): treated as +inf, i.e. as an
  overshoot g(ᾱ) > g(0) (by Lemma 3 then ᾱ ≥ 2/M). We never step with it: Algorithm 2's second
  loop runs from the stored ᾱ (halve until g(ᾱ) is finite and ≤ g(0)) on the same θ and minibatch,
  the result becomes the stored ᾱ, and Eq. (9)–(10) proceed with it. ``probe_nonfinite = True``,
  ``findplr_halvings`` counts the halvings. Inside FindPLR non-finite values are treated as +inf
  too (loop 1 stops, loop 2 halves) -- NaN comparisons are False, so this is explicit.
- **FindPLR cannot bracket**: the loops stop after ``max_evals`` probes in total and raise
  :class:`FindPLRError` naming the loop (1: a2 < 0 for every ᾱ tried -- the loss looks unbounded
  below along −∇L; 2: g(ᾱ) > g(0) even for tiny ᾱ -- the gradient does not describe the loss, e.g. a
  non-deterministic closure), the last ᾱ and g(ᾱ); θ is restored first. ᾱ doubling to inf or
  halving to 0 raises the same error. A zero gradient makes :func:`find_plr` raise as well (every ᾱ
  gives g(ᾱ) = g(0): there is nothing to determine).
- **Huge α***: not capped by default (the paper has no cap). ``max_lr`` caps α_t if you ask for it.

Paper ambiguities and the choices made here:

1. Algorithm 1 line 5 tests "α* < 0", Lemma 2 / Theorem 1 reason with "a2 > 0", and a2 = 0 divides
   by zero: fallback for every a2 ≤ 0 (see above).
2. Algorithm 1 takes ᾱ as an input with 0 < ᾱ < 2/M; with ``pre_lr=None`` we get it from FindPLR.
   FindPLR's ᾱ satisfies g(ᾱ) ≤ g(0), which does **not** imply ᾱ < 2/M (Lemma 3 only says
   g(ᾱ) > g(0) ⇒ ᾱ ≥ 2/M); ``qlabref verify`` shows a case where FindPLR returns 50·(2/M).
3. Algorithm 2 line 1 says "randomly choose a parameter value θ"; we use the current θ (and the
   current minibatch), which is where the ᾱ is used next.
4. Algorithm 2 loop 1 doubles while a2 < 0, i.e. while g looks concave along −∇L. On a convex loss
   it never runs, whatever α0 is (so a too small α0 stays small there); it runs near maxima and
   saddles (Himmelblau from (−1, −1): 1e-5 → 0.08192 after 14 doublings and 1 halving; the paper's
   Figure 8 reports 1e-5 → 0.00128 after 7 iterations on its MNIST MLP).
5. "Call Algorithm 2 a number of times" for minibatches: ``findplr="every:K"``, warm-started from the
   current ᾱ (default ``"once"``: at the first step).
6. ``alpha0``: the paper suggests 0.1, 0.01, 0.005 "or the like" (Figure 8 uses 1e-5); the default
   here is 1.0, for a numerical reason the paper does not discuss. FindPLR can only *raise* ᾱ where g
   looks concave (item 4) but lowers a too large one cheaply (loop 2, one forward per halving). And
   Eq. (10)'s denominator g(ᾱ) − L + ‖∇L‖²ᾱ = a2ᾱ² is a difference of two loss values computed by the
   model: its relative error is about eps·|L|/(a2ᾱ²), so a ᾱ far below the step size makes α* noise in
   float32 (on a small float32 MLP, 20 steps: parameters agree with float64 to 3e-7 from α0 = 1,
   1e-4 from α0 = 0.1, 1e-2 from α0 = 0.01). Starting high gives the largest 2^k·α0 with
   g(ᾱ) ≤ g(0), a well-conditioned fit. QLAB's α0 (a floor for its probe β) defaults to 0.01.
7. Lemma 2's upper bound α* ≤ ᾱ does not follow from Eq. (14): with a1 = −2a2α* (not −½a2α*),
   g1(ᾱ) − g1(α*) = a2(ᾱ − α*)² ≥ 0 for every ᾱ. On a quadratic α* is the exact line-search step for
   any ᾱ, so α* > ᾱ whenever ᾱ < 1/M. Only α* ≥ 1/M (Eq. 13) holds, so Eq. (17)–(18) and the per-step
   decrease of Theorem 1 are not guaranteed in general (``qlabref verify`` shows a convex example
   where the first step raises the loss from 0 to 4704). We implement the algorithm as printed
   (no cap); ``max_lr`` is there for users who want one.
8. QLAB (v1) on other directions: whether v1 caps α and its α0 default are open in the v1 paper:
   no cap by default, α0 = 0.01 (``QLAB_DEFAULT_ALPHA0``). If ∇L·V ≤ 0 (V is not a descent direction,
   possible for momentum and Adam), that step uses V = ∇L instead (``not_descent = True``); the
   direction's state (momentum buffer, Adam moments) is updated as usual.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import backends
from . import qlab_rule as rule
from .optimizer import NonFiniteLossError, NonFiniteProbeError, Optimizer, flat_buffer
from .registry import register_optimizer

__all__ = [
    "QLABGrad",
    "QLAB",
    "QLABSGD",
    "QLABMomentum",
    "QLABAdam",
    "find_plr",
    "FindPLRResult",
    "FindPLRError",
    "FindPLRNonFiniteError",
    "DEFAULT_ALPHA0",
    "QLAB_DEFAULT_ALPHA0",
    "DEFAULT_MAX_EVALS",
]

#: FindPLR's default initial pre-learning rate (the paper suggests 0.1, 0.01, 0.005 "or the like";
#: see item 6 of the module docstring for why 1.0)
DEFAULT_ALPHA0 = 1.0
#: QLAB's default α0, the floor of its probe step β = max(α0, α_{t−1}) (open in the v1 paper)
QLAB_DEFAULT_ALPHA0 = 0.01
#: default budget of probe evaluations for one FindPLR run (2^50 ≈ 1e15 range of ᾱ)
DEFAULT_MAX_EVALS = 50


class FindPLRError(RuntimeError):
    """FindPLR (Algorithm 2) could not bracket a pre-learning rate within its evaluation budget.

    Attributes: ``loop`` (1 = doubling while a2 < 0, 2 = halving while g(ᾱ) > g(0), 0 = before the
    loops, e.g. a zero gradient), ``last_alpha`` (the last ᾱ tried), ``last_value`` (g at it),
    ``evals`` (probe evaluations made). The parameters were restored before it was raised.
    """

    def __init__(self, message, loop, last_alpha, last_value=None, evals=0):
        super().__init__(message)
        self.loop = loop
        self.last_alpha = last_alpha
        self.last_value = last_value
        self.evals = evals


class FindPLRNonFiniteError(FindPLRError, NonFiniteProbeError):
    """Every probe FindPLR made was NaN/±inf: no finite probe could be found (the rule of
    ``qlabref.optim.optimizer``: a ``NonFiniteLossError``, and a ``FindPLRError`` naming the loop)."""

    def __init__(self, message, loop, last_alpha, last_value=None, evals=0):
        FindPLRError.__init__(self, message, loop, last_alpha, last_value, evals)


@dataclass
class FindPLRResult:
    """What one FindPLR run did. ``history`` lists ``(loop, ᾱ, g(ᾱ))`` for every probe in order
    (loop 0 = line 3, 1 = a doubling, 2 = a halving); g values are as measured (NaN/inf kept)."""

    pre_lr: float
    alpha0: float
    g0: float
    grad_sq_norm: float
    probes: int
    doublings: int
    halvings: int
    last_value: float
    nonfinite: int = 0
    evals: int = 0  # closure calls: probes, plus 1 for the forward + backward when run standalone
    history: list = field(default_factory=list)


# ----------------------------------------------------------------------------------------- helpers
def _kernel_view(a, dtype=None):
    """``a`` as a 1-D contiguous view for the probe kernels (float32/float64, one dtype), else None."""
    if a.dtype not in (np.float32, np.float64) or (dtype is not None and a.dtype != dtype):
        return None
    return a.reshape(-1) if a.flags.c_contiguous else None


def _sq_norm(arrays) -> float:
    """Σ x² over all arrays, accumulated in float64: the probe kernel's sum (one pass over each array,
    no float64 copy of a float32 gradient), on the backend in force."""
    be = backends.current()
    total = 0.0
    for a in arrays:
        v = _kernel_view(a)
        if v is None:
            a64 = np.asarray(a, dtype=np.float64).ravel()
            total += float(np.dot(a64, a64))
        elif v.size:
            total += be.sq_norm(v)  # on GPU-resident arrays: a device scalar, summed on the device
    return float(total)  # one scalar back per step


def _dot(xs, ys) -> float:
    """Σ x·y over all array pairs, accumulated in float64."""
    return float(sum(np.dot(x.ravel().astype(np.float64, copy=False), y.ravel().astype(np.float64, copy=False))
                     for x, y in zip(xs, ys)))


class _Saved:
    """θ_{t−1}, the point every probe and the step are computed from. Created empty; the first
    :func:`_place` saves θ and places the first probe point in one pass over memory (the probe
    kernel's ``probe_save``). Reading it before then takes a plain copy."""

    def __init__(self, targets):
        self.targets = targets
        self.arrays = None

    @property
    def ready(self):
        return self.arrays is not None

    def copy_now(self):
        if self.arrays is None:
            self.arrays = [t.copy() for t in self.targets]
        return self.arrays

    def __iter__(self):
        return iter(self.copy_now())

    def __getitem__(self, i):
        return self.copy_now()[i]

    def __len__(self):
        return len(self.targets)


def _save(targets):
    """The saved θ_{t−1} for ``targets`` (filled by the first ``_place``; see :class:`_Saved`)."""
    return _Saved(targets)


def _place(targets, saved, alpha, dirs):
    """θ ← saved − α·d for every parameter array in ``targets``, written in place (views stay views).

    Always computed from the saved copy, so probing and stepping never accumulate rounding. The new
    point is the probe kernel's θ − α·d with α rounded to the arrays' dtype, which is NumPy's
    ``saved + (−α·d)`` bit for bit."""
    be = backends.current()
    if isinstance(saved, _Saved) and not saved.ready:
        if alpha == 0.0:  # θ stays where it is
            saved.copy_now()
            return
        arrays = []
        for t, d in zip(targets, dirs):
            tv, dv = _kernel_view(t), _kernel_view(d, t.dtype)
            s = np.empty_like(t)
            if tv is None or dv is None:
                s[...] = t
                _place_numpy(t, s, alpha, d)
            else:
                be.probe_save(tv, dv, alpha, s.reshape(-1))  # s = θ; θ ← θ − α·d (one pass)
            arrays.append(s)
        saved.arrays = arrays
        return
    if alpha == 0.0:
        for t, s in zip(targets, saved):
            t[...] = s
        return
    for t, s, d in zip(targets, saved, dirs):
        tv, sv, dv = _kernel_view(t), _kernel_view(s, t.dtype), _kernel_view(d, t.dtype)
        if tv is None or sv is None or dv is None:
            _place_numpy(t, s, alpha, d)
        else:
            be.probe(sv, dv, alpha, tv)


def _place_numpy(t, s, alpha, d):
    np.multiply(d, -alpha, out=t)  # −α·d, rounded once (negation is exact)
    t += s  # s + (−α·d) == s − α·d bit for bit


def _restore(targets, saved):
    if isinstance(saved, _Saved) and not saved.ready:
        return  # θ was never moved
    for t, s in zip(targets, saved):
        t[...] = s


_flat_buffer = flat_buffer  # (optimizer.py: also used by zero_grad)


def _working_arrays(params, grads):
    """(θ arrays, ∇L arrays, flat?) that a step reads and writes: one array per parameter, or — when
    the model keeps every parameter and every gradient in one contiguous buffer each
    (``model.flat_parameters()``, ``model.flat_grads()``) — the two buffers themselves, so that
    ‖∇L‖², the saved copy of θ and each probe point θ − ᾱ∇L are one pass over memory."""
    datas = [p.data for p in params]
    flat_theta, flat_grad = _flat_buffer(datas), _flat_buffer(grads)
    if flat_theta is not None and flat_grad is not None and flat_theta.dtype == flat_grad.dtype:
        return [flat_theta], [flat_grad], True
    return datas, grads, False


_check_positive = rule.check_positive
_check_max_evals = rule.check_max_evals
_parse_findplr = rule.parse_findplr


def _check_groups(opt):
    """One learning rate for all parameters: per-group options would contradict the paper's scalar α."""
    owner = type(opt).__name__
    for i, group in enumerate(opt.param_groups):
        for k, v in opt.defaults.items():
            if group[k] != v:
                raise ValueError(
                    f"{owner}: parameter group {i} sets {k}={group[k]!r} but the optimizer has {k}={v!r}; "
                    f"{owner} uses one learning rate for all parameters (‖∇L‖² is over all of them), "
                    "so per-group options are not supported"
                )


# ----------------------------------------------------------------------------------- Algorithm 2
def _findplr_loops(g_at, g0, gsq, alpha0, max_evals, owner):
    """Algorithm 2, lines 3–11, given g(0) and ‖∇L‖² (lines 1–2 are the caller's).

    ``g_at(α)`` returns the loss at θ − α∇L (one forward). A non-finite g(ᾱ) counts as +inf.
    """
    history = []
    count = {"probes": 0, "nonfinite": 0}

    def _error(message, *args):
        if history and not math.isfinite(history[-1][2]):  # the search ended on a NaN/inf probe
            return FindPLRNonFiniteError(f"{message}; no finite probe found ({count['nonfinite']} of "
                                         f"{count['probes']} probes were NaN/inf, the last one too); parameters "
                                         "and optimizer state unchanged", *args)
        return FindPLRError(message, *args)

    def g(alpha, loop):
        if count["probes"] >= max_evals:
            last_alpha, last_value = history[-1][1], history[-1][2]
            what = {
                1: "loop 1 (lines 4-7: double ᾱ while a2 = g(ᾱ) - g(0) + ᾱ‖∇L‖² < 0) did not exit; a2 < 0 for every "
                   "ᾱ tried, so the loss looks unbounded below (or concave) along -∇L",
                2: "loop 2 (lines 8-11: halve ᾱ while g(ᾱ) > g(0)) did not exit; the loss does not decrease along "
                   "-∇L even for tiny ᾱ (is the gradient that of the loss? is the closure deterministic?)",
            }[loop]
            raise _error(
                f"{owner}: FindPLR (Algorithm 2) {what}: gave up after max_evals={max_evals} loss evaluations; "
                f"last ᾱ = {last_alpha!r}, g(ᾱ) = {last_value!r}, g(0) = {g0!r}",
                loop, last_alpha, last_value, count["probes"],
            )
        if not (math.isfinite(alpha) and alpha > 0):
            last_alpha = history[-1][1]
            raise _error(
                f"{owner}: FindPLR (Algorithm 2) loop {loop}: ᾱ left the floating-point range "
                f"({'doubled to inf' if loop == 1 else 'halved to 0'}); last ᾱ = {last_alpha!r}, g(0) = {g0!r}",
                loop, last_alpha, history[-1][2], count["probes"],
            )
        value = g_at(alpha)
        count["probes"] += 1
        history.append((loop, alpha, value))
        if not math.isfinite(value):
            count["nonfinite"] += 1
            return math.inf  # a NaN/inf probe is an overshoot: NaN comparisons would be False
        return value

    alpha = alpha0  # line 1: ᾱ = α0
    g_alpha = g(alpha, 0)  # line 3: g(ᾱ) = L(θ − ᾱ∇L)
    doublings = halvings = 0
    while rule.keeps_doubling(g_alpha, g0, alpha, gsq):  # line 4: a2 = g(ᾱ) − g(0) + ᾱ‖∇L‖² < 0
        alpha = 2.0 * alpha  # line 5
        doublings += 1
        g_alpha = g(alpha, 1)  # line 6
    while rule.keeps_halving(g_alpha, g0):  # line 8: g(ᾱ) > g(0) (g_alpha is never NaN here: g() maps it to inf)
        alpha = 0.5 * alpha  # line 9
        halvings += 1
        g_alpha = g(alpha, 2)  # line 10
    return FindPLRResult(
        pre_lr=alpha, alpha0=alpha0, g0=g0, grad_sq_norm=gsq, probes=count["probes"], doublings=doublings,
        halvings=halvings, last_value=g_alpha, nonfinite=count["nonfinite"], evals=count["probes"], history=history,
    )


class _FindPLRShell(Optimizer):
    """The base class's ``evaluate``/``probe`` for the standalone ``find_plr``."""

    _step_checks_grad_sq_norm = True  # find_plr's ‖∇L‖² raises on NaN/inf before anything changes


_FindPLRShell.__name__ = "find_plr"


def find_plr(closure, params, alpha0=DEFAULT_ALPHA0, max_evals=DEFAULT_MAX_EVALS, full_output=False):
    """Algorithm 2 (FindPLR): a pre-learning rate ᾱ for the loss ``closure()`` at the current θ.

    ``closure``: forward only, returns the loss Tensor (as for ``step``). ``params``: the parameters.
    Line 2 is one forward + backward (g(0) and ∇L; ``.grad`` is left holding ∇L(θ)), then every
    evaluation of g(ᾱ) = L(θ − ᾱ∇L) is one probe forward (no graph, no BatchNorm state update):
    loop 1 doubles ᾱ while g(ᾱ) − g(0) + ᾱ‖∇L‖² < 0, loop 2 halves it while g(ᾱ) > g(0). θ is
    restored exactly (from a saved copy) before returning or raising.

    Returns ᾱ = alpha0·2^(doublings − halvings) as a float, or a :class:`FindPLRResult` with
    ``full_output=True``. Raises :class:`FindPLRError` (naming the loop and the last ᾱ) after
    ``max_evals`` probes, or when ∇L = 0; ``NonFiniteLossError`` when g(0) is not finite.
    """
    owner = "find_plr"
    alpha0 = _check_positive("alpha0", alpha0, owner)
    max_evals = _check_max_evals(max_evals, owner)
    shell = _FindPLRShell(params, {})
    ps = shell.params()
    g0 = shell.evaluate(closure)  # line 2: g(0) = L(θ) and ∇L(θ)
    grads = shell.grads()
    gsq = _sq_norm(grads)  # ‖∇L(θ)‖² over all parameters
    if not math.isfinite(gsq):
        raise NonFiniteLossError(f"find_plr: the gradient at θ is not finite (‖∇L‖² = {gsq}); parameters unchanged")
    if gsq == 0.0:
        raise FindPLRError(
            f"find_plr: the gradient at θ is zero (g(0) = {g0!r}), so g(ᾱ) = g(0) for every ᾱ and there is no "
            f"pre-learning rate to determine; last ᾱ = {alpha0!r}",
            0, alpha0, g0, 0,
        )
    targets, grads, _ = _working_arrays(ps, grads)
    saved = _save(targets)

    def g_at(alpha):
        _place(targets, saved, alpha, grads)
        return shell.probe(closure, allow_nonfinite=True)  # non-finite = overshoot (+inf)

    try:
        result = _findplr_loops(g_at, g0, gsq, alpha0, max_evals, owner)
    finally:
        _restore(targets, saved)
    result.evals = result.probes + 1
    return result if full_output else result.pre_lr


# ----------------------------------------------------------------------------------- Algorithm 1
@register_optimizer("qlabgrad")
class QLABGrad(Optimizer):
    """QLABGrad (Algorithm 1 of the paper), with FindPLR (Algorithm 2) for the pre-learning rate.

    ``QLABGrad(params, pre_lr=None, alpha0=1.0, findplr="once", max_evals=50, max_lr=None, max_lr_factor=None)``

    - ``pre_lr``: ᾱ. ``None`` → FindPLR from ``alpha0`` at the first step. Given → used as is
      (``findplr="every:K"`` re-runs FindPLR from it at steps K+1, 2K+1, ...).
    - ``findplr``: ``"once"`` | ``"every:K"`` | ``"never"`` (``"never"`` requires ``pre_lr``).
    - ``max_evals``: probe budget of one FindPLR run (also of the halving after a non-finite probe).
    - ``max_lr``: optional cap on α_t (the paper has none; default off).
    - ``max_lr_factor``: optional cap α_t ≤ factor·ᾱ (default off). ``max_lr_factor=1`` enforces the
      bound α* ≤ ᾱ that Lemma 2 claims but that does not follow from Eq. (14) (module docstring, item 7).
      A remedy for minibatch training (``demos/results/``), **not** the paper's algorithm.

    ``step(closure)``: the closure is forward only and returns the minibatch loss Tensor. Closure
    calls per step: 2 (forward + backward, one probe forward); 1 + FindPLR's probes on a FindPLR step
    (its last probe is Algorithm 1's g(ᾱ)); 1 when ∇L = 0. Returns the loss (float) at θ before the
    step. See the module docstring for ``last_step`` and the edge cases.
    State (``global_state``): ``step``, ``pre_lr`` (current ᾱ), ``findplr_due``, ``findplr_runs``,
    ``last_lr``.
    """

    #: atomic steps: θ is restored from the saved copy, global_state changes only after the probes
    _step_snapshot = "light"
    _step_checks_grad_sq_norm = True  # ‖∇L‖² below raises on NaN/inf before anything changes

    def __init__(self, params, pre_lr=None, alpha0=DEFAULT_ALPHA0, findplr="once", max_evals=DEFAULT_MAX_EVALS,
                 max_lr=None, max_lr_factor=None):
        options = rule.qlabgrad_options(pre_lr, alpha0, findplr, max_evals, max_lr, max_lr_factor)
        pre_lr = options["pre_lr"]
        super().__init__(params, options)
        _check_groups(self)
        self.global_state.update(step=0, pre_lr=pre_lr, findplr_due=pre_lr is None, findplr_runs=0, last_lr=None)

    pre_lr = rule.PRE_LR

    def step(self, closure=None):
        if closure is None:
            raise ValueError(rule.needs_closure_message("QLABGrad"))
        group = self.param_groups[0]
        mode, every = _parse_findplr(group["findplr"], "QLABGrad")
        gs = self.global_state
        t = gs["step"] + 1
        params = self.params()

        # Algorithm 1, line 3 needs L(θ_{t−1}) and ∇L(θ_{t−1}): one forward + backward.
        loss = self.evaluate(closure)  # NonFiniteLossError here leaves everything untouched
        targets, grads, flat = _working_arrays(params, self.grads())
        gsq = _sq_norm(grads)
        if not math.isfinite(gsq):
            raise NonFiniteLossError(rule.nonfinite_gradient_message("QLABGrad", gsq, loss))
        gs["findplr_due"] = rule.findplr_is_due(gs["findplr_due"], mode, every, t)
        record = rule.qlabgrad_record(t, loss, gsq, gs["pre_lr"], flat_storage=flat)  # a0, a1: Eqs. (6), (7)

        if gsq == 0.0:
            # ∇L = 0: g(α) = L for every α; no probe, no step, no division by zero.
            record["zero_grad"] = True
            gs["step"] = t
            gs["last_lr"] = 0.0
            self._finish_step(record)
            return loss

        saved = _save(targets)  # θ_{t−1}, kept to compute every point from (saved by the first _place)

        def g_at(alpha):  # Eq. (3): g(α) = L(θ_{t−1} − α∇L(θ_{t−1})), one probe forward
            _place(targets, saved, alpha, grads)
            return self.probe(closure, allow_nonfinite=True)  # non-finite = overshoot (+inf)

        try:
            if gs["findplr_due"]:
                gs["pre_lr"], probe = _findplr_in_step(g_at, loss, gsq, group["alpha0"], gs["pre_lr"],
                                                       group["max_evals"], "QLABGrad", record)
                gs["findplr_due"] = False
                gs["findplr_runs"] += 1
            else:
                probe = g_at(gs["pre_lr"])  # Eq. (8): g(ᾱ), the one extra forward of Algorithm 1
                gs["pre_lr"], probe = _after_probe(g_at, loss, gs["pre_lr"], probe, group["max_evals"], "QLABGrad",
                                                   record)
        except BaseException:
            _restore(targets, saved)
            raise

        pre = gs["pre_lr"]  # ᾱ
        a2, alpha_star = rule.qlabgrad_fit(loss, gsq, pre, probe)  # Eqs. (9), (10)
        # Algorithm 1, lines 4–7 (fallback α_t = ᾱ), then the optional caps (remedies, docstring)
        lr, fallback, capped = rule.choose_lr(alpha_star, a2, pre, group["max_lr"], group.get("max_lr_factor"))
        record["capped"] = capped
        _place(targets, saved, lr, grads)  # Algorithm 1, line 8: θ_t = θ_{t−1} − α_t∇L(θ_{t−1})

        gs["step"] = t
        gs["last_lr"] = lr
        record.update(probe_loss=probe, a2=a2, alpha_star=alpha_star, lr=lr, pre_lr=pre, fallback=fallback)
        self._finish_step(record)
        return loss


def _findplr_loops_from_overshoot(g_at, g0, alpha, max_evals, owner):
    """Halve α while g(α) is not finite or > g(0) (Algorithm 2's second loop, with the first
    probe known to be +inf). Returns ``(g(α), α, halvings, probes)``; raises FindPLRError on budget."""
    halvings = probes = 0
    value = math.inf
    while rule.keeps_halving(value, g0):  # line 8, non-finite counted as +inf
        if probes >= max_evals:
            raise (FindPLRError if math.isfinite(value) else FindPLRNonFiniteError)(
                f"{owner}: the probe loss was not finite and FindPLR's loop 2 (lines 8-11: halve ᾱ while g(ᾱ) > g(0)) "
                f"did not exit after max_evals={max_evals} halvings; last ᾱ = {alpha!r}, g(ᾱ) = {value!r}, "
                f"g(0) = {g0!r}",
                2, alpha, value, probes,
            )
        alpha = 0.5 * alpha  # line 9
        if alpha == 0.0:
            raise (FindPLRError if math.isfinite(value) else FindPLRNonFiniteError)(
                f"{owner}: FindPLR loop 2 halved ᾱ to 0 without a probe g(ᾱ) <= g(0); g(0) = {g0!r}",
                2, alpha, value, probes)
        halvings += 1
        value = g_at(alpha)  # line 10
        probes += 1
    return value, alpha, halvings, probes


def _findplr_in_step(g_at, loss, gsq, alpha0, pre, max_evals, owner, record):
    """FindPLR inside a QLABGrad step (both engines): Algorithm 2 on this θ and minibatch from the
    current ᾱ (``alpha0`` before the first run); its g(0), ∇L are the step's. Returns (ᾱ, g(ᾱ)): its
    last probe is g(ᾱ) at the returned ᾱ, same θ, same minibatch (Eq. 8). Updates ``record``."""
    start = alpha0 if pre is None else pre
    res = _findplr_loops(g_at, loss, gsq, start, max_evals, owner)
    record.update(findplr_ran=True, findplr_evals=res.probes, findplr_doublings=res.doublings,
                  findplr_halvings=res.halvings)
    record["evals"] += res.probes
    return res.pre_lr, res.last_value


def _after_probe(g_at, loss, pre, probe, max_evals, owner, record):
    """After the step's probe g(ᾱ) (Eq. 8; QLAB: g(β)), counted in ``record``: a non-finite probe is an
    overshoot (Lemma 3), so Algorithm 2's second loop halves ᾱ from there. Returns (ᾱ, g(ᾱ))."""
    record["evals"] += 1
    if math.isfinite(probe):
        return pre, probe
    record["probe_nonfinite"] = True
    probe, pre, halvings, n = _findplr_loops_from_overshoot(g_at, loss, pre, max_evals, owner)
    record["findplr_halvings"] = halvings
    record["evals"] += n
    return pre, probe


# ------------------------------------------------------------------------- QLAB on a direction V
_DIRECTIONS = rule.DIRECTIONS


@register_optimizer("qlab")
class QLAB(Optimizer):
    """QLAB on the descent direction V of SGD, momentum or Adam (the v1 paper, arXiv:2302.00252v1).

    ``QLAB(params, direction="momentum", alpha0=0.01, momentum=0.9, betas=(0.9, 0.999), eps=1e-8,
    max_evals=50, max_lr=None)``

    V is the direction's own step with lr = 1: ``"sgd"`` V = ∇L; ``"momentum"`` V = b with the torch
    buffer b ← μb + ∇L (b = ∇L at the first step); ``"adam"`` V = m̂/(√v̂ + ε) in torch's form
    ([1/(1−β1^t)]·m/(√v/√(1−β2^t) + ε)). Then, with g(α) = L(θ − αV):
    a0 = L (Eq. 6), a1 = −∇L·V (Eq. 7 along V), β = max(α0, α_{t−1}), g(β) one probe forward (Eq. 8),
    a2 = (g(β) − a0 − a1β)/β² (Eq. 9), α* = −a1/(2a2) (Eq. 5), α_t = α* or β when α* < 0 (a2 ≤ 0),
    θ ← θ − α_tV. 2 closure calls per step. If ∇L·V ≤ 0 the step uses V = ∇L (``not_descent``).
    A non-finite probe halves β until g(β) is finite and ≤ L (as QLABGrad). No cap on α unless
    ``max_lr`` is given. ``last_step`` as QLABGrad plus ``direction``, ``not_descent``, ``grad_dot_dir``;
    ``pre_lr`` holds β.
    """

    #: atomic steps: θ is restored from the saved copy, the direction's state is committed after the probe
    _step_snapshot = "light"

    direction_default = "momentum"

    def __init__(self, params, direction=None, alpha0=QLAB_DEFAULT_ALPHA0, momentum=0.9, betas=(0.9, 0.999), eps=1e-8,
                 max_evals=DEFAULT_MAX_EVALS, max_lr=None):
        owner = type(self).__name__
        direction = self.direction_default if direction is None else direction
        super().__init__(params, rule.qlab_options(direction, alpha0, momentum, betas, eps, max_evals, max_lr, owner))
        _check_groups(self)
        self.global_state.update(step=0, prev_lr=None)

    # the direction's own rule with lr = 1. Returns (V, new state): the state is committed by ``step``
    # only after the probes succeeded, so a step that raises leaves the moments untouched.
    def _direction(self, params, grads, t, group):
        direction = group["direction"]
        if direction == "sgd":
            return grads, {}
        dirs, new_state = [], {}
        if direction == "momentum":
            mu = group["momentum"]
            for p, g in zip(params, grads):
                buf = self.state.get(p, {}).get("momentum_buffer")
                # torch: the first buffer is a copy of the gradient, then b ← μb + ∇L
                buf = g.copy() if buf is None else buf * mu + g
                new_state[p] = {"momentum_buffer": buf}
                dirs.append(buf)
            return dirs, new_state
        b1, b2 = group["betas"]
        eps = group["eps"]
        bc1 = 1.0 - b1**t
        bc2 = 1.0 - b2**t
        for p, g in zip(params, grads):
            st = self.state.get(p, {})
            m = st.get("exp_avg")
            v = st.get("exp_avg_sq")
            if m is None:
                m, v = np.zeros_like(p.data), np.zeros_like(p.data)
            m = m + (1.0 - b1) * (g - m)  # torch: exp_avg.lerp_(grad, 1 − β1)
            v = v * b2 + (1.0 - b2) * (g * g)
            new_state[p] = {"exp_avg": m, "exp_avg_sq": v}
            denom = np.sqrt(v) / math.sqrt(bc2) + eps
            dirs.append((1.0 / bc1) * (m / denom))  # torch: step_size·m/denom with lr = 1
        return dirs, new_state

    def _commit(self, t, new_state):
        for p, entries in new_state.items():
            self.state.setdefault(p, {}).update(entries)
        self.global_state["step"] = t

    def step(self, closure=None):
        owner = type(self).__name__
        if closure is None:
            raise ValueError(rule.needs_closure_message(owner))
        group = self.param_groups[0]
        gs = self.global_state
        t = gs["step"] + 1
        params = self.params()

        loss = self.evaluate(closure)  # L(θ_{t−1}) and ∇L(θ_{t−1}): one forward + backward
        grads = self.grads()
        gsq = _sq_norm(grads)
        if not math.isfinite(gsq):
            raise NonFiniteLossError(rule.nonfinite_gradient_message(owner, gsq, loss))
        dirs, new_state = self._direction(params, grads, t, group)
        gdotv = _dot(grads, dirs)  # ∇L·V
        not_descent = not gdotv > 0
        if not_descent:  # V is not a descent direction (or ∇L·V is NaN): use the gradient this step
            dirs, gdotv = grads, gsq
        beta = rule.qlab_probe_step(group["alpha0"], gs["prev_lr"])  # β = max(α0, α_{t−1})
        record = rule.qlab_record(t, loss, gsq, gdotv, beta, group["direction"], not_descent)  # Eqs. (6), (7)
        if gdotv == 0.0:  # ∇L = 0: nothing to do (the direction's state is still updated)
            record["zero_grad"] = True
            self._commit(t, new_state)
            self._finish_step(record)
            return loss

        targets = [p.data for p in params]
        saved = _save(targets)

        def g_at(alpha):  # g(α) = L(θ − αV), one probe forward
            _place(targets, saved, alpha, dirs)
            return self.probe(closure, allow_nonfinite=True)  # non-finite = overshoot (+inf)

        try:
            probe = g_at(beta)  # Eq. (8) at β = max(α0, α_{t−1})
            beta, probe = _after_probe(g_at, loss, beta, probe, group["max_evals"], owner, record)
        except BaseException:
            _restore(targets, saved)
            raise

        a2, alpha_star = rule.qlab_fit(loss, gdotv, beta, probe)  # Eqs. (9), (5)
        lr, fallback, capped = rule.choose_lr(alpha_star, a2, beta, group["max_lr"])  # α* < 0 → α_t = β
        record["capped"] = capped
        _place(targets, saved, lr, dirs)  # θ_t = θ_{t−1} − α_t V
        self._commit(t, new_state)
        gs["prev_lr"] = lr
        record.update(probe_loss=probe, a2=a2, alpha_star=alpha_star, lr=lr, pre_lr=beta, fallback=fallback)
        self._finish_step(record)
        return loss


@register_optimizer("qlab-sgd")
class QLABSGD(QLAB):
    """``QLAB(direction="sgd")``: the gradient direction with β = max(α0, α_{t−1})."""

    direction_default = "sgd"

    def __init__(self, params, **kwargs):
        if kwargs.get("direction", "sgd") != "sgd":
            raise ValueError(f"QLABSGD: direction is fixed to 'sgd', got {kwargs['direction']!r} (use QLAB(direction=...))")
        kwargs["direction"] = "sgd"
        super().__init__(params, **kwargs)


@register_optimizer("qlab-momentum")
class QLABMomentum(QLAB):
    """``QLAB(direction="momentum")``."""

    def __init__(self, params, **kwargs):
        if kwargs.get("direction", "momentum") != "momentum":
            raise ValueError(f"QLABMomentum: direction is fixed to 'momentum', got {kwargs['direction']!r} (use QLAB(direction=...))")
        kwargs["direction"] = "momentum"
        super().__init__(params, **kwargs)


@register_optimizer("qlab-adam")
class QLABAdam(QLAB):
    """``QLAB(direction="adam")``."""

    direction_default = "adam"

    def __init__(self, params, **kwargs):
        if kwargs.get("direction", "adam") != "adam":
            raise ValueError(f"QLABAdam: direction is fixed to 'adam', got {kwargs['direction']!r} (use QLAB(direction=...))")
        kwargs["direction"] = "adam"
        super().__init__(params, **kwargs)
