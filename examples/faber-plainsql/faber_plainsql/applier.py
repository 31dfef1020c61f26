"""Applying pending migrations: each in one transaction with its history row where its SQL allows
it, else statement by statement (``LocalMigration.transactional`` False, as the status read it),
with a ``failed`` row left behind when one fails (resolved by ``faber resolve``).

A migration outside a transaction that a deploy was killed or interrupted in has no row: faber
recorded it before the apply step, and the next run names it as failed from that record.
"""

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
from faber_core.support.sql import split_statements
from faber_plainsql import history
from faber_plainsql.migrations import read_migrations
from faber_plainsql.status import read_state


def apply(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    sql = {file.migration.name: file.sql for file in read_migrations(context)}
    outcome = ApplyOutcome()
    with context.database.connect(application_name="faber plainsql apply", migration_session=True) as conn:
        conn.execute(history.CREATE)
        context.apply_session_timeouts(conn)
        context.hold_migration_lock(conn)
        for migration in pending:
            context.start_migration(migration.name)  # raises when faber's lock was lost: let it propagate
            started = time.monotonic()
            measured = Measurement()
            transactional = migration.transactional is not False
            statements = [] if transactional else split_statements(sql[migration.name])
            committed = 0  # statements committed, outside a transaction
            try:
                if transactional:
                    with measured_transaction(conn, measured):
                        conn.execute(sql[migration.name])
                        conn.execute(history.RECORD_APPLIED, [migration.name, migration.checksum])
                else:
                    # CREATE INDEX CONCURRENTLY and its like: one statement at a time, outside a transaction.
                    for statement in statements:
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
            except KeyboardInterrupt:
                # Said before the interrupt goes on: what of the migration remains decides the rollback.
                if not transactional:
                    context.migration_failed(interrupted_outside_a_transaction(migration, committed, len(statements)))
                elif measured.rolled_back:
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
                name=migration.name,
                duration_seconds=round(time.monotonic() - started, 3),
                table_writes=measured.rows if transactional else None,  # unmeasured outside a transaction
            )
            outcome.applied.append(applied)
            context.migration_applied(applied)
    return outcome


def interrupted_outside_a_transaction(migration: LocalMigration, committed: int, statements: int) -> MigrationFailure:
    """An interrupt stopped ``migration`` after ``committed`` of its ``statements`` committed. How
    many is not known for sure, so none is given (faber then keeps its record of the migration, for
    the next run to name as failed): the statement running may have finished just as the interrupt
    came, before its cancel reached the server, or before it was counted."""
    if committed == 0:
        before = "No statement of it had committed"
    elif committed == 1:
        before = "Statement 1 committed and stays"
    else:
        before = f"Statements 1 to {committed} committed and stay"
    if committed == statements:
        after = "its history row may not have been written"
    else:
        after = f"statement {committed + 1} may have committed too, had it finished as the interrupt came"
    return MigrationFailure(
        name=migration.name,
        error=f"Interrupted outside a transaction\n{before}; {after}",
        path=migration.path,
        transaction_rolled_back=False,
    )


def resolve(context: RunContext, name: str, resolution: Resolution) -> MigrationState:
    """After a person repaired the database: ``rolled_back`` forgets the failed row (the migration
    runs again), ``applied`` marks it applied (it never runs again). ``applied`` also records a
    migration still to run that has no row: the one a deploy was killed or interrupted in outside a
    transaction, which only faber's record names as failed, once a person completed it by hand."""
    local = {file.migration.name: file.migration for file in read_migrations(context)}
    with context.database.connect(application_name="faber plainsql resolve") as conn:
        state = {record.name: record.state for record in history.read_records(conn)}.get(name)
        if state == "failed" and resolution == "rolled_back":
            conn.execute(f"DELETE FROM {history.TABLE} WHERE name = %s", [name])
        elif state == "failed":
            conn.execute(f"UPDATE {history.TABLE} SET state = 'applied', error = NULL WHERE name = %s", [name])
        elif state is None and name in local and resolution == "applied":
            conn.execute(history.CREATE)
            conn.execute(history.RECORD_APPLIED, [name, local[name].checksum])
        else:
            raise ConfigError(
                f"{name} is not a failed migration" + (" nor one still to run" if resolution == "applied" else ""),
                suggestions=[f"faber status {context.environment} lists the failed ones"],
            )
    return read_state(context)
