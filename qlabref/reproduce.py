"""Reproduction of the paper's MNIST experiments (Table 2, Figures 3–5 and 8, the time overhead).

``qlabref reproduce mnist-mlp`` / ``mnist-cnn`` runs the grid below with :mod:`qlabref.train`, each run
in its own process (one BLAS thread each, at most ``--jobs`` at a time) or on a Dask cluster
(``--dask ADDRESS``), and writes ``demos/results/<grid>.md`` with the tables and figures. It is
resumable at two levels: a finished run is never re-run (its directory's ``summary.json`` says
``finished``), and an interrupted run continues from its last checkpoint (``qlabref train --resume``).
Each finished run's small record — its summary plus curves downsampled to buckets of iterations
(mean/min/max loss, mean/max learning rate), never checkpoints — is written to
``demos/results/<grid>/<run id>.json``; the tables and figures are made from those files only, so a
partial grid still gives its tables, and results committed by several sessions add up.

The protocol, and every choice where the paper is silent (written into the result file too):

- 30,000 iterations, batch 64, cross-entropy, float32, the 60,000 training images, test accuracy on
  the 10,000 test images after the last iteration (no early stopping, no best-of), every 1,000
  iterations recorded. Seeds 0, 1, 2 fix the initial weights and the data order.
- Initial learning rate 0.1 for every competing method (the paper's "fair comparison"); SGD without
  momentum; RMSprop, Adagrad, Adam with torch's defaults otherwise; HGD (SGD-HD) with hyper-gradient
  rate 1e-3; L4GD with α = 0.15 (the paper's "hyper-parameter 0.15"), L4's own defaults otherwise;
  LQA with the initial learning rate 0.1 and the defaults of :class:`qr.optim.LQA`.
- QLABGrad as printed: FindPLR once at the first step from α0 = 1 (the default of
  :class:`qr.optim.QLABGrad`), no cap, Eq. (10) every step.
- Decay schedules on SGD (lr 0.1): **SS-decay** halves the rate every T = 10,000 iterations (the paper
  does not give T; three halvings in the run); **E-decay** multiplies it by ½ every epoch (938
  iterations; the paper says "by a factor of ½" without the unit); **CA-decay** is cosine annealing
  from 0.1 to the paper's minimum 1e-3 over the 30,000 iterations.
- "Unfair protocol" group (a separate table): RMSprop and Adam at their customary learning rate 1e-3.
- "Setting" group: LQA as its authors' code ``LQA_delta`` runs it (``direction="normalized"``: the
  ∞-normalised direction, probe distance δ = 1 with no epoch schedule, η = min(|η*|, 0.5)); the public
  QLABGrad script copies that code's helpers, so this is the paper's most likely LQA. The Table 2 row
  keeps Table 1's formula along the gradient (probe distance = lr = 0.1, no cap).
- Remedies for QLABGrad (not the paper's algorithm): α_t ≤ ᾱ (Lemma 2's claim), α_t ≤ 10ᾱ, FindPLR every
  1,000 steps, float64, and α_t ≤ 0.5, the cap of the public training script (its ``min(|α*|, 0.5)``).
  All of them on the MLP (3 seeds each); on the CNN only the recommended one, α_t ≤ ᾱ (3 seeds).
- Grid sizes: the MLP runs every method on seeds 0, 1, 2. The CNN runs every method of the paper,
  the decay schedules, the "setting" and "unfair" groups on seed 0, and QLABGrad, SGD and the cap
  α_t ≤ ᾱ on seeds 0, 1, 2; the beyond-the-paper methods run on the MLP only.
- The paper's CNN is not specified beyond "two 5×5 convolutions, each followed by average pooling,
  fully connected layers, ReLU": we use :func:`qr.models.paper_cnn` (32 and 64 channels, 512 hidden).
- A run whose loss becomes non-finite stops there (status ``diverged``) and reports the test
  accuracy of the parameters it stopped with; it is listed as diverged, never dropped.
- A run that finished without a non-finite loss but ended near chance after it had learned is listed
  as ``collapsed`` (:func:`collapse_info`: final test accuracy at most ``COLLAPSE_NEAR_CHANCE`` × chance
  while an earlier evaluation reached at least ``COLLAPSE_LEARNED`` × chance; chance is 1/10 on MNIST).
  The tables show it in the failure column, the figures in the legend. ``summary.json`` keeps what
  :mod:`qlabref.train` wrote (``finished``): "collapsed" is a reading of the record, made here.
- Time per step (:func:`time_per_step`) is measured only when asked (``--measure-time``) and kept in
  ``<results>/<grid>/timing.json`` with the machine, the BLAS and the load it was measured under;
  rebuilding the tables (``--tables-only``) reuses it.
- The records are deterministic on one machine (a run's ``steps.csv`` is a function of its
  arguments there), not across machines: another CPU's float32 BLAS sums in another order, and a
  re-run of two MLP runs on another CPU parted from the records after about 200 steps.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

__all__ = ["GRIDS", "PAPER_TABLE2", "grid_runs", "run_grid", "write_results", "run_summary_record",
           "findplr_trace", "findplr_public_code_trace", "time_per_step", "collapse_info", "run_status",
           "measure_timing", "load_timing"]

#: Table 2 of the paper: MNIST test accuracy (%)
PAPER_TABLE2 = {
    "mlp": {"sgd": 98.42, "rmsprop": 96.01, "adagrad": 98.53, "adam": 95.88, "hgd": 98.43, "l4gd": 97.43,
            "lqa": 98.47, "qlabgrad": 98.36},
    "cnn": {"sgd": 99.09, "rmsprop": 97.44, "adagrad": 98.86, "adam": 97.51, "hgd": 99.06, "l4gd": 98.54,
            "lqa": 98.05, "qlabgrad": 99.18},
}
#: the paper's time per step relative to SGD (section "Time efficiency")
PAPER_TIME = {"qlabgrad": 1.4, "hgd": 1.3, "l4gd": 1.3, "lqa": 1.6, "rmsprop": 1.0, "adagrad": 1.0, "adam": 1.0}

ITERS = 30000
EPOCH = 938  # ceil(60000 / 64)

#: method id -> (optimizer, options, schedule, group); group "paper" is Table 2, "decay" the schedules
#: on SGD, "unfair" the customary learning rates of RMSprop and Adam
METHODS = {
    "qlabgrad": ("qlabgrad", {}, None, "paper"),
    "sgd": ("sgd", {"lr": 0.1}, None, "paper"),
    "rmsprop": ("rmsprop", {"lr": 0.1}, None, "paper"),
    "adagrad": ("adagrad", {"lr": 0.1}, None, "paper"),
    "adam": ("adam", {"lr": 0.1}, None, "paper"),
    "hgd": ("hgd", {"lr": 0.1, "hypergrad_lr": 1e-3}, None, "paper"),
    "l4gd": ("l4gd", {"alpha": 0.15}, None, "paper"),
    "lqa": ("lqa", {"lr": 0.1}, None, "paper"),
    "sgd-ss-decay": ("sgd", {"lr": 0.1}, {"name": "ss-decay", "step_size": 10000, "gamma": 0.5}, "decay"),
    "sgd-e-decay": ("sgd", {"lr": 0.1}, {"name": "e-decay", "gamma": 0.5, "every": EPOCH}, "decay"),
    "sgd-ca-decay": ("sgd", {"lr": 0.1}, {"name": "ca-decay", "T_max": ITERS, "eta_min": 1e-3}, "decay"),
    "rmsprop-lr1e-3": ("rmsprop", {"lr": 1e-3}, None, "unfair"),
    "adam-lr1e-3": ("adam", {"lr": 1e-3}, None, "unfair"),
    # remedies for QLABGrad's late blow-up in minibatch training (NOT the paper's algorithm)
    "qlabgrad-every1000": ("qlabgrad", {"findplr": "every:1000"}, None, "remedy"),
    "qlabgrad-cap1": ("qlabgrad", {"max_lr_factor": 1.0}, None, "remedy"),
    "qlabgrad-cap10": ("qlabgrad", {"max_lr_factor": 10.0}, None, "remedy"),
    "qlabgrad-f64": ("qlabgrad", {}, None, "remedy"),
    # Algorithm 1 with the absolute cap α_t ≤ 0.5 of the public training script (PUBLIC_CODE's qlab.py caps
    # its learning rate with min(|α*|, 0.5)); still a remedy, not the paper's algorithm
    "qlabgrad-maxlr0.5": ("qlabgrad", {"max_lr": 0.5}, None, "remedy"),
    # a competitor as its authors' code runs it, where that differs from Table 1's formula: LQA's original
    # LQA_delta (∞-normalised direction, probe distance δ = 1, η = min(|η*|, 0.5)), which the public QLABGrad
    # script copies its helpers from -- the paper's most likely LQA
    "lqa-normalized": ("lqa", {"lr": 0.1, "direction": "normalized"}, None, "setting"),
    # beyond the paper (issue 14): the learning-rate-free methods that followed, with their authors' defaults
    "dog": ("dog", {}, None, "beyond"),
    "dadapt-sgd": ("dadapt-sgd", {}, None, "beyond"),
    "dadapt-adam": ("dadapt-adam", {}, None, "beyond"),
    "prodigy": ("prodigy", {}, None, "beyond"),
    "schedulefree-sgd": ("schedulefree-sgd", {}, None, "beyond"),
    "schedulefree-adamw": ("schedulefree-adamw", {}, None, "beyond"),
}
#: configuration changes other than optimizer options, per method
OVERRIDES = {"qlabgrad-f64": {"dtype": "float64"}}
#: the order in which runs are started (QLABGrad and SGD first: they matter most)
ORDER = ["qlabgrad", "sgd", "adagrad", "hgd", "lqa", "l4gd",
         "qlabgrad-cap1", "qlabgrad-every1000", "qlabgrad-cap10", "qlabgrad-f64", "sgd-ss-decay", "sgd-e-decay", "sgd-ca-decay",
         "qlabgrad-maxlr0.5", "lqa-normalized",
         "rmsprop", "adam", "rmsprop-lr1e-3", "adam-lr1e-3",
         "prodigy", "schedulefree-sgd", "schedulefree-adamw", "dadapt-adam", "dadapt-sgd", "dog"]

GRIDS = {
    "mnist-mlp": {"model": "mlp", "seeds": {m: (0, 1, 2) for m in METHODS}},
    # the CNN: every method of the paper once, QLABGrad and SGD on three seeds, and the remedy the results
    # report (demos/results/README.md) recommends (the cap α_t ≤ ᾱ) on the same three seeds as QLABGrad -- as printed, QLABGrad blew up in the
    # first iterations of seed 1 (α* = 65 at iteration 4) and never recovered
    "mnist-cnn": {"model": "cnn", "seeds": {m: ((0, 1, 2) if m in ("qlabgrad", "sgd", "qlabgrad-cap1") else (0,))
                                           for m in METHODS
                                           if METHODS[m][3] not in ("beyond", "remedy") or m == "qlabgrad-cap1"}},
}
QUICK = {"iters": 300, "eval_every": 100, "test_limit": 2000, "seeds": (0,)}
CURVE_BUCKET = 30

#: test accuracy of a guess on MNIST's 10 classes
CHANCE = 0.1
#: a finished run "collapsed" when its final test accuracy is at most this many times chance (20%) ...
COLLAPSE_NEAR_CHANCE = 2.0
#: ... after an earlier evaluation reached at least this many times chance (50%): it had learned
COLLAPSE_LEARNED = 5.0


def collapse_info(rec, chance=CHANCE):
    """Whether a run **collapsed**: it finished (no non-finite loss: that is ``diverged``) with a final
    test accuracy ≤ ``COLLAPSE_NEAR_CHANCE`` × ``chance`` although an earlier evaluation had reached
    ≥ ``COLLAPSE_LEARNED`` × ``chance``. Returns ``None`` or ``{"best": accuracy, "best_iter": iteration,
    "at": the first evaluation after the best at or below the near-chance line, "final": accuracy}``.
    ``rec`` is a committed record (``summary`` and ``evals``)."""
    s = rec["summary"]
    final = s.get("final_test_accuracy")
    if s.get("status") != "finished" or final is None or final > COLLAPSE_NEAR_CHANCE * chance:
        return None
    evals = sorted(((int(e["iter"]), e["test_accuracy"]) for e in rec.get("evals") or []
                    if e.get("test_accuracy") is not None), key=lambda e: e[0])
    if not evals:
        return None
    best_iter, best = max(evals, key=lambda e: (e[1], -e[0]))
    if best < COLLAPSE_LEARNED * chance:
        return None
    at = next((it for it, a in evals if it > best_iter and a <= COLLAPSE_NEAR_CHANCE * chance), evals[-1][0])
    return {"best": best, "best_iter": best_iter, "at": at, "final": final}


def run_status(rec):
    """``(status, iteration)`` of a record for the tables and figures: ``train``'s status
    (``finished`` / ``diverged`` / ``failed``, with the iteration it stopped at) or ``collapsed``
    (:func:`collapse_info`, with the first evaluation at chance after the best one)."""
    s = rec["summary"]
    c = collapse_info(rec)
    if c is not None:
        return "collapsed", c["at"]
    return s.get("status"), (s.get("stopped_at_iter") if s.get("status") != "finished" else None)


def _failure_text(rec):
    """One entry of the tables' failure column, or None for a run that did not fail."""
    st, at = run_status(rec)
    seed = rec["summary"]["config"]["seed"]
    if st == "finished":
        return None
    if st == "collapsed":
        c = collapse_info(rec)
        return (f"s{seed}: collapsed by t={at} ({100 * c['best']:.2f}% at t={c['best_iter']}, "
                f"{100 * c['final']:.2f}% at the end)")
    return f"s{seed}: {st} at t={at}"


def grid_runs(grid, quick=False, methods=None, seeds=None):
    """``[(run_id, config)]`` for a grid, in start order."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; known: {', '.join(GRIDS)}")
    spec = GRIDS[grid]
    chosen = [m for m in ORDER if (methods is None or m in methods) and m in spec["seeds"]]
    if methods is not None:
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(ORDER)}")
        outside = [m for m in ORDER if m in methods and m not in spec["seeds"]]
        if outside:
            raise ValueError(f"method(s) {', '.join(outside)} are not part of the {grid} grid; its methods: "
                             f"{', '.join(m for m in ORDER if m in spec['seeds'])}")
    runs = []
    max_seeds = max(len(s) for s in spec["seeds"].values())
    for rank in range(max_seeds):  # seed 0 of every method first, then seed 1, ...
        for m in chosen:
            ss = QUICK["seeds"] if quick else spec["seeds"][m]
            if seeds is not None:
                ss = [s for s in seeds]
            if rank >= len(ss):
                continue
            seed = ss[rank]
            optimizer, opt, schedule, _ = METHODS[m]
            iters = QUICK["iters"] if quick else ITERS
            if schedule is not None and schedule["name"] == "ca-decay":
                schedule = dict(schedule, T_max=iters)
            if quick and schedule is not None and schedule["name"] == "ss-decay":
                schedule = dict(schedule, step_size=100)
            if quick and schedule is not None and schedule["name"] == "e-decay":
                schedule = dict(schedule, every=100)
            cfg = dict(model=spec["model"], data="mnist", optimizer=optimizer, opt=dict(opt), schedule=schedule,
                       iters=iters, batch=64, seed=seed, eval_every=QUICK["eval_every"] if quick else 1000,
                       dtype="float32")
            cfg.update(OVERRIDES.get(m, {}))
            if quick:
                cfg["test_limit"] = QUICK["test_limit"]
            runs.append((f"{m}-s{seed}", cfg))
    return runs


def _status(run_dir):
    p = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(p):
        return None
    try:
        with open(p) as f:
            return json.load(f).get("status")
    except (OSError, json.JSONDecodeError):
        return None


def _train_argv(config, out):
    argv = [sys.executable, "-m", "qlabref", "train", "--quiet", "--out", out, "--model", config["model"],
            "--data", config["data"], "--optimizer", config["optimizer"], "--iters", str(config["iters"]),
            "--batch", str(config["batch"]), "--seed", str(config["seed"]), "--eval-every", str(config["eval_every"]),
            "--dtype", config["dtype"]]
    if config.get("opt"):
        argv += ["--opt"] + [f"{k}={v!r}" for k, v in config["opt"].items()]
    if config.get("schedule"):
        s = config["schedule"]
        argv += ["--schedule", s["name"]] + [f"{k}={v!r}" for k, v in s.items() if k != "name"]
    if config.get("test_limit"):
        argv += ["--test-limit", str(config["test_limit"])]
    return argv


def _one_thread_env():
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = "1"
    return env


#: statuses of a run that is complete: re-running a diverged or failed run would only repeat it
#: (training is deterministic), so the grid never re-runs these
DONE = ("finished", "diverged", "failed")


def run_local(run_id, config, run_dir):
    """One run in a child process (one BLAS thread); resumes an interrupted run. Returns the status."""
    status = _status(run_dir)
    if status in DONE:
        return status
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        argv = [sys.executable, "-m", "qlabref", "train", "--quiet", "--resume", run_dir]
    else:
        argv = _train_argv(config, run_dir)
    log = os.path.join(os.path.dirname(run_dir), f"{run_id}.log")
    with open(log, "ab") as f:
        subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=_one_thread_env())
    return _status(run_dir)


def run_in_worker(run_id, config, run_dir):
    """One run inside a Dask worker's process (``--dask``): same code path, resumable the same way."""
    from . import train

    status = _status(run_dir)
    if status in DONE:
        return status
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        summary = train.resume(run_dir, quiet=True)
    else:
        summary = train.run(dict(config, out=run_dir), quiet=True)
    return summary.get("status")


def _downsample(values, bucket):
    v = np.asarray(values, dtype=float)
    n = len(v) // bucket * bucket
    out = {}
    if n == 0:
        return {"mean": v.tolist(), "min": v.tolist(), "max": v.tolist()}
    b = v[:n].reshape(-1, bucket)
    tail = v[n:]
    with np.errstate(all="ignore"):
        mean = np.nanmean(b, axis=1).tolist() + ([float(np.nanmean(tail))] if len(tail) else [])
        mn = np.nanmin(b, axis=1).tolist() + ([float(np.nanmin(tail))] if len(tail) else [])
        mx = np.nanmax(b, axis=1).tolist() + ([float(np.nanmax(tail))] if len(tail) else [])
    out["mean"], out["min"], out["max"] = mean, mn, mx
    return out


def run_summary_record(run_id, run_dir, bucket=CURVE_BUCKET):
    """The small, committed record of a run: its summary and curves downsampled to ``bucket`` iterations."""
    from .runplots import load_run

    r = load_run(run_dir)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    n = len(r["iter"])
    starts = list(range(0, n, bucket))

    def clean(xs):
        return [None if (x is None or not math.isfinite(x)) else float(f"{x:.6g}") for x in xs]

    curves = {"bucket": bucket, "iter": [int(r["iter"][i]) for i in starts]}
    loss = _downsample(r["loss"], bucket)
    lr = _downsample(r["lr"], bucket)
    curves.update(loss_mean=clean(loss["mean"]), loss_min=clean(loss["min"]), loss_max=clean(loss["max"]),
                  lr_mean=clean(lr["mean"]), lr_max=clean(lr["max"]))
    if np.any(np.isfinite(r["alpha_star"])):
        curves["alpha_star_max"] = clean(_downsample(r["alpha_star"], bucket)["max"])
    # the machine and the BLAS that made the run stay with it (the records are deterministic on one machine,
    # not across machines); the host name is dropped
    if isinstance(summary.get("machine"), dict):
        summary["machine"] = {k: v for k, v in summary["machine"].items() if k != "hostname"}
    summary["blas"] = blas_info()
    rec = {"run_id": run_id, "summary": summary, "evals": r["evals"], "curves": curves}
    if np.any(np.isfinite(r["a2"])):
        rec["qlab_events"] = qlab_events(r, summary.get("config", {}).get("dtype", "float32"))
    return rec


def qlab_events(run, dtype="float32", context=6):
    """What preceded a QLABGrad blow-up, from a run's full records: the first step whose minibatch loss
    exceeds 100× the median of the previous 500 (all previous ones in the first 500 steps) and 1.0, with
    the ``context`` steps before it;
    and the five largest α*. Each row has the loss, ‖∇L‖² = −a1, a2, α*, ᾱ, the fallback flag and
    ``denominator_ulps`` = a2·ᾱ² / ulp(L): Eq. (10)'s denominator g(ᾱ) − L + ᾱ‖∇L‖² in units of the
    loss's rounding spacing (a handful of ulps means α* is rounding noise)."""
    it, loss, a1, a2, star, pre = (run[k] for k in ("iter", "loss", "a1", "a2", "alpha_star", "pre_lr"))
    fb = run["fallback"]
    ftype = np.dtype(dtype).type

    def row(i):
        ulp = float(np.spacing(ftype(abs(loss[i])))) if np.isfinite(loss[i]) else math.nan
        den = a2[i] * pre[i] ** 2 if np.isfinite(a2[i]) and np.isfinite(pre[i]) else math.nan
        nxt = float(loss[i + 1]) if i + 1 < len(loss) else None
        vals = dict(iter=int(it[i]), loss=float(loss[i]), grad_sq_norm=float(-a1[i]), a2=float(a2[i]),
                    alpha_star=float(star[i]), pre_lr=float(pre[i]), fallback=bool(fb[i] == 1),
                    denominator_ulps=den / ulp if ulp and np.isfinite(den) else None, next_loss=nxt)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in vals.items()}

    out = {"blowup": None, "largest_alpha_star": []}
    for i in range(1, len(loss)):  # from the second step: a run can also blow up in its first iterations
        med = np.nanmedian(loss[max(0, i - 500):i])
        if np.isfinite(loss[i]) and loss[i] > max(100 * med, 1.0) or not np.isfinite(loss[i]):
            out["blowup"] = {"iter": int(it[i]), "rows": [row(j) for j in range(max(0, i - context), min(len(loss), i + 2))]}
            break
    finite = np.where(np.isfinite(star))[0]
    for j in finite[np.argsort(star[finite])[::-1][:5]]:
        out["largest_alpha_star"].append(row(int(j)))
    return out


