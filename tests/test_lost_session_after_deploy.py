"""faber's session ended while its post-deployment health check runs, on a real PostgreSQL.

The deploy's one migration waits on a lock of the test's own; once it does, the test holds the lock
the ``held`` check (faber_core.testing.held_check) waits for and lets the migration commit. The
post-deployment check then waits on the run's shared session, which the test ends with
``pg_terminate_backend`` (and, in one test, faber's lock's session too; in another it refuses new
connections first). Every migration of the deploy has committed by then.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from faber_core.postgres.locks import session_lock_key
from faber_core.testing.faults import WAITING_ON_ADVISORY_LOCK, FaberProcess
from faber_core.testing.fixtures import CANARY_PASSWORD, TEST_SESSION
from faber_core.testing.held_check import HOLD_ENV, VERDICT_ENV

ENVIRONMENT = "production"
URL_ENV = "FAULTS_DATABASE_URL"
PLUGINS = "faber_core.testing.sqlfiles,faber_core.testing.held_check"
MIGRATION = "001_tier"
BASE = "CREATE TABLE accounts (id int PRIMARY KEY);\nINSERT INTO accounts VALUES (1);\n"


def advisory_key() -> int:
    return int.from_bytes(uuid.uuid4().bytes[:4], "big") >> 1


class LostSessionDeploy:
    """``faber migrate`` whose post-deployment ``held`` check waits on :attr:`check_key`."""

    def __init__(self, faber_project, url: str, admin_url: str) -> None:
        self.url = url
        self.admin_url = admin_url
        self.migration_key = advisory_key()
        self.check_key = advisory_key()
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
        migration = f"ALTER TABLE accounts ADD COLUMN tier int;\nSELECT pg_advisory_xact_lock({self.migration_key});\n"
        self.project: Path = faber_project(
            config,
            {"migrations/000_base.sql": BASE},
        )
        base = self.start("--skip-backup")
        assert base.finish() == 0, base.stdout() + base.stderr()
        (self.project / "migrations" / f"{MIGRATION}.sql").write_text(migration)

    def start(self, *args: str, check_fails: bool = False) -> FaberProcess:
        env = {"FABER_PLUGINS": PLUGINS, URL_ENV: self.url, HOLD_ENV: str(self.check_key)}
        if check_fails:
            env[VERDICT_ENV] = "failed"
        return FaberProcess.start(self.project, "migrate", ENVIRONMENT, "--yes", "--json", *args, env=env)

    def run(
        self, *, end_lock_session: bool = False, refuse_connections: bool = False, check_fails: bool = False
    ) -> tuple[int, dict]:
        """Deploy; end the health check's session as it waits (and faber's lock's session, or
        first refuse new connections to the database); the exit code and the document. With
        ``check_fails`` the check's session is left alone and the check reports failed."""
        with psycopg.connect(self.url, autocommit=True) as test:
            test.execute("SELECT pg_advisory_lock(%s)", [self.migration_key])
            run = self.start(check_fails=check_fails)
            try:
                run.wait_until(lambda: waiting_on(test, self.migration_key), what="the migration held")
                test.execute("SELECT pg_advisory_lock(%s)", [self.check_key])
                test.execute("SELECT pg_advisory_unlock(%s)", [self.migration_key])
                checking = run.wait_until(lambda: waiting_on(test, self.check_key), what="the check held")
                if refuse_connections:
                    self.allow_connections(test.info.dbname, allow=False)
                ended = [checking, *([faber_lock_holder(test)] if end_lock_session else [])]
                if check_fails:
                    ended = []
                test.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", [ended])
                test.execute("SELECT pg_advisory_unlock(%s)", [self.check_key])
                code = run.finish(120)
            finally:
                if refuse_connections:
                    self.allow_connections(test.info.dbname, allow=True)
                run.stop_everything()
        assert run.stdout(), run.stderr()[-3000:]
        assert CANARY_PASSWORD not in run.stdout() + run.stderr()
        self.progress = run.stderr()
        return code, json.loads(run.stdout())

    def run_refusing_the_restore_s_own_connection(self) -> tuple[int, dict]:
        """Deploy; its post-deployment check fails, and the database refuses new connections once
        the check of a new one before the restore has passed: while the writes check before the
        restore waits, on the run's open session, for a lock the test holds on faber's table of
        baselines. The restore's own first connection is then refused."""
        baselines = "faber.faber_backup_baselines"
        # The test's own sessions, named as faber's: the writes check does not wait for their counters.
        with (
            psycopg.connect(self.url, autocommit=True, application_name=TEST_SESSION) as test,
            psycopg.connect(self.url, application_name=TEST_SESSION) as holder,
        ):
            test.execute("SELECT pg_advisory_lock(%s)", [self.migration_key])
            run = self.start(check_fails=True)
            try:
                run.wait_until(lambda: waiting_on(test, self.migration_key), what="the migration held")
                test.execute("SELECT pg_advisory_lock(%s)", [self.check_key])
                test.execute("SELECT pg_advisory_unlock(%s)", [self.migration_key])
                run.wait_until(lambda: waiting_on(test, self.check_key), what="the check held")
                holder.execute(f"LOCK TABLE {baselines} IN ACCESS EXCLUSIVE MODE")
                test.execute("SELECT pg_advisory_unlock(%s)", [self.check_key])
                waiting = "SELECT 1 FROM pg_locks WHERE relation = to_regclass(%s) AND NOT granted"
                run.wait_until(lambda: test.execute(waiting, [baselines]).fetchone(), what="the writes check held")
                self.allow_connections(test.info.dbname, allow=False)
                holder.rollback()
                code = run.finish(120)
            finally:
                self.allow_connections(test.info.dbname, allow=True)
                run.stop_everything()
        assert run.stdout(), run.stderr()[-3000:]
        assert CANARY_PASSWORD not in run.stdout() + run.stderr()
        return code, json.loads(run.stdout())

    def run_losing_the_lock_before_the_migrations(self) -> tuple[int, dict]:
        """Deploy; end faber's lock's session while the pre-deployment check waits, so the check
        before the first migration finds the lock lost; the exit code and the document."""
        with psycopg.connect(self.url, autocommit=True) as test:
            test.execute("SELECT pg_advisory_lock(%s)", [self.check_key])
            run = self.start()
            try:
                run.wait_until(lambda: waiting_on(test, self.check_key), what="the pre-deployment check held")
                test.execute("SELECT pg_terminate_backend(%s)", [faber_lock_holder(test)])
                test.execute("SELECT pg_advisory_unlock(%s)", [self.check_key])
                code = run.finish(120)
            finally:
                run.stop_everything()
        assert run.stdout(), run.stderr()[-3000:]
        return code, json.loads(run.stdout())

    def allow_connections(self, database: str, *, allow: bool) -> None:
        """Let new sessions into ``database`` or refuse them (its own sessions stay)."""
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(sql.Identifier(database), allow))


