"""`faber migrate` of a TypeORM project killed (SIGKILL) inside a migration that runs outside a
transaction: what it committed stays, and TypeORM's table records nothing of it."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
from faber_core.testing.faults import KilledInsideAMigration
from faber_core.testing.fixtures import CANARY_PASSWORD

COPY = "CopyLedger1700000200000"


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_a_deploy_killed_inside_a_migration_outside_a_transaction_stops_the_next_one(
    typeorm_migration, run_faber, request, engine
):
    """PostgreSQL: a migration with `transaction = false`. MySQL: one whose DDL (a CREATE TABLE)
    commits the copy before it."""
    prefix = "" if engine == "postgres" else "mysql_"
    killed = KilledInsideAMigration(request.getfixturevalue(f"{prefix}database_url"))
    statements = [killed.copy_statement, "CREATE TABLE ledger_notes (id int)", killed.hold_statement]
    project = request.getfixturevalue(f"{prefix}typeorm_project")(
        {"1700000200000-CopyLedger.js": typeorm_migration(COPY, *statements, transaction=engine != "postgres")},
        fixture_migrations=False,
        backup_before_migrate=True,
        auto_rollback=True,
        protected=True,
        lock_timeout_seconds=0,  # a protected environment's 0.5 s would end the held migration's wait
        lint="off",
    )
    killed.check(project, COPY, run_faber, "resolve", undo=["DROP TABLE ledger_notes"])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_an_interrupted_deploy_names_the_resolve_of_the_migration_it_left_in_part(
    typeorm_migration, run_faber, request, engine, signum
):
    """Without a backup: the document said only that no automatic rollback was possible; the
    `faber resolve` that the next deploy's health check demands came only from that next run."""
    prefix = "" if engine == "postgres" else "mysql_"
    killed = KilledInsideAMigration(request.getfixturevalue(f"{prefix}database_url"))
    statements = [killed.copy_statement, "CREATE TABLE ledger_notes (id int)", killed.hold_statement]
    project = request.getfixturevalue(f"{prefix}typeorm_project")(
        {"1700000200000-CopyLedger.js": typeorm_migration(COPY, *statements, transaction=engine != "postgres")},
        fixture_migrations=False,
        lint="off",
    )
    document = killed.interrupted(project, signum)
    assert document["code"] == "INTERRUPTED"
    assert document["result"]["failed_migration"] == COPY
    resolve = f"faber resolve staging --rolled-back {COPY}"
    assert resolve in " ".join(document["recovery"]["suggestions"]), document["recovery"]

    for statement in ["DROP TABLE ledger_notes", "DELETE FROM ledger WHERE id > 100"]:
        killed.query(statement)
    resolved = run_faber(*resolve.split()[1:], "--json", "--cwd", str(project))
    assert resolved.returncode == 0, resolved.output
    deployed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert deployed.returncode == 0, deployed.output
    assert killed.ledger() == 20


@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_a_deploy_inside_a_transactional_migration_after_its_lock_session_ended_stops_the_next_run(
    typeorm_migration, run_faber, request, tmp_path, engine
):
    """The first deploy is inside COPY, in its transaction, when its session holding faber's lock
    is ended; a second deploy waiting for faber's lock takes it then. A transactional migration
    leaves no record of its run, so the second run read COPY as pending, applied it, and the first
    run's transaction committed it too: the ledger copied twice, COPY recorded twice, nothing said.
    Now the first run's migration session holds faber's migration lock: the second run stops with
    LOCKED and changes nothing, and COPY commits once."""
    prefix = "" if engine == "postgres" else "mysql_"
    killed = KilledInsideAMigration(request.getfixturevalue(f"{prefix}database_url"))
    project = request.getfixturevalue(f"{prefix}typeorm_project")(
        {"1700000200000-CopyLedger.js": typeorm_migration(COPY, killed.copy_statement, killed.hold_statement)},
        fixture_migrations=False,
        lint="off",
        lock_wait_seconds=5,  # the second run waits that long for the first one's migration session
        lock_timeout_seconds=0,  # the held migration waits as long as the test holds it
    )
    killed.create_ledger()
    # Its own project folder, so each run's audit log is its own; the same database.
    other_project = shutil.copytree(project, tmp_path / "other", symlinks=True)

    with killed.lock_session_ended_inside(project, other_project) as (first, second):
        document = json.loads(second.stdout())
        assert (second.finish(), document["code"]) == (7, "LOCKED"), second.stdout() + second.stderr()[-3000:]
        assert "nothing was changed" in document["error"] and document["result"]["migration_sessions"]
        assert killed.ledger() == 10  # the first run's copy is not committed yet
    output = first.stdout() + first.stderr() + second.stdout() + second.stderr()
    assert "Traceback" not in output and CANARY_PASSWORD not in output
    assert killed.ledger() == 20  # copied once
    assert killed.query("SELECT name FROM migrations") == [(COPY,)]
    third = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert third.returncode == 0, third.output
    assert killed.ledger() == 20
