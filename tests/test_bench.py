"""``qlabref bench``: the command runs and writes its record; the plain-NumPy baseline computes the
same step as qlabref (an oracle check). No timing is asserted anywhere: speed is measured, not tested."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import qlabref as qr
from qlabref import bench, cli


def _our_loss_and_grads(model, x, y):
    loss = bench.our_step(model, x, y)
    n = len(model.sizes) - 1
    grads = [(getattr(model, f"fc{i}").weight.grad, getattr(model, f"fc{i}").bias.grad) for i in range(1, n + 1)]
    return loss, grads


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_numpy_baseline_computes_the_same_step_as_qlabref(rng, dtype, rtol):
    model = qr.models.mlp((37, 23, 19, 7), seed=int(rng.integers(2**31)), dtype=dtype)
    x = rng.standard_normal((11, 37)).astype(dtype)
    x[:, :3] *= 20  # some ReLU units off for part of the batch
    y = rng.integers(0, 7, size=11)
    loss, grads = _our_loss_and_grads(model, x, y)
    np_loss, np_grads = bench.numpy_mlp_step(bench.numpy_mlp_weights(model), x, y)
    assert np.asarray(np_loss).dtype == dtype
    assert np_loss == pytest.approx(loss, rel=rtol)
    for (gw, gb), (nw, nb) in zip(grads, np_grads):
        assert nw.dtype == dtype and nb.dtype == dtype
        assert gw.dtype == dtype and gb.dtype == dtype  # float32 stays float32 through our step
        scale = max(np.abs(gw).max(), 1e-30)
        np.testing.assert_allclose(nw, gw, rtol=0, atol=rtol * scale)
        np.testing.assert_allclose(nb, gb, rtol=0, atol=rtol * max(np.abs(gb).max(), 1e-30))


def test_numpy_baseline_on_the_benchmarked_mlp(rng):
    spec = bench.MODELS["mlp"]
    model = spec.build()
    x, y = bench.example_batch(spec, 8, seed=int(rng.integers(2**31)))
    loss, grads = _our_loss_and_grads(model, x, y)
    np_loss, np_grads = bench.numpy_mlp_step(bench.numpy_mlp_weights(model), x, y)
    assert np_loss == pytest.approx(loss, rel=1e-5)
    for (gw, gb), (nw, nb) in zip(grads, np_grads):
        np.testing.assert_allclose(nw, gw, rtol=0, atol=1e-5 * np.abs(gw).max())
        np.testing.assert_allclose(nb, gb, rtol=0, atol=1e-5 * np.abs(gb).max())


def test_our_step_and_torch_step_agree(torch, rng):
    spec = bench.MODELS["cnn"]
    model = spec.build()
    tmodel = qr.interop.to_torch(model)
    x, y = bench.example_batch(spec, 3, seed=int(rng.integers(2**31)))
    ours = bench.our_step(model, x, y)
    theirs = bench.torch_step(torch, tmodel, torch.from_numpy(x), torch.from_numpy(y))
    assert ours == pytest.approx(theirs, rel=1e-5)
    np.testing.assert_allclose(model.conv1.weight.grad, tmodel.conv1.weight.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_measure_model_record_fields_without_torch():
    r = bench.measure_model("mlp", batch=2, repeats=2, warmup=0, torch=None)
    assert r["model"] == "mlp" and r["batch"] == 2 and r["repeats"] == 2
    assert set(r["timings_ms"]) == {"qlabref", "numpy"}
    for stats in r["timings_ms"].values():
        assert stats["n"] == 2 and len(stats["samples"]) == 2 and stats["min"] <= stats["median"]
    assert r["ratio_torch"] is None and r["ratio_numpy"] > 0
    assert r["verdict"] == "not judged (no PyTorch baseline)"


def test_options_are_parsed_and_checked():
    assert bench.model_names("mlp, paper_cnn,resnet") == ["mlp", "cnn", "resnet18"]
    assert bench.model_names("all") == list(bench.MODELS)
    assert bench.thread_counts("1,2") == [1, 2]
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        bench.model_names("mlp,vgg")
    with pytest.raises(ValueError, match="between 1 and"):
        bench.thread_counts("0")
    env = bench.child_environment(3, base={"PATH": "/bin"})
    assert all(env[v] == "3" for v in bench.THREAD_VARIABLES) and env["PATH"] == "/bin"


def test_help():
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0


def test_bad_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--models", "vgg"])
    assert e.value.code == 2
    assert "unknown model" in capsys.readouterr().err


def test_command_runs_in_a_child_and_writes_its_record(tmp_path, capsys, torch):
    out = tmp_path / "bench"
    code = cli.main(["bench", "--models", "mlp", "--repeats", "2", "--warmup", "1", "--batch", "4",
                     "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert f"wrote {out / 'bench.json'}" in text and "qlabref/PyTorch" in text
    assert ("meets target" in text) or ("misses target" in text)
    record = json.loads((out / "bench.json").read_text())
    assert record["config"]["models"] == ["mlp"] and record["config"]["threads"] == [1]
    (run,) = record["runs"]
    assert run["threads"] == 1 and run["torch_threads"] == 1
    assert all(run["env"][v] == "1" for v in bench.THREAD_VARIABLES)
    (r,) = run["results"]
    assert r["model"] == "mlp" and r["batch"] == 4 and r["repeats"] == 2 and r["warmup"] == 1
    assert set(r["timings_ms"]) == {"qlabref", "torch", "numpy"}
    assert r["ratio_torch"] > 0 and r["ratio_numpy"] > 0 and r["target"] == bench.MLP_TARGET
    assert r["verdict"] in ("meets target", "misses target")
    assert r["loss_rel_diff_torch"] < 1e-5  # same weights, same batch: the comparison is of the same model
    assert "| mlp | 4 |" in (out / "bench.md").read_text()


@pytest.mark.slow  # > 3 s: off the README's fast path, run by CI
def test_command_without_torch_times_qlabref_and_numpy(tmp_path, capsys):
    out = tmp_path / "b"
    code = cli.main(["bench", "--models", "mlp", "--repeats", "2", "--warmup", "0", "--batch", "2", "--no-torch",
                     "--out", str(out)])
    assert code == 0
    assert "PyTorch baseline skipped" in capsys.readouterr().out
    (r,) = json.loads((out / "bench.json").read_text())["runs"][0]["results"]
    assert set(r["timings_ms"]) == {"qlabref", "numpy"} and r["ratio_torch"] is None


def test_missing_torch_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    torch, why = bench._torch_or_reason(1)
    assert torch is None and "pip install torch" in why


def test_command_when_torch_cannot_be_imported(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "shadow" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch is hidden for this test')\n")
    paths = [str(fake.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))  # the child's `import torch` fails
    out = tmp_path / "b"
    code = cli.main(["bench", "--models", "mlp", "--repeats", "1", "--warmup", "0", "--batch", "2", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "PyTorch is not installed" in text and "pip install torch" in text
    run = json.loads((out / "bench.json").read_text())["runs"][0]
    assert run["torch"] is None and "pip install torch" in run["torch_missing"]
    assert run["results"][0]["verdict"] == "not judged (no PyTorch baseline)"


def test_probe_and_qlab_parts_are_recorded(tmp_path, capsys):
    out = tmp_path / "b"
    code = cli.main(["bench", "--parts", "probe,qlab,gpu", "--models", "mlp", "--repeats", "1", "--warmup", "0",
                     "--batch", "2", "--no-torch", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "probe (1 thread(s)" in text and "QLABGrad step / SGD step" in text and "GPU kernels" in text
    run = json.loads((out / "bench.json").read_text())["runs"][0]
    assert run["results"] == []  # no "steps" part
    p = run["probe"]
    assert p["n"] == 1_796_010 and set(p["timings_ms"]) == {"probe", "numpy_two_pass", "copy"}
    assert p["sum_rel_diff"] < 1e-12  # the fused sum and NumPy's float64 dot agree
    assert p["speedup_vs_numpy"] > 0 and p["fraction_of_copy"] > 0
    (q,) = run["qlab"]
    assert q["model"] == "mlp" and set(q["ratios"]) == set(q["ratios_lean"]) == {"per-parameter", "flat"}
    assert q["floor"] > 1
    assert q["target"] == bench.QLAB_SGD_TARGET
    assert "probe (" in (out / "bench.md").read_text()


def test_unknown_part_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--parts", "gpu-only"])
    assert e.value.code == 2
    assert "unknown part" in capsys.readouterr().err
