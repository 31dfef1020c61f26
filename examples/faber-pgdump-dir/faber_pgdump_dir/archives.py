"""Backups as pg_dump directory archives: ``.faber/pgdump-dir/<env>/<id>/`` and its ``<id>.json`` manifest.

- **Create.** ``pg_dump --format=directory --jobs=2`` dumps tables in parallel into
  ``<id>.partial/``, leaving faber's own schema out. Only a whole dump is renamed to ``<id>/``
  and given a manifest, written to a temporary file and renamed: a backup exists when its
  manifest does, so one a crash interrupted is never listed.
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

import datetime as dt
import os
import shutil
from pathlib import Path

from faber_core.context import RunContext
from faber_core.errors import BackupFailed, RestoreFailed
from faber_core.models import BackupRecord, RestoreOutcome
from faber_core.support.backups import creation_failed, restore_prelude
from faber_core.support.programs import find_program, run_tool
from faber_core.support.scratch_folders import scratch_folder
from faber_pgdump_dir import PROVIDER

JOBS = 2
FOLDER = "pgdump-dir"
CLIENT_PACKAGE = "postgresql-client"


def backup_folder(context: RunContext) -> Path:
    """The environment's private folder (0700): an archive holds every row of the database."""
    folder = context.state_dir / FOLDER / context.environment
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


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
    folder = backup_folder(context)
    created_at = dt.datetime.now(dt.timezone.utc)
    backup_id = created_at.strftime("backup-%Y%m%d-%H%M%S-%f")
    partial = folder / f"{backup_id}.partial"
    dump = run_tool(
        [
            pg_dump,
            "--format=directory",
            f"--jobs={JOBS}",
            f"--exclude-schema={context.config.database.faber_schema}",
            f"--file={partial}",
        ],
        redactor=context.redactor,
        env=context.database.client_env(),
    )
    if dump.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise BackupFailed(
            creation_failed(context, f"pg_dump failed: {_last_line(dump.stderr)}"),
            result={"backup_error": dump.output},
            # The same command, whichever it was: a deploy adds the spec's fallbacks (--skip-backup,
            # faber backup ENV) after these itself.
            suggestions=[
                "Check that pg_dump is as new as the server and may read every table, then run the same command again"
            ],
        )
    archive = folder / backup_id
    partial.rename(archive)
    record = BackupRecord(
        id=backup_id,
        provider=PROVIDER,
        environment=context.environment,
        created_at=created_at,
        reason=reason,
        size_bytes=sum(path.stat().st_size for path in archive.iterdir()),
        location=str(archive.relative_to(context.project_dir)),
        database=context.database.name,
        migrations=migrations,
    )
    _write_manifest(folder / f"{backup_id}.json", record)
    return record


def _write_manifest(path: Path, record: BackupRecord) -> None:
    """Written whole or not at all: a temporary file, flushed to disk, renamed."""
    temporary = path.with_suffix(".json.partial")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as manifest:
        manifest.write(record.model_dump_json(indent=2))
        manifest.flush()
        os.fsync(manifest.fileno())
    os.replace(temporary, path)


def list_backups(context: RunContext) -> list[BackupRecord]:
    """The environment's backups, newest first; a manifest that cannot be read is listed as unusable."""
    records = []
    for manifest in (context.state_dir / FOLDER / context.environment).glob("*.json"):
        try:
            records.append(BackupRecord.model_validate_json(manifest.read_text()))
        except (OSError, ValueError) as exc:
            created = dt.datetime.fromtimestamp(manifest.stat().st_mtime, dt.timezone.utc)
            records.append(
                BackupRecord(
                    id=manifest.stem,
                    provider=PROVIDER,
                    environment=context.environment,
                    created_at=created,
                    status="unusable",
                    problem=f"its manifest cannot be read: {type(exc).__name__}",
                )
            )
    return sorted(records, key=lambda record: record.created_at, reverse=True)


def restore(context: RunContext, backup: BackupRecord) -> RestoreOutcome:
    pg_restore, psql = _program("pg_restore", RestoreFailed), _program("psql", RestoreFailed)
    archive = context.state_dir / FOLDER / context.environment / backup.id
    if not (archive / "toc.dat").is_file():
        raise RestoreFailed(
            f"Backup {backup.id} has no archive at {archive.relative_to(context.project_dir)}; nothing was changed",
            suggestions=[f"List the usable backups: faber backups {context.environment}"],
        )
    with scratch_folder("faber-pgdump-dir-") as scratch:
        prelude, script, lock_check = (scratch / name for name in ("prelude.sql", "restore.sql", "check.sql"))
        with context.database.connect(application_name="faber pgdump-dir restore") as conn:
            prelude.write_text(restore_prelude(conn, context.config.database.faber_schema))
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
