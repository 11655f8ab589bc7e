"""QLABGrad step by step on a 2-D test function: every number of Algorithm 1 and Eq. (10), checked.

Run:  python demos/qlab_step_by_step.py [booth|himmelblau|eggholder|rosenbrock|beale] [--steps N]

For each step it prints a0 = L(θ) (Eq. 6), a1 = −‖∇L‖² (Eq. 7), the probe g(ᾱ) (Eq. 8), a2 (Eq. 9),
α* (Eq. 10), the learning rate actually used (α* or the fallback ᾱ, Algorithm 1 lines 4-7), and
recomputes α* here from the printed a0, a1, g(ᾱ), ᾱ with the paper's formula, so a reader can follow
the arithmetic line by line.
"""
import argparse

import numpy as np

import qlabref as qr


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("function", nargs="?", default="himmelblau")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--start", type=float, nargs=2, default=None, help="start point (default: a fixed one)")
    parser.add_argument("--alpha0", type=float, default=1e-3, help="FindPLR's initial pre-learning rate")
    args = parser.parse_args(argv)

    fn = qr.functions.get(args.function)
    start = np.array(args.start if args.start else [-1.0, -1.0] if args.function != "eggholder" else [300.0, 200.0])
    xy = qr.tensor(start.astype(np.float64), requires_grad=True)
    opt = qr.optim.QLABGrad([xy], alpha0=args.alpha0)
    print(f"QLABGrad on {args.function} from {start.tolist()}, FindPLR from alpha0={args.alpha0}")
    print(f"{'t':>3} {'a0=L':>11} {'a1=-|g|^2':>11} {'g(prelr)':>11} {'prelr':>9} {'a2':>10} {'alpha*':>10} "
          f"{'lr':>9} {'fallback':>8} {'evals':>5}  check")
    for t in range(1, args.steps + 1):
        opt.step(lambda: fn.f(xy))
        s = opt.last_step
        if s.get("zero_grad"):
            print(f"{t:>3} zero gradient: no step")
            break
        # Eq. (10), recomputed from the printed numbers
        a0, a1, gbar, pre = s["a0"], s["a1"], s["probe_loss"], s["pre_lr"]
        denom = 2 * (gbar - a0 - a1 * pre)
        alpha = (-a1) * pre**2 / denom if denom != 0 else float("nan")
        ok = (s["alpha_star"] is None and denom <= 0) or (s["alpha_star"] is not None
                                                          and np.isclose(alpha, s["alpha_star"], rtol=1e-12))
        astar = "None" if s["alpha_star"] is None else f"{s['alpha_star']:.4g}"
        print(f"{t:>3} {a0:>11.5g} {a1:>11.5g} {gbar:>11.5g} {pre:>9.3g} {s['a2']:>10.4g} {astar:>10} "
              f"{s['lr']:>9.4g} {str(s['fallback']):>8} {s['evals']:>5}  {'Eq.(10) ok' if ok else 'MISMATCH'}")
        if not ok:
            return 1
    print(f"final point {xy.data.round(6).tolist()}, f = {float(fn.f(xy.data)):.6g} (f_min = {fn.f_min})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
