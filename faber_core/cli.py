"""The ``faber`` command: parse arguments, call :mod:`faber_core.api`, render the document. Nothing else.

Exit codes (docs/exit-codes.md): 0 success, 1 internal error, 2 invalid input or config,
3 health check failed, 4 backup failed, 5 approval missing, 6 migration failed,
7 another run holds (or took) the lock, 8 restore failed, 9 lint blocked, 10 staging proof missing,
11 preflight found blocking sessions, 130 interrupted (SIGINT, SIGTERM or SIGHUP).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, NoReturn, TextIO

import typer
import typer.main
from typer.core import TyperArgument, TyperCommand, TyperGroup

from faber_core import __version__, api

if TYPE_CHECKING:
    from faber_core.api import Document


class _PlainFlags:
    """Help shows no ``<bool>`` after plain on/off flags: they take no value."""

    def get_params(self, ctx: typer.Context) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_bool_flag", False):
                param.metavar = ""
        return params


class _Command(_PlainFlags, TyperCommand):
    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        """Usage lines name arguments as ``faber migrate [OPTIONS] ENVIRONMENT``, optional ones in brackets."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class _Group(_PlainFlags, TyperGroup):
    pass


app = typer.Typer(
    name="faber",
    cls=_Group,
    help="Deploy database migrations safely: health checks, backups, approval, apply, verify, rollback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(cls=_Group, help="Inspect faber's configuration format.", no_args_is_help=True)
app.add_typer(config_app, name="config")
command = partial(app.command, cls=_Command)

Environment = Annotated[
    str,
    typer.Argument(metavar="ENVIRONMENT", help="Environment name from the config, e.g. dev, staging, production."),
]
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print exactly one JSON document on stdout (errors too); progress on stderr.")
]
CwdOption = Annotated[
    Path | None,
    typer.Option(
        "--cwd",
        metavar="DIR",
        help="Project directory (default: $FABER_DB_CWD, else the nearest directory holding the config, "
        "from the current one up).",
    ),
]


def _bounded_reason(value: str) -> str:
    """The API refuses a longer reason too; here it is a usage error, with the usage."""
    if len(value) > api.BACKUP_REASON_MAX:
        raise typer.BadParameter(f"at most {api.BACKUP_REASON_MAX} characters (got {len(value)})")
    return value


YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Approve without a prompt (for CI).")]
ConcurrencyOption = Annotated[
    int | None,
    typer.Option(
        "--concurrency",
        min=1,
        metavar="N",
        help="Fleet environments: targets at once (default 4; docs/fleet.md).",
    ),
]
ShardOption = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="I/N",
        help="Fleet environments: take shard I of N of the targets (default: $JOB_COMPLETION_INDEX of "
        "$JOB_COMPLETIONS in a Kubernetes Indexed Job, else all).",
    ),
]


def _version(ctx: typer.Context, value: bool) -> None:
    if not value:
        return
    if ctx.params.get("json_output"):
        from faber_core.results import Success

        version = Success(operation=api.VERSION, result={"version": __version__}, message=f"faber {__version__}")
        typer.echo(_render(version, json_output=True), file=_document_stdout)
    else:
        typer.echo(f"faber {__version__}")
    raise typer.Exit()


@app.callback()
def main_callback(
    # Eager, so that --version (processed after the eager options) knows of it wherever it stands.
    json_output: Annotated[
        bool, typer.Option("--json", is_eager=True, help="With --version: print one JSON document.")
    ] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, help="Show the version.")] = False,
) -> None:
    """Deploy database migrations safely across environments."""
    if json_output:
        # Taken by faber itself, it would not reach the command, which would then print no JSON.
        raise typer.BadParameter("put it after the command: faber COMMAND ... --json", param_hint="'--json'")


def _approver() -> Callable[[str], bool] | None:
    """A prompt on the terminal; None without one. End of input (Ctrl-D) at the prompt is a no."""
    if not sys.stdin.isatty():
        return None

    def ask(question: str) -> bool:
        try:
            return typer.confirm(question, default=False, err=True)
        except typer.Abort as abort:
            # Click turns an interrupt at the prompt into Abort, as it does end of input: a
            # SIGTERM or Ctrl-C there stops the run (INTERRUPTED), it is no answer.
            if isinstance(abort.__context__, KeyboardInterrupt):
                raise abort.__context__ from None
            return False

    return ask


