"""Engine semantics: graph traversal, accumulation, release, dtype rules, errors, NaN propagation."""
import gc
import sys
import weakref

import numpy as np
import pytest

import qlabref as qr
from qlabref.autograd import Function
from qlabref.gradcheck import GradcheckError


def test_deep_chain_backprop_without_recursion_error():
    n = 2000 if sys.getrecursionlimit() > 2000 else 3 * sys.getrecursionlimit()
    n = max(n, 2000)
    c = 1.0001
    x = qr.tensor(np.array(0.7), requires_grad=True)
    y = x
    for _ in range(n):
        y = y * c + 0.001
    y.backward()
    assert x.grad == pytest.approx(c**n, rel=1e-12)


def test_reused_node_diamond():
    x = qr.tensor(np.array([1.5, -2.0]), requires_grad=True)
    h = x * x  # used twice below
    y = (h + h * x + x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 3 * x.data**2 + 1, rtol=1e-15)


def test_gradients_accumulate_across_backward_calls(rng):
    a = rng.standard_normal((3, 2))
    x = qr.tensor(a, requires_grad=True)
    (x * 2).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 + 2 * a, rtol=1e-15)
    x.zero_grad()
    assert x.grad is None


def test_accumulation_writes_into_existing_grad_view(rng):
    flat = np.zeros(6)
    x = qr.tensor(rng.standard_normal(6)[:4].copy(), requires_grad=True)
    x.grad = flat[1:5]  # a view into a flat buffer
    (x * 3).sum().backward()
    assert np.shares_memory(x.grad, flat)
    np.testing.assert_array_equal(flat, [0, 3, 3, 3, 3, 0])


def test_graph_is_released_after_backward():
    x = qr.tensor(np.ones(3), requires_grad=True)
    h = x.exp()
    ref = weakref.ref(h)
    y = (h * 2).sum()
    del h
    gc.collect()
    assert ref() is not None, "the graph should hold the intermediate until backward"
    y.backward()
    gc.collect()
    assert ref() is None, "backward should release the graph's intermediates"
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_retain_graph_allows_second_backward():
    x = qr.tensor(np.array([2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, [8.0])


def test_non_scalar_backward_needs_grad():
    x = qr.tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 3\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        y.backward(np.ones(3))
    y.backward(np.full((2, 3), 0.5))
    np.testing.assert_allclose(x.grad, np.ones((2, 3)))


def test_backward_through_input_without_grad_is_a_no_op(rng):
    c = qr.tensor(rng.standard_normal(4))
    x = qr.tensor(rng.standard_normal(4), requires_grad=True)
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(x.grad, c.data)
    with pytest.raises(RuntimeError, match="does not require grad"):
        (c * 2).sum().backward()


def test_nan_and_inf_propagate():
    x = qr.tensor(np.array([1.0, np.inf, np.nan, -1.0]), requires_grad=True)
    y = (x * x).sum() + x.relu().sum()
    assert np.isnan(y.item())
    y.backward()
    assert np.isinf(x.grad[1]) and np.isnan(x.grad[2])
    assert x.grad[0] == 3.0 and x.grad[3] == -2.0
    z = qr.tensor(np.array([-1.0]), requires_grad=True)
    with np.errstate(invalid="ignore"):
        out = z.log()
    assert np.isnan(out.data[0])


def test_no_grad_builds_no_graph():
    x = qr.tensor(np.ones(2), requires_grad=True)
    with qr.no_grad():
        y = x * 2
        assert not qr.is_grad_enabled()
        with qr.enable_grad():
            assert (x * 3).requires_grad
    assert not y.requires_grad and y._node is None
    assert qr.is_grad_enabled()

    @qr.no_grad()
    def f(t):
        return t * 2

    assert not f(x).requires_grad


def test_dtype_rules():
    assert qr.tensor(np.zeros(2)).dtype == np.float64
    assert qr.tensor(np.zeros(2, dtype=np.float32)).dtype == np.float32
    assert qr.tensor(1.5).dtype == np.float32
    assert qr.tensor([1.0, 2.0]).dtype == np.float32
    assert qr.tensor(np.float64(1.5)).dtype == np.float64
    assert qr.tensor([1, 2]).dtype == np.int64
    x32 = qr.tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    assert (x32 * 2.0).dtype == np.float32 and (2.0 / x32).dtype == np.float32 and (x32**2.0).dtype == np.float32
    x64 = qr.tensor(np.ones(2), requires_grad=True)
    assert (x64 * 2.0).dtype == np.float64
    with pytest.raises(TypeError, match="int64"):
        qr.tensor([1, 2], requires_grad=True)


def test_cast_gradient_dtype(rng):
    x = qr.tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True)
    y = (x.astype(np.float64) ** 2).sum()
    assert y.dtype == np.float64
    y.backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, 2 * x.data.astype(np.float64), rtol=1e-7)