def run_grid(grid, runs_dir, results_dir, jobs=None, quick=False, methods=None, seeds=None, dask=None,
             progress=True):
    """Run (or resume) every run of the grid not finished yet; write each finished run's record.
    Returns ``{run_id: status}``."""
    runs = grid_runs(grid, quick=quick, methods=methods, seeds=seeds)
    grid_dir = os.path.join(runs_dir, grid + ("-quick" if quick else ""))
    rec_dir = os.path.join(results_dir, grid + ("-quick" if quick else ""))
    os.makedirs(grid_dir, exist_ok=True)
    os.makedirs(rec_dir, exist_ok=True)
    jobs = jobs or os.cpu_count() or 1
    statuses = {}
    todo = []
    for run_id, cfg in runs:
        run_dir = os.path.join(grid_dir, run_id)
        st = _status(run_dir)
        rec_path = os.path.join(rec_dir, f"{run_id}.json")
        if st is None and os.path.isfile(rec_path):
            # the committed record of a run done elsewhere (another session or machine; run directories
            # are not committed): it is complete, never re-run
            try:
                with open(rec_path) as f:
                    st = json.load(f)["summary"]["status"]
            except (OSError, ValueError, KeyError):
                st = None
            if st in DONE:
                statuses[run_id] = st
                continue
        if st in DONE and os.path.isfile(rec_path):
            statuses[run_id] = st
            continue
        todo.append((run_id, cfg, run_dir))
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    say(f"qlabref reproduce {grid}{' --quick' if quick else ''}: {len(runs)} runs, {len(runs) - len(todo)} already "
        f"done, {len(todo)} to run ({'dask ' + str(dask) if dask else f'{jobs} local processes'}); "
        f"run directories in {grid_dir}")
    t0 = time.time()

    def done(run_id, run_dir, status):
        statuses[run_id] = status
        if status in ("finished", "diverged", "failed"):
            rec = run_summary_record(run_id, run_dir)
            tmp = os.path.join(rec_dir, f".{run_id}.json.tmp")
            with open(tmp, "w") as f:
                json.dump(rec, f, separators=(",", ":"))
            os.replace(tmp, os.path.join(rec_dir, f"{run_id}.json"))
        acc = None
        try:
            with open(os.path.join(run_dir, "summary.json")) as f:
                acc = json.load(f).get("final_test_accuracy")
        except (OSError, json.JSONDecodeError):
            pass
        say(f"  [{len(statuses)}/{len(runs)}] {run_id}: {status}"
            + (f", test accuracy {100 * acc:.2f}%" if acc is not None else "") + f" ({time.time() - t0:.0f} s)")

    if dask:
        from dask.distributed import Client

        client = dask if not isinstance(dask, str) else Client(dask)
        try:
            futures = {client.submit(run_in_worker, rid, cfg, os.path.abspath(rd), key=f"qlabref-{grid}-{rid}",
                                     pure=False): (rid, rd) for rid, cfg, rd in todo}
            from dask.distributed import as_completed as dask_completed

            for fut in dask_completed(futures):
                rid, rd = futures[fut]
                done(rid, rd, fut.result())
        finally:
            if isinstance(dask, str):
                client.close()
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_local, rid, cfg, rd): (rid, rd) for rid, cfg, rd in todo}
            for fut in as_completed(futures):
                rid, rd = futures[fut]
                done(rid, rd, fut.result())
    return statuses


# ---------------------------------------------------------------------------------------- extras
def findplr_trace(seeds=range(8), dtypes=("float32", "float64"), alpha0=1e-5, model="mlp", batch=64):
    """FindPLR (Algorithm 2) from ``alpha0`` at the first step of ``model`` on MNIST (for the MLP, the
    paper's Figure 8: 1e-5 → 0.00128 after 7 iterations), per seed and dtype: the ᾱ found, the doublings and
    halvings, and loop 1's test value a2·ᾱ² = g(ᾱ) − g(0) + ᾱ‖∇L‖² at the first probe beside the float
    spacing of the loss there (what decides the number of doublings near 1e-5)."""
    from . import data, models, optim, tensor
    from .nn import functional as F

    X, y = data.mnist("train")
    rows = []
    for dt in dtypes:
        for seed in seeds:
            dtype = np.dtype(dt).type
            m = models.get(model, seed=seed, dtype=dtype)
            idx = data.batches(X, y, batch, seed=seed).next_indices()
            xb, yb = tensor(X[idx].astype(dtype)), y[idx]

            def closure():
                return F.cross_entropy(m(xb), yb)

            res = optim.find_plr(closure, m.parameters(), alpha0=alpha0, full_output=True)
            # loop 1's first test at alpha0, recomputed here for the report
            loss0 = closure()
            grads = [np.zeros_like(p.data) for p in m.parameters()]
            for p in m.parameters():
                p.grad = None
            loss0.backward()
            gsq = sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for p in m.parameters())
            saved = [p.data.copy() for p in m.parameters()]
            for p in m.parameters():
                p.data -= dtype(alpha0) * p.grad
            from . import no_grad

            with no_grad():
                g1 = float(closure().data)
            for p, s in zip(m.parameters(), saved):
                p.data[...] = s
            del grads
            test = g1 - float(loss0.data) + alpha0 * gsq
            rows.append({"dtype": dt, "seed": seed, "pre_lr": res.pre_lr, "doublings": res.doublings,
                         "halvings": res.halvings, "evals": res.evals, "loss": float(loss0.data),
                         "grad_sq_norm": gsq, "loop1_test_at_alpha0": test,
                         "loss_ulp": float(np.spacing(dtype(float(loss0.data))))})
    return rows


#: the public repository whose FindPLR script gives the paper's Figure 8 (see :func:`findplr_public_code_trace`)
PUBLIC_CODE = "github.com/Eason97/QLABGrad- (commit 24d5447), files Find_plr_training.py and QLABplr.py"


