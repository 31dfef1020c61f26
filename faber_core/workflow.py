"""The deploy workflow, step by step as in the spec (docs/workflow.md maps each step).

1-6   validate the request, load config, resolve the environment and its mode  (``open_context``)
      deploy mode: pending migrations not committed in git stop here
      analyse the pending SQL migrations (split, classify): unparsable SQL stops here
      take faber's lock on the database (one deploy at a time)
7     pre-deployment health check
9     read the migration status: what is pending
10    dry run: preview (SQL, lint, preflight, estimates) and stop   (touches nothing: no lock, no backup);
      what would stop the deploy before its lock (unparsable SQL, ...) stops the preview the same way
      nothing pending: stop                         (no backup either)
      lint and staging proof                        (docs/safety.md)
11    approval for protected environments
      preflight: sessions that would block the migrations
8     backup, once there is something to apply and it is approved
12    apply, through the handler, retried on lock timeouts where its transaction rolled back
13    post-deployment health check
14    verify everything is applied
15-16 the result document (rendered by the CLI)
      the one failure path, for whatever stops the deploy after its backup (a failed migration, a
      lost connection or lock, an exception from a hook, a failed health check or verification,
      an interrupt): restore the backup if something of this deploy committed, verify the
      restore, report what committed, what remains and what to do next

Backup comes after approval (the spec lists it before): a preview, a no-op run or a refused
approval then leaves no backup behind, and every backup belongs to a deploy that really ran.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from faber_core import events
from faber_core.audit import unfinished
from faber_core.audit.history import refuse_shared_faber_schema
from faber_core.backup import store, writes
from faber_core.committed import GitCheck, uncommitted_files
from faber_core.context import LockCheck, RunContext
from faber_core.engines import HeldLock
from faber_core.errors import (
    ApprovalRequired,
    BackupFailed,
    ConfigError,
    FaberError,
    HealthCheckFailed,
    Interrupted,
    Locked,
    LockLost,
    MigrationFailed,
    RestoreFailed,
    SessionRefused,
    WritesDuringRestore,
    print_debug_traceback,
)
from faber_core.interrupts import held_while_reporting, interruptible, raised_once, settle, signal_name
from faber_core.models import (
    AppliedMigration,
    ApplyOutcome,
    AuditEvent,
    BackupLeftover,
    BackupRecord,
    HealthCheckResult,
    LocalMigration,
    MigrationFailure,
    MigrationPreview,
    MigrationState,
    Resolution,
    RestoreOutcome,
)
from faber_core.plugins import Plugins
from faber_core.results import (
    DeployResult,
    FailedDeployResult,
    NoPendingResult,
    PreviewResult,
    RollbackResult,
    RollbackStatus,
    Success,
    TableWrites,
    WritesSinceBackup,
)
from faber_core.safety.timeouts import apply_with_lock_retry
from faber_core.status_reads import (
    DEPLOY,
    PREVIEW,
    backup_before_failed_migrations,
    connection_failed,
    database_suggestions,
    drop_invalid_index,
    drop_invalid_indexes,
    first_line,
    read_backup_leftovers,
    read_past_another_run,
    read_status,
    rerun_command,
    statements_still_running,
)
from faber_core.telemetry import step

if TYPE_CHECKING:
    from faber_core.safety import checks as safety

Approver = Callable[[str], bool]
T = TypeVar("T")


@dataclass
class DeployOptions:
    dry_run: bool = False
    skip_backup: bool = False
    skip_health_check: bool = False
    assume_yes: bool = False
    approver: Approver | None = None
    """Asks a person to confirm; None when nobody can be asked (no terminal)."""
    rehearse: bool = False
    """Preview only: measure the migrations on a throwaway copy instead of estimating."""
    skip_staging_proof: bool = False
    discard_app_writes: bool = False
    """``faber rollback``: restore even though others wrote rows since the backup (policy refuse)."""


def migrate(
    context: RunContext, plugins: Plugins, options: DeployOptions, analysed: MigrationState | None = None
) -> Success:
    """``analysed``: the status the caller has just read on this context (a fleet reads each target's
    to skip it when up to date), which the analysis before the lock uses instead of reading it again."""
    started = time.monotonic()
    validate(context, plugins, options)
    if plugins.migration_prepare(context):
        # The handler loads its status read's work in the background (a Node runner loads the
        # ORM): faber imports the analysis and the SQL parser meanwhile, rather than after the read.
        safety_checks()
    if options.dry_run:

        def health_and_status() -> MigrationState:
            check_health(context, plugins, "before", options)
            return read_status(context, plugins, checks_skipped=options.skip_health_check)

        state = read_past_another_run(context, health_and_status)
        # What would stop the deploy before its lock stops the preview too: it must not say "To apply".
        refuse_out_of_order(context, state)
        refuse_uncommitted(context, state)
        check_before_lock(context, plugins, state.pending_migrations())
        return preview(context, plugins, state, rehearse=options.rehearse)
    # Before the lock and the backup: an out-of-order or uncommitted migration, SQL that cannot be
    # analysed, or SQL the handler refuses, touches nothing.
    with step(context, "analyse"):
        analysed = analysed or status_before_lock(context, plugins, checks_skipped=options.skip_health_check)
        if options.skip_health_check:  # else the check under the lock names them (exit 3)
            refuse_failed(context, analysed)
        refuse_out_of_order(context, analysed)
        refuse_uncommitted(context, analysed)
        check_before_lock(context, plugins, analysed.pending_migrations())
    with deploy_lock(context, checks_skipped=options.skip_health_check) as lock:
        health_before = check_health(context, plugins, "before", options)
        state = status_after(context, plugins, health_before)
        refuse_out_of_order(context, state)  # again under the lock: another run may have applied some since
        pending = state.pending_migrations()
        if not pending:
            return no_pending(context, health_before.status)
        checked = {migration.name for migration in analysed.pending_migrations()}
        if newly_pending := [migration for migration in pending if migration.name not in checked]:
            # Another run (a rollback, a resolve) made them pending while this one waited for its
            # lock: they get the checks the analysis gave the others, before anything is touched.
            refuse_uncommitted(context, state)
            check_before_lock(context, plugins, newly_pending)
        safety = safety_checks()
        review = safety.review_before_approval(context, plugins, pending, skip_staging_proof=options.skip_staging_proof)
        with step(context, "approval"):
            approve(context, options, len(pending))
        safety.preflight_before_apply(context, review)
        backup = create_backup(context, plugins, options, state)
        skipped = beside_skipped_backup(context, plugins, options)
        progress = DeployProgress(
            pending=pending,
            outside_transaction=safety.outside_a_transaction(context, pending),
            beside_skipped_backup=skipped,
        )
        # The first signal stops the deploy; later ones must not cut its rollback and report short.
        with raised_once():
            try:
                outcome = apply(context, plugins, lock, progress, backup)
                # On a session started after the migrations: one started before them does not see
                # what they changed for new sessions (ALTER DATABASE/ROLE ... SET), which an
                # application connecting now gets.
                context.database.close_session()
                health_after = check_health_after_deploy(context, plugins, lock, options, progress)
                progress.health_after = health_after.status
                if health_after.status == "failed":
                    raise HealthCheckFailed(
                        "Post-deployment health check failed",
                        result=health_after.findings(),
                        suggestions=["Migrations applied but database unhealthy"],
                    )
                with step(context, "verify"):
                    verify_applied(
                        context, health_after.state or read_status(context, plugins, quiet=True, after_apply=True)
                    )
                # Every migration committed and was verified: the run's outcome. A signal from here on,
                # as faber's lock is released, stops nothing (held, then dropped as its document is built).
                settle()
            except (Exception, KeyboardInterrupt) as stopped:
                with held_while_reporting():
                    report = roll_back_failed_deploy(context, plugins, lock, backup, progress, stopped)
                    # The report is the run's outcome (what committed, what the rollback did): a signal
                    # from here on, as faber's lock is released, is held and dropped, as within this block.
                    settle()
                    raise report from stopped
            finally:
                # Reached however the run ends but killed. A run that stopped inside a migration part
                # of which may have committed keeps its record, as a killed one does, for the next
                # to name (a restore of its backup removed it). A signal here must not replace the
                # report of what committed, now written.
                with held_while_reporting():
                    if not progress.may_have_left_part():
                        unfinished.forget_run(context)
    return deployed(
        context,
        outcome,
        backup,
        health_before.status,
        health_after.status,
        time.monotonic() - started,
        review,
        progress.beside_skipped_backup,
    )


def status_before_lock(context: RunContext, plugins: Plugins, *, checks_skipped: bool = False) -> MigrationState:
    """The status the analysis before faber's lock reads (:func:`read_past_another_run`)."""
    return read_past_another_run(
        context, lambda: read_status(context, plugins, quiet=True, checks_skipped=checks_skipped)
    )


def safety_checks() -> ModuleType:
    """:mod:`faber_core.safety.checks`, imported by the steps that check pending migrations: with
    the SQL parser it loads (pglast) it costs a deploy ~250 M instructions before its first query
    when imported at the start, and a status, or a deploy with nothing pending, needs none of it."""
    from faber_core.safety import checks

    return checks


def check_before_lock(context: RunContext, plugins: Plugins, pending: list[LocalMigration]) -> None:
    """SQL that cannot be analysed, or that the handler refuses, stops the run before its lock."""
    if not pending:
        return  # nothing to check, and no SQL parser to import
    safety = safety_checks()
    safety.analyse_before_lock(context, pending)
    safety.refuse_what_the_handler_refuses(context, plugins, pending)


# 1-6: request, configuration, environment, mode ------------------------------------------


def validate(context: RunContext, plugins: Plugins, options: DeployOptions) -> None:
    plugins.require_tool(context.tool)
    if options.rehearse and not options.dry_run:
        raise ConfigError(
            "--rehearse measures the migrations in a preview",
            suggestions=["Add --dry-run: faber migrate ENV --dry-run --rehearse"],
        )
    if wants_backup(context, options):
        plugins.require_backup_provider(context.settings.backup.provider, context.database.engine.name)
    context.emit(
        "run.started",
        mode=context.mode,
        tool=context.tool,
        dry_run=options.dry_run,
        database=context.database.name_for_display,
        source=context.database.source,
    )


def wants_backup(context: RunContext, options: DeployOptions) -> bool:
    return bool(context.settings.backup_before_migrate) and not options.skip_backup and not options.dry_run


@dataclass
class DeployLock:
    """faber's lock on the database (the engine's: an advisory lock on PostgreSQL, ``GET_LOCK`` on
    MySQL), and the session holding it."""

    conn: Any
    lock: HeldLock

    def held(self) -> bool:
        """Whether the session is alive and still holds the lock. Ending that session, or a
        dropped connection, frees the lock: another run could take it and deploy in between."""
        return self.lock.held()

    def require_held(self, before: str, context: RunContext) -> None:
        """Raise :class:`LockLost` unless the lock is still held; ``before`` names what must not run."""
        if not self.held():
            raise lock_lost(before, context)

    def check_in_transaction(self, context: RunContext) -> Callable[[str], LockCheck] | None:
        """The check before each migration as SQL for the migration's own transaction, where the
        engine has it (see :meth:`RunContext.start_migration`)."""
        statement = self.lock.check_statement()
        if statement is None:
            return None

        def check(name: str) -> LockCheck:
            def lost(*, in_transaction: bool = True) -> LockLost:
                context.migration_failed(not_run_for_lost_lock(name, in_transaction=in_transaction))
                return lock_lost(f"migration {name}", context)

            return LockCheck(statement, lost)

        return check

    def check_before_restore_commit(self, context: RunContext, backup: BackupRecord) -> LockCheck | None:
        """The check before a restore's COMMIT as SQL for the restore's own transaction, where the
        engine has it (see :meth:`RunContext.restore_committing`), followed by the removal of the
        records of killed deploys that ``backup`` undoes, which so commits with the restore. Made
        while the lock is held: the statement names the holding session as it is now."""
        statement = self.lock.check_statement()
        if statement is None:
            return None
        forget = unfinished.forget_undone_statement(context, backup.created_at)
        if forget is not None:
            # After the check: a lost lock fails the transaction before the removal runs.
            statement += ";\n" + forget
        return LockCheck(statement, lambda: lock_lost_before_restore_committed(context, backup))

    def require_held_before_restore_commit(self, context: RunContext, backup: BackupRecord) -> None:
        """The check before a restore's commit point on faber's own session: lost, :class:`LockLost`."""
        if not self.held():
            raise lock_lost_before_restore_committed(context, backup)

    def require_held_before_migration(self, name: str, context: RunContext) -> None:
        """The check before migration ``name`` on faber's own session: lost, the migration did not
        start (reported so, as the one the deploy stopped at) and :class:`LockLost` is raised."""
        if not self.held():
            context.migration_failed(not_run_for_lost_lock(name, in_transaction=False))
            raise lock_lost(f"migration {name}", context)