_document_stdout: TextIO | None = None
"""With ``--json``, the process's stdout, which the document alone reaches (:func:`main`)."""


def _finish(document: Document, json_output: bool) -> NoReturn:
    """Print the document (human summary or one JSON document) and exit with its code.

    The command's work is over: SIGTERM, SIGINT and SIGHUP, which can stop nothing now, are
    ignored while it is printed, so a signal at that moment does not end faber without its document.
    """
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    try:
        typer.echo(_render(document, json_output), file=_document_stdout if json_output else None)
    except OSError:
        # Its reader is gone (a closed pipe, a hung-up terminal): the run's history row and audit
        # log hold its outcome. Exit with the run's code, not the print's (nor Python's for
        # output it cannot flush at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if json_output:  # after the document, which nothing in the end message can then cost
        _end_message_on_stderr(document)
    raise typer.Exit(document.exit_code)


def _end_message_on_stderr(document: Document) -> None:
    """With ``--json``, the end message (``✅ COMPLETED`` or ``❌ FAILED`` and the recovery advice)
    goes to stderr with the progress: a CI log shows how the run ended, stdout holds the document."""
    from faber_core.render import render_human
    from faber_core.secrets import Redactor

    try:
        typer.echo(render_human(document, Redactor()), err=True)
    except OSError:
        pass  # stderr's reader is gone: the document still goes to stdout


def _render(document: Document, json_output: bool) -> str:
    from faber_core.render import render_human, render_json
    from faber_core.secrets import Redactor

    return (render_json if json_output else render_human)(document, Redactor())


@command()
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
    concurrency: ConcurrencyOption = None,
    shard: ShardOption = None,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Apply pending migrations to ENVIRONMENT.

    Health check, approval and backup (protected environments), apply each migration, health check again, verify. On failure in an auto-rollback environment the backup is restored and verified. On a fleet environment (targets in the config), every target not up to date, wave by wave (docs/fleet.md).

    Exit codes: 0 ok, 2 invalid input/config, 3 health check failed, 4 backup failed, 5 approval missing, 6 migration failed, 7 locked, 8 restore failed, 9 lint blocked, 10 staging proof missing, 11 preflight blocked, 130 interrupted.
    """  # noqa: E501
    document = api.deploy(
        environment,
        working_directory=cwd,
        dry_run=dry_run,
        skip_backup=skip_backup,
        skip_health_check=skip_health_check,
        yes=yes,
        approver=_approver(),
        rehearse=rehearse,
        skip_staging_proof=skip_staging_proof,
        concurrency=concurrency,
        shard=shard,
        progress=sys.stderr,
    )
    _finish(document, json_output)


@command()
def status(
    environment: Environment,
    concurrency: ConcurrencyOption = None,
    shard: ShardOption = None,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Show applied, pending, failed and edited migrations of ENVIRONMENT (of a fleet: one row per target)."""
    document = api.status(environment, working_directory=cwd, concurrency=concurrency, shard=shard, progress=sys.stderr)
    _finish(document, json_output)


@command()
def health(environment: Environment, json_output: JsonFlag = False, cwd: CwdOption = None) -> None:
    """Run ENVIRONMENT's health checks (connectivity, schema, migrations). Exit 3 when one fails."""
    _finish(api.health(environment, working_directory=cwd, progress=sys.stderr), json_output)


@command()
def backup(
    environment: Environment,
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            callback=_bounded_reason,
            help=f"Why, recorded with the backup (at most {api.BACKUP_REASON_MAX} characters).",
        ),
    ] = "manual backup",
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Create a backup of ENVIRONMENT's database now."""
    _finish(api.backup(environment, reason=reason, working_directory=cwd, progress=sys.stderr), json_output)


