"""qlabref.torch (QLABGrad, QLAB, find_plr for PyTorch) against the reference engine, step by step.

The PyTorch models are written by hand (tests/torch_models.py), initialised by PyTorch, and their
weights imported into the qlabref models with ``load_torch_state_dict``; both sides then train on the
same fresh random minibatches. In float64 every number of every step must agree to 1e-10 (relative):
loss, probe loss g(ᾱ), α*, α_t, all parameters, BatchNorm running statistics, and every flag of
``last_step``. Sizes (CI time): MLP 784-1000-1000-10, batch 8, 20 steps; paper CNN, batch 4, 20 steps;
ResNet-18 (kuangliu, CIFAR stem) on 16×16 inputs, batch 4, 20 steps on one fixed batch (see there).
"""
import copy
import inspect
import io
import math
import sys

import numpy as np
import pytest

import qlabref as qr
from qlabref import interop

pytestmark = pytest.mark.torch

sys.path.insert(0, __import__("os").path.dirname(__file__))

REL = 1e-10
#: the quantities the agreement is asserted on (a0, a1, a2, ‖∇L‖² are intermediate: a2 is a difference of
#: losses divided by ᾱ², so its relative error is that of the losses times |L|/(a2ᾱ²))
CHECKED = ("loss", "probe_loss", "alpha_star", "lr", "params", "buffers")
FLOAT_KEYS = ("loss", "grad_sq_norm", "probe_loss", "a0", "a1", "a2", "alpha_star", "lr", "pre_lr", "grad_dot_dir")


def _rel(a, b):
    if a is None or b is None:
        return 0.0 if a is b else math.inf
    return 0.0 if a == b else abs(a - b) / max(abs(a), abs(b))


def _max_rel(arrays_a, arrays_b):
    worst = 0.0
    for a, b in zip(arrays_a, arrays_b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0))
        d = np.abs(a - b).max(initial=0)
        worst = max(worst, 0.0 if d == 0 else d / scale)
    return worst


def _pair(torch, tm, qm):
    """Load the hand-written torch model's weights into the qlabref model."""
    interop.load_torch_state_dict(qm, tm.state_dict())
    return tm, qm


def _a2_tie(rec):
    """Whether this step's a2 of Eq. (9) is zero to rounding: a2·ᾱ² = g(ᾱ) − L + ᾱ‖∇L‖² is a difference
    of float64 numbers of size |g(ᾱ)| + |L| + ᾱ‖∇L‖², each correct only to a few ulps of it, so an a2 with
    |a2|·ᾱ² below 8·eps of that size could have either sign in another correct implementation."""
    a2, pre = rec.get("a2"), rec.get("pre_lr")
    if a2 is None or not pre:
        return False
    size = abs(rec["probe_loss"]) + abs(rec["loss"]) + pre * rec["grad_sq_norm"]
    return abs(a2) * pre**2 <= 8 * np.finfo(np.float64).eps * size


