"""Fetch a catalog dataset to a local h5ad: shipped package data, URLs or local files, checksum-verified."""

from __future__ import annotations

import hashlib
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

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


def fetch(source: str, dest: str | Path, sha256: str | None = None, *, timeout_s: float = 600,
          retries: int = 3, field: str = "source") -> Path:
    """Materialize ``source`` as ``dest`` atomically; verify ``sha256`` when given."""
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
            _download(source, tmp, timeout_s=timeout_s, retries=retries, field=field)
        else:
            path = Path(source.removeprefix("file://")).expanduser()
            if not path.is_file():
                raise CellDualityError(f"{field}: input file {path} not found; fix the path or download it first")
            shutil.copyfile(path, tmp)
        if sha256:
            actual = sha256_of(tmp)
            if actual != sha256.lower():
                raise CellDualityError(
                    f"{field}: checksum mismatch for {source}: expected sha256 {sha256}, got {actual}; "
                    "the file is corrupt or changed upstream (update sha256 only if you trust the new file)"
                )
    return dest


def _download(url: str, tmp: Path, *, timeout_s: float, retries: int, field: str) -> None:
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
            return
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 429:
                raise CellDualityError(f"{field}: download of {url} failed with HTTP {err.code}; check the URL") from None
            reason = f"HTTP {err.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = str(getattr(err, "reason", err))
        if attempt < retries:
            time.sleep(min(2**attempt, 30))
    raise CellDualityError(f"{field}: download of {url} failed after {retries + 1} attempts ({reason}); check the network")
