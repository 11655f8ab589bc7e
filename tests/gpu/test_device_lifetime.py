"""Lifetime of device buffers and the bounds of the resident kernels (``qlabref.device``).

The first real-GPU run of the device-resident tensors (H200, numba-cuda 0.30.4) failed with
``ReferenceError: weakly-referenced object no longer exists`` in Numba's ``OwnedPointer`` and
``CUDA_ERROR_INVALID_VALUE`` from ``cuMemcpyDtoH``, then ``CUDA_ERROR_ILLEGAL_ADDRESS``: the buffer
pool handed out memory that Numba had already freed. A ``DeviceArray`` that died in a reference cycle
was collected together with its Numba buffer; CPython runs the weak-reference callbacks of such
garbage (Numba's ``weakref.finalize`` on the ``OwnedPointer``, which frees the memory) *before* the
``__del__`` that put the buffer back into the pool. The simulator never frees anything, so these
tests check the property that was missing, which holds on both: a pooled buffer is never garbage
while the pool may hand it out again (a ``weakref.finalize`` on it, as Numba's, does not fire), and
arrays made after such a collection hold their own values. Every comparison is against NumPy on the
host, with fresh random inputs.
"""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import qlabref as qr


@pytest.fixture(autouse=True)
def _cuda_here():
    from qlabref.kernels import launch

    ok, reason = launch.cuda_status()
    if not ok:
        pytest.skip(f"needs a CUDA GPU or the simulator (NUMBA_ENABLE_CUDASIM=1): {reason}")


def _pooled(rng, shape, dtype=np.float64):
    """A pooled device array (the result of an op) and its host value."""
    from qlabref import device

    a = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    d = np.add(device.to_device(a), device.to_device(b))
    assert d._pooled
    return d, a + b


def test_a_pooled_buffer_is_never_garbage_when_its_array_dies_in_a_cycle():
    rng = np.random.default_rng()
    d, _ = _pooled(rng, (5, 7))
    freed = []
    # Numba's OwnedPointer frees the GPU memory from a weakref.finalize callback like this one.
    weakref.finalize(d.buf, freed.append, True)
    cycle = [d]
    cycle.append(cycle)  # the array dies in a reference cycle: only the cycle collector frees it
    del d, cycle
    gc.collect()
    assert not freed, "the pool reuses a buffer that was collected (freed on a GPU) with its array"


def test_arrays_made_after_cycles_are_collected_hold_their_own_values():
    from qlabref import device

    rng = np.random.default_rng()
    keep = []
    for _ in range(3):
        for _ in range(4):  # several arrays of one size die in cycles, their buffers go back to the pool
            d, _ = _pooled(rng, (6, 5))
            cycle = [d]
            cycle.append(cycle)
            del d, cycle
        gc.collect()
        for _ in range(4):  # new arrays of that size reuse the buffers: each must hold its own result
            keep.append(_pooled(rng, (6, 5)))
    assert len({id(d.buf) for d, _ in keep}) == len(keep)  # no two live arrays share a buffer
    for d, want in keep:
        np.testing.assert_array_equal(device.to_host(d), want)
        np.testing.assert_array_equal(device.to_host(d.copy()), want)  # device-to-device copy, then back


def test_a_view_outlives_every_other_reference_to_its_buffer():
    from qlabref import device

    rng = np.random.default_rng()
    d, want = _pooled(rng, (4, 6))
    views = [d.reshape(3, 8), d.reshape(-1), np.expand_dims(d, 0), d.ravel().reshape(2, 12)]
    del d
    gc.collect()
    for _ in range(3):  # other arrays of the same size come and go meanwhile
        _pooled(rng, (4, 6))
    gc.collect()
    for v in views:
        np.testing.assert_array_equal(device.to_host(v), want.reshape(v.shape))
        np.testing.assert_array_equal(v.copy().get(), want.reshape(v.shape))
        np.testing.assert_array_equal(v.astype(np.float32).get(), want.reshape(v.shape).astype(np.float32))


