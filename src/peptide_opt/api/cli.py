"""``peptide-opt serve`` and ``peptide-opt users create|list|revoke``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from peptide_opt.api import keys
from peptide_opt.errors import InputError, PeptideOptError
from peptide_opt.settings import Settings

T = TypeVar("T")

DATABASE_TIMEOUT_S = 10.0

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([hdw])$")
_DURATION_HOURS = {"h": 1, "d": 24, "w": 24 * 7}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` and ``users`` commands."""
    serve = subparsers.add_parser(
        "serve",
        help="run the HTTP API and the web page",
        description="Serve the /v1 API, the web page, health checks and metrics. "
        "Uses the same database and storage settings as the workers.",
    )
    serve.add_argument("--host", help="address to listen on (default: API_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (default: API_PORT)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="number of API processes; limits are kept in the database, so they agree",
    )
    serve.set_defaults(handler=run_serve)

    users = subparsers.add_parser(
        "users", help="manage API users and keys", description="Manage API users and keys."
    )
    actions = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        help="create a user and print a new key",
        description="Create a user NAME and print a new key once; with --user-id, give "
        "an existing (platform) user another key instead.",
    )
    create.add_argument("name", nargs="?", help="name of the new user")
    create.add_argument("--user-id", help="give the key to this existing user")
    create.add_argument("--admin", action="store_true", help="the key can read and manage every user's tasks")
    create.add_argument(
        "--expires",
        help="expiry as a UTC date or time (2027-01-31, 2027-01-31T12:00) or a duration "
        "from now (12h, 30d, 2w); default: never",
    )
    create.add_argument("--label", help="a note stored with the key")
    create.set_defaults(handler=run_users_create)

    listing = actions.add_parser("list", help="list keys and their users")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(handler=run_users_list)

    revoke = actions.add_parser(
        "revoke",
        help="revoke a key, or every key of a user",
        description="Revoke the key KEY_ID (from 'users list'), or with --user every "
        "key of that user (name or id).",
    )
    revoke.add_argument("key_id", nargs="?", help="id of the key to revoke")
    revoke.add_argument("--user", help="revoke every key of this user")
    revoke.set_defaults(handler=run_users_revoke)


# -- serve ---------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> int:
    """Run uvicorn with the API; returns when the server stops."""
    import uvicorn

    from peptide_opt.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(args.debug, settings.log_level, settings.log_format)
    host = args.host or settings.api_host
    port = settings.api_port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {port}")
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    asyncio.run(check_database(settings.database_url))
    uvicorn.run(
        "peptide_opt.api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        log_config=None,
        proxy_headers=False,
    )
    return 0


async def check_database(url: str) -> None:
    """Raise a clear error unless the database accepts connections and has the API's
    tables."""
    try:
        connection = await asyncpg.connect(url, timeout=DATABASE_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise PeptideOptError(f"cannot connect to the database: {error}") from error
    try:
        found = await connection.fetchval("SELECT to_regclass('api_keys')")
    finally:
        await connection.close()
    if found is None:
        raise PeptideOptError(
            "the database has no api_keys table; run 'peptide-opt db upgrade' first"
        )


# -- users ---------------------------------------------------------------------------


def run_users_create(args: argparse.Namespace) -> int:
    """Create a key (and a user) and print the key."""
    if (args.name is None) == (args.user_id is None):
        raise InputError("give either NAME for a new user or --user-id of an existing one")
    expires_at = parse_expiry(args.expires) if args.expires else None
    record, key = _with_connection(
        lambda connection: keys.create_key(
            connection,
            username=args.name,
            user_id=args.user_id,
            is_admin=args.admin,
            expires_at=expires_at,
            label=args.label,
        )
    )
    print(f"user:    {record.username} ({record.user_id})")
    print(f"key id:  {record.key_id}{'  (admin)' if record.is_admin else ''}")
    if record.expires_at:
        print(f"expires: {record.expires_at:%Y-%m-%d %H:%M} UTC")
    print(f"key:     {key}")
    print("The key is shown only now; store it safely.", file=sys.stderr)
    return 0


def run_users_list(args: argparse.Namespace) -> int:
    """Print one line per key."""
    records = _with_connection(lambda connection: keys.list_keys(connection, args.all))
    header = ("KEY ID", "USER", "USER ID", "ADMIN", "CREATED", "EXPIRES", "REVOKED")
    rows = [header] + [
        (
            record.key_id,
            record.username,
            record.user_id,
            "yes" if record.is_admin else "no",
            _when(record.created_at),
            _when(record.expires_at),
            _when(record.revoked_at),
        )
        for record in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def run_users_revoke(args: argparse.Namespace) -> int:
    """Revoke keys and print their ids."""
    revoked = _with_connection(
        lambda connection: keys.revoke_keys(connection, key_id=args.key_id, user=args.user)
    )
    for key_id in revoked:
        print(f"revoked {key_id}")
    return 0


def parse_expiry(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """Return the UTC expiry of ``--expires``: an ISO date or time, or ``30d``-style."""
    now = now or keys.utc_now()
    value = text.strip().lower()
    match = _DURATION.match(value)
    if match:
        hours = float(match.group(1)) * _DURATION_HOURS[match.group(2)]
        if hours <= 0:
            raise InputError(f"--expires must be a positive duration, got {text!r}")
        return now + dt.timedelta(hours=hours)
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            "--expires must be a UTC date or time such as 2027-01-31 or "
            f"2027-01-31T12:00, or a duration such as 12h, 30d or 2w; got {text!r}"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment


def _when(moment: dt.datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else "-"


def _with_connection(action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run ``action`` on a connection to the settings' database."""
    url = Settings.from_env().database_url

    async def run() -> T:
        try:
            connection = await asyncpg.connect(url, timeout=DATABASE_TIMEOUT_S)
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            raise PeptideOptError(f"cannot connect to the database: {error}") from error
        try:
            return await action(connection)
        except asyncpg.UndefinedTableError as error:
            raise PeptideOptError(
                "the database has no API tables yet; run 'peptide-opt db upgrade' first"
            ) from error
        finally:
            await connection.close()

    return asyncio.run(run())
