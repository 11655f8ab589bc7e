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
4. Leaf tensors accumulate into ``.grad``: a ``.grad`` that is None (``zero_grad()``'s default, as
   torch's set_to_none) is assigned the gradient, an existing one is added to in place (``+=``, so a
   ``.grad`` that is a view into a flat buffer stays a view); the graph's saved arrays are released
   afterwards.
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


class _FlagMode(contextlib.ContextDecorator):
    """Set one of the thread-local flags for a ``with`` block (or a decorated function), then put the
    previous value back. A small class rather than a generator-based context manager: the optimizers
    enter two of these per probe, and a 2-D step is a few dozen microseconds."""

    def __init__(self, flag, value):
        self.flag = flag
        self.value = value
        self.previous = None

    def _recreate_cm(self):  # a fresh instance per decorated call (re-entrant, thread-safe)
        return type(self)(self.flag, self.value)

    def __enter__(self):
        self.previous = getattr(_flags, self.flag)
        setattr(_flags, self.flag, self.value)

    def __exit__(self, *exc):
        setattr(_flags, self.flag, self.previous)
        return False


def _set_grad(enabled: bool):
    return _FlagMode("grad_enabled", bool(enabled))


def no_grad():
    """Context manager (and decorator): no graph is built inside, as ``torch.no_grad``."""
    return _set_grad(False)


def enable_grad():
    """Context manager that turns graph building back on (used around optimizer closures)."""
    return _set_grad(True)


def is_state_update_enabled() -> bool:
    """False inside ``no_state_update()``: layers with running state (BatchNorm) must not update it."""
    return _flags.state_update_enabled


def no_state_update():
    """Forward passes inside this block leave module state alone.

    BatchNorm in training mode still normalises with the batch statistics but does not touch its
    running mean/variance or ``num_batches_tracked``. Optimizers run their probe forwards (QLAB's
    g(ᾱ), LQA's L(θ ± δd), FindPLR) inside this block so that probing never changes the model.
    """
    return _FlagMode("state_update_enabled", False)


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
    return grad if grad.shape == shape else grad.reshape(shape)  # a fresh sum stays adoptable (no view)


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
        # The per-op path: one pass over the inputs, no imports, no generic conversion for the common
        # operands (Tensors and Python numbers). A 2-D test function builds ~11 ops per forward, so
        # every microsecond here is ~10% of an optimizer step there (``qlabref bench --parts tiny``).
        Tensor = _TENSOR[0] if _TENSOR else _tensor_class()
        # Non-tensor operands (python scalars, arrays) become constants in the dtype of the
        # tensor operands, so float32 * 2.0 stays float32 (as in PyTorch).
        dtype = None
        for x in inputs:
            if isinstance(x, Tensor):
                d = x._data.dtype
                if d in _FLOAT_DTYPES:
                    dtype = d
                break
        tensors = []
        arrays = []
        flags = []
        for x in inputs:
            if not isinstance(x, Tensor):
                if dtype is not None and type(x) in _PY_NUMBERS:
                    x = Tensor._from_op(np.array(x, dtype=dtype), False)  # what as_tensor(x, dtype) gives
                else:
                    x = _as_tensor(x, dtype)
            tensors.append(x)
            arrays.append(x._data)
            flags.append(x.requires_grad)
        if _device_active and any(_on_device(a) for a in arrays):
            from .device import twin

            cls = twin(cls)  # the device version where the op's NumPy code cannot run on the GPU
        ctx = Context()
        out = cls.forward(ctx, *arrays, **kwargs)
        if True in flags and _flags.grad_enabled:
            result = Tensor._from_op(out, True)
            ctx.needs_input_grad = tuple(flags)
            result._node = (cls, ctx, tuple(tensors))
            return result
        return Tensor._from_op(out, False)


#: filled on first use with qlabref.tensor.Tensor (tensor.py imports this module, not the reverse)
_TENSOR = []
#: Python numbers that become a constant of the tensor operands' float dtype without any check
_PY_NUMBERS = (float, int)


def _tensor_class():
    from .tensor import Tensor

    _TENSOR.append(Tensor)
    return Tensor


def _as_tensor(x, dtype):
    from .tensor import as_tensor

    return as_tensor(x, dtype=dtype)


