"""QLABGrad, QLAB and FindPLR as ``torch.optim.Optimizer``s: the semantics of :mod:`qlabref.optim.qlab`.

Read :mod:`qlabref.optim.qlab`'s docstring (``python -m pydoc qlabref.optim.qlab``) for the algorithm,
the edge cases and the paper's ambiguities; this module implements the very same rules on torch
tensors (CPU or CUDA, float32 or float64), with the same defaults, the same ``last_step`` keys and the
same exceptions (``qlabref.optim.NonFiniteLossError``, ``qlabref.optim.FindPLRError``). FindPLR's
loops and the fallback rules are *shared code*, not copies: they come from ``qlabref.optim.qlab``.

A ten-line loop::

    import torch, qlabref.torch as qt
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 100), torch.nn.ReLU(),
                                torch.nn.Linear(100, 10))
    opt = qt.QLABGrad(model.parameters())          # ᾱ from FindPLR (alpha0 = 1.0) at the first step
    for x, y in loader:
        loss = opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
        print(opt.last_step["loss"], opt.last_step["lr"])

``step(closure)``: **the closure is forward only** and returns the minibatch loss tensor (do not call
``zero_grad`` or ``backward`` in it: the optimizer zeroes the gradients and runs ``backward``, as in
``qr.optim``). A step calls the closure 2 times (forward + backward, then the probe forward g(ᾱ) under
``torch.no_grad()``), 1 + FindPLR's probes on a FindPLR step, 1 when ∇L = 0 (``last_step["evals"]``).

What a probe does not change (the paper's g(ᾱ) is a function of θ on *this* minibatch):

- **Module buffers.** While a probe runs, a global forward pre-hook
  (``torch.nn.modules.module.register_module_forward_pre_hook``) snapshots the buffers of every module
  that runs, and they are written back afterwards: BatchNorm ``running_mean``/``running_var`` and
  ``num_batches_tracked`` are bit for bit as if the probe had not happened. The optimizer needs no
  reference to the model for this. (Buffers changed outside a module's ``forward`` call, e.g. by a
  functional ``F.batch_norm`` on your own tensors, are not seen.)
- **Randomness.** The torch RNG state (CPU, and CUDA on the parameters' devices) is saved before the
  main forward and set back to it before every probe, so dropout draws the same masks in the probe as
  in the forward pass; after the step it is left where the main forward left it.
- **A failed step changes nothing.** If the closure raises (in the forward or in a probe), or the loss
  or the gradient is not finite (``NonFiniteLossError``, raised before the update), the parameters,
  the optimizer state, the buffers touched by the forward and the RNG state are restored. (Memory:
  a step holds one copy of the parameters, and QLAB one of its momentum/Adam state, as the reference
  engine does.)

Parameter groups: there is **one** α for all parameters (‖∇L‖² and ∇L·V are sums over every group,
as the paper's scalar learning rate requires), so several groups are allowed but must not set
different options (``ValueError``, as ``qr.optim``).

``state_dict()`` is torch's, plus ``"global_state"`` (step, ᾱ, FindPLR schedule): saving it and loading
it into a fresh optimizer resumes bit-identically.

All of a0, a1, a2, α*, ‖∇L‖² are Python floats (float64) even for float32 parameters; ‖∇L‖² and ∇L·V
are accumulated in float64. The update θ ← θ − α·d is computed as ``θ_saved + (−α·d)`` (one rounding
for the product, one for the sum), the same arithmetic as the reference engine.
"""
from __future__ import annotations

import copy
import math

from .optim.optimizer import NonFiniteLossError, NonFiniteProbeError, _typed_init
from .optim.qlab import (
    DEFAULT_ALPHA0,
    DEFAULT_MAX_EVALS,
    QLAB_DEFAULT_ALPHA0,
    FindPLRError,
    FindPLRNonFiniteError,
    FindPLRResult,
    _check_max_evals,
    _check_positive,
    _findplr_loops,
    _findplr_loops_from_overshoot,
    _parse_findplr,
)

try:
    import torch
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ImportError("qlabref.torch needs PyTorch: pip install 'qlabref[torch]' (or pip install torch)") from _e

__all__ = ["QLABGrad", "QLAB", "find_plr", "FindPLRError", "FindPLRNonFiniteError", "FindPLRResult",
           "NonFiniteLossError", "NonFiniteProbeError",
           "DEFAULT_ALPHA0", "QLAB_DEFAULT_ALPHA0", "DEFAULT_MAX_EVALS"]