def _run(torch, tm, qm, batches, make_t, make_q, check_buffers=False):
    """Train both for len(batches) steps; return the worst relative difference per quantity."""
    import qlabref.torch as qt  # noqa: F401

    to, qo = make_t(list(tm.parameters())), make_q(qm.parameters())
    worst = {k: 0.0 for k in ("params", "buffers", *FLOAT_KEYS)}
    per_step = []  # the worst difference after each step
    _run.parted_at = None
    for xb, yb in batches:
        xt, yt = torch.from_numpy(xb), torch.from_numpy(yb)
        to.step(lambda: torch.nn.functional.cross_entropy(tm(xt), yt))
        qo.step(lambda: qr.cross_entropy(qm(qr.tensor(xb)), yb))
        ts, qs = to.last_step, qo.last_step
        assert set(ts) == set(qs), set(ts) ^ set(qs)
        parted = [k for k in ts if k not in FLOAT_KEYS and k != "flat_storage" and ts[k] != qs[k]]
        if parted and _a2_tie(ts) and _a2_tie(qs):
            # Algorithm 1's branch on the sign of a2 (fallback or not) taken differently on an a2 that is
            # zero to rounding on both sides: both are right, and the runs part here (QLABREF_TEST_SEED=
            # 2670166959, paper CNN: a run that had blown up to a loss of 132, a2·ᾱ² = 0 on one side and one
            # ulp on the other at step 18). The steps before it have been compared; stop there.
            _run.parted_at = ts["step"]
            break
        assert not parted, [(k, ts["step"], ts[k], qs[k]) for k in parted]
        for k in FLOAT_KEYS:
            if k in ts:
                worst[k] = max(worst[k], _rel(ts[k], qs[k]))
        worst["params"] = max(worst["params"], _max_rel([p.detach().numpy() for p in tm.parameters()],
                                                        [p.data for p in qm.parameters()]))
        if check_buffers:
            tb = interop.translate_keys({k: v for k, v in tm.state_dict().items() if "running" in k or "num_b" in k})
            qb = dict(qm.named_buffers())
            assert set(tb) == set(qb)
            worst["buffers"] = max(worst["buffers"], _max_rel([tb[k] for k in sorted(tb)], [qb[k] for k in sorted(qb)]))
        per_step.append(float(max(worst[k] for k in CHECKED)))
    _run.per_step = per_step
    return {k: float(v) for k, v in worst.items()}, to, qo


def _batches(rng, n, shape, b, classes=10):
    return [(rng.normal(size=(b, *shape)), rng.integers(0, classes, b)) for _ in range(n)]


def test_qlabgrad_mlp_float64(torch, rng):
    import qlabref.torch as qt
    import torch_models as tmod

    torch.manual_seed(int(rng.integers(2**31)))
    tm, qm = _pair(torch, tmod.MLP().double(), qr.models.mlp(dtype=np.float64))
    initial, batches = copy.deepcopy(tm.state_dict()), _batches(rng, 20, (1, 28, 28), 8)
    worst, to, qo = _run(torch, tm, qm, batches, qt.QLABGrad, qr.optim.QLABGrad)
    print("MLP float64", worst)
    _assert_agreement(torch, worst, _run.per_step, initial, lambda: qr.models.mlp(dtype=np.float64), batches)
    assert to.global_state.keys() == qo.global_state.keys()
    for k, v in to.global_state.items():
        assert _rel(v, qo.global_state[k]) < 1e-9 if isinstance(v, float) else v == qo.global_state[k], k


def test_qlabgrad_paper_cnn_float64(torch, rng):
    import qlabref.torch as qt
    import torch_models as tmod

    torch.manual_seed(int(rng.integers(2**31)))
    tm, qm = _pair(torch, tmod.PaperCNN().double(), qr.models.paper_cnn(dtype=np.float64))
    initial, batches = copy.deepcopy(tm.state_dict()), _batches(rng, 20, (1, 28, 28), 4)
    worst, _, _ = _run(torch, tm, qm, batches, qt.QLABGrad, qr.optim.QLABGrad)
    print("paper CNN float64", worst)
    _assert_agreement(torch, worst, _run.per_step, initial, lambda: qr.models.paper_cnn(dtype=np.float64), batches)


def _assert_agreement(torch, worst, per_step, initial, make_model, batches):
    """1e-10 over the run; or, on a chaotic draw, 1e-10 over the first 5 steps and no more than 10× the
    spread of reference runs whose initial weights differ in the last bit (see the ResNet test)."""
    got = max(worst[k] for k in CHECKED)
    if got < REL:
        return
    assert max(per_step[:5]) < REL, per_step
    sens = _own_sensitivity(torch, initial, make_model, batches, len(per_step))
    print(f"chaotic draw: worst {got:.1e}, reference's own last-bit spread {sens:.1e}")
    assert got < 10 * sens, (worst, sens, per_step)


