"""The collector's HTTP API (FastAPI): Segment's tracking endpoints, webhooks, health.

Request bodies are read and validated by hand (collector.segment) instead of
through pydantic so a 100-event batch costs microseconds of Python; the
OpenAPI document still describes every body (collector.schemas).
"""

from __future__ import annotations

import base64
import binascii
import gc
import logging
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from collector import schemas, segment, webhooks
from collector.config import ConfigError, Settings
from collector.errors import ApiError, StoreUnavailable, accepted_body, bad_request
from collector.store import EventStore

log = logging.getLogger("collector")

OK = b'{"success":true}'
JSON = "application/json"
GC_THRESHOLD = 50_000


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type=JSON, headers=headers)


async def read_body(headers, stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The request body, gunzipped when Content-Encoding says so, refused past `limit` bytes."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request("invalid_content_length", "Content-Length is not a number")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ApiError(
            415, "unsupported_content_encoding", f"Content-Encoding {encoding[:40]!r} is not supported"
        )
    # Bounded inflation: a small "gzip bomb" never expands past the limit in memory.
    parts = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits=47 if encoding != "deflate" else 15)  # 47: gzip or zlib header
        try:
            part = inflater.decompress(rest, limit + 1 - size)
        except zlib.error:
            raise bad_request("invalid_encoding", f"the body is not valid {encoding} data") from None
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise _too_large(limit)
        if not inflater.eof:
            raise bad_request("invalid_encoding", f"the {encoding} body is truncated")
        parts.append(part)
        rest = inflater.unused_data
        if not rest:  # gzip may hold several members, one after another
            return b"".join(parts)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body is over the {limit}-byte limit")