_DIRECTIONS = ("sgd", "momentum", "adam")


# ------------------------------------------------------------------------------ module state guard
class _BufferGuard:
    """While active, snapshot the buffers of every module whose forward runs (first call only);
    ``restore()`` writes them back. This is what makes a probe leave BatchNorm statistics alone."""

    def __init__(self):
        self.saved = {}

    def _hook(self, module, args):
        if id(module) not in self.saved and module._buffers:
            self.saved[id(module)] = (module, [(n, b, b.detach().clone()) for n, b in module._buffers.items()
                                               if b is not None])

    def __enter__(self):
        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False

    def restore(self):
        with torch.no_grad():
            for module, entries in self.saved.values():
                for name, obj, clone in entries:
                    obj.copy_(clone)
                    module._buffers[name] = obj


def _rng_devices(params):
    return sorted({p.device.index if p.device.index is not None else torch.cuda.current_device()
                   for p in params if p.device.type == "cuda"})


def _get_rng(devices):
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng(state, devices):
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1]):
        torch.cuda.set_rng_state(s, d)


def _loss_value(loss, owner, where=""):
    """The closure's return value as a float: a 0-d float tensor (the reference engine's rule 1)."""
    if not isinstance(loss, torch.Tensor):
        got = "None" if loss is None else f"a {type(loss).__name__}" + (
            f" ({loss!r})" if isinstance(loss, (bool, int, float)) else "")
        raise TypeError(f"{owner}: the closure must return the loss as a 0-d float torch.Tensor built from the "
                        f"parameters{where}, got {got}")
    if loss.dim() != 0:
        raise TypeError(f"{owner}: the closure must return a 0-d (scalar) loss tensor{where}, got a tensor of shape "
                        f"{tuple(loss.shape)}; reduce it with .sum() or .mean()")
    if not loss.is_floating_point():
        raise TypeError(f"{owner}: the closure must return a float loss tensor{where}, got dtype {loss.dtype}")
    return float(loss.detach().item())


def _total(parts) -> float:
    """Σ of float64 scalar tensors: one device sync when they share a device."""
    if len({p.device for p in parts}) == 1:
        return float(torch.stack(parts).sum().item())
    return float(sum(p.item() for p in parts))


def _sq_norm(tensors) -> float:
    """Σ x² over all tensors, accumulated in float64."""
    return _total([t.detach().double().pow(2).sum() for t in tensors])


def _dot(xs, ys) -> float:
    """Σ x·y over all tensor pairs, accumulated in float64."""
    return _total([(x.double() * y.double()).sum() for x, y in zip(xs, ys)])


def _place(params, saved, alpha, dirs):
    """θ ← saved − α·d in place, as ``saved + (−α·d)``: the reference engine's rounding."""
    with torch.no_grad():
        for p, s, d in zip(params, saved, dirs):
            if alpha == 0.0:
                p.copy_(s)
            else:
                torch.mul(d, -alpha, out=p)
                p.add_(s)


def _restore(params, saved):
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)