def _own_sensitivity(torch, state_dict, make_model, batches, steps_done):
    """How far *reference* runs part when the initial weights differ in their last bit: the trajectory's
    own amplification of rounding, which bounds how closely any second implementation (summing in
    another order) can follow it. Measured on the same quantities as the agreement (loss, probe loss,
    α*, α_t, parameters) and as the largest spread over three perturbations -- every weight × (1 + 2⁻⁵²),
    and two patterns of random signs × 2⁻⁵³ -- against the unperturbed run. One perturbation alone
    understates it: on the paper CNN at QLABREF_TEST_SEED=517691745 (where this test once failed) the
    uniform bump gave a spread of 7.7e-10 (loss and α_t only), the others 3e-9, and the probe loss
    parts more than the loss."""
    keys = [k for k in CHECKED if k not in ("params", "buffers")]
    signs = np.random.default_rng(steps_done)

    def run(perturb):
        qm = make_model()
        interop.load_torch_state_dict(qm, state_dict)
        for p in qm.parameters():
            p.data *= perturb(p.data.shape)
        opt = qr.optim.QLABGrad(qm.parameters())
        trace = []
        for xb, yb in batches[:steps_done]:
            opt.step(lambda: qr.cross_entropy(qm(qr.tensor(xb)), yb))
            trace.append([opt.last_step[k] for k in keys])
        return trace, [p.data.copy() for p in qm.parameters()]

    ta, pa = run(lambda shape: 1.0)
    spread = 0.0
    for perturb in (lambda shape: 1.0 + 2.0**-52,
                    lambda shape: 1.0 + signs.choice([-1.0, 1.0], shape) * 2.0**-53,
                    lambda shape: 1.0 + signs.choice([-1.0, 1.0], shape) * 2.0**-53):
        tb, pb = run(perturb)
        spread = max(spread, max(_rel(x, y) for a, b in zip(ta, tb) for x, y in zip(a, b)), _max_rel(pa, pb))
    return spread


@pytest.mark.slow
def test_qlabgrad_resnet18_batchnorm_float64(torch, rng):
    """ResNet-18 with BatchNorm in training mode: batch statistics in every forward and probe, running
    statistics updated once per step (by the forward, not the probe) on both sides. CI size: 16×16
    inputs, batch 4, 20 steps (~0.5 s per step per side).

    Agreement must be 1e-10 over the 20 steps. On some random draws (about 1 in 6 measured) the
    trajectory itself is chaotic -- QLABGrad's α* on a 4-image BatchNorm swings the loss between 3 and 8
    -- and amplifies the last-bit differences of two correct implementations (PyTorch and NumPy sum in
    different orders) ~5× per step, past 1e-10 by step 20. Then the test still requires 1e-10 over the
    first 5 steps, and beyond that no more than 10× the spread of *reference* runs whose initial
    weights differ in the last bit (the trajectory's own sensitivity, measured here)."""
    import qlabref.torch as qt
    import torch_models as tmod

    torch.manual_seed(int(rng.integers(2**31)))
    tm, qm = _pair(torch, tmod.ResNet18().double(), qr.models.resnet18(dtype=np.float64))
    initial = copy.deepcopy(tm.state_dict())
    batches = _batches(rng, 20, (3, 16, 16), 4)
    worst, _, _ = _run(torch, tm, qm, batches, qt.QLABGrad, qr.optim.QLABGrad, check_buffers=True)
    per_step = _run.per_step
    print("ResNet-18 float64", worst)
    assert int(tm.bn1.num_batches_tracked) == 20  # one update per step: the probes left it alone
    _assert_agreement(torch, worst, per_step, initial, lambda: qr.models.resnet18(dtype=np.float64), batches)


