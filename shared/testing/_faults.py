"""A fault-injecting HTTP proxy in front of the emulator: lost answers and failed requests.

    with LossyProxy(emulator.endpoint_url, lose_after=0.05, seed=7) as proxy:
        async with AwsClients(ClientSettings(endpoint_url=proxy.url)) as aws:
            ...   # 5 % of calls are applied by the emulator, then answered HTTP 500

Two kinds of fault, each on a share of requests drawn from a seeded generator:

- `lose_after`: the request is forwarded and applied, then its answer is replaced by an
  HTTP 500 (`InternalError`). The caller (and the SDK, which retries 5xx) cannot tell it from
  a failure before the write: the retry meets the effect of its own first attempt. This is
  what a lost answer on AWS looks like.
- `fail_before`: the request is answered HTTP 500 without being forwarded (nothing applied).

The proxy runs in its own thread (a threading HTTP server, one forwarding connection per
request), so it serves any process or event loop; `statistics()` tells what it did per
operation. It never forwards to anything but `target`, a loopback URL.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import random
import threading
import urllib.parse
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

__all__ = ["LossyProxy", "ProxyStatistics"]

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                         "te", "trailer", "upgrade", "host", "content-length"})
_LOST_BODY = b'{"__type":"InternalError","message":"answer lost by the test proxy"}'


@dataclass(frozen=True)
class ProxyStatistics:
    """What the proxy did: requests seen, answers lost after the write, requests failed
    before it; the last two also per operation (`X-Amz-Target` or the query `Action`)."""

    requests: int
    lost_after: int
    failed_before: int
    lost_by_operation: dict[str, int] = field(default_factory=dict)


class LossyProxy:
    """An HTTP proxy to `target` (an http://127.0.0.1 URL) that loses a share of answers.

    Raises:
        ValueError: a share outside [0, 1], or `target` not a loopback http URL.
    """

    def __init__(self, target: str, *, lose_after: float = 0.0, fail_before: float = 0.0,
                 seed: int = 0) -> None:
        for name, share in (("lose_after", lose_after), ("fail_before", fail_before)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {share!r}")
        parsed = urllib.parse.urlsplit(target)
        if parsed.scheme != "http" or parsed.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"target must be a loopback http URL, got {target!r}")
        self._target = (parsed.hostname, parsed.port or 80)
        self.lose_after = lose_after
        self.fail_before = fail_before
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._requests = 0
        self._lost: collections.Counter[str] = collections.Counter()
        self._failed: collections.Counter[str] = collections.Counter()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The proxy's endpoint URL (give it to `ClientSettings(endpoint_url=...)`)."""
        if self._server is None:
            raise RuntimeError("the proxy is not running; use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def statistics(self) -> ProxyStatistics:
        with self._lock:
            return ProxyStatistics(
                requests=self._requests, lost_after=sum(self._lost.values()),
                failed_before=sum(self._failed.values()),
                lost_by_operation=dict(self._lost),
            )

    def _draw(self, operation: str) -> str:
        """"lose", "fail" or "pass" for one request (under the lock: one generator)."""
        with self._lock:
            self._requests += 1
            roll = self._rng.random()
            if roll < self.fail_before:
                self._failed[operation] += 1
                return "fail"
            if roll < self.fail_before + self.lose_after:
                self._lost[operation] += 1
                return "lose"
            return "pass"

    def __enter__(self) -> Self:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the tests read statistics(), not a log

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                operation = _operation(self.headers.get("X-Amz-Target"), self.path, body)
                verdict = proxy._draw(operation)
                if verdict == "fail":
                    self._answer(500, [("Content-Type", "application/x-amz-json-1.0")],
                                 _LOST_BODY)
                    return
                connection = http.client.HTTPConnection(*proxy._target, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in _HOP_BY_HOP}
                    headers["Host"] = f"{proxy._target[0]}:{proxy._target[1]}"
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    payload = response.read()
                    kept = [(k, v) for k, v in response.getheaders()
                            if k.lower() not in _HOP_BY_HOP]
                    status = response.status
                finally:
                    connection.close()
                if verdict == "lose":
                    self._answer(500, [("Content-Type", "application/x-amz-json-1.0")],
                                 _LOST_BODY)
                else:
                    self._answer(status, kept, payload)

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                try:
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    # The caller left first (a long poll cancelled at shutdown, the SDK's
                    # own timeout): nobody is there to answer.
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="lossy-proxy", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None


def _operation(target: str | None, path: str, body: bytes) -> str:
    """The AWS operation of a request, for the statistics."""
    if target:
        return target.rsplit(".", 1)[-1]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    if "Action" in query:
        return query["Action"][0]
    if body[:7] == b"Action=":
        return urllib.parse.parse_qs(body.decode(errors="replace")).get("Action", ["?"])[0]
    return path.split("?", 1)[0]
