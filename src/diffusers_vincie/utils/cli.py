"""Command-line conventions: a bad argument is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class UsageError(ValueError):
    """A bad argument or input file; its message names the argument and the fix. CLIs print it as one line."""


def print_usage_error(prog: str, error: BaseException | str) -> int:
    """Prints ``<prog>: error: <message>`` (one line) to stderr; returns the exit status 2 of usage errors."""
    message = " ".join(str(error).split())
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def usage_exit(prog: str, error: BaseException | str) -> NoReturn:
    """:func:`print_usage_error`, then exit with status 2."""
    raise SystemExit(print_usage_error(prog, error))


def run_cli(main: Callable[[], Any], prog: str, errors: tuple[type[BaseException], ...] = (UsageError,)) -> Any:
    """Runs ``main()``; an exception of ``errors`` (usage errors by default) becomes :func:`usage_exit`."""
    try:
        return main()
    except errors as error:
        usage_exit(prog, error)


def check_number(
    name: str,
    value: float | None,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> None:
    """Raises :class:`UsageError` naming ``name`` unless ``value`` is finite and within the bounds (``None``
    passes: the argument was left out)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}.")
    if minimum is not None and (value <= minimum if strict_minimum else value < minimum):
        raise UsageError(f"{name} must be {'>' if strict_minimum else '>='} {minimum:g}, got {value:g}.")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be <= {maximum:g}, got {value:g}.")


__all__ = ["UsageError", "check_number", "print_usage_error", "run_cli", "usage_exit"]
