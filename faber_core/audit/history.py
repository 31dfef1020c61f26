"""Deployment history in the target database: ``<faber_schema>.faber_deployments``.

One row per deploy, preview and rollback run, so operators can answer from the database itself
who deployed what, when, how long it took, which backup covered it and what failed. The faber
schema is excluded from backups and restores, so a rollback never erases the record of the
deploy it undid.

A deploy or rollback writes its row as soon as it holds faber's lock, with the status
``running``, again once it has a backup (taken, or to restore), and whole when it finishes. So a
run killed for good (``kill -9``, its machine lost) still has its row: its status stays
``running``, which reads as ``unfinished`` once no run holds faber's lock, and the next run to take
the lock writes ``unfinished`` into it. Its migrations are written only as a run finishes: for a
killed run, ``faber status`` tells which applied.

Writing history never changes a command's result: a failure is a warning on stderr. A run that
never reached the database (its error already says so) writes nothing, nor does a run refused
because another run held a lock (exit 7), whose row, if written, is removed: it changed nothing,
and the run holding the lock writes its own row.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from faber_core import __version__, hookimpl
from faber_core.context import RunContext
from faber_core.errors import ConfigError, Locked
from faber_core.models import AuditEvent
from faber_core.postgres.locks import blocked_read_error, database_lock_key, lock_held
from faber_core.processes import run_tool
from faber_core.vocabulary import RUN_IN_PROGRESS, RUN_UNFINISHED

TABLE = "faber_deployments"
RECORDED_OPERATIONS = frozenset({"deploy-migrations", "preview-migrations", "rollback"})
# The runs whose row is written from their start: those that change the database.
RECORDED_FROM_THE_START = frozenset({"deploy-migrations", "rollback"})
# Events that prove the run talked to its database.
_REACHED = frozenset({"lock.acquired", "status.read"})
# Who triggered a CI job, per CI system; the OS user otherwise.
ACTOR_VARIABLES = ("GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILDKITE_BUILD_CREATOR", "CIRCLE_USERNAME")
COMMIT_VARIABLES = ("GITHUB_SHA", "CI_COMMIT_SHA", "BUILDKITE_COMMIT", "CIRCLE_SHA1")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    id               text PRIMARY KEY,
    environment      text NOT NULL,
    operation        text NOT NULL,
    status           text NOT NULL,
    exit_code        integer,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    duration_seconds double precision,
    migrations       jsonb NOT NULL DEFAULT '[]',
    backup_id        text,
    rollback_status  text,
    tool             text,
    actor            text,
    faber_version    text NOT NULL,
    git_commit       text,
    error_code       text,
    error_message    text
)
"""
ENDING_COLUMNS = ("exit_code", "finished_at", "duration_seconds")
"""Unset while a run is in progress; a table of an older faber declares them NOT NULL."""
COLUMNS = (
    "id",
    "environment",
    "operation",
    "status",
    "exit_code",
    "started_at",
    "finished_at",
    "duration_seconds",
    "migrations",
    "backup_id",
    "rollback_status",
    "tool",
    "actor",
    "faber_version",
    "git_commit",
    "error_code",
    "error_message",
)


@dataclass
class _Run:
    """What the events of one run tell the history row."""

    started_at: dt.datetime
    reached_database: bool = False
    checksums: dict[str, str | None] = field(default_factory=dict)
    migrations: list[dict[str, Any]] = field(default_factory=list)
    backup_id: str | None = None
    row_written: bool = False
    write_failed: bool = False  # warned once: the history's next writes would most likely fail alike


