"""The reverse-mode engine: Function/Context, ``apply``, the iterative backward pass, ``no_grad``.

How a step flows (read this file top to bottom):

1. An operator on Tensors (``a * b``) calls ``Mul.apply(a, b)``.
2. ``Function.apply`` unwraps the Tensors into raw ``np.ndarray`` s, runs ``forward(ctx, *arrays)``
   and, when gradients are wanted, wraps the result in a Tensor that remembers
   ``(function, ctx, parents)``.
3. ``Tensor.backward()`` sorts the graph topologically with an explicit stack (no recursion, so a
   2,000-layer chain works), walks it in reverse, calls each ``backward(ctx, grad_out)`` and
   **reduces every input gradient to that input's shape in one place** (``unbroadcast``), so no op
   has to think about NumPy broadcasting in its backward.
4. Leaf tensors accumulate into ``.grad`` (``+=`` in place, so a ``.grad`` that is a view into a
   flat buffer stays a view); the graph's saved arrays are released afterwards.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

__all__ = [
    "Context",
    "Function",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "no_state_update",
    "is_state_update_enabled",
    "unbroadcast",
    "backward",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: set by ``qlabref.device`` once an array has gone to the GPU; until then ``apply`` never looks
_device_active = False


def _on_device(x) -> bool:
    """A ``qlabref.device.DeviceArray`` (GPU-resident data), tested without importing the module."""
    return getattr(type(x), "__qlabref_device__", False)


class _Flags(threading.local):
    def __init__(self):
        self.grad_enabled = True
        self.state_update_enabled = True


_flags = _Flags()


def is_grad_enabled() -> bool:
    """True unless inside ``no_grad()``."""
    return _flags.grad_enabled


@contextlib.contextmanager
def _set_grad(enabled: bool):
    previous = _flags.grad_enabled
    _flags.grad_enabled = enabled
    try:
        yield
    finally:
        _flags.grad_enabled = previous


def no_grad():
    """Context manager (and decorator): no graph is built inside, as ``torch.no_grad``."""
    return _set_grad(False)


def enable_grad():
    """Context manager that turns graph building back on (used around optimizer closures)."""
    return _set_grad(True)


def is_state_update_enabled() -> bool:
    """False inside ``no_state_update()``: layers with running state (BatchNorm) must not update it."""
    return _flags.state_update_enabled


@contextlib.contextmanager
def no_state_update():
    """Forward passes inside this block leave module state alone.

    BatchNorm in training mode still normalises with the batch statistics but does not touch its
    running mean/variance or ``num_batches_tracked``. Optimizers run their probe forwards (QLAB's
    g(ᾱ), LQA's L(θ ± δd), FindPLR) inside this block so that probing never changes the model.
    """
    previous = _flags.state_update_enabled
    _flags.state_update_enabled = False
    try:
        yield
    finally:
        _flags.state_update_enabled = previous


class Context:
    """Scratch space a Function's forward leaves for its backward (``ctx.save(...)``, attributes)."""

    __slots__ = ("saved", "__dict__")

    def __init__(self):
        self.saved = ()

    def save(self, *arrays):
        self.saved = arrays

    def release(self):
        self.saved = ()
        self.__dict__.clear()


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Reduce ``grad`` (shape of a broadcast result) back to ``shape`` (the input's shape).

    HIPS/autograd's algorithm: sum the leading axes that broadcasting added, then sum (keepdims)
    the axes where the input had size 1.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Function:
    """One differentiable op. Subclasses write ``forward(ctx, *arrays, **kw)`` and
    ``backward(ctx, grad_out)`` on raw ndarrays (never Tensors).

    ``backward`` returns one gradient per Tensor input (``None`` where not needed); gradients may have
    the broadcast shape, the engine reduces them (``unbroadcast``) and asserts the final shape.
    """

    #: set by ``qlabref.ops.registry.register``; used in error messages
    name = "function"

    @staticmethod
    def forward(ctx, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_out):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **kwargs):
        from .tensor import Tensor, as_tensor

        # Non-tensor operands (python scalars, arrays) become constants in the dtype of the
        # tensor operands, so float32 * 2.0 stays float32 (as in PyTorch).
        ref = next((x for x in inputs if isinstance(x, Tensor)), None)
        dtype = ref.data.dtype if ref is not None and ref.data.dtype in _FLOAT_DTYPES else None
        tensors = [x if isinstance(x, Tensor) else as_tensor(x, dtype=dtype) for x in inputs]
        if _device_active and any(_on_device(t.data) for t in tensors):
            from .device import twin

            cls = twin(cls)  # the device version where the op's NumPy code cannot run on the GPU
        ctx = Context()
        out = cls.forward(ctx, *[t.data for t in tensors], **kwargs)
        needs = is_grad_enabled() and any(t.requires_grad for t in tensors)
        result = Tensor._from_op(out, requires_grad=needs)
        if needs:
            ctx.needs_input_grad = tuple(t.requires_grad for t in tensors)
            result._node = (cls, ctx, tuple(tensors))
        return result


class _Freed:
    """Stands in for the (function, ctx, parents) triple of a node after backward released it."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


def _topological_order(root):
    """Nodes reachable from ``root`` that need gradients, parents before children (iterative DFS)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._node is not None and not isinstance(node._node, _Freed):
            for parent in node._node[2]:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def _accumulate_leaf(leaf, grad):
    if grad.dtype != leaf.data.dtype:
        grad = grad.astype(leaf.data.dtype)
    if leaf.grad is None and _on_device(grad):
        leaf.grad = grad.copy()  # device to device
    elif leaf.grad is None:
        leaf.grad = np.array(grad, dtype=leaf.data.dtype, copy=True)
    else:
        # In place, so that a .grad which is a view into a flat buffer keeps being that view.
        np.add(leaf.grad, grad, out=leaf.grad)


def backward(root, grad=None, retain_graph=False):
    """Backpropagate from ``root``; see ``Tensor.backward``."""
    if not root.requires_grad:
        raise RuntimeError(
            "backward: this tensor does not require grad (no input had requires_grad=True, "
            "or it was computed inside no_grad())"
        )
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(
                f"backward: grad can be implicitly created only for a scalar output; this tensor has "
                f"shape {root.shape}. Pass backward(grad=...) with an array of that shape."
            )
        grad = np.ones_like(root.data)
    else:
        grad = grad.data if hasattr(grad, "data") and not isinstance(grad, np.ndarray) else grad
        if _on_device(root.data):
            from .device import to_device

            grad = to_device(grad)
        else:
            grad = np.asarray(grad)
        if grad.shape != root.shape:
            raise ValueError(f"backward: grad has shape {grad.shape}, the tensor has shape {root.shape}")
        grad = grad.astype(root.data.dtype, copy=False)

    order = _topological_order(root)
    grads = {id(root): grad}
    for node in reversed(order):
        g = grads.pop(id(node), None)
        if node._node is None:  # a leaf
            if g is not None:
                _accumulate_leaf(node, g)
            continue
        if g is None:
            continue
        if isinstance(node._node, _Freed):
            raise RuntimeError(
                f"backward: the graph through '{node._node.name}' was already freed by an earlier "
                "backward(); pass retain_graph=True to the first call to backpropagate twice"
            )
        fn, ctx, parents = node._node
        in_grads = fn.backward(ctx, g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        if len(in_grads) != len(parents):
            raise RuntimeError(
                f"{fn.name}.backward returned {len(in_grads)} gradients for {len(parents)} inputs"
            )
        for parent, pg in zip(parents, in_grads):
            if pg is None or not parent.requires_grad:
                continue
            pg = unbroadcast(pg if _on_device(pg) else np.asarray(pg), parent.shape)
            if pg.shape != parent.shape:  # an engine invariant, not a user error
                raise AssertionError(
                    f"{fn.name}.backward: gradient of shape {pg.shape} for an input of shape {parent.shape}"
                )
            key = id(parent)
            if key in grads:
                grads[key] = grads[key] + pg
            else:
                grads[key] = pg
        if not retain_graph:
            # Release the graph: saved arrays and references to inputs go now.
            ctx.release()
            node._node = _Freed(fn.name)