def parse_json_object(body: bytes) -> dict:
    if not body:
        raise bad_request("invalid_json", "the body is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request("invalid_json", f"the body is not valid JSON: {exc}") from None
    if type(value) is not dict:
        raise bad_request("invalid_body", "the body must be a JSON object")
    return value


class WriteKeys:
    def __init__(self, keys: dict[str, str]):
        self.keys = keys

    def from_header(self, authorization: str | None) -> str | None:
        """The source of the Basic-auth write key, None when there is no Authorization header."""
        if authorization is None:
            return None
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise ApiError(
                401, "invalid_authorization", "Authorization must be Basic with the write key as user name"
            )
        try:
            user = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[0]
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise ApiError(
                401, "invalid_authorization", "the Basic credentials are not valid base64"
            ) from None
        return self.source(user)

    def source(self, key) -> str:
        if not key:
            raise ApiError(
                401, "missing_write_key", "a write key is required (HTTP Basic user name or writeKey)"
            )
        source = self.keys.get(key) if type(key) is str else None
        if source is None:
            raise ApiError(401, "invalid_write_key", "the write key is not known")
        return source


def _unsubscribe_router():
    """campaigns' RFC 8058 route (campaigns.unsubscribe imports no engine), its secret checked now;
    None when the collector is deployed without the campaigns package."""
    try:
        from campaigns import unsubscribe
    except ImportError as exc:
        log.warning("unsubscribe route not mounted (%s)", type(exc).__name__)
        return None
    try:
        unsubscribe.check_config()
    except unsubscribe.ConfigError as exc:
        raise ConfigError(str(exc)) from None
    return unsubscribe.router


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; raises ConfigError for a configuration that must not serve (collector.config)."""
    settings = settings or Settings.from_env()
    unsubscribe_router = _unsubscribe_router()
    store = EventStore(
        settings.database_url,
        pool_size=settings.pool_size,
        writers=settings.writers,
        timeout=settings.db_timeout,
        max_pending_events=settings.max_pending_events,
        max_waiting_requests=settings.max_waiting_requests,
    )
    write_keys = WriteKeys(settings.write_keys)
    verifier = webhooks.Verifier(settings.webhook_secrets, settings.shopify_secrets)
    unavailable_headers = {"Retry-After": str(settings.retry_after)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A batch parses into thousands of short-lived acyclic objects: at the default threshold
        # (700) each request ran several collections over them (~15% of the CPU per event).
        gc.set_threshold(GC_THRESHOLD, 20, 100)
        gc.freeze()  # the app's long-lived objects leave the collector's generations: cheaper GC per request
        await store.open()
        log.info(
            "collector ready: %d write key(s) for sources %s; webhook sources %s",
            len(settings.write_keys),
            sorted(set(settings.write_keys.values())),
            sorted(set(settings.webhook_secrets) | set(settings.shopify_secrets)),
        )
        try:
            yield
        finally:
            await store.close()

    app = FastAPI(
        title="emailp collector",
        version="1.0",
        summary="Segment-compatible tracking API and signed webhooks, durable in PostgreSQL",
        description=schemas.DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.store = store

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        log.info("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.code)
        return _json(exc.status, exc.body(), exc.headers)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
        error = ApiError(503, "warehouse_unavailable", "the warehouse cannot take events now; retry later")
        return _json(503, error.body(), unavailable_headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _json(exc.status_code, ApiError(exc.status_code, code, str(exc.detail)).body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _json(400, ApiError(400, "invalid_request", "the request is not valid").body())

    def request_window(received_at: datetime) -> segment.Window:
        return segment.accepted_window(received_at, settings.earliest_timestamp, settings.max_clock_ahead)

    async def ingest(headers, stream: AsyncIterator[bytes], call_type: str | None) -> bytes:
        """A Segment call or batch: validated, then committed (or an ApiError / StoreUnavailable).
        Returns the 200 body (a batch's rejected calls listed)."""
        received_at = datetime.now(UTC)
        header_source = write_keys.from_header(headers.get("authorization"))
        limit = segment.MAX_BATCH_BYTES if call_type is None else segment.MAX_EVENT_BYTES
        body = await read_body(headers, stream, limit)
        message = parse_json_object(body)
        source = header_source or write_keys.source(message.get("writeKey"))
        links: list = []
        rejected: list[ApiError] = []
        window = request_window(received_at)
        if call_type is None:
            rows, links, rejected = segment.parse_batch(message, source, received_at, window)
        else:
            rows = [
                segment.parse_event(
                    message, call_type, source, received_at, None, None, links, None, len(body), window
                )
            ]
        rows, links = segment.dedupe(rows, links)
        # No backslash in the body: no value needs COPY escaping (segment.copy_text).
        await store.write(rows, links, clean=b"\\" not in body)
        if rejected:
            log.info(
                "POST /v1/batch -> 200 with %d of %d calls rejected (%s)",
                len(rejected),
                len(rows) + len(rejected),
                ", ".join(sorted({error.code for error in rejected})),
            )
            return accepted_body(rejected)
        return OK

    def segment_route(call_type: str | None):
        async def endpoint(request: Request) -> Response:
            return Response(await ingest(request.headers, request.stream(), call_type), media_type=JSON)

        return endpoint

    for call_type in segment.TYPES:
        app.add_api_route(
            f"/v1/{call_type}",
            segment_route(call_type),
            methods=["POST"],
            summary=f"Segment {call_type} call",
            tags=["segment"],
            openapi_extra=schemas.request_body(call_type),
            responses=schemas.RESPONSES,
        )
    app.add_api_route(
        "/v1/batch",
        segment_route(None),
        methods=["POST"],
        summary="Segment batch: up to 2,500 calls, 500 KB; invalid calls are left out and listed",
        tags=["segment"],
        openapi_extra=schemas.request_body("batch"),
        responses=schemas.RESPONSES,
    )

    @app.post(
        "/webhooks/{source}",
        tags=["webhooks"],
        summary="A signed webhook (Standard Webhooks or Shopify), stored as a track call",
        openapi_extra=schemas.webhook_body(),
        responses=schemas.WEBHOOK_RESPONSES,
    )
    async def webhook(source: str, request: Request) -> Response:
        received_at = datetime.now(UTC)
        if not verifier.knows(source):
            raise ApiError(404, "unknown_source", "no webhook source of this name is configured")
        body = await read_body(request.headers, request.stream(), webhooks.MAX_WEBHOOK_BYTES)
        scheme, webhook_id = verifier.verify(source, body, request.headers)
        row = webhooks.to_row(
            source, scheme, webhook_id, body, request.headers, received_at, request_window(received_at)
        )
        await store.write([row], [])
        return Response(OK, media_type=JSON)

    # RFC 8058 one-click unsubscribe links in campaign emails point here (campaigns owns the route).
    if unsubscribe_router is not None:
        app.include_router(unsubscribe_router, tags=["unsubscribe"])

    @app.get("/health", tags=["health"], summary="Liveness: the process answers")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get(
        "/ready",
        tags=["health"],
        summary="Readiness: the warehouse is reachable",
        responses={503: {"description": "The warehouse is not reachable"}},
    )
    async def ready() -> Response:
        if await store.ready():
            return Response(b'{"status":"ready"}', media_type=JSON)
        return _json(503, b'{"status":"unavailable"}', unavailable_headers)

    app.state.fast_lane_ingest = ingest
    app.state.unavailable_headers = unavailable_headers
    return app


def create_asgi_app(settings: Settings | None = None) -> FastLane:
    """What uvicorn serves: the FastAPI app behind a fast lane for the Segment endpoints."""
    return FastLane(create_app(settings))


class FastLane:
    """POST /v1/<call> straight to the ingest function, bypassing FastAPI's routing, middleware and
    dependency solving (about half of a single event's CPU time); everything else, and the OpenAPI
    document describing these same endpoints, is FastAPI's. Same handler, same answers."""

    def __init__(self, app: FastAPI):
        self.app = app
        self.routes = {f"/v1/{t}": t for t in segment.TYPES}
        self.routes["/v1/batch"] = None
        self.ingest = app.state.fast_lane_ingest
        self.unavailable = [(b"content-type", b"application/json")] + [
            (k.lower().encode(), v.encode()) for k, v in app.state.unavailable_headers.items()
        ]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            body = await self.ingest(headers, _body_stream(receive), self.routes[scope["path"]])
        except ApiError as exc:
            log.info("%s %s -> %d %s", scope["method"], scope["path"], exc.status, exc.code)
            extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            await _respond(send, exc.status, exc.body(), [(b"content-type", b"application/json"), *extra])
            return
        except StoreUnavailable:
            error = ApiError(
                503, "warehouse_unavailable", "the warehouse cannot take events now; retry later"
            )
            await _respond(send, 503, error.body(), self.unavailable)
            return
        except _Disconnected:
            return
        await _respond(send, 200, body, _OK_HEADERS)


_OK_HEADERS = [(b"content-type", b"application/json")]


class _Disconnected(Exception):
    pass


async def _body_stream(receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _respond(send, status: int, body: bytes, headers: list) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
