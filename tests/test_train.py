"""The training runner and `qlabref train` / `plot`: determinism, byte-identical resume after a real
SIGKILL (float32 and float64), a non-finite stop, every optimizer through the runner, bad arguments,
figures written. Data: small MNIST-format IDX folders written here (random digits)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import qlabref as qr
from qlabref import train

from test_data import write_mnist_folder

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")


@pytest.fixture
def idx_dir(tmp_path, rng):
    d = tmp_path / "idx"
    write_mnist_folder(d, rng, n_train=256, n_test=64)
    return str(d)


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "qlabref", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def small(idx_dir, out, **kw):
    cfg = dict(model="mlp", data="mnist", data_dir=idx_dir, optimizer="qlabgrad", iters=12, batch=32, seed=3,
               eval_every=5, out=str(out))
    cfg.update(kw)
    return cfg


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_run_records_and_summary(idx_dir, tmp_path):
    s = train.run(small(idx_dir, tmp_path / "r"), quiet=True)
    out = tmp_path / "r"
    with open(out / "steps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iter"]) for r in rows] == list(range(1, 13))
    assert list(rows[0]) == list(train.STEP_COLUMNS)
    assert all(r["evals"] == "2" or int(r["evals"]) > 2 for r in rows)  # QLABGrad: forward + probe (+ FindPLR)
    # the recorded lr is Eq. (10) computed from the recorded a's (or ᾱ when the fallback was taken)
    for r in rows:
        a1, a2, pre = float(r["a1"]), float(r["a2"]), float(r["pre_lr"])
        if r["fallback"] == "0":
            assert float(r["lr"]) == pytest.approx(-a1 / (2 * a2), rel=1e-12)
        else:
            assert float(r["lr"]) == pre
    with open(out / "evals.csv", newline="") as f:
        ev = list(csv.DictReader(f))
    assert [int(e["iter"]) for e in ev] == [0, 5, 10, 12]
    assert s["status"] == "finished" and s["iters_done"] == 12
    assert s["final_test_accuracy"] == float(ev[-1]["test_accuracy"])
    for key in ("config", "versions", "machine", "wall_seconds", "time_per_step_ms", "fallback_fraction"):
        assert key in s
    assert set(s["time_per_step_ms"]) == {"seconds", "data", "forward_backward", "probe", "update", "records"}
    assert s["time_per_step_ms"]["probe"] > 0
    with open(out / "timing.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 12
    # the final test numbers are what an independent evaluation of the checkpointed model gives
    from qlabref import runfolder

    ck = runfolder.read_checkpoint(str(out))[1]
    model = qr.models.mlp(seed=99)
    model.load_state_dict(ck["model"])
    Xte, yte = qr.data.mnist("test", root=idx_dir)
    logits = model(qr.tensor(Xte)).data.astype(np.float64)
    m = logits.max(1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    assert s["final_test_loss"] == pytest.approx(-logp[np.arange(len(yte)), yte].mean(), rel=1e-5)
    assert s["final_test_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == yte))


def test_deterministic(idx_dir, tmp_path):
    train.run(small(idx_dir, tmp_path / "a", optimizer="adam", opt={"lr": 1e-3}), quiet=True)
    train.run(small(idx_dir, tmp_path / "b", optimizer="adam", opt={"lr": 1e-3}), quiet=True)
    train.run(small(idx_dir, tmp_path / "c", optimizer="adam", opt={"lr": 1e-3}, seed=4), quiet=True)
    assert read(tmp_path / "a" / "steps.csv") == read(tmp_path / "b" / "steps.csv")
    assert read(tmp_path / "a" / "evals.csv") == read(tmp_path / "b" / "evals.csv")
    assert read(tmp_path / "a" / "steps.csv") != read(tmp_path / "c" / "steps.csv")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_resume_after_sigkill_is_byte_identical(idx_dir, tmp_path, rng, dtype):
    args = ["train", "--data-dir", idx_dir, "--iters", "60", "--batch", "32", "--eval-every", "20",
            "--checkpoint-every", "7", "--dtype", dtype, "--seed", "1", "--quiet",
            "--schedule", "ss-decay", "step_size=5", "gamma=0.9", "--optimizer", "sgd", "--opt", "lr=0.05",
            "momentum=0.9"]
    ref = cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "qlabref", *args, "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after = int(rng.integers(9, 45))  # rows; a random moment between checkpoints
    steps = out / "steps.csv"
    deadline = time.time() + 300
    while time.time() < deadline:
        if steps.exists() and read(steps).count(b"\n") > kill_after:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = read(steps)
    assert partial.count(b"\n") < 61  # it really was interrupted
    res = cli("train", "--resume", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert read(out / "steps.csv") == read(tmp_path / "ref" / "steps.csv")
    assert read(out / "evals.csv") == read(tmp_path / "ref" / "evals.csv")
    assert json.loads(read(out / "summary.json"))["status"] == "finished"
    # resuming a finished run changes nothing
    before = read(out / "steps.csv")
    assert cli("train", "--resume", str(out), "--quiet").returncode == 0
    assert read(out / "steps.csv") == before


def test_resume_in_process_qlabgrad(idx_dir, tmp_path, monkeypatch):
    """Resume with QLABGrad's own state (ᾱ, FindPLR done) and a checkpoint mid-run, Python API."""
    from qlabref import runfolder

    full = small(idx_dir, tmp_path / "full", iters=20, checkpoint_every=6)
    train.run(full, quiet=True)
    part = small(idx_dir, tmp_path / "part", iters=20, checkpoint_every=6)
    # stop after iteration 15 (Ctrl-C): the last checkpoint is the one of iteration 12 ...
    real_update = train._Progress.update

    def stop_at_15(self, it, loss, lr):
        real_update(self, it, loss, lr)
        if it == 15:
            raise KeyboardInterrupt

    monkeypatch.setattr(train._Progress, "update", stop_at_15)
    assert train.run(part, quiet=True)["status"] == "interrupted"
    monkeypatch.setattr(train._Progress, "update", real_update)
    with open(tmp_path / "part" / "steps.csv", "ab") as f:
        f.write(b"16,garbage row written after the checkpoint\n17,1.0,")  # torn last line
    assert runfolder.read_checkpoint(str(tmp_path / "part"))[0]["iter"] == 12
    train.resume(str(tmp_path / "part"), quiet=True)
    assert read(tmp_path / "part" / "steps.csv") == read(tmp_path / "full" / "steps.csv")


