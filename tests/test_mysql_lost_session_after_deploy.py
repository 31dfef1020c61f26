"""faber's session ended (``KILL``) while its post-deployment health check runs, on a real
MySQL/MariaDB: the same path as on PostgreSQL (tests/test_lost_session_after_deploy.py).

The deploy's one migration waits on a ``GET_LOCK`` of the test's own; once it does, the test takes
the lock the ``held`` check (faber_core.testing.held_check) waits for and lets the migration
finish. The post-deployment check then waits on the run's shared session, which the test kills.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit

import pytest

from faber_core.testing.faults import FaberProcess
from faber_core.testing.fixtures import mysql_connect
from faber_core.testing.held_check import HOLD_ENV, VERDICT_ENV

ENVIRONMENT = "production"
URL_ENV = "FAULTS_DATABASE_URL"
PLUGINS = "faber_core.testing.sqlfiles,faber_core.testing.held_check"


def session_waiting_for(conn, lock: str) -> int | None:
    """The id of the session waiting in ``GET_LOCK(lock, ...)``, other than ``conn``'s."""
    row = conn.execute(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE %s AND ID <> CONNECTION_ID()",
        [f"SELECT GET_LOCK('{lock}'%"],
    ).fetchone()
    return row[0] if row else None


@pytest.fixture
def project(faber_project, mysql_database_url):
    config = {
        "database": {
            "migration_tool": "sqlfiles",
            "environments": {
                ENVIRONMENT: {
                    "database_url_env": URL_ENV,
                    "lint": "warn",
                    "health_checks": ["connectivity", "held", "migrations"],
                }
            },
        }
    }
    base = "CREATE TABLE accounts (id int PRIMARY KEY);\nINSERT INTO accounts VALUES (1);\n"
    return faber_project(config, {"migrations/000_base.sql": base})


def test_a_killed_session_in_the_post_deployment_check_is_checked_again_not_restored(project, mysql_database_url):
    migration_hold, check_hold = (f"faber-test-{uuid.uuid4().hex[:12]}" for _ in range(2))
    env = {"FABER_PLUGINS": PLUGINS, URL_ENV: mysql_database_url, HOLD_ENV: check_hold}
    base = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", "--skip-backup", env=env)
    assert base.finish() == 0, base.stdout() + base.stderr()
    (project / "migrations" / "001_tier.sql").write_text(
        f"ALTER TABLE accounts ADD COLUMN tier int;\nSELECT GET_LOCK('{migration_hold}', 60);\n"
    )
    with mysql_connect(mysql_database_url) as test:
        assert test.execute("SELECT GET_LOCK(%s, 0)", [migration_hold]).fetchone()[0] == 1
        run = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", env=env)
        try:
            run.wait_until(lambda: session_waiting_for(test, migration_hold), what="the migration held")
            assert test.execute("SELECT GET_LOCK(%s, 0)", [check_hold]).fetchone()[0] == 1
            test.execute("SELECT RELEASE_LOCK(%s)", [migration_hold])
            checking = run.wait_until(lambda: session_waiting_for(test, check_hold), what="the check held")
            test.execute(f"KILL {int(checking)}")
            test.execute("SELECT RELEASE_LOCK(%s)", [check_hold])
            code = run.finish(120)
        finally:
            run.stop_everything()
        document = json.loads(run.stdout())
        tier = test.execute(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
            " AND TABLE_NAME = 'accounts' AND COLUMN_NAME = 'tier'"
        ).fetchone()[0]

    assert code == 0, json.dumps(document)
    assert document["result"]["health_check_after"] == "passed", document
    assert tier == 1, "the deploy was restored from its backup"


def test_a_failed_post_deployment_check_on_a_server_then_refusing_connections_is_reported_unreachable(
    project, mysql_database_url, mysql_admin_url
):
    migration_hold, check_hold = (f"faber-test-{uuid.uuid4().hex[:12]}" for _ in range(2))
    env = {"FABER_PLUGINS": PLUGINS, URL_ENV: mysql_database_url, HOLD_ENV: check_hold, VERDICT_ENV: "failed"}
    base = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", "--skip-backup", env=env)
    assert base.finish() == 0, base.stdout() + base.stderr()
    (project / "migrations" / "001_tier.sql").write_text(
        f"ALTER TABLE accounts ADD COLUMN tier int;\nSELECT GET_LOCK('{migration_hold}', 60);\n"
    )
    user = urlsplit(mysql_database_url).username
    # The test's own sessions are the administrator's: locking faber's account refuses its next one alone.
    with mysql_connect(mysql_admin_url) as test:
        assert test.execute("SELECT GET_LOCK(%s, 0)", [migration_hold]).fetchone()[0] == 1
        run = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", env=env)
        try:
            run.wait_until(lambda: session_waiting_for(test, migration_hold), what="the migration held")
            assert test.execute("SELECT GET_LOCK(%s, 0)", [check_hold]).fetchone()[0] == 1
            test.execute("SELECT RELEASE_LOCK(%s)", [migration_hold])
            run.wait_until(lambda: session_waiting_for(test, check_hold), what="the check held")
            # faber's sessions stay; a new one of its user is refused.
            test.execute(f"ALTER USER '{user}'@'%' ACCOUNT LOCK")
            test.execute("SELECT RELEASE_LOCK(%s)", [check_hold])
            code = run.finish(120)
        finally:
            test.execute(f"ALTER USER '{user}'@'%' ACCOUNT UNLOCK")
            run.stop_everything()
        document = json.loads(run.stdout())
        tier = test.execute(
            "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
            " AND TABLE_NAME = 'accounts' AND COLUMN_NAME = 'tier'",
            [urlsplit(mysql_database_url).path.lstrip("/")],
        ).fetchone()[0]

    assert (code, document["code"]) == (3, "HEALTH_CHECK_FAILED"), json.dumps(document)
    result = document["result"]
    assert (result["rollback_status"], result["health_check_after"]) == ("unreachable", "failed"), result
    assert result["applied_migrations"] == ["001_tier"] and result["rollback_initiated"] is False, result
    assert "refuses connections" in result["rollback_reason"], result
    assert document["recovery"]["rollback_command"].startswith("faber rollback production --to"), document
    assert tier == 1, "the deploy was restored from its backup"
