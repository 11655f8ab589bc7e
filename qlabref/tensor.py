"""``Tensor``: an ``np.ndarray`` (``data``), its gradient (``grad``) and how it was made.

Every operator is one line that calls a ``Function`` from ``qlabref.ops``; the maths lives there.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import autograd

__all__ = ["Tensor", "tensor", "as_tensor"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _to_array(data, dtype=None) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data.data
    if getattr(type(data), "__qlabref_device__", False):  # GPU data stays on the GPU
        return data if dtype is None or np.dtype(dtype) == data.dtype else data.astype(dtype)
    if dtype is not None:
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"tensor: {dtype!r} is not a dtype") from None
        if dt.kind not in "biuf":
            raise TypeError(f"tensor: a Tensor holds numbers (bool, integer or float), not {dt}")
        if data is None or isinstance(data, (str, bytes, dict, set)):
            raise TypeError(f"tensor: a Tensor holds numbers (bool, integer or float), got {_describe(data)}")
        try:
            return np.asarray(data, dtype=dt)
        except (TypeError, ValueError) as e:
            raise type(e)(f"tensor: cannot convert {_describe(data)} to {dt} ({e})") from None
    if isinstance(data, (np.ndarray, np.generic)):
        arr = np.asarray(data)  # NumPy arrays and scalars keep their dtype (np.float64 stays float64)
    elif isinstance(data, (bool, np.bool_)):
        arr = np.asarray(data)
    elif isinstance(data, numbers.Integral):
        arr = np.asarray(data, dtype=np.int64)
    elif isinstance(data, numbers.Real):
        arr = np.asarray(data, dtype=np.float32)  # python floats -> float32, as in PyTorch
    else:
        if data is None or isinstance(data, (str, bytes, dict, set)):
            raise TypeError(f"tensor: a Tensor holds numbers (bool, integer or float), got {_describe(data)}")
        if isinstance(data, (list, tuple)) and any(isinstance(v, Tensor) for v in data):
            raise TypeError("tensor: got a list of Tensors; use qr.stack(tensors) to join them (keeps the graph)")
        try:
            arr = np.asarray(data)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"tensor: the nested lists do not form a rectangular array ({e})") from None
        if arr.dtype == np.float64 and not _contains_ndarray_float64(data):
            arr = arr.astype(np.float32)  # nested python lists of floats -> float32
    if arr.dtype.kind == "f" and arr.dtype not in _FLOATS:
        arr = arr.astype(np.float32)  # float16 and friends are computed in float32
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"tensor: a Tensor holds numbers (bool, integer or float), got {_describe(data)} "
                        f"(NumPy dtype {arr.dtype})")
    return arr


def _describe(data):
    if data is None:
        return "None"
    if isinstance(data, np.ndarray):
        return f"an array of dtype {data.dtype}"
    return f"a {type(data).__name__}"


def _contains_ndarray_float64(data) -> bool:
    if isinstance(data, np.ndarray):
        return data.dtype == np.float64
    if isinstance(data, np.floating):
        return data.dtype == np.float64
    if isinstance(data, (list, tuple)):
        return any(_contains_ndarray_float64(x) for x in data)
    return False


class Tensor:
    """A node of the computation graph.

    Attributes: ``data`` (np.ndarray), ``grad`` (np.ndarray or None; same shape and dtype as
    ``data``), ``requires_grad`` (bool). Tensors built by ops remember ``(function, ctx, parents)``
    in ``_node`` until ``backward`` releases it.
    """

    __slots__ = ("_data", "_grad", "requires_grad", "_node", "name", "__weakref__")
    # NumPy defers to our reflected operators: ndarray + Tensor -> Tensor.__radd__.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad=False, dtype=None, name=None):
        arr = _to_array(data, dtype)
        if requires_grad and arr.dtype not in _FLOATS:
            raise TypeError(
                f"tensor: requires_grad=True needs a float32 or float64 array, got dtype {arr.dtype}"
            )
        self._data = arr
        self._grad = None
        self.requires_grad = bool(requires_grad)
        self._node = None
        self.name = name

    @classmethod
    def _from_op(cls, array, requires_grad):
        t = cls.__new__(cls)
        t._data = array if isinstance(array, np.ndarray) or getattr(type(array), "__qlabref_device__", False) \
            else np.asarray(array)
        t._grad = None
        t.requires_grad = requires_grad
        t._node = None
        t.name = None
        return t

    # ---------------------------------------------------------------- plain properties
    @property
    def data(self) -> np.ndarray:
        """The values (an ``np.ndarray``). Assigning replaces them: numbers only, and for a tensor that
        requires grad a float32/float64 array of the same shape (its ``.grad``, optimizer state and
        saved state_dicts are tied to the shape)."""
        return self._data

    @data.setter
    def data(self, value):
        if isinstance(value, Tensor):
            value = value._data
        if not isinstance(value, np.ndarray) and not getattr(type(value), "__qlabref_device__", False):
            value = _to_array(value)
        if value.dtype.kind not in "biuf":
            raise TypeError(f"data: a Tensor holds numbers (bool, integer or float), got an array of dtype {value.dtype}")
        if self.requires_grad:
            if value.dtype not in _FLOATS:
                raise TypeError(f"data: a tensor that requires grad needs float32 or float64 data, got {value.dtype}")
            old = self._data
            if value.shape != old.shape:
                raise ValueError(f"data: cannot replace the data of shape {old.shape} of a tensor that requires grad "
                                 f"with an array of shape {value.shape} (its .grad and optimizer state have the old "
                                 "shape); make a new Tensor instead")
        self._data = value

    @property
    def grad(self):
        """The gradient (``np.ndarray`` of the data's shape) or None. Assigning checks the shape and
        that it is a float array (a wrong one would silently broadcast into later backward passes)."""
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None:
            if isinstance(value, Tensor):
                value = value._data
            if not isinstance(value, np.ndarray) and not getattr(type(value), "__qlabref_device__", False):
                value = np.asarray(value)
            if value.dtype.kind != "f":
                raise TypeError(f"grad: a gradient must be a float array, got dtype {value.dtype}")
            if value.shape != self._data.shape:
                raise ValueError(f"grad: a gradient of shape {value.shape} for a tensor of shape {self._data.shape}")
        self._grad = value

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def is_leaf(self):
        return self._node is None

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self.device == "cuda":
            extra += ", device='cuda'"
        body = np.array2string(np.asarray(self.data), precision=6, separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.data.dtype}{extra})"

    def numpy(self) -> np.ndarray:
        """The data as an ndarray: the same memory on the CPU (like ``torch.Tensor.numpy``); for a
        tensor on the GPU, a host copy (one device→host transfer)."""
        if self.device == "cuda":
            from .device import to_host

            return to_host(self._data)
        return self.data

    # ---------------------------------------------------------------- device boundary
    @property
    def device(self) -> str:
        """``"cuda"`` when the data lives on the GPU (after ``.to("cuda")``), else ``"cpu"``."""
        return "cuda" if getattr(type(self._data), "__qlabref_device__", False) else "cpu"

    def to(self, device) -> "Tensor":
        """``"cuda"`` / ``"cpu"``: this tensor if it is already there, else a new leaf with a copy of the
        data (``requires_grad`` kept), as ``torch.Tensor.to``. One counted host↔device transfer."""
        from .device import tensor_to

        return tensor_to(self, device)

    def cuda(self) -> "Tensor":
        return self.to("cuda")

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def item(self) -> float:
        if self.data.size != 1:
            raise ValueError(f"item: only a one-element tensor converts to a Python number, shape {self.shape}")
        return self.data.reshape(()).item()

    def __float__(self):
        return float(self.item())

    def detach(self) -> "Tensor":
        """A new leaf sharing ``data``, cut off from the graph."""
        return Tensor._from_op(self.data, requires_grad=False)

    def requires_grad_(self, flag=True) -> "Tensor":
        if flag and self.data.dtype not in _FLOATS:
            raise TypeError(f"requires_grad_: dtype {self.data.dtype} cannot require grad")
        self.requires_grad = bool(flag)
        return self

    def astype(self, dtype) -> "Tensor":
        from .ops import core

        return core.Cast.apply(self, dtype=dtype)

    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` is required unless ``self`` has one element. The graph is released afterwards unless
        ``retain_graph=True``. Gradients add up across calls until zeroed, as in PyTorch.
        """
        autograd.backward(self, grad, retain_graph=retain_graph)

    def zero_grad(self):
        self.grad = None

    # ---------------------------------------------------------------- operators
    def __add__(self, other):
        return _ops().Add.apply(self, other)

    def __radd__(self, other):
        return _ops().Add.apply(other, self)

    def __sub__(self, other):
        return _ops().Sub.apply(self, other)

    def __rsub__(self, other):
        return _ops().Sub.apply(other, self)

    def __mul__(self, other):
        return _ops().Mul.apply(self, other)

    def __rmul__(self, other):
        return _ops().Mul.apply(other, self)

    def __truediv__(self, other):
        return _ops().Div.apply(self, other)

    def __rtruediv__(self, other):
        return _ops().Div.apply(other, self)

    def __pow__(self, other):
        return _ops().Pow.apply(self, other)

    def __rpow__(self, other):
        return _ops().Pow.apply(other, self)

    def __matmul__(self, other):
        return _ops().MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return _ops().MatMul.apply(other, self)

    def __neg__(self):
        return _ops().Neg.apply(self)

    def __pos__(self):
        return self

    def __getitem__(self, index):
        return _ops().GetItem.apply(self, index=index)

    # Comparisons give plain boolean arrays (no gradient flows through a comparison).
    def __lt__(self, other):
        return self.data < _raw(other)

    def __le__(self, other):
        return self.data <= _raw(other)

    def __gt__(self, other):
        return self.data > _raw(other)

    def __ge__(self, other):
        return self.data >= _raw(other)

    __hash__ = object.__hash__

    # ---------------------------------------------------------------- methods
    def sum(self, axis=None, keepdims=False):
        return _ops().Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops().Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _ops().Max.apply(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().Reshape.apply(self, shape=shape)

    def flatten(self, start_axis=0):
        if isinstance(start_axis, bool) or not isinstance(start_axis, numbers.Integral):
            raise TypeError(f"flatten: start_axis must be an integer, got {start_axis!r}")
        if not -max(self.ndim, 1) <= start_axis < max(self.ndim, 1):
            raise ValueError(f"flatten: start_axis {start_axis} is out of range for a tensor of {self.ndim} dimensions")
        return self.reshape(self.shape[:start_axis % max(self.ndim, 1)] + (-1,))

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops().Transpose.apply(self, axes=axes or None)

    def permute(self, *axes):
        return self.transpose(*axes)

    @property
    def T(self):
        return self.transpose()

    def exp(self):
        return _ops().Exp.apply(self)

    def log(self):
        return _ops().Log.apply(self)

    def sqrt(self):
        return _ops().Sqrt.apply(self)

    def abs(self):
        return _ops().Abs.apply(self)

    def sin(self):
        return _ops().Sin.apply(self)

    def cos(self):
        return _ops().Cos.apply(self)

    def relu(self):
        return _ops().ReLU.apply(self)

    def tanh(self):
        return _ops().Tanh.apply(self)

    def sigmoid(self):
        return _ops().Sigmoid.apply(self)

    def maximum(self, other):
        return _ops().Maximum.apply(self, other)

    def log_softmax(self, axis=-1):
        return _ops().LogSoftmax.apply(self, axis=axis)


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _ops():
    # imported lazily (ops imports Tensor), once: every operator calls this
    if _CORE:
        return _CORE[0]
    from .ops import core

    _CORE.append(core)
    return core


_CORE = []


def tensor(data, requires_grad=False, dtype=None) -> Tensor:
    """Make a leaf Tensor. float64 arrays stay float64; python floats become float32."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def as_tensor(x, dtype=None) -> Tensor:
    """``x`` if it is already a Tensor, else a constant (no grad) Tensor of it."""
    if isinstance(x, Tensor):
        return x
    if dtype is not None and not isinstance(x, np.ndarray):
        return Tensor._from_op(_to_array(x, dtype), requires_grad=False)
    if dtype is not None and isinstance(x, np.ndarray) and x.dtype.kind in "biu" :
        return Tensor._from_op(x.astype(dtype), requires_grad=False)
    return Tensor._from_op(_to_array(x), requires_grad=False)
