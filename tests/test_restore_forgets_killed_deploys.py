"""A restore removes faber's record of a deploy killed inside a migration (``faber_unfinished_migrations``)
that its backup undoes as it commits, whatever stops faber right after.

Each test has the record of a deploy that took a backup and was killed inside ``001_tier``, a
migration that runs outside a transaction, after part of it committed: ``faber status`` names the
migration as failed and advises a restore of that backup. ``faber rollback --to`` that backup is
then killed (SIGKILL) or stopped (SIGTERM) at a real moment once the restore committed, held there
by :mod:`faber_core.testing.held_event`: PostgreSQL's in-place restore once its COMMIT returned,
its swap restore once the rename committed, MariaDB's table swap once its RENAME TABLE ran and
once it was done. The database is the backup, so ``faber status`` reports nothing failed and the
next deploy applies ``001_tier``. Before, the record went only once faber had verified the
restore: a kill before that left it, and ``faber status`` (exit 6) and the next deploy (exit 3)
named ``001_tier`` as left in part by a killed deploy.

A restore whose lock is lost before its COMMIT commits nothing, the record included.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from faber_core.backup import mysql_dumps
from faber_core.backup.swap import previous_name, restoring_name
from faber_core.testing import held_event
from faber_core.testing.faults import FaberProcess, end_faber_lock_session, event_matcher
from faber_core.testing.fixtures import CANARY_PASSWORD, TEST_SESSION, mysql_connect

ENVIRONMENT = "production"
URL_ENV = "FORGET_DATABASE_URL"
PLUGINS = "faber_core.testing.sqlfiles,faber_core.testing.held_event"
HOLD_SECONDS = 3
"""How long the run holds after each step of the restore: ample time for the test's signal to land."""
EXIT_BOUND = 60

BASE = "CREATE TABLE accounts (id int PRIMARY KEY);\nINSERT INTO accounts VALUES (1), (2), (3);\n"
TIER = "001_tier"
KILLED = "run-killed-inside-001"
RECORD = """
CREATE TABLE IF NOT EXISTS {table} (
    run_id varchar(64) NOT NULL, lock_session varchar(128) NOT NULL, environment varchar(255) NOT NULL,
    position int NOT NULL, migration varchar(1024) NOT NULL, outside_transaction boolean NOT NULL,
    before_run varchar(64) NOT NULL, PRIMARY KEY (run_id, position)
)
"""


class Database:
    """The test's database on one engine, read and written as the application's owner would."""

    def __init__(self, engine: str, url: str) -> None:
        self.engine, self.url = engine, url
        self.record_table = "faber_unfinished_migrations" if engine == "mysql" else "faber.faber_unfinished_migrations"

    def query(self, statement: str, params: list | None = None) -> list[tuple]:
        if self.engine == "postgres":
            with psycopg.connect(self.url, autocommit=True, application_name=TEST_SESSION) as conn:
                cursor = conn.execute(statement, params)
                return cursor.fetchall() if cursor.description else []
        with mysql_connect(self.url) as conn:
            cursor = conn.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []

    def columns(self) -> list[str]:
        query = "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts'"
        if self.engine == "mysql":
            query += " AND table_schema = DATABASE()"
        return sorted(name for (name,) in self.query(query))

    def left_in_part_by_a_killed_deploy(self, backup_taken: str) -> None:
        """What a deploy that took a backup at ``backup_taken`` left, killed inside ``001_tier`` once
        its first statement committed: the column, and faber's record naming the migration."""
        self.query("ALTER TABLE accounts ADD COLUMN tier int")
        if self.engine == "postgres":
            self.query("CREATE SCHEMA IF NOT EXISTS faber")
        self.query(RECORD.format(table=self.record_table))
        # A session long gone: the run shows no sign of life.
        session = "1@0" if self.engine == "postgres" else "999999@0"
        self.query(
            f"INSERT INTO {self.record_table} (run_id, lock_session, environment, position, migration,"
            " outside_transaction, before_run) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [KILLED, session, ENVIRONMENT, 0, TIER, True, backup_taken],
        )

    def records(self) -> list[tuple]:
        return self.query(f"SELECT run_id, migration FROM {self.record_table}")


