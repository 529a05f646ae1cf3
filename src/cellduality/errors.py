"""One exception type for bad input, rendered as a single actionable line."""

from __future__ import annotations

import logging
import sys
from typing import NoReturn


class CellDualityError(Exception):
    """Bad input or configuration; ``str(err)`` is one line naming the file/field and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def fail(message: str) -> NoReturn:
    """Print ``cellduality error: <message>`` to stderr and exit 1 (for errors before a step starts)."""
    print(f"cellduality error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def warn(message: str, logger: logging.Logger | None = None) -> None:
    """A warning the user must see: in the step's log (``logger``) and on the terminal as ``cellduality warning:
    <message>`` (the process's real stderr, past a step's redirected output)."""
    (logger or logging.getLogger("cellduality")).warning("%s", message)
    print(f"cellduality warning: {message}", file=sys.__stderr__, flush=True)
