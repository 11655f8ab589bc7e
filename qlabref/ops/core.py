"""The core differentiable ops, one ``Function`` each: forward and backward side by side.

Conventions (see ``qlabref.autograd``):
- ``forward(ctx, *arrays, **kw)`` and ``backward(ctx, g)`` see raw ndarrays, never Tensors.
- ``backward`` may return gradients in the broadcast shape; the engine reduces them to each input's
  shape (``unbroadcast``). ``backward`` never writes into ``g``.
- User errors (shapes, dtypes, labels) are ``ValueError`` s that name the op and the shapes.
"""
from __future__ import annotations

import numbers

import numpy as np
from scipy.special import expit

from .. import backends
from ..autograd import Function, unbroadcast
from .registry import register

_BASIC_INDEX = (int, np.integer, slice, type(None), type(Ellipsis))


def _broadcast_shape(name, a, b):
    sa, sb = a.shape, b.shape
    if sa == sb or not sb:  # the common cases (same shape, a scalar operand) need no NumPy call
        return sa
    if not sa:
        return sb
    try:
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{name}: shapes {a.shape} and {b.shape} cannot be broadcast together") from None


def _norm_axis(axis, ndim, name):
    """Normalise ``axis`` (None, int or tuple) to a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, numbers.Integral) and not isinstance(axis, bool):
        axes = (axis,)
    elif isinstance(axis, (tuple, list)):
        axes = tuple(axis)
    else:
        raise TypeError(f"{name}: axis must be None, an integer or a tuple of integers, got {axis!r}")
    out = []
    for ax in axes:
        if isinstance(ax, bool) or not isinstance(ax, numbers.Integral):
            raise TypeError(f"{name}: axis must be None, an integer or a tuple of integers, got {axis!r}")
        if not -ndim <= ax < max(ndim, 1):
            raise ValueError(f"{name}: axis {ax} is out of range for an array of {ndim} dimensions")
        out.append(int(ax) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: repeated axis in {axis}")
    return tuple(sorted(out))


def _one_axis(axis, ndim, name):
    """Check one integer axis of an array with ``ndim`` dimensions; return it as a non-negative int."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name}: axis must be an integer, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}: axis {axis} is out of range for an array of {ndim} dimensions")
    return int(axis) % ndim


def _expand_reduced(g, shape, axes, keepdims):
    """Broadcast the gradient of a reduction back to the input's ``shape``."""
    if not keepdims:
        g = np.expand_dims(g, axes) if axes else g
    return np.broadcast_to(g, shape)


# --------------------------------------------------------------------------- elementwise binary
@register("add")
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("add", a, b)
        return a + b

    @staticmethod
    def backward(ctx, g):
        return g, g


@register("sub")
class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("sub", a, b)
        return a - b

    @staticmethod
    def backward(ctx, g):
        return g, -g


