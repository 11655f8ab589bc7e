"""``Module`` and ``Parameter``: what ``torch.nn.Module`` users' hands know, on qlabref Tensors.

- Attributes that are ``Parameter`` s, ``Module`` s or registered buffers are tracked in
  ``_parameters``, ``_modules`` and ``_buffers`` (insertion order), exactly as in PyTorch, so
  ``state_dict()`` has PyTorch's key names *and* order: a module's parameters, then its buffers, then
  each child's entries under ``child.``.
- ``load_state_dict`` checks everything first (missing keys, unexpected keys, shapes) and only then
  copies, in place, so a failed strict load changes nothing and views into flat buffers stay views.
- ``flat_parameters()`` / ``flat_grads()`` move every parameter (gradient) into one contiguous
  buffer and make each ``.data`` (``.grad``) a view into it. An optimizer can then update θ, compute
  ‖∇L‖² and form the probe point θ − ᾱ∇L in one pass over memory, and backward accumulates gradients
  into the views in place (``autograd._accumulate_leaf``).
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ..tensor import Tensor

__all__ = ["Parameter", "Module", "StateDictError"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class StateDictError(KeyError, ValueError):
    """``load_state_dict`` found missing, unexpected, mis-shaped or unconvertible entries; nothing was
    loaded. A ``KeyError`` (missing/unexpected keys) and a ``ValueError`` (shapes, dtypes) at once."""

    def __str__(self):  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class Parameter(Tensor):
    """A Tensor that a Module registers as a parameter (``requires_grad=True`` by default)."""

    def __init__(self, data, requires_grad=True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


def _as_array(value):
    """Arrays from a state_dict value: ndarray, Tensor, or anything with ``.detach().cpu().numpy()``."""
    if isinstance(value, Tensor):
        return value.data
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor, without importing torch
        return value.detach().cpu().numpy()
    return np.asarray(value)


class Module:
    """Base class of layers and models. Subclasses set attributes in ``__init__`` and write ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parent", None)
        object.__setattr__(self, "_name", None)

    # ------------------------------------------------------------------ attribute registration
    def __setattr__(self, name, value):
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        params, mods, bufs = d["_parameters"], d["_modules"], d["_buffers"]
        if isinstance(value, Parameter):
            mods.pop(name, None), bufs.pop(name, None), d.pop(name, None)
            params[name] = value  # an existing key keeps its place (state_dict order, as in PyTorch)
        elif name in params:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign a {type(value).__name__} as parameter '{name}' "
                                "(qr.nn.Parameter or None expected)")
            params[name] = None
        elif isinstance(value, Module):
            params.pop(name, None), bufs.pop(name, None), d.pop(name, None)
            mods[name] = value
            object.__setattr__(value, "_parent", weakref.ref(self))
            object.__setattr__(value, "_name", name)
        elif name in mods:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign a {type(value).__name__} as child module "
                                f"'{name}' (qr.nn.Module or None expected)")
            mods[name] = None
        elif name in bufs:
            bufs[name] = None if value is None else np.asarray(value)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            if name in self.__dict__[table]:
                del self.__dict__[table][name]
                return
        object.__delattr__(self, name)

    def __getstate__(self):
        # the weak reference to the parent cannot be pickled; the parent re-links its children
        state = dict(self.__dict__)
        state["_parent"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name, child in self._modules.items():
            if child is not None:
                object.__setattr__(child, "_parent", weakref.ref(self))
                object.__setattr__(child, "_name", name)

    def register_buffer(self, name, array):
        """A named array that is state but not a parameter (BatchNorm's running statistics); part of
        ``state_dict()``. ``None`` reserves the name without an entry."""
        if "_buffers" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before register_buffer")
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"register_buffer: invalid buffer name {name!r}")
        if name in self._parameters or name in self._modules:
            raise KeyError(f"register_buffer: '{name}' is already a parameter or child module")
        self.__dict__.pop(name, None)
        self._buffers[name] = None if array is None else np.asarray(array)

    def path(self) -> str:
        """Dotted name of this module inside the model it belongs to (``layer2.0.conv1``), for errors."""
        parts, m = [], self
        while m is not None and m._name is not None:
            parts.append(m._name)
            m = m._parent() if m._parent is not None else None
        return ".".join(reversed(parts)) or type(self).__name__

    # ------------------------------------------------------------------ traversal
    def children(self):
        return (m for m in self._modules.values() if m is not None)

    def named_children(self):
        return ((k, m) for k, m in self._modules.items() if m is not None)

    def named_modules(self, prefix="", remove_duplicate=True):
        """(name, module) for self and every descendant, depth first, PyTorch's order. A module
        reachable under two names (weight tying) is listed once unless ``remove_duplicate=False``."""
        out, stack, seen = [], [(prefix, self)], set()
        while stack:
            name, m = stack.pop()
            if remove_duplicate:
                if id(m) in seen:
                    continue
                seen.add(id(m))
            out.append((name, m))
            kids = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items() if c is not None]
            stack.extend(reversed(kids))
        return iter(out)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix=""):
        """(name, parameter), each parameter once (a shared one under its first name), PyTorch's order."""
        seen = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for mname, m in self.named_modules(prefix):
            for bname, b in m._buffers.items():
                if b is not None:
                    yield (f"{mname}.{bname}" if mname else bname), b

    def buffers(self):
        return [b for _, b in self.named_buffers()]

    def requires_grad_(self, requires_grad=True):
        """Set ``requires_grad`` on every parameter (freeze with False)."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    # ------------------------------------------------------------------ modes and gradients
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Reset every parameter's gradient, as ``torch.nn.Module.zero_grad`` (≥ 2.0): ``set_to_none=True``
        (the default) drops it, and the next backward assigns it without a zero-fill or ``+=``; after
        ``flat_grads()``, or with ``set_to_none=False``, it is zeroed in place (views stay views)."""
        ps = self.parameters()
        flat = self.__dict__.get("_flat_grads")
        if flat is not None and all(p.grad is not None and _views(p.grad, flat) for p in ps):
            flat[...] = 0  # every gradient views the buffer: one fill (one launch on the GPU)
            return
        for p in ps:
            if p.grad is not None:
                if set_to_none and flat is None:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    # ------------------------------------------------------------------ state_dict
    def state_dict(self):
        """OrderedDict of copies: PyTorch key names, layouts and order (parameters, buffers, children).
        A shared module appears under each of its names, as in PyTorch."""
        out = OrderedDict()
        for key, (m, name, kind) in self._state_targets().items():
            value = m._parameters[name].data if kind == "parameter" else m._buffers[name]
            out[key] = np.array(value, copy=True)  # a device array comes back as a host copy
        return out

    def _state_targets(self):
        """key -> (owning module, attribute name, kind) for every entry of ``state_dict()``."""
        targets = OrderedDict()
        for mname, m in self.named_modules(remove_duplicate=False):
            pre = f"{mname}." if mname else ""
            for k, p in m._parameters.items():
                if p is not None:
                    targets[pre + k] = (m, k, "parameter")
            for k, b in m._buffers.items():
                if b is not None:
                    targets[pre + k] = (m, k, "buffer")
        return targets

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays (or torch tensors) into this module, in place, after checking every entry.

        Every problem is collected first and reported together in one ``StateDictError`` naming the
        keys: with ``strict`` (default) missing and unexpected keys; always a shape mismatch (key and
        both shapes) and a value that cannot be converted to the model's dtype (key and both dtypes).
        Nothing is copied unless every check passes. Values are cast to the dtype of the model's array
        (as PyTorch's ``copy_``). Returns ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict into {type(self).__name__}: expected a mapping of names to arrays "
                            f"(a state_dict), got {'None' if state_dict is None else type(state_dict).__name__}")
        targets = self._state_targets()
        keys = list(state_dict.keys())
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in keys if k not in targets]
        problems, ready = [], OrderedDict()
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        for k in keys:
            if k not in targets:
                continue
            m, name, kind = targets[k]
            current = m._parameters[name].data if kind == "parameter" else m._buffers[name]
            try:
                arr = np.asarray(_as_array(state_dict[k]))
            except Exception as e:  # noqa: BLE001 - e.g. a torch bfloat16 tensor has no NumPy form
                problems.append(f"'{k}' cannot be read as a NumPy array ({type(e).__name__}: {e})")
                continue
            if arr.shape != current.shape:
                problems.append(f"'{k}' has shape {arr.shape} in the state_dict but {current.shape} in the model")
                continue
            if arr.dtype.kind not in "biuf":
                problems.append(f"'{k}' has dtype {arr.dtype}, the model's array is {current.dtype}")
                continue
            ready[k] = arr
        if problems:
            raise StateDictError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems)
                                 + " (nothing was loaded)")
        for k, arr in ready.items():
            m, name, kind = targets[k]
            if kind == "parameter":
                m._parameters[name].data[...] = arr  # in place: flat-buffer views stay views
            else:
                buf = m._buffers[name]
                if buf.ndim == 0:
                    m._buffers[name] = np.array(arr, dtype=buf.dtype)
                else:
                    buf[...] = arr
        return missing, unexpected

    # ------------------------------------------------------------------ dtype
    def to(self, dtype):
        """Cast every parameter and floating buffer to ``dtype`` (float32 or float64), in place; or, with
        ``"cuda"`` / ``"cpu"``, move them (and the gradients) to the GPU / back, in place."""
        if isinstance(dtype, str) and dtype.strip().lower() in ("cuda", "cpu"):
            from ..device import module_to

            return module_to(self, dtype)
        dtype = np.dtype(dtype)
        if dtype not in _FLOATS:
            raise ValueError(f"{type(self).__name__}.to: dtype must be float32 or float64, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        for m in self.modules():
            for k, b in list(m._buffers.items()):
                if b is not None and b.dtype.kind == "f":
                    m._buffers[k] = b.astype(dtype)
        self.__dict__.pop("_flat_params", None)
        self.__dict__.pop("_flat_grads", None)
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    @property
    def dtype(self):
        ps = self.parameters()
        return ps[0].data.dtype if ps else None

    # ------------------------------------------------------------------ flat storage
    def _flat_dtype(self, what):
        ps = self.parameters()
        if not ps:
            raise ValueError(f"{type(self).__name__}.{what}: the module has no parameters")
        dtypes = {p.data.dtype for p in ps}
        if len(dtypes) != 1:
            raise ValueError(f"{type(self).__name__}.{what}: parameters have mixed dtypes {sorted(map(str, dtypes))}")
        on_gpu = {_on_gpu(p.data) for p in ps}
        if len(on_gpu) != 1:
            raise ValueError(f"{type(self).__name__}.{what}: some parameters are on the GPU and some on the CPU; "
                             "move the whole module with .to('cuda') or .to('cpu') first")
        return ps, dtypes.pop(), on_gpu.pop()

    def flat_parameters(self):
        """One contiguous 1-D array holding every parameter; each ``p.data`` becomes a view into it.

        Calling it again returns the same buffer while every parameter still views it. Order: that of
        ``parameters()``. On the GPU (after ``.to("cuda")``) the buffer is one device array and each
        ``p.data`` a device view into it (``qlabref.device.flat_view``); ``.to()`` drops the buffer
        (each parameter moves on its own), so call it again after moving the module.
        """
        ps, dtype, on_gpu = self._flat_dtype("flat_parameters")
        flat = self.__dict__.get("_flat_params")
        if flat is not None and all(_views(p.data, flat) for p in ps):
            return flat
        flat, views = _flat_layout(ps, dtype, on_gpu, zero=False)
        for p, view in zip(ps, views):
            view[...] = p.data  # on the GPU a device-to-device copy
            p.data = view
        object.__setattr__(self, "_flat_params", flat)
        return flat

    def flat_grads(self):
        """One contiguous 1-D gradient buffer; each ``p.grad`` becomes a view into it (zeros, or the
        current gradient if there is one). Backward accumulates into these views in place. On the GPU,
        one device array with device views, as ``flat_parameters``."""
        ps, dtype, on_gpu = self._flat_dtype("flat_grads")
        flat = self.__dict__.get("_flat_grads")
        if flat is not None and all(p.grad is not None and _views(p.grad, flat) for p in ps):
            return flat
        flat, views = _flat_layout(ps, dtype, on_gpu, zero=True)
        for p, view in zip(ps, views):
            if p.grad is not None:
                view[...] = p.grad
            p.grad = view
        object.__setattr__(self, "_flat_grads", flat)
        return flat

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, m in self._modules.items():
                sub = repr(m).replace("\n", "\n  ")
                lines.append(f"  ({name}): {sub}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"


def _on_gpu(a) -> bool:
    return getattr(type(a), "__qlabref_device__", False)


def _views(a, flat) -> bool:
    """``a`` is a view into the flat buffer ``flat`` (host: shares its memory; GPU: ``flat`` is its owner)."""
    if _on_gpu(flat):
        return _on_gpu(a) and a.base is flat
    return isinstance(a, np.ndarray) and np.shares_memory(a, flat)


def _flat_layout(ps, dtype, on_gpu, zero):
    """(a new 1-D buffer for every parameter's elements, one view of each parameter's shape into it, in
    order) on the host or, ``on_gpu``, on the device (``qlabref.device.flat_storage`` / ``flat_view``)."""
    total = sum(p.data.size for p in ps)
    if on_gpu:
        from ..device import flat_storage, flat_view

        flat = flat_storage(total, dtype, zero=zero)
        make = lambda offset, shape: flat_view(flat, offset, shape)  # noqa: E731
    else:
        flat = np.zeros(total, dtype=dtype) if zero else np.empty(total, dtype=dtype)
        make = lambda offset, shape: flat[offset:offset + int(np.prod(shape))].reshape(shape)  # noqa: E731
    views, offset = [], 0
    for p in ps:
        views.append(make(offset, p.data.shape))
        offset += p.data.size
    return flat, views
