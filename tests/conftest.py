"""Shared fixtures: the real COCO val2017 samples (in the repository, and the larger shared one where present), and a
local HTTP server with Range support."""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
COCO_SAMPLE = REPO_ROOT / "tests" / "data" / "coco_sample"
SHARED_COCO_SAMPLE = (REPO_ROOT / "../shared/coco_val2017_sample").resolve()
SAMPLE_ANNOTATIONS = Path("annotations") / "instances_val2017_sample.json"
#: the sample for the larger checks: the shared 206 images where this checkout has them (CI, dev machines), else the
#: committed 24, so that a user's clone runs every test too
LARGER_SAMPLE = SHARED_COCO_SAMPLE if (SHARED_COCO_SAMPLE / SAMPLE_ANNOTATIONS).is_file() else COCO_SAMPLE


def pytest_report_header() -> str:
    where = ("../shared/coco_val2017_sample (206 images)" if LARGER_SAMPLE == SHARED_COCO_SAMPLE else
             "tests/data/coco_sample (24 images; ../shared/coco_val2017_sample is absent)")
    return f"real COCO sample for the larger checks (shared_coco_sample): {where}"


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    """``tests/data/coco_sample`` (read-only, committed): 24 real COCO val2017 images, ``images/*.jpg`` and
    ``annotations/instances_val2017_sample.json``, made by ``tools/make_coco_sample.py`` (see its SOURCES.md).
    In every clone: a missing sample is an error, never a skip."""
    if not (COCO_SAMPLE / SAMPLE_ANNOTATIONS).is_file():
        raise FileNotFoundError(f"{COCO_SAMPLE / SAMPLE_ANNOTATIONS} is missing: the real COCO sample is committed "
                                "with the tests (restore it from git, or rebuild it with `python "
                                "tools/make_coco_sample.py --source ../shared/coco_val2017_sample --out "
                                "tests/data/coco_sample`)")
    return COCO_SAMPLE


@pytest.fixture(scope="session", params=[LARGER_SAMPLE],
                ids=["shared-206" if LARGER_SAMPLE == SHARED_COCO_SAMPLE else "committed-24"])
def shared_coco_sample(request, coco_sample) -> Path:
    """The larger real sample: ``../shared/coco_val2017_sample`` (read-only, 206 real COCO val2017 images in the same
    layout) where present, as on CI and dev machines; in a user's clone, which has no ``../shared``, the committed
    :func:`coco_sample` (24 images) instead, never a skip. The test id and pytest's header say which ran."""
    return request.param


@dataclass
class LocalServer:
    """A file server on 127.0.0.1 for ``root``. Knobs: ``cut_after`` (bytes of a body to send before dropping the
    connection, None = all), ``ignore_range`` (answer Range requests with the whole file, 200).
    ``requests`` records ``(path, Range header or None)`` per GET."""

    root: Path
    port: int = 0
    cut_after: int | None = None
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET with single-range ``bytes=N-`` support (``SimpleHTTPRequestHandler`` ignores Range)."""

    state: LocalServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))
        path = state.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if rng and not state.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body if state.cut_after is None else body[:state.cut_after])
        self.wfile.flush()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_http_server(tmp_path: Path):
    """A ``LocalServer`` serving ``tmp_path/"served"`` on an ephemeral port; shut down after the test."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.daemon_threads = True
    state = LocalServer(root=root, port=server.server_address[1], _server=server)
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.stop()
    thread.join(timeout=5)
