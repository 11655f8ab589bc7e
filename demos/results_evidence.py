"""The evidence behind the statements of demos/results/README.md that are not a table cell, recomputed from
the committed records only (demos/results/<grid>/<run>.json and timing.json; no run directory, no training).

    python demos/results_evidence.py            # from the repository root; prints one line per statement

Each line is `name: value`; the results report cites these names and numbers, and tests/test_results_report.py
checks both ends (the numbers here against the JSON, the report against these numbers). The records hold
curves in buckets of 30 iterations (mean/min/max loss, mean/max learning rate, max α*), every evaluation
(each 1,000 iterations), the summary of the run (lr_median, fallback_steps, alpha_star_max, ...) and, for the
QLAB family, the steps around the first blow-up and the five largest α*. What needs a run's full per-step
records (an exact count of capped steps, the state of the ReLUs) is not claimed.
"""
from __future__ import annotations

import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def record(grid, run_id, results=RESULTS):
    with open(os.path.join(results, grid, run_id + ".json")) as f:
        return json.load(f)


def _vals(curves, key):
    return [math.nan if v is None else float(v) for v in curves[key]]


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def accuracy_at(rec, it):
    return next(e["test_accuracy"] for e in rec["evals"] if int(e["iter"]) == it)


def buckets(rec, first, last):
    """The 30-iteration buckets whose first iteration lies in [first, last]: (iter, lr_max, loss_max, lr_mean, loss_mean)."""
    c = rec["curves"]
    rows = zip(c["iter"], _vals(c, "lr_max"), _vals(c, "loss_max"), _vals(c, "lr_mean"), _vals(c, "loss_mean"))
    return [r for r in rows if first <= r[0] <= last]


def evidence(results=RESULTS):
    out = {}
    # --- MLP, QLABGrad as printed, seed 1: what happened before and at the blow-up of iteration 28,053
    r = record("mnist-mlp", "qlabgrad-s1", results)
    for it in (25000, 27000, 28000, 29000, 30000):
        out[f"mlp_qlabgrad_s1_acc_{it}"] = round(100 * accuracy_at(r, it), 2)
    win = buckets(r, 27721, 28021)  # iterations 27,721-28,050, before the blow-up
    out["mlp_qlabgrad_s1_lr_max_27721_28050"] = (round(min(b[1] for b in win), 1), round(max(b[1] for b in win), 1))
    out["mlp_qlabgrad_s1_loss_max_27721_28050"] = round(max(b[2] for b in win), 3)
    out["mlp_qlabgrad_s1_lr_max_27691_27720"] = round(buckets(r, 27691, 27691)[0][1], 0)
    ev = r["qlab_events"]["blowup"]
    pre = next(row for row in ev["rows"] if row["iter"] == ev["iter"] - 1)
    out["mlp_qlabgrad_s1_blowup"] = (ev["iter"], round(pre["alpha_star"], 0), round(pre["denominator_ulps"], 0),
                                     round(pre["next_loss"], 2))
    out["mlp_qlabgrad_s1_alpha_star_max"] = float(f"{r['summary']['alpha_star_max']:.2g}")

    # --- CNN, the cap alpha_t <= pre_lr (qlabgrad-cap1), seeds 0-2: how often the cap was active (a lower bound)
    for s in (0, 1, 2):
        r = record("mnist-cnn", f"qlabgrad-cap1-s{s}", results)
        sm = r["summary"]
        n = sm["qlab_steps"]
        # lr_median = 1 = pre_lr = lr_max: the median of n values all <= 1 is 1, so at least n//2 + 1 steps used
        # alpha_t = pre_lr; each was a capped step or a fallback step (alpha_t = pre_lr, Algorithm 1)
        assert sm["lr_max"] == 1.0 and sm["lr_median"] == 1.0, (s, sm["lr_max"], sm["lr_median"])
        at_pre = n // 2 + 1
        out[f"cnn_cap1_s{s}_capped_at_least"] = (at_pre - sm["fallback_steps"], n, sm["fallback_steps"])
        out[f"cnn_cap1_s{s}_alpha_star_max"] = float(f"{sm['alpha_star_max']:.2g}")

    # --- CNN, QLABGrad as printed, seeds 1 and 2: failed in the first iterations, never recovered
    r = record("mnist-cnn", "qlabgrad-s1", results)
    rows = {row["iter"]: row for row in r["qlab_events"]["blowup"]["rows"]}
    row = rows[4]
    out["cnn_qlabgrad_s1_step4"] = (float(f"{row['a2']:.2g}"), round(row["denominator_ulps"], -2),
                                    round(row["alpha_star"], 1), round(row["next_loss"], 0))
    for s in (1, 2):
        r = record("mnist-cnn", f"qlabgrad-s{s}", results)
        late = [b for b in buckets(r, 1000, 10 ** 9)]
        out[f"cnn_qlabgrad_s{s}_loss_mean_after_1000"] = (round(min(b[4] for b in late), 2),
                                                         round(max(b[4] for b in late), 2))
        out[f"cnn_qlabgrad_s{s}_best_acc_after_0"] = round(100 * max(e["test_accuracy"] for e in r["evals"]
                                                                   if int(e["iter"]) > 0), 2)
    b = buckets(record("mnist-cnn", "qlabgrad-s2", results), 31, 31)[0]
    out["cnn_qlabgrad_s2_iters_31_60"] = (round(b[1], 1), round(b[2], 1))

    # --- CNN, HGD (seed 0): its learning rate, from the 30-iteration means
    r = record("mnist-cnn", "hgd-s0", results)
    c = r["curves"]
    lr = _vals(c, "lr_mean")
    it = c["iter"]
    out["cnn_hgd_lr_mean_91_120"] = round(buckets(r, 91, 91)[0][3], 4)
    for a, z in ((1000, 10000), (10000, 20000), (20000, 30000)):
        out[f"cnn_hgd_lr_median_{a}_{z}"] = round(_median([v for i, v in zip(it, lr) if a <= i < z]), 4)
    neg = sum(1 for v in lr if v < 0)
    out["cnn_hgd_negative_lr_means"] = (neg, len(lr))

    # --- time per step: the load the committed measurements were made under
    for grid in ("mnist-mlp", "mnist-cnn"):
        with open(os.path.join(results, grid, "timing.json")) as f:
            t = json.load(f)
        out[f"{grid}_timing_load"] = (t["load_before"], t["load_after"], t["machine"].get("cpu_count"))
        out[f"{grid}_timing_qlabgrad"] = (t["methods"]["qlabgrad"]["ratio"], t["methods"]["qlabgrad"]["ratio_q25"],
                                          t["methods"]["qlabgrad"]["ratio_q75"])
    return out


def main(argv=None):
    results = (argv or sys.argv[1:] or [RESULTS])[0]
    for k, v in evidence(results).items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
