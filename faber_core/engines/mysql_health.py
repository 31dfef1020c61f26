"""MySQL/MariaDB health checks: ``connectivity`` (the server answers and accepts writes) and
``schema`` (the database's tables are readable, none marked crashed or corrupt)."""

from __future__ import annotations

import pymysql

from faber_core.context import RunContext
from faber_core.models import HealthCheckResult


def _connectivity(context: RunContext) -> HealthCheckResult:
    database = context.database
    try:
        with database.session() as conn:
            version, read_only = conn.execute("SELECT VERSION(), @@global.read_only").fetchone()
            # MariaDB kept MySQL 5's name for it; MySQL 8 knows only the new one.
            variable = "tx_read_only" if "mariadb" in version.lower() else "transaction_read_only"
            transaction_read_only = conn.execute(f"SELECT @@session.{variable}").fetchone()[0]
    except pymysql.Error as exc:
        return HealthCheckResult(
            name="connectivity", status="failed", details=database.engine.describe_connection_error(exc, database)
        )
    env_var = context.settings.database_url_env or "the database URL"
    if read_only:
        return HealthCheckResult(
            name="connectivity",
            status="failed",
            details="Database server is read-only (read_only = ON: a replica?)",
            suggestions=[f"Point {env_var} at the primary: the server it names takes no writes (read_only = ON)"],
        )
    if transaction_read_only:
        return HealthCheckResult(
            name="connectivity",
            status="failed",
            details="Database sessions default to read-only transactions",
            suggestions=[
                f"Point {env_var} at a writable server, or turn read-only transactions off for faber's user "
                "(SET GLOBAL transaction_read_only = OFF; tx_read_only on MariaDB)"
            ],
        )
    return HealthCheckResult(name="connectivity", status="passed", details=f"{version}, accepting writes")


def _schema(context: RunContext) -> HealthCheckResult:
    database = context.database
    try:
        with database.session() as conn:
            rows = conn.execute(
                "SELECT TABLE_NAME, TABLE_COMMENT FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'"
            ).fetchall()
    except pymysql.Error as exc:
        return HealthCheckResult(
            name="schema", status="failed", details=database.engine.describe_connection_error(exc, database)
        )
    # information_schema reports an unreadable table (a crashed MyISAM or a missing InnoDB file)
    # with its error in TABLE_COMMENT and no other columns.
    broken = [
        name for name, comment in rows if "crashed" in (comment or "").lower() or "doesn't exist" in (comment or "")
    ]
    if broken:
        return HealthCheckResult(name="schema", status="failed", details=f"Unreadable tables: {', '.join(broken)}")
    return HealthCheckResult(name="schema", status="passed", details=f"{len(rows)} tables, all readable")


CHECKS = {"connectivity": _connectivity, "schema": _schema}
