"""2-D optimisation test functions: value, analytic gradient, domain and known minima.

The paper's Figure 2 uses Booth, Himmelblau and Eggholder; Rosenbrock and Beale are added because
every optimisation course draws them. Constants, domains and minima are the published ones (the Simon
Fraser University library of optimisation test functions, Surjanovic & Bingham, and the functions'
usual statements, e.g. Himmelblau's four minima to 6 decimals), rechecked with NumPy/SciPy.

Each function is a :class:`TestFunction` with

- ``f(xy)``: the value. ``xy`` is an ndarray of shape ``(2,)`` or ``(..., 2)`` (the last axis holds
  x and y, so a whole meshgrid evaluates at once) **or** a :class:`qlabref.Tensor` of shape ``(2,)``
  (or ``(..., 2)``), in which case the value is built from Tensor ops (indexing, ``*``, ``**``,
  ``sin``, ``sqrt``, ``abs``) so ``backward()`` gives the gradient by autodiff;
- ``grad(xy)``: the gradient written out by hand (ndarrays only), the oracle for the autodiff;
- ``domain``: ``((x_min, x_max), (y_min, y_max))``, the usual search box;
- ``minima``: array ``(k, 2)`` of the known minima; ``minima_values``: their values;
- ``f_min``: the global minimum value; ``name``, ``formula``, ``notes``.

The formula of each function is written once (``_value``) with small helpers that call NumPy on
arrays and the Tensor method on Tensors, so the ndarray and Tensor paths cannot drift apart.

Eggholder is the odd one out (see ``notes``): its global minimum (512, 404.2318...) lies **on the
boundary** of its box, where ∂f/∂x ≈ −3.39 ≠ 0, and it is not differentiable on the lines
x/2 + y + 47 = 0 and x − y − 47 = 0 (|·| under a square root). Its analytic gradient uses
d|u|/du = sign(u), as the autodiff does; exactly on those lines (a set of measure zero) the slope is
unbounded, the autodiff returns NaN (∞·0) and ``grad`` returns 0 for the offending term.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor

__all__ = [
    "TestFunction",
    "booth",
    "himmelblau",
    "eggholder",
    "rosenbrock",
    "beale",
    "get",
    "names",
    "PAPER_FUNCTIONS",
]


# --------------------------------------------------------------------------- array/Tensor helpers
def _sin(u):
    return u.sin() if isinstance(u, Tensor) else np.sin(u)


def _sqrt(u):
    return u.sqrt() if isinstance(u, Tensor) else np.sqrt(u)


def _abs(u):
    return u.abs() if isinstance(u, Tensor) else np.abs(u)


class TestFunction:
    """One 2-D test function. Subclasses define ``_value(x, y)`` and ``_grad(x, y)``."""

    __test__ = False  # not a pytest test class despite the name

    name: str = ""
    formula: str = ""
    notes: str = ""
    domain: tuple = ((0.0, 0.0), (0.0, 0.0))
    minima: np.ndarray = np.zeros((0, 2))
    #: Figure-2 style defaults: where the demo starts by default (stated in every output)
    default_start: tuple = (0.0, 0.0)
    #: True where the colour range spans many decades (contour levels are log-spaced)
    log_levels: bool = True

    def __init__(self):
        self.minima = np.asarray(self.minima, dtype=np.float64).reshape(-1, 2)
        self.minima_values = np.array([float(self.f(m)) for m in self.minima])
        self.f_min = float(self.minima_values.min())

    # ------------------------------------------------------------------ value and gradient
    def f(self, xy):
        """The function value at ``xy`` (ndarray ``(2,)``/``(..., 2)`` → ndarray/float; Tensor → Tensor)."""
        if isinstance(xy, Tensor):
            if xy.ndim < 1 or xy.shape[-1] != 2:
                raise ValueError(f"{self.name}.f: expected a Tensor of shape (2,) or (..., 2), got shape {xy.shape}")
            return self._value(xy[..., 0], xy[..., 1])
        arr = self._check_array(xy, "f")
        out = self._value(arr[..., 0], arr[..., 1])
        return float(out) if np.ndim(out) == 0 else out

    __call__ = f

    def grad(self, xy):
        """The analytic gradient at ``xy`` (ndarray ``(2,)`` or ``(..., 2)``) → same shape."""
        if isinstance(xy, Tensor):
            xy = xy.data
        arr = self._check_array(xy, "grad")
        gx, gy = self._grad(arr[..., 0], arr[..., 1])
        return np.stack(np.broadcast_arrays(gx, gy), axis=-1).astype(np.float64)

    def _check_array(self, xy, what):
        arr = np.asarray(xy, dtype=np.float64)
        if arr.ndim < 1 or arr.shape[-1] != 2:
            raise ValueError(f"{self.name}.{what}: expected an array of shape (2,) or (..., 2), got shape {arr.shape}")
        return arr

    # ------------------------------------------------------------------ domain and minima
    @property
    def bounds(self):
        """``(lower, upper)`` corner arrays of the domain box."""
        (x0, x1), (y0, y1) = self.domain
        return np.array([x0, y0]), np.array([x1, y1])

    def in_domain(self, xy) -> bool:
        lo, hi = self.bounds
        p = np.asarray(xy, dtype=np.float64)
        return bool(np.all(p >= lo) and np.all(p <= hi))

    def project(self, xy):
        """The nearest point of the domain box (used only when asked: ``trajectory(project=True)``)."""
        lo, hi = self.bounds
        return np.clip(np.asarray(xy, dtype=np.float64), lo, hi)

    def nearest_minimum(self, xy):
        """``(index, point, value)`` of the known minimum closest (Euclidean) to ``xy``."""
        d = np.linalg.norm(self.minima - np.asarray(xy, dtype=np.float64), axis=1)
        i = int(np.argmin(d))
        return i, self.minima[i].copy(), float(self.minima_values[i])

    def __repr__(self):
        return f"<test function {self.name}: {self.formula}>"

    # subclasses
    def _value(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def _grad(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError


class Booth(TestFunction):
    name = "booth"
    formula = "(x + 2y - 7)^2 + (2x + y - 5)^2"
    notes = "Convex quadratic, Hessian [[10, 8], [8, 10]], eigenvalues 18 and 2 (M = 18): 2/M = 0.111."
    domain = ((-10.0, 10.0), (-10.0, 10.0))
    minima = [(1.0, 3.0)]
    default_start = (-8.0, -8.0)

    def _value(self, x, y):
        return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2

    def _grad(self, x, y):
        a = x + 2 * y - 7
        b = 2 * x + y - 5
        return 2 * a + 4 * b, 4 * a + 2 * b


class Himmelblau(TestFunction):
    name = "himmelblau"
    formula = "(x^2 + y - 11)^2 + (x + y^2 - 7)^2"
    notes = "Four minima, all f = 0; a local maximum f(-0.2708, -0.9230) = 181.617."
    domain = ((-5.0, 5.0), (-5.0, 5.0))
    # Newton-polished to machine precision (the usual statement lists 6 decimals)
    minima = [
        (3.0, 2.0),
        (-2.805118086952745, 3.131312518250573),
        (-3.779310253377747, -3.283185991286169),
        (3.5844283403304917, -1.8481265269644036),
    ]
    local_maximum = (-0.2708445906673476, -0.9230385564799813)
    default_start = (-0.5, -4.5)

    def _value(self, x, y):
        return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2

    def _grad(self, x, y):
        a = x**2 + y - 11
        b = x + y**2 - 7
        return 4 * x * a + 2 * b, 2 * a + 4 * y * b


class Eggholder(TestFunction):
    name = "eggholder"
    formula = "-(y + 47) sin(sqrt|x/2 + y + 47|) - x sin(sqrt|x - (y + 47)|)"
    notes = (
        "Global minimum on the boundary: f(512, 404.231805) = -959.640663, where df/dx = -3.39 (not 0) "
        "and f keeps decreasing outside the box; many interior local minima; not differentiable on "
        "x/2 + y + 47 = 0 and x - y - 47 = 0 (unbounded slopes nearby)."
    )
    domain = ((-512.0, 512.0), (-512.0, 512.0))
    # y polished with scipy (y = 404.231805, f = -959.640663 checked)
    minima = [(512.0, 404.231805121438)]
    default_start = (300.0, 200.0)
    log_levels = False  # values span about -960 .. 1050: linear levels read better

    def _value(self, x, y):
        return -(y + 47) * _sin(_sqrt(_abs(x / 2 + y + 47))) - x * _sin(_sqrt(_abs(x - (y + 47))))

    def _grad(self, x, y):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        u = x / 2 + y + 47
        v = x - y - 47
        su = np.sqrt(np.abs(u))
        sv = np.sqrt(np.abs(v))
        # d sqrt|u| / du = sign(u) / (2 sqrt|u|); defined as 0 exactly on the kink (sign(0) = 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            du = np.where(u == 0, 0.0, np.sign(u) / (2 * su))
            dv = np.where(v == 0, 0.0, np.sign(v) / (2 * sv))
        t1 = -(y + 47) * np.cos(su) * du  # d(-(y+47) sin su)/du, times du/dx = 1/2, du/dy = 1
        t2 = -x * np.cos(sv) * dv  # d(-x sin sv)/dv, times dv/dx = 1, dv/dy = -1
        gx = 0.5 * t1 - np.sin(sv) + t2
        gy = -np.sin(su) + t1 - t2
        return gx, gy


class Rosenbrock(TestFunction):
    name = "rosenbrock"
    formula = "(1 - x)^2 + 100 (y - x^2)^2"
    notes = "Narrow curved valley; minimum (1, 1) -> 0."
    domain = ((-2.0, 2.0), (-2.0, 2.0))
    minima = [(1.0, 1.0)]
    default_start = (-1.5, 1.5)

    def _value(self, x, y):
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    def _grad(self, x, y):
        return -2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)


class Beale(TestFunction):
    name = "beale"
    formula = "(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2"
    notes = "Flat plateaus and steep walls; minimum (3, 0.5) -> 0."
    domain = ((-4.5, 4.5), (-4.5, 4.5))
    minima = [(3.0, 0.5)]
    default_start = (1.0, 1.5)

    def _value(self, x, y):
        return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2

    def _grad(self, x, y):
        a = 1.5 - x + x * y
        b = 2.25 - x + x * y**2
        c = 2.625 - x + x * y**3
        gx = 2 * a * (y - 1) + 2 * b * (y**2 - 1) + 2 * c * (y**3 - 1)
        gy = 2 * a * x + 4 * b * x * y + 6 * c * x * y**2
        return gx, gy


booth = Booth()
himmelblau = Himmelblau()
eggholder = Eggholder()
rosenbrock = Rosenbrock()
beale = Beale()

_ALL = {fn.name: fn for fn in (booth, himmelblau, eggholder, rosenbrock, beale)}
#: the three functions of the paper's Figure 2, in the paper's order
PAPER_FUNCTIONS = ("booth", "eggholder", "himmelblau")


def names():
    """Names of the test functions, in a fixed order (the paper's three first)."""
    return list(_ALL)


def get(name) -> TestFunction:
    """The test function called ``name`` (case-insensitive); a TestFunction passes through."""
    if isinstance(name, TestFunction):
        return name
    key = str(name).lower()
    if key not in _ALL:
        raise ValueError(f"unknown test function '{name}'; known: {', '.join(names())}")
    return _ALL[key]