def test_qlabgrad_mlp_float32(torch, rng):
    """float32: both compute α* in float64 from float32 losses; agreement is limited by the two
    libraries' float32 rounding of the forward pass (measured ~1e-6 relative over 10 steps)."""
    import qlabref.torch as qt
    import torch_models as tmod

    torch.manual_seed(int(rng.integers(2**31)))
    tm, qm = _pair(torch, tmod.MLP((784, 200, 10)), qr.models.mlp((784, 200, 10), dtype=np.float32))
    batches = [(x.astype(np.float32), y) for x, y in _batches(rng, 10, (1, 28, 28), 8)]
    worst, _, _ = _run(torch, tm, qm, batches, qt.QLABGrad, qr.optim.QLABGrad)
    print("MLP float32", worst)
    assert worst["params"] < 1e-4 and worst["lr"] < 1e-4 and worst["loss"] < 1e-5, worst


@pytest.mark.parametrize("direction", ["sgd", "momentum", "adam"])
def test_qlab_directions_float64(torch, rng, direction):
    import qlabref.torch as qt
    import torch_models as tmod

    torch.manual_seed(int(rng.integers(2**31)))
    sizes = (784, 64, 64, 10)
    tm, qm = _pair(torch, tmod.MLP(sizes).double(), qr.models.mlp(sizes, dtype=np.float64))
    worst, to, qo = _run(torch, tm, qm, _batches(rng, 20, (1, 28, 28), 8),
                         lambda p: qt.QLAB(p, direction=direction), lambda p: qr.optim.QLAB(p, direction=direction))
    print("QLAB", direction, worst)
    assert max(worst[k] for k in CHECKED) < REL, worst
    if direction != "sgd":  # the direction's state agrees too
        tsd = to.state_dict()["state"]
        for i, p in enumerate(qm.parameters()):
            for k, v in qo.state[p].items():
                assert _max_rel([tsd[i][k].numpy()], [v]) < REL


def test_caps_agree(torch, rng):
    """max_lr and max_lr_factor (remedies, off by default) cap α_t the same way on both sides."""
    import qlabref.torch as qt
    import torch_models as tmod

    torch.manual_seed(int(rng.integers(2**31)))
    sizes = (784, 32, 10)
    for kw in (dict(max_lr_factor=0.01), dict(max_lr=1e-3)):
        tm, qm = _pair(torch, tmod.MLP(sizes).double(), qr.models.mlp(sizes, dtype=np.float64))
        capped = []

        def make(p):
            opt = qt.QLABGrad(p, **kw)
            opt.callbacks.append(lambda o, rec: capped.append(rec["capped"]))
            return opt

        worst, to, qo = _run(torch, tm, qm, _batches(rng, 6, (1, 28, 28), 8), make, lambda p: qr.optim.QLABGrad(p, **kw))
        assert max(worst[k] for k in CHECKED) < REL and any(capped), (worst, capped)


def _himmelblau_pair(torch, start):
    """Himmelblau's function written for torch, and qlabref's own."""
    xt = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    xq = qr.tensor(np.array(start, dtype=np.float64), requires_grad=True)
    f = qr.functions.himmelblau.f
    return xt, xq, (lambda: (xt[0] ** 2 + xt[1] - 11) ** 2 + (xt[0] + xt[1] ** 2 - 7) ** 2), (lambda: f(xq))


