"""The bad-input rule of ``qlabref.optim.optimizer`` for EVERY registered optimizer (the registry is walked
at collection time, so optimizers registered later are covered automatically).

For each optimizer, on a fresh step (QLABGrad: the FindPLR step) and on a step after two ordinary
ones (moments, counters, ᾱ in place), and for each closure call k of that step (counted on a clean
copy of the same step), inject:

- an exception at call k                  → that exception; nothing changed;
- a NaN loss from call k on               → ``NonFiniteLossError`` (at k = 0: the loss; at a probe:
                                             no finite probe can be found); nothing changed;
- a finite loss with a NaN gradient at k  → ``NonFiniteLossError`` if call k builds a graph (a probe
                                             has no gradient to check); nothing changed;
- a wrong return value at call k          → ``TypeError`` that names what it got; nothing changed.

"Nothing changed" is bit for bit: every parameter array, ``state_dict()`` (state, hyperparameters,
global state), ``last_step``, and no callback ran. The oracle is the state before the step, saved
independently of the code under test (array copies, ``copy.deepcopy``).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qlabref as qr
from qlabref.autograd import is_grad_enabled
from qlabref.optim import NonFiniteLossError

NAMES = qr.optim.names()


class Injected(Exception):
    pass


def _problem(seed, n_in, n_out):
    rng = np.random.default_rng(seed)
    W = qr.tensor(rng.standard_normal((n_in, n_out)), requires_grad=True)
    b = qr.tensor(rng.standard_normal(n_out), requires_grad=True)
    X = qr.tensor(rng.standard_normal((6, n_in)))
    Y = qr.tensor(rng.standard_normal((6, n_out)))

    def loss():
        r = X @ W + b - Y
        return (r * r).mean() + 0.1  # > 0 (L4 needs L >= 0)

    return [W, b], loss


def _same(a, b, path="state"):
    """Bit-identical comparison of nested state; returns the first difference or None."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return f"{path}: array vs {type(b).__name__}"
        if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            return f"{path}: arrays differ"
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            d = _same(a[k], b[k], f"{path}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _same(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return None
    return None if (a == b) is True or a is b else f"{path}: {a!r} vs {b!r}"


def _setup(name, seed, n_in, n_out, warm):
    params, loss = _problem(seed, n_in, n_out)
    opt = qr.optim.get(name, params)
    for _ in range(warm):
        opt.step(loss)
    return params, loss, opt


def _count_calls(name, seed, n_in, n_out, warm):
    params, loss, opt = _setup(name, seed, n_in, n_out, warm)
    n = [0]

    def closure():
        n[0] += 1
        return loss()

    opt.step(closure)
    return n[0]


WRONG = {
    "float": lambda t: float(t.data),
    "ndarray": lambda t: np.asarray(t.data),
    "none": lambda t: None,
    "shape-(1,)": lambda t: t.reshape(1),
    "int-tensor": lambda t: qr.tensor(np.array(1, dtype=np.int64)),
}


def _inject(kind, k, loss, params, grad_calls):
    calls = [0]

    def closure():
        i = calls[0]
        calls[0] += 1
        if i == k:
            grad_calls.append(is_grad_enabled())
        out = loss()
        if kind == "raise" and i == k:
            raise Injected(f"injected at call {k}")
        if kind == "nan-loss" and i >= k:
            return out * float("nan")
        if kind == "nan-grad" and i == k:
            return out + ((params[0] * 0.0).sqrt() * 1.0).sum()  # forward + 0, gradient 0·∞ = NaN
        if kind.startswith("wrong:") and i == k:
            return WRONG[kind[6:]](out)
        if kind == "detached" and i == k:
            return out.detach()
        return out

    return closure


KINDS = ["raise", "nan-loss", "nan-grad", "detached"] + [f"wrong:{w}" for w in WRONG]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), n_in=st.integers(1, 4), n_out=st.integers(1, 3), warm=st.sampled_from([0, 2]))
def test_every_failed_step_changes_nothing(name, seed, n_in, n_out, warm):
    n_calls = _count_calls(name, seed, n_in, n_out, warm)
    assert n_calls >= 1
    for kind in KINDS:
        for k in range(n_calls):
            params, loss, opt = _setup(name, seed, n_in, n_out, warm)
            before_params = [p.data.copy() for p in params]
            before_sd = copy.deepcopy(opt.state_dict())
            before_last = copy.deepcopy(opt.last_step)
            seen = []
            opt.callbacks.append(lambda o, r: seen.append(r))
            grad_calls = []
            closure = _inject(kind, k, loss, params, grad_calls)
            label = f"{name}, {kind} at call {k} of {n_calls}, warm={warm}"
            with np.errstate(all="ignore"):
                try:
                    opt.step(closure)
                    raised = None
                except Exception as e:  # noqa: BLE001 - the type is asserted below
                    raised = e
            if kind == "raise":
                assert isinstance(raised, Injected), label
            elif kind == "nan-loss":
                assert isinstance(raised, NonFiniteLossError), f"{label}: {raised!r}"
            elif kind == "nan-grad":
                if not grad_calls[0]:  # a probe: no gradient, the step may go on
                    continue
                assert isinstance(raised, NonFiniteLossError) and "gradient" in str(raised), f"{label}: {raised!r}"
            elif kind == "detached":
                if not grad_calls[0]:  # a probe returns a graph-less loss anyway
                    continue
                assert isinstance(raised, TypeError) and "graph" in str(raised), f"{label}: {raised!r}"
            else:
                assert isinstance(raised, TypeError), f"{label}: {raised!r}"
                what = kind[6:]
                expect = {"float": "float", "ndarray": "NumPy array", "none": "None", "shape-(1,)": "shape (1,)",
                          "int-tensor": "int64"}[what]
                assert expect in str(raised), f"{label}: {raised}"
            for p, q in zip(params, before_params):
                assert p.data.dtype == q.dtype and p.data.tobytes() == q.tobytes(), f"{label}: parameters changed"
            diff = _same(opt.state_dict(), before_sd)
            assert diff is None, f"{label}: {diff}"
            assert _same(opt.last_step, before_last) is None, f"{label}: last_step changed"
            assert not seen, f"{label}: a callback ran"
            # and the optimizer still works: the next clean step equals a fresh optimizer's
            opt.step(loss)
            params2, loss2, opt2 = _setup(name, seed, n_in, n_out, warm)
            opt2.step(loss2)
            for p, q in zip(params, params2):
                assert p.data.tobytes() == q.data.tobytes(), f"{label}: the run differs after the failed step"


