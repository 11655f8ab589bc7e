"""Numerical gradient checks that users can call too.

- ``numerical_grad``: central differences, one input element at a time.
- ``gradcheck``: every input's autodiff gradient against central differences (float64).
- ``gradcheck_projection``: HIPS/autograd's random-projection check. For random u (output space) and
  v (input space), the autodiff value ⟨VJP(u), v⟩ must equal the central difference of
  φ(ε) = ⟨u, f(x + εv)⟩ at 0. One scalar comparison for any shapes; cheap for big inputs.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor

__all__ = ["numerical_grad", "gradcheck", "gradcheck_projection", "relative_error", "GradcheckError"]


class GradcheckError(AssertionError):
    """Raised when an autodiff gradient disagrees with central differences."""


def relative_error(a, b, floor=1e-12) -> float:
    """‖a − b‖ / max(‖a‖, ‖b‖, floor): the norm-wise relative error used by every check here."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = max(np.linalg.norm(a), np.linalg.norm(b), floor)
    return float(np.linalg.norm(a - b) / denom)


def _scalar_output(fn, inputs, weight):
    out = fn(*inputs)
    data = out.data if isinstance(out, Tensor) else np.asarray(out)
    return float(np.sum(data.astype(np.float64) * weight))


def numerical_grad(fn, inputs, index, weight=None, eps=1e-6) -> np.ndarray:
    """Central-difference gradient of ⟨weight, fn(*inputs)⟩ with respect to ``inputs[index]``.

    ``inputs`` are Tensors; the input's ``data`` is perturbed in place and restored exactly.
    """
    x = inputs[index].data
    if weight is None:
        out = fn(*inputs)
        weight = np.ones(np.shape(out.data if isinstance(out, Tensor) else out))
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view, so writes reach the input
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_grad: the input array must be contiguous")
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        f_plus = _scalar_output(fn, inputs, weight)
        flat[i] = old - eps
        f_minus = _scalar_output(fn, inputs, weight)
        flat[i] = old
        grad.reshape(-1)[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def _autodiff_grads(fn, inputs, weight):
    for t in inputs:
        t.grad = None
    out = fn(*inputs)
    if not isinstance(out, Tensor) or not out.requires_grad:
        raise GradcheckError("gradcheck: fn did not return a Tensor that requires grad")
    out.backward(weight.astype(out.data.dtype))
    return [None if t.grad is None else t.grad.astype(np.float64) for t in inputs]


def gradcheck(fn, inputs, eps=1e-6, rtol=1e-6, seed=0, raise_on_failure=True):
    """Compare autodiff with central differences for every input that requires grad.

    ``fn(*inputs)`` returns a Tensor of any shape; a fixed random weighting of its elements (from
    ``seed``) turns it into a scalar. Inputs should be float64 for a tight check. Returns a dict
    {input index: relative error}; raises ``GradcheckError`` if one exceeds ``rtol``.
    """
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if t.requires_grad and t.data.dtype != np.float64:
            raise ValueError(f"gradcheck: input {i} has dtype {t.data.dtype}; central differences need float64")
    rng = np.random.default_rng(seed)
    out = fn(*inputs)
    weight = rng.standard_normal(np.shape(out.data))
    analytic = _autodiff_grads(fn, inputs, weight)
    errors = {}
    for i, t in enumerate(inputs):
        if not t.requires_grad:
            continue
        numeric = numerical_grad(fn, inputs, i, weight, eps)
        got = np.zeros_like(numeric) if analytic[i] is None else analytic[i]
        errors[i] = relative_error(got, numeric)
        if raise_on_failure and errors[i] > rtol:
            raise GradcheckError(
                f"gradcheck: input {i} (shape {t.shape}): relative error {errors[i]:.3e} > {rtol:g}\n"
                f"autodiff:\n{got}\ncentral differences:\n{numeric}"
            )
    return errors


def gradcheck_projection(fn, inputs, eps=1e-6, rtol=1e-6, seed=0, raise_on_failure=True) -> float:
    """Random-projection check: ⟨VJP(u), v⟩ against (φ(ε) − φ(−ε)) / 2ε with φ(s) = ⟨u, f(x + s v)⟩.

    All inputs that require grad are perturbed together along random directions v. Returns the
    relative error of the two scalars; raises ``GradcheckError`` above ``rtol``.
    """
    inputs = list(inputs)
    rng = np.random.default_rng(seed)
    out = fn(*inputs)
    u = rng.standard_normal(np.shape(out.data))
    analytic = _autodiff_grads(fn, inputs, u)
    vs = [rng.standard_normal(t.shape) if t.requires_grad else None for t in inputs]
    lhs = sum(float(np.sum(g * v)) for g, v in zip(analytic, vs) if v is not None and g is not None)
    saved = [t.data.copy() for t in inputs]

    def phi(s):
        for t, x0, v in zip(inputs, saved, vs):
            if v is not None:
                t.data[...] = x0 + s * v
        try:
            return _scalar_output(fn, inputs, u)
        finally:
            for t, x0 in zip(inputs, saved):
                t.data[...] = x0

    rhs = (phi(eps) - phi(-eps)) / (2 * eps)
    err = abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-12)
    if raise_on_failure and err > rtol:
        raise GradcheckError(f"gradcheck_projection: <VJP(u), v> = {lhs!r}, finite difference = {rhs!r}, relative error {err:.3e}")
    return err
