"""Bad command-line arguments: exit code 2, exactly one line on stderr, no traceback, and no work done
(the output folder is checked first, sizes are bounded, ignored options are refused)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qlabref import cli
from qlabref.commands import _args
from qlabref.errors import UsageError


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "a_file.txt"
    f.write_text("not a folder")
    return f


def _cases(tmp, a_file):
    out = str(tmp / "out")
    return [
        # output folders that cannot be used: reported before any run
        (["demo", "--out", str(a_file)], "is a file, not a folder"),
        (["demo", "--out", str(a_file / "sub")], "is a file"),
        (["trajectories", "--functions", "booth", "--out", str(a_file)], "is a file, not a folder"),
        (["explain", "--out", str(a_file)], "is a file, not a folder"),
        (["bench", "--models", "mlp", "--out", str(a_file)], "is a file, not a folder"),
        # numbers out of range or not numbers
        (["explain", "--points", "0", "--out", out], "between 3 and"),
        (["explain", "--points", "-5", "--out", out], "between 3 and"),
        (["explain", "--points", "100000000", "--out", out], "between 3 and"),
        (["explain", "--points", "many", "--out", out], "expected a whole number"),
        (["explain", "--step", "0", "--out", out], "between 1 and"),
        (["explain", "--lr", "-0.1", "--optimizer", "sgd", "--out", out], "must be > 0"),
        (["explain", "--lr", "nan", "--optimizer", "sgd", "--out", out], "finite"),
        (["trajectories", "--starts", "1000000000", "--out", out], "between 1 and 1000"),
        (["trajectories", "--starts", "0", "--out", out], "between 1 and 1000"),
        (["trajectories", "--steps", "-1", "--out", out], "between 1 and"),
        (["trajectories", "--tol", "0", "--out", out], "must be > 0"),
        (["trajectories", "--alpha0", "inf", "--out", out], "finite"),
        (["demo", "--starts", "1000000", "--out", out], "between 1 and 100"),
        (["demo", "--seed", "-1", "--out", out], "seed"),
        (["verify", "--seed", "-1"], "seed"),
        (["verify", "--seed", "x"], "seed"),
        (["bench", "--batch", "0", "--out", out], "between 1 and"),
        (["bench", "--threads", "100000", "--out", out], "between 1 and 256"),
        (["bench", "--seed", "-3", "--out", out], "seed"),
        # options that would be ignored
        (["trajectories", "--functions", "booth", "--lrs", "qlabgrad=0.1", "--out", out], "takes no learning rate"),
        (["trajectories", "--functions", "booth", "--optimizers", "l4gd", "--lrs", "l4gd=0.1", "--out", out],
         "takes no learning rate"),
        (["explain", "--model", "mlp", "--function", "himmelblau", "--out", out], "--function would be ignored"),
        (["explain", "--model", "mlp", "--start", "1", "2", "--out", out], "--start would be ignored"),
        (["explain", "--function", "booth", "--batch", "8", "--out", out], "--batch would be ignored"),
        (["explain", "--function", "booth", "--seed", "3", "--out", out], "--seed would be ignored"),
        (["explain", "--lr", "0.1", "--out", out], "--lr would be ignored"),
        (["explain", "--optimizer", "sgd", "--alpha0", "0.1", "--out", out], "--alpha0 would be ignored"),
        # names
        (["explain", "--function", "nosuch", "--out", out], "unknown test function 'nosuch'"),
        (["explain", "--optimizer", "nosuch", "--out", out], "unknown optimizer 'nosuch'"),
        (["trajectories", "--functions", "boothh", "--out", out], "unknown test function 'boothh'"),
        (["trajectories", "--lrs", "sgd=fast", "--out", out], "cannot read learning rates"),
        (["nosuchcommand"], "invalid choice"),
        (["trajectories", "--functions", "booth", "booth", "--out", out], "booth is given more than once"),
        (["trajectories", "--optimizers", "l4gd", "l4gd", "--out", out], "l4gd is given more than once"),
        (["explain", "--model", "mlp", "--step", "500", "--out", out], "at most 200 with --model"),
        (["explain", "--model", "mlp", "--points", "5000", "--out", out], "at most 1001 with --model"),
    ]


def test_every_bad_argument_is_one_line_on_stderr_with_exit_code_2(tmp_path, a_file, capsys):
    for argv, msg in _cases(tmp_path, a_file):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        assert code == 2, (argv, code, captured.err)
        assert len(lines) == 1, (argv, captured.err)
        assert "Traceback" not in captured.err and msg in lines[0], (argv, lines[0])
    # nothing was run: no output folder was filled
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_installed_entry_point_prints_no_traceback(tmp_path, a_file):
    for argv in (["explain", "--points", "0"], ["demo", "--out", str(a_file)], ["verify", "--seed", "-1"]):
        r = subprocess.run([sys.executable, "-m", "qlabref", *argv], capture_output=True, text=True, cwd=tmp_path,
                           timeout=120)
        assert r.returncode == 2, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, (argv, r.stderr)


def test_ensure_writable_dir(tmp_path, a_file):
    d = _args.ensure_writable_dir(tmp_path / "a" / "b")
    assert d.is_dir() and not list(d.iterdir())  # the write test leaves nothing behind
    with pytest.raises(UsageError, match="is a file"):
        _args.ensure_writable_dir(a_file)
    with pytest.raises(UsageError, match="is a file"):
        _args.ensure_writable_dir(a_file / "x")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(UsageError, match="not a writable folder"):
                _args.ensure_writable_dir(ro / "sub")
        finally:
            ro.chmod(0o700)


def test_argument_types():
    import argparse

    assert _args.bounded_int(3, 10)("1e1") == 10
    for bad in ("2", "11", "3.5", "x", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.bounded_int(3, 10)(bad)
    assert _args.positive_float("0.5") == 0.5
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _args.positive_float(bad)
    assert _args.seed("0") == 0
    with pytest.raises(argparse.ArgumentTypeError):
        _args.seed("-1")


@pytest.mark.slow  # > 3 s: off the README's fast path, run by CI
def test_trajectories_writes_each_function_as_it_is_done(tmp_path, capsys, monkeypatch):
    """Results are written as they are produced: when the second function starts, the first one's
    figures and a partial table already exist."""
    from qlabref.commands import trajectories as traj
    from qlabref import trajectory

    out = tmp_path / "t"
    seen = {}
    real_sweep = trajectory.sweep

    def spy(fn, *a, **k):
        if fn.name == "himmelblau" and not seen:
            seen["files"] = sorted(p.name for p in out.iterdir())
            seen["table"] = (out / "table.md").read_text()
        return real_sweep(fn, *a, **k)

    monkeypatch.setattr(trajectory, "sweep", spy)
    assert cli.main(["trajectories", "--functions", "booth", "himmelblau", "--starts", "1", "--steps", "50",
                     "--lrs", "0.01", "--out", str(out)]) == 0
    assert {"booth.png", "booth_curves.png", "booth_sweep.png", "table.md", "results.json"} <= set(seen["files"])
    assert "partial" in seen["table"] and "| booth |" in seen["table"]
    assert "partial" not in (out / "table.md").read_text() and "| himmelblau |" in (out / "table.md").read_text()
    assert traj  # the module the command lives in
