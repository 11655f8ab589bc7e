"""Optimizers: QLABGrad (Algorithms 1 and 2 of the paper), QLAB on other descent directions, and the
competing schemes of the paper's Table 1, all behind one torch-like ``Optimizer`` shell."""
from __future__ import annotations

from .optimizer import NonFiniteLossError, NonFiniteProbeError, Optimizer
from .registry import get, names, register_optimizer

__all__ = ["Optimizer", "NonFiniteLossError", "NonFiniteProbeError", "get", "names", "register_optimizer"]

# QLABGrad (Algorithms 1 and 2) and QLAB on other descent directions (issue 4)
from .qlab import (QLAB, FindPLRError, FindPLRNonFiniteError, FindPLRResult, QLABAdam, QLABGrad, QLABMomentum,
                   QLABSGD, find_plr)

__all__ += ["QLABGrad", "QLAB", "QLABSGD", "QLABMomentum", "QLABAdam", "find_plr", "FindPLRResult", "FindPLRError",
            "FindPLRNonFiniteError"]

# Baselines of the paper's Table 1 (issue 5): torch.optim methods, HGD, L4, LQA, schedules
from . import functional, lr_scheduler
from .baselines import SGD, Adadelta, Adagrad, Adam, RMSprop
from .hypergrad import HGD
from .l4 import L4GD, L4Adam, L4Mom
from .lqa import LQA

__all__ += ["functional", "lr_scheduler", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "HGD", "L4GD", "L4Mom",
            "L4Adam", "LQA"]

# Beyond the paper (issue 14): the learning-rate-free methods that followed it, as comparators
from ._lrfree import BEYOND_PAPER, has_eval_mode, is_beyond_paper
from .dadapt import DAdaptAdam, DAdaptSGD
from .dog import DoG, LDoG
from .prodigy import Prodigy
from .schedulefree import AdamWScheduleFree, SGDScheduleFree

__all__ += ["BEYOND_PAPER", "is_beyond_paper", "has_eval_mode", "DoG", "LDoG", "DAdaptSGD", "DAdaptAdam", "Prodigy", "SGDScheduleFree",
            "AdamWScheduleFree"]
