"""The HTTP server under both emulators: stdlib only, loopback only, with a request log and fault hooks.

Subclasses implement :meth:`EmulatorServer.resolve` (routing) and :meth:`EmulatorServer.fault_response` (what an
injected failure looks like on that service). Everything else (threads, keep-alive, logging, counting, latency,
seeded fault draws, dropped connections, the load a server bears: :class:`Load`) lives here once.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl

__all__ = ["DROP", "EmulatorServer", "Faults", "Load", "RecordedRequest", "Request", "Response"]


@dataclass(frozen=True)
class Request:
    """One request as the emulator sees it: raw path (not decoded), raw query, lower-cased headers, body bytes."""

    method: str
    raw_path: str
    query: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def params(self) -> dict[str, str]:
        """The query string decoded (last value wins, like most servers)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Self:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return cls(status, body, "application/json", headers or {})

    @classmethod
    def text(cls, status: int, text: str, headers: Mapping[str, str] | None = None) -> Self:
        return cls(status, text.encode("utf-8"), "text/plain; charset=utf-8", headers or {})

    @classmethod
    def html(cls, status: int, text: str) -> Self:
        return cls(status, text.encode("utf-8"), "text/html; charset=utf-8")

    @classmethod
    def empty(cls, status: int, headers: Mapping[str, str] | None = None) -> Self:
        return cls(status, b"", None, headers or {})


class _Drop:
    """Sentinel: close the connection without answering."""

    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()