def test_scalar_operands_on_both_sides(rng):
    a = rng.uniform(0.5, 2.0, (2, 3))
    cases = [
        (lambda x: 3.0 + x, lambda a: np.ones_like(a)),
        (lambda x: x - 3.0, lambda a: np.ones_like(a)),
        (lambda x: 3.0 - x, lambda a: -np.ones_like(a)),
        (lambda x: 2.5 * x, lambda a: np.full_like(a, 2.5)),
        (lambda x: x / 4.0, lambda a: np.full_like(a, 0.25)),
        (lambda x: 4.0 / x, lambda a: -4.0 / a**2),
        (lambda x: x**3, lambda a: 3 * a**2),
        (lambda x: 2.0**x, lambda a: np.log(2.0) * 2.0**a),
        (lambda x: np.full((2, 3), 2.0) * x, lambda a: np.full_like(a, 2.0)),  # ndarray on the left
    ]
    for fn, dfn in cases:
        x = qr.tensor(a.copy(), requires_grad=True)
        out = fn(x)
        assert isinstance(out, qr.Tensor)
        out.sum().backward()
        np.testing.assert_allclose(x.grad, dfn(a), rtol=1e-14)


def test_advanced_index_repeats_accumulate():
    x = qr.tensor(np.arange(5.0), requires_grad=True)
    x[np.array([0, 0, 3])].sum().backward()
    np.testing.assert_array_equal(x.grad, [2, 0, 0, 1, 0])
    y = qr.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    (y[1] * 2 + y[0, ::2].sum()).sum().backward()
    np.testing.assert_array_equal(y.grad, [[3, 0, 3], [2, 2, 2]])


def test_shape_errors_name_both_shapes():
    a, b = qr.tensor(np.ones((3, 4))), qr.tensor(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"matmul.*\(3, 4\).*\(5, 2\)"):
        a @ b
    with pytest.raises(ValueError, match=r"add.*\(3, 4\).*\(5, 2\)"):
        a + b
    with pytest.raises(ValueError, match=r"mul.*\(3, 4\).*\(2,\)"):
        a * np.ones(2)
    with pytest.raises(ValueError, match=r"batch dimensions"):
        qr.tensor(np.ones((2, 3, 4))) @ qr.tensor(np.ones((3, 4, 2)))
    with pytest.raises(ValueError, match=r"reshape.*\(3, 4\).*\(5,\)"):
        a.reshape(5)
    with pytest.raises(ValueError, match="axis 2"):
        a.sum(axis=2)


def test_cross_entropy_stable_and_checked():
    logits = qr.tensor(np.array([[1e4, -1e4, 0.0], [0.0, 1e4, -1e4]]), requires_grad=True)
    loss = qr.cross_entropy(logits, np.array([0, 0]))
    assert loss.item() == pytest.approx((0 + 1e4) / 2, rel=1e-15)
    loss.backward()
    np.testing.assert_allclose(logits.grad, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-15)
    assert np.isfinite(qr.log_softmax(logits, axis=1).data).all()
    with pytest.raises(ValueError, match="label 3 is out of range for 3 classes"):
        qr.cross_entropy(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        qr.cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="integers"):
        qr.cross_entropy(logits, np.array([0.0, 1.0]))


def test_tensor_basics(rng):
    a = rng.standard_normal((2, 2))
    x = qr.tensor(a, requires_grad=True)
    d = x.detach()
    assert not d.requires_grad and np.shares_memory(d.data, x.data)
    assert x.numpy() is x.data and x.shape == (2, 2) and x.ndim == 2 and x.size == 4
    assert qr.tensor(np.array([[3.5]])).item() == 3.5
    with pytest.raises(ValueError, match="one-element"):
        x.item()
    assert isinstance(np.ones((2, 2)) + x, qr.Tensor)
    np.testing.assert_array_equal(x.T.data, a.T)
    assert "requires_grad=True" in repr(x)


class _WrongSquare(Function):
    name = "wrong_square"

    @staticmethod
    def forward(ctx, a):
        ctx.save(a)
        return a * a

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (3 * a * g,)  # wrong on purpose: d(a²)/da = 2a


def test_gradcheck_catches_a_wrong_gradient(rng):
    x = qr.tensor(rng.uniform(0.5, 1.5, (3,)), requires_grad=True)
    with pytest.raises(GradcheckError):
        qr.gradcheck(lambda t: _WrongSquare.apply(t), [x])
    with pytest.raises(AssertionError):
        qr.gradcheck_projection(lambda t: _WrongSquare.apply(t).sum(), [x])
    assert qr.gradcheck(lambda t: (t * t), [x])[0] < 1e-8
    assert qr.gradcheck_projection(lambda t: (t * t).sum(), [x]) < 1e-8
