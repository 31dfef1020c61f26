"""A deploy whose session holding faber's lock is ended (``pg_terminate_backend``, ``KILL``, an
idle-session timeout, a proxy) while it is inside a Sequelize migration, which runs outside a
transaction on another session and goes on: the run that takes faber's lock then must not take
the deploy for a killed one (docs/workflow.md#interrupts)."""

from __future__ import annotations

import json
import shutil

import psycopg
import pytest
from faber_core.testing.faults import KilledInsideAMigration
from faber_core.testing.fixtures import CANARY_PASSWORD

COPY = "20240103000000-copy.js"


def record_of(killed: KilledInsideAMigration) -> list[tuple]:
    table = "faber_unfinished_migrations" if killed.mysql else "faber.faber_unfinished_migrations"
    return killed.query(f"SELECT run_id, migration FROM {table}")


def applied(killed: KilledInsideAMigration) -> list[str]:
    table = "SequelizeMeta" if killed.mysql else '"SequelizeMeta"'
    return [name for (name,) in killed.query(f"SELECT name FROM {table}")]


@pytest.mark.parametrize("ended", ["lock session", "both sessions"])
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_a_deploy_still_inside_a_migration_after_its_lock_session_ended_stops_the_next_run_unchanged(
    sequelize_migration, run_faber, request, tmp_path, engine, ended
):
    """The first deploy is inside COPY (its copy of the ledger committed) when its session holding
    faber's lock is ended (with ``both sessions``, the session holding its own run lock too, at
    once); a second deploy waits for faber's lock meanwhile and takes it then. Before, the second
    run read the first one's record as a killed run's, and stopped at its health check naming COPY
    as failed with ``faber resolve staging --rolled-back``, which would discard the first run's
    work as it went on. Now it stops with LOCKED, naming that run and COPY, and changes nothing;
    the first run finishes COPY, and the next deploy finds nothing to do and nothing failed."""
    prefix = "" if engine == "postgres" else "mysql_"
    killed = KilledInsideAMigration(request.getfixturevalue(f"{prefix}database_url"))
    project = request.getfixturevalue(f"{prefix}sequelize_project")(
        {COPY: sequelize_migration(killed.copy_statement, killed.hold_statement)},
        fixture_migrations=False,
        lint="off",
        lock_wait_seconds=60,
        lock_timeout_seconds=0,  # the held migration waits as long as the test holds it
    )
    killed.create_ledger()
    # Its own project folder, so each run's audit log is its own; the same database.
    other_project = shutil.copytree(project, tmp_path / "other", symlinks=True)

    with killed.lock_session_ended_inside(project, other_project, with_run_lock=ended == "both sessions") as (
        first,
        second,
    ):
        first_run_id = first.wait_for("run.started")["run_id"]
        document = json.loads(second.stdout())
        assert (second.finish(), document["code"]) == (7, "LOCKED"), second.stdout() + second.stderr()[-3000:]
        assert first_run_id in document["error"] and COPY in document["error"], document
        assert "nothing was changed" in document["error"], document
        assert document["result"]["deploying_run"] == first_run_id, document
        assert "faber status staging" in " ".join(document["recovery"]["suggestions"]), document
        output = second.stdout() + second.stderr()
        assert "resolve" not in output and "killed inside it" not in output, output
        assert "Traceback" not in output and CANARY_PASSWORD not in output, output
        # Unchanged: the copy committed once, COPY neither applied nor run again, the record kept.
        assert killed.ledger() == 20
        assert record_of(killed) == [(first_run_id, COPY)]
        assert COPY not in applied(killed)

        meanwhile = run_faber("status", "staging", "--json", "--cwd", str(project))
        assert meanwhile.returncode == 0, meanwhile.output
        assert meanwhile.json["result"]["failed"] == [], meanwhile.output
    assert "Traceback" not in first.stderr(), first.stderr()
    assert CANARY_PASSWORD not in first.stdout() + first.stderr()
    assert killed.ledger() == 20
    assert COPY in applied(killed), first.stdout()

    third = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert third.returncode == 0, third.output
    assert killed.ledger() == 20
    assert record_of(killed) == []
    status = run_faber("status", "staging", "--json", "--cwd", str(project))
    assert (status.returncode, status.json["result"]["failed"]) == (0, []), status.output


def test_a_deploy_failed_inside_a_migration_is_rolled_back_by_a_swap_after_its_run_lock_is_let_go(
    sequelize_migration, sequelize_project, database_url, run_faber
):
    """A Sequelize migration fails after part of it committed; the automatic rollback restores the
    backup by swapping databases, which ends every session of the database and renames it. The run
    lock, taken as the record is written, is let go as the apply step ends, before the restore: its
    thread would otherwise take it again on a new session of the database as the swap ended the old
    one, a session the rename must wait for (the swap tries again, so this was not seen to fail)."""
    failing = "20240103000000-fails.js"
    project = sequelize_project(
        {failing: sequelize_migration("CREATE TABLE made (id int)", "SELECT no_such_function()")},
        fixture_migrations=False,
        lint="off",
        backup_before_migrate=True,
        auto_rollback=True,
        backup={"provider": "pg_dump", "restore_mode": "swap"},
    )
    run = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert run.json["result"]["rollback_status"] == "success", run.output
    assert run.returncode == 6, run.output
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('made')").fetchone() == (None,)
