"""`faber migrate` of a Sequelize project killed (SIGKILL) inside a migration: Sequelize runs it
outside a transaction, so what it committed stays, and SequelizeMeta records nothing of it."""

from __future__ import annotations

import signal

import pytest
from faber_core.testing.faults import KilledInsideAMigration

COPY = "20240103000000-copy.js"


@pytest.mark.parametrize("recovery", ["restore", "resolve"])
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_a_deploy_killed_inside_a_migration_stops_the_next_one_until_it_is_undone(
    sequelize_migration, run_faber, request, engine, recovery
):
    """Before, the next deploy ran the migration again from its start (the ledger's rows copied
    twice, exit 0) and `faber status` called it pending."""
    prefix = "" if engine == "postgres" else "mysql_"
    killed = KilledInsideAMigration(request.getfixturevalue(f"{prefix}database_url"))
    project = request.getfixturevalue(f"{prefix}sequelize_project")(
        {COPY: sequelize_migration(killed.copy_statement, killed.hold_statement)},
        fixture_migrations=False,
        backup_before_migrate=True,
        auto_rollback=True,
        protected=True,
        lock_timeout_seconds=0,  # a protected environment's 0.5 s would end the held migration's wait
        lint="off",
    )
    killed.check(project, COPY, run_faber, recovery)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("engine", ["postgres", "mysql"])
def test_an_interrupted_deploy_names_the_resolve_of_the_migration_it_left_in_part(
    sequelize_migration, run_faber, request, engine, signum
):
    """Without a backup: the document said only that no automatic rollback was possible; the
    `faber resolve` that the next deploy's health check demands came only from that next run."""
    prefix = "" if engine == "postgres" else "mysql_"
    killed = KilledInsideAMigration(request.getfixturevalue(f"{prefix}database_url"))
    project = request.getfixturevalue(f"{prefix}sequelize_project")(
        {COPY: sequelize_migration(killed.copy_statement, killed.hold_statement)},
        fixture_migrations=False,
        lint="off",
    )
    document = killed.interrupted(project, signum)
    assert document["code"] == "INTERRUPTED"
    assert document["result"]["failed_migration"] == COPY
    resolve = f"faber resolve staging --rolled-back {COPY}"
    assert resolve in " ".join(document["recovery"]["suggestions"]), document["recovery"]

    killed.query("DELETE FROM ledger WHERE id > 100")
    resolved = run_faber(*resolve.split()[1:], "--json", "--cwd", str(project))
    assert resolved.returncode == 0, resolved.output
    deployed = run_faber("migrate", "staging", "--yes", "--json", "--cwd", str(project))
    assert deployed.returncode == 0, deployed.output
    assert killed.ledger() == 20
