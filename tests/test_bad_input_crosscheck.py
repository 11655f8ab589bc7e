"""`qlabref crosscheck` and `qr.crosscheck` under the bad-input rule (issue 23, sections 5 and 7):
every wrong input is one line on stderr with exit code 2 (a ValueError/TypeError naming the problem
in Python) before anything runs or any folder is made, and every size is bounded."""
from __future__ import annotations

import os

import numpy as np
import pytest

import qlabref as qr
from qlabref import cli

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _needs_torch(torch):
    """Skipped without PyTorch (a failure with QLABREF_REQUIRE_TORCH=1), as every cross-check."""


@pytest.fixture
def files(tmp_path):
    r = np.random.default_rng(0)
    d = tmp_path
    (d / "empty.npz").write_bytes(b"")
    (d / "text.npz").write_text("X,y\n1,2\n")
    np.savez(d / "obj.npz", X=np.array([object(), 1], dtype=object), y=np.arange(2))
    np.save(d / "one.npy", np.zeros((3, 1, 28, 28)))
    os.replace(d / "one.npy", d / "one.npz")
    np.savez(d / "noy.npz", X=r.random((8, 1, 28, 28)))
    np.savez(d / "cifar.npz", X=r.random((40, 3, 32, 32)).astype("f4"), y=r.integers(0, 10, 40))
    np.savez(d / "labels.npz", X=r.random((40, 1, 28, 28)).astype("f4"), y=r.integers(0, 20, 40))
    np.savez(d / "neglabels.npz", X=r.random((40, 1, 28, 28)).astype("f4"), y=-r.integers(1, 5, 40))
    np.savez(d / "floatlabels.npz", X=r.random((40, 1, 28, 28)).astype("f4"), y=r.random(40))
    X = r.random((40, 1, 28, 28)).astype("f4")
    X[3, 0, 4, 4] = np.nan
    np.savez(d / "nan.npz", X=X, y=r.integers(0, 10, 40))
    np.savez(d / "short.npz", X=r.random((40, 1, 28, 28)).astype("f4"), y=r.integers(0, 10, 39))
    np.savez(d / "ok.npz", X=r.random((40, 1, 28, 28)).astype("f4"), y=r.integers(0, 10, 40))
    (d / "syntax.py").write_text("def build(:\n    pass\n")
    (d / "raises.py").write_text("raise RuntimeError('boom at import')\n")
    (d / "badret.py").write_text("def build():\n    return 42\n")
    (d / "a_file").write_text("x")
    return d


def _cases(d):
    ok = str(d / "ok.npz")
    cases = [
        (["--data", str(d / "empty.npz")], "empty.npz' is empty"),
        (["--data", str(d / "text.npz")], "text.npz' is not a .npz archive"),
        (["--data", str(d / "obj.npz")], "array X holds Python objects"),
        (["--data", str(d / "one.npz")], "holds one array (.npy)"),
        (["--data", str(d / "noy.npz")], "has no array y"),
        (["--data", str(d / "nosuch.npz")], "no such file"),
        (["--data", str(d / "cifar.npz")], "X has examples of shape (3, 32, 32); --model mlp takes (1, 28, 28)"),
        (["--data", str(d / "labels.npz")], "labels up to 19, but the model has 10 outputs"),
        (["--data", str(d / "neglabels.npz")], "negative labels"),
        (["--data", str(d / "floatlabels.npz")], "integer class labels"),
        (["--data", str(d / "nan.npz")], "NaN/inf"),
        (["--data", str(d / "short.npz")], "40 examples and y shape (39,)"),
        (["--data", ok, "--out", "/etc/passwd"], "is a file, not a folder"),
        (["--data", ok, "--out", str(d / "a_file" / "sub")], "a_file is a file"),
        (["--data", ok, "--device", "nonsense"], "'nonsense' is not a PyTorch device"),
        (["--data", ok, "--device", "cuda:99"], "cuda:99"),
        (["--data", ok, "--device", "meta"], "only cpu and cuda"),
        (["--data", ok, "--model", f"{d / 'syntax.py'}:build"], "line 1: SyntaxError"),
        (["--data", ok, "--model", f"{d / 'raises.py'}:build"], "RuntimeError: boom at import"),
        (["--data", ok, "--model", f"{d / 'badret.py'}:build"], "model must be a torch.nn.Module"),
        (["--data", ok, "--model", f"{d / 'nosuch.py'}:build"], "no such file"),
        (["--data", ok, "--limit", "-5"], "--limit: must be >= 0, got -5"),
        (["--data", ok, "--batch-size", "1000000000"], "--batch-size: must be between 1 and"),
        (["--data", ok, "--batch-size", "41"], "--batch-size must be an integer between 1 and 40"),
        (["--data", ok, "--batch-size", "0"], "--batch-size: must be between 1 and"),
        (["--data", ok, "--steps", "1000000000"], "--steps: must be between 1 and 100000"),
        (["--data", ok, "--steps", "0"], "--steps: must be between 1 and"),
        (["--data", ok, "--seed", "-1"], "--seed"),
        (["--data", ok, "--tol", "0"], "--tol: must be > 0"),
        (["--data", ok, "--tol", "nan"], "--tol: must be a finite number"),
        (["--data", ok, "--lr", "-1", "--optimizer", "sgd"], "--lr: must be > 0"),
        (["--data", ok, "--optimizer", "sgd"], "--optimizer sgd needs --lr"),
        (["--data", ok, "--backend", "cuda", "--optimizer", "sgd", "--lr", "0.1"],
         "--backend cuda runs the reference side on the GPU for --optimizer qlabgrad only"),
    ]
    from qlabref.kernels import launch

    if not launch.cuda_status()[0]:
        cases.append((["--data", ok, "--backend", "cuda"], "--backend cuda: device='cuda': "))
    try:
        import torch

        if not torch.cuda.is_available():
            cases.append((["--data", ok, "--device", "cuda"], "PyTorch sees no CUDA GPU here"))
    except ImportError:  # pragma: no cover
        pass
    return cases