# ------------------------------------------------------------------------------------ the shell
class _QLABBase(torch.optim.Optimizer):
    """What QLABGrad and QLAB share: closure evaluation, probes, atomic steps, global state."""

    def __init__(self, params, defaults):
        self.global_state = {}
        #: numbers of the last step (see :mod:`qlabref.optim.qlab`)
        self.last_step = {}
        #: functions called as ``cb(optimizer, last_step)`` after every step
        self.callbacks = []
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        owner = type(self).__name__
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for i, p in enumerate(group["params"]):
            if p.dtype not in (torch.float32, torch.float64):
                self.param_groups.pop()
                raise TypeError(f"{owner}: parameter {i} of group {len(self.param_groups)} has dtype {p.dtype}; "
                                "need float32 or float64")
        for k, v in self.defaults.items():
            if group[k] != v:
                self.param_groups.pop()
                raise ValueError(
                    f"{owner}: parameter group {len(self.param_groups)} sets {k}={group[k]!r} but the optimizer has "
                    f"{k}={v!r}; {owner} uses one learning rate for all parameters (‖∇L‖² is over all of them), "
                    "so per-group options are not supported")

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def _grads(self, params):
        return [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]

    def _evaluate(self, closure, params):
        """Forward with graph, checks (the reference engine's rules 1-2, in its order), backward.
        Returns the loss (float)."""
        owner = type(self).__name__
        if not callable(closure):
            raise TypeError(f"{owner}.step: closure must be a callable returning the loss, got {type(closure).__name__}")
        with torch.enable_grad():
            loss = closure()
        value = _loss_value(loss, owner)
        if not loss.requires_grad:
            raise TypeError(f"{owner}: the closure returned a loss tensor that is not attached to any graph "
                            "(requires_grad=False: computed under torch.no_grad(), detached, or from constants only)")
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"{owner}: the loss at the current parameters is {value}; parameters and optimizer state unchanged")
        for p in params:
            p.grad = None  # (so that a loss built from none of the parameters is recognised below)
        try:
            loss.backward()
        except RuntimeError as e:
            if "second time" in str(e):
                raise RuntimeError(f"{owner}: the closure must be forward only (return the loss; the optimizer "
                                   f"calls zero_grad and backward itself): {e}") from e
            raise
        if all(p.grad is None for p in params):
            raise TypeError(f"{owner}: the closure returned a loss that does not depend on any of the optimizer's "
                            f"{len(params)} parameters (was the model rebuilt, or the optimizer given other tensors?)")
        with_grad = [(i, p) for i, p in enumerate(params) if p.grad is not None]
        if not bool(torch.stack([torch.isfinite(p.grad).all().cpu() for _, p in with_grad]).all()):
            for i, p in with_grad:
                bad = int((~torch.isfinite(p.grad)).sum())
                if bad:
                    raise NonFiniteLossError(
                        f"{owner}: the gradient of parameter {i} (shape {tuple(p.shape)}) has {bad} NaN/inf "
                        f"entr{'y' if bad == 1 else 'ies'} although the loss is {value!r}; parameters and optimizer "
                        "state unchanged")
        return value

    def _probe(self, closure):
        """One forward at the current parameters: no graph, same RNG as the main forward, buffers kept."""
        _set_rng(self._rng_before, self._rng_devs)
        guard = _BufferGuard()
        try:
            with torch.no_grad(), guard:
                loss = closure()
            return _loss_value(loss, type(self).__name__, " (at a probe evaluation)")
        finally:
            guard.restore()

    def _atomic(self, closure, body):
        """Run ``body(params, loss, saved)`` after the main forward + backward (``saved``: copies of the
        parameters from before it); on any exception put back the parameters, the optimizer state, the
        buffers the forward touched and the RNG state."""
        params = self._params()
        self._rng_devs = _rng_devices(params)
        self._rng_before = _get_rng(self._rng_devs)
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {k: (v.clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in s.items()}
                       for p, s in self.state.items()}
        saved_global = copy.deepcopy(self.global_state)
        guard = _BufferGuard()
        try:
            with guard:
                loss = self._evaluate(closure, params)
            rng_after = _get_rng(self._rng_devs)
            result = body(params, loss, saved_params)
            _set_rng(rng_after, self._rng_devs)
        except BaseException:
            _restore(params, saved_params)
            self.state.clear()
            self.state.update(saved_state)
            self.global_state = saved_global
            guard.restore()
            _set_rng(self._rng_before, self._rng_devs)
            raise
        record = self.__dict__.pop("_pending_record", None)
        if record is not None:  # callbacks run once the step is complete; if one raises, the step stands
            self.last_step = record
            for cb in self.callbacks:
                cb(self, record)
        return result

    def _move(self, params, saved, alpha, dirs, kind):
        """θ ← θ_saved − α·d; ``kind`` is ``"probe"`` (a point g(α) is evaluated at) or ``"update"``
        (Algorithm 1, line 8). One method, so a subclass can change it (e.g. to test ``crosscheck``)."""
        _place(params, saved, alpha, dirs)

    def _finish_step(self, record):
        self._pending_record = record  # published by _atomic when the step is complete

    def state_dict(self):
        """torch's state_dict plus ``"optimizer"`` (the class name) and ``"global_state"``."""
        sd = super().state_dict()
        sd["optimizer"] = type(self).__name__
        sd["global_state"] = copy.deepcopy(self.global_state)
        return sd

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()`` of the same class (``TypeError``/``ValueError`` naming the problem,
        as the reference engine's ``load_state_dict``; torch then checks groups and sizes)."""
        owner = type(self).__name__
        where = f"{owner}.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{where}: expected the dict that state_dict() returns, got {type(state_dict).__name__}")
        saved_cls = state_dict.get("optimizer")
        if saved_cls is None:
            raise ValueError(f"{where}: the state has no 'optimizer' entry naming the optimizer class that saved it "
                             f"(torch.optim's, or built by hand?); if it is {owner}'s, set state['optimizer'] = '{owner}'")
        if saved_cls != owner:
            raise ValueError(f"{where}: the state was saved by {saved_cls}, not {owner}; an optimizer's state only "
                             "loads into the same optimizer class")
        if "global_state" not in state_dict:
            raise ValueError(f"{where}: the state has no 'global_state' entry")
        saved = state_dict["param_groups"]
        for k in self.defaults:
            for i, g in enumerate(saved):
                if k not in g:
                    raise KeyError(f"{owner}.load_state_dict: parameter group {i} has no option '{k}' "
                                   f"(another optimizer's state?)")
        sd = dict(state_dict)
        gs = sd.pop("global_state")
        sd.pop("optimizer")
        super().load_state_dict(sd)
        self.defaults.update({k: v for k, v in self.param_groups[0].items() if k in self.defaults})
        self.global_state = copy.deepcopy(gs)


