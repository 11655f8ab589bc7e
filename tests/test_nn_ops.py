"""Layer ops beyond the registry walk: central differences (float64) over a sweep of strides,
paddings, kernel shapes and odd, non-square inputs; PyTorch float64 on the same sweep; shapes drawn by
hypothesis; bad input.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import qlabref as qr
import qlabref.nn.functional as F
from roundoff import check_central_differences

CONV_CONFIGS = [
    # x shape, w shape, stride, padding
    ((2, 3, 7, 5), (4, 3, 3, 3), 1, 0),
    ((2, 3, 7, 5), (4, 3, 3, 3), 2, 1),
    ((1, 2, 6, 9), (3, 2, 3, 2), (2, 1), (1, 0)),
    ((2, 1, 5, 5), (2, 1, 5, 5), 1, 2),
    ((3, 2, 4, 7), (1, 2, 1, 1), 2, 0),
    ((1, 3, 9, 8), (2, 3, 4, 3), 3, 1),
]
POOL_CONFIGS = [((2, 3, 7, 5), 3, 2, 1), ((1, 2, 6, 9), 2, None, 0), ((2, 2, 8, 5), (3, 2), (2, 1), (1, 0)),
                ((1, 1, 5, 7), 2, 1, 1)]


def _t(a, grad=True):
    return qr.tensor(np.array(a, dtype=np.float64), requires_grad=grad)


@pytest.mark.parametrize("xs, ws, stride, padding", CONV_CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_central_differences(rng, xs, ws, stride, padding, bias):
    ins = [_t(rng.standard_normal(xs)), _t(rng.standard_normal(ws))] + ([_t(rng.standard_normal(ws[0]))] if bias else [])
    # relative 1e-6 plus the central-difference rounding floor (tests/roundoff.py): with one output
    # channel the bias gradient is one sum of 24 weights, which can cancel to ~0 (relative 1e-6 alone:
    # 7e-3 of 1037 draws above 1 % of the tolerance, a 1/x tail, ~7e-5 per run; with the floor, worst
    # 0.004 of the tolerance)
    errors = check_central_differences(lambda *a: F.conv2d(a[0], a[1], a[2] if bias else None, stride, padding), ins,
                                       seed=int(rng.integers(2**31)))
    for i, (err, tol) in errors.items():
        assert err <= tol, (i, err, tol)


@pytest.mark.torch
@pytest.mark.parametrize("xs, ws, stride, padding", CONV_CONFIGS)
def test_conv2d_matches_torch(torch, rng, xs, ws, stride, padding):
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    q = [_t(x), _t(w), _t(b)]
    out = F.conv2d(*q, stride=stride, padding=padding)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    tt = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    tout = torch.nn.functional.conv2d(*tt, stride=stride, padding=padding)
    tout.backward(torch.tensor(g))
    assert out.shape == tuple(tout.shape)
    assert qr.relative_error(out.data, tout.detach().numpy()) < 1e-12
    for a, t in zip(q, tt):
        assert qr.relative_error(a.grad, t.grad.numpy()) < 1e-12


@pytest.mark.parametrize("xs, k, s, p", POOL_CONFIGS)
@pytest.mark.parametrize("op", ["max", "avg", "avg_exclude_pad"])
def test_pools_central_differences(rng, xs, k, s, p, op):
    n = int(np.prod(xs))
    x = (rng.permutation(n) * 0.05).reshape(xs)  # distinct values: no ties in a max window
    if op == "max":
        fn = lambda a: F.max_pool2d(a, k, s, p)
    else:
        fn = lambda a: F.avg_pool2d(a, k, s, p, count_include_pad=(op == "avg"))
    errors = qr.gradcheck(fn, [_t(x)], seed=int(rng.integers(2**31)), raise_on_failure=False)
    assert errors[0] < 1e-6


@pytest.mark.torch
@pytest.mark.parametrize("xs, k, s, p", POOL_CONFIGS)
def test_pools_match_torch(torch, rng, xs, k, s, p):
    x = rng.standard_normal(xs)
    for ours, theirs in (
        (lambda a: F.max_pool2d(a, k, s, p), lambda a: torch.nn.functional.max_pool2d(a, k, s, p)),
        (lambda a: F.avg_pool2d(a, k, s, p), lambda a: torch.nn.functional.avg_pool2d(a, k, s, p)),
        (lambda a: F.avg_pool2d(a, k, s, p, count_include_pad=False),
         lambda a: torch.nn.functional.avg_pool2d(a, k, s, p, count_include_pad=False)),
    ):
        q = _t(x)
        out = ours(q)
        g = rng.standard_normal(out.shape)
        out.backward(g)
        t = torch.tensor(x, requires_grad=True)
        tout = theirs(t)
        tout.backward(torch.tensor(g))
        assert out.shape == tuple(tout.shape)
        assert qr.relative_error(out.data, tout.detach().numpy()) < 1e-12
        assert qr.relative_error(q.grad, t.grad.numpy()) < 1e-12


def test_max_pool_ties_route_to_the_first_maximum():
    """All-equal window: PyTorch's CPU kernel gives the whole gradient to the first element."""
    x = _t(np.ones((1, 1, 2, 2)))
    F.max_pool2d(x, 2).sum().backward()
    np.testing.assert_array_equal(x.grad, [[[[1.0, 0.0], [0.0, 0.0]]]])