class DeploymentHistory:
    """The history sink; each plugin manager has its own, holding the runs it has seen start."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}

    @hookimpl
    def faber_audit_event(self, event: AuditEvent, context: RunContext) -> None:
        if context.operation not in RECORDED_OPERATIONS:
            return
        run = self._runs.setdefault(event.run_id, _Run(started_at=event.timestamp))
        data = event.data
        if event.kind in _REACHED or (event.kind == "health.finished" and _connectivity_passed(data)):
            run.reached_database = True
            if event.kind == "lock.acquired" and context.operation in RECORDED_FROM_THE_START:
                _record_running(context, event, run)
        elif event.kind == "apply.started":
            run.checksums = {m["name"]: m.get("checksum") for m in data.get("migrations", [])}
        elif event.kind == "migration.applied":
            run.migrations.append(_migration(run, data["name"], "applied", data.get("duration_seconds")))
        elif event.kind == "migration.failed":
            run.migrations.append(_migration(run, data["name"], "failed", None))
        elif event.kind in ("backup.created", "rollback.started"):
            run.backup_id = data.get("backup_id")
            if run.row_written:
                _record_running(context, event, run)
        elif event.kind == "run.finished":
            self._runs.pop(event.run_id, None)
            # A run refused a lock applied nothing; one that lost faber's lock mid-deploy may have.
            refused_lock = (data.get("document") or {}).get("code") == Locked.code and not run.migrations
            if refused_lock and run.row_written:
                engine = context.database.engine
                _write(context, run, lambda conn, schema: engine.forget_deployment(conn, schema, event.run_id))
            elif run.reached_database and not refused_lock:
                _record(context, event, run)


def _connectivity_passed(data: dict[str, Any]) -> bool:
    return any(c.get("name") == "connectivity" and c.get("status") == "passed" for c in data.get("checks", []))


def _migration(run: _Run, name: str, status: str, duration: float | None) -> dict[str, Any]:
    return {"name": name, "checksum": run.checksums.get(name), "status": status, "duration_seconds": duration}


def _record(context: RunContext, event: AuditEvent, run: _Run) -> None:
    row = deployment_row(context, event, run)
    engine, replacing = context.database.engine, run.row_written
    _write(context, run, lambda conn, schema: engine.record_deployment(conn, schema, row, replacing=replacing))


def _record_running(context: RunContext, event: AuditEvent, run: _Run) -> None:
    """The row of a run in progress: what it is, when it started, the backup once it has one."""
    row = {
        **dict.fromkeys(COLUMNS),
        **_identity(context, event, run),
        "status": RUN_IN_PROGRESS,
        "migrations": "[]",
        "backup_id": run.backup_id,
    }
    engine, replacing = context.database.engine, run.row_written
    if _write(context, run, lambda conn, schema: engine.record_deployment(conn, schema, row, replacing=replacing)):
        run.row_written = True


def _write(context: RunContext, run: _Run, write: Callable[[Any, str], bool | None]) -> bool:
    """Run ``write(session, faber_schema)``; whether it wrote. A failure is a warning (once a
    run), never the run's failure."""
    try:
        with context.database.session() as conn:
            written = write(conn, context.config.database.faber_schema)
    except Exception as exc:  # history is a record of the run, never a reason for it to fail
        if not run.write_failed:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            sys.stderr.write(f"warning: the deployment history was not recorded: {context.redactor.redact(reason)}\n")
        run.write_failed = True
        return False
    return written is not False


def deployment_row(context: RunContext, event: AuditEvent, run: _Run) -> dict[str, Any]:
    """The history row of a finished run; every text passes through the run's redactor."""
    document = event.data.get("document") or {}
    result = document.get("result") if isinstance(document.get("result"), dict) else {}
    migrations = run.migrations or _previewed(document)
    return {
        **_identity(context, event, run),
        "status": document.get("status", event.data.get("status", "error")),
        "exit_code": int(event.data.get("exit_code", 1)),
        "finished_at": event.timestamp,
        "duration_seconds": round((event.timestamp - run.started_at).total_seconds(), 3),
        "migrations": json.dumps(context.redactor.redact_data(migrations)),
        "backup_id": run.backup_id or result.get("backup_id") or (document.get("recovery") or {}).get("backup_id"),
        "rollback_status": result.get("rollback_status"),
        "error_code": document.get("code"),
        "error_message": context.redactor.redact(document["error"]) if document.get("error") else None,
    }


def _identity(context: RunContext, event: AuditEvent, run: _Run) -> dict[str, Any]:
    """What a run's row says of the run from its start: which it is, who started it, when, with what."""
    return {
        "id": event.run_id,
        "environment": context.environment,
        "operation": context.operation,
        "started_at": run.started_at,
        "tool": context.tool,
        "actor": context.redactor.redact(actor()),
        "faber_version": __version__,
        "git_commit": context.once(("git commit", context.project_dir), lambda: git_commit(context)),
    }


