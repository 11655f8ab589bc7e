"""Model-step timings of the GPU-resident ``cuda`` path (``qlabref.device``) against PyTorch CUDA and
against the ``numba`` CPU backend, in one process (the ratios are what is reported; absolute times
depend on the machine). Needs a CUDA GPU (not the simulator) and, for the PyTorch side, torch with
CUDA. ``qlabref bench --parts gpu`` calls :func:`measure_model_steps`.

What is timed (one QLABGrad step each, Algorithm 1 with a fixed pre-learning rate, so every step is
one forward + backward and one probe forward):

- ``mlp``: ``qr.models.mlp()`` float32, batch 64. Ours (twice: per-parameter arrays, and after
  ``model.flat_parameters()`` / ``flat_grads()``, with the kernel launches of one step of each counted
  by ``qlabref.device.count_launches``): the minibatch goes to the GPU, then
  ``opt.step(closure)``; PyTorch: the same weights in ``torch.nn``, ``qlabref.torch.QLABGrad`` (the
  same algorithm: step + probe forward). Target: ours ≤ 3× PyTorch.
- ``resnet18``: ``qr.models.resnet18()`` CIFAR variant, float64, batch 32 (32×32×3). Ours vs PyTorch
  float64 (target ≤ 4×) and vs the ``numba`` backend on the host CPUs (target ≥ 20× faster; timed on
  ``numba_steps`` steps after one warm-up step, because one takes seconds).

Each timing is the median over ``repeats`` steps after ``warmup`` steps (the first steps compile the
Numba kernels), with the device synchronised before the clock stops.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

__all__ = ["measure_model_steps", "TARGETS"]

#: the issue's targets: (ratio, direction)
TARGETS = {"mlp_vs_torch": 3.0, "resnet18_vs_torch": 4.0, "resnet18_speedup_vs_numba": 20.0}


def _say(log, msg):
    if log is not None:
        log(msg)


def _median_ms(fn, warmup, repeats, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def _ours(model, x, y, pre_lr, warmup, repeats, flat=False):
    """(median ms, all times, launches of one more step) of QLABGrad steps on the GPU-resident model;
    ``flat``: after ``model.flat_parameters()`` / ``flat_grads()`` (one device buffer each, so the
    probe, the save and ‖∇L‖² are one launch each). The launches (``qlabref.device.count_launches``:
    ``kernels``, ``copies`` d2d, ``by_name``) are counted on a step after the timed ones."""
    import qlabref as qr
    import qlabref.nn.functional as F
    from numba import cuda

    from .device import count_launches

    model.to("cuda")
    if flat:
        model.flat_parameters()
        model.flat_grads()
    opt = qr.optim.QLABGrad(model.parameters(), pre_lr=pre_lr, findplr="never")

    def step():
        xb, yb = qr.tensor(x).to("cuda"), qr.tensor(y).to("cuda")  # the minibatch goes in
        opt.step(lambda: F.cross_entropy(model(xb), yb))

    ms, times = _median_ms(step, warmup, repeats, cuda.synchronize)
    with count_launches() as launches:
        step()
    cuda.synchronize()
    return ms, times, launches


def _ours_both(res, make, x, y, pre_lr, warmup, repeats, log, label, fmt):
    """Time the per-parameter and the flat variant (a fresh model each); record ms and launches."""
    res["launches_per_step"] = {}
    for variant, flat in (("per_parameter", False), ("flat", True)):
        key = "qlabref_cuda_ms" if not flat else "qlabref_cuda_flat_ms"
        ms, _, launches = _ours(make(), x, y, pre_lr, warmup, repeats, flat=flat)
        res[key] = ms
        res["launches_per_step"][variant] = {"kernels": launches["kernels"], "copies": launches["copies"],
                                             "by_name": launches["by_name"]}
        _say(log, f"gpu models: {label} qlabref cuda ({variant.replace('_', '-')}) {ms:{fmt}} ms, "
                  f"{launches['kernels']} kernel launches + {launches['copies']} d2d copies per step")


def _numba(model, x, y, pre_lr, warmup, repeats):
    import qlabref as qr
    import qlabref.nn.functional as F

    with qr.use_backend("numba"):
        opt = qr.optim.QLABGrad(model.parameters(), pre_lr=pre_lr, findplr="never")
        xb, yb = qr.tensor(x), y

        def step():
            opt.step(lambda: F.cross_entropy(model(xb), yb))

        return _median_ms(step, warmup, repeats, lambda: None)


def _torch(torch, module, x, y, pre_lr, warmup, repeats):
    import qlabref.torch as qt

    module = module.cuda()
    module.train()
    opt = qt.QLABGrad(module.parameters(), pre_lr=pre_lr, findplr="never")
    loss_fn = torch.nn.functional.cross_entropy
    dtype = next(module.parameters()).dtype

    def step():
        xb = torch.from_numpy(x).to("cuda", dtype=dtype)
        yb = torch.from_numpy(y).to("cuda")
        opt.step(lambda: loss_fn(module(xb), yb))

    return _median_ms(step, warmup, repeats, torch.cuda.synchronize)


def _gpu_ready():
    from .kernels import launch

    ok, reason = launch.cuda_status()
    if not ok:
        return False, reason
    from numba.core import config

    if config.ENABLE_CUDASIM:
        return False, "the CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1): timings would be meaningless"
    return True, reason


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    if not torch.cuda.is_available():
        return None, "torch has no CUDA device"
    return torch, None


def measure_model_steps(log=None, *, mlp_repeats=30, resnet_repeats=5, numba_steps=1, warmup=3, seed=0) -> dict:
    """Time the model steps; returns a dict (``available``, ``reason``, ``device``, and per model the
    milliseconds, the ratios and whether each target is met). Never raises for a missing GPU/torch:
    ``available`` is then False with the reason."""
    import qlabref as qr

    ok, reason = _gpu_ready()
    out = {"available": ok, "reason": reason, "targets": dict(TARGETS)}
    if not ok:
        return out
    from numba import cuda

    name = getattr(cuda.get_current_device(), "name", "unknown GPU")
    out["device"] = name.decode() if isinstance(name, bytes) else str(name)
    torch, why = _torch_cuda()
    out["torch"] = why or f"torch {torch.__version__}"
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(seed)

    for name, part in (("mlp", _mlp_part), ("resnet18", _resnet_part)):
        res = out[name] = {}
        try:
            part(res, qr, torch, rng, log, seed, warmup, mlp_repeats, resnet_repeats, numba_steps)
        except Exception as e:  # noqa: BLE001 - a failed part is reported, the other still runs
            res["error"] = f"{type(e).__name__}: {e}"
            _say(log, f"gpu models: {name} failed: {res['error']}")
    return out


def _mlp_part(res, qr, torch, rng, log, seed, warmup, mlp_repeats, resnet_repeats, numba_steps):
    x = rng.standard_normal((64, 784)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    res.update(batch=64, dtype="float32")
    _say(log, "gpu models: mlp() float32 batch 64, qlabref cuda (resident; per-parameter and flat buffers) ...")
    _ours_both(res, lambda: qr.models.mlp(seed=seed), x, y, 0.1, warmup, mlp_repeats, log, "mlp", ".3f")
    if torch is not None:
        _say(log, "gpu models: mlp() float32 batch 64, PyTorch CUDA ...")
        tm = qr.interop.to_torch(qr.models.mlp(seed=seed))
        res["torch_cuda_ms"], _ = _torch(torch, tm, x, y, 0.1, warmup, mlp_repeats)
        res["ratio_vs_torch"] = res["qlabref_cuda_ms"] / res["torch_cuda_ms"]
        res["target_met"] = res["ratio_vs_torch"] <= TARGETS["mlp_vs_torch"]
        res["ratio_flat_vs_torch"] = res["qlabref_cuda_flat_ms"] / res["torch_cuda_ms"]
        res["target_met_flat"] = res["ratio_flat_vs_torch"] <= TARGETS["mlp_vs_torch"]
        _say(log, f"gpu models: mlp PyTorch CUDA {res['torch_cuda_ms']:.3f} ms, ratio {res['ratio_vs_torch']:.2f}")


def _resnet_part(res, qr, torch, rng, log, seed, warmup, mlp_repeats, resnet_repeats, numba_steps):
    x = rng.standard_normal((32, 3, 32, 32))
    y = rng.integers(0, 10, 32)
    res.update(batch=32, dtype="float64")
    _say(log, "gpu models: resnet18 float64 batch 32, qlabref cuda (resident; per-parameter and flat buffers) ...")
    _ours_both(res, lambda: qr.models.resnet18(dtype=np.float64, seed=seed), x, y, 0.01, 2, resnet_repeats, log,
               "resnet18", ".1f")
    if torch is not None:
        _say(log, "gpu models: resnet18 float64 batch 32, PyTorch CUDA ...")
        tm = qr.interop.to_torch(qr.models.resnet18(dtype=np.float64, seed=seed))
        res["torch_cuda_ms"], _ = _torch(torch, tm, x, y, 0.01, 2, resnet_repeats)
        res["ratio_vs_torch"] = res["qlabref_cuda_ms"] / res["torch_cuda_ms"]
        res["target_met_vs_torch"] = res["ratio_vs_torch"] <= TARGETS["resnet18_vs_torch"]
        res["ratio_flat_vs_torch"] = res["qlabref_cuda_flat_ms"] / res["torch_cuda_ms"]
        _say(log, f"gpu models: resnet18 PyTorch CUDA {res['torch_cuda_ms']:.1f} ms, ratio {res['ratio_vs_torch']:.2f}")
    if numba_steps:
        _say(log, f"gpu models: resnet18 float64 batch 32, numba backend on the CPU ({numba_steps} step(s)) ...")
        res["numba_cpu_ms"], _ = _numba(qr.models.resnet18(dtype=np.float64, seed=seed), x, y, 0.01, 1, numba_steps)
        res["speedup_vs_numba"] = res["numba_cpu_ms"] / res["qlabref_cuda_ms"]
        res["target_met_vs_numba"] = res["speedup_vs_numba"] >= TARGETS["resnet18_speedup_vs_numba"]
        _say(log, f"gpu models: resnet18 numba CPU {res['numba_cpu_ms']:.0f} ms, speedup {res['speedup_vs_numba']:.1f}")



def format_lines(result) -> list:
    """Human-readable lines for :func:`measure_model_steps`' result."""
    if not result.get("available"):
        return [f"GPU model steps: not timed: {result.get('reason')}"]
    lines = [f"GPU model steps on {result['device']} ({result.get('torch')}), one QLABGrad step, median ms:"]
    m = result.get("mlp", {})
    if "error" in m:
        lines.append(f"  mlp(): failed: {m['error']}")
    if "qlabref_cuda_ms" not in m:
        m = {}
    s = f"  mlp() float32 batch 64: qlabref cuda {m.get('qlabref_cuda_ms', float('nan')):.2f}"
    if "qlabref_cuda_flat_ms" in m:
        s += f" (flat buffers {m['qlabref_cuda_flat_ms']:.2f})"
    if "ratio_vs_torch" in m:
        s += (f", PyTorch CUDA {m['torch_cuda_ms']:.2f} → {m['ratio_vs_torch']:.2f}× "
              f"(target ≤ {TARGETS['mlp_vs_torch']:g}×: {'met' if m['target_met'] else 'NOT met'})")
        if "ratio_flat_vs_torch" in m:
            s += f", flat {m['ratio_flat_vs_torch']:.2f}× ({'met' if m['target_met_flat'] else 'NOT met'})"
    lines.append(s)
    lines += _launch_lines(m)
    r = result.get("resnet18", {})
    if "error" in r:
        lines.append(f"  resnet18: failed: {r['error']}")
    s = f"  resnet18 float64 batch 32: qlabref cuda {r.get('qlabref_cuda_ms', float('nan')):.1f}"
    if "qlabref_cuda_flat_ms" in r:
        s += f" (flat buffers {r['qlabref_cuda_flat_ms']:.1f})"
    if "qlabref_cuda_ms" not in r:
        s = None
    if "ratio_vs_torch" in r:
        s += (f", PyTorch CUDA {r['torch_cuda_ms']:.1f} → {r['ratio_vs_torch']:.2f}× "
              f"(target ≤ {TARGETS['resnet18_vs_torch']:g}×: {'met' if r['target_met_vs_torch'] else 'NOT met'})")
    if "speedup_vs_numba" in r:
        s += (f"; numba CPU {r['numba_cpu_ms']:.0f} → {r['speedup_vs_numba']:.1f}× faster "
              f"(target ≥ {TARGETS['resnet18_speedup_vs_numba']:g}×: {'met' if r['target_met_vs_numba'] else 'NOT met'})")
    if s is not None:
        lines.append(s)
        lines += _launch_lines(r)
    return lines


def _launch_lines(part):
    """'    launches per step: ...' for a model part with ``launches_per_step`` (counted, not timed)."""
    lp = part.get("launches_per_step")
    if not lp:
        return []
    probe = ("sum_sq", "place_save", "place")
    bits = []
    for variant, rec in lp.items():
        fam = "/".join(str(rec["by_name"].get(k, 0)) for k in probe)
        bits.append(f"{variant.replace('_', '-')} {rec['kernels']} kernels + {rec['copies']} d2d copies "
                    f"(‖∇L‖²/save/step {fam})")
    return ["    launches per step: " + "; ".join(bits)]