def test_nonfinite_loss_stops_the_run(idx_dir, tmp_path):
    res = cli("train", "--data-dir", idx_dir, "--optimizer", "sgd", "--opt", "lr=1e4", "--iters", "200",
              "--batch", "32", "--eval-every", "50", "--out", str(tmp_path / "div"))
    assert res.returncode == 3, res.stderr
    s = json.loads(read(tmp_path / "div" / "summary.json"))
    assert s["status"] == "diverged" and "non-finite loss" in s["reason"]
    at = s["stopped_at_iter"]
    assert 1 < at < 200 and f"iteration {at}" in res.stderr and "Traceback" not in res.stderr
    with open(tmp_path / "div" / "steps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == at and not np.isfinite(float(rows[-1]["loss"]))
    assert all(np.isfinite(float(r["loss"])) for r in rows[:-1])


def test_qlab_nonfinite_is_diverged(idx_dir, tmp_path):
    """QLABGrad raises NonFiniteLossError itself; the runner stops the same way (records kept)."""
    data = qr.data.mnist("train", root=idx_dir) + qr.data.mnist("test", root=idx_dir)
    X = data[0].copy()
    X[40:] = 3e38  # batches after the first ones hold huge (finite) pixels: the loss overflows to inf/NaN
    # (NaN pixels themselves are refused before the run starts: tests/test_bad_input_train_api.py)
    s = train.run(small(idx_dir, tmp_path / "q", iters=30), data=(X, data[1], data[2], data[3]), quiet=True)
    assert s["status"] == "diverged" and s["stopped_at_iter"] >= 1


@pytest.mark.parametrize("name", qr.optim.names())
def test_every_optimizer_through_the_runner(idx_dir, tmp_path, name):
    opt = {"lr": 0.01} if name in ("sgd",) else {}
    s = train.run(small(idx_dir, tmp_path / name, optimizer=name, opt=opt, iters=3, eval_every=3), quiet=True)
    assert s["status"] in ("finished", "diverged"), s["reason"]
    assert s["iters_done"] == 3 or s["status"] == "diverged"


def test_batchnorm_model_through_the_runner(tmp_path, rng):
    """ResNet-18 (BatchNorm) on a few CIFAR-shaped images: QLABGrad's probe must leave the running
    statistics as a plain SGD step with the same lr would (probe = no state update)."""
    X = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    cfg = dict(model="resnet18", data="cifar10", data_dir=str(tmp_path), optimizer="qlabgrad", iters=2, batch=4,
               eval_every=2, out=str(tmp_path / "rn"))
    s = train.run(cfg, data=(X, y, X[:4], y[:4]), quiet=True)
    assert s["status"] == "finished"
    from qlabref import runfolder

    ck = runfolder.read_checkpoint(str(tmp_path / "rn"))[1]
    assert int(ck["model"]["bn1.num_batches_tracked"]) == 2  # two forward passes with statistics, not 4+


def test_figures(idx_dir, tmp_path):
    train.run(small(idx_dir, tmp_path / "q"), quiet=True)
    train.run(small(idx_dir, tmp_path / "s", optimizer="sgd", opt={"lr": 0.1}), quiet=True)
    res = cli("train", "--data-dir", idx_dir, "--optimizer", "sgd", "--opt", "lr=1e4", "--iters", "100",
              "--batch", "32", "--out", str(tmp_path / "d"), "--quiet")
    assert res.returncode == 3
    out = tmp_path / "fig"
    res = cli("plot", str(tmp_path / "q"), str(tmp_path / "s"), str(tmp_path / "d"), "--out", str(out),
              "--zoom", "0:10:0:3", "--smooth", "3")
    assert res.returncode == 0, res.stderr
    for name in ("lr.png", "lr.svg", "loss.png", "loss.svg", "qlab.png", "qlab.svg"):
        assert (out / name).stat().st_size > 5000
    svg = (out / "loss.svg").read_text()
    assert "diverged at t=" in svg and "clipped" in svg
    from qlabref import runplots

    fig = runplots.loss_figure([str(tmp_path / "q"), str(tmp_path / "d")], smooth=2)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert hi < 100  # the diverged run (loss → inf) does not squash the finished one
    assert ax.get_xlim()[0] == 0
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("diverged" in t for t in labels) and any(t.startswith("qlabgrad") for t in labels)
    # the QLAB panel plots exactly the recorded α*, ‖∇L‖² = −a1 and a2 of each step
    fig = runplots.qlab_figure([str(tmp_path / "q")])
    run = runplots.load_run(str(tmp_path / "q"))
    line = fig.axes[1].get_lines()[0]
    np.testing.assert_array_equal(line.get_ydata(), -run["a1"])
    with pytest.raises(ValueError, match="none of the runs has QLAB columns"):
        runplots.qlab_figure([str(tmp_path / "s")])


BAD = [
    (["train", "--out", "FILE"], "is a file, not a folder"),
    (["train", "--out", "OUT", "--optimizer", "nope"], "unknown optimizer 'nope'"),
    (["train", "--out", "OUT", "--optimizer", "sgd", "--opt", "lr"], "expected key=value"),
    (["train", "--out", "OUT", "--optimizer", "sgd", "--opt", "bogus=1"], "bogus"),
    (["train", "--out", "OUT", "--schedule", "nope"], "unknown schedule 'nope'"),
    (["train", "--out", "OUT", "--optimizer", "sgd", "--schedule", "ss-decay"], "step_size"),
    (["train", "--out", "OUT", "--model", "cnn", "--data", "cifar10", "--data-dir", "."], "use --data mnist"),
    (["train", "--out", "OUT", "--model", "resnet18"], "3-channel"),
    (["train", "--out", "OUT", "--data", "cifar10"], "give data_dir"),
    (["train"], "--out DIR is required"),
    (["train", "--resume", "NOPE"], "no such folder"),
    (["train", "--resume", "OUT", "--iters", "5"], "drop --iters"),
    (["train", "--out", "OUT", "--data-dir", "NOPE"], "no such folder"),
    (["plot", "NOPE"], "no such run directory"),
    (["plot", "OUT"], "not a run directory"),
]


@pytest.mark.parametrize("argv,msg", BAD)
def test_bad_arguments(tmp_path, argv, msg):
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "OUT").mkdir()
    argv = [str(tmp_path / a) if a in ("FILE", "OUT", "NOPE") else a for a in argv]
    res = cli(*argv)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    assert msg in res.stderr, res.stderr
    assert not (tmp_path / "OUT" / "steps.csv").exists()


