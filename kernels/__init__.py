"""qlabref.kernels: Numba kernels (installed from the top-level ``kernels/`` folder as the
subpackage ``qlabref.kernels``).

This subpackage will hold the CUDA kernels (matmul, conv, the fused QLAB probe θ − ᾱg with ‖g‖²)
and their CPU Numba equivalents, behind host wrappers on NumPy arrays (see ``shared/API.md``,
"Kernels"). It never imports the rest of qlabref. Until those kernels land, every op runs on the
NumPy reference path in ``qlabref.ops``.
"""
