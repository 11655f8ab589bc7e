"""The registry walk: every op in qlabref.ops.REGISTRY × its shapes × float32/float64.

- float64 gradients agree with central differences (norm-wise relative error < 1e-6, plus the
  rounding floor of tests/roundoff.py);
- float32 runs keep float32 (outputs and gradients) and agree with the float64 run (relative 1e-5 /
  1e-4, plus the float32 rounding floor of tests/roundoff.py);
- float64 outputs and gradients agree with PyTorch (relative error < 1e-10); required in CI;
- hypothesis draws broadcastable shape pairs for the binary ops, and axis/keepdims for reductions.

Cases live in tests/opcases_*.py (``CASES`` dicts); an op registered without a case fails
``test_every_registered_op_has_a_case``.
"""
import importlib
import pathlib

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import qlabref as qr
from qlabref.ops import REGISTRY
from roundoff import Terms, check_central_differences

import qlabref.ops.core  # noqa: F401  (registers the core ops)

_HERE = pathlib.Path(__file__).parent


def _load_cases():
    # Import every op module that registers ops, then every case module.
    for mod in ("qlabref.ops.nn_ops",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    cases = {}
    for path in sorted(_HERE.glob("opcases_*.py")):
        module = importlib.import_module(path.stem)
        for name, case in module.CASES.items():
            assert name not in cases, f"op '{name}' has cases in two modules"
            cases[name] = case
    return cases


CASES = _load_cases()
PARAMS = [pytest.param(name, i, id=f"{name}-{i}") for name, case in sorted(CASES.items()) for i in range(len(case.shapes))]


def test_every_registered_op_has_a_case():
    missing = sorted(set(REGISTRY) - set(CASES))
    extra = sorted(set(CASES) - set(REGISTRY))
    assert not missing, f"registered ops without a gradient test case: {missing}"
    assert not extra, f"test cases for ops that are not registered: {extra}"


def _inputs(case, idx, rng, dtype):
    shapes = case.shapes[idx]
    if case.make is not None:
        arrays = case.make(rng, shapes, dtype)
    else:
        arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grad_idx = range(len(arrays)) if case.grad_inputs is None else case.grad_inputs
    return [qr.tensor(np.array(a, dtype=dtype), requires_grad=i in grad_idx) for i, a in enumerate(arrays)]


def _run(case, tensors, weight_rng):
    for t in tensors:
        t.grad = None
    out = case.fn(*tensors)
    w = weight_rng.standard_normal(out.shape).astype(out.dtype)
    out.backward(w)
    return out, w, [t.grad for t in tensors]


@pytest.mark.parametrize("name,idx", PARAMS)
def test_grad_central_differences_float64(name, idx, rng):
    case = CASES[name]
    tensors = _inputs(case, idx, rng, np.float64)
    # A relative 1e-6 alone failed about once in 10^4 draws per case with a scalar operand (e.g. add
    # (), (2, 3): the scalar's gradient Σ w_ij cancels to ~0, the central difference's rounding
    # u·Σ|w_ij f_ij|/h does not; ~5e-4 per run over the table). The floor is that rounding bound
    # (tests/roundoff.py); measured over 2000 draws per case: worst error 0.05 of the tolerance.
    errors = check_central_differences(case.fn, tensors, seed=int(rng.integers(2**31)))
    assert errors, f"{name}: no input requires grad"
    for i, (err, tol) in errors.items():
        assert err <= tol, f"{name} shapes {case.shapes[idx]}: input {i} error {err:.2e} > tolerance {tol:.2e}"


@pytest.mark.parametrize("name,idx", PARAMS)
def test_float32_stays_float32_and_matches_float64(name, idx, rng):
    case = CASES[name]
    t64 = _inputs(case, idx, rng, np.float64)
    t32 = [qr.tensor(t.data.astype(np.float32), requires_grad=t.requires_grad) for t in t64]
    # the float64 reference uses the float32-rounded inputs, so only arithmetic precision differs
    t64 = [qr.tensor(t.data.astype(np.float64), requires_grad=t.requires_grad) for t in t32]
    seed = int(rng.integers(2**31))
    out64, w, g64 = _run(case, t64, np.random.default_rng(seed))
    out32, _, g32 = _run(case, t32, np.random.default_rng(seed))
    if name != "cast":  # the cast case produces float64 on purpose
        assert out32.dtype == np.float32, f"{name}: float32 inputs gave a {out32.dtype} output"
    # Relative 1e-5 / 1e-4 plus the float32 rounding floor (tests/roundoff.py): a quantity that cancels
    # (the scalar operand's gradient Σ w_ij b_ij of mul (), (2, 3); the output a·b of matmul (4,), (4,);
    # sum over 6 values) has a float32 error of u32·Σ|terms|, not of u32·|result|. Without the floor,
    # 2000 draws per case gave failures in mul/sub/pow/maximum/matmul, ~5e-3 per run over the table;
    # with it, the worst error over 2000 draws per case was 0.15 of the tolerance (cross_entropy (1, 3)).
    terms = Terms(case.fn, [t.data for t in t64], [t.requires_grad for t in t64])
    err = np.linalg.norm(out32.data.astype(np.float64) - out64.data)
    assert err <= 1e-5 * np.linalg.norm(out64.data) + terms.output_floor32(), f"{name}: float32 output differs"
    for i, (a, b) in enumerate(zip(g32, g64)):
        if b is None:
            continue
        assert a.dtype == np.float32, f"{name}: gradient of float32 input {i} has dtype {a.dtype}"
        err = np.linalg.norm(a.astype(np.float64) - b)
        tol = 1e-4 * max(np.linalg.norm(a), np.linalg.norm(b)) + terms.grad_floor32(w, i)
        assert err <= tol, f"{name}: input {i} float32 grad differs from float64 ({err:.2e} > {tol:.2e})"


@pytest.mark.torch
@pytest.mark.parametrize("name,idx", PARAMS)
def test_matches_torch_float64(name, idx, rng, torch):
    case = CASES[name]
    if case.torch_fn is None:
        pytest.fail(f"{name}: no PyTorch equivalent given in its OpCase")
    tensors = _inputs(case, idx, rng, np.float64)
    weight_rng_seed = int(rng.integers(2**31))
    out, w, grads = _run(case, tensors, np.random.default_rng(weight_rng_seed))
    tt = [torch.tensor(t.data, dtype=torch.float64, requires_grad=t.requires_grad) for t in tensors]
    tout = case.torch_fn(*tt)
    assert tuple(tout.shape) == out.shape, f"{name}: shape {out.shape} vs torch {tuple(tout.shape)}"
    assert qr.relative_error(out.data, tout.detach().numpy()) < 1e-10
    tout.backward(torch.tensor(w))
    for i, (g, t) in enumerate(zip(grads, tt)):
        if not t.requires_grad:
            continue
        tg = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
        assert qr.relative_error(g, tg) < 1e-10, f"{name}: gradient of input {i} differs from torch"


# ---------------------------------------------------------------------------- hypothesis
_BINARY = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
    "maximum": (lambda a, b: qr.maximum(a, b), np.maximum),
}