def not_run_for_lost_lock(name: str, *, in_transaction: bool) -> MigrationFailure:
    """Migration ``name``, stopped by faber's lost lock before any of its statements ran: checked
    in its own transaction, that transaction rolled back; checked before it (no transaction, or
    faber's check on its own session), it never started."""
    if in_transaction:
        return MigrationFailure(
            name=name,
            error="not run: faber's lock was lost before it; its transaction rolled back",
            transaction_rolled_back=True,
            table_writes={},
        )
    return MigrationFailure(
        name=name,
        error="not run: faber's lock was lost before it started; nothing of it ran",
        transaction_rolled_back=False,
        started=False,
        table_writes={},
    )


def lock_lost(before: str, context: RunContext) -> LockLost:
    return LockLost(
        f"faber's lock on the database was lost before {before}: its session ended or let it go "
        f"(e.g. {context.database.engine.lock_release_hint}), so another run may have deployed since",
        suggestions=["Find out who ended faber's session (an operator, a connection limit, a proxy timeout)"],
    )


@contextmanager
def deploy_lock(context: RunContext, *, checks_skipped: bool = False) -> Iterator[DeployLock]:
    """faber's lock on a connection of its own, held for the whole run; ``checks_skipped``: a deploy's
    health checks are off (:func:`connection_failed`)."""
    engine = context.database.engine
    with step(context, "lock"):
        try:
            conn = context.database.connect(application_name=f"faber {context.operation} {context.environment}")
        except engine.driver_error as exc:
            raise connection_failed(context, exc, checks_skipped=checks_skipped) from None
    wait = context.settings.lock_wait_seconds
    with conn, ExitStack() as holding:
        try:
            lock = engine.deploy_lock(conn, context.database, wait_seconds=wait, purpose="faber run")
            held = holding.enter_context(lock)
        except engine.driver_error as exc:
            if engine.classify_error(exc) != "lost_connection":
                raise
            raise lock_wait_ended(context, exc) from None
        if engine.faber_schema_of_its_own:
            # Before anything is backed up or recorded: the backup would leave those objects out.
            refuse_shared_faber_schema(conn, context.config.database.faber_schema)
        context.emit("lock.acquired")
        engine.finish_interrupted_restores(context, conn)
        with unfinished.reads_under_lock(context, held.session_id()):
            unfinished.refuse_while_another_run_deploys(context)
            yield DeployLock(conn, held)


def lock_wait_ended(context: RunContext, exc: Exception) -> Locked:
    """faber's session ended while it waited for the lock, before the run changed anything: most
    likely another run's swap restore, which ends every session of the database."""
    details = context.redactor.redact(context.database.engine.describe_connection_error(exc, context.database))
    return Locked(
        f"faber's session was ended while it waited for the lock on the {context.environment} database; "
        f"nothing was changed: {details}",
        suggestions=[
            "Another faber run's swap restore (restore_mode: swap) ends every session of the database at its "
            f"swap, as do {context.database.engine.lock_release_hint} and a server restart",
            "Once that run is done, run the same command again",
        ],
        result={"lock_wait_ended": details},
    )


# 7 and 13: health checks ---------------------------------------------------------------


@dataclass
class Health:
    """What a deploy's health check found."""

    status: str
    """"passed", "warning", "failed" (after deploying only: before, a failure raises) or "skipped"."""
    state: MigrationState | None = None
    """The migration status its ``migrations`` check read, which the step right after it uses
    instead of reading it again; None when that check did not run."""
    checks: list[HealthCheckResult] = field(default_factory=list)

    def findings(self) -> dict[str, Any]:
        """What failed, for an error's result: the failed checks' details, and every check."""
        failed = [r for r in self.checks if r.status == "failed"]
        return {"details": "; ".join(r.details for r in failed), "checks": [r.model_dump() for r in self.checks]}


def check_health(context: RunContext, plugins: Plugins, phase: str, options: DeployOptions) -> Health:
    """Run the environment's checks.

    Before deploying, a failure aborts. After deploying, "failed" is returned for the caller
    to roll back.
    """
    if options.skip_health_check:
        context.emit("health.finished", phase=phase, status="skipped", checks=[])
        return Health("skipped")
    with step(context, "health_check_before" if phase == "before" else "health_check_after"):
        results, state = run_health_checks(context, plugins, after_apply=phase == "after")
    health = Health(overall_health(results), state, results)
    context.emit("health.finished", phase=phase, status=health.status, checks=[r.model_dump() for r in results])
    if health.status == "failed" and phase == "before":
        raise HealthCheckFailed(
            "Pre-deployment health check failed",
            result={"health_check": "failed", **health.findings()},
            suggestions=health_suggestions(context, plugins, results, state),
        )
    return health


NOT_VERIFIED = "not_verified"
"""``health_check_after`` of a deploy whose post-deployment check lost its session and could not
run again (faber's lock lost, or the database refusing connections): no verdict either way."""


def check_health_after_deploy(
    context: RunContext, plugins: Plugins, lock: DeployLock, options: DeployOptions, progress: DeployProgress
) -> Health:
    """13: the checks after the migrations. A check whose session was lost under it (ended by an
    operator or a proxy, dropped) failed on faber's connection, not on the database: restoring the
    backup for it would discard the application's writes since the backup for nothing. So the
    checks run once more on a fresh connection, under faber's lock. When that connection is refused
    the database is unreachable (a restore could not run either), and when faber's lock is gone
    another run may have begun: either way the deploy stops with its health not verified
    (``progress.health_after``), and the failure path restores nothing. A session the checks open
    that faber refuses (:class:`SessionRefused`: a pooler now sharing server sessions) makes the
    database as unreachable: no check, and no restore, can run on it safely."""
    database = context.database
    lost_before = database.sessions_lost
    try:
        health = health_after_deploy(context, plugins, options, progress, lost_before)
    except (HealthCheckFailed, database.engine.driver_error) as exc:
        # The migrations check's status read, or a plugin's check, raised on the lost session.
        if database.sessions_lost == lost_before or progress.unreachable:
            raise
        details = exc.message if isinstance(exc, FaberError) else str(exc)
    else:
        if health.status != "failed" or database.sessions_lost == lost_before:
            return health
        details = health.findings()["details"]
    context.emit(events.HEALTH_SESSION_LOST, details=context.redactor.redact(first_line(details)))
    # On the run's shared session: the checks run again on it.
    refused = connection_refused(context, database.session)
    if refused is not None:
        raise unreachable_after_deploy(context, refused, progress)
    if not lock.held():
        progress.health_after = NOT_VERIFIED
        raise lock_lost_after_deploy(context, progress)
    return health_after_deploy(context, plugins, options, progress, lost_before)


def health_after_deploy(
    context: RunContext, plugins: Plugins, options: DeployOptions, progress: DeployProgress, lost_before: int
) -> Health:
    """The checks after the migrations, on a database whose new sessions faber may refuse
    (``lost_before``: how many sessions the run had lost before the first of them)."""
    try:
        return check_health(context, plugins, "after", options)
    except SessionRefused as refused:
        details = context.redactor.redact(refused.message)
        lost = context.database.sessions_lost != lost_before
        raise unreachable_after_deploy(context, details, progress, session_lost=lost) from None


def connection_refused(context: RunContext, connect: Callable[[], AbstractContextManager[Any]]) -> str | None:
    """Why the database refuses a new session (redacted), or None when it accepts one and answers.
    ``connect``: how to open it, the run's shared session (:meth:`Database.session`, which the
    next queries then use) or a connection of its own (:meth:`Database.connect`). Refused: the
    driver's error, or faber's own refusal of the session (:class:`SessionRefused`)."""
    database = context.database
    try:
        with connect() as conn:
            conn.execute("SELECT 1")
    except database.connect_errors as exc:
        return context.redactor.redact(database.describe_connect_error(exc))
    return None


def committed_by(progress: DeployProgress) -> str:
    return f"this deploy's migrations committed ({', '.join(progress.applied)})"


def unreachable_after_deploy(
    context: RunContext, details: str, progress: DeployProgress, *, session_lost: bool = True
) -> HealthCheckFailed:
    """The post-deployment check could not run (again) on a new session, refused for ``details``
    (redacted): its health is not verified, and the failure path restores nothing (``progress``
    says so). ``session_lost``: the check had lost its session first."""
    progress.health_after = NOT_VERIFIED
    progress.unreachable = True
    env = context.environment
    env_var = context.settings.database_url_env
    if session_lost:
        what = (
            f"Lost the connection to the {env} database during the post-deployment health check, and a new one was "
            f"refused: {details}"
        )
    else:
        what = f"The post-deployment health check could not open a session on the {env} database: {details}"
    return HealthCheckFailed(
        f"{what}. {committed_by(progress).capitalize()}; their health was not verified",
        result={"details": details},
        suggestions=[
            "Verify database is running",
            *([context.database.engine.test_connection_hint(env_var)] if env_var else []),
            f"Once it answers, run its health checks: faber health {env}, and see what is applied: faber status {env}",
        ],
    )


def lock_lost_after_deploy(context: RunContext, progress: DeployProgress) -> LockLost:
    env = context.environment
    return LockLost(
        f"faber's lock on the {env} database was lost during the post-deployment health check (its session ended: "
        f"e.g. {context.database.engine.lock_release_hint}), after {committed_by(progress)}; their health was not "
        "verified, and another run may have begun since",
        suggestions=[
            f"See what is applied: faber status {env}, and run its health checks: faber health {env}",
            "Find out who ended faber's sessions (an operator, a connection limit, a proxy timeout)",
        ],
    )


def run_health_checks(
    context: RunContext, plugins: Plugins, *, after_apply: bool = False
) -> tuple[list[HealthCheckResult], MigrationState | None]:
    """The environment's checks, and the migration status the ``migrations`` check read (if it ran)."""
    names = context.settings.health_checks
    results = plugins.health_checks(context, [n for n in names if n != "migrations"])
    state = None
    if "migrations" in names:
        state = read_status(context, plugins, quiet=True, after_apply=after_apply)
        results.append(migrations_check(context, state))
    unknown = [n for n in names if n not in {r.name for r in results}]
    skipped = [HealthCheckResult(name=n, status="skipped", details="no plugin implements it") for n in unknown]
    return results + skipped, state


def overall_health(results: list[HealthCheckResult]) -> str:
    """One word for the checks: "skipped" when none ran (``health_checks: []``), never "passed"."""
    if not results:
        return "skipped"
    statuses = {r.status for r in results}
    return "failed" if "failed" in statuses else "warning" if "warning" in statuses else "passed"


def migrations_check(context: RunContext, state: MigrationState) -> HealthCheckResult:
    """No failed migration, and every applied migration present locally and unedited."""
    problems = []
    if state.failed:
        problems.append(f"failed migrations not rolled back: {unfinished.failed_names(state)}")
    if state.checksum_mismatches:
        problems.append(f"applied migrations edited since: {', '.join(state.checksum_mismatches)}")
    if state.missing_locally:
        problems.append(f"applied migrations missing locally: {', '.join(state.missing_locally)}")
    if not problems:
        return HealthCheckResult(
            name="migrations", status="passed", details=f"{len(state.applied)} applied, {len(state.pending)} pending"
        )
    # A developer editing a migration in dev mode is expected; a deploy must not build on it.
    severe = bool(state.failed) or context.mode == "deploy"
    return HealthCheckResult(name="migrations", status="failed" if severe else "warning", details="; ".join(problems))


def health_suggestions(
    context: RunContext, plugins: Plugins, results: list[HealthCheckResult], state: MigrationState | None
) -> list[str]:
    """What to do about the checks that failed. A database that cannot be reached fails the checks
    after connectivity too, so its advice comes alone; once connected, what a migration stopped
    halfway left (an invalid index, its failed record: a killed CREATE INDEX CONCURRENTLY leaves
    both) is named, not the advice of a database that is down; an edited migration and migrations
    missing from the files (``state``, what the ``migrations`` check read) each get their own."""
    env = context.environment
    failed = {r.name for r in results if r.status == "failed"}
    if "connectivity" in failed:
        own = [s for r in results if r.name == "connectivity" for s in r.suggestions]
        return [*own, *database_suggestions(context)]
    drop_indexes = drop_invalid_indexes(context) if "schema" in failed else []
    if "migrations" in failed:
        return [
            *statements_still_running(context, state),
            f"Inspect the history: faber status {env}",
            *drop_indexes,
            *failed_migration_advice(context, unresolved_migrations(context, plugins)),
            *backup_before_failed_migrations(context, plugins),
            *(
                ["An edited migration: restore the file to what was applied, and put the change in a new migration"]
                if state is not None and state.checksum_mismatches
                else []
            ),
            *(
                [
                    f"The database has migrations these files lack ({', '.join(state.missing_locally)}): deploy from "
                    "a checkout that has them (the branch or commit that applied them)"
                ]
                if state is not None and state.missing_locally
                else []
            ),
            f"Retry when issue resolved: {rerun_command(context)}",
        ]
    if drop_indexes:
        return [*drop_indexes, f"Retry when issue resolved: {rerun_command(context)}"]
    return database_suggestions(context)


