"""The ``faber`` command: parse arguments, call the workflow, render its result. Nothing else.

Exit codes (docs/exit-codes.md): 0 success, 1 internal error, 2 invalid input or config,
3 health check failed, 4 backup failed, 5 approval missing, 6 migration failed,
7 another run holds the lock, 8 restore failed, 9 lint blocked, 10 staging proof missing,
11 preflight found blocking sessions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from typer.core import TyperGroup

from faber_core import __version__
from faber_core.errors import EXIT_CODES, FaberError, exit_code_for

if TYPE_CHECKING:
    from faber_core.context import RunContext
    from faber_core.plugins import Plugins
    from faber_core.results import Success
    from faber_core.secrets import Redactor

app = typer.Typer(
    name="faber",
    help="Deploy database migrations safely: health checks, backups, approval, apply, verify, rollback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect faber's configuration format.", no_args_is_help=True)
app.add_typer(config_app, name="config")

Environment = Annotated[str, typer.Argument(help="Environment name from the config, e.g. dev, staging, production.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]
CwdOption = Annotated[
    Path | None,
    typer.Option("--cwd", help="Project directory (default: $FABER_DB_CWD, else the current directory)."),
]
YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Approve without a prompt (for CI).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"faber {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Deploy database migrations safely across environments."""


def _approver() -> Callable[[str], bool] | None:
    if not sys.stdin.isatty():
        return None
    return lambda question: typer.confirm(question, default=False, err=True)


def _print_traceback(exc: BaseException, redactor: Redactor) -> None:
    """``FABER_DEBUG=1``: the traceback on stderr, through the run's redactor like every output."""
    import traceback

    sys.stderr.write(redactor.redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))


def _run(
    operation: str,
    environment: str | None,
    json_output: bool,
    cwd: Path | None,
    body: Callable[[RunContext, Plugins], Success],
) -> None:
    """Build the context, run ``body``, render the result or the error, exit with its code."""
    from faber_core.context import open_context, resolve_project_dir
    from faber_core.plugins import Plugins
    from faber_core.render import ProgressPrinter, render_human, render_json
    from faber_core.results import ErrorDocument
    from faber_core.secrets import Redactor
    from faber_core.telemetry import command_span, record_outcome

    redactor = Redactor()
    tool = None
    context = None
    with command_span(operation, environment) as span:
        try:
            project = resolve_project_dir(cwd)
            plugins = Plugins()
            context = open_context(project, environment or "", operation, redactor=redactor)
            tool = context.tool
            context.listeners += [ProgressPrinter(sys.stderr, redactor), plugins.audit_listener(context)]
            document = body(context, plugins)
            code = 0
        except FaberError as exc:
            document = ErrorDocument.from_error(exc, operation=operation, environment=environment, tool=tool)
            code = exit_code_for(exc.code)
        except KeyboardInterrupt:
            document = ErrorDocument.from_error(
                FaberError("Interrupted", suggestions=[f"Check the state with: faber status {environment}"]),
                operation=operation,
                environment=environment,
            )
            code = 130
        except Exception as exc:  # a bug or an unexpected failure: still one structured document
            if os.environ.get("FABER_DEBUG"):
                _print_traceback(exc, redactor)
            document = ErrorDocument.from_error(
                FaberError(
                    f"Unexpected error: {type(exc).__name__}: {exc}",
                    suggestions=["Re-run with FABER_DEBUG=1 for a traceback", "Please report this as a bug"],
                ),
                operation=operation,
                environment=environment,
                tool=tool,
            )
            code = EXIT_CODES["INTERNAL_ERROR"]
        if context is not None:
            context.emit(
                "run.finished", status=document.status, exit_code=code, document=document.model_dump(mode="json")
            )
        record_outcome(span, code, document, redactor)
    render = render_json if json_output else render_human
    typer.echo(render(document, redactor))
    raise typer.Exit(code)