def findplr_public_code_trace(seeds=range(8), alpha0=1e-5, batches=50, batch=64, g0=3.0):
    """What the public script behind the name QLABGrad computes for Figure 8, re-implemented here from
    its description (:data:`PUBLIC_CODE`; its code is not copied), per seed.

    That script trains nothing: for each of up to ``batches`` minibatches it calls its FindPLR once with
    the current ᾱ and keeps the returned value. Three things differ from the paper's Algorithm 2:

    1. no backward pass runs before the call, so the model has no gradient and the "probe point"
       θ − ᾱ∇L is θ itself: g(ᾱ) is the loss at θ (model in eval mode, inputs normalised with MNIST's
       mean 0.1307 and std 0.3081);
    2. the term that should be ᾱ‖∇L‖² is ᾱ times the squared norm of the probe point's *parameters*,
       ‖θ‖² (about 671 for the 784-1000-1000-10 MLP at PyTorch's default initialisation);
    3. g(0) is the constant 3 passed by the caller (``FindPLR(3, ...)``), not the loss.

    So its test is a2 = L(θ) − 3 + ᾱ‖θ‖²: negative → ᾱ doubles (one doubling per minibatch), else L(θ) > 3 →
    ᾱ halves, else the function returns nothing and the search ends. Since L(θ) ≈ 2.30 at initialisation,
    ᾱ doubles while ᾱ < (3 − L)/‖θ‖² ≈ 0.00104, i.e. exactly 7 times from 1e-5, ending at 0.00128 on every
    seed: Figure 8's numbers. Returns one row per seed: the sequence, the doublings, ‖θ‖², the losses
    and the threshold (3 − L)/‖θ‖² at the last test.
    """
    from . import data, models, no_grad, tensor
    from .nn import functional as F

    X, y = data.mnist("train")
    rows = []
    for seed in seeds:
        net = models.mlp(seed=seed, dtype=np.float32)
        net.eval()
        it = data.batches(X, y, batch, seed=seed)
        theta_sq = sum(float(np.dot(p.data.reshape(-1).astype(np.float64), p.data.reshape(-1).astype(np.float64)))
                       for p in net.parameters())
        alpha, seq, losses, stop = alpha0, [alpha0], [], None
        for _ in range(batches):
            idx = it.next_indices()
            xb = tensor(((X[idx] - np.float32(0.1307)) / np.float32(0.3081)).astype(np.float32))
            with no_grad():
                loss = float(F.cross_entropy(net(xb), y[idx]).data)
            losses.append(loss)
            a2 = loss - g0 + alpha * theta_sq
            if a2 < 0:
                alpha = 2 * alpha
            elif loss > g0:
                alpha = alpha / 2
            else:
                stop = "returns nothing (a2 ≥ 0 and L ≤ 3): the search ends"
                break
            seq.append(alpha)
        rows.append({"seed": seed, "sequence": seq, "final": seq[-1], "doublings": sum(
            1 for a, b in zip(seq, seq[1:]) if b > a), "theta_sq_norm": theta_sq, "losses": losses,
            "threshold": (g0 - losses[-1]) / theta_sq, "stop": stop})
    return rows


def time_per_step(model="mlp", methods=None, steps=60, block=10, seed=0):
    """Time per step of each method relative to SGD, measured in **one process**: the methods take
    turns in blocks of ``block`` steps on the same batches (the order alternating between rounds), so
    machine load affects them alike. Returns ``{method: {"ms": median over rounds of the block median,
    "ratio": median over rounds of (block median / SGD's block median in the same round)}}``."""
    from . import data, models, optim, tensor
    from .nn import functional as F

    methods = methods or [m for m in ORDER if METHODS[m][3] == "paper"]
    X, y = data.mnist("train")
    it = data.batches(X, y, 64, seed=seed)
    batches = [next(it) for _ in range(block)]
    setups = {}
    for m in methods:
        name, opt_kw, sched, _ = METHODS[m]
        net = models.get(model, seed=seed)
        opt = optim.get(name, net.parameters(), **opt_kw)
        setups[m] = (net, opt)
    times = {m: [] for m in methods}
    rounds = max(1, steps // block)
    for r in range(rounds + 1):
        order = methods if r % 2 else methods[::-1]  # alternate the order, so no method always follows another
        for m in order:
            net, opt = setups[m]
            ts = []
            for xb_np, yb in batches:
                xb = tensor(xb_np)
                t = time.perf_counter()
                with np.errstate(all="ignore"):
                    opt.step(lambda: F.cross_entropy(net(xb), yb))
                ts.append(time.perf_counter() - t)
            if r > 0:  # round 0 is warm-up
                times[m].append(float(np.median(ts)))
    # the ratio of each round's block medians, then the median over rounds: load that changes between rounds
    # cancels (a method and SGD ran within the same round, seconds apart)
    out = {}
    for m, ts in times.items():
        out[m] = {"ms": 1000 * float(np.median(ts)), "ratio": None, "ratio_q25": None, "ratio_q75": None}
        if "sgd" in times:
            r = np.array(ts) / np.array(times["sgd"])
            out[m].update(ratio=float(np.median(r)), ratio_q25=float(np.percentile(r, 25)),
                          ratio_q75=float(np.percentile(r, 75)))
    return out


def _time_per_step_one_thread(model, steps, methods=None):
    """:func:`time_per_step` in a child process with one BLAS thread (the parent may have more)."""
    code = ("import json, qlabref.reproduce as r; "
            f"print(json.dumps(r.time_per_step(model={model!r}, steps={int(steps)}, methods={methods!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_one_thread_env())
    if proc.returncode != 0:
        raise RuntimeError(f"time_per_step failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def blas_info():
    """The BLAS NumPy was built with, as NumPy reports it (``{"name": ..., "version": ...}``), or ``None``."""
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return {k: blas.get(k) for k in ("name", "version") if blas.get(k) is not None} or None
    except Exception:  # older NumPy without mode="dicts", or another layout
        return None


def timing_path(results_dir, grid, quick=False):
    return os.path.join(results_dir, grid + ("-quick" if quick else ""), "timing.json")


def measure_timing(grid, results_dir, quick=False):
    """Measure the time per step of the grid's methods (:func:`time_per_step`, one BLAS thread, in a child
    process) and write ``timing.json`` next to the records, with the commit, the machine, the BLAS and the
    1-minute load average before and after. Only ``qlabref reproduce --measure-time`` calls this."""
    from .train import git_commit, machine_info

    model = GRIDS[grid]["model"]
    load_before = _load_average()
    tm = _time_per_step_one_thread(model=model, steps=30 if quick else 200,
                                   methods=[m for m in ORDER if METHODS[m][3] in ("paper", "beyond")
                                            and m in GRIDS[grid]["seeds"]])
    load_after = _load_average()
    machine = {k: v for k, v in machine_info().items() if k not in ("hostname", "loadavg")}
    machine["OPENBLAS_NUM_THREADS"] = "1"  # the child's setting (_one_thread_env)
    rec = {"grid": grid, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
           "machine": machine, "blas": blas_info(), "load_before": load_before, "load_after": load_after,
           "steps": 30 if quick else 200, "methods": tm}
    path = timing_path(results_dir, grid, quick)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(tmp, path)
    return rec


def load_timing(results_dir, grid, quick=False):
    """The committed time-per-step measurement (``timing.json``), or ``None`` when there is none."""
    path = timing_path(results_dir, grid, quick)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _load_average():
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


# ---------------------------------------------------------------------------------------- results
def _provenance(recs, quick=False):
    """The closing table of a results file: for every run the commit of the code that ran it, its wall
    time and median step time (the machine was shared: wall times include the load), and its command."""
    if not recs:
        return []
    out = ["## Provenance: every run's commit, wall time and command", "",
           "Each run was produced by `qlabref train` (started by `qlabref reproduce`) at the commit shown; the "
           "tables above were built from the committed records at the commit named at the top. Wall times were "
           "measured on a shared 2-core machine running two runs at a time, so they include the load; the time "
           "per step table is the controlled comparison.", "",
           "| run | status | commit | wall s | mean ms/step | command (options after `--optimizer`) |",
           "|---|---|---|---|---|---|"]
    for rid in sorted(recs, key=lambda r: (_method_order(_method_of(r)), r)):
        s = recs[rid]["summary"]
        cmd = s.get("command") or ""
        resumed = "--resume" in cmd and bool(s.get("config"))
        if resumed:  # the last invocation resumed: show the run's own options
            cmd = " ".join(_train_argv(s["config"], s["config"].get("out") or rid)[3:])
        tail = cmd[cmd.find("--optimizer"):] if "--optimizer" in cmd else cmd
        if resumed:
            tail = "(resumed) " + tail
        tps = s.get("time_per_step_ms") or {}
        med = tps.get("seconds") if isinstance(tps, dict) else None  # mean ms per step over the run
        wall = s.get("wall_seconds")
        out.append(f"| {rid} | {s.get('status')} | `{(s.get('git_commit') or '?')[:10]}` | "
                   f"{f'{wall:.0f}' if wall is not None else '—'} | {f'{med:.1f}' if med is not None else '—'} | "
                   f"`{tail}` |")
    out.append("")
    return out


def _method_order(m):
    return ORDER.index(m) if m in ORDER else len(ORDER)


def load_records(results_dir, grid, quick=False):
    rec_dir = os.path.join(results_dir, grid + ("-quick" if quick else ""))
    recs = {}
    if os.path.isdir(rec_dir):
        for name in sorted(os.listdir(rec_dir)):
            if name.endswith(".json") and not name.startswith(".") and name != "timing.json":
                with open(os.path.join(rec_dir, name)) as f:
                    rec = json.load(f)
                recs[rec["run_id"]] = rec
    return recs


def _method_of(run_id):
    return run_id.rsplit("-s", 1)[0]


def _curve_run(rec):
    """A record's downsampled curves in the shape :mod:`qlabref.runplots` draws."""
    c = rec["curves"]
    arr = lambda k: np.array([np.nan if v is None else v for v in c.get(k, [])], dtype=float)  # noqa: E731
    summ = dict(rec["summary"])
    st, at = run_status(rec)
    if st == "collapsed":  # the figures' legend says so (qlabref.runplots reads summary["status"])
        summ.update(status="collapsed", stopped_at_iter=at)
    return {"path": rec["run_id"], "iter": np.array(c["iter"], dtype=float), "loss": arr("loss_mean"),
            "lr": arr("lr_mean"), "pre_lr": arr("lr_mean") * np.nan, "alpha_star": arr("lr_mean") * np.nan,
            "fallback": arr("lr_mean") * np.nan, "a2": arr("lr_mean") * np.nan, "evals": rec.get("evals", []),
            "config": summ.get("config", {}), "summary": summ}


def _fmt_acc(vals):
    if not vals:
        return "—"
    a = 100 * np.asarray(vals)
    if len(a) == 1:
        return f"{a[0]:.2f} (1 seed)"
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f} (n={len(a)})"


def _save_figure(fig, path):
    """PNG or SVG with no date and fixed SVG ids, so that rebuilding the tables from the same records gives the
    same files (a committed figure changes only when its data or its drawing does)."""
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "qlabref"}):
        meta = {"Date": None} if path.endswith(".svg") else {}
        fig.savefig(path, dpi=110, metadata=meta)