def test_findplr_and_fallback_flags_agree(torch):
    """Himmelblau from (−1, −1): FindPLR from 1e-5 doubles 14 times and halves once (qlab.py docstring),
    then fallback steps (a2 ≤ 0) and findplr='every:3' re-runs; every flag and number agrees."""
    import qlabref.torch as qt

    xt, xq, ft, fq = _himmelblau_pair(torch, [-1.0, -1.0])
    rt = qt.find_plr(ft, [xt], alpha0=1e-5, full_output=True)
    rq = qr.optim.find_plr(fq, [xq], alpha0=1e-5, full_output=True)
    assert (rt.doublings, rt.halvings, rt.probes, rt.evals) == (rq.doublings, rq.halvings, rq.probes, rq.evals)
    assert rt.pre_lr == rq.pre_lr and rt.history == rq.history
    assert xt.tolist() == [-1.0, -1.0]  # θ restored
    for start in ([-1.0, -1.0], [-0.27, -0.92], [0.5, 3.0]):
        xt, xq, ft, fq = _himmelblau_pair(torch, start)
        to = qt.QLABGrad([xt], alpha0=1e-3, findplr="every:3")
        qo = qr.optim.QLABGrad([xq], alpha0=1e-3, findplr="every:3")
        flags = set()
        for _ in range(7):  # (later, next to a minimum, ∇L → 0 and relative differences of ‖∇L‖² grow)
            to.step(ft)
            qo.step(fq)
            for k, v in to.last_step.items():
                if k in FLOAT_KEYS:
                    assert _rel(v, qo.last_step[k]) < REL, (k, v, qo.last_step[k])
                elif k != "flat_storage":
                    assert v == qo.last_step[k], (k, v, qo.last_step[k])
            flags |= {k for k in ("fallback", "findplr_ran") if to.last_step[k]}
        assert _max_rel([xt.detach().numpy()], [xq.data]) < REL
        if start == [-0.27, -0.92]:  # next to Himmelblau's maximum: concave, so the fallback is taken
            assert "fallback" in flags
        assert "findplr_ran" in flags


def test_findplr_errors_match(torch):
    import qlabref.torch as qt
    from qlabref.optim import FindPLRError, NonFiniteLossError

    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(FindPLRError) as e:  # zero gradient
        qt.find_plr(lambda: (x * 0).sum() + 1.0, [x])
    assert e.value.loop == 0
    with pytest.raises(FindPLRError) as e:  # unbounded below along −∇L: loop 1 gives up
        qt.find_plr(lambda: -(x - 1.0).pow(2).sum(), [x], max_evals=5)
    assert e.value.loop == 1 and x.tolist() == [0.0, 0.0]
    with pytest.raises(NonFiniteLossError):
        qt.find_plr(lambda: (x * 0).sum() + float("nan"), [x])


def test_defaults_and_argument_errors_match_reference(torch):
    import qlabref.torch as qt

    for tcls, qcls in ((qt.QLABGrad, qr.optim.QLABGrad), (qt.QLAB, qr.optim.QLAB)):
        tsig = {k: v.default for k, v in list(inspect.signature(tcls).parameters.items())[1:]}
        qsig = {k: v.default for k, v in list(inspect.signature(qcls).parameters.items())[1:]}
        qsig.pop("direction", None), tsig.pop("direction", None)
        assert tsig == qsig
    assert inspect.signature(qt.find_plr).parameters["alpha0"].default == 1.0
    bad = [dict(pre_lr=-1.0), dict(alpha0=0.0), dict(findplr="every:0"), dict(findplr="never"), dict(max_evals=0),
           dict(max_lr=float("inf"))]
    for kw in bad:
        x = torch.zeros(2, requires_grad=True)
        with pytest.raises(ValueError) as et:
            qt.QLABGrad([x], **kw)
        with pytest.raises(ValueError) as eq:
            qr.optim.QLABGrad([qr.tensor(np.zeros(2), requires_grad=True)], **kw)
        assert str(et.value) == str(eq.value)
    with pytest.raises(ValueError, match="direction"):
        qt.QLAB([torch.zeros(2, requires_grad=True)], direction="nesterov")


def _bn_model(torch, dropout=0.0):
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten()]
    if dropout:
        layers.append(torch.nn.Dropout(dropout))
    layers.append(torch.nn.Linear(4 * 6 * 6, 3))
    return torch.nn.Sequential(*layers).double()


