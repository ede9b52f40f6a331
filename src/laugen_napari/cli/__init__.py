"""The ``laugen`` command line.

Every module of this package that defines ``register(subparsers)`` adds its subcommand(s); the
chosen subcommand's ``func(args)`` runs and returns the exit status. Errors the user can fix
(bad input) are raised as :class:`UsageError` or ``ValueError``/``FileNotFoundError`` and printed
as one line with exit status 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading
from typing import Sequence

from .. import __version__


class UsageError(Exception):
    """A problem with the user's input, printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="laugen", description="LAUGEN: longitudinal augmentation and data generation")
    parser.add_argument("--version", action="version", version=f"laugen-napari {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``laugen`` console script; returns the exit status.

    Ctrl-C at any point, the start-up imports of the subcommands included, ends with one line
    and status 130; SIGTERM ends with status 143. Either way, partial outputs are removed."""
    installed, previous = _exit_on_sigterm()
    try:
        return _main(argv)
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _exit_on_sigterm() -> tuple[bool, object]:
    """Let SIGTERM (``kill``, a job scheduler's time limit) unwind like an exception, so staged
    outputs are removed, and exit with status 143. Returns (installed, previous handler); only
    the main thread can install it."""
    if threading.current_thread() is not threading.main_thread():
        return False, None

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return True, signal.signal(signal.SIGTERM, terminate)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        return False, None


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("laugen: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("laugen: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as exc:
        print(f"laugen {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
