"""The ASGI application: ``uvicorn app.main:app``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response

from app import __version__, errors
from app.api import auth, documents, health, keys, projects, providers, search
from app.config import Settings, get_settings
from app.db import Database
from app.log import configure_logging, get_logger, init_sentry
from app.metrics import registry_for, render
from app.middleware import RequestContextMiddleware

log = get_logger("app.main")
API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()  # production refuses placeholder secrets here
    configure_logging(settings.log_level)
    init_sentry(settings)
    db = Database(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info("startup", version=__version__, environment=settings.environment)
        yield
        db.dispose()

    app = FastAPI(
        title="AI R&D assistant",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        responses=errors.ERROR_RESPONSES,  # the one error model, on every route
    )
    app.state.settings = settings
    app.state.db = db

    # Middleware: the outermost is added last. It also counts and times requests.
    app.add_middleware(RequestContextMiddleware)

    if settings.metrics_enabled:
        registry = registry_for(settings, db)

        # Plain def: FastAPI runs it in a thread, so the scrape-time queries never block
        # the event loop.
        @app.get("/metrics", include_in_schema=False)
        def metrics() -> Response:
            body, content_type = render(registry)
            return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    for router in (auth.router, auth.users_router, auth.admin_router, projects.router,
                   documents.router, search.router, providers.router, keys.router):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(health.router, prefix=API_PREFIX, include_in_schema=False)

    errors.install(app)  # unhandled exceptions: app.middleware answers 500

    return app


def __getattr__(name: str) -> FastAPI:
    # `app.main:app` is built on first access, so importing this module (e.g. in tests)
    # does not read the environment.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
