"""What one step of ``qlabref.torch.QLABGrad``/``QLAB`` costs, counted (not timed), on the CPU.

Two counters over one ordinary step (no FindPLR, no fallback probe, nothing non-finite):

- **reads**: calls of ``Tensor.item``, ``__float__``, ``__bool__``, ``__int__``, ``cpu``, ``tolist`` and
  ``numpy`` on ANY tensor (on the CPU a device read cannot be told from another read, so every call
  counts; on a GPU each of these is a device synchronisation). The rule: at most 2 per step.
- **ops**: aten operations dispatched during the step (a ``TorchDispatchMode`` that counts every op it
  sees), minus those of the model's own work counted the same way: forward with graph, backward, and
  a forward under ``torch.no_grad()``. The rule: what is left, the optimizer's own ops, does not grow
  with the number of parameter tensors: ResNet-18's 62 tensors cost about what an MLP's 6 cost.

Counted this way, the optimizer before issue 20 made 108 ops and 10 read calls per step on the
6-tensor MLP, 1,304 ops and 66 read calls on ResNet-18 (62 tensors); now 19 ops and 1 read, 25 ops and
1 read. The oracle for "the model's own work" is an independent count of the same forward/backward/
forward outside the optimizer.
"""
import collections
import contextlib
import os
import sys

import pytest

pytestmark = pytest.mark.torch

sys.path.insert(0, os.path.dirname(__file__))

READ_METHODS = ("item", "__float__", "__bool__", "__int__", "cpu", "tolist", "numpy")


@contextlib.contextmanager
def count_reads(torch):
    """Count the calls of the tensor methods that read a tensor's values to the host."""
    counts = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READ_METHODS}

    def wrap(name, fn):
        def reader(self, *args, **kwargs):
            counts[name] += 1
            return fn(self, *args, **kwargs)
        return reader

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def op_counter(torch):
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

        @property
        def total(self):
            return sum(self.ops.values())

    return OpCounter()


def mlp(torch):
    import torch_models as tmod

    torch.manual_seed(0)
    return tmod.MLP((48, 32, 32, 10)), torch.randn(4, 3, 4, 4), torch.randint(0, 10, (4,))


def resnet18(torch):
    import torch_models as tmod

    torch.manual_seed(0)
    return tmod.ResNet18(10), torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,))


MODELS = {"mlp": mlp, "resnet18": resnet18}


def model_work(torch, model, closure):
    """(ops, reads) of the model's own work in a step: forward with graph, backward, no-grad forward."""
    counter = op_counter(torch)
    params = list(model.parameters())
    with count_reads(torch) as reads, counter:
        loss = closure()
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            closure()
    return counter.total, sum(reads.values())


def step_cost(torch, name, make_opt, warm=2):
    """(optimizer's own ops, reads, number of parameter tensors, op names) of one ordinary step."""
    model, x, y = MODELS[name](torch)
    model.train()
    closure = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    opt = make_opt(model.parameters())
    for _ in range(warm):  # the first steps allocate the saved copies and find the modules with buffers
        opt.step(closure)
    base_ops, base_reads = model_work(torch, model, closure)
    counter = op_counter(torch)
    with count_reads(torch) as reads, counter:
        opt.step(closure)
    assert opt.last_step["evals"] == 2 and not opt.last_step.get("findplr_ran") \
        and not opt.last_step["probe_nonfinite"], opt.last_step  # an ordinary step
    ops = counter.ops.copy()
    return counter.total - base_ops, sum(reads.values()) - base_reads, len(list(model.parameters())), ops


OPTIMIZERS = {
    "qlabgrad": lambda qt: (lambda p: qt.QLABGrad(p, pre_lr=1e-3, findplr="never")),
    "qlabgrad-findplr-once": lambda qt: (lambda p: qt.QLABGrad(p)),
    "qlab-sgd": lambda qt: (lambda p: qt.QLAB(p, direction="sgd")),
    "qlab-momentum": lambda qt: (lambda p: qt.QLAB(p, direction="momentum")),
    "qlab-adam": lambda qt: (lambda p: qt.QLAB(p, direction="adam", alpha0=1e-3)),
}


