"""Rounding-error floors for the gradient tests (central differences, float32 against float64).

A relative tolerance alone fails, now and then, on a random draw where the compared quantity cancels
while its rounding error does not. Example: the gradient of the scalar input ``a`` of ``a + b``, b of
shape (2, 3), weighted by a random w, is Σ w_ij: a random number that can be arbitrarily close to 0,
while the central difference's rounding error stays at u·Σ|w_ij (a + b_ij)|/h. These helpers give the
size of the terms, so that a test can add an absolute floor taken from the standard first-order
bounds (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1 and §4.2): a computed sum of
n terms is off by at most (n − 1)·u·Σ|terms|, and one correctly rounded operation by u·|result|
(u = 2^-53 in float64, 2^-24 in float32). A real error in a derivative is of the size of the
derivative's terms, which these floors are far below, so the tests still catch it.
"""
from __future__ import annotations

import numpy as np

import qlabref as qr

U64 = np.finfo(np.float64).eps / 2
U32 = float(np.finfo(np.float32).eps) / 2


class Terms:
    """The float64 Jacobian of ``fn`` at float64 ``arrays`` and the term sizes derived from it.

    - ``out``: f(x), flattened; ``J[k]``: (f.size, x_k.size) Jacobian for input k (None if no grad);
    - ``T``: per output element, |f_i| + Σ_k Σ_j |J_k[i, j]|·|x_k[j]|. For the ops tested (sums,
      products, elementwise functions) f_i is a sum of terms whose absolute values add up to at most
      T_i (for a linear or bilinear f_i exactly so: Σ_j |J_ij x_j| is the sum of its terms);
    - ``fan_in``: per output element, the number of input elements it depends on (its term count).
    """

    def __init__(self, fn, arrays, requires_grad):
        ts = [qr.tensor(np.array(a, dtype=np.float64), requires_grad=r) for a, r in zip(arrays, requires_grad)]
        out = fn(*ts)
        m = out.data.size
        self.out = np.asarray(out.data, dtype=np.float64).ravel().copy()
        self.J = [np.zeros((m, t.data.size)) if r else None for t, r in zip(ts, requires_grad)]
        for i in range(m):
            for t in ts:
                t.grad = None
            e = np.zeros(m)
            e[i] = 1.0
            out.backward(e.reshape(out.shape), retain_graph=True)
            for k, t in enumerate(ts):
                if self.J[k] is not None and t.grad is not None:
                    self.J[k][i] = np.asarray(t.grad, dtype=np.float64).ravel()
        self.T = np.abs(self.out).copy()
        self.fan_in = np.zeros(m)
        for J, a in zip(self.J, arrays):
            if J is not None:
                self.T += np.abs(J) @ np.abs(np.asarray(a, dtype=np.float64).ravel())
                self.fan_in += np.count_nonzero(J, axis=1)
        self.m = m

    def central_difference_floor(self, weight, k, h):
        """Bound on ‖numerical − exact‖ for input k, from the rounding of φ = Σ w_i f_i at x ± h e_j:
        |φ̂ − φ| <= u·Σ_i |w_i|·T_i·(fan_in_i + m + 2) (f_i's own sum, then the weighted sum of m
        terms), twice per difference quotient, divided by 2h; times √(size) for the norm. (The
        truncation error h²|φ'''|/6 ≈ 1e-12 for these O(1) inputs is far below it.)"""
        w = np.abs(np.asarray(weight, dtype=np.float64)).ravel()
        per_element = U64 * float(np.sum(w * self.T * (self.fan_in + self.m + 2))) / h
        return per_element * np.sqrt(self.J[k].shape[1])

    def output_floor32(self):
        """Bound on ‖f(float32) − f(float64)‖ (same float32 inputs): (fan_in_i + 2)·u32·T_i per element."""
        return float(np.linalg.norm(U32 * (self.fan_in + 2) * self.T))

    def grad_floor32(self, weight, k):
        """Bound on ‖∇_k(float32) − ∇_k(float64)‖ for the weighting w: element j is Σ_i w_i J_ij, a sum
        over the outputs of terms each computed to (fan_in_i + 4)·u32 of its size, so it is off by at
        most u32·Σ_i |w_i|·|J_ij|·(fan_in_i + m + 4)."""
        w = np.abs(np.asarray(weight, dtype=np.float64)).ravel()
        per = U32 * (np.abs(self.J[k]).T @ (w * (self.fan_in + self.m + 4)))
        return float(np.linalg.norm(per))


def check_central_differences(fn, tensors, seed, rtol=1e-6, h=1e-6):
    """``qr.gradcheck``'s comparison (random weighting w from ``seed``, central differences with step h,
    norm-wise per input) with the rounding floor above added to the relative tolerance:
    ‖autodiff − numerical‖ <= rtol·max(‖autodiff‖, ‖numerical‖) + central_difference_floor.
    Returns {input index: (error norm, tolerance)}; the caller asserts error <= tolerance (both 0 for an exactly zero gradient)."""
    out = fn(*tensors)
    w = np.random.default_rng(seed).standard_normal(np.shape(out.data))
    terms = Terms(fn, [t.data.copy() for t in tensors], [t.requires_grad for t in tensors])
    for t in tensors:
        t.grad = None
    fn(*tensors).backward(w)
    analytic = [None if t.grad is None else np.asarray(t.grad, dtype=np.float64).copy() for t in tensors]
    result = {}
    for k, t in enumerate(tensors):
        if not t.requires_grad:
            continue
        numeric = qr.numerical_grad(fn, tensors, k, w, h)
        got = np.zeros_like(numeric) if analytic[k] is None else analytic[k]
        err = float(np.linalg.norm(got - numeric))
        scale = max(float(np.linalg.norm(got)), float(np.linalg.norm(numeric)))
        result[k] = (err, rtol * scale + terms.central_difference_floor(w, k, h))
    return result
