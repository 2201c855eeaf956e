"""The Starlette application of ``campaign serve``: routes, limits and answers.

Routes (SPEC section 10): ``/u/TOKEN`` (GET page, POST one-click and the
page's forms), ``/c/TOKEN`` (click redirect), ``POST /api/v1/events`` and
``/healthz``. Everything else is a 404 or 405. Database work runs in the thread
pool: the event loop only parses and answers.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.to_thread
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.clock import Clock
from engine.config import Settings
from engine.errors import TokenError
from engine.links import verify_click
from engine.serve import actions, pages
from engine.serve.events import import_events
from engine.unsubscribe import Signer, signer_for

HEADER_LIMIT = 16 * 1024  # all request headers together
FORM_LIMIT = 64 * 1024  # an unsubscribe form is a few dozen bytes
# Pages are never cached or framed and send no referrer; forms post only back here.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


class BodyTooLarge(Exception):
    """A request body went over its limit while being read."""


class BodyLimit:
    """Refuse bodies over ``limit`` bytes: by Content-Length at once, or while they stream in.

    The body is counted as it arrives, so a client that lies about its length
    or sends chunks without one never makes the server hold more than the limit.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(n) + len(v) + 4 for n, v in scope["headers"]) > HEADER_LIMIT:
            # uvicorn bounds headers that arrive in pieces; a request read whole is checked here.
            await PlainTextResponse("request headers too large", 431)(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                too_large = value.isdigit()
                answer = PlainTextResponse(
                    "request body too large" if too_large else "bad Content-Length",
                    413 if too_large else 400,
                )
                await answer(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (``BodyTooLarge``) as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status, headers=PAGE_HEADERS)


def _client(request: Request) -> str:
    # request.client is the proxy's X-Forwarded-For only when the proxy is trusted (server.py).
    return request.client.host if request.client else "unknown"


async def _form(request: Request) -> dict[str, str] | None:
    """The fields of an urlencoded or multipart form; None when the body is not one."""
    body = await request.body()  # kept for request.form(); BodyLimit bounds it while it streams
    if len(body) > FORM_LIMIT:
        raise BodyTooLarge()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "multipart/form-data":
            form = await request.form(max_files=0, max_fields=20, max_part_size=FORM_LIMIT)
            return {k: v for k, v in form.items() if isinstance(v, str)}
        # RFC 8058 says urlencoded; some clients send it without a Content-Type at all.
        text = body.decode("utf-8")
        return dict(
            parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=20)
        )
    except Exception:  # bad encodings, broken multipart: the client's mistake, a 400
        return None


def create_app(engine: Engine, settings: Settings, clock: Clock) -> ASGIApp:
    """The ASGI application for ``engine``'s database; ``clock`` stamps suppressions and clicks."""
    signer: Signer = signer_for(settings)
    if settings.secret_key is None:
        # The development key is public: links signed with it must not be honoured.
        raise TokenError("CAMPAIGN_SECRET_KEY is not set: campaign serve cannot check any link")
    api_token = settings.api_token.reveal().encode() if settings.api_token else None

    # No more threads at the database than the pool has connections: beyond that, threads
    # wait for a connection or open and close overflow ones, which cost more than the query.
    pool_size = getattr(engine.pool, "size", None)
    limiter = anyio.CapacityLimiter(pool_size() if callable(pool_size) else 5)

    def run(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return anyio.to_thread.run_sync(partial(func, *args, **kwargs), limiter=limiter)

    async def unsubscribe(request: Request) -> Response:
        try:
            token = signer.verify(request.path_params["token"])
        except TokenError:
            return _html(pages.error_page("invalid"), 404)
        if request.method in ("GET", "HEAD"):
            who = await run(actions.recipient, engine, token.merchant_id)
            if who is None:
                return _html(pages.error_page("invalid"), 404)
            return _html(pages.unsubscribe_page(who, token.topic))
        form = await _form(request)
        if form is None:
            return _html(pages.error_page("bad_request"), 400)
        everything = form.get("scope") == "all"
        if form.get("action") == "resubscribe":
            who = await run(actions.resubscribe, engine, token, everything=everything)
            if who is None:
                return _html(pages.error_page("invalid"), 404)
            return _html(pages.resubscribed_page(who))
        if form.get("List-Unsubscribe") != "One-Click":
            return _html(pages.error_page("bad_request"), 400)
        who = await run(
            actions.unsubscribe,
            engine,
            token,
            everything=everything,
            source=f"web {_client(request)}",
            now=clock.now(),
        )
        if who is None:
            return _html(pages.error_page("invalid"), 404)
        return _html(pages.unsubscribed_page(who, token.topic, everything))

    async def click(request: Request) -> Response:
        try:
            target = verify_click(signer, request.path_params["token"])
        except TokenError:
            return _html(pages.error_page("invalid"), 404)
        record = request.method == "GET"
        if not await run(actions.record_click, engine, target, now=clock.now(), record=record):
            return _html(pages.error_page("invalid"), 404)
        return RedirectResponse(
            target.url, 302, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        )

    async def events(request: Request) -> Response:
        if api_token is None:
            return PlainTextResponse("Not Found", 404)  # the API is off
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_token):
            return JSONResponse(
                {"error": "missing or wrong bearer token"},
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        body = await read_body(request, settings.serve.max_body)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": f"the body is not JSON: {exc}"}, 400)
        except RecursionError:  # [[[[... nested deeper than the parser goes
            return JSONResponse({"error": "the body is JSON nested too deeply"}, 400)
        outcome = await run(import_events, engine, data, now=clock.now())
        return JSONResponse(outcome.body, outcome.status)

    async def healthz(request: Request) -> Response:
        if await run(actions.database_ok, engine):
            return PlainTextResponse("ok")
        return PlainTextResponse("database unreachable", 503)

    async def too_large(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("request body too large", 413)

    async def disconnected(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("client disconnected", 400)

    app = Starlette(
        routes=[
            Route("/u/{token}", unsubscribe, methods=["GET", "POST"]),
            Route("/c/{token}", click, methods=["GET"]),
            Route("/api/v1/events", events, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={BodyTooLarge: too_large, ClientDisconnect: disconnected},
    )
    return BodyLimit(app, settings.serve.max_body)
