"""A health check a test holds: ``held`` waits, on the run's shared session, for a lock the test
holds, so the test can act at the moment a check's query runs (end that session, say).

Load it into a ``faber`` process with ``FABER_PLUGINS=faber_core.testing.held_check`` and name it
in the environment's ``health_checks``. It waits while the lock :data:`HOLD_ENV` names is held
elsewhere: on PostgreSQL an advisory lock's key (wait with ``pg_advisory_lock_shared``, which a
test's exclusive ``pg_advisory_lock`` blocks), on MySQL/MariaDB a ``GET_LOCK`` name. Without
:data:`HOLD_ENV` it passes at once. Like the built-in checks, it reports a database error as a
failed check rather than raising it. With :data:`VERDICT_ENV` set to ``failed``, a check that had to
wait reports failed once the lock is free (its session intact), as a check that finds the deployed
application unhealthy does: the test picks which run of it fails by holding the lock then.
"""

from __future__ import annotations

import os

from faber_core import hookimpl
from faber_core.context import RunContext
from faber_core.models import HealthCheckInfo, HealthCheckResult

NAME = "held"
HOLD_ENV = "FAULTS_HELD_CHECK_LOCK"
"""The lock ``held`` waits for: an advisory lock key (PostgreSQL) or a ``GET_LOCK`` name (MySQL)."""
VERDICT_ENV = "FAULTS_HELD_CHECK_VERDICT"
"""``failed``: a check that waited for the lock reports failed once it is free."""
WAIT_SECONDS = 60


@hookimpl
def faber_health_check_names() -> list[HealthCheckInfo]:
    return [HealthCheckInfo(name=NAME, description="waits for a lock a test holds")]


@hookimpl
def faber_health_checks(context: RunContext, checks: list[str]) -> list[HealthCheckResult]:
    if NAME not in checks:
        return []
    lock = os.environ.get(HOLD_ENV)
    database = context.database
    waited = False
    try:
        with database.session() as conn:
            if lock and database.engine.name == "mysql":
                waited = not conn.execute("SELECT GET_LOCK(%s, 0)", [lock]).fetchone()[0]
                if waited:
                    conn.execute("SELECT GET_LOCK(%s, %s)", [lock, WAIT_SECONDS])
                conn.execute("SELECT RELEASE_LOCK(%s)", [lock])
            elif lock:
                waited = not conn.execute("SELECT pg_try_advisory_lock_shared(%s)", [int(lock)]).fetchone()[0]
                if waited:
                    conn.execute("SELECT pg_advisory_lock_shared(%s)", [int(lock)])
                conn.execute("SELECT pg_advisory_unlock_shared(%s)", [int(lock)])
            else:
                conn.execute("SELECT 1")
    except database.engine.driver_error as exc:
        details = database.engine.describe_connection_error(exc, database)
        return [HealthCheckResult(name=NAME, status="failed", details=details)]
    if waited and os.environ.get(VERDICT_ENV) == "failed":
        return [HealthCheckResult(name=NAME, status="failed", details="the application answers with errors")]
    return [HealthCheckResult(name=NAME, status="passed", details="the lock was free")]
