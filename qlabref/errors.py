"""Errors shared across qlabref's command line and runners.

:class:`UsageError` marks a user's mistake on the command line (a bad argument, an unusable output
folder, a missing file). ``qlabref.cli.main`` prints it as one line on stderr and exits with code 2,
never with a traceback; library code raises ``ValueError``/``TypeError`` subclasses as usual.
"""
from __future__ import annotations

__all__ = ["UsageError", "FileFormatError"]


class UsageError(ValueError):
    """A user's mistake: reported as one line on stderr, exit code 2 (see ``qlabref.cli.main``)."""


class FileFormatError(ValueError):
    """A file exists but is not what the reader expects (truncated, empty, text, another format); the
    message names the file and what was wrong with it."""
