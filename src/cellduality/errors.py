"""One exception type for bad input, rendered as a single actionable line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class CellDualityError(Exception):
    """Bad input or configuration; ``str(err)`` is one line naming the file/field and the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main``; on :class:`CellDualityError` print one line to stderr and exit 1."""
    try:
        main()
    except CellDualityError as err:
        fail(str(err))


def fail(message: str) -> NoReturn:
    print(f"cellduality error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)