def run_env(url: str) -> dict[str, str]:
    return {
        "FABER_PLUGINS": PLUGINS,
        URL_ENV: url,
        held_event.EVENT_ENV: "backup.restore_step",
        held_event.SECONDS_ENV: str(HOLD_SECONDS),
    }


def faber_ok(project: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    run = FaberProcess.start(project, *args, "--json", env=env)
    code = run.finish()
    assert code == 0, f"faber {' '.join(args)} exited {code}: {run.stdout()}\n{run.stderr()[-3000:]}"
    return json.loads(run.stdout())


def status(project: Path, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    run = FaberProcess.start(project, "status", ENVIRONMENT, "--json", env=env)
    code = run.finish()
    return code, json.loads(run.stdout())


def killed_deploy_ahead(
    faber_project, database: Database, env: dict[str, str], restore_mode: str | None = None
) -> tuple[Path, str]:
    """A project on ``database`` whose deploy of ``001_tier`` was killed inside it, once it took a
    backup: the project and that backup's id, which ``faber status`` advises restoring."""
    settings: dict[str, Any] = {"database_url_env": URL_ENV, "lock_wait_seconds": 5, "lint": "warn"}
    if restore_mode is not None:
        settings["backup"] = {"provider": "pg_dump", "restore_mode": restore_mode, "jobs": 2}
    config = {"database": {"migration_tool": "sqlfiles", "environments": {ENVIRONMENT: settings}}}
    project = faber_project(config, {"migrations/000_base.sql": BASE})
    faber_ok(project, env, "migrate", ENVIRONMENT, "--yes", "--skip-backup")
    taken = faber_ok(project, env, "backup", ENVIRONMENT)["result"]
    (project / "migrations" / f"{TIER}.sql").write_text("ALTER TABLE accounts ADD COLUMN tier int;\n")
    database.left_in_part_by_a_killed_deploy(taken["created_at"])

    code, document = status(project, env)
    assert code == 6, document
    assert document["result"]["failed"] == [TIER], document
    assert f"faber rollback {ENVIRONMENT} --to {taken['id']}" in json.dumps(document["recovery"]), document
    return project, taken["id"]


def rollback_stopped_at(project: Path, env: dict[str, str], backup_id: str, step: str, signum: int) -> FaberProcess:
    """``faber rollback --to backup_id`` sent ``signum`` once its restore emitted ``step``
    (``backup.restore_step``, its start: steps named with what they did), held there; ended."""
    run = FaberProcess.start(
        project, "rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--discard-app-writes", "--json", env=env
    )
    try:
        run.wait_for(
            lambda event: event["kind"] == "backup.restore_step" and event["data"]["step"].startswith(step),
            timeout=EXIT_BOUND,
        )
        run.kill(signum)
        code = run.wait(EXIT_BOUND)
        assert code is not None, f"faber still running {EXIT_BOUND}s after {signal.Signals(signum).name}"
    finally:
        run.stop_everything()
    assert CANARY_PASSWORD not in run.stdout() + run.stderr()
    assert "Traceback" not in run.stderr(), run.stderr()[-3000:]
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        document = json.loads(run.stdout())
        assert (code, document["code"]) == (130, "INTERRUPTED"), document
        assert document["result"]["restore_committed"] is True, document
    return run


def nothing_failed_and_the_next_deploy_applies_it(project: Path, env: dict[str, str], database: Database) -> None:
    code, document = status(project, env)
    assert code == 0, document
    assert (document["result"]["failed"], document["result"]["pending"]) == ([], [TIER]), document
    assert database.records() == []
    deployed = faber_ok(project, env, "migrate", ENVIRONMENT, "--yes", "--skip-backup")
    assert deployed["result"]["migrations_applied"] == 1, deployed
    assert database.columns() == ["id", "tier"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
@pytest.mark.parametrize("restore_mode", ["in-place", "swap"])
def test_a_postgres_restore_stopped_once_it_committed_leaves_no_deploy_reported_failed(
    faber_project, database_url, postgres_admin_url, restore_mode, signum
):
    database = Database("postgres", database_url)
    env = run_env(database_url)
    project, backup_id = killed_deploy_ahead(faber_project, database, env, restore_mode)
    committed = "committed" if restore_mode == "in-place" else "swapped:"
    try:
        rollback_stopped_at(project, env, backup_id, committed, signum)
        assert database.columns() == ["id"]  # the backup
        nothing_failed_and_the_next_deploy_applies_it(project, env, database)
    finally:
        target = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            for name in (restoring_name(target), previous_name(target)):
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize(
    ("step", "signum"),
    [(mysql_dumps.FINISHED, signal.SIGKILL), (mysql_dumps.SWAPPED, signal.SIGTERM)],
    ids=["done-SIGKILL", "swapped-SIGTERM"],
)
def test_a_mysql_restore_stopped_once_it_swapped_leaves_no_deploy_reported_failed(
    faber_project, mysql_database_url, step, signum
):
    """SIGKILL once the swap is done (its journal dropped); SIGTERM once its RENAME TABLE ran, which
    faber finishes on its way out."""
    database = Database("mysql", mysql_database_url)
    env = run_env(mysql_database_url)
    project, backup_id = killed_deploy_ahead(faber_project, database, env)
    rollback_stopped_at(project, env, backup_id, step, signum)
    assert database.columns() == ["id"]
    nothing_failed_and_the_next_deploy_applies_it(project, env, database)


def test_a_mysql_restore_killed_once_its_rename_ran_is_finished_by_the_next_deploy_which_goes_on(
    faber_project, mysql_database_url
):
    """SIGKILL between the RENAME TABLE and the end of the swap: its journal says how to finish it,
    which the next run holding faber's lock does, the record of the deploy the backup undid
    removed with it, and that deploy then applies the migration."""
    database = Database("mysql", mysql_database_url)
    env = run_env(mysql_database_url)
    project, backup_id = killed_deploy_ahead(faber_project, database, env)
    rollback_stopped_at(project, env, backup_id, mysql_dumps.SWAPPED, signal.SIGKILL)
    assert database.columns() == ["id"]
    deployed = faber_ok(project, env, "migrate", ENVIRONMENT, "--yes", "--skip-backup")
    assert deployed["result"]["migrations_applied"] == 1, deployed
    assert database.columns() == ["id", "tier"] and database.records() == []
    code, document = status(project, env)
    assert (code, document["result"]["failed"]) == (0, []), document


def restore_waiting_for_a_lock(conn: psycopg.Connection) -> int | None:
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'faber restore %' AND wait_event_type = 'Lock'"
    ).fetchone()
    return row[0] if row else None


def test_a_restore_whose_lock_is_lost_before_its_commit_keeps_the_record_with_everything_else(
    faber_project, database_url
):
    """faber's lock session ended while the in-place restore's transaction waits for a lock the
    test holds: the lock check before the COMMIT fails, and the removal of the record, after it in
    the same transaction, rolls back with the restore."""
    database = Database("postgres", database_url)
    env = run_env(database_url) | {held_event.EVENT_ENV: "rollback.started"}
    project, backup_id = killed_deploy_ahead(faber_project, database, env)
    run = FaberProcess.start(project, "rollback", ENVIRONMENT, "--to", backup_id, "--yes", "--json", env=env)
    with (
        psycopg.connect(database_url, application_name=TEST_SESSION) as holding,
        psycopg.connect(database_url, autocommit=True, application_name=TEST_SESSION) as test,
    ):
        try:
            run.wait_for(event_matcher("rollback.started"))  # the run holds here
            holding.execute("LOCK TABLE accounts IN ACCESS SHARE MODE")
            run.release()
            run.wait_until(lambda: restore_waiting_for_a_lock(test), what="the restore waiting for the table lock")
            end_faber_lock_session(test)
            holding.rollback()
            code = run.finish(120)
        finally:
            run.stop_everything()
    document = json.loads(run.stdout())
    assert (code, document["code"], document["result"]["restore_committed"]) == (7, "LOCKED", False), document
    assert database.columns() == ["id", "tier"]
    assert database.records() == [(KILLED, TIER)]
    code, document = status(project, env)
    assert (code, document["result"]["failed"]) == (6, [TIER]), document