# ----------------------------------------------------------------------------------- Algorithm 1
class QLABGrad(_QLABBase):
    """QLABGrad (Algorithm 1) with FindPLR (Algorithm 2), as ``qlabref.optim.QLABGrad``.

    ``QLABGrad(params, pre_lr=None, alpha0=1.0, findplr="once", max_evals=50, max_lr=None,
    max_lr_factor=None)``; see
    :class:`qlabref.optim.QLABGrad` for the options and this module's docstring for the torch side.
    """

    @_typed_init  # argument types checked as in qr.optim (a string or a bool for a number is a TypeError)
    def __init__(self, params, pre_lr=None, alpha0=DEFAULT_ALPHA0, findplr="once", max_evals=DEFAULT_MAX_EVALS,
                 max_lr=None, max_lr_factor=None):
        owner = "QLABGrad"
        pre_lr = _check_positive("pre_lr", pre_lr, owner, allow_none=True)
        alpha0 = _check_positive("alpha0", alpha0, owner)
        mode, _ = _parse_findplr(findplr, owner)
        if mode == "never" and pre_lr is None:
            raise ValueError("QLABGrad: findplr='never' needs a pre-learning rate: pass pre_lr (0 < ᾱ < 2/M)")
        max_evals = _check_max_evals(max_evals, owner)
        max_lr = _check_positive("max_lr", max_lr, owner, allow_none=True)
        max_lr_factor = _check_positive("max_lr_factor", max_lr_factor, owner, allow_none=True)
        super().__init__(params, dict(pre_lr=pre_lr, alpha0=alpha0, findplr=findplr, max_evals=max_evals,
                                      max_lr=max_lr, max_lr_factor=max_lr_factor))
        self.global_state.update(step=0, pre_lr=pre_lr, findplr_due=pre_lr is None, findplr_runs=0, last_lr=None)

    @property
    def pre_lr(self):
        """The current pre-learning rate ᾱ (None before FindPLR has run)."""
        return self.global_state["pre_lr"]

    def step(self, closure=None):
        if closure is None:
            raise ValueError("QLABGrad.step: needs a closure (forward only, returning the minibatch loss): "
                             "Algorithm 1 evaluates the loss a second time at θ − ᾱ∇L")
        return self._atomic(closure, lambda params, loss, saved: self._step(closure, params, loss, saved))

    def _step(self, closure, params, loss, saved):
        group = self.param_groups[0]
        mode, every = _parse_findplr(group["findplr"], "QLABGrad")
        gs = self.global_state
        t = gs["step"] + 1
        grads = self._grads(params)
        gsq = _sq_norm(grads)
        if not math.isfinite(gsq):
            raise NonFiniteLossError(
                f"QLABGrad: the gradient at the current parameters is not finite (‖∇L‖² = {gsq}) although the "
                f"loss is {loss}; parameters unchanged")
        a0 = loss  # Eq. (6): a0 = g(0) = L(θ_{t−1})
        a1 = -gsq  # Eq. (7): a1 = g'(0) = −‖∇L(θ_{t−1})‖²
        findplr_due = gs["findplr_due"] or (mode == "every" and t > 1 and (t - 1) % every == 0)
        record = dict(step=t, loss=loss, grad_sq_norm=gsq, probe_loss=None, a0=a0, a1=a1, a2=None, alpha_star=None,
                      lr=0.0, pre_lr=gs["pre_lr"], fallback=False, evals=1, findplr_ran=False, findplr_evals=0,
                      findplr_doublings=0, findplr_halvings=0, probe_nonfinite=False, zero_grad=False, capped=False,
                      flat_storage=False)
        if gsq == 0.0:
            # ∇L = 0: g(α) = L for every α; no probe, no step (a due FindPLR waits for the next step).
            record["zero_grad"] = True
            gs.update(step=t, last_lr=0.0, findplr_due=findplr_due)
            self._finish_step(record)
            return loss

        # ``saved``: θ_{t−1} (copied before the forward pass), every point is computed from it

        def g_at(alpha):  # Eq. (3): g(α) = L(θ_{t−1} − α∇L(θ_{t−1})), one probe forward
            self._move(params, saved, alpha, grads, "probe")
            return self._probe(closure)

        pre = gs["pre_lr"]
        findplr_runs = gs["findplr_runs"]
        if findplr_due:
            # Algorithm 2 on this θ and minibatch; its g(0), ∇L are the ones above.
            start = group["alpha0"] if pre is None else pre
            res = _findplr_loops(g_at, loss, gsq, start, group["max_evals"], "QLABGrad")
            pre = res.pre_lr
            findplr_due = False
            findplr_runs += 1
            probe = res.last_value  # = g(ᾱ) at the returned ᾱ, same θ, same minibatch (Eq. 8)
            record.update(findplr_ran=True, findplr_evals=res.probes, findplr_doublings=res.doublings,
                          findplr_halvings=res.halvings)
            record["evals"] += res.probes
        else:
            probe = g_at(pre)  # Eq. (8): g(ᾱ), the one extra forward of Algorithm 1
            record["evals"] += 1
            if not math.isfinite(probe):
                # Non-finite probe = overshoot (Lemma 3): Algorithm 2's second loop from ᾱ.
                record["probe_nonfinite"] = True
                probe, pre, halvings, n = _findplr_loops_from_overshoot(g_at, loss, pre, group["max_evals"],
                                                                        "QLABGrad")
                record["findplr_halvings"] = halvings
                record["evals"] += n

        a2 = (probe - a0 - a1 * pre) / pre**2  # Eq. (9)
        denom = probe - loss + gsq * pre  # g(ᾱ) − L(θ_{t−1}) + ‖∇L‖²ᾱ  (= a2·ᾱ²)
        alpha_star = gsq * pre**2 / (2.0 * denom) if denom != 0.0 else None  # Eq. (10)
        lr = alpha_star  # Algorithm 1, line 4: α_t = α*
        fallback = not (a2 > 0 and alpha_star is not None and math.isfinite(alpha_star))
        if fallback:  # Algorithm 1, lines 5–7: α* < 0 (here: a2 ≤ 0, or α* overflowed) → α_t = ᾱ
            lr = pre
        if group["max_lr"] is not None and lr > group["max_lr"]:
            lr = group["max_lr"]
            record["capped"] = True
        factor = group["max_lr_factor"]
        if factor is not None and lr > factor * pre:  # a remedy, not the paper's algorithm (qr.optim.QLABGrad)
            lr = factor * pre
            record["capped"] = True
        self._move(params, saved, lr, grads, "update")  # Algorithm 1, line 8: θ_t = θ_{t−1} − α_t∇L(θ_{t−1})

        gs.update(step=t, last_lr=lr, pre_lr=pre, findplr_due=findplr_due, findplr_runs=findplr_runs)
        record.update(probe_loss=probe, a2=a2, alpha_star=alpha_star, lr=lr, pre_lr=pre, fallback=fallback)
        self._finish_step(record)
        return loss


