"""Reading a database's migration status, and what killed runs left of it, without faber's lock:
``faber status`` and the deploy's analysis before the lock (:mod:`faber_core.workflow`) read so.

Apart from the workflow, so that a status imports none of what only a deploy, a rollback or a
resolve needs (docs/performance.md); the workflow imports these names from here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

from faber_core.audit import unfinished
from faber_core.context import RunContext
from faber_core.errors import (
    BackupFailed,
    ConfigError,
    FaberError,
    HealthCheckFailed,
    Locked,
    ReadBlocked,
    ToolCannotConnect,
)
from faber_core.models import BackupLeftover, InterruptedRestore, LeftoverDatabase, MigrationState
from faber_core.plugins import Plugins
from faber_core.telemetry import command_name, step

DEPLOY = "deploy-migrations"
PREVIEW = "preview-migrations"

T = TypeVar("T")


def read_past_another_run(context: RunContext, read: Callable[[], T]) -> T:
    """``read()``, a read of the database made without faber's lock (a deploy's analysis,
    ``faber status``, a preview). Another run's restore (a rollback) keeps every table it brings
    back locked until it commits, the migration tool's history among them: a read blocked
    meanwhile is that run's doing, so it waits for that run as for faber's lock
    (:func:`waited_for_another_run`), then reads again; a blocked read also reads again when the
    lock is free (the run may have ended after the read gave up). A read that fails otherwise while
    the lock is free fails as it is."""
    try:
        return read()
    except ReadBlocked:
        # With faber's lock free now, the run that blocked the read may have ended since it gave
        # up: read again. A read blocked by anything else fails the second time, as it is.
        waited_for_another_run(context)
    except HealthCheckFailed:
        if not waited_for_another_run(context):
            raise
    return read()


def waited_for_another_run(context: RunContext) -> bool:
    """Whether another run held faber's lock and let go of it within ``lock_wait_seconds``; past
    that, :class:`~faber_core.errors.Locked` naming the run (exit 7), as a deploy waiting for the
    lock gets. False when faber's lock is free, or the database cannot say."""
    engine = context.database.engine
    database = context.database
    try:
        with database.connect(application_name=f"faber {context.operation} {context.environment}") as conn:
            try:
                with engine.deploy_lock(conn, database, wait_seconds=0, purpose="faber run"):
                    return False
            except Locked:
                pass
            wait = context.settings.lock_wait_seconds
            with engine.deploy_lock(conn, database, wait_seconds=wait, purpose="faber run"):
                return True
    except engine.driver_error:
        return False


def connection_failed(
    context: RunContext, exc: Exception, *, after_apply: bool = False, checks_skipped: bool = False
) -> HealthCheckFailed:
    """A deploy reports the spec's pre-deployment failure, or after its migrations the connection it
    lost; other commands, and a deploy whose health checks are skipped (``checks_skipped``: none
    failed), say what they could not do. Only a deploy's result names its health check: other
    commands run none, so none failed. ``exc``: faber's driver's error, or the migration tool's."""
    if isinstance(exc, ToolCannotConnect):
        details = context.redactor.redact(exc.details)
    else:
        details = context.redactor.redact(context.database.engine.describe_connection_error(exc, context.database))
    deploying = context.operation in (DEPLOY, PREVIEW)
    if after_apply:
        message = f"Lost the connection to the {context.environment} database after the migrations: {details}"
    elif deploying and not checks_skipped:
        message = "Pre-deployment health check failed"
    else:
        message = f"Cannot connect to the {context.environment} database: {details}"
    health_check = {"health_check": "skipped" if checks_skipped else "failed"} if deploying else {}
    return HealthCheckFailed(
        message,
        result={**health_check, "details": details},
        suggestions=database_suggestions(context),
    )