def test_every_bad_crosscheck_input_is_one_line_and_exit_code_2(files, capsys):
    out = files / "out"
    for argv, msg in _cases(files):
        argv = ["crosscheck", *argv]
        if "--out" not in argv:
            argv += ["--out", str(out)]
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        cap = capsys.readouterr()
        lines = [ln for ln in cap.err.splitlines() if ln.strip()]
        assert code == 2, (argv, code, cap.err)
        assert len(lines) == 1 and "Traceback" not in cap.err, (argv, cap.err)
        assert msg in lines[0], (argv, lines[0])
        assert "crosscheck: crosscheck:" not in lines[0]
        assert cap.out == "", (argv, cap.out)  # nothing started: not even the header
        assert not out.exists(), argv  # and no output folder made


def test_crosscheck_out_is_made_only_when_it_runs(files, capsys):
    out = files / "new" / "deeper"
    code = cli.main(["crosscheck", "--data", str(files / "ok.npz"), "--steps", "2", "--dtype", "float64",
                     "--batch-size", "8", "--quiet", "--out", str(out)])
    assert code == 0
    assert sorted(os.listdir(out)) == ["crosscheck.csv", "crosscheck.png"]


# ---------------------------------------------------------------------------------------- Python API
def _model():
    return qr.models.mlp((784, 12, 10), dtype=np.float64)


def _xy(n=16, shape=(1, 28, 28), classes=10, seed=0):
    r = np.random.default_rng(seed)
    return r.random((n, *shape)), r.integers(0, classes, n)


@pytest.mark.parametrize("change, match", [
    (dict(X=_xy(shape=(3, 32, 32))[0]), r"X has examples of shape \(3, 32, 32\), which the model does not take"),
    (dict(y=_xy(classes=30)[1] + 10), "labels up to .* but the model has 10 outputs"),
    (dict(y=-_xy()[1] - 1), "negative labels"),
    (dict(y=_xy()[1].astype(float)), "integer class labels"),
    (dict(y=_xy()[1][:5]), "need one target per example"),
    (dict(X=np.where(np.arange(784).reshape(1, 1, 28, 28) == 5, np.nan, _xy()[0])), "NaN/inf"),
    (dict(X=np.full((16, 1, 28, 28), 1e300)), "too large for float32"),
    (dict(X=np.zeros((0, 1, 28, 28)), y=np.zeros(0, int)), "at least one example"),
    (dict(X=np.array([["a"]] * 16)), "X must be numeric"),
    (dict(batch_size=10**9), "batch_size must be an integer between 1 and 16"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(steps=10**9), "steps must be an integer between 1 and 100000"),
    (dict(steps=True), "steps"),
    (dict(seed=-1), "seed"),
    (dict(tol=float("nan")), "tol must be a finite number > 0"),
    (dict(tol=0), "tol must be a finite number > 0"),
    (dict(device="nonsense"), "not a PyTorch device"),
    (dict(device="cuda:99"), "cuda:99"),
    (dict(optimizer="sgd"), r"needs a learning rate \(--lr on the command line"),
])
def test_api_bad_input_is_refused_before_anything_runs(change, match):
    X, y = _xy()
    kw = dict(steps=2, batch_size=8, dtype="float32")
    kw.update(change)
    X, y = kw.pop("X", X), kw.pop("y", y)
    with pytest.raises((ValueError, TypeError), match=match):
        qr.crosscheck(_model(), X, y, **kw)


def test_api_lists_are_taken_as_arrays():
    X, y = _xy()
    a = qr.crosscheck(_model(), X, y, steps=2, batch_size=8)
    b = qr.crosscheck(_model(), X.tolist(), y.tolist(), steps=2, batch_size=8)
    assert a.ok and b.ok and a.rows == b.rows