def test_out_with_a_run_is_not_overwritten(idx_dir, tmp_path):
    train.run(small(idx_dir, tmp_path / "r"), quiet=True)
    before = read(tmp_path / "r" / "steps.csv")
    res = cli("train", "--data-dir", idx_dir, "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "already holds a run" in res.stderr
    assert read(tmp_path / "r" / "steps.csv") == before


def test_data_info_and_plain_progress(idx_dir, tmp_path):
    # SGD: this test is about the progress lines; QLABGrad on 256 random-label images can blow up and
    # end with FindPLRError (exit 4), as the MNIST reproduction documents
    res = cli("train", "--data-dir", idx_dir, "--iters", "40", "--batch", "16", "--optimizer", "sgd", "--opt",
              "lr=0.01", "--out", str(tmp_path / "p"))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if " iter " in ln]
    assert lines and all("it/s" in ln and "loss" in ln and "left" in ln for ln in lines)
    assert "\r" not in res.stderr  # not a terminal: plain lines, no bar
    q = cli("train", "--data-dir", idx_dir, "--iters", "5", "--optimizer", "sgd", "--out", str(tmp_path / "q"),
            "--quiet")
    assert q.returncode == 0 and q.stderr == ""
    info = cli("data", "info")
    assert info.returncode in (0, 1) and "mnist" in info.stdout


@pytest.mark.slow  # > 3 s: off the README's fast path, run by CI
def test_one_writer_per_run_directory(idx_dir, tmp_path):
    """A second process resuming a folder that a running process trains into is refused (exit 2),
    and the running one finishes with the same records as an undisturbed run."""
    args = ["train", "--data-dir", idx_dir, "--iters", "400", "--batch", "32", "--eval-every", "400", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "qlabref", *args, "--out", str(tmp_path / "a")], env=ENV)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "a" / "config.json").exists():
        time.sleep(0.01)
    res = cli("train", "--resume", str(tmp_path / "a"))
    still_running = proc.poll() is None
    proc.wait()
    if still_running:  # the refusal is only meaningful while the first process held the folder
        assert res.returncode == 2 and "another qlabref process is training into this folder" in res.stderr
        assert "Traceback" not in res.stderr
    assert proc.returncode == 0
    assert cli(*args, "--out", str(tmp_path / "b")).returncode == 0
    assert read(tmp_path / "a" / "steps.csv") == read(tmp_path / "b" / "steps.csv")
