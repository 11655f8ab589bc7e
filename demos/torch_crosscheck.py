"""Cross-check a PyTorch QLABGrad run against qlabref, step by step (needs `pip install torch`).

Run:  python demos/torch_crosscheck.py [--model paper_cnn|mlp|resnet18] [--steps N] [--dtype float64|float32]

A PyTorch model (built by `qr.interop.to_torch` from a qlabref model, so both start from identical
weights) is trained with QLABGrad written out in ~15 lines of torch (Algorithm 1 with a fixed ᾱ,
Eq. (10)); qlabref's `QLABGrad` trains its own copy on the same minibatches. Each step prints both
losses, both learning rates α_t and the largest relative parameter difference. In float64 they agree
to ~1e-12 or better; that is what "identical weights give identical numbers" means here.
"""
import argparse

import numpy as np

import qlabref as qr
import qlabref.nn.functional as F


def torch_qlab_step(torch, model, x, y, pre_lr):
    """Algorithm 1 in plain torch: loss + gradient, one probe at θ − ᾱ∇L, Eq. (10), update."""
    params = [p for p in model.parameters()]
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    loss = loss.item()
    gsq = sum(float((p.grad.double() ** 2).sum()) for p in params)            # ‖∇L‖² (Eq. 7: a1 = −‖∇L‖²)
    saved = [p.detach().clone() for p in params]
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s - pre_lr * p.grad)
        probe = float(torch.nn.functional.cross_entropy(model(x), y))         # g(ᾱ) (Eq. 8)
        model.load_state_dict({**model.state_dict(), **buffers})              # the probe changes no BN state
        denom = 2 * (probe - loss + gsq * pre_lr)
        alpha_star = gsq * pre_lr**2 / denom if denom > 0 else None           # Eq. (10)
        lr = alpha_star if alpha_star is not None and alpha_star > 0 else pre_lr  # Algorithm 1, lines 4-7
        for p, s in zip(params, saved):
            p.copy_(s - lr * p.grad)                                          # line 8
    return loss, lr


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="paper_cnn", choices=["paper_cnn", "mlp", "resnet18"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--pre-lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch_crosscheck: this demo needs PyTorch (pip install torch)")
        return 2
    torch.set_num_threads(1)
    dtype = np.dtype(args.dtype)
    ours = qr.models.get(args.model, seed=args.seed, dtype=dtype)
    theirs = qr.interop.to_torch(ours)
    shape = (args.batch, 3, 32, 32) if args.model == "resnet18" else (args.batch, 1, 28, 28)
    rng = np.random.default_rng(args.seed)
    opt = qr.optim.QLABGrad(ours.parameters(), pre_lr=args.pre_lr, findplr="never")
    print(f"{args.model} ({ours.num_parameters():,} parameters, {args.dtype}), QLABGrad with ᾱ = {args.pre_lr}")
    print(f"{'step':>4} {'loss qlabref':>14} {'loss torch':>14} {'lr qlabref':>12} {'lr torch':>12} {'max rel diff θ':>15}")
    worst = 0.0
    for t in range(1, args.steps + 1):
        x = rng.standard_normal(shape).astype(dtype)
        y = rng.integers(0, 10, args.batch)
        loss = opt.step(lambda: F.cross_entropy(ours(qr.tensor(x)), y))
        tloss, tlr = torch_qlab_step(torch, theirs, torch.from_numpy(x), torch.from_numpy(y), args.pre_lr)
        sd, tsd = ours.state_dict(), theirs.state_dict()
        diff = max(qr.relative_error(sd[k], tsd[k].numpy()) for k in sd)
        worst = max(worst, diff)
        print(f"{t:>4} {loss:>14.10f} {tloss:>14.10f} {opt.last_step['lr']:>12.6g} {tlr:>12.6g} {diff:>15.2e}")
    limit = 1e-9 if dtype == np.float64 else 1e-3
    print(f"largest relative parameter difference: {worst:.2e} ({'OK' if worst < limit else 'TOO LARGE'}, limit {limit:g})")
    return 0 if worst < limit else 1


if __name__ == "__main__":
    raise SystemExit(main())
