"""Weight exchange with PyTorch, and ``.npz`` checkpoints of a model's state.

- ``load_torch_state_dict(model, sd)``: a PyTorch state_dict (torch tensors or arrays) into a qlabref
  model. Accepts torchvision names (``downsample``, ``fc``) and kuangliu/pytorch-cifar names
  (``shortcut``, ``linear``), with or without DataParallel's ``module.`` prefix. Strict by default;
  a failed load changes nothing.
- ``to_torch(model)``: the equivalent ``torch.nn.Module`` with the same weights and buffers (needs the
  ``torch`` extra); its ``state_dict`` keys equal ours, and it computes the same function.
- ``save_npz(model, path)`` / ``load_npz(model, path)``: the state_dict as a NumPy ``.npz``.

torch is imported only inside the functions that need it.
"""
from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections import OrderedDict

import numpy as np

from .errors import FileFormatError
from .nn import layers as L
from .nn.module import Module, StateDictError, _as_array

__all__ = ["translate_keys", "load_torch_state_dict", "to_torch", "save_npz", "load_npz", "read_npz"]

# kuangliu/pytorch-cifar → torchvision names (only inside keys, at component boundaries)
_KEY_RULES = (
    (re.compile(r"(^|\.)shortcut\."), r"\1downsample."),
    (re.compile(r"^linear\."), "fc."),
)


def _kuangliu_to_torchvision(key):
    for pattern, repl in _KEY_RULES:
        key = pattern.sub(repl, key)
    return key


def translate_keys(state_dict, model_keys=None):
    """A PyTorch state_dict's keys in qlabref's (torchvision) naming; values become NumPy arrays.

    Without ``model_keys``: strip a leading ``module.`` and map kuangliu's ``shortcut``/``linear`` to
    ``downsample``/``fc``, unconditionally. With ``model_keys`` (the keys of the model to load into),
    a key the model already has is kept as it is, and a renaming is used only when it produces a key
    of the model; other keys pass through unchanged (so they are reported as unexpected under the
    name the user gave). Two source keys mapping to one name is an error."""
    out, source = OrderedDict(), {}
    for key, value in state_dict.items():
        if model_keys is None:
            new = _kuangliu_to_torchvision(key[len("module."):] if key.startswith("module.") else key)
        else:
            new = key
            if new not in model_keys:
                candidates = [key[len("module."):]] if key.startswith("module.") else []
                candidates += [_kuangliu_to_torchvision(c) for c in candidates + [key]]
                new = next((c for c in candidates if c in model_keys), key)
        if new in out:
            raise ValueError(f"translate_keys: keys '{source[new]}' and '{key}' both map to '{new}'")
        source[new] = key
        try:
            out[new] = _as_array(value)
        except Exception:  # noqa: BLE001 - e.g. bfloat16: load_state_dict reports it under its key
            out[new] = value
    return out


def load_torch_state_dict(model: Module, state_dict, strict=True):
    """Load a PyTorch state_dict into ``model`` (see module docstring). Values are cast to the model's
    dtypes; shapes must match exactly; a failed load changes nothing. Returns
    ``(missing_keys, unexpected_keys)``."""
    if not isinstance(model, Module):
        raise TypeError(f"load_torch_state_dict: model must be a qr.nn.Module, got {type(model).__name__}")
    return model.load_state_dict(translate_keys(state_dict, set(model._state_targets())), strict=strict)


# ------------------------------------------------------------------------------------------ to_torch
def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("qr.interop.to_torch needs PyTorch: pip install 'qlabref[torch]'") from e
    return torch


def _torch_dtype(torch, dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]


