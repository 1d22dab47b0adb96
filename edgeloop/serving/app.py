"""The ASGI app around a ``Service`` (``create_app``) and running it with uvicorn (``serve``).

``POST /predict`` is a bare ASGI endpoint (no Request/Response objects on the hot path);
``/healthz``, ``/readyz`` and ``/metrics`` are plain Starlette routes. A ``/predict`` body
must be sent as JSON (``content_type_error``): anything else is a 415.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.routing import Route

from edgeloop.core.config import Settings
from edgeloop.core.errors import ServiceError
from edgeloop.core.keys import CHAMPION
from edgeloop.serving.ipc import Answered, log_to_console
from edgeloop.serving.service import DEFAULT_STALL_SECONDS, Service, error_body

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import Receive, Scope, Send

log = logging.getLogger("edgeloop.service")

#: Requests with a body larger than this are parsed and scored in a worker thread, so one big
#: request does not hold the event loop while small ones wait. Small ones run inline: a thread
#: hop costs more than scoring a row.
INLINE_MAX_BODY = 16_384
_JSON_HEADERS = [(b"content-type", b"application/json")]
_EXPECTED_TYPE = "'application/json' (UTF-8)"


def content_type_error(value: bytes | None) -> str | None:
    """Why a ``Content-Type`` header is not JSON, or None if it is.

    Accepted: ``application/json`` and the ``application/<anything>+json`` types (RFC 6839:
    JSON by definition), with any parameters, but a charset only if UTF-8 (JSON's only
    encoding, RFC 8259). A body sent without a Content-Type is refused too.
    """
    if value == b"application/json":  # what nearly every client sends: no parsing
        return None
    if value is None:
        return f"the request has no Content-Type: send the body as {_EXPECTED_TYPE}"
    text = value.decode("latin-1")
    media, *params = (part.strip() for part in text.split(";"))
    media = media.lower()
    subtype = media.removeprefix("application/")
    if media == subtype or not (subtype == "json" or subtype.endswith("+json")):
        return f"the body's Content-Type is {text!r}: send it as {_EXPECTED_TYPE}"
    for param in params:
        name, _, charset = param.partition("=")
        charset = charset.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            return (
                f"the body's Content-Type is {text!r}: JSON is read as UTF-8 only,"
                f" send {_EXPECTED_TYPE}"
            )
    return None


class _PredictEndpoint:
    """``POST /predict`` as a bare ASGI app: no Request/Response objects on the hot path."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.max_body = service.cfg.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        svc = self.service
        status, body, request_id, answered = await self._handle(scope, receive, t0)
        headers = list(_JSON_HEADERS)
        if request_id:
            headers.append((b"x-request-id", request_id.encode()))
        if status == 413:
            headers.append((b"connection", b"close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        svc.metrics.count("predict", status)
        if status == 200:
            svc.metrics.latency.observe(time.perf_counter() - t0)
        if answered is not None and svc.link is not None:
            # After the answer is sent, on the event loop: a non-blocking write, never a wait.
            svc.link.forward(answered)

    async def _handle(
        self, scope: Scope, receive: Receive, t0: float
    ) -> tuple[int, bytes, str, Answered | None]:
        svc = self.service
        if svc.champion is None:
            return 503, error_body(svc.reasons[CHAMPION]), "", None
        too_big = error_body(
            f"the body is larger than serving.max_body_bytes ({self.max_body} bytes):"
            " send fewer rows per request"
        )
        content_type: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value if content_type is None else content_type
            elif key == b"content-length":
                try:
                    if int(value) > self.max_body:
                        return 413, too_big, "", None
                except ValueError:
                    return 400, error_body("invalid Content-Length header"), "", None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 400, error_body("the client disconnected"), "", None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return 413, too_big, "", None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        # Checked once the body is in, so a body too large is still a 413 whatever its type.
        wrong_type = content_type_error(content_type)
        if wrong_type is not None:
            return 415, error_body(wrong_type), "", None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if size <= INLINE_MAX_BODY:
            return svc.score(body, t0)
        return await run_in_threadpool(svc.score, body, t0)


def create_app(
    settings: Settings, *, shadow_stall_seconds: float = DEFAULT_STALL_SECONDS
) -> Starlette:
    """The prediction service for ``settings`` (models load when the app starts)."""
    service = Service(settings, stall_seconds=shadow_stall_seconds)

    def json_response(status: int, payload: Any) -> Response:
        return Response(orjson.dumps(payload), status_code=status, media_type="application/json")

    async def healthz(request: Request) -> Response:
        service.metrics.count("healthz", 200)
        return json_response(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        status, body = service.readiness()
        service.metrics.count("readyz", status)
        return json_response(status, body)

    async def metrics(request: Request) -> Response:
        service.metrics.count("metrics", 200)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Loading MLflow and the models takes seconds: keep the event loop free meanwhile.
        service.loop = asyncio.get_running_loop()
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = Starlette(
        routes=[
            Route("/predict", _PredictEndpoint(service), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app


# ---------------------------------------------------------------------- running it
def bind_socket(host: str, port: int) -> socket.socket:
    """Bind now, so "port in use" is a clear error before anything slow happens."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServiceError(
            f"cannot serve on {host}:{port}: unknown host ({exc.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    # Like uvicorn: a restarted service can take its port back from TIME_WAIT connections at
    # once. A port another process listens on still fails (EADDRINUSE).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServiceError(
                f"port {port} on {host} is already in use (another 'edgeloop serve'?):"
                " stop it or choose another port with --port"
            ) from None
        raise ServiceError(f"cannot serve on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the service with uvicorn until interrupted (Ctrl-C or SIGTERM)."""
    sock = bind_socket(host, port)
    # The service's own messages (models loaded, swapped, failing) next to uvicorn's.
    log_to_console()
    config = uvicorn.Config(
        create_app(settings),
        lifespan="on",
        # Access logs cost ~10 % of a single-row request; /metrics counts requests instead.
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    log.info("edgeloop serve: http://%s:%d (model %s)", host, port, settings.model_name)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled once it has shut down cleanly: not an error.
        pass
    except SystemExit:
        # uvicorn exits this way when the app's start-up fails; it has logged why.
        if server.started:
            raise
    finally:
        sock.close()
    if not server.started:
        raise ServiceError("the service did not start (see the log above)")
