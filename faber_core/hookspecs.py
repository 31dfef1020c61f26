"""The plugin author's reference: every hook faber calls, when, with what, and what it returns.

A plugin is a module (or object) with functions named like the hooks below, decorated with
``faber_core.hookimpl``, registered through the ``faber`` entry point group::

    # pyproject.toml
    [project.entry-points.faber]
    mytool = "faber_mytool.plugin"

Declaring hooks (``faber_migration_tools``, ``faber_backup_providers``,
``faber_health_check_names``) name what a plugin offers. faber lists those names, refuses a
misspelt one in the config, and reports two plugins claiming one name.

Per-step hooks (migration status, preview, apply, dev, resolve; backup create, list, prune,
restore) are called on the plugin that declared the configured name and on no other plugin, so
an implementation never checks the name and never returns ``None`` to let another plugin
answer. Each receives the configured name (``tool`` or ``provider``); like every hook argument it
is optional, so take it only when your plugin declares several names::

    @hookimpl
    def faber_migration_status(context):          # faber calls it only for your tool
        return MigrationState(tool="mytool", local=..., records=...)

A plugin that declares a tool must implement status, preview and apply (prepare, validate, resolve,
dev and project_files, which ``faber init`` calls, optional);
one that declares a backup provider must implement create, list and restore (prune optional).
A missing one is reported by ``faber plugins`` and, when a run needs it, is a ``PLUGIN_ERROR``
(exit 1) naming the package.

The order of a deploy (docs/plugins.md has it as a diagram)::

    faber_migration_prepare -> faber_migration_status -> faber_migration_validate
    -> faber_health_checks(before) -> faber_migration_status -> [faber_migration_preview; stop]
    -> approval -> faber_backup_create -> faber_migration_apply | faber_migration_dev
    -> faber_health_checks(after) -> faber_migration_status (verify)
    -> on failure: faber_backup_restore -> faber_migration_status (verify restore)

``faber_audit_event`` is called for every event along the way; ``faber_core.events`` lists
every kind. Which error to raise where: docs/plugins.md ("Errors: what to raise").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from faber_core.context import RunContext
    from faber_core.models import (
        ApplyOutcome,
        AuditEvent,
        BackupLeftover,
        BackupProviderInfo,
        BackupPruneOutcome,
        BackupRecord,
        HealthCheckInfo,
        HealthCheckResult,
        LocalMigration,
        MigrationPreview,
        MigrationRefusal,
        MigrationState,
        Resolution,
        RestoreOutcome,
        ToolInfo,
    )

hookspec = pluggy.HookspecMarker("faber")


@hookspec
def faber_migration_tools() -> list[ToolInfo]:
    """Declare the migration tools this plugin drives.

    Called when faber collects its plugins (``faber plugins``, and before any run to check that
    the configured ``database.migration_tool`` has a handler).

    Returns a list of :class:`~faber_core.models.ToolInfo`, e.g.
    ``[ToolInfo(name="prisma", description="Prisma migration folders", options=PrismaOptions)]``.
    ``options`` is the pydantic model of the tool's config section ``database.<name>``: faber
    validates the section with it before any run and lists it in ``faber config schema``; hooks
    read it with ``context.tool_options(PrismaOptions)``. faber then calls the per-step hooks
    below for this name on this plugin alone.
    """


@hookspec(firstresult=True)
def faber_migration_prepare(tool: str, context: RunContext) -> None:
    """Start, in the background, what reading the migration status will need.

    Called once at the start of ``faber migrate`` (and its ``--dry-run``), once the request and
    the config are checked and before faber's own preparations (its SQL analysis loads, ...), so
    that both go on at once. Optional. Return at once, change nothing and raise nothing: whatever
    fails here is reported by the status read that follows. faber-typeorm and faber-sequelize
    start their Node runner here, which loads the ORM and the migration files meanwhile.
    """


@hookspec(firstresult=True)
def faber_migration_status(tool: str, context: RunContext) -> MigrationState:
    """Read the local migrations and the database's migration bookkeeping.

    Called before deploying (pending migrations, the ``migrations`` health check), after it (to
    verify every migration is applied) and after a restore (to verify the restore).

    Receives the configured tool name (one your plugin declared) and the run context.
    Must not change the database: a missing bookkeeping table means nothing is applied yet.

    Returns :class:`~faber_core.models.MigrationState`: ``local`` in apply order and ``records``
    from the database. faber derives pending, failed, missing-locally and edited migrations.
    Set ``LocalMigration.transactional`` False for a migration your apply runs outside a transaction
    and records only once it finished: faber records it before applying it, so the next run names it
    if a deploy is killed inside it. faber does so too for a migration whose ``.sql`` file it finds
    cannot run in a transaction (``CREATE INDEX CONCURRENTLY``), whatever the flag says; never the
    other way round.
    Give a failed record its ``started_at`` when your tool keeps one (time zone aware, by the server's
    clock, as a column default or ``now()`` writes it): the restore faber advises for it is then of
    a backup taken before the attempt began, never of one taken since, which holds what it left.
    Set ``bookkeeping_table`` to the table your tool records migrations in (``'"public"."migrations"'``):
    before an automatic restore faber checks that nobody else wrote rows since the backup, and
    rows in that table are then known to be faber's, even when your apply hook does not measure
    its writes (``AppliedMigration.table_writes``).

    Read the bookkeeping on the run's shared session, ``with context.database.session() as conn``
    (a deploy reads the status several times, and a fleet does it for every target: a connection
    each would start a server session each), and read and checksum the local files once per
    command, ``context.once((TOOL, context.project_dir), read_files)``: every read of the run, and
    every target of a fleet, then sees the same files (treat the value as read-only).
    """


@hookspec(firstresult=True)
def faber_migration_validate(tool: str, context: RunContext, pending: list[LocalMigration]) -> list[MigrationRefusal]:
    """Refuse pending migrations before anything is touched: before faber's lock, the backup and apply.

    Called in ``faber migrate`` (and its ``--dry-run``) once the status is read, with the pending
    migrations of that status (their ``handler_data`` included); again under faber's lock for any
    that became pending while the run waited for it. Optional. Check what only your tool can know
    (a migration your tool's version cannot run, a missing file it needs, a code migration that
    cannot be loaded); do not connect to change anything. ``faber status`` never calls it, so it
    is the place for a check that runs project code: faber-typeorm and faber-sequelize load each
    pending migration module here, in the run's runner, without calling its ``up`` (the ORM would
    load it before running any migration anyway, in that same process).

    Returns a :class:`~faber_core.models.MigrationRefusal` per migration you refuse, ``[]`` when
    all can be applied (set ``path`` when the refusal is about the migration's file: it becomes
    ``result.file``). faber then stops with ``MIGRATION_FAILED`` (exit 6) naming the first, with
    nothing locked, approved, backed up or applied::

        @hookimpl
        def faber_migration_validate(context, pending):
            return [MigrationRefusal(name=m.name, reason="needs mytool 3") for m in pending if needs_v3(m)]
    """


@hookspec(firstresult=True)
def faber_migration_preview(tool: str, context: RunContext, pending: list[LocalMigration]) -> list[MigrationPreview]:
    """Describe what applying ``pending`` would do, without changing the target database.

    Called for ``faber migrate ENV --dry-run``, and to capture the SQL of code migrations for
    the lint (on a throwaway copy, see ``Engine.rehearsal_database``).

    Returns one :class:`~faber_core.models.MigrationPreview` per pending migration, in the order
    of ``pending`` and with the same names (faber refuses any other answer as a plugin error),
    with its SQL, whether it is transactional, and notes. Leave the duration to faber: it
    estimates it from the SQL and the table statistics::

        @hookimpl
        def faber_migration_preview(pending):
            return [MigrationPreview(name=m.name, sql=m.handler_data, transactional=True) for m in pending]
    """


@hookspec(firstresult=True)
def faber_migration_apply(tool: str, context: RunContext, pending: list[LocalMigration]) -> ApplyOutcome:
    """Apply ``pending`` in order, stopping at the first failure.

    Called in deploy mode (and in dev mode when ``faber_migration_dev`` declines) while faber
    holds its advisory lock on the database, after the health check, the approval and the
    backup. Apply each migration in its own transaction when its SQL allows it, together with
    its bookkeeping row, so a failure leaves nothing of that migration behind. Connect with
    ``context.database.connect(migration_session=True)`` then ``context.apply_session_timeouts(conn)``
    and ``context.hold_migration_lock(conn)`` (so that a run taking faber's lock while this session
    is still inside a migration, its own lock session ended, stops instead of applying it again).
    ``context.database.engine`` says which database it is (``engine.name``: ``postgresql`` or
    ``mysql``, see :mod:`faber_core.engines`); on an engine whose DDL is not transactional
    (``engine.transactional_ddl`` is False: MySQL) a migration with DDL runs statement by statement
    and its failure reports ``statements_committed``. A subprocess gets the timeouts through
    ``context.session_timeout_env()`` (PostgreSQL) or, when that is empty (MySQL; PostgreSQL
    through a pooler that refuses or drops ``PGOPTIONS``), runs ``context.session_timeout_statements()``
    first in its session.
    Call ``context.start_migration(name)`` just before each migration (faber checks its lock is still
    held and raises ``LockLost`` if not: let it propagate; with ``in_transaction=True`` it may
    return the check as SQL for ``run_measured_script(..., lock_check=...)`` instead) and ``context.migration_applied(
    AppliedMigration(name=..., duration_seconds=..., table_writes=...))`` after each commit, so the
    user sees progress and faber knows what committed (and wrote) even if the hook raises.
    SIGINT, SIGTERM and SIGHUP arrive as ``KeyboardInterrupt``: let it propagate (faber reports the
    migration it stopped in as one that may have committed in part), after saying what you know:
    ``context.migration_failed(...)`` if its transaction rolled back, or ``context.migration_applied``
    if it had committed (the signal came during its COMMIT, which a cancel cannot stop; your
    bookkeeping row, written in its transaction, tells).

    Returns :class:`~faber_core.models.ApplyOutcome`: the migrations committed and, if one
    failed, a :class:`~faber_core.models.MigrationFailure` saying whether its transaction rolled
    back, and its ``sqlstate`` (the server's error code: PostgreSQL's SQLSTATE, MySQL's error number;
    a lock timeout, 55P03 or 1205, makes faber retry it). Do not raise for a
    failing migration; raise :class:`faber_core.errors.ConfigError` only for a broken setup
    (missing files, a tool that will not start). Never raise ``FaberError`` itself: that is a bug
    (exit 1).
    """


@hookspec(firstresult=True)
def faber_migration_dev(tool: str, context: RunContext) -> ApplyOutcome | None:
    """Run the tool's own interactive development command (e.g. ``prisma migrate dev``).

    Called instead of ``faber_migration_apply`` when the environment is in dev mode. Optional: a
    tool without such a command does not implement it. Return ``None`` to decline at run time
    (the tool's CLI is not installed); faber then applies pending migrations with
    ``faber_migration_apply``.
    """


@hookspec(firstresult=True)
def faber_migration_project_files(tool: str, project_dir: Path) -> list[str] | None:
    """The project's own files that configure the tool, found as the tool finds them.

    Called by ``faber init`` in a project that already uses your tool, before it writes the config:
    there is no run, no config and no database yet, only ``project_dir``. Optional. Return the
    paths, relative to ``project_dir``, of the files that exist; faber lists them in init's
    ``found`` and reads them for the database engine they name (dev then reads a URL rather than
    using the embedded PostgreSQL). ``None``: the tool cannot tell here (its packages are not
    installed); faber then looks where the tool looks by default. faber-sequelize asks its runner,
    which reads ``.sequelizerc`` as every run does::

        @hookimpl
        def faber_migration_project_files(project_dir):
            return [name for name in ("mytool.config.js",) if (project_dir / name).exists()]
    """


@hookspec(firstresult=True)
def faber_migration_resolve(tool: str, context: RunContext, name: str, resolution: Resolution) -> MigrationState:
    """Mark a failed migration by hand, after a person has repaired the database.

    Called by ``faber resolve ENV --rolled-back NAME`` (``resolution`` = ``"rolled_back"``: the
    migration's changes are gone, apply it again on the next deploy) or ``--applied NAME``
    (``"applied"``: its changes were completed by hand, never apply it). faber holds its lock.
    Raise :class:`faber_core.errors.ConfigError` when ``name`` is not a failed migration (a tool
    that can baseline, like Prisma, also accepts ``applied`` for one never attempted), and for
    ``applied`` of a migration the tool does not know or has already applied, nothing written.

    ``applied`` writes the tool's own record of the migration exactly as the tool writes it for
    one that ran, committed before the hook returns: faber removes its record of a killed deploy
    inside ``name`` only afterwards, so a refusal or a kill in between leaves the migration failed,
    never pending (the next deploy would run it again over what of it committed).

    A tool whose history keeps no failed migrations (Sequelize, TypeORM: a migration is recorded
    only once it has run) may implement it for ``applied`` alone, recording a pending migration
    (the one a killed deploy was in, once completed by hand) as run, as the TypeORM and Sequelize
    handlers do (``typeorm migration:run --fake``'s row, ``SequelizeMeta``'s); for ``rolled_back``
    it raises ``ConfigError``: faber's own record of a killed deploy is the only failure there, and
    ``--rolled-back`` clears that without asking the tool. Optional: without it, ``faber resolve``
    says the tool cannot mark the migration (exit 2), except for that ``--rolled-back``.

    Example: ``faber resolve production --applied 20240103000000-copy.js`` after finishing by hand
    the copy a killed deploy was in returns the state with it applied and none failed.

    Returns the :class:`~faber_core.models.MigrationState` afterwards.
    """


@hookspec
def faber_backup_providers() -> list[BackupProviderInfo]:
    """Declare the backup providers this plugin offers (``environments.<env>.backup.provider``).

    Called when faber collects its plugins. Returns a list of
    :class:`~faber_core.models.BackupProviderInfo`, e.g.
    ``[BackupProviderInfo(name="rds-snapshot", options=RdsBackupSettings)]``: ``options`` is the
    pydantic model of the provider's own keys of an environment's ``backup`` section (beside
    faber's ``provider`` and ``keep_last``), validated before any run and read with
    ``context.backup_options(RdsBackupSettings)``.
    """


@hookspec(firstresult=True)
def faber_backup_create(
    provider: str, context: RunContext, reason: str, migrations: list[tuple[str, str | None]]
) -> BackupRecord:
    """Create a restore point of the environment's database.

    Called before applying migrations where ``backup_before_migrate`` is on, and by
    ``faber backup ENV``. ``migrations`` are the applied migrations (name, checksum) at this
    moment; store them with the backup so a restore can be verified. Never include the
    ``config.database.faber_schema`` schema: a restore must not erase faber's own history.

    Returns the :class:`~faber_core.models.BackupRecord` (status ``available``; your own
    details in ``provider_data``); raise :class:`faber_core.errors.BackupFailed` with
    suggestions when the backup cannot be made, its message from
    :func:`faber_core.support.backups.creation_failed` (it fits the command that runs).
    """


@hookspec(firstresult=True)
def faber_backup_list(provider: str, context: RunContext) -> list[BackupRecord]:
    """List this environment's backups made by faber, newest first (``faber backups ENV``)."""


@hookspec(firstresult=True)
def faber_backup_prune(provider: str, context: RunContext, keep_last: int | None, dry_run: bool) -> BackupPruneOutcome:
    """Delete this environment's backups beyond the newest ``keep_last`` (``faber backups prune ENV``).

    ``keep_last`` is ``--keep N`` or None for the environment's own setting
    (``backup.keep_last``, or the provider's retention rules). Never delete a backup that a
    running faber process is using: the backup a deploy just took, or one being restored. With
    ``dry_run`` delete nothing and report what would go. Providers should apply the same
    retention after each ``faber_backup_create``.

    Returns :class:`~faber_core.models.BackupPruneOutcome`. Optional: a provider that cannot
    prune does not implement it, and faber reports that it does not support pruning.
    """


@hookspec(firstresult=True)
def faber_backup_restore(provider: str, context: RunContext, backup: BackupRecord) -> RestoreOutcome:
    """Bring the environment's database back to ``backup``.

    Called by ``faber rollback ENV`` and by automatic rollback after a failed deploy, while faber
    holds its advisory lock. The database must end as it was at backup time (objects created
    since are removed), except the faber schema. faber verifies the migration bookkeeping
    against ``backup.migrations`` afterwards.

    faber's lock is on a session of faber's own, which an operator or a proxy may end while the
    restore runs: call ``context.restore_committing()`` right before the step that changes the
    database for good (a COMMIT, a rename). It raises :class:`faber_core.errors.LockLost` when the
    lock was lost: undo what the restore made beside the database, name in the error's message what
    could not be undone, and let it propagate (exit 7, ``restore_committed: false``). A restore in
    one transaction asks ``context.restore_committing(in_transaction=True)`` for the check as SQL
    to run inside it just before its COMMIT; when it fails (``check.failed(error_message)``),
    raise ``check.lost()``. Run the SQL whole: after the check, it removes faber's records of deploys
    killed inside a migration that the backup undoes, so that they go as your restore commits::

        check = context.restore_committing(in_transaction=True)
        script = (check.statement + ";\n" if check else "") + "COMMIT;\n"

    Rows the application commits between faber's check of the writes since the backup and your
    restore would be discarded unseen: call ``context.restore_replacing()`` right before the step
    that discards the database's rows, once nothing can commit to them any more (in place: your
    transaction holds every replaced table's lock and you ended the application's sessions, passing
    ``sessions_ended=`` as :func:`faber_core.backup.writes.end_application_sessions` returned), or
    right before a swap makes your copy the database. It raises
    :class:`faber_core.errors.WritesDuringRestore` when the environment's
    ``restore_with_app_writes`` does not let the restore discard them: roll back, drop what you
    made beside the database, and let it propagate (exit 5, the database unchanged).

    Returns :class:`~faber_core.models.RestoreOutcome`; set ``original_unchanged`` and
    ``endpoint`` when you restored beside the database (a new instance) instead of into it.
    Raise :class:`faber_core.errors.RestoreFailed` with the manual recovery steps when it fails
    midway. One raised before ``context.restore_committing()`` must leave the database unchanged:
    faber reports it as the lost lock's (exit 7) when its lock is lost by then, since another run
    may have changed the database meanwhile.

    SIGINT, SIGTERM and SIGHUP arrive as ``KeyboardInterrupt``, wherever the restore is. Catch it, stop
    what the restore runs, and return ``RestoreOutcome.interrupted(backup.id, interrupt,
    committed=...)``: ``True`` when your commit point (a COMMIT, a swap) had passed, so the
    database is exactly the backup; ``False`` when it had not and the database is exactly as
    before; ``None`` when you cannot tell (say where things stand in ``details``), and what to do
    about anything the restore left behind in ``suggestions``. faber then tells the user exactly
    that, and goes on with the interrupt::

        @hookimpl
        def faber_backup_restore(context, backup):
            restore = MyRestore(context, backup)
            try:
                restore.run()
            except KeyboardInterrupt as interrupt:
                restore.abandon()
                return RestoreOutcome.interrupted(backup.id, interrupt, committed=restore.committed())
            return RestoreOutcome(backup_id=backup.id, status="success")

    A provider that lets the interrupt through still works: faber then says the database is on
    one side of the restore or the other, and how to see which.
    """


@hookspec(firstresult=True)
def faber_backup_leftovers(provider: str, context: RunContext) -> list[BackupLeftover]:
    """What killed runs left where this provider keeps its backups, outside the database, and what
    finished runs keep there on purpose for a person to delete.

    Called by ``faber status ENV``, beside what faber finds in the database itself (a swap
    restore's database, an interrupted table swap), and by ``faber migrate ENV --skip-backup``
    where the environment backs up: a backup would have looked (and may have refused to go on),
    so the deploy names what killed runs left as warnings (``result.backup_leftovers``) and goes
    on. Look, never change anything, and be quick: status is run often, so one bounded call (a
    short timeout, no retries) when there is nothing.
    Return :class:`~faber_core.models.BackupLeftover` items (an empty list when there is none),
    e.g. ``[BackupLeftover(name="prod-db-restored-20250124-110000", details="...", commands=[...])]``;
    set ``kept=True`` on what a run that finished keeps on purpose (the database a swap replaced,
    kept for inspection): status lists it as kept, not as something to finish or undo, and a
    deploy does not warn about it;
    raise :class:`faber_core.errors.BackupFailed` when you cannot look (the service cannot be
    reached): status still answers about the database and says this check could not run.
    Optional: a provider whose backups live in files faber manages does not implement it.
    """


@hookspec
def faber_health_check_names() -> list[HealthCheckInfo]:
    """Declare the health checks this plugin runs, by the names ``health_checks`` lists.

    Called before every run: a name in an environment's ``health_checks`` that no plugin
    declares is a configuration error (with the closest declared name as a suggestion), never a
    check silently skipped. Returns e.g. ``[HealthCheckInfo(name="replication_lag",
    description="replica lag under 10 s")]``.
    """


@hookspec
def faber_health_checks(context: RunContext, checks: list[str]) -> list[HealthCheckResult]:
    """Run the named health checks this plugin knows, before and after deploying.

    ``checks`` are the environment's ``health_checks`` (default ``connectivity``, ``schema``,
    ``migrations``). Return a result for each name you implement and ignore the others. The
    built-in PostgreSQL plugin implements ``connectivity`` (and that the server accepts writes)
    and ``schema``; faber itself implements ``migrations`` from the migration status. Query on
    ``context.database.session()``, the run's shared session, rather than a connection of your own.
    """


@hookspec
def faber_audit_event(event: AuditEvent, context: RunContext) -> None:
    """Receive every event of a run, in order: ``run.started``, steps started and finished,
    each migration, the backup, approval, rollback, and ``run.finished`` (whose data holds the
    result document and the exit code).

    For logging and audit plugins. Called synchronously, one implementation at a time; keep it
    fast. An implementation that raises is reported once per run as a warning on stderr and never
    stops the deploy or the other implementations (the built-in audit log still gets the event).
    Event data has already passed through the redactor; ``context`` gives the environment and
    database.
    """
