"""``qlabref bench --parts gpu``, kernel side: the Numba CUDA kernels on device arrays against
PyTorch CUDA on the same device memory (zero-copy ``torch.as_tensor`` of the numba arrays).

Measured (:func:`measure_kernels`), on a real GPU only (the simulator is not timed):

- **launch overhead**: an empty kernel, ``LAUNCHES`` back-to-back launches then one synchronise
  (host time per launch), and one launch + synchronise (round trip);
- **matmul** (ours: the register-tiled kernel, configuration by ``choose_config``; PyTorch: cuBLAS
  with TF32 *off*) at 4096³ and at the MLP's shapes (batch 64, 784-1000-1000: forward x·Wᵀ, the
  input gradient g·W, the weight gradient gᵀ·x, operands read transposed in place on both sides), in
  float32 and float64, TFLOP/s and ours/cuBLAS; at 4096³ every tile configuration as well;
- **probe** (θ − α·g and Σ g² with the deterministic two-stage reduction into a device scalar, no
  read back) at 1.8M, 11M and 67M float32 elements, against a device-to-device copy of n elements
  (GB/s counting the bytes each moves: 3·4·n for the probe, 2·4·n for the copy) and PyTorch's two ops.

Timing: each case runs once untimed (compiles), then ``rounds`` rounds of ``reps`` calls between two
synchronisations (host clock); the median round / reps is reported, ours and theirs alternating.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

__all__ = ["MATMUL_SHAPES", "PROBE_SIZES", "TARGETS", "measure_kernels", "format_kernels"]

#: (label, M, K, N, ta, tb): C = op(A)·op(B); ta: A stored K × M (read transposed), tb: B stored N × K
MATMUL_SHAPES = [
    ("4096³", 4096, 4096, 4096, False, False),
    ("mlp fwd 64×784·(1000×784)ᵀ", 64, 784, 1000, False, True),
    ("mlp fwd 64×1000·(1000×1000)ᵀ", 64, 1000, 1000, False, True),
    ("mlp grad-x 64×1000·1000×784", 64, 1000, 784, False, False),
    ("mlp grad-W (64×1000)ᵀ·64×784", 1000, 64, 784, True, False),
]
PROBE_SIZES = (1_800_000, 11_000_000, 67_000_000)
LAUNCHES = 2000
#: calls per timed round: large matmuls, small matmuls, probes
REPS = {"big": 3, "small": 50, "probe": 20}
#: the issue's targets: matmul ≥ 30% of cuBLAS at 4096³, ≥ 25% at the MLP's shapes; probe ≥ 70% of
#: the copy's bandwidth from 11M elements up
TARGETS = {"matmul_4096": 0.30, "matmul_mlp": 0.25, "probe_copy": 0.70}


def _rounds(fn, sync, reps, rounds):
    fn()
    sync()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        out.append((time.perf_counter() - t) / reps)
    return out


def _pair(ours, theirs, sync, reps, rounds):
    """Median seconds per call of two callables, measured in alternating rounds."""
    ours()
    if theirs is not None:
        theirs()
    sync()
    a, b = [], []
    for r in range(rounds):
        order = [(ours, a), (theirs, b)] if r % 2 == 0 else [(theirs, b), (ours, a)]
        for fn, acc in order:
            if fn is None:
                continue
            acc += _rounds(fn, sync, reps, 1)
    return statistics.median(a), (statistics.median(b) if b else None)


def measure_kernels(log=None, quick=False):
    """The kernel timings as a JSON-ready dict; ``{"available": False, "reason": ...}`` without a GPU.
    ``quick`` shrinks the repeats (the GPU script's time budget)."""
    from .kernels import launch

    ok, reason = launch.cuda_status()
    if not ok or "simulator" in reason:
        return {"available": False, "reason": reason if not ok else "the CUDA simulator is not a GPU"}
    from numba import cuda

    from .kernels import cuda_matmul, cuda_probe

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and not torch.cuda.is_available():
        torch = None
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rounds = 5 if quick else 9
    res = {"available": True, "device": reason, "torch": None if torch is None else torch.__version__,
           "targets": TARGETS, "sm_count": cuda_matmul._sm_count()}
    sync = cuda.synchronize
    t0 = time.perf_counter()

    # ---------------------------------------------------------------- launch overhead
    @cuda.jit
    def empty(x):
        pass

    dummy = cuda.device_array(1, dtype=np.float32)
    empty[1, 32](dummy)
    sync()
    t = time.perf_counter()
    for _ in range(LAUNCHES):
        empty[1, 32](dummy)
    sync()
    per_launch = (time.perf_counter() - t) / LAUNCHES
    rt = _rounds(lambda: (empty[1, 32](dummy), sync()), lambda: None, max(1, LAUNCHES // 10), 3)
    res["launch"] = {"empty_kernel_us": 1e6 * per_launch, "launch_and_sync_us": 1e6 * statistics.median(rt)}
    if torch is not None:
        tz = torch.zeros(1, device="cuda")
        tsync = torch.cuda.synchronize
        res["launch"]["torch_tiny_op_us"] = 1e6 * statistics.median(_rounds(lambda: tz.add_(0), tsync, LAUNCHES // 4, 3))
    if log is not None:
        log(f"  GPU launch overhead: {res['launch']['empty_kernel_us']:.1f} µs per empty kernel")

    # ---------------------------------------------------------------- matmul
    rng = np.random.default_rng(0)
    rows = []
    for dt in (np.float32, np.float64):
        for label, m, k, n, ta, tb in MATMUL_SHAPES:
            a = cuda.to_device(rng.standard_normal((k, m) if ta else (m, k)).astype(dt))
            b = cuda.to_device(rng.standard_normal((n, k) if tb else (k, n)).astype(dt))
            c = cuda.device_array((m, n), dtype=dt)
            big = m * n * k >= 1 << 30
            reps = REPS["big"] if big else REPS["small"]
            cfgs = list(cuda_matmul.CONFIGS) if big else [None]
            flop = 2.0 * m * n * k
            theirs_fn = None
            if torch is not None:
                at, bt = torch.as_tensor(a, device="cuda"), torch.as_tensor(b, device="cuda")
                ct = torch.as_tensor(c, device="cuda")
                aa, bb = (at.T if ta else at), (bt.T if tb else bt)
                theirs_fn = lambda aa=aa, bb=bb, ct=ct: torch.matmul(aa, bb, out=ct)  # noqa: E731
                # correctness on the bench sizes too: ours against cuBLAS (float64: to rounding)
                cuda_matmul.matmul_device(a, b, m, n, dt, ta, tb, out=c)
                sync()
                ours_c = torch.as_tensor(c, device="cuda").clone()
                theirs_fn()
                torch.cuda.synchronize()
                err = float((ours_c - ct).abs().max() / ct.abs().max().clamp_min(1))
            else:
                err = None
            for cfg in cfgs:
                ours_fn = (lambda cfg=cfg: cuda_matmul.matmul_device(a, b, m, n, dt, ta, tb, out=c, config=cfg))
                t_ours, t_theirs = _pair(ours_fn, theirs_fn, sync, reps, rounds)
                used = cfg or cuda_matmul.choose_config(m, n, dt)
                row = {"shape": label, "dtype": np.dtype(dt).name, "config": used, "auto": cfg is None or
                       cfg == cuda_matmul.choose_config(m, n, dt), "ms": 1e3 * t_ours,
                       "tflops": flop / t_ours / 1e12, "max_rel_diff_vs_cublas": err}
                if t_theirs is not None:
                    row.update(cublas_ms=1e3 * t_theirs, cublas_tflops=flop / t_theirs / 1e12,
                               fraction_of_cublas=t_theirs / t_ours)
                rows.append(row)
            del a, b, c
    res["matmul"] = rows
    if log is not None:
        log(f"  GPU matmul timed ({time.perf_counter() - t0:.0f} s so far)")

    # ---------------------------------------------------------------- probe
    prow = []
    ws = cuda_probe.ProbeWorkspace()
    for n in PROBE_SIZES:
        th = cuda.to_device(rng.standard_normal(n).astype(np.float32))
        gg = cuda.to_device(rng.standard_normal(n).astype(np.float32))
        out = cuda.device_array_like(th)
        dst = cuda.device_array_like(th)
        reps = REPS["probe"]
        t_probe, _ = _pair(lambda: cuda_probe.probe_into(th, gg, 0.01, out, ws=ws), None, sync, reps, rounds)
        t_copy, _ = _pair(lambda: dst.copy_to_device(th), None, sync, reps, rounds)
        row = {"n": n, "probe_us": 1e6 * t_probe, "copy_us": 1e6 * t_copy,
               "probe_gbps": 12.0 * n / t_probe / 1e9, "copy_gbps": 8.0 * n / t_copy / 1e9}
        row["fraction_of_copy"] = row["probe_gbps"] / row["copy_gbps"]
        if torch is not None:
            tt, tg = torch.as_tensor(th, device="cuda"), torch.as_tensor(gg, device="cuda")
            t_torch = statistics.median(_rounds(lambda: (tt - 0.01 * tg, (tg.double() ** 2).sum()),
                                                torch.cuda.synchronize, reps, rounds))
            row["torch_two_ops_us"] = 1e6 * t_torch
        # the bits on hardware: θ − α·g against NumPy, Σ g² against the replayed tree
        if n == PROBE_SIZES[0]:
            cuda_probe.probe_into(th, gg, 0.01, out, ws=ws)
            h_th, h_g = th.copy_to_host(), gg.copy_to_host()
            row["bits_equal_numpy"] = bool(np.array_equal(out.copy_to_host(), h_th - np.float32(0.01) * h_g))
            row["sum_equals_tree"] = ws.read() == cuda_probe.reference_tree_sum(h_g)
        prow.append(row)
        del th, gg, out, dst
    res["probe"] = prow
    res["seconds"] = time.perf_counter() - t0
    if log is not None:
        log(f"  GPU kernels timed in {res['seconds']:.0f} s")
    return res


def _verdict(ok):
    return "meets target" if ok else "misses target"


def format_kernels(res):
    """Markdown lines for :func:`measure_kernels`'s record."""
    if not res.get("available"):
        return [f"GPU kernels: not timed: {res.get('reason')}"]
    lines = [f"GPU kernels on {res['device']} ({res['sm_count']} SMs), PyTorch {res['torch'] or 'absent'}; "
             f"timed in {res['seconds']:.0f} s", ""]
    la = res["launch"]
    extra = f"; PyTorch tiny op {la['torch_tiny_op_us']:.1f} µs" if "torch_tiny_op_us" in la else ""
    lines.append(f"- launch overhead: empty Numba kernel {la['empty_kernel_us']:.1f} µs per launch (back to back), "
                 f"{la['launch_and_sync_us']:.1f} µs launch + synchronise{extra}")
    lines += ["", "| matmul | dtype | tile | ours ms | TFLOP/s | cuBLAS ms | cuBLAS TFLOP/s | ours/cuBLAS | max rel diff |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in res["matmul"]:
        frac = r.get("fraction_of_cublas")
        diff = r.get("max_rel_diff_vs_cublas")
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['config']}{'' if r['auto'] else ' (not chosen)'} | "
                     f"{r['ms']:.3f} | {r['tflops']:.2f} | {r.get('cublas_ms', float('nan')):.3f} | "
                     f"{r.get('cublas_tflops', float('nan')):.2f} | "
                     f"{'' if frac is None else f'{100 * frac:.0f}%'} | {'' if diff is None else f'{diff:.1e}'} |")
    for dt in ("float32", "float64"):
        auto = [r for r in res["matmul"] if r["dtype"] == dt and r["auto"] and "fraction_of_cublas" in r]
        big = [r for r in auto if r["shape"] == "4096³"]
        mlp = [r for r in auto if r["shape"].startswith("mlp")]
        if big and mlp:
            fb = big[0]["fraction_of_cublas"]
            fm = sum(r["cublas_ms"] for r in mlp) / sum(r["ms"] for r in mlp)
            lines.append(f"- matmul {dt}: {100 * fb:.0f}% of cuBLAS at 4096³ (target ≥ "
                         f"{100 * TARGETS['matmul_4096']:.0f}%: {_verdict(fb >= TARGETS['matmul_4096'])}), "
                         f"{100 * fm:.0f}% over the MLP's four products, worst "
                         f"{100 * min(r['fraction_of_cublas'] for r in mlp):.0f}% (target ≥ "
                         f"{100 * TARGETS['matmul_mlp']:.0f}%: {_verdict(fm >= TARGETS['matmul_mlp'])})")
    lines += ["", "| probe n (float32) | probe µs | GB/s | copy µs | copy GB/s | probe/copy bandwidth | PyTorch 2 ops µs |",
              "|---|---|---|---|---|---|---|"]
    for r in res["probe"]:
        lines.append(f"| {r['n']:,} | {r['probe_us']:.1f} | {r['probe_gbps']:.0f} | {r['copy_us']:.1f} | "
                     f"{r['copy_gbps']:.0f} | {100 * r['fraction_of_copy']:.0f}% | "
                     f"{r.get('torch_two_ops_us', float('nan')):.1f} |")
    big = [r for r in res["probe"] if r["n"] >= 11_000_000]
    if big:
        worst = min(r["fraction_of_copy"] for r in big)
        lines.append(f"- probe from 11M elements up: ≥ {100 * worst:.0f}% of the copy's bandwidth (target ≥ "
                     f"{100 * TARGETS['probe_copy']:.0f}%: {_verdict(worst >= TARGETS['probe_copy'])})")
    first = res["probe"][0]
    if "bits_equal_numpy" in first:
        lines.append(f"- probe bits on this GPU (n = {first['n']:,}): θ − α·g equal to NumPy bit for bit: "
                     f"{first['bits_equal_numpy']}; Σ g² equal to the replayed reduction tree: {first['sum_equals_tree']}")
    return lines