# 9: migration status -------------------------------------------------------------------


def status_after(context: RunContext, plugins: Plugins, health: Health) -> MigrationState:
    """The status the health check just read under faber's lock, else read now (each read is a
    connection and every migration file read again)."""
    if health.state is None:
        return read_status(context, plugins)
    context.emit("status.read", pending=health.state.pending, applied=len(health.state.applied))
    return health.state


def refuse_failed(context: RunContext, state: MigrationState) -> None:
    """A migration recorded as failed stops a deploy whose health check is skipped before its lock
    and backup: the tool refuses to apply past it anyway (Prisma's P3009), after a whole backup."""
    if state.failed:
        raise MigrationFailed(
            f"The database has failed migrations that were never rolled back: {unfinished.failed_names(state)}. "
            "Nothing was applied, no lock or backup was taken",
            result={"failed_migrations": state.failed},
            suggestions=failed_migration_advice(context, state.failed),
            rollback_advised=False,
        )


def refuse_out_of_order(context: RunContext, state: MigrationState) -> None:
    """Refuse a pending migration that sorts before an applied one, unless the environment allows it.

    Applied after a later migration, it runs against a schema its author never saw (and a
    restore to a backup taken between the two would silently drop it again).
    """
    if context.settings.out_of_order:
        return
    applied = set(state.applied)
    position = {m.name: index for index, m in enumerate(state.local)}
    newest_applied = max((position[name] for name in applied if name in position), default=-1)
    early = [m.name for m in state.pending_migrations() if position[m.name] < newest_applied]
    if not early:
        return
    later = state.local[newest_applied].name
    env = context.environment
    raise MigrationFailed(
        f"Pending migration {early[0]} sorts before {later}, which is already applied in {env}"
        + (f" (and {len(early) - 1} more out of order: {', '.join(early[1:])})" if len(early) > 1 else ""),
        result={"out_of_order": early, "applied_after": later},
        suggestions=[
            f"Rename {early[0]} so it sorts after {later} (a new timestamp), if it does not depend on that order",
            f'Or, if applying it after {later} is intended, set "out_of_order": true for {env}',
            "Nothing was applied and no backup was taken",
        ],
    )


def refuse_uncommitted(context: RunContext, state: MigrationState) -> None:
    """Deploy mode applies only committed migrations (the spec's "Requires migrations in git"):
    refuse pending migrations whose files are untracked, ignored by git or differ from HEAD, unless
    the environment sets ``require_committed_migrations`` to false. Outside a git work tree (a deploy
    from a release artifact) or without ``git``, or for files in a folder git ignores as a whole
    (build output such as ``dist/``), the run says it could not check, and goes on. A pending
    migration its handler names no file for is refused like an uncommitted one: its file may be
    anything, and the check's promise is that what deploys is committed."""
    pending = state.pending_migrations()
    if context.mode != "deploy" or not context.settings.require_committed_migrations or not pending:
        return
    paths = {m.name: m.path for m in pending if m.path}
    # The applied migrations' files tell a folder of migrations (where an ignored one is refused)
    # from build output.
    other_paths = tuple(m.path for m in state.local if m.path and m.name not in paths)
    check = context.once(
        ("committed migrations", context.project_dir, tuple(paths.items()), other_paths),
        lambda: uncommitted_files(context.project_dir, paths, context.redactor, other_paths),
    )
    env = context.environment
    opt_out = f'Or, only in an emergency, set "require_committed_migrations": false for {env}'
    if check.error:
        raise MigrationFailed(
            f"Cannot tell whether the pending migrations are committed: {check.error}",
            result={"git_error": check.error},
            suggestions=[
                "Keep the migrations inside the project's repository (not linked in from outside it)"
                if "outside repository" in check.error
                else "Make git work in the project directory "
                "(a checkout owned by another user needs git's safe.directory)",
                opt_out,
                "Nothing was applied and no backup was taken",
            ],
        )
    if check.unchecked:
        context.emit(events.COMMIT_CHECK_SKIPPED, reason=check.unchecked, migrations=[m.name for m in pending])
        return
    if check.ignored_folders:
        folders = list(dict.fromkeys(folder for found in check.ignored_folders.values() for folder in found))
        context.emit(
            events.COMMIT_CHECK_SKIPPED,
            reason=f"git ignores {', '.join(map(repr, folders))} as a whole (build output: "
            "the source it is built from is what must be committed)",
            migrations=[m.name for m in pending if m.name in check.ignored_folders],
        )
    if check.uncommitted:
        raise uncommitted_refusal(context, pending, check, opt_out)
    without_file = [m.name for m in pending if not m.path]
    if without_file:
        raise MigrationFailed(
            f"Cannot tell whether {len(without_file)} pending migration(s) are committed in git: the "
            f"{context.tool} handler names no file for them: {', '.join(without_file)}",
            result={"migrations_without_file": without_file},
            suggestions=[
                "Load each of them from a file the handler names (TypeORM: a glob of the migration files in the "
                "DataSource's migrations, not classes an ES module imports), commit it and deploy that commit",
                opt_out,
                "Nothing was applied and no backup was taken",
            ],
        )


def uncommitted_refusal(
    context: RunContext, pending: list[LocalMigration], check: GitCheck, opt_out: str
) -> MigrationFailed:
    env = context.environment
    names = [m.name for m in pending if m.name in check.uncommitted]
    files = list(dict.fromkeys(file for name in names for file in check.uncommitted[name]))
    return MigrationFailed(
        f"{len(names)} pending migration(s) not committed in git, and {env} deploys only committed "
        f"migrations: {', '.join(map(repr, files))}",
        result={"uncommitted_migrations": names, "uncommitted_files": files},
        suggestions=[
            "Commit them (git add, git commit) and deploy that commit",
            *(
                [
                    "git does not compare "
                    + ", ".join(map(repr, check.not_compared))
                    + " with its commit: git update-index --no-assume-unchanged --no-skip-worktree -- FILE"
                ]
                if check.not_compared
                else []
            ),
            *(
                [
                    "git ignores "
                    + ", ".join(map(repr, check.ignored))
                    + ": remove the .gitignore line that matches (git check-ignore -v PATH names it), then commit"
                ]
                if check.ignored
                else []
            ),
            opt_out,
            "Nothing was applied and no backup was taken",
        ],
    )


# 10: dry run ---------------------------------------------------------------------------


def preview(context: RunContext, plugins: Plugins, state: MigrationState, *, rehearse: bool = False) -> Success:
    pending = state.pending_migrations()
    with step(context, "preview"):
        previews = plugins.migration_preview(context, pending) if pending else []
        preflight = (
            safety_checks().annotate_preview(context, plugins, state, previews, rehearse=rehearse) if previews else None
        )
    total = round(sum(p.estimated_duration_seconds for p in previews), 3)
    context.emit("preview.ready", pending=len(previews), total_estimated_duration_seconds=total)
    failed = next((p for p in previews if p.rehearsal_error), None)
    if failed is not None:
        raise rehearsal_failed(context, failed, pending, previews.index(failed))
    return Success(
        operation=PREVIEW,
        environment=context.environment,
        result=PreviewResult(
            pending_migrations=len(previews),
            migrations=previews,
            total_estimated_duration_seconds=total,
            preflight=preflight,
        ),
        message="Preview only - no changes applied",
    )


def rehearsal_failed(
    context: RunContext, failed: MigrationPreview, pending: list[LocalMigration], rehearsed_before: int
) -> MigrationFailed:
    """``--rehearse`` found a migration that fails: the deploy would fail the same way, so say so (exit 6)."""
    error = failed.rehearsal_error or ""
    failure = failed.rehearsal_failure
    path = next((m.path for m in pending if m.name == failed.name and m.path), None)
    env = context.environment
    if failure is not None and (failure.killed_by or not failure.started):
        advice = failed_migration_suggestions(failure)  # its process died: what to check is not the migration
    else:
        advice = [
            review_migration(failed.name, path),
            f"Fix it, then rehearse again: faber migrate {env} --dry-run --rehearse",
        ]
    return MigrationFailed(
        f"Rehearsal failed: {failed.name} failed on a copy of {env}: {first_line(error)}",
        result={
            "failed_migration": failed.name,
            "rehearsal_error": error,
            "migrations_rehearsed_before_failure": rehearsed_before,
            "database_changed": False,
        },
        suggestions=[
            f"Nothing was changed: the migrations ran on a throwaway copy of {env}, since dropped",
            *advice,
        ],
    )


def no_pending(context: RunContext, health_before: str) -> Success:
    return Success(
        operation=DEPLOY,
        environment=context.environment,
        result=NoPendingResult(
            health_check_before=health_before,
            mode=context.mode,
            unfinished_migrations_unchecked=unfinished.unchecked(context),
        ),
        message="No pending migrations",
    )


# 11: approval --------------------------------------------------------------------------


def approve(context: RunContext, options: DeployOptions, pending: int) -> None:
    if not context.settings.require_approval:
        return
    if options.assume_yes:
        context.emit("approval.granted", by="--yes")
        return
    question = f"Apply {pending} migration(s) to {context.environment}?"
    if options.approver is None:
        raise ApprovalRequired(
            f"Approval required to migrate {context.environment}, and there is no terminal to ask",
            result={"pending_migrations": pending},
            suggestions=[
                f"Approve non-interactively (e.g. in CI): faber migrate {context.environment} --yes",
                "Or run in a terminal to confirm at the prompt",
            ],
        )
    if not options.approver(question):
        raise ApprovalRequired(
            f"Deployment to {context.environment} was not approved",
            result={"pending_migrations": pending},
            suggestions=[
                "Nothing was applied",
                f"Preview what would run: faber migrate {context.environment} --dry-run",
            ],
        )
    context.emit("approval.granted", by="prompt")


# 8: backup -----------------------------------------------------------------------------


def create_backup(
    context: RunContext, plugins: Plugins, options: DeployOptions, state: MigrationState
) -> BackupRecord | None:
    if not wants_backup(context, options):
        return None
    try:
        return take_backup(context, plugins, "pre-migration backup", state)
    except BackupFailed as failed:
        # The spec's fallbacks after the provider's own advice, whichever provider failed.
        env = context.environment
        fallbacks = [
            f"Or skip backup (NOT recommended): faber migrate {env} --skip-backup",
            f"Or create manual backup first: faber backup {env}",
        ]
        failed.suggestions += [s for s in fallbacks if s not in failed.suggestions]
        raise


@dataclass
class SkippedBackupCheck:
    """What a deploy that skipped its backup found where the provider keeps its backups."""

    leftovers: list[BackupLeftover]
    """What killed runs left there (a stopped rollback's copy beside the instance), which the
    backup would have refused to go on beside; what finished runs keep on purpose is left out."""
    unchecked: str | None
    """Why the provider could not look, when it could not."""


def beside_skipped_backup(context: RunContext, plugins: Plugins, options: DeployOptions) -> SkippedBackupCheck | None:
    """For ``faber migrate --skip-backup`` where the environment backs up: the provider's leftovers,
    named as warnings. The backup would have refused to go on beside them (whoever later finishes a
    stopped rollback would undo this deploy); a deploy that makes no backup goes on, but says so.
    None for a deploy that backs up (its backup looks) or whose environment does not."""
    if not context.settings.backup_before_migrate or not options.skip_backup or options.dry_run:
        return None
    try:
        found, unchecked = read_backup_leftovers(context, plugins)
    except FaberError as error:  # the provider's setup (an unknown AWS profile): the deploy goes on without it
        found, unchecked = [], f"the {context.settings.backup.provider} check could not run: {error.message}"
    check = SkippedBackupCheck([leftover for leftover in found if not leftover.kept], unchecked)
    context.emit(
        "backup.skipped",
        reason="--skip-backup",
        leftovers=[leftover.model_dump(mode="json") for leftover in check.leftovers],
        leftovers_unchecked=check.unchecked,
    )
    return check


def take_backup(context: RunContext, plugins: Plugins, reason: str, state: MigrationState) -> BackupRecord:
    """A backup now, recording the applied migrations it covers (also ``faber backup ENV``)."""
    with step(context, "backup", **{"faber.backup.provider": context.settings.backup.provider}) as span:
        context.emit("backup.started", provider=context.settings.backup.provider)
        # Read just before the backup starts: a write in between counts as "since the backup",
        # the safe side (faber_core/backup/writes.py).
        counters = writes.read_counters(context)
        record = plugins.backup_create(context, reason, state.applied_fingerprint())
        try:
            writes.record_baseline(context, record, counters, state.bookkeeping_table)
        except KeyboardInterrupt as interrupt:
            # The backup is whole and listed: a bare INTERRUPTED would read as if none was made.
            env = context.environment
            raise Interrupted.by(
                interrupt,
                f"once backup {record.id} was made",
                result={"backup_id": record.id},
                suggestions=[
                    f"Backup {record.id} is whole (faber backups {env} lists it); its restore cannot tell the rows "
                    "written since it (the counters it compares were not recorded)",
                    *(
                        [f"Nothing was applied: deploy again with faber migrate {env}"]
                        if context.operation == DEPLOY
                        else []
                    ),
                ],
            ) from None
        span.set_attribute("faber.backup.id", record.id)
    context.emit("backup.created", backup_id=record.id, size_bytes=record.size_bytes)
    return record


# 12: apply -----------------------------------------------------------------------------


@dataclass
class DeployProgress:
    """How far a deploy got after its backup, for the failure path.

    Kept up to date from the handler's events, so what committed is known even when the handler
    raises instead of returning its :class:`ApplyOutcome`.
    """

    pending: list[LocalMigration]
    outside_transaction: set[str]
    """The names of the pending migrations that run outside a transaction
    (:func:`faber_core.safety.checks.outside_a_transaction`)."""
    beside_skipped_backup: SkippedBackupCheck | None = None
    """What the provider found for a deploy that skipped its backup, reported in either result."""
    committed: list[AppliedMigration] = field(default_factory=list)
    running: str | None = None
    """The migration started and neither applied nor reported failed: part of it may have committed."""
    stopped_in: MigrationFailure | None = None
    """The running migration as its handler reported it when an interrupt stopped it."""
    outcome: ApplyOutcome | None = None
    health_after: str | None = None
    unreachable: bool = False
    """The database refused a new connection after the post-deployment check lost its session."""
    invalid_indexes_before: list[str] = field(default_factory=list)
    """Invalid indexes before the apply step: those that appear after a failure are its leftovers."""

    def follow(self, event: AuditEvent) -> None:
        if event.kind == "migration.started":
            self.running = event.data["name"]
        elif event.kind == "migration.applied":
            # Once: a handler that learns a migration committed as an interrupt stops it may say
            # so again if the interrupt came just after it had.
            if event.data["name"] not in self.applied:
                self.committed.append(AppliedMigration.model_validate(event.data))
            self.running = None
        elif event.kind == events.MIGRATION_FAILED and (
            event.data.get("name") == self.running or (self.running is None and event.data.get("started") is False)
        ):
            # The running migration, or the next one, stopped before it started (faber's lock lost).
            try:
                self.stopped_in = MigrationFailure.model_validate(event.data)
            except ValidationError:
                # A handler that emits the event itself with only a name and an error (as plugins
                # written before context.migration_failed did) says nothing of its transaction:
                # the migration stays unmeasured, and its returned outcome is what counts.
                pass

    def may_have_left_part(self) -> bool:
        """Whether the deploy stopped inside a migration part of which may have committed."""
        failure = self.outcome.failure if self.outcome else self.stopped_in
        if failure is None:
            return self.running is not None
        return failure.started and not failure.transaction_rolled_back and failure.statements_committed != 0

    def left_recorded_as_failed(self, context: RunContext) -> str | None:
        """The migration this run stopped in, when it runs outside a transaction and part of it may
        have committed: the run keeps its record (:mod:`faber_core.audit.unfinished`), so the next
        run reports it as failed until it is resolved or a backup is restored, as after a kill."""
        if not self.may_have_left_part() or not unfinished.recorded(context):
            return None
        failure = self.outcome.failure if self.outcome else self.stopped_in
        name = failure.name if failure else self.running
        return name if name in self.outside_transaction else None

    def record(self, outcome: ApplyOutcome) -> None:
        self.outcome = outcome
        self.committed = list(outcome.applied)
        self.running = None

    @property
    def applied(self) -> list[str]:
        return [m.name for m in self.committed]

    @property
    def remaining(self) -> list[str]:
        return [m.name for m in self.pending if m.name not in self.applied]

    def as_outcome(self) -> ApplyOutcome:
        """What the handler's events tell of a run that raised; the migration it stopped in unmeasured."""
        if self.running is None:
            return ApplyOutcome(applied=self.committed)
        unreported = MigrationFailure(name=self.running, error="stopped", transaction_rolled_back=False)
        return ApplyOutcome(applied=self.committed, failure=self.stopped_in or unreported)

    def path_of(self, name: str) -> str | None:
        return next((m.path for m in self.pending if m.name == name), None)


def apply(
    context: RunContext, plugins: Plugins, lock: DeployLock, progress: DeployProgress, backup: BackupRecord | None
) -> ApplyOutcome:
    """Apply the pending migrations; raise :class:`MigrationFailed` when one fails.

    faber's lock is checked before the run, before each migration (handlers call
    ``context.start_migration``; the Node runners, which apply every migration in one request,
    run ``context.lock_check_in_transaction``'s SQL or wait for faber's check) and after the run.
    """
    pending = progress.pending

    def lock_still_held(name: str) -> None:
        lock.require_held_before_migration(name, context)

    context.listeners.append(progress.follow)
    context.before_each_migration.append(lock_still_held)
    context.lock_check_in_transaction = lock.check_in_transaction(context)
    try:
        # Lost already, the first migration is the one the deploy stopped at, not started, as a
        # later one is when the check before it finds the lock lost.
        lock_still_held(pending[0].name)
        progress.invalid_indexes_before = context.database.engine.invalid_indexes(lock.conn)
        unfinished.record(context, lock.conn, pending, progress.outside_transaction, backup)
        with step(context, "apply"):
            context.emit("apply.started", migrations=[m.model_dump(include={"name", "checksum"}) for m in pending])
            outcome = plugins.migration_dev(context) if context.mode == "dev" else None
            if outcome is None and context.mode == "dev":
                context.emit("dev.fallback", tool=context.tool)
            if outcome is None:
                outcome = apply_with_lock_retry(
                    context, lambda remaining: plugins.migration_apply(context, remaining), pending
                )
            # Inside the step, so the failure is recorded on the apply span.
            if outcome.failure:
                context.migration_failed(outcome.failure)
    finally:
        unfinished.apply_ended(context)
        context.listeners.remove(progress.follow)
        context.before_each_migration.remove(lock_still_held)
        context.lock_check_in_transaction = None
    progress.record(outcome)
    writes.record_faber_writes(context, outcome)  # so a restore tells them from the application's
    if outcome.failure:
        failure = outcome.failure
        raise MigrationFailed(
            f"Migration {failure.name} failed: {first_line(failure.error)}",
            suggestions=failed_migration_suggestions(failure),
            tool_output=failure.output,
        )
    lock.require_held("the post-deployment health check", context)
    return outcome


def failed_migration_suggestions(failure: MigrationFailure) -> list[str]:
    """What to do about the migration itself: a migration whose tool's process died before it
    started did nothing wrong and has nothing to review."""
    if failure.killed_by:
        cause = killed_advice(failure.killed_by)
    elif not failure.started:
        cause = (
            "Find what ended the process in its output (project code calling process.exit(), work an earlier "
            "migration left running) before running the same command again"
        )
    else:
        cause = "Fix migration and retry"
    return [review_migration(failure.name, failure.path), cause] if failure.started else [cause]


def review_migration(name: str, path: str | None) -> str:
    return f"Review migration: {path}" if path else f"Review migration {name}"


def killed_advice(signal_name: str) -> str:
    """What to do about a migration whose tool was killed by a signal: the migration may be fine, the
    machine may not be (the out-of-memory killer sends SIGKILL)."""
    return (
        f"The process was killed by {signal_name}, not stopped by an error of the migration: check the machine's "
        "memory and what killed it (the kernel log names the out-of-memory killer: journalctl -k or dmesg) "
        "before running the same command again"
    )


# The one failure path --------------------------------------------------------------------


@dataclass
class Cause:
    """What stopped a deploy after its backup, as the failure path reports it."""

    error: type[FaberError]
    message: str
    suggestions: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    """The original error's own result fields (the checks that failed, what verification found)."""
    tool_output: str | None = None
    interrupted_by: str | None = None


@dataclass
class Rollback:
    """What the rollback step did, and the advice that goes with it."""

    status: RollbackStatus
    initiated: bool = False
    reason: str | None = None
    error: str | None = None
    restored_endpoint: str | None = None
    restore_committed: bool | None = None
    """Set when a signal interrupted the restore and its provider said on which side of its commit,
    and False when faber's lost lock stopped it before its commit point."""
    interrupted_by: str | None = None
    """``SIGINT``/``SIGTERM`` when a signal stopped the rollback step: the deploy then reports
    ``INTERRUPTED``, whatever stopped it first."""
    writes_since_backup: WritesSinceBackup | None = None
    discarded: str | None = None
    """What the restore discarded that others wrote (policy warn), for the message."""
    advice_first: list[str] = field(default_factory=list)
    advice_last: list[str] = field(default_factory=list)
    restore_suggestions: list[str] = field(default_factory=list)


def roll_back_failed_deploy(
    context: RunContext,
    plugins: Plugins,
    lock: DeployLock,
    backup: BackupRecord | None,
    progress: DeployProgress,
    stopped: BaseException,
) -> FaberError:
    """The one failure path after the backup; returns the error to raise.

    Whatever stopped the deploy (a failed migration, a lost connection or lock, an exception from
    any hook, a failed health check or verification, SIGINT or SIGTERM) comes here. The backup is
    restored when something of this deploy committed and the environment rolls back
    automatically; the error's result says what committed, what remains, what the rollback step
    did, and its suggestions what to do next.
    """
    cause = cause_of(context, stopped, progress)
    if progress.outcome is None:  # the handler raised: record what its events told
        outcome = progress.as_outcome()
        writes.record_faber_writes(context, outcome)
        if progress.stopped_in is None and outcome.failure is not None:
            # The handler reported nothing of the migration it raised in (its session lost, say):
            # the audit log says it failed all the same, part of it perhaps committed.
            context.migration_failed(outcome.failure.model_copy(update={"error": cause.message}))
    failure = progress.outcome.failure if progress.outcome else progress.stopped_in
    rollback = rollback_step(context, plugins, lock, backup, progress, failure, lock_was_lost=cause.error is LockLost)
    failed_migration = failure.name if failure else progress.running
    result = FailedDeployResult(
        failed_migration=failed_migration,
        backup_id=backup.id if backup else None,
        migrations_applied_before_failure=len(progress.applied),
        applied_migrations=progress.applied,
        remaining_migrations=progress.remaining,
        transaction_rolled_back=failure.transaction_rolled_back if failure and failure.started else None,
        statements_committed=failure.statements_committed if failure else None,
        interrupted_by=cause.interrupted_by,
        rollback_initiated=rollback.initiated,
        rollback_status=rollback.status,
        rollback_reason=rollback.reason,
        rollback_error=rollback.error,
        restored_endpoint=rollback.restored_endpoint,
        restore_committed=rollback.restore_committed,
        writes_since_backup=rollback.writes_since_backup,
        **skipped_backup_fields(progress.beside_skipped_backup),
    )
    if progress.health_after in ("failed", NOT_VERIFIED):
        result.migrations_applied = len(progress.applied)
        result.health_check_after = progress.health_after
        result.auto_rollback_triggered = rollback.initiated
    # A database refusing connections cannot be read: each read would only wait for its refusal.
    unreachable = rollback.status == "unreachable"
    leftovers = [] if unreachable else leftover_indexes(context, progress, rollback.status)
    result.invalid_indexes = leftovers or None
    suggestions = [
        *rollback.advice_first,
        *cause.suggestions,
        *[drop_invalid_index(name) for name in leftovers],
        *left_behind_by(failure, rollback.status),
        *(
            not_checked_while_unreachable(context)
            if unreachable
            else resolve_advice(context, plugins, rollback.status, progress.left_recorded_as_failed(context))
        ),
        *rollback.advice_last,
    ]
    if progress.health_after == "failed":
        suggestions += [
            f"Verify database status: faber status {context.environment}",
            "Check application logs for errors",
        ]
    error, message = cause.error, cause.message
    backup_id = backup.id if backup else ""
    if rollback.discarded:
        message += f"; rolled back to {backup_id}, discarding {rollback.discarded}"
    if rollback.status == "unreachable" and not progress.unreachable:
        message += f"; the database then refused connections, so the automatic rollback to {backup_id} could not run"
    if rollback.status == "failed":
        error = RestoreFailed
        message = f"{cause.message}; the automatic rollback to {backup_id} failed: {rollback.error}"
        suggestions = [*rollback.restore_suggestions, *suggestions]
    if rollback.status == "lock_lost" and rollback.initiated:
        # As a failed restore is the run's outcome (RESTORE_FAILED), so is the lock lost under it:
        # another run may hold the lock now, and the database is as this deploy left it.
        error = LockLost
        message = f"{cause.message}; the automatic rollback to {backup_id} did not commit: {rollback.error}"
    if rollback.interrupted_by:
        # The signal is what the run ends on, as when it stops a migration: exit 130, and the
        # message says which side of the restore the database is on.
        error = Interrupted
        result.interrupted_by = rollback.interrupted_by
        if rollback.status == "failed":
            kept = ", ".join(progress.applied) or "nothing"
            message = (
                f"{cause.message}; the automatic rollback to {backup_id} was {rollback.error}, which keeps what "
                f"this deploy committed: {kept}"
            )
        else:
            message = (
                f"{cause.message}; {rollback.interrupted_by} arrived once the automatic rollback to {backup_id} "
                "had committed"
            )
    return error(
        context.redactor.redact(message),
        result={**cause.details, **result.model_dump(mode="json")},
        suggestions=suggestions,
        backup_id=backup.id if backup else None,
        rollback_advised=rollback.status not in ("not_needed", "success"),
        tool_output=cause.tool_output,
    )


