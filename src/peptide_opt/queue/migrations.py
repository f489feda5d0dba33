"""Versioned schema migrations: ``sql/migrations/NNNN_name.sql`` applied in order.

Each file runs in its own transaction and is recorded in ``peptide_opt_migrations``;
a recorded version is never run again. The files themselves are idempotent and
additive (``IF NOT EXISTS``, new columns nullable or defaulted), so a database that the
platform created keeps its tables, columns and rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from importlib import resources

import psycopg

from peptide_opt.errors import PeptideOptError

logger = logging.getLogger(__name__)

_FILE_PATTERN = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Any fixed number works; it only has to differ from other users of advisory locks.
_UPGRADE_LOCK_KEY = 0x5E9_0417

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS peptide_opt_migrations (
    version     INTEGER       PRIMARY KEY,
    name        VARCHAR(200)  NOT NULL,
    sha256      CHAR(64)      NOT NULL,
    applied_at  TIMESTAMP     NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
)
"""
_SELECT_APPLIED = "SELECT version, sha256 FROM peptide_opt_migrations"
_INSERT_APPLIED = (
    "INSERT INTO peptide_opt_migrations (version, name, sha256) VALUES (%s, %s, %s)"
)


@dataclasses.dataclass(frozen=True)
class Migration:
    """One migration file: its version number, name and SQL text."""

    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def list_migrations() -> list[Migration]:
    """Return every migration file of the package, ordered by version."""
    folder = resources.files("peptide_opt.queue") / "sql" / "migrations"
    migrations = []
    for entry in folder.iterdir():
        match = _FILE_PATTERN.match(entry.name)
        if not match:
            continue
        migrations.append(
            Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8"))
        )
    migrations.sort(key=lambda migration: migration.version)

    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise PeptideOptError(f"two migration files share a version number: {versions}")
    return migrations


def upgrade(database_url: str) -> list[Migration]:
    """Apply the migrations that the database has not recorded; return those applied.

    Concurrent upgrades of one database wait for each other on an advisory lock, so
    that two processes starting at once do not run the same file twice.
    """
    applied_now = []
    try:
        with psycopg.connect(database_url, autocommit=True) as connection:
            connection.execute("SELECT pg_advisory_lock(%s)", (_UPGRADE_LOCK_KEY,))
            try:
                connection.execute(_CREATE_TABLE)
                recorded = dict(connection.execute(_SELECT_APPLIED).fetchall())
                for migration in list_migrations():
                    if migration.version in recorded:
                        _warn_if_changed(migration, recorded[migration.version])
                        continue
                    _apply(connection, migration)
                    applied_now.append(migration)
            finally:
                connection.execute(
                    "SELECT pg_advisory_unlock(%s)", (_UPGRADE_LOCK_KEY,)
                )
    except psycopg.Error as error:
        raise PeptideOptError(f"database upgrade failed: {error}") from error
    return applied_now


def _apply(connection: psycopg.Connection, migration: Migration) -> None:
    with connection.transaction():
        # A file of several statements goes through the simple query protocol, which
        # accepts it only without parameters.
        connection.execute(migration.sql.encode())
        connection.execute(
            _INSERT_APPLIED, (migration.version, migration.name, migration.sha256)
        )
    logger.info(
        "migration_applied",
        extra={"version": migration.version, "migration": migration.name},
    )


def _warn_if_changed(migration: Migration, recorded_sha256: str) -> None:
    if recorded_sha256.strip() != migration.sha256:
        logger.warning(
            "migration_changed_after_apply",
            extra={"version": migration.version, "migration": migration.name},
        )
