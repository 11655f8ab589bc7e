"""``qlabref bench``: one training step of the paper's models against PyTorch CPU.

For each thread count N (``--threads 1,2``) a fresh child process is started with
``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` = N (NumPy's BLAS fixes its thread
count when NumPy is imported) and ``torch.set_num_threads(N)``; it times qlabref, PyTorch (same
weights, same process) and, for the MLP, a plain-NumPy step, interleaved (see :mod:`qlabref.bench`).
The parent prints the table and writes ``bench.json`` and ``bench.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

NAME = "bench"
HELP = "time one training step of mlp()/paper_cnn()/ResNet-18 against PyTorch CPU (same process, same threads)"
DESCRIPTION = (
    "Time one training step (zero_grad, forward, cross-entropy, backward; float32) of mlp() and paper_cnn() "
    "at batch 64 and resnet18(10, 'cifar') at batch 8, against PyTorch CPU with the same weights in the same "
    "process and thread count, and, for the MLP, against the same step in plain NumPy. Each thread count runs "
    "in a fresh child process whose BLAS and torch use that many threads. Reports median [quartiles] in ms, "
    "the ratio qlabref/PyTorch and the target verdict (MLP <= 0.85x, paper CNN <= 2.0x PyTorch). Also the fused "
    "line-search probe kernel against NumPy's two passes and a copy of the same bytes (--parts probe), and one "
    "QLABGrad step against one SGD step on mlp/cnn (--parts qlab; target <= 1.35x), and, with a CUDA GPU, the "
    "CUDA kernels on device arrays (--parts gpu: launch overhead, matmul vs cuBLAS with TF32 off, probe vs a "
    "device copy). --parts torch-optim: a qlabref.torch.QLABGrad step against torch's SGD step "
    "and a lean QLAB step on CPU and, where available, CUDA (qlabref.bench_torch_optim). --parts tiny: a 2-D "
    "optimizer step. Without torch installed, times qlabref and the NumPy baseline only. "
    "Writes bench.json and bench.md to --out."
)


def _arg_type(parse):
    def convert(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


MAX_BATCH = 1024
MAX_REPEATS = 10_000


def add_arguments(parser):
    from .. import bench
    from . import _args

    parser.add_argument("--models", type=_arg_type(bench.model_names), default=list(bench.MODELS),
                        help=f"comma-separated, from {','.join(bench.MODELS)} (default: all)")
    parser.add_argument("--threads", type=_arg_type(bench.thread_counts), default=[1],
                        help="thread count(s) for NumPy's BLAS and torch, e.g. 1 or 1,2 (default 1)")
    parser.add_argument("--batch", type=_args.positive_int(MAX_BATCH), default=None,
                        help=f"batch size for every model (default: 64 for mlp and cnn, 8 for resnet18; at most {MAX_BATCH})")
    parser.add_argument("--repeats", type=_args.positive_int(MAX_REPEATS), default=None,
                        help=f"timed steps per side (default: 100 mlp, 20 cnn, 8 resnet18; at most {MAX_REPEATS})")
    parser.add_argument("--warmup", type=_args.bounded_int(0, MAX_REPEATS), default=None,
                        help=f"untimed steps per side before timing (default: 10 mlp, 3 cnn, 2 resnet18; at most {MAX_REPEATS})")
    parser.add_argument("--parts", type=_arg_type(bench.part_names), default=list(bench.PARTS),
                        help=f"what to measure, comma-separated from {','.join(bench.PARTS)} (default: all)")
    parser.add_argument("--seed", type=_args.seed, default=0, help="seed of the weights and the input batch (default 0)")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the PyTorch baseline (as if torch were not installed)")
    parser.add_argument("--out", default="qlabref-out/bench", help="output folder (default ./qlabref-out/bench)")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)


def run(args) -> int:
    from .. import bench

    opts = dict(batch=args.batch, repeats=args.repeats, warmup=args.warmup, use_torch=not args.no_torch,
                seed=args.seed, parts=args.parts)
    if args._child:
        if len(args.threads) != 1:
            print("qlabref bench: --_child takes one thread count", file=sys.stderr)
            return 2
        return bench.child_main(args.models, threads=args.threads[0], **opts)

    from . import _args

    out = _args.ensure_writable_dir(args.out)  # before minutes of measuring
    t0 = time.perf_counter()
    env = bench.environment()
    print(f"qlabref bench: one training step (zero_grad, forward, cross-entropy, backward), float32; "
          f"models {', '.join(args.models)}; threads {', '.join(map(str, args.threads))}", flush=True)
    if env["loadavg"] and env["cpu_count"] and env["loadavg"][0] > env["cpu_count"] - 0.5:
        print(f"qlabref bench: warning: the machine is busy (load average {env['loadavg'][0]:.1f} on "
              f"{env['cpu_count']} CPUs); timings will be noisy, and runs with N threads need N idle cores "
              f"(multi-threaded BLAS and torch can slow down many times over without them)", flush=True)
    runs = []
    record = {
        "command": "qlabref bench",
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": {"models": args.models, "parts": args.parts, "threads": args.threads, "batch": args.batch,
                   "repeats": args.repeats,
                   "warmup": args.warmup, "seed": args.seed, "torch": not args.no_torch},
        "environment": env,
        "runs": runs,
    }
    json_path, md_path = out / "bench.json", out / "bench.md"
    for n in args.threads:
        print(f"qlabref bench: measuring with {n} thread(s) in a child process", flush=True)
        try:
            run_record = bench.run_child(n, args.models, **opts)
        except RuntimeError as e:
            print(f"qlabref bench: {e}", file=sys.stderr)
            return 1
        if run_record["torch_missing"] and not runs:
            if args.no_torch:
                print("qlabref bench: PyTorch baseline skipped (--no-torch); timing qlabref and the plain NumPy "
                      "MLP baseline only", flush=True)
            else:
                print("qlabref bench: PyTorch is not installed, so there is no PyTorch baseline: "
                      "`pip install torch` (CPU) for it. Timing qlabref and the plain NumPy MLP baseline only.",
                      flush=True)
        runs.append(run_record)
        # results as they are produced: the files hold every thread count measured so far
        json_path.write_text(json.dumps(record, indent=1) + "\n")
        md_path.write_text(bench.format_markdown(record))

    print()
    print("median [quartiles] in ms per step; ratios of medians; NumPy = the MLP step in plain NumPy, same process")
    print(bench.format_table(runs))
    for line in bench.format_extras(runs):
        print(line)
    for run_record in runs:
        for r in run_record["results"]:
            d = r["loss_rel_diff_torch"]
            if d is not None and d > 1e-3:
                print(f"qlabref bench: warning: {r['model']} at {run_record['threads']} thread(s): the first-step "
                      f"losses of qlabref and PyTorch differ by {d:.1e} (relative); the two models differ")

    print(f"\nqlabref bench: wrote {json_path} and {md_path} in {time.perf_counter() - t0:.1f} s")
    return 0
