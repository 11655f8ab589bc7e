"""Run-folder checkpoints that are data, not code, and the checks a resume makes before it touches anything.

A checkpoint is two files in the run folder:

``checkpoint-<sha256 prefix>.npz``
    every array of the state (model weights and buffers, optimizer moments, NumPy scalars as 0-d
    arrays), read back with ``np.load(..., allow_pickle=False)``: nothing in it can execute on load.
``checkpoint.json``
    everything else, as plain JSON: the format name and version, the iteration, the configuration, the
    optimizer/schedule/data-order state with every value tagged by its Python type (so ints stay ints,
    tuples stay tuples, integer dict keys stay integers, ``nan`` stays a float: a resume restores the
    exact objects a pickle held), the byte length, row count and SHA-256 of every record file at that
    iteration, the environment the bit-identity depends on (:func:`determinism_info`), the name, size
    and SHA-256 of the ``.npz`` file, and the SHA-256 of this document itself (``sha256``: of its
    canonical form without that key).

Writing is crash-safe: the ``.npz`` gets a content-addressed name and is written to a temporary file,
fsynced and renamed; then ``checkpoint.json`` is replaced the same way; only then are older ``.npz``
files removed. A SIGKILL at any moment leaves either the old pair or the new pair, both complete.

Reading (:func:`read_checkpoint`) checks, in this order, and raises :class:`RunFolderError` with one
line naming the file and the problem at the first failure: ``checkpoint.json`` is a UTF-8 JSON object
of this format and version whose own SHA-256 matches; the ``.npz`` it names exists with the recorded
size and SHA-256 and holds exactly the arrays the JSON refers to, none of them Python objects; every
tag decodes. :func:`check_records` then checks the record files against it. An old ``checkpoint.pkl``
is never unpickled (a pickle can run any code when loaded).
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import platform
import zipfile
from collections import OrderedDict

import numpy as np

__all__ = ["RunFolderError", "FORMAT", "VERSION", "CHECKPOINT_JSON", "LEGACY_CHECKPOINT", "write_checkpoint",
           "read_checkpoint", "check_records", "record_digest", "determinism_info", "drift", "encode", "decode"]

FORMAT = "qlabref-checkpoint"
VERSION = 2
CHECKPOINT_JSON = "checkpoint.json"
LEGACY_CHECKPOINT = "checkpoint.pkl"
_NPZ_GLOB = "checkpoint-*.npz"
#: a checkpoint.json larger than this is not a qlabref checkpoint (the state's arrays live in the .npz)
MAX_JSON_BYTES = 256 * 2**20


class RunFolderError(ValueError):
    """A run folder that cannot be resumed as it is: the message names the file and the problem, and
    nothing in the folder was changed."""


# ---------------------------------------------------------------------------------------- encoding
_TAGS = ("float", "array", "scalar", "tuple", "dict", "odict")


def encode(obj, arrays):
    """``obj`` (dicts, lists, tuples, str, int, float, bool, None, NumPy arrays and scalars) as JSON-able
    data; arrays go into ``arrays`` (name → ndarray) and are referred to by name."""
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        if arr.dtype.hasobject or arr.dtype.kind not in "biufc":
            raise TypeError(f"cannot store an array of dtype {arr.dtype} in a checkpoint")
        name = f"a{len(arrays)}"
        arrays[name] = arr
        return {"scalar" if isinstance(obj, np.generic) else "array": name}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else {"float": repr(float(obj))}
    if isinstance(obj, tuple):
        return {"tuple": [encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [encode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        tag = "odict" if isinstance(obj, OrderedDict) else "dict"
        return {tag: [[encode(k, arrays), encode(v, arrays)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def decode(data, arrays, used, where="state"):
    """Inverse of :func:`encode`; ``ValueError`` naming the place of anything it does not produce."""
    if data is None or isinstance(data, (bool, str, int)):
        return data
    if isinstance(data, float):
        if not math.isfinite(data):
            raise ValueError(f"{where}: a bare non-finite number")
        return data
    if isinstance(data, list):
        return [decode(v, arrays, used, f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, dict) or len(data) != 1 or next(iter(data)) not in _TAGS:
        raise ValueError(f"{where}: not a tagged value ({str(data)[:60]})")
    (tag, value), = data.items()
    if tag == "float":
        if value not in ("nan", "inf", "-inf"):
            raise ValueError(f"{where}: bad float {value!r}")
        return float(value)
    if tag in ("array", "scalar"):
        if not isinstance(value, str) or value not in arrays:
            raise ValueError(f"{where}: refers to array {value!r}, which the .npz does not hold")
        used.add(value)
        arr = arrays[value]
        if tag == "scalar":
            if arr.ndim != 0:
                raise ValueError(f"{where}: scalar {value!r} has shape {arr.shape}")
            return arr[()]
        return arr
    if not isinstance(value, list):
        raise ValueError(f"{where}: {tag} must hold a list")
    if tag == "tuple":
        return tuple(decode(v, arrays, used, f"{where}[{i}]") for i, v in enumerate(value))
    out = OrderedDict() if tag == "odict" else {}
    for i, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"{where}: dict item {i} is not a [key, value] pair")
        key = decode(pair[0], arrays, used, f"{where} key {i}")
        if not isinstance(key, (str, int, float, bool, tuple, type(None))):
            raise ValueError(f"{where}: dict key {i} is not hashable")
        out[key] = decode(pair[1], arrays, used, f"{where}[{key!r}]")
    return out


def _canonical(doc) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` through a temporary file, fsync, rename (and fsync the folder)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


# ---------------------------------------------------------------------------------------- records
def record_digest(path, size):
    """SHA-256 of the first ``size`` bytes of ``path``."""
    h = hashlib.sha256()
    left = size
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _parse_number(text, kind, blank_ok):
    if text == "":
        if blank_ok:
            return None
        raise ValueError("empty cell")
    if kind == "int":
        if not (text.isdigit() or (text[0] == "-" and text[1:].isdigit())):
            raise ValueError(f"{text[:30]!r} is not a whole number")
        return int(text)
    if kind == "bit":
        if text not in ("0", "1"):
            raise ValueError(f"{text[:30]!r} is not 0 or 1")
        return int(text)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text[:30]!r} is not a number") from None


#: per record file: the header, and each column's kind and whether it may be empty
RECORD_SCHEMAS = {
    "steps": (("iter", "int", False), ("loss", "float", False), ("lr", "float", True), ("evals", "int", True),
              ("a0", "float", True), ("a1", "float", True), ("a2", "float", True), ("alpha_star", "float", True),
              ("pre_lr", "float", True), ("fallback", "bit", True)),
    "timing": (("iter", "int", False), ("seconds", "float", False), ("data", "float", False),
               ("forward_backward", "float", False), ("probe", "float", False), ("update", "float", False),
               ("records", "float", False)),
    "evals": (("iter", "int", False), ("test_loss", "float", False), ("test_accuracy", "float", False)),
}
RECORD_FILES = {"steps": "steps.csv", "timing": "timing.csv", "evals": "evals.csv"}


def parse_record_bytes(blob: bytes, key, path):
    """The rows of a record file's bytes as lists of numbers; ``RunFolderError`` naming the file, the
    line and the problem (not UTF-8, wrong header, wrong number of cells, a cell that is not a number)."""
    schema = RECORD_SCHEMAS[key]
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunFolderError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None
    if "\x00" in text:
        raise RunFolderError(f"{path}: holds NUL bytes at offset {text.index(chr(0))} (damaged)")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the bytes end at a row boundary
    header = tuple(name for name, _, _ in schema)
    if not lines or tuple(lines[0].split(",")) != header:
        raise RunFolderError(f"{path}: line 1 is not the header {','.join(header)}")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) != len(schema):
            raise RunFolderError(f"{path}: line {n} has {len(cells)} cells, expected {len(schema)}")
        row = []
        for cell, (name, kind, blank_ok) in zip(cells, schema):
            try:
                row.append(_parse_number(cell, kind, blank_ok))
            except ValueError as exc:
                raise RunFolderError(f"{path}: line {n}, column {name}: {exc}") from None
        rows.append(row)
    if torn:
        raise RunFolderError(f"{path}: line {len(lines) + 1} is cut off where the checkpoint's rows should end "
                             f"(rows before the checkpoint were edited or damaged)")
    return rows


def check_records(out, expected, it):
    """Check the record files of ``out`` against a checkpoint's ``records`` entry at iteration ``it``
    without changing anything: each file exists and holds at least the recorded bytes, those bytes have
    the recorded SHA-256, parse row by row, and end where the checkpoint does (``steps.csv`` and
    ``timing.csv``: iterations 1..it in order; ``evals.csv``: from 0, increasing, the last at most it)."""
    for key, name in RECORD_FILES.items():
        path = os.path.join(out, name)
        exp = expected[key]
        if not os.path.isfile(path):
            raise RunFolderError(f"{path}: missing; the checkpoint at iteration {it} needs its first "
                                 f"{exp['size']} bytes")
        size = os.path.getsize(path)
        if size < exp["size"]:
            raise RunFolderError(f"{path}: {size} bytes, shorter than the {exp['size']} the checkpoint at "
                                 f"iteration {it} recorded (truncated?)")
        with open(path, "rb") as f:
            blob = f.read(exp["size"])
        rows = parse_record_bytes(blob, key, path)
        if _sha256(blob) != exp["sha256"]:
            raise RunFolderError(f"{path}: its first {exp['size']} bytes differ from what the checkpoint at "
                                 f"iteration {it} recorded (SHA-256 mismatch: edited or damaged)")
        iters = [r[0] for r in rows]
        if key in ("steps", "timing"):
            if iters != list(range(1, it + 1)):
                raise RunFolderError(f"{path}: rows are not iterations 1..{it} as the checkpoint expects")
        elif not iters or iters[0] != 0 or any(b <= a for a, b in zip(iters, iters[1:])) or iters[-1] > it:
            raise RunFolderError(f"{path}: evaluations do not run from iteration 0 up to at most {it}")


# ---------------------------------------------------------------------------------------- determinism
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS")


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _blas():
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no dict mode
        return None


def determinism_info():
    """What a bit-identical resume depends on: thread-count variables (unset = None), Numba's thread
    count, the CPU (architecture, model, count: OpenBLAS picks kernels and a default thread count from
    them), the BLAS NumPy was built with, the Python/NumPy/Numba/qlabref versions and the backend."""
    from . import __version__
    from .backends import get_backend

    info = {var: os.environ.get(var) for var in _THREAD_VARS}
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = int(numba.get_num_threads())
    except Exception:  # pragma: no cover - numba is a dependency
        info["numba"], info["numba_threads"] = None, None
    info.update(python=platform.python_version(), numpy=np.__version__, qlabref=__version__, blas=_blas(),
                backend=get_backend(), machine=platform.machine(), cpu=_cpu_model(), cpu_count=os.cpu_count())
    return info


def drift(saved, now):
    """``{key: [saved, now]}`` for every entry that differs."""
    keys = list(saved) + [k for k in now if k not in saved]
    return {k: [saved.get(k), now.get(k)] for k in keys if saved.get(k) != now.get(k)}


# ---------------------------------------------------------------------------------------- write / read
def write_checkpoint(out, body, state):
    """Write ``state`` (the objects to restore) and ``body`` (JSON-able metadata) as a checkpoint pair
    (module docstring). Returns the path of ``checkpoint.json``."""
    arrays = {}
    enc = encode(state, arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob = buf.getvalue()
    digest = _sha256(blob)
    npz_name = f"checkpoint-{digest[:16]}.npz"
    atomic_write_bytes(os.path.join(out, npz_name), blob)
    doc = {"format": FORMAT, "version": VERSION, "arrays_file": npz_name, "arrays_bytes": len(blob),
           "arrays_sha256": digest, "body": body, "state": enc}
    doc["sha256"] = _sha256(_canonical(doc))
    path = os.path.join(out, CHECKPOINT_JSON)
    atomic_write_bytes(path, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
    for old in glob.glob(os.path.join(glob.escape(out), _NPZ_GLOB)):
        if os.path.basename(old) != npz_name:
            try:
                os.unlink(old)
            except OSError:  # pragma: no cover - removed meanwhile
                pass
    return path


def has_checkpoint_traces(out):
    """The names of checkpoint files in ``out`` (any format), for refusing to start over silently."""
    names = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(glob.escape(out), _NPZ_GLOB)))]
    for n in (CHECKPOINT_JSON, LEGACY_CHECKPOINT):
        if os.path.exists(os.path.join(out, n)):
            names.append(n)
    return names


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def read_checkpoint(out):
    """``(body, state)`` of the checkpoint in ``out`` after every check in the module docstring;
    ``RunFolderError`` naming the file and the problem otherwise. ``None`` when there is no checkpoint
    at all (a run killed before its first one)."""
    path = os.path.join(out, CHECKPOINT_JSON)
    legacy = os.path.join(out, LEGACY_CHECKPOINT)
    if not os.path.lexists(path):
        if os.path.lexists(legacy):
            raise RunFolderError(
                f"{legacy}: an old pickle checkpoint; a pickle can run any code when loaded, so qlabref no "
                f"longer reads it. Nothing was changed; start the run again in a new folder")
        stray = has_checkpoint_traces(out)
        if stray:
            raise RunFolderError(f"{path}: missing, but the folder holds {', '.join(stray)}: the checkpoint was "
                                 f"deleted or the folder is damaged; not starting over on top of it")
        return None
    if not os.path.isfile(path):
        raise RunFolderError(f"{path}: not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise RunFolderError(f"{path}: empty (damaged)")
    if size > MAX_JSON_BYTES:
        raise RunFolderError(f"{path}: {size} bytes, far larger than a qlabref checkpoint (foreign file?)")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise RunFolderError(f"{path}: not a text file (damaged or foreign)") from None
    except ValueError as exc:
        raise RunFolderError(f"{path}: not valid JSON ({str(exc)[:80]}); damaged or truncated") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RunFolderError(f"{path}: not a qlabref checkpoint (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise RunFolderError(f"{path}: checkpoint format version {doc.get('version')!r}; this qlabref reads "
                             f"version {VERSION}")
    claimed = doc.pop("sha256", None)
    try:
        actual = _sha256(_canonical(doc))
    except ValueError:
        actual = None
    if claimed != actual:
        raise RunFolderError(f"{path}: its SHA-256 does not match its content (edited or damaged)")
    for key, kind in (("arrays_file", str), ("arrays_bytes", int), ("arrays_sha256", str), ("body", dict)):
        if not isinstance(doc.get(key), kind):
            raise RunFolderError(f"{path}: entry {key!r} missing or of the wrong type")
    npz_name = doc["arrays_file"]
    if os.path.basename(npz_name) != npz_name or not npz_name.endswith(".npz"):
        raise RunFolderError(f"{path}: arrays_file {npz_name!r} is not a file name in the run folder")
    npz = os.path.join(out, npz_name)
    if not os.path.isfile(npz):
        raise RunFolderError(f"{npz}: missing (named by {path})")
    with open(npz, "rb") as f:
        blob = f.read(doc["arrays_bytes"] + 1)
    if len(blob) != doc["arrays_bytes"]:
        raise RunFolderError(f"{npz}: {os.path.getsize(npz)} bytes, the checkpoint recorded {doc['arrays_bytes']} "
                             f"(truncated or replaced)")
    if _sha256(blob) != doc["arrays_sha256"]:
        raise RunFolderError(f"{npz}: SHA-256 does not match the one in {CHECKPOINT_JSON} (damaged or tampered)")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise RunFolderError(f"{npz}: not a readable array archive ({str(exc)[:80]})") from None
    used = set()
    try:
        state = decode(doc.get("state"), arrays, used)
    except ValueError as exc:
        raise RunFolderError(f"{path}: {exc}") from None
    extra = sorted(set(arrays) - used)
    if extra:
        raise RunFolderError(f"{npz}: holds arrays the checkpoint does not refer to ({', '.join(extra[:5])})")
    return doc["body"], state
