"""What pages and API routes share: the request's context, database session, templates and middleware."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

from fastapi import HTTPException, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import security
from .scoring import DISCLAIMER
from .service import AppContext

HERE = Path(__file__).resolve().parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
TEMPLATES.env.globals["DISCLAIMER"] = DISCLAIMER
TEMPLATES.env.filters["utc"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(t)))
log = logging.getLogger("cxrbook.app")


def ctx(request: Request) -> AppContext:
    return request.app.state.ctx


def get_db(request: Request) -> Iterator[Session]:
    """One database session per request, closed afterwards."""
    with ctx(request).sessions() as db:
        yield db


def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = security.new_csrf()
    return token


def check_csrf(request: Request, given: str | None) -> None:
    """403 unless the form's token is this session's."""
    if not security.csrf_matches(request.session.get("csrf"), given):
        raise HTTPException(403, "This form is out of date or did not come from this site (CSRF check failed). "
                                 "Reload the page and try again.")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def render(request: Request, name: str, status: int = 200, headers: dict | None = None, **context):
    """A page from ``templates/`` with the user, the CSRF token and the research-tool banner available."""
    context.setdefault("user", getattr(request.state, "user", None))
    context["csrf_token"] = csrf_token(request)
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status, headers=headers)


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/health"


def error_response(request: Request, status: int, message: str, headers: dict | None = None):
    """JSON ``{"detail": message}`` for the API, an error page for the browser."""
    if is_api(request):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    return render(request, "error.html", status=status, headers=headers, status_code=status, message=message)


class BodyLimit:
    """413 for a request body larger than ``max_bytes``: refused by its Content-Length before it is read, or
    stopped as soon as the streamed bytes pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request is larger than this server's limit of {self.max_bytes / 2**20:.0f} MiB"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await PlainTextResponse(f"413 {message}", status_code=413)(scope, receive, send)
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:  # an HTTPException: FastAPI's body parsing passes it on unchanged
                    raise HTTPException(413, message[0].upper() + message[1:])
            return msg

        async def tracked_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, tracked_send)
        except HTTPException as e:  # raised outside a route (no handler answered it)
            if e.status_code != 413 or started:
                raise
            await PlainTextResponse(f"413 {message}", status_code=413)(scope, receive, send)


class SecurityHeaders:
    """Headers on every response: no sniffing, no framing, same-origin referrers, a strict CSP, no caching of pages."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"same-origin"),
               (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                            b"script-src 'none'; form-action 'self'; frame-ancestors 'none'"),
               (b"cache-control", b"no-store")]

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def add(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                names = {k.lower() for k, _ in msg.get("headers", [])}
                msg["headers"] = list(msg.get("headers", [])) + [h for h in self.HEADERS if h[0] not in names]
            await send(msg)

        await self.app(scope, receive, add)
