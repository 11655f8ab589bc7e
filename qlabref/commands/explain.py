"""``qlabref explain``: the paper's Figure 1 from real numbers.

Runs an optimizer (QLABGrad by default) up to the chosen step k on a 2-D test function or on a small
model with random data, then at θ_{k−1} (the point step k starts from) evaluates the true

    g(α) = L(θ_{k−1} − α ∇L(θ_{k−1}))                                   (Eq. 3)

on a grid of α and draws it against the quadratic QLABGrad fitted at that step,

    g₁(α) = a₀ + a₁α + a₂α²,  a₀ = L (Eq. 6), a₁ = −‖∇L‖² (Eq. 7), a₂ from the probe g(ᾱ) (Eq. 9),

marking ᾱ (the pre-learning rate), α* = −a₁/(2a₂) (Eq. 5/10) and the point where the step lands,
(α_k, g(α_k)). The numbers are printed too. For an optimizer other than QLABGrad, the same quadratic
is fitted with ᾱ = that optimizer's learning rate (what QLAB would have done from the same point);
the landing point is drawn for SGD only (Adam and others do not step along −∇L).
"""
from __future__ import annotations

import math
import sys

import numpy as np

NAME = "explain"
HELP = "plot the true g(α) against QLABGrad's fitted quadratic at one step (the paper's Figure 1)"
DESCRIPTION = (
    "Run an optimizer (QLABGrad by default) to step k on a 2-D test function or a model, then plot the true "
    "g(α) = L(θ − α∇L) against the quadratic g1(α) = a0 + a1 α + a2 α² that QLABGrad fitted at that step "
    "(Eq. 4), marking ᾱ, α* and where the step lands (the paper's Figure 1), and print the numbers."
)


MAX_POINTS = 10_001
MAX_STEP = 10_000
MAX_BATCH = 1024
MAX_MODEL_STEP = 200
MAX_MODEL_POINTS = 1001


def add_arguments(parser):
    from .. import functions as F
    from . import _args

    parser.add_argument("--function", default=None,
                        help=f"2-D test function ({', '.join(F.names())}; default booth)")
    parser.add_argument("--model", default=None, choices=["mlp", "paper_cnn", "resnet18"],
                        help="explain a step of a model instead (qr.models, float64) on one random minibatch")
    parser.add_argument("--step", type=_args.positive_int(MAX_STEP), default=3,
                        help=f"which step to explain, counted from 1 (default 3, at most {MAX_STEP}; {MAX_MODEL_STEP} with --model)")
    parser.add_argument("--optimizer", default="qlabgrad", help="optimizer that makes the run (default qlabgrad)")
    parser.add_argument("--start", type=_args.finite_float, nargs=2, default=None, metavar=("X", "Y"),
                        help="start point on the 2-D function (default: the function's Figure-2 start)")
    parser.add_argument("--lr", type=_args.positive_float, default=None, help="learning rate, for optimizers that take one")
    parser.add_argument("--alpha0", type=_args.positive_float, default=None,
                        help="FindPLR's / QLAB's start value α0, for the optimizers that take one (default: the optimizer's)")
    parser.add_argument("--batch", type=_args.positive_int(MAX_BATCH), default=None,
                        help=f"--model only: minibatch size of the random data (default 64, at most {MAX_BATCH})")
    parser.add_argument("--seed", type=_args.seed, default=None,
                        help="--model only: seed of the weights and the random data (default 0)")
    parser.add_argument("--points", type=_args.bounded_int(3, MAX_POINTS), default=201,
                        help=f"number of α values on the grid (default 201, from 3 to {MAX_POINTS}; "
                        f"at most {MAX_MODEL_POINTS} with --model)")
    parser.add_argument("--out", default="qlabref-out/explain", help="output folder (default ./qlabref-out/explain)")