# ------------------------------------------------------------------------- QLAB on a direction V
class QLAB(_QLABBase):
    """QLAB on the descent direction V of SGD, momentum or Adam, as ``qlabref.optim.QLAB``.

    ``QLAB(params, direction="momentum" (None = momentum), alpha0=0.01, momentum=0.9, betas=(0.9, 0.999), eps=1e-8,
    max_evals=50, max_lr=None)``. Per-parameter state: ``momentum_buffer`` or ``exp_avg`` /
    ``exp_avg_sq`` (torch's names). ``last_step`` as QLABGrad's plus ``direction``, ``not_descent``,
    ``grad_dot_dir``; ``pre_lr`` holds β = max(α0, α_{t−1}).
    """

    @_typed_init
    def __init__(self, params, direction=None, alpha0=QLAB_DEFAULT_ALPHA0, momentum=0.9, betas=(0.9, 0.999),
                 eps=1e-8, max_evals=DEFAULT_MAX_EVALS, max_lr=None):
        owner = type(self).__name__
        direction = "momentum" if direction is None else direction
        if direction not in _DIRECTIONS:
            raise ValueError(f"{owner}: direction must be one of {', '.join(_DIRECTIONS)}, got {direction!r}")
        alpha0 = _check_positive("alpha0", alpha0, owner)
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ValueError(f"{owner}: invalid momentum {momentum!r} (must be in [0, 1))")
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}") from None
        for name, b in (("betas[0]", b1), ("betas[1]", b2)):
            if not (isinstance(b, (int, float)) and 0.0 <= b < 1.0):
                raise ValueError(f"{owner}: invalid {name} {b!r} (must be in [0, 1))")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"{owner}: invalid eps {eps!r} (must be a finite number >= 0)")
        max_evals = _check_max_evals(max_evals, owner)
        max_lr = _check_positive("max_lr", max_lr, owner, allow_none=True)
        super().__init__(params, dict(direction=direction, alpha0=alpha0, momentum=float(momentum),
                                      betas=(float(b1), float(b2)), eps=float(eps), max_evals=max_evals,
                                      max_lr=max_lr))
        self.global_state.update(step=0, prev_lr=None)

    def _direction(self, params, grads, t, group):
        """The direction's own step with lr = 1 (updates its state), in the reference's arithmetic."""
        direction = group["direction"]
        if direction == "sgd":
            return grads
        dirs = []
        with torch.no_grad():
            if direction == "momentum":
                mu = group["momentum"]
                for p, g in zip(params, grads):
                    st = self.state[p]
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = g.clone()  # torch: the first buffer is a copy of the gradient
                    else:
                        buf.mul_(mu).add_(g)
                    st["momentum_buffer"] = buf
                    dirs.append(buf)
                return dirs
            b1, b2 = group["betas"]
            eps = group["eps"]
            bc1 = 1.0 - b1**t
            bc2 = 1.0 - b2**t
            for p, g in zip(params, grads):
                st = self.state[p]
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.add_((g - m).mul_(1.0 - b1))  # torch: exp_avg.lerp_(grad, 1 − β1)
                v.mul_(b2).add_((g * g).mul_(1.0 - b2))
                denom = v.sqrt().div_(math.sqrt(bc2)).add_(eps)
                dirs.append((m / denom).mul_(1.0 / bc1))  # torch: step_size·m/denom with lr = 1
        return dirs

    def step(self, closure=None):
        owner = type(self).__name__
        if closure is None:
            raise ValueError(f"{owner}.step: needs a closure (forward only, returning the minibatch loss): QLAB "
                             "evaluates the loss a second time at θ − βV")
        return self._atomic(closure, lambda params, loss, saved: self._step(closure, params, loss, saved))

    def _step(self, closure, params, loss, saved):
        owner = type(self).__name__
        group = self.param_groups[0]
        gs = self.global_state
        t = gs["step"] + 1
        grads = self._grads(params)
        gsq = _sq_norm(grads)
        if not math.isfinite(gsq):
            raise NonFiniteLossError(
                f"{owner}: the gradient at the current parameters is not finite (‖∇L‖² = {gsq}) although the loss "
                f"is {loss}; parameters unchanged")
        dirs = self._direction(params, grads, t, group)
        gdotv = _dot(grads, dirs)  # ∇L·V
        not_descent = not gdotv > 0
        if not_descent:  # V is not a descent direction (or ∇L·V is NaN): use the gradient this step
            dirs, gdotv = grads, gsq
        a0 = loss  # Eq. (6)
        a1 = -gdotv  # Eq. (7) along V: g'(0) = −∇L·V
        beta = max(group["alpha0"], gs["prev_lr"] if gs["prev_lr"] is not None else group["alpha0"])
        record = dict(step=t, loss=loss, grad_sq_norm=gsq, grad_dot_dir=gdotv, probe_loss=None, a0=a0, a1=a1, a2=None,
                      alpha_star=None, lr=0.0, pre_lr=beta, fallback=False, evals=1, direction=group["direction"],
                      not_descent=not_descent, probe_nonfinite=False, findplr_halvings=0, zero_grad=False,
                      capped=False)
        if gdotv == 0.0:  # ∇L = 0: nothing to do (the direction's state was still updated)
            gs["step"] = t
            record["zero_grad"] = True
            self._finish_step(record)
            return loss

        def g_at(alpha):  # g(α) = L(θ − αV), one probe forward from the saved θ
            self._move(params, saved, alpha, dirs, "probe")
            return self._probe(closure)

        probe = g_at(beta)  # Eq. (8) at β = max(α0, α_{t−1})
        record["evals"] += 1
        if not math.isfinite(probe):
            record["probe_nonfinite"] = True
            probe, beta, halvings, n = _findplr_loops_from_overshoot(g_at, loss, beta, group["max_evals"], owner)
            record["findplr_halvings"] = halvings
            record["evals"] += n

        a2 = (probe - a0 - a1 * beta) / beta**2  # Eq. (9)
        alpha_star = -a1 / (2.0 * a2) if a2 != 0.0 else None  # Eq. (5)
        lr = alpha_star
        fallback = not (a2 > 0 and alpha_star is not None and math.isfinite(alpha_star))
        if fallback:  # α* < 0 (a2 ≤ 0) → α_t = β
            lr = beta
        if group["max_lr"] is not None and lr > group["max_lr"]:
            lr = group["max_lr"]
            record["capped"] = True
        self._move(params, saved, lr, dirs, "update")  # θ_t = θ_{t−1} − α_t V
        gs.update(step=t, prev_lr=lr)
        record.update(probe_loss=probe, a2=a2, alpha_star=alpha_star, lr=lr, pre_lr=beta, fallback=fallback)
        self._finish_step(record)
        return loss


