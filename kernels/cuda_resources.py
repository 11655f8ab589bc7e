"""What a kernel costs a multiprocessor, read from the assembler without a GPU.

``numba.cuda.compile_ptx`` gives PTX, a virtual ISA with unlimited registers. The real register
count, any *spills* (registers that did not fit, stored to and reloaded from local memory: slow
off-chip traffic inside the inner loop) and the static shared memory per block are only known once
ptxas has turned the PTX into SASS, the GPU's machine code. nvJitLink (``libnvJitLink``, the
``nvidia-nvjitlink`` wheel, called through ``cuda.bindings.nvjitlink``) runs that assembler in
process with ``-arch=sm_XY -verbose`` and needs no GPU and no driver: its info log is ptxas's
``-v`` report, which :func:`ptxas_info` parses.

- ``resource_reason()``: None when nvJitLink can be used here, else why not.
- ``ptxas_info(ptx, cc)``: registers per thread, spill stores/loads (bytes), stack frame, static
  shared memory (bytes) and barriers of the one kernel in ``ptx``, assembled for ``sm_<cc>``.
- ``kernel_resources(fn, sig, cc)``: the same for a plain Python kernel and its signature
  (``compile_ptx``: Numba's, with the device functions it calls compiled for ``cc`` too, no GPU).
- ``block_problems(info, threads)``: what keeps one block of ``threads`` threads from running on a
  multiprocessor of compute capability 8.0/9.0 (empty list: it fits), from the CUDA programming
  guide's limits (``LIMITS``).

``python -m qlabref.kernels.cuda_resources`` prints the table of the docs (every matmul
configuration (over its four storage orders), the probe and ``place`` kernels, for sm_90 and sm_80).
"""
from __future__ import annotations

import contextlib
import re

__all__ = ["LIMITS", "REG_UNIT", "resource_reason", "ptxas_info", "target_cc", "compile_ptx",
           "kernel_resources", "block_problems", "blocks_per_sm",
           "matmul_rows", "probe_rows", "main"]

#: per-thread, per-multiprocessor and per-block limits of compute capabilities 8.0 and 9.0 (CUDA C++
#: Programming Guide, "Technical Specifications per Compute Capability"): at most 255 registers per
#: thread, a 64 K 32-bit register file per SM, 48 KiB of *static* shared memory per block (more
#: needs dynamic shared memory and an opt-in), at most 1024 threads per block
LIMITS = {"registers_per_thread": 255, "registers_per_sm": 65536, "static_smem_per_block": 48 * 1024,
          "threads_per_block": 1024, "threads_per_sm": 2048, "blocks_per_sm": 32}
#: shared memory per multiprocessor, bytes (8.0: 164 KiB; 9.0: 228 KiB)
SMEM_PER_SM = {(8, 0): 164 * 1024, (9, 0): 228 * 1024}
#: registers are handed to warps in units of 256 (8 per thread): a kernel using r registers holds
#: ceil(r / 8)·8 per thread
REG_UNIT = 8


def resource_reason():
    """None if nvJitLink can assemble PTX here, else a sentence saying what is missing."""
    try:
        from cuda.bindings import nvjitlink
    except ImportError as e:
        return f"cuda.bindings.nvjitlink is not importable ({e}): pip install cuda-bindings nvidia-nvjitlink"
    try:
        nvjitlink.version()
    except Exception as e:  # noqa: BLE001 - the library itself (libnvJitLink.so) did not load
        return f"libnvJitLink could not be loaded ({type(e).__name__}: {e}): pip install nvidia-nvjitlink"
    return None


def _log(nvjitlink, handle, size_fn, get_fn):
    n = size_fn(handle)
    buf = bytearray(n)
    if n:
        get_fn(handle, buf)
    return buf.rstrip(b"\0").decode(errors="replace")