class _BackupsGroup(_Group):
    """``faber backups ENV`` lists (the ``list`` subcommand is implied); ``faber backups prune ENV`` prunes."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


backups_app = typer.Typer(
    cls=_BackupsGroup,
    help="List (faber backups ENV) or prune (faber backups prune ENV) an environment's backups.",
    no_args_is_help=True,
)
app.add_typer(backups_app, name="backups")


@backups_app.command("list", cls=_Command)
def backups(environment: Environment, json_output: JsonFlag = False, cwd: CwdOption = None) -> None:
    """List ENVIRONMENT's backups, newest first (`faber backups ENV` does the same).

    A backup whose manifest cannot be read is listed with status "unusable" and its problem; it cannot be restored until the manifest is repaired.
    """  # noqa: E501
    _finish(api.backups(environment, working_directory=cwd, progress=sys.stderr), json_output)


@backups_app.command("prune", cls=_Command)
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
    document = api.prune_backups(environment, keep=keep, dry_run=dry_run, working_directory=cwd, progress=sys.stderr)
    _finish(document, json_output)


@command()
def rollback(
    environment: Environment,
    to: Annotated[str | None, typer.Option("--to", help="Backup id (default: the newest).")] = None,
    yes: YesFlag = False,
    discard_app_writes: Annotated[
        bool,
        typer.Option(
            "--discard-app-writes",
            help="With --yes: restore even though the application wrote rows since the backup "
            "(needed where restore_with_app_writes is refuse).",
        ),
    ] = False,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Restore ENVIRONMENT from a backup and verify the migration history matches it.

    Before restoring, faber checks whether anything other than its migrations wrote rows since the backup (PostgreSQL's row counters) and names those tables: a restore discards those rows. Protected environments ask for confirmation (--yes in CI); where restore_with_app_writes is refuse (protected default) and such rows exist, --yes also needs --discard-app-writes.
    """  # noqa: E501
    document = api.rollback(
        environment,
        to=to,
        yes=yes,
        discard_app_writes=discard_app_writes,
        approver=_approver(),
        working_directory=cwd,
        progress=sys.stderr,
    )
    _finish(document, json_output)


@command()
def resolve(
    environment: Environment,
    rolled_back: Annotated[
        str | None,
        typer.Option("--rolled-back", help="NAME failed and its changes are gone: apply it again next time."),
    ] = None,
    applied: Annotated[
        str | None,
        typer.Option(
            "--applied",
            help="NAME failed (or a killed deploy left it in part) but was completed by hand, or a database "
            "created outside the tool already has its changes: never apply it.",
        ),
    ] = None,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Mark a failed migration as rolled back or applied after repairing the database by hand."""
    document = api.resolve(
        environment, rolled_back=rolled_back, applied=applied, working_directory=cwd, progress=sys.stderr
    )
    _finish(document, json_output)


@command()
def history(
    environment: Environment,
    limit: Annotated[int, typer.Option("--limit", min=1, max=api.HISTORY_LIMIT_MAX, help="Show at most N runs.")] = 20,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Show ENVIRONMENT's recorded deploys, previews and rollbacks, newest first (from the database)."""
    _finish(api.history(environment, limit=limit, working_directory=cwd, progress=sys.stderr), json_output)


@command()
def plugins(json_output: JsonFlag = False, cwd: CwdOption = None) -> None:
    """List installed plugins, the hooks they implement, and the tools and backup providers they offer.

    In a project (or with --cwd), also whether its migration tool and backup providers are installed.
    """
    _finish(api.plugins(working_directory=cwd), json_output)


@command()
def init(
    tool: Annotated[
        str | None,
        typer.Option(
            "--tool",
            help="Migration tool: prisma, typeorm or sequelize (default: the one the project's package.json or "
            "files show, else prisma).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config.")] = False,
    json_output: JsonFlag = False,
    cwd: CwdOption = None,
) -> None:
    """Write a starter config (dev, staging, production) and an example migration.

    dev runs on the embedded PostgreSQL; in a project whose files name MySQL or MariaDB, on $DEV_DATABASE_URL.

    In a project that already uses the tool, the config points at its own migrations folder (Prisma's
    migration_lock.toml, prisma.config.*, package.json "prisma.schema") or data source, and no example
    is written; the result's "found" lists them.
    """
    _finish(api.init(tool, force=force, working_directory=cwd), json_output)


MAX_REQUEST_BYTES = 1024**2


@command()
def request(
    file: Annotated[
        Path | None,
        typer.Argument(metavar="FILE", help="The request document (default: read it from stdin; '-' too)."),
    ] = None,
    yes: YesFlag = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Accepted for consistency: the answer is always JSON.")
    ] = False,
    cwd: Annotated[
        Path | None,
        typer.Option("--cwd", metavar="DIR", help="Project directory when the request has no working_directory."),
    ] = None,
) -> None:
    """Answer a request document, as the spec's callers send it, with the spec's JSON result.

    {"operation": "deploy-migrations" | "preview-migrations", "parameters": {"environment": "production", "dry_run": false, "skip_backup": false, "skip_health_check": false, "working_directory": "/srv/app"}}

    Exit codes as for faber migrate; an invalid request is a CONFIG_INVALID error document (exit 2).
    """  # noqa: E501
    from faber_core.errors import Interrupted
    from faber_core.interrupts import raise_held, sigterm_as_interrupt

    from_stdin = file is None or str(file) == "-"
    # A caller may hold stdin open and never send the request: an interrupt held until the read
    # ended would leave faber waiting for ever, so it ends the read, and the request, at once.
    with sigterm_as_interrupt():
        try:
            raise_held()  # one that arrived while faber started (faber_core/command.py)
            text = _read_request(file, from_stdin)
        except KeyboardInterrupt as interrupt:
            error = Interrupted.by(interrupt, "while reading the request: nothing was done")
            _finish(api.error_document(error, api.REQUEST), json_output=True)
    # Approval at a prompt needs stdin, which a request sent on stdin has used up.
    approver = None if from_stdin else _approver()
    document = api.request(text, yes=yes, approver=approver, working_directory=cwd, progress=sys.stderr)
    _finish(document, json_output=True)


