"""A small aiohttp server that runs in a background thread on 127.0.0.1 (port 0).

Both sandboxes build on :class:`SandboxServer`. It adds two things every sandbox needs:

* :class:`FaultPlan` -- switches that make the next N matching requests fail in a chosen
  way (HTTP status, 429 with ``Retry-After``, connection reset, slow response, truncated
  body), applied by a middleware before the real handler runs;
* a request log (:attr:`SandboxServer.requests`) so tests can assert what reached the
  server -- including that nothing did.

Nothing here imports Airflow or the provider's client code: the sandbox is written from the
documented behaviour of the services, not from our clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Request key under which the middleware tells a streaming handler to cut its body short.
TRUNCATE = web.RequestKey("truncate", bool)


@dataclass
class RecordedRequest:
    """One request as the server saw it (headers verbatim: this is test-only memory)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body_bytes: int
    received_at: float
    status: int | None = None
    fault: str | None = None
    #: Free-form facts a handler adds (e.g. the JSON-RPC method name).
    info: dict[str, Any] = field(default_factory=dict)


#: Request key of the :class:`RecordedRequest` of the request being handled (handlers add ``info``).
RECORD = web.RequestKey("record", RecordedRequest)


@dataclass
class _Fault:
    kind: str
    remaining: int
    path: str | None
    status: int = 503
    retry_after: float | None = None
    delay: float = 0.0
    body: Any = None


class FaultPlan:
    """Make the next ``n`` requests (optionally only those whose path starts with ``path``) fail.

    Faults are consumed first-in first-out; each matching request consumes one.
    """

    def __init__(self) -> None:
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def fail_next(self, n: int = 1, *, status: int = 503, path: str | None = None, body: Any = None) -> None:
        """Answer the next ``n`` requests with HTTP ``status`` (default 503) and a JSON body."""
        self._add(_Fault("status", n, path, status=status, body=body))

    def throttle_next(self, n: int = 1, *, retry_after: float | None = 1, path: str | None = None) -> None:
        """Answer the next ``n`` requests with HTTP 429 and a ``Retry-After`` header."""
        self._add(_Fault("429", n, path, status=429, retry_after=retry_after))

    def reset_next(self, n: int = 1, *, path: str | None = None) -> None:
        """Close the connection of the next ``n`` requests without any response."""
        self._add(_Fault("reset", n, path))

    def slow_next(self, n: int = 1, *, delay: float = 2.0, path: str | None = None) -> None:
        """Wait ``delay`` seconds before handling the next ``n`` requests normally."""
        self._add(_Fault("slow", n, path, delay=delay))

    def truncate_next(self, n: int = 1, *, path: str | None = None) -> None:
        """Send only half of the body of the next ``n`` responses, then close the connection."""
        self._add(_Fault("truncate", n, path))

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> int:
        """How many faulty requests are still to come."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _add(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("n must be >= 1")
        with self._lock:
            self._faults.append(fault)

    def take(self, path: str) -> _Fault | None:
        """Consume and return the first fault that applies to ``path``."""
        with self._lock:
            for fault in self._faults:
                if fault.path is None or path.startswith(fault.path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None


class SandboxServer:
    """An aiohttp application served from a daemon thread on ``127.0.0.1`` and a free port.

    Subclasses add routes in :meth:`setup_routes`. Use it as a context manager, or call
    :meth:`start` and :meth:`stop`. Handlers run on the server's own event loop; blocking
    work belongs in ``loop.run_in_executor``.
    """

    #: Name used in thread names and error messages.
    name = "sandbox"

    def __init__(self) -> None:
        self.faults = FaultPlan()
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.port: int = 0

    # -- life cycle -------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        if not self.port:
            raise RuntimeError(f"{self.name} server is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive() and self._ready.is_set()

    def start(self) -> Self:
        """Start serving; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} server already started")
        self._thread = threading.Thread(target=self._serve, name=f"{self.name}-server", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._startup_error is not None:
            raise RuntimeError(f"{self.name} server failed to start") from self._startup_error
        if not self._ready.is_set():
            raise RuntimeError(f"{self.name} server did not start within 30 s")
        return self

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._ready.clear()
        self.port = 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            app = web.Application(middlewares=[self._middleware], client_max_size=self.client_max_size)
            app.on_response_prepare.append(self._record_status)
            self.setup_routes(app)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
            loop.run_until_complete(site.start())
            sockets = getattr(site._server, "sockets", None)
            assert sockets
            self.port = sockets[0].getsockname()[1]
            self._runner = runner
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- to override ------------------------------------------------------------------
    #: Largest request body aiohttp will read (subclasses enforce their own limits below it).
    client_max_size = 64 * 1024 * 1024

    def setup_routes(self, app: web.Application) -> None:
        """Add the routes of the sandbox."""
        raise NotImplementedError

    def fault_response(self, fault: _Fault, request: web.Request) -> web.StreamResponse:
        """The response for a ``status`` or ``429`` fault; subclasses shape the body."""
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(int(fault.retry_after))
        body = fault.body if fault.body is not None else {"message": [f"injected fault: HTTP {fault.status}"]}
        return web.json_response(body, status=fault.status, headers=headers)

    # -- request log ------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, oldest first."""
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._requests_lock:
            self._requests.clear()

    def iter_requests(self, path_prefix: str = "") -> Iterator[RecordedRequest]:
        """Recorded requests whose path starts with ``path_prefix``."""
        return (r for r in self.requests if r.path.startswith(path_prefix))

    # -- middleware -------------------------------------------------------------------
    @staticmethod
    async def _record_status(request: web.Request, response: web.StreamResponse) -> None:
        # Runs when the headers go out, before any body: a client that has read a streamed body to its end
        # always finds the status recorded (the middleware would only set it after the handler returned).
        record = request.get(RECORD)
        if record is not None:
            record.status = response.status

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=dict(request.headers),
            body_bytes=request.content_length or 0,
            received_at=time.time(),
        )
        request[RECORD] = record
        with self._requests_lock:
            self._requests.append(record)
        fault = self.faults.take(request.path)
        if fault is not None:
            record.fault = fault.kind
            if fault.kind in ("status", "429"):
                response = self.fault_response(fault, request)
                record.status = response.status
                return response
            if fault.kind == "reset":
                await request.read()
                transport = request.transport
                if transport is not None:
                    transport.abort()
                raise asyncio.CancelledError()
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay)
            if fault.kind == "truncate":
                request[TRUNCATE] = True
        response = await handler(request)
        record.status = response.status
        if request.get(TRUNCATE) and isinstance(response, web.Response) and response.body is not None:
            return await _send_truncated(request, response)
        return response


async def _send_truncated(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Announce the full ``Content-Length``, send half the body, then drop the connection."""
    body = response.body
    assert isinstance(body, (bytes, bytearray))
    stream = web.StreamResponse(status=response.status, headers=_copy_headers(response.headers))
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(bytes(body[: len(body) // 2]))
    transport = request.transport
    if transport is not None:
        transport.abort()
    return stream


def _copy_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