def cause_of(context: RunContext, stopped: BaseException, progress: DeployProgress) -> Cause:
    """The error a deploy reports for ``stopped``: faber's own errors keep their code; an interrupt
    is ``INTERRUPTED``; a database error in a hook is a failed migration; anything else is a bug."""
    during = f" during migration {progress.running}" if progress.running else ""
    review = [review_migration(progress.running, progress.path_of(progress.running))] if progress.running else []
    if isinstance(stopped, KeyboardInterrupt):
        name = signal_name(stopped)
        stopped_in = progress.stopped_in
        if stopped_in is not None and stopped_in.statements_committed is not None:
            during += f": {first_line(stopped_in.error)}"  # outside a transaction: which statements committed
        return Cause(Interrupted, f"Interrupted by {name}{during}", [], interrupted_by=name)
    if isinstance(stopped, SessionRefused):
        # Raised only by opening a connection: past the backup, a database faber cannot use safely
        # is one it cannot reach (exit 3, as a refused connection), not a configuration to fix
        # before a run (exit 2), and the failure path finds the same when its restore would connect.
        refused = context.redactor.redact(stopped.message)
        message = f"Cannot use a new connection to the {context.environment} database{during}: {refused}"
        return Cause(HealthCheckFailed, message, [*stopped.suggestions, *database_suggestions(context)])
    if isinstance(stopped, FaberError):
        return Cause(type(stopped), stopped.message, stopped.suggestions, stopped.result, stopped.tool_output)
    detail = context.redactor.redact(first_line(str(stopped)) or type(stopped).__name__)
    engine = context.database.engine
    if engine.classify_error(stopped) == "lost_connection":
        return Cause(MigrationFailed, f"Lost the connection to the database{during}: {detail}", review)
    if isinstance(stopped, engine.driver_error):
        return Cause(MigrationFailed, f"Database error{during}: {detail}", review)
    return Cause(
        FaberError,
        f"Unexpected error{during}: {type(stopped).__name__}: {detail}",
        ["Re-run with FABER_DEBUG=1 for a traceback", "Please report this as a bug"],
    )


def committed_anything(progress: DeployProgress, failure: MigrationFailure | None) -> bool:
    """Whether any of this deploy may remain in the database (then only a restore undoes it)."""
    if progress.applied:
        return True
    if failure is not None:
        return not failure.left_nothing
    return progress.running is not None  # stopped in it, unreported: part of it may have committed


def rollback_step(
    context: RunContext,
    plugins: Plugins,
    lock: DeployLock,
    backup: BackupRecord | None,
    progress: DeployProgress,
    failure: MigrationFailure | None,
    *,
    lock_was_lost: bool = False,
) -> Rollback:
    """Restore ``backup`` if something of this deploy committed and the environment rolls back
    automatically; otherwise say why not, and what to do instead. ``lock_was_lost``: faber's lost
    lock is what stopped the deploy."""
    env = context.environment
    if not committed_anything(progress, failure):
        return nothing_to_roll_back(context, failure, lock_lost=lock_was_lost)
    if not context.settings.auto_rollback:
        if backup is None:
            return Rollback("disabled", advice_last=["No backup was taken; restore from your own backups if needed"])
        return Rollback("disabled", advice_last=[f"Rollback using backup: faber rollback {env} --to {backup.id}"])
    if backup is None:
        return Rollback(
            "no_backup",
            advice_last=["Automatic rollback impossible: no backup was taken (backup disabled or skipped)"],
        )
    if progress.unreachable:
        return withheld_for_unreachable(context, backup)
    if not lock.held():
        return withheld_for_lost_lock(context, backup)
    # faber's own sessions may still be open on a database that now refuses new ones, which the
    # restore needs: asked, it would fail on its first connection. So on a connection of its own,
    # not the shared session, which may be one of those.
    refused = connection_refused(context, context.database.connect)
    if refused is not None:
        return withheld_for_unreachable(context, backup, refused=refused)
    return restore_unless_refused(context, plugins, lock, backup)


def withheld_for_unreachable(context: RunContext, backup: BackupRecord, *, refused: str | None = None) -> Rollback:
    """No restore: the database refuses connections. ``refused`` (why) when the post-deployment
    check ran to its verdict and the restore's own connection was refused; without it, the check
    lost its session and could not run again, so the deploy's health is unknown."""
    env = context.environment
    if refused is None:  # the lost check's error already advises verifying the database
        reason = "the database refuses connections: a restore could not run, and its health after the deploy is unknown"
        context.emit("rollback.withheld", reason=reason)
        return Rollback(
            "unreachable",
            reason=reason,
            advice_last=[
                f"If its health checks fail once it answers, roll back: faber rollback {env} --to {backup.id}"
            ],
        )
    reason = f"the database refuses connections ({refused}): the restore could not run"
    context.emit("rollback.withheld", reason=reason)
    return Rollback(
        "unreachable",
        reason=reason,
        advice_first=["Verify database is running"],
        advice_last=[f"Once it answers, roll back: faber rollback {env} --to {backup.id}"],
    )


def withheld_for_lost_lock(context: RunContext, backup: BackupRecord) -> Rollback:
    env = context.environment
    reason = (
        "faber's lock was lost, so another run may have deployed since: restoring the backup could "
        "discard its migrations too"
    )
    context.emit("rollback.withheld", reason=reason)
    return Rollback(
        "lock_lost",
        reason=reason,
        advice_last=[
            f"Check what ran since: faber history {env} and faber status {env}",
            f"If no other run deployed, roll back by hand: faber rollback {env} --to {backup.id}",
        ],
    )


def nothing_to_roll_back(context: RunContext, failure: MigrationFailure | None, *, lock_lost: bool) -> Rollback:
    """Nothing of this deploy committed: a restore would only discard the application's writes."""
    if failure is not None and not failure.started and lock_lost:
        short = f"faber's lock was lost before {failure.name} started"
        reason = f"{failure.name} never started and nothing else of this run was committed"
    elif failure is not None and not failure.started:
        short = f"the process applying the migrations died before {failure.name} started"
        reason = f"{failure.name} never started and nothing else of this run was committed"
    elif failure is not None and failure.transaction_rolled_back:
        short = "the failed migration's transaction rolled back"
        reason = f"{failure.name} ran in a transaction that rolled back and nothing else of this run was committed"
    elif failure is not None:
        short = "the failed migration stopped at its first statement, before anything of it committed"
        reason = (
            f"{failure.name} runs outside a transaction and failed at its first statement, and nothing else "
            "of this run was committed"
        )
    else:
        short = reason = "no migration of this run had committed"
    reason += (
        ": the database is as it was before the run, so no restore was needed "
        "(a restore would also discard writes made since the backup)"
    )
    context.emit("rollback.skipped", reason=reason)
    return Rollback("not_needed", reason=reason, advice_first=[f"Database unchanged: {short}"])


def restore_unless_refused(context: RunContext, plugins: Plugins, lock: DeployLock, backup: BackupRecord) -> Rollback:
    """Restore ``backup``, unless others wrote rows since it and ``restore_with_app_writes`` refuses,
    or faber's lock was lost while the check waited for the counters."""
    env = context.environment
    try:
        with interruptible():
            since = check_writes_since_backup(context, backup)
    except SessionRefused as refused:  # its session opened since the check of a new connection
        return withheld_for_unreachable(context, backup, refused=context.redactor.redact(refused.message))
    except KeyboardInterrupt as interrupt:  # the check waits seconds for the server's counters
        name = signal_name(interrupt)
        return Rollback(
            "failed",
            interrupted_by=name,
            error=f"interrupted by {name} before the restore began; the database is as this deploy left it",
            restore_suggestions=[f"Roll back when ready: faber rollback {env} --to {backup.id}"],
        )
    policy = context.settings.restore_with_app_writes
    if since.discards_others and policy == "refuse":
        reason = f"a restore would discard {since.summary()} (restore_with_app_writes: refuse)"
        context.emit("rollback.withheld", reason=reason)
        return Rollback(
            "refused",
            reason=reason,
            writes_since_backup=since,
            advice_first=[f"Database not rolled back: {reason}"],
            advice_last=[
                *save_rows_commands(context, since),
                f"To restore anyway, discarding them: faber rollback {env} --to {backup.id} --yes --discard-app-writes",
            ],
        )
    if not lock.held():  # the check waits seconds, during which its session may have been ended
        return withheld_for_lost_lock(context, backup)
    checked = WritesCheck(context, backup, approved=since)
    try:
        outcome, lock_lost = restore_holding_lock(context, plugins, lock, backup, checked)
    except WritesDuringRestore as exc:
        context.emit("rollback.withheld", reason=exc.message)
        return Rollback(
            "refused",
            reason=exc.message,
            writes_since_backup=checked.latest,
            advice_first=[f"Database not rolled back: {exc.message}"],
            advice_last=exc.suggestions,
        )
    except LockLost as exc:  # raised before the restore's commit point: nothing of it committed
        context.emit("rollback.withheld", reason=exc.message)
        return Rollback(
            "lock_lost",
            initiated=True,
            restore_committed=False,
            writes_since_backup=since,
            error=exc.message,
            advice_first=[f"Database not rolled back: {exc.message}"],
            advice_last=restore_stopped_for_lost_lock(context, backup),
        )
    except FaberError as exc:
        return Rollback(
            "failed",
            initiated=True,
            writes_since_backup=since,
            error=exc.message,
            restore_suggestions=[*exc.suggestions, f"Retry the rollback: faber rollback {env} --to {backup.id}"],
        )
    since = checked.latest
    if outcome.status == "interrupted":
        return interrupted_restore(context, backup, outcome, since)
    if restored_beside(outcome):
        return Rollback(
            "restored_side_by_side",
            initiated=True,
            writes_since_backup=since,
            restored_endpoint=outcome.endpoint,
            advice_first=[
                f"{backup.id} was restored beside the database, which still has this deploy's changes: "
                f"{outcome.details}"
            ],
        )
    discarded = since.summary() if since.discards_others and policy == "warn" else None
    rolled_back = f"Database rolled back to {backup.id}" + (f"; the restore discarded {discarded}" if discarded else "")
    if not verified(outcome):
        rolled_back += f": {outcome.details}"
    lost = [lock_lost_while_restoring(context)] if lock_lost else []
    return Rollback(
        "success",
        initiated=True,
        writes_since_backup=since,
        discarded=discarded,
        restore_committed=None if verified(outcome) and not lock_lost else True,
        advice_first=[
            rolled_back,
            *lost,
            *uncounted_writes(backup, since),
            *([] if verified(outcome) else outcome.suggestions),
        ],
    )


def uncounted_writes(backup: BackupRecord, since: WritesSinceBackup) -> list[str]:
    """What a restore made while the writes since its backup could not be counted (every restore on
    MySQL/MariaDB) may have discarded, said where the run's advice is read: policy ``refuse`` cannot
    refuse what it cannot see, and rows the application wrote since are not in the restored database."""
    if since.status != "unknown":
        return []
    return [
        f"{since.reason or 'Writes since the backup were not counted'}: whatever the application wrote between "
        f"{backup.created_at:%Y-%m-%d %H:%M:%S} UTC and the restore is not in the restored database; look for it "
        "in the application's logs or the server's binary log"
    ]


def lock_lost_while_restoring(context: RunContext) -> str:
    env = context.environment
    return (
        "faber's lock was lost while the restore ran (its session ended), so another run may have read, backed up "
        f"or deployed {env} half restored: check what ran meanwhile: faber history {env} and faber status {env}"
    )