def explain_step(params, closure, optimizer="qlabgrad", step=1, points=201, progress=None, **opt_kw):
    """Run ``optimizer`` on ``params`` with the forward-only ``closure`` for ``step`` steps and return
    the numbers of step ``step``: a dict with theta (list of arrays θ_{k−1}), grad, loss, record (the
    optimizer's ``last_step``), a0, a1, a2, pre_lr, alpha_star, lr, fallback, alphas and g (the true
    g(α) on the grid), g_lr (g at the landing α), and along_gradient (False for optimizers whose
    step is not along −∇L). ``progress(done, total, what)``, if given, is called after every step of
    the run and every grid point."""
    from .. import optim
    from ..autograd import no_grad, no_state_update

    if step < 1:
        raise ValueError(f"explain: --step counts from 1, got {step}")
    if int(points) < 3:
        raise ValueError(f"explain: the α grid needs at least 3 points, got {points}")
    params = list(params)
    opt = optim.get(optimizer, params, **opt_kw)
    theta = None
    for i in range(step):
        theta = [p.data.copy() for p in params]
        opt.step(closure)
        if progress:
            progress(i + 1, step, "optimizer steps")
    record = dict(opt.last_step)
    after = [p.data.copy() for p in params]

    # the gradient at θ_{k−1}, recomputed (the optimizer may have reused or cleared .grad)
    for p, t in zip(params, theta):
        p.data[...] = t
        p.grad = None
    loss_t = closure()
    loss_t.backward()
    grads = [np.zeros_like(p.data) if p.grad is None else p.grad.copy() for p in params]
    loss = float(loss_t.data)
    gsq = float(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))

    def g_of(alpha):
        for p, t, g in zip(params, theta, grads):
            p.data[...] = t - alpha * g
        with no_grad(), no_state_update():
            v = float(closure().data)
        return v

    name = optimizer.lower()
    along = name in ("qlabgrad", "sgd")
    if name == "qlabgrad":
        a0, a1, a2 = (float(record[k]) for k in ("a0", "a1", "a2"))
        pre_lr = float(record["pre_lr"])
        alpha_star = float(record["alpha_star"]) if record.get("alpha_star") is not None else math.nan
        lr = float(record["lr"])
        fallback = bool(record.get("fallback", False))
    else:
        # what QLAB would fit from this point with ᾱ = this optimizer's learning rate (Eq. 6, 7, 9, 5)
        pre_lr = float(record.get("lr", opt_kw.get("lr", 0.01)))
        a0, a1 = loss, -gsq
        a2 = (g_of(pre_lr) - a0 - a1 * pre_lr) / pre_lr**2
        alpha_star = -a1 / (2 * a2) if a2 > 0 else math.nan
        lr = pre_lr
        fallback = False
    marks = [x for x in (pre_lr, alpha_star, lr) if x is not None and math.isfinite(x) and x > 0]
    top = 1.6 * max(marks) if marks else 1.0
    alphas = np.unique(np.concatenate([np.linspace(0.0, top, int(points)), marks]))
    g = np.empty(len(alphas))
    with np.errstate(all="ignore"):
        for i, a in enumerate(alphas):
            g[i] = g_of(a)
            if progress:
                progress(i + 1, len(alphas), "points of g(α)")
        g_lr = g_of(lr)
    for p, t in zip(params, after):  # leave the parameters where the run left them
        p.data[...] = t
    return {
        "theta": theta, "grad": grads, "loss": loss, "grad_sq_norm": gsq, "record": record,
        "a0": a0, "a1": a1, "a2": a2, "pre_lr": pre_lr, "alpha_star": alpha_star, "lr": lr,
        "fallback": fallback, "alphas": alphas, "g": g, "g_lr": g_lr, "along_gradient": along,
        "optimizer": name, "step": step,
    }


_MODEL_INPUTS = {
    "mlp": ((1, 28, 28), 10, "MLP 784-1000-1000-10 (qr.models.mlp)"),
    "paper_cnn": ((1, 28, 28), 10, "the paper's MNIST CNN (qr.models.paper_cnn)"),
    "resnet18": ((3, 32, 32), 10, "ResNet-18, CIFAR stem (qr.models.resnet18)"),
}


def _model_problem(args):
    """A model of ``qr.models`` in float64 and one random minibatch (standard-normal images, uniform
    labels): the loss surface along −∇L of a freshly initialised network."""
    import qlabref as qr

    shape, classes, what = _MODEL_INPUTS[args.model]
    batch = 64 if args.batch is None else args.batch
    seed = 0 if args.seed is None else args.seed
    rng = np.random.default_rng(seed)
    model = qr.models.get(args.model, seed=seed, dtype=np.float64)
    xt = qr.tensor(rng.standard_normal((batch, *shape)))
    y = rng.integers(0, classes, size=batch)

    def closure():
        return qr.cross_entropy(model(xt), y)

    return list(model.parameters()), closure, f"{what}, one random minibatch of {batch}"


class _Progress:
    """Progress on stderr, at most one line every 2 s, only once the work has taken more than 2 s."""

    def __init__(self):
        import time

        self.clock = time.perf_counter
        self.t0 = self.last = self.clock()

    def __call__(self, done, total, what):
        now = self.clock()
        if now - self.last >= 2.0 or (done == total and now - self.t0 >= 2.0):
            self.last = now
            print(f"qlabref explain: {done}/{total} {what} ({now - self.t0:.0f} s)", file=sys.stderr, flush=True)


