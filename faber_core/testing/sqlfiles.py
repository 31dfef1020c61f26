"""``sqlfiles``: a minimal migration handler, for faber's own tests and as an example plugin.

It applies ``migrations/*.sql`` in name order, each in one transaction with its bookkeeping row
in ``sqlfiles_migrations``. Load it with ``FABER_PLUGINS=faber_core.testing.sqlfiles``.
"""

from __future__ import annotations

import hashlib
import time

import psycopg

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import (
    AppliedMigration,
    ApplyOutcome,
    LocalMigration,
    MigrationFailure,
    MigrationPreview,
    MigrationRecord,
    MigrationState,
    ToolInfo,
)
from faber_core.support.files import decode_sql, read_migration_file
from faber_core.support.sessions import Measurement, measured_transaction

TOOL = "sqlfiles"
BOOKKEEPING = "CREATE TABLE IF NOT EXISTS sqlfiles_migrations (name text PRIMARY KEY, checksum text NOT NULL)"


def _local(context: RunContext) -> list[tuple[LocalMigration, str]]:
    """Each ``migrations/*.sql`` with its SQL (none without the folder: it is not configurable);
    files are checked as every handler should (:mod:`faber_core.support.files`)."""
    directory = context.project_dir / "migrations"
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.sql")):
        relative = str(path.relative_to(context.project_dir))
        data = read_migration_file(path, directory, shown=relative)
        migration = LocalMigration(name=path.stem, checksum=hashlib.sha256(data).hexdigest(), path=relative)
        found.append((migration, decode_sql(data, relative)))
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
        local=[m for m, _ in _local(context)],
        records=[MigrationRecord(name=n, checksum=c, state="applied") for n, c in rows],
    )


@hookimpl
def faber_migration_preview(context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
    sql = {m.name: text for m, text in _local(context)}
    return [
        MigrationPreview(name=m.name, sql=sql[m.name], estimated_duration_seconds=0.1, transactional=True)
        for m in pending
    ]


@hookimpl
def faber_migration_apply(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    sql = {m.name: text for m, text in _local(context)}
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
                    conn.execute(sql[migration.name])
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
