"""Applying pending migrations: each in one transaction with its history row where its SQL allows
it, else statement by statement with a ``failed`` row left behind when one fails (resolved by
``faber resolve``)."""

from __future__ import annotations

import time

import psycopg

from faber_core.context import RunContext
from faber_core.errors import ConfigError
from faber_core.models import (
    AppliedMigration,
    ApplyOutcome,
    LocalMigration,
    MigrationFailure,
    MigrationState,
    Resolution,
)
from faber_core.support.sessions import Measurement, measured_transaction
from faber_core.support.sql import is_transactional, split_statements
from faber_plainsql import history
from faber_plainsql.migrations import read_migrations
from faber_plainsql.status import read_state


def apply(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    sql = {file.migration.name: file.sql for file in read_migrations(context)}
    outcome = ApplyOutcome()
    with context.database.connect(application_name="faber plainsql apply", migration_session=True) as conn:
        conn.execute(history.CREATE)
        context.apply_session_timeouts(conn)
        for migration in pending:
            context.start_migration(migration.name)  # raises when faber's lock was lost: let it propagate
            started = time.monotonic()
            measured = Measurement()
            transactional = is_transactional(sql[migration.name])
            committed = 0  # statements committed, outside a transaction
            try:
                if transactional:
                    with measured_transaction(conn, measured):
                        conn.execute(sql[migration.name])
                        conn.execute(history.RECORD_APPLIED, [migration.name, migration.checksum])
                else:
                    # CREATE INDEX CONCURRENTLY and its like: one statement at a time, outside a transaction.
                    for statement in split_statements(sql[migration.name]):
                        conn.execute(statement)
                        committed += 1
                    conn.execute(history.RECORD_APPLIED, [migration.name, migration.checksum])
            except psycopg.Error as exc:
                error = context.redactor.redact(str(exc).strip())
                if not transactional:  # what ran before the failing statement stays: say so in the history
                    conn.execute(history.RECORD_FAILED, [migration.name, migration.checksum, error])
                outcome.failure = MigrationFailure(
                    name=migration.name,
                    error=error,
                    path=migration.path,
                    transaction_rolled_back=transactional,
                    statements_committed=None if transactional else committed,  # 0: faber need not restore
                    sqlstate=exc.sqlstate,
                    table_writes=measured.rows if transactional else None,
                )
                return outcome  # faber emits migration.failed for it
            applied = AppliedMigration(
                name=migration.name,
                duration_seconds=round(time.monotonic() - started, 3),
                table_writes=measured.rows if transactional else None,  # unmeasured outside a transaction
            )
            outcome.applied.append(applied)
            context.migration_applied(applied)
    return outcome


def resolve(context: RunContext, name: str, resolution: Resolution) -> MigrationState:
    """After a person repaired the database: ``rolled_back`` forgets the failed row (the migration
    runs again), ``applied`` marks it applied (it never runs again)."""
    with context.database.connect(application_name="faber plainsql resolve") as conn:
        failed = {record.name for record in history.read_records(conn) if record.state == "failed"}
        if name not in failed:
            raise ConfigError(
                f"{name} is not a failed migration",
                suggestions=[f"faber status {context.environment} lists the failed ones"],
            )
        if resolution == "rolled_back":
            conn.execute(f"DELETE FROM {history.TABLE} WHERE name = %s", [name])
        else:
            conn.execute(f"UPDATE {history.TABLE} SET state = 'applied', error = NULL WHERE name = %s", [name])
    return read_state(context)