@register("mul")
class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("mul", a, b)
        ctx.save(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return g * b, g * a


@register("div")
class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("div", a, b)
        ctx.save(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        ga = g / b
        gb = -ga * a / b if ctx.needs_input_grad[1] else None
        return ga, gb


@register("pow")
class Pow(Function):
    """a ** b. As in PyTorch: d/da is 0 where b == 0; d/db is 0 where a == 0 and b >= 0."""

    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("pow", a, b)
        out = np.power(a, b)
        ctx.save(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved
        ga = gb = None
        if ctx.needs_input_grad[0] and not ctx.needs_input_grad[1] and b.ndim == 0 and b == 2:
            # x ** 2 with a constant 2 (every quadratic test function): power(a, 1) is a, b != 0, so
            # this is the general formula below, bit for bit, without its errstate and where
            return (g * b * a).astype(g.dtype, copy=False), None
        if ctx.needs_input_grad[0]:
            with np.errstate(divide="ignore", invalid="ignore"):
                ga = np.where(b == 0, 0, g * b * np.power(a, b - 1)).astype(g.dtype, copy=False)
        if ctx.needs_input_grad[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                gb = np.where((a == 0) & (b >= 0), 0, g * out * np.log(a)).astype(g.dtype, copy=False)
        return ga, gb


@register("maximum")
class Maximum(Function):
    """Elementwise max. At ties the gradient is split in half between the inputs (PyTorch's rule)."""

    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("maximum", a, b)
        ctx.save(a, b)
        return np.maximum(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        w = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0)).astype(g.dtype, copy=False)
        return g * w, g * (1 - w)


@register("matmul")
class MatMul(Function):
    """a @ b with NumPy's matmul rules: 2-D, batched (broadcast batch dims) and 1-D operands."""

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: operands must be at least 1-D, got shapes {a.shape} and {b.shape}")
        k_a = a.shape[-1]
        k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if k_a != k_b:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} are not aligned ({k_a} != {k_b} in the inner dimension)"
            )
        if a.ndim > 2 or b.ndim > 2:
            try:
                np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            except ValueError:
                raise ValueError(
                    f"matmul: batch dimensions of shapes {a.shape} and {b.shape} cannot be broadcast"
                ) from None
        ctx.save(a, b)
        if a.ndim == 2 and b.ndim == 2:
            return backends.current().matmul(a, b)  # 2-D products go through the backend
        return np.matmul(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        if a.ndim == 2 and b.ndim == 2:
            be = backends.current()
            ga = be.matmul(g, b.T) if ctx.needs_input_grad[0] else None
            gb = be.matmul(a.T, g) if ctx.needs_input_grad[1] else None
            return ga, gb
        A = a if a.ndim > 1 else a[None, :]
        B = b if b.ndim > 1 else b[:, None]
        G = g
        if b.ndim == 1:
            G = G[..., None]  # (..., n) -> (..., n, 1)
        if a.ndim == 1:
            G = G[..., None, :]  # (..., m) -> (..., 1, m)
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(np.matmul(G, np.swapaxes(B, -1, -2)), A.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(np.matmul(np.swapaxes(A, -1, -2), G), B.shape).reshape(b.shape)
        return ga, gb


# --------------------------------------------------------------------------- elementwise unary
@register("neg")
class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return (-g,)


@register("exp")
class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * out,)


@register("log")
class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (g / a,)


@register("sqrt")
class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.sqrt(a)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g / (2 * out),)


@register("abs")
class Abs(Function):
    """|a|; the gradient at 0 is 0 (sign(0) = 0, as in PyTorch)."""

    @staticmethod
    def forward(ctx, a):
        ctx.save(a)
        return np.abs(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (g * np.sign(a),)


@register("sin")
class Sin(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save(a)
        return np.sin(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (g * np.cos(a),)


@register("cos")
class Cos(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save(a)
        return np.cos(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (-g * np.sin(a),)


@register("relu")
class ReLU(Function):
    """max(a, 0); the gradient at exactly 0 is 0 (PyTorch's rule)."""

    @staticmethod
    def forward(ctx, a):
        mask = a > 0
        ctx.save(mask)
        return a * mask

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved
        return (g * mask,)


@register("tanh")
class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.tanh(a)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * (1 - out * out),)


@register("sigmoid")
class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        out = expit(a)  # stable for large |a|
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * out * (1 - out),)


@register("cast")
class Cast(Function):
    """Change dtype (float32 <-> float64); the gradient is cast back.

    A cast to a non-float dtype has no gradient: refused for a tensor that requires grad (outside
    ``no_grad()``), where it would silently hand back a wrong, non-zero gradient."""

    @classmethod
    def apply(cls, a, dtype):
        from ..autograd import is_grad_enabled

        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"astype: {dtype!r} is not a dtype") from None
        if dt.kind not in "biuf":
            raise TypeError(f"astype: tensors hold numbers (bool, int, float), not {dt}")
        if getattr(a, "requires_grad", False) and is_grad_enabled() and dt not in (np.float32, np.float64):
            raise TypeError(f"astype: cannot cast a tensor that requires grad to {dt}: there is no gradient through "
                            "a cast to a non-float dtype (use .detach().astype(...) for the values)")
        return super().apply(a, dtype=dt)

    @staticmethod
    def forward(ctx, a, dtype):
        ctx.in_dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return (g.astype(ctx.in_dtype),)


# --------------------------------------------------------------------------- reductions
@register("sum")
class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes = _norm_axis(axis, a.ndim, "sum")
        ctx.shape, ctx.keepdims = a.shape, keepdims
        return np.asarray(a.sum(axis=ctx.axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        return (_expand_reduced(g, ctx.shape, ctx.axes, ctx.keepdims),)


@register("mean")
class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes = _norm_axis(axis, a.ndim, "mean")
        ctx.shape, ctx.keepdims = a.shape, keepdims
        ctx.count = int(np.prod([a.shape[i] for i in ctx.axes])) if a.ndim else 1
        return np.asarray(a.mean(axis=ctx.axes, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        return (_expand_reduced(g / ctx.count, ctx.shape, ctx.axes, ctx.keepdims),)


@register("max")
class Max(Function):
    """Maximum over ``axis``. Ties share the gradient equally (``torch.amax``'s rule)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        if a.size == 0:
            raise ValueError(f"max: cannot reduce an empty array of shape {a.shape}")
        ctx.axes = _norm_axis(axis, a.ndim, "max")
        ctx.keepdims = keepdims
        out = np.asarray(a.max(axis=ctx.axes, keepdims=keepdims))
        ctx.save(a, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, out = ctx.saved
        out_k = out if ctx.keepdims or not ctx.axes else np.expand_dims(out, ctx.axes)
        g_k = g if ctx.keepdims or not ctx.axes else np.expand_dims(g, ctx.axes)
        mask = (a == out_k).astype(g.dtype)
        return (mask * (g_k / mask.sum(axis=ctx.axes, keepdims=True)),)


# --------------------------------------------------------------------------- shape ops
@register("reshape")
class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        if isinstance(shape, numbers.Integral):
            shape = (shape,)
        if not isinstance(shape, (tuple, list)) or any(
                isinstance(n, bool) or not isinstance(n, numbers.Integral) for n in shape):
            raise TypeError(f"reshape: the shape must be integers, got {shape!r}")
        if any(n < -1 for n in shape) or sum(n == -1 for n in shape) > 1:
            raise ValueError(f"reshape: invalid shape {tuple(shape)} (sizes >= 0, at most one -1)")
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape an array of shape {a.shape} into shape {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.shape),)


@register("transpose")
class Transpose(Function):
    """Permute axes (``axes=None`` reverses them, like ``.T``)."""

    @staticmethod
    def forward(ctx, a, axes=None):
        if axes is None:
            axes = tuple(range(a.ndim))[::-1]
        else:
            axes = tuple(axes)
            for x in axes:
                if isinstance(x, bool) or not isinstance(x, numbers.Integral):
                    raise TypeError(f"transpose: axes must be integers, got {axes!r}")
                if not -a.ndim <= x < max(a.ndim, 1):
                    raise ValueError(f"transpose: axis {x} is out of range for an array of {a.ndim} dimensions")
            axes = tuple(int(x) % max(a.ndim, 1) for x in axes)
        if sorted(axes) != list(range(a.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the {a.ndim} axes of shape {a.shape}")
        ctx.inverse = tuple(np.argsort(axes))
        return np.transpose(a, axes)

    @staticmethod
    def backward(ctx, g):
        return (np.transpose(g, ctx.inverse),)


def _is_basic_index(index):
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, _BASIC_INDEX) for i in items)


@register("getitem")
class GetItem(Function):
    """``a[index]`` with ints, slices, None, Ellipsis, and integer/boolean arrays."""

    @staticmethod
    def forward(ctx, a, index):
        if hasattr(index, "data") and not isinstance(index, np.ndarray):  # a Tensor used as an index
            index = index.data
        if isinstance(index, tuple):
            index = tuple(i.data if hasattr(i, "data") and not isinstance(i, np.ndarray) else i for i in index)
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        try:
            return np.array(a[index], copy=True)
        except IndexError as e:
            raise IndexError(f"getitem: index {index!r} is invalid for shape {a.shape}: {e}") from None

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, dtype=g.dtype)
        if _is_basic_index(ctx.index):
            out[ctx.index] = g
        else:
            np.add.at(out, ctx.index, g)  # repeated indices accumulate
        return (out,)


@register("concatenate")
class Concatenate(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        if not arrays:
            raise ValueError("concatenate: need at least one tensor")
        if arrays[0].ndim == 0:
            raise ValueError("concatenate: zero-dimensional tensors cannot be concatenated (use stack)")
        axis = _one_axis(axis, arrays[0].ndim, "concatenate")
        try:
            out = np.concatenate(arrays, axis=axis)
        except ValueError as e:
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise ValueError(f"concatenate: shapes {shapes} do not fit along axis {axis}: {e}") from None
        ctx.axis = axis % out.ndim
        ctx.splits = np.cumsum([a.shape[ctx.axis] for a in arrays])[:-1]
        return out

    @staticmethod
    def backward(ctx, g):
        return tuple(np.split(g, ctx.splits, axis=ctx.axis))


@register("stack")
class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        if not arrays:
            raise ValueError("stack: need at least one tensor")
        if len({a.shape for a in arrays}) != 1:
            shapes = ", ".join(str(a.shape) for a in arrays)
            raise ValueError(f"stack: all tensors must have the same shape, got {shapes}")
        axis = _one_axis(axis, arrays[0].ndim + 1, "stack")
        out = np.stack(arrays, axis=axis)
        ctx.axis = axis
        ctx.n = len(arrays)
        return out

    @staticmethod
    def backward(ctx, g):
        return tuple(np.take(g, i, axis=ctx.axis) for i in range(ctx.n))


# --------------------------------------------------------------------------- losses
def _log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)  # stable for logits of +-1e4 and beyond
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@register("log_softmax")
class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, a, axis=-1):
        if a.ndim == 0:
            raise ValueError("log_softmax: needs at least a 1-D tensor, got a scalar")
        axis = _one_axis(axis, a.ndim, "log_softmax")
        ctx.axis = axis
        out = _log_softmax(a, axis)
        ctx.save(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g - np.exp(out) * g.sum(axis=ctx.axis, keepdims=True),)


@register("cross_entropy")
class CrossEntropy(Function):
    """Mean (or sum) over the batch of −log softmax(logits)[label]; ``labels`` is an int array."""

    @staticmethod
    def forward(ctx, logits, *, labels, reduction="mean"):
        labels = np.asarray(labels.data if hasattr(labels, "data") and not isinstance(labels, np.ndarray) else labels)
        if logits.ndim != 2:
            raise ValueError(f"cross_entropy: logits must have shape (N, C), got {logits.shape}")
        n, c = logits.shape
        if labels.shape != (n,):
            raise ValueError(f"cross_entropy: labels must have shape ({n},) to match logits {logits.shape}, got {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
        if n and (labels.min() < 0 or labels.max() >= c):
            bad = labels[(labels < 0) | (labels >= c)][0]
            raise ValueError(f"cross_entropy: label {bad} is out of range for {c} classes")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"cross_entropy: reduction must be 'mean' or 'sum', got {reduction!r}")
        logp = _log_softmax(logits, axis=1)
        picked = logp[np.arange(n), labels]
        ctx.save(logp, labels)
        ctx.scale = 1.0 / n if reduction == "mean" else 1.0
        return np.asarray(-picked.sum() * ctx.scale, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, g):
        logp, labels = ctx.saved
        grad = np.exp(logp)
        grad[np.arange(len(labels)), labels] -= 1
        return (grad * (g * ctx.scale).astype(grad.dtype),)
