"""``_prisma_migrations``, Prisma's migration history, read and written exactly as Prisma does.

A row per attempt: ``finished_at`` set means applied; ``rolled_back_at`` set means the attempt
no longer counts (``prisma migrate deploy`` applies that migration again); neither set means a
failed migration that blocks every deploy until someone resolves it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psycopg
from faber_core.models import MigrationRecord
from psycopg import sql
from psycopg.adapt import Transformer

TABLE = "_prisma_migrations"

POSTGIS_TABLES = frozenset(
    {"spatial_ref_sys", "geometry_columns", "geography_columns", "raster_columns", "raster_overviews"}
)
"""PostGIS's own tables (lower case), which Prisma does not count when it decides whether a
PostgreSQL database is empty."""

# Prisma's own DDL (schema engine, PostgreSQL flavour), so `prisma migrate` finds the table it expects.
_CREATE_TABLE = """
CREATE TABLE {table} (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
)
"""


SELECT_ROWS = (
    "SELECT migration_name, checksum, started_at, finished_at, rolled_back_at, logs"
    " FROM {table} ORDER BY started_at, migration_name"
)
"""Every row, oldest first, as :func:`as_records` takes them (PostgreSQL and MySQL alike)."""


def as_records(rows: Iterable[tuple[Any, ...]]) -> list[MigrationRecord]:
    """Rows of :data:`SELECT_ROWS` as records: ``finished_at`` set means applied, ``rolled_back_at``
    set means rolled back, neither means failed."""
    return [
        MigrationRecord(
            name=name,
            checksum=checksum,
            state="rolled_back" if rolled_back is not None else "applied" if finished is not None else "failed",
            started_at=started,
            finished_at=finished,
            logs=logs,
        )
        for name, checksum, started, finished, rolled_back, logs in rows
    ]


class History:
    """The history table of one schema, on one connection.

    Timestamps come from ``clock_timestamp()`` so a migration's ``started_at`` and
    ``finished_at`` differ even inside its one transaction.
    """

    def __init__(self, conn: psycopg.Connection, schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.table = sql.Identifier(schema, TABLE)
        self._table_text = ""
        self._literals: tuple[str, Transformer] | None = None
        """psycopg's adaptation for the connection's encoding, set up once for every value quoted."""

    def _run(self, query: str, params: dict[str, object] | None = None) -> psycopg.Cursor:
        return self.conn.execute(sql.SQL(query).format(table=self.table), params)

    def exists(self) -> bool:
        return self.conn.execute("SELECT to_regclass(%s)", [self.table.as_string(self.conn)]).fetchone()[0] is not None

    def counted_tables(self) -> list[str]:
        """The schema's tables that make it "not empty" for Prisma (P3005): all but PostGIS's own."""
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
            [self.schema],
        ).fetchall()
        return [name for (name,) in rows if name.lower() not in POSTGIS_TABLES]

    def records(self) -> list[MigrationRecord]:
        """Every row, oldest first; none when the table does not exist (nothing applied yet)."""
        if not self.exists():
            return []
        return as_records(self._run(SELECT_ROWS).fetchall())

    def create(self) -> None:
        """Create the schema and the table if missing, as ``prisma migrate deploy`` does.

        Checked first because PostgreSQL checks the CREATE privilege before ``IF NOT EXISTS``,
        and a deploy role often may not create schemas.
        """
        if self.exists():
            return
        schema_exists = self.conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.schema]).fetchone()
        if not schema_exists:
            self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        self._run(_CREATE_TABLE)

    def start(self, name: str, checksum: str, started_at: datetime | None = None) -> str:
        """Insert the row of an attempt that has begun (now, unless ``started_at``); return its id."""
        migration_id, statement = self.start_statement(name, checksum, started_at)
        self.conn.execute(statement)
        return migration_id

    def finish(self, migration_id: str) -> None:
        self.conn.execute(self.finish_statement(migration_id))

    def start_statement(self, name: str, checksum: str, started_at: datetime | None = None) -> tuple[str, str]:
        """A new attempt's id, and the SQL text of :meth:`start` for it (values quoted in), to send
        in one message with the migration."""
        migration_id = str(uuid.uuid4())
        statement = self._statement(
            "INSERT INTO {table} (id, checksum, started_at, migration_name, applied_steps_count)"
            " VALUES ({id}, {checksum}, coalesce({started_at}, clock_timestamp()), {name}, 0)",
            id=migration_id,
            checksum=checksum,
            started_at=started_at,
            name=name,
        )
        return migration_id, statement

    def finish_statement(self, migration_id: str) -> str:
        """The SQL text of :meth:`finish`."""
        return self._statement(
            "UPDATE {table} SET finished_at = clock_timestamp(), applied_steps_count = applied_steps_count + 1"
            " WHERE id = {id}",
            id=migration_id,
        )

    def _statement(self, template: str, **values: object) -> str:
        """``template`` with the table and ``values`` quoted in: the text of
        ``sql.SQL(template).format(table=..., **literals).as_string(conn)``, without parsing the
        template, quoting the table again, or setting up psycopg's adaptation of the connection
        again (``sql.Literal`` does for each value) for every migration."""
        encoding = self.conn.info.encoding
        if self._literals is None or self._literals[0] != encoding:  # a migration may set client_encoding
            self._table_text = self.table.as_string(self.conn)
            self._literals = (encoding, Transformer.from_context(self.conn))
        quote = self._literals[1].as_literal
        literals = {key: quote(value).decode(encoding) for key, value in values.items()}
        return template.format(table=self._table_text, **literals)

    def fail(self, migration_id: str, logs: str) -> None:
        self._run("UPDATE {table} SET logs = %(logs)s WHERE id = %(id)s", {"id": migration_id, "logs": logs})

    def record_rolled_back_attempt(self, name: str, checksum: str, started_at: datetime, logs: str) -> None:
        """The row of an attempt whose transaction rolled back: failed, with its logs, and marked
        rolled back so the next deploy applies the migration again."""
        migration_id = self.start(name, checksum, started_at)
        self._run(
            "UPDATE {table} SET logs = %(logs)s, rolled_back_at = clock_timestamp() WHERE id = %(id)s",
            {"id": migration_id, "logs": logs},
        )

    def mark_rolled_back(self, name: str) -> int:
        """``prisma migrate resolve --rolled-back``: the failed attempts of ``name`` stop counting."""
        return self._run(
            "UPDATE {table} SET rolled_back_at = clock_timestamp()"
            " WHERE migration_name = %(name)s AND finished_at IS NULL AND rolled_back_at IS NULL",
            {"name": name},
        ).rowcount

    def mark_applied(self, name: str, checksum: str) -> None:
        """``prisma migrate resolve --applied``: the failed attempts are rolled back and a finished
        row with no applied steps says the changes were completed by hand."""
        # One transaction: committed alone, the first would leave the migration neither failed nor
        # applied but pending, and a faber resolve killed between the two would make the next
        # deploy run again what was completed by hand.
        with self.conn.transaction():
            self.mark_rolled_back(name)
            migration_id = str(uuid.uuid4())
            self._run(
                "INSERT INTO {table} (id, checksum, started_at, finished_at, migration_name, applied_steps_count)"
                " VALUES (%(id)s, %(checksum)s, clock_timestamp(), clock_timestamp(), %(name)s, 0)",
                {"id": migration_id, "checksum": checksum, "name": name},
            )
