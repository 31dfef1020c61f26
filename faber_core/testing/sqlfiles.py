"""``sqlfiles``: a minimal migration handler, for faber's own tests and as an example plugin.

It applies ``migrations/*.sql`` in name order, each in one transaction with its bookkeeping row
in ``sqlfiles_migrations``. Load it with ``FABER_PLUGINS=faber_core.testing.sqlfiles``.
"""

from __future__ import annotations

import hashlib
import time

import psycopg

from faber_core import events, hookimpl
from faber_core.context import RunContext
from faber_core.models import (
    AppliedMigration,
    ApplyOutcome,
    LocalMigration,
    MigrationFailure,
    MigrationPreview,
    MigrationRecord,
    MigrationRefusal,
    MigrationState,
    ToolInfo,
)
from faber_core.support.files import decode_sql, read_migration_file
from faber_core.support.sessions import Measurement, measured_transaction

TOOL = "sqlfiles"
BOOKKEEPING = "CREATE TABLE IF NOT EXISTS sqlfiles_migrations (name text PRIMARY KEY, checksum text NOT NULL)"


def _local(context: RunContext) -> list[LocalMigration]:
    """Each ``migrations/*.sql`` (none without the folder: it is not configurable), its SQL as
    ``handler_data``: the text read here, and checksummed, is the text previewed and applied.
    Files are checked as every handler should (:mod:`faber_core.support.files`)."""
    directory = context.project_dir / "migrations"
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.sql")):
        relative = str(path.relative_to(context.project_dir))
        data = read_migration_file(path, directory, shown=relative)
        found.append(
            LocalMigration(
                name=path.stem,
                checksum=hashlib.sha256(data).hexdigest(),
                path=relative,
                handler_data=decode_sql(data, relative),
            )
        )
    return found


@hookimpl
def faber_migration_tools() -> list[ToolInfo]:
    return [ToolInfo(name=TOOL, description="migrations/*.sql, one transaction each")]


@hookimpl
def faber_migration_status(context: RunContext) -> MigrationState:
    with context.database.connect() as conn:
        exists = conn.execute("SELECT to_regclass('sqlfiles_migrations')").fetchone()[0]
        rows = conn.execute("SELECT name, checksum FROM sqlfiles_migrations ORDER BY name").fetchall() if exists else []
    return MigrationState(
        tool=TOOL,
        local=_local(context),
        records=[MigrationRecord(name=n, checksum=c, state="applied") for n, c in rows],
    )


@hookimpl
def faber_migration_validate(pending: list[LocalMigration]) -> list[MigrationRefusal]:
    # An empty file would fail only in apply, after the backup.
    return [
        MigrationRefusal(name=m.name, reason=f"{m.path} holds no SQL") for m in pending if not m.handler_data.strip()
    ]


@hookimpl
def faber_migration_preview(pending: list[LocalMigration]) -> list[MigrationPreview]:
    return [MigrationPreview(name=m.name, sql=m.handler_data, transactional=True) for m in pending]


@hookimpl
def faber_migration_apply(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    outcome = ApplyOutcome()
    with context.database.connect(application_name="faber sqlfiles apply", migration_session=True) as conn:
        conn.execute(BOOKKEEPING)
        # lock_timeout (and statement_timeout) for the migrations, as every handler should.
        context.apply_session_timeouts(conn)
        for migration in pending:
            context.start_migration(migration.name)
            started = time.monotonic()
            measured = Measurement()
            try:
                # Measured, so faber can tell these rows from the application's (docs/workflow.md).
                with measured_transaction(conn, measured):
                    conn.execute(migration.handler_data)
                    conn.execute(
                        "INSERT INTO sqlfiles_migrations VALUES (%s, %s)", [migration.name, migration.checksum]
                    )
            except psycopg.Error as exc:
                outcome.failure = MigrationFailure(
                    name=migration.name,
                    error=context.redactor.redact(str(exc)),
                    path=migration.path,
                    transaction_rolled_back=True,
                    sqlstate=exc.sqlstate,
                    table_writes=measured.rows,
                )
                return outcome
            applied = AppliedMigration(
                name=migration.name, duration_seconds=round(time.monotonic() - started, 3), table_writes=measured.rows
            )
            outcome.applied.append(applied)
            context.migration_applied(applied)
    return outcome