def test_probe_leaves_batchnorm_and_rng_as_one_forward_would(torch, rng):
    """Oracle: a copy of the model that only runs the forward pass at θ_{t−1} with the same RNG state:
    its running statistics, num_batches_tracked and the RNG state afterwards must equal the optimizer's."""
    import qlabref.torch as qt

    model = _bn_model(torch, dropout=0.5)
    opt = qt.QLABGrad(model.parameters())
    x, y = torch.from_numpy(rng.normal(size=(6, 1, 8, 8))), torch.from_numpy(rng.integers(0, 3, 6))
    for _ in range(4):
        shadow = copy.deepcopy(model)
        theta = [p.detach().clone() for p in model.parameters()]
        state = torch.get_rng_state()
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
        after = torch.get_rng_state()
        torch.set_rng_state(state)
        out = torch.nn.functional.cross_entropy(shadow(x), y)
        assert torch.equal(torch.get_rng_state(), after)
        for k, v in shadow.state_dict().items():
            if "running" in k or "num_batches" in k:
                assert torch.equal(v, model.state_dict()[k]), k
        # the probe saw the forward's dropout mask: g(ᾱ) recomputed by hand with the same RNG state
        out.backward()
        pre = opt.last_step["pre_lr"]
        with torch.no_grad():
            for p, t in zip(shadow.parameters(), theta):
                p.copy_(t + (-pre) * p.grad)
            torch.set_rng_state(state)
            probe = torch.nn.functional.cross_entropy(shadow(x), y).item()
        torch.set_rng_state(after)
        assert abs(probe - opt.last_step["probe_loss"]) <= 1e-12 * abs(probe)
    assert int(model[1].num_batches_tracked) == 4


class _MaskDropout(qr.nn.Module):
    """Dropout for the qlabref side of the test, drawing PyTorch's mask (``empty.bernoulli_(1 − p)``,
    what ``F.dropout`` does on the CPU) from its own generator that mirrors torch's global one. Under
    ``qr.no_state_update()`` (the reference engine's probe) it reuses the last mask."""

    def __init__(self, p, generator):
        super().__init__()
        self.p, self.generator, self.mask = p, generator, None

    def forward(self, x):
        import torch

        if qr.autograd.is_state_update_enabled() or self.mask is None:
            keep = torch.empty(x.shape, dtype=torch.float64).bernoulli_(1 - self.p, generator=self.generator)
            self.mask = keep.div_(1 - self.p).numpy().astype(x.data.dtype)
        return x * qr.tensor(self.mask)


class _QDropMLP(qr.nn.Module):
    def __init__(self, sizes, p, generator):
        super().__init__()
        self.n = len(sizes) - 1
        for i in range(self.n):
            setattr(self, f"fc{i + 1}", qr.nn.Linear(sizes[i], sizes[i + 1], dtype=np.float64, seed=0))
        for i in range(1, self.n):
            setattr(self, f"drop{i}", _MaskDropout(p, generator))

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        for i in range(1, self.n + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.n:
                x = getattr(self, f"drop{i}")(qr.relu(x))
        return x


def test_dropout_does_not_break_agreement(torch, rng):
    import qlabref.torch as qt
    import torch_models as tmod

    seed = int(rng.integers(2**31))
    sizes = (784, 128, 64, 10)
    torch.manual_seed(seed)
    tm = tmod.MLP(sizes, dropout=0.3).double()
    gen = torch.Generator().manual_seed(seed + 1)
    qm = _QDropMLP(sizes, 0.3, gen)
    interop.load_torch_state_dict(qm, tm.state_dict())
    torch.manual_seed(seed + 1)  # the torch side's dropout draws from the global generator
    worst, _, _ = _run(torch, tm, qm, _batches(rng, 20, (1, 28, 28), 8), qt.QLABGrad, qr.optim.QLABGrad)
    print("MLP + dropout float64", worst)
    assert max(worst[k] for k in CHECKED) < REL, worst


def test_state_dict_round_trip_resumes_bit_identically(torch, rng):
    import qlabref.torch as qt

    x, y = torch.from_numpy(rng.normal(size=(6, 1, 8, 8))), torch.from_numpy(rng.integers(0, 3, 6))
    for make in (lambda p: qt.QLABGrad(p, findplr="every:2"), lambda p: qt.QLAB(p, direction="adam"),
                 lambda p: qt.QLAB(p, direction="momentum")):
        model = _bn_model(torch, dropout=0.2)
        opt = make(model.parameters())
        loss = lambda m=model: torch.nn.functional.cross_entropy(m(x), y)  # noqa: E731
        for _ in range(3):
            opt.step(loss)
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}, buf)
        buf.seek(0)
        saved = torch.load(buf)
        clone = _bn_model(torch, dropout=0.2)
        clone.load_state_dict(saved["model"])
        opt2 = make(clone.parameters())
        opt2.load_state_dict(saved["opt"])
        cont = []
        for m, o in ((model, opt), (clone, opt2)):
            torch.set_rng_state(saved["rng"])
            for _ in range(3):
                o.step(lambda m=m: torch.nn.functional.cross_entropy(m(x), y))
            cont.append([p.detach().clone() for p in m.parameters()] + [o.last_step["lr"]])
        for a, b in zip(*cont):
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    with pytest.raises(ValueError, match="no 'optimizer' entry"):
        qt.QLABGrad(model.parameters()).load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())
    with pytest.raises(ValueError, match="saved by QLAB, not QLABGrad"):
        qt.QLABGrad(model.parameters()).load_state_dict(qt.QLAB(model.parameters()).state_dict())


