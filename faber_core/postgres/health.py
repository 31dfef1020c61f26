"""Built-in PostgreSQL health checks: ``connectivity`` and ``schema``."""

from __future__ import annotations

import psycopg

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import HealthCheckResult


def describe_connection_error(exc: psycopg.Error) -> str:
    """A one-line reason, e.g. 'Database connection refused'."""
    text = str(exc).strip()
    lowered = text.lower()
    if "connection refused" in lowered:
        return "Database connection refused"
    if "timeout expired" in lowered:
        return "Database connection timed out"
    if "does not exist" in lowered and "database" in lowered:
        return "Database does not exist"
    if "password authentication failed" in lowered or "authentication failed" in lowered:
        return "Database authentication failed"
    if "could not translate host name" in lowered:
        return "Database host name could not be resolved"
    return text.splitlines()[-1] if text else type(exc).__name__


def _connectivity(context: RunContext) -> HealthCheckResult:
    try:
        with context.database.connect() as conn:
            version, in_recovery, read_only = conn.execute(
                "SELECT current_setting('server_version'), pg_is_in_recovery(),"
                " current_setting('default_transaction_read_only')"
            ).fetchone()
    except psycopg.Error as exc:
        return HealthCheckResult(name="connectivity", status="failed", details=describe_connection_error(exc))
    if in_recovery:
        return HealthCheckResult(
            name="connectivity", status="failed", details="Database is a read-only replica (in recovery)"
        )
    if read_only == "on":
        return HealthCheckResult(
            name="connectivity", status="failed", details="Database sessions default to read-only transactions"
        )
    return HealthCheckResult(name="connectivity", status="passed", details=f"PostgreSQL {version}, accepting writes")


def _schema(context: RunContext) -> HealthCheckResult:
    """Invalid indexes are what a failed CREATE INDEX CONCURRENTLY leaves behind."""
    try:
        with context.database.connect() as conn:
            invalid = conn.execute(
                """
                SELECT n.nspname || '.' || c.relname
                FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE NOT i.indisvalid ORDER BY 1
                """
            ).fetchall()
            tables = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
                " AND n.nspname NOT LIKE 'pg_toast%%'"
            ).fetchone()[0]
    except psycopg.Error as exc:
        return HealthCheckResult(name="schema", status="failed", details=describe_connection_error(exc))
    if invalid:
        names = ", ".join(row[0] for row in invalid)
        return HealthCheckResult(
            name="schema", status="failed", details=f"Invalid indexes (a failed concurrent build?): {names}"
        )
    return HealthCheckResult(name="schema", status="passed", details=f"{tables} tables, no invalid indexes")


_CHECKS = {"connectivity": _connectivity, "schema": _schema}


@hookimpl
def faber_health_checks(context: RunContext, checks: list[str]) -> list[HealthCheckResult]:
    return [_CHECKS[name](context) for name in checks if name in _CHECKS]
