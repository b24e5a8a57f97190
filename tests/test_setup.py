"""Set-up on a fresh machine: the pinned sdist comes down with a bare Python, checked."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hobbit_py._lib import REPO_ROOT

PIN = dict(re.findall(r"^([A-Z_0-9]+)\s*:=\s*(\S+)", (REPO_ROOT / "vendor" / "pin.mk").read_text(),
                      re.MULTILINE))
VERSION = PIN["LLAMA_CPP_PYTHON_VERSION"]
SHA256 = PIN["LLAMA_CPP_PYTHON_SHA256"]
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv's interpreter with nothing installed: no pip, no setuptools, no build backend."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python3"
    probe = subprocess.run([str(python), "-c", "import pip"], capture_output=True)
    assert probe.returncode != 0, "the bare venv must not have pip"
    return python


def test_vendor_fetch_works_with_a_bare_python(bare_python: Path, tmp_path: Path) -> None:
    """`scripts/vendor.sh --fetch` with only a bare venv's python3 on PATH downloads the pin."""
    env = {**os.environ, "PATH": f"{bare_python.parent}:{os.environ['PATH']}",
           "HOBBIT_CACHE": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(REPO_ROOT / "scripts" / "vendor.sh"), "--fetch"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    sdist = tmp_path / "cache" / SDIST
    assert hashlib.sha256(sdist.read_bytes()).hexdigest() == SHA256
    assert sorted(p.name for p in sdist.parent.iterdir()) == [SDIST]  # no temp file left


class _FakeIndex(http.server.BaseHTTPRequestHandler):
    """A PEP 691 index listing the sdist, serving bytes that are not the pinned file."""

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        if self.path.startswith("/simple/llama-cpp-python/"):
            body = json.dumps({"meta": {"api-version": "1.0"}, "files": [
                {"filename": SDIST, "url": f"/files/{SDIST}", "hashes": {}}]}).encode()
            content_type = "application/vnd.pypi.simple.v1+json"
        elif self.path == f"/files/{SDIST}":
            body, content_type = b"not the pinned sdist" * 1000, "application/octet-stream"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_index() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeIndex)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


def test_a_file_that_does_not_match_the_pin_is_refused(bare_python: Path, fake_index: str,
                                                       tmp_path: Path) -> None:
    dest = tmp_path / "cache" / SDIST
    proc = subprocess.run([str(bare_python), str(REPO_ROOT / "scripts" / "fetch_sdist.py"),
                           "llama-cpp-python", VERSION, SHA256, str(dest)],
                          env={**os.environ, "PIP_INDEX_URL": fake_index},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "sha256" in lines[0] and SHA256 in lines[0], proc.stderr
    assert list(dest.parent.iterdir()) == []  # nothing half-written or unchecked remains


def test_a_version_the_index_does_not_list_is_a_one_line_error(bare_python: Path, fake_index: str,
                                                               tmp_path: Path) -> None:
    proc = subprocess.run([str(bare_python), str(REPO_ROOT / "scripts" / "fetch_sdist.py"),
                           "llama-cpp-python", "0.0.1", SHA256, str(tmp_path / "x.tar.gz")],
                          env={**os.environ, "PIP_INDEX_URL": fake_index},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "is not listed" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.tar.gz").exists()