def _snapshot(torch, model, opt):
    return ([p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.global_state),
            {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state(),
            copy.deepcopy(opt.state_dict()["state"]))


def _same(torch, a, b):
    pa, ga, sa, ra, oa = a
    pb, gb, sb, rb, ob = b
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert ga == gb and all(torch.equal(sa[k], sb[k]) for k in sa) and torch.equal(ra, rb)
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])


@pytest.mark.parametrize("which", ["qlabgrad", "qlab-momentum"])
def test_failed_step_changes_nothing(torch, rng, which):
    import qlabref.torch as qt
    from qlabref.optim import NonFiniteLossError

    model = _bn_model(torch, dropout=0.2)
    opt = qt.QLABGrad(model.parameters()) if which == "qlabgrad" else qt.QLAB(model.parameters())
    x, y = torch.from_numpy(rng.normal(size=(6, 1, 8, 8))), torch.from_numpy(rng.integers(0, 3, 6))
    opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
    before = _snapshot(torch, model, opt)
    calls = {"n": 0}

    def raises_in_probe():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("data loader died")
        return torch.nn.functional.cross_entropy(model(x), y)

    with pytest.raises(RuntimeError, match="data loader died"):
        opt.step(raises_in_probe)
    _same(torch, before, _snapshot(torch, model, opt))
    with pytest.raises(NonFiniteLossError):  # BatchNorm ran (and updated its statistics) before the check
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y) * float("inf"))
    _same(torch, before, _snapshot(torch, model, opt))
    with pytest.raises(NonFiniteLossError, match="gradient"):  # finite loss, infinite gradient (√ at 0)
        opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y) + (model[0].bias[0] * 0).abs().sqrt())
    _same(torch, before, _snapshot(torch, model, opt))
    opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
    assert opt.global_state["step"] == 2


