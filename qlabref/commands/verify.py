"""``qlabref verify``: the paper's claims as numerical checks, one line per claim.

Runs the checks of :mod:`qlabref.verify` (Eq. (10) = exact line search on a quadratic, Lemma 2,
Lemma 3, FindPLR's exit conditions, Eq. (16), Theorem 1, monotone decrease) with the real
optimizer and prints ``PASS``/``FAIL``/``REFUTED``, the equation or lemma number and the measured
numbers. ``REFUTED`` marks a claim *as printed in the paper* that a reproducible counterexample shows
not to hold in general (not a failure of qlabref). Exit code 1 if any check FAILs.
"""
from __future__ import annotations

import time

NAME = "verify"
HELP = "check the paper's claims numerically (Eq. 10, Lemmas 2-3, FindPLR, Theorem 1): PASS/FAIL per claim"
DESCRIPTION = (
    "Run the paper's claims as numerical checks with the real QLABGrad/FindPLR on problems with known "
    "Lipschitz constant M (quadratics, logistic regression, a non-convex cosine problem, Himmelblau) and print "
    "one line per claim: status, equation/lemma, measured numbers. REFUTED = a claim as printed in the paper "
    "that a counterexample shows not to hold in general (expected; not a failure). Exit code 1 if any check FAILs."
)


def add_arguments(parser):
    from . import _args

    parser.add_argument("--seed", type=_args.seed, default=0, help="seed of the random problems (default 0)")


def run(args) -> int:
    import numpy as np

    from .. import verify

    t0 = time.perf_counter()
    print(f"qlabref verify: the paper's claims as numerical checks (float64, seed {args.seed})")
    results = []
    for i, check in enumerate(verify.CHECKS):
        with np.errstate(over="ignore", invalid="ignore"):
            r = check(np.random.default_rng([args.seed, i]))
        results.append(r)
        print(r.line(), flush=True)
    counts = {s: sum(1 for r in results if r.status == s) for s in ("PASS", "FAIL", "REFUTED")}
    print(f"qlabref verify: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['REFUTED']} REFUTED "
          f"(claims as printed that do not hold in general; see `python -m pydoc qlabref.optim.qlab`, items 2 and 7) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 1 if counts["FAIL"] else 0