@app.command()
def migrate(
    environment: Environment,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Preview pending migrations and their SQL; change nothing.")
    ] = False,
    skip_backup: Annotated[
        bool, typer.Option("--skip-backup", help="Do not back up first (NOT recommended for protected environments).")
    ] = False,
    skip_health_check: Annotated[
        bool, typer.Option("--skip-health-check", help="Skip the health checks before and after.")
    ] = False,
    yes: YesFlag = False,
    rehearse: Annotated[
        bool,
        typer.Option(
            "--rehearse",
            help="With --dry-run: measure each migration on a throwaway copy of the database instead of estimating.",
        ),
    ] = False,
    skip_staging_proof: Annotated[
        bool,
        typer.Option(
            "--skip-staging-proof",
            help="Deploy migrations not proven in the requires_success_in environment (recorded in the audit trail).",
        ),
    ] = False,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Apply pending migrations to ENVIRONMENT.

    Health check, backup (protected environments), approval, apply each migration, health check again, verify. On failure in an auto-rollback environment the backup is restored and verified.

    Exit codes: 0 ok, 2 invalid input/config, 3 health check failed, 4 backup failed, 5 approval missing, 6 migration failed, 7 locked, 8 restore failed, 9 lint blocked, 10 staging proof missing, 11 preflight blocked.
    """  # noqa: E501
    from faber_core.workflow import DEPLOY, PREVIEW, DeployOptions
    from faber_core.workflow import migrate as run_migrate

    options = DeployOptions(
        dry_run=dry_run,
        skip_backup=skip_backup,
        skip_health_check=skip_health_check,
        assume_yes=yes,
        approver=_approver(),
        rehearse=rehearse,
        skip_staging_proof=skip_staging_proof,
    )
    _run(
        PREVIEW if dry_run else DEPLOY,
        environment,
        json_output,
        cwd,
        lambda context, plugins: run_migrate(context, plugins, options),
    )


@app.command()
def status(environment: Environment, json_output: JsonFlag = False, cwd: CwdOption = None) -> None:
    """Show applied, pending, failed and edited migrations of ENVIRONMENT."""
    from faber_core.results import Success
    from faber_core.workflow import read_status

    def body(context: RunContext, plugins: Plugins) -> Success:
        plugins.require_tool(context.tool)
        state = read_status(context, plugins, quiet=True)
        return Success(
            operation="migration-status",
            environment=environment,
            result=state.model_dump(
                mode="json", include={"tool", "applied", "pending", "failed", "missing_locally", "checksum_mismatches"}
            ),
            message=f"{len(state.applied)} applied, {len(state.pending)} pending",
        )

    _run("migration-status", environment, json_output, cwd, body)


@app.command()
def health(environment: Environment, json_output: JsonFlag = False, cwd: CwdOption = None) -> None:
    """Run ENVIRONMENT's health checks (connectivity, schema, migrations). Exit 3 when one fails."""
    from faber_core.errors import HealthCheckFailed
    from faber_core.results import Success
    from faber_core.workflow import overall_health, run_health_checks

    def body(context: RunContext, plugins: Plugins) -> Success:
        plugins.require_tool(context.tool)
        results = run_health_checks(context, plugins)
        checks = [r.model_dump() for r in results]
        status_ = overall_health(results)
        if status_ == "failed":
            raise HealthCheckFailed(
                "Health check failed",
                result={
                    "health_check": "failed",
                    "checks": checks,
                    "details": "; ".join(r.details for r in results if r.status == "failed"),
                },
                suggestions=[f"Inspect migrations with: faber status {environment}"],
            )
        return Success(
            operation="health-check",
            environment=environment,
            result={"health_check": status_, "checks": checks},
            message=f"Health check {status_}",
        )

    _run("health-check", environment, json_output, cwd, body)


