"""DoG, "Distance over Gradients" (Ivgi, Hinder, Carmon, ICML 2023), and its layer-wise L-DoG.

Source of truth: the authors' package ``dog-optimizer`` 1.0.3 (``github.com/formll/dog``,
``src/dog/dog.py`` classes ``DoG``/``LDoG`` and ``src/dog/averager.py`` class
``PolynomialDecayAverager``). Per parameter group
(DoG: all tensors of the group as one vector; L-DoG: each tensor on its own), with g the gradient
after coupled weight decay (g ← g + wd·θ):

    first step:  x0 ← θ ;  r̄ ← reps_rel·(1 + ‖x0‖) ;  G ← ‖g‖² + eps
    later:       r̄ ← max(r̄, ‖θ − x0‖) ;  G ← G + ‖g‖²
    η ← c·r̄/√G   (c = ``lr``, 1.0; ``init_eta`` replaces η at the first step and sets reps_rel = 0)
    θ ← θ − η·g

The authors say DoG "must be combined with iterate averaging" and ship ``PolynomialDecayAverager``
(γ = 8): x̄_t = (1 − (γ+1)/(t+γ))·x̄_{t−1} + ((γ+1)/(t+γ))·x_t, t = 1, 2, ... counting steps. Here it
is built in: with ``avg_gamma=8.0`` (default; ``None`` turns it off) the optimizer keeps x̄ and
``opt.eval()`` puts x̄ into the parameters, ``opt.train()`` puts the training iterate back. So
``DoG(params)`` is the authors' recommended use: DoG plus the averager, the averaged model evaluated.
The averager of the authors' code averages the whole ``model.state_dict()`` (BatchNorm running
statistics too); ours averages the parameters it is given. Recompute BatchNorm statistics at x̄ (or
keep the running statistics of x) for models that have it.

Deliberate differences from the authors' code (none changes the numbers of a step):
- a parameter without a gradient is not stepped and adds nothing to G (the authors' code raises);
  for L-DoG its r̄ and G start when it first has a gradient;
- G = 0 (only with ``eps=0`` and an all-zero first gradient) raises ``ValueError`` before anything
  changes (the authors' code: ``AssertionError``);
- the user's ``.grad`` is left untouched (the authors add the weight decay into ``p.grad``).

``last_step["lr"]``: DoG's η (group 0; ``lrs`` per group). For L-DoG, ``etas`` holds the per-tensor
η and ``lr`` is the effective ‖Δθ‖/‖g‖ (the gradient-weighted RMS of the per-tensor η). Also
``rbar``, ``G`` (group 0; per tensor for L-DoG), ``avg_t``.
"""
from __future__ import annotations

import math

import numpy as np

from ._lrfree import LRFreeOptimizer, check_nonneg, check_positive
from .registry import register_optimizer

__all__ = ["DoG", "LDoG", "dog_eta", "polynomial_average"]


# ------------------------------------------------------------------------------------ pure rules
def dog_eta(rbar, G, lr=1.0):
    """DoG's step size η = c·r̄/√G (Ivgi et al. 2023, Eq. (1))."""
    return lr * rbar / math.sqrt(G)


def polynomial_average(avg, x, t, gamma):
    """Polynomial-decay averaging (Shamir & Zhang 2013; the DoG package's averager):
    x̄_t = (1 − w)·x̄_{t−1} + w·x_t with w = (γ+1)/(t+γ); t = 1 gives x̄_1 = x_1."""
    w = (gamma + 1) / (gamma + t)
    return avg * (1 - w) + x * w


def _sq(a):
    return float(np.dot(a.ravel(), a.ravel()))