def _previewed(document: dict[str, Any]) -> list[dict[str, Any]]:
    """A preview applies nothing; its row lists what was pending."""
    if document.get("operation") != "preview-migrations":
        return []
    previews = (document.get("result") or {}).get("migrations", [])
    return [{"name": p["name"], "checksum": None, "status": "pending", "duration_seconds": None} for p in previews]


def actor() -> str:
    """The CI user who triggered the job, else the OS user."""
    for variable in ACTOR_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def git_commit(context: RunContext) -> str | None:
    """The commit the CI job builds, else the project's checked-out commit, else None."""
    for variable in COMMIT_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    try:
        run = run_tool(
            ["git", "rev-parse", "--verify", "HEAD"],
            redactor=context.redactor,
            env={},
            cwd=context.project_dir,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = run.stdout.strip()
    return commit if run.returncode == 0 and commit else None


def write_row(conn: psycopg.Connection, schema: str, row: dict[str, Any], *, replacing: bool) -> bool:
    """PostgreSQL: write ``row`` to ``<schema>.faber_deployments``, created when missing, in one
    transaction (one commit); ``replacing``: in place of the run's earlier row. A row of a run in
    progress ends every other row still ``running`` as ``unfinished``: it is written under faber's
    lock, which no other run holds, so none of theirs is in progress. Such a row is not written
    (False) to a table that cannot take it (:func:`ensure_table`)."""
    placeholders = sql.SQL(", ").join(sql.Placeholder(name) for name in COLUMNS)
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        _table(schema), sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), placeholders
    )
    if replacing:
        insert += sql.SQL(" ON CONFLICT (id) DO UPDATE SET ({}) = ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, COLUMNS[1:])),
            sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(name)) for name in COLUMNS[1:]),
        )
    with conn.transaction():
        # The run's session may have opened while a migration made sessions default to read-only
        # (the restore that undid it puts the setting back for new sessions only).
        conn.execute("SET TRANSACTION READ WRITE")
        takes_runs_in_progress = ensure_table(conn, schema)
        if row["status"] == RUN_IN_PROGRESS:
            if not takes_runs_in_progress:
                return False
            conn.execute(
                sql.SQL("UPDATE {} SET status = %s WHERE status = %s AND id <> %s").format(_table(schema)),
                [RUN_UNFINISHED, RUN_IN_PROGRESS, row["id"]],
            )
        conn.execute(insert, row)
    return True


def forget_row(conn: psycopg.Connection, schema: str, run_id: str) -> None:
    """PostgreSQL: remove the row of run ``run_id``."""
    with conn.transaction():
        conn.execute("SET TRANSACTION READ WRITE")
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(_table(schema)), [run_id])


def _table(schema: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(TABLE))


def _table_exists(conn: psycopg.Connection, schema: str) -> bool:
    query = "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s"
    return conn.execute(query, [schema, TABLE]).fetchone() is not None


def ensure_table(conn: psycopg.Connection, schema: str) -> bool:
    """Create the schema and table when missing (a deploy role may not be allowed to create
    schemas); whether the table takes the row of a run in progress, rewritten as it goes on. An
    older faber's table (finished_at NOT NULL) is altered to take it when the user owns it; one the
    user may not alter, or may only add rows to, gets each run's row as it finishes, as then."""
    exists, ending_required, owned, updatable = conn.execute(
        "SELECT t.oid IS NOT NULL, coalesce(a.attnotnull, false),"
        " coalesce(pg_catalog.pg_has_role(c.relowner, 'USAGE'), true),"
        " t.oid IS NULL OR pg_catalog.has_table_privilege(t.oid, 'UPDATE')"
        " FROM (SELECT to_regclass(%s) AS oid) t"
        " LEFT JOIN pg_catalog.pg_class c ON c.oid = t.oid"
        " LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attname = 'finished_at'",
        [_table(schema).as_string(conn)],
    ).fetchone()
    if ending_required and owned:
        conn.execute(
            sql.SQL("ALTER TABLE {} {}").format(
                _table(schema),
                sql.SQL(", ").join(
                    sql.SQL("ALTER COLUMN {} DROP NOT NULL").format(sql.Identifier(name)) for name in ENDING_COLUMNS
                ),
            )
        )
    takes_runs_in_progress = updatable and (owned or not ending_required)
    if exists:
        return takes_runs_in_progress
    if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL(_CREATE_TABLE).format(table=_table(schema)))
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (environment, started_at DESC)").format(
            sql.Identifier(f"{TABLE}_environment_started"), _table(schema)
        )
    )
    return True


