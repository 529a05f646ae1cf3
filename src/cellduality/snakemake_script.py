"""The one harness for rule scripts (``workflow/scripts``) and console commands (``cellduality.cli``).

Logging and the terminal output of a step go to its log file; bad input (:class:`CellDualityError`) ends with
one line ``cellduality error in <step>: ...`` on the terminal and in the log, exit status 1; any other
exception is a bug: its traceback goes to the log and a one-line pointer to the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from cellduality.errors import CellDualityError

log = logging.getLogger("cellduality")


def harness(step: str, log_file: str | Path | None, main: Callable[[], object]) -> None:
    """Run ``main`` as ``step`` (e.g. ``rule sft``), its output captured in ``log_file`` (stderr if None)."""
    log_path = Path(log_file) if log_file else None
    terminal = sys.__stderr__
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # processes of one multi-GPU launch share the log: append there, start afresh otherwise
        stream = open(log_path, "a" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "w")
    else:
        stream = open(sys.stderr.fileno(), "w", closefd=False)
    logging.basicConfig(stream=stream, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    try:
        with stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            try:
                main()
            except CellDualityError as err:
                line = f"cellduality error in {step}: {err}"
                print(line, file=stream)
                if log_path:
                    print(line, file=terminal)
                raise SystemExit(1) from None
            except Exception:
                traceback.print_exc(file=stream)
                where = f"traceback in {log_path}" if log_path else "traceback above"
                print(f"cellduality: unexpected failure in {step}; {where}", file=terminal)
                raise SystemExit(1) from None
    finally:
        logging.getLogger().handlers.clear()
        terminal.flush()


def run(snakemake, main: Callable[[], object]) -> None:
    """Harness for a ``script:`` rule: the step is the rule, the log is the rule's first log file."""
    harness(f"rule {snakemake.rule}", snakemake.log[0] if snakemake.log else None, main)
