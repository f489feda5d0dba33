"""API keys: creation, lookup and revocation (the ``api_keys`` table).

A key is shown once when it is created; the database keeps only its sha256.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
import uuid

import asyncpg

from peptide_opt.api import queries
from peptide_opt.errors import InputError

KEY_PREFIX = "po_"
USERNAME_MAX_LENGTH = 100


@dataclasses.dataclass(frozen=True)
class Caller:
    """The user behind a request's key."""

    user_id: str
    username: str
    key_id: str
    is_admin: bool


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """One row of ``api_keys`` with its owner's name, as ``users list`` shows it."""

    key_id: str
    user_id: str
    username: str
    is_admin: bool
    label: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


def generate_key() -> str:
    """Return a new random key (256 bits, URL-safe text)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Return the sha256 hex digest under which a key is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def utc_now() -> dt.datetime:
    """Return the current UTC time without a time zone, as the tables store it."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


async def find_caller(
    connection: asyncpg.Connection | asyncpg.Pool, key: str
) -> Caller | None:
    """Return the caller of a valid key; None for an unknown, revoked or expired key."""
    row = await connection.fetchrow(queries.FIND_KEY, hash_key(key), utc_now())
    if row is None:
        return None
    return Caller(
        user_id=row["user_id"].strip(),
        username=row["username"],
        key_id=row["id"].strip(),
        is_admin=row["is_admin"],
    )


async def create_key(
    connection: asyncpg.Connection,
    *,
    username: str | None = None,
    user_id: str | None = None,
    is_admin: bool = False,
    expires_at: dt.datetime | None = None,
    label: str | None = None,
) -> tuple[KeyRecord, str]:
    """Create a key, and a user named ``username`` unless ``user_id`` names one.

    Returns the stored record and the key itself, which is not stored anywhere.
    """
    if (username is None) == (user_id is None):
        raise InputError("give either a new user's name or --user-id of an existing user")
    if expires_at is not None and expires_at <= utc_now():
        raise InputError(f"--expires must lie in the future, got {expires_at:%Y-%m-%d %H:%M}")
    async with connection.transaction():
        if user_id is None:
            user_id = await _create_user(connection, username or "")
        else:
            user_id = await _existing_user_id(connection, user_id)
        key = generate_key()
        key_id = str(uuid.uuid4())
        await connection.execute(
            queries.INSERT_KEY, key_id, hash_key(key), user_id, is_admin, label, expires_at
        )
        row = await connection.fetchrow(queries.GET_KEY, key_id)
    return _record(row), key


async def _create_user(connection: asyncpg.Connection, username: str) -> str:
    name = username.strip()
    if not name or len(name) > USERNAME_MAX_LENGTH or not name.isprintable():
        raise InputError(
            f"user name must be 1 to {USERNAME_MAX_LENGTH} printable characters, "
            f"got {username!r}"
        )
    if await connection.fetchval(queries.FIND_USER_BY_NAME, name) is not None:
        raise InputError(
            f"user {name!r} already exists; use --user-id to give it another key"
        )
    user_id = str(uuid.uuid4())
    await connection.execute(queries.INSERT_USER, user_id, name, utc_now())
    return user_id


async def _existing_user_id(connection: asyncpg.Connection, user_id: str) -> str:
    found = await connection.fetchval(queries.FIND_USER_BY_ID, user_id.strip())
    if found is None:
        raise InputError(f"--user-id {user_id!r}: no such user in the users table")
    return found.strip()


async def list_keys(
    connection: asyncpg.Connection, include_revoked: bool = False
) -> list[KeyRecord]:
    """Return every key, oldest first; revoked keys only when asked."""
    rows = await connection.fetch(queries.LIST_KEYS, include_revoked)
    return [_record(row) for row in rows]


async def revoke_keys(
    connection: asyncpg.Connection, *, key_id: str | None = None, user: str | None = None
) -> list[str]:
    """Revoke one key by its id, or every key of a user (name or id); return the ids.

    Raises :class:`InputError` when nothing active matches.
    """
    if (key_id is None) == (user is None):
        raise InputError("give either a key id or --user")
    if key_id is not None:
        rows = await connection.fetch(queries.REVOKE_KEY, key_id.strip(), utc_now())
        target = f"key {key_id!r}"
    else:
        rows = await connection.fetch(queries.REVOKE_USER_KEYS, user.strip(), utc_now())
        target = f"user {user!r}"
    if not rows:
        raise InputError(f"{target}: no active key found")
    return [row["id"].strip() for row in rows]


def _record(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(
        key_id=row["id"].strip(),
        user_id=row["user_id"].strip(),
        username=row["username"],
        is_admin=row["is_admin"],
        label=row["label"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )
