"""The results report (demos/results/): the "collapsed" status, loss-figure limits taken from the data,
`reproduce --tables-only` reusing the committed time per step, and demos/results_evidence.py against both the
committed records and the report that cites it."""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from qlabref import reproduce, runplots
from qlabref.cli import main as cli_main

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "demos" / "results"


def _rec(status, final, evals, seed=0):
    return {"run_id": f"x-s{seed}", "summary": {"status": status, "final_test_accuracy": final,
                                                "stopped_at_iter": None, "config": {"seed": seed}},
            "evals": [{"iter": float(i), "test_accuracy": a} for i, a in evals]}


def test_collapsed_is_near_chance_after_having_learned():
    # learned (>= 50%), then at or below 20% at the end, no NaN: collapsed, dated by the first eval <= 20% after the best
    rec = _rec("finished", 0.0982, [(0, 0.10), (1000, 0.96), (2000, 0.985), (3000, 0.97), (4000, 0.15), (5000, 0.0982)])
    info = reproduce.collapse_info(rec)
    assert info == {"best": 0.985, "best_iter": 2000, "at": 4000, "final": 0.0982}
    assert reproduce.run_status(rec) == ("collapsed", 4000)
    assert reproduce._failure_text(rec) == "s0: collapsed by t=4000 (98.50% at t=2000, 9.82% at the end)"
    # never learned (best < 50%): not collapsed, whatever the final accuracy
    assert reproduce.collapse_info(_rec("finished", 0.1135, [(0, 0.1036), (1000, 0.45), (2000, 0.1135)])) is None
    # the final accuracy is above 20%: not collapsed
    assert reproduce.collapse_info(_rec("finished", 0.2001, [(0, 0.1), (1000, 0.9), (2000, 0.2001)])) is None
    # exactly on the lines: 20% final and 50% best count
    assert reproduce.collapse_info(_rec("finished", 0.2, [(0, 0.1), (1000, 0.5), (2000, 0.2)]))["at"] == 2000
    # a NaN stop stays "diverged"
    d = _rec("diverged", 0.0974, [(0, 0.1), (1000, 0.98)])
    d["summary"]["stopped_at_iter"] = 1234
    assert reproduce.collapse_info(d) is None and reproduce.run_status(d) == ("diverged", 1234)
    assert reproduce._failure_text(d) == "s0: diverged at t=1234"
    assert reproduce._failure_text(_rec("finished", 0.98, [(0, 0.1), (1000, 0.98)])) is None


def test_committed_records_that_collapsed():
    """Which committed runs are "collapsed", decided here from each record's evaluations by a plain loop."""
    found, expected = set(), set()
    for grid in ("mnist-mlp", "mnist-cnn"):
        for rec in reproduce.load_records(str(RESULTS), grid).values():
            accs = [e["test_accuracy"] for e in sorted(rec["evals"], key=lambda e: e["iter"])]
            final = rec["summary"]["final_test_accuracy"]
            if rec["summary"]["status"] == "finished" and final <= 0.2 and max(accs) >= 0.5:
                expected.add(f"{grid}/{rec['run_id']}")
            if reproduce.run_status(rec)[0] == "collapsed":
                found.add(f"{grid}/{rec['run_id']}")
    assert found == expected
    # the cases the report discusses
    assert {"mnist-mlp/qlabgrad-s0", "mnist-cnn/lqa-s0", "mnist-cnn/rmsprop-s0"} <= found
    assert "mnist-cnn/qlabgrad-s1" not in found  # failed in its first iterations: never learned


def _fake_run(name, loss, status="finished"):
    it = np.arange(1, len(loss) + 1, dtype=float)
    return {"path": name, "iter": it, "loss": np.asarray(loss, float), "lr": np.full(len(loss), 0.1),
            "config": {"optimizer": name, "seed": 0}, "summary": {"status": status}, "evals": []}


