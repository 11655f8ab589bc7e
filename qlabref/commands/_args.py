"""Argument checks shared by the commands (this module is not a command: its name starts with ``_``).

Conventions every command follows (demos/guide-bad-input.md):

- every argument is checked before any work starts; argparse types below reject bad numbers with a
  message naming the limit, and ``qlabref.cli`` prints any argparse or ``UsageError`` message as one
  line on stderr with exit code 2 (never a traceback for a user's mistake);
- the output folder is created and test-written first (:func:`ensure_writable_dir`), so an unusable
  ``--out`` is reported before minutes of work, not after;
- sizes that could hang the machine have an upper bound, stated in ``--help`` and in the error;
- an option that would be ignored in the given combination is rejected (:func:`reject_ignored`);
- progress goes to stderr for anything that can take more than a few seconds, and results are
  written as they are produced.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

from ..errors import UsageError

__all__ = ["bounded_int", "positive_int", "seed", "positive_float", "finite_float", "ensure_writable_dir",
           "reject_ignored", "warn", "explicit"]


def bounded_int(lo, hi=None, what="a whole number"):
    """argparse type: an integer in [lo, hi] (hi None: no upper bound). ``1e3`` is accepted when it is
    a whole number; the error names the bounds."""

    def convert(text):
        try:
            value = int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
            if not (math.isfinite(f) and f == int(f)):
                raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
            value = int(f)
        if value < lo or (hi is not None and value > hi):
            limit = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"must be {limit}, got {value}")
        return value

    convert.__name__ = "integer"  # argparse's "invalid integer value" wording
    return convert


def positive_int(hi=None):
    """argparse type: an integer >= 1 (and <= hi)."""
    return bounded_int(1, hi)


#: argparse type of ``--seed``: NumPy seeds are integers >= 0
seed = bounded_int(0, 2**63 - 1, "a seed (an integer >= 0)")


def positive_float(text):
    """argparse type: a finite number > 0."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


positive_float.__name__ = "number"


def finite_float(text):
    """argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


finite_float.__name__ = "number"


def ensure_writable_dir(path, option="--out"):
    """Create the folder ``path`` (with parents) and check that a file can be written in it.

    Returns it as a ``Path``. Raises ``UsageError`` naming the folder and the reason: it is a file, a
    parent is a file, permission denied, read-only file system, or any other OS error."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} '{path}' is a file, not a folder")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{option} '{path}' cannot be created: '{parent}' is a file")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".qlabref-write-test-", dir=p)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"{option} '{path}' is not a writable folder: {e.strerror or e}") from None
    return p


def explicit(args, name):
    """True if the option ``name`` was given on the command line (its default is ``None``)."""
    return getattr(args, name, None) is not None


def reject_ignored(args, names, reason):
    """UsageError if any option in ``names`` was given (non-None) although ``reason`` makes it unused."""
    given = [n for n in names if explicit(args, n)]
    if given:
        opts = ", ".join("--" + n.replace("_", "-") for n in given)
        raise UsageError(f"{opts} would be ignored: {reason}")


def warn(command, message):
    """One warning line on stderr."""
    print(f"qlabref {command}: warning: {message}", file=sys.stderr, flush=True)
