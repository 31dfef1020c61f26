"""Built-in backup provider ``pg_dump``: custom-format archives under ``.faber/backups/<env>/``.

Each backup is ``<id>.dump`` plus ``<id>.json``, its manifest (what the archive covers, its
size and sha256, the applied migrations at backup time). Never the database URL.

A restore runs as one ``psql --single-transaction`` script: drop every user schema except
faber's own, then replay the archive. Either all of it happens or none of it does, and tables
created after the backup are gone afterwards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.errors import BackupFailed, RestoreFailed
from faber_core.models import BackupProviderInfo, BackupRecord, RestoreOutcome
from faber_core.postgres.embedded import embedded_bin_dirs
from faber_core.processes import child_environment, run_tool

PROVIDER = "pg_dump"
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@hookimpl
def faber_backup_providers() -> list[BackupProviderInfo]:
    return [BackupProviderInfo(name=PROVIDER, description="pg_dump archives in .faber/backups/<env>/")]


def backup_dir(context: RunContext) -> Path:
    return context.state_dir / "backups" / context.environment


def _server_major(context: RunContext) -> tuple[int, str]:
    with context.database.connect() as conn:
        number, text = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
        ).fetchone()
    return number // 10000, text


def _client_major(program: Path) -> int | None:
    try:
        out = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return None
    match = _VERSION.search(out)
    return int(match.group(1)) if match else None


def find_client_dir(server_major: int) -> Path:
    """A directory holding pg_dump, pg_restore and psql no older than the server.

    pg_dump refuses (or worse, misreads) a newer server, so the version is checked up front.
    """
    candidates: list[Path] = []
    on_path = shutil.which("pg_dump")
    if on_path:
        candidates.append(Path(on_path).parent)
    candidates += embedded_bin_dirs()
    seen: list[str] = []
    for directory in candidates:
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


def _new_backup_id(directory: Path, now: dt.datetime) -> str:
    base = f"backup-{now:%Y%m%d-%H%M%S}"
    candidate, n = base, 1
    while (directory / f"{candidate}.json").exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@hookimpl
def faber_backup_create(
    provider: str, context: RunContext, reason: str, migrations: list[tuple[str, str | None]]
) -> BackupRecord | None:
    if provider != PROVIDER:
        return None
    try:
        major, version = _server_major(context)
    except psycopg.Error as exc:
        raise BackupFailed(
            "Failed to create pre-migration backup",
            result={"backup_error": context.redactor.redact(str(exc).strip())},
            suggestions=["Verify the database is reachable", f"Retry: faber backup {context.environment}"],
        ) from None
    tools = find_client_dir(major)
    directory = backup_dir(context)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    backup_id = _new_backup_id(directory, now)
    archive = directory / f"{backup_id}.dump"
    partial = archive.with_suffix(".dump.partial")
    run = run_tool(
        [
            tools / "pg_dump",
            "--format=custom",
            f"--exclude-schema={context.config.database.faber_schema}",
            f"--file={partial}",
        ],
        redactor=context.redactor,
        env=context.database.libpq_env(),
    )
    if run.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackupFailed(
            "Failed to create pre-migration backup",
            result={"backup_error": run.stderr.strip() or f"pg_dump exited with {run.returncode}"},
            suggestions=[
                "Check that the database user may read every table (pg_dump needs SELECT on all of them)",
                f"Check free disk space under {directory}",
                f"Or skip backup (NOT recommended): faber migrate {context.environment} --skip-backup",
            ],
        )
    partial.rename(archive)
    record = BackupRecord(
        id=backup_id,
        provider=PROVIDER,
        environment=context.environment,
        created_at=now,
        reason=reason,
        size_bytes=archive.stat().st_size,
        location=str(archive.relative_to(context.project_dir)),
        server_version=version,
        database=context.database.name,
        sha256=_sha256(archive),
        migrations=migrations,
        excluded_schema=context.config.database.faber_schema,
    )
    manifest = directory / f"{backup_id}.json"
    manifest.write_text(context.redactor.redact(record.model_dump_json(indent=2)) + "\n")
    return record


@hookimpl
def faber_backup_list(provider: str, context: RunContext) -> list[BackupRecord] | None:
    if provider != PROVIDER:
        return None
    directory = backup_dir(context)
    records = []
    for manifest in directory.glob("backup-*.json") if directory.is_dir() else []:
        record = BackupRecord.model_validate_json(manifest.read_text())
        if not (context.project_dir / (record.location or "")).is_file():
            record.status = "missing archive"
        records.append(record)
    return sorted(records, key=lambda r: r.created_at, reverse=True)


def _restore_prelude(conn: psycopg.Connection, keep_schema: str) -> str:
    """SQL that empties the database of everything a restore will bring back."""
    schemas = [
        row[0]
        for row in conn.execute(
            """
            SELECT n.nspname FROM pg_namespace n
            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname <> %s
              AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                              AND d.objid = n.oid AND d.deptype = 'e')
            ORDER BY 1
            """,
            [keep_schema],
        ).fetchall()
    ]
    statements = [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE;").format(sql.Identifier(s)) for s in schemas]
    # pg_dump never creates `public`; put it back as initdb made it, and the archive re-applies
    # any privileges that differed from that.
    if conn.info.server_version >= 150000:
        statements.append(sql.SQL("CREATE SCHEMA public AUTHORIZATION pg_database_owner;"))
        statements.append(sql.SQL("GRANT USAGE ON SCHEMA public TO PUBLIC;"))
    else:
        statements.append(sql.SQL("CREATE SCHEMA public;"))
        statements.append(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO PUBLIC;"))
    statements.append(sql.SQL("COMMENT ON SCHEMA public IS 'standard public schema';"))
    return "\n".join(s.as_string(conn) for s in statements) + "\n"


@hookimpl
def faber_backup_restore(provider: str, context: RunContext, backup: BackupRecord) -> RestoreOutcome | None:
    if provider != PROVIDER:
        return None
    archive = context.project_dir / (backup.location or "")
    manual = [
        f"The database is unchanged; restore by hand with: pg_restore --clean --if-exists -d <database> {archive}",
        "Connection settings for pg_restore come from PGHOST/PGUSER/PGPASSWORD/PGDATABASE",
    ]
    if not archive.is_file():
        raise RestoreFailed(f"Backup archive {backup.location} is missing", suggestions=manual[1:])
    if backup.sha256 and _sha256(archive) != backup.sha256:
        raise RestoreFailed(
            f"Backup archive {backup.location} does not match its manifest checksum (corrupted?)",
            suggestions=["Restore from another backup: faber backups " + context.environment],
        )
    with context.database.connect() as conn:
        major = conn.info.server_version // 10000
        keep = (backup.model_extra or {}).get("excluded_schema") or context.config.database.faber_schema
        prelude = _restore_prelude(conn, keep)
    tools = find_client_dir(major)
    env = child_environment(context.database.libpq_env())
    with tempfile.TemporaryFile() as psql_errors, tempfile.TemporaryFile() as restore_errors:
        psql = subprocess.Popen(
            [str(tools / "psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=psql_errors,
            env=env,
        )
        restore = subprocess.Popen(
            [str(tools / "pg_restore"), "--file=-", str(archive)],
            stdout=subprocess.PIPE,
            stderr=restore_errors,
            env=env,
        )
        assert psql.stdin and restore.stdout
        try:
            psql.stdin.write(prelude.encode())
            shutil.copyfileobj(restore.stdout, psql.stdin, 1 << 20)
        except BrokenPipeError:
            pass  # psql stopped at an error; its stderr says which
        finally:
            with contextlib.suppress(BrokenPipeError):
                psql.stdin.close()
            restore.stdout.close()
        restore.wait()
        psql.wait()
        psql_errors.seek(0)
        restore_errors.seek(0)
        psql_err = psql_errors.read().decode(errors="replace")
        restore_err = restore_errors.read().decode(errors="replace")
    if restore.returncode != 0 or psql.returncode != 0:
        detail = context.redactor.redact((psql_err or restore_err).strip())
        raise RestoreFailed(f"Restore of {backup.id} failed and was rolled back: {detail}", suggestions=manual)
    return RestoreOutcome(
        backup_id=backup.id,
        status="success",
        details=f"Restored {backup.id} ({backup.size_bytes} bytes) in one transaction",
        steps=["dropped schemas changed since the backup", "replayed the archive"],
    )