def interrupted_restore(
    context: RunContext, backup: BackupRecord, outcome: RestoreOutcome, since: WritesSinceBackup
) -> Rollback:
    """A signal stopped the restore: say exactly which side of its commit the database is on."""
    env = context.environment
    retry = f"Retry the rollback: faber rollback {env} --to {backup.id}"
    if outcome.committed:
        return Rollback(
            "success",
            initiated=True,
            restore_committed=True,
            interrupted_by=outcome.interrupted_by,
            writes_since_backup=since,
            advice_first=[
                f"Database rolled back to {backup.id}: the restore had committed when {outcome.interrupted_by} arrived",
                f"Its check was cut short: see that the migrations match the backup's with faber status {env}",
                *outcome.suggestions,
            ],
        )
    if outcome.committed is False:
        return Rollback(
            "failed",
            initiated=True,
            restore_committed=False,
            interrupted_by=outcome.interrupted_by,
            writes_since_backup=since,
            error=f"interrupted by {outcome.interrupted_by} before the restore committed; the database is exactly "
            "as it was before the restore",
            restore_suggestions=[*outcome.suggestions, retry],
        )
    return Rollback(
        "failed",
        initiated=True,
        interrupted_by=outcome.interrupted_by,
        writes_since_backup=since,
        error=f"interrupted by {outcome.interrupted_by}; the restore is atomic, so the database is either as it was "
        f"before the restore or exactly {backup.id} ({outcome.details})",
        restore_suggestions=[
            *outcome.suggestions,
            f"See which: faber status {env} (the backup's migrations: faber backups {env})",
            f"If it was not restored, retry the rollback: faber rollback {env} --to {backup.id}",
        ],
    )


RESTORED: tuple[RollbackStatus, ...] = ("success", "restored_side_by_side")
"""Rollback statuses after which the database to go on with is the backup restored (in place, or
beside it): their advice is the restore's, not undoing the failed migration's leftovers. A restore
that failed left the database as the deploy did: its leftovers are named after the retry."""


def leftover_indexes(context: RunContext, progress: DeployProgress, status: RollbackStatus) -> list[str]:
    """Invalid indexes this deploy left (a failed or interrupted ``CREATE INDEX CONCURRENTLY``),
    when the database was not restored; none when they cannot be read."""
    if status in RESTORED:
        return []
    try:
        with context.database.session() as conn:
            now = context.database.engine.invalid_indexes(conn)
    except context.database.connect_errors:
        return []
    return [name for name in now if name not in progress.invalid_indexes_before]


def resolve_advice(
    context: RunContext, plugins: Plugins, status: RollbackStatus, left_recorded: str | None
) -> list[str]:
    """After a failure the database still shows (no restore), name each migration its tool records
    as failed, and ``left_recorded``, the one this run stopped in that faber's record makes the
    next run report as failed (the tool records nothing of it: TypeORM, Sequelize), with the
    command that lets the next deploy go on once its leftovers are undone."""
    if status in RESTORED:
        return []
    failed = unresolved_migrations(context, plugins)
    if left_recorded is not None and left_recorded not in failed:
        failed.append(left_recorded)
    return failed_migration_advice(context, failed)


def not_checked_while_unreachable(context: RunContext) -> list[str]:
    env = context.environment
    return [
        "Not checked, as the database refuses connections: invalid indexes left behind and migrations recorded "
        f"as failed; once it answers, see them with faber status {env} and faber health {env}"
    ]


def left_behind_by(failure: MigrationFailure | None, status: RollbackStatus) -> list[str]:
    """What the failed migration left committed, as its handler told it after the error's first line
    (which the message keeps), when the database was not restored: the leftovers to undo before
    resolving it. A migration outside a transaction (MySQL's DDL, CREATE INDEX CONCURRENTLY) keeps
    the statements before the one that failed."""
    if failure is None or failure.left_nothing or status in RESTORED:
        return []
    detail = " ".join(line.strip() for line in failure.error.splitlines() if line.strip())
    told = detail.removeprefix(first_line(failure.error)).strip()
    return [f"{failure.name}: {told}"] if told else []


def unresolved_migrations(context: RunContext, plugins: Plugins) -> list[str]:
    """The migrations the tool records as failed now; none when the status cannot be read."""
    try:
        return plugins.migration_status(context).failed
    except (FaberError, context.database.engine.driver_error):
        return []


def refuse_while_statements_run(context: RunContext, plugins: Plugins, refused: str) -> None:
    """Stop a resolve or a rollback while another session of faber's user runs a statement in the
    database that may be a killed deploy's (:func:`statements_still_running`): it would commit after."""
    if not context.database.engine.statements_outlive_their_client:
        return
    try:
        state = plugins.migration_status(context)
    except (FaberError, context.database.engine.driver_error):
        state = None  # read by the command after this; the statements running are named all the same
    running = statements_still_running(context, state)
    if running:
        raise Locked(
            f"{refused}: another session is still running a statement in the database, which may be a killed "
            "deploy's, to commit when it ends; nothing was changed",
            suggestions=running,
        )


def failed_migration_advice(context: RunContext, failed: list[str]) -> list[str]:
    env = context.environment
    return [
        f"{name} is recorded as failed: undo what it left behind, then: faber resolve {env} --rolled-back "
        f"{shlex.quote(name)} (or --applied {shlex.quote(name)} if you completed it by hand)"
        for name in failed
    ]


@dataclass
class WritesCheck:
    """The rows written since a backup, as checked before restoring it (``approved``: the policy or
    the person let the restore discard those) and again right before the restore discards the
    database's rows (:meth:`RunContext.restore_replacing`): a restore in place once it holds its
    tables' locks and has ended the application's sessions, a swap before making its copy the
    database."""

    context: RunContext
    backup: BackupRecord
    approved: WritesSinceBackup
    discarding_approved: bool = False
    """The person asked to discard the application's rows (``--discard-app-writes``): a retry
    with it would be refused alike, so the refusal does not offer it."""
    latest: WritesSinceBackup = field(init=False)

    def __post_init__(self) -> None:
        self.latest = self.approved

    def again(self, sessions_ended: bool) -> None:
        """Check again (``sessions_ended``: see :meth:`RunContext.restore_replacing`); under
        ``restore_with_app_writes: refuse``, stop the restore if rows were written since the first
        check (nobody approved discarding those)."""
        self.latest = check_writes_since_backup(self.context, self.backup, sessions_ended=sessions_ended)
        self._apply_policy(writes.beyond(self.approved, self.latest))

    def ended_sessions_committed(self, committed: dict[str, int]) -> None:
        """The rows the swap's ended sessions committed after :meth:`again` read the counters:
        under ``refuse``, stop the restore; otherwise count them with the rest."""
        if not committed:
            return
        late = self.latest.model_copy(
            update={"status": "found", "tables": [TableWrites(table=t, rows=n) for t, n in committed.items()]}
        )
        self.latest = writes.added(self.latest, late)
        self._apply_policy(late)

    def _apply_policy(self, during: WritesSinceBackup) -> None:
        if during.status != "found" or self.context.settings.restore_with_app_writes != "refuse":
            return
        env, backup_id = self.context.environment, self.backup.id
        raise WritesDuringRestore(
            f"Restore of {backup_id} stopped before it changed {env}: since faber checked, {during.summary()}, "
            f"which the restore would discard (restore_with_app_writes: refuse); {env} is unchanged",
            result={**writes_result(self.latest), "writes_during_restore": during.model_dump(mode="json")},
            suggestions=[
                *save_rows_commands(self.context, during),
                f"Stop the application's writes, then retry: faber rollback {env} --to {backup_id}",
                # The rows may be a failed migration's own that its handler did not measure (Sequelize):
                # the retry's first check then finds them, and refuses again without this.
                *(
                    []
                    if self.discarding_approved
                    else [
                        f"To restore anyway, discarding them: faber rollback {env} --to {backup_id} --yes "
                        "--discard-app-writes"
                    ]
                ),
            ],
            backup_id=backup_id,
        )


def restore_backup(context: RunContext, plugins: Plugins, backup: BackupRecord, checked: WritesCheck) -> RestoreOutcome:
    """Restore, then prove it: the migration bookkeeping must equal the backup's manifest.

    The provider checks the writes again right before it discards the database's rows
    (``checked.again``, through ``context.restore_replacing``).

    An interrupt (SIGINT, SIGTERM) during the restore or its proof returns an ``interrupted``
    outcome saying whether the restore committed, for the caller to report: once the provider
    said its restore committed, a signal anywhere before the outcome is decided reports it
    committed. Once it is decided (verified, unverified, restored beside, failed, interrupted),
    the run is settled (:func:`~faber_core.interrupts.settle`): a later signal stops nothing and
    the run ends with that outcome's document.

    A provider that restores beside the database (``original_unchanged``) leaves the
    target as it is, so there is nothing to verify on it; the outcome says where the copy is.
    """
    # The first signal stops the restore; later ones must not cut short its clean-up and its word
    # on whether it committed.
    with step(context, "rollback", **{"faber.backup.id": backup.id}), raised_once():
        context.emit("rollback.started", backup_id=backup.id)
        # A restore may end every session of the database (a swap restore does): faber's shared
        # one is not kept across it.
        context.database.close_session()
        context.before_restore_replace.append(checked.again)
        context.after_restore_sessions_ended.append(checked.ended_sessions_committed)
        restored: RestoreOutcome | None = None
        try:
            try:
                with interruptible():
                    restored = plugins.backup_restore(context, backup)
            except FaberError:
                raise
            except Exception as exc:
                raise restore_stopped_by_a_bug(context, backup, exc) from exc
            finally:
                context.before_restore_replace.remove(checked.again)
                context.after_restore_sessions_ended.remove(checked.ended_sessions_committed)
            return decided_restore(context, plugins, backup, restored)
        except KeyboardInterrupt as interrupt:
            outcome = stopped_after(backup, restored, interrupt)
        settle()
        forget_if_restored(context, backup, outcome)
        if restored_beside(outcome):
            context.emit("rollback.finished", backup_id=backup.id, status="restored_side_by_side")
        else:
            context.emit("rollback.finished", backup_id=backup.id, status="interrupted", committed=outcome.committed)
        return outcome


def restore_stopped_by_a_bug(context: RunContext, backup: BackupRecord, exc: Exception) -> RestoreFailed:
    """A restore an unexpected exception stopped (a bug in faber or its provider): it is the
    restore's failure, reported as such (a failed deploy's document keeps what committed), saying
    that faber cannot tell whether any of the restore committed."""
    print_debug_traceback(exc, context.redactor)
    detail = context.redactor.redact(first_line(str(exc)) or "")
    env = context.environment
    return RestoreFailed(
        f"Restore of {backup.id} stopped by an unexpected error ({type(exc).__name__}: {detail}): faber cannot "
        "tell whether any of it committed",
        suggestions=[
            f"See what the database holds: faber status {env}",
            "Re-run with FABER_DEBUG=1 for a traceback, and please report this as a bug",
        ],
        backup_id=backup.id,
    )


def stopped_after(
    backup: BackupRecord, restored: RestoreOutcome | None, interrupt: KeyboardInterrupt
) -> RestoreOutcome:
    """The outcome of a restore whose run ``interrupt`` stopped, from what its provider had answered
    (``restored``; None: it raised the interrupt instead of answering)."""
    if restored is None:  # from a provider that does not say where it stopped
        return RestoreOutcome.interrupted(
            backup.id, interrupt, committed=None, details="the backup provider did not say whether it committed"
        )
    if restored.status == "interrupted" or restored_beside(restored):
        return restored  # it says where things stand; the target is not what a signal changes now
    if restored.status != "success":
        return RestoreOutcome.interrupted(backup.id, interrupt, committed=False, details=restored.details)
    # The provider said its restore committed: the signal stopped only faber's proof of it.
    return RestoreOutcome.interrupted(
        backup.id, interrupt, committed=True, details=f"{restored.details}; interrupted while verifying it"
    )


def forget_if_restored(context: RunContext, backup: BackupRecord, outcome: RestoreOutcome) -> None:
    """A signal stopped the run once the restore had committed into the database: the records of
    the killed deploys ``backup`` undoes go, as after a verified restore. The built-in providers
    removed them as the restore committed; another's may not have."""
    if outcome.committed and not restored_beside(outcome):
        unfinished.forget_restored(context, backup)