@register_optimizer("dog")
class DoG(LRFreeOptimizer):
    """DoG (global per group) with the authors' polynomial-decay iterate averaging built in.

    ``DoG(params, reps_rel=1e-6, lr=1.0, weight_decay=0.0, eps=1e-8, init_eta=None, avg_gamma=8.0)``:
    the authors' defaults (their README suggests ``reps_rel=1e-4`` for models with BatchNorm, and
    not changing ``lr``). ``avg_gamma=None``: no averaging, ``eval()``/``train()`` do nothing.
    1 closure call per step; ``step()`` without a closure uses the existing ``.grad``.
    State: per parameter ``x0`` (and ``avg``, and ``x_train`` while in eval mode); ``global_state``:
    ``step``, ``groups`` (per group ``rbar``, ``G``, ``eta``; per tensor for L-DoG in ``self.state``),
    ``avg_t``, ``train_mode``.
    """

    _layerwise = False
    #: avg_gamma=None (no averaging) is valid besides a number (the base class's type check)
    _also_accepts = {"avg_gamma": (None,)}

    def __init__(self, params, reps_rel=1e-6, lr=1.0, weight_decay=0.0, eps=1e-8, init_eta=None, avg_gamma=8.0):
        owner = type(self).__name__
        check_positive("lr", lr, owner)
        if init_eta is not None:
            check_positive("init_eta", init_eta, owner)
            reps_rel = 0.0  # as the authors' code: the first step is init_eta, reps_rel is ignored
        else:
            check_positive("reps_rel", reps_rel, owner)
        check_nonneg("weight_decay", weight_decay, owner)
        check_nonneg("eps", eps, owner)
        if avg_gamma is not None:
            check_nonneg("avg_gamma", avg_gamma, owner)
        super().__init__(params, dict(reps_rel=reps_rel, lr=lr, weight_decay=weight_decay, eps=eps,
                                      init_eta=init_eta))
        self.avg_gamma = None if avg_gamma is None else float(avg_gamma)
        self.defaults["avg_gamma"] = self.avg_gamma
        self.uses_eval_mode = self.avg_gamma is not None

    # ------------------------------------------------------------------ the step
    def step(self, closure=None):
        """One DoG step (see the module docstring). Returns the loss (None without a closure)."""
        loss, evals = self._begin(closure)
        gs = self.global_state
        first = gs.get("step", 0) == 0
        groups_state = gs.get("groups") or [{} for _ in self.param_groups]
        new_groups, new_state, writes = [], {}, []
        g_sq_all = d_sq_all = 0.0
        etas_all = []
        for group, gst in zip(self.param_groups, groups_state):
            ps = group["params"]
            wd = group["weight_decay"]
            x0 = [p.data.copy() for p in ps] if first else [self.state[p]["x0"] for p in ps]
            active = [(i, p) for i, p in enumerate(ps) if p.grad is not None]
            grads = {i: (p.grad + wd * p.data if wd > 0 else p.grad) for i, p in active}
            etas, gst = self._group_etas(group, ps, x0, grads, dict(gst), first, new_state)
            new_groups.append(gst)
            for i, p in active:
                g = grads[i]
                new = p.data - etas[i] * g
                g_sq_all += _sq(g)
                d_sq_all += _sq(new - p.data)
                writes.append((p, new))
            if first:
                for p, x in zip(ps, x0):
                    new_state.setdefault(p, {})["x0"] = x
            etas_all.append(etas)
        # commit: nothing above changed the parameters or the state
        for p, new in writes:
            p.data[...] = new
        for p, s in new_state.items():
            self.state.setdefault(p, {}).update(s)
        gs["groups"] = new_groups
        gs["step"] = gs.get("step", 0) + 1
        if self.avg_gamma is not None:
            self._average()
        extra = dict(avg_t=gs.get("avg_t"))
        if self._layerwise:
            lr = math.sqrt(d_sq_all / g_sq_all) if g_sq_all > 0 else math.nan
            tensors = [self.state.get(p, {}) for p in self.params()]
            extra.update(etas=[e for d in etas_all for e in d.values()],
                         rbar=[s["rbar"] for s in tensors if "rbar" in s], G=[s["G"] for s in tensors if "G" in s])
        else:
            lr = new_groups[0]["eta"]
            extra.update(lrs=[gst["eta"] for gst in new_groups], rbar=new_groups[0]["rbar"], G=new_groups[0]["G"])
        self._record(loss, evals, lr, g_sq_all, d_sq_all, **extra)
        return loss

    def _group_etas(self, group, ps, x0, grads, gst, first, new_state):
        """DoG: one r̄, G, η for the whole group (its tensors as one long vector)."""
        if first:
            # r̄_0 = reps_rel·(1 + ‖x0‖), ‖x0‖ over every tensor of the group
            gst["rbar"] = group["reps_rel"] * (1 + math.sqrt(sum(_sq(p.data) for p in ps)))
            gst["G"] = sum(_sq(g) for g in grads.values()) + group["eps"]
        else:
            dist = math.sqrt(sum(_sq(p.data - x) for p, x in zip(ps, x0)))
            gst["rbar"] = max(gst["rbar"], dist)  # r̄_t = max(r̄_{t−1}, ‖x_t − x0‖)
            gst["G"] = gst["G"] + sum(_sq(g) for g in grads.values())  # G_t = Σ_{i≤t} ‖g_i‖² (+ eps)
        if not gst["G"] > 0:
            raise ValueError(f"{type(self).__name__}: G = Σ‖g‖² + eps is {gst['G']!r}; DoG needs G > 0 "
                             "(a zero gradient with eps = 0); parameters unchanged")
        eta = dog_eta(gst["rbar"], gst["G"], group["lr"])
        if first and group["init_eta"] is not None:
            eta = float(group["init_eta"])
        gst["eta"] = eta
        return {i: eta for i in grads}, gst

    def _average(self):
        """The authors' ``PolynomialDecayAverager.step()`` after every optimizer step (t = 1, 2, ...)."""
        gs = self.global_state
        t = gs.get("avg_t", 1)
        for p in self.params():
            st = self.state.setdefault(p, {})
            avg = st.get("avg")
            if avg is None:
                avg = p.data.copy()  # the averager's deepcopy of the model; t = 1 overwrites it
            st["avg"] = polynomial_average(avg, p.data, t, self.avg_gamma)
        gs["avg_t"] = t + 1

    # ------------------------------------------------------------------ train / eval
    def eval(self):
        """Put the averaged iterate x̄ into the parameters (no-op without averaging or before the first step)."""
        if self.avg_gamma is None or not self.global_state.get("train_mode", True):
            return self
        for p in self.params():
            st = self.state.get(p)
            if st and "avg" in st:
                st["x_train"] = p.data.copy()
                p.data[...] = st["avg"]
        self.global_state["train_mode"] = False
        return self

    def train(self):
        """Put the training iterate back into the parameters (undoes ``eval()``)."""
        if self.global_state.get("train_mode", True):
            return self
        for p in self.params():
            st = self.state.get(p)
            if st and "x_train" in st:
                p.data[...] = st.pop("x_train")
        self.global_state["train_mode"] = True
        return self


