"""An HTTP proxy on loopback in front of moto's S3 server that answers some requests with
S3 errors: a throttled or briefly failing S3, as real clients (boto3 in a worker) meet it.

    with FaultyS3(moto_server.url, fail=3, matching=lambda method, path: ...) as proxy:
        ... point FARM_S3_ENDPOINT_URL at proxy.url ...
        proxy.failed  # matching requests answered with the error so far

Every other request, and every matching one after the first `fail`, is forwarded to moto
unchanged (one upstream connection per request; keep-alive towards the client).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

from conftest import free_port

# Hop-by-hop headers are the proxy's own business on each side.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade"}


def s3_error_body(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>faulty-s3</RequestId></Error>").encode()


class FaultyS3:
    """Forwards to upstream; the first `fail` requests for which matching(method, path) is
    true get `status` with an S3 error `code` instead (503 SlowDown: S3's throttling)."""

    def __init__(self, upstream: str, *, fail: int,
                 matching: Callable[[str, str], bool], status: int = 503,
                 code: str = "SlowDown",
                 message: str = "Please reduce your request rate.") -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.fail = fail
        self.matching = matching
        self.status = status
        self.code = code
        self.message = message
        self.failed = 0  # matching requests answered with the error
        self.forwarded = 0
        self._lock = threading.Lock()
        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="faulty-s3", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _should_fail(self, method: str, path: str) -> bool:
        with self._lock:
            if self.failed < self.fail and self.matching(method, path):
                self.failed += 1
                return True
            self.forwarded += 1
            return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as boto3's pool expects

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test's output stays readable

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()  # the CRLF after each chunk
                        if size == 0:
                            break
                        chunks.append(chunk)
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                if proxy._should_fail(self.command, self.path):
                    error = b"" if self.command == "HEAD" else s3_error_body(
                        proxy.code, proxy.message)
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream_host,
                                                      proxy.upstream_port, timeout=60)
                try:
                    headers = {name: value for name, value in self.headers.items()
                               if name.lower() not in _HOP_BY_HOP}
                    if body or self.command in ("PUT", "POST"):
                        headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body or None,
                                     headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() not in _HOP_BY_HOP | {"content-length"}:
                            self.send_header(name, value)
                    length = response.getheader("Content-Length") \
                        if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler

    def __enter__(self) -> FaultyS3:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
