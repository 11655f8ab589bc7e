"""``qr.crosscheck`` / ``qlabref crosscheck`` and ``qr.interop.from_torch``.

Deliberately wrong PyTorch QLABGrad variants must be caught at step 1: a probe that updates the
BatchNorm statistics, and a step taken from the probed point instead of θ_{t−1}."""
import numpy as np
import pytest

import qlabref as qr
from qlabref import interop

pytestmark = pytest.mark.torch


def _bn_net(torch, dtype=None):
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, stride=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _data(rng, n=48):
    return rng.normal(size=(n, 1, 12, 12)), rng.integers(0, 3, n)


def test_crosscheck_agrees_on_own_model_and_data(torch, rng):
    X, y = _data(rng)
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-3)):
        res = qr.crosscheck(_bn_net(torch), X, y, steps=6, batch_size=8, seed=int(rng.integers(100)), dtype=dtype)
        assert res.ok, res.table()
        assert max(res.max_diffs().values()) < tol
        assert res.verdict().startswith("AGREE")
    res = qr.crosscheck(_bn_net(torch), X, y, optimizer="adam", options={"lr": 1e-2}, steps=4, batch_size=8)
    assert res.ok, res.table()
    res = qr.crosscheck(qr.models.mlp((144, 20, 3), dtype=np.float64), X, y, optimizer="qlab-adam", steps=4,
                        batch_size=8)
    assert res.ok, res.table()


def _wrong_variants():
    import torch

    import qlabref.torch as qt

    class ProbeUpdatesBatchNorm(qt.QLABGrad):
        """The probe runs as a plain training-mode forward: BatchNorm statistics move."""

        def _probe(self, closure):
            torch.set_rng_state(self._rng_before[0])
            with torch.no_grad():
                return float(closure())

    class StepFromProbedPoint(qt.QLABGrad):
        """θ_t = (θ_{t−1} − ᾱ∇L) − α_t∇L: the update starts where the probe left the parameters."""

        def _move(self, params, saved, alpha, dirs, kind):
            if kind == "update":
                with torch.no_grad():
                    for p, d in zip(params, dirs):
                        p.sub_(alpha * d)
            else:
                super()._move(params, saved, alpha, dirs, kind)

    return {"buffers": ProbeUpdatesBatchNorm, "params": StepFromProbedPoint}


@pytest.mark.parametrize("variant", ["buffers", "params"])
def test_crosscheck_catches_wrong_variants_at_step_1(torch, rng, variant):
    X, y = _data(rng)
    cls = _wrong_variants()[variant]
    res = qr.crosscheck(_bn_net(torch), X, y, steps=3, batch_size=8, torch_optimizer=lambda p: cls(p))
    step, quantity, diff = res.first_failure
    assert step == 1 and quantity == variant and diff > 1e-6, res.table()
    assert res.verdict().startswith(f"DIFFER") and "step 1" in res.verdict()


