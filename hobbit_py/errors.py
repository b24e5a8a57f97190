"""How every `hobbit` command reports a failure: one line on stderr, one prefix, one exit code."""

from __future__ import annotations

import sys

ERROR_PREFIX = "hobbit: error: "
EXIT_ERROR = 1        # any failure: bad usage, bad input, a fault while running
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM, as a shell reports SIGINT


def one_line(message: str) -> str:
    """`message` folded onto one line (multi-line texts from libraries included)."""
    return " ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())


def print_error(message: str) -> None:
    """Write `hobbit: error: MESSAGE` to stderr as a single line."""
    print(ERROR_PREFIX + one_line(message), file=sys.stderr, flush=True)
