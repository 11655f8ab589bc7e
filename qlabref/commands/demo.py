"""``qlabref demo``: the README's main job."""
from __future__ import annotations

import numpy as np

NAME = "demo"
HELP = "run the main demo (autodiff on a tiny network, checked by central differences)"


def add_arguments(parser):
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args) -> int:
    import qlabref as qr

    rng = np.random.default_rng(args.seed)
    x = qr.tensor(rng.standard_normal((4, 3)))
    labels = np.array([0, 1, 1, 0])
    w1 = qr.tensor(rng.standard_normal((3, 5)) * 0.5, requires_grad=True)
    w2 = qr.tensor(rng.standard_normal((5, 2)) * 0.5, requires_grad=True)

    def loss_fn(w1, w2):
        return qr.cross_entropy((x @ w1).tanh() @ w2, labels)

    loss = loss_fn(w1, w2)
    loss.backward()
    print("qlabref autodiff demo: a 3-5-2 tanh network, cross-entropy on 4 points (float64)")
    print(f"  loss                      = {loss.item():.10f}")
    print(f"  |dL/dW1|, |dL/dW2|        = {np.linalg.norm(w1.grad):.10f}, {np.linalg.norm(w2.grad):.10f}")
    errs = qr.gradcheck(loss_fn, [w1, w2])
    print(f"  relative error vs central differences: W1 {errs[0]:.1e}, W2 {errs[1]:.1e}")
    return 0