def decided_restore(
    context: RunContext, plugins: Plugins, backup: BackupRecord, outcome: RestoreOutcome
) -> RestoreOutcome:
    """What the provider's answer ``outcome`` decides, verified where the restore was in place. An
    interrupt raised here (before the run is settled) reaches :func:`restore_backup`."""
    if outcome.status == "interrupted":
        settle()
        forget_if_restored(context, backup, outcome)
        context.emit("rollback.finished", backup_id=backup.id, status="interrupted", committed=outcome.committed)
        return outcome
    if outcome.status != "success":
        settle()
        raise RestoreFailed(f"Restore of {backup.id} failed: {outcome.details}", backup_id=backup.id)
    if restored_beside(outcome):
        settle()
        context.emit("rollback.finished", backup_id=backup.id, status="restored_side_by_side")
        return outcome
    try:
        with interruptible():
            unfinished.forget_restored(context, backup)
            writes.refresh_baseline(context, backup)
            state = read_status(context, plugins, quiet=True)
    except (HealthCheckFailed, SessionRefused) as unread:
        # The restore committed: a connection lost or refused (or a read blocked) now keeps only
        # its proof from running, and must not be reported as a restore that failed.
        reason = context.redactor.redact(unread.message)
        settle()
        context.emit("rollback.finished", backup_id=backup.id, status="unverified", reason=reason)
        return unverified(context, outcome, reason)
    expected = sorted(tuple(item) for item in backup.migrations)
    matches = sorted(state.applied_fingerprint()) == expected
    settle()
    if not matches:
        raise RestoreFailed(
            f"Restore of {backup.id} finished but the migration history does not match the backup's manifest",
            result={"expected_applied": [n for n, _ in expected], "actual_applied": state.applied},
            suggestions=[f"Inspect with: faber status {context.environment}"],
            backup_id=backup.id,
        )
    context.emit("rollback.finished", backup_id=backup.id, status="success")
    return outcome


def restored_beside(outcome: RestoreOutcome) -> bool:
    return outcome.original_unchanged


def unverified(context: RunContext, outcome: RestoreOutcome, reason: str) -> RestoreOutcome:
    """A restore that committed but whose migration history could not be read to verify it
    (``committed`` True on a successful outcome says so)."""
    return outcome.model_copy(
        update={
            "committed": True,
            "details": f"{outcome.details}; the restore committed but was not verified, as its migration history "
            f"could not be read: {reason}",
            "suggestions": [
                *outcome.suggestions,
                f"Check that the migrations match the backup's: faber status {context.environment}",
            ],
        }
    )


def verified(outcome: RestoreOutcome) -> bool:
    """Whether faber read the restored migration history and found it equal to the backup's."""
    return outcome.status == "success" and not outcome.original_unchanged and outcome.committed is not True


# 14: verify ----------------------------------------------------------------------------


def verify_applied(context: RunContext, state: MigrationState) -> None:
    """Every migration applied and none failed, as ``state`` (read after the apply) says."""
    if state.pending or state.failed:
        raise MigrationFailed(
            "Verification failed: not every migration is applied",
            result={"pending": state.pending, "failed": state.failed},
            suggestions=[f"Inspect with: faber status {context.environment}"],
        )
    context.emit("verify.passed", applied=len(state.applied))


# 15-16: result -------------------------------------------------------------------------


def skipped_backup_fields(check: SkippedBackupCheck | None) -> dict[str, Any]:
    """A result's ``backup_leftovers`` (and ``backup_leftovers_unchecked``) after a deploy that
    skipped its backup; nothing for one that did not skip it."""
    if check is None:
        return {}
    return {"backup_leftovers": check.leftovers, "backup_leftovers_unchecked": check.unchecked}


def deployed(
    context: RunContext,
    outcome: ApplyOutcome,
    backup: BackupRecord | None,
    health_before: str,
    health_after: str,
    duration: float,
    review: safety.Review,
    skipped_backup: SkippedBackupCheck | None = None,
) -> Success:
    count = len(outcome.applied)
    return Success(
        operation=DEPLOY,
        environment=context.environment,
        result=DeployResult(
            migrations_applied=count,
            migrations=outcome.applied,
            total_duration_seconds=round(duration, 3),
            backup_id=backup.id if backup else None,
            health_check_before=health_before,
            health_check_after=health_after,
            mode=context.mode,
            lint={name: findings for name, findings in review.lint.items() if findings} or None,
            lint_not_run=review.lint_not_run or None,
            preflight=review.preflight,
            staging_proof=review.staging_proof,
            **skipped_backup_fields(skipped_backup),
            unfinished_migrations_unchecked=unfinished.unchecked(context),
        ),
        message=f"Successfully applied {count} migration{'s' if count != 1 else ''} to {context.environment}",
    )


def refuse_an_older_backup_than_the_newest(
    context: RunContext, listed: list[BackupRecord], newest_usable: BackupRecord
) -> None:
    """``faber rollback ENV`` restores the newest backup. When a newer one is unusable (its archive
    damaged or gone, its manifest unreadable or edited), the newest usable one is older than the
    person running it may think, and restoring it undoes more: every migration and write since it.
    faber does not make that choice for them: it stops, the database unchanged, and names both."""
    newer = [b for b in listed if b.status == "unusable" and b.created_at > newest_usable.created_at]
    if not newer:
        return
    newest = max(newer, key=lambda b: b.created_at)
    env = context.environment
    raise ConfigError(
        f"The newest backup of {env}, {newest.id}, is unusable ({newest.problem or 'unusable'}); the newest "
        f"usable one, {newest_usable.id}, is older, and restoring it would also undo everything since it: faber "
        "does not choose it for you; the database is unchanged",
        suggestions=[
            f"See every backup and why it is unusable: faber backups {env}",
            f"To restore the older one all the same: faber rollback {env} --to {newest_usable.id}",
        ],
    )


# Other commands ------------------------------------------------------------------------


def rollback(context: RunContext, plugins: Plugins, backup_id: str | None, options: DeployOptions) -> Success:
    """``faber rollback ENV [--to ID]``: restore a backup (the newest by default) and verify it."""
    plugins.require_backup_provider(context.settings.backup.provider, context.database.engine.name)
    context.emit(
        "run.started",
        mode=context.mode,
        tool=context.tool,
        dry_run=False,
        database=context.database.name_for_display,
        source=context.database.source,
    )
    if backup_id is not None and not backup_id.strip():
        # `--to "$BACKUP_ID"` with the variable unset: restoring the newest instead is not what was asked.
        raise ConfigError(
            "--to names no backup (an empty id); the database is unchanged",
            suggestions=[
                f"List backups with: faber backups {context.environment}",
                f"Leave --to out to restore the newest: faber rollback {context.environment}",
            ],
        )
    try:  # listing the backups reads each one's manifest
        chosen = backup_to_restore(context, plugins, backup_id)
    except KeyboardInterrupt as interrupt:
        retry = f"faber rollback {context.environment}" + (f" --to {backup_id}" if backup_id else "")
        raise Interrupted.by(
            interrupt,
            "before the restore began: nothing was restored",
            suggestions=[f"Roll back when ready: {retry}"],
        ) from None
    outcome: RestoreOutcome | None = None
    since: WritesSinceBackup | None = None
    restore_began = False
    try:
        store.hold_chosen(context, chosen)
        applied_at_start = applied_or_unknown(context, plugins)
        with deploy_lock(context) as lock:
            refuse_if_deployed_meanwhile(context, plugins, chosen, applied_at_start)
            refuse_while_statements_run(context, plugins, f"Not rolled back to {chosen.id}")
            since = check_writes_since_backup(context, chosen)
            confirm_rollback(context, options, chosen, since)
            # The check waits seconds and a prompt as long as it takes: the lock's session may
            # have ended meanwhile, and another run deployed what the restore would discard.
            lock.require_held(f"the restore of {chosen.id}", context)
            checked = WritesCheck(context, chosen, approved=since, discarding_approved=options.discard_app_writes)
            restore_began = True
            outcome, lock_lost = restore_holding_lock(context, plugins, lock, chosen, checked)
            if lock_lost:
                raise lock_lost_during_restore(context, chosen, outcome, checked.latest)
    except KeyboardInterrupt as interrupt:
        if not restore_began:  # waiting for the lock, the writes' counters or the approval
            raise rollback_interrupted_before_the_restore(context, chosen, since, interrupt) from None
        if outcome is None or outcome.status != "success" or restored_beside(outcome):
            raise
        # The restore committed and was verified, which settles the run (a signal is then held and
        # dropped): this is an interrupt that reached the run otherwise, as faber released its lock.
        outcome = RestoreOutcome.interrupted(
            chosen.id, interrupt, committed=True, details=f"{outcome.details}; interrupted once it was verified"
        )
    if outcome.status == "interrupted":
        raise interrupted_rollback(context, chosen, outcome, checked.latest)
    beside = restored_beside(outcome)
    committed_unverified = not beside and not verified(outcome)
    message = f"Rolled back {context.environment} to {chosen.id}"
    if committed_unverified:
        message += f": {outcome.details}; {outcome.suggestions[-1]}"
    result = RollbackResult(
        backup_id=chosen.id,
        rollback_status="restored_side_by_side" if beside else "success",
        verified=verified(outcome),
        migrations=[name for name, _ in chosen.migrations],
        details=outcome.details,
        writes_since_backup=checked.latest,
        restore_committed=True if committed_unverified else None,
        **provider_fields(outcome),
    )
    return Success(
        operation="rollback",
        environment=context.environment,
        result=result,
        message=outcome.details if beside else message,
    )


def provider_fields(outcome: RestoreOutcome) -> dict[str, Any]:
    """What a restore's provider said of where it restored, for :class:`RollbackResult`: left out when unset."""
    return outcome.model_dump(include={"original_unchanged", "endpoint", "provider_data"}, exclude_defaults=True)


def applied_or_unknown(context: RunContext, plugins: Plugins) -> list[str] | None:
    """The migrations applied as a rollback starts; None where they cannot be read: a database in a
    state that needs the rollback must not be kept from it by :func:`refuse_if_deployed_meanwhile`."""
    try:
        return read_status(context, plugins, quiet=True).applied
    except Exception:  # whatever keeps the status from being read, the restore must still be possible
        return None


def restore_holding_lock(
    context: RunContext, plugins: Plugins, lock: DeployLock, backup: BackupRecord, checked: WritesCheck
) -> tuple[RestoreOutcome, bool]:
    """:func:`restore_backup`, and whether faber's lock was lost while the restore ran.

    A restore runs on sessions of its own and goes on when the lock's session is ended under it:
    another run may then take the lock and read, back up or deploy the database half restored. So
    the provider checks the lock right before its commit point (``context.restore_committing``),
    inside the restore's transaction where it can, and raises :class:`LockLost` with nothing
    committed. What commits all the same (a provider that does not check, the lock lost after its
    check) is what the second value reports. A swap restore ends the lock's session itself and
    takes the lock again: not a loss.

    A restore that fails before its commit point once the lock is lost raises :class:`LockLost`
    too, its failure named: another run may have taken the lock and changed the database
    meanwhile, which may be why it failed (a swap's copy of faber's history then differs from the
    target's), and a retry would undo that run's work."""
    at_commit_point = False

    def lock_still_held() -> None:
        nonlocal at_commit_point
        lock.require_held_before_restore_commit(context, backup)
        at_commit_point = True

    def check_at_the_commit(check: LockCheck) -> LockCheck:
        nonlocal at_commit_point
        at_commit_point = True
        return check

    in_transaction = lock.check_before_restore_commit(context, backup)
    swapped: list[dict[str, int]] = []
    context.after_restore_sessions_ended.append(swapped.append)
    context.before_restore_commit.append(lock_still_held)
    context.lock_check_in_restore = None if in_transaction is None else partial(check_at_the_commit, in_transaction)
    try:
        outcome = restore_backup(context, plugins, backup, checked)
    except FaberError as failed:
        # Past its commit point, a failure is the restore's own: a swap ends faber's lock session
        # itself once the check there passed.
        if isinstance(failed, LockLost) or at_commit_point or lock.held():
            raise
        raise lock_lost_before_restore_committed(context, backup, failed=failed) from None
    finally:
        context.after_restore_sessions_ended.remove(swapped.append)
        context.before_restore_commit.remove(lock_still_held)
        context.lock_check_in_restore = None
    return outcome, outcome.status == "success" and not swapped and not lock.held()


def lock_lost_before_restore_committed(
    context: RunContext, backup: BackupRecord, *, failed: FaberError | None = None
) -> LockLost:
    """The error a restore provider raises when faber's lock was lost before its commit point
    (:meth:`RunContext.restore_committing`): nothing of the restore committed. ``failed``: how the
    restore failed before it got there, the lock lost by then."""
    env = context.environment
    message = (
        f"faber's lock on the database was lost during the restore of {backup.id}: its session ended or let it go "
        f"(e.g. {context.database.engine.lock_release_hint}), so the restore stopped before it committed; {env} is "
        "exactly as it was before the restore"
    )
    if failed is not None:
        message += (
            "; the restore had failed before its commit point, perhaps because of what another run did meanwhile: "
            f"{failed.message}"
        )
    return LockLost(
        message,
        result=RollbackResult(backup_id=backup.id, rollback_status="failed", restore_committed=False).model_dump(
            mode="json"
        ),
        suggestions=restore_stopped_for_lost_lock(context, backup),
        backup_id=backup.id,
    )