def waiting_on(conn: psycopg.Connection, key: int) -> int | None:
    """The pid of the session of this database waiting for advisory lock ``key``, if any."""
    if not conn.execute(WAITING_ON_ADVISORY_LOCK, [key]).fetchone():
        return None
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [key],
    ).fetchone()
    return row[0] if row else None


def faber_lock_holder(conn: psycopg.Connection) -> int:
    key = session_lock_key(conn)
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = ((%(key)s::bigint >> 32) & 4294967295)::oid"
        " AND objid = (%(key)s::bigint & 4294967295)::oid AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        {"key": key},
    ).fetchone()
    assert row, "faber holds no lock on the database"
    return row[0]


def columns(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts' ORDER BY 1"
        ).fetchall()
    return [name for (name,) in rows]


@pytest.fixture
def deploy(faber_project, database_url, postgres_admin_url) -> LostSessionDeploy:
    return LostSessionDeploy(faber_project, database_url, postgres_admin_url)


def test_a_session_lost_in_the_post_deployment_check_is_checked_again_not_restored(deploy, database_url):
    code, document = deploy.run()

    assert code == 0, json.dumps(document)
    assert document["result"]["health_check_after"] == "passed", document
    assert "⚠ The post-deployment health check lost its database session (terminating connection" in deploy.progress
    assert columns(database_url) == ["id", "tier"], "the deploy was restored from its backup"