@dataclass(frozen=True)
class RecordedRequest:
    """An entry of the request log: what came in, which endpoint it reached, and what went out."""

    method: str
    raw_path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    endpoint: str
    status: int | None  # None when the connection was dropped

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Faults:
    """Seeded fault injection, reproducible run to run.

    ``rates`` maps an HTTP status (or :data:`DROP`) to the probability that a request answers with it instead of
    its real response. ``endpoints`` limits the faults to those endpoint names (``None`` means every endpoint).
    ``latency`` is added to every request (seconds), faulted or not.
    """

    rates: Mapping[Any, float] = field(default_factory=dict)
    endpoints: Collection[str] | None = None
    latency: float = 0.0
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        total = sum(self.rates.values())
        if not 0.0 <= total <= 1.0:
            msg = f"fault rates must add up to at most 1.0, not {total}"
            raise ValueError(msg)
        self._rng = random.Random(self.seed)

    def applies_to(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints

    def draw(self, endpoint: str) -> Any | None:
        """The fault for this request (a status or :data:`DROP`), or ``None`` for a normal answer."""
        if not self.rates or not self.applies_to(endpoint):
            return None
        with self._lock:
            roll = self._rng.random()
        for outcome, rate in self.rates.items():
            if roll < rate:
                return outcome
            roll -= rate
        return None

    def uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._rng.uniform(low, high)


@dataclass
class Load:
    """How a server bears many requests at once (``None``: as many as come, at once).

    ``workers``: at most this many requests are worked on at a time, each for ``work`` seconds (after the
    latency); the others wait their turn. Defguard 2.0.1 opens its database pool with ``max_connections(5)``
    (``crates/defguard_common/src/db/mod.rs``, ``setup_pool``): a handler that finds the five connections in use
    waits for one (sqlx's acquire; its timeout, 30 s by default, is not emulated: not verified).

    ``limit_conn``: a request that finds this many in flight already is answered 503 at once, with nginx's HTML
    page, as nginx's ``limit_conn`` does in front of a server (``ngx_http_limit_conn_module``:
    ``limit_conn_status`` is 503 by default; each request counts while it is processed).

    ``peak`` is the most requests seen in flight at once; ``waits`` how long each request waited for a worker.
    """

    workers: int | None = None
    work: float = 0.0
    limit_conn: int | None = None
    in_flight: int = field(init=False, default=0)
    peak: int = field(init=False, default=0)
    refused: int = field(init=False, default=0)
    waits: list[float] = field(init=False, default_factory=list)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    _slots: threading.Semaphore | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if (self.workers is not None and self.workers < 1) or (self.limit_conn is not None and self.limit_conn < 1):
            raise ValueError("workers and limit_conn must be at least 1 (or None)")
        if self.workers is not None:
            self._slots = threading.Semaphore(self.workers)

    def arrive(self) -> bool:
        """A request came in: ``False`` when ``limit_conn`` refuses it (it does not count as in flight)."""
        with self._lock:
            if self.limit_conn is not None and self.in_flight >= self.limit_conn:
                self.refused += 1
                return False
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return True

    def work_on(self) -> None:
        """Wait for a worker and work (``work`` seconds)."""
        if self._slots is None:
            if self.work > 0:
                time.sleep(self.work)
            return
        queued = time.monotonic()
        with self._slots:
            with self._lock:
                self.waits.append(time.monotonic() - queued)
            if self.work > 0:
                time.sleep(self.work)

    def depart(self) -> None:
        with self._lock:
            self.in_flight -= 1


_LIMIT_CONN_PAGE = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


Handler = Callable[[Request], Response]


class EmulatorServer:
    """A threaded HTTP/1.1 server on ``127.0.0.1`` and an ephemeral port; use it as a context manager."""

    server_header: ClassVar[str] = "defguard-entra-emulator"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        tls: ssl.SSLContext | None = None,
        load: Load | None = None,
    ) -> None:
        if host not in {"127.0.0.1", "localhost", "::1"}:
            msg = "emulators listen on loopback only"
            raise ValueError(msg)
        self._host = host
        self._port = port
        self._tls = tls  # a server-side context: HTTPS, the handshake in the connection's own thread
        self.faults = faults or Faults()
        self.load = load
        """How the server bears many requests at once (:class:`Load`; ``None``: as many as come)."""
        self.lock = threading.RLock()
        self._log: list[RecordedRequest] = []
        self._counts: collections.Counter[str] = collections.Counter()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._answers_left: int | None = None  # None: answering; n: n more answers, then silence
        self._released = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        handler = _make_handler(self)
        self._httpd = (
            _Server((self._host, self._port), handler)
            if self._tls is None
            else _TLSServer((self._host, self._port), handler, self._tls)
        )
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"{type(self).__name__}-{self._httpd.server_address[1]}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._released.set()  # held requests: close their connections, unanswered
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            msg = "the emulator is not running: call start() or use it in a with block"
            raise RuntimeError(msg)
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https://`` when serving TLS; no trailing slash)."""
        scheme = "http" if self._tls is None else "https"
        return f"{scheme}://{self._host}:{self.port}"

    # -- introspection ---------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the request log, oldest first."""
        with self.lock:
            return list(self._log)

    @property
    def request_counts(self) -> collections.Counter[str]:
        """Requests per endpoint name (a copy)."""
        with self.lock:
            return collections.Counter(self._counts)

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def reset_log(self) -> None:
        with self.lock:
            self._log.clear()
            self._counts.clear()

    # -- a hung server ---------------------------------------------------------------------------------------

    def go_silent(self, *, after: int = 0) -> None:
        """Answer ``after`` more requests, then none: connections are still accepted and requests read, but no
        answer is ever sent (a hung server or a stalled proxy), until :meth:`resume` or :meth:`stop`, which close
        the held connections unanswered. Held requests are logged with the endpoint ``held`` and no status."""
        with self.lock:
            self._released.clear()
            self._answers_left = max(0, after)

    def resume(self) -> None:
        """Answer again (held requests are dropped, not answered)."""
        with self.lock:
            self._answers_left = None
        self._released.set()

    @property
    def silent(self) -> bool:
        with self.lock:
            return self._answers_left == 0

    def _hold(self, request: Request) -> bool:
        """Whether this request is held unanswered (and then wait until released)."""
        with self.lock:
            if self._answers_left is None:
                return False
            if self._answers_left > 0:
                self._answers_left -= 1
                return False
        self.record(request, "held", None)
        self._released.wait()
        return True

    # -- for subclasses --------------------------------------------------------------------------------------

    def resolve(self, request: Request) -> tuple[str, Handler]:
        """Route a request: the endpoint name (for counts, logs and fault filters) and its handler."""
        raise NotImplementedError

    def fault_response(self, status: int, request: Request, endpoint: str) -> Response:
        """The body an injected failure carries on this service."""
        raise NotImplementedError

    def extra_headers(self) -> Mapping[str, str]:
        """Headers added to every response (e.g. Defguard's component version)."""
        return {}

    # -- the request path ------------------------------------------------------------------------------------

    def _serve(self, request: Request) -> Response | Any:
        load = self.load
        if load is None:
            return self._respond(request)
        if not load.arrive():
            if self.faults.latency > 0:
                time.sleep(self.faults.latency)
            self.record(request, "limit_conn", 503)
            return Response.html(503, _LIMIT_CONN_PAGE)
        try:
            return self._respond(request, load)
        finally:
            load.depart()

    def _respond(self, request: Request, load: Load | None = None) -> Response | Any:
        endpoint, handler = self.resolve(request)
        faults = self.faults
        if faults.latency > 0:
            time.sleep(faults.latency)
        if load is not None:
            load.work_on()
        outcome = faults.draw(endpoint)
        if outcome is DROP:
            response: Response | Any = DROP
        elif outcome is not None:
            response = self.fault_response(int(outcome), request, endpoint)
        else:
            try:
                response = handler(request)
            except Exception:  # a bug in the emulator must still answer, and loudly
                import traceback  # noqa: PLC0415

                traceback.print_exc()
                response = Response.text(500, "emulator error")
        self.record(request, endpoint, None if response is DROP else response.status)
        return response

    def record(self, request: Request, endpoint: str, status: int | None) -> None:
        """Count and log one request (subclasses log what they dispatch internally, e.g. ``$batch`` items)."""
        entry = RecordedRequest(
            request.method, request.raw_path, request.query, dict(request.headers), request.body, endpoint, status
        )
        with self.lock:
            self._counts[endpoint] += 1
            self._log.append(entry)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _TLSServer(_Server):
    """HTTPS: each accepted connection does its TLS handshake in its own thread (bounded), never in the accept
    loop, so one slow or plain-HTTP client cannot stall the others."""

    handshake_timeout = 10.0

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext) -> None:
        super().__init__(address, handler)
        self.tls = tls

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock: socket.socket = request
        sock.settimeout(self.handshake_timeout)
        try:
            wrapped = self.tls.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError):
            return  # not TLS, an untrusted certificate, or too slow: the client sees the connection close
        wrapped.settimeout(None)
        try:
            self.RequestHandlerClass(wrapped, client_address, self)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(OSError):
                wrapped.close()


def _make_handler(emulator: EmulatorServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: without this, 40 ms each
        server_version = emulator.server_header
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Quiet: the emulator keeps its own log."""

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            # the target as sent: http.server collapses a leading "//" in self.path (gh-87389)
            words = self.requestline.split()
            target = words[1] if len(words) >= 2 else self.path
            raw_path, _, query = target.partition("?")
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Request(self.command, raw_path, query, headers, body)
            if emulator._hold(request):  # noqa: SLF001
                self.close_connection = True
                return
            response = emulator._serve(request)  # noqa: SLF001
            if response is DROP:
                self.close_connection = True
                return
            self.send_response(response.status)
            for name, value in {**emulator.extra_headers(), **response.headers}.items():
                self.send_header(name, value)
            if response.content_type is not None:
                self.send_header("Content-Type", response.content_type)
            if response.status not in {204, 304} and not 100 <= response.status < 200:
                self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if response.body and self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _handle

    return _Handler
