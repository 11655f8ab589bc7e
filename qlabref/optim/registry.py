"""Optimizers by name, so the CLI and ``qr.trajectory`` can build any of them: ``qr.optim.get``."""
from __future__ import annotations

OPTIMIZERS: dict = {}


def register_optimizer(name: str):
    """Class decorator: make an optimizer class reachable as ``qr.optim.get(name, params, **kw)``."""

    def deco(cls):
        key = name.lower()
        if key in OPTIMIZERS and OPTIMIZERS[key] is not cls:
            raise ValueError(f"optimizer name '{name}' registered twice")
        OPTIMIZERS[key] = cls
        return cls

    return deco


def names():
    """The registered optimizer names, sorted."""
    return sorted(OPTIMIZERS)


def get(name, params, **kwargs):
    """Build the optimizer registered as ``name`` (case-insensitive) on ``params``."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; known: {', '.join(names())}")
    return OPTIMIZERS[key](params, **kwargs)
