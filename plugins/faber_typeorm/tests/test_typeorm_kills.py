"""`faber migrate` of a TypeORM project killed (SIGKILL) inside a migration that runs outside a
transaction: what it committed stays, and TypeORM's table records nothing of it."""

from __future__ import annotations

import signal

import pytest
from faber_core.testing.faults import KilledInsideAMigration

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