def _assemble(ptx, cc, options=()):
    """ptxas's verbose report for ``ptx`` assembled (and linked) for sm_<cc> by nvJitLink."""
    from cuda.bindings import nvjitlink

    opts = [f"-arch=sm_{cc[0]}{cc[1]}", "-verbose", *options]
    handle = nvjitlink.create(len(opts), opts)
    try:
        data = ptx.encode()
        try:
            nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
            nvjitlink.complete(handle)
        except Exception as e:  # noqa: BLE001 - nvJitLinkError: the error log says why
            err = _log(nvjitlink, handle, nvjitlink.get_error_log_size, nvjitlink.get_error_log)
            raise RuntimeError(f"nvJitLink could not assemble the PTX for sm_{cc[0]}{cc[1]}: {e}\n{err}") from e
        return _log(nvjitlink, handle, nvjitlink.get_info_log_size, nvjitlink.get_info_log)
    finally:
        nvjitlink.destroy(handle)


def _one(pattern, text, what):
    found = re.findall(pattern, text)
    if len(found) != 1:
        raise ValueError(f"ptxas report: expected one '{what}' line, found {len(found)}:\n{text}")
    return int(found[0])


def ptxas_info(ptx, cc=(9, 0), options=()):
    """Resources of the single kernel (``.entry``) in ``ptx`` on sm_<cc>, from ptxas's report:
    ``registers`` (per thread), ``spill_stores``/``spill_loads`` and ``stack`` (bytes, summed over
    the kernel and any device function that was not inlined), ``smem`` (static shared memory per
    block, bytes; for sm_90 ptxas counts the 1 KiB reserved per block in it, for sm_80 it does not),
    ``barriers`` and the raw ``log``. ``options``: more nvJitLink options (``"-maxrregcount=N"``)."""
    log = _assemble(ptx, cc, options)
    entries = re.findall(r"Compiling entry function '([^']+)'", log)
    if len(entries) != 1:
        raise ValueError(f"ptxas report: expected one kernel, found {len(entries)}:\n{log}")
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not frames:
        raise ValueError(f"ptxas report: no 'spill stores' line:\n{log}")
    return {
        "registers": _one(r"Used (\d+) registers", log, "Used N registers"),
        "spill_stores": sum(int(f[1]) for f in frames),
        "spill_loads": sum(int(f[2]) for f in frames),
        "stack": sum(int(f[0]) for f in frames),
        "smem": _one(r"(\d+) bytes smem", log, "N bytes smem"),
        "barriers": int((re.findall(r"used (\d+) barriers", log) or [0])[0]),
        "log": log,
    }


@contextlib.contextmanager
def target_cc(cc):
    """Numba compiles the device functions a kernel calls for the *current* device's compute
    capability, which needs a GPU; while compiling PTX for ``cc`` without one, report ``cc``."""
    from numba.cuda import dispatcher

    class _Device:
        compute_capability = tuple(cc)

    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Device()
    try:
        yield
    finally:
        dispatcher.get_current_device = saved


def compile_ptx(fn, sig, cc=(9, 0)):
    """``numba.cuda.compile_ptx(fn, sig, cc=cc)`` (simulator off), device functions included."""
    from numba import cuda

    with target_cc(cc):
        ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
    return ptx


def kernel_resources(fn, sig, cc=(9, 0), options=()):
    """:func:`ptxas_info` of the plain Python kernel ``fn`` compiled for ``sig`` (simulator off)."""
    return ptxas_info(compile_ptx(fn, sig, cc), cc, options)


