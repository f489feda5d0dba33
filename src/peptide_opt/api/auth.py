"""Bearer-key authentication: the ``caller`` dependency of every ``/v1`` route."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from peptide_opt.api.errors import ApiError
from peptide_opt.api.keys import Caller, find_caller

MAX_KEY_LENGTH = 256

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key from `peptide-opt users create`, as `Authorization: "
    "Bearer KEY`.",
)


async def current_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    """Return the caller of the request's key; 401 without a valid one."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", challenge)
    key = credentials.credentials.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii():
        raise ApiError(401, "invalid API key", challenge)
    caller = await find_caller(request.app.state.pool, key)
    if caller is None:
        raise ApiError(401, "invalid, revoked or expired API key", challenge)
    return caller


CallerDependency = Annotated[Caller, Depends(current_caller)]
