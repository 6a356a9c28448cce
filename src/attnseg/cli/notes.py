"""Notes that a command prints once its set-up has succeeded.

A user error found while a command sets itself up must come out as one line (`attnseg.cli.main`); a note decided
before that (e.g. fewer threads beside busy cores) would make it two. Such notes wait here: the command prints them
when it starts its real work (`flush`), and `main` prints what is left when the command returns.
"""

from __future__ import annotations

import sys

_pending: list[str] = []


def defer(line: str) -> None:
    """Print `line` on stderr when the command starts working (or when it ends, if it never says so)."""
    _pending.append(line)


def flush() -> None:
    """Print the deferred notes now (a command calls this once its inputs are checked)."""
    while _pending:
        print(_pending.pop(0), file=sys.stderr, flush=True)


def discard() -> None:
    """Forget the deferred notes (the command failed on the user's input)."""
    _pending.clear()