def _check(args):
    """Every argument, before any work: UsageError naming the problem."""
    import inspect

    import qlabref as qr

    from ..errors import UsageError
    from . import _args

    name = args.optimizer.lower()
    if name not in qr.optim.names():
        raise UsageError(f"unknown optimizer '{args.optimizer}'; qr.optim has: {', '.join(qr.optim.names())}")
    if args.model:
        _args.reject_ignored(args, ["function", "start"], "--model explains a step of a model, not of a 2-D function")
        # a model step and a grid point are each a forward pass of a network: tighter bounds
        if args.step > MAX_MODEL_STEP:
            raise UsageError(f"--step must be at most {MAX_MODEL_STEP} with --model (every step is a forward and "
                             f"backward pass of the network), got {args.step}")
        if args.points > MAX_MODEL_POINTS:
            raise UsageError(f"--points must be at most {MAX_MODEL_POINTS} with --model (every point is a forward "
                             f"pass of the network), got {args.points}")
    else:
        _args.reject_ignored(args, ["batch", "seed"], "they apply to --model only (a 2-D function has no data)")
        try:
            qr.functions.get(args.function or "booth")
        except ValueError as e:
            raise UsageError(str(e)) from None
    takes = inspect.signature(qr.optim.registry.OPTIMIZERS[name]).parameters
    if args.lr is not None and "lr" not in takes:
        hint = " (its step size comes from the fitted quadratic)" if name.startswith("qlab") else ""
        raise UsageError(f"--lr would be ignored: {name} takes no learning rate{hint}")
    if args.alpha0 is not None and "alpha0" not in takes:
        raise UsageError(f"--alpha0 would be ignored: {name} takes no alpha0 (qlabgrad and the qlab family do)")


def run(args) -> int:
    import qlabref as qr

    from .. import plots
    from ..errors import UsageError
    from . import _args

    _check(args)
    from ..train import check_out_dir

    try:
        check_out_dir(args.out, resume=True, create=False)  # created once the step has been explained
    except ValueError as e:
        raise UsageError(str(e)) from None
    opt_kw = {}
    if args.lr is not None:
        opt_kw["lr"] = args.lr
    if args.alpha0 is not None:
        opt_kw["alpha0"] = args.alpha0
    if args.model:
        params, closure, what = _model_problem(args)
        tag = f"model_{args.model}"
    else:
        fn = qr.functions.get(args.function or "booth")
        start = np.array(fn.default_start if args.start is None else args.start, dtype=np.float64)
        p = qr.tensor(start.copy(), requires_grad=True)
        params, closure = [p], (lambda: fn.f(p))
        what = f"{fn.name} from ({start[0]:g}, {start[1]:g})"
        tag = fn.name
    if args.optimizer.lower() != "qlabgrad" and "lr" not in opt_kw and args.optimizer.lower() in ("sgd", "adam"):
        opt_kw["lr"] = 0.01
    try:
        qr.optim.get(args.optimizer, [qr.tensor(np.zeros(1), requires_grad=True)], **opt_kw)  # options valid?
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None
    try:
        # overflow on the way to a non-finite loss is reported as one line below, not as NumPy warnings
        with np.errstate(all="ignore"):
            res = explain_step(params, closure, args.optimizer, args.step, args.points, progress=_Progress(),
                               **opt_kw)
    except qr.optim.NonFiniteLossError as e:
        raise UsageError(f"the run diverged before step {args.step}: {e}") from None
    out = _args.ensure_writable_dir(args.out)

    r = res
    print(f"qlabref explain: step {r['step']} of {r['optimizer']} on {what}")
    if not args.model:
        th = r["theta"][0]
        print(f"  θ_{r['step'] - 1} = ({th[0]:.10g}, {th[1]:.10g})")
    print(f"  a0 = L(θ)            = {r['a0']:.10g}   (Eq. 6)")
    print(f"  a1 = −‖∇L‖²          = {r['a1']:.10g}   (Eq. 7)")
    print(f"  ᾱ  (pre-learning rate) = {r['pre_lr']:.6g}")
    print(f"  g(ᾱ) (probe)         = {r['a0'] + r['a1'] * r['pre_lr'] + r['a2'] * r['pre_lr'] ** 2:.10g}   (Eq. 8)")
    print(f"  a2                   = {r['a2']:.10g}   (Eq. 9)")
    print(f"  α* = −a1/(2 a2)      = {r['alpha_star']:.6g}   (Eq. 5, 10)" + ("   a2 ≤ 0: fallback to ᾱ" if r["fallback"] else ""))
    print(f"  step α_k             = {r['lr']:.6g}")
    print(f"  g(α_k) (new loss)    = {r['g_lr']:.10g}   (decrease {r['a0'] - r['g_lr']:.6g})")
    i = int(np.nanargmin(r["g"]))
    print(f"  true min of g on the grid: α = {r['alphas'][i]:.6g}, g = {r['g'][i]:.10g}")
    title = f"{what}: step {r['step']} of {r['optimizer']}"
    fig = plots.quadratic_fit_figure(r["alphas"], r["g"], r["a0"], r["a1"], r["a2"], r["pre_lr"], r["alpha_star"],
                                     r["lr"] if r["along_gradient"] else math.nan, title=title, fallback=r["fallback"],
                                     g_lr=r["g_lr"] if r["along_gradient"] else None)
    if not r["along_gradient"]:
        print(f"  note: {r['optimizer']} does not step along −∇L, so its landing point is not on this curve; the "
              f"quadratic shown is QLAB's fit with ᾱ = its learning rate")
    path = plots.save(fig, out / f"explain_{tag}_{r['optimizer']}_step{r['step']}.png")
    print(f"Wrote {path}")
    return 0