@pytest.mark.parametrize("which", list(OPTIMIZERS))
def test_an_ordinary_step_reads_at_most_twice_and_its_ops_do_not_grow_with_the_tensor_count(torch, which):
    import qlabref.torch as qt

    make = OPTIMIZERS[which](qt)
    cost = {name: step_cost(torch, name, make) for name in MODELS}
    (mlp_ops, mlp_reads, n_mlp, _), (rn_ops, rn_reads, n_rn, rn_names) = cost["mlp"], cost["resnet18"]
    print(which, {k: v[:3] for k, v in cost.items()})
    assert (n_mlp, n_rn) == (6, 62)
    assert mlp_reads <= 2 and rn_reads <= 2, cost
    # 10x the tensors: the optimizer's own ops must stay about the same (the buffer guard adds a
    # constant for ResNet-18's BatchNorm buffers: one foreach copy per dtype)
    assert mlp_ops > 0 and rn_ops <= 1.5 * mlp_ops, (mlp_ops, rn_ops, rn_names)
    assert rn_ops <= 60, (rn_ops, rn_names)


def test_the_counters_can_fail(torch):
    """The counters see per-tensor work and reads: torch.optim.SGD without foreach, plus a read per
    tensor, grows with the tensor count and reads 62 times on ResNet-18."""

    class PerTensor(torch.optim.SGD):
        def step(self, closure):
            loss = closure()
            self.zero_grad(set_to_none=True)
            loss.backward()
            for g in self.param_groups:
                for p in g["params"]:
                    bool(torch.isfinite(p.grad).all())
            super().step()
            with torch.no_grad():
                closure()
            return loss

    class Last(PerTensor):
        last_step = {"evals": 2, "probe_nonfinite": False}

    ops_mlp, reads_mlp, _, _ = step_cost(torch, "mlp", lambda p: Last(p, lr=1e-3, foreach=False))
    ops_rn, reads_rn, _, _ = step_cost(torch, "resnet18", lambda p: Last(p, lr=1e-3, foreach=False))
    assert (reads_mlp, reads_rn) == (6, 62)
    assert ops_rn > 5 * ops_mlp


def test_cuda_step_synchronises_at_most_twice(torch):
    """On a CUDA device: ``torch.cuda.set_sync_debug_mode("warn")`` warns at every synchronising call;
    an ordinary step of ResNet-18 makes at most 2 (the RNG save/restore and the foreach ops make none)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the synchronisation count is checked on the GPU run (.ci/gpu/issue20.sh)")
    import warnings

    import qlabref.torch as qt

    for name in MODELS:
        model, x, y = MODELS[name](torch)
        model, x, y = model.cuda(), x.cuda(), y.cuda()
        closure = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
        opt = qt.QLABGrad(model.parameters(), pre_lr=1e-3, findplr="never")
        opt.step(closure)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                opt.step(closure)
            with warnings.catch_warnings(record=True) as control:  # the counter can fail: one .item()
                warnings.simplefilter("always")
                x.sum().item()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in seen if "synchroniz" in str(w.message)]
        print(name, "synchronising calls in one step:", len(syncs))
        assert sum("synchroniz" in str(w.message) for w in control) >= 1, "sync debug mode did not warn"
        assert len(syncs) <= 2, [str(w.message) for w in syncs]


@pytest.mark.parametrize("which", ["qlabgrad", "qlab-sgd", "qlab-momentum", "qlab-adam"])
def test_cuda_fast_path_matches_cpu(torch, which):
    """The foreach fast path on CUDA (fused multi-tensor kernels) against the same optimizer on the CPU,
    float64, ResNet-18 with BatchNorm: parameters, buffers and every float of last_step agree to 1e-9."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: checked on the GPU run (.ci/gpu/issue20.sh)")
    import qlabref.torch as qt

    make = {"qlabgrad": lambda p: qt.QLABGrad(p), "qlab-sgd": lambda p: qt.QLAB(p, direction="sgd"),
            "qlab-momentum": lambda p: qt.QLAB(p, direction="momentum"),
            "qlab-adam": lambda p: qt.QLAB(p, direction="adam", alpha0=1e-3)}[which]
    runs = []
    for dev in ("cpu", "cuda"):
        model, x, y = resnet18(torch)
        model, x, y = model.double().to(dev), x.double().to(dev), y.to(dev)
        opt = make(model.parameters())
        records = []
        for _ in range(4):
            opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
            records.append(opt.last_step)
        runs.append(([t.detach().cpu() for t in model.state_dict().values()], records))
    (pa, ra), (pb, rb) = runs
    for a, b in zip(pa, pb):
        assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12)
    for a, b in zip(ra, rb):
        for k, v in a.items():
            if isinstance(v, float):
                assert b[k] == pytest.approx(v, rel=1e-9, abs=1e-15), (k, v, b[k])
            else:
                assert b[k] == v, (k, v, b[k])
