"""Gradient storage (PyTorch's set_to_none) and the fast per-op paths of the engine (issue 22 §2,
issue 21 item 5). Oracles: closed-form gradients, finite differences, the general code path."""
import subprocess
import sys

import numpy as np
import pytest

import qlabref as qr
from qlabref import backends


def test_optimizer_zero_grad_sets_none_and_backward_assigns(rng):
    p = qr.tensor(rng.standard_normal(3), requires_grad=True)
    q = qr.tensor(rng.standard_normal(2), requires_grad=True)
    opt = qr.optim.SGD([p, q], lr=0.1)
    (p * p).sum().backward()
    (q * 3.0).sum().backward()
    opt.zero_grad()
    assert p.grad is None and q.grad is None
    (p * p).sum().backward()
    np.testing.assert_array_equal(p.grad, 2 * p.data)
    assert q.grad is None
    opt.zero_grad(set_to_none=False)  # torch's other mode: zeros in place
    assert q.grad is None and np.array_equal(p.grad, np.zeros(3))


def test_parameter_without_gradient_is_skipped_by_the_step(rng):
    """As in torch: a parameter the loss does not reach keeps .grad None and is not updated, even
    with weight decay or momentum (the old zero-fill stepped it with a zero gradient)."""
    a, b = rng.standard_normal(3), rng.standard_normal(2)
    for name, kw in (("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.1)), ("adam", dict(lr=0.1, weight_decay=0.1))):
        p = qr.tensor(a.copy(), requires_grad=True)
        q = qr.tensor(b.copy(), requires_grad=True)
        opt = qr.optim.get(name, [p, q], **kw)
        for _ in range(3):
            opt.step(lambda: (p * p).sum())
        assert q.grad is None and np.array_equal(q.data, b)
        assert q not in opt.state or not opt.state[q]
        assert not np.array_equal(p.data, a)


def test_one_upstream_array_feeding_two_leaves_is_not_shared():
    x = qr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = qr.tensor(np.array([3.0, 4.0]), requires_grad=True)
    (x + y).sum().backward()  # Add hands the same gradient array to both inputs
    assert not np.shares_memory(x.grad, y.grad)
    (x * 5.0).sum().backward()  # accumulates into x.grad in place
    np.testing.assert_array_equal(x.grad, [6.0, 6.0])
    np.testing.assert_array_equal(y.grad, [1.0, 1.0])


def test_callers_backward_grad_is_never_adopted():
    x = qr.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x + 0.0  # Add passes the caller's array through unchanged
    seed = np.array([1.0, 1.0])
    y.backward(seed)
    assert not np.shares_memory(x.grad, seed)
    x.grad[...] = 7.0
    np.testing.assert_array_equal(seed, [1.0, 1.0])


def test_leaf_gradient_adopted_from_an_op_accumulates_correctly(rng):
    a = rng.standard_normal((4, 3))
    w = qr.tensor(a, requires_grad=True)
    x = rng.standard_normal((5, 4))
    for k in range(1, 4):  # fresh, then accumulated in place twice
        (qr.tensor(x) @ w).sum().backward()
        np.testing.assert_allclose(w.grad, k * x.sum(axis=0)[:, None] * np.ones((1, 3)), rtol=1e-14)
    assert w.grad.flags.writeable and w.grad.dtype == np.float64


def test_module_zero_grad_defaults_to_none_and_keeps_flat_views(rng):
    m = qr.models.mlp((4, 3, 2), dtype=np.float64, seed=0)
    x = qr.tensor(rng.standard_normal((5, 4)))
    m(x).sum().backward()
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    flat = m.flat_grads()
    m(x).sum().backward()
    m.zero_grad()
    assert all(p.grad is not None and np.shares_memory(p.grad, flat) for p in m.parameters())
    assert not flat.any()
    m(x).sum().backward()
    once = flat.copy()
    opt = qr.optim.SGD(m.parameters(), lr=0.0)
    opt.zero_grad()  # the optimizer's set_to_none also keeps views into a flat buffer
    assert all(np.shares_memory(p.grad, flat) for p in m.parameters()) and not flat.any()
    m(x).sum().backward()
    np.testing.assert_array_equal(flat, once)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_square_fast_path_equals_the_general_power_gradient(rng, dtype):
    a = rng.standard_normal(7).astype(dtype)
    g = rng.standard_normal(7).astype(dtype)
    x = qr.tensor(a, requires_grad=True)
    (x ** 2).backward(g)  # constant exponent 2: the fast path
    e = qr.tensor(np.array(2.0, dtype=dtype), requires_grad=True)
    x2 = qr.tensor(a, requires_grad=True)
    (x2 ** e).backward(g)  # exponent requiring grad: the general formula
    assert x.grad.dtype == dtype
    np.testing.assert_array_equal(x.grad, x2.grad)
    np.testing.assert_allclose(x.grad, 2 * a * g, rtol=4 * np.finfo(dtype).eps)


def test_constant_operands_take_the_tensor_dtype():
    for dtype in (np.float32, np.float64):
        x = qr.tensor(np.ones(2, dtype=dtype), requires_grad=True)
        for y in (x * 2, 2 * x, x + 3, x - True, x / 2.5, x ** 2):
            assert y.dtype == dtype
    i = qr.tensor(np.array([1, 2]))
    assert (i * 2).dtype == np.int64 and (i * 0.5).dtype == np.float64


def test_no_grad_is_a_reentrant_decorator_and_context():
    x = qr.tensor(np.ones(2), requires_grad=True)

    @qr.no_grad()
    def f(depth):
        assert not qr.is_grad_enabled()
        return (x * 2) if depth == 0 else f(depth - 1)

    assert not f(3).requires_grad and qr.is_grad_enabled()
    with qr.no_grad():
        with qr.enable_grad():
            assert (x * 2).requires_grad
        assert not (x * 2).requires_grad
    assert (x * 2).requires_grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 1000, backends.SMALL_PROBE - 1, backends.SMALL_PROBE, 3 * backends.SMALL_PROBE + 5])
def test_probe_primitives_small_and_large_agree_with_numpy(rng, dtype, n):
    """Below SMALL_PROBE the CPU probe runs in NumPy, above it the Numba kernel: either way
    θ − α·g equals NumPy's bits and Σg² (float64) NumPy's sum to rounding."""
    theta = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    alpha = 0.37
    be = backends.Backend()
    expected = theta - dtype(alpha) * g
    s_ref = float(np.sum(g.astype(np.float64) ** 2))
    out = np.full_like(theta, np.nan)
    assert be.probe(theta, g, alpha, out) == pytest.approx(s_ref, rel=1e-12)
    np.testing.assert_array_equal(out, expected)
    saved = np.full_like(theta, np.nan)
    th = theta.copy()
    assert be.probe_save(th, g, alpha, saved) == pytest.approx(s_ref, rel=1e-12)
    np.testing.assert_array_equal(saved, theta)
    np.testing.assert_array_equal(th, expected)
    assert be.sq_norm(g) == pytest.approx(s_ref, rel=1e-12)


def test_a_2d_run_needs_no_numba():
    """The demo's job (2-D functions, QLABGrad/SGD/Adam) never imports Numba: no compilation on a
    first run, no thread pool for two-element arrays."""
    code = ("import sys, qlabref as qr\n"
            "for opt, kw in (('qlabgrad', {}), ('sgd', {'lr': 0.01}), ('adam', {'lr': 0.1})):\n"
            "    qr.trajectory('himmelblau', opt, steps=20, **kw)\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
