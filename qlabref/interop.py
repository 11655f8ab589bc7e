"""Weight exchange with PyTorch, and ``.npz`` checkpoints of a model's state.

- ``load_torch_state_dict(model, sd)``: a PyTorch state_dict (torch tensors or arrays) into a qlabref
  model. Accepts torchvision names (``downsample``, ``fc``) and kuangliu/pytorch-cifar names
  (``shortcut``, ``linear``), with or without DataParallel's ``module.`` prefix. Strict by default;
  a failed load changes nothing. ``from_sequential=True`` loads the most common PyTorch MLP,
  ``nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)`` (keys ``0.weight, 2.weight, 4.weight``, or
  ``1.…, 3.…, 5.…`` behind a leading ``nn.Flatten``) into ``qr.models.mlp()`` (``fc1, fc2, fc3``).
- ``from_torch(module)``: the qlabref model with the same weights, buffers and mode as a torch module
  made of layers qlabref has (``nn.Sequential`` of Linear, Conv2d, BatchNorm2d, ReLU, pools, Flatten,
  Identity, Dropout (masks from qlabref's own generator); torchvision's ``resnet18`` and kuangliu's CIFAR ResNet-18; modules made by ``to_torch``).
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

__all__ = ["translate_keys", "load_torch_state_dict", "to_torch", "from_torch", "save_npz", "load_npz", "read_npz"]

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


def load_torch_state_dict(model: Module, state_dict, strict=True, from_sequential=False):
    """Load a PyTorch state_dict into ``model`` (see module docstring). Values are cast to the model's
    dtypes; shapes must match exactly; a failed load changes nothing. Returns
    ``(missing_keys, unexpected_keys)``.

    ``from_sequential=True`` (``model`` must be a ``qr.models.MLP``): the state_dict is that of an
    ``nn.Sequential`` whose Linear layers sit at integer indices (``0, 2, 4`` for
    ``Sequential(Linear, ReLU, Linear, ReLU, Linear)``, ``1, 3, 5`` with a leading ``Flatten``); the
    i-th Linear in index order becomes ``fc{i}``. Only the keys can be checked, not the layers between
    the Linears: the two compute the same function when those are ReLUs (and Flatten first)."""
    if not isinstance(model, Module):
        raise TypeError(f"load_torch_state_dict: model must be a qr.nn.Module, got {type(model).__name__}")
    if from_sequential:
        state_dict = _sequential_to_mlp_keys(model, state_dict)
    return model.load_state_dict(translate_keys(state_dict, set(model._state_targets())), strict=strict)


def _sequential_to_mlp_keys(model, state_dict):
    from . import models

    if not isinstance(model, models.MLP):
        raise TypeError(f"load_torch_state_dict(from_sequential=True): the model must be a qr.models.MLP "
                        f"(fc1, fc2, ...), got {type(model).__name__}")
    pattern = re.compile(r"^(?:module\.)?(\d+)\.(weight|bias)$")
    indices = {}
    for key in state_dict:
        m = pattern.match(key)
        if m is None:
            raise ValueError(f"load_torch_state_dict(from_sequential=True): key '{key}' is not of the form "
                             "'<index>.weight' / '<index>.bias' of an nn.Sequential of Linear layers")
        indices.setdefault(int(m.group(1)), []).append(key)
    order = sorted(indices)
    n_fc = len(model.sizes) - 1
    if len(order) != n_fc:
        raise ValueError(f"load_torch_state_dict(from_sequential=True): the state_dict has {len(order)} layers with "
                         f"weights (indices {order}), the MLP has {n_fc} (fc1..fc{n_fc})")
    rename = {}
    for i, index in enumerate(order, 1):
        for key in indices[index]:
            rename[key] = f"fc{i}.{key.rsplit('.', 1)[1]}"
    return OrderedDict((rename[k], v) for k, v in state_dict.items())


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
    if isinstance(m, L.Dropout):
        return nn.Dropout(m.p)
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


# ------------------------------------------------------------------------------------------ from_torch
_SUPPORTED = ("nn.Sequential of Linear, Conv2d, BatchNorm2d, ReLU, AvgPool2d, MaxPool2d, AdaptiveAvgPool2d, "
              "Flatten, Identity, Dropout; torchvision resnet18; kuangliu's CIFAR ResNet18; modules made by to_torch")


def _np_dtype(torch, module, where):
    dtypes = {p.dtype for p in module.parameters()}
    if not dtypes:
        return None
    if len(dtypes) > 1:
        raise TypeError(f"from_torch: '{where}' mixes parameter dtypes {sorted(map(str, dtypes))}")
    dt = dtypes.pop()
    table = {torch.float32: np.float32, torch.float64: np.float64}
    if dt not in table:
        raise TypeError(f"from_torch: '{where}' has parameters of dtype {dt}; qlabref supports float32 and float64")
    return table[dt]


def _unsupported(m, where, why=""):
    return TypeError(f"from_torch: unsupported submodule '{where}' ({type(m).__name__}){': ' + why if why else ''}; "
                     f"supported: {_SUPPORTED}")


def _from_layer(m, where, torch, dtype):
    """Our layer for one torch layer (no weights yet), or an error naming ``where``."""
    nn = torch.nn
    dt = _np_dtype(torch, m, where) or dtype
    if type(m) is nn.Linear:
        return L.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dt, seed=0)
    if type(m) is nn.Conv2d:
        if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise _unsupported(m, where, f"groups={m.groups}, dilation={m.dilation}, padding={m.padding!r}, "
                                         f"padding_mode={m.padding_mode!r} (need 1, 1, integers, 'zeros')")
        return L.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                        bias=m.bias is not None, dtype=dt, seed=0)
    if type(m) is nn.BatchNorm2d:
        if m.momentum is None:
            raise _unsupported(m, where, "momentum=None (cumulative average) is not implemented")
        bdt = dt
        if m.running_mean is not None:
            bdt = {torch.float32: np.float32, torch.float64: np.float64}.get(m.running_mean.dtype, dt)
        return L.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                             track_running_stats=m.track_running_stats, dtype=bdt or np.float32)
    if type(m) is nn.ReLU:
        return L.ReLU()
    if type(m) is nn.AvgPool2d:
        if m.ceil_mode or m.divisor_override is not None:
            raise _unsupported(m, where, "ceil_mode / divisor_override")
        return L.AvgPool2d(m.kernel_size, m.stride, m.padding, count_include_pad=m.count_include_pad)
    if type(m) is nn.MaxPool2d:
        if m.ceil_mode or m.return_indices or m.dilation not in (1, (1, 1)):
            raise _unsupported(m, where, "ceil_mode / return_indices / dilation")
        return L.MaxPool2d(m.kernel_size, m.stride, m.padding)
    if type(m) is nn.AdaptiveAvgPool2d:
        return L.AdaptiveAvgPool2d(m.output_size)
    if type(m) is nn.Flatten:
        return L.Flatten(m.start_dim, m.end_dim)
    if type(m) is nn.Identity:
        return L.Identity()
    if type(m) is nn.Dropout:
        return L.Dropout(m.p)
    if type(m) is nn.Sequential:
        return L.Sequential(*[_from_layer(c, f"{where}.{name}" if where else name, torch, dtype)
                              for name, c in m.named_children()])
    raise _unsupported(m, where or "<root>")


def _resnet18_config(m, torch):
    """(variant, num_classes, in_channels) when ``m`` is a torchvision or kuangliu ResNet-18, else None."""
    nn = torch.nn
    names = dict(m.named_children())
    head = names.get("fc", names.get("linear"))
    if not all(k in names for k in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")) or head is None:
        return None
    known = {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc", "linear"}
    for name, child in names.items():
        if name not in known:
            raise _unsupported(child, name, "not part of a ResNet-18")
    layers = [names[f"layer{i}"] for i in range(1, 5)]
    if not all(isinstance(layer, nn.Sequential) and len(layer) == 2 for layer in layers):
        raise _unsupported(m, "layer1..layer4", "a ResNet-18 has 2 blocks per stage")
    for i, layer in enumerate(layers, 1):
        for j, block in enumerate(layer):
            kids = dict(block.named_children())
            if "conv3" in kids or not {"conv1", "bn1", "conv2", "bn2"} <= set(kids):
                raise _unsupported(block, f"layer{i}.{j}", "need BasicBlock (conv1, bn1, conv2, bn2)")
            for name, child in kids.items():
                if name not in ("conv1", "bn1", "conv2", "bn2", "relu", "downsample", "shortcut"):
                    raise _unsupported(child, f"layer{i}.{j}.{name}", "not part of a BasicBlock")
    conv1 = names["conv1"]
    maxpool = names.get("maxpool")
    if tuple(conv1.kernel_size) == (7, 7) and tuple(conv1.stride) == (2, 2) and isinstance(maxpool, nn.MaxPool2d):
        variant = "imagenet"
    elif tuple(conv1.kernel_size) == (3, 3) and tuple(conv1.stride) == (1, 1) and (
            maxpool is None or isinstance(maxpool, nn.Identity)):
        variant = "cifar"
    else:
        raise _unsupported(conv1, "conv1", "the stem must be torchvision's (7x7 stride 2 + max-pool) or the CIFAR "
                                           "one (3x3 stride 1, no max-pool)")
    return variant, head.out_features, conv1.in_channels


def from_torch(module):
    """The qlabref model equal to the torch ``module``: same structure, weights, buffers and train/eval
    mode (needs torch). Supported: ``nn.Sequential`` compositions of Linear, Conv2d, BatchNorm2d, ReLU,
    AvgPool2d, MaxPool2d, AdaptiveAvgPool2d, Flatten, Identity and Dropout (state_dict keys stay the
    same; a Dropout draws its masks from its own NumPy generator, see ``qr.nn.Dropout``);
    torchvision's ``resnet18`` (also with the CIFAR stem: 3×3 stride-1 ``conv1``, ``maxpool`` an
    Identity) and kuangliu/pytorch-cifar's ``ResNet18`` (keys ``shortcut``/``linear``; its
    ``F.avg_pool2d(out, 4)`` head equals the global average pool of ``qr.models.resnet18`` on 32×32
    inputs, the only size it accepts) become ``qr.models.resnet18``; modules built by ``to_torch``
    come back as the qlabref model they came from. Anything else raises ``TypeError`` naming the
    first unsupported submodule. The dtype is the module's (float32 or float64)."""
    torch = _torch()
    from . import models

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    dtype = _np_dtype(torch, module, "<root>") or np.float32
    kind = getattr(module, "kind", None) if type(module).__name__.startswith("Torch") else None
    if kind == "MLP":
        fcs = [getattr(module, f"fc{i}") for i in range(1, module.n_fc + 1)]
        model = models.mlp(tuple([fcs[0].in_features] + [f.out_features for f in fcs]), dtype=dtype)
    elif kind == "PaperCNN":
        model = models.paper_cnn((module.conv1.out_channels, module.conv2.out_channels), module.fc1.out_features,
                                 module.fc2.out_features, dtype=dtype)
    elif kind == "ResNet":
        variant = "imagenet" if module.maxpool is not None else "cifar"
        model = models.ResNet(module.fc.out_features, variant, dtype=dtype, in_channels=module.conv1.in_channels)
    elif type(module) is torch.nn.Sequential:
        model = _from_layer(module, "", torch, dtype)
    else:
        config = _resnet18_config(module, torch)
        if config is None:
            kids = ", ".join(f"{n} ({type(c).__name__})" for n, c in module.named_children()) or "none"
            raise TypeError(f"from_torch: unsupported submodule '<root>' ({type(module).__name__}): the forward of a "
                            f"custom module cannot be read (children: {kids}); build it as an nn.Sequential. "
                            f"Supported: {_SUPPORTED}")
        variant, num_classes, in_channels = config
        model = models.ResNet(num_classes, variant, dtype=dtype, in_channels=in_channels)
    sd = OrderedDict((k, v.detach().cpu().numpy()) for k, v in module.state_dict().items())
    load_torch_state_dict(model, sd, strict=True)
    model.train(module.training)
    return model


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
