"""The ``qlabref`` command line.

Each subcommand is one module in ``qlabref/commands/`` that defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Modules are discovered, so adding a
command means adding one file.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands
from .errors import UsageError

# The order in which commands are listed in --help; commands not named here follow alphabetically.
_ORDER = ["demo", "trajectories", "explain", "explore", "verify", "train", "plot", "reproduce", "bench", "data"]


def _command_modules():
    mods = []
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{commands.__name__}.{info.name}"))
    rank = {name: i for i, name in enumerate(_ORDER)}
    return sorted(mods, key=lambda m: (rank.get(m.NAME, len(_ORDER)), m.NAME))


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line on stderr, exit code 2 (argparse's own
    usage block would make a user's typo several lines long)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qlabref",
        description="qlabref: a NumPy/Numba reference engine for QLABGrad (Fu & Wu).",
    )
    parser.add_argument("--version", action="version", version=f"qlabref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UsageError as exc:
        # A user's mistake: one line on stderr, exit code 2, no traceback (API.md, Command line).
        print(f"qlabref {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qlabref {args.command}: interrupted (results written so far are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