@pytest.mark.parametrize("name", NAMES)
def test_step_without_closure_checks_the_user_gradient(name):
    params, loss, opt = _setup(name, 0, 3, 2, 0)
    l = loss()
    l.backward()
    params[1].grad[0] = np.inf
    before = [p.data.copy() for p in params]
    sd = copy.deepcopy(opt.state_dict())
    with pytest.raises((NonFiniteLossError, TypeError, ValueError)) as e:
        opt.step()
    if not isinstance(e.value, NonFiniteLossError):  # optimizers that need the closure say so
        assert "closure" in str(e.value)
    for p, q in zip(params, before):
        assert np.array_equal(p.data, q)
    assert _same(opt.state_dict(), sd) is None


def test_callback_runs_after_the_step_and_its_error_leaves_the_step_in_place():
    params, loss, opt = _setup("sgd", 0, 3, 2, 0)

    def boom(o, r):
        raise Injected("callback")

    opt.callbacks.append(boom)
    before = [p.data.copy() for p in params]
    with pytest.raises(Injected):
        opt.step(loss)
    assert not np.array_equal(params[0].data, before[0])  # the step stands
    assert opt.last_step["evals"] == 1


# ------------------------------------------------------------------------- state from elsewhere
def _stepped(name):
    params, loss, opt = _setup(name, 1, 3, 2, 2)
    return opt


@pytest.mark.parametrize("source", NAMES)
def test_state_of_every_other_optimizer_is_refused(source):
    sd = _stepped(source).state_dict()
    src_cls = type(_stepped(source)).__name__
    for target in NAMES:
        params, loss, opt = _setup(target, 2, 3, 2, 1)
        mine = copy.deepcopy(opt.state_dict())
        if type(opt).__name__ == src_cls:
            opt.load_state_dict(copy.deepcopy(sd))  # the same class loads
            continue
        with pytest.raises(ValueError, match=f"saved by {src_cls}, not {type(opt).__name__}"):
            opt.load_state_dict(copy.deepcopy(sd))
        assert _same(opt.state_dict(), mine) is None, f"{source} into {target}: something was loaded"


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_names_the_first_difference_and_loads_nothing(name):
    good = _stepped(name).state_dict()
    cls = good["optimizer"]

    def bad(edit):
        sd = copy.deepcopy(good)
        edit(sd)
        return sd

    with_array = [(i, k) for i, s in good["state"].items() for k, v in s.items()
                  if isinstance(v, np.ndarray) and v.ndim]
    cases = [
        (None, TypeError, "got None"),
        ([1, 2], TypeError, "got list"),
        (bad(lambda sd: sd.pop("optimizer")), ValueError, "no 'optimizer' entry"),
        (bad(lambda sd: sd.update(format=99)), ValueError, "format 99"),
        (bad(lambda sd: sd.pop("param_groups")), ValueError, "param_groups"),
        (bad(lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0]))), ValueError, "2 parameter groups"),
        (bad(lambda sd: sd["param_groups"][0]["params"].pop()), ValueError, "saved 1 parameters"),
        (bad(lambda sd: sd["param_groups"][0].update(bogus=1)), ValueError, "unknown option 'bogus'"),
        (bad(lambda sd: sd["state"].update({7: {}})), ValueError, "state for parameter 7"),
    ]
    first_key = sorted(k for k in good["param_groups"][0] if k not in ("params", "initial_lr"))[0]
    cases.append((bad(lambda sd: sd["param_groups"][0].pop(first_key)), ValueError, f"lacks option '{first_key}'"))
    if with_array:
        i, k = with_array[0]
        cases.append((bad(lambda sd: sd["state"][i].update({k: np.zeros(sd["state"][i][k].shape + (2,))})),
                      ValueError, "has shape"))
        cases.append((bad(lambda sd: sd["state"][i].update({k: sd["state"][i][k].astype(np.float32)})),
                      ValueError, "dtype float32"))
    if good["global_state"]:
        key = sorted(good["global_state"])[0]
        cases.append((bad(lambda sd: sd["global_state"].pop(key)), ValueError, f"lacks '{key}'"))
    for sd, exc, msg in cases:
        params, loss, opt = _setup(name, 2, 3, 2, 1)
        mine = copy.deepcopy(opt.state_dict())
        with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
            opt.load_state_dict(sd)
        assert _same(opt.state_dict(), mine) is None, f"{name}: loaded part of a bad state ({msg})"
    assert cls == type(_stepped(name)).__name__


