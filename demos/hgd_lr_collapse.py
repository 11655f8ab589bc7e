"""HGD at the paper's settings on real MNIST: its learning rate collapses (needs `pip install torch`).

Run:  python demos/hgd_lr_collapse.py [--steps N] [--dtype float64|float32] [--seed S]

The paper (Sec. 5, on Figure 3a) says HGD's hyper-gradient rate β = 1e-3 "smooths learning rate
fluctuations within a 10^-2 range" around its initial 0.1; our MNIST grid found the learning rate
falling from 0.1 to a few thousandths within 1,000 iterations (hgd-s0: 94.47% test accuracy, paper
98.43%). This demo shows that the fall is the rule itself, not qlabref: Baydin et al.'s SGD-HD
(Algorithm "SGD-HD" of "Online Learning Rate Adaptation with Hypergradient Descent", ICLR 2018)

    α_t = α_{t−1} + β ∇L_t · ∇L_{t−1},        θ_t = θ_{t−1} − α_t ∇L_t

is written out below in ~10 lines of torch, and run beside `qr.optim.HGD` from identical weights (the
paper's MLP, made by `qr.interop.to_torch`) on the same MNIST minibatches of 64 (lr 0.1, β = 1e-3).
Every 100 steps it prints both learning rates and the largest relative parameter difference; in
float64 they agree to ~1e-12 (the check at the end). The learning rate falls below 0.01 within a few
hundred steps because consecutive minibatch gradients at lr 0.1 point against each other (their
inner product is negative), and each such step lowers α by β times it.
"""
import argparse

import numpy as np

import qlabref as qr
import qlabref.nn.functional as F


def torch_sgdhd_step(torch, model, x, y, state, lr0, beta):
    """One SGD-HD step in plain torch; ``state`` holds α and the previous gradient."""
    params = list(model.parameters())
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    g = torch.cat([p.grad.reshape(-1) for p in params])
    if state.get("g_prev") is None:
        state["lr"] = lr0                                     # step 1: no previous gradient, α_1 = α_0
    else:
        state["lr"] = state["lr"] + beta * float(g @ state["g_prev"])   # α_t = α_{t−1} + β ∇L_t·∇L_{t−1}
    state["g_prev"] = g.clone()
    with torch.no_grad():
        for p in params:
            p -= state["lr"] * p.grad                         # θ_t = θ_{t−1} − α_t ∇L_t
    return loss.item(), state["lr"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--beta", type=float, default=1e-3)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=100, help="print every N steps")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("hgd_lr_collapse: this demo needs PyTorch (pip install torch)")
        return 2
    torch.set_num_threads(1)
    dtype = np.dtype(args.dtype)
    X, Y = qr.data.mnist("train")
    batches = qr.data.batches(X, Y, args.batch, seed=args.seed)
    ours = qr.models.get("mlp", seed=args.seed, dtype=dtype)
    theirs = qr.interop.to_torch(ours)
    opt = qr.optim.HGD(ours.parameters(), lr=args.lr, hypergrad_lr=args.beta)
    state = {}
    print(f"MLP ({ours.num_parameters():,} parameters, {args.dtype}), MNIST batches of {args.batch}, "
          f"SGD-HD with α0 = {args.lr}, β = {args.beta}")
    print(f"{'step':>5} {'loss qlabref':>13} {'lr qlabref':>12} {'lr torch':>12} {'max rel diff θ':>15}")
    worst, lrs = 0.0, []
    for t in range(1, args.steps + 1):
        xb, yb = next(batches)
        xb = xb.astype(dtype)
        loss = opt.step(lambda: F.cross_entropy(ours(qr.tensor(xb)), yb))
        _, tlr = torch_sgdhd_step(torch, theirs, torch.from_numpy(xb), torch.from_numpy(yb), state,
                                  args.lr, args.beta)
        lrs.append(opt.last_step["lr"])
        sd, tsd = ours.state_dict(), theirs.state_dict()
        diff = max(qr.relative_error(sd[k], tsd[k].numpy()) for k in sd)
        worst = max(worst, diff)
        if t % args.every == 0 or t == 1:
            print(f"{t:>5} {loss:>13.6f} {opt.last_step['lr']:>12.6f} {tlr:>12.6f} {diff:>15.2e}")
    print(f"learning rate: {args.lr} at step 1, {min(lrs):.6f} at its lowest, {lrs[-1]:.6f} at step {args.steps}")
    limit = 1e-9 if dtype == np.float64 else 1e-3
    print(f"largest relative parameter difference: {worst:.2e} ({'OK' if worst < limit else 'TOO LARGE'}, limit {limit:g})")
    return 0 if worst < limit else 1


if __name__ == "__main__":
    raise SystemExit(main())
