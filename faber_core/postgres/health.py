"""PostgreSQL's health checks: ``connectivity`` and ``schema``."""

from __future__ import annotations

import psycopg

from faber_core.context import Database, RunContext
from faber_core.models import HealthCheckResult


def describe_connection_error(exc: psycopg.Error, database: Database) -> str:
    """A one-line reason naming what it is about, e.g. 'Database connection refused at db.internal:5432'.

    Names the server's host and port, the database or the user as the error concerns them;
    never the password. Not redacted: the caller passes it through the run's redactor.
    """
    text = str(exc).strip()
    lowered = text.lower()
    where = database.address
    if "connection refused" in lowered:
        return f"Database connection refused at {where}"
    if "timeout expired" in lowered:
        return (
            f"Database connection to {where} timed out after {database.connect_timeout}s "
            "(connect_timeout_seconds in the environment's config)"
        )
    if "does not exist" in lowered and "database" in lowered and "role" not in lowered:
        return f'Database "{database.name_for_display}" does not exist on {where}'
    if "role" in lowered and "does not exist" in lowered:
        return f'Database user "{database.user}" does not exist on {where}'
    if "authentication failed" in lowered:
        return f'Database authentication failed for user "{database.user}" at {where}'
    if "could not translate host name" in lowered or "failed to resolve host" in lowered:
        return f"Database host name could not be resolved: {where}"
    # A server's error (a session ended mid-query) has its message first, then the query's context;
    # libpq's own connection errors end with their reason.
    reason = exc.diag.message_primary or (text.splitlines()[-1] if text else type(exc).__name__)
    return f"{reason} ({where})"


def _connectivity(context: RunContext) -> HealthCheckResult:
    try:
        with context.database.session() as conn:
            version, in_recovery, read_only = conn.execute(
                "SELECT current_setting('server_version'), pg_is_in_recovery(),"
                " current_setting('default_transaction_read_only')"
            ).fetchone()
    except psycopg.Error as exc:
        return HealthCheckResult(
            name="connectivity", status="failed", details=describe_connection_error(exc, context.database)
        )
    env_var = context.settings.database_url_env or "the database URL"
    if in_recovery:
        return HealthCheckResult(
            name="connectivity",
            status="failed",
            details="Database is a read-only replica (in recovery)",
            suggestions=[f"Point {env_var} at the primary: it names a replica, which takes no writes"],
        )
    if read_only == "on":
        return HealthCheckResult(
            name="connectivity",
            status="failed",
            details="Database sessions default to read-only transactions",
            suggestions=[
                f"Point {env_var} at a writable database, or turn read-only off: ALTER DATABASE "
                f"{context.database.name_for_display} RESET default_transaction_read_only (or ALTER ROLE ... RESET "
                "it, wherever it was set)"
            ],
        )
    return HealthCheckResult(name="connectivity", status="passed", details=f"PostgreSQL {version}, accepting writes")


def invalid_indexes(conn: psycopg.Connection) -> list[str]:
    """Every invalid index (``schema.name``, quoted where needed): what a failed or interrupted
    ``CREATE INDEX CONCURRENTLY`` leaves behind. One a build still running makes (invalid until it
    ends: a DBA's, or a killed run's whose session the server has not ended yet) is none: advice
    to drop it would end that build."""
    rows = conn.execute(
        """
        SELECT format('%I.%I', n.nspname, c.relname)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT i.indisvalid
          AND i.indexrelid NOT IN (
              SELECT p.index_relid FROM pg_stat_progress_create_index p WHERE p.index_relid IS NOT NULL
          )
        ORDER BY 1
        """
    ).fetchall()
    return [row[0] for row in rows]


def _schema(context: RunContext) -> HealthCheckResult:
    """Invalid indexes are what a failed CREATE INDEX CONCURRENTLY leaves behind."""
    try:
        with context.database.session() as conn:
            invalid = invalid_indexes(conn)
            tables = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
                " AND n.nspname NOT LIKE 'pg_toast%%'"
            ).fetchone()[0]
    except psycopg.Error as exc:
        return HealthCheckResult(
            name="schema", status="failed", details=describe_connection_error(exc, context.database)
        )
    if invalid:
        return HealthCheckResult(
            name="schema",
            status="failed",
            details=f"Invalid indexes (a failed concurrent build?): {', '.join(invalid)}",
        )
    return HealthCheckResult(name="schema", status="passed", details=f"{tables} tables, no invalid indexes")


CHECKS = {"connectivity": _connectivity, "schema": _schema}
"""PostgreSQL's built-in checks, run through its engine (faber_core.engines.health)."""
