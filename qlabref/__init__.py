"""qlabref: a NumPy/Numba reference engine for QLABGrad (Fu & Wu), the hyperparameter-free
learning-rate scheme, with the autodiff, layers, baselines and figures needed to check its claims.

Exports are listed explicitly. The heavier subpackages (``nn``, ``optim``, ``models``, ``functions``,
``interop``, ...) are imported on first access (``qr.optim``), so ``import qlabref`` stays
quick and never needs torch or numba-cuda.
"""
from __future__ import annotations

import importlib
import os as _os


def _find_kernels_in_source_checkout():
    """``qlabref.kernels`` is the top-level ``kernels/`` folder, mapped in by ``package_dir`` when the
    project is installed. When this ``qlabref`` is imported straight from a source checkout (``python
    -m qlabref`` run in the repository, which puts the checkout first on ``sys.path``), there is no
    ``qlabref/kernels``: let the package's search path include the checkout's root so that
    ``qlabref.kernels`` resolves to ``kernels/`` there as well."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    root = _os.path.dirname(here)
    if _os.path.isdir(_os.path.join(here, "kernels")):
        return  # installed (or a layout with qlabref/kernels): nothing to do
    if _os.path.isfile(_os.path.join(root, "kernels", "__init__.py")) and _os.path.isfile(
            _os.path.join(root, "setup.cfg")):
        __path__.append(root)  # noqa: F821 - the package's own __path__


_find_kernels_in_source_checkout()

from .backends import get_backend, set_backend, use_backend
from .autograd import enable_grad, is_grad_enabled, no_grad, no_state_update
from .gradcheck import gradcheck, gradcheck_projection, numerical_grad, relative_error
from .ops import (
    concatenate,
    cross_entropy,
    exp,
    log,
    log_softmax,
    maximum,
    relu,
    sigmoid,
    sqrt,
    stack,
    tanh,
)
from .tensor import Tensor, as_tensor, tensor

__version__ = "0.1.0"

# Subpackages and the public names that live in them, loaded on first use (PEP 562).
_LAZY_MODULES = {
    "nn": "qlabref.nn",
    "optim": "qlabref.optim",
    "models": "qlabref.models",
    "functions": "qlabref.functions",
    "interop": "qlabref.interop",
    "plots": "qlabref.plots",
    "data": "qlabref.data",
    "runplots": "qlabref.runplots",
    "train": "qlabref.train",
    "kernels": "qlabref.kernels",
    "crosscheck_torch": "qlabref.crosscheck_torch",  # qr.crosscheck's module (imports torch when run)
    "torch": "qlabref.torch",  # needs PyTorch: not in __all__, so a star import works without it
}
_LAZY_NAMES = {
    "trajectory": ("qlabref.trajectory", "trajectory"),
    "crosscheck": ("qlabref.crosscheck_torch", "crosscheck"),
}

__all__ = [
    "Tensor",
    "tensor",
    "as_tensor",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "no_state_update",
    "gradcheck",
    "gradcheck_projection",
    "numerical_grad",
    "relative_error",
    "concatenate",
    "stack",
    "maximum",
    "relu",
    "tanh",
    "sigmoid",
    "exp",
    "log",
    "sqrt",
    "log_softmax",
    "cross_entropy",
    "set_backend",
    "get_backend",
    "use_backend",
    *(m for m in _LAZY_MODULES if m != "torch"),
    *_LAZY_NAMES,
]


def __getattr__(name):
    if name in _LAZY_MODULES:
        module = importlib.import_module(_LAZY_MODULES[name])
        globals()[name] = module
        return module
    if name in _LAZY_NAMES:
        module_name, attr = _LAZY_NAMES[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qlabref' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
