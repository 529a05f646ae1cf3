"""The step harness and resumable training: environment failures are one line naming the cause and the file;
incomplete checkpoint folders are skipped, never resumed from."""

from __future__ import annotations

import errno
import json

import pytest

from cellduality.snakemake_script import harness, os_error_reason
from cellduality.training.setup import checkpoint_problem, last_checkpoint


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "no space left on the device"),
                                            (errno.EDQUOT, "disk quota exceeded"),
                                            (errno.EACCES, "permission denied")])
def test_disk_full_and_permission_errors_are_one_line(tmp_path, capfd, code, words):
    target = tmp_path / "results" / "model.safetensors"

    def main():
        raise OSError(code, "os message", str(target))

    log = tmp_path / "step.log"
    with pytest.raises(SystemExit) as exit_info:
        harness("rule sft", log, main)
    assert exit_info.value.code == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"cellduality error in rule sft: {words} writing {target}; "
                   f"{os_error_reason(OSError(code, 'x', str(target))).split('; ', 1)[1]}"]
    assert "Traceback" in log.read_text()  # the details stay in the log


def test_other_os_errors_stay_unexpected_failures(tmp_path, capfd):
    with pytest.raises(SystemExit):
        harness("rule x", tmp_path / "x.log", lambda: (_ for _ in ()).throw(OSError(errno.EBADF, "bad fd")))
    assert "unexpected failure in rule x" in capfd.readouterr().err
    assert os_error_reason(OSError(errno.EBADF, "bad fd")) is None


def _checkpoint(root, step, *, state=True, weights=True, state_text=None):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights:
        (folder / "model.safetensors").write_bytes(b"w")
    if state:
        (folder / "trainer_state.json").write_text(state_text or json.dumps({"global_step": step}))
    return folder


def test_incomplete_checkpoints_are_skipped_and_reported(tmp_path, caplog):
    good = _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 10)
    half = _checkpoint(tmp_path, 12, state=False)  # killed while saving
    _checkpoint(tmp_path, 11, state_text="{trunc")
    _checkpoint(tmp_path, 9, weights=False)
    (tmp_path / "checkpoint-final").mkdir()
    assert checkpoint_problem(half) == "no trainer_state.json (saving was interrupted)"
    with caplog.at_level("WARNING"):
        assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-12" in caplog.text
    assert "checkpoint-11: trainer_state.json is unreadable" in caplog.text
    for step in (10,):
        for f in (tmp_path / f"checkpoint-{step}").iterdir():
            f.unlink()
        (tmp_path / f"checkpoint-{step}").rmdir()
    assert last_checkpoint(tmp_path) == str(good)  # checkpoint-9 has no weights
    assert last_checkpoint(tmp_path / "missing") is None


def test_each_attempt_is_kept_when_snakemake_deletes_the_log(tmp_path, monkeypatch):
    """A retry (--retries) starts with the rule log deleted by Snakemake; <log>.attempts keeps every attempt."""
    import logging

    from cellduality.errors import CellDualityError

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    log = tmp_path / "logs" / "sft.log"

    def failing():
        logging.getLogger("cellduality").info("loss 1.23 at step 10")
        raise CellDualityError("node lost")

    with pytest.raises(SystemExit):
        harness("rule sft", log, failing)
    log.unlink()  # what Snakemake does before the next attempt
    harness("rule sft", log, lambda: logging.getLogger("cellduality").info("loss 0.50 at step 20"))
    assert "loss 1.23" not in log.read_text() and "loss 0.50" in log.read_text()
    history = (tmp_path / "logs" / "sft.log.attempts").read_text()
    assert history.count("===== rule sft: attempt ended") == 2 and history.count("(SLURM job 4242)") == 2
    assert history.index("loss 1.23") < history.index("cellduality error in rule sft: node lost") < \
        history.index("loss 0.50")
