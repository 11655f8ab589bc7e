"""Test cases for the core ops in qlabref/ops/core.py (one per registry entry)."""
import numpy as np

import qlabref as qr
from opcases import OpCase

# Shapes that force broadcasting: equal, (3,1)x(1,4), (5,)x(2,5), scalar x matrix, matrix x scalar.
BROADCAST = [((3, 4), (3, 4)), ((3, 1), (1, 4)), ((5,), (2, 5)), ((), (2, 3)), ((2, 3), ())]
UNARY = [((),), ((5,),), ((3, 4),), ((1, 4),), ((4, 1),)]


def _normal(rng, shapes, dtype):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _positive(rng, shapes, dtype):
    return [rng.uniform(0.5, 2.0, s).astype(dtype) for s in shapes]


def _away_from_zero(rng, shapes, dtype):
    # |x| in [0.2, 1.5] with random sign: no kink (relu, abs) within a central-difference step
    return [(rng.choice([-1.0, 1.0], s) * rng.uniform(0.2, 1.5, s)).astype(dtype) for s in shapes]


def _div(rng, shapes, dtype):
    a = rng.standard_normal(shapes[0])
    b = rng.choice([-1.0, 1.0], shapes[1]) * rng.uniform(0.5, 2.0, shapes[1])
    return [a.astype(dtype), b.astype(dtype)]


def _pow(rng, shapes, dtype):
    return [rng.uniform(0.5, 2.0, shapes[0]).astype(dtype), rng.uniform(-2.0, 2.0, shapes[1]).astype(dtype)]


def _distinct(rng, shapes, dtype):
    # a permutation of well-separated values: no ties (max, maximum) within a central-difference step
    out = []
    for s in shapes:
        n = int(np.prod(s)) if s else 1
        vals = rng.permutation(n) * 0.37 + rng.uniform(-0.05, 0.05)
        out.append(np.asarray(vals - vals.mean()).reshape(s).astype(dtype))
    return out


def _maximum(rng, shapes, dtype):
    # both operands drawn from one set of distinct values, then split: no ties
    a_shape, b_shape = shapes
    n_a = int(np.prod(a_shape)) if a_shape else 1
    n_b = int(np.prod(b_shape)) if b_shape else 1
    vals = rng.permutation(n_a + n_b) * 0.37
    return [vals[:n_a].reshape(a_shape).astype(dtype), vals[n_a:].reshape(b_shape).astype(dtype)]


def _labels(n, c):
    return np.arange(n) % c


CASES = {
    "add": OpCase(lambda a, b: a + b, BROADCAST, lambda a, b: a + b),
    "sub": OpCase(lambda a, b: a - b, BROADCAST, lambda a, b: a - b),
    "mul": OpCase(lambda a, b: a * b, BROADCAST, lambda a, b: a * b),
    "div": OpCase(lambda a, b: a / b, BROADCAST, lambda a, b: a / b, make=_div),
    "pow": OpCase(lambda a, b: a ** b, BROADCAST, lambda a, b: a ** b, make=_pow),
    "maximum": OpCase(lambda a, b: qr.maximum(a, b), BROADCAST, lambda a, b: a.maximum(b), make=_maximum),
    "matmul": OpCase(
        lambda a, b: a @ b,
        [((3, 4), (4, 2)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (4, 3)), ((3, 4), (4,)), ((4,), (4,))],
        lambda a, b: a @ b,
    ),
    "neg": OpCase(lambda a: -a, UNARY, lambda a: -a),
    "exp": OpCase(lambda a: a.exp(), UNARY, lambda a: a.exp()),
    "log": OpCase(lambda a: a.log(), UNARY, lambda a: a.log(), make=_positive),
    "sqrt": OpCase(lambda a: a.sqrt(), UNARY, lambda a: a.sqrt(), make=_positive),
    "abs": OpCase(lambda a: a.abs(), UNARY, lambda a: a.abs(), make=_away_from_zero),
    "sin": OpCase(lambda a: a.sin(), UNARY, lambda a: a.sin()),
    "cos": OpCase(lambda a: a.cos(), UNARY, lambda a: a.cos()),
    "relu": OpCase(lambda a: a.relu(), UNARY, lambda a: a.relu(), make=_away_from_zero),
    "tanh": OpCase(lambda a: a.tanh(), UNARY, lambda a: a.tanh()),
    "sigmoid": OpCase(lambda a: a.sigmoid(), UNARY, lambda a: a.sigmoid()),
    # Cast: float64 -> float64 is the identity (a pass-through backward); the float32 -> float64
    # direction is checked in tests/test_autograd.py::test_cast_gradient_dtype.
    "cast": OpCase(lambda a: a.astype(np.float64) * a, UNARY, lambda a: a.to(a.dtype) * a),
    "sum": OpCase(
        lambda a: a.sum(axis=(0, 2)), [((2, 3, 4),), ((3, 1, 2),)], lambda a: a.sum(dim=(0, 2))
    ),
    "mean": OpCase(
        lambda a: a.mean(axis=1, keepdims=True), [((2, 3, 4),), ((4, 5),)], lambda a: a.mean(dim=1, keepdim=True)
    ),
    "max": OpCase(
        lambda a: a.max(axis=-1), [((2, 3, 4),), ((5, 3),), ((6,),)], lambda a: a.amax(dim=-1), make=_distinct
    ),
    "reshape": OpCase(lambda a: a.reshape(2, -1) * a.reshape(2, -1), [((3, 4),), ((2, 3, 2),)], lambda a: a.reshape(2, -1) ** 2),
    "transpose": OpCase(
        lambda a: a.transpose(2, 0, 1) * 1.5, [((2, 3, 4),), ((1, 2, 3),)], lambda a: a.permute(2, 0, 1) * 1.5
    ),
    "getitem": OpCase(
        lambda a: a[1:3, ::2] * a[[0, 0, 2], 1:2].sum(), [((4, 5),), ((3, 3),)], lambda a: a[1:3, ::2] * a[[0, 0, 2], 1:2].sum()
    ),
    "concatenate": OpCase(
        lambda a, b: qr.concatenate([a, b, a], axis=1), [((2, 3), (2, 4)), ((1, 2), (1, 1))],
        lambda a, b: __import__("torch").cat([a, b, a], dim=1),
    ),
    "stack": OpCase(
        lambda a, b: qr.stack([a, b], axis=1), [((2, 3), (2, 3)), ((4,), (4,))],
        lambda a, b: __import__("torch").stack([a, b], dim=1),
    ),
    "log_softmax": OpCase(
        lambda a: qr.log_softmax(a, axis=-1), [((4, 5),), ((2, 3, 4),), ((6,),)], lambda a: a.log_softmax(dim=-1)
    ),
    "cross_entropy": OpCase(
        lambda a: qr.cross_entropy(a, _labels(*a.shape)),
        [((4, 5),), ((1, 3),), ((7, 2),)],
        lambda a: __import__("torch").nn.functional.cross_entropy(
            a, __import__("torch").as_tensor(_labels(*a.shape))
        ),
    ),
}
