"""faber's lock lost while ``faber rollback`` or a failed deploy's automatic rollback restores, on a
real PostgreSQL.

The restore runs on sessions of its own (psql, pg_restore): ending the lock's session frees the
lock while the restore goes on, and another run may take it, read the database half restored,
back it up or deploy. So the restore checks faber's lock inside its own transaction right before
its COMMIT: lost, nothing commits, the run says so (exit 7) and the database is exactly as before.

Each test holds the restore at a real moment: the run holds just after ``rollback.started``
(:mod:`faber_core.testing.held_event`) while the test takes a lock on the application's table,
which the restore's transaction then waits for, its prelude already run; the test ends faber's lock
session there, then lets the restore go on to its COMMIT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import psycopg
import pytest

from faber_core.testing import held_event
from faber_core.testing.faults import DatabaseState, FaberProcess, end_faber_lock_session, event_matcher, snapshot
from faber_core.testing.fixtures import CANARY_PASSWORD, TEST_SESSION

ENVIRONMENT = "production"
URL_ENV = "ROLLBACK_LOCK_DATABASE_URL"
PLUGINS = "faber_core.testing.sqlfiles,faber_core.testing.held_event"


def restore_waiting_for_a_lock(conn: psycopg.Connection) -> int | None:
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'faber restore %' AND wait_event_type = 'Lock'"
    ).fetchone()
    return row[0] if row else None


def run_env(database_url: str) -> dict[str, str]:
    return {
        "FABER_PLUGINS": PLUGINS,
        URL_ENV: database_url,
        held_event.EVENT_ENV: "rollback.started",
        held_event.SECONDS_ENV: "5",
    }


def deployed_project(faber_project, env: dict[str, str], restore_mode: str = "in-place"):
    settings = {
        "database_url_env": URL_ENV,
        "lint": "warn",
        "backup_before_migrate": True,
        "auto_rollback": True,
        "backup": {"provider": "pg_dump", "restore_mode": restore_mode},
    }
    config = {"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: settings}}}
    base = "CREATE TABLE accounts (id int PRIMARY KEY);\nINSERT INTO accounts SELECT generate_series(1, 1000);\n"
    project = faber_project(config, {"migrations/000_base.sql": base})
    first = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", "--skip-backup", env=env)
    assert first.finish() == 0, first.stdout() + first.stderr()
    (project / "migrations" / "001_tier.sql").write_text("ALTER TABLE accounts ADD COLUMN tier int;\n")
    return project


def deployed_with_a_backup(project: Path, env: dict[str, str]) -> str:
    """Deploy ``project``'s pending migration, which takes a backup first; the backup's id."""
    deploy = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", env=env)
    assert deploy.finish() == 0, deploy.stdout() + deploy.stderr()
    return json.loads(deploy.stdout())["result"]["backup_id"]


def end_the_lock_session_inside_the_restore(run: FaberProcess, url: str, *, the_restore_s_too: bool = False) -> dict:
    """The run's document, once faber's lock session was ended while the restore's transaction
    waited for this test's lock on ``accounts`` (``the_restore_s_too``: with the restore's own
    session, as an operator ending all of faber's sessions would); asserts the database is as
    before the restore."""
    # The test's sessions are named as faber's: faber neither waits for their write counters nor ends them.
    with (
        psycopg.connect(url, application_name=TEST_SESSION) as holding,
        psycopg.connect(url, autocommit=True, application_name=TEST_SESSION) as test,
    ):
        try:
            run.wait_for(event_matcher("rollback.started"))  # the run holds here (held_event)
            before = snapshot(url)
            holding.execute("LOCK TABLE accounts IN ACCESS SHARE MODE")
            run.release()
            run.wait_until(lambda: restore_waiting_for_a_lock(test), what="the restore waiting for the table lock")
            end_faber_lock_session(test)
            if the_restore_s_too:
                test.execute("SELECT pg_terminate_backend(%s)", [restore_waiting_for_a_lock(test)])
            holding.rollback()
            code = run.finish(120)
        finally:
            run.stop_everything()
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    assert "Traceback" not in run.stderr()
    after = snapshot(url)
    assert after == before, after.differences(before)
    document = json.loads(run.stdout())
    assert (code, document["code"]) == (7, "LOCKED"), document
    return document


def test_a_rollback_whose_lock_is_lost_during_the_restore_does_not_commit(faber_project, database_url):
    env = run_env(database_url)
    project = deployed_project(faber_project, env)
    backup_id = deployed_with_a_backup(project, env)

    run = FaberProcess.start(project, "rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json", env=env)
    document = end_the_lock_session_inside_the_restore(run, database_url)

    assert "the restore stopped before it committed" in document["error"], document
    result = document["result"]
    assert (result["rollback_status"], result["restore_committed"]) == ("failed", False), result
    suggestions = document["recovery"]["suggestions"]
    assert any("Find out who ended faber's session" in s for s in suggestions), suggestions
    assert f"Once no other run is active, run the rollback again: faber rollback {ENVIRONMENT} --to {backup_id}" in (
        suggestions
    )


def test_a_failed_deploy_whose_lock_is_lost_during_its_automatic_restore_does_not_commit(faber_project, database_url):
    env = run_env(database_url)
    project = deployed_project(faber_project, env)
    (project / "migrations" / "002_broken.sql").write_text("SELECT 1 / 0;\n")
    run = FaberProcess.start(project, "migrate", ENVIRONMENT, "--yes", "--json", env=env)
    document = end_the_lock_session_inside_the_restore(run, database_url)

    result = document["result"]
    assert (result["failed_migration"], result["applied_migrations"]) == ("002_broken", ["001_tier"]), result
    assert (result["rollback_initiated"], result["rollback_status"], result["restore_committed"]) == (
        True,
        "lock_lost",
        False,
    ), result
    assert "the automatic rollback to" in document["error"] and "did not commit" in document["error"], document
    suggestions = document["recovery"]["suggestions"]
    assert any(s.startswith("Database not rolled back: faber's lock") for s in suggestions), suggestions
    assert any("run the rollback again" in s for s in suggestions), suggestions


@pytest.mark.parametrize("command", ["rollback", "failed-deploy"])
def test_an_in_place_restore_that_fails_once_its_lock_is_lost_says_the_lock_was_lost(
    faber_project, database_url, command
):
    """An operator ends faber's sessions, the restore's with its lock session: the restore fails,
    rolled back. The lock is gone, so another run may have deployed since: the run says so (LOCKED),
    and does not advise retrying the rollback before seeing what ran, which would undo that run."""
    env = run_env(database_url)
    project = deployed_project(faber_project, env)
    if command == "rollback":
        backup_id = deployed_with_a_backup(project, env)
        args = ("rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json")
    else:
        (project / "migrations" / "002_broken.sql").write_text("SELECT 1 / 0;\n")
        args = ("migrate", ENVIRONMENT, "--yes", "--json")
    run = FaberProcess.start(project, *args, env=env)
    document = end_the_lock_session_inside_the_restore(run, database_url, the_restore_s_too=True)

    assert "faber's lock on the database was lost" in document["error"], document
    assert "terminating connection due to administrator command" in document["error"], "the failure is named"
    result = document["result"]
    if command == "rollback":
        assert (result["rollback_status"], result["restore_committed"]) == ("failed", False), result
    else:
        assert (result["rollback_initiated"], result["rollback_status"], result["restore_committed"]) == (
            True,
            "lock_lost",
            False,
        ), result
    suggestions = document["recovery"]["suggestions"]
    assert any("Find out who ended faber's session" in s for s in suggestions), suggestions
    assert not any(s.startswith(("Retry the rollback", "The restore changed nothing")) for s in suggestions), (
        suggestions
    )


@pytest.mark.parametrize("command", ["rollback", "failed-deploy"])
def test_a_lock_lost_once_the_in_place_restore_committed_is_reported_with_the_restore(
    faber_project, database_url, command
):
    """faber's lock session ended once the in-place restore's COMMIT had run (the run held at the
    restore's "committed" step): the restore is the backup, and the run says the lock was lost
    while it restored. ``faber rollback`` exits 7 (``LOCKED``, ``restore_committed: true``), not
    success, and names the application's rows the restore discarded (before, it left them out); a
    failed deploy keeps its own exit code and ``rollback_status: "success"`` with
    ``restore_committed: true`` and a suggestion naming the lost lock."""
    env = {**run_env(database_url), held_event.EVENT_ENV: ""}
    project = deployed_project(faber_project, env)
    if command == "rollback":
        backup_id = deployed_with_a_backup(project, env)
        with psycopg.connect(database_url, autocommit=True) as application:
            application.execute("INSERT INTO accounts (id) SELECT generate_series(1001, 1005)")
        args: tuple[str, ...] = ("rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--discard-app-writes", "--json")
    else:
        (project / "migrations" / "002_broken.sql").write_text("SELECT 1 / 0;\n")
        args = ("migrate", ENVIRONMENT, "--yes", "--json")
    held = {held_event.EVENT_ENV: "backup.restore_step", held_event.SECONDS_ENV: "3"}
    run = FaberProcess.start(project, *args, env={**env, **held})
    try:
        step = run.wait_for(event_matcher("backup.restore_step"))  # the run holds here
        # Connected now: the restore ended the sessions connected before it locked the tables.
        with psycopg.connect(database_url, autocommit=True) as test:
            end_faber_lock_session(test)
        run.release()
        code = run.finish(120)
    finally:
        run.stop_everything()
    assert step["data"] == {"step": "committed", "status": "done"}, step
    assert "Traceback" not in run.stderr() and CANARY_PASSWORD not in run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    result = document["result"]
    with psycopg.connect(database_url) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts'"
        ).fetchall()
    assert columns == [("id",)], "the restore committed: the backup's accounts, without tier"
    if command == "rollback":
        assert (code, document["code"]) == (7, "LOCKED"), document
        assert (result["rollback_status"], result["restore_committed"]) == ("success", True), result
        assert result["migrations"] == ["000_base"], result
        discarded = result["writes_since_backup"]
        assert discarded["status"] == "found" and discarded["tables"][0]["rows"] == 5, discarded
        assert "the restore committed" in document["error"], document
    else:
        assert (code, document["code"]) == (6, "MIGRATION_FAILED"), document
        assert (result["rollback_status"], result["restore_committed"]) == ("success", True), result
        suggestions = document["recovery"]["suggestions"]
        assert any("faber's lock was lost while the restore ran" in s for s in suggestions), suggestions


def test_a_rollback_stopped_before_its_restore_transaction_began_says_nothing_was_restored(
    faber_project, database_url, tmp_path
):
    """SIGTERM while the in-place restore reads the archive's list (``pg_restore --list``), before
    its transaction began. Before, the provider let the interrupt through and the run said that
    it "did not say whether it committed" (no ``restore_committed``); now it says the restore was
    stopped before it began: ``restore_committed: false``, the database exactly as before."""
    real = Path(shutil.which("pg_restore")).parent
    tools = tmp_path / "tools"
    tools.mkdir()
    for program in ("pg_dump", "psql"):
        (tools / program).symlink_to(real / program)
    listing = tmp_path / "listing"
    # The listing is held until the signal has landed, then goes on as the real one.
    (tools / "pg_restore").write_text(
        f'#!/bin/sh\ncase " $* " in *" --list "*) touch {listing}; sleep 5 ;; esac\nexec {real / "pg_restore"} "$@"\n'
    )
    (tools / "pg_restore").chmod(0o755)
    env = {**run_env(database_url), held_event.EVENT_ENV: "", "PATH": f"{tools}:{os.environ['PATH']}"}
    project = deployed_project(faber_project, env)
    backup_id = deployed_with_a_backup(project, env)
    before = snapshot(database_url)

    run = FaberProcess.start(project, "rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json", env=env)
    try:
        run.wait_for(event_matcher("rollback.started"))
        run.wait_until(listing.exists, what="the restore reading the archive's list")
        run.kill(signal.SIGTERM)
        code = run.finish(60)
    finally:
        run.stop_everything()
    stopped_before_the_restore_began(run, code, database_url, before)


def stopped_before_the_restore_began(run: FaberProcess, code: int, database_url: str, before: DatabaseState) -> None:
    """``run``, stopped by SIGTERM before its restore began: exit 130, ``restore_committed: false``
    and "stopped before it began", the database exactly as ``before``, no traceback, no password."""
    assert "Traceback" not in run.stderr() and CANARY_PASSWORD not in run.stdout() + run.stderr()
    document = json.loads(run.stdout())
    assert (code, document["code"]) == (130, "INTERRUPTED"), document
    result = document["result"]
    assert (result["rollback_status"], result["restore_committed"]) == ("failed", False), result
    assert "stopped before it began" in result["details"], result
    after = snapshot(database_url)
    assert after == before, after.differences(before)


def kept_schemas_waiting(admin: psycopg.Connection, database: str) -> bool:
    """Whether the restore's query for the schemas it keeps waits for the test's lock (asked from
    another database, whose catalog the lock leaves free)."""
    return bool(
        admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'"
            " AND query LIKE '%%n.nspname <> ALL%%'",
            [database],
        ).fetchone()
    )


@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_rollback_stopped_while_it_reads_the_schemas_it_keeps_says_nothing_was_restored(
    faber_project, database_url, postgres_admin_url, restore_mode
):
    """SIGTERM while the restore reads which schemas it keeps (other projects' faber schemas), its
    first query: held there by the test's lock on the catalog of schemas. The restore has not
    begun: ``restore_committed: false``, the database exactly as before. The swap restore read
    them outside its signal handling, and the run said the provider "did not say"."""
    env = run_env(database_url)
    project = deployed_project(faber_project, env, restore_mode)
    backup_id = deployed_with_a_backup(project, env)
    before = snapshot(database_url)

    run = FaberProcess.start(project, "rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json", env=env)
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with (
        psycopg.connect(database_url, application_name=TEST_SESSION) as holding,
        psycopg.connect(postgres_admin_url, autocommit=True) as admin,
    ):
        try:
            run.wait_for(event_matcher("rollback.started"))  # the run holds here (held_event)
            holding.execute("LOCK TABLE pg_catalog.pg_namespace IN ACCESS EXCLUSIVE MODE")
            run.release()
            run.wait_until(
                lambda: kept_schemas_waiting(admin, database), what="the restore reading the schemas it keeps"
            )
            run.kill(signal.SIGTERM)
            run.wait_until(lambda: not kept_schemas_waiting(admin, database), what="the restore's query cancelled")
            holding.rollback()
            code = run.finish(60)
        finally:
            holding.rollback()
            run.stop_everything()
    stopped_before_the_restore_began(run, code, database_url, before)