class _InPlaceProber(qr.optim.Optimizer):
    """A subclass written without care: it changes θ and its state IN PLACE before probing. The base
    class's default "full" snapshot must still make its steps atomic."""

    def __init__(self, params):
        super().__init__(params, dict(lr=0.1))
        self.global_state["step"] = 0

    def step(self, closure):
        self.evaluate(closure)
        for p in self.params():
            st = self.state.setdefault(p, {"m": np.zeros_like(p.data)})
            st["m"] *= 0.9
            st["m"] += p.grad
            p.data -= self.param_groups[0]["lr"] * st["m"]
        self.global_state["step"] += 1
        self.param_groups[0]["lr"] *= 1.5
        self.probe(closure)
        self._finish_step({"evals": 2})


def test_default_full_snapshot_makes_a_careless_subclass_atomic():
    params, loss = _problem(3, 3, 2)
    opt = _InPlaceProber(params)
    opt.step(loss)
    before = [p.data.copy() for p in params]
    sd = copy.deepcopy(opt.state_dict())
    for kind in ("raise", "nan-loss", "wrong:float"):
        with pytest.raises((Injected, NonFiniteLossError, TypeError)):
            opt.step(_inject(kind, 1, loss, params, []))
        for p, q in zip(params, before):
            assert p.data.tobytes() == q.tobytes()
        assert _same(opt.state_dict(), sd) is None


# ------------------------------------------------------------------------- constructor arguments
def _numeric_args(cls):
    import inspect
    import numbers

    sig = inspect.signature(cls.__init__)
    for name, prm in sig.parameters.items():
        d = prm.default
        if name in ("self", "params") or d is inspect.Parameter.empty or d is None:
            continue
        yield name, d, isinstance(d, bool), isinstance(d, numbers.Real) and not isinstance(d, bool)


@pytest.mark.parametrize("name", NAMES)
def test_constructor_arguments_of_the_wrong_type_are_named(name):
    cls = qr.optim.registry.OPTIMIZERS[name]
    p = qr.tensor(np.zeros(2), requires_grad=True)
    also = getattr(cls, "_also_accepts", {})
    for arg, default, is_flag, is_number in _numeric_args(cls):
        bad = [None, "1", [1]] if is_flag else ["0.1", True, None, [0.1]] if is_number else []
        for value in bad:
            if any(value is v or (type(value) is type(v) and value == v) for v in also.get(arg, ())):
                continue  # a documented alternative (DoG's avg_gamma=None)
            if any(type(value) is type(v) for v in also.get(arg, ())):
                with pytest.raises(ValueError, match=arg):
                    cls([p], **{arg: value})
                continue
            with pytest.raises(TypeError, match=arg):
                cls([p], **{arg: value})


def test_frozen_parameters_and_bad_group_options_are_refused():
    p = qr.tensor(np.zeros(2), requires_grad=True)
    q = qr.tensor(np.zeros(2))  # requires_grad=False: would never be updated
    with pytest.raises(ValueError, match="requires_grad=False"):
        qr.optim.SGD([p, q], lr=0.1)
    with pytest.raises(ValueError, match="unknown option"):
        qr.optim.SGD([{"params": [p], "lrr": 0.1}], lr=0.1)
    with pytest.raises(TypeError, match="group 0's lr must be a number"):
        qr.optim.SGD([{"params": [p], "lr": "0.1"}], lr=0.1)


def test_scheduler_state_of_another_scheduler_is_refused():
    from qlabref.optim import lr_scheduler as L

    p = qr.tensor(np.zeros(2), requires_grad=True)
    step = L.StepLR(qr.optim.SGD([p], lr=0.1), step_size=3)
    cos = L.CosineAnnealingLR(qr.optim.SGD([p], lr=0.1), T_max=10)
    before = cos.state_dict()
    with pytest.raises(ValueError, match="saved by StepLR, not CosineAnnealingLR"):
        cos.load_state_dict(step.state_dict())
    with pytest.raises(TypeError, match="got None"):
        cos.load_state_dict(None)
    sd = cos.state_dict()
    sd.pop("T_max")
    with pytest.raises(ValueError, match="lacks 'T_max'"):
        cos.load_state_dict(sd)
    assert cos.state_dict() == before
    with pytest.raises(TypeError, match="gamma must be a number"):
        L.ExponentialLR(qr.optim.SGD([p], lr=0.1), gamma="0.9")