def _convert(m: Module, torch):
    """The torch module for one of ours (recursively). Custom models map to small torch classes whose
    forward mirrors ours line by line."""
    nn = torch.nn
    from . import models

    dt = _torch_dtype(torch, m.dtype) if m.parameters() else None
    if isinstance(m, L.Linear):
        return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dt)
    if isinstance(m, L.Conv2d):
        return nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                         bias=m.bias is not None, dtype=dt)
    if isinstance(m, L.BatchNorm2d):
        bdt = _torch_dtype(torch, m._buffers["running_mean"].dtype) if m.track_running_stats else dt
        return nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                              track_running_stats=m.track_running_stats, dtype=bdt)
    if isinstance(m, L.ReLU):
        return nn.ReLU()
    if isinstance(m, L.AvgPool2d):
        return nn.AvgPool2d(m.kernel_size, m.stride, m.padding, count_include_pad=m.count_include_pad)
    if isinstance(m, L.MaxPool2d):
        return nn.MaxPool2d(m.kernel_size, m.stride, m.padding)
    if isinstance(m, L.AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool2d(m.output_size)
    if isinstance(m, L.Flatten):
        return nn.Flatten(m.start_dim, m.end_dim)
    if isinstance(m, L.Identity):
        return nn.Identity()
    if isinstance(m, L.Sequential):
        return nn.Sequential(*[_convert(c, torch) for c in m])
    if isinstance(m, (models.MLP, models.PaperCNN, models.BasicBlock, models.ResNet)):
        return _mirror(m, torch)
    raise TypeError(f"to_torch: no PyTorch equivalent known for {type(m).__name__} (at '{m.path()}')")


def _mirror(m: Module, torch):
    """A torch module with the same children (same names) and the same forward as our model class."""
    from . import models

    nn = torch.nn

    class Mirror(nn.Module):
        def __init__(self):
            super().__init__()
            self.kind = type(m).__name__
            self.n_fc = len(m.sizes) - 1 if isinstance(m, models.MLP) else 0
            for name, child in m.named_children():
                setattr(self, name, _convert(child, torch))
            if isinstance(m, (models.BasicBlock, models.ResNet)):
                for name in ("downsample", "maxpool"):
                    if hasattr(m, name) and getattr(m, name) is None:
                        setattr(self, name, None)

        def forward(self, x):
            if self.kind == "MLP":
                x = torch.flatten(x, 1) if x.dim() > 2 else x
                for i in range(1, self.n_fc + 1):
                    x = getattr(self, f"fc{i}")(x)
                    x = torch.relu(x) if i < self.n_fc else x
                return x
            if self.kind == "PaperCNN":
                x = self.pool1(torch.relu(self.conv1(x)))
                x = self.pool2(torch.relu(self.conv2(x)))
                return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))
            if self.kind == "BasicBlock":
                out = torch.relu(self.bn1(self.conv1(x)))
                out = self.bn2(self.conv2(out))
                identity = self.downsample(x) if self.downsample is not None else x
                return torch.relu(out + identity)
            # ResNet
            x = torch.relu(self.bn1(self.conv1(x)))
            if self.maxpool is not None:
                x = self.maxpool(x)
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    Mirror.__name__ = Mirror.__qualname__ = f"Torch{type(m).__name__}"
    return Mirror()


def to_torch(model: Module):
    """A ``torch.nn.Module`` equal to ``model``: same structure, key names, weights, buffers, mode."""
    torch = _torch()
    tm = _convert(model, torch)
    sd = OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in model.state_dict().items())
    tm.load_state_dict(sd, strict=True)
    tm.train(model.training)
    return tm


# ------------------------------------------------------------------------------------------ npz
def save_npz(model: Module, path):
    """Write ``model.state_dict()`` to ``path`` (``.npz``), atomically (temp file, then rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"save_npz: cannot write '{path}': the folder '{folder}' does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"save_npz: cannot write '{path}': it is a folder")
    tmp = path + ".tmp.npz"
    try:
        np.savez(tmp, **model.state_dict())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_npz(path, what="load_npz"):
    """The arrays of a ``.npz`` file as an ordered dict, every failure a named error.

    ``FileNotFoundError``/``IsADirectoryError`` for a missing path or a folder; ``FileFormatError``
    (a ``ValueError``) naming the file for an empty, truncated or corrupt archive, a text file, a
    ``.npy`` file (one array, not an archive), or an archive holding pickled objects."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file '{path}'")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: '{path}' is a folder, not a .npz file")
    size = os.path.getsize(path)
    if size == 0:
        raise FileFormatError(f"{what}: '{path}' is empty (0 bytes), not a .npz archive")
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x93NUMPY"):
        raise FileFormatError(f"{what}: '{path}' is a .npy file (a single array), not a .npz archive of a "
                              "state_dict (write one with qr.interop.save_npz)")
    if not head.startswith(b"PK"):
        raise FileFormatError(f"{what}: '{path}' is not a .npz archive (it does not start with the zip signature; "
                              "a text file, or another format?)")
    try:
        with np.load(path, allow_pickle=False) as f:
            return OrderedDict((k, f[k]) for k in f.files)
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise FileFormatError(f"{what}: '{path}' ({size} bytes) is a damaged or truncated .npz archive "
                              f"({type(e).__name__}: {e})") from None
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise FileFormatError(f"{what}: '{path}' holds pickled Python objects, which are not loaded (only "
                                  "numeric arrays)") from None
        raise FileFormatError(f"{what}: '{path}' could not be read as a .npz archive ({e})") from None


def load_npz(model: Module, path, strict=True):
    """Load a ``save_npz`` file into ``model`` (same checks as ``load_state_dict``; file problems are
    named errors, see ``read_npz``; a failed load changes nothing)."""
    path = os.fspath(path)
    sd = read_npz(path, "load_npz")
    try:
        return model.load_state_dict(sd, strict=strict)
    except StateDictError as e:
        raise StateDictError(f"load_npz '{path}': {e}") from None
