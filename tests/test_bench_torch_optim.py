"""``qlabref bench --parts torch-optim`` (qlabref.bench_torch_optim): the part runs on tiny sizes and
records its three steps and ratios; the lean step computes the same step as ``qlabref.torch.QLABGrad``
(an oracle check of what the bench compares against). No timing is asserted: speed is measured."""
from __future__ import annotations

import json

import pytest

from qlabref import bench, cli

pytestmark = pytest.mark.torch


def test_torch_optim_part_is_recorded(torch, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QLABREF_TORCH_OPTIM_DEVICES", "cpu")
    out = tmp_path / "b"
    code = cli.main(["bench", "--parts", "torch-optim", "--models", "mlp,cnn", "--repeats", "1", "--warmup", "0",
                     "--batch", "2", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "torch-optim (1 thread(s)" in text and "QLABGrad/lean" in text
    run = json.loads((out / "bench.json").read_text())["runs"][0]
    part = run["torch_optim"]
    assert part["available"]
    assert [(r["setup"], r["device"], r["batch"]) for r in part["results"]] == [("mlp", "cpu", 2), ("cnn", "cpu", 2)]
    for r in part["results"]:
        assert set(r["timings_ms"]) == {"sgd", "qlabgrad", "lean"}
        med = {k: v["median"] for k, v in r["timings_ms"].items()}
        assert r["ratios"]["qlabgrad/lean"] == pytest.approx(med["qlabgrad"] / med["lean"])
        assert r["ratios"]["lean/sgd"] == pytest.approx(med["lean"] / med["sgd"])
        assert r["verdict"] in ("meets target", "misses target")
    assert "torch-optim" in (out / "bench.md").read_text()


def test_unknown_device_is_named(torch, monkeypatch):
    from qlabref import bench_torch_optim as bto

    monkeypatch.setenv("QLABREF_TORCH_OPTIM_DEVICES", "tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        bto.devices(torch)


def test_lean_step_is_the_qlabgrad_step(torch, rng):
    """The lean step and qlabref.torch.QLABGrad (ᾱ fixed, the same cap α ≤ ᾱ) from the same weights on the
    same batch land on the same parameters (float64; the lean step rounds θ − α∇L once, QLABGrad twice)."""
    import copy

    import qlabref.torch as qt
    from qlabref import bench_torch_optim as bto

    torch.manual_seed(int(rng.integers(2**31)))
    base = bto._torch_model(torch, "mlp", int(rng.integers(2**31))).double()
    x, y = bench.example_batch(bench.MODELS["mlp"], 5, int(rng.integers(2**31)))
    x, y = torch.from_numpy(x).double(), torch.from_numpy(y)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    pre = float(rng.uniform(1e-3, 1e-1))
    opt = qt.QLABGrad(a.parameters(), pre_lr=pre, findplr="never", max_lr_factor=1.0)
    lean = bto.lean_step_factory(torch, b, x, y, pre)
    for _ in range(3):
        la = opt.step(lambda: torch.nn.functional.cross_entropy(a(x), y))
        lb = lean()
        assert lb == pytest.approx(la, rel=1e-12)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)
