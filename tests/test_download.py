import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import anndata as ad
import pytest

from cellduality.data.download import DownloadSettings, fetch
from cellduality.errors import CellDualityError


def test_builtin_source_writes_h5ad(tmp_path):
    out = fetch("builtin:scanpy/pbmc68k_reduced", tmp_path / "raw" / "p.h5ad")
    assert ad.read_h5ad(out).shape == (700, 765)


def test_unknown_builtin_and_missing_file(tmp_path):
    with pytest.raises(CellDualityError, match="unknown builtin dataset 'scanpy/nope'"):
        fetch("builtin:scanpy/nope", tmp_path / "x.h5ad", field="datasets.x.source")
    with pytest.raises(CellDualityError, match="datasets.x.source: input file .*missing.h5ad not found"):
        fetch(str(tmp_path / "missing.h5ad"), tmp_path / "x.h5ad", field="datasets.x.source")
    assert list(tmp_path.iterdir()) == []


def test_checksum_mismatch_leaves_no_output(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    good = hashlib.sha256(b"hello").hexdigest()
    dest = tmp_path / "out" / "x.h5ad"
    fetch(f"file://{src}", dest, good)
    assert dest.read_bytes() == b"hello"
    dest.unlink()
    with pytest.raises(CellDualityError, match="checksum mismatch .* expected sha256 0{64}, got " + good):
        fetch(str(src), dest, "0" * 64)
    assert list(dest.parent.iterdir()) == []


class _Handler(http.server.BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_GET(self):
        _Handler.calls.append(self.path)
        if self.path == "/flaky" and _Handler.calls.count("/flaky") == 1:
            self.send_error(503)
        elif self.path == "/hang":
            threading.Event().wait(3)  # accepts, never answers in time (not time.sleep: tests patch it)
        elif self.path == "/trickle":
            self.send_response(200)
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path in ("/data", "/flaky"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"payload")
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.calls = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_http_download_retries_5xx_and_verifies(tmp_path, server, monkeypatch):
    monkeypatch.setattr("cellduality.data.download.time.sleep", lambda s: None)
    digest = hashlib.sha256(b"payload").hexdigest()
    out = fetch(f"{server}/flaky", tmp_path / "f.h5ad", digest, settings=DownloadSettings(retries=2))
    assert out.read_bytes() == b"payload" and _Handler.calls.count("/flaky") == 2


def test_http_404_is_not_retried(tmp_path, server):
    with pytest.raises(CellDualityError, match="HTTP 404; check the URL"):
        fetch(f"{server}/missing", tmp_path / "m.h5ad", settings=DownloadSettings(retries=3))
    assert _Handler.calls == ["/missing"] and list(tmp_path.iterdir()) == []


def test_silent_server_fails_after_the_socket_timeout_per_attempt(tmp_path, server, monkeypatch):
    monkeypatch.setattr("cellduality.data.download.time.sleep", lambda s: None)
    start = time.monotonic()
    with pytest.raises(CellDualityError, match="failed after 2 attempt\\(s\\) \\(no response for 1 s "
                                               "\\(download.timeout_s\\)\\)"):
        fetch(f"{server}/hang", tmp_path / "h.h5ad", settings=DownloadSettings(timeout_s=1, retries=1))
    assert time.monotonic() - start < 6 and list(tmp_path.iterdir()) == []


def test_trickling_server_is_cut_off_by_the_stall_window_and_the_deadline(tmp_path, server):
    slow = DownloadSettings(timeout_s=2, stall_s=0.5, stall_min_bytes=1000, retries=0)
    start = time.monotonic()
    with pytest.raises(CellDualityError, match="less than 1000 bytes arrived in 0 s|less than 1000 bytes arrived in 1 s"):
        fetch(f"{server}/trickle", tmp_path / "t.h5ad", settings=slow)
    assert time.monotonic() - start < 2.5
    with pytest.raises(CellDualityError, match="overall deadline of 1 s"):
        fetch(f"{server}/trickle", tmp_path / "t.h5ad",
              settings=DownloadSettings(timeout_s=2, stall_s=60, stall_min_bytes=1, deadline_s=1, retries=3))
    assert list(tmp_path.iterdir()) == []


def test_a_killed_write_leaves_a_part_file_that_the_next_run_removes(tmp_path):
    dest = tmp_path / "raw" / "x.h5ad"
    code = ("import sys, time; from cellduality.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half'); print('ready', flush=True); "
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = list(dest.parent.glob(".x.h5ad.*.part"))
    assert len(leftovers) == 1 and not dest.exists()
    src = tmp_path / "src.bin"
    src.write_bytes(b"whole")
    fetch(str(src), dest)
    assert dest.read_bytes() == b"whole" and list(dest.parent.iterdir()) == [dest]


def test_outputs_follow_the_umask(tmp_path):
    from cellduality.io import atomic_path

    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "shared.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o640