def test_empty_cache_keeps_the_buffers_of_live_arrays():
    from qlabref import device

    rng = np.random.default_rng()
    live, want = _pooled(rng, (3, 3))
    dead, _ = _pooled(rng, (3, 3))
    del dead
    device.empty_cache()
    freed = []
    weakref.finalize(live.buf, freed.append, True)
    cycle = [live]
    cycle.append(cycle)
    view = live.reshape(9)
    del live, cycle
    gc.collect()
    assert not freed
    np.testing.assert_array_equal(view.get(), want.reshape(9))
    del view
    gc.collect()
    again, want2 = _pooled(rng, (3, 3))  # the buffer came back to the pool and serves a new array
    np.testing.assert_array_equal(again.get(), want2)


def test_training_steps_with_gc_between_them_match_numpy():
    """A few QLABGrad steps of a small MLP on the device, the cycle collector run between them (it
    collects the autograd graphs' cycles), against the ``numpy`` backend on the host."""
    rng = np.random.default_rng()
    x = rng.standard_normal((6, 10))
    y = rng.integers(0, 3, 6)
    seed = int(rng.integers(1000))

    def run(where):
        model = qr.nn.Sequential(qr.nn.Linear(10, 8, dtype=np.float64, rng=np.random.default_rng(seed)),
                                 qr.nn.ReLU(),
                                 qr.nn.Linear(8, 3, dtype=np.float64, rng=np.random.default_rng(seed + 1)))
        xb, yb = qr.Tensor(x), qr.Tensor(y)
        if where == "cuda":
            model.to("cuda")
            xb, yb = xb.to("cuda"), yb.to("cuda")
        opt = qr.optim.QLABGrad(model.parameters())
        losses = []
        for _ in range(3):
            losses.append(float(opt.step(lambda: qr.nn.functional.cross_entropy(model(xb), yb))))
            gc.collect()
        return losses, [p.numpy() for p in model.parameters()]

    with qr.use_backend("numpy"):
        want_losses, want_params = run("cpu")
    got_losses, got_params = run("cuda")
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-10)
    for g, w in zip(got_params, want_params):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("target, value", [((3,), (1, 3)), ((2, 3), (1, 1, 3)), ((2, 3), (2, 1)), ((2, 3), ())])
def test_assignment_broadcasts_as_numpy(target, value):
    from qlabref import device

    rng = np.random.default_rng()
    host = rng.standard_normal((4, *target))
    v = rng.standard_normal(value)
    d = device.to_device(host)
    host[1] = v
    d[1] = device.to_device(v) if v.ndim else float(v)
    np.testing.assert_array_equal(d.get(), host)
    d2 = device.to_device(host)
    d2[2] = np.asarray(v)  # a host value
    host[2] = v
    np.testing.assert_array_equal(d2.get(), host)


@pytest.mark.parametrize("target, value", [((3,), (2, 3)), ((3,), (3, 1)), ((2, 3), (4,))])
def test_assignment_refuses_what_numpy_refuses(target, value):
    from qlabref import device

    d = device.to_device(np.zeros((2, *target)))
    with pytest.raises(ValueError):
        np.zeros((2, *target))[0] = np.ones(value)  # the oracle refuses too
    with pytest.raises(ValueError, match="could not broadcast"):
        d[0] = device.to_device(np.ones(value))


def test_cross_entropy_kernel_never_reads_outside_a_row():
    """Labels are range-checked on the host before the kernel runs; if a stale range let one through,
    the kernel gives NaN rather than reading another row (a negative index wraps round on a GPU)."""
    from qlabref import device
    from qlabref.kernels import cuda_elementwise as ke
    from qlabref.kernels import cuda_reduce as rd

    rng = np.random.default_rng()
    logp = rng.standard_normal((4, 3))
    for bad in (-1, 3, 7):
        labels = np.array([0, 2, bad, 1])
        out = device._empty((), np.float64)
        rd.ce_forward_kernel(device.nbtype(np.float64))[1, ke.TPB](device.to_device(logp).buf.reshape(4, 3),
                                                                   device.to_device(labels).buf, 1.0, out.buf)
        assert np.isnan(out.item()), bad
    labels = np.array([0, 2, 1, 1])
    out = device._empty((), np.float64)
    rd.ce_forward_kernel(device.nbtype(np.float64))[1, ke.TPB](device.to_device(logp).buf.reshape(4, 3),
                                                               device.to_device(labels).buf, 0.25, out.buf)
    np.testing.assert_allclose(out.item(), -logp[np.arange(4), labels].sum() * 0.25, rtol=1e-12)


