"""``--optimizers beyond-paper`` in ``qlabref trajectories`` and ``qlabref demo`` (reduced budgets):
the group expands to qr.optim.BEYOND_PAPER, the learning-rate-free methods run with their authors'
defaults (no lr grid), Schedule-Free gets the SGD/Adam grid, and tables and figures mark the group."""
from __future__ import annotations

import json

import matplotlib
import pytest

matplotlib.use("Agg")

import qlabref as qr  # noqa: E402
from qlabref import cli  # noqa: E402
from qlabref.commands import trajectories as traj  # noqa: E402


def test_group_name_expands_in_order_without_repeats():
    assert traj.expand_optimizers(["qlabgrad", "SGD", "beyond-paper", "dog", "ldog"]) == [
        "qlabgrad", "sgd", *qr.optim.BEYOND_PAPER, "ldog"]


def test_settings_defaults_for_learning_rate_free_and_grids_for_schedule_free():
    assert traj._settings_for("booth", "dog", {}, None) == [{}]
    assert traj._settings_for("booth", "prodigy", {}, None) == [{}]
    assert traj._settings_for("booth", "dadapt-adam", {"dadapt-adam": (0.5,)}, None) == [{"lr": 0.5}]  # asked for
    sgd = [{"lr": lr} for lr in traj.DEFAULT_LRS["himmelblau"]["sgd"]]
    adam = [{"lr": lr} for lr in traj.DEFAULT_LRS["himmelblau"]["adam"]]
    assert traj._settings_for("himmelblau", "schedulefree-sgd", {}, None) == sgd
    assert traj._settings_for("himmelblau", "schedulefree-adamw", {}, None) == adam
    assert traj._settings_for("himmelblau", "hgd", {}, None) == sgd  # unchanged for the paper's methods


def test_trajectories_with_the_group(tmp_path, capsys):
    out = tmp_path / "t"
    rc = cli.main(["trajectories", "--functions", "booth", "--starts", "1", "--steps", "150",
                   "--optimizers", "beyond-paper", "--out", str(out)])
    assert rc == 0
    capsys.readouterr()
    table = (out / "table.md").read_text()
    for name in qr.optim.BEYOND_PAPER:
        assert f"| booth | {name} ‡ |" in table
    assert "| booth | dog ‡ | defaults |" in table and "| booth | qlabgrad |" in table
    assert "‡ beyond the paper" in table
    record = json.loads((out / "results.json").read_text())
    assert record["protocol"]["optimizers"] == ["qlabgrad", "sgd", "adam", *qr.optim.BEYOND_PAPER]
    assert record["protocol"]["settings"]["booth"]["prodigy"] == [{}]


@pytest.mark.slow  # > 3 s: off the README's fast path, run by CI
def test_demo_can_add_optimizers(tmp_path, capsys):
    out = tmp_path / "d"
    assert cli.main(["demo", "--out", str(out), "--starts", "1", "--steps", "100", "--optimizers", "prodigy"]) == 0
    text = capsys.readouterr().out
    assert "and prodigy on the paper's" in text
    assert "| booth | prodigy ‡ | defaults |" in (out / "table.md").read_text()
    assert cli.main(["demo", "--out", str(out), "--optimizers", "nosuchopt"]) == 2
    assert "unknown optimizer(s) nosuchopt" in capsys.readouterr().err
