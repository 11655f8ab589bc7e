"""The shape of one entry in the op test table (see tests/test_ops_grad.py).

Each module ``tests/opcases_*.py`` defines ``CASES = {registry name: OpCase(...)}``; the registry walk
merges them and fails if an op in ``qlabref.ops.REGISTRY`` has no case.
"""
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class OpCase:
    fn: Callable                    # (*qlabref Tensors) -> Tensor
    shapes: list                    # list of tuples of input shapes, e.g. [((2,3,7,5),(4,3,3,3))]
    torch_fn: Optional[Callable] = None   # (*torch tensors) -> torch tensor, same maths; None only if torch has no equivalent
    make: Optional[Callable] = None       # (rng, shapes, dtype) -> list of np arrays, to keep inputs inside the op's domain / away from kinks
    grad_inputs: Optional[tuple] = None   # indices of inputs that get requires_grad (default: all)
