"""The built-in health checks, ``connectivity`` and ``schema``, as the target's engine runs them
(PostgreSQL: :mod:`faber_core.postgres.health`; MySQL/MariaDB: :mod:`faber_core.engines.mysql_health`)."""

from __future__ import annotations

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import HealthCheckInfo, HealthCheckResult


@hookimpl
def faber_health_check_names() -> list[HealthCheckInfo]:
    return [
        HealthCheckInfo(name="connectivity", description="the database answers and accepts writes"),
        HealthCheckInfo(name="schema", description="no invalid index (PostgreSQL); the schema is readable (MySQL)"),
        # Run by the workflow itself from the migration status; declared here with the built-ins.
        HealthCheckInfo(name="migrations", description="no failed, edited or locally missing migration"),
    ]


@hookimpl
def faber_health_checks(context: RunContext, checks: list[str]) -> list[HealthCheckResult]:
    available = context.database.engine.health_checks()
    return [available[name](context) for name in checks if name in available]
