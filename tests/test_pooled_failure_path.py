"""A deploy's failure path through a real PgBouncer switched to transaction pooling during the deploy.

faber refuses a pooler that shares server sessions between clients when a run starts (exit 2,
nothing changed). Switched while a deploy runs (an operator's ``SET pool_mode`` on PgBouncer's
console), the deploy's sessions opened from then on are refused by faber itself: a session whose
timeouts, SET once connected, do not read back (PgBouncer handed the next statement another server
session). After the migrations committed that is a database faber cannot reach safely: the deploy
reports what committed, restores nothing, and exits 3 (``rollback_status: "unreachable"``).

The deploy's one migration waits on a lock of the test's own; once it does, the test holds the
lock the ``held`` check (faber_core.testing.held_check) waits for and lets the migration commit.
With the post-deployment check waiting, the test switches PgBouncer (round robin over its idle
server sessions, so two statements of one client land on two of them), then lets the check go on.
A deploy without health checks is switched while its migration waits, and its verification's status
read opens the refused session.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import psycopg
import pytest

from faber_core.testing.faults import WAITING_ON_ADVISORY_LOCK, FaberProcess
from faber_core.testing.fixtures import CANARY_PASSWORD
from faber_core.testing.held_check import HOLD_ENV, VERDICT_ENV

ENVIRONMENT = "production"
URL_ENV = "POOLED_DATABASE_URL"
PLUGINS = "faber_core.testing.sqlfiles,faber_core.testing.held_check"
MIGRATION = "001_tier"
BASE = "CREATE TABLE accounts (id int PRIMARY KEY);\nINSERT INTO accounts VALUES (1);\n"
MIGRATION_KEY, CHECK_KEY = 7_301_001, 7_301_002


def waiting_on(conn: psycopg.Connection, key: int) -> bool:
    return conn.execute(WAITING_ON_ADVISORY_LOCK, [key]).fetchone() is not None


def wait_until_waiting(run: FaberProcess, conn: psycopg.Connection, key: int, what: str) -> None:
    run.wait_until(lambda: waiting_on(conn, key), what=what)


def columns(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts' ORDER BY 1"
        ).fetchall()
    return [name for (name,) in rows]


def switch_to_transaction_pooling(bouncer: str, database: str) -> None:
    """PgBouncer at ``bouncer`` shares server sessions between transactions from now on, handing
    each transaction the idle server session that waited longest; several wait, so a client's two
    statements run on two of them."""
    clients = [psycopg.connect(f"{bouncer}/{database}", autocommit=True) for _ in range(3)]
    for client in clients:
        client.execute("SELECT 1")
    for client in clients:
        client.close()
    with psycopg.connect(f"{bouncer}/pgbouncer", autocommit=True) as console:
        console.cursor().execute("SET server_round_robin = 1")
        console.cursor().execute("SET pool_mode = 'transaction'")


@pytest.fixture
def pooled_deploy(faber_project, database_url, pgbouncer):
    """``run(end_check_session=False) -> (code, document, stdout + stderr)``: ``faber migrate`` of
    :data:`MIGRATION` through PgBouncer (session pooling, dropping ``options``), switched to
    transaction pooling while its post-deployment check waits; that check then fails, or with
    ``end_check_session`` loses its session."""
    name = urlsplit(database_url).path.lstrip("/")
    bouncer = pgbouncer({name: name}, options="ignored")
    pooled = bouncer.replace("postgres@", f"postgres:{CANARY_PASSWORD}@", 1) + f"/{name}"
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
    project = faber_project(config, {"migrations/000_base.sql": BASE})
    env = {"FABER_PLUGINS": PLUGINS, URL_ENV: pooled, HOLD_ENV: str(CHECK_KEY), VERDICT_ENV: "failed"}
    base = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", "--skip-backup", env=env)
    assert base.finish(120) == 0, base.stdout() + base.stderr()
    (project / "migrations" / f"{MIGRATION}.sql").write_text(
        f"ALTER TABLE accounts ADD COLUMN tier int;\nSELECT pg_advisory_xact_lock({MIGRATION_KEY});\n"
    )

    def run(
        *, end_check_session: bool = False, health_checks: list[str] | None = None, skip_health_check: bool = False
    ) -> tuple[int, dict, str]:
        """With ``skip_health_check``, PgBouncer is switched while the migration waits instead."""
        if health_checks is not None:
            config["database"]["environments"][ENVIRONMENT]["health_checks"] = health_checks
            faber_project(config)
        with psycopg.connect(database_url, autocommit=True) as test:  # the server itself, not the pooler
            test.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_KEY])
            skip = ["--skip-health-check"] if skip_health_check else []
            deploy = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", *skip, env=env)
            try:
                wait_until_waiting(deploy, test, MIGRATION_KEY, "the migration held")
                if skip_health_check:
                    switch_to_transaction_pooling(bouncer, name)
                    test.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_KEY])
                    code = deploy.finish(120)
                    return code, json.loads(deploy.stdout()), deploy.stdout() + deploy.stderr()
                test.execute("SELECT pg_advisory_lock(%s)", [CHECK_KEY])
                test.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_KEY])
                wait_until_waiting(deploy, test, CHECK_KEY, "the post-deployment check held")
                switch_to_transaction_pooling(bouncer, name)
                if end_check_session:
                    test.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                        " AND objid = %s AND NOT granted",
                        [CHECK_KEY],
                    )
                test.execute("SELECT pg_advisory_unlock(%s)", [CHECK_KEY])
                code = deploy.finish(120)
            finally:
                deploy.stop_everything()
        output = deploy.stdout() + deploy.stderr()
        assert deploy.stdout(), deploy.stderr()[-3000:]
        return code, json.loads(deploy.stdout()), output

    return run


def test_a_failed_check_whose_rollback_connection_faber_refuses_says_what_committed_and_restores_nothing(
    pooled_deploy, database_url
):
    code, document, output = pooled_deploy()

    assert (code, document["code"]) == (3, "HEALTH_CHECK_FAILED"), output
    result = document["result"]
    assert (result["rollback_status"], result["health_check_after"]) == ("unreachable", "failed"), result
    assert result["applied_migrations"] == [MIGRATION] and result["migrations_applied"] == 1, result
    assert result["remaining_migrations"] == [] and result["rollback_initiated"] is False, result
    assert "transaction or statement pooling" in result["rollback_reason"], result
    assert "could not run" in document["error"], document
    assert document["recovery"]["rollback_command"].startswith("faber rollback production --to"), document
    assert columns(database_url) == ["id", "tier"], "the deploy was restored from its backup"
    assert CANARY_PASSWORD not in output


def test_a_lost_check_session_whose_new_one_faber_refuses_is_reported_not_verified_and_not_restored(
    pooled_deploy, database_url
):
    code, document, output = pooled_deploy(end_check_session=True)

    assert (code, document["code"]) == (3, "HEALTH_CHECK_FAILED"), output
    result = document["result"]
    assert (result["rollback_status"], result["health_check_after"]) == ("unreachable", "not_verified"), result
    assert result["applied_migrations"] == [MIGRATION] and result["rollback_initiated"] is False, result
    assert "transaction or statement pooling" in document["error"], document
    assert f"migrations committed ({MIGRATION})" in document["error"], document
    assert columns(database_url) == ["id", "tier"], "the deploy was restored from its backup"
    assert CANARY_PASSWORD not in output


def test_a_lost_check_session_whose_replacement_faber_refuses_before_checking_again_restores_nothing(
    pooled_deploy, database_url
):
    code, document, output = pooled_deploy(end_check_session=True, health_checks=["connectivity", "held"])

    assert (code, document["code"]) == (3, "HEALTH_CHECK_FAILED"), output
    result = document["result"]
    assert (result["rollback_status"], result["health_check_after"]) == ("unreachable", "not_verified"), result
    assert result["applied_migrations"] == [MIGRATION] and result["rollback_initiated"] is False, result
    assert "and a new one was refused" in document["error"], document
    assert "transaction or statement pooling" in document["error"], document
    assert columns(database_url) == ["id", "tier"], "the deploy was restored from its backup"
    assert CANARY_PASSWORD not in output


def test_a_verification_whose_session_faber_refuses_is_an_unreachable_database_not_a_configuration_error(
    pooled_deploy, database_url
):
    code, document, output = pooled_deploy(skip_health_check=True)

    assert (code, document["code"]) == (3, "HEALTH_CHECK_FAILED"), output
    assert document["error"].startswith("Cannot use a new connection to the production database"), document
    result = document["result"]
    # faber's lock session ran statements since the switch, each on whichever server session was
    # free; its lock stays on the session that took it, so it reads as held (not lost: that would
    # advise a hand restore), and the restore's own connection is refused.
    assert result["rollback_status"] == "unreachable", result
    assert result["rollback_initiated"] is False and "transaction or statement pooling" in document["error"], result
    assert result["applied_migrations"] == [MIGRATION] and result["remaining_migrations"] == [], result
    assert columns(database_url) == ["id", "tier"], "the deploy was restored from its backup"
    assert CANARY_PASSWORD not in output