def block_problems(info, threads):
    """Why one block of ``threads`` threads of this kernel would not fit a multiprocessor (a list of
    sentences; empty if it fits), or would run with spills."""
    out = []
    regs = info["registers"]
    if info["spill_stores"] or info["spill_loads"]:
        out.append(f"spills: {info['spill_stores']} bytes stored, {info['spill_loads']} bytes loaded")
    if regs > LIMITS["registers_per_thread"]:
        out.append(f"{regs} registers per thread > {LIMITS['registers_per_thread']}")
    held = -(-regs // REG_UNIT) * REG_UNIT * threads
    if held > LIMITS["registers_per_sm"]:
        out.append(f"{regs} registers × {threads} threads = {held} (allocated in units of {REG_UNIT}) "
                   f"> the {LIMITS['registers_per_sm']} of a multiprocessor")
    if info["smem"] > LIMITS["static_smem_per_block"]:
        out.append(f"{info['smem']} bytes of static shared memory > {LIMITS['static_smem_per_block']} per block")
    if threads > LIMITS["threads_per_block"]:
        out.append(f"{threads} threads per block > {LIMITS['threads_per_block']}")
    return out


def blocks_per_sm(info, threads, cc=(9, 0)):
    """How many blocks of ``threads`` threads fit on one multiprocessor at once (occupancy), the
    smallest of the register-file, thread, block and shared-memory limits."""
    regs = -(-info["registers"] // REG_UNIT) * REG_UNIT * threads
    limits = [LIMITS["registers_per_sm"] // regs, LIMITS["threads_per_sm"] // threads, LIMITS["blocks_per_sm"]]
    if info["smem"]:
        limits.append(SMEM_PER_SM[tuple(cc)] // info["smem"])
    return min(limits)


def matmul_rows(cc=(9, 0)):
    """(name, threads per block, ptxas_info) of every matmul kernel (config × dtype × storage order)."""
    from . import cuda_matmul as mm

    for name, fn, sig in mm.PTX_KERNELS:
        yield name, mm.THREADS * mm.THREADS, kernel_resources(fn, sig, cc)


def probe_rows(cc=(9, 0)):
    """(name, threads per block, ptxas_info) of the probe kernels and the resident ``place`` kernels."""
    from numba import float32, float64

    from . import cuda_probe as pr
    from . import cuda_reduce as rd

    for name, fn, sig in pr.PTX_KERNELS:
        yield name, pr.TPB, kernel_resources(fn, sig, cc)
    for t in (float32, float64):
        for kind, factory in (("place", rd.place_kernel), ("place_save", rd.place_save_kernel)):
            yield f"{kind}[{t}]", rd.TPB, kernel_resources(factory(t).py_func, (t[::1], t[::1], t, t[::1]), cc)


def _span(values):
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def main():
    """Print the resource table of the docs (markdown): matmul per dtype and configuration (the
    range over the four storage orders), then the probe and place kernels, for sm_90 and sm_80."""
    reason = resource_reason()
    if reason:
        raise SystemExit(reason)
    rows = {}
    for cc in ((9, 0), (8, 0)):
        for name, threads, info in (*matmul_rows(cc), *probe_rows(cc)):
            if name.startswith("matmul_rt["):
                dt, cfg, _ = name[len("matmul_rt["):-1].split(",")
                name = f"matmul {dt} {cfg}"
            rows.setdefault(name, {}).setdefault(cc, []).append((threads, info))
    print("| kernel | registers sm_90 | registers sm_80 | spill stores/loads | shared memory per block, sm_90 (B) "
          "| blocks per SM (sm_90 / sm_80) |")
    print("|---|---|---|---|---|---|")
    for name, by_cc in rows.items():
        infos = [i for v in by_cc.values() for _, i in v]
        spills = {(i["spill_stores"], i["spill_loads"]) for i in infos}
        spill = "0 / 0" if spills == {(0, 0)} else ", ".join(f"{a} / {b}" for a, b in sorted(spills))
        occ = [_span([blocks_per_sm(i, t, cc) for t, i in by_cc[cc]]) for cc in ((9, 0), (8, 0))]
        regs = [_span([i["registers"] for _, i in by_cc[cc]]) for cc in ((9, 0), (8, 0))]
        smem = _span([i["smem"] for _, i in by_cc[(9, 0)]])
        print(f"| {name} | {regs[0]} | {regs[1]} | {spill} | {smem} | {occ[0]} / {occ[1]} |")


if __name__ == "__main__":
    main()
