"""The Numba CPU kernels and the backend switch, against NumPy (the oracle) and PyTorch.

Outputs handed to a kernel are filled with NaN first, so an element the kernel forgets to write
shows. Shapes are drawn by hypothesis (odd sizes, 1×1, sizes that are not multiples of the block).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qlabref as qr
from qlabref import backends
from qlabref.kernels import api, cpu, launch
from qlabref.ops import nn_ops

from backend_runs import _rel, assert_runs_match, conv_bn_model, train_qlabgrad

FLOATS = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-12}


# ------------------------------------------------------------------------------------------ matmul
@settings(max_examples=25)
@given(m=st.integers(1, 40), k=st.integers(1, 70), n=st.integers(1, 40), ta=st.booleans(), tb=st.booleans(),
       dt=st.sampled_from(FLOATS), seed=st.integers(0, 2**31))
@pytest.mark.slow  # > 3 s: off the README's fast path, run by CI
def test_cpu_matmul_matches_numpy(m, k, n, ta, tb, dt, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
    a, b = (a.T if ta else a), (b.T if tb else b)  # transposed views, read in place
    c = np.full((m, n), np.nan, dtype=dt)
    cpu.matmul_kernel(a, b, c)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert _rel(c, ref) < TOL[dt] * max(1, k)
    out = api.matmul(a, b)
    assert out.dtype == dt and _rel(out, ref) < TOL[dt] * max(1, k)


def test_matmul_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"not aligned \(3 != 4"):
        api.matmul(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(TypeError, match="one dtype"):
        api.matmul(np.zeros((2, 3)), np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="int64"):
        api.matmul(np.zeros((2, 3), np.int64), np.zeros((3, 5), np.int64))
    with pytest.raises(ValueError, match="2-D"):
        api.matmul(np.zeros(3), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        api.matmul(np.zeros((2, 3)), np.zeros((3, 5)), device="gpu")


# ------------------------------------------------------------------------------------------ conv
conv_case = st.fixed_dictionaries({
    "n": st.integers(1, 3), "c": st.integers(1, 4), "o": st.integers(1, 4), "h": st.integers(1, 11),
    "w": st.integers(1, 11), "kh": st.integers(1, 4), "kw": st.integers(1, 4), "sh": st.integers(1, 3),
    "sw": st.integers(1, 3), "ph": st.integers(0, 2), "pw": st.integers(0, 2), "seed": st.integers(0, 2**31),
    "dt": st.sampled_from(FLOATS)})


def _valid(d):
    return d["h"] + 2 * d["ph"] >= d["kh"] and d["w"] + 2 * d["pw"] >= d["kw"]


@settings(max_examples=40)
@given(d=conv_case.filter(_valid))
def test_cpu_im2col_col2im_equal_the_numpy_path(d):
    rng = np.random.default_rng(d["seed"])
    x = rng.standard_normal((d["n"], d["c"], d["h"], d["w"])).astype(d["dt"])
    k, s, p = (d["kh"], d["kw"]), (d["sh"], d["sw"]), (d["ph"], d["pw"])
    oh = (d["h"] + 2 * p[0] - k[0]) // s[0] + 1
    ow = (d["w"] + 2 * p[1] - k[1]) // s[1] + 1
    cols = np.full((d["n"] * oh * ow, d["c"] * k[0] * k[1]), np.nan, dtype=d["dt"])
    cpu.im2col_kernel(x, k[0], k[1], s[0], s[1], p[0], p[1], oh, ow, cols)
    ref = nn_ops._im2col(nn_ops._pad(x, p), k, s, (oh, ow))
    np.testing.assert_array_equal(cols, ref)  # a copy: exactly equal
    g = rng.standard_normal(cols.shape).astype(d["dt"])
    gx = np.full(x.shape, np.nan, dtype=d["dt"])
    cpu.col2im_kernel(g, k[0], k[1], s[0], s[1], p[0], p[1], oh, ow, gx)
    xp_shape = (d["n"], d["c"], d["h"] + 2 * p[0], d["w"] + 2 * p[1])
    ref_gx = nn_ops._col2im(g.reshape(d["n"], oh, ow, d["c"], *k), xp_shape, k, s, p, (oh, ow), d["dt"])
    np.testing.assert_array_equal(gx, ref_gx)  # same additions in the same order
    # the adjoint identity <im2col(x), g> = <x, col2im(g)>, in float64
    lhs = float(np.sum(cols.astype(np.float64) * g))
    rhs = float(np.sum(x.astype(np.float64) * gx))
    assert abs(lhs - rhs) <= TOL[d["dt"]] * 10 * max(1.0, abs(lhs))


@pytest.mark.torch
@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize("shape", [((2, 3, 9, 7), (4, 3, 3, 2), (2, 1), (1, 2)),
                                   ((1, 1, 1, 1), (1, 1, 1, 1), 1, 0),
                                   ((3, 5, 12, 12), (6, 5, 5, 5), 1, 0)])
def test_cpu_conv_wrappers_match_torch(torch, rng, dt, shape):
    xs, ws, s, p = shape
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    wt = torch.from_numpy(w.astype(np.float64)).requires_grad_()
    yt = torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)
    gy = rng.standard_normal(tuple(yt.shape)).astype(dt)
    yt.backward(torch.from_numpy(gy.astype(np.float64)))
    y = api.conv2d(x, w, s, p)
    assert y.dtype == dt and _rel(y, yt.detach().numpy()) < TOL[dt] * 50
    assert _rel(api.conv2d_grad_input(gy, w, x.shape, s, p), xt.grad.numpy()) < TOL[dt] * 50
    assert _rel(api.conv2d_grad_weight(x, gy, w.shape, s, p), wt.grad.numpy()) < TOL[dt] * 50


def test_conv_wrapper_errors():
    x, w = np.zeros((1, 3, 5, 5)), np.zeros((2, 2, 3, 3))
    with pytest.raises(ValueError, match="weight has 2 input channels, input has 3"):
        api.conv2d(x, w)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        api.conv2d(np.zeros((1, 2, 2, 2)), w)
    with pytest.raises(ValueError, match="gy has shape"):
        api.conv2d_grad_input(np.zeros((1, 2, 4, 4)), w, (1, 2, 5, 5))


# ------------------------------------------------------------------------------------------ probe
@settings(max_examples=30)
@given(n=st.integers(1, 3 * cpu.PROBE_CHUNK + 17), dt=st.sampled_from(FLOATS), seed=st.integers(0, 2**31))
def test_cpu_probe_matches_numpy(n, dt, seed):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(n).astype(dt)
    g = (rng.standard_normal(n) * rng.uniform(0.1, 10)).astype(dt)
    alpha = float(rng.uniform(-2, 2))
    out = np.full(n, np.nan, dtype=dt)
    new, total = api.probe(theta, g, alpha, out=out)
    assert new is out
    np.testing.assert_array_equal(out, theta + (-alpha) * g)  # NumPy's own rounding, bit for bit
    exact = math.fsum((g.astype(np.float64) ** 2).tolist())
    assert abs(total - exact) <= 1e-13 * exact
    # deterministic: the same bits on every call
    assert api.probe(theta, g, alpha, deterministic=True)[1] == total


def test_cpu_probe_sum_is_exact_on_exactly_representable_data(rng):
    # integers times 2^-3: every partial sum is exact in float64, so any order gives the exact sum
    n = 2 * cpu.PROBE_CHUNK + 5
    g = (rng.integers(-1000, 1000, n) / 8.0).astype(np.float32)
    theta = np.zeros(n, np.float32)
    exact = sum(int(v) ** 2 for v in (g * 8).astype(np.int64)) / 64.0
    assert api.probe(theta, g, 0.5, deterministic=True)[1] == exact
    saved = np.full(n, np.nan, np.float32)
    th = rng.standard_normal(n).astype(np.float32)
    before = th.copy()
    assert float(cpu.probe_save_kernel(th, g, np.float32(0.5), saved)) == exact
    np.testing.assert_array_equal(saved, before)
    np.testing.assert_array_equal(th, before + np.float32(-0.5) * g)
    assert float(cpu.sum_sq_kernel(g)) == exact


def test_probe_errors():
    with pytest.raises(ValueError, match="theta has shape"):
        api.probe(np.zeros(3), np.zeros(4), 0.1)
    with pytest.raises(ValueError, match="alpha must be finite"):
        api.probe(np.zeros(3), np.zeros(3), float("nan"))


# ------------------------------------------------------------------------------------------ backends
def test_backend_switch_and_context(monkeypatch):
    start = qr.get_backend()
    with qr.use_backend("numpy") as be:
        assert qr.get_backend() == "numpy" and be.name == "numpy"
        with qr.use_backend("numba"):
            assert qr.get_backend() == "numba"
        assert qr.get_backend() == "numpy"
    assert qr.get_backend() == start
    with pytest.raises(ValueError, match="unknown backend 'jax'; choose one of numpy, numba, cuda"):
        qr.set_backend("jax")
    with pytest.raises(ValueError, match="unknown backend"):
        with qr.use_backend("tpu"):
            pass
    assert qr.get_backend() == start


def test_backend_from_environment():
    code = "import qlabref as qr; print(qr.get_backend())"
    env = dict(os.environ, QLABREF_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"
    env["QLABREF_BACKEND"] = "bogus"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "QLABREF_BACKEND" in bad.stderr and "bogus" in bad.stderr
    env.pop("QLABREF_BACKEND")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == backends.DEFAULT_BACKEND


def test_cuda_backend_without_numba_cuda_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba_cuda" else real(name, *a))
    monkeypatch.delitem(backends._instances, "cuda", raising=False)
    with pytest.raises(launch.CudaUnavailableError, match=r"pip install 'qlabref\[cuda\]'"):
        qr.set_backend("cuda")
    with pytest.raises(launch.CudaUnavailableError, match=r"pip install 'qlabref\[cuda\]'"):
        api.probe(np.zeros(3), np.zeros(3), 0.1, device="cuda")
    assert qr.get_backend() in ("numpy", "numba")


@pytest.mark.parametrize("flat", [False, True])
def test_numba_backend_trains_like_numpy(rng, flat):
    x = rng.standard_normal((16, 2, 6, 6))
    y = rng.integers(0, 5, 16)
    make = lambda: conv_bn_model(np.float64)  # noqa: E731
    assert_runs_match(train_qlabgrad("numba", make, x, y, flat=flat), train_qlabgrad("numpy", make, x, y, flat=flat))
    xm = rng.standard_normal((32, 784))
    ym = rng.integers(0, 10, 32)
    mk = lambda: qr.models.mlp(dtype=np.float64, seed=1)  # noqa: E731
    assert_runs_match(train_qlabgrad("numba", mk, xm, ym, flat=flat), train_qlabgrad("numpy", mk, xm, ym, flat=flat))


def test_qlabgrad_flat_and_per_parameter_agree(rng):
    # the fused save-and-place on the flat buffer and the per-array path: the same points up to the
    # summation order of ‖∇L‖² (one sum over the buffer vs one per array), in float64. Eq. (10)'s
    # denominator g(ᾱ) − L + ‖∇L‖²ᾱ cancels, which amplifies that last-bit difference step by step
    # (worst seen over 30 seeds: 1.2e-11 relative in α_t after 5 steps), hence 1e-9.
    # 64 samples with random labels, not 8: the 1.3k-weight MLP memorised 8 samples within 5 steps, the
    # loss fell to ~0 (exactly 0.0 on some draws: a zero-gradient step whose probe_loss is None, which
    # assert_runs_match cannot subtract) and α_t became rounding noise: 183 of 12498 runs failed
    # (1.5 %). With 64 the loss stays above 0.36; over 15677 runs the worst difference was 0.056 of 1e-9.
    xm = rng.standard_normal((64, 20))
    ym = rng.integers(0, 4, 64)
    mk = lambda: qr.models.mlp((20, 16, 4), dtype=np.float64, seed=2)  # noqa: E731
    a = train_qlabgrad("numba", mk, xm, ym, flat=True)
    b = train_qlabgrad("numba", mk, xm, ym, flat=False)
    assert_runs_match(a, b, tol=1e-9)
    assert a[1][0]["flat_storage"] and not b[1][0]["flat_storage"]


def test_kernels_never_import_the_rest_of_qlabref():
    # kernels/ is NumPy + Numba only (STYLE.md): every import is numpy, numba, the standard library,
    # a sibling module of kernels/ itself, or cuda.bindings (NVIDIA's, installed with numba-cuda: nvJitLink
    # for cuda_resources.py's register/spill report)
    import ast
    import pathlib
    import sys

    allowed = {"numpy", "numba", "cuda"} | set(sys.stdlib_module_names)
    folder = pathlib.Path(api.__file__).parent
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    assert node.level == 1, f"{path.name}: relative import beyond kernels/ ({node.module})"
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"


# ------------------------------------------------------------------------------------ thread count
@pytest.mark.parametrize("env, expected", [
    ({"OPENBLAS_NUM_THREADS": "1"}, "1"),
    ({"OMP_NUM_THREADS": "1"}, "1"),
    ({"OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}, "2"),  # an explicit Numba count wins
    ({}, "pool"),  # nothing set: Numba's default, one thread per core
])
def test_kernels_follow_the_blas_thread_count(env, expected):
    """In a fresh interpreter, importing the kernels makes the Numba thread count follow the BLAS one
    (a parallel kernel with more threads than idle cores waits for a descheduled thread)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
    if expected == "2" and (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores for a Numba pool of 2")
    code = ("import numba; from qlabref.kernels import cpu; "
            "print(numba.get_num_threads(), numba.config.NUMBA_NUM_THREADS)")
    out = subprocess.run([sys.executable, "-c", code], env=dict(base, **env), capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/tests")
    assert out.returncode == 0, out.stderr[-2000:]
    got, pool = out.stdout.split()
    assert got == (pool if expected == "pool" else expected)
    # the function itself, on an explicit environment, in this process (and restored)
    import numba
    before = numba.get_num_threads()
    try:
        assert cpu.follow_blas_threads({"MKL_NUM_THREADS": "1"}) == 1
        assert cpu.follow_blas_threads({"OMP_NUM_THREADS": "x"}) == 1  # not a count: unchanged
    finally:
        numba.set_num_threads(before)