def test_loss_figure_clips_a_run_that_explodes_whatever_its_status(rng):
    n = 600
    decay = 2.3 * np.exp(-np.arange(n) / 80.0) + 0.01 * rng.random(n)
    trained = [_fake_run(f"ok{i}", decay * (1 + 0.1 * i)) for i in range(3)]
    exploded = decay.copy()
    exploded[400:] = 1e29  # blew up but "finished": no NaN
    runs = trained + [_fake_run("boom", exploded)]
    fig = runplots.loss_figure(runs, smooth=1, zoom=(0, 100, 0, 0.2), raw=False)
    try:
        top = fig.axes[0].get_ylim()[1]
        highest_trained = max(float(np.max(r["loss"])) for r in trained)
        assert highest_trained <= top < 2 * highest_trained
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert [lab.endswith("clipped ▲") for lab in labels] == [False, False, False, True]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    # the limits alone: the exploding run sets nothing, and a diverged run is treated the same way
    lo, hi = runplots.loss_ylimits([r["loss"] for r in runs])
    assert lo <= 0.0 and highest_trained <= hi < 2 * highest_trained


def test_tables_only_reuses_the_committed_timing(tmp_path, monkeypatch):
    results = tmp_path / "results"
    (results / "mnist-cnn").mkdir(parents=True)
    for rid in ("qlabgrad-s0", "sgd-s0", "rmsprop-s0"):
        shutil.copy(RESULTS / "mnist-cnn" / f"{rid}.json", results / "mnist-cnn" / f"{rid}.json")
    timing = {"grid": "mnist-cnn", "measured": "2026-01-02 03:04 UTC", "commit": "abcdef1234567",
              "machine": {"processor": "x86_64", "cpu_count": 7}, "blas": {"name": "someblas", "version": "9.9"},
              "load_before": 0.25, "load_after": 0.5, "steps": 200,
              "methods": {"sgd": {"ms": 10.0, "ratio": 1.0, "ratio_q25": 1.0, "ratio_q75": 1.0},
                          "qlabgrad": {"ms": 12.34, "ratio": 1.234, "ratio_q25": 1.2, "ratio_q75": 1.25}}}
    (results / "mnist-cnn" / "timing.json").write_text(json.dumps(timing))

    def no_measuring(*a, **k):
        raise AssertionError("--tables-only measured the time per step")

    monkeypatch.setattr(reproduce, "_time_per_step_one_thread", no_measuring)
    assert cli_main(["reproduce", "mnist-cnn", "--tables-only", "--no-findplr", "--results", str(results)]) == 0
    md = (results / "mnist-cnn.md").read_text()
    assert "| qlabgrad | 12.34 | 1.23 | 1.20–1.25 | 1.4 |" in md
    assert "Measured on 2026-01-02 03:04 UTC at commit `abcdef1234`" in md and "someblas 9.9" in md
    assert "s0: collapsed by t=2000 (82.88% at t=1000, 9.74% at the end)" in md  # rmsprop-s0
    assert not (results / "mnist-cnn" / "figures" / "loss-beyond.png").exists()
    assert (results / "mnist-cnn" / "figures" / "loss-methods.png").exists()
    # without timing.json the tables say how to measure it, and still measure nothing
    (results / "mnist-cnn" / "timing.json").unlink()
    assert cli_main(["reproduce", "mnist-cnn", "--tables-only", "--no-findplr", "--results", str(results)]) == 0
    assert "--tables-only --measure-time` measures it" in (results / "mnist-cnn.md").read_text()


def test_measure_time_and_no_timing_contradict(capsys):
    assert cli_main(["reproduce", "mnist-cnn", "--tables-only", "--measure-time", "--no-timing"]) == 2
    assert "contradict" in capsys.readouterr().err


