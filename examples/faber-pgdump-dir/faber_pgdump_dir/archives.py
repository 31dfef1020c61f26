"""Backups as pg_dump directory archives in faber's backup store: ``.faber/backups/<env>/<id>.dir/``
and its manifest ``<id>.json``.

- **Create.** ``pg_dump --format=directory --jobs=2`` dumps tables in parallel, leaving faber's
  own schema out, into the directory ``create_backup`` (``faber_core.support.backups``) reserves,
  ``<id>.dir.partial/``. The store does the rest as for faber's own provider: each file checksummed
  and fsynced, the directory renamed, the manifest written; a backup exists when its manifest does.
  A run killed midway leaves a partial archive that is never listed and that the next ``faber
  backup``, ``faber backups`` or prune removes (not one another run is still writing: it is locked).
- **Restore, in one transaction.** Parallel restore (``pg_restore --jobs``) cannot run in one
  transaction, so the restore is serial: ``pg_restore`` writes the archive as SQL, and ``psql
  --single-transaction`` runs faber's schema-drop prelude and that SQL as one transaction. The
  database ends as the backup (faber's schema apart) or, when anything fails, as it was. faber's
  lock check runs last in that transaction (``context.restore_committing``): lost, nothing commits.
  The SQL, every row of the backup, is written in a scratch folder
  (``faber_core.support.scratch_folders``): removed after the restore, or by the next run when
  faber is killed during it.
- **Credentials** reach pg_dump, pg_restore and psql only in their environment, and what they
  print is redacted.
"""

from __future__ import annotations

from pathlib import Path

from faber_core.context import RunContext
from faber_core.errors import BackupFailed, RestoreFailed
from faber_core.models import BackupRecord, RestoreOutcome
from faber_core.support.backups import (
    DIRECTORY_ARCHIVE,
    Reservation,
    create_backup,
    creation_failed,
    reading,
    restore_prelude,
)
from faber_core.support.programs import find_program, run_tool
from faber_core.support.scratch_folders import scratch_folder
from faber_pgdump_dir import PROVIDER

JOBS = 2
CLIENT_PACKAGE = "postgresql-client"


def _program(name: str, error: type[BackupFailed] | type[RestoreFailed]) -> Path:
    found = find_program(name)
    if found is None:
        raise error(
            f"{name} is not installed (not on PATH, nor beside faber's Python)",
            suggestions=[f"Install the PostgreSQL client programs, e.g. apt-get install {CLIENT_PACKAGE}"],
        )
    return found


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def create(context: RunContext, reason: str, migrations: list[tuple[str, str | None]]) -> BackupRecord:
    pg_dump = _program("pg_dump", BackupFailed)
    server_version = context.database.engine.server_version(context.database)
    if server_version is None:
        raise BackupFailed(
            creation_failed(context, "the database cannot be reached"),
            suggestions=["Verify the database is reachable, then run the same command again"],
        )

    def dump(reservation: Reservation) -> None:
        dumped = run_tool(
            [
                pg_dump,
                "--format=directory",
                f"--jobs={JOBS}",
                f"--exclude-schema={context.config.database.faber_schema}",
                f"--file={reservation.partial}",
            ],
            redactor=context.redactor,
            env=context.database.client_env(),
        )
        if dumped.returncode != 0:
            raise BackupFailed(
                creation_failed(context, f"pg_dump failed: {_last_line(dumped.stderr)}"),
                result={"backup_error": dumped.output},
                # The same command, whichever it was: a deploy adds the spec's fallbacks (--skip-backup,
                # faber backup ENV) after these itself.
                suggestions=[
                    "Check that pg_dump is as new as the server and may read every table, "
                    "then run the same command again"
                ],
            )

    return create_backup(
        context,
        provider=PROVIDER,
        reason=reason,
        migrations=migrations,
        server_version=server_version,
        dump=dump,
        archive_suffix=DIRECTORY_ARCHIVE,
    )


def restore(context: RunContext, backup: BackupRecord) -> RestoreOutcome:
    pg_restore, psql = _program("pg_restore", RestoreFailed), _program("psql", RestoreFailed)
    archive = context.project_dir / (backup.location or "")
    if not backup.location or not (archive / "toc.dat").is_file():
        raise RestoreFailed(
            f"Backup {backup.id} has no pg_dump directory archive at {backup.location}; nothing was changed",
            suggestions=[f"List the usable backups: faber backups {context.environment}"],
        )
    with scratch_folder("faber-pgdump-dir-") as scratch:
        prelude, script, lock_check = (scratch / name for name in ("prelude.sql", "restore.sql", "check.sql"))
        with context.database.connect(application_name="faber pgdump-dir restore") as conn:
            prelude.write_text(restore_prelude(conn, context.config.database.faber_schema))
        with reading(archive):  # a shared lock: a prune leaves the archive alone while it is read
            as_sql = run_tool([pg_restore, f"--file={script}", archive], redactor=context.redactor, env={})
        if as_sql.returncode != 0:
            raise RestoreFailed(
                f"pg_restore cannot read {backup.id}: {_last_line(as_sql.stderr)}; nothing was changed",
                suggestions=["The database is as it was before the restore", "Try an older backup"],
            )
        check = context.restore_committing(in_transaction=True)
        lock_check.write_text(f"{check.statement};\n" if check is not None else "")
        replay = run_tool(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
            + ["-f", prelude, "-f", script, "-f", lock_check],
            redactor=context.redactor,
            env=context.database.client_env(),
        )
    if check is not None and check.failed(replay.stderr):
        raise check.lost()  # the transaction rolled back: nothing of the restore committed
    if replay.returncode != 0:
        raise RestoreFailed(
            f"Restore of {backup.id} failed and was rolled back: {_last_line(replay.stderr)}",
            suggestions=["The database is as it was before the restore", "Fix the cause, then retry the rollback"],
        )
    return RestoreOutcome(
        backup_id=backup.id,
        status="success",
        steps=["dropped what the archive brings back", f"replayed {backup.id} in the same transaction"],
    )