def _read_interruptibly(handle: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``handle``, to its end. Python runs a signal's handler when a read
    is cut short by it, or between reads: one arriving just after a read returned, while a buffered
    read loops in C to the next, would wait until that read returned, for ever on a stream its
    writer keeps open. Each wait here is a select() of at most half a second, after which Python
    runs any handler due."""
    import select

    chunks: list[bytes] = []
    size = 0
    while size < limit:
        ready, _, _ = select.select([handle], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(handle.fileno(), min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_request(file: Path | None, from_stdin: bool) -> bytes:
    """The request's bytes, from ``file`` or stdin; a request that cannot be read ends faber with its error document."""
    from faber_core.errors import ConfigError

    try:
        if from_stdin and sys.stdin.isatty():
            raise ConfigError(
                "No request: give a file or send the request on stdin",
                suggestions=["faber request request.json", "echo '{...}' | faber request"],
            )
        if from_stdin:
            text = _read_interruptibly(sys.stdin.buffer, MAX_REQUEST_BYTES + 1)
        else:
            with file.open("rb") as handle:
                text = _read_interruptibly(handle, MAX_REQUEST_BYTES + 1)
        if len(text) > MAX_REQUEST_BYTES:
            # A request is a few hundred bytes; a stream that goes on (/dev/zero, `yes |`) is no request.
            raise ConfigError(
                f"The request is larger than {MAX_REQUEST_BYTES // 1024**2} MiB: not a request document",
                suggestions=['Send {"operation": "deploy-migrations", "parameters": {"environment": "..."}}'],
            )
    except ConfigError as error:
        _finish(api.error_document(error, api.REQUEST), json_output=True)
    except OSError as exc:
        error = ConfigError(f"Cannot read the request file {file}: {exc.strerror or exc}")
        _finish(api.error_document(error, api.REQUEST), json_output=True)
    return text


@config_app.command("schema", cls=_Command)
def config_schema(json_output: JsonFlag = False, cwd: CwdOption = None) -> None:
    """Print the JSON Schema of the config file (with --json, inside the standard envelope).

    The schema is the same for every project; --cwd is accepted like everywhere else.
    """
    _finish(api.config_schema(working_directory=cwd), json_output)


# Usage errors ----------------------------------------------------------------------------

# The operation a command runs, for the error document of a command line that did not parse.
_OPERATIONS = {
    "migrate": api.DEPLOY,
    "status": api.STATUS,
    "health": api.HEALTH,
    "backup": api.BACKUP,
    "backups": api.BACKUPS,
    "list": api.BACKUPS,
    "prune": api.PRUNE_BACKUPS,
    "rollback": api.ROLLBACK,
    "resolve": api.RESOLVE,
    "history": api.HISTORY,
    "plugins": api.PLUGINS,
    "init": api.INIT,
    "schema": api.CONFIG_SCHEMA,
    "request": api.REQUEST,
}


def _wants_json(args: list[str]) -> bool:
    """``--json`` given, or ``faber request``, whose answer is always JSON."""
    options = args[: args.index("--")] if "--" in args else args
    words = [arg for arg in options if not arg.startswith("-")]
    # --json=true is a usage error (a flag takes no value), which must be reported as JSON too.
    return any(arg == "--json" or arg.startswith("--json=") for arg in options) or words[:1] == ["request"]


def _usage_error(error: typer.TyperException, args: list[str]) -> Document:
    """The error document of a command line that did not parse: unknown option, missing argument, bad value."""
    from faber_core.errors import ConfigError

    ctx = getattr(error, "ctx", None)
    words = [arg for arg in args if not arg.startswith("-")][:2]
    # faber config schema, faber backups list|prune: two words name the command.
    command_words = (
        words if words[:1] in (["config"], ["backups"]) and words[1:] and words[1] in _OPERATIONS else words[:1]
    )
    if ctx is not None and ctx.command is not None and ctx.command.name in _OPERATIONS:
        command_words = ctx.command_path.split()[1:]
    operation = _OPERATIONS.get(command_words[-1] if command_words else "", "usage")
    help_command = " ".join(["faber", *command_words]) if operation != "usage" else "faber"
    if operation == api.DEPLOY and "--dry-run" in args:
        operation = api.PREVIEW
    return api.error_document(
        ConfigError(error.format_message(), suggestions=[f"See the usage: {help_command} --help"]), operation
    )


def _app_running(args: list[str]) -> typer.Typer:
    """``app`` with, of its top-level commands, only the one the command line runs.

    Typer reads the signature of every command it registers and builds its parameters each time the
    command line is parsed: ~15 ms of start-up for commands that do not run. ``faber --help``, a
    word that is no top-level command (a typo gets its suggestion) and the command groups get the
    whole app."""
    name = args[0] if args else None
    running = [
        info
        for info in app.registered_commands
        if info.callback is not None and (info.name or typer.main.get_command_name(info.callback.__name__)) == name
    ]
    if not running:
        return app
    narrowed = copy.copy(app)
    narrowed.registered_commands, narrowed.registered_groups = running, []
    return narrowed


def main() -> None:
    """``faber``: with --json, even a command line that does not parse answers with one JSON document."""
    # A command's start creates ~75,000 objects that live to its end (the libraries' and faber's
    # modules, classes and models): at the default threshold (700 new objects) the collector
    # searched them for reference cycles ~130 times as they loaded, and found next to none. Every
    # 100,000 instead: 43 M instructions (3 %) less for a status, 75 M for a deploy of 200 migrations.
    gc.set_threshold(100_000, *gc.get_threshold()[1:])
    args = sys.argv[1:]
    try:
        if not _wants_json(args):
            _app_running(args)()
            return
        global _document_stdout
        _document_stdout = sys.stdout
        try:
            # Only the document reaches stdout: what a plugin prints as it loads or runs goes to stderr.
            # The help asked for is the one text that stays there.
            with contextlib.redirect_stdout(sys.stderr) if "--help" not in args else contextlib.nullcontext():
                command_line = typer.main.get_command(_app_running(args))
                code = command_line.main(args=args, prog_name="faber", standalone_mode=False)
        except typer.TyperException as error:  # click's usage errors: unknown option, missing argument, bad value
            document = _usage_error(error, args)
            typer.echo(_render(document, json_output=True), file=_document_stdout)
            code = document.exit_code
        sys.exit(code or 0)
    finally:
        # The run is over: what the interpreter tears down now (the libraries' modules and objects)
        # needs no search for reference cycles, which took ~0.2 s of CPU after every command. Every
        # atexit handler and finalizer still runs; only cycles left at exit are not collected.
        gc.freeze()
