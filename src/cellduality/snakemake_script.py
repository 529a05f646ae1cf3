"""The one harness for rule scripts (``workflow/scripts``) and console commands (``cellduality.cli``).

Logging and the terminal output of a step go to its log file; bad input (:class:`CellDualityError`) ends with
one line ``cellduality error in <step>: ...`` on the terminal and in the log, exit status 1, and so does a
full disk, an exceeded quota or a permission error (the line names the cause and the file; the traceback is
in the log); any other exception is a bug: its traceback goes to the log and a one-line pointer to the
terminal.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from cellduality.errors import CellDualityError

log = logging.getLogger("cellduality")


_OS_REASONS = {
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
_OS_FIXES = {
    errno.ENOSPC: "free space there or point results_dir to a larger disk",
    errno.EDQUOT: "free space there or point results_dir to a folder with more quota",
    errno.EACCES: "check the permissions of the file and its folder",
    errno.EPERM: "check the permissions of the file and its folder",
    errno.EROFS: "point results_dir to a writable folder",
}


def os_error_reason(err: OSError) -> str | None:
    """One line naming the cause and the file of an environment failure (disk full, quota, permissions);
    None for other OS errors (those are bugs: their traceback goes to the log)."""
    if err.errno not in _OS_REASONS:
        return None
    where = f" writing {err.filename}" if err.filename else ""
    return f"{_OS_REASONS[err.errno]}{where}; {_OS_FIXES[err.errno]} (partial outputs were not kept)"


def harness(step: str, log_file: str | Path | None, main: Callable[[], object]) -> None:
    """Run ``main`` as ``step`` (e.g. ``rule sft``), its output captured in ``log_file`` (stderr if None)."""
    log_path = Path(log_file) if log_file else None
    terminal = sys.__stderr__
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # processes of one multi-GPU launch share the log: append there, start afresh otherwise
        # line-buffered: each log line reaches the file at once (tail -f while a job trains)
        stream = open(log_path, "a" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "w", buffering=1)
    else:
        stream = open(sys.stderr.fileno(), "w", buffering=1, closefd=False)
    previous = stop_on_sigterm(step)
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
            except OSError as err:
                traceback.print_exc(file=stream)
                reason = os_error_reason(err)
                if reason is None:
                    print(f"cellduality: unexpected failure in {step}; "
                          f"{f'traceback in {log_path}' if log_path else 'traceback above'}", file=terminal)
                    raise SystemExit(1) from None
                line = f"cellduality error in {step}: {reason}"
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
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if log_path:
            keep_attempt(log_path, step)


def stop_on_sigterm(step: str):
    """SIGTERM (``scancel``, a cancelled Snakemake job) ends the step like an error, not a kill: the cleanup runs
    and the log is kept in ``<log>.attempts`` (:func:`keep_attempt`). Only from the main thread; returns the
    handler it replaced (None where none was set)."""
    def stop(number, frame):
        log.warning("%s stopped by %s", step, signal.Signals(number).name)
        raise SystemExit(128 + number)

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:
        return None


def keep_attempt(log_path: Path, step: str) -> None:
    """Append this run's log to ``<log>.attempts``: Snakemake deletes a rule's log before each retry
    (``--retries``) and rerun, so without it the log of a failed attempt would be lost. One header per attempt
    names the time, the host and the SLURM job."""
    if os.environ.get("RANK", "0") != "0" or not log_path.is_file():
        return
    import datetime
    import socket

    job = os.environ.get("SLURM_JOB_ID")
    header = (f"===== {step}: attempt ended {datetime.datetime.now().isoformat(timespec='seconds')} on "
              f"{socket.gethostname()}{f' (SLURM job {job})' if job else ''} =====\n")
    with open(log_path.with_name(log_path.name + ".attempts"), "a") as history:
        history.write(header + log_path.read_text(errors="replace"))


def run(snakemake, main: Callable[[], object]) -> None:
    """Harness for a ``script:`` rule: the step is the rule, the log is the rule's first log file."""
    harness(f"rule {snakemake.rule}", snakemake.log[0] if snakemake.log else None, main)
