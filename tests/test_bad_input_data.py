"""Bad input to tensors and file readers: each case a named error, nothing silently accepted."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qlabref as qr
from qlabref import interop
from qlabref.errors import FileFormatError
from qlabref.nn.module import StateDictError


# ------------------------------------------------------------------------------------------ tensors
@pytest.mark.parametrize("data, msg", [
    (["a"], "holds numbers"), (None, "got None"), ("abc", "got a str"), ({"a": 1}, "got a dict"),
    (np.array([1, None], dtype=object), "dtype object"), (np.array([1j]), "complex128"),
])
def test_tensor_refuses_what_it_cannot_hold(data, msg):
    with pytest.raises(TypeError, match=msg):
        qr.tensor(data)


def test_ragged_lists_and_bad_dtypes_are_named():
    with pytest.raises(ValueError, match="rectangular"):
        qr.tensor([[1.0, 2.0], [3.0]])
    with pytest.raises(TypeError, match="not a dtype"):
        qr.tensor([1.0], dtype="no-such-type")
    with pytest.raises(TypeError, match="holds numbers"):
        qr.tensor([1.0], dtype=object)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, "uint8"])
def test_non_float_cast_of_a_tensor_that_requires_grad_is_refused(dtype):
    x = qr.tensor(np.array([0.5, 1.5]), requires_grad=True)
    with pytest.raises(TypeError, match="requires grad"):
        x.astype(dtype)
    with qr.no_grad():  # no gradient wanted: the values are fine
        assert np.array_equal(x.astype(dtype).data, np.array([0.5, 1.5]).astype(dtype))
    assert np.array_equal(x.detach().astype(dtype).data, np.array([0.5, 1.5]).astype(dtype))
    with pytest.raises(TypeError, match="not a dtype"):
        x.astype("no-such-type")


def test_float_cast_still_differentiates():
    x = qr.tensor(np.array([0.5, 1.5]), requires_grad=True)
    (x.astype(np.float32) * 3.0).sum().backward()
    assert x.grad.dtype == np.float64 and np.array_equal(x.grad, [3.0, 3.0])


def test_data_assignment_checks_shape_and_dtype_for_a_tensor_that_requires_grad():
    p = qr.tensor(np.zeros((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*shape \(3, 2\)"):
        p.data = np.zeros((3, 2))
    with pytest.raises(TypeError, match="float32 or float64"):
        p.data = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(TypeError, match="holds numbers"):
        p.data = np.array([["a"] * 3] * 2)
    p.data = np.ones((2, 3), dtype=np.float32)  # another float dtype of the same shape: Module.to()
    assert p.data.dtype == np.float32 and p.shape == (2, 3)
    c = qr.tensor(np.zeros(2))  # a constant may change shape
    c.data = np.zeros(5)
    assert c.shape == (5,)


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=3), extra=st.integers(0, 3))
def test_out_of_range_axes_are_named(shape, extra):
    x = qr.tensor(np.ones(shape), requires_grad=True)
    bad = len(shape) + extra
    for call, name in [(lambda: x.sum(axis=bad), "sum"), (lambda: x.mean(axis=-bad - 1), "mean"),
                       (lambda: x.max(axis=bad), "max"), (lambda: x.log_softmax(axis=bad), "log_softmax"),
                       (lambda: x.flatten(bad), "flatten"),
                       (lambda: qr.ops.stack([x, x], axis=bad + 1), "stack"),
                       (lambda: qr.ops.concatenate([x, x], axis=bad), "concatenate")]:
        with pytest.raises(ValueError, match=f"{name}: .*out of range"):
            call()
    with pytest.raises(TypeError, match="axis must be"):
        x.sum(axis=0.5)


def test_transpose_axes_out_of_range_are_refused_not_wrapped():
    x = qr.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    with pytest.raises(ValueError, match="axis 4 is out of range"):
        x.transpose(1, 4)  # used to wrap 4 % 2 = 0 and return x.T
    with pytest.raises(TypeError, match="axes must be integers"):
        x.transpose("a")
    assert np.array_equal(x.transpose(-1, 0).data, np.arange(6.0).reshape(2, 3).T)


def test_reshape_and_operands_are_checked():
    x = qr.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(TypeError, match="shape must be integers"):
        x.reshape("a")
    with pytest.raises(ValueError, match="at most one -1"):
        x.reshape(-1, -1)
    with pytest.raises(ValueError, match="sizes >= 0"):
        x.reshape(-2, 3)
    for bad in (None, "2"):  # would have been NaN / 2.0 silently
        with pytest.raises(TypeError, match="holds numbers"):
            x + bad
        with pytest.raises(TypeError, match="holds numbers"):
            x ** bad
    with pytest.raises(TypeError, match="qr.stack"):
        qr.tensor([x, x])


def test_grad_assignment_checks_shape_and_dtype():
    x = qr.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"shape \(5,\) for a tensor of shape \(2, 3\)"):
        x.grad = np.zeros(5)
    with pytest.raises(TypeError, match="float array"):
        x.grad = np.zeros((2, 3), dtype=np.int64)
    x.grad = np.ones((2, 3))
    (x * 2.0).sum().backward()
    assert np.array_equal(x.grad, np.full((2, 3), 3.0))  # accumulated: 1 + 2


# ------------------------------------------------------------------------------------------ files
@pytest.fixture
def model_and_file(tmp_path):
    m = qr.models.MLP(sizes=(4, 3, 2), seed=0, dtype=np.float64)
    path = tmp_path / "m.npz"
    interop.save_npz(m, path)
    return m, path


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_bad_npz_files_are_named_and_load_nothing(tmp_path, model_and_file):
    m, good = model_and_file
    raw = good.read_bytes()
    np.save(tmp_path / "one.npy", np.zeros(3))
    np.savez(tmp_path / "obj.npz", a=np.array([1, None], dtype=object))
    corrupt = bytearray(raw)
    with zipfile.ZipFile(good) as z:  # flip bytes inside the first member's data: CRC error
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 20
    corrupt[start:start + 8] = bytes(255 - b for b in corrupt[start:start + 8])
    cases = [
        (_write(tmp_path, "half.npz", raw[:len(raw) // 2]), FileFormatError, "damaged or truncated"),
        (_write(tmp_path, "tail.npz", raw[:-7]), FileFormatError, "damaged or truncated"),
        (_write(tmp_path, "bad.npz", bytes(corrupt)), FileFormatError, "damaged or truncated"),
        (_write(tmp_path, "empty.npz", b""), FileFormatError, "empty"),
        (_write(tmp_path, "text.npz", b"weights = 1, 2, 3\n"), FileFormatError, "not a .npz archive"),
        (tmp_path / "one.npy", FileFormatError, r"\.npy file"),
        (tmp_path / "obj.npz", FileFormatError, "pickled"),
        (tmp_path / "missing.npz", FileNotFoundError, "no such file"),
        (tmp_path, IsADirectoryError, "is a folder"),
    ]
    before = {k: v.copy() for k, v in m.state_dict().items()}
    for path, exc, msg in cases:
        with pytest.raises(exc, match=msg) as e:
            interop.load_npz(m, path)
        assert str(path) in str(e.value), f"the message does not name the file: {e.value}"
        for k, v in m.state_dict().items():
            assert np.array_equal(v, before[k])
    interop.load_npz(m, good)  # the good file still loads


def test_npz_with_wrong_keys_names_the_file_and_the_keys(tmp_path, model_and_file):
    m, _ = model_and_file
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(StateDictError, match=r"other\.npz.*missing keys: fc1\.weight.*unexpected keys: a"):
        interop.load_npz(m, tmp_path / "other.npz")


def test_module_load_state_dict_refuses_non_mappings(model_and_file):
    m, _ = model_and_file
    for bad in (None, 3, [("fc1.weight", np.zeros((3, 4)))]):
        with pytest.raises(TypeError, match="expected a mapping"):
            m.load_state_dict(bad)


def test_save_npz_into_a_missing_folder_is_named(tmp_path, model_and_file):
    m, _ = model_and_file
    with pytest.raises(FileNotFoundError, match="does not exist"):
        interop.save_npz(m, tmp_path / "no" / "such" / "m.npz")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        interop.save_npz(m, tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp.npz")]