@settings(max_examples=25)
@given(h=st.integers(1, 9), w=st.integers(1, 9), oh=st.integers(1, 4), ow=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1))
def test_adaptive_avg_pool_cells_property(h, w, oh, ow, seed):
    """Every output cell is the plain mean of PyTorch's cell [⌊iH/oh⌋, ⌈(i+1)H/oh⌉) (written here
    with a loop, independently of the op's matrix form); gradients equal central differences."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 1, h, w))
    out = F.adaptive_avg_pool2d(_t(x), (oh, ow))
    expect = np.empty((2, 1, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
            c0, c1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            expect[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    np.testing.assert_allclose(out.data, expect, rtol=1e-12, atol=1e-14)
    errors = qr.gradcheck(lambda a: F.adaptive_avg_pool2d(a, (oh, ow)), [_t(x)], seed=seed, raise_on_failure=False)
    assert errors[0] < 1e-6


@settings(max_examples=25)
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(3, 9), w=st.integers(3, 9), k=st.integers(1, 3),
       s=st.integers(1, 3), p=st.integers(0, 2), seed=st.integers(0, 2**31 - 1))
def test_conv2d_shape_property(n, c, h, w, k, s, p, seed):
    """Output shape is PyTorch's ⌊(H + 2p − k)/s⌋ + 1; each gradient has its input's shape; the
    output equals a direct sum over the kernel written here with loops."""
    rng = np.random.default_rng(seed)
    if h + 2 * p < k or w + 2 * p < k:
        return
    x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((2, c, k, k))
    xq, wq = _t(x), _t(wt)
    out = F.conv2d(xq, wq, stride=s, padding=p)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    assert out.shape == (n, 2, oh, ow)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    direct = np.zeros((n, 2, oh, ow))
    for a in range(oh):
        for b in range(ow):
            patch = xp[:, :, a * s:a * s + k, b * s:b * s + k]
            direct[:, :, a, b] = np.einsum("nckl,ockl->no", patch, wt)
    np.testing.assert_allclose(out.data, direct, rtol=1e-10, atol=1e-12)
    out.sum().backward()
    assert xq.grad.shape == x.shape and wq.grad.shape == wt.shape


def test_batch_norm_eval_uses_running_statistics(rng):
    """Eval mode: y = (x − running_mean)/√(running_var + ε)·γ + β, written out here."""
    x = rng.standard_normal((3, 4, 2, 5))
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    w, b = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    out = F.batch_norm(_t(x), rm.copy(), rv.copy(), _t(w), _t(b), training=False)
    expect = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5) * w[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(out.data, expect, rtol=1e-13, atol=1e-13 * np.abs(expect).max())


def test_batch_norm_running_update_formula_and_no_state_update(rng):
    x = rng.standard_normal((3, 2, 4, 5)) * 2 + 1
    rm, rv = np.zeros(2), np.ones(2)
    F.batch_norm(_t(x), rm, rv, training=True, momentum=0.1)
    n = 3 * 4 * 5
    np.testing.assert_allclose(rm, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * x.var(axis=(0, 2, 3)) * n / (n - 1), rtol=1e-13)
    before = (rm.copy(), rv.copy())
    with qr.no_state_update():
        F.batch_norm(_t(x), rm, rv, training=True)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, message", [
    (lambda: F.conv2d(_t(np.zeros((1, 2, 5, 5))), _t(np.zeros((3, 3, 3, 3)))), r"weight has 3 input channels, input has 2"),
    (lambda: F.conv2d(_t(np.zeros((2, 5, 5))), _t(np.zeros((3, 2, 3, 3)))), r"must be 4-D .*\(2, 5, 5\)"),
    (lambda: F.conv2d(_t(np.zeros((1, 1, 2, 2))), _t(np.zeros((1, 1, 3, 3)))), r"smaller than the kernel 3x3"),
    (lambda: F.conv2d(_t(np.zeros((1, 1, 5, 5))), _t(np.zeros((2, 1, 3, 3))), _t(np.zeros(3))), r"bias has shape \(3,\)"),
    (lambda: F.conv2d(_t(np.zeros((1, 1, 5, 5))), _t(np.zeros((2, 1, 3, 3))), stride=0), r"stride must be an int >= 1"),
    (lambda: F.linear(_t(np.zeros((4, 5))), _t(np.zeros((3, 6)))), r"input has 5 features .*\(4, 5\).*expects 6 .*\(3, 6\)"),
    (lambda: F.max_pool2d(_t(np.zeros((1, 1, 4, 4))), 2, padding=2), r"padding .* at most half the kernel"),
    (lambda: F.avg_pool2d(_t(np.zeros((1, 4, 4))), 2), r"must be 4-D"),
    (lambda: F.batch_norm(_t(np.zeros((2, 3, 4, 4))), np.zeros(2), np.ones(2)), r"running_mean has shape \(2,\).*3 channels"),
    (lambda: F.batch_norm(_t(np.zeros((1, 3, 1, 1))), None, None, training=True), r"more than 1 value per channel"),
])
def test_bad_input_names_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_nan_propagates_through_layers():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = np.nan
    for out in (F.conv2d(_t(x), _t(np.ones((1, 1, 2, 2)))), F.max_pool2d(_t(x), 2), F.avg_pool2d(_t(x), 2)):
        assert np.isnan(out.data[0, 0, 0, 0])
