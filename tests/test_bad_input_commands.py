"""`plot`, `explain` and `reproduce` under the bad-input rule (issue 23, section 6): damaged records are
named errors (never empty or NaN-filled figures), no NumPy warning precedes the one-line error, and
--dask/--seeds/--jobs are checked before anything runs."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from qlabref import cli, runplots

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
HEADER = "iter,loss,lr,evals,a0,a1,a2,alpha_star,pre_lr,fallback\n"
ROW = "1,2.3,0.1,2,2.3,-0.5,0.2,1.25,0.1,0\n"


def _one_line_error(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert code == 2, (argv, cap.err)
    assert len(lines) == 1 and "Traceback" not in cap.err, (argv, cap.err)
    return lines[0]


@pytest.mark.parametrize("steps, match", [
    (HEADER.encode(), "steps.csv: no rows yet (only the header): nothing to plot"),
    (b"", "steps.csv: empty (no header)"),
    ((HEADER + ROW + "2,abc,0.1,2,,,,,,\n").encode(), "steps.csv: line 3, column loss: 'abc' is not a number"),
    ((HEADER + ROW + "2,1.0\n").encode(), "steps.csv: line 3 has 2 cells"),
    (bytes(range(256)) * 4, "steps.csv: not a text file"),
    (b"\x00" * 300 + b"\n", "steps.csv: holds NUL bytes"),
    (b"a,b,c\n1,2,3\n", "steps.csv: expected the columns iter, loss, lr"),
])
def test_plot_damaged_steps_csv_is_a_named_error(tmp_path, capsys, steps, match):
    run = tmp_path / "run"
    run.mkdir()
    (run / "steps.csv").write_bytes(steps)
    line = _one_line_error(["plot", str(run)], capsys)
    assert match in line and str(run) in line, line
    assert not (run / "figures").exists()


def test_plot_damaged_evals_csv_is_a_named_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "steps.csv").write_text(HEADER + ROW)
    (run / "evals.csv").write_text("iter,test_loss,test_accuracy\n0,2.3,zero\n")
    assert "evals.csv: line 2, column test_accuracy: 'zero' is not a number" in _one_line_error(["plot", str(run)],
                                                                                               capsys)


def test_plot_reads_a_run_being_written_and_diverged_values(tmp_path):
    """A torn last row (the run is still writing) is left out; `nan`/`inf` of a diverged step are values."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "steps.csv").write_text(HEADER + ROW + "2,inf,,,,,,,,\n3,1.")
    r = runplots.load_run(str(run))
    assert list(r["iter"]) == [1.0, 2.0] and r["loss"][1] == float("inf")
    assert r["lr"][1] != r["lr"][1]  # empty cell: NaN


def test_explain_prints_no_runtime_warning_before_its_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "qlabref", "explain", "--start", "1e300", "1e300", "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "RuntimeWarning" not in res.stderr and "diverged" in res.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, match", [
    (["--seeds", "99999999999999999999999"], "--seeds: must be between 0 and 9223372036854775807"),
    (["--seeds", "-1"], "--seeds"),
    (["--seeds", "x"], "--seeds"),
    (["--jobs", "0"], "--jobs: must be between 1 and 64"),
    (["--jobs", "1000"], "--jobs: must be between 1 and 64"),
])
def test_reproduce_bad_arguments(tmp_path, capsys, argv, match):
    line = _one_line_error(["reproduce", "mnist-mlp", *argv, "--runs-dir", str(tmp_path / "r"), "--results",
                            str(tmp_path / "s")], capsys)
    assert match in line
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_reproduce_unreachable_dask_is_one_line_quickly(tmp_path):
    pytest.importorskip("dask.distributed")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "qlabref", "reproduce", "mnist-mlp", "--dask", "tcp://127.0.0.1:1",
                          "--runs-dir", str(tmp_path / "r"), "--results", str(tmp_path / "s")],
                         capture_output=True, text=True, env=ENV, timeout=300)
    took = time.monotonic() - t0
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "--dask tcp://127.0.0.1:1: no Dask scheduler answered within 5 s" in res.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()
    assert took < 120  # the 5 s connection timeout plus imports on a loaded machine, not minutes