def restore_stopped_for_lost_lock(context: RunContext, backup: BackupRecord) -> list[str]:
    env = context.environment
    return [
        "Find out who ended faber's session (an operator, a connection limit, a proxy timeout)",
        f"Another run may have taken faber's lock since: see what it did: faber history {env}, faber status {env}",
        f"Once no other run is active, run the rollback again: faber rollback {env} --to {backup.id}",
    ]


def lock_lost_during_restore(
    context: RunContext, backup: BackupRecord, outcome: RestoreOutcome, since: WritesSinceBackup
) -> LockLost:
    """``faber rollback`` whose restore committed while faber's lock was lost: another run may have
    worked on the database as it was half restored. The result is the restore's, with the writes
    since the backup its checks found, which it discarded."""
    env = context.environment
    result = RollbackResult(
        backup_id=backup.id,
        rollback_status="success",
        restore_committed=True,
        migrations=[name for name, _ in backup.migrations],
        details=outcome.details,
        writes_since_backup=since,
        **provider_fields(outcome),
    )
    return LockLost(
        f"faber's lock on the database was lost during the restore of {backup.id}: its session ended or let "
        f"it go (e.g. {context.database.engine.lock_release_hint}), so another run may have read, backed up or "
        f"deployed {env} while it restored; the restore committed ({outcome.details})",
        result=result.model_dump(mode="json"),
        suggestions=[
            "Find out who ended faber's session (an operator, a connection limit, a proxy timeout)",
            f"Check what ran meanwhile: faber history {env} and faber status {env}",
            "A run that deployed meanwhile read the database half restored: its result and its backup may be "
            f"wrong; once no other run is active, run faber rollback {env} --to {backup.id} again if needed",
        ],
    )


def refuse_if_deployed_meanwhile(
    context: RunContext, plugins: Plugins, backup: BackupRecord, applied_at_start: list[str] | None
) -> None:
    """A rollback chose its backup and approved restoring it over the migrations applied as it
    started; another run holding faber's lock meanwhile (a deploy, a resolve) may have changed them.
    Restoring then would undo that run's migrations too, which nobody decided: stop, unchanged
    (exit 7), and let the user decide again on what is there now."""
    if applied_at_start is None:
        return
    try:
        applied_now = read_status(context, plugins, quiet=True).applied
    except FaberError:
        return
    if applied_now == applied_at_start:
        return
    env = context.environment
    added = [name for name in applied_now if name not in applied_at_start]
    gone = [name for name in applied_at_start if name not in applied_now]
    changes = ", ".join(
        part
        for part in (
            f"applied {', '.join(added)}" if added else "",
            f"no longer applied: {', '.join(gone)}" if gone else "",
        )
        if part
    )
    raise Locked(
        f"Another faber run changed {env}'s migrations while this rollback waited for faber's lock ({changes}); "
        "nothing was restored",
        result={"backup_id": backup.id, "applied_at_start": applied_at_start, "applied_now": applied_now},
        suggestions=[
            f"See what that run did: faber history {env}",
            f"If the rollback is still what you want, run it again: faber rollback {env} --to {backup.id}",
        ],
    )


def backup_to_restore(context: RunContext, plugins: Plugins, backup_id: str | None) -> BackupRecord:
    """The backup ``faber rollback`` restores: ``backup_id``, or the newest usable one."""
    listed = plugins.backup_list(context)
    backups = [b for b in listed if b.status == "available"]
    if backup_id is not None:
        chosen = next((b for b in backups if b.id == backup_id), None)
        if chosen is None:
            unusable = next((b for b in listed if b.id == backup_id), None)
            why = f": {unusable.problem or unusable.status}" if unusable else ""
            raise ConfigError(
                f"No usable backup {backup_id} for {context.environment}{why}",
                suggestions=[f"List backups with: faber backups {context.environment}"],
            )
    elif backups:
        chosen = backups[0]
        refuse_an_older_backup_than_the_newest(context, listed, chosen)
    else:
        raise ConfigError(
            f"No backups found for {context.environment}",
            suggestions=[f"Create one with: faber backup {context.environment}"],
        )
    return chosen


def rollback_interrupted_before_the_restore(
    context: RunContext, backup: BackupRecord, since: WritesSinceBackup | None, interrupt: KeyboardInterrupt
) -> Interrupted:
    """``faber rollback`` stopped by a signal before its restore began: nothing was restored."""
    env = context.environment
    name = signal_name(interrupt)
    result = RollbackResult(
        backup_id=backup.id,
        rollback_status="failed",
        interrupted_by=name,
        restore_committed=False,
        writes_since_backup=since,
    )
    return Interrupted(
        f"Interrupted by {name} before the restore began; nothing was restored: {env} is as it was",
        result=result.model_dump(mode="json"),
        suggestions=[f"Roll back when ready: faber rollback {env} --to {backup.id}"],
        backup_id=backup.id,
    )


def interrupted_rollback(
    context: RunContext, backup: BackupRecord, outcome: RestoreOutcome, since: WritesSinceBackup
) -> Interrupted:
    """``faber rollback`` stopped by a signal: where the database is, from the provider's word, and
    the writes since the backup its checks found (a restore that committed discarded them)."""
    env = context.environment
    where = {
        True: f"the restore had committed: {env} is exactly {backup.id}",
        False: f"the restore had not committed: {env} is exactly as it was before the rollback",
        None: f"the restore is atomic, so {env} is either as it was before the rollback or exactly {backup.id}",
    }[outcome.committed]
    suggestions = {
        True: [f"Check that the migrations match the backup's: faber status {env}"],
        False: [f"Retry the rollback: faber rollback {env} --to {backup.id}"],
        None: [
            f"See which: faber status {env} (the backup's migrations: faber backups {env})",
            f"If it was not restored, retry the rollback: faber rollback {env} --to {backup.id}",
        ],
    }[outcome.committed]
    result = RollbackResult(
        backup_id=backup.id,
        # As a failed deploy's automatic rollback says it: unknown, it is left out.
        rollback_status={True: "success", False: "failed", None: None}[outcome.committed],
        interrupted_by=outcome.interrupted_by,
        restore_committed=outcome.committed,
        migrations=[name for name, _ in backup.migrations] if outcome.committed else None,
        details=outcome.details,
        writes_since_backup=since,
        **provider_fields(outcome),
    )
    return Interrupted(
        f"Interrupted by {outcome.interrupted_by}; {where}",
        result=result.model_dump(mode="json"),
        suggestions=[*outcome.suggestions, *suggestions],
        backup_id=backup.id,
    )


def prune_backups(context: RunContext, plugins: Plugins, keep_last: int | None, dry_run: bool) -> Success:
    """``faber backups prune ENV``: delete backups beyond the newest ``keep_last``."""
    plugins.require_backup_provider(context.settings.backup.provider, context.database.engine.name)
    outcome = plugins.backup_prune(context, keep_last, dry_run)
    verb = "Would delete" if dry_run else "Deleted"
    notes = [f"{len(outcome.in_use)} in use kept"] if outcome.in_use else []
    notes += [f"{len(outcome.unreadable)} with an unreadable manifest left alone"] if outcome.unreadable else []
    return Success(
        operation="prune-backups",
        environment=context.environment,
        result=outcome.model_dump(mode="json"),
        message=f"{verb} {len(outcome.pruned)} backup(s), kept the newest {len(outcome.kept)}"
        + "".join(f"; {note}" for note in notes),
    )


def check_writes_since_backup(
    context: RunContext, backup: BackupRecord, *, sessions_ended: bool = False
) -> WritesSinceBackup:
    """What a restore of ``backup`` would discard that faber did not write (faber_core/backup/writes.py)."""
    since = writes.writes_since_backup(context, backup, sessions_ended=sessions_ended)
    context.emit("writes.checked", **since.model_dump(mode="json"))
    return since


def confirm_rollback(
    context: RunContext, options: DeployOptions, backup: BackupRecord, since: WritesSinceBackup
) -> None:
    """A person's yes before ``faber rollback`` restores; naming the tables when others wrote to them.

    On a terminal the question names them. Without one, ``--yes`` approves a protected
    environment's rollback, but when others wrote since the backup and the policy is ``refuse``
    it takes ``--discard-app-writes`` too: a ``--yes`` in a CI script must not discard the
    application's rows unseen.
    """
    env = context.environment
    discards = since.discards_others and context.settings.restore_with_app_writes != "allow"
    if not (context.settings.protected or discards):
        return
    warning = f" It discards {since.summary()}." if discards else " Writes made since then are lost."
    question = f"Restore {env} to {backup.id}?{warning}"
    if options.approver is not None:
        if options.approver(question):
            return
        raise ApprovalRequired(
            f"Rollback of {env} to {backup.id} was not approved",
            result=writes_result(since),
            suggestions=["Nothing was restored"],
        )
    needs_flag = discards and context.settings.restore_with_app_writes == "refuse"
    if options.assume_yes and not (needs_flag and not options.discard_app_writes):
        return
    flags = "--yes --discard-app-writes" if needs_flag else "--yes"
    raise ApprovalRequired(
        f"Rollback of {env} to {backup.id} needs approval: {since.summary()}"
        if discards
        else f"Approval required to restore {env} to {backup.id}, and there is no terminal to ask",
        result=writes_result(since),
        suggestions=[
            *(save_rows_commands(context, since) if discards else []),
            f"Approve non-interactively (e.g. in CI): faber rollback {env} --to {backup.id} {flags}",
            "Or run in a terminal to confirm at the prompt",
        ],
    )


def writes_result(since: WritesSinceBackup) -> dict[str, object]:
    return {"writes_since_backup": since.model_dump(mode="json")}


def save_rows_commands(context: RunContext, since: WritesSinceBackup) -> list[str]:
    """How to keep a copy of the rows a restore would discard, before restoring."""
    if not (since.tables or since.sequences):  # only sessions writing as faber checked: their rows are not there yet
        return ["Let those sessions finish (or stop the application's writes), then roll back again"]
    env_var = context.settings.database_url_env
    url = f'"${env_var}"' if env_var else "<database URL>"
    # pg_dump saves a sequence's data as the setval that puts it back, and large objects with --blobs.
    saved = [t.table for t in since.tables if t.table not in writes.LARGE_OBJECT_CATALOGS]
    saved += [s.sequence for s in since.sequences]
    # Table names come from the database: single-quoted for the shell, their own quotes escaped.
    selection = " ".join("--table='{}'".format(name.replace("'", "'\\''")) for name in saved)
    if len(saved) < len(since.tables) + len(since.sequences):
        # Without a --table, every table's data would come with the large objects: none is asked for.
        selection = f"--blobs {selection}" if saved else "--blobs --exclude-table-data='*.*'"
    return [
        f"Save the tables others wrote to first: pg_dump --data-only {selection} --file=writes-since-backup.sql {url}",
        *(context.database.engine.client_url_advice(context.database.parsed, env_var) if env_var else []),
        "Then re-apply what must survive after the restore (the backup does not have those rows)",
    ]


def resolve(context: RunContext, plugins: Plugins, name: str, resolution: Resolution) -> Success:
    """``faber resolve ENV``: record how a failed migration was repaired, so deploys can go on."""
    plugins.require_tool(context.tool)
    with deploy_lock(context):
        refuse_while_statements_run(context, plugins, "Not resolved")
        if resolution == "applied":
            # The tool marks it applied before faber's record of a killed deploy inside it goes: a
            # tool that refuses (or a kill in between) leaves the migration failed, never merely
            # pending, which the next deploy would run again over what of it committed. The
            # migrations that deploy recorded after it, which it never started, go first: killed
            # once the tool has marked it, the record then names none of them as the one it was in.
            unfinished.forget_migrations_after(context, name)
            state = plugins.migration_resolve(context, name, resolution)
            unfinished.forget_migration(context, name)
        else:
            # A migration a killed deploy left in part that its tool does not record (it ran outside
            # a transaction) has nothing for the tool to mark rolled back: faber's record of it goes.
            left_by_a_killed_run = unfinished.forget_migration(context, name)
            state = plugins.migration_status(context)
            if not left_by_a_killed_run or name in state.failed:
                state = plugins.migration_resolve(context, name, resolution)
    context.emit("migration.resolved", name=name, resolution=resolution)
    return Success(
        operation="resolve-migration",
        environment=context.environment,
        result={"migration": name, "resolution": resolution, "failed": state.failed, "pending": state.pending},
        message=f"Marked {name} as {resolution.replace('_', ' ')}",
    )
