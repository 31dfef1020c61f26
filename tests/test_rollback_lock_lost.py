"""faber's lock lost while ``faber rollback`` or a failed deploy's automatic rollback restores, on a
real PostgreSQL.

The restore runs on sessions of its own (psql, pg_restore): ending the lock's session frees the
lock while the restore goes on, and another run may take it, read the database half restored,
back it up or deploy. The result says so, not a plain success.
"""

from __future__ import annotations

import json

import psycopg

from faber_core.postgres.locks import session_lock_key
from faber_core.testing.faults import FaberProcess, event_matcher
from faber_core.testing.fixtures import CANARY_PASSWORD

ENVIRONMENT = "production"
URL_ENV = "ROLLBACK_LOCK_DATABASE_URL"
PLUGINS = "faber_core.testing.sqlfiles"


def faber_lock_holder(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = ((%(key)s::bigint >> 32) & 4294967295)::oid"
        " AND objid = (%(key)s::bigint & 4294967295)::oid AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        {"key": session_lock_key(conn)},
    ).fetchone()
    assert row, "faber holds no lock on the database"
    return row[0]


def deployed_project(faber_project, env: dict[str, str]):
    settings = {"database_url_env": URL_ENV, "lint": "warn", "backup_before_migrate": True, "auto_rollback": True}
    config = {"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: settings}}}
    base = "CREATE TABLE accounts (id int PRIMARY KEY);\nINSERT INTO accounts SELECT generate_series(1, 1000);\n"
    project = faber_project(config, {"migrations/000_base.sql": base})
    first = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", "--skip-backup", env=env)
    assert first.finish() == 0, first.stdout() + first.stderr()
    return project


def end_the_lock_session_once_the_restore_began(run: FaberProcess, url: str) -> tuple[int, int]:
    """The run's exit code, and whether the ``tier`` column the restore removes is still there."""
    with psycopg.connect(url, autocommit=True) as test:
        try:
            run.wait_for(event_matcher("rollback.started"))
            test.execute("SELECT pg_terminate_backend(%s)", [faber_lock_holder(test)])
            code = run.finish(120)
        finally:
            run.stop_everything()
        tier = test.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'tier'"
        ).fetchone()[0]
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    assert "Traceback" not in run.stderr()
    return code, tier


def test_a_rollback_whose_lock_was_lost_during_the_restore_says_so(faber_project, database_url):
    env = {"FABER_PLUGINS": PLUGINS, URL_ENV: database_url}
    project = deployed_project(faber_project, env)
    (project / "migrations" / "001_tier.sql").write_text("ALTER TABLE accounts ADD COLUMN tier int;\n")
    deploy = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", env=env)
    assert deploy.finish() == 0, deploy.stdout() + deploy.stderr()
    backup_id = json.loads(deploy.stdout())["result"]["backup_id"]

    run = FaberProcess.start(project, "rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json", env=env)
    code, tier = end_the_lock_session_once_the_restore_began(run, database_url)

    document = json.loads(run.stdout())
    assert (code, document["code"]) == (7, "LOCKED"), document
    assert "lost during the restore" in document["error"], document
    assert document["result"]["restore_committed"] is True, document
    assert tier == 0, "the restore did not commit"


def test_a_failed_deploy_whose_lock_was_lost_during_its_automatic_restore_says_so(faber_project, database_url):
    env = {"FABER_PLUGINS": PLUGINS, URL_ENV: database_url}
    project = deployed_project(faber_project, env)
    (project / "migrations" / "001_tier.sql").write_text("ALTER TABLE accounts ADD COLUMN tier int;\n")
    (project / "migrations" / "002_broken.sql").write_text("SELECT 1 / 0;\n")
    run = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", env=env)
    code, tier = end_the_lock_session_once_the_restore_began(run, database_url)

    document = json.loads(run.stdout())
    assert (code, document["code"]) == (6, "MIGRATION_FAILED"), document
    result = document["result"]
    assert (result["rollback_status"], result["restore_committed"]) == ("success", True), result
    assert any("lock was lost while the restore ran" in s for s in document["recovery"]["suggestions"]), document
    assert tier == 0, "the restore did not commit"
