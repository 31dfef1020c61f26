"""`faber migrate` of a Sequelize project killed (SIGKILL) inside a migration: Sequelize runs it
outside a transaction, so what it committed stays, and SequelizeMeta records nothing of it."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from faber_core.testing.faults import WAITING_ON_ADVISORY_LOCK, FaberProcess
from faber_core.testing.fixtures import mysql_connect

COPY = "20240103000000-copy.js"
HOLD = 73_311


@dataclass
class Engine:
    project: Callable[..., Any]
    query: Callable[..., list[tuple]]
    hold_statement: str
    """What the migration runs after its copy: it waits there for ``holding()``'s lock."""
    holding: Callable[[], AbstractContextManager]
    waiting: str
    """A query answering a row once the migration waits."""


def postgres(request: pytest.FixtureRequest) -> Engine:
    url = request.getfixturevalue("database_url")

    def query(statement: str, params: list | None = None) -> list[tuple]:
        # A connection of its own each time: an idle one would hold the restore's write check back.
        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def holding() -> AbstractContextManager:
        holder = psycopg.connect(url, autocommit=True)
        holder.execute("SELECT pg_advisory_lock(%s)", [HOLD])
        return holder

    waiting = WAITING_ON_ADVISORY_LOCK.replace("%s", str(HOLD))
    return Engine(
        request.getfixturevalue("sequelize_project"), query, f"SELECT pg_advisory_lock({HOLD})", holding, waiting
    )


def mysql(request: pytest.FixtureRequest) -> Engine:
    url = request.getfixturevalue("mysql_database_url")
    name = f"faber-test-hold-{url.rpartition('/')[2]}"

    def holding() -> AbstractContextManager:
        holder = mysql_connect(url)
        holder.execute("SELECT GET_LOCK(%s, 0)", [name])
        return holder

    waiting = f"SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT GET_LOCK(''{name}'', 60)'"
    return Engine(
        request.getfixturevalue("mysql_sequelize_project"),
        request.getfixturevalue("mysql_query"),
        f"SELECT GET_LOCK('{name}', 60)",
        holding,
        waiting,
    )


@pytest.mark.parametrize("recovery", ["restore", "resolve"])
@pytest.mark.parametrize("engine", [postgres, mysql], ids=["postgres", "mysql"])
def test_a_deploy_killed_inside_a_migration_outside_a_transaction_stops_the_next_one_until_it_is_undone(
    sequelize_migration, run_faber, request, engine, recovery
):
    """The migration copies the ledger's rows, then waits (`faber status` meanwhile sees a deploy
    under way, nothing failed): killed there, the copy stays committed.
    The next deploy ran it again from its start (the rows copied twice, exit 0) and `faber status`
    called it pending; both now name it as left by a killed run, with the restore that undoes it.
    Once that backup is restored, or the copy undone by hand and resolved, the migration deploys."""
    on = engine(request)
    copy = sequelize_migration("INSERT INTO ledger SELECT id + 100 FROM ledger", on.hold_statement)
    project = on.project(
        {COPY: copy},
        fixture_migrations=False,
        backup_before_migrate=True,
        auto_rollback=True,
        protected=True,
        lint="off",
    )

    def faber(*args: str):
        return run_faber(*args, "--cwd", str(project))

    def ledger() -> int:
        return on.query("SELECT count(*) FROM ledger")[0][0]

    on.query("CREATE TABLE ledger (id int)")
    on.query("INSERT INTO ledger VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10)")
    with on.holding():
        run = FaberProcess.start(project, "migrate", "staging", "--yes", "--json")
        try:
            run.wait_until(lambda: on.query(on.waiting), what="the migration to wait", timeout=60)
            meanwhile = faber("status", "staging", "--json")  # the deploy's record is no killed run's
            assert meanwhile.returncode == 0, meanwhile.output
            assert json.loads(meanwhile.stdout)["result"]["failed"] == []
            run.kill(signal.SIGKILL)
            assert run.wait(30) == -signal.SIGKILL
        finally:
            run.stop_everything()
    backup_id = run.wait_for("backup.created")["data"]["backup_id"]
    assert ledger() == 20  # the killed migration's copy committed

    status = faber("status", "staging", "--json")
    again = faber("migrate", "staging", "--yes", "--json")
    for told, code in ((status, 6), (again, 3)):
        assert told.returncode == code, told.output
        document = json.loads(told.stdout)
        assert f"{COPY} (a faber migrate was killed while it ran, outside a transaction" in told.stdout, document
        assert f"faber rollback staging --to {backup_id}" in " ".join(document["recovery"]["suggestions"]), document
    assert json.loads(status.stdout)["result"]["failed"] == [COPY]
    assert json.loads(again.stdout)["code"] == "HEALTH_CHECK_FAILED"
    assert ledger() == 20

    if recovery == "restore":
        undone = faber("rollback", "staging", "--to", backup_id, "--yes", "--discard-app-writes", "--json")
    else:
        on.query("DELETE FROM ledger WHERE id > 100")  # undone by hand
        undone = faber("resolve", "staging", "--rolled-back", COPY, "--json")
    assert undone.returncode == 0, undone.output
    assert ledger() == 10
    deployed = faber("migrate", "staging", "--yes", "--json")
    assert deployed.returncode == 0, deployed.output
    assert ledger() == 20
