import hashlib
import http.server
import threading

import anndata as ad
import pytest

from cellduality.data.download import fetch
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

    def do_GET(self):  # noqa: N802
        _Handler.calls.append(self.path)
        if self.path == "/flaky" and _Handler.calls.count("/flaky") == 1:
            self.send_error(503)
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
    out = fetch(f"{server}/flaky", tmp_path / "f.h5ad", digest, retries=2)
    assert out.read_bytes() == b"payload" and _Handler.calls.count("/flaky") == 2


def test_http_404_is_not_retried(tmp_path, server):
    with pytest.raises(CellDualityError, match="HTTP 404; check the URL"):
        fetch(f"{server}/missing", tmp_path / "m.h5ad", retries=3)
    assert _Handler.calls == ["/missing"] and list(tmp_path.iterdir()) == []