def read_blocked(context: RunContext, exc: Exception) -> ReadBlocked:
    """A status read that waited past ``query_lock_timeout_seconds`` for a lock: the database is up,
    another session holds what the handler reads."""
    waited = context.database.lock_timeout
    return ReadBlocked(
        f"Cannot read the migration status: it waited more than {waited:g} s for a lock another session holds",
        result={"details": context.redactor.redact(first_line(str(exc)))},
        suggestions=[
            "Wait for that session to finish, then run the same command again",
            "Or raise query_lock_timeout_seconds for this environment",
        ],
    )


def database_suggestions(context: RunContext) -> list[str]:
    """The spec's recovery steps for a database that is down or unreachable."""
    env_var = context.settings.database_url_env
    return [
        "Verify database is running",
        *(
            [
                f"Check connection string: {env_var}",
                context.database.engine.test_connection_hint(env_var),
                *context.database.engine.client_url_advice(context.database.parsed, env_var),
            ]
            if env_var
            else []
        ),
        f"Retry when issue resolved: {rerun_command(context)}",
    ]


def rerun_command(context: RunContext) -> str:
    """The command that ran, to run it again: ``faber migrate production``, ``faber status production``, ..."""
    dry_run = " --dry-run" if context.operation == PREVIEW else ""
    return f"faber {command_name(context.operation)} {context.environment}{dry_run}"


def backup_before_failed_migrations(context: RunContext, plugins: Plugins) -> list[str]:
    """The restore that undoes failed migrations a run left (one killed mid-migration reports
    nothing and writes no history row): the newest backup whose migration history is exactly what
    is applied now, as the run took it just before applying them. When faber knows when the failed
    migrations began (the tool's record of a failed attempt, faber's record of a killed deploy),
    only a backup taken by then counts (one taken since holds what they left): failing an exact
    one, the newest taken by then whose migrations are all still applied (the deploy's own, when it
    committed others before the failed one), whose restore also undoes the migrations applied
    since, which the advice names; failing that too, the advice says no backup undoes them."""
    try:
        state = plugins.migration_status(context)
        if not state.failed:
            return []
        backups = plugins.backup_list(context)  # a provider not installed: a ConfigError
        until = undoing_backup_taken_by(context, state)
    except (FaberError, context.database.engine.driver_error):
        return []
    applied = sorted(state.applied_fingerprint())
    usable = [b for b in backups if b.status == "available" and (until is None or b.created_at <= until)]
    failed = ", ".join(state.failed)
    before = next((b for b in usable if sorted(tuple(m) for m in b.migrations) == applied), None)
    if before is not None:
        return [
            f"Or undo all of it: {before.id} was taken just before {failed} ran (the same "
            f"migrations applied): faber rollback {context.environment} --to {before.id}"
        ]
    if until is None:
        return []
    held = set(applied)
    before = next((b for b in usable if {tuple(m) for m in b.migrations} <= held), None)
    if before is None:
        return [
            f"No backup undoes it: none was taken before {failed} began (with its migrations all still applied); "
            "one taken since holds what it left"
        ]
    in_backup = {tuple(m)[0] for m in before.migrations}
    since = [name for name in state.applied if name not in in_backup]
    named = ", ".join(since[:3]) + (f" and {len(since) - 3} more" if len(since) > 3 else "")
    return [
        f"Or undo all of it: {before.id} was taken before {failed} began (restoring it also undoes {named}, "
        f"applied since): faber rollback {context.environment} --to {before.id}"
    ]


def undoing_backup_taken_by(context: RunContext, state: MigrationState) -> dt.datetime | None:
    """The time, by faber's clock (the one backups are timed by), by which a backup that undoes
    ``state``'s failed migrations was taken: the earliest of the starts the tool recorded for them
    (by the database server's clock, moved onto faber's by how far the two are apart now) and of
    the times faber's record of killed deploys keeps; None when neither knows."""
    started = [
        record.started_at
        for record in state.records
        if record.state == "failed" and record.name in state.failed and record.started_at is not None
    ]
    if started:
        with context.database.session() as conn:
            ahead = context.database.engine.server_clock_ahead(conn)
        started = [moment - ahead for moment in started]
    killed = unfinished.undone_by_backups_until(context, state)
    return min([*started, *([killed] if killed else [])], default=None)


