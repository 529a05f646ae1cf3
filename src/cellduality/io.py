"""File plumbing: atomic output (a result appears complete under its final name or not at all) and the
shipped resource files (``resources/`` and ``config/schema.yaml`` of the repository, installed with the
package as ``cellduality/resources`` and ``cellduality/schema.yaml``)."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RESOURCES = PACKAGE_DIR / "resources"
SCHEMA_PATH = PACKAGE_DIR / "schema.yaml"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(folder: str | Path) -> None:
    """Give every file under ``folder`` the mode an ordinary ``open()`` would (0666 minus the umask) and every
    folder 0777 minus the umask: libraries that write through private temporary files (safetensors' model files
    are 0600) would otherwise leave a shared results folder unreadable to the group."""
    mask = _umask()
    root = Path(folder)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o777 & ~mask)
        elif path.is_file():
            path.chmod(0o666 & ~mask)


def stale_parts(dest: str | Path) -> list[Path]:
    """Temporary files of earlier writes of ``dest`` that did not finish (a killed process leaves them)."""
    dest = Path(dest)
    return sorted(dest.parent.glob(f".{glob.escape(dest.name)}.*.part")) if dest.parent.is_dir() else []


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; move it onto ``dest`` only if the block succeeds.

    Leftover ``.part`` files of an earlier, killed write of ``dest`` are removed first, and the file gets the
    mode an ordinary ``open()`` would give it (0666 minus the umask: a shared results folder stays readable
    to the group), not the private 0600 of a temporary file."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_parts(dest):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)
