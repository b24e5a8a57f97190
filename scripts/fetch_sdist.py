#!/usr/bin/env python3
"""Download one pinned sdist from a package index and check its sha256; build nothing.

    python3 scripts/fetch_sdist.py PROJECT VERSION SHA256 DEST_FILE

Standard library only, so it runs with any Python 3 (no pip, no build backend). The index is
PyPI's simple API (PEP 691 JSON, PEP 503 HTML as a fallback), or `$PIP_INDEX_URL` when set,
so a mirror configured for pip is used too. The file is written to a temp name in DEST's
directory and renamed into place only once its sha256 matches: nothing half-written remains.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

DEFAULT_INDEX = "https://pypi.org/simple"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
TIMEOUT_S = 120


class FetchError(Exception):
    """A one-line reason the download failed."""


class _Anchors(HTMLParser):
    """hrefs of a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def normalized(project: str) -> str:
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", project).lower()


def sdist_filename(project: str, version: str) -> str:
    """The sdist's file name as modern setuptools/scikit-build-core publish it."""
    return f"{re.sub(r'[-_.]+', '_', project).lower()}-{version}.tar.gz"


def _open(url: str, accept: str | None = None):  # noqa: ANN202  (http response)
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310  (index URL)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def sdist_url(index: str, project: str, filename: str) -> str:
    """URL of `filename` on the index's page for `project`."""
    page = f"{index.rstrip('/')}/{normalized(project)}/"
    with _open(page, f"{JSON_TYPE}, text/html;q=0.1") as response:
        body = response.read()
        content_type = response.headers.get("Content-Type", "")
    if JSON_TYPE in content_type or body.lstrip().startswith(b"{"):
        files = json.loads(body).get("files", [])
        urls = [f["url"] for f in files if f.get("filename") == filename]
    else:
        parser = _Anchors()
        parser.feed(body.decode(errors="replace"))
        urls = [h for h in parser.hrefs
                if urllib.parse.unquote(urllib.parse.urlsplit(h).path).rsplit("/", 1)[-1] == filename]
    if not urls:
        raise FetchError(f"{filename} is not listed on {page}")
    return urllib.parse.urljoin(page, urls[0])


def download_checked(url: str, sha256: str, dest: Path) -> None:
    """Stream `url` to `dest` if and only if its sha256 is `sha256`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _open(url) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256.lower():
            raise FetchError(f"sha256 of {url} is {digest.hexdigest()}, the pin says {sha256}; "
                             "refusing to use it")
        tmp.chmod(0o644)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(project: str, version: str, sha256: str, dest: Path, index: str | None = None) -> None:
    """Download the sdist of `project==version` to `dest`, checked against `sha256`."""
    index = index or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
    url = sdist_url(index, project, sdist_filename(project, version))
    download_checked(url, sha256, dest)


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(f"usage: {argv[0]} PROJECT VERSION SHA256 DEST_FILE", file=sys.stderr)
        return 2
    project, version, sha256, dest = argv[1], argv[2], argv[3], Path(argv[4])
    try:
        fetch(project, version, sha256, dest)
    except FetchError as exc:
        print(f"vendor: cannot download {project}=={version}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
