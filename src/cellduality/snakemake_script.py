"""Glue for ``workflow/scripts``: log to the rule's log file, turn bad input into a one-line error."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from cellduality.errors import CellDualityError

log = logging.getLogger("cellduality")


def run(snakemake, main: Callable[[], object]) -> None:
    """Run ``main`` with stdout/stderr captured in ``snakemake.log[0]``.

    A :class:`CellDualityError` prints one line (also to the terminal) and exits 1; any other exception is
    a bug: its traceback goes to the log and a one-line pointer to the terminal.
    """
    log_path = Path(snakemake.log[0]) if snakemake.log else None
    terminal = sys.__stderr__
    stream = open(log_path, "w") if log_path else open(sys.stderr.fileno(), "w", closefd=False)
    logging.basicConfig(stream=stream, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    try:
        with stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            try:
                main()
            except CellDualityError as err:
                line = f"cellduality error in rule {snakemake.rule}: {err}"
                print(line, file=stream)
                if log_path:
                    print(line, file=terminal)
                raise SystemExit(1) from None
            except Exception:
                traceback.print_exc(file=stream)
                if log_path:
                    print(f"cellduality: unexpected failure in rule {snakemake.rule}; traceback in {log_path}",
                          file=terminal)
                raise SystemExit(1) from None
    finally:
        terminal.flush()
