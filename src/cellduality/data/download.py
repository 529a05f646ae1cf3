"""Fetch a catalog dataset to a local h5ad: shipped package data, URLs or local files, checksum-verified."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cellduality.config import Settings, setting
from cellduality.data.builtin import BUILTIN_LOADERS
from cellduality.errors import CellDualityError
from cellduality.io import atomic_path

CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class DownloadSettings(Settings):
    """Config ``download.*``: when a download gives up (meanings and defaults in config/schema.yaml). None of
    it changes the bytes that arrive (their sha256 is checked), so none of it is recorded for reruns.
    ``require_checksum`` is checked against the catalog when the config is loaded (:mod:`cellduality.config`)."""

    SECTION: ClassVar[str] = "download"
    timeout_s: float = setting("download.timeout_s", reruns=False)
    stall_s: float = setting("download.stall_s", reruns=False)
    stall_min_bytes: int = setting("download.stall_min_bytes", reruns=False)
    deadline_s: float = setting("download.deadline_s", reruns=False)
    retries: int = setting("download.retries", reruns=False)
    require_checksum: bool = setting("download.require_checksum", reruns=False)


def pack_folder(folder: Path, dest: Path) -> None:
    """A local folder source (a 10x ``filtered_feature_bc_matrix/``, a Cell Ranger ``outs/``) as one tar, the same
    bytes for the same files (sorted, no times or owners), which convert reads like any archive."""
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            tar.add(path, arcname=f"{folder.name}/{path.relative_to(folder).as_posix()}", filter=clean)


def fetch(source: str, dest: str | Path, sha256: str | None = None, *, settings: DownloadSettings | None = None,
          field: str = "source") -> Path:
    """Materialize ``source`` as ``dest`` atomically; verify ``sha256`` when given. A URL is fetched under the
    limits of ``settings`` (the schema's ``download`` defaults when None)."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        if source.startswith("builtin:"):
            name = source.removeprefix("builtin:")
            if name not in BUILTIN_LOADERS:
                raise CellDualityError(
                    f"{field}: unknown builtin dataset '{name}'; known: {', '.join(sorted(BUILTIN_LOADERS))}"
                )
            BUILTIN_LOADERS[name]().write_h5ad(tmp)
        elif source.startswith(("http://", "https://", "ftp://")):
            _download(source, tmp, settings or DownloadSettings(), field=field)
        else:
            path = Path(source.removeprefix("file://")).expanduser()
            if path.is_dir():
                pack_folder(path, tmp)
            elif not path.is_file():
                raise CellDualityError(f"{field}: input file {path} not found; fix the path or download it first")
            else:
                shutil.copyfile(path, tmp)
        if sha256:
            actual = sha256_of(tmp)
            if actual != sha256.lower():
                raise CellDualityError(
                    f"{field}: checksum mismatch for {source}: expected sha256 {sha256}, got {actual}; "
                    "the file is corrupt or changed upstream (update sha256 only if you trust the new file)"
                )
    return dest


class _Stalled(Exception):
    pass


def _copy(response, out, settings: DownloadSettings, deadline: float) -> None:
    """Copy the body; stop when less than ``stall_min_bytes`` arrived in the last ``stall_s`` seconds (a server that
    trickles) or the overall deadline passes. A server that sends nothing hits the socket timeout."""
    window_start, window_bytes = time.monotonic(), 0
    read = getattr(response, "read1", response.read)  # read1: whatever has arrived, so the checks run often
    while block := read(CHUNK):
        out.write(block)
        now = time.monotonic()
        window_bytes += len(block)
        if now > deadline:
            raise _Stalled(f"the overall deadline of {settings.deadline_s:.0f} s (download.deadline_s) passed")
        if now - window_start >= settings.stall_s:
            if window_bytes < settings.stall_min_bytes:
                raise _Stalled(f"less than {settings.stall_min_bytes} bytes arrived in {settings.stall_s:.0f} s "
                               "(download.stall_s / stall_min_bytes)")
            window_start, window_bytes = now, 0


def _download(url: str, tmp: Path, settings: DownloadSettings, *, field: str) -> None:
    deadline = time.monotonic() + settings.deadline_s
    reason = "no attempt"
    for attempt in range(settings.retries + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = f"the overall deadline of {settings.deadline_s:.0f} s (download.deadline_s) passed"
            break
        try:
            with urllib.request.urlopen(url, timeout=min(settings.timeout_s, remaining)) as response, \
                    open(tmp, "wb") as out:
                _copy(response, out, settings, deadline)
            return
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 429:
                raise CellDualityError(f"{field}: download of {url} failed with HTTP {err.code}; check the URL") from None
            reason = f"HTTP {err.code}"
        except _Stalled as err:
            reason = str(err)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = str(getattr(err, "reason", err))
            if isinstance(err, TimeoutError) or "timed out" in reason:
                reason = f"no response for {settings.timeout_s:.0f} s (download.timeout_s)"
        if attempt < settings.retries:
            time.sleep(min(2**attempt, 30, max(deadline - time.monotonic(), 0)))
    raise CellDualityError(f"{field}: download of {url} failed after {attempt + 1} attempt(s) ({reason}); check the "
                           "network or the server, or raise the download.* limits")
