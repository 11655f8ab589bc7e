"""``qlabref bench --parts torch-optim``: one step of ``qlabref.torch.QLABGrad`` against torch's SGD step
and against a *lean* QLAB step, on CPU and (where ``torch.cuda.is_available()``) on CUDA.

Three steps on copies of one model (same initial weights, the same fixed random float32 batch, BatchNorm
in training mode), timed interleaved in one process; on CUDA every timed step ends with
``torch.cuda.synchronize()``:

- **SGD**: ``torch.optim.SGD(lr=1e-3)`` (torch's default foreach implementation): ``zero_grad``,
  forward, cross-entropy, backward, ``opt.step()``.
- **QLABGrad**: ``qlabref.torch.QLABGrad(params, max_lr_factor=1.0)`` (FindPLR at its first, untimed
  step; the cap keeps the trained copy finite on a fixed batch and costs nothing): ``opt.step(closure)``.
  A timed step that was not ordinary (FindPLR, a fallback probe) is counted in ``extra_probes``.
- **lean**: the same algorithm with nothing but the arithmetic: forward + backward; ‖∇L‖² from
  ``torch._foreach_norm`` over the gradients (NaN/inf anywhere makes it non-finite, the check is free);
  θ saved with one foreach op; θ ← θ − ᾱ∇L with one foreach op; one forward under ``no_grad``; one
  host read of the scalars that decide the step (stacked, one ``.tolist()``); θ placed from the saved
  copy with foreach ops. No buffer guard, no RNG replay, no atomicity, no records.

Set-ups: ResNet-18 (CIFAR stem, 3×32×32) at batch 128 and 512, the MNIST MLP 784-1000-1000-10 at
batch 64, the paper's CNN at batch 64. On the CPU ResNet-18 runs at batch 16 and 32 by default (a
batch-128 step takes seconds on one core); ``--batch`` sets every set-up's batch. Repeats: 20 timed
after 5 warm-up on CUDA; on the CPU 20 (MLP), 10 (CNN), 5 (ResNet-18) after 2; ``--repeats`` and
``--warmup`` override. Devices: CPU, and CUDA where available; the environment variable
``QLABREF_TORCH_OPTIM_DEVICES`` (e.g. ``cuda``) picks them. ``python -m qlabref.bench_torch_optim``
runs this part alone (``--help``).
"""
from __future__ import annotations

import copy
import os
import time

#: (name, model, batch on CUDA, batch on the CPU)
SETUPS = (
    ("resnet18-b128", "resnet18", 128, 16),
    ("resnet18-b512", "resnet18", 512, 32),
    ("mlp", "mlp", 64, 64),
    ("cnn", "cnn", 64, 64),
)
#: QLABGrad step / lean step the optimizer must stay within (issue 20)
LEAN_TARGET = 1.15
DEVICES_VARIABLE = "QLABREF_TORCH_OPTIM_DEVICES"


def _default_repeats(model, device):
    if device == "cuda":
        return 20, 5
    return {"mlp": (20, 2), "cnn": (10, 2), "resnet18": (5, 2)}[model]


def devices(torch):
    """The devices to measure on: ``$QLABREF_TORCH_OPTIM_DEVICES`` (comma-separated), else CPU and,
    where available, CUDA. ``ValueError`` names an unknown or unavailable device."""
    text = os.environ.get(DEVICES_VARIABLE, "").strip()
    if not text:
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = []
    for d in (s.strip().lower() for s in text.split(",") if s.strip()):
        if d not in ("cpu", "cuda"):
            raise ValueError(f"bench: {DEVICES_VARIABLE}: unknown device {d!r}; use cpu and/or cuda")
        if d == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"bench: {DEVICES_VARIABLE} asks for cuda but torch.cuda.is_available() is False")
        out.append(d)
    return out


def _torch_model(torch, name, seed):
    """The set-up's model as a torch module (``qlabref.interop.to_torch`` of the qlabref model)."""
    from . import bench
    from .interop import to_torch

    torch.manual_seed(seed)
    model = to_torch(bench.MODELS[name].build())
    model.train()
    return model


