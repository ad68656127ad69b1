"""The app object (``create_app``) and ``python -m cxrbook serve`` (uvicorn, 127.0.0.1 by default)."""

from __future__ import annotations

import logging
import os
import sys

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from . import api, db, pages
from .scoring import Models
from .service import AppContext
from .settings import Settings, from_env, secret_key
from .storage import Store
from .web import HERE, BodyLimit, SecurityHeaders, error_response, is_api, log

SESSION_COOKIE = "cxrbook_session"


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> FastAPI:
    """The ASGI app over ``settings`` (default: from the environment); ``migrate`` upgrades the database first."""
    settings = settings or from_env()
    engine = db.make_engine(settings.resolved_db_url())
    if migrate:
        db.migrate(engine)
    context = AppContext(settings, db.session_factory(engine), Store(settings.images_dir),
                         Models(settings.models_dir, settings.default_model))
    app = FastAPI(title="cxrbook app", version="1", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.ctx, app.state.engine = context, engine
    app.add_middleware(SessionMiddleware, secret_key=secret_key(settings), session_cookie=SESSION_COOKIE,
                       max_age=settings.session_max_age_s, same_site="lax", https_only=settings.https_only)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)  # outermost: before anything reads
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(pages.router)
    app.include_router(api.router, prefix="/api")
    app.include_router(api.router, prefix="/api/v1")

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        if 300 <= exc.status_code < 400 and "Location" in headers:
            return RedirectResponse(headers["Location"], status_code=exc.status_code)
        return error_response(request, exc.status_code, str(exc.detail), headers or None)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        if is_api(request):
            return JSONResponse({"detail": [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
                                            for e in exc.errors()]}, status_code=422)
        return error_response(request, 400, "The form was incomplete or malformed; go back and try again.")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)  # the trace stays in the log
        if is_api(request):
            return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)
        return error_response(request, 500, "Something went wrong on the server; the server log has the details.")

    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory in each worker: settings from ``CXR_APP_*``/``CXR_DB_URL``; ``serve`` migrated already."""
    return create_app(from_env(), migrate=False)


def main_serve(args) -> int:
    """``python -m cxrbook serve``: migrate the database once, then run uvicorn with ``--workers`` processes."""
    import uvicorn
    env = {"CXR_APP_MODELS": args.models, "CXR_APP_OUTPUTS": args.outputs, "CXR_APP_DATA": args.data,
           "CXR_DB_URL": args.db, "CXR_APP_MAX_UPLOAD_MB": args.max_upload_mb,
           "CXR_APP_DEFAULT_MODEL": args.default_model}
    os.environ.update({k: str(v) for k, v in env.items() if v not in (None, "")})
    settings = from_env()
    engine = db.make_engine(settings.resolved_db_url())
    try:
        db.migrate(engine)
    except Exception as e:  # noqa: BLE001 - an unreachable or foreign database: one clear line
        print(f"error: cannot prepare the database {engine.url.render_as_string(hide_password=True)}: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    secret_key(settings)  # made once here, before the workers read it
    models = Models(settings.models_dir).names()
    print(f"cxrbook app: database {engine.url.render_as_string(hide_password=True)} at revision "
          f"{db.current_revision(engine)}; {len(models)} model(s) in {settings.models_dir}"
          + ("" if models else " (none: run `make report` first; the app serves, but cannot score)"), flush=True)
    if args.migrate_only:
        return 0
    logging.basicConfig(level=logging.INFO)
    print(f"serving on http://{args.host}:{args.port}/  (research tool, not a diagnosis; Ctrl-C stops)", flush=True)
    uvicorn.run("cxrbook.app.main:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, proxy_headers=False)
    return 0
