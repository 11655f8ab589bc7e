"""Every CUDA kernel against NumPy, on the CUDA device there is (Numba's simulator in CI, a real GPU
where present; see conftest.py): small odd shapes (1×1, sizes that are not multiples of the tile, K
spanning several tiles, several blocks), float32 and float64, every output buffer filled with NaN
before the launch. The probe's θ − α·g must equal NumPy's bit for bit and its Σ g² the reduction tree
replayed in NumPy bit for bit, on a GPU as in the simulator (explicitly rounded operations, no FMA).
The device-array entry points make no allocation and no host transfer (counted)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qlabref.kernels import api
from qlabref.ops import nn_ops

FLOATS = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-13}


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _nan_device(cuda, shape, dtype):
    return cuda.to_device(np.full(shape, np.nan, dtype=dtype))


# (M, K, N): 1×1; not multiples of any tile; exact multiples of 16/32; K over several K steps
MATMUL_SHAPES = [(1, 1, 1), (1, 17, 1), (17, 33, 5), (32, 32, 32), (3, 40, 19), (33, 2, 17)]


def _check_matmul(cuda, mm, a, b, config=None):
    m, k = a.shape
    n = b.shape[1]
    dt = a.dtype.type
    ref = a.astype(np.float64) @ b.astype(np.float64)
    for ta, tb in mm.ORDERS:
        sa = np.ascontiguousarray(a.T) if ta else a  # stored transposed: the kernel reads it in place
        sb = np.ascontiguousarray(b.T) if tb else b
        out = _nan_device(cuda, (m, n), dt)
        mm.matmul_device(cuda.to_device(sa), cuda.to_device(sb), m, n, dt, ta, tb, out=out, config=config)
        c = out.copy_to_host()
        assert not np.isnan(c).any(), (config, ta, tb)
        assert _rel(c, ref) < TOL[dt] * max(1, k), (config, ta, tb, _rel(c, ref))


@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("mkn", MATMUL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_kernel(cuda_kernels, rng, dt, mkn):
    cuda, mm, _, _ = cuda_kernels
    m, k, n = mkn
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n)).astype(dt)
    _check_matmul(cuda, mm, a, b)  # the configuration choose_config picks
    # the host wrapper with transposed views (no copies)
    c = api.matmul(np.asfortranarray(a), np.asfortranarray(b), device="cuda")
    assert c.dtype == dt and _rel(c, a.astype(np.float64) @ b.astype(np.float64)) < TOL[dt] * max(1, k)


@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("config", ["128x128", "128x128p", "64x64", "32x32"])
def test_matmul_every_configuration_over_several_blocks(cuda_kernels, rng, device, dt, config):
    # edges in both M and N (two block rows, two block columns, ragged) and K over several steps
    cuda, mm, _, _ = cuda_kernels
    tm, tn, bk, _ = mm.CONFIGS[config]
    bm, bn = mm.THREADS * tm, mm.THREADS * tn  # the block tile (4·TM × 4·TN in the simulator)
    k = 2 * bk + 3 if device == "simulator" else 3 * bk * 5 + 7
    m, n = bm + 5, bn + 3
    if device == "gpu":
        m, n = 3 * bm + 5, 4 * bn + 3
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n)).astype(dt)
    _check_matmul(cuda, mm, a, b, config=config)


def test_matmul_puts_the_long_side_on_the_grid_axis_a_gpu_allows_to_be_long(cuda_kernels, rng, monkeypatch):
    # A GPU refuses gridDim.y > 65,535 (CUDA_ERROR_INVALID_VALUE) and the simulator checks no grid
    # limit, so check_grid does it before each launch. A convolution's M = N·OH·OW is the long side
    # (8,388,608 rows at CIFAR size, batch 8192: 65,536 row tiles of 128), so rows must go on x. With
    # the y limit lowered to 1 here, a tall product (several row tiles) still launches and is right;
    # a wide one (several column tiles) is refused with the shape named, not launched.
    cuda, mm, _, _ = cuda_kernels
    from qlabref.kernels import launch

    monkeypatch.setattr(launch, "MAX_GRID_Y", 1)
    tm, tn = mm.CONFIGS["32x32"][:2]
    bm, bn = mm.THREADS * tm, mm.THREADS * tn
    a = rng.standard_normal((5 * bm + 3, 7))
    b = rng.standard_normal((7, bn))
    _check_matmul(cuda, mm, a, b, config="32x32")
    with pytest.raises(ValueError, match=rf"matmul: grid \(1, 2\) for C of 1 × {bn + 1} in 32x32 tiles: gridDim.y"):
        mm.matmul_device(cuda.to_device(np.ones((1, 7))), cuda.to_device(np.ones((7, bn + 1))), 1, bn + 1,
                         np.float64, config="32x32")


def test_grid_limits_are_checked_before_a_launch(cuda_kernels):
    from qlabref.kernels import launch

    launch.check_grid((2**31 - 1, 65535, 1), "matmul", "C of 1 × 1")  # the limits themselves launch
    with pytest.raises(ValueError, match=r"matmul: grid \(1, 65536\) for C of 9 × 9: gridDim.y = 65536 is outside 1..65535"):
        launch.check_grid((1, 65536), "matmul", "C of 9 × 9")
    with pytest.raises(ValueError, match="gridDim.z = 0"):
        launch.check_grid((1, 1, 0), "k", "x")
    with pytest.raises(ValueError, match="gridDim.x = 2147483648"):
        launch.check_grid((2**31, 1), "k", "x")


@pytest.mark.parametrize("dt,ta,tb", [(np.float32, True, False), (np.float64, False, True)], ids=["f32-AtB", "f64-ABt"])
def test_matmul_hardware_geometry(cuda_kernels, rng, dt, ta, tb):
    # the 16 × 16-thread blocks a GPU runs (the simulator's default is 4 × 4: see cuda_matmul), with a
    # ragged edge in M, N and K, so the simulator checks the geometry the hardware uses as well
    cuda, mm, _, _ = cuda_kernels
    from numba import float32, float64

    tm, tn, bk, pre = mm.CONFIGS["32x32"]
    kern = cuda.jit(mm.make_matmul_kernel(float32 if dt == np.float32 else float64, tm, tn, bk, ta, tb, pre,
                                          threads=mm.HW_THREADS))
    m, k, n = 16 * tm + 3, bk + 5, 16 * tn + 1
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n)).astype(dt)
    out = _nan_device(cuda, (m, n), dt)
    grid = (-(-m // (16 * tm)), -(-n // (16 * tn)))  # rows on x, as matmul_device launches it
    kern[grid, (16, 16)](cuda.to_device(np.ascontiguousarray(a.T) if ta else a),
                         cuda.to_device(np.ascontiguousarray(b.T) if tb else b), out)
    c = out.copy_to_host()
    assert not np.isnan(c).any()
    assert _rel(c, a.astype(np.float64) @ b.astype(np.float64)) < TOL[dt] * k


@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
def test_choose_config_spreads_small_products(cuda_kernels, dt):
    _, mm, _, _ = cuda_kernels
    sms = mm._sm_count()
    large = mm.LARGE[np.dtype(dt).name]
    for m, n in ((64, 1000), (4096, 4096), (1, 1), (784, 1000), (1000, 784)):
        cfg = mm.choose_config(m, n, dt)
        tm, tn = mm.CONFIGS[cfg][:2]
        nblocks = -(-m // (mm.THREADS * tm)) * -(-n // (mm.THREADS * tn))
        assert nblocks >= sms or cfg == "32x32", (m, n, cfg)
        if cfg != large:  # a larger tile would have left multiprocessors idle
            bigger = {"64x64": large, "32x32": "64x64"}[cfg]
            btm, btn = mm.CONFIGS[bigger][:2]
            assert -(-m // (mm.THREADS * btm)) * -(-n // (mm.THREADS * btn)) < sms


@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
def test_matmul_into_device_views(cuda_kernels, rng, dt):
    cuda, mm, _, _ = cuda_kernels
    a = rng.standard_normal((19, 23)).astype(dt)
    b = rng.standard_normal((23, 7)).astype(dt)
    da, db = cuda.to_device(a), cuda.to_device(b)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    out = _nan_device(cuda, (19, 7), dt)
    assert mm.matmul_into(da, db, out=out) is out
    assert _rel(out.copy_to_host(), ref) < TOL[dt] * 23
    # transposed views of C-contiguous device arrays, read in place: (aᵀ)ᵀ·(bᵀ)ᵀ
    dat, dbt = cuda.to_device(np.ascontiguousarray(a.T)), cuda.to_device(np.ascontiguousarray(b.T))
    c = mm.matmul_into(dat.T, dbt.T).copy_to_host()
    assert _rel(c, ref) < TOL[dt] * 23
    with pytest.raises(ValueError, match="not aligned"):
        mm.matmul_into(da, da)
    with pytest.raises(ValueError, match="out must be"):
        mm.matmul_into(da, db, out=cuda.device_array((7, 19), dtype=dt))


CONV_CASES = [  # x shape, w shape, stride, padding
    ((1, 1, 1, 1), (1, 1, 1, 1), (1, 1), (0, 0)),
    ((2, 3, 7, 6), (4, 3, 3, 2), (1, 1), (0, 0)),
    ((2, 2, 5, 7), (3, 2, 3, 3), (2, 1), (1, 2)),
    ((1, 3, 6, 6), (2, 3, 5, 5), (2, 2), (2, 2)),
]


@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"x{c[0]}w{c[1]}s{c[2]}p{c[3]}".replace(" ", ""))
def test_im2col_col2im_kernels(cuda_kernels, rng, dt, case):
    cuda, _, cv, _ = cuda_kernels
    xs, ws, s, p = case
    x = rng.standard_normal(xs).astype(dt)
    k = ws[2:]
    oh = (xs[2] + 2 * p[0] - k[0]) // s[0] + 1
    ow = (xs[3] + 2 * p[1] - k[1]) // s[1] + 1
    shape = (xs[0] * oh * ow, xs[1] * k[0] * k[1])
    out = _nan_device(cuda, shape, dt)
    cv.im2col_device(cuda.to_device(x), k, s, p, (oh, ow), out=out)
    np.testing.assert_array_equal(out.copy_to_host(), nn_ops._im2col(nn_ops._pad(x, p), k, s, (oh, ow)))
    g = rng.standard_normal(shape).astype(dt)
    gx = _nan_device(cuda, xs, dt)
    cv.col2im_device(cuda.to_device(g), xs, k, s, p, (oh, ow), out=gx)
    xp_shape = (xs[0], xs[1], xs[2] + 2 * p[0], xs[3] + 2 * p[1])
    ref = nn_ops._col2im(g.reshape(xs[0], oh, ow, xs[1], *k), xp_shape, k, s, p, (oh, ow), dt)
    np.testing.assert_array_equal(gx.copy_to_host(), ref)  # gathered in the NumPy path's order


@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV_CASES[1:3], ids=["plain", "strided-padded"])
def test_conv_wrappers(cuda_kernels, rng, dt, case):
    xs, ws, s, p = case
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    y = api.conv2d(x, w, s, p, device="cuda")
    assert _rel(y, api.conv2d(x.astype(np.float64), w.astype(np.float64), s, p)) < TOL[dt] * 30
    gy = rng.standard_normal(y.shape).astype(dt)
    gx = api.conv2d_grad_input(gy, w, xs, s, p, device="cuda")
    gw = api.conv2d_grad_weight(x, gy, ws, s, p, device="cuda")
    x64, w64, gy64 = x.astype(np.float64), w.astype(np.float64), gy.astype(np.float64)
    assert _rel(gx, api.conv2d_grad_input(gy64, w64, xs, s, p)) < TOL[dt] * 30
    assert _rel(gw, api.conv2d_grad_weight(x64, gy64, ws, s, p)) < TOL[dt] * 30


@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
def test_conv_device_entry_points_with_preallocated_buffers(cuda_kernels, rng, dt):
    # the device-array entry points, every buffer preallocated (NaN) and passed in, against the
    # float64 CPU oracle; the permutation kernels exactly
    cuda, _, cv, _ = cuda_kernels
    xs, ws, s, p = CONV_CASES[2]
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    oh, ow = cv.conv_out_hw(xs, ws[2:], s, p)
    rows_shape, cols_shape = (xs[0] * oh * ow, ws[0]), (xs[0] * oh * ow, xs[1] * ws[2] * ws[3])
    dx, dw = cuda.to_device(x), cuda.to_device(w)
    y = _nan_device(cuda, (xs[0], ws[0], oh, ow), dt)
    cols, rows = _nan_device(cuda, cols_shape, dt), _nan_device(cuda, rows_shape, dt)
    assert cv.conv2d_device(dx, dw, s, p, out=y, cols=cols, rows=rows) is y
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    assert _rel(y.copy_to_host(), api.conv2d(x64, w64, s, p)) < TOL[dt] * 30
    gy = rng.standard_normal((xs[0], ws[0], oh, ow)).astype(dt)
    dgy = cuda.to_device(gy)
    r = cv.nchw_to_rows_device(dgy, out=_nan_device(cuda, rows_shape, dt))
    np.testing.assert_array_equal(r.copy_to_host(), gy.transpose(0, 2, 3, 1).reshape(rows_shape))
    np.testing.assert_array_equal(cv.rows_to_nchw_device(r, xs[0], (oh, ow)).copy_to_host(), gy)
    gx = _nan_device(cuda, xs, dt)
    cv.conv2d_grad_input_device(dgy, dw, xs, s, p, out=gx, rows=rows, gcols=_nan_device(cuda, cols_shape, dt))
    gy64 = gy.astype(np.float64)
    assert _rel(gx.copy_to_host(), api.conv2d_grad_input(gy64, w64, xs, s, p)) < TOL[dt] * 30
    gw = _nan_device(cuda, ws, dt)
    cv.conv2d_grad_weight_device(dx, dgy, ws, s, p, out=gw, cols=cols, rows=rows)
    assert _rel(gw.copy_to_host(), api.conv2d_grad_weight(x64, gy64, ws, s, p)) < TOL[dt] * 30
    with pytest.raises(ValueError, match="rows must be"):
        cv.conv2d_device(dx, dw, s, p, rows=_nan_device(cuda, (1, 1), dt))


# ------------------------------------------------------------------------------------------ probe
@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("n,max_blocks", [(1, None), (255, None), (257, None), (3000, 3), ("wide", "wide")],
                         ids=["n1", "n255", "n257", "n3000-gridstride", "more-blocks-than-threads"])
def test_probe_kernel(cuda_kernels, rng, dt, n, max_blocks):
    _, _, _, pk = cuda_kernels
    wide = n == "wide"
    if wide:  # TPB + 8 blocks: the last block's second pass strides over more partials than threads
        if dt == np.float32:
            pytest.skip("the reduction's layout does not depend on the dtype: float64 covers it")
        max_blocks = pk.TPB + 8
        n = max_blocks * pk.TPB + 5
    theta = rng.standard_normal(n).astype(dt)
    g = (rng.standard_normal(n) * 3).astype(dt)
    alpha = float(rng.uniform(0.01, 2))
    exact = math.fsum((g.astype(np.float64) ** 2).tolist())
    expected_point = theta - dt(alpha) * g  # NumPy: alpha rounded to dt, multiply, round, subtract, round
    for det in ((True,) if wide else (False, True)):
        new, total = pk.probe_cuda(theta, g, alpha, det, max_blocks, out=np.full(n, np.nan, dt))
        np.testing.assert_array_equal(new, expected_point)  # bit for bit, on a GPU too (no FMA)
        assert abs(total - exact) <= 1e-13 * max(exact, 1e-300)
        # deterministic: equal to its reduction tree replayed in NumPy, bit for bit, and repeatable
        assert total == pk.reference_tree_sum(g, max_blocks)


@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
def test_probe_bits_where_fma_would_differ(cuda_kernels, dt):
    # inputs where one rounding (a fused multiply-add) and two roundings give different results:
    # θ = α·g exactly representable only after rounding, so θ − α·g is 0 with two roundings and the
    # product's rounding error with an FMA
    _, _, _, pk = cuda_kernels
    rng = np.random.default_rng(12345)
    g = (1 + rng.random(4096)).astype(dt)
    alpha = dt(1) / dt(3)
    theta = (alpha * g).astype(dt)  # the rounded product
    fused = (theta.astype(np.longdouble) - np.longdouble(alpha) * g.astype(np.longdouble))
    if np.finfo(np.longdouble).nmant > np.finfo(dt).nmant:  # (x86: 64-bit mantissa)
        assert np.any(fused != 0)  # the test can fail: an FMA would leave these residuals
    new, _ = pk.probe_cuda(theta, g, float(alpha))
    np.testing.assert_array_equal(new, theta - alpha * g)
    assert not new.any()


def test_probe_sums_exactly_representable_data_exactly(cuda_kernels, rng):
    _, _, _, pk = cuda_kernels
    g = (rng.integers(-1000, 1000, 700) / 4.0).astype(np.float32)  # every partial sum is exact
    exact = sum(int(v) ** 2 for v in (g * 4).astype(np.int64)) / 16.0
    for det in (False, True):
        assert pk.probe_cuda(np.zeros_like(g), g, 0.5, det, 2)[1] == exact
    assert api.probe(np.zeros_like(g), g, 0.5, device="cuda", deterministic=True)[1] == exact


@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
def test_probe_device_entry_points(cuda_kernels, rng, dt):
    # probe_into (out separate and in place), probe_save_into and sum_sq_into on device arrays, the
    # sums landing in chosen slots of one result array, one workspace reused for every call
    cuda, _, _, pk = cuda_kernels
    n = 700
    theta = rng.standard_normal(n).astype(dt)
    g = rng.standard_normal(n).astype(dt)
    alpha = float(rng.uniform(0.1, 1))
    ws = pk.ProbeWorkspace()
    results = cuda.to_device(np.full(4, np.nan))
    d_theta, d_g = cuda.to_device(theta), cuda.to_device(g)
    out = _nan_device(cuda, n, dt)
    assert pk.probe_into(d_theta, d_g, alpha, out, ws=ws, result=results, index=1) is results
    want = theta - dt(alpha) * g
    np.testing.assert_array_equal(out.copy_to_host(), want)
    pk.sum_sq_into(d_g, ws=ws, result=results, index=3, max_blocks=2)
    saved = _nan_device(cuda, n, dt)
    pk.probe_save_into(d_theta, d_g, alpha, saved, ws=ws, result=results, index=0)
    np.testing.assert_array_equal(saved.copy_to_host(), theta)
    np.testing.assert_array_equal(d_theta.copy_to_host(), want)
    r = results.copy_to_host()
    assert r[0] == r[1] == pk.reference_tree_sum(g) and r[3] == pk.reference_tree_sum(g, 2) and np.isnan(r[2])
    # in place (out is theta), 2-D arrays viewed flat, the sum in the workspace, read once
    t2 = cuda.to_device(theta.reshape(25, 28))
    assert pk.probe_into(t2, cuda.to_device(g.reshape(25, 28)), alpha, t2, ws=ws) is ws.result
    np.testing.assert_array_equal(t2.copy_to_host().ravel(), want)
    assert ws.read() == pk.reference_tree_sum(g)
    with pytest.raises(ValueError, match="exceeds the workspace"):
        pk.probe_into(d_theta, d_g, alpha, out, ws=pk.ProbeWorkspace(max_blocks=1))


def test_probe_device_entry_points_allocate_and_transfer_nothing(cuda_kernels, rng, monkeypatch):
    # after the workspace exists, a probe step is launches only: no device allocation, no host↔device
    # copy (each of these would raise). The one read of the sum is the caller's, when it asks.
    cuda, _, _, pk = cuda_kernels
    n = 1000
    d_theta = cuda.to_device(rng.standard_normal(n))
    d_g = cuda.to_device(rng.standard_normal(n))
    out, saved = cuda.device_array(n), cuda.device_array(n)
    ws = pk.ProbeWorkspace()
    calls = []

    def forbid(name):
        def f(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called during a device-resident probe")
        return f

    for name in ("device_array", "device_array_like", "to_device", "pinned_array", "mapped_array"):
        if hasattr(cuda, name):
            monkeypatch.setattr(cuda, name, forbid(f"cuda.{name}"))
    arr_type = type(d_theta)
    for name in ("copy_to_host", "copy_to_device"):
        monkeypatch.setattr(arr_type, name, forbid(f"{arr_type.__name__}.{name}"))
    for _ in range(3):
        pk.probe_into(d_theta, d_g, 0.01, out, ws=ws)
        pk.probe_save_into(d_theta, d_g, 0.01, saved, ws=ws)
        pk.sum_sq_into(d_g, ws=ws)
    monkeypatch.undo()
    assert calls == []
    assert ws.read() == pk.reference_tree_sum(d_g.copy_to_host())
