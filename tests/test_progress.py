"""Training you can watch (cellduality.training.progress) and steps that leave their log behind when stopped
(cellduality.snakemake_script)."""

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cellduality.training.progress import Progress, duration

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_logging_step_is_a_line_with_loss_and_time_left(caplog):
    clock, terminal = Clock(), io.StringIO()
    progress = Progress("sft_rep0", checkpoint_minutes=5, clock=clock, terminal=terminal)
    with caplog.at_level("INFO"):
        for step in range(1, 11):
            clock.now += 6  # 6 s per step
            progress.on_log(step, 100, {"loss": 2.0 / step})
    assert "sft_rep0: step 10/100, loss 0.2, 1 min 00 s elapsed, ~9 min 00 s left" in caplog.text
    assert caplog.text.count("sft_rep0: step") == 10  # every step in the job log
    printed = terminal.getvalue().splitlines()
    assert printed[0].startswith("sft_rep0: step 1/100") and len(printed) == 2  # the first, then every 30 s


def test_a_resumed_job_estimates_from_its_own_steps():
    clock = Clock()
    progress = Progress("grpo_duality_rep0", 5, clock=clock)
    clock.now += 10
    assert progress.line(51, 100, {"reward": 0.25}).endswith("reward 0.25, 10 s elapsed, ~8 min 10 s left")


def test_checkpoints_fall_due_by_the_clock_and_follow_the_umask(tmp_path):
    clock = Clock()
    progress = Progress("sft", checkpoint_minutes=5, clock=clock)
    clock.now += 299
    assert not progress.save_due()
    clock.now += 1
    assert progress.save_due()
    folder = tmp_path / "checkpoint-7"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    os.chmod(folder / "model.safetensors", 0o600)
    progress.step, progress.total = 7, 100
    progress.saved(folder)
    assert not progress.save_due()
    mask = os.umask(0o022)
    os.umask(mask)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    assert progress.stopped("SIGTERM") == f"sft: stopped (SIGTERM) at step 7 of 100; last checkpoint {folder}"


def test_durations():
    assert [duration(s) for s in (5, 65, 3725, float("nan"))] == ["5 s", "1 min 05 s", "1 h 02 min", "?"]


def test_a_stopped_step_leaves_its_log_line_by_line_and_in_attempts(tmp_path):
    """The log is written line by line while the step runs, and SIGTERM (scancel) ends it with the log kept in
    <log>.attempts and a line saying it was stopped."""
    log = tmp_path / "logs" / "sft.log"
    script = textwrap.dedent(f"""
        import logging, sys, time
        sys.path.insert(0, {str(ROOT / "src")!r})
        from cellduality.snakemake_script import harness
        def main():
            logging.getLogger("cellduality.training").info("sft_rep0: step 3/100, loss 1.2")
            time.sleep(60)
        harness("rule sft", {str(log)!r}, main)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "step 3/100" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.1)
    assert "step 3/100" in log.read_text()  # reached the file while the step still runs
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    attempts = (tmp_path / "logs" / "sft.log.attempts").read_text()
    assert "===== rule sft: attempt ended" in attempts and "step 3/100" in attempts
    assert "rule sft stopped by SIGTERM" in attempts