def lean_step_factory(torch, model, x, y, pre_lr):
    """The lean QLAB step of the issue, on ``model`` (see the module docstring). Returns ``step()``."""
    from .optim import qlab_rule as rule

    F = torch.nn.functional
    params = [p for p in model.parameters()]
    saved = [torch.empty_like(p) for p in params]
    state = {"pre": pre_lr}

    def step():
        for p in params:
            p.grad = None
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad for p in params]
        with torch.no_grad():
            gsq = torch.stack(torch._foreach_norm(grads)).square().sum()  # non-finite anywhere ⇒ non-finite
            torch._foreach_copy_(saved, params)  # θ saved: one foreach op
            pre = state["pre"]
            torch._foreach_add_(params, grads, alpha=-pre)  # θ − ᾱ∇L: one foreach op
            probe = F.cross_entropy(model(x), y)  # g(ᾱ): one forward under no_grad
            L, G, P = torch.stack([loss.detach(), gsq, probe]).tolist()  # one host read
            a2, alpha_star = rule.qlabgrad_fit(L, G, pre, P)
            lr, _, _ = rule.choose_lr(alpha_star, a2, pre, None, 1.0)
            torch._foreach_copy_(params, saved)  # θ placed from the saved copy
            torch._foreach_add_(params, grads, alpha=-lr)
        return L

    return step


def _timed(torch, sides, repeats, warmup, device):
    """``qlabref.bench``'s interleaved timing; on CUDA every step ends with ``torch.cuda.synchronize()``
    (inside the timed interval: the step's GPU work is counted, and the next one starts on an idle GPU)."""
    from .bench import _interleaved

    if device == "cuda":
        sync = torch.cuda.synchronize
        sides = {k: (lambda fn=fn: (fn(), sync())) for k, fn in sides.items()}
        sync()
    return _interleaved(sides, repeats, warmup)


def measure_setup(torch, setup, device, *, batch=None, repeats=None, warmup=None, seed=0, log=None):
    """Time the three steps of one set-up on one device. Returns a JSON-ready dict."""
    import qlabref.torch as qt

    from . import bench

    label, name, cuda_batch, cpu_batch = setup
    batch = (cuda_batch if device == "cuda" else cpu_batch) if batch is None else int(batch)
    dr, dw = _default_repeats(name, device)
    repeats = dr if repeats is None else int(repeats)
    warmup = dw if warmup is None else int(warmup)
    x_np, y_np = bench.example_batch(bench.MODELS[name], batch, seed)
    x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
    base = _torch_model(torch, name, seed).to(device)
    F = torch.nn.functional

    m_sgd = copy.deepcopy(base)
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=1e-3)

    def sgd_step():
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(m_sgd(x), y).backward()
        sgd.step()

    m_q = copy.deepcopy(base)
    qopt = qt.QLABGrad(m_q.parameters(), max_lr_factor=1.0)
    qopt.step(lambda: F.cross_entropy(m_q(x), y))  # FindPLR: the pre-learning rate, untimed
    extra = {"n": 0}

    def qlab_step():
        qopt.step(lambda: F.cross_entropy(m_q(x), y))
        extra["n"] += qopt.last_step["evals"] - 2

    m_lean = copy.deepcopy(base)
    lean = lean_step_factory(torch, m_lean, x, y, qopt.pre_lr)

    t0 = time.perf_counter()
    stats = _timed(torch, {"sgd": sgd_step, "qlabgrad": qlab_step, "lean": lean}, repeats, warmup, device)
    med = {k: v["median"] for k, v in stats.items()}
    ratios = {"qlabgrad/sgd": med["qlabgrad"] / med["sgd"], "lean/sgd": med["lean"] / med["sgd"],
              "qlabgrad/lean": med["qlabgrad"] / med["lean"]}
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    if log is not None:
        log(f"  torch-optim {label} on {device} (batch {batch}): {repeats} rounds in {time.perf_counter() - t0:.1f} s")
    return {"setup": label, "model": name, "device": device, "device_name": dev_name, "batch": batch,
            "repeats": repeats, "warmup": warmup, "tensors": len(list(base.parameters())), "timings_ms": stats,
            "ratios": ratios, "extra_probes": extra["n"], "target_vs_lean": LEAN_TARGET,
            "verdict": "meets target" if ratios["qlabgrad/lean"] <= LEAN_TARGET else "misses target"}


def measure(torch, models=None, *, batch=None, repeats=None, warmup=None, seed=0, log=None):
    """Every set-up whose model is in ``models`` (default: all) on every device of :func:`devices`."""
    if torch is None:
        return {"available": False, "reason": "PyTorch is not installed (or --no-torch)", "results": []}
    out = {"available": True, "torch": torch.__version__, "results": []}
    seen = set()
    for device in devices(torch):
        for setup in SETUPS:
            if models is not None and setup[1] not in models:
                continue
            key = (device, setup[1], batch if batch is not None else setup[2 if device == "cuda" else 3])
            if key in seen:  # --batch makes the two ResNet-18 set-ups one
                continue
            seen.add(key)
            out["results"].append(measure_setup(torch, setup, device, batch=batch, repeats=repeats, warmup=warmup,
                                                seed=seed, log=log))
    return out


def _ms(s):
    return f"{s['median']:.2f} [{s['q1']:.2f}–{s['q3']:.2f}]"


HEADER = ["device", "set-up", "batch", "SGD ms", "QLABGrad ms", "lean ms", "QLABGrad/SGD", "lean/SGD",
          "QLABGrad/lean", f"verdict (≤ {LEAN_TARGET:.2f}× lean)"]


def rows(part):
    out = []
    for r in (part or {}).get("results", []):
        t, q = r["timings_ms"], r["ratios"]
        out.append([r["device_name"], r["setup"], str(r["batch"]), _ms(t["sgd"]), _ms(t["qlabgrad"]), _ms(t["lean"]),
                    f"{q['qlabgrad/sgd']:.2f}×", f"{q['lean/sgd']:.2f}×", f"{q['qlabgrad/lean']:.2f}×",
                    r["verdict"] + (f" ({r['extra_probes']} extra probes)" if r["extra_probes"] else "")])
    return out


def format_markdown(part):
    """The part's results as a Markdown table (median [quartiles] in ms)."""
    if not part or not part.get("available"):
        return f"torch-optim: not measured: {(part or {}).get('reason', 'not run')}\n"
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(part)]
    return "\n".join(lines) + "\n"


def format_lines(part, tag=""):
    """One plain line per result, for ``qlabref bench``'s summary."""
    if not part:
        return []
    if not part.get("available"):
        return [f"torch-optim{tag}: not measured: {part['reason']}"]
    return [f"torch-optim{tag} {row[0]} {row[1]} batch {row[2]}: SGD {row[3]} ms, QLABGrad {row[4]} ms, lean "
            f"{row[5]} ms; QLABGrad/SGD {row[6]}, lean/SGD {row[7]}, QLABGrad/lean {row[8]}: {row[9]}"
            for row in rows(part)]


def main(argv=None):
    """``python -m qlabref.bench_torch_optim``: this part alone; prints the Markdown table."""
    import argparse
    import json

    import torch

    from . import bench

    p = argparse.ArgumentParser(prog="python -m qlabref.bench_torch_optim", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=bench.model_names, default=None, help="comma-separated from mlp,cnn,resnet18")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--devices", default=None, help="cpu and/or cuda (default: cpu, and cuda where available)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--md", default=None, help="also write the Markdown table to this file")
    args = p.parse_args(argv)
    if args.devices:
        os.environ[DEVICES_VARIABLE] = args.devices
    try:
        part = measure(torch, args.models, batch=args.batch, repeats=args.repeats, warmup=args.warmup,
                       log=lambda s: print(s, flush=True))
    except ValueError as e:
        print(e)
        return 2
    text = format_markdown(part)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(part, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(f"torch {torch.__version__}; median [quartiles] in ms per step, float32\n\n{text}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
