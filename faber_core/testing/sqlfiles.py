"""``sqlfiles``: a minimal migration handler, for faber's own tests and as an example plugin.

It applies ``migrations/*.sql`` in name order, each in one transaction with its bookkeeping row
in ``sqlfiles_migrations``. Load it with ``FABER_PLUGINS=faber_core.testing.sqlfiles``.

On MySQL/MariaDB (``context.database.engine.name == "mysql"``) a migration holding DDL cannot
run in a transaction: it runs statement by statement, its bookkeeping row written first as
``failed`` and marked ``applied`` at the end, so a failure part-way leaves a failed row and says
how many statements committed (``faber resolve`` then drops or completes the row); a migration
of data statements only runs in one transaction.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import psycopg

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.errors import ConfigError
from faber_core.models import (
    AppliedMigration,
    ApplyOutcome,
    LocalMigration,
    MigrationFailure,
    MigrationPreview,
    MigrationRecord,
    MigrationRefusal,
    MigrationState,
    Resolution,
    ToolInfo,
)
from faber_core.support.files import decode_sql, read_migration_file
from faber_core.support.sessions import Measurement, measured_transaction

TOOL = "sqlfiles"
BOOKKEEPING = "CREATE TABLE IF NOT EXISTS sqlfiles_migrations (name text PRIMARY KEY, checksum text NOT NULL)"


def _local(context: RunContext) -> list[LocalMigration]:
    """Each ``migrations/*.sql`` (none without the folder: it is not configurable), its SQL as
    ``handler_data``: the text read here, and checksummed, is the text previewed and applied.
    Files are checked as every handler should (:mod:`faber_core.support.files`). Read once per
    command (``context.once``): every status read of a deploy, and every target of a fleet, sees
    the same files."""
    directory = context.project_dir / "migrations"
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.sql")):
        relative = str(path.relative_to(context.project_dir))
        data = read_migration_file(path, directory, shown=relative)
        sql = decode_sql(data, relative)
        context.learn_sql_passwords(sql)
        found.append(
            LocalMigration(
                name=path.stem,
                checksum=hashlib.sha256(data).hexdigest(),
                path=relative,
                handler_data=sql,
            )
        )
    return found


@hookimpl
def faber_migration_tools() -> list[ToolInfo]:
    return [ToolInfo(name=TOOL, description="migrations/*.sql, one transaction each")]


@hookimpl
def faber_migration_status(context: RunContext) -> MigrationState:
    if context.database.engine.name == "mysql":
        return _mysql_status(context)
    with context.database.session() as conn:
        exists = conn.execute("SELECT to_regclass('sqlfiles_migrations')").fetchone()[0]
        rows = conn.execute("SELECT name, checksum FROM sqlfiles_migrations ORDER BY name").fetchall() if exists else []
    return MigrationState(
        tool=TOOL,
        local=list(context.once((TOOL, context.project_dir), lambda: _local(context))),
        records=[MigrationRecord(name=n, checksum=c, state="applied") for n, c in rows],
    )


@hookimpl
def faber_migration_validate(pending: list[LocalMigration]) -> list[MigrationRefusal]:
    # An empty file would fail only in apply, after the backup.
    return [
        MigrationRefusal(name=m.name, reason=f"{m.path} holds no SQL") for m in pending if not m.handler_data.strip()
    ]


@hookimpl
def faber_migration_preview(context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
    if context.database.engine.name == "mysql":
        return [
            MigrationPreview(name=m.name, sql=m.handler_data, transactional=_mysql_transactional(m)) for m in pending
        ]
    return [MigrationPreview(name=m.name, sql=m.handler_data, transactional=True) for m in pending]


@hookimpl
def faber_migration_apply(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    if context.database.engine.name == "mysql":
        return _mysql_apply(context, pending)
    outcome = ApplyOutcome()
    with context.database.connect(application_name="faber sqlfiles apply", migration_session=True) as conn:
        conn.execute(BOOKKEEPING)
        # lock_timeout (and statement_timeout) for the migrations, as every handler should.
        context.apply_session_timeouts(conn)
        context.hold_migration_lock(conn)
        for migration in pending:
            context.start_migration(migration.name)
            started = time.monotonic()
            measured = Measurement()
            ran = False
            try:
                # Measured, so faber can tell these rows from the application's (docs/workflow.md).
                with measured_transaction(conn, measured):
                    conn.execute(migration.handler_data)
                    conn.execute(
                        "INSERT INTO sqlfiles_migrations VALUES (%s, %s)", [migration.name, migration.checksum]
                    )
                    ran = True
            except psycopg.Error as exc:
                if ran and conn.broken:
                    # The connection was lost once every statement had run, perhaps after the
                    # server committed: this migration may have committed, so it is not reported
                    # rolled back (faber then treats it as one that may have committed in part).
                    raise
                outcome.failure = MigrationFailure(
                    name=migration.name,
                    error=context.redactor.redact(str(exc)),
                    path=migration.path,
                    transaction_rolled_back=True,
                    sqlstate=exc.sqlstate,
                    table_writes=measured.rows,
                )
                return outcome
            except KeyboardInterrupt:
                if measured.rolled_back:  # faber then knows nothing of it remains, and what it wrote
                    context.migration_failed(
                        MigrationFailure(
                            name=migration.name,
                            error="interrupted; its transaction rolled back",
                            path=migration.path,
                            transaction_rolled_back=True,
                            table_writes=measured.rows,
                        )
                    )
                raise
            applied = AppliedMigration(
                name=migration.name, duration_seconds=round(time.monotonic() - started, 3), table_writes=measured.rows
            )
            outcome.applied.append(applied)
            context.migration_applied(applied)
    return outcome


# MySQL/MariaDB ---------------------------------------------------------------------------

MYSQL_BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS sqlfiles_migrations (name varchar(255) PRIMARY KEY, checksum char(64) NOT NULL,"
    " state varchar(16) NOT NULL DEFAULT 'applied', error text)"
)


def _mysql_transactional(migration: LocalMigration) -> bool:
    from faber_core.support.mysql import is_ddl, split_statements

    return not any(is_ddl(statement) for statement in split_statements(migration.handler_data))


@hookimpl
def faber_migration_resolve(context: RunContext, name: str, resolution: Resolution) -> MigrationState:
    """Only MySQL leaves failed rows (a DDL migration cut short): ``rolled_back`` drops the row so
    the migration runs again, ``applied`` marks it applied."""
    if name not in faber_migration_status(context).failed:
        raise ConfigError(
            f"{name} is not a failed sqlfiles migration",
            suggestions=[f"See the history: faber status {context.environment}"],
        )
    with context.database.connect(application_name="faber sqlfiles resolve") as conn:
        if resolution == "rolled_back":
            conn.execute("DELETE FROM sqlfiles_migrations WHERE name = %s", [name])
        else:
            conn.execute("UPDATE sqlfiles_migrations SET state = 'applied', error = NULL WHERE name = %s", [name])
    return faber_migration_status(context)


def _mysql_status(context: RunContext) -> MigrationState:
    with context.database.session() as conn:
        exists = conn.execute(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
            " AND TABLE_NAME = 'sqlfiles_migrations'"
        ).fetchone()[0]
        rows = (
            conn.execute("SELECT name, checksum, state, error FROM sqlfiles_migrations ORDER BY name").fetchall()
            if exists
            else []
        )
    return MigrationState(
        tool=TOOL,
        local=list(context.once((TOOL, context.project_dir), lambda: _local(context))),
        records=[MigrationRecord(name=n, checksum=c, state=state, logs=error) for n, c, state, error in rows],
    )


def _mysql_apply(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    import pymysql

    from faber_core.support.mysql import error_code, split_statements

    outcome = ApplyOutcome()
    with context.database.connect(application_name="faber sqlfiles apply", migration_session=True) as conn:
        conn.execute(MYSQL_BOOKKEEPING)
        context.apply_session_timeouts(conn)
        context.hold_migration_lock(conn)
        for migration in pending:
            statements = split_statements(migration.handler_data)
            transactional = _mysql_transactional(migration)
            context.start_migration(migration.name)
            started = time.monotonic()
            committed = 0
            try:
                if transactional:
                    with conn.transaction():
                        for statement in statements:
                            conn.execute(statement)
                        conn.execute(
                            "INSERT INTO sqlfiles_migrations (name, checksum) VALUES (%s, %s)",
                            [migration.name, migration.checksum],
                        )
                else:
                    # DDL commits on its own: the row says "failed" until the last statement committed.
                    conn.execute(
                        "INSERT INTO sqlfiles_migrations (name, checksum, state) VALUES (%s, %s, 'failed')",
                        [migration.name, migration.checksum],
                    )
                    for statement in statements:
                        conn.execute(statement)
                        committed += 1
                    conn.execute("UPDATE sqlfiles_migrations SET state = 'applied' WHERE name = %s", [migration.name])
            except pymysql.Error as exc:
                error = context.redactor.redact(str(exc))
                if not transactional:
                    _record_failure(conn, migration.name, error, committed)
                    error = _committed_report(error, [context.redactor.redact(s) for s in statements], committed)
                code = error_code(exc)
                outcome.failure = MigrationFailure(
                    name=migration.name,
                    error=error,
                    path=migration.path,
                    transaction_rolled_back=transactional,
                    sqlstate=str(code) if code is not None else None,
                    statements_committed=None if transactional else committed,
                )
                return outcome
            applied = AppliedMigration(name=migration.name, duration_seconds=round(time.monotonic() - started, 3))
            outcome.applied.append(applied)
            context.migration_applied(applied)
    return outcome


def _record_failure(conn: Any, name: str, error: str, committed: int) -> None:
    """Keep the error on the failed row; with nothing committed, drop the row: the database is as before."""
    import pymysql

    try:
        if committed:
            conn.execute("UPDATE sqlfiles_migrations SET error = %s WHERE name = %s", [error, name])
        else:
            conn.execute("DELETE FROM sqlfiles_migrations WHERE name = %s", [name])
    except pymysql.Error:
        pass  # the connection is gone; the row says failed, the report says what committed


def _committed_report(error: str, statements: list[str], committed: int) -> str:
    """The error, then which statements committed before it (MySQL cannot roll DDL back), each
    shortened: ``statements`` redacted, since a password cut short is no longer one to mask."""
    if not committed:
        return f"{error} (at statement 1 of {len(statements)}; nothing of this migration committed)"
    done = "; ".join(" ".join(statement.split())[:80] for statement in statements[:committed])
    return f"{error} (at statement {committed + 1} of {len(statements)}; committed before it: {done})"
