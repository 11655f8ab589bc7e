"""`qlabref reproduce --quick`: the whole pipeline small (every method, one seed, 300 iterations) on
the real MNIST, locally and on a Dask LocalCluster (identical records), resumable (a finished run is
never re-run), tables/figures written from the per-run records."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from qlabref import reproduce

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "qlabref", *args], capture_output=True, text=True,
                          env=dict(ENV, QLABREF_DATA=os.environ.get("QLABREF_DATA", "")), timeout=1800)


@pytest.fixture(scope="module")
def quick_grid(tmp_path_factory, mnist_cache):
    root = tmp_path_factory.mktemp("repro")
    runs, results = root / "runs", root / "results"
    res = cli("reproduce", "mnist-mlp", "--quick", "--runs-dir", str(runs), "--results", str(results),
              "--measure-time")
    assert res.returncode == 0, res.stderr[-3000:]
    return runs, results, res


@pytest.mark.slow
def test_quick_grid_writes_tables_and_figures(quick_grid):
    runs, results, res = quick_grid
    md = (results / "mnist-mlp-quick.md").read_text()
    for m in reproduce.METHODS:
        assert f"| {m} |" in md, m
    assert "| qlabgrad | defaults |" in md and "| 98.36 |" in md  # our number beside the paper's
    assert "RMSprop and Adam at their customary lr 1e-3" in md
    assert "Beyond the paper" in md and "| prodigy ‡ |" in md
    assert "| qlabgrad-f64-s0 |" in md and "(float64)" in md and "Remedies" in md
    assert "FindPLR from 1e-5" in md and "| float32 | 0 |" in md and "| float64 | 0 |" in md
    assert "Time per step relative to SGD" in md and "| sgd | " in md
    # SGD against itself: every round's ratio is exactly 1, so median and quartiles are 1.00
    assert re.search(r"^\| sgd \| [0-9.]+ \| 1\.00 \| 1\.00–1\.00 \| 1\.0 \|$", md, re.M)
    for med, q25, q75 in re.findall(r"^\| [a-z0-9.-]+(?: ‡)? \| [0-9.]+ \| ([0-9.]+) \| ([0-9.]+)–([0-9.]+) \|", md, re.M):
        assert float(q25) <= float(med) <= float(q75)
    if hasattr(os, "getloadavg"):
        assert "1-minute load average" in md
    assert "at commit" in md and "qlabref reproduce mnist-mlp --quick" in md
    figs = results / "mnist-mlp-quick" / "figures"
    for name in ("loss-methods.png", "lr-methods.png", "loss-decay.png", "lr-decay.png", "loss-beyond.png",
                 "loss-remedies.png"):
        assert (figs / name).stat().st_size > 5000
    recs = reproduce.load_records(str(results), "mnist-mlp", quick=True)
    assert set(recs) == {f"{m}-s0" for m in reproduce.METHODS}
    for rid, rec in recs.items():
        s = rec["summary"]
        assert s["config"]["iters"] == 300 and s["status"] in ("finished", "diverged", "failed")
        # the record's accuracy is the run's own last evals.csv row
        with open(runs / "mnist-mlp-quick" / rid / "evals.csv") as f:
            last = f.read().strip().splitlines()[-1].split(",")
        assert float(last[2]) == s["final_test_accuracy"]
        n_steps = 300 if s["status"] == "finished" else s["stopped_at_iter"]
        assert len(rec["curves"]["iter"]) == -(-n_steps // 30)  # the steps recorded, in buckets of 30
        # provenance: every run's row names the commit its own summary.json recorded and its options
        with open(runs / "mnist-mlp-quick" / rid / "summary.json") as f:
            own = json.load(f)
        row = next(line for line in md.splitlines() if line.startswith(f"| {rid} | {own['status']} | `"))
        assert f"`{own['git_commit'][:10]}`" in row and f"--optimizer {own['config']['optimizer']} " in row
        # the record keeps the machine that made it (without the host name) and the BLAS
        assert s["machine"]["cpu_count"] == own["machine"]["cpu_count"] and "hostname" not in s["machine"]
        assert "blas" in s
    assert "## Provenance" in md


@pytest.mark.slow
def test_quick_grid_is_resumable(quick_grid):
    runs, results, _ = quick_grid
    steps = runs / "mnist-mlp-quick" / "sgd-s0" / "steps.csv"
    mtime = steps.stat().st_mtime_ns
    res = cli("reproduce", "mnist-mlp", "--quick", "--runs-dir", str(runs), "--results", str(results),
              "--no-timing", "--no-findplr")
    assert res.returncode == 0, res.stderr[-2000:]
    n = len(reproduce.METHODS)
    assert f"{n} already done, 0 to run" in res.stderr
    assert steps.stat().st_mtime_ns == mtime
    # a committed record counts as done even where its run directory is gone (a new checkout)
    import shutil

    shutil.rmtree(runs / "mnist-mlp-quick" / "sgd-s0")
    st = reproduce.run_grid("mnist-mlp", str(runs), str(results), quick=True, methods=["sgd"], progress=False)
    assert st == {"sgd-s0": "finished"} and not (runs / "mnist-mlp-quick" / "sgd-s0").exists()


@pytest.mark.slow
def test_dask_localcluster_gives_identical_records(quick_grid, tmp_path):
    distributed = pytest.importorskip("dask.distributed", reason="dask.distributed not installed (the 'dask' extra)")
    runs, results, _ = quick_grid
    old = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
                distributed.Client(lc) as client:
            methods = ["qlabgrad", "sgd-e-decay", "schedulefree-sgd"]
            st = reproduce.run_grid("mnist-mlp", str(tmp_path / "runs"), str(tmp_path / "results"), quick=True,
                                    methods=methods, dask=client, progress=False)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert set(st) == {f"{m}-s0" for m in methods}
    for m in methods:
        a = (tmp_path / "runs" / "mnist-mlp-quick" / f"{m}-s0" / "steps.csv").read_bytes()
        b = (runs / "mnist-mlp-quick" / f"{m}-s0" / "steps.csv").read_bytes()
        assert a == b, m
    path = reproduce.write_results("mnist-mlp", str(tmp_path / "results"), quick=True, with_timing=False,
                                   with_findplr=False)
    assert "partial grid" in open(path).read()


@pytest.mark.slow
def test_cnn_quick_grid(tmp_path, mnist_cache):
    """The CNN grid's pipeline, small: QLABGrad and SGD on the paper CNN, its tables beside the paper's CNN
    numbers, the FindPLR trace on the CNN and the time per step."""
    res = cli("reproduce", "mnist-cnn", "--quick", "--methods", "qlabgrad", "sgd", "--runs-dir", str(tmp_path / "runs"),
              "--results", str(tmp_path / "results"), "--measure-time")
    assert res.returncode == 0, res.stderr[-3000:]
    md = (tmp_path / "results" / "mnist-cnn-quick.md").read_text()
    assert "| 99.18 |" in md and "| 99.09 |" in md  # the paper's CNN column, not the MLP's
    assert "FindPLR from 1e-5 on the CNN" in md and "| float64 | 1 |" in md
    assert "Time per step relative to SGD" in md and "| lqa |" in md and "partial grid" in md
    timing = json.loads((tmp_path / "results" / "mnist-cnn-quick" / "timing.json").read_text())
    assert timing["machine"]["cpu_count"] == os.cpu_count() and "hostname" not in timing["machine"]
    assert set(timing["methods"]) >= {"qlabgrad", "sgd", "lqa"} and timing["methods"]["sgd"]["ratio"] == 1.0
    recs = reproduce.load_records(str(tmp_path / "results"), "mnist-cnn", quick=True)
    assert set(recs) == {"qlabgrad-s0", "sgd-s0"}
    from qlabref import models

    n_cnn = sum(p.data.size for p in models.paper_cnn(seed=0).parameters())
    for rid, rec in recs.items():
        s = rec["summary"]
        assert s["config"]["model"] == "cnn" and s["num_parameters"] == n_cnn
        with open(tmp_path / "runs" / "mnist-cnn-quick" / rid / "evals.csv") as f:
            last = f.read().strip().splitlines()[-1].split(",")
        assert float(last[2]) == s["final_test_accuracy"]


def test_grid_definition():
    runs = reproduce.grid_runs("mnist-mlp")
    assert len(runs) == len(reproduce.METHODS) * 3
    assert {m for m, v in reproduce.METHODS.items() if v[3] == "beyond"} == {
        "dog", "dadapt-sgd", "dadapt-adam", "prodigy", "schedulefree-sgd", "schedulefree-adamw"}
    ids = [r[0] for r in runs]
    assert ids[:2] == ["qlabgrad-s0", "sgd-s0"]  # the most important runs start first
    cfg = dict(runs)["sgd-ca-decay-s1"]
    assert cfg["schedule"] == {"name": "ca-decay", "T_max": 30000, "eta_min": 1e-3}
    assert cfg["opt"] == {"lr": 0.1} and cfg["iters"] == 30000 and cfg["batch"] == 64
    cnn = reproduce.grid_runs("mnist-cnn")
    cnn_ids = [r for r, _ in cnn]
    assert [r for r in cnn_ids if r.startswith("qlabgrad")] == [
        "qlabgrad-s0", "qlabgrad-cap1-s0", "qlabgrad-s1", "qlabgrad-cap1-s1", "qlabgrad-s2", "qlabgrad-cap1-s2"]
    assert sum(1 for r in cnn_ids if r.startswith("adam-s")) == 1 and "dog-s0" not in cnn_ids
    with pytest.raises(ValueError, match="unknown method"):
        reproduce.grid_runs("mnist-mlp", methods=["nope"])
    with pytest.raises(ValueError, match="dog are not part of the mnist-cnn grid"):
        reproduce.grid_runs("mnist-cnn", methods=["qlabgrad", "dog"])
    bad = cli("reproduce", "mnist-mlp", "--methods", "nope")
    assert bad.returncode == 2 and "unknown nope" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli("reproduce", "mnist-cnn", "--methods", "dog", "--tables-only")
    assert bad.returncode == 2 and "dog not in the mnist-cnn grid" in bad.stderr and "Traceback" not in bad.stderr
    assert json.dumps(reproduce.PAPER_TABLE2)  # plain data


def test_public_findplr_script_gives_figure_8(mnist_cache):
    """The public FindPLR script's test (re-implemented from its description) on fresh seeds: the oracles
    are the paper's Figure 8 (1e-5 → 0.00128 after 7 doublings) and the expected squared norm of the MLP's
    parameters under PyTorch's default initialisation, U(±1/√fan_in): Σ fan_out·(fan_in + 1)/(3·fan_in)."""
    import numpy as np

    seeds = list(np.random.default_rng().integers(0, 2**31, size=2))
    expected_sq = sum(o * (i + 1) / (3 * i) for i, o in ((784, 1000), (1000, 1000), (1000, 10)))
    for row in reproduce.findplr_public_code_trace(seeds=seeds):
        assert abs(row["theta_sq_norm"] - expected_sq) < 0.01 * expected_sq, (row["seed"], row["theta_sq_norm"])
        assert row["doublings"] == 7 and row["final"] == 1e-5 * 2**7 and row["sequence"][0] == 1e-5
        assert row["stop"] is not None  # the script's search ended by itself, not by the batch limit
        # each doubling happened while L − 3 + ᾱ‖θ‖² < 0, and the last test was ≥ 0
        for a, loss in zip(row["sequence"][:-1], row["losses"]):
            assert loss - 3 + a * row["theta_sq_norm"] < 0
        assert row["losses"][-1] - 3 + row["final"] * row["theta_sq_norm"] >= 0
