"""``qlabref demo``, ``qlabref trajectories`` and ``qlabref explain`` end to end (reduced budgets).

They run with the registered qr.optim optimizers; the optimizer maths itself is checked in
test_qlab.py and test_trajectory.py::test_qlabgrad_beats_gradient_descent_at_its_best_fixed_lr_on_booth.
"""
from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qlabref as qr  # noqa: E402
from qlabref import cli  # noqa: E402


@pytest.mark.slow  # > 3 s: off the README's fast path, run by CI
def test_demo_writes_figures_and_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--starts", "2", "--steps", "300"]) == 0
    text = capsys.readouterr().out
    for name in ("booth", "eggholder", "himmelblau"):
        for suffix in (".png", "_curves.png", "_sweep.png"):
            assert (out / f"{name}{suffix}").stat().st_size > 10_000
            assert str(out / f"{name}{suffix}") in text  # says where it wrote
    assert (out / "trajectories.png").exists() and (out / "quadratic_fit_himmelblau_step2.png").exists()
    table = (out / "table.md").read_text()
    # one row per function × optimizer, next to the paper's numbers
    for fn, counts in {"booth": (50, 200, 5000), "eggholder": (500, 1500, 10000), "himmelblau": (90, 220, 5000)}.items():
        for opt, paper in zip(("qlabgrad", "sgd", "adam"), counts):
            assert any(line.startswith(f"| {fn} | {opt} |") and line.rstrip().endswith(f"| {paper} |")
                       for line in table.splitlines()), (fn, opt)
    assert "Protocol:" in table and "(-8, -8)" in table and "Every setting tried" in table
    record = json.loads((out / "results.json").read_text())
    assert record["protocol"]["n_starts"] == 2 and len(record["rows"]) == 3 * (1 + 3 + 3)
    assert "qlabref demo: done in" in text


@pytest.mark.slow  # > 3 s: off the README's fast path, run by CI
def test_trajectories_command_options(tmp_path, capsys):
    out = tmp_path / "t"
    rc = cli.main(["trajectories", "--functions", "booth", "--starts", "2", "--steps", "200",
                   "--lrs", "sgd=0.05,0.01", "--lrs", "adam=0.5", "--out", str(out), "--animate"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "sgd: lr=0.05; lr=0.01" in text and "adam: lr=0.5" in text
    assert (out / "booth.gif").read_bytes()[:4] == b"GIF8"
    table = (out / "table.md").read_text()
    assert "| booth | qlabgrad |" in table and "| booth | sgd | lr=0.05 |" in table


def test_trajectories_command_errors_name_the_thing(tmp_path, capsys):
    assert cli.main(["trajectories", "--functions", "boothh", "--out", str(tmp_path)]) == 2
    assert "unknown test function 'boothh'" in capsys.readouterr().err
    assert cli.main(["trajectories", "--functions", "booth", "--lrs", "sgd=fast", "--out", str(tmp_path)]) == 2
    assert "cannot read learning rates from 'sgd=fast'" in capsys.readouterr().err
    assert cli.main(["trajectories", "--optimizers", "nosuchopt", "--out", str(tmp_path)]) == 2
    assert "unknown optimizer(s) nosuchopt" in capsys.readouterr().err


def test_explain_prints_the_fit_and_writes_figure_1(tmp_path, capsys):
    assert cli.main(["explain", "--function", "booth", "--step", "3", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "a2" in text and "α* = −a1/(2 a2)" in text and "Wrote" in text
    assert (tmp_path / "explain_booth_qlabgrad_step3.png").exists()
    assert cli.main(["explain", "--function", "himmelblau", "--optimizer", "sgd", "--lr", "0.01", "--step", "2",
                     "--out", str(tmp_path)]) == 0
    assert (tmp_path / "explain_himmelblau_sgd_step2.png").exists()
    with pytest.raises(SystemExit) as e:  # argparse: --step counts from 1
        cli.main(["explain", "--function", "booth", "--step", "0", "--out", str(tmp_path)])
    assert e.value.code == 2


def test_explain_numbers_match_the_paper_equations():
    from qlabref.commands.explain import explain_step

    fn = qr.functions.himmelblau
    p = qr.tensor(np.array([-0.5, -4.5]), requires_grad=True)
    r = explain_step([p], lambda: fn.f(p), "qlabgrad", step=3, points=51)
    theta, g = r["theta"][0], r["grad"][0]
    np.testing.assert_allclose(g, fn.grad(theta), rtol=1e-12)
    assert r["a0"] == pytest.approx(fn.f(theta), rel=1e-12)  # Eq. 6
    assert r["a1"] == pytest.approx(-float(g @ g), rel=1e-12)  # Eq. 7
    pre = r["pre_lr"]
    assert r["a0"] + r["a1"] * pre + r["a2"] * pre**2 == pytest.approx(fn.f(theta - pre * g), rel=1e-9)  # Eq. 8
    if r["a2"] > 0:
        assert r["alpha_star"] == pytest.approx(-r["a1"] / (2 * r["a2"]), rel=1e-9)  # Eq. 5
    assert r["g"][0] == pytest.approx(r["a0"], rel=1e-12)
    assert r["g_lr"] == pytest.approx(fn.f(theta - r["lr"] * g), rel=1e-12)
    for a, v in zip(r["alphas"][::10], r["g"][::10]):
        assert v == pytest.approx(fn.f(theta - a * g), rel=1e-12)


@pytest.mark.slow  # > 3 s: off the README's fast path, run by CI
def test_explain_model_option(tmp_path, capsys):
    assert cli.main(["explain", "--model", "mlp", "--step", "2", "--batch", "16", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "explain_model_mlp_qlabgrad_step2.png").exists()
    assert cli.main(["explain", "--model", "paper_cnn", "--step", "1", "--batch", "4", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "explain_model_paper_cnn_qlabgrad_step1.png").exists()