def test_closure_mistakes_are_named(torch):
    import qlabref.torch as qt

    w = torch.ones(3, requires_grad=True)
    opt = qt.QLABGrad([w])
    with pytest.raises(TypeError, match="torch.Tensor"):
        opt.step(lambda: 1.0)
    with pytest.raises(TypeError, match="0-d"):
        opt.step(lambda: w * 2)
    with pytest.raises(TypeError, match="0-d"):
        opt.step(lambda: (w * 2).sum().reshape(1))
    with pytest.raises(TypeError, match="graph"):
        opt.step(lambda: (w * 2).sum().detach())
    other = torch.ones(3, requires_grad=True)
    with pytest.raises(TypeError, match="does not depend"):
        opt.step(lambda: (other * 2).sum())
    with pytest.raises(TypeError, match="float"):
        qt.QLABGrad([w]).step(lambda: torch.tensor(3))
    calls = {"n": 0}

    def integer_probe():
        calls["n"] += 1
        return (w * w).sum() if calls["n"] == 1 else torch.tensor(1)

    with pytest.raises(TypeError, match="probe"):
        qt.QLABGrad([w]).step(integer_probe)

    def torch_style():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="forward only"):
        opt.step(torch_style)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(TypeError, match="float32 or float64"):
        qt.QLABGrad([torch.ones(2, dtype=torch.float16, requires_grad=True)])
    for kw in (dict(alpha0="1"), dict(max_evals=True), dict(findplr=3)):  # types, as qr.optim (TypeError)
        with pytest.raises(TypeError) as et:
            qt.QLABGrad([w], **kw)
        with pytest.raises(TypeError) as eq:
            qr.optim.QLABGrad([qr.tensor(np.ones(3), requires_grad=True)], **kw)
        assert str(et.value) == str(eq.value)


def test_callbacks_run_after_a_complete_step(torch):
    import qlabref.torch as qt

    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = qt.QLABGrad([w])
    seen = []
    opt.callbacks.append(lambda o, rec: seen.append((rec["step"], o.global_state["step"], w.detach().clone())))
    opt.step(lambda: (w * w).sum())
    assert seen[0][:2] == (1, 1) and torch.equal(seen[0][2], w.detach())

    def boom(o, rec):
        raise RuntimeError("callback failed")

    opt.callbacks.append(boom)
    with pytest.raises(RuntimeError, match="callback failed"):
        opt.step(lambda: (w * w).sum())
    assert opt.global_state["step"] == 2 and opt.last_step["step"] == 2  # the step stands


def test_parameter_groups_share_one_alpha(torch, rng):
    import qlabref.torch as qt

    x, y = torch.from_numpy(rng.normal(size=(6, 1, 8, 8))), torch.from_numpy(rng.integers(0, 3, 6))
    a, b = _bn_model(torch), _bn_model(torch)
    oa = qt.QLABGrad(a.parameters())
    ob = qt.QLABGrad([{"params": list(b[0].parameters())}, {"params": list(b[1].parameters()) + list(b[4].parameters())}])
    for _ in range(3):
        oa.step(lambda: torch.nn.functional.cross_entropy(a(x), y))
        ob.step(lambda: torch.nn.functional.cross_entropy(b(x), y))
        assert oa.last_step["lr"] == ob.last_step["lr"]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="one learning rate"):
        qt.QLABGrad([{"params": list(b[0].parameters()), "alpha0": 0.1}, {"params": list(b[4].parameters())}])


def test_zero_gradient_step(torch):
    import qlabref.torch as qt

    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = qt.QLABGrad([w])
    assert opt.step(lambda: (w * w).sum() + 2.0) == 2.0
    s = opt.last_step
    assert s["zero_grad"] and s["evals"] == 1 and s["lr"] == 0.0 and s["alpha_star"] is None
    assert opt.global_state["findplr_due"]


def test_cuda_matches_cpu(torch, rng):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA path of qlabref.torch is not exercised on this machine")
    import qlabref.torch as qt

    x, y = rng.normal(size=(6, 1, 8, 8)), rng.integers(0, 3, 6)
    runs = []
    for dev in ("cpu", "cuda"):
        model = _bn_model(torch).to(dev)
        opt = qt.QLABGrad(model.parameters())
        xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
        for _ in range(5):
            opt.step(lambda: torch.nn.functional.cross_entropy(model(xt), yt))
        runs.append([p.detach().cpu().numpy() for p in model.parameters()])
    assert _max_rel(*runs) < 1e-9