# ----------------------------------------------------------------------------------- Algorithm 2
class _FindPLRShell(_QLABBase):
    def __init__(self, params):
        super().__init__(params, {})


_FindPLRShell.__name__ = "find_plr"


def find_plr(closure, params, alpha0=DEFAULT_ALPHA0, max_evals=DEFAULT_MAX_EVALS, full_output=False):
    """Algorithm 2 (FindPLR) on torch parameters, as ``qlabref.optim.find_plr``.

    ``closure``: forward only, returns the loss tensor. One forward + backward (g(0), ∇L; ``.grad`` is
    left holding ∇L(θ)), then one probe forward per ᾱ tried (no graph, buffers and RNG as in a step).
    θ is restored exactly before returning or raising. Returns ᾱ (float), or a
    :class:`~qlabref.optim.FindPLRResult` with ``full_output=True``. Raises ``FindPLRError`` after
    ``max_evals`` probes or when ∇L = 0, ``NonFiniteLossError`` when g(0) or ∇L is not finite.
    """
    owner = "find_plr"
    alpha0 = _check_positive("alpha0", alpha0, owner)
    max_evals = _check_max_evals(max_evals, owner)
    shell = _FindPLRShell(params)

    def body(ps, g0, saved):
        grads = shell._grads(ps)
        gsq = _sq_norm(grads)  # ‖∇L(θ)‖² over all parameters
        if not math.isfinite(gsq):
            raise NonFiniteLossError(f"find_plr: the gradient at θ is not finite (‖∇L‖² = {gsq}); parameters unchanged")
        if gsq == 0.0:
            raise FindPLRError(
                f"find_plr: the gradient at θ is zero (g(0) = {g0!r}), so g(ᾱ) = g(0) for every ᾱ and there is no "
                f"pre-learning rate to determine; last ᾱ = {alpha0!r}",
                0, alpha0, g0, 0,
            )

        def g_at(alpha):
            _place(ps, saved, alpha, grads)
            return shell._probe(closure)

        try:
            result = _findplr_loops(g_at, g0, gsq, alpha0, max_evals, owner)
        finally:
            _restore(ps, saved)
        result.evals = result.probes + 1
        return result

    result = shell._atomic(closure, body)
    return result if full_output else result.pre_lr
