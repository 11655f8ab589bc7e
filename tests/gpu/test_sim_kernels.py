"""Every CUDA kernel in Numba's CUDA simulator against NumPy, on small odd shapes (1×1, sizes that are
not multiples of the tile, K spanning several tiles), float32 and float64, with every output buffer
filled with NaN before the launch. Run with ``NUMBA_ENABLE_CUDASIM=1`` (see conftest.py)."""
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


# (M, K, N): 1×1; not multiples of TILE = 16; exact multiples; K over three tiles
MATMUL_SHAPES = [(1, 1, 1), (1, 17, 1), (17, 33, 5), (16, 16, 16), (3, 40, 19), (33, 2, 17)]


@pytest.mark.parametrize("dt", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("mkn", MATMUL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matmul_kernel(cuda_kernels, rng, dt, mkn):
    cuda, mm, _, _ = cuda_kernels
    m, k, n = mkn
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n)).astype(dt)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    for ta, tb in ((False, False), (True, False), (False, True), (True, True)):
        sa = np.ascontiguousarray(a.T) if ta else a  # stored transposed: the kernel reads it in place
        sb = np.ascontiguousarray(b.T) if tb else b
        out = _nan_device(cuda, (m, n), dt)
        mm.matmul_device(cuda.to_device(sa), cuda.to_device(sb), m, n, dt, ta, tb, out=out)
        c = out.copy_to_host()
        assert not np.isnan(c).any(), (ta, tb)
        assert _rel(c, ref) < TOL[dt] * max(1, k), (ta, tb)
    # the host wrapper with transposed views (no copies)
    c = api.matmul(np.asfortranarray(a), np.asfortranarray(b), device="cuda")
    assert c.dtype == dt and _rel(c, ref) < TOL[dt] * max(1, k)


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
@pytest.mark.parametrize("n,max_blocks", [(1, None), (127, None), (129, None), (1000, 3)],
                         ids=["n1", "n127", "n129", "n1000-gridstride"])
def test_probe_kernel(cuda_kernels, rng, dt, n, max_blocks):
    _, _, _, pk = cuda_kernels
    theta = rng.standard_normal(n).astype(dt)
    g = (rng.standard_normal(n) * 3).astype(dt)
    alpha = float(rng.uniform(0.01, 2))
    exact = math.fsum((g.astype(np.float64) ** 2).tolist())
    expected_point = theta + (-alpha) * g  # NumPy rounds alpha to dt first, as the kernel does
    sums = {}
    for det in (False, True):
        new, total = pk.probe_cuda(theta, g, alpha, det, max_blocks, out=np.full(n, np.nan, dt))
        np.testing.assert_allclose(new, expected_point, rtol=4 * np.finfo(dt).eps, atol=0)
        assert abs(total - exact) <= 1e-13 * max(exact, 1e-300)
        sums[det] = total
    # deterministic: equal to its reduction tree replayed in NumPy, bit for bit, and repeatable
    assert sums[True] == pk.reference_tree_sum(g, max_blocks)
    assert pk.probe_cuda(theta, g, alpha, True, max_blocks)[1] == sums[True]


def test_probe_sums_exactly_representable_data_exactly(cuda_kernels, rng):
    _, _, _, pk = cuda_kernels
    g = (rng.integers(-1000, 1000, 700) / 4.0).astype(np.float32)  # every partial sum is exact
    exact = sum(int(v) ** 2 for v in (g * 4).astype(np.int64)) / 16.0
    for det in (False, True):
        assert pk.probe_cuda(np.zeros_like(g), g, 0.5, det, 2)[1] == exact
    assert api.probe(np.zeros_like(g), g, 0.5, device="cuda", deterministic=True)[1] == exact