@register_optimizer("ldog")
class LDoG(DoG):
    """L-DoG: DoG's rule per tensor (each tensor its own r̄, G and η); otherwise as ``DoG``.

    ``LDoG(params, reps_rel=1e-6, lr=1.0, weight_decay=0.0, eps=1e-8, init_eta=None, avg_gamma=8.0)``.
    Per-tensor state ``rbar``, ``G``, ``eta`` in ``self.state``. ``last_step["lr"]`` = ‖Δθ‖/‖g‖.
    """

    _layerwise = True

    def _group_etas(self, group, ps, x0, grads, gst, first, new_state):
        """L-DoG: r̄, G and η per tensor (kept in ``self.state``)."""
        etas = {}
        for i, p in enumerate(ps):
            if i not in grads:
                continue
            st = dict(self.state.get(p, {}))
            g_sq = _sq(grads[i])
            if "G" not in st:
                rbar = group["reps_rel"] * (1 + math.sqrt(_sq(p.data)))
                G = g_sq + group["eps"]
            else:
                rbar = max(st["rbar"], math.sqrt(_sq(p.data - x0[i])))
                G = st["G"] + g_sq
            if not G > 0:
                raise ValueError(f"LDoG: G = ‖g‖² + eps of parameter {i} is {G!r}; L-DoG needs G > 0; parameters unchanged")
            eta = dog_eta(rbar, G, group["lr"])
            if first and group["init_eta"] is not None:
                eta = float(group["init_eta"])
            new_state.setdefault(p, {}).update(rbar=rbar, G=G, eta=eta)
            etas[i] = eta
        return etas, {}
