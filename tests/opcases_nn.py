"""Registry cases for the layer ops in qlabref/ops/nn_ops.py (small, odd, non-square shapes).

Each op gets one configuration here (stride 2 and padding 1 where the op has them); the wider sweep
over strides/paddings/kernels lives in tests/test_nn_ops.py.
"""
import numpy as np

import qlabref.nn.functional as F
from opcases import OpCase


def _torch():
    import torch

    return torch


def _tf():
    return _torch().nn.functional


def _distinct(rng, shapes, dtype):
    # distinct, well separated values: no ties inside a max-pool window within a difference step
    out = []
    for s in shapes:
        n = int(np.prod(s))
        out.append((rng.permutation(n) * 0.05 - n * 0.025).reshape(s).astype(dtype))
    return out


def _bn_inputs(rng, shapes, dtype):
    x = rng.standard_normal(shapes[0]) * 1.7 + 0.3
    w = rng.uniform(0.5, 1.5, shapes[1])
    b = rng.standard_normal(shapes[2])
    return [x.astype(dtype), w.astype(dtype), b.astype(dtype)]


def _bn_train(x, w, b):
    return F.batch_norm(x, None, None, w, b, training=True)


def _bn_train_torch(x, w, b):
    return _tf().batch_norm(x, None, None, w, b, training=True)


CASES = {
    "linear": OpCase(
        lambda x, w, b: F.linear(x, w, b),
        [((4, 5), (3, 5), (3,)), ((2, 3, 5), (4, 5), (4,))],
        lambda x, w, b: _tf().linear(x, w, b),
    ),
    "conv2d": OpCase(
        lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1),
        [((2, 3, 7, 5), (4, 3, 3, 3), (4,)), ((1, 2, 6, 9), (3, 2, 3, 2), (3,))],
        lambda x, w, b: _tf().conv2d(x, w, b, stride=2, padding=1),
    ),
    "max_pool2d": OpCase(
        lambda x: F.max_pool2d(x, 3, stride=2, padding=1),
        [((2, 3, 7, 5),), ((1, 2, 6, 9),)],
        lambda x: _tf().max_pool2d(x, 3, stride=2, padding=1),
        make=_distinct,
    ),
    "avg_pool2d": OpCase(
        lambda x: F.avg_pool2d(x, 3, stride=2, padding=1),
        [((2, 3, 7, 5),), ((1, 2, 6, 9),)],
        lambda x: _tf().avg_pool2d(x, 3, stride=2, padding=1),
    ),
    "adaptive_avg_pool2d": OpCase(
        lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
        [((2, 3, 7, 5),), ((1, 2, 6, 9),)],
        lambda x: _tf().adaptive_avg_pool2d(x, (3, 2)),
    ),
    "batch_norm": OpCase(
        _bn_train,
        [((4, 3, 5, 3), (3,), (3,)), ((6, 4), (4,), (4,))],
        _bn_train_torch,
        make=_bn_inputs,
    ),
}