def test_crosscheck_command(torch, rng, tmp_path, capsys):
    from qlabref import cli

    X, y = _data(rng, 40)
    np.savez(tmp_path / "d.npz", X=X.astype(np.float32), y=y)
    (tmp_path / "m.py").write_text("import torch\n"
                                   "def build():\n"
                                   "    torch.manual_seed(1)\n"
                                   "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 16),\n"
                                   "                               torch.nn.ReLU(), torch.nn.Linear(16, 3))\n")
    out = tmp_path / "out"
    rc = cli.main(["crosscheck", "--model", f"{tmp_path / 'm.py'}:build", "--data", str(tmp_path / "d.npz"),
                   "--steps", "4", "--batch-size", "8", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert text.count("AGREE") == 2 and (out / "crosscheck.png").stat().st_size > 0
    lines = (out / "crosscheck.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 4 and "d_alpha_star" in lines[0]


def test_crosscheck_command_user_errors(torch, tmp_path, capsys):
    from qlabref import cli

    for argv, msg in ((["--model", "nosuch"], "unknown model"), (["--data", str(tmp_path / "x.npz")], "no such file"),
                      (["--model", f"{tmp_path / 'none.py'}:f"], "no such file")):
        rc = cli.main(["crosscheck", *argv])
        assert rc == 2 and msg in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ from_torch
def test_from_torch_sequential_same_function(torch, rng):
    net = _bn_net(torch).double()
    x = rng.normal(size=(5, 1, 12, 12))
    for mode in (True, False):
        net.train(mode)
        qm = interop.from_torch(net)
        assert qm.training == mode and qm.dtype == np.float64
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        got = qm(qr.tensor(x)).data
        assert qr.relative_error(got, want) < 1e-12
    assert set(qm.state_dict()) == set(net.state_dict())


def test_from_torch_resnets(torch, rng):
    import sys

    sys.path.insert(0, __import__("os").path.dirname(__file__))
    import torch_models as tmod

    torch.manual_seed(int(rng.integers(2**31)))
    kuangliu = tmod.ResNet18().double().eval()
    for m in kuangliu.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    qm = interop.from_torch(kuangliu)
    assert qm.variant == "cifar" and not qm.training
    x = rng.normal(size=(2, 3, 16, 16))
    with torch.no_grad():
        want = kuangliu(torch.from_numpy(x)).numpy()
    assert qr.relative_error(qm(qr.tensor(x)).data, want) < 1e-10
    # torchvision's layout and names, written out (torchvision itself is not a dependency)
    tv = tmod.TorchvisionResNet18(num_classes=7).double().train()
    qm = interop.from_torch(tv)
    assert qm.variant == "imagenet" and qm.num_classes == 7 and qm.training
    x = rng.normal(size=(2, 3, 32, 32))
    with torch.no_grad():
        want = tv(torch.from_numpy(x)).numpy()
    assert qr.relative_error(qm(qr.tensor(x)).data, want) < 1e-10
    # a model made by to_torch comes back as the model it came from
    back = interop.from_torch(interop.to_torch(qr.models.paper_cnn(dtype=np.float64, seed=3)))
    assert isinstance(back, qr.models.PaperCNN)
    assert all(np.array_equal(v, qr.models.paper_cnn(dtype=np.float64, seed=3).state_dict()[k])
               for k, v in back.state_dict().items())


def test_from_torch_names_the_first_unsupported_submodule(torch):
    nn = torch.nn
    with pytest.raises(TypeError, match=r"'2' \(Tanh\)"):
        interop.from_torch(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 2)))
    with pytest.raises(TypeError, match=r"'1.0' \(LSTM\)"):
        interop.from_torch(nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.LSTM(4, 4))))
    with pytest.raises(TypeError, match="groups=2"):
        interop.from_torch(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x) * 2

    with pytest.raises(TypeError, match="Custom.*fc \\(Linear\\)"):
        interop.from_torch(Custom())


@pytest.mark.parametrize("flatten", [False, True])
def test_sequential_mlp_loads_into_qr_mlp(torch, rng, flatten):
    nn = torch.nn
    torch.manual_seed(int(rng.integers(2**31)))
    layers = [nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10)]
    net = nn.Sequential(*([nn.Flatten()] if flatten else []), *layers).double()
    model = qr.models.mlp(dtype=np.float64)
    with pytest.raises(qr.nn.module.StateDictError):  # without the option the keys do not match
        interop.load_torch_state_dict(model, net.state_dict())
    interop.load_torch_state_dict(model, net.state_dict(), from_sequential=True)
    x = rng.normal(size=(3, 1, 28, 28))
    with torch.no_grad():
        want = net(torch.from_numpy(x if flatten else x.reshape(3, -1))).numpy()
    assert qr.relative_error(model(qr.tensor(x)).data, want) < 1e-12
    with pytest.raises(ValueError, match="2 layers"):
        interop.load_torch_state_dict(model, nn.Sequential(*layers[:3]).state_dict(), from_sequential=True)
    with pytest.raises(TypeError, match="qr.models.MLP"):
        interop.load_torch_state_dict(qr.models.paper_cnn(), net.state_dict(), from_sequential=True)


def test_crosscheck_with_dropout_compares_mask_for_mask(torch, rng):
    nn = torch.nn
    torch.manual_seed(int(rng.integers(2**31)))
    net = nn.Sequential(nn.Flatten(), nn.Linear(144, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 16), nn.ReLU(),
                        nn.Dropout(0.5), nn.Linear(16, 3))
    X, y = _data(rng)
    state = torch.get_rng_state()
    res = qr.crosscheck(net, X, y, steps=8, batch_size=8, seed=int(rng.integers(100)))
    assert res.ok, res.table()
    assert res.max_diffs()["loss"] < 1e-12 and res.max_diffs()["params"] < 1e-11  # same masks on both sides
    assert torch.equal(torch.get_rng_state(), state)  # the user's RNG is left alone
    assert isinstance(interop.from_torch(net)[3], qr.nn.Dropout)
    assert isinstance(interop.to_torch(interop.from_torch(net))[6], nn.Dropout)