def refuse_shared_faber_schema(conn: psycopg.Connection, schema: str) -> None:
    """Refuse a faber schema that holds objects of the application's: backups leave that schema
    out and restores never touch it, so those objects could not be recovered."""
    others = conn.execute(
        r"""
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relname NOT LIKE 'faber\_%%'
        UNION ALL
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = %(schema)s AND p.proname NOT LIKE 'faber\_%%'
        UNION ALL
        SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = %(schema)s AND t.typrelid = 0 AND t.typelem = 0 AND t.typname NOT LIKE 'faber\_%%'
        ORDER BY 1 LIMIT 6
        """,
        {"schema": schema},
    ).fetchall()
    if others:
        names = ", ".join(row[0] for row in others[:5]) + (", ..." if len(others) > 5 else "")
        raise ConfigError(
            f"faber_schema {schema!r} holds objects that are not faber's ({names}): backups leave that schema out, "
            "so they could not be restored. Nothing was done",
            suggestions=['Set database.faber_schema to a schema of faber\'s own, e.g. "faber"'],
        )


def altered_table(table: str, present: set[str]) -> ConfigError | None:
    """The error for a history table lacking columns faber reads (changed by hand); None when it has them all."""
    missing = [column for column in COLUMNS if column not in present]
    if not missing:
        return None
    return ConfigError(
        f"faber's deployment history table {table} was altered: it lacks the column(s) {', '.join(missing)}. "
        "Nothing was read or changed",
        result={"table": table, "missing_columns": missing},
        suggestions=[
            "Add the column(s) back as docs/observability.md (Deployment history) describes them",
            f"Or move the table aside: ALTER TABLE {table} RENAME TO {TABLE}_altered (faber creates a new one "
            "at the next deploy)",
        ],
    )


def read_history(context: RunContext, limit: int) -> list[dict[str, Any]]:
    """The environment's runs, newest first; empty when nothing was recorded yet."""
    with context.database.session() as conn:
        return context.database.engine.read_deployments(context, conn, limit)


def read_rows(context: RunContext, conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    """PostgreSQL: the environment's rows; a read blocked by a lock names who holds it."""
    schema = context.config.database.faber_schema
    if not _table_exists(conn, schema):
        return []
    present = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        [_table(schema).as_string(conn)],
    ).fetchall()
    altered = altered_table(_table(schema).as_string(conn), {name for (name,) in present})
    if altered is not None:
        raise altered
    with conn.cursor(row_factory=dict_row) as cursor:
        try:
            rows = _read_rows(cursor, schema, context.environment, limit)
        except psycopg.errors.LockNotAvailable:
            raise blocked_read_error(
                conn,
                _table(schema).as_string(conn),
                context.database.lock_timeout,
                context.redactor.redact,
                reading="the deployment history",
            ) from None
    return ended_unless_locked(
        [_jsonable(row) for row in rows], lambda: lock_held(conn, database_lock_key(context.database, conn))
    )


def ended_unless_locked(rows: list[dict[str, Any]], lock_in_use: Callable[[], bool]) -> list[dict[str, Any]]:
    """The rows as read, a row still ``running`` read as ``unfinished`` when no run holds faber's
    lock: that run was killed before it could write how it ended."""
    if any(row["status"] == RUN_IN_PROGRESS for row in rows) and not lock_in_use():
        return [{**row, "status": RUN_UNFINISHED} if row["status"] == RUN_IN_PROGRESS else row for row in rows]
    return rows


def _read_rows(cursor: psycopg.Cursor, schema: str, environment: str, limit: int) -> list[dict[str, Any]]:
    return cursor.execute(
        sql.SQL("SELECT {} FROM {} WHERE environment = %s ORDER BY started_at DESC, finished_at DESC LIMIT %s").format(
            sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), _table(schema)
        ),
        [environment, limit],
    ).fetchall()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """The row's values as JSON has them: times in ISO 8601, a duration edited to NaN or infinity
    (JSON has neither) as null."""
    return {key: _json_value(value) for key, value in row.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