class _Freed:
    """Stands in for the (function, ctx, parents) triple of a node after backward released it."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


def _topological_order(root):
    """Nodes reachable from ``root`` that need gradients, parents before children (iterative DFS)."""
    order, visited = [], set()
    stack = [(root, False)]
    pop, push, append, add = stack.pop, stack.append, order.append, visited.add
    while stack:
        node, expanded = pop()
        if expanded:
            append(node)
            continue
        key = id(node)
        if key in visited:
            continue
        add(key)
        push((node, True))
        rec = node._node
        if rec is not None and type(rec) is tuple:  # not a leaf, not freed
            for parent in rec[2]:
                if parent.requires_grad and id(parent) not in visited:
                    push((parent, False))
    return order


def _accumulate_leaf(leaf, grad, adopted=None):
    """Add ``grad`` into ``leaf.grad``.

    A ``.grad`` that is None (never set, or dropped by ``zero_grad(set_to_none=True)``) is *assigned*
    on the first accumulation, as PyTorch's set_to_none does: no zero-fill and no ``+=``. The array
    itself becomes ``.grad`` when this backward pass made it and nothing else can hold it: a fresh
    array (owns its memory, writeable, the leaf's dtype) that a ``Function.backward`` returned and no
    other leaf took in this pass (``adopted``: their ids; Add hands one array to both inputs). Anything
    else is copied: a view (of a broadcast, a reshape, a flat buffer), the caller's ``backward(grad=...)``
    array (``adopted`` is None), an array a second leaf would share. On the GPU the same rule holds for a
    ``DeviceArray``: one that owns a pooled buffer (``_base`` None, ``_pooled``; made by the pass's
    kernels) is adopted, a view (a reshape, a ``flat_view``) or an array another leaf took is copied
    device to device. An existing ``.grad`` is added to in place, so that a ``.grad`` which is a view
    into a flat buffer keeps being that view."""
    dtype = leaf._data.dtype
    current = leaf._grad
    if current is None:
        if (adopted is not None and type(grad) is np.ndarray and grad.base is None and grad.dtype == dtype
                and grad.flags.writeable and id(grad) not in adopted):
            adopted.add(id(grad))
            leaf._grad = grad
        elif _device_active and _on_device(grad):  # a GPU-resident gradient stays on the GPU
            if (adopted is not None and grad._base is None and grad._pooled and grad.dtype == dtype
                    and id(grad) not in adopted):
                adopted.add(id(grad))  # the same rule on the GPU: a fresh pooled array, no copy
                leaf._grad = grad
            else:
                leaf._grad = grad.astype(dtype) if grad.dtype != dtype else grad.copy()  # device to device
        else:
            leaf._grad = np.array(grad, dtype=dtype, copy=True)
    else:
        if grad.dtype != dtype:
            grad = grad.astype(dtype)
        np.add(current, grad, out=current)


def backward(root, grad=None, retain_graph=False, _order=None):
    """Backpropagate from ``root``; see ``Tensor.backward``. ``_order``: the topological order of
    ``root``'s graph when the caller already has it (the optimizers' ``evaluate`` does)."""
    if not root.requires_grad:
        raise RuntimeError(
            "backward: this tensor does not require grad (no input had requires_grad=True, "
            "or it was computed inside no_grad())"
        )
    root_data = root._data
    if grad is None:
        if root_data.size != 1:
            raise RuntimeError(
                f"backward: grad can be implicitly created only for a scalar output; this tensor has "
                f"shape {root.shape}. Pass backward(grad=...) with an array of that shape."
            )
        grad = np.ones_like(root_data)
        user_grad = None
    else:
        grad = grad.data if hasattr(grad, "data") and not isinstance(grad, np.ndarray) else grad
        if _device_active and _on_device(root_data):
            from .device import to_device

            grad = to_device(grad)
        else:
            grad = np.asarray(grad)
        if grad.shape != root_data.shape:
            raise ValueError(f"backward: grad has shape {grad.shape}, the tensor has shape {root_data.shape}")
        grad = grad.astype(root_data.dtype, copy=False)
        user_grad = grad  # the caller's array: never adopted as a .grad (copied if it reaches a leaf as is)

    order = _topological_order(root) if _order is None else _order
    grads = {id(root): grad}
    adopted = set()  # ids of the arrays that became a leaf's .grad in this pass
    for node in reversed(order):
        g = grads.pop(id(node), None)
        rec = node._node
        if rec is None:  # a leaf
            if g is not None:
                _accumulate_leaf(node, g, None if g is user_grad else adopted)
            continue
        if g is None:
            continue
        if type(rec) is not tuple:  # _Freed
            raise RuntimeError(
                f"backward: the graph through '{rec.name}' was already freed by an earlier "
                "backward(); pass retain_graph=True to the first call to backpropagate twice"
            )
        fn, ctx, parents = rec
        in_grads = fn.backward(ctx, g)
        if type(in_grads) is not tuple:
            in_grads = (in_grads,)
        if len(in_grads) != len(parents):
            raise RuntimeError(
                f"{fn.name}.backward returned {len(in_grads)} gradients for {len(parents)} inputs"
            )
        for parent, pg in zip(parents, in_grads):
            if pg is None or not parent.requires_grad:
                continue
            shape = parent._data.shape
            if type(pg) is not np.ndarray and not _on_device(pg):
                pg = np.asarray(pg)
            if pg.shape != shape:
                pg = unbroadcast(pg, shape)
                if pg.shape != shape:  # an engine invariant, not a user error
                    raise AssertionError(
                        f"{fn.name}.backward: gradient of shape {pg.shape} for an input of shape {shape}"
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
