"""Run folders that cannot be corrupted or used to run code (issue 23).

Every refused resume is checked to leave the run folder byte-for-byte as it was (every file hashed
before and after); every accepted one to give the records of an uninterrupted run. Data: a small
synthetic MNIST-shaped set given to ``train.run(data=...)``; a few runs go through the command line."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qlabref as qr
from qlabref import runfolder, train
from qlabref.nn import functional as F

ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
ITERS, CKPT_EVERY, STOP_AT = 20, 6, 15  # interrupted after 15: the last checkpoint is the one of 12


def _data():
    r = np.random.default_rng(23)
    X = r.random((96, 1, 28, 28), dtype=np.float32)
    y = r.integers(0, 10, 96)
    return X, y, X[:24].copy(), y[:24].copy()


DATA = _data()


def cfg(out, **kw):
    c = dict(model="mlp", data="mnist", optimizer="qlabgrad", iters=ITERS, batch=16, seed=1, eval_every=5,
             checkpoint_every=CKPT_EVERY, out=str(out))
    c.update(kw)
    return c


def run_interrupted(config, stop_at=STOP_AT, data=DATA):
    """A run stopped by Ctrl-C right after iteration ``stop_at`` (its rows written, as after a kill)."""
    real = train._Progress.update

    def update(self, it, loss, lr):
        real(self, it, loss, lr)
        if it == stop_at:
            raise KeyboardInterrupt

    train._Progress.update = update
    try:
        s = train.run(config, data=data, quiet=True)
    finally:
        train._Progress.update = real
    assert s["status"] == "interrupted"
    return s


def snapshot(folder):
    """{relative path: sha256} of every file under ``folder`` (hidden ones included)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def read(p):
    with open(p, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run ``ref`` and an interrupted twin ``part`` (checkpoint at 12, rows to 15)."""
    base = tmp_path_factory.mktemp("runs")
    train.run(cfg(base / "ref"), data=DATA, quiet=True)
    run_interrupted(cfg(base / "part"))
    return base


@pytest.fixture
def part(runs, tmp_path):
    """A fresh copy of the interrupted run folder."""
    dst = tmp_path / "part"
    shutil.copytree(runs / "part", dst)
    return dst


def refused(folder, match, **kw):
    """Resume must raise RunFolderError (or ValueError) matching ``match`` and change nothing."""
    before = snapshot(folder)
    with pytest.raises(ValueError, match=match) as info:
        train.resume(str(folder), data=DATA, quiet=True, **kw)
    assert "\n" not in str(info.value)
    assert snapshot(folder) == before
    return str(info.value)


def resumed_identical(folder, runs):
    s = train.resume(str(folder), data=DATA, quiet=True)
    assert s["status"] == "finished", s.get("reason")
    assert read(folder / "steps.csv") == read(runs / "ref" / "steps.csv")
    assert read(folder / "evals.csv") == read(runs / "ref" / "evals.csv")
    return s


# ---------------------------------------------------------------------------------------- the format
def test_checkpoint_is_json_plus_npz_without_pickles(runs):
    names = sorted(os.listdir(runs / "part"))
    assert "checkpoint.pkl" not in names and "checkpoint.json" in names
    npz = [n for n in names if n.startswith("checkpoint-") and n.endswith(".npz")]
    assert len(npz) == 1
    doc = json.loads(read(runs / "part" / "checkpoint.json"))
    assert doc["format"] == "qlabref-checkpoint" and doc["version"] == 2 and doc["body"]["iter"] == 12
    blob = read(runs / "part" / npz[0])
    assert doc["arrays_sha256"] == hashlib.sha256(blob).hexdigest()
    with zipfile.ZipFile(runs / "part" / npz[0]) as z:  # plain .npy members, loadable without pickle
        for name in z.namelist():
            assert name.endswith(".npy")
    with np.load(runs / "part" / npz[0], allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    for key in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "numba_threads", "numpy", "numba", "python",
                "blas", "backend", "cpu"):
        assert key in doc["body"]["environment"]


def _same(a, b, where="state"):
    """Deep equality that also requires the same types, dtypes and bytes (a pickle's faithfulness)."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), where
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


@pytest.mark.parametrize("name", qr.optim.names())
def test_every_optimizer_state_round_trips_exactly(name, tmp_path):
    """Everything the pickle held -- each optimizer's state after a few steps, a schedule, the data
    order -- comes back from checkpoint.json + .npz with the same types, dtypes and bits."""
    rng = np.random.default_rng(5)
    model = qr.nn.Sequential(qr.nn.Linear(6, 5), qr.nn.ReLU(), qr.nn.Linear(5, 3))
    X, y = rng.standard_normal((16, 6)).astype(np.float32), rng.integers(0, 3, 16)
    try:
        opt = qr.optim.get(name, model.parameters())
    except (TypeError, ValueError):
        opt = qr.optim.get(name, model.parameters(), lr=0.01)
    sched = qr.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if "lr" in opt.param_groups[0] else None
    batches = qr.data.batches(X, y, 5, seed=3)
    for _ in range(4):
        xb, yb = next(batches)
        opt.step(lambda: F.cross_entropy(model(qr.tensor(xb)), yb))
        if sched is not None:
            sched.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict() if sched else None, "batches": batches.state_dict(),
             "extras": (np.float32(1.5), np.int64(-3), float("nan"), float("-inf"), {3: (1, [2.0])}, True, None)}
    runfolder.write_checkpoint(str(tmp_path), {"iter": 1}, state)
    body, back = runfolder.read_checkpoint(str(tmp_path))
    assert body == {"iter": 1}
    _same(state, back)
    opt.load_state_dict(back["optimizer"])  # and the optimizer accepts it


def test_checkpoint_write_is_atomic_and_keeps_one_npz(runs, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(runs / "ref", folder)
    npz = [n for n in os.listdir(folder) if n.endswith(".npz")]
    assert len(npz) == 1 and not [n for n in os.listdir(folder) if n.endswith(".tmp")]


# ---------------------------------------------------------------------------------------- code execution
class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_old_pickle_checkpoint_is_refused_without_unpickling(part, tmp_path):
    marker = tmp_path / "PWNED"
    boom = _Boom()
    boom.marker = str(marker)
    for p in part.glob("checkpoint*"):
        p.unlink()
    (part / "checkpoint.pkl").write_bytes(pickle.dumps({"format": "qlabref-checkpoint-1", "x": boom}))
    msg = refused(part, "checkpoint.pkl")
    assert "pickle" in msg and not marker.exists()


def test_old_pickle_checkpoint_refused_on_the_command_line(part, tmp_path):
    marker = tmp_path / "PWNED"
    boom = _Boom()
    boom.marker = str(marker)
    for p in part.glob("checkpoint*"):
        p.unlink()
    (part / "checkpoint.pkl").write_bytes(pickle.dumps(boom))
    before = snapshot(part)
    res = subprocess.run([sys.executable, "-m", "qlabref", "train", "--resume", str(part), "--quiet"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2 and "checkpoint.pkl" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not marker.exists() and snapshot(part) == before


# ---------------------------------------------------------------------------------------- damaged checkpoints
def _npz(folder):
    return next(folder.glob("checkpoint-*.npz"))


@pytest.mark.parametrize("damage, match", [
    ("empty", "checkpoint.json: empty"),
    ("random", "checkpoint.json: not"),
    ("cut", "checkpoint.json: not valid JSON"),
    ("foreign", "checkpoint.json: not a qlabref checkpoint"),
    ("version", "checkpoint.json: checkpoint format version 99"),
    ("tampered", "checkpoint.json: its SHA-256 does not match"),
    ("tampered-rehashed", "steps.csv: rows are not iterations 1..9"),
    ("deleted", "checkpoint.json: missing, but the folder holds checkpoint-"),
    ("npz-deleted", r"checkpoint-\w+\.npz: missing"),
    ("npz-cut", r"checkpoint-\w+\.npz: \d+ bytes, the checkpoint recorded"),
    ("npz-garbled", r"checkpoint-\w+\.npz: SHA-256 does not match"),
    ("npz-foreign", r"checkpoint-\w+\.npz: (SHA-256 does not match|\d+ bytes)"),
    ("all-deleted", "checkpoint.json: missing, but .*summary.json records a checkpoint at iteration 12"),
])
def test_damaged_checkpoint_is_refused_and_nothing_changes(part, damage, match):
    ck = part / "checkpoint.json"
    raw = read(ck)
    if damage == "empty":
        ck.write_bytes(b"")
    elif damage == "random":
        ck.write_bytes(np.random.default_rng(0).bytes(4000))
    elif damage == "cut":
        ck.write_bytes(raw[:len(raw) // 2])
    elif damage == "foreign":
        ck.write_text('{"name": "something else", "version": 1}')
    elif damage == "version":
        doc = json.loads(raw)
        doc["version"] = 99
        ck.write_text(json.dumps(doc))
    elif damage in ("tampered", "tampered-rehashed"):
        doc = json.loads(raw)
        doc["body"]["iter"] = 9
        if damage == "tampered-rehashed":  # a forger who recomputes the document's checksum
            doc.pop("sha256")
            doc["sha256"] = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        ck.write_text(json.dumps(doc))
    elif damage == "deleted":
        ck.unlink()
    elif damage == "all-deleted":
        ck.unlink()
        _npz(part).unlink()
    elif damage == "npz-deleted":
        _npz(part).unlink()
    elif damage == "npz-cut":
        p = _npz(part)
        p.write_bytes(read(p)[:3000])
    elif damage == "npz-garbled":
        p = _npz(part)
        b = bytearray(read(p))
        b[len(b) // 2] ^= 0xFF
        p.write_bytes(bytes(b))
    elif damage == "npz-foreign":
        p = _npz(part)
        with open(p, "wb") as f:
            np.savez(f, a=np.zeros(3))
    refused(part, match)


# ---------------------------------------------------------------------------------------- damaged records
def test_shortened_steps_csv_is_refused_not_padded(part):
    """Issue 23, case 1: `truncate -s 2000 RUN/steps.csv` used to be lengthened with NUL bytes."""
    size = json.loads(read(part / "checkpoint.json"))["body"]["records"]["steps"]["size"]
    with open(part / "steps.csv", "r+b") as f:
        f.truncate(size - 50)
    msg = refused(part, "steps.csv: .* shorter than")
    assert str(size) in msg


def test_steps_csv_cut_after_the_checkpoint_resumes_identically(part, runs):
    size = json.loads(read(part / "checkpoint.json"))["body"]["records"]["steps"]["size"]
    with open(part / "steps.csv", "r+b") as f:
        f.truncate(size + 7)  # a torn row after the checkpoint
    resumed_identical(part, runs)


@pytest.mark.parametrize("name", ["steps.csv", "timing.csv", "evals.csv"])
def test_deleted_record_file_is_refused(part, name):
    (part / name).unlink()
    refused(part, f"{name}: missing")


@pytest.mark.parametrize("garbage, match", [
    (b"7,abc,0.1,2,,,,,,\n", r"steps.csv: line \d+, column loss: 'abc' is not a number"),
    (b"7,0.5\n", r"steps.csv: line \d+ has 2 cells"),
    (b"\x00\x00\x00\x00\n", "steps.csv: holds NUL bytes"),
    (b"\xff\xfe\n", "steps.csv: not a text file"),
])
def test_garbage_row_before_the_checkpoint_is_found_at_resume(part, garbage, match):
    lines = read(part / "steps.csv").split(b"\n")
    lines[5] = garbage.rstrip(b"\n")
    (part / "steps.csv").write_bytes(b"\n".join(lines))
    refused(part, match)


def test_edited_number_before_the_checkpoint_is_found(part):
    """A row that still parses but was changed (a plausible edit) is caught by the recorded SHA-256."""
    text = read(part / "steps.csv").decode()
    lines = text.split("\n")
    cells = lines[3].split(",")
    cells[1] = repr(float(cells[1]) + 1.0)
    lines[3] = ",".join(cells)
    (part / "steps.csv").write_text("\n".join(lines))
    refused(part, "steps.csv: its first .* bytes differ from what the checkpoint")


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("key, value, match", [
    ("model", "cnn", "config.json: differs from the checkpoint's configuration .*model"),
    ("optimizer", "sgd", "config.json: differs from the checkpoint's configuration .*optimizer"),
    ("iters", 40, "config.json: differs .*iters"),
    ("seed", 2, "config.json: differs .*seed"),
    ("batch", 8, "config.json: differs .*batch"),
    ("model", "nonsense", "config.json: model must be one of"),
])
def test_config_edited_after_the_checkpoint_is_refused(part, key, value, match):
    c = json.loads(read(part / "config.json"))
    c[key] = value
    (part / "config.json").write_text(json.dumps(c))
    refused(part, match)


def test_config_json_garbled_is_refused(part):
    (part / "config.json").write_bytes(b"\x00\x01garbage")
    refused(part, "config.json: not")


# ---------------------------------------------------------------------------------------- determinism
def test_resume_under_other_threads_is_refused_then_allowed_with_drift(part, runs, monkeypatch):
    real = runfolder.determinism_info

    def other():
        info = real()
        info["OPENBLAS_NUM_THREADS"] = "2" if info["OPENBLAS_NUM_THREADS"] != "2" else "3"
        info["numpy"] = "0.0-other"
        return info

    monkeypatch.setattr(runfolder, "determinism_info", other)
    msg = refused(part, "not be bit-identical")
    assert "OPENBLAS_NUM_THREADS" in msg and "numpy" in msg and "--allow-drift" in msg
    s = train.resume(str(part), data=DATA, quiet=True, allow_drift=True)
    assert s["status"] == "finished"
    d = s["determinism"]
    assert d["bit_identical_resumes"] is False and d["drift"][0]["at_iter"] == 12
    assert set(d["drift"][0]["changes"]) == {"OPENBLAS_NUM_THREADS", "numpy"}
    on_disk = json.loads(read(part / "summary.json"))["determinism"]
    assert on_disk["drift"] == d["drift"]


def test_resume_with_the_same_environment_records_no_drift(part, runs):
    s = resumed_identical(part, runs)
    assert s["determinism"]["drift"] == [] and s["determinism"]["bit_identical_resumes"] is True


@pytest.mark.slow
def test_blas_thread_change_refused_on_the_command_line(tmp_path):
    """Issue 23, case 4 as typed: resumed with another OPENBLAS_NUM_THREADS → exit 2, one line."""
    from test_data import write_mnist_folder

    idx = tmp_path / "idx"
    write_mnist_folder(idx, np.random.default_rng(1), n_train=64, n_test=16)
    out = tmp_path / "run"
    run_interrupted(cfg(out, data_dir=str(idx)), data=None)
    here = os.environ.get("OPENBLAS_NUM_THREADS")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2" if here != "2" else "1", MPLBACKEND="Agg")
    before = snapshot(out)
    res = subprocess.run([sys.executable, "-m", "qlabref", "train", "--resume", str(out), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2 and "OPENBLAS_NUM_THREADS" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert snapshot(out) == before
    ok = subprocess.run([sys.executable, "-m", "qlabref", "train", "--resume", str(out), "--quiet", "--allow-drift"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(read(out / "summary.json"))["determinism"]["drift"][0]["changes"]["OPENBLAS_NUM_THREADS"]


def test_allow_drift_without_resume_is_a_usage_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "qlabref", "train", "--out", str(tmp_path / "x"), "--allow-drift"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2 and "--allow-drift" in res.stderr and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------- property
_FILES = ["steps.csv", "timing.csv", "evals.csv"]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(_FILES), action=st.sampled_from(["truncate", "cut", "garble"]),
       where=st.floats(0, 1), length=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_property_damaged_record_file_is_refused_or_resumed_identically(runs, name, action, where, length, seed):
    """Truncate, cut a range out of, or garble any record file at a random point: the resume either
    refuses with a message and changes nothing, or gives the records of an uninterrupted run."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "part")
        shutil.copytree(runs / "part", folder)
        path = os.path.join(folder, name)
        blob = read(path)
        at = int(where * len(blob))
        if action == "truncate":
            new = blob[:at]
        elif action == "cut":
            new = blob[:at] + blob[at + length:]
        else:
            noise = np.random.default_rng(seed).bytes(length)
            new = blob[:at] + noise + blob[at + length:]
        with open(path, "wb") as f:
            f.write(new)
        before = snapshot(folder)
        try:
            s = train.resume(folder, data=DATA, quiet=True)
        except ValueError as exc:
            assert "\n" not in str(exc) and (name in str(exc) or "checkpoint" in str(exc))
            assert snapshot(folder) == before
            return
        assert s["status"] == "finished"
        assert read(os.path.join(folder, "steps.csv")) == read(runs / "ref" / "steps.csv")
        assert read(os.path.join(folder, "evals.csv")) == read(runs / "ref" / "evals.csv")


# ---------------------------------------------------------------------------------------- several optimizers
@pytest.mark.parametrize("name, opt, schedule", [
    ("adam", {"lr": 1e-3}, {"name": "ss-decay", "step_size": 4, "gamma": 0.5}),
    ("schedulefree-adamw", {}, None),
    ("lqa", {}, None),
    ("prodigy", {}, None),
])
def test_interrupted_and_resumed_is_byte_identical(tmp_path, name, opt, schedule):
    extra = dict(optimizer=name, opt=opt, schedule=schedule, iters=14)
    train.run(cfg(tmp_path / "ref", **extra), data=DATA, quiet=True)
    run_interrupted(cfg(tmp_path / "part", **extra), stop_at=9)
    s = train.resume(str(tmp_path / "part"), data=DATA, quiet=True)
    assert s["status"] == "finished"
    for f in ("steps.csv", "evals.csv"):
        assert read(tmp_path / "part" / f) == read(tmp_path / "ref" / f)


def test_finished_run_with_damaged_records_is_not_reported_finished(runs, tmp_path):
    folder = tmp_path / "ref"
    shutil.copytree(runs / "ref", folder)
    with open(folder / "steps.csv", "r+b") as f:
        f.truncate(500)
    refused(folder, "steps.csv: .* shorter than")
    shutil.rmtree(folder)
    shutil.copytree(runs / "ref", folder)
    before = snapshot(folder)
    assert train.resume(str(folder), data=DATA, quiet=True)["status"] == "finished"
    assert snapshot(folder) == before


def test_run_stopped_before_its_first_checkpoint_starts_over_identically(runs, tmp_path):
    out = tmp_path / "early"
    run_interrupted(cfg(out), stop_at=3)  # checkpoints come every 6 iterations: none yet
    assert not (out / "checkpoint.json").exists()
    resumed_identical(out, runs)