def read_status(
    context: RunContext,
    plugins: Plugins,
    *,
    quiet: bool = False,
    after_apply: bool = False,
    checks_skipped: bool = False,
) -> MigrationState:
    """The handler's migration status; ``after_apply``: read after this deploy's migrations ran, when
    a lost connection is not a pre-deployment failure; ``checks_skipped``: read by a deploy whose
    health checks are off, whose lost connection is no failed check either."""
    with step(context, "status"):
        try:
            state = plugins.migration_status(context)
        except (context.database.engine.operational_error, ToolCannotConnect) as exc:
            if context.database.engine.classify_error(exc) == "lock_timeout":
                raise read_blocked(context, exc) from None
            raise connection_failed(context, exc, after_apply=after_apply, checks_skipped=checks_skipped) from None
        except ConfigError as refused:  # the tool's files missing: maybe the config names another tool
            from faber_core.scaffold import another_tool_shown

            advice = another_tool_shown(context.project_dir, context.tool)
            if advice:
                refused.suggestions.insert(0, advice)
            raise
    if not quiet:
        context.emit("status.read", pending=state.pending, applied=len(state.applied))
    return state


def read_leftovers(context: RunContext) -> tuple[list[LeftoverDatabase], list[InterruptedRestore]]:
    """What killed runs left of the database, for ``faber status`` to report (and leave alone): the
    databases they left on its server, and the restores they left half done in it."""
    engine = context.database.engine
    with context.database.session() as conn:
        return engine.leftover_databases(conn, context.database), engine.interrupted_restores(conn, context.database)


def read_backup_leftovers(context: RunContext, plugins: Plugins) -> tuple[list[BackupLeftover], str | None]:
    """What killed runs left where the backup provider keeps its backups (an RDS copy beside the
    instance), for ``faber status``; with the reason instead when the provider could not look,
    which does not stop status from answering about the database."""
    try:
        return plugins.backup_leftovers(context), None
    except BackupFailed as failed:
        return [], f"the {context.settings.backup.provider} check could not run: {failed.message}"


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def drop_invalid_indexes(context: RunContext) -> list[str]:
    """The statement that drops each invalid index; none when they cannot be read."""
    try:
        with context.database.session() as conn:
            invalid = context.database.engine.invalid_indexes(conn)
    except context.database.connect_errors:
        return []
    return [drop_invalid_index(name) for name in invalid]


def drop_invalid_index(name: str) -> str:
    return f"Drop the invalid index left behind: DROP INDEX CONCURRENTLY {name};"


def statements_still_running(context: RunContext, state: MigrationState | None) -> list[str]:
    """Advice naming each statement another session of faber's user is still running in the
    database that may be a killed deploy's (:meth:`~faber_core.engines.Engine.statements_left_running`,
    given the SQL of ``state``'s failed migrations): on MySQL/MariaDB it runs to its end and commits
    then, after its migration was reported failed. None when they cannot be read."""
    engine = context.database.engine
    if not engine.statements_outlive_their_client:
        return []
    try:
        with context.database.session() as conn:
            running = engine.statements_left_running(conn, _failed_sql(context, state))
    except engine.driver_error:
        return []
    env = context.environment
    return [
        f"Session {statement.session} has been running a statement in the database for {statement.seconds} s "
        f"({context.redactor.redact(statement.start)}...): a killed deploy's runs to its end and commits then. "
        f"Before you resolve or roll back, wait until it has ended (faber status {env} again), or end it: "
        f"KILL {statement.session}"
        for statement in running
    ]


def _failed_sql(context: RunContext, state: MigrationState | None) -> list[str]:
    """The SQL of ``state``'s failed migrations kept as .sql files (code migrations have none)."""
    if state is None or not state.failed:
        return []
    from faber_core.safety.checks import migration_sql  # the lint's module: only once something failed

    failed = [m for m in state.local if m.name in state.failed]
    return [sql for sql in (migration_sql(context, m) for m in failed) if sql]