def write_results(grid, results_dir, quick=False, command=None, wall=None, with_timing=True, with_findplr=True,
                  measure_time=False):
    """``results_dir/<grid>.md`` (and figures in ``results_dir/<grid>/``) from the committed records.

    The time per step comes from the committed ``timing.json`` (:func:`load_timing`); it is measured
    again only with ``measure_time=True`` (:func:`measure_timing`). ``with_timing=False`` leaves the
    timing out of the tables."""
    from . import runplots
    from .train import git_commit

    t_start = time.time()
    recs = load_records(results_dir, grid, quick)
    suffix = "-quick" if quick else ""
    fig_dir = os.path.join(results_dir, grid + suffix, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    model = GRIDS[grid]["model"]
    by_method = {}
    for rid, rec in recs.items():
        by_method.setdefault(_method_of(rid), []).append(rec)
    L = [f"# {grid}{suffix}: the paper's MNIST {model.upper()} experiments, reproduced with qlabref", ""]
    L += [f"Produced by `{command or 'qlabref reproduce ' + grid}` at commit `{git_commit()}` "
          f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; this invocation took WALL s "
          "(the runs' own wall times are in their records).", ""]
    n_expected = len(grid_runs(grid, quick=quick))
    L += [f"Runs recorded: {len(recs)} of {n_expected} in the grid"
          + (" (**partial grid**: missing runs are still to be run; `qlabref reproduce` continues them)"
             if len(recs) < n_expected else "") + ".", ""]
    L += ["Protocol and every choice where the paper is silent: see `python -m pydoc qlabref.reproduce` "
          "(30,000 iterations, batch 64, float32, lr 0.1 for every competitor, final-iterate test accuracy, "
          "seeds fix weights and data order)." if not quick else
          f"Quick form: {QUICK['iters']} iterations, seed 0, test accuracy on the first {QUICK['test_limit']} test "
          "images. It checks the pipeline, not the paper's numbers.", ""]

    tm = timing = None
    if with_timing:  # before the tables, so that every table can show each method's time per step
        timing = measure_timing(grid, results_dir, quick) if measure_time else load_timing(results_dir, grid, quick)
        tm = timing["methods"] if timing else None

    def table(group, title, paper=True, reference=()):
        rows = [m for m in ORDER if METHODS[m][3] == group and m in by_method]
        if not rows:
            return []
        rows = rows + [m for m in reference if m in by_method]
        out = [f"## {title}", "", "| method | settings | test accuracy % (mean ± sd over seeds) | paper | "
               "diverged/collapsed/failed | QLAB fallback α=ᾱ | final train loss (mean of last 100) | time/step × SGD |",
               "|---|---|---|---|---|---|---|---|"]
        for m in rows:
            rs = sorted(by_method[m], key=lambda r: r["summary"]["config"]["seed"])
            accs = [r["summary"].get("final_test_accuracy") for r in rs if r["summary"].get("final_test_accuracy") is not None]
            bad = [t for t in (_failure_text(r) for r in rs) if t]
            fb = [r["summary"].get("fallback_fraction") for r in rs if r["summary"].get("fallback_fraction") is not None]
            tl = [r["summary"].get("final_train_loss_mean_last_100") for r in rs]
            tl = [v for v in tl if v is not None and math.isfinite(v)]
            cfg0 = rs[0]["summary"]["config"]
            kw, sched = cfg0.get("opt") or {}, cfg0.get("schedule")
            settings = " ".join(f"{k}={v}" for k, v in kw.items()) or "defaults"
            if sched:
                settings += " + " + " ".join([sched["name"]] + [f"{k}={v}" for k, v in sched.items() if k != "name"])
            if cfg0.get("dtype") == "float64":
                settings += " (float64)"
            pv = PAPER_TABLE2[model].get(m if METHODS[m][3] != "setting" else METHODS[m][0]) if paper else None
            ratio = (tm or {}).get(m, {}).get("ratio")
            name = f"{m} (reference)" if m in reference else m
            out.append(f"| {name} | {settings} | {_fmt_acc(accs)} | {pv if pv is not None else '—'} | "
                       f"{'; '.join(bad) or '—'} | {(f'{100 * np.mean(fb):.2f}%' if fb else '—')} | "
                       f"{(f'{np.mean(tl):.4g}' if tl else '—')} | {f'{ratio:.2f}' if ratio is not None else '—'} |")
        per_seed = []
        for m in [r for r in rows if r not in reference]:
            for r in sorted(by_method[m], key=lambda r: r["summary"]["config"]["seed"]):
                s = r["summary"]
                acc = s.get("final_test_accuracy")
                per_seed.append(f"{m} s{s['config']['seed']}: {100 * acc:.2f}%" if acc is not None else f"{m}: —")
        out += ["", "Per seed: " + "; ".join(per_seed) + ".", ""]
        return out

    L += table("paper", "Table 2: test accuracy after the last iteration (the paper's protocol)")
    L += table("remedy", "Remedies for QLABGrad's blow-up (not the paper's algorithm; same seeds)", paper=False)
    qrows = [(m, r) for m in ORDER if m == "qlabgrad" or METHODS[m][3] == "remedy"
             for r in sorted(by_method.get(m, []), key=lambda r: r["summary"]["config"]["seed"])]
    if qrows:
        marks = [k for k in (1000, 5000, 10000, 20000, 25000, 30000) if k <= (QUICK["iters"] if quick else ITERS)]
        if quick:
            marks = [100, 200, 300]
        L += ["### Every QLABGrad run: status, test accuracy along the run, largest α*", "",
              "| run | status | " + " | ".join(f"acc@{k}" for k in marks) + " | final acc | max α* | max α_t | "
              "fallback |", "|---|---|" + "---|" * len(marks) + "---|---|---|---|"]
        for m, r in qrows:
            s_ = r["summary"]
            ev = {int(e["iter"]): e["test_accuracy"] for e in r.get("evals", [])}
            accs = " | ".join(f"{100 * ev[k]:.2f}" if k in ev else "—" for k in marks)
            st_, at_ = run_status(r)
            st = st_ + (f" at {at_}" if st_ in ("diverged", "failed") else f" by {at_}" if st_ == "collapsed" else "")
            fa = s_.get("final_test_accuracy")
            fb = s_.get("fallback_fraction")
            L.append(f"| {r['run_id']} | {st} | {accs} | {f'{100 * fa:.2f}' if fa is not None else '—'} | "
                     f"{s_.get('alpha_star_max') if s_.get('alpha_star_max') is not None else '—':.3g} | "
                     f"{s_.get('lr_max') if s_.get('lr_max') is not None else float('nan'):.3g} | "
                     f"{f'{100 * fb:.2f}%' if fb is not None else '—'} |")
        L.append("")
        blown = [(r["run_id"], r["qlab_events"]) for _, r in qrows if (r.get("qlab_events") or {}).get("blowup")]
        if blown:
            L += ["### What preceded each blow-up (first minibatch loss > 100× the median of the up to 500 before it)", "",
                  "Eq. (10) is α* = ‖∇L‖²ᾱ² / (2[g(ᾱ) − L + ‖∇L‖²ᾱ]) = ‖∇L‖²/(2a2). Late in training the minibatch "
                  "loss L and ‖∇L‖² are tiny; the denominator a2·ᾱ² is then a difference of two nearly equal loss "
                  "values. `den/ulp` is that denominator in units of the float spacing of L: at a few ulps (or less) "
                  "α* is set by rounding, not by curvature. Even where it is not (float64), α* is the exact "
                  "line-search step of *this* nearly solved minibatch along its own gradient, which can be enormous; "
                  "applied to the parameters it throws the next minibatch's loss up by orders of magnitude. Nothing in "
                  "the printed algorithm bounds α* (Lemma 2's α* ≤ ᾱ does not hold; `qlabref verify`).", "",
                  f"The public training script named for QLABGrad ({PUBLIC_CODE.split(' (')[0]}, `qlab.py` and "
                  "`QLAB_traning.py`) does not run Algorithm 1 as printed: it fits the parabola along the ∞-normalised "
                  "gradient g/max|g| with the probe at the previous learning rate (from 0.1; the v1 paper's QLAB), "
                  "takes the probe point on a negative α*, and caps the result, α = min(|α*|, 0.5), which it then "
                  "applies to the raw gradient through `torch.optim.SGD`. With that cap the blow-up above cannot "
                  "happen" + ("; `qlabgrad-maxlr0.5` in the remedies table is Algorithm 1 with the same cap."
                              if "qlabgrad-maxlr0.5" in GRIDS[grid]["seeds"] else
                              " (Algorithm 1 with this cap, `qlabgrad-maxlr0.5`, runs on the MLP grid only)."),
                  ""]
            for rid, ev in blown:
                L += [f"**{rid}**, blow-up at iteration {ev['blowup']['iter']}:", "",
                      "| iter | loss L | ‖∇L‖² | a2 | den/ulp | α* | α_t | next loss |", "|---|---|---|---|---|---|---|---|"]
                for row in ev["blowup"]["rows"]:
                    lr = row["pre_lr"] if row["fallback"] else row["alpha_star"]
                    f = lambda v: "—" if v is None else f"{v:.3g}"  # noqa: E731
                    L.append(f"| {row['iter']} | {f(row['loss'])} | {f(row['grad_sq_norm'])} | {f(row['a2'])} | "
                             f"{f(row['denominator_ulps'])} | {f(row['alpha_star'])} | {f(lr)} | {f(row['next_loss'])} |")
                top = ev["largest_alpha_star"][:3]
                L += ["", "Largest α* of the run: " + "; ".join(
                    f"{t['alpha_star']:.3g} at iteration {t['iter']} (L = {t['loss']:.3g}, den/ulp = "
                    f"{(t['denominator_ulps'] if t['denominator_ulps'] is not None else float('nan')):.2g}, next loss "
                    f"{(t['next_loss'] if t['next_loss'] is not None else float('nan')):.3g})" for t in top) + ".", ""]
        extra = sorted(f for f in os.listdir(fig_dir) if f.startswith("qlabgrad-") and f.endswith(".png"))
        rel = os.path.relpath(fig_dir, results_dir)
        for f in extra:  # per-step diagnostics drawn from a run's full records (qlabref.runplots.qlab_figure)
            L += [f"![{f[:-4]}]({rel}/{f})", ""]
    L += table("setting", "A competitor as its authors' code runs it (the paper's most likely setting; Table 1's "
                          "formula differs)", paper=True)
    L += table("decay", "Decay schedules on SGD (lr 0.1)", paper=False)
    L += table("unfair", "Where the paper's protocol is unfair: RMSprop and Adam at their customary lr 1e-3",
               paper=False)
    L += table("beyond", "Beyond the paper: the learning-rate-free methods that followed (authors' defaults)",
               paper=False, reference=("qlabgrad", "qlabgrad-cap10", "sgd"))

    # figures from the downsampled curves
    picks = {"paper": lambda m: METHODS[m][3] == "paper",
             "remedy": lambda m: m == "qlabgrad" or METHODS[m][3] == "remedy",
             "decay": lambda m: m in ("sgd", "qlabgrad") or METHODS[m][3] == "decay",
             "beyond": lambda m: m in ("sgd", "qlabgrad") or METHODS[m][3] == "beyond"}
    for group, title in (("paper", "paper's methods"), ("remedy", "QLABGrad and remedies"),
                         ("decay", "SGD with decay schedules"),
                         ("beyond", "beyond the paper")):
        runs = [_curve_run(r) for m in ORDER if picks[group](m)
                for r in sorted(by_method.get(m, []), key=lambda r: r["summary"]["config"]["seed"])
                if r["summary"]["config"]["seed"] == 0]
        own = [r for r in runs if _method_of(r["path"]) not in ("sgd", "qlabgrad")]
        tag = {"paper": "methods", "remedy": "remedies", "decay": "decay", "beyond": "beyond"}[group]
        if not own:  # only the two reference runs: no figure (and none left over from an older grid)
            for stale in (f"loss-{tag}.png", f"loss-{tag}.svg", f"lr-{tag}.png", f"lr-{tag}.svg"):
                if os.path.isfile(os.path.join(fig_dir, stale)):
                    os.remove(os.path.join(fig_dir, stale))
            if group == "beyond" and runs:
                L += [f"No \"{title}\" figure: the learning-rate-free methods that followed the paper run on the MLP "
                      "grid only (`qlabref.reproduce.GRIDS`), so this grid has no record of them to draw beside "
                      "QLABGrad and SGD.", ""]
            continue
        plt = runplots._plt()
        zoom = ((0, 10000 if not quick else 100, 0, 0.2) if model == "mlp" else
                (20000 if not quick else 200, 30000 if not quick else 300, 0, 0.2))
        fig = runplots.loss_figure(runs, smooth=max(1, 100 // CURVE_BUCKET), zoom=zoom, raw=False,
                                   title=f"MNIST {model.upper()}, {title}, seed 0: training loss "
                                         f"(mean per {CURVE_BUCKET} iterations)")
        for fmt in ("png", "svg"):
            _save_figure(fig, os.path.join(fig_dir, f"loss-{tag}.{fmt}"))
        plt.close(fig)
        fig = runplots.lr_figure([r for r in runs], log=True,
                                 title=f"MNIST {model.upper()}, {title}, seed 0: learning rate (Figure 3{'a' if model == 'mlp' else 'b'})")
        for fmt in ("png", "svg"):
            _save_figure(fig, os.path.join(fig_dir, f"lr-{tag}.{fmt}"))
        plt.close(fig)
        rel = os.path.relpath(fig_dir, results_dir)
        L += [f"![training loss, {title}]({rel}/loss-{tag}.png)", "",
              f"![learning rate, {title}]({rel}/lr-{tag}.png)", ""]

    if with_findplr:
        rows = findplr_trace(seeds=range(8) if not quick else range(2), model=model)
        L += [f"## FindPLR from 1e-5 on the {model.upper()} "
              + ("(the paper's Figure 8: 1e-5 → 0.00128 after 7 iterations)" if model == "mlp" else
                 "(the paper's Figure 8 shows the MLP only)"), "",
              f"FindPLR (Algorithm 2) at the first step of the {model.upper()}, on each seed's first minibatch. "
              "`loop-1 test` is a2·ᾱ² = g(ᾱ) − g(0) + ᾱ‖∇L‖² at ᾱ = 1e-5, `ulp(L)` the float spacing of the loss "
              "there: loop 1 doubles while the test is negative.", "",
              "| dtype | seed | ᾱ found | doublings | halvings | probes | L | ‖∇L‖² | loop-1 test at 1e-5 | ulp(L) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            L.append(f"| {r['dtype']} | {r['seed']} | {r['pre_lr']:.5g} | {r['doublings']} | {r['halvings']} | "
                     f"{r['evals']} | {r['loss']:.6g} | {r['grad_sq_norm']:.4g} | {r['loop1_test_at_alpha0']:.3g} | "
                     f"{r['loss_ulp']:.2g} |")
        L.append("")
        if model == "mlp":
            pub = findplr_public_code_trace(seeds=range(8) if not quick else range(2))
            finals = sorted({r["final"] for r in pub})
            dbl = sorted({r["doublings"] for r in pub})
            L += ["### What gives Figure 8's numbers: the public FindPLR script", "",
                  f"The public repository named for QLABGrad ({PUBLIC_CODE}) has a FindPLR script whose test is not "
                  "Algorithm 2's: no backward pass runs before it, so the probe point is θ itself; the term that "
                  "should be ᾱ‖∇L‖² is ᾱ times the squared norm of the *parameters* θ; and g(0) is the constant 3. "
                  "Its test is therefore L(θ) − 3 + ᾱ‖θ‖² < 0, one doubling per minibatch, which holds while "
                  "ᾱ < (3 − L)/‖θ‖² ≈ 0.7/671. Re-implemented from that description (`qr.reproduce."
                  "findplr_public_code_trace`), it gives on every seed:", "",
                  "| seed | sequence of ᾱ | doublings | ‖θ‖² at init | threshold (3 − L)/‖θ‖² | why it stops |",
                  "|---|---|---|---|---|---|"]
            for r in pub:
                L.append(f"| {r['seed']} | {' → '.join(f'{a:.3g}' for a in r['sequence'])} | {r['doublings']} | "
                         f"{r['theta_sq_norm']:.2f} | {r['threshold']:.3g} | {r['stop'] or 'batch limit'} |")
            L += ["", f"Final ᾱ {', '.join(f'{v:.5g}' for v in finals)} after {', '.join(map(str, dbl))} doublings: "
                  "Figure 8's 1e-5 → 0.00128 after 7 iterations, on every seed, because 1e-5·2⁶ = 0.00064 and "
                  "1e-5·2⁷ = 0.00128 bracket the threshold ≈ 0.00104 set by the initialisation's ‖θ‖² ≈ 671 (the "
                  "minibatch barely matters). Algorithm 2 as printed (the table above) does not give these numbers: "
                  "in float64 it keeps 1e-5 on every seed, in float32 rounding decides.", ""]
    if tm:
        L += ["## Time per step relative to SGD (one process, one thread; methods take turns in blocks of 10 steps, × SGD is the median over rounds of the ratio to SGD's block in the same round)",
              "", "| method | ms per step (median) | × SGD | × SGD, quartiles over rounds | paper |",
              "|---|---|---|---|---|"]
        for m, v in tm.items():
            tag = " ‡" if METHODS[m][3] == "beyond" else ""
            q = (f"{v['ratio_q25']:.2f}–{v['ratio_q75']:.2f}" if v.get("ratio_q25") is not None else "—")
            L.append(f"| {m}{tag} | {v['ms']:.2f} | {v['ratio']:.2f} | {q} | "
                     f"{PAPER_TIME.get(m, 1.0 if m == 'sgd' else '—')} |")
        L.append("")
        if any(METHODS[m][3] == "beyond" for m in tm):
            L += ["‡ beyond the paper (not in its comparison).", ""]
        mach = timing.get("machine") or {}
        blas = timing.get("blas") or {}
        where = ", ".join(x for x in (mach.get("processor"), f"{mach['cpu_count']} cores" if mach.get("cpu_count") else None,
                                      " ".join(str(v) for v in blas.values()) if blas else None) if x)
        lb, la = timing.get("load_before"), timing.get("load_after")
        L.append(f"Measured on {timing.get('measured', '?')} at commit `{(timing.get('commit') or '?')[:10]}`"
                 + (f" ({where})" if where else "") + "; kept in "
                 f"`{os.path.relpath(timing_path(results_dir, grid, quick), results_dir)}` and reused when the tables are "
                 "rebuilt (`qlabref reproduce --measure-time` measures again)."
                 + (f" 1-minute load average {lb:.2f} before and {la:.2f} after; other processes (grid runs) shared "
                    "the machine, and load that is steady over a round cancels in the ratios, so the quartiles show how "
                    "much it did not." if lb is not None and la is not None else "")
                 + (" " + timing["note"] if timing.get("note") else ""))
        L.append("")
    elif with_timing:
        L += ["## Time per step relative to SGD", "",
              f"Not measured for this results folder: `qlabref reproduce {grid}{' --quick' if quick else ''} "
              "--tables-only --measure-time` measures it (one process, one BLAS thread) and keeps it in "
              f"`{os.path.relpath(timing_path(results_dir, grid, quick), results_dir)}`.", ""]
    L += _provenance(recs, quick)
    total = (wall or 0.0) + (time.time() - t_start)
    L[2] = L[2].replace("WALL", f"{total:.0f}")
    path = os.path.join(results_dir, f"{grid}{suffix}.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(L) + "\n")
    os.replace(tmp, path)
    return path
