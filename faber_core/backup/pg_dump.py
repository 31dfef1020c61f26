"""Built-in backup provider ``pg_dump``: archives under ``.faber/backups/<env>/``.

Each backup is an archive plus ``<id>.json``, its manifest (what the archive covers, its size
and sha256, the applied migrations at backup time). Never the database URL. The archive is in
pg_dump's custom format, one file ``<id>.dump`` written by one session, or with ``format:
directory`` (:class:`PgDumpOptions`) a directory ``<id>.dir`` that ``pg_dump --jobs N`` writes a
file per table into, whose manifest lists every file's size and sha256. How the archives survive
crashes and how retention works: :mod:`faber_core.backup.store`.

A restore is atomic either way it runs (``restore_mode``, :class:`PgDumpOptions`): by default
one transaction that faber opens and commits itself (:mod:`faber_core.backup.restore`); with
``swap``, ``pg_restore --jobs`` into a new database that is then swapped in by rename
(:mod:`faber_core.backup.swap`). An interrupted restore, however it is interrupted, leaves the
database as it was or exactly the backup, and says which.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import psycopg
from pydantic import BaseModel, ConfigDict, Field

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.errors import BackupFailed, RestoreFailed
from faber_core.models import BackupProviderInfo, BackupPruneOutcome, BackupRecord, RestoreOutcome
from faber_core.postgres.client_programs import CLIENT_PROGRAMS, client_program_dirs
from faber_core.postgres.names import DatabaseNames, alias_refusal, alias_suggestions, database_names
from faber_core.postgres.pooler import carries_options
from faber_core.processes import child_environment, run_captured
from faber_core.safety.timeouts import CONNECTION_CHECK_INTERVAL_MS, CONNECTION_CHECK_SINCE

if TYPE_CHECKING:
    from faber_core.backup.database_properties import DatabaseProperties

PROVIDER = "pg_dump"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class PgDumpOptions(BaseModel):
    """The pg_dump provider's keys of an environment's ``backup`` section."""

    model_config = ConfigDict(defer_build=True)  # faber validates with a model derived from it (plugin_options)

    restore_mode: Literal["in-place", "swap"] = Field(
        "in-place",
        description="in-place: one transaction on one session (one core); the application's queries wait on its "
        "locks. swap: pg_restore --jobs into a new database, faber's schema copied over, then both renamed in "
        "one transaction; needs CREATEDB, twice the disk while both exist, and ends every session of the "
        "database at the swap. Refused when the user could not give the new database the settings, comment, "
        "grants and connection limit the backup recorded, or when the database has subscriptions or replication "
        "slots of its own. Both are atomic (docs/workflow.md).",
    )
    format: Literal["custom", "directory"] = Field(
        "custom",
        description="custom: each backup one file, dumped on one session (pg_dump --format=custom). directory: "
        "each backup a directory of one file per table, dumped on `jobs` sessions at once (pg_dump "
        "--format=directory --jobs); its manifest lists every file's size and sha256, all checked before a "
        "restore. Either restores in either restore_mode.",
    )
    jobs: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Parallel jobs of pg_dump (format directory) and of pg_restore (restore_mode swap). "
        "Default: the machine's cores.",
    )


@hookimpl
def faber_backup_providers() -> list[BackupProviderInfo]:
    return [
        BackupProviderInfo(
            name=PROVIDER,
            description="pg_dump archives in .faber/backups/<env>/",
            engines=["postgresql"],
            options=PgDumpOptions,
        )
    ]


def _server_and_properties(context: RunContext) -> tuple[int, str, DatabaseProperties]:
    """The server's major version and its version string, and the database's own properties,
    which the archive leaves out and the manifest records (:mod:`~faber_core.backup.database_properties`)."""
    # Imported by a backup or a restore only: the module and its models are ~11 M instructions of
    # every command's start, which registers this provider (a status among them).
    from faber_core.backup import database_properties

    with context.database.connect() as conn:
        number, text, database = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), current_database()"
        ).fetchone()
        properties = database_properties.read(conn, database)
    return number // 10000, text, properties


def _client_major(program: Path) -> int | None:
    try:
        out = run_captured([program, "--version"], env=child_environment({}), timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    return int(match.group(1)) if match else None


def excluding_faber_schema(context: RunContext) -> str:
    """pg_dump's option leaving faber's schema out. Its value is a pattern, in which unquoted
    letters are folded to lower case: quoted, a schema named ``Faber`` is left out as named."""
    return f'--exclude-schema="{context.config.database.faber_schema}"'


def find_client_dir(server_major: int) -> Path:
    """A directory holding pg_dump, pg_restore and psql no older than the server.

    pg_dump refuses (or worse, misreads) a newer server, so the version is checked up front.
    """
    seen: list[str] = []
    for directory in client_program_dirs():
        major = _client_major(directory / "pg_dump")
        if major is None:
            continue
        seen.append(f"{directory / 'pg_dump'} ({major})")
        if major >= server_major and all((directory / p).exists() for p in CLIENT_PROGRAMS):
            return directory
    found = "; ".join(seen) or "none found"
    raise BackupFailed(
        f"No pg_dump as new as the server (PostgreSQL {server_major}); found: {found}",
        suggestions=[
            f"Install the PostgreSQL {server_major} client tools "
            f"(e.g. apt-get install postgresql-client-{server_major})",
            "Or put a pg_dump of that version first on PATH",
        ],
        result={"backup_error": f"pg_dump older than server {server_major}"},
    )


def client_env(context: RunContext, server_major: int, **settings: str) -> dict[str, str]:
    """The environment of a pg_dump/pg_restore/psql run: connection, plus server settings for its session.

    Like migration sessions, these check that their client is alive: the server ends the session
    of a killed pg_dump or psql (rolling back a restore) within seconds, even mid-statement,
    instead of holding its locks until the statement ends.
    """
    env = context.database.client_env()
    if not carries_options(context.database.learnt):
        # A pooler that refuses PGOPTIONS would refuse the program, one that drops it drops them anyway.
        return child_environment(env)
    if server_major * 10000 >= CONNECTION_CHECK_SINCE:
        settings = {"client_connection_check_interval": f"{CONNECTION_CHECK_INTERVAL_MS}ms", **settings}
    options = [env.get("PGOPTIONS", ""), *(f"-c {name}={value}" for name, value in settings.items())]
    env["PGOPTIONS"] = " ".join(option for option in options if option)
    return child_environment(env)


@hookimpl
def faber_backup_create(context: RunContext, reason: str, migrations: list[tuple[str, str | None]]) -> BackupRecord:
    # Imported here: every command registers this plugin, only a backup uses these (start-up).
    from faber_core.backup import database_properties, store

    try:
        major, version, properties = _server_and_properties(context)
        names = database_names(context.database)
    except psycopg.Error as exc:
        raise BackupFailed(
            store.creation_failed(context),
            result={"backup_error": context.redactor.redact(str(exc).strip())},
            suggestions=["Verify the database is reachable, then run the same command again"],
        ) from None
    options = context.backup_options(PgDumpOptions)
    if options.restore_mode == "swap":
        _refuse_a_swap_it_could_not_restore(context, names)
    else:
        _refuse_an_in_place_restore_it_could_not_run(context)
    tools = find_client_dir(major)
    if options.format == "directory":
        archive_format = ["--format=directory", f"--jobs={jobs(options)}"]
    else:
        archive_format = ["--format=custom"]

    def dump(reservation: store.Reservation) -> None:
        store.run_dump(
            context,
            reservation,
            [tools / "pg_dump", *archive_format, excluding_faber_schema(context), f"--file={reservation.partial}"],
            client_env(context, major),
            "Check that the database user may read every table (pg_dump needs SELECT on all of them)",
            # On SIGTERM pg_dump stops its workers and cancels their queries; SIGKILL would leave
            # each worker dumping its table on, holding a lock on it.
            death_signal=signal.SIGTERM,
        )

    return store.create_backup(
        context,
        provider=PROVIDER,
        reason=reason,
        migrations=migrations,
        server_version=version,
        dump=dump,
        provider_data={
            store.EXCLUDED_SCHEMA: context.config.database.faber_schema,
            database_properties.RECORD: database_properties.shown(properties),
        },
        private_data={database_properties.RECORD: properties.model_dump(mode="json")},
        archive_suffix=store.DIRECTORY_ARCHIVE if options.format == "directory" else store.ARCHIVE,
    )


def _refuse_a_swap_it_could_not_restore(context: RunContext, names: DatabaseNames) -> None:
    """Through a pooler's alias, or as a user who may not create the database it restores into, a
    swap restore refuses (:func:`~faber_core.backup.swap.restore_by_swap`): a deploy is stopped
    here, before its migrations, rather than left migrated when one fails."""
    from faber_core.backup.swap import creation_refusal

    in_place = (
        f"Or restore in place: set restore_mode to in-place in database.environments.{context.environment}.backup"
    )
    problem = alias_refusal(names, "a swap restore (restore_mode swap)")
    if problem:
        suggestions = [*alias_suggestions(names), f"{in_place} (it goes through the alias)"]
    else:
        with context.database.session() as conn:
            problem = creation_refusal(conn, names.server)
        if not problem:
            _refuse_owners_it_could_not_restore(context, [context.config.database.faber_schema])
            return
        problem = f"a swap restore (restore_mode swap) creates a database to restore into, and {problem}"
        suggestions = [
            "Give the user what the swap needs (docs/workflow.md, restore_mode swap): CREATEDB, membership of the "
            "database owner's role, and CREATE on the database's tablespace unless it is pg_default",
            in_place,
        ]
    raise BackupFailed.unrestorable(problem, suggestions)


def _refuse_an_in_place_restore_it_could_not_run(context: RunContext) -> None:
    """An in-place restore drops the database's schemas: as a user who may not, it would fail when a
    migration failed (exit 8, the migration half applied); a deploy is stopped here instead."""
    from faber_core.backup.restore import in_place_refusal, objects_it_may_not_drop, with_other_projects_schemas

    with context.database.session() as conn:
        keep = with_other_projects_schemas(conn, [context.config.database.faber_schema])
        refused = objects_it_may_not_drop(conn, keep)
        user = conn.info.user
    if refused:
        reason, suggestions = in_place_refusal(context, user, refused)
        raise BackupFailed.unrestorable(reason, suggestions)
    _refuse_owners_it_could_not_restore(context, keep)


def _refuse_owners_it_could_not_restore(context: RunContext, keep_schemas: list[str]) -> None:
    """Either restore gives each object of the archive its owner back: as a user who may not take
    an owner's role (a table an administrator created beside the application's), it would fail when
    a migration failed (exit 8, the migration half applied); a deploy is stopped here instead."""
    from faber_core.backup.restore import owners_it_may_not_restore

    with context.database.session() as conn:
        refused = owners_it_may_not_restore(conn, keep_schemas)
        user = conn.info.user
    if not refused:
        return
    reason = (
        "a restore creates the database's objects again from the backup and gives each its owner back, and the "
        f"user {user} may not take the role owning {', '.join(refused)}"
    )
    raise BackupFailed.unrestorable(
        reason,
        [
            f"Give the user those objects (e.g. ALTER TABLE <table> OWNER TO {user}), or deploy as their owner (a "
            "member of the owner's role is not enough: the restore gives an object to its owner before it grants "
            "the owner CREATE on the object's schema again)",
        ],
    )


def jobs(options: PgDumpOptions) -> int:
    return options.jobs or os.cpu_count() or 1


@hookimpl
def faber_backup_list(context: RunContext) -> list[BackupRecord]:
    # Imported here: every command registers this plugin, few use the store (start-up).
    from faber_core.backup import store

    return store.list_backups(context)


@hookimpl
def faber_backup_prune(context: RunContext, keep_last: int | None, dry_run: bool) -> BackupPruneOutcome:
    # Imported here: every command registers this plugin, few use the store (start-up).
    from faber_core.backup import store

    return store.prune_backups(context, keep_last, dry_run)


@hookimpl
def faber_backup_restore(context: RunContext, backup: BackupRecord) -> RestoreOutcome:
    # Imported here: only a restore needs them, and every command registers this plugin (start-up).
    from faber_core.backup import store
    from faber_core.backup.restore import restore_archive, stopped_before_it_began
    from faber_core.backup.swap import restore_by_swap

    store.refuse_another_database(context, backup)
    options = context.backup_options(PgDumpOptions)
    database = context.database
    try:
        with database.connect() as conn:
            major = conn.info.server_version // 10000
    except KeyboardInterrupt as interrupt:  # a connection may take seconds to be refused
        return stopped_before_it_began(backup, interrupt)
    except database.connect_errors as exc:  # before anything of the restore ran
        reason = context.redactor.redact(database.describe_connect_error(exc))
        raise RestoreFailed(
            f"Restore of {backup.id} did not start, as its connection was refused ({reason}); the database is "
            "unchanged",
            suggestions=["Verify database is running"],
            backup_id=backup.id,
        ) from None
    tools = find_client_dir(major)
    if options.restore_mode == "swap":
        return restore_by_swap(context, backup, tools, major, jobs(options))
    return restore_archive(context, backup, tools, major)
