"""A migration that runs outside a transaction, stopped inside by a kill or an interrupt: what it
committed stays, ``plainsql_history`` has no row of it, and the next runs name it as failed instead
of running it again from its start."""

from __future__ import annotations

import json
import signal

import pytest
from faber_plainsql.status import read_state

from faber_core.testing.faults import KilledInsideAMigration

KILLED_IN = "V1__index_and_copy"
LATER = "V2__later"
INDEX = "CREATE INDEX CONCURRENTLY ledger_id ON ledger (id)"


@pytest.fixture
def killed(database_url) -> KilledInsideAMigration:
    return KilledInsideAMigration(database_url)


@pytest.fixture
def staging_project(plainsql_project, monkeypatch, killed):
    """``make(**staging settings) -> project``, its database URL in this process's environment (the
    faber runs of :class:`KilledInsideAMigration` inherit it): KILLED_IN builds an index
    concurrently, copies the ledger, then waits on the test's hold; LATER creates a table."""

    def make(**settings):
        files = {
            f"{KILLED_IN}.sql": f"{INDEX};\n{killed.copy_statement};\n{killed.hold_statement};\n",
            f"{LATER}.sql": "CREATE TABLE later (id int);\n",
        }
        project, env = plainsql_project(files, environment="staging", lint="off", **settings)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return project

    return make


def faber(run_faber, project, *args):
    return run_faber(*args, "--json", "--cwd", str(project))


def test_a_deploy_killed_inside_it_stops_the_next_one_until_resolved(staging_project, killed, run_faber):
    """It was run again: killed after the copy committed, the status named nothing failed and the
    next deploy copied the ledger a second time."""
    project = staging_project(
        backup_before_migrate=True,
        auto_rollback=True,
        protected=True,
        lock_timeout_seconds=0,  # a protected environment's 0.5 s would end the held migration's wait
    )
    killed.check(project, KILLED_IN, run_faber, "resolve", undo=["DROP INDEX ledger_id"])


def test_the_migration_a_killed_deploy_was_in_can_be_resolved_as_applied(staging_project, killed, run_faber):
    """It has no history row to mark: resolving it applied records it, and it never runs again."""
    project = staging_project(backup_before_migrate=False)
    killed.create_ledger()
    _, code = killed.deploy_stopped_inside(project, signal.SIGKILL)
    assert code == -signal.SIGKILL

    resolved = faber(run_faber, project, "resolve", "staging", "--applied", KILLED_IN)

    assert resolved.returncode == 0, resolved.output
    assert killed.query(f"SELECT state FROM plainsql_history WHERE name = '{KILLED_IN}'") == [("applied",)]
    killed.next_runs_see_it_applied(run_faber, project, LATER)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_an_interrupted_deploy_says_what_committed_and_names_the_resolve(staging_project, killed, run_faber, signum):
    """The document said only "Interrupted by SIGTERM during migration", and the next status named
    nothing failed."""
    project = staging_project(backup_before_migrate=False)

    document = killed.interrupted(project, signum)

    assert document["code"] == "INTERRUPTED"
    assert document["result"]["failed_migration"] == KILLED_IN
    assert document["result"]["transaction_rolled_back"] is False
    advice = " ".join(document["recovery"]["suggestions"])
    assert f"{KILLED_IN}: Statements 1 to 2 committed and stay; statement 3 may have committed too" in advice
    assert f"faber resolve staging --rolled-back {KILLED_IN}" in advice
    status = faber(run_faber, project, "status", "staging")
    assert status.returncode == 6 and json.loads(status.stdout)["result"]["failed"] == [KILLED_IN]

    killed.query("DROP INDEX ledger_id")
    killed.query("DELETE FROM ledger WHERE id > 100")
    resolved = faber(run_faber, project, "resolve", "staging", "--rolled-back", KILLED_IN)
    assert resolved.returncode == 0, resolved.output
    deployed = faber(run_faber, project, "migrate", "staging", "--yes")
    assert deployed.returncode == 0, deployed.output
    assert killed.ledger() == 20


def test_the_status_says_which_migrations_still_to_run_are_outside_a_transaction(
    plainsql_project, run_faber, run_context, monkeypatch
):
    project, env = plainsql_project(
        {"V1__users.sql": "CREATE TABLE users (id bigint, email text);\n"}, backup_before_migrate=False
    )
    assert run_faber("migrate", "production", "--yes", "--cwd", str(project), env=env).returncode == 0
    (project / "sql/V2__index.sql").write_text("CREATE INDEX CONCURRENTLY users_email ON users (email);\n")
    (project / "sql/V3__column.sql").write_text("ALTER TABLE users ADD COLUMN name text;\n")
    (project / "sql/V4__broken.sql").write_text("CREATE TABLE (;\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    state = read_state(run_context(project))

    # Applied ones are not parsed; SQL that does not parse is left to faber's analysis, which refuses it.
    assert [(m.name, m.transactional) for m in state.local] == [
        ("V1__users", None),
        ("V2__index", False),
        ("V3__column", True),
        ("V4__broken", None),
    ]
