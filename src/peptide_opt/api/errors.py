"""HTTP errors of the API and the handlers that turn errors into JSON responses."""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from peptide_opt.errors import InputError, StorageError
from peptide_opt.storage.keys import InvalidKeyError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status; ``detail`` is the message sent to the client."""

    def __init__(
        self, status_code: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers or {}


def install_error_handlers(app: FastAPI) -> None:
    """Map ApiError to its status, InputError to 422, and a missing schema or a storage
    failure to 503."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            {"detail": error.detail}, status_code=error.status_code, headers=error.headers
        )

    # InvalidKeyError is both a StorageError and an InputError: a bad key is input.
    @app.exception_handler(InvalidKeyError)
    @app.exception_handler(InputError)
    async def _input_error(request: Request, error: InputError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.exception_handler(asyncpg.UndefinedTableError)
    async def _schema_missing(
        request: Request, error: asyncpg.UndefinedTableError
    ) -> JSONResponse:
        logger.error(
            "schema_missing: %s", error, extra={"event": "schema_missing"}
        )
        return JSONResponse(
            {"detail": "the database schema is missing; run 'peptide-opt db upgrade'"},
            status_code=503,
        )

    @app.exception_handler(StorageError)
    async def _storage_error(request: Request, error: StorageError) -> JSONResponse:
        logger.error(
            "storage_failed: %s %s: %s",
            request.method,
            request.url.path,
            error,
            extra={"event": "storage_failed", "path": request.url.path},
        )
        return JSONResponse(
            {"detail": f"storage is unavailable: {error}"}, status_code=503
        )