@app.command()
def backup(
    environment: Environment,
    reason: Annotated[str, typer.Option("--reason", help="Why, recorded with the backup.")] = "manual backup",
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Create a backup of ENVIRONMENT's database now."""
    from faber_core.results import Success
    from faber_core.workflow import read_status, take_backup

    def body(context: RunContext, plugins: Plugins) -> Success:
        plugins.require_tool(context.tool)
        plugins.require_backup_provider(context.settings.backup.provider)
        record = take_backup(context, plugins, reason, read_status(context, plugins, quiet=True))
        return Success(
            operation="create-backup",
            environment=environment,
            result=record.model_dump(mode="json"),
            message=f"Backup created: {record.id}",
        )

    _run("create-backup", environment, json_output, cwd, body)


class _BackupsGroup(TyperGroup):
    """``faber backups ENV`` lists (the ``list`` subcommand is implied); ``faber backups prune ENV`` prunes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


backups_app = typer.Typer(
    cls=_BackupsGroup,
    help="List (faber backups ENV) or prune (faber backups prune ENV) an environment's backups.",
    no_args_is_help=True,
)
app.add_typer(backups_app, name="backups")


@backups_app.command("list")
def backups(environment: Environment, json_output: JsonFlag = False, cwd: CwdOption = None) -> None:
    """List ENVIRONMENT's backups, newest first (`faber backups ENV` does the same).

    A backup whose manifest cannot be read is listed with status "unreadable manifest" and its problem; it cannot be restored until the manifest is repaired.
    """  # noqa: E501
    from faber_core.results import Success

    def body(context: RunContext, plugins: Plugins) -> Success:
        plugins.require_backup_provider(context.settings.backup.provider)
        records = plugins.backup_list(context)
        unusable = [r for r in records if r.problem]
        return Success(
            operation="list-backups",
            environment=environment,
            result={"backups": [r.model_dump(mode="json") for r in records]},
            message=f"{len(records)} backup(s)" + (f", {len(unusable)} unusable" if unusable else ""),
        )

    _run("list-backups", environment, json_output, cwd, body)


@backups_app.command("prune")
def backups_prune(
    environment: Environment,
    keep: Annotated[
        int | None,
        typer.Option("--keep", min=1, help="Keep the newest N backups (default: the environment's backup.keep_last)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be deleted; delete nothing.")] = False,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Delete ENVIRONMENT's backups beyond the newest N.

    Backups a running deploy or restore uses are kept, and so are backups whose manifest cannot be read (listed as unreadable, for a person to look at). The same retention (backup.keep_last, default 10) runs after each backup.
    """  # noqa: E501
    from faber_core.workflow import prune_backups

    _run(
        "prune-backups",
        environment,
        json_output,
        cwd,
        lambda context, plugins: prune_backups(context, plugins, keep, dry_run),
    )


@app.command()
def rollback(
    environment: Environment,
    to: Annotated[str | None, typer.Option("--to", help="Backup id (default: the newest).")] = None,
    yes: YesFlag = False,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Restore ENVIRONMENT from a backup and verify the migration history matches it."""
    from faber_core.workflow import DeployOptions
    from faber_core.workflow import rollback as run_rollback

    options = DeployOptions(assume_yes=yes, approver=_approver())
    _run(
        "rollback", environment, json_output, cwd, lambda context, plugins: run_rollback(context, plugins, to, options)
    )


@app.command()
def resolve(
    environment: Environment,
    rolled_back: Annotated[
        str | None,
        typer.Option("--rolled-back", help="NAME failed and its changes are gone: apply it again next time."),
    ] = None,
    applied: Annotated[
        str | None, typer.Option("--applied", help="NAME failed but was completed by hand: never apply it.")
    ] = None,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Mark a failed migration as rolled back or applied after repairing the database by hand."""
    from faber_core.errors import ConfigError
    from faber_core.workflow import resolve as run_resolve

    def body(context: RunContext, plugins: Plugins) -> Success:
        if bool(rolled_back) == bool(applied):
            raise ConfigError("Give exactly one of --rolled-back NAME or --applied NAME")
        name, resolution = (rolled_back, "rolled_back") if rolled_back else (applied, "applied")
        return run_resolve(context, plugins, name, resolution)

    _run("resolve-migration", environment, json_output, cwd, body)


@app.command()
def history(
    environment: Environment,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most N runs.")] = 20,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Show ENVIRONMENT's recorded deploys, previews and rollbacks, newest first (from the database)."""
    from faber_core.audit.history import read_history
    from faber_core.results import Success

    def body(context: RunContext, plugins: Plugins) -> Success:
        import psycopg

        from faber_core.errors import HealthCheckFailed
        from faber_core.postgres.health import describe_connection_error

        try:
            runs = read_history(context, limit)
        except psycopg.OperationalError as exc:
            reason = context.redactor.redact(describe_connection_error(exc))
            raise HealthCheckFailed(
                f"Cannot read the deployment history: {reason}",
                suggestions=[f"Check the database: faber health {environment}"],
            ) from None
        return Success(
            operation="deployment-history",
            environment=environment,
            result={"deployments": runs},
            message=f"{len(runs)} recorded run(s) of {environment}",
        )

    _run("deployment-history", environment, json_output, cwd, body)


@app.command()
def plugins(json_output: JsonFlag = False) -> None:
    """List installed plugins, the hooks they implement, and the tools and backup providers they offer."""
    import json

    from faber_core.plugins import Plugins

    found = Plugins()
    try:
        report = {
            "plugins": found.describe(),
            "migration_tools": {name: owner for name, (_, owner) in found.tools().items()},
            "backup_providers": {name: owner for name, (_, owner) in found.backup_providers().items()},
        }
    except FaberError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(exit_code_for(exc.code)) from None
    if json_output:
        typer.echo(json.dumps(report, indent=2))
        return
    for row in report["plugins"]:
        typer.echo(f"{row['name']}  [{row['package']}]  hooks: {', '.join(row['hooks'])}")
    typer.echo(f"migration tools: {', '.join(sorted(report['migration_tools'])) or 'none'}")
    typer.echo(f"backup providers: {', '.join(sorted(report['backup_providers']))}")


@app.command()
def init(
    tool: Annotated[str, typer.Option("--tool", help="Migration tool: prisma, typeorm or sequelize.")] = "prisma",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config.")] = False,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Write a starter config (dev on the embedded PostgreSQL, staging, production) and an example migration."""
    import json

    from faber_core.context import resolve_project_dir
    from faber_core.scaffold import write_starter_project

    try:
        if cwd is not None:
            cwd.mkdir(parents=True, exist_ok=True)
        written = write_starter_project(resolve_project_dir(cwd), tool, force=force)
    except FaberError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        for suggestion in exc.suggestions:
            typer.echo(f"  - {suggestion}", err=True)
        raise typer.Exit(exit_code_for(exc.code)) from None
    if json_output:
        typer.echo(
            json.dumps(
                {
                    "status": "success",
                    "operation": "init",
                    "result": {"written": written},
                    "message": "Project initialised",
                },
                indent=2,
            )
        )
        return
    for path in written:
        typer.echo(f"✓ wrote {path}")
    typer.echo("Next: faber migrate dev")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the config file."""
    import json

    from faber_core.config import FaberConfig

    typer.echo(json.dumps(FaberConfig.model_json_schema(), indent=2))


def main() -> None:
    app()
