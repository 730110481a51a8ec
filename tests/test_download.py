"""``pairlens download``: explicit downloads, SHA-256 checks, resume with HTTP Range.

Every test talks to a small HTTP server on 127.0.0.1 started here; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import pairlens
from pairlens.cli import main
from pairlens.models.checkpoint import CheckpointError
from pairlens.models.download import DownloadError, download_file, download_model

DATA = bytes(torch.randint(0, 256, (300_000,), generator=torch.Generator().manual_seed(0))
             .to(torch.uint8).tolist())  # fmt: skip
SHA = hashlib.sha256(DATA).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves DATA. ``/file`` honours Range; ``/norange`` ignores it; ``/cut`` stops half-way on
    its first request (a dropped connection); ``/missing`` is a 404."""

    log: list[tuple[str, str | None]] = []
    cut_done = False

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        path = self.path.split("?")[0]
        rng = self.headers.get("Range")
        Handler.log.append((path, rng))
        if path.endswith("/missing"):
            self.send_error(404, "Not Found")
            return
        start = 0
        if rng and not path.startswith("/norange"):
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(DATA):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(DATA)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        else:
            self.send_response(200)
        body = DATA[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path.startswith("/cut") and not Handler.cut_done:
            Handler.cut_done = True
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def clear_log():
    Handler.log.clear()
    Handler.cut_done = False


def test_download_with_checksum(server, tmp_path):
    dest = download_file(f"{server}/file/model.pth", tmp_path / "m" / "model.pth", sha256=SHA)
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "m" / "model.pth.part").exists()
    assert Handler.log == [("/file/model.pth", None)]
    # an existing, verified file is not downloaded again
    download_file(f"{server}/file/model.pth", dest, sha256=SHA.upper())
    assert len(Handler.log) == 1


def test_partial_file_is_resumed_with_a_range_request(server, tmp_path):
    dest = tmp_path / "model.pth"
    (tmp_path / "model.pth.part").write_bytes(DATA[:12_345])
    download_file(f"{server}/file/model.pth", dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    assert Handler.log == [("/file/model.pth", "bytes=12345-")]


def test_interrupted_download_resumes_on_the_next_call(server, tmp_path):
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadError, match="interrupted.*resume") as info:
        download_file(f"{server}/cut/model.pth", dest, sha256=SHA)
    assert "\n" not in str(info.value)
    part = tmp_path / "model.pth.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(DATA)
    done = part.stat().st_size
    download_file(f"{server}/cut/model.pth", dest, sha256=SHA)
    assert dest.read_bytes() == DATA and not part.exists()
    assert Handler.log[-1] == ("/cut/model.pth", f"bytes={done}-")


def test_complete_partial_file_and_server_ignoring_ranges(server, tmp_path):
    (tmp_path / "a.pth.part").write_bytes(DATA)  # complete but not yet renamed: server says 416
    assert download_file(f"{server}/file/a.pth", tmp_path / "a.pth", SHA).read_bytes() == DATA
    (tmp_path / "b.pth.part").write_bytes(b"garbage")  # server answers 200: start again
    assert download_file(f"{server}/norange/b.pth", tmp_path / "b.pth", SHA).read_bytes() == DATA


def test_checksum_mismatch_deletes_the_data(server, tmp_path):
    dest = tmp_path / "model.pth"
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download_file(f"{server}/file/model.pth", dest, sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "model.pth.part").exists()
    dest.write_bytes(b"not the model")
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download_file(f"{server}/file/model.pth", dest, sha256=SHA)
    with pytest.raises(DownloadError, match="64 hexadecimal"):
        download_file(f"{server}/file/model.pth", tmp_path / "x.pth", sha256="abc")


def test_http_errors_are_one_line(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server}/missing", tmp_path / "x.pth")
    with pytest.raises(DownloadError, match="cannot connect"):
        download_file("http://127.0.0.1:9/x.pth", tmp_path / "y.pth", timeout=2)


def test_download_model_into_cache_and_cli(server, tmp_path, capsys):
    url = f"{server}/file/checkpoint_0099.pth.tar"
    path = download_model("simsiam-r50", cache_dir=tmp_path, url=url, sha256=SHA)
    assert path == tmp_path / "simsiam-r50" / "checkpoint_0099.pth.tar"
    assert path.read_bytes() == DATA
    cache = tmp_path / "cli"
    code = main(["download", "simsiam-r50", "--url", url, "--cache", str(cache), "--quiet",
                 "--sha256", SHA])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.strip() == str(cache / "simsiam-r50" / "checkpoint_0099.pth.tar")
    code = main(["download", "simsiam-r50", "--url", url, "--cache", str(tmp_path / "bad"),
                 "--quiet", "--sha256", "1" * 64])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("pairlens: error:") and "SHA-256 mismatch" in err
    assert len(err.splitlines()) == 1


def test_models_without_a_single_file_say_where_to_get_it(tmp_path):
    with pytest.raises(DownloadError, match="no single published PyTorch file.*convert"):
        download_model("simclr-v2-r50-1x", cache_dir=tmp_path)


def test_loading_never_downloads(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("load_model tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    with pytest.raises(CheckpointError, match="needs its checkpoint file.*dl.fbaipublicfiles"):
        pairlens.load_model("mocov3-vit-s")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        pairlens.load_model("dino-vit-s16", checkpoint=tmp_path / "dino_deitsmall16_pretrain.pth")
