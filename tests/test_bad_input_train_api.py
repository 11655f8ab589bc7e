"""`qr.train.run` and `qlabref train` under the bad-input rule (issue 23, sections 6 and 7): wrong data
is refused before a run folder exists (no empty folder holding `.lock` is left behind), lists are taken
as arrays, and the configuration names the data set the images must match."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from qlabref import train

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")


def _data(shape=(1, 28, 28), n=40, classes=10, seed=0):
    r = np.random.default_rng(seed)
    X = r.random((n, *shape), dtype=np.float32)
    y = r.integers(0, classes, n)
    return X, y, X[:8].copy(), y[:8].copy()


def cfg(out, **kw):
    c = dict(model="mlp", data="mnist", optimizer="sgd", opt={"lr": 0.05}, iters=3, batch=8, eval_every=3,
             out=str(out))
    c.update(kw)
    return c


def _with(i, value):
    d = list(_data())
    d[i] = value
    return tuple(d)


@pytest.mark.parametrize("data, match", [
    (_data(shape=(3, 32, 32)),
     r"X_train has shape \(40, 3, 32, 32\); data='mnist' needs images of shape \(N, 1, 28, 28\)"),
    (_with(0, _data()[0].reshape(40, 784)), r"X_train has shape \(40, 784\)"),
    (_with(1, _data()[1].astype(float)), "y_train must hold integer class labels"),
    (_with(1, _data()[1] + 5), r"y_train holds labels from \d+ to 1[0-4]; data='mnist' has classes 0..9"),
    (_with(3, -_data()[3] - 1), "y_test holds labels from -"),
    (_with(1, _data()[1][:10]), "y_train has shape"),
    (_with(0, np.where(np.arange(40).reshape(40, 1, 1, 1) == 7, np.nan, _data()[0])), "X_train holds 784 NaN/inf"),
    (_with(2, np.zeros((0, 1, 28, 28), np.float32)), "X_test"),
    (_with(0, np.array([[["a"] * 28] * 28] * 40)), "X_train must hold numbers"),
    (_data()[:3], "data must be a tuple"),
    ("mnist", "data must be a tuple"),
])
def test_run_refuses_bad_data_before_the_run_folder_exists(tmp_path, data, match):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train.run(cfg(out), data=data, quiet=True)
    assert not out.exists()


def test_run_refusal_in_an_existing_folder_leaves_it_as_it_was(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="X_train has shape"):
        train.run(cfg(out), data=_data(shape=(3, 32, 32)), quiet=True)
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_data_as_lists_is_the_same_run_as_arrays(tmp_path):
    arrays = _data()
    lists = tuple(a.tolist() for a in arrays)
    train.run(cfg(tmp_path / "a"), data=arrays, quiet=True)
    s = train.run(cfg(tmp_path / "b"), data=lists, quiet=True)
    assert s["status"] == "finished"
    for f in ("steps.csv", "evals.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_cifar_shaped_data_under_its_own_name_is_accepted(tmp_path):
    s = train.run(cfg(tmp_path / "c", model="resnet18", data="cifar10", data_dir=str(tmp_path), iters=1, batch=4,
                      eval_every=1), data=_data(shape=(3, 32, 32), n=8), quiet=True)
    assert s["status"] == "finished" and s["config"]["data"] == "cifar10"


def test_failing_setup_removes_the_folder_it_created(tmp_path, monkeypatch):
    """An error after the folder was made but before any record (here: the optimizer cannot be built)
    leaves no folder holding only `.lock` and `config.json`."""
    out = tmp_path / "run"
    with pytest.raises(ValueError):
        train.run(cfg(out, opt={"lr": -1.0}), data=_data(), quiet=True)
    assert not out.exists()


def _cli(*args, env=ENV):
    return subprocess.run([sys.executable, "-m", "qlabref", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_failures_leave_no_run_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["train", "--out", str(tmp_path / "a"), "--data-dir", str(empty), "--iters", "2"], "train-images"),
        (["train", "--out", str(tmp_path / "b"), "--optimizer", "sgd", "--opt", "lr=-1", "--iters", "2"], "lr"),
        (["train", "--out", str(tmp_path / "c"), "--optimizer", "nope"], "unknown optimizer"),
    ]
    for argv, msg in cases:
        res = _cli(*argv)
        assert res.returncode == 2, (argv, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and msg in res.stderr, (argv, res.stderr)
        assert not os.path.exists(argv[2]), argv


def test_qlabref_data_pointing_at_a_file_is_refused_before_any_download(tmp_path):
    f = tmp_path / "cache_is_a_file"
    f.write_text("x")
    env = dict(ENV, QLABREF_DATA=str(f), PIP_INDEX_URL="http://127.0.0.1:1/simple")  # a download would fail
    for argv in (["train", "--out", str(tmp_path / "r"), "--iters", "2"], ["data", "fetch", "mnist"]):
        res = _cli(*argv, env=env)
        assert res.returncode == 2, res.stderr
        assert f"QLABREF_DATA={f}: is a file, not a folder (nothing was downloaded)" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "fetching" not in res.stderr
    assert not (tmp_path / "r").exists() and f.read_text() == "x"


def test_check_cache_dir_names_the_problem(tmp_path, monkeypatch):
    from qlabref import data

    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("QLABREF_DATA", str(f / "sub"))
    with pytest.raises(data.DataError, match="cannot be created, .*file is a file"):
        data.check_cache_dir()
    monkeypatch.setenv("QLABREF_DATA", str(tmp_path / "new" / "cache"))
    assert data.check_cache_dir() == str(tmp_path / "new" / "cache")
    assert not (tmp_path / "new").exists()  # checking creates nothing