@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    op=st.sampled_from(sorted(_BINARY)),
    seed=st.integers(0, 2**31 - 1),
)
def test_binary_broadcasting_property(shapes, op, seed):
    """Any broadcastable pair: the output shape is NumPy's, each gradient has its input's shape and
    equals central differences."""
    rng = np.random.default_rng(seed)
    fn, np_fn = _BINARY[op]
    a_shape, b_shape = shapes.input_shapes
    a = rng.standard_normal(a_shape)
    b = rng.uniform(0.5, 2.0, b_shape) * rng.choice([-1, 1], b_shape)
    # maximum: no pair (a, b) within 1e-3 of a tie (>> the central-difference step 1e-6; before, a
    # standard normal a against b could land within 1e-6 of b, ~2e-5 per run); redraw a (~1 % of draws)
    while op == "maximum" and np.min(np.abs(a - b), initial=np.inf) < 1e-3:
        a = rng.standard_normal(a_shape)
    ta, tb = qr.tensor(a, requires_grad=True), qr.tensor(b, requires_grad=True)
    out = fn(ta, tb)
    assert out.shape == np.broadcast_shapes(a_shape, b_shape) == shapes.result_shape
    np.testing.assert_allclose(out.data, np_fn(a, b), rtol=1e-15, atol=0)
    # relative 1e-6 plus the rounding floor (tests/roundoff.py): a scalar or size-1 operand's gradient
    # sums up to 27 weighted terms and can cancel to ~0 (relative 1e-6 alone: 2 of 4000 draws failed,
    # worst 5.3 x the tolerance, i.e. ~2 % per run of 40 examples; with the floor, worst 0.036)
    errors = check_central_differences(fn, [ta, tb], seed=seed)
    assert ta.grad.shape == a_shape and tb.grad.shape == b_shape
    for i, (err, tol) in errors.items():
        assert err <= tol, f"{op} {a_shape} {b_shape}: input {i} error {err:.2e} > tolerance {tol:.2e}"


@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=4),
    data=st.data(),
    op=st.sampled_from(["sum", "mean", "max"]),
    keepdims=st.booleans(),
)
def test_reduction_axis_keepdims_property(shape, data, op, keepdims):
    """Every axis choice (None, int, negative int, tuple) and keepdims: NumPy's result and shape,
    gradients equal central differences."""
    ndim = len(shape)
    axis = data.draw(
        st.one_of(
            st.none(),
            st.integers(-ndim, ndim - 1),
            st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple),
        )
    )
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # Distinct values (no ties for max), spaced 2/n >= 7.8e-3 >> the central-difference step 1e-6,
    # and of order 1: with values up to ~100 (as before) a 256-element sum is ~1e4, and its rounding
    # error alone, ulp(1e4) / 2e-6 ~ 1e-6, reached the tolerance (CI, QLABREF_TEST_SEED=1858947157).
    n = int(np.prod(shape))
    x = ((rng.permutation(n) - (n - 1) / 2) * (2.0 / n)).reshape(shape)
    t = qr.tensor(x, requires_grad=True)
    fn = lambda t: getattr(t, op)(axis=axis, keepdims=keepdims)
    out = fn(t)
    expected = getattr(np, {"sum": "sum", "mean": "mean", "max": "max"}[op])(x, axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(out.data, expected, rtol=1e-14)
    errors = qr.gradcheck(fn, [t], seed=seed, raise_on_failure=False)
    assert errors[0] < 1e-6


@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), seed=st.integers(0, 2**31 - 1))
def test_transpose_and_reshape_roundtrip_property(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    perm = tuple(rng.permutation(len(shape)))
    t = qr.tensor(x, requires_grad=True)
    w = rng.standard_normal(int(np.prod(shape)))
    out = (t.transpose(*perm).reshape(-1) * qr.tensor(w)).sum()
    out.backward()
    np.testing.assert_array_equal(t.grad, w.reshape(np.transpose(x, perm).shape).transpose(np.argsort(perm)))
