"""The FastAPI application: database pool, storage, limits, routes and the web page."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import asyncpg
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from peptide_opt import __version__
from peptide_opt.api import health, retention, routes
from peptide_opt.api.errors import install_error_handlers
from peptide_opt.api.limits import BodySizeLimit
from peptide_opt.api.submit import Limits
from peptide_opt.errors import PeptideOptError
from peptide_opt.settings import Settings
from peptide_opt.storage.factory import get_storage

logger = logging.getLogger(__name__)

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
#: Allowance (bytes) for the multipart framing and form fields beside the receptor.
FORM_OVERHEAD_BYTES = 256 * 1024
STATIC_DIR = Path(str(resources.files("peptide_opt.api") / "static"))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for ``settings`` (default: the environment's)."""
    settings = settings or Settings.from_env()
    app = FastAPI(
        title="peptide-opt",
        version=__version__,
        description="Submit peptide optimization tasks, follow them and read their "
        "results. Every /v1 route needs an API key as 'Authorization: Bearer KEY'.",
        lifespan=_lifespan,
        # The stock docs pages load Swagger UI and ReDoc from a CDN; /docs below serves
        # Swagger UI from the package's static folder instead.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.limits = Limits(
        max_pending_per_user=settings.max_pending_per_user,
        submit_rate_per_minute=settings.submit_rate_per_minute,
    )
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(health.router)
    _add_web_page(app)

    max_body = settings.max_upload_mb * 1024 * 1024 + FORM_OVERHEAD_BYTES
    app.add_middleware(
        BodySizeLimit, max_bytes=max_body, limit_mb=settings.max_upload_mb
    )
    if settings.cors_origins:
        _add_cors(app, settings.cors_origins)
    return app


def create_app_from_env() -> FastAPI:
    """Build the application from the environment (uvicorn's factory for --workers)."""
    return create_app(Settings.from_env())


def _add_cors(app: FastAPI, origins: tuple[str, ...]) -> None:
    # Browsers reject "*" together with credentials, and allowing every origin to send
    # a user's key would defeat the key: with "*" the API sends no credentials header.
    wildcard = "*" in origins
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if wildcard else list(origins),
        allow_credentials=not wildcard,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Location", "Retry-After"],
    )


def _add_web_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/ui", include_in_schema=False)
    async def ui() -> RedirectResponse:
        return RedirectResponse("/")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="peptide-opt API",
            swagger_js_url="/static/vendor/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui.css",
            swagger_favicon_url="data:,",
        )


async def _skip_session_reset(connection: asyncpg.Connection) -> None:
    """Return a connection to the pool without asyncpg's default RESET ALL round trip.

    The API sets no session state (no SET, LISTEN, cursors or session-level advisory
    locks), so there is nothing to reset. asyncpg still rolls back an open transaction
    before it calls this.
    """


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    try:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            reset=_skip_session_reset,
        )
    except (OSError, asyncpg.PostgresError) as error:
        raise PeptideOptError(f"cannot connect to the database: {error}") from error
    storage = get_storage(settings)
    app.state.pool = pool
    app.state.storage = storage
    if not (STATIC_DIR / "vendor" / "3Dmol-min.js").is_file():
        logger.warning(
            "viewer_missing: %s/vendor/3Dmol-min.js is absent; run 'npm ci' in the "
            "repository to install 3Dmol.js and Swagger UI for the 3D view and /docs",
            STATIC_DIR,
            extra={"event": "viewer_missing"},
        )
    sweeper = retention.start(app)
    logger.info(
        "api_started: serving with storage %s",
        storage.describe(),
        extra={"event": "api_started", "storage": storage.describe()},
    )
    try:
        yield
    finally:
        await retention.stop(sweeper)
        await storage.close()
        await pool.close()
        logger.info("api_stopped", extra={"event": "api_stopped"})
