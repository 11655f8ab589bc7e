"""The one visible table of differentiable ops.

Every ``Function`` subclass that users can reach is registered here under a name. The gradient tests
walk this table: ``tests/test_ops_grad.py`` fails if an op is registered without a test case, so a new
op cannot slip in untested.
"""
from __future__ import annotations

REGISTRY: dict = {}


def register(name: str):
    """Class decorator: put a Function in ``REGISTRY`` under ``name`` (also used in error messages)."""

    def deco(cls):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"op '{name}' registered twice ({REGISTRY[name].__qualname__} and {cls.__qualname__})")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco
