"""faber as a Python library: every command of the ``faber`` CLI as a function.

    from faber_core import api

    document = api.deploy("production", working_directory="/srv/app", yes=True)
    if document.status == "error":
        print(document.code, document.error, document.recovery.suggestions)
    else:
        print(document.result.migrations_applied)

Each function returns the document ``--json`` prints: a :class:`~faber_core.results.Success`
or an :class:`~faber_core.results.ErrorDocument`. Whatever faber reports as an error (bad
config, a failed health check, a failed migration, an unexpected exception) comes back as an
``ErrorDocument``, never as an exception; ``document.exit_code`` is the exit code the CLI would
use. Documents are redacted: no credential of the run is in them.

Progress lines are written to ``progress`` (a text stream, e.g. ``sys.stderr``) when given;
each of ``listeners`` receives every :class:`~faber_core.models.AuditEvent` of the run.

The CLI is a thin layer over this module: it parses arguments, calls one of these functions and
renders the document, so both take one path through faber.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO, TypeAlias, TypeVar

from faber_core import events
from faber_core.errors import ConfigError, FaberError, print_debug_traceback, validation_problems

if TYPE_CHECKING:
    from faber_core.context import RunContext
    from faber_core.models import AuditEvent
    from faber_core.plugins import Plugins
    from faber_core.request import Request
    from faber_core.results import ErrorDocument, Success
    from faber_core.secrets import Redactor

    Document: TypeAlias = Success | ErrorDocument
    Approver: TypeAlias = Callable[[str], bool]
    Listener: TypeAlias = Callable[[AuditEvent], None]
    Body: TypeAlias = Callable[[RunContext, Plugins], Success]
    from faber_core.fleet import Runner
    from faber_core.fleet_options import FleetOptions
    from faber_core.targets import Target

    FleetBody: TypeAlias = Callable[[Runner, Plugins], Success]

# Importing this module stays cheap (``faber --help`` imports it): each function imports what it runs.

BACKUP_REASON_MAX = 500
"""A bound for a backup's reason: it is kept in every backup's manifest and shown in listings."""
HISTORY_LIMIT_MAX = 100_000
"""A bound for ``history``'s limit (PostgreSQL's LIMIT takes a bigint; a larger number is an error there)."""

DEPLOY = "deploy-migrations"
PREVIEW = "preview-migrations"
STATUS = "migration-status"
HEALTH = "health-check"
BACKUP = "create-backup"
BACKUPS = "list-backups"
PRUNE_BACKUPS = "prune-backups"
ROLLBACK = "rollback"
RESOLVE = "resolve-migration"
HISTORY = "deployment-history"
PLUGINS = "list-plugins"
INIT = "init"
CONFIG_SCHEMA = "config-schema"
REQUEST = "request"
VERSION = "version"


# Commands ------------------------------------------------------------------------------


def deploy(
    environment: str,
    *,
    working_directory: str | Path | None = None,
    dry_run: bool = False,
    skip_backup: bool = False,
    skip_health_check: bool = False,
    yes: bool = False,
    approver: Approver | None = None,
    rehearse: bool = False,
    skip_staging_proof: bool = False,
    concurrency: int | None = None,
    shard: str | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
) -> Document:
    """``faber migrate ENV``: apply pending migrations (with ``dry_run``, preview them).

    ``yes`` approves a protected environment up front; otherwise ``approver(question)`` is asked,
    and without an approver a deploy that needs approval stops with ``APPROVAL_REQUIRED``.

    On a fleet environment (docs/fleet.md) every target not up to date is deployed, at most
    ``concurrency`` at once; ``shard`` (``"I/N"``) takes this process's share of the targets.
    """
    from faber_core.fleet_options import FleetOptions
    from faber_core.workflow import DeployOptions
    from faber_core.workflow import migrate as run_migrate

    options = DeployOptions(
        dry_run=dry_run,
        skip_backup=skip_backup,
        skip_health_check=skip_health_check,
        assume_yes=yes,
        approver=approver,
        rehearse=rehearse,
        skip_staging_proof=skip_staging_proof,
    )
    return run_command(
        PREVIEW if dry_run else DEPLOY,
        environment,
        lambda context, plugins: run_migrate(context, plugins, options),
        working_directory=working_directory,
        progress=progress,
        listeners=listeners,
        fleet_body=lambda runner, plugins: _fleet().deploy(runner, plugins, options),
        fleet_options=FleetOptions(concurrency=concurrency, shard=shard),
    )


def _fleet() -> ModuleType:
    """:mod:`faber_core.fleet`, imported only when a fleet environment runs (start-up of one database's run)."""
    from faber_core import fleet

    return fleet


def status(
    environment: str,
    *,
    working_directory: str | Path | None = None,
    concurrency: int | None = None,
    shard: str | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
) -> Document:
    """``faber status ENV``: applied, pending, failed and edited migrations.

    A migration recorded as failed makes it an error document (``MIGRATION_FAILED``, exit 6)
    with the same ``result``, so CI notices a database that no deploy can go on from. On a fleet
    environment: one row per target (docs/fleet.md).
    """
    from faber_core.audit import unfinished
    from faber_core.errors import MigrationFailed
    from faber_core.fleet_options import FleetOptions
    from faber_core.results import Success
    from faber_core.status_reads import (
        backup_before_failed_migrations,
        drop_invalid_indexes,
        read_backup_leftovers,
        read_leftovers,
        read_past_another_run,
        read_status,
        statements_still_running,
    )

    def body(context: RunContext, plugins: Plugins) -> Success:
        plugins.require_tool(context.tool)
        state = read_past_another_run(context, lambda: read_status(context, plugins, quiet=True))
        result = state.model_dump(
            mode="json", include={"tool", "applied", "pending", "failed", "missing_locally", "checksum_mismatches"}
        )
        leftovers, interrupted = read_leftovers(context)
        result["leftover_databases"] = [leftover.model_dump(mode="json") for leftover in leftovers]
        result["interrupted_restores"] = [restore.model_dump(mode="json") for restore in interrupted]
        backup_leftovers, unchecked = read_backup_leftovers(context, plugins)
        result["backup_leftovers"] = [leftover.model_dump(mode="json") for leftover in backup_leftovers]
        result["backup_leftovers_unchecked"] = unchecked
        result["unfinished_migrations_unchecked"] = unfinished.unchecked(context)
        if state.failed:
            raise MigrationFailed(
                f"{environment} has {len(state.failed)} failed migration(s): {unfinished.failed_names(state)}",
                result=result,
                suggestions=[
                    *statements_still_running(context, state),
                    # A killed CREATE INDEX CONCURRENTLY leaves its index invalid: a leftover to undo.
                    *drop_invalid_indexes(context),
                    f"If its changes are gone (rolled back, or undone by hand): faber resolve {environment} "
                    f"--rolled-back {shlex.quote(state.failed[0])}",
                    f"If you completed it by hand: faber resolve {environment} --applied "
                    f"{shlex.quote(state.failed[0])}",
                    *backup_before_failed_migrations(context, plugins),
                    f"Then deploy again: faber migrate {environment}",
                ],
            )
        return Success(
            operation=STATUS,
            environment=environment,
            result=result,
            message=f"{len(state.applied)} applied, {len(state.pending)} pending",
        )

    return run_command(
        STATUS,
        environment,
        body,
        working_directory=working_directory,
        progress=progress,
        listeners=listeners,
        fleet_body=lambda runner, plugins: _fleet().status(runner),
        fleet_options=FleetOptions(concurrency=concurrency, shard=shard),
    )


def health(
    environment: str,
    *,
    working_directory: str | Path | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
) -> Document:
    """``faber health ENV``: the environment's health checks; ``HEALTH_CHECK_FAILED`` when one fails."""
    from faber_core.errors import HealthCheckFailed
    from faber_core.results import Success
    from faber_core.workflow import health_suggestions, overall_health, run_health_checks

    def body(context: RunContext, plugins: Plugins) -> Success:
        plugins.require_tool(context.tool)
        results, state = run_health_checks(context, plugins)
        checks = [r.model_dump() for r in results]
        status_ = overall_health(results)
        if status_ == "failed":
            failed = [r for r in results if r.status == "failed"]
            raise HealthCheckFailed(
                f"Health check of {environment} failed: "
                + "; ".join(f"{r.name}: {r.details}" if r.details else r.name for r in failed),
                result={"health_check": "failed", "checks": checks, "details": "; ".join(r.details for r in failed)},
                suggestions=health_suggestions(context, plugins, results, state),
            )
        return Success(
            operation=HEALTH,
            environment=environment,
            result={"health_check": status_, "checks": checks},
            message=f"Health check {status_}",
        )

    return run_command(
        HEALTH, environment, body, working_directory=working_directory, progress=progress, listeners=listeners
    )


def backup(
    environment: str,
    *,
    reason: str = "manual backup",
    working_directory: str | Path | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
) -> Document:
    """``faber backup ENV``: a backup now, with ``reason`` (at most ``BACKUP_REASON_MAX`` characters)
    recorded beside it."""
    from faber_core.results import Success
    from faber_core.workflow import deploy_lock, read_status, take_backup

    if len(reason) > BACKUP_REASON_MAX:
        return _invalid_argument(BACKUP, environment, "reason", f"at most {BACKUP_REASON_MAX} characters", len(reason))

    def body(context: RunContext, plugins: Plugins) -> Success:
        plugins.require_tool(context.tool)
        plugins.require_backup_provider(context.settings.backup.provider, context.database.engine.name)
        # Under faber's lock, as a deploy takes its backup: a deploy that committed between the read
        # of the applied migrations and the dump's snapshot would leave an archive holding a
        # migration its manifest does not list, which a rollback to it then fails to verify.
        with deploy_lock(context):
            record = take_backup(context, plugins, reason, read_status(context, plugins, quiet=True))
        return Success(
            operation=BACKUP,
            environment=environment,
            result=record.model_dump(mode="json"),
            message=f"Backup created: {record.id}",
        )

    return run_command(
        BACKUP, environment, body, working_directory=working_directory, progress=progress, listeners=listeners
    )


def backups(
    environment: str,
    *,
    working_directory: str | Path | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
) -> Document:
    """``faber backups ENV``: the environment's backups, newest first."""
    from faber_core.results import Success

    def body(context: RunContext, plugins: Plugins) -> Success:
        plugins.require_backup_provider(context.settings.backup.provider, context.database.engine.name)
        records = plugins.backup_list(context)
        unusable = [r for r in records if r.problem]
        return Success(
            operation=BACKUPS,
            environment=environment,
            result={"backups": [r.model_dump(mode="json") for r in records]},
            message=f"{len(records)} backup(s)" + (f", {len(unusable)} unusable" if unusable else ""),
        )

    return run_command(
        BACKUPS, environment, body, working_directory=working_directory, progress=progress, listeners=listeners
    )


def prune_backups(
    environment: str,
    *,
    keep: int | None = None,
    dry_run: bool = False,
    working_directory: str | Path | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
) -> Document:
    """``faber backups prune ENV``: delete backups beyond the newest ``keep`` (default: ``backup.keep_last``)."""
    from faber_core.workflow import prune_backups as run_prune

    if keep is not None and keep < 1:  # 0 would delete every backup
        return _invalid_argument(PRUNE_BACKUPS, environment, "keep", "at least 1", keep)

    return run_command(
        PRUNE_BACKUPS,
        environment,
        lambda context, plugins: run_prune(context, plugins, keep, dry_run),
        working_directory=working_directory,
        progress=progress,
        listeners=listeners,
    )


def rollback(
    environment: str,
    *,
    to: str | None = None,
    yes: bool = False,
    discard_app_writes: bool = False,
    approver: Approver | None = None,
    working_directory: str | Path | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
) -> Document:
    """``faber rollback ENV``: restore backup ``to`` (default: the newest) and verify the history matches it.

    ``discard_app_writes``: with ``yes``, restore even though others wrote rows since the backup
    where the environment's ``restore_with_app_writes`` is ``refuse``.
    """
    from faber_core.workflow import DeployOptions
    from faber_core.workflow import rollback as run_rollback

    options = DeployOptions(assume_yes=yes, approver=approver, discard_app_writes=discard_app_writes)
    return run_command(
        ROLLBACK,
        environment,
        lambda context, plugins: run_rollback(context, plugins, to, options),
        working_directory=working_directory,
        progress=progress,
        listeners=listeners,
    )


def resolve(
    environment: str,
    *,
    rolled_back: str | None = None,
    applied: str | None = None,
    working_directory: str | Path | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
) -> Document:
    """``faber resolve ENV``: mark a failed migration as rolled back or applied (exactly one of the two)."""
    from faber_core.workflow import resolve as run_resolve

    def body(context: RunContext, plugins: Plugins) -> Success:
        if bool(rolled_back) == bool(applied):
            raise ConfigError("Give exactly one of --rolled-back NAME or --applied NAME")
        if rolled_back:
            return run_resolve(context, plugins, rolled_back, "rolled_back")
        return run_resolve(context, plugins, str(applied), "applied")

    return run_command(
        RESOLVE, environment, body, working_directory=working_directory, progress=progress, listeners=listeners
    )


def history(
    environment: str,
    *,
    limit: int = 20,
    working_directory: str | Path | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
) -> Document:
    """``faber history ENV``: recorded deploys, previews and rollbacks, newest first (``limit``: at most
    that many, from 1 to ``HISTORY_LIMIT_MAX``)."""
    from faber_core.audit.history import read_history
    from faber_core.results import Success

    if not 1 <= limit <= HISTORY_LIMIT_MAX:
        return _invalid_argument(HISTORY, environment, "limit", f"from 1 to {HISTORY_LIMIT_MAX}", limit)

    def body(context: RunContext, plugins: Plugins) -> Success:
        from faber_core.errors import HealthCheckFailed

        engine = context.database.engine
        try:
            runs = read_history(context, limit)
        except engine.operational_error as exc:
            reason = context.redactor.redact(engine.describe_connection_error(exc, context.database))
            raise HealthCheckFailed(
                f"Cannot read the deployment history: {reason}",
                suggestions=[f"Check the database: faber health {environment}"],
            ) from None
        return Success(
            operation=HISTORY,
            environment=environment,
            result={"deployments": runs},
            message=f"{len(runs)} recorded run(s) of {environment}",
        )

    return run_command(
        HISTORY, environment, body, working_directory=working_directory, progress=progress, listeners=listeners
    )


def request(
    document: Request | Mapping[str, Any] | str | bytes,
    *,
    yes: bool = False,
    approver: Approver | None = None,
    working_directory: str | Path | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
) -> Document:
    """Answer the spec's request document (a :class:`~faber_core.request.Request`, a dict or JSON text).

    ``deploy-migrations`` deploys (or previews, with ``"dry_run": true``); ``preview-migrations``
    previews. The request's ``working_directory`` wins over ``working_directory`` here. Approval
    works as for :func:`deploy`. A request that is not valid JSON or not a valid request is a
    ``CONFIG_INVALID`` error document listing the problems.
    """
    try:
        parsed = parse_request(document)
    except ConfigError as error:
        return error_document(error, *_operation_and_environment(document))
    parameters = parsed.parameters
    return deploy(
        parameters.environment,
        working_directory=parameters.working_directory or working_directory,
        dry_run=parsed.dry_run,
        skip_backup=parameters.skip_backup,
        skip_health_check=parameters.skip_health_check,
        yes=yes,
        approver=approver,
        progress=progress,
        listeners=listeners,
    )


def parse_request(document: Request | Mapping[str, Any] | str | bytes) -> Request:
    """The validated request; :class:`ConfigError` (with ``result["problems"]``) when it is not one."""
    import json

    from pydantic import ValidationError

    from faber_core.config import refuse_duplicate_keys
    from faber_core.request import Request

    if isinstance(document, Request):
        return document
    if isinstance(document, (str, bytes)):
        try:
            # A key given twice is refused, as in the config: parsers disagree on which one wins.
            document = json.loads(document, object_pairs_hook=refuse_duplicate_keys)
        except RecursionError:  # a hostile document nested deeper than Python's parser can follow
            raise ConfigError(
                "The request is not valid JSON: it is nested too deeply",
                suggestions=['Send {"operation": "deploy-migrations", "parameters": {"environment": "..."}}'],
            ) from None
        except ValueError as exc:  # not JSON, not UTF-8, or a key given twice
            raise ConfigError(
                f"The request is not valid JSON: {exc}",
                suggestions=['Send {"operation": "deploy-migrations", "parameters": {"environment": "..."}}'],
            ) from None
    try:
        return Request.model_validate(document)
    except ValidationError as exc:
        problems = validation_problems(exc, "(request)", Request)
        raise ConfigError(
            "Invalid request: " + "; ".join(problems),
            result={"problems": problems},
            suggestions=[
                "operation: deploy-migrations or preview-migrations",
                "parameters: environment (required), dry_run, skip_backup, skip_health_check (true/false), "
                "working_directory",
            ],
        ) from None


def _operation_and_environment(document: object) -> tuple[str, str | None]:
    """What an invalid request asked for, as far as it can be told, for its error document."""
    import json

    from faber_core.request import OPERATIONS

    if isinstance(document, (str, bytes)):
        try:
            document = json.loads(document)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or a number too long to convert
            return REQUEST, None
    if not isinstance(document, Mapping):
        return REQUEST, None
    operation = document.get("operation")
    parameters = document.get("parameters")
    environment = parameters.get("environment") if isinstance(parameters, Mapping) else None
    return (
        operation if operation in OPERATIONS else REQUEST,
        environment if isinstance(environment, str) else None,
    )


def plugins(*, working_directory: str | Path | None = None) -> Document:
    """``faber plugins``: installed plugins, their hooks, and the tools and backup providers they offer.

    ``result["missing_hooks"]`` flags each declared tool or provider whose plugin lacks a hook a
    run of it needs (``package``, ``kind``, ``name``, ``missing``). In a project
    (``working_directory``, else found as for every command), ``result["project"]`` also says
    whether its migration tool and its environments' backup providers are installed.
    """
    from faber_core.results import Success

    def body() -> Success:
        from faber_core.config import config_file
        from faber_core.context import find_project_dir
        from faber_core.plugins import Plugins

        found = Plugins()
        tools = {name: declared.package for name, declared in found.tools().items()}
        providers = {name: declared.package for name, declared in found.backup_providers().items()}
        result: dict[str, object] = {
            "plugins": found.describe(),
            "migration_tools": tools,
            "backup_providers": providers,
            "health_checks": {name: declared.package for name, declared in found.health_check_names().items()},
            "missing_hooks": found.missing_hooks(),
        }
        project = find_project_dir(working_directory, required=False)
        if project is not None and config_file(project).is_file():
            result["project"] = _project_plugins(project, tools, providers)
        return Success(operation=PLUGINS, result=result, message="Installed plugins")

    return run_guarded(PLUGINS, None, body)


def _project_plugins(project: Path, tools: dict[str, str], providers: dict[str, str]) -> dict[str, object]:
    from faber_core.config import load_config

    config = load_config(project)
    tool = config.database.migration_tool
    wanted = sorted({settings.backup.provider for settings in config.database.environments.values()} | {"pg_dump"})
    return {
        "directory": str(project),
        "migration_tool": tool,
        "migration_tool_installed": tool in tools,
        "backup_providers": {name: name in providers for name in wanted},
    }


def init(tool: str | None = None, *, force: bool = False, working_directory: str | Path | None = None) -> Document:
    """``faber init``: a starter config (dev, staging, production) and, in a project that has none of
    the tool's files yet, what the tool needs for an example migration.

    ``tool`` None: the one the project's package.json or files show (its existing migrations folder or
    data source is what the config points at), else Prisma. Written in ``working_directory`` (created
    if missing), else ``FABER_DB_CWD``, else the current directory.
    """
    from faber_core.results import Success

    def body() -> Success:
        from faber_core.context import resolve_project_dir
        from faber_core.scaffold import MYSQL_DEV_URL_ENV, NEXT_STEPS, make_project_dir, write_starter_project

        if working_directory is not None and not Path(working_directory).exists():  # a file: refused below
            make_project_dir(Path(working_directory))
        starter = write_starter_project(resolve_project_dir(working_directory, discover=False), tool, force=force)
        return Success(
            operation=INIT,
            result={
                "tool": starter.tool,
                "written": starter.written,
                "found": starter.found,
                # A project with its own files has its packages already: the starter's install step is not its next one.
                "next": (
                    f"export {MYSQL_DEV_URL_ENV}=<a MySQL or MariaDB database URL for dev>, then faber migrate dev"
                    if starter.mysql
                    else "faber migrate dev"
                    if starter.found
                    else NEXT_STEPS[starter.tool]
                ),
            },
            message=f"Project initialised for {starter.tool}",
        )

    return run_guarded(INIT, None, body)


def config_schema(*, working_directory: str | Path | None = None) -> Document:
    """``faber config schema``: the JSON Schema of the config file, with the options of every
    installed plugin's tools and backup providers (the same for every project)."""
    from faber_core.results import Success

    def body() -> Success:
        from faber_core.config import CONFIG_PATH
        from faber_core.context import resolve_project_dir
        from faber_core.plugins import Plugins

        if working_directory is not None:
            resolve_project_dir(working_directory)
        return Success(
            operation=CONFIG_SCHEMA,
            result=Plugins().config_schema(),
            message=f"JSON Schema of {CONFIG_PATH}",
        )

    return run_guarded(CONFIG_SCHEMA, None, body)


def _invalid_argument(operation: str, environment: str, name: str, bound: str, given: object) -> Document:
    """The error document of an argument outside the bounds the CLI puts on its option, refused before
    anything runs."""
    return error_document(
        ConfigError(f"Invalid {name}: {bound} (got {given})", suggestions=[f"Call it again with {name} {bound}"]),
        operation,
        environment,
    )


def error_document(error: FaberError, operation: str, environment: str | None = None) -> Document:
    """The error document of ``error`` raised outside a run (e.g. a command line or request that did not parse)."""
    from faber_core.results import ErrorDocument
    from faber_core.secrets import Redactor

    return redacted(ErrorDocument.from_error(error, operation=operation, environment=environment), Redactor())


# Running a command ---------------------------------------------------------------------


def run_command(
    operation: str,
    environment: str,
    body: Body,
    *,
    working_directory: str | Path | None = None,
    progress: TextIO | None = None,
    listeners: Iterable[Listener] = (),
    fleet_body: FleetBody | None = None,
    fleet_options: FleetOptions | None = None,
) -> Document:
    """Open ``environment``'s context in the project, run ``body`` on it, and return its document.

    A command that also runs on a whole fleet (docs/fleet.md) passes ``fleet_body``: on a fleet
    environment it runs instead of ``body``, running commands on the targets through its runner.
    """
    from faber_core.context import resolve_project_dir
    from faber_core.fleet_options import FleetOptions, fleet_settings
    from faber_core.plugins import Plugins

    def opened(run: _Run) -> Success:
        run.preparing = True
        project = resolve_project_dir(working_directory)
        plugins_ = Plugins()
        options = fleet_options or FleetOptions()
        settings = fleet_settings(project, environment, options) if fleet_body else None
        if settings is None or fleet_body is None:
            return _run_body(run, project, plugins_, operation, environment, body, progress, listeners)
        plugins_.require_fleet_backup(environment, settings)  # before any target is touched
        run.preparing = False
        fleet = _fleet()
        # The run's redactor learns every target's URL before the first target starts.
        found = fleet.open_fleet(project, environment, settings, run.redactor, options)
        once: dict[Hashable, Any] = {}  # RunContext.once: the config, the git commit, ... worked out once per fleet

        def run_target(operation_: str, target: Target, body_: Body) -> Document:
            name = f"{environment}/{target.name}"
            return _execute(
                operation_,
                name,
                lambda run_: _run_body(
                    run_,
                    project,
                    plugins_,
                    operation_,
                    name,
                    body_,
                    None,
                    listeners,
                    target=target,
                    fleet_url_variables=found.url_variables,
                    once=once,
                ),
                redactor=run.redactor,
            )

        return fleet_body(fleet.Runner(found, run_target, fleet.FleetProgress(progress, run.redactor)), plugins_)

    return _execute(operation, environment, opened)


def _run_body(
    run: _Run,
    project: Path,
    plugins: Plugins,
    operation: str,
    environment: str,
    body: Body,
    progress: TextIO | None,
    listeners: Iterable[Listener],
    target: Target | None = None,
    fleet_url_variables: Collection[str] = (),
    once: dict[Hashable, Any] | None = None,
) -> Success:
    from faber_core.context import open_context
    from faber_core.render import ProgressPrinter

    run.preparing = True
    # The run's redactor, so that errors raised while the URL is parsed are masked too.
    run.context = context = open_context(
        project,
        environment,
        operation,
        redactor=run.redactor,
        target=target,
        fleet_url_variables=fleet_url_variables,
        once=once,
    )
    plugins.check_config(context)  # every name the config uses is installed, before anything runs
    if progress is not None:
        context.listeners.append(ProgressPrinter(progress, context.redactor))
    context.listeners += [*listeners, plugins.audit_listener(context)]
    run.preparing = False
    return body(context, plugins)


def run_guarded(operation: str, environment: str | None, body: Callable[[], Success]) -> Document:
    """Run ``body``, which needs no environment, and turn its failures into an error document."""
    return _execute(operation, environment, lambda run: body())


@dataclass
class _Run:
    redactor: Redactor
    context: RunContext | None = None
    preparing: bool = False
    """Loading the plugins, reading the config, opening the context: nothing done yet that an
    interrupt could leave half done."""


def _execute(
    operation: str, environment: str | None, action: Callable[[_Run], Success], redactor: Redactor | None = None
) -> Document:
    """Run ``action`` under the command's span; every failure becomes an error document with its exit code.

    ``redactor``: a fleet's, shared by its targets (it knows every target's URL).
    """
    from faber_core.errors import Interrupted
    from faber_core.interrupts import held_while_reporting, raise_held, signal_name, sigterm_as_interrupt, unsettle
    from faber_core.results import ErrorDocument
    from faber_core.secrets import Redactor
    from faber_core.telemetry import command_span, record_outcome

    run = _Run(redactor or Redactor())
    with command_span(operation, environment, run.redactor) as span, sigterm_as_interrupt():
        try:
            try:
                raise_held()  # one that arrived while faber started (faber_core/command.py)
            except KeyboardInterrupt as interrupt:
                raise Interrupted.by(interrupt, "as faber started: nothing was done") from None
            document: Document = action(run)
        except FaberError as exc:
            bug = _unexpected_cause(exc)
            if bug is not None:
                print_debug_traceback(bug, run.redactor)
            document = ErrorDocument.from_error(exc, operation=operation, environment=environment, tool=_tool(run))
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (faber_core/interrupts.py)
            # A deploy interrupted after its backup reports through its failure path, a rollback
            # stopped once its restore began through the restore's outcome (Interrupted errors,
            # above), and a run whose outcome is decided holds the signal (interrupts.settle):
            # this is an interrupt anywhere else, never one after a restore committed.
            if run.preparing:
                stopped = Interrupted.by(interrupt, "before the run began: nothing was done")
            else:
                stopped = Interrupted.by(
                    interrupt,
                    suggestions=[f"Check the state with: faber status {environment}"] if environment else [],
                )
            document = ErrorDocument.from_error(
                stopped,
                operation=operation,
                environment=environment,
                tool=_tool(run),
            )
        except Exception as exc:  # a bug or an unexpected failure: still one structured document
            print_debug_traceback(exc, run.redactor)
            document = ErrorDocument.from_error(
                FaberError(
                    f"Unexpected error: {type(exc).__name__}: {exc}",
                    suggestions=["Re-run with FABER_DEBUG=1 for a traceback", "Please report this as a bug"],
                ),
                operation=operation,
                environment=environment,
                tool=_tool(run),
            )
        # A settled run (a restore committed and verified, a failed deploy's report built) held
        # the signal: the document is the outcome it had reached.
        _warn_dropped(unsettle())
        if run.context is not None:
            try:
                run.context.emit(
                    events.RUN_FINISHED,
                    status=document.status,
                    exit_code=document.exit_code,
                    document=document.model_dump(mode="json"),
                )
            except KeyboardInterrupt as interrupt:
                # The work is over and the document says how it ended: only the run's records (its
                # deployment-history row) may be cut short, which is no reason to report otherwise.
                import sys

                sys.stderr.write(
                    f"warning: {signal_name(interrupt)} arrived while the run was being recorded: its deployment "
                    "history row may be missing\n"
                )
            finally:
                # The run's last event is out: what hooks kept for it can go (a Node runner stopped,
                # which takes a moment). A signal meanwhile is dropped: raised, it would end faber
                # with exit 130 and without the document of the run that is over.
                with held_while_reporting() as dropped:
                    run.context.close()
                _warn_dropped(dropped.signal)
        with held_while_reporting() as dropped:
            record_outcome(span, document.exit_code, document, run.redactor)
        _warn_dropped(dropped.signal)
    return redacted(document, run.redactor)


def _warn_dropped(signal: str | None) -> None:
    """Say on stderr that ``signal`` (``SIGTERM``) arrived once the run's outcome was decided and
    was dropped: it stopped nothing, and the run's document is its outcome's."""
    if signal is not None:
        import sys

        sys.stderr.write(
            f"warning: {signal} arrived once the run's outcome was decided: it stopped nothing, and the "
            "document reports that outcome\n"
        )


def _unexpected_cause(error: FaberError) -> BaseException | None:
    """The unexpected exception behind an ``INTERNAL_ERROR`` that a deploy's failure path reported
    (a hook that raised): ``FABER_DEBUG=1`` shows its traceback as for any other bug."""
    cause = error.__cause__
    if error.code == "INTERNAL_ERROR" and isinstance(cause, Exception) and not isinstance(cause, FaberError):
        return cause
    return None


def _tool(run: _Run) -> str | None:
    return run.context.tool if run.context else None


Value = TypeVar("Value")


def redacted(value: Value, redactor: Redactor) -> Value:
    """``value`` (a document, model, dict, list or string) with every string redacted: a copy of
    what redaction changed, and the very parts it left as they were (a deploy's document lists
    every migration and finding, which a copy of each would cost more than the redaction)."""
    from pydantic import BaseModel

    if isinstance(value, str):
        text = redactor.redact(value)
        return value if text == value else text  # type: ignore[return-value]
    if isinstance(value, BaseModel):
        changed = {}
        for name in [*type(value).model_fields, *(value.model_extra or {})]:
            item = getattr(value, name)
            if (redacted_item := _redacted_field(name, item, redactor)) is not item:
                changed[name] = redacted_item
        return value.model_copy(update=changed) if changed else value
    if isinstance(value, dict):
        pairs = [
            (key, item, _redacted_key(key, redactor), _redacted_field(key, item, redactor))
            for key, item in value.items()
        ]
        if all(new_key is key and new_item is item for key, item, new_key, new_item in pairs):
            return value
        return {new_key: new_item for _, _, new_key, new_item in pairs}  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        items = [redacted(item, redactor) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return type(value)(items)  # type: ignore[return-value]
    return value


def _redacted_field(key: Any, item: Value, redactor: Redactor) -> Value:
    """The value of a model's field or a dict's item: a text as :meth:`Redactor.redact_field` gives
    it (a field's fixed word stays), anything else as :func:`redacted` does."""
    if isinstance(key, str) and isinstance(item, str):
        text = redactor.redact_field(key, item)
        return item if text == item else text  # type: ignore[return-value]
    return redacted(item, redactor)


def _redacted_key(key: Any, redactor: Redactor) -> Any:
    """A dict's key as :meth:`Redactor.redact_key` gives it: a name stays as it is, the same object."""
    if not isinstance(key, str):
        return key
    text = redactor.redact_key(key)
    return key if text == key else text
