"""Applying pending Prisma migrations without Node, interchangeably with ``prisma migrate deploy``.

The whole run holds Prisma's own lock, so a concurrent ``prisma migrate deploy`` waits for it
(and it for that). On PostgreSQL a migration whose SQL allows it runs in one transaction together
with its history row, so a failure leaves nothing of it behind; one that cannot run in a
transaction (``CREATE INDEX CONCURRENTLY``, ...) runs statement by statement, as Prisma would run
it. On MySQL/MariaDB every migration runs as Prisma runs it there, outside a transaction
(:mod:`faber_prisma.mysql`).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import psycopg
from faber_core.context import LockCheck, RunContext
from faber_core.errors import ConfigError, MigrationFailed, ToolCannotConnect
from faber_core.models import (
    AppliedMigration,
    ApplyOutcome,
    LocalMigration,
    MigrationFailure,
    MigrationRecord,
    Resolution,
)
from faber_core.support.sessions import (
    Measurement,
    advisory_lock,
    measured_transaction,
    run_measured_script,
    session_timeouts_again,
)
from faber_core.support.sql import is_transactional, keep_strings_read_as_faber, split_statements
from psycopg import sql

from faber_prisma import is_mysql
from faber_prisma.history import TABLE, History
from faber_prisma.migrations import MigrationFolder, read_migrations, require_scripts

if TYPE_CHECKING:
    from faber_core.support.mysql import MySQLConnection

    from faber_prisma import mysql
    from faber_prisma.mysql import MysqlHistory

PRISMA_LOCK_KEY = 72707369
"""The advisory lock ``prisma migrate deploy`` holds for its whole run on PostgreSQL (Prisma's schema engine)."""
RESOLVE_HELP = "https://pris.ly/d/migrate-resolve"
P3018_TEXT = (
    "A migration failed to apply. New migrations cannot be applied before the error is recovered from. "
    f"Read more about how to resolve migration issues in a production database: {RESOLVE_HELP}"
)
P3005_TEXT = (
    "The database schema is not empty. Read more about how to baseline an existing production database: "
    "https://pris.ly/d/migrate-baseline"
)
P3009_TEXT = (
    "migrate found failed migrations in the target database, new migrations will not be applied. "
    f"Read more about how to resolve migration issues in a production database: {RESOLVE_HELP}"
)


def apply_pending(context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    """Apply ``pending`` in order under Prisma's lock, stopping at the first failure."""
    folders = _folders_for(context, pending)
    require_scripts(context, folders)
    outcome = ApplyOutcome()
    with _locked_history(context, "faber prisma apply") as history:
        records = history.records()
        refuse_failed_migrations(context, records)
        history.create()
        # A `prisma migrate deploy` may have applied some since faber read the status.
        already_applied = {record.name for record in records if record.state == "applied"}
        for folder in folders:
            if folder.name in already_applied:
                continue
            lock_check = context.start_migration(folder.name, in_transaction=_in_one_transaction(context, folder))
            started = time.monotonic()
            measured = Measurement()  # faber's own row writes, told apart from the application's
            try:
                failure = _apply_one(context, history, folder, measured, lock_check)
                if failure is not None:
                    outcome.failure = failure.model_copy(update={"table_writes": measured.rows})
                    break
                applied = AppliedMigration(
                    name=folder.name, duration_seconds=round(time.monotonic() - started, 3), table_writes=measured.rows
                )
                outcome.applied.append(applied)
                context.migration_applied(applied)
            except KeyboardInterrupt:
                if not measured.rolled_back and _recorded_applied(history, folder.name):
                    context.migration_applied(
                        AppliedMigration(
                            name=folder.name,
                            duration_seconds=round(time.monotonic() - started, 3),
                            table_writes=measured.rows,
                        )
                    )
                raise
    return outcome


def _recorded_applied(history: History | MysqlHistory, name: str) -> bool:
    """Whether the migration an interrupt stopped is recorded applied: it committed before faber
    reported it. The signal arrived while its COMMIT ran (which a cancel cannot stop) or in the
    moment after it; its history row, written with it (in its transaction on PostgreSQL), says so.
    Without this faber would report a migration that "may have committed in part" when all of it
    did. Under Prisma's lock no other deploy applies it meanwhile. (On MySQL, whose statements
    commit one by one, the interrupted migration stays one that may have committed in part.)"""
    if not isinstance(history, History) or history.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return False  # MySQL, or the connection is gone or mid-transaction
    try:
        return any(record.name == name and record.state == "applied" for record in history.records())
    except psycopg.Error:
        return False


def resolve(context: RunContext, name: str, resolution: Resolution) -> None:
    """``prisma migrate resolve``: mark the failed migration ``name`` rolled back or applied.

    As with Prisma, ``applied`` also baselines: it records a migration that was never attempted
    (its changes are already in a database created outside Prisma) without running it.
    """
    with _locked_history(context, "faber prisma resolve") as history:
        records = history.records()
        failed = {record.name for record in records if record.state == "failed"}
        if resolution == "applied" and name in {record.name for record in records if record.state == "applied"}:
            raise ConfigError(f"{name} is already recorded as applied")
        if resolution == "rolled_back" and name not in failed:
            raise ConfigError(
                f"{name} is not a failed migration",
                suggestions=[f"Failed migrations: {', '.join(sorted(failed))}" if failed else "No migration is failed"],
            )
        if resolution == "rolled_back":
            history.mark_rolled_back(name)
        else:
            folder = next((f for f in read_migrations(context) if f.name == name), None)
            if folder is None or folder.checksum is None:
                raise ConfigError(f"{name} has no migration.sql in the project, so it cannot be marked applied")
            history.create()
            history.mark_applied(name, folder.checksum)


def refuse_unbaselined_database(context: RunContext, pending: list[LocalMigration]) -> None:
    """Refuse to apply into a database that has tables but no ``_prisma_migrations`` (one created
    outside Prisma), as Prisma does (P3005): the first migration would create what is already
    there. Read without a lock, before faber's lock and the backup."""
    if not pending:
        return
    engine = context.database.engine
    try:
        with context.database.connect(application_name="faber prisma check") as conn:
            if is_mysql(context):
                from faber_prisma.mysql import MysqlHistory  # imports PyMySQL: only on MySQL/MariaDB

                history: History | MysqlHistory = MysqlHistory(conn, context.database.schema)
            else:
                history = History(conn, context.database.schema)
            tables = [] if history.exists() else history.counted_tables()
    except engine.operational_error as exc:  # the server at its connection limit, restarting, gone
        details = context.redactor.redact(engine.describe_connection_error(exc, context.database))
        raise ToolCannotConnect(
            f"Cannot connect to the {context.environment} database: {details}",
            details=details,
            suggestions=[
                "Nothing was applied and no backup was taken",
                "Check the database, then run the same command",
            ],
        ) from None
    if not tables:
        return
    first = shlex.quote(pending[0].name)  # pasted into a shell
    shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
    raise MigrationFailed(
        f"The database is not empty (tables: {shown}) but has no {TABLE}: it was not created by these migrations",
        suggestions=[
            "Nothing was applied and no backup was taken",
            "Baseline it: mark each migration whose changes the database already has as applied, oldest first, "
            f"e.g. faber resolve {context.environment} --applied {first} "
            f"(or: npx prisma migrate resolve --applied {first})",
            "Then deploy again: only the migrations after those run",
        ],
        result={"tables": tables},
        tool_output=f"Error: P3005\n\n{P3005_TEXT}",
    )


def refuse_failed_migrations(context: RunContext, records: list[MigrationRecord]) -> None:
    """Refuse to apply anything while a failed attempt is unresolved, as Prisma does (P3009)."""
    failed = [record for record in records if record.state == "failed"]
    if not failed:
        return
    names = [record.name for record in failed]
    details = "\n".join(
        f"The `{record.name}` migration started at {record.started_at} failed"
        + (f" with the following logs:\n{record.logs.strip()}" if record.logs and record.logs.strip() else "")
        for record in failed
    )
    first = shlex.quote(names[0])  # pasted into a shell
    raise MigrationFailed(
        f"The database has failed migrations that were never rolled back: {', '.join(names)}",
        suggestions=[
            f"Repair the database by hand, then mark the migration rolled back: npx prisma migrate resolve "
            f"--rolled-back {first} (or: faber resolve {context.environment} --rolled-back {first})",
            f"If its changes were completed by hand instead: npx prisma migrate resolve --applied {first} "
            f"(or: faber resolve {context.environment} --applied {first})",
        ],
        result={"failed_migrations": names},
        tool_output=context.redactor.redact(f"Error: P3009\n\n{P3009_TEXT}\n{details}"),
    )


def require_scripts_of(context: RunContext, pending: list[LocalMigration]) -> None:
    """Refuse ``pending`` when one of its folders has no script (see :func:`require_scripts`)."""
    require_scripts(context, _folders_for(context, pending))


def _folders_for(context: RunContext, pending: list[LocalMigration]) -> list[MigrationFolder]:
    by_name = {folder.name: folder for folder in read_migrations(context)}
    missing = [migration.name for migration in pending if migration.name not in by_name]
    if missing:
        raise ConfigError(
            f"Pending migrations not found in the migrations directory: {', '.join(missing)}",
            suggestions=["Check database.prisma.migrations_dir in the config"],
        )
    return [by_name[migration.name] for migration in pending]


@contextmanager
def _locked_history(context: RunContext, application_name: str) -> Iterator[History | MysqlHistory]:
    """The history on a migration session holding Prisma's lock (see :func:`_postgres_history`
    and :func:`_mysql_history`)."""
    on_mysql = is_mysql(context)
    if on_mysql:
        from faber_prisma import mysql  # imports PyMySQL: only on MySQL/MariaDB
    try:
        conn = (
            mysql.connect(context, application_name)
            if on_mysql
            else context.database.connect(application_name=application_name, migration_session=True)
        )
    except context.database.engine.driver_error as exc:
        raise MigrationFailed(
            f"Cannot connect to apply migrations: {context.redactor.redact(str(exc).strip())}",
            suggestions=["Nothing was applied", f"Check the database of {context.environment}, then retry"],
        ) from None
    history = _mysql_history if on_mysql else _postgres_history
    with history(context, conn) as locked:
        yield locked


@contextmanager
def _mysql_history(context: RunContext, conn: MySQLConnection) -> Iterator[MysqlHistory]:
    """The database's history on a session holding Prisma's ``GET_LOCK`` lock."""
    from faber_prisma import mysql
    from faber_prisma.mysql import MysqlHistory

    with conn, mysql.prisma_lock(conn, wait_seconds=context.settings.lock_wait_seconds):
        context.apply_session_timeouts(conn)
        context.hold_migration_lock(conn)
        yield MysqlHistory(conn, context.database.schema)


@contextmanager
def _postgres_history(context: RunContext, conn: psycopg.Connection) -> Iterator[History]:
    """The schema's history on a session holding Prisma's advisory lock, its search_path set to
    the Prisma schema (Prisma's migrations name their tables unqualified)."""
    with (
        conn,
        advisory_lock(
            conn,
            PRISMA_LOCK_KEY,
            wait_seconds=context.settings.lock_wait_seconds,
            purpose="Prisma migration run (faber or prisma migrate)",
        ),
    ):
        conn.execute(
            "SELECT set_config('search_path', %s, false)", [sql.Identifier(context.database.schema).as_string(conn)]
        )
        context.apply_session_timeouts(conn)
        context.hold_migration_lock(conn)
        yield History(conn, context.database.schema)


def _in_one_transaction(context: RunContext, folder: MigrationFolder) -> bool:
    """Whether the migration runs in one transaction with its history row (PostgreSQL, SQL that allows it)."""
    if is_mysql(context):
        return False
    from pglast.parser import ParseError  # with the parser is_transactional imports

    try:
        return is_transactional(folder.sql)
    except ParseError:
        return False  # _apply_one reports it


def _apply_one(
    context: RunContext,
    history: History | MysqlHistory,
    folder: MigrationFolder,
    measured: Measurement,
    lock_check: LockCheck | None,
) -> MigrationFailure | None:
    if is_mysql(context):
        measured.unmeasured()  # each statement commits on its own
        return _apply_on_mysql(context, history, folder)
    from pglast.parser import ParseError  # with the parser is_transactional imports

    try:
        transactional = is_transactional(folder.sql)
    except ParseError as exc:
        return MigrationFailure(
            name=folder.name,
            error=f"The SQL could not be parsed, nothing was run: {context.redactor.redact(str(exc))}",
            path=folder.path,
            transaction_rolled_back=True,
        )
    if transactional:
        return _apply_in_transaction(context, history, folder, measured, lock_check)
    measured.unmeasured()  # each statement commits on its own
    return _apply_statement_by_statement(context, history, folder)


def _apply_in_transaction(
    context: RunContext, history: History, folder: MigrationFolder, measured: Measurement, lock_check: LockCheck | None
) -> MigrationFailure | None:
    """The migration and its history row in one transaction, sent as one message: faber's lock
    check (``lock_check``), the row's INSERT, the script, the row's UPDATE (one round trip; a
    failing statement ends it, and the whole transaction rolls back)."""
    assert folder.checksum is not None
    started_at = datetime.now(timezone.utc)
    migration_id, record_start = history.start_statement(folder.name, folder.checksum)
    script = f"{record_start};\n{folder.sql}\n;\n{history.finish_statement(migration_id)}"
    try:
        run_measured_script(history.conn, script, measured, lock_check=lock_check)
    except KeyboardInterrupt:
        if measured.rolled_back:  # the history row rolled back with it: the next deploy applies it again
            context.migration_failed(
                MigrationFailure(
                    name=folder.name,
                    error="interrupted; its transaction rolled back",
                    path=folder.path,
                    transaction_rolled_back=True,
                    table_writes=measured.rows,
                )
            )
        raise
    except psycopg.Error as exc:
        logs = prisma_logs(context, folder.name, exc.sqlstate, database_error(exc))
        with measured_transaction(history.conn, measured):  # the attempt's row is faber's write too
            unrecorded = _record(
                context, history.record_rolled_back_attempt, folder.name, folder.checksum, started_at, logs
            )
        # Recorded rolled back: nothing is left to recover from, so the output leaves out P3018's
        # "cannot be applied before the error is recovered from" (it stays in the history's logs).
        return MigrationFailure(
            name=folder.name,
            error=database_error_summary(context, exc) + unrecorded,
            output="Error: P3018\n\n"
            + prisma_logs(context, folder.name, exc.sqlstate, database_error(exc), recovery_needed=False),
            path=folder.path,
            transaction_rolled_back=True,
            sqlstate=exc.sqlstate,
        )
    return None


def _apply_statement_by_statement(
    context: RunContext, history: History, folder: MigrationFolder
) -> MigrationFailure | None:
    assert folder.checksum is not None
    statements = split_statements(folder.sql)
    again = session_timeouts_again(history.conn)  # an earlier migration may have cleared them
    if again:
        history.conn.execute(again)
    migration_id = history.start(folder.name, folder.checksum)
    block_began: int | None = None  # the statement that opened the script's own transaction, while it is open
    for number, statement in enumerate(statements, start=1):
        try:
            keep_strings_read_as_faber(history.conn)  # the statement before may have turned it off
            history.conn.execute(statement)
        except psycopg.Error as exc:
            _end_aborted_transaction(history.conn)  # which undoes the script's open transaction, if any
            committed = number - 1 if block_began is None else block_began - 1
            logs = prisma_logs(context, folder.name, exc.sqlstate, database_error(exc))
            unrecorded = _record(context, history.fail, migration_id, logs)
            return MigrationFailure(
                name=folder.name,
                error=database_error_summary(context, exc)
                + f"\nStatement {number} of {len(statements)} failed. The migration runs outside a transaction: "
                + _already_ran(context, statements[:committed])
                + _rolled_back(block_began, number)
                + unrecorded,
                output=f"Error: P3018\n\n{logs}",
                path=folder.path,
                transaction_rolled_back=False,
                sqlstate=exc.sqlstate,
                statements_committed=committed,
            )
        if history.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            block_began = None
        elif block_began is None:
            block_began = number
    history.finish(migration_id)
    return None


def _apply_on_mysql(context: RunContext, history: MysqlHistory, folder: MigrationFolder) -> MigrationFailure | None:
    """As Prisma on MySQL: the attempt's row, the script (:func:`faber_prisma.mysql.run_script`),
    then the row finished. A failure leaves the statements before the failing one committed and the
    row failed, with the P3018 text in its logs, until someone resolves it (the rollback restores
    the backup)."""
    from faber_prisma import mysql

    assert folder.checksum is not None
    migration_id = history.start(folder.name, folder.checksum)

    def interrupted(stopped: mysql.ScriptFailure) -> None:
        # Before the interrupt goes on: what committed decides whether the backup is restored.
        context.migration_failed(
            MigrationFailure(
                name=folder.name,
                error=f"{stopped.message.capitalize()}. MySQL commits each statement on its own: "
                f"{_committed_on_mysql(stopped)}.",
                path=folder.path,
                transaction_rolled_back=False,
                statements_committed=stopped.committed,
            )
        )

    failure = mysql.run_script(history.conn, folder.sql, interrupted)
    if failure is None:
        history.finish(migration_id)
        return None
    code = str(failure.code) if failure.code is not None else None
    error = f"{failure.message}\n\nPlease check the query number {failure.statement} from the migration file."
    logs = prisma_logs(context, folder.name, code, error)
    unrecorded = _record(context, history.fail, migration_id, logs)
    return MigrationFailure(
        name=folder.name,
        error=context.redactor.redact(
            failure.message + (f" ({context.database.engine.error_code_label} {code})" if code else "")
        )
        + f"\nStatement {failure.statement} failed. MySQL commits each statement on its own: "
        + _committed_on_mysql(failure)
        + "."
        + unrecorded,
        output=f"Error: P3018\n\n{logs}",
        path=folder.path,
        transaction_rolled_back=False,
        sqlstate=code,
        statements_committed=failure.committed,
    )


def _committed_on_mysql(failure: mysql.ScriptFailure) -> str:
    committed = failure.committed
    said = (
        "no statement of it committed"
        if committed == 0
        else "statement 1 of it ran and committed (not undone)"
        if committed == 1
        else f"statements 1 to {committed} of it ran and committed (not undone)"
    )
    if committed < failure.statement - 1:
        said += (
            f"; statements {committed + 1} to {failure.statement - 1} ran in the script's own transaction, "
            "rolled back with it"
        )
    return said


def _already_ran(context: RunContext, statements: list[str]) -> str:
    if not statements:
        return "no statement of it committed, but its failed record stays until resolved."
    # Redacted before shortened: a password cut short is no longer one to mask.
    described = "; ".join(f"{n}: {_one_line(context.redactor.redact(s))}" for n, s in enumerate(statements, start=1))
    return f"statements already run and committed (not undone): {described}"


def _rolled_back(block_began: int | None, failed: int) -> str:
    if block_began is None:
        return ""
    return f" Statements {block_began} to {failed} ran in the migration's own transaction, which rolled back."


def _one_line(statement: str, width: int = 80) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _end_aborted_transaction(conn: psycopg.Connection) -> None:
    """A script's own BEGIN may leave the session in an aborted transaction; end it so the
    history row can still be written."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")


def _record(context: RunContext, write: Callable[..., None], *args: Any) -> str:
    """Write the failure to the history; if even that fails, say so instead of hiding the first error."""
    try:
        write(*args)
    except context.database.engine.driver_error as exc:
        return f"\nThe failure could not be recorded in _prisma_migrations: {context.redactor.redact(str(exc).strip())}"
    return ""


def database_error(exc: psycopg.Error) -> str:
    """The error as PostgreSQL reports it: ``ERROR: ...`` with its DETAIL and HINT lines."""
    diag = exc.diag
    if not diag.message_primary:
        return str(exc).strip()
    lines = [f"{diag.severity or 'ERROR'}: {diag.message_primary}"]
    lines += [f"DETAIL: {diag.message_detail}"] if diag.message_detail else []
    lines += [f"HINT: {diag.message_hint}"] if diag.message_hint else []
    return "\n".join(lines)


def database_error_summary(context: RunContext, exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    code = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
    return context.redactor.redact(f"{primary}{code}")


def prisma_logs(context: RunContext, name: str, code: str | None, error: str, *, recovery_needed: bool = True) -> str:
    """The ``logs`` Prisma writes for a failed migration (P3018), redacted: ``code`` is the
    database's error code (SQLSTATE, or MySQL's error number), ``error`` its text. Without the
    first paragraph (recovery needed) for a migration whose failure left nothing to recover from."""
    parts = [*([P3018_TEXT] if recovery_needed else []), f"Migration name: {name}"]
    if code:
        parts.append(f"Database error code: {code}")
    parts.append(f"Database error:\n{error}")
    return context.redactor.redact("\n\n".join(parts))