def test_with_faber_s_lock_lost_too_the_deploy_is_not_restored_and_says_its_health_was_not_verified(
    deploy, database_url
):
    code, document = deploy.run(end_lock_session=True)

    assert (code, document["code"]) == (7, "LOCKED"), json.dumps(document)
    result = document["result"]
    assert (result["rollback_status"], result["health_check_after"]) == ("lock_lost", "not_verified"), result
    assert result["applied_migrations"] == [MIGRATION] and result["migrations_applied"] == 1, result
    assert "post-deployment health check" in document["error"] and "not verified" in document["error"], document
    assert "its transaction rolled back" not in document["error"], document
    advice = " ".join(document["recovery"]["suggestions"])
    assert "faber status production" in advice and "faber health production" in advice, advice
    assert "Verify database is running" not in advice, advice
    assert columns(database_url) == ["id", "tier"]


def test_a_database_refusing_a_fresh_connection_after_the_lost_session_is_reported_unreachable_not_restored(
    deploy, database_url
):
    code, document = deploy.run(refuse_connections=True)

    assert (code, document["code"]) == (3, "HEALTH_CHECK_FAILED"), json.dumps(document)
    result = document["result"]
    assert (result["rollback_status"], result["health_check_after"]) == ("unreachable", "not_verified"), result
    assert result["applied_migrations"] == [MIGRATION] and result["rollback_initiated"] is False, result
    assert "refused" in document["error"] and "not verified" in document["error"], document
    advice = document["recovery"]["suggestions"]
    assert advice[0] == "Verify database is running", advice
    assert any("faber rollback production --to" in line for line in advice), advice
    assert columns(database_url) == ["id", "tier"]


def test_a_failed_post_deployment_check_on_a_database_then_refusing_connections_is_reported_unreachable(
    deploy, database_url
):
    code, document = deploy.run(refuse_connections=True, check_fails=True)

    assert (code, document["code"]) == (3, "HEALTH_CHECK_FAILED"), json.dumps(document)
    result = document["result"]
    assert (result["rollback_status"], result["health_check_after"]) == ("unreachable", "failed"), result
    assert result["applied_migrations"] == [MIGRATION] and result["rollback_initiated"] is False, result
    assert "refuses connections" in result["rollback_reason"], result
    assert document["recovery"]["rollback_command"].startswith("faber rollback production --to"), document
    advice = document["recovery"]["suggestions"]
    assert "refused connections" in document["error"], document
    assert any(line.startswith("Not checked, as the database refuses connections") for line in advice), advice
    assert columns(database_url) == ["id", "tier"]


def test_a_restore_whose_own_connection_is_refused_after_the_check_says_what_committed_and_that_it_did_not_start(
    deploy, database_url
):
    code, document = deploy.run_refusing_the_restore_s_own_connection()

    assert (code, document["code"]) == (8, "RESTORE_FAILED"), json.dumps(document)
    result = document["result"]
    assert (result["rollback_status"], result["health_check_after"]) == ("failed", "failed"), result
    assert result["applied_migrations"] == [MIGRATION] and result["remaining_migrations"] == [], result
    assert "did not start" in result["rollback_error"] and "the database is unchanged" in result["rollback_error"]
    assert document["recovery"]["rollback_command"].startswith("faber rollback production --to"), document
    assert columns(database_url) == ["id", "tier"]


def test_a_lock_lost_before_the_first_migration_names_it_as_not_started(deploy, database_url):
    code, document = deploy.run_losing_the_lock_before_the_migrations()

    assert (code, document["code"]) == (7, "LOCKED"), json.dumps(document)
    assert document["error"].startswith(f"faber's lock on the database was lost before migration {MIGRATION}")
    result = document["result"]
    assert result["failed_migration"] == MIGRATION and "transaction_rolled_back" not in result, result
    assert (result["applied_migrations"], result["remaining_migrations"]) == ([], [MIGRATION]), result
    assert result["rollback_status"] == "not_needed", result
    suggestions = document["recovery"]["suggestions"]
    assert suggestions[0] == f"Database unchanged: faber's lock was lost before {MIGRATION} started", suggestions
    assert columns(database_url) == ["id"]