def _evidence():
    out = subprocess.run([sys.executable, str(ROOT / "demos" / "results_evidence.py")], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return dict(line.split(": ", 1) for line in out.stdout.strip().splitlines())


def test_evidence_script_against_the_records_and_the_report():
    ev = _evidence()
    # the script against the records, read here directly
    s1 = json.loads((RESULTS / "mnist-mlp" / "qlabgrad-s1.json").read_text())
    acc = {int(e["iter"]): e["test_accuracy"] for e in s1["evals"]}
    assert float(ev["mlp_qlabgrad_s1_acc_28000"]) == round(100 * acc[28000], 2)
    c = s1["curves"]
    window = [lr for it, lr in zip(c["iter"], c["lr_max"]) if 27721 <= it <= 28021]
    assert ev["mlp_qlabgrad_s1_lr_max_27721_28050"] == str((round(min(window), 1), round(max(window), 1)))
    hgd = json.loads((RESULTS / "mnist-cnn" / "hgd-s0.json").read_text())
    assert ev["cnn_hgd_negative_lr_means"] == str((sum(v < 0 for v in hgd["curves"]["lr_mean"]), len(hgd["curves"]["lr_mean"])))
    for s in (0, 1, 2):
        sm = json.loads((RESULTS / "mnist-cnn" / f"qlabgrad-cap1-s{s}.json").read_text())["summary"]
        lr = np.array(json.loads((RESULTS / "mnist-cnn" / f"qlabgrad-cap1-s{s}.json").read_text())["curves"]["lr_mean"])
        assert np.all(lr <= 1.0)  # the cap held in every bucket
        assert ev[f"cnn_cap1_s{s}_capped_at_least"] == str((15001 - sm["fallback_steps"], 30000, sm["fallback_steps"]))
    # the report against the script: each statement cites the script's numbers
    report = (RESULTS / "README.md").read_text()
    report = " ".join(report.split())
    cap = [eval(ev[f"cnn_cap1_s{s}_capped_at_least"])[0] for s in (0, 1, 2)]
    lo, hi = eval(ev["mlp_qlabgrad_s1_lr_max_27721_28050"])
    blow = eval(ev["mlp_qlabgrad_s1_blowup"])
    cites = [
        f"{ev['mlp_qlabgrad_s1_acc_28000']}% at 28,000",
        f"{ev['mlp_qlabgrad_s1_acc_27000']}% at 27,000",
        f"{round(lo):d} to {round(hi):d}",
        f"α_t of {int(float(ev['mlp_qlabgrad_s1_lr_max_27691_27720'])):,}",
        f"minibatch losses up to {float(ev['mlp_qlabgrad_s1_loss_max_27721_28050']):.2f}",
        f"blow-up at iteration {blow[0]:,}", f"α* = {int(blow[1]):,} from a denominator of {int(blow[2])} ulps",
        f"next loss {blow[3]:.2f}",
        f"at least {cap[0]:,}, {cap[1]:,} and {cap[2]:,} steps",
        f"a mean of {ev['cnn_hgd_lr_mean_91_120']}",
        f"{ev['cnn_hgd_lr_median_1000_10000']}, {ev['cnn_hgd_lr_median_10000_20000']} and "
        f"{ev['cnn_hgd_lr_median_20000_30000']}",
        "{} of the {:,} 30-iteration means are negative".format(*eval(ev["cnn_hgd_negative_lr_means"])),
        "stayed between {} and {}".format(*eval(ev["cnn_qlabgrad_s1_loss_mean_after_1000"])),
        "stayed between {} and {} from iteration 1,000 on".format(*eval(ev["cnn_qlabgrad_s2_loss_mean_after_1000"])),
        f"more than {ev['cnn_qlabgrad_s1_best_acc_after_0']}%",
        "α_t = {} came with a minibatch loss of {}".format(*eval(ev["cnn_qlabgrad_s2_iters_31_60"])),
        "load average {:.2f} before and {:.2f} after".format(*eval(ev["mnist-mlp_timing_load"])[:2]),
        "average {:.2f} before and {:.2f} after".format(*eval(ev["mnist-cnn_timing_load"])[:2]),
    ]
    missing = [c for c in cites if c not in report]
    assert not missing, missing
    # statements dropped because no committed file holds their data
    for gone in ("15,862", "on 16% of", "paused", "ReLUs"):
        assert gone not in report
