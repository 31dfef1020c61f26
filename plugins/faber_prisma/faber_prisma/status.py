"""The migration state: local folders against ``_prisma_migrations``, read without changing anything."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from faber_core.context import RunContext
from faber_core.errors import ConfigError, HealthCheckFailed
from faber_core.models import LocalMigration, MigrationRecord, MigrationState
from psycopg import sql

from faber_prisma import TOOL, is_mysql
from faber_prisma.history import TABLE, History
from faber_prisma.migrations import MigrationFolder, equivalent_checksums, read_migrations

if TYPE_CHECKING:
    from faber_core.support.mysql import MySQLConnection


def build_state(context: RunContext, folders: list[MigrationFolder], records: list[MigrationRecord]) -> MigrationState:
    return MigrationState(
        tool=TOOL,
        local=local_migrations(context, folders, records),
        records=records,
        bookkeeping_table=_table_name(context),
    )


def _table_name(context: RunContext) -> str:
    """``_prisma_migrations`` qualified and quoted as the engine's SQL names it."""
    if is_mysql(context):
        from faber_prisma import mysql  # imports PyMySQL: only on MySQL/MariaDB

        return mysql.qualified_table(context.database.schema)
    return sql.Identifier(context.database.schema, TABLE).as_string(None)


def local_migrations(
    context: RunContext, folders: list[MigrationFolder], records: list[MigrationRecord]
) -> list[LocalMigration]:
    """The folders as local migrations.

    Where Prisma would accept an applied row's checksum for the file (same script, other line
    endings or an old unpadded checksum), the local checksum is reported as that row's, so the
    migration does not count as edited when Prisma itself does not think so.
    """
    applied = {record.name: record.checksum for record in records if record.state == "applied"}
    local = []
    for folder in folders:
        migration = folder.as_local()
        recorded = applied.get(folder.name)
        if folder.script is not None and recorded and recorded != migration.checksum:
            if recorded in equivalent_checksums(folder.script):
                migration = migration.model_copy(update={"checksum": recorded})
        local.append(migration)
    return local


def read_state(context: RunContext) -> MigrationState:
    """Local migrations and the history rows of ``context.database.schema`` (the database, on MySQL).

    A read blocked longer than ``query_lock_timeout_seconds`` (a session holding
    ``_prisma_migrations`` locked) fails naming that session.
    """
    folders = read_migrations(context)
    with context.database.session() as conn:
        if is_mysql(context):
            return build_state(context, folders, _mysql_records(context, conn))
        history = History(conn, context.database.schema)
        try:
            records = history.records()
        except psycopg.errors.LockNotAvailable:
            # Imported here: support.sessions brings the writes measurement, which a status never uses.
            from faber_core.support.sessions import blocked_read_error

            raise blocked_read_error(
                conn, history.table.as_string(conn), context.database.lock_timeout, context.redactor.redact
            ) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise _schema_not_usable(context, conn, exc) from None
    return build_state(context, folders, records)


def _schema_not_usable(context: RunContext, conn: psycopg.Connection, exc: psycopg.Error) -> ConfigError:
    """The schema the URL names (``?schema=``) is one the user may not use: another team's, a
    system schema, a typo that names one."""
    schema, user = context.database.schema, conn.info.user
    reason = context.redactor.redact(exc.diag.message_primary or str(exc).strip())
    return ConfigError(
        f"The database user {user} may not use the schema {schema} that {context.database.source} names "
        f"(?schema={schema}): {reason}. Nothing was read or changed",
        suggestions=[
            f"Name the application's schema in the URL (?schema=...), or let the user use this one: "
            f"GRANT USAGE, CREATE ON SCHEMA {sql.Identifier(schema).as_string(conn)} "
            f"TO {sql.Identifier(user).as_string(conn)}",
        ],
    )


def _mysql_records(context: RunContext, conn: MySQLConnection) -> list[MigrationRecord]:
    from faber_prisma.mysql import MysqlHistory  # imports PyMySQL: only on MySQL/MariaDB

    history = MysqlHistory(conn, context.database.schema)
    try:
        return history.records()
    except context.database.engine.driver_error as exc:
        if context.database.engine.classify_error(exc) != "lock_timeout":
            raise
        raise HealthCheckFailed(
            f"Cannot read the migration status: reading {history.table} waited more than "
            f"{context.database.lock_timeout:g} s for a lock held by another session (an ALTER TABLE or a long "
            "transaction on it)",
            suggestions=[
                "Wait for that session to finish, then retry",
                "Find it in SHOW PROCESSLIST; if it is stuck, end it with: KILL <connection id>",
                "Or raise query_lock_timeout_seconds for this environment",
            ],
        ) from None
