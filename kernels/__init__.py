"""qlabref.kernels: Numba kernels (installed from the top-level ``kernels/`` folder as the
subpackage ``qlabref.kernels``; NumPy + Numba only, it never imports the rest of qlabref).

Host wrappers on NumPy arrays, each with ``device="cpu"`` (Numba CPU kernels, ``cpu.py``) or
``device="cuda"`` (Numba CUDA kernels, ``cuda_matmul.py``, ``cuda_conv.py``, ``cuda_probe.py``; needs
``pip install 'qlabref[cuda]'`` and a GPU or Numba's CUDA simulator):

- ``matmul(a, b)``: register-tiled shared-memory CUDA kernel / blocked CPU loop nest;
- ``conv2d(x, w, stride, padding)``, ``conv2d_grad_input(gy, w, x_shape, ...)``,
  ``conv2d_grad_weight(x, gy, w_shape, ...)``: im2col (+ matmul) and col2im kernels;
- ``im2col``, ``col2im``: the two gathers on their own (what the ``numba`` backend uses);
- ``probe(theta, g, alpha, deterministic=False)``: ``(θ − α·g, Σ g²)`` in one pass.

``launch.cuda_status()`` says whether CUDA kernels can run here and, if not, why.

Device-array entry points (numba device arrays in and out, no host copies, preallocated ``out=`` and
scratch buffers; for a device-resident backend): ``cuda_matmul.matmul_into`` / ``matmul_device``,
``cuda_conv.conv2d_device`` / ``conv2d_grad_input_device`` / ``conv2d_grad_weight_device`` /
``im2col_device`` / ``col2im_device``, ``cuda_probe.probe_into`` / ``probe_save_into`` /
``sum_sq_into`` with a reusable ``ProbeWorkspace`` (the sum stays on the device until read). Each
module's docstring documents them.
"""
from .api import col2im, conv2d, conv2d_grad_input, conv2d_grad_weight, im2col, matmul, probe
from .launch import CudaUnavailableError, cuda_status

__all__ = ["matmul", "im2col", "col2im", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "probe",
           "CudaUnavailableError", "cuda_status"]