def test_a_stale_label_range_is_dropped_by_an_in_place_write():
    from qlabref import device

    labels = device.to_device(np.array([0, 1, 2]))
    assert labels._range == (0, 2)
    labels[1] = 5
    assert labels._range is None
    logits = qr.Tensor(np.random.default_rng().standard_normal((3, 3))).to("cuda")
    with pytest.raises(ValueError, match="out of range"):
        qr.nn.functional.cross_entropy(logits, qr.Tensor._from_op(labels, False))


_INDICES = [((5,), 1), ((5,), -1), ((5,), 4), ((5,), slice(None, None, -1)), ((5,), slice(4, 0, -2)),
            ((3, 4), 2), ((3, 4), -3), ((3, 4), (1, 2)), ((3, 4), (-1, -4)), ((3, 4), (slice(None), -1)),
            ((3, 4), (None, 1)), ((2, 3, 4), (1, Ellipsis, 2)), ((2, 3, 4), (Ellipsis, -1)), ((), ()),
            ((2, 3, 4), (slice(None, None, -1), 0, slice(1, None, 2)))]


@pytest.mark.parametrize("shape, index", _INDICES)
def test_basic_indexing_reads_and_writes_as_numpy(shape, index):
    """Every basic index (an int of a 1-D array included: its offset was garbage, an out-of-bounds
    read on the device) reads and assigns the elements NumPy does."""
    from qlabref import device

    rng = np.random.default_rng()
    host = rng.standard_normal(shape)
    d = device.to_device(host)
    np.testing.assert_array_equal(np.asarray(d[index].get()), host[index])
    v = rng.standard_normal(np.shape(host[index]))
    host[index] = v
    d[index] = device.to_device(v) if np.ndim(v) else float(v)
    np.testing.assert_array_equal(d.get(), host)


# ----------------------------------------------------------------- the simulator's poisoning aid
SIM = __import__("os").environ.get("NUMBA_ENABLE_CUDASIM") == "1"


@pytest.mark.skipif(not SIM, reason="poison_pool is the simulator's aid (on a GPU: compute-sanitizer)")
def test_poisoned_pool_makes_reads_of_returned_or_unwritten_memory_show():
    """With ``poison_pool`` on (tests/gpu/conftest.py turns it on under the simulator), memory the
    pool hands out or takes back reads as NaN, so a stale alias or an unwritten output cannot pass a
    comparison with NumPy by luck, as it could when the simulator kept every old value."""
    from qlabref import device

    old = device.poison_pool(True)
    try:
        rng = np.random.default_rng()
        d, want = _pooled(rng, (5, 3))
        np.testing.assert_array_equal(device.to_host(d), want)  # an op writes all of its output
        stale = d.buf  # a raw alias of the memory, not a DeviceArray: it does not keep the owner
        del d
        gc.collect()
        assert np.isnan(stale.copy_to_host()).all(), "a buffer back in the pool still reads its old values"
        fresh = device._empty((7,), np.float64)  # uninitialised as on a GPU, but visibly so
        assert np.isnan(device.to_host(fresh)).all()
        idx = device._empty((4,), np.int64)
        assert (device.to_host(idx) == -1).all()  # an index nobody wrote: out of range
        v, want2 = _pooled(rng, (2, 6))
        keep = v.reshape(12)  # a view keeps its owner, so its memory is never poisoned under it
        del v
        gc.collect()
        for _ in range(3):  # other arrays of that size come and go, poisoned as they return
            _pooled(rng, (2, 6))
        gc.collect()
        np.testing.assert_array_equal(device.to_host(keep), want2.reshape(12))
    finally:
        device.poison_pool(old)
